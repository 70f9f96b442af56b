/* gst-unet engine — CPU training executor: forward in training mode and backward
 * of the U-Net (network.md), on host memory.
 *
 * Memory: one activation set per input shape, kept from forward to backward (every
 * conv output z, its batch-norm output and post-ReLU output a, pool outputs with
 * their argmax, concat buffers, the dropout mask) plus one gradient buffer per
 * activation; nothing allocates in forward/backward once the shape is planned.
 * Parameters and gradients live in the model's slab layout, so the optimiser and
 * the checkpoint code see flat arrays. See cpu-train.h for the op contracts.
 *
 * Speed: between layers the activations stay in the channel-blocked layouts oneDNN's
 * AVX-512/AVX2 convolutions read and write (nChw16c / nChw8c, act_block), so no
 * activation is reordered around a convolution; only the (small) weights are. The
 * ReLU after a convolution without batch norm is the forward primitive's post-op;
 * its backward masks the gradient by the stored output. The 2x2 up-convolution is a
 * oneDNN deconvolution writing straight into its concat buffer (batch 1). Pooling,
 * batch norm and crop/concat work on the blocked layouts in C; loops over little
 * data run on the calling thread (PAR_MIN).
 */
#include "config.h"

#include "cpu-train.h"
#include "rng.h"

#include <math.h>
#include <oneapi/dnnl/dnnl.h>
#include <oneapi/dnnl/dnnl_debug.h>
#include <string.h>

#if HAVE_OPENMP
#include <omp.h>
#endif

/* Loops over fewer elements than this run on the calling thread: a parallel
 * region's fork and join cost more than such a loop, and on a loaded machine a
 * descheduled worker makes every join wait for a scheduler time slice. */
#define PAR_MIN 32768
/* The same for oneDNN's reorders (of weights: a 1 MiB reorder on one thread takes
 * about as long as a fork/join on a busy machine). */
#define PAR_MIN_REORDER 262144

#define DNNL_TRY(call)                                                        \
  G_STMT_START {                                                              \
    dnnl_status_t st_ = (call);                                               \
    if (st_ != dnnl_success) {                                                \
      g_set_error (error, UNET_ERROR, UNET_ERROR_BACKEND,                     \
          "oneDNN: %s failed: %s (%s:%d)", #call, dnnl_status2str (st_),      \
          __FILE__, __LINE__);                                                \
      goto fail;                                                              \
    }                                                                         \
  } G_STMT_END

/* ------------------------------------------------------------ pooling -- */

/* Activations are plain NCHW (bs 1) or channel-blocked nChw{bs}c: element (b, c, y,
 * x) of a (n, C, h, w) tensor at (((b * C/bs + c/bs) * h + y) * w + x) * bs + c % bs,
 * C a multiple of bs. The per-op exports below are the bs = 1 cases. */

static void
maxpool2_forward (const gfloat *src, gint n, gint c, gint h, gint w, gint bs,
    gfloat *dst, guint8 *arg)
{
  const gint oh = h / 2, ow = w / 2, cb = c / bs;
#pragma omp parallel for schedule(static) if ((gsize) n * c * h * w > PAR_MIN)
  for (gint q = 0; q < n * cb * oh; q++) {
    /* rows of all channel blocks, so one block still spreads over the threads */
    const gint p = q / oh, y = q % oh;
    const gfloat *s = src + (gsize) p * h * w * bs;
    gfloat *d = dst + (gsize) p * oh * ow * bs;
    guint8 *a = arg + (gsize) p * oh * ow * bs;
    for (gint x = 0; x < ow; x++) {
      const gfloat *r0 = s + ((gsize) (2 * y) * w + 2 * x) * bs, *r1 = r0 + (gsize) w * bs;
      gfloat *dd = d + ((gsize) y * ow + x) * bs;
      guint8 *aa = a + ((gsize) y * ow + x) * bs;
#pragma omp simd
      for (gint j = 0; j < bs; j++) {
        gfloat v = r0[j];
        guint8 best = 0;
        if (r0[bs + j] > v) {
          v = r0[bs + j];
          best = 1;
        }
        if (r1[j] > v) {
          v = r1[j];
          best = 2;
        }
        if (r1[bs + j] > v) {
          v = r1[bs + j];
          best = 3;
        }
        dd[j] = v;
        aa[j] = best;
      }
    }
  }
}

/* accumulate: dsrc += routed ddst; else dsrc = routed ddst (zeros elsewhere, every
 * element written since h and w are even). */
static void
maxpool2_backward (const gfloat *ddst, const guint8 *arg, gint n, gint c, gint h,
    gint w, gint bs, gfloat *dsrc, gboolean accumulate)
{
  const gint oh = h / 2, ow = w / 2, cb = c / bs;
#pragma omp parallel for schedule(static) if ((gsize) n * c * h * w > PAR_MIN)
  for (gint q = 0; q < n * cb * oh; q++) {
    const gint p = q / oh, y = q % oh;
    const gfloat *d = ddst + (gsize) p * oh * ow * bs;
    const guint8 *a = arg + (gsize) p * oh * ow * bs;
    gfloat *s = dsrc + (gsize) p * h * w * bs;
    for (gint x = 0; x < ow; x++) {
      gfloat *r[4];
      r[0] = s + ((gsize) (2 * y) * w + 2 * x) * bs;
      r[1] = r[0] + bs;
      r[2] = r[0] + (gsize) w * bs;
      r[3] = r[2] + bs;
      const gfloat *dd = d + ((gsize) y * ow + x) * bs;
      const guint8 *aa = a + ((gsize) y * ow + x) * bs;
      if (accumulate) {
        for (gint j = 0; j < bs; j++)
          r[aa[j]][j] += dd[j];
      } else {
#pragma omp simd
        for (gint j = 0; j < bs; j++) {
          r[0][j] = aa[j] == 0 ? dd[j] : 0.0f;
          r[1][j] = aa[j] == 1 ? dd[j] : 0.0f;
          r[2][j] = aa[j] == 2 ? dd[j] : 0.0f;
          r[3][j] = aa[j] == 3 ? dd[j] : 0.0f;
        }
      }
    }
  }
}

void
unet_cpu_maxpool2_forward (const gfloat *src, gint n, gint c, gint h, gint w,
    gfloat *dst, guint8 *arg)
{
  maxpool2_forward (src, n, c, h, w, 1, dst, arg);
}

void
unet_cpu_maxpool2_backward (const gfloat *ddst, const guint8 *arg, gint n, gint c,
    gint h, gint w, gfloat *dsrc)
{
  maxpool2_backward (ddst, arg, n, c, h, w, 1, dsrc, TRUE);
}

/* --------------------------------------------------- transposed conv -- */

/* T (4cout, hw) of one sample: row co*4 + a*2 + b holds W[:, co, a, b] . X. */
gboolean
unet_cpu_upconv2_forward (const gfloat *src, gint n, gint cin, gint h, gint w,
    const gfloat *weight, const gfloat *bias, gint cout, gfloat *dst,
    gsize dst_batch_stride, GError **error)
{
  const gsize hw = (gsize) h * w;
  const gint ow = 2 * w;
  gfloat *t = g_try_malloc (sizeof (gfloat) * 4 * cout * hw);
  if (t == NULL) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_OUT_OF_MEMORY,
        "cannot allocate the transposed convolution's buffer");
    return FALSE;
  }
  for (gint b = 0; b < n; b++) {
    /* T = W^T X: W is (cin, 4cout) row-major, X (cin, hw). */
    dnnl_status_t st = dnnl_sgemm ('T', 'N', 4 * cout, hw, cin, 1.0f, weight,
        4 * cout, src + (gsize) b * cin * hw, hw, 0.0f, t, hw);
    if (st != dnnl_success) {
      g_set_error (error, UNET_ERROR, UNET_ERROR_BACKEND, "oneDNN: sgemm failed: %s",
          dnnl_status2str (st));
      g_free (t);
      return FALSE;
    }
    gfloat *out = dst + b * dst_batch_stride;
#pragma omp parallel for schedule(static)
    for (gint co = 0; co < cout; co++) {
      gfloat *o = out + (gsize) co * 4 * hw;
      for (gint k = 0; k < 4; k++) {
        const gfloat *tr = t + ((gsize) co * 4 + k) * hw;
        gint a = k / 2, bb = k % 2;
        for (gint y = 0; y < h; y++)
          for (gint x = 0; x < w; x++)
            o[(gsize) (2 * y + a) * ow + 2 * x + bb] = tr[(gsize) y * w + x] + bias[co];
      }
    }
  }
  g_free (t);
  return TRUE;
}

