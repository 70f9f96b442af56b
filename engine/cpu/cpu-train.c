/* gst-unet engine — the CPU backend's training ops: forward in training mode and
 * backward of every op kind of a training graph (graph.h), on the backend's
 * tensors, plus the parameter and gradient slabs (backend.h's training slots).
 *
 * Nothing here knows the network: the training executor (graph-exec.c) walks the
 * graph and calls op_forward_training / op_backward per node. Each op keeps what
 * its backward needs (batch statistics, pooling argmax, dropout mask); the graph
 * keeps the activations it reads alive.
 *
 * Speed: activations stay in the backend's layouts (nChw16c where the channel count
 * allows, what oneDNN's AVX-512 convolutions read and write), so no activation is
 * reordered around a convolution; only the (small) weights are, from the slab's
 * PyTorch layout. The ReLU after a convolution without batch norm is the forward
 * primitive's post-op; its backward masks the gradient by the stored output. The
 * 2x2 up-convolution is a oneDNN deconvolution writing straight into its half of
 * the concat buffer, image by image. Pooling, batch norm and crop work on the
 * blocked layouts in C; loops over little data run on the calling thread (PAR_MIN).
 */
#include "config.h"

#include "cpu-private.h"
#include "cpu-train.h"
#include "model-private.h"
#include "rng.h"

#include <math.h>
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

/* One argument of a primitive: the user's plain memory (nchw / oihw / x, data
 * handle set per call) and, when the primitive prefers another layout (blocked
 * nChw16c / OIhw16i16o on AVX-512), its own buffer plus the reorder between them. */
typedef struct
{
  dnnl_memory_t user;
  dnnl_memory_t prim;           /* == user when no reorder is needed */
  dnnl_primitive_t reorder;     /* user -> prim (inputs) or prim -> user (outputs) */
  gboolean small;               /* reorder on the calling thread (PAR_MIN) */
} ConvArg;

static void
conv_arg_clear (ConvArg *p)
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
conv_arg_init (ConvArg *p, dnnl_engine_t engine, const dnnl_memory_desc_t *user_md,
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
conv_arg_set (ConvArg *p, const void *data, GError **error)
{
  DNNL_TRY (dnnl_memory_set_data_handle (p->user, (void *) data));
  return TRUE;
fail:
  return FALSE;
}

static gboolean
conv_arg_reorder (ConvArg *p, dnnl_stream_t stream, gboolean input, GError **error)
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
  N_CONV_ARGS
};