gboolean
unet_cpu_upconv2_backward (const gfloat *src, gint n, gint cin, gint h, gint w,
    const gfloat *weight, gint cout, const gfloat *ddst, gsize ddst_batch_stride,
    gfloat *dsrc, gfloat *dweight, gfloat *dbias, GError **error)
{
  const gsize hw = (gsize) h * w;
  const gint ow = 2 * w;
  gfloat *dt = g_try_malloc (sizeof (gfloat) * 4 * cout * hw);
  dnnl_status_t st = dnnl_success;
  if (dt == NULL) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_OUT_OF_MEMORY,
        "cannot allocate the transposed convolution's gradient buffer");
    return FALSE;
  }
  for (gint b = 0; b < n && st == dnnl_success; b++) {
    const gfloat *dout = ddst + b * ddst_batch_stride;
#pragma omp parallel for schedule(static)
    for (gint co = 0; co < cout; co++) {
      const gfloat *o = dout + (gsize) co * 4 * hw;
      gdouble bsum = 0.0;
      for (gint k = 0; k < 4; k++) {
        gfloat *tr = dt + ((gsize) co * 4 + k) * hw;
        gint a = k / 2, bb = k % 2;
        for (gint y = 0; y < h; y++)
          for (gint x = 0; x < w; x++) {
            gfloat v = o[(gsize) (2 * y + a) * ow + 2 * x + bb];
            tr[(gsize) y * w + x] = v;
            bsum += v;
          }
      }
      dbias[co] += (gfloat) bsum;
    }
    /* dW (cin, 4cout) += X (cin, hw) dT^T (hw, 4cout) */
    st = dnnl_sgemm ('N', 'T', cin, 4 * cout, hw, 1.0f, src + (gsize) b * cin * hw, hw,
        dt, hw, 1.0f, dweight, 4 * cout);
    /* dX (cin, hw) = W (cin, 4cout) dT (4cout, hw) */
    if (st == dnnl_success && dsrc != NULL)
      st = dnnl_sgemm ('N', 'N', cin, hw, 4 * cout, 1.0f, weight, 4 * cout, dt, hw,
          0.0f, dsrc + (gsize) b * cin * hw, hw);
  }
  g_free (dt);
  if (st != dnnl_success) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_BACKEND, "oneDNN: sgemm failed: %s",
        dnnl_status2str (st));
    return FALSE;
  }
  return TRUE;
}

/* --------------------------------------------------------- batch norm -- */

#define BN_EPS 1e-5
#define BN_MOMENTUM 0.1

/* Batch-norm statistics are sums over (n, hw) per channel, taken in tasks of one
 * channel block, one sample and up to BN_CHUNK pixels (so even one block of 16
 * channels spreads over all threads), each task's partial sums in double, then
 * added in task order: the result does not depend on the number of threads.
 * Element (b, channel cb·bs + j, pixel i) of a (n, c, hw) tensor in layout bs is at
 * ((b · c/bs + cb) · hw + i) · bs + j. */
#define BN_CHUNK 4096

/* Task t: returns the offset of its first element; *cb its channel block, *len
 * its pixels. */
static gsize
bn_task (gint t, gint n, gint ncb, gsize hw, gint bs, gint nchunk, gint *cb, gsize *len)
{
  const gint per = n * nchunk;
  const gint r = t % per, b = r / nchunk, k = r % nchunk;
  const gsize i0 = (gsize) k * BN_CHUNK;
  *cb = t / per;
  *len = MIN (hw - i0, BN_CHUNK);
  return (((gsize) b * ncb + *cb) * hw + i0) * bs;
}

/* sums[ch] (and sums2[ch]) = the tasks' partial sums of channel ch, in task order. */
static void
bn_reduce (const gdouble *part, gint n, gint ncb, gint nchunk, gint bs, gint parts,
    gdouble *sums, gdouble *sums2)
{
  const gint per = n * nchunk;
  for (gint cb = 0; cb < ncb; cb++)
    for (gint j = 0; j < bs; j++) {
      gdouble s = 0.0, s2 = 0.0;
      for (gint r = 0; r < per; r++) {
        const gdouble *q = part + ((gsize) cb * per + r) * parts * 16;
        s += q[j];
        if (sums2 != NULL)
          s2 += q[16 + j];
      }
      sums[cb * bs + j] = s;
      if (sums2 != NULL)
        sums2[cb * bs + j] = s2;
    }
}

/* relu: y = max(0, bn(x)). */
static void
bn_forward_train (const gfloat *x, gint n, gint c, gsize hw, gint bs,
    const gfloat *gamma, const gfloat *beta, gfloat *y, gfloat *mean,
    gfloat *invstd, gfloat *running_mean, gfloat *running_var, gboolean relu)
{
  const gdouble count = (gdouble) n * hw;
  const gint ncb = c / bs, nchunk = (gint) ((hw + BN_CHUNK - 1) / BN_CHUNK);
  const gint ntask = ncb * n * nchunk;
  const gsize total = (gsize) n * c * hw;
  gdouble *part = g_new (gdouble, (gsize) ntask * 16);
  gdouble *m = g_new (gdouble, c), *s2 = g_new (gdouble, c);
  gfloat *scale = g_new (gfloat, c), *shift = g_new (gfloat, c);
  g_assert (bs <= 16);

  /* pass 1: sums -> mean */
#pragma omp parallel for schedule(static) if (total > PAR_MIN)
  for (gint t = 0; t < ntask; t++) {
    gint cb;
    gsize len, off = bn_task (t, n, ncb, hw, bs, nchunk, &cb, &len);
    const gfloat *p = x + off;
    gdouble acc[16] = { 0 };
    if (bs == 1) {
      gdouble a = 0.0;
#pragma omp simd reduction(+:a)
      for (gsize i = 0; i < len; i++)
        a += p[i];
      acc[0] = a;
    } else {
      for (gsize i = 0; i < len; i++)
#pragma omp simd
        for (gint j = 0; j < bs; j++)
          acc[j] += p[i * bs + j];
    }
    memcpy (part + (gsize) t * 16, acc, sizeof acc);
  }
  bn_reduce (part, n, ncb, nchunk, bs, 1, m, NULL);
  for (gint ch = 0; ch < c; ch++)
    m[ch] /= count;
  /* pass 2: centred sums of squares -> variance */
#pragma omp parallel for schedule(static) if (total > PAR_MIN)
  for (gint t = 0; t < ntask; t++) {
    gint cb;
    gsize len, off = bn_task (t, n, ncb, hw, bs, nchunk, &cb, &len);
    const gfloat *p = x + off;
    const gdouble *mm = m + cb * bs;
    gdouble acc[16] = { 0 };
    if (bs == 1) {
      gdouble a = 0.0, m0 = mm[0];
#pragma omp simd reduction(+:a)
      for (gsize i = 0; i < len; i++)
        a += (p[i] - m0) * (p[i] - m0);
      acc[0] = a;
    } else {
      for (gsize i = 0; i < len; i++)
#pragma omp simd
        for (gint j = 0; j < bs; j++)
          acc[j] += (p[i * bs + j] - mm[j]) * (p[i * bs + j] - mm[j]);
    }
    memcpy (part + (gsize) t * 16, acc, sizeof acc);
  }
  bn_reduce (part, n, ncb, nchunk, bs, 1, s2, NULL);
  for (gint ch = 0; ch < c; ch++) {
    gdouble var = s2[ch] / count;
    gdouble is = 1.0 / sqrt (var + BN_EPS);
    mean[ch] = (gfloat) m[ch];
    invstd[ch] = (gfloat) is;
    scale[ch] = (gfloat) (gamma[ch] * is);
    shift[ch] = (gfloat) (beta[ch] - m[ch] * gamma[ch] * is);
    if (running_mean != NULL) {
      running_mean[ch] = (gfloat) ((1.0 - BN_MOMENTUM) * running_mean[ch] +
          BN_MOMENTUM * m[ch]);
      running_var[ch] = (gfloat) ((1.0 - BN_MOMENTUM) * running_var[ch] +
          BN_MOMENTUM * (count > 1 ? s2[ch] / (count - 1) : var));
    }
  }
  /* pass 3: y = x·scale + shift */
#pragma omp parallel for schedule(static) if (total > PAR_MIN)
  for (gint t = 0; t < ntask; t++) {
    gint cb;
    gsize len, off = bn_task (t, n, ncb, hw, bs, nchunk, &cb, &len);
    const gfloat *p = x + off, *sc = scale + cb * bs, *sh = shift + cb * bs;
    gfloat *q = y + off;
    if (bs == 1) {
      const gfloat sc0 = sc[0], sh0 = sh[0];
#pragma omp simd
      for (gsize i = 0; i < len; i++) {
        gfloat v = p[i] * sc0 + sh0;
        q[i] = relu && v < 0.0f ? 0.0f : v;
      }
    } else {
      for (gsize i = 0; i < len; i++)
#pragma omp simd
        for (gint j = 0; j < bs; j++) {
          gfloat v = p[i * bs + j] * sc[j] + sh[j];
          q[i * bs + j] = relu && v < 0.0f ? 0.0f : v;
        }
    }
  }
  g_free (part);
  g_free (m);
  g_free (s2);
  g_free (scale);
  g_free (shift);
}

/* relu_out: the forward's post-ReLU output; dy counts only where it is > 0. */
static void
bn_backward (const gfloat *x, const gfloat *dy, gint n, gint c, gsize hw, gint bs,
    const gfloat *gamma, const gfloat *mean, const gfloat *invstd,
    const gfloat *relu_out, gfloat *dx, gfloat *dgamma, gfloat *dbeta)
{
  const gdouble count = (gdouble) n * hw;
  const gint ncb = c / bs, nchunk = (gint) ((hw + BN_CHUNK - 1) / BN_CHUNK);
  const gint ntask = ncb * n * nchunk;
  const gsize total = (gsize) n * c * hw;
  gdouble *part = g_new (gdouble, (gsize) ntask * 32);
  gdouble *sdy = g_new (gdouble, c), *sdyx = g_new (gdouble, c);
  gfloat *k1 = g_new (gfloat, c), *k2 = g_new (gfloat, c), *k3 = g_new (gfloat, c);
  g_assert (bs <= 16);

  /* pass 1: Σg and Σg·x̂ with g = dy masked by the ReLU */
#pragma omp parallel for schedule(static) if (total > PAR_MIN)
  for (gint t = 0; t < ntask; t++) {
    gint cb;
    gsize len, off = bn_task (t, n, ncb, hw, bs, nchunk, &cb, &len);
    const gfloat *p = x + off, *d = dy + off;
    const gfloat *a = relu_out != NULL ? relu_out + off : NULL;
    gdouble acc[32] = { 0 };
    if (bs == 1) {
      const gfloat m0 = mean[cb], is0 = invstd[cb];
      gdouble a1 = 0.0, a2 = 0.0;
#pragma omp simd reduction(+:a1,a2)
      for (gsize i = 0; i < len; i++) {
        gfloat g = a != NULL && !(a[i] > 0.0f) ? 0.0f : d[i];
        a1 += g;
        a2 += (gdouble) g * ((p[i] - m0) * is0);
      }
      acc[0] = a1;
      acc[16] = a2;
    } else {
      for (gsize i = 0; i < len; i++)
#pragma omp simd
        for (gint j = 0; j < bs; j++) {
          gsize e = i * bs + j;
          gfloat g = a != NULL && !(a[e] > 0.0f) ? 0.0f : d[e];
          acc[j] += g;
          acc[16 + j] += (gdouble) g * ((p[e] - mean[cb * bs + j]) * invstd[cb * bs + j]);
        }
    }
    memcpy (part + (gsize) t * 32, acc, sizeof acc);
  }
  bn_reduce (part, n, ncb, nchunk, bs, 2, sdy, sdyx);
  /* dx = g·is/N · (N g - Σg - x̂ Σ(g x̂)) = k1 g - k2 - k3 (x - m) */
  for (gint ch = 0; ch < c; ch++) {
    gdouble is = invstd[ch], k = gamma[ch] * is / count;
    dgamma[ch] += (gfloat) sdyx[ch];
    dbeta[ch] += (gfloat) sdy[ch];
    k1[ch] = (gfloat) (k * count);
    k2[ch] = (gfloat) (k * sdy[ch]);
    k3[ch] = (gfloat) (k * sdyx[ch] * is);
  }
  /* pass 2 */
#pragma omp parallel for schedule(static) if (total > PAR_MIN)
  for (gint t = 0; t < ntask; t++) {
    gint cb;
    gsize len, off = bn_task (t, n, ncb, hw, bs, nchunk, &cb, &len);
    const gfloat *p = x + off, *d = dy + off;
    const gfloat *a = relu_out != NULL ? relu_out + off : NULL;
    const gfloat *c1 = k1 + cb * bs, *c2 = k2 + cb * bs, *c3 = k3 + cb * bs;
    const gfloat *mm = mean + cb * bs;
    gfloat *q = dx + off;
    if (bs == 1) {
      const gfloat b1 = c1[0], b2 = c2[0], b3 = c3[0], m0 = mm[0];
#pragma omp simd
      for (gsize i = 0; i < len; i++) {
        gfloat g = a != NULL && !(a[i] > 0.0f) ? 0.0f : d[i];
        q[i] = b1 * g - b2 - b3 * (p[i] - m0);
      }
    } else {
      for (gsize i = 0; i < len; i++)
#pragma omp simd
        for (gint j = 0; j < bs; j++) {
          gsize e = i * bs + j;
          gfloat g = a != NULL && !(a[e] > 0.0f) ? 0.0f : d[e];
          q[e] = c1[j] * g - c2[j] - c3[j] * (p[e] - mm[j]);
        }
    }
  }
  g_free (part);
  g_free (sdy);
  g_free (sdyx);
  g_free (k1);
  g_free (k2);
  g_free (k3);
}

void
unet_cpu_bn_forward_train (const gfloat *x, gint n, gint c, gsize hw,
    const gfloat *gamma, const gfloat *beta, gfloat *y, gfloat *mean,
    gfloat *invstd, gfloat *running_mean, gfloat *running_var)
{
  bn_forward_train (x, n, c, hw, 1, gamma, beta, y, mean, invstd, running_mean,
      running_var, FALSE);
}

void
unet_cpu_bn_backward (const gfloat *x, const gfloat *dy, gint n, gint c, gsize hw,
    const gfloat *gamma, const gfloat *mean, const gfloat *invstd, gfloat *dx,
    gfloat *dgamma, gfloat *dbeta)
{
  bn_backward (x, dy, n, c, hw, 1, gamma, mean, invstd, NULL, dx, dgamma, dbeta);
}

/* ------------------------------------------------------------ dropout -- */

void
unet_cpu_dropout_forward (const gfloat *src, gsize count, gdouble p, guint64 seed,
    guint8 *mask, gfloat *dst)
{
  UnetRng rng;
  const gfloat scale = (gfloat) (1.0 / (1.0 - p));
  unet_rng_init (&rng, seed);
  for (gsize i = 0; i < count; i++) {
    mask[i] = unet_rng_uniform (&rng) >= p;
    dst[i] = mask[i] ? src[i] * scale : 0.0f;
  }
}

void
unet_cpu_dropout_backward (const gfloat *ddst, const guint8 *mask, gsize count,
    gdouble p, gfloat *dsrc)
{
  const gfloat scale = (gfloat) (1.0 / (1.0 - p));
#pragma omp parallel for schedule(static) if (count > PAR_MIN)
  for (gsize i = 0; i < count; i++)
    dsrc[i] = mask[i] ? ddst[i] * scale : 0.0f;
}

/* -------------------------------------------------------- convolution -- */

static dnnl_engine_t
cpu_train_engine (GError **error)
{
  static gsize once = 0;
  static dnnl_engine_t engine = NULL;
  if (g_once_init_enter (&once)) {
    if (dnnl_engine_create (&engine, dnnl_cpu, 0) != dnnl_success)
      engine = NULL;
    g_once_init_leave (&once, 1);
  }
  if (engine == NULL)
    g_set_error (error, UNET_ERROR, UNET_ERROR_BACKEND,
        "oneDNN: cannot create the CPU engine");
  return engine;
}

/* One argument of a primitive: the user's plain memory (nchw / oihw / x, data
 * handle set per call) and, when the primitive prefers another layout (blocked
 * nChw16c / OIhw16i16o on AVX-512), its own buffer plus the reorder between them. */
typedef struct
{
  dnnl_memory_t user;
  dnnl_memory_t prim;           /* == user when no reorder is needed */
  dnnl_primitive_t reorder;     /* user -> prim (inputs) or prim -> user (outputs) */
  gboolean small;               /* reorder on the calling thread (PAR_MIN) */
} Port;

static void
port_clear (Port *p)
{
  if (p->reorder)
    dnnl_primitive_destroy (p->reorder);
  if (p->prim && p->prim != p->user)
    dnnl_memory_destroy (p->prim);
  if (p->user)
    dnnl_memory_destroy (p->user);
  memset (p, 0, sizeof *p);
}