struct _UnetCpuConv
{
  gint n, cin, cout, k, pad, h, w, oh, ow;
  dnnl_stream_t stream;         /* the backend's (borrowed) */
  dnnl_primitive_t fwd, bwd_data, bwd_weights;
  ConvArg args[N_CONV_ARGS];
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
  for (gint i = 0; i < N_CONV_ARGS; i++)
    conv_arg_clear (&c->args[i]);
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
conv_new_full (CpuCtx *ctx, gboolean deconv, gint n, gint cin, gint h, gint w, gint cout,
    gint k, gint stride, gint pad, gint src_bs, gint dst_bs, gboolean relu,
    GError **error)
{
  dnnl_engine_t engine = ctx->engine;
  UnetCpuConv *c;
  dnnl_memory_desc_t smd, wmd, bmd, dmd, sany, wany, dany;
  dnnl_convolution_desc_t fd, bdd, bwd;
  dnnl_primitive_desc_t fpd = NULL, bdpd = NULL, bwpd = NULL;
  dnnl_primitive_attr_t attr = NULL;
  dnnl_post_ops_t po = NULL;
  dnnl_dims_t strides = { stride, stride }, padding = { pad, pad };

  c = g_new0 (UnetCpuConv, 1);
  c->stream = ctx->stream;
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
     * kept in blocked layouts that these normally are, so the args reorder only
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
  {
    struct
    {
      gint port;
      const dnnl_memory_desc_t *user;
      dnnl_primitive_desc_t pd;
      dnnl_query_t q;
      gboolean input;
    } spec[N_CONV_ARGS] = {
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
    for (gint i = 0; i < N_CONV_ARGS; i++)
      if (!conv_arg_init (&c->args[spec[i].port], engine, spec[i].user,
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
unet_cpu_conv_new (UnetBackend *be, gint n, gint cin, gint h, gint w, gint cout, gint k,
    gint pad, GError **error)
{
  g_return_val_if_fail (be != NULL && g_strcmp0 (be->iface->name, "cpu") == 0, NULL);
  return conv_new_full (be->priv, FALSE, n, cin, h, w, cout, k, 1, pad, 1, 1, FALSE,
      error);
}

/* Sets the user handles of the arguments `which`, reorders the inputs, runs `prim`,
 * reorders the outputs and waits. */
static gboolean
conv_run (UnetCpuConv *c, dnnl_primitive_t prim, const gint *which,
    const gint *arg_ids, const void *const *data, const gboolean *input, gint n,
    GError **error)
{
  dnnl_exec_arg_t args[4];
  for (gint i = 0; i < n; i++) {
    ConvArg *p = &c->args[which[i]];
    if (!conv_arg_set (p, data[i], error))
      return FALSE;
    if (input[i] && !conv_arg_reorder (p, c->stream, TRUE, error))
      return FALSE;
    args[i] = (dnnl_exec_arg_t) { arg_ids[i], p->prim };
  }
  DNNL_TRY (dnnl_primitive_execute (prim, c->stream, n, args));
  for (gint i = 0; i < n; i++)
    if (!input[i] && !conv_arg_reorder (&c->args[which[i]], c->stream, FALSE, error))
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
  const gint args[4] = { F_SRC, F_WEI, F_BIAS, F_DST };
  const gint ids[4] = { DNNL_ARG_SRC, DNNL_ARG_WEIGHTS, DNNL_ARG_BIAS, DNNL_ARG_DST };
  const void *data[4] = { src, weight, bias, dst };
  const gboolean input[4] = { TRUE, TRUE, TRUE, FALSE };
  return conv_run (c, c->fwd, args, ids, data, input, 4, error);
}

gboolean
unet_cpu_conv_backward (UnetCpuConv *c, const gfloat *src, const gfloat *weight,
    const gfloat *ddst, gfloat *dsrc, gfloat *dweight, gfloat *dbias, GError **error)
{
  const gsize nw = (gsize) c->cout * c->cin * c->k * c->k;
  {
    const gint args[4] = { W_SRC, W_DDST, W_DWEI, W_DBIAS };
    const gint ids[4] = { DNNL_ARG_SRC, DNNL_ARG_DIFF_DST, DNNL_ARG_DIFF_WEIGHTS,
      DNNL_ARG_DIFF_BIAS
    };
    /* With a reorder from the primitive's layout, the reorder adds into dweight. */
    const gboolean direct = c->args[W_DWEI].reorder != NULL;
    const void *data[4] = { src, ddst, direct ? dweight : c->dw_tmp, c->db_tmp };
    const gboolean input[4] = { TRUE, TRUE, FALSE, FALSE };
    if (!conv_run (c, c->bwd_weights, args, ids, data, input, 4, error))
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
    const gint args[3] = { D_DDST, D_WEI, D_DSRC };
    const gint ids[3] = { DNNL_ARG_DIFF_DST, DNNL_ARG_WEIGHTS, DNNL_ARG_DIFF_SRC };
    const void *data[3] = { ddst, weight, dsrc };
    const gboolean input[3] = { TRUE, TRUE, FALSE };
    return conv_run (c, c->bwd_data, args, ids, data, input, 3, error);
  }
}

/* ------------------------------------------------ training graph ops -- */

/* An op of a training graph on the backend's tensors (backend.h, UnetOpDesc).
 * Activations are f32 in the backend's layouts (nChw16c when the channel count is
 * a multiple of 16, else nchw: cpu_tensor_block), the same for a tensor and its
 * gradient. Ops touching a channel view (the halves of a concat buffer) run once
 * per image on dense N=1 images (cpu_image). */
struct _CpuTrainOp
{
  CpuCtx *ctx;
  UnetOpKind kind;
  gboolean relu, accumulate;
  UnetDims sd, dd;              /* src and dst dimensions */
  gint bs;                      /* channel block of src (and of dst: equal for the
                                   C kernels) */
  /* image b of src, dst, diff_src, diff_dst at base + b * stride; n_images 1
   * (whole tensors) or N (views) */
  gint n_images;
  guint8 *src, *dst, *dsrc, *ddst;
  gsize src_stride, dst_stride;
  UnetCpuConv *conv;            /* CONV, UPCONV2 */
  gint weight, bias, bn[4];     /* parameter slab offsets */
  gfloat *mean, *invstd;        /* BATCHNORM: batch statistics */
  guint8 *saved;                /* MAXPOOL2: argmax; DROPOUT: mask */
  gdouble dropout;
  gint crop_y, crop_x;
  gboolean have_forward;
};

void
cpu_train_op_free (CpuTrainOp *op)
{
  if (op == NULL)
    return;
  unet_cpu_conv_free (op->conv);
  g_free (op->mean);
  g_free (op->invstd);
  g_free (op->saved);
  g_free (op);
}

static gboolean
train_check_tensor (UnetBackendTensor *t, const gchar *what, GError **error)
{
  UnetBackendTensor *root = t->parent ? t->parent : t;
  if (root->md.data_type != dnnl_f32) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "CPU training computes in fp32: the %s tensor is %s (precision=bf16 is "
        "for inference)", what, dnnl_dt2str (root->md.data_type));
    return FALSE;
  }
  if (cpu_tensor_data (t) == NULL) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_FAILED,
        "CPU backend: the %s tensor is used before it was bound to an arena", what);
    return FALSE;
  }
  return TRUE;
}

static gboolean
same_dims (const UnetDims *a, const UnetDims *b)
{
  return a->n == b->n && a->c == b->c && a->h == b->h && a->w == b->w;
}

CpuTrainOp *
cpu_train_op_new (CpuCtx *ctx, const UnetOpDesc *desc, GError **error)
{
  CpuTrainOp *op = g_new0 (CpuTrainOp, 1);
  UnetBackendTensor *ts[4] = { desc->src, desc->dst, desc->diff_src, desc->diff_dst };
  const gchar *names[4] = { "source", "destination", "source gradient",
    "destination gradient" };
  gboolean views = FALSE;
  dnnl_memory_desc_t md;
  gsize stride;

  /* oneDNN configures a primitive (its blocking, how backward-weights splits
   * its sums) for the thread count current at creation: the net's own, or a
   * trainer's results would depend on what ran in the process before it */
  cpu_set_threads (ctx);
  op->ctx = ctx;
  op->kind = desc->kind;
  op->relu = desc->relu;
  op->accumulate = desc->accumulate;
  op->weight = desc->weight;
  op->bias = desc->bias;
  memcpy (op->bn, desc->bn, sizeof op->bn);
  op->dropout = desc->dropout;
  op->crop_y = desc->crop_y;
  op->crop_x = desc->crop_x;
  if (desc->src == NULL || desc->dst == NULL || desc->diff_dst == NULL) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "training op without its source, destination or destination gradient");
    goto fail;
  }
  op->sd = desc->src->dims;
  op->dd = desc->dst->dims;
  if ((desc->diff_src != NULL && !same_dims (&desc->diff_src->dims, &op->sd))
      || !same_dims (&desc->diff_dst->dims, &op->dd)) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "a gradient tensor's dimensions differ from its tensor's");
    goto fail;
  }
  for (gint i = 0; i < 4; i++) {
    if (ts[i] == NULL)
      continue;
    if (!train_check_tensor (ts[i], names[i], error))
      goto fail;
    views |= ts[i]->parent != NULL;
  }
  /* the gradient of a tensor has the tensor's layout (both made by tensor_new
   * from the same dimensions, views from equal offsets) */
  if (cpu_tensor_block (desc->src) != (desc->diff_src ? cpu_tensor_block (desc->diff_src)
          : cpu_tensor_block (desc->src))
      || cpu_tensor_block (desc->dst) != cpu_tensor_block (desc->diff_dst)) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "a gradient tensor's layout differs from its tensor's");
    goto fail;
  }
  if (desc->accumulate && (desc->kind == UNET_OP_CONV || desc->kind == UNET_OP_UPCONV2
          || desc->kind == UNET_OP_BATCHNORM)) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "the CPU backend writes the source gradient of a convolution or batch norm "
        "whole; it cannot add it to another reader's");
    goto fail;
  }
  op->n_images = views ? op->sd.n : 1;
  if (!cpu_image (desc->src, &md, &op->src, &op->src_stride, error)
      || !cpu_image (desc->dst, &md, &op->dst, &op->dst_stride, error)
      || !cpu_image (desc->diff_dst, &md, &op->ddst, &stride, error)
      || (desc->diff_src != NULL
          && !cpu_image (desc->diff_src, &md, &op->dsrc, &stride, error)))
    goto fail;
  op->bs = cpu_tensor_block (desc->src);

  switch (desc->kind) {
    case UNET_OP_CONV:
    case UNET_OP_UPCONV2:{
      const gboolean up = desc->kind == UNET_OP_UPCONV2;
      if (desc->weight < 0 || desc->bias < 0 || desc->k < 1) {
        g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
            "training convolution without parameters or kernel size");
        goto fail;
      }
      if (desc->relu && (desc->dst->parent != NULL || desc->diff_dst->parent != NULL)) {
        g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
            "a convolution with a fused ReLU must write a whole tensor");
        goto fail;
      }
      op->conv = conv_new_full (ctx, up, views ? 1 : op->sd.n, op->sd.c, op->sd.h,
          op->sd.w, op->dd.c, desc->k, up ? 2 : 1, up ? 0 : desc->pad, op->bs,
          cpu_tensor_block (desc->dst), desc->relu, error);
      if (op->conv == NULL)
        goto fail;
      if (op->conv->oh != op->dd.h || op->conv->ow != op->dd.w) {
        g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
            "convolution output %dx%d does not match its destination %dx%d",
            op->conv->ow, op->conv->oh, op->dd.w, op->dd.h);
        goto fail;
      }
      break;
    }
    case UNET_OP_BATCHNORM:
      for (gint q = 0; q < 4; q++)
        if (desc->bn[q] < 0) {
          g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
              "training batch norm without its parameters");
          goto fail;
        }
      /* elementwise shape rules: */
      G_GNUC_FALLTHROUGH;
    case UNET_OP_DROPOUT:
      if (!same_dims (&op->sd, &op->dd) || views
          || cpu_tensor_block (desc->src) != cpu_tensor_block (desc->dst)) {
        g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
            "batch norm / dropout: src and dst must be whole tensors of one shape "
            "and layout");
        goto fail;
      }
      if (desc->kind == UNET_OP_BATCHNORM) {
        op->mean = g_new (gfloat, op->sd.c);
        op->invstd = g_new (gfloat, op->sd.c);
      } else if (desc->dropout < 0.0 || desc->dropout >= 1.0) {
        g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
            "dropout %g must be in [0, 1)", desc->dropout);
        goto fail;
      } else {
        op->saved = g_try_malloc ((gsize) op->sd.n * op->sd.c * op->sd.h * op->sd.w);
      }
      break;
    case UNET_OP_MAXPOOL2:
      if (views || op->sd.h % 2 || op->sd.w % 2 || op->dd.h != op->sd.h / 2
          || op->dd.w != op->sd.w / 2 || op->dd.c != op->sd.c
          || cpu_tensor_block (desc->src) != cpu_tensor_block (desc->dst)) {
        g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
            "max-pool: dst must be a whole tensor of half src's even size");
        goto fail;
      }
      op->saved = g_try_malloc ((gsize) op->dd.n * op->dd.c * op->dd.h * op->dd.w);
      break;
    case UNET_OP_CROP_COPY:
      if (op->sd.n != op->dd.n || op->sd.c != op->dd.c || desc->crop_y < 0
          || desc->crop_x < 0 || desc->crop_y + op->dd.h > op->sd.h
          || desc->crop_x + op->dd.w > op->sd.w
          || cpu_tensor_block (desc->src) != cpu_tensor_block (desc->dst)) {
        g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
            "crop window (%d,%d)+%dx%d outside a %dx%d tensor, or layouts differ",
            desc->crop_y, desc->crop_x, op->dd.h, op->dd.w, op->sd.h, op->sd.w);
        goto fail;
      }
      break;
    case UNET_OP_SOFTMAX:
    case UNET_OP_SIGMOID:
    default:
      g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
          "op kind %d has no training form on the CPU backend (training graphs end "
          "at the logits)", desc->kind);
      goto fail;
  }
  if ((desc->kind == UNET_OP_MAXPOOL2 || desc->kind == UNET_OP_DROPOUT)
      && op->saved == NULL) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_OUT_OF_MEMORY,
        "cannot allocate the saved state of a training op");
    goto fail;
  }
  return op;