static gboolean
port_init (Port *p, dnnl_engine_t engine, const dnnl_memory_desc_t *user_md,
    const dnnl_memory_desc_t *prim_md, gboolean input, gboolean accumulate,
    GError **error)
{
  dnnl_primitive_desc_t rpd = NULL;
  dnnl_primitive_attr_t attr = NULL;
  dnnl_post_ops_t po = NULL;
  DNNL_TRY (dnnl_memory_create (&p->user, user_md, engine, DNNL_MEMORY_NONE));
  if (dnnl_memory_desc_equal (user_md, prim_md)) {
    p->prim = p->user;
    return TRUE;
  }
  DNNL_TRY (dnnl_memory_create (&p->prim, prim_md, engine, DNNL_MEMORY_ALLOCATE));
  if (input)
    DNNL_TRY (dnnl_reorder_primitive_desc_create (&rpd, user_md, engine, prim_md,
            engine, NULL));
  else {
    /* accumulate: the reorder adds into the user's memory (a sum post-op). */
    if (accumulate) {
      DNNL_TRY (dnnl_post_ops_create (&po));
      DNNL_TRY (dnnl_post_ops_append_sum (po, 1.0f));
      DNNL_TRY (dnnl_primitive_attr_create (&attr));
      DNNL_TRY (dnnl_primitive_attr_set_post_ops (attr, po));
    }
    DNNL_TRY (dnnl_reorder_primitive_desc_create (&rpd, prim_md, engine, user_md,
            engine, attr));
  }
  DNNL_TRY (dnnl_primitive_create (&p->reorder, rpd));
  dnnl_primitive_desc_destroy (rpd);
  if (attr)
    dnnl_primitive_attr_destroy (attr);
  if (po)
    dnnl_post_ops_destroy (po);
  p->small = dnnl_memory_desc_get_size (user_md) / sizeof (gfloat) <= PAR_MIN_REORDER;
  return TRUE;
fail:
  if (rpd)
    dnnl_primitive_desc_destroy (rpd);
  if (attr)
    dnnl_primitive_attr_destroy (attr);
  if (po)
    dnnl_post_ops_destroy (po);
  return FALSE;
}

static gboolean
port_set (Port *p, const void *data, GError **error)
{
  DNNL_TRY (dnnl_memory_set_data_handle (p->user, (void *) data));
  return TRUE;
fail:
  return FALSE;
}

static gboolean
port_reorder (Port *p, dnnl_stream_t stream, gboolean input, GError **error)
{
  if (p->reorder == NULL)
    return TRUE;
  dnnl_exec_arg_t args[2] = {
    {DNNL_ARG_FROM, input ? p->user : p->prim},
    {DNNL_ARG_TO, input ? p->prim : p->user},
  };
  gboolean ok = TRUE;
#if HAVE_OPENMP
  /* oneDNN's reorders size their thread team at execution from the caller's. */
  gint threads = omp_get_max_threads ();
  if (p->small)
    omp_set_num_threads (1);
#endif
  dnnl_status_t st = dnnl_primitive_execute (p->reorder, stream, 2, args);
#if HAVE_OPENMP
  if (p->small)
    omp_set_num_threads (threads);
#endif
  if (st != dnnl_success) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_BACKEND, "oneDNN: reorder failed: %s",
        dnnl_status2str (st));
    ok = FALSE;
  }
  return ok;
}

enum
{
  F_SRC, F_WEI, F_BIAS, F_DST,          /* forward */
  D_DDST, D_WEI, D_DSRC,                /* backward data */
  W_SRC, W_DDST, W_DWEI, W_DBIAS,       /* backward weights */
  N_PORTS
};

struct _UnetCpuConv
{
  gint n, cin, cout, k, pad, h, w, oh, ow;
  dnnl_stream_t stream;
  dnnl_primitive_t fwd, bwd_data, bwd_weights;
  Port ports[N_PORTS];
  gfloat *dw_tmp, *db_tmp;      /* backward_weights output, added into the slab */
};

void
unet_cpu_conv_free (UnetCpuConv *c)
{
  if (c == NULL)
    return;
  dnnl_primitive_t prims[3] = { c->fwd, c->bwd_data, c->bwd_weights };
  for (gint i = 0; i < 3; i++)
    if (prims[i])
      dnnl_primitive_destroy (prims[i]);
  for (gint i = 0; i < N_PORTS; i++)
    port_clear (&c->ports[i]);
  if (c->stream)
    dnnl_stream_destroy (c->stream);
  g_free (c->dw_tmp);
  g_free (c->db_tmp);
  g_free (c);
}

static const dnnl_memory_desc_t *
pd_md (dnnl_primitive_desc_t pd, dnnl_query_t what)
{
  return dnnl_primitive_desc_query_md (pd, what, 0);
}

static dnnl_format_tag_t
act_tag (gint bs)
{
  return bs == 16 ? dnnl_nChw16c : bs == 8 ? dnnl_nChw8c : dnnl_nchw;
}

/* A convolution (or, `deconv`, a transposed convolution) of an (n,cin,h,w) tensor
 * in layout src_bs to (n,cout,oh,ow) in layout dst_bs; weights [cout,cin,k,k] (oihw)
 * or, transposed, [cin,cout,k,k] (iohw, as PyTorch's ConvTranspose2d). relu: the
 * forward output is max(0, conv) (a oneDNN post-op). */
static UnetCpuConv *
conv_new_full (gboolean deconv, gint n, gint cin, gint h, gint w, gint cout, gint k,
    gint stride, gint pad, gint src_bs, gint dst_bs, gboolean relu, GError **error)
{
  dnnl_engine_t engine = cpu_train_engine (error);
  UnetCpuConv *c;
  dnnl_memory_desc_t smd, wmd, bmd, dmd, sany, wany, dany;
  dnnl_convolution_desc_t fd, bdd, bwd;
  dnnl_primitive_desc_t fpd = NULL, bdpd = NULL, bwpd = NULL;
  dnnl_primitive_attr_t attr = NULL;
  dnnl_post_ops_t po = NULL;
  dnnl_dims_t strides = { stride, stride }, padding = { pad, pad };

  if (engine == NULL)
    return NULL;
  c = g_new0 (UnetCpuConv, 1);
  c->n = n;
  c->cin = cin;
  c->cout = cout;
  c->k = k;
  c->pad = pad;
  c->h = h;
  c->w = w;
  if (deconv) {
    c->oh = (h - 1) * stride + k - 2 * pad;
    c->ow = (w - 1) * stride + k - 2 * pad;
  } else {
    c->oh = (h + 2 * pad - k) / stride + 1;
    c->ow = (w + 2 * pad - k) / stride + 1;
  }
  if (n < 1 || cin < 1 || cout < 1 || h < 1 || w < 1 || c->oh < 1 || c->ow < 1
      || (!deconv && (h + 2 * pad < k || w + 2 * pad < k))) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "convolution %dx%d (pad %d) of a %dx%d input has no output", k, k, pad, w, h);
    goto fail;
  }
  {
    dnnl_dims_t sd = { n, cin, h, w }, wd = { cout, cin, k, k }, bd = { cout };
    dnnl_dims_t dd = { n, cout, c->oh, c->ow };
    DNNL_TRY (dnnl_memory_desc_init_by_tag (&smd, 4, sd, dnnl_f32, act_tag (src_bs)));
    DNNL_TRY (dnnl_memory_desc_init_by_tag (&wmd, 4, wd, dnnl_f32,
            deconv ? dnnl_iohw : dnnl_oihw));
    DNNL_TRY (dnnl_memory_desc_init_by_tag (&bmd, 1, bd, dnnl_f32, dnnl_x));
    DNNL_TRY (dnnl_memory_desc_init_by_tag (&dmd, 4, dd, dnnl_f32, act_tag (dst_bs)));
    /* Let oneDNN pick the layouts its fastest kernels want; the activations are
     * kept in blocked layouts that these normally are, so the ports reorder only
     * the weights (and the odd activation whose layout the primitive won't take). */
    /* Equally blocked activations are asked for as they are: with "any" AVX-512
     * kernels would take 8 channels padded to 16 and every nChw8c tensor would be
     * reordered twice, where the AVX2 kernels read nChw8c directly. (Between
     * block sizes only the reference kernels take both; there "any" and a
     * reorder win.) */
    const gboolean fixed = src_bs == dst_bs && src_bs > 1;
    DNNL_TRY (dnnl_memory_desc_init_by_tag (&sany, 4, sd, dnnl_f32,
            fixed ? act_tag (src_bs) : dnnl_format_tag_any));
    DNNL_TRY (dnnl_memory_desc_init_by_tag (&wany, 4, wd, dnnl_f32, dnnl_format_tag_any));
    DNNL_TRY (dnnl_memory_desc_init_by_tag (&dany, 4, dd, dnnl_f32,
            fixed ? act_tag (dst_bs) : dnnl_format_tag_any));
  }
  if (relu) {
    DNNL_TRY (dnnl_post_ops_create (&po));
    DNNL_TRY (dnnl_post_ops_append_eltwise (po, 1.0f, dnnl_eltwise_relu, 0.0f, 0.0f));
    DNNL_TRY (dnnl_primitive_attr_create (&attr));
    DNNL_TRY (dnnl_primitive_attr_set_post_ops (attr, po));
  }
  if (deconv) {
    DNNL_TRY (dnnl_deconvolution_forward_desc_init (&fd, dnnl_forward_training,
            dnnl_deconvolution_direct, &sany, &wany, &bmd, &dany, strides, padding,
            padding));
    DNNL_TRY (dnnl_deconvolution_backward_data_desc_init (&bdd,
            dnnl_deconvolution_direct, &sany, &wany, &dany, strides, padding, padding));
    DNNL_TRY (dnnl_deconvolution_backward_weights_desc_init (&bwd,
            dnnl_deconvolution_direct, &sany, &wany, &bmd, &dany, strides, padding,
            padding));
  } else {
    DNNL_TRY (dnnl_convolution_forward_desc_init (&fd, dnnl_forward_training,
            dnnl_convolution_direct, &sany, &wany, &bmd, &dany, strides, padding,
            padding));
    DNNL_TRY (dnnl_convolution_backward_data_desc_init (&bdd, dnnl_convolution_direct,
            &sany, &wany, &dany, strides, padding, padding));
    DNNL_TRY (dnnl_convolution_backward_weights_desc_init (&bwd,
            dnnl_convolution_direct, &sany, &wany, &bmd, &dany, strides, padding,
            padding));
  }
  DNNL_TRY (dnnl_primitive_desc_create (&fpd, &fd, attr, engine, NULL));
  DNNL_TRY (dnnl_primitive_desc_create (&bdpd, &bdd, NULL, engine, fpd));
  DNNL_TRY (dnnl_primitive_desc_create (&bwpd, &bwd, NULL, engine, fpd));
  if (attr) {
    dnnl_primitive_attr_destroy (attr);
    attr = NULL;
  }
  if (po) {
    dnnl_post_ops_destroy (po);
    po = NULL;
  }
  DNNL_TRY (dnnl_primitive_create (&c->fwd, fpd));
  DNNL_TRY (dnnl_primitive_create (&c->bwd_data, bdpd));
  DNNL_TRY (dnnl_primitive_create (&c->bwd_weights, bwpd));
  DNNL_TRY (dnnl_stream_create (&c->stream, engine, dnnl_stream_default_flags));
  {
    struct
    {
      gint port;
      const dnnl_memory_desc_t *user;
      dnnl_primitive_desc_t pd;
      dnnl_query_t q;
      gboolean input;
    } spec[N_PORTS] = {
      {F_SRC, &smd, fpd, dnnl_query_src_md, TRUE},
      {F_WEI, &wmd, fpd, dnnl_query_weights_md, TRUE},
      {F_BIAS, &bmd, NULL, 0, TRUE},
      {F_DST, &dmd, fpd, dnnl_query_dst_md, FALSE},
      {D_DDST, &dmd, bdpd, dnnl_query_diff_dst_md, TRUE},
      {D_WEI, &wmd, bdpd, dnnl_query_weights_md, TRUE},
      {D_DSRC, &smd, bdpd, dnnl_query_diff_src_md, FALSE},
      {W_SRC, &smd, bwpd, dnnl_query_src_md, TRUE},
      {W_DDST, &dmd, bwpd, dnnl_query_diff_dst_md, TRUE},
      {W_DWEI, &wmd, bwpd, dnnl_query_diff_weights_md, FALSE},
      {W_DBIAS, &bmd, NULL, 0, FALSE},
    };
    for (gint i = 0; i < N_PORTS; i++)
      if (!port_init (&c->ports[spec[i].port], engine, spec[i].user,
              spec[i].pd ? pd_md (spec[i].pd, spec[i].q) : spec[i].user,
              spec[i].input, spec[i].port == W_DWEI, error))
        goto fail;
  }
  c->dw_tmp = g_new (gfloat, (gsize) cout * cin * k * k);
  c->db_tmp = g_new (gfloat, cout);
  dnnl_primitive_desc_destroy (fpd);
  dnnl_primitive_desc_destroy (bdpd);
  dnnl_primitive_desc_destroy (bwpd);
  return c;

fail:
  if (attr)
    dnnl_primitive_attr_destroy (attr);
  if (po)
    dnnl_post_ops_destroy (po);
  if (fpd)
    dnnl_primitive_desc_destroy (fpd);
  if (bdpd)
    dnnl_primitive_desc_destroy (bdpd);
  if (bwpd)
    dnnl_primitive_desc_destroy (bwpd);
  unet_cpu_conv_free (c);
  return NULL;
}

UnetCpuConv *
unet_cpu_conv_new (gint n, gint cin, gint h, gint w, gint cout, gint k, gint pad,
    GError **error)
{
  return conv_new_full (FALSE, n, cin, h, w, cout, k, 1, pad, 1, 1, FALSE, error);
}

/* Sets the user handles of `ports`, reorders the inputs, runs `prim` with `args`,
 * reorders the outputs and waits. */
static gboolean
conv_run (UnetCpuConv *c, dnnl_primitive_t prim, const gint *ports,
    const gint *arg_ids, const void *const *data, const gboolean *input, gint n,
    GError **error)
{
  dnnl_exec_arg_t args[4];
  for (gint i = 0; i < n; i++) {
    Port *p = &c->ports[ports[i]];
    if (!port_set (p, data[i], error))
      return FALSE;
    if (input[i] && !port_reorder (p, c->stream, TRUE, error))
      return FALSE;
    args[i] = (dnnl_exec_arg_t) { arg_ids[i], p->prim };
  }
  DNNL_TRY (dnnl_primitive_execute (prim, c->stream, n, args));
  for (gint i = 0; i < n; i++)
    if (!input[i] && !port_reorder (&c->ports[ports[i]], c->stream, FALSE, error))
      return FALSE;
  DNNL_TRY (dnnl_stream_wait (c->stream));
  return TRUE;
fail:
  return FALSE;
}

gboolean
unet_cpu_conv_forward (UnetCpuConv *c, const gfloat *src, const gfloat *weight,
    const gfloat *bias, gfloat *dst, GError **error)
{
  const gint ports[4] = { F_SRC, F_WEI, F_BIAS, F_DST };
  const gint ids[4] = { DNNL_ARG_SRC, DNNL_ARG_WEIGHTS, DNNL_ARG_BIAS, DNNL_ARG_DST };
  const void *data[4] = { src, weight, bias, dst };
  const gboolean input[4] = { TRUE, TRUE, TRUE, FALSE };
  return conv_run (c, c->fwd, ports, ids, data, input, 4, error);
}

gboolean
unet_cpu_conv_backward (UnetCpuConv *c, const gfloat *src, const gfloat *weight,
    const gfloat *ddst, gfloat *dsrc, gfloat *dweight, gfloat *dbias, GError **error)
{
  const gsize nw = (gsize) c->cout * c->cin * c->k * c->k;
  {
    const gint ports[4] = { W_SRC, W_DDST, W_DWEI, W_DBIAS };
    const gint ids[4] = { DNNL_ARG_SRC, DNNL_ARG_DIFF_DST, DNNL_ARG_DIFF_WEIGHTS,
      DNNL_ARG_DIFF_BIAS
    };
    /* With a reorder from the primitive's layout, the reorder adds into dweight. */
    const gboolean direct = c->ports[W_DWEI].reorder != NULL;
    const void *data[4] = { src, ddst, direct ? dweight : c->dw_tmp, c->db_tmp };
    const gboolean input[4] = { TRUE, TRUE, FALSE, FALSE };
    if (!conv_run (c, c->bwd_weights, ports, ids, data, input, 4, error))
      return FALSE;
    if (!direct) {
#pragma omp parallel for schedule(static) if (nw > PAR_MIN)
      for (gsize i = 0; i < nw; i++)
        dweight[i] += c->dw_tmp[i];
    }
  }
  for (gint i = 0; i < c->cout; i++)
    dbias[i] += c->db_tmp[i];
  if (dsrc == NULL)
    return TRUE;
  {
    const gint ports[3] = { D_DDST, D_WEI, D_DSRC };
    const gint ids[3] = { DNNL_ARG_DIFF_DST, DNNL_ARG_WEIGHTS, DNNL_ARG_DIFF_SRC };
    const void *data[3] = { ddst, weight, dsrc };
    const gboolean input[3] = { TRUE, TRUE, FALSE };
    return conv_run (c, c->bwd_data, ports, ids, data, input, 3, error);
  }
}