fail:
  cpu_train_op_free (op);
  return NULL;
}

static gboolean
have_params (CpuCtx *ctx, GError **error)
{
  if (ctx->params == NULL) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "CPU backend: training op run before params_set");
    return FALSE;
  }
  return TRUE;
}

/* The crop window of each image of e (n, c, eh, ew) to or from v (n, c, vh, vw),
 * both in channel blocks of bs, image b at base + b * stride. forward: v = window;
 * backward: window of e (+)= v, and (write) zero outside it. */
static void
crop_window (guint8 *e, gsize e_stride, guint8 *v, gsize v_stride, gint n,
    gint n_images, const UnetDims *ed, const UnetDims *vd, gint bs, gint y0, gint x0,
    gboolean backward, gboolean accumulate)
{
  const gint cb = ed->c / bs, per = n / n_images;
  const gint total = n * cb * vd->h;
  if (backward && !accumulate)
    for (gint b = 0; b < n_images; b++)
      memset (e + b * e_stride, 0, sizeof (gfloat) * per * ed->c * ed->h * ed->w);
#pragma omp parallel for schedule(static) if ((gsize) total * vd->w * bs > PAR_MIN)
  for (gint q = 0; q < total; q++) {
    const gint y = q % vd->h, p = q / vd->h;    /* p: plane of blocks over n */
    const gint img = p / cb, c = p % cb;
    /* image img lives in memory image img / per, sample img % per within it */
    const gint mi = img / per, si = img % per;
    gfloat *ep = (gfloat *) (e + mi * e_stride) + ((gsize) si * cb + c) * ed->h * ed->w * bs;
    gfloat *vp = (gfloat *) (v + mi * v_stride) + ((gsize) si * cb + c) * vd->h * vd->w * bs;
    gfloat *er = ep + ((gsize) (y + y0) * ed->w + x0) * bs;
    gfloat *vr = vp + (gsize) y * vd->w * bs;
    if (backward)
#pragma omp simd
      for (gint x = 0; x < vd->w * bs; x++)
        er[x] += vr[x];
    else
      memcpy (vr, er, sizeof (gfloat) * vd->w * bs);
  }
}

gboolean
cpu_train_op_forward (CpuTrainOp *op, guint64 seed, GError **error)
{
  CpuCtx *ctx = op->ctx;
  gfloat *P = ctx->params;
  const gsize numel = (gsize) op->sd.n * op->sd.c * op->sd.h * op->sd.w;

  cpu_set_threads (ctx);
  op->have_forward = FALSE;
  switch (op->kind) {
    case UNET_OP_CONV:
    case UNET_OP_UPCONV2:
      if (!have_params (ctx, error))
        return FALSE;
      for (gint b = 0; b < op->n_images; b++)
        if (!unet_cpu_conv_forward (op->conv,
                (const gfloat *) (op->src + b * op->src_stride), P + op->weight,
                P + op->bias, (gfloat *) (op->dst + b * op->dst_stride), error))
          return FALSE;
      break;
    case UNET_OP_BATCHNORM:
      if (!have_params (ctx, error))
        return FALSE;
      bn_forward_train ((const gfloat *) op->src, op->sd.n, op->sd.c,
          (gsize) op->sd.h * op->sd.w, op->bs, P + op->bn[0], P + op->bn[1],
          (gfloat *) op->dst, op->mean, op->invstd, P + op->bn[2], P + op->bn[3],
          op->relu);
      break;
    case UNET_OP_DROPOUT:
      unet_cpu_dropout_forward ((const gfloat *) op->src, numel, op->dropout, seed,
          op->saved, (gfloat *) op->dst);
      break;
    case UNET_OP_MAXPOOL2:
      maxpool2_forward ((const gfloat *) op->src, op->sd.n, op->sd.c, op->sd.h,
          op->sd.w, op->bs, (gfloat *) op->dst, op->saved);
      break;
    case UNET_OP_CROP_COPY:
      crop_window (op->src, op->src_stride, op->dst, op->dst_stride, op->sd.n,
          op->n_images, &op->sd, &op->dd, op->bs, op->crop_y, op->crop_x, FALSE, FALSE);
      break;
    default:
      g_assert_not_reached ();
  }
  op->have_forward = TRUE;
  return TRUE;
}