/* ---------------------------------------------------------- whole net -- */

/* Activation layout of a c-channel tensor between layers: channel blocks of 16 (or
 * 8) as oneDNN's AVX-512 (AVX2) convolutions read and write them, so no activation
 * is reordered; plain NCHW when c has no such factor. */
static gint
act_block (gint c)
{
  return c % 16 == 0 ? 16 : c % 8 == 0 ? 8 : 1;
}

/* One convolution with what follows it: conv (+ bias) [-> batch norm] [-> ReLU].
 * Without batch norm the ReLU is the convolution's post-op (z == a). */
typedef struct
{
  UnetCpuConv *conv;
  gint w_off, b_off;            /* slab offsets of weight and bias */
  gint bn_off[4];               /* gamma, beta, running_mean, running_var; -1 none */
  gboolean relu;
  gint cout, bs;                /* output channels and their layout (act_block) */
  gsize hw, numel;              /* output plane and n·cout·plane */
  const gfloat *src;            /* input activation (not owned) */
  gfloat *dsrc;                 /* its gradient (not owned); NULL = not needed */
  gfloat *z;                    /* conv output */
  gfloat *a;                    /* output: z itself without batch norm */
  gfloat *da;                   /* d/da, turned into d/dz in place by backward */
  gfloat *mean, *invstd;        /* batch norm */
} Unit;

typedef struct
{
  gint batch, height, width, depth;
  Unit *units;                  /* enc.0.c1, enc.0.c2, ..., bottom, dec.D-1 .. dec.0, head */
  gint n_units;
  gfloat *input;                /* copy of the forward input */
  gfloat **pool, **dpool;       /* per level (n, F_i, eh/2, ew/2), layout lbs */
  guint8 **arg;
  gint *lbs;                    /* per level: layout of F_i (and 2F_i) channel tensors */
  gint *eh, *ew, *uh, *uw;      /* per level: encoder output and upsampled sizes */
  gfloat **cat, **dcat;         /* per level (n, 2F_i, uh, uw): [crop(e_i), up] */
  UnetCpuConv **up;             /* per level: the transposed conv */
  gfloat **upbuf;               /* per level, batch > 1: its output (n, F_i, uh, uw) and
                                 * then gradient; batch 1 uses the concat buffer */
  gint *up_w, *up_b;            /* slab offsets of dec.i.up.weight/.bias */
  gfloat *drop, *ddrop;         /* bottom dropout output / gradient (NULL without) */
  guint8 *mask;
  gsize drop_numel;
  GPtrArray *allocs;
  gsize bytes;
  gboolean have_forward;
} Plan;

struct _UnetCpuTrain
{
  UnetConfig cfg;
  const UnetLayout *layout;
  Plan *plan;
};

static gint
slab_offset (const UnetLayout *layout, const gchar *name)
{
  gint i = unet_layout_find (layout, name);
  return i < 0 ? -1 : (gint) layout->tensors[i].offset;
}

static void
plan_free (Plan *p)
{
  if (p == NULL)
    return;
  for (gint i = 0; i < p->n_units; i++)
    unet_cpu_conv_free (p->units[i].conv);
  for (gint i = 0; p->up != NULL && i < p->depth; i++)
    unet_cpu_conv_free (p->up[i]);
  g_free (p->units);
  g_ptr_array_unref (p->allocs);
  g_free (p);
}

/* Not zeroed: every buffer is written before it is read (forward outputs, and
 * gradients written by the op that produces them). */
static gpointer
plan_alloc (Plan *p, gsize bytes, GError **error)
{
  gpointer m = g_try_malloc (MAX (bytes, 1));
  if (m == NULL) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_OUT_OF_MEMORY,
        "cannot allocate %" G_GSIZE_FORMAT " bytes of training activations", bytes);
    return NULL;
  }
  g_ptr_array_add (p->allocs, m);
  p->bytes += bytes;
  return m;
}

#define PLAN_ALLOC(ptr, count)                                                \
  G_STMT_START {                                                              \
    if (((ptr) = plan_alloc (p, sizeof (*(ptr)) * (count), error)) == NULL)   \
      goto fail;                                                              \
  } G_STMT_END

/* Sets up unit u for `prefix` (e.g. "enc.0.conv1"), input (n,cin,h,w) in layout
 * src_bs, output in layout dst_bs. */
static gboolean
unit_init (UnetCpuTrain *tr, Plan *p, Unit *u, const gchar *layer, const gchar *bn,
    gint cin, gint h, gint w, gint cout, gint k, gint pad, gboolean relu, gint src_bs,
    gint dst_bs, GError **error)
{
  g_autofree gchar *wn = g_strdup_printf ("%s.weight", layer);
  g_autofree gchar *bname = g_strdup_printf ("%s.bias", layer);
  gint n = p->batch;

  u->w_off = slab_offset (tr->layout, wn);
  u->b_off = slab_offset (tr->layout, bname);
  if (u->w_off < 0 || u->b_off < 0) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_MODEL, "layout has no %s", wn);
    return FALSE;
  }
  for (gint q = 0; q < 4; q++)
    u->bn_off[q] = -1;
  if (bn != NULL) {
    const gchar *parts[4] = { "weight", "bias", "running_mean", "running_var" };
    for (gint q = 0; q < 4; q++) {
      g_autofree gchar *name = g_strdup_printf ("%s.%s", bn, parts[q]);
      if ((u->bn_off[q] = slab_offset (tr->layout, name)) < 0) {
        g_set_error (error, UNET_ERROR, UNET_ERROR_MODEL, "layout has no %s", name);
        return FALSE;
      }
    }
  }
  u->conv = conv_new_full (FALSE, n, cin, h, w, cout, k, 1, pad, src_bs, dst_bs,
      relu && bn == NULL, error);
  if (u->conv == NULL)
    return FALSE;
  u->relu = relu;
  u->cout = cout;
  u->bs = dst_bs;
  u->hw = (gsize) (h + 2 * pad - k + 1) * (w + 2 * pad - k + 1);
  u->numel = (gsize) n * cout * u->hw;
  PLAN_ALLOC (u->z, u->numel);
  if (bn != NULL) {
    PLAN_ALLOC (u->a, u->numel);
    PLAN_ALLOC (u->mean, cout);
    PLAN_ALLOC (u->invstd, cout);
  } else {
    u->a = u->z;
  }
  PLAN_ALLOC (u->da, u->numel);
  return TRUE;
fail:
  return FALSE;
}