/* diff_dst *= (dst > 0), in place: the backward of a fused ReLU. */
static void
relu_mask (gfloat *ddst, const gfloat *dst, gsize numel)
{
#pragma omp parallel for simd schedule(static) if (numel > PAR_MIN)
  for (gsize i = 0; i < numel; i++)
    ddst[i] = dst[i] > 0.0f ? ddst[i] : 0.0f;
}

gboolean
cpu_train_op_backward (CpuTrainOp *op, GError **error)
{
  CpuCtx *ctx = op->ctx;
  const gfloat *P = ctx->params;
  gfloat *G = ctx->grads;
  const gsize numel = (gsize) op->sd.n * op->sd.c * op->sd.h * op->sd.w;

  if (!op->have_forward) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_FAILED,
        "backward pass of an op without a training forward pass before it");
    return FALSE;
  }
  cpu_set_threads (ctx);
  switch (op->kind) {
    case UNET_OP_CONV:
    case UNET_OP_UPCONV2:
      if (!have_params (ctx, error))
        return FALSE;
      if (op->relu)
        relu_mask ((gfloat *) op->ddst, (const gfloat *) op->dst,
            (gsize) op->dd.n * op->dd.c * op->dd.h * op->dd.w);
      for (gint b = 0; b < op->n_images; b++)
        if (!unet_cpu_conv_backward (op->conv,
                (const gfloat *) (op->src + b * op->src_stride), P + op->weight,
                (const gfloat *) (op->ddst + b * op->dst_stride),
                op->dsrc ? (gfloat *) (op->dsrc + b * op->src_stride) : NULL,
                G + op->weight, G + op->bias, error))
          return FALSE;
      break;
    case UNET_OP_BATCHNORM:
      if (!have_params (ctx, error))
        return FALSE;
      bn_backward ((const gfloat *) op->src, (const gfloat *) op->ddst, op->sd.n,
          op->sd.c, (gsize) op->sd.h * op->sd.w, op->bs, P + op->bn[0], op->mean,
          op->invstd, op->relu ? (const gfloat *) op->dst : NULL,
          op->dsrc ? (gfloat *) op->dsrc : (gfloat *) op->ddst, G + op->bn[0],
          G + op->bn[1]);
      break;
    case UNET_OP_DROPOUT:
      if (op->dsrc == NULL)
        break;
      if (op->accumulate) {
        const gfloat scale = (gfloat) (1.0 / (1.0 - op->dropout));
        gfloat *ds = (gfloat *) op->dsrc;
        const gfloat *dd = (const gfloat *) op->ddst;
        for (gsize i = 0; i < numel; i++)
          ds[i] += op->saved[i] ? dd[i] * scale : 0.0f;
      } else {
        unet_cpu_dropout_backward ((const gfloat *) op->ddst, op->saved, numel,
            op->dropout, (gfloat *) op->dsrc);
      }
      break;
    case UNET_OP_MAXPOOL2:
      if (op->dsrc != NULL)
        maxpool2_backward ((const gfloat *) op->ddst, op->saved, op->sd.n, op->sd.c,
            op->sd.h, op->sd.w, op->bs, (gfloat *) op->dsrc, op->accumulate);
      break;
    case UNET_OP_CROP_COPY:
      if (op->dsrc != NULL)
        crop_window (op->dsrc, op->src_stride, op->ddst, op->dst_stride, op->sd.n,
            op->n_images, &op->sd, &op->dd, op->bs, op->crop_y, op->crop_x, TRUE,
            op->accumulate);
      break;
    default:
      g_assert_not_reached ();
  }
  return TRUE;
}

/* ------------------------------------------------------ parameter slab -- */

gboolean
cpu_params_set (UnetBackend *be, const gfloat *host, gsize numel, GError **error)
{
  CpuCtx *ctx = be->priv;
  if (ctx->params != NULL && numel != ctx->n_params) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "parameter slab of %" G_GSIZE_FORMAT " floats, the backend holds %"
        G_GSIZE_FORMAT, numel, ctx->n_params);
    return FALSE;
  }
  if (ctx->params == NULL) {
    if ((ctx->params = cpu_alloc (numel * sizeof (gfloat), error)) == NULL)
      return FALSE;
    if ((ctx->grads = cpu_alloc (numel * sizeof (gfloat), error)) == NULL) {
      free (ctx->params);
      ctx->params = NULL;
      return FALSE;
    }
    memset (ctx->grads, 0, numel * sizeof (gfloat));
    ctx->n_params = numel;
  }
  if (host != ctx->params)
    memcpy (ctx->params, host, numel * sizeof (gfloat));
  return TRUE;
}

/* backend slab -> host */
static gboolean
slab_read (CpuCtx *ctx, const gfloat *slab, gfloat *host, GError **error)
{
  if (!have_params (ctx, error))
    return FALSE;
  if (host != slab)
    memcpy (host, slab, ctx->n_params * sizeof (gfloat));
  return TRUE;
}