static Plan *
plan_new (UnetCpuTrain *tr, gint batch, gint height, gint width, GError **error)
{
  const UnetConfig *cfg = &tr->cfg;
  const gint D = cfg->depth;
  const gboolean valid = cfg->padding == UNET_PADDING_VALID;
  const gint pad = valid ? 0 : 1, shrink = valid ? 2 : 0;
  Plan *p = g_new0 (Plan, 1);
  gint h = height, w = width, u = 0;
  gint cbs = 1;                 /* layout of the current activation */

  p->batch = batch;
  p->height = height;
  p->width = width;
  p->allocs = g_ptr_array_new_with_free_func (g_free);
  p->n_units = 4 * D + 3;
  p->depth = D;
  p->units = g_new0 (Unit, p->n_units);
  p->up = g_new0 (UnetCpuConv *, D);
  p->upbuf = g_new0 (gfloat *, D);
  p->pool = g_new0 (gfloat *, D);
  p->dpool = g_new0 (gfloat *, D);
  p->arg = g_new0 (guint8 *, D);
  p->cat = g_new0 (gfloat *, D);
  p->dcat = g_new0 (gfloat *, D);
  p->lbs = g_new0 (gint, D);
  p->eh = g_new0 (gint, D);
  p->ew = g_new0 (gint, D);
  p->uh = g_new0 (gint, D);
  p->uw = g_new0 (gint, D);
  p->up_w = g_new0 (gint, D);
  p->up_b = g_new0 (gint, D);
  /* The per-level arrays are freed with the plan (p->up by plan_free's loop). */
  g_ptr_array_add (p->allocs, p->up);
  g_ptr_array_add (p->allocs, p->upbuf);
  g_ptr_array_add (p->allocs, p->pool);
  g_ptr_array_add (p->allocs, p->dpool);
  g_ptr_array_add (p->allocs, p->arg);
  g_ptr_array_add (p->allocs, p->cat);
  g_ptr_array_add (p->allocs, p->dcat);
  g_ptr_array_add (p->allocs, p->lbs);
  g_ptr_array_add (p->allocs, p->eh);
  g_ptr_array_add (p->allocs, p->ew);
  g_ptr_array_add (p->allocs, p->uh);
  g_ptr_array_add (p->allocs, p->uw);
  g_ptr_array_add (p->allocs, p->up_w);
  g_ptr_array_add (p->allocs, p->up_b);

  PLAN_ALLOC (p->input, (gsize) batch * cfg->in_channels * height * width);
  gint cin = cfg->in_channels;
  for (gint i = 0; i < D; i++) {
    gint f = cfg->base_filters << i;
    gchar l1[32], l2[32], b1[32], b2[32];
    p->lbs[i] = act_block (f);
    g_snprintf (l1, sizeof l1, "enc.%d.conv1", i);
    g_snprintf (l2, sizeof l2, "enc.%d.conv2", i);
    g_snprintf (b1, sizeof b1, "enc.%d.bn1", i);
    g_snprintf (b2, sizeof b2, "enc.%d.bn2", i);
    if (!unit_init (tr, p, &p->units[u++], l1, cfg->batch_norm ? b1 : NULL, cin, h, w,
            f, 3, pad, TRUE, cbs, p->lbs[i], error))
      goto fail;
    h -= shrink;
    w -= shrink;
    if (!unit_init (tr, p, &p->units[u++], l2, cfg->batch_norm ? b2 : NULL, f, h, w,
            f, 3, pad, TRUE, p->lbs[i], p->lbs[i], error))
      goto fail;
    h -= shrink;
    w -= shrink;
    if (h < 2 || w < 2 || h % 2 || w % 2)
      goto illegal;
    p->eh[i] = h;
    p->ew[i] = w;
    h /= 2;
    w /= 2;
    PLAN_ALLOC (p->pool[i], (gsize) batch * f * h * w);
    PLAN_ALLOC (p->dpool[i], (gsize) batch * f * h * w);
    PLAN_ALLOC (p->arg[i], (gsize) batch * f * h * w);
    cin = f;
    cbs = p->lbs[i];
  }
  {
    gint f = cfg->base_filters << D;
    gint bbs = act_block (f);
    if (h - 2 * shrink < 1 || w - 2 * shrink < 1)
      goto illegal;
    if (!unit_init (tr, p, &p->units[u++], "bottom.conv1",
            cfg->batch_norm ? "bottom.bn1" : NULL, cin, h, w, f, 3, pad, TRUE, cbs, bbs,
            error))
      goto fail;
    h -= shrink;
    w -= shrink;
    if (!unit_init (tr, p, &p->units[u++], "bottom.conv2",
            cfg->batch_norm ? "bottom.bn2" : NULL, f, h, w, f, 3, pad, TRUE, bbs, bbs,
            error))
      goto fail;
    h -= shrink;
    w -= shrink;
    cin = f;
    cbs = bbs;
    if (cfg->dropout > 0.0) {
      p->drop_numel = (gsize) batch * f * h * w;
      PLAN_ALLOC (p->drop, p->drop_numel);
      PLAN_ALLOC (p->ddrop, p->drop_numel);
      PLAN_ALLOC (p->mask, p->drop_numel);
    }
  }
  for (gint i = D - 1; i >= 0; i--) {
    gint f = cfg->base_filters << i;
    gchar name[32], l1[32], l2[32], b1[32], b2[32];
    p->up[i] = conv_new_full (TRUE, batch, cin, h, w, f, 2, 2, 0, cbs, p->lbs[i],
        FALSE, error);
    if (p->up[i] == NULL)
      goto fail;
    h *= 2;
    w *= 2;
    if (h > p->eh[i] || w > p->ew[i] || h - 2 * shrink < 1 || w - 2 * shrink < 1)
      goto illegal;
    p->uh[i] = h;
    p->uw[i] = w;
    g_snprintf (name, sizeof name, "dec.%d.up.weight", i);
    p->up_w[i] = slab_offset (tr->layout, name);
    g_snprintf (name, sizeof name, "dec.%d.up.bias", i);
    p->up_b[i] = slab_offset (tr->layout, name);
    if (p->up_w[i] < 0 || p->up_b[i] < 0) {
      g_set_error (error, UNET_ERROR, UNET_ERROR_MODEL, "layout has no dec.%d.up", i);
      goto fail;
    }
    PLAN_ALLOC (p->cat[i], (gsize) batch * 2 * f * h * w);
    if (batch > 1)
      PLAN_ALLOC (p->upbuf[i], (gsize) batch * f * h * w);
    PLAN_ALLOC (p->dcat[i], (gsize) batch * 2 * f * h * w);
    g_snprintf (l1, sizeof l1, "dec.%d.conv1", i);
    g_snprintf (l2, sizeof l2, "dec.%d.conv2", i);
    g_snprintf (b1, sizeof b1, "dec.%d.bn1", i);
    g_snprintf (b2, sizeof b2, "dec.%d.bn2", i);
    if (!unit_init (tr, p, &p->units[u++], l1, cfg->batch_norm ? b1 : NULL, 2 * f, h,
            w, f, 3, pad, TRUE, p->lbs[i], p->lbs[i], error))
      goto fail;
    h -= shrink;
    w -= shrink;
    if (!unit_init (tr, p, &p->units[u++], l2, cfg->batch_norm ? b2 : NULL, f, h, w,
            f, 3, pad, TRUE, p->lbs[i], p->lbs[i], error))
      goto fail;
    h -= shrink;
    w -= shrink;
    cin = f;
    cbs = p->lbs[i];
  }
  if (!unit_init (tr, p, &p->units[u++], "head", NULL, cin, h, w, cfg->classes, 1, 0,
          FALSE, cbs, 1, error))
    goto fail;
  g_assert (u == p->n_units);

  /* Wire sources and source gradients. */
  {
    Unit *U = p->units;
    for (gint i = 0; i < D; i++) {
      U[2 * i].src = i == 0 ? p->input : p->pool[i - 1];
      U[2 * i].dsrc = i == 0 ? NULL : p->dpool[i - 1];
      U[2 * i + 1].src = U[2 * i].a;
      U[2 * i + 1].dsrc = U[2 * i].da;
    }
    U[2 * D].src = p->pool[D - 1];
    U[2 * D].dsrc = p->dpool[D - 1];
    U[2 * D + 1].src = U[2 * D].a;
    U[2 * D + 1].dsrc = U[2 * D].da;
    for (gint i = D - 1; i >= 0; i--) {
      gint k = 2 * D + 2 + 2 * (D - 1 - i);
      U[k].src = p->cat[i];
      U[k].dsrc = p->dcat[i];
      U[k + 1].src = U[k].a;
      U[k + 1].dsrc = U[k].da;
    }
    U[4 * D + 2].src = U[4 * D + 1].a;
    U[4 * D + 2].dsrc = U[4 * D + 1].da;
  }
  return p;

illegal:
  g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
      "input %dx%d is not a legal size for this network", width, height);
fail:
  plan_free (p);
  return NULL;
}

UnetCpuTrain *
unet_cpu_train_new (const UnetConfig *cfg, const UnetLayout *layout, GError **error)
{
  if (!unet_config_validate (cfg, error))
    return NULL;
  if (cfg->dropout < 0.0 || cfg->dropout >= 1.0) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "dropout %g must be in [0, 1)", cfg->dropout);
    return NULL;
  }
  UnetCpuTrain *tr = g_new0 (UnetCpuTrain, 1);
  tr->cfg = *cfg;
  tr->layout = layout;
  return tr;
}

void
unet_cpu_train_free (UnetCpuTrain *tr)
{
  if (tr == NULL)
    return;
  plan_free (tr->plan);
  g_free (tr);
}

gsize
unet_cpu_train_get_bytes (const UnetCpuTrain *tr)
{
  return tr->plan ? tr->plan->bytes : 0;
}

static gboolean
unit_forward (Unit *u, gfloat *params, gint batch, GError **error)
{
  if (!unet_cpu_conv_forward (u->conv, u->src, params + u->w_off, params + u->b_off,
          u->z, error))
    return FALSE;
  if (u->bn_off[0] >= 0)
    bn_forward_train (u->z, batch, u->cout, u->hw, u->bs, params + u->bn_off[0],
        params + u->bn_off[1], u->a, u->mean, u->invstd, params + u->bn_off[2],
        params + u->bn_off[3], u->relu);
  return TRUE;
}