gboolean
cpu_params_get (UnetBackend *be, gfloat *host, GError **error)
{
  CpuCtx *ctx = be->priv;
  return slab_read (ctx, ctx->params, host, error);
}

gboolean
cpu_grads_zero (UnetBackend *be, GError **error)
{
  CpuCtx *ctx = be->priv;
  if (!have_params (ctx, error))
    return FALSE;
  memset (ctx->grads, 0, ctx->n_params * sizeof (gfloat));
  return TRUE;
}

gboolean
cpu_grads_get (UnetBackend *be, gfloat *host, GError **error)
{
  CpuCtx *ctx = be->priv;
  return slab_read (ctx, ctx->grads, host, error);
}

gfloat *
cpu_params_host (UnetBackend *be, gboolean gradients)
{
  CpuCtx *ctx = be->priv;
  return gradients ? ctx->grads : ctx->params;
}

/* ------------------------------------------------- the rest of a step -- */

gboolean
cpu_loss (UnetBackend *be, UnetBackendTensor *logits, const gint32 *labels,
    const gfloat *weights, gdouble dice_weight, UnetBackendTensor *diff_logits,
    gdouble *loss, UnetConfusion *confusion, GError **error)
{
  CpuCtx *ctx = be->priv;
  const UnetDims *d = &logits->dims;
  const gsize n = (gsize) d->n * d->c * d->h * d->w;

  if (!unet_loss_buffers (&ctx->loss_z, &ctx->loss_g, &ctx->loss_n, n, error))
    return FALSE;
  /* the logits as dense NCHW (a copy from the blocked layout, if any) */
  return be->iface->download (logits, ctx->loss_z, error)
      && unet_loss_batch (ctx->loss_z, labels, weights, d->n, d->c, d->h, d->w,
          dice_weight, loss, ctx->loss_g, confusion, error)
      && be->iface->upload (diff_logits, ctx->loss_g, error);
}

static gboolean
cpu_state_slabs (CpuCtx *ctx, guint n_buffers, GError **error)
{
  if (!have_params (ctx, error))
    return FALSE;
  for (guint b = 0; b < n_buffers && b < 2; b++)
    if (ctx->opt_state[b] == NULL) {
      if ((ctx->opt_state[b] = cpu_alloc (ctx->n_params * sizeof (gfloat), error)) == NULL)
        return FALSE;
      memset (ctx->opt_state[b], 0, ctx->n_params * sizeof (gfloat));
    }
  return TRUE;
}

gboolean
cpu_optimizer_update (UnetBackend *be, const UnetOptimUpdate *u, gboolean *finite,
    GError **error)
{
  CpuCtx *ctx = be->priv;
  if (u->n != ctx->n_params || u->n_buffers > 2) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "optimiser update of %" G_GSIZE_FORMAT " floats with %u state slabs, the "
        "backend holds %" G_GSIZE_FORMAT, u->n, u->n_buffers, ctx->n_params);
    return FALSE;
  }
  if (!cpu_state_slabs (ctx, u->n_buffers, error))
    return FALSE;
  cpu_set_threads (ctx);
  if (!unet_optim_update_host (u, ctx->params, ctx->grads, ctx->opt_state, error))
    return FALSE;
  *finite = unet_slab_all_finite (ctx->params, ctx->n_params);
  return TRUE;
}

gboolean
cpu_optimizer_state (UnetBackend *be, guint index, gfloat *host, gboolean to_backend,
    GError **error)
{
  CpuCtx *ctx = be->priv;
  if (index >= 2) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "optimiser state slab %u of 2", index);
    return FALSE;
  }
  if (!cpu_state_slabs (ctx, index + 1, error))
    return FALSE;
  if (to_backend)
    memcpy (ctx->opt_state[index], host, ctx->n_params * sizeof (gfloat));
  else
    memcpy (host, ctx->opt_state[index], ctx->n_params * sizeof (gfloat));
  return TRUE;
}