static gboolean
unit_backward (Unit *u, const gfloat *params, gfloat *grads, gint batch,
    GError **error)
{
  gfloat *da = u->da;
  if (u->bn_off[0] >= 0) {
    bn_backward (u->z, da, batch, u->cout, u->hw, u->bs, params + u->bn_off[0],
        u->mean, u->invstd, u->relu ? u->a : NULL, da, grads + u->bn_off[0],
        grads + u->bn_off[1]);
  } else if (u->relu) {
    const gfloat *a = u->a;
    const gsize numel = u->numel;
#pragma omp parallel for simd schedule(static) if (numel > PAR_MIN)
    for (gsize i = 0; i < numel; i++)
      da[i] = a[i] > 0.0f ? da[i] : 0.0f;
  }
  return unet_cpu_conv_backward (u->conv, u->src, params + u->w_off, da, u->dsrc,
      grads + u->w_off, grads + u->b_off, error);
}

/* cat[:, :F] = e[:, :, y0:y0+uh, x0:x0+uw]  (backward: de[window] += dcat[:, :F]);
 * e (n, f, eh, ew) and cat (n, 2f, uh, uw) in layout bs (f a multiple of bs). */
static void
crop_copy (gfloat *e, gint n, gint f, gint eh, gint ew, gint bs, gfloat *cat,
    gint uh, gint uw, gboolean backward)
{
  const gint y0 = (eh - uh) / 2, x0 = (ew - uw) / 2, fb = f / bs;
#pragma omp parallel for schedule(static) if ((gsize) n * f * uh * uw > PAR_MIN)
  for (gint q = 0; q < n * fb * uh; q++) {
    const gint p = q / uh, y = q % uh;
    gint b = p / fb, c = p % fb;
    gfloat *ep = e + (gsize) p * eh * ew * bs;
    gfloat *cp = cat + ((gsize) b * 2 * fb + c) * uh * uw * bs;
    gfloat *er = ep + ((gsize) (y + y0) * ew + x0) * bs;
    gfloat *cr = cp + (gsize) y * uw * bs;
    if (backward)
#pragma omp simd
      for (gint x = 0; x < uw * bs; x++)
        er[x] += cr[x];
    else
      memcpy (cr, er, sizeof (gfloat) * uw * bs);
  }
}

gboolean
unet_cpu_train_forward (UnetCpuTrain *tr, gfloat *params, const gfloat *input,
    gint batch, gint height, gint width, guint64 seed, gfloat *logits,
    GError **error)
{
  const UnetConfig *cfg = &tr->cfg;
  const gint D = cfg->depth;
  Plan *p = tr->plan;

  if (batch < 1 || batch > 65536 || height < 1 || width < 1) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "training batch %d of %dx%d is not usable", batch, width, height);
    return FALSE;
  }
  if (p == NULL || p->batch != batch || p->height != height || p->width != width) {
    plan_free (tr->plan);
    tr->plan = NULL;
    if ((p = plan_new (tr, batch, height, width, error)) == NULL)
      return FALSE;
    tr->plan = p;
  }
  p->have_forward = FALSE;
  Unit *U = p->units;
  memcpy (p->input, input, sizeof (gfloat) * batch * cfg->in_channels * height * width);
  for (gint i = 0; i < D; i++) {
    gint f = cfg->base_filters << i;
    if (!unit_forward (&U[2 * i], params, batch, error) ||
        !unit_forward (&U[2 * i + 1], params, batch, error))
      return FALSE;
    maxpool2_forward (U[2 * i + 1].a, batch, f, p->eh[i], p->ew[i], p->lbs[i],
        p->pool[i], p->arg[i]);
  }
  if (!unit_forward (&U[2 * D], params, batch, error) ||
      !unit_forward (&U[2 * D + 1], params, batch, error))
    return FALSE;
  const gfloat *y = U[2 * D + 1].a;
  if (p->drop != NULL) {
    unet_cpu_dropout_forward (y, p->drop_numel, cfg->dropout, seed, p->mask, p->drop);
    y = p->drop;
  }
  for (gint i = D - 1; i >= 0; i--) {
    gint f = cfg->base_filters << i;
    gint k = 2 * D + 2 + 2 * (D - 1 - i);
    gsize plane = (gsize) p->uh[i] * p->uw[i];
    crop_copy (U[2 * i + 1].a, batch, f, p->eh[i], p->ew[i], p->lbs[i], p->cat[i],
        p->uh[i], p->uw[i], FALSE);
    /* The up-conv's output is the second half of each sample's concat block. */
    if (!unet_cpu_conv_forward (p->up[i], y, params + p->up_w[i], params + p->up_b[i],
            batch > 1 ? p->upbuf[i] : p->cat[i] + f * plane, error))
      return FALSE;
    for (gint b = 0; batch > 1 && b < batch; b++)
      memcpy (p->cat[i] + (2 * b + 1) * f * plane, p->upbuf[i] + b * f * plane,
          sizeof (gfloat) * f * plane);
    if (!unit_forward (&U[k], params, batch, error) ||
        !unit_forward (&U[k + 1], params, batch, error))
      return FALSE;
    y = U[k + 1].a;
  }
  Unit *head = &U[4 * D + 2];
  if (!unit_forward (head, params, batch, error))
    return FALSE;
  memcpy (logits, head->z, sizeof (gfloat) * head->numel);
  p->have_forward = TRUE;
  return TRUE;
}

gboolean
unet_cpu_train_backward (UnetCpuTrain *tr, const gfloat *params,
    const gfloat *grad_logits, gfloat *grads, GError **error)
{
  const UnetConfig *cfg = &tr->cfg;
  const gint D = cfg->depth;
  Plan *p = tr->plan;

  if (p == NULL || !p->have_forward) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_FAILED,
        "backward pass without a training forward pass before it");
    return FALSE;
  }
  Unit *U = p->units;
  Unit *head = &U[4 * D + 2];
  memcpy (head->da, grad_logits, sizeof (gfloat) * head->numel);
  if (!unit_backward (head, params, grads, p->batch, error))
    return FALSE;
  for (gint i = 0; i < D; i++) {
    gint f = cfg->base_filters << i;
    gint k = 2 * D + 2 + 2 * (D - 1 - i);
    gsize plane = (gsize) p->uh[i] * p->uw[i];
    if (!unit_backward (&U[k + 1], params, grads, p->batch, error) ||
        !unit_backward (&U[k], params, grads, p->batch, error))
      return FALSE;
    /* The up-conv's input: the previous decoder level, or the bottom. */
    const gfloat *ysrc;
    gfloat *dy;
    if (i == D - 1) {
      ysrc = p->drop ? p->drop : U[2 * D + 1].a;
      dy = p->drop ? p->ddrop : U[2 * D + 1].da;
    } else {
      gint kn = 2 * D + 2 + 2 * (D - 2 - i);
      ysrc = U[kn + 1].a;
      dy = U[kn + 1].da;
    }
    for (gint b = 0; p->batch > 1 && b < p->batch; b++)
      memcpy (p->upbuf[i] + b * f * plane, p->dcat[i] + (2 * b + 1) * f * plane,
          sizeof (gfloat) * f * plane);
    if (!unet_cpu_conv_backward (p->up[i], ysrc, params + p->up_w[i],
            p->batch > 1 ? p->upbuf[i] : p->dcat[i] + f * plane, dy, grads + p->up_w[i],
            grads + p->up_b[i], error))
      return FALSE;
  }
  if (p->drop != NULL)
    unet_cpu_dropout_backward (p->ddrop, p->mask, p->drop_numel, cfg->dropout,
        U[2 * D + 1].da);
  if (!unit_backward (&U[2 * D + 1], params, grads, p->batch, error) ||
      !unit_backward (&U[2 * D], params, grads, p->batch, error))
    return FALSE;
  /* Encoder outputs: the pool gradient (written everywhere), plus the skip's. */
  for (gint i = D - 1; i >= 0; i--) {
    gint f = cfg->base_filters << i;
    maxpool2_backward (p->dpool[i], p->arg[i], p->batch, f, p->eh[i], p->ew[i],
        p->lbs[i], U[2 * i + 1].da, FALSE);
    crop_copy (U[2 * i + 1].da, p->batch, f, p->eh[i], p->ew[i], p->lbs[i],
        p->dcat[i], p->uh[i], p->uw[i], TRUE);
    if (!unit_backward (&U[2 * i + 1], params, grads, p->batch, error) ||
        !unit_backward (&U[2 * i], params, grads, p->batch, error))
      return FALSE;
  }
  return TRUE;
}
