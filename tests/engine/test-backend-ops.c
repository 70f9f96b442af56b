/* Backend conformance: every op kind of the graph (graph.h), forward in training
 * mode and backward, through the backend interface (backend.h) — on the CPU
 * backend always, and on the CUDA backend when one is built and a GPU is present
 * (without a GPU its half is reported as skipped; its kernel bodies are checked on
 * the CPU by cuda-bodies). In the spirit of ggml's test-backend-ops.
 *
 * The ops run on the backend's own tensors: 16- and 32-channel cases are in the
 * CPU backend's blocked layout (nChw16c), 3/5-channel ones plain; destinations
 * that are channel views of a concat buffer (crop and transposed convolution, as
 * in the U-Net) are included, and so is the `accumulate` flag (the gradient added
 * to what a later reader's backward wrote).
 *
 * Forward: against a float64 reference written here from the op's definition
 * (backend.h), tolerance 1e-5 of the sum of |terms| per output element (float32
 * accumulation of at most a few hundred products: n·2^-24 ≈ 1e-5 for n ≈ 170,
 * with margin for the implementations' summation orders).
 *
 * Backward: f = Σ r·dst (r random) and central differences of f in float64 over
 * a sample of source elements and parameters, against op_backward's diff_src and
 * gradient slab with diff_dst = r. Tolerance as tests/engine/test-train-ops.c: the
 * rounding of f (2^-24 Σ|r·dst| per evaluation, over the step), 1e-4 relative for
 * the float32 backward, and for batch norm (the one op not piecewise linear) the
 * truncation term ~ s²/6·f''' bounded by 1e-4 of the largest gradient. A sample
 * whose perturbation flips a ReLU changes f's piece and is skipped (counted); max
 * pool inputs are distinct values 0.05 apart, so a step of 0.01 never moves an
 * argmax. */
#include "config.h"

#include "backend.h"

#include <math.h>
#include <string.h>

#define STEP 1e-2
#define SAMPLES 24

typedef struct
{
  const gchar *name;
  UnetOpKind kind;
  gint n, c, h, w;              /* src */
  gint cout, k, pad;            /* CONV / UPCONV2 */
  gboolean relu;
  gint view_c, view_off;        /* dst (and diff_dst) a view [off, off + c) of a
                                   view_c-channel parent; 0: whole */
  gint crop_y, crop_x, oh, ow;  /* CROP_COPY: window */
  gboolean accumulate;
  gdouble dropout;
} Case;

typedef struct
{
  const Case *c;
  UnetBackend *be;
  UnetBackendArena *arena;
  UnetBackendTensor *t[6];      /* src, dst, dsrc, ddst, dst parent, ddst parent */
  UnetBackendOp *op;
  UnetDims sd, dd;
  gsize ns, nd, np;
  gfloat *x, *y, *r, *p;        /* host: src, dst, r, parameters */
  gint w_off, b_off, bn[4];
  guint64 seed;
  gint skipped;
} Run;

static gsize
numel (const UnetDims *d)
{
  return (gsize) d->n * d->c * d->h * d->w;
}

static void
dst_dims (const Case *c, UnetDims *d)
{
  *d = (UnetDims) { c->n, c->c, c->h, c->w };
  switch (c->kind) {
    case UNET_OP_CONV:
      d->c = c->cout;
      d->h = c->h + 2 * c->pad - c->k + 1;
      d->w = c->w + 2 * c->pad - c->k + 1;
      break;
    case UNET_OP_UPCONV2:
      d->c = c->cout;
      d->h = 2 * c->h;
      d->w = 2 * c->w;
      break;
    case UNET_OP_MAXPOOL2:
      d->h = c->h / 2;
      d->w = c->w / 2;
      break;
    case UNET_OP_CROP_COPY:
      d->h = c->oh;
      d->w = c->ow;
      break;
    default:
      break;
  }
}

/* ------------------------------------------------------------ reference -- */

/* dst (plain NCHW, double) of the op on x with parameters p; abs: Σ|terms|. */
static void
reference (const Run *R, const gfloat *x, const gfloat *p, gdouble *out, gdouble *abs,
    gdouble *bmean, gdouble *bvar)
{
  const Case *c = R->c;
  const UnetDims *s = &R->sd, *d = &R->dd;
  const gsize plane = (gsize) s->h * s->w;
#define X(b, ch, y, xx) ((gdouble) x[(((gsize) (b) * s->c + (ch)) * s->h + (y)) * s->w + (xx)])
#define O(b, ch, y, xx) (((gsize) (b) * d->c + (ch)) * d->h + (y)) * d->w + (xx)
  memset (out, 0, sizeof (gdouble) * numel (d));
  memset (abs, 0, sizeof (gdouble) * numel (d));
  switch (c->kind) {
    case UNET_OP_CONV:
      for (gint b = 0; b < d->n; b++)
        for (gint o = 0; o < d->c; o++)
          for (gint y = 0; y < d->h; y++)
            for (gint xx = 0; xx < d->w; xx++) {
              gdouble v = p[R->b_off + o], a = fabs (v);
              for (gint i = 0; i < s->c; i++)
                for (gint ky = 0; ky < c->k; ky++)
                  for (gint kx = 0; kx < c->k; kx++) {
                    gint sy = y + ky - c->pad, sx = xx + kx - c->pad;
                    if (sy < 0 || sx < 0 || sy >= s->h || sx >= s->w)
                      continue;
                    gdouble t = p[R->w_off + ((o * s->c + i) * c->k + ky) * c->k + kx]
                        * X (b, i, sy, sx);
                    v += t;
                    a += fabs (t);
                  }
              out[O (b, o, y, xx)] = c->relu ? MAX (v, 0.0) : v;
              abs[O (b, o, y, xx)] = a;
            }
      break;
    case UNET_OP_UPCONV2:
      for (gint b = 0; b < d->n; b++)
        for (gint o = 0; o < d->c; o++)
          for (gint y = 0; y < d->h; y++)
            for (gint xx = 0; xx < d->w; xx++) {
              gdouble v = p[R->b_off + o], a = fabs (v);
              for (gint i = 0; i < s->c; i++) {
                gdouble t = p[R->w_off + ((i * d->c + o) * 2 + y % 2) * 2 + xx % 2]
                    * X (b, i, y / 2, xx / 2);
                v += t;
                a += fabs (t);
              }
              out[O (b, o, y, xx)] = v;
              abs[O (b, o, y, xx)] = a;
            }
      break;
    case UNET_OP_BATCHNORM:
      for (gint ch = 0; ch < s->c; ch++) {
        gdouble m = 0, v = 0, cnt = (gdouble) s->n * plane;
        for (gint b = 0; b < s->n; b++)
          for (gsize q = 0; q < plane; q++)
            m += X (b, ch, 0, q);
        m /= cnt;
        for (gint b = 0; b < s->n; b++)
          for (gsize q = 0; q < plane; q++)
            v += (X (b, ch, 0, q) - m) * (X (b, ch, 0, q) - m);
        v /= cnt;
        if (bmean) {
          bmean[ch] = m;
          bvar[ch] = v * cnt / (cnt - 1);
        }
        gdouble inv = 1.0 / sqrt (v + 1e-5);
        for (gint b = 0; b < s->n; b++)
          for (gsize q = 0; q < plane; q++) {
            gdouble t = (X (b, ch, 0, q) - m) * inv * p[R->bn[0] + ch] + p[R->bn[1] + ch];
            out[O (b, ch, 0, q)] = c->relu ? MAX (t, 0.0) : t;
            /* batch statistics over n·h·w values: their rounding scales with
             * the plane */
            abs[O (b, ch, 0, q)] = (fabs (t) + 1.0) * 10.0;
          }
      }
      break;
    case UNET_OP_MAXPOOL2:
      for (gint b = 0; b < d->n; b++)
        for (gint ch = 0; ch < d->c; ch++)
          for (gint y = 0; y < d->h; y++)
            for (gint xx = 0; xx < d->w; xx++) {
              gdouble v = X (b, ch, 2 * y, 2 * xx);
              v = MAX (v, X (b, ch, 2 * y, 2 * xx + 1));
              v = MAX (v, X (b, ch, 2 * y + 1, 2 * xx));
              v = MAX (v, X (b, ch, 2 * y + 1, 2 * xx + 1));
              out[O (b, ch, y, xx)] = v;
              abs[O (b, ch, y, xx)] = fabs (v);
            }
      break;
    case UNET_OP_CROP_COPY:
      for (gint b = 0; b < d->n; b++)
        for (gint ch = 0; ch < d->c; ch++)
          for (gint y = 0; y < d->h; y++)
            for (gint xx = 0; xx < d->w; xx++) {
              out[O (b, ch, y, xx)] = X (b, ch, y + c->crop_y, xx + c->crop_x);
              abs[O (b, ch, y, xx)] = fabs (out[O (b, ch, y, xx)]);
            }
      break;
    default:
      g_assert_not_reached ();
  }
#undef X
#undef O
}

/* ---------------------------------------------------------------- run -- */

static gboolean
run_forward (Run *R, GError **error)
{
  const UnetBackendIface *bi = R->be->iface;
  return bi->params_set (R->be, R->p, R->np, error)
      && bi->upload (R->t[0], R->x, error)
      && bi->op_forward_training (R->op, R->seed, error)
      && bi->download (R->t[1], R->y, error)
      && unet_backend_synchronize (R->be, error);
}

/* f = Σ r·dst; abs = Σ|r·dst|; mask: a hash of which outputs are > 0 (ReLU). */
static gdouble
objective (Run *R, gdouble *abs, guint64 *mask)
{
  g_autoptr (GError) error = NULL;
  gdouble f = 0, a = 0;
  guint64 h = 1469598103934665603ull;
  if (!run_forward (R, &error))
    g_error ("%s: forward: %s", R->c->name, error->message);
  for (gsize i = 0; i < R->nd; i++) {
    f += (gdouble) R->r[i] * R->y[i];
    a += fabs ((gdouble) R->r[i] * R->y[i]);
    h = (h ^ (R->y[i] > 0.0f)) * 1099511628211ull;
  }
  *abs = a;
  *mask = h;
  return f;
}

static void
fd_check (Run *R, const gchar *what, gfloat *v, gsize n, const gfloat *grad,
    gdouble trunc_rel, GRand *rnd)
{
  gdouble gmax = 0.0;
  for (gsize i = 0; i < n; i++)
    gmax = MAX (gmax, fabs (grad[i]));
  g_assert_cmpfloat (gmax, >, 0.0);
  for (gint s = 0; s < SAMPLES && s < (gint) n; s++) {
    gsize i = n <= SAMPLES ? (gsize) s : (gsize) g_rand_int_range (rnd, 0, (gint32) n);
    gfloat keep = v[i];
    gdouble a1, a2;
    guint64 m1, m2, m0;
    gdouble a0;
    objective (R, &a0, &m0);
    v[i] = (gfloat) (keep + STEP);
    gdouble hi = v[i], fp = objective (R, &a1, &m1);
    v[i] = (gfloat) (keep - STEP);
    gdouble lo = v[i], fm = objective (R, &a2, &m2);
    v[i] = keep;
    if (R->c->relu && (m1 != m0 || m2 != m0)) {
      R->skipped++;             /* a ReLU flipped inside the step */
      continue;
    }
    gdouble num = (fp - fm) / (hi - lo);
    gdouble tol = 4.0 * 2.0 * ldexp (MAX (a1, a2), -24) / (hi - lo)
        + 1e-4 * fabs (grad[i]) + trunc_rel * gmax + 1e-6 * gmax;
    if (fabs (num - grad[i]) > tol)
      g_error ("%s (%s): %s[%" G_GSIZE_FORMAT "]: finite difference %.8g, backward "
          "%.8g (tolerance %.3g)", R->c->name, R->be->iface->name, what, i, num,
          (gdouble) grad[i], tol);
  }
}

static UnetBackendTensor *
tensor (Run *R, const UnetDims *d)
{
  g_autoptr (GError) error = NULL;
  UnetBackendTensor *t = R->be->iface->tensor_new (R->be, d, &error);
  g_assert_no_error (error);
  return t;
}

static void
run_case (UnetBackend *be, const Case *c)
{
  const UnetBackendIface *bi = be->iface;
  g_autoptr (GError) error = NULL;
  g_autoptr (GRand) rnd = g_rand_new_with_seed (g_str_hash (c->name));
  Run R = { .c = c, .be = be, .seed = 1234 };
  UnetDims pd;
  gsize off = 0;

  R.sd = (UnetDims) { c->n, c->c, c->h, c->w };
  dst_dims (c, &R.dd);
  R.ns = numel (&R.sd);
  R.nd = numel (&R.dd);

  /* tensors: roots, then views (a view may relayout its parent, never resize) */
  R.t[0] = tensor (&R, &R.sd);
  R.t[2] = tensor (&R, &R.sd);
  if (c->view_c > 0) {
    pd = R.dd;
    pd.c = c->view_c;
    R.t[4] = tensor (&R, &pd);
    R.t[5] = tensor (&R, &pd);
    R.t[1] = bi->tensor_view (be, R.t[4], c->view_off, R.dd.c, &error);
    g_assert_no_error (error);
    R.t[3] = bi->tensor_view (be, R.t[5], c->view_off, R.dd.c, &error);
    g_assert_no_error (error);
  } else {
    R.t[1] = tensor (&R, &R.dd);
    R.t[3] = tensor (&R, &R.dd);
  }
  gint roots[4] = { 0, 2, c->view_c ? 4 : 1, c->view_c ? 5 : 3 };
  gsize at[4];
  for (gint i = 0; i < 4; i++) {
    at[i] = off;
    off += (bi->tensor_bytes (R.t[roots[i]]) + 4095) / 4096 * 4096;
  }
  R.arena = bi->arena_new (be, off, &error);
  g_assert_no_error (error);
  for (gint i = 0; i < 4; i++)
    bi->tensor_bind (R.t[roots[i]], R.arena, at[i]);

  /* parameters */
  R.w_off = R.b_off = -1;
  for (gint q = 0; q < 4; q++)
    R.bn[q] = -1;
  if (c->kind == UNET_OP_CONV || c->kind == UNET_OP_UPCONV2) {
    R.w_off = 0;
    R.b_off = c->cout * c->c * c->k * c->k;
    R.np = R.b_off + c->cout;
  } else if (c->kind == UNET_OP_BATCHNORM) {
    for (gint q = 0; q < 4; q++)
      R.bn[q] = q * c->c;
    R.np = 4 * c->c;
  } else {
    R.np = 1;
  }
  R.p = g_new (gfloat, R.np);
  for (gsize i = 0; i < R.np; i++)
    R.p[i] = (gfloat) g_rand_double_range (rnd, -0.5, 0.5);
  if (c->kind == UNET_OP_BATCHNORM)
    for (gint ch = 0; ch < c->c; ch++) {
      R.p[R.bn[0] + ch] = (gfloat) g_rand_double_range (rnd, 0.5, 1.5);
      R.p[R.bn[3] + ch] = (gfloat) g_rand_double_range (rnd, 0.5, 2.0);
    }

  R.x = g_new (gfloat, R.ns);
  if (c->kind == UNET_OP_MAXPOOL2) {
    /* distinct values 0.05 apart, shuffled */
    for (gsize i = 0; i < R.ns; i++)
      R.x[i] = (gfloat) (0.05 * ((gdouble) i - R.ns / 2.0));
    for (gsize i = R.ns - 1; i > 0; i--) {
      gsize j = (gsize) g_rand_int_range (rnd, 0, (gint32) i + 1);
      gfloat t = R.x[i];
      R.x[i] = R.x[j];
      R.x[j] = t;
    }
  } else {
    for (gsize i = 0; i < R.ns; i++)
      R.x[i] = (gfloat) g_rand_double_range (rnd, -1, 1);
  }
  R.y = g_new (gfloat, R.nd);
  R.r = g_new (gfloat, R.nd);
  for (gsize i = 0; i < R.nd; i++)
    R.r[i] = (gfloat) g_rand_double_range (rnd, -1, 1);

  UnetOpDesc d = {
    .kind = c->kind, .layer = -1, .k = c->k, .pad = c->pad, .relu = c->relu,
    .crop_y = c->crop_y, .crop_x = c->crop_x, .src = R.t[0], .dst = R.t[1],
    .training = TRUE, .weight = R.w_off, .bias = R.b_off,
    .bn = {R.bn[0], R.bn[1], R.bn[2], R.bn[3]}, .dropout = c->dropout,
    .diff_dst = R.t[3], .diff_src = R.t[2], .accumulate = c->accumulate,
  };
  if (!bi->params_set (be, R.p, R.np, &error))
    g_error ("%s: params_set: %s", c->name, error->message);
  R.op = bi->op_new (be, &d, &error);
  if (R.op == NULL)
    g_error ("%s (%s): op_new: %s", c->name, bi->name, error->message);

  /* ---- forward ---- */
  if (!run_forward (&R, &error))
    g_error ("%s: forward: %s", c->name, error->message);
  if (c->kind == UNET_OP_DROPOUT) {
    gsize zeros = 0;
    gfloat scale = (gfloat) (1.0 / (1.0 - c->dropout));
    for (gsize i = 0; i < R.nd; i++) {
      if (R.y[i] == 0.0f) {
        zeros++;
        continue;
      }
      g_assert_cmpfloat (fabs (R.y[i] - R.x[i] * scale), <=, 1e-6 * fabs (R.x[i] * scale));
    }
    /* binomial(nd, p): 5 standard deviations */
    gdouble sd = sqrt (R.nd * c->dropout * (1 - c->dropout));
    g_assert_cmpfloat (fabs (zeros - R.nd * c->dropout), <=, 5 * sd);
  } else {
    g_autofree gdouble *ref = g_new (gdouble, R.nd);
    g_autofree gdouble *abs = g_new (gdouble, R.nd);
    g_autofree gdouble *bm = g_new (gdouble, c->c), *bv = g_new (gdouble, c->c);
    g_autofree gfloat *pafter = g_new (gfloat, R.np);
    reference (&R, R.x, R.p, ref, abs, bm, bv);
    for (gsize i = 0; i < R.nd; i++)
      if (fabs (R.y[i] - ref[i]) > 1e-5 * (abs[i] + 1e-3))
        g_error ("%s (%s): forward[%" G_GSIZE_FORMAT "] = %.8g, reference %.8g",
            c->name, bi->name, i, (gdouble) R.y[i], ref[i]);
    if (c->kind == UNET_OP_BATCHNORM) {
      /* one forward moved the running statistics by momentum 0.1 */
      g_assert_true (bi->params_get (be, pafter, &error));
      for (gint ch = 0; ch < c->c; ch++) {
        gdouble em = 0.9 * R.p[R.bn[2] + ch] + 0.1 * bm[ch];
        gdouble ev = 0.9 * R.p[R.bn[3] + ch] + 0.1 * bv[ch];
        g_assert_cmpfloat (fabs (pafter[R.bn[2] + ch] - em), <=, 1e-5 * (fabs (em) + 1));
        g_assert_cmpfloat (fabs (pafter[R.bn[3] + ch] - ev), <=, 1e-5 * (fabs (ev) + 1));
      }
    }
  }

  /* ---- backward: diff_dst = r, diff_src prefilled when accumulating ---- */
  {
    g_autofree gfloat *pre = g_new (gfloat, R.ns);
    g_autofree gfloat *dsrc = g_new (gfloat, R.ns);
    g_autofree gfloat *grads = g_new (gfloat, R.np);
    for (gsize i = 0; i < R.ns; i++)
      pre[i] = c->accumulate ? (gfloat) g_rand_double_range (rnd, -1, 1) : NAN;
    if (!run_forward (&R, &error)
        || !bi->upload (R.t[3], R.r, &error)
        || !bi->upload (R.t[2], pre, &error)
        || !bi->grads_zero (be, &error)
        || !bi->op_backward (R.op, &error)
        || !bi->download (R.t[2], dsrc, &error)
        || !bi->grads_get (be, grads, &error)
        || !unet_backend_synchronize (be, &error))
      g_error ("%s (%s): backward: %s", c->name, bi->name, error->message);
    for (gsize i = 0; i < R.ns; i++) {
      if (c->accumulate)
        dsrc[i] -= pre[i];
      g_assert_true (isfinite (dsrc[i]));  /* written whole, NaN prefill gone */
    }
    gdouble trunc = c->kind == UNET_OP_BATCHNORM ? 1e-4 : 0.0;
    fd_check (&R, "diff_src", R.x, R.ns, dsrc, trunc, rnd);
    if (c->kind == UNET_OP_CONV || c->kind == UNET_OP_UPCONV2) {
      fd_check (&R, "d weight", R.p + R.w_off, R.b_off, grads + R.w_off, 0.0, rnd);
      fd_check (&R, "d bias", R.p + R.b_off, c->cout, grads + R.b_off, 0.0, rnd);
    } else if (c->kind == UNET_OP_BATCHNORM) {
      fd_check (&R, "d gamma", R.p + R.bn[0], c->c, grads + R.bn[0], trunc, rnd);
      fd_check (&R, "d beta", R.p + R.bn[1], c->c, grads + R.bn[1], trunc, rnd);
    }
  }
  g_print ("ok %-36s %-5s (%d ReLU-flip samples skipped)\n", c->name, bi->name,
      R.skipped);

  bi->op_free (R.op);
  for (gint i = 0; i < 6; i++)
    if (R.t[i] && (i == 1 || i == 3) && c->view_c > 0)
      bi->tensor_free (R.t[i]);
  for (gint i = 0; i < 6; i++)
    if (R.t[i] && !((i == 1 || i == 3) && c->view_c > 0))
      bi->tensor_free (R.t[i]);
  bi->arena_free (R.arena);
  g_free (R.x);
  g_free (R.y);
  g_free (R.r);
  g_free (R.p);
}

static const Case cases[] = {
  /* name                      kind              n  c  h  w  cout k pad relu view   crop   acc  p */
  {"conv 3x3 valid relu plain", UNET_OP_CONV, 2, 3, 7, 6, 5, 3, 0, TRUE},
  {"conv 3x3 same blocked", UNET_OP_CONV, 2, 16, 5, 7, 16, 3, 1, FALSE},
  {"conv 3x3 valid relu 16->32", UNET_OP_CONV, 1, 16, 6, 6, 32, 3, 0, TRUE},
  {"conv 1x1 head 16->3", UNET_OP_CONV, 2, 16, 4, 5, 3, 1, 0, FALSE},
  {"upconv 32->16 whole", UNET_OP_UPCONV2, 2, 32, 3, 4, 16, 2, 0, FALSE},
  {"upconv 32->16 into concat", UNET_OP_UPCONV2, 2, 32, 3, 3, 16, 2, 0, FALSE, 32, 16},
  {"upconv 4->2 plain concat", UNET_OP_UPCONV2, 2, 4, 3, 2, 2, 2, 0, FALSE, 4, 2},
  {"batchnorm relu blocked", UNET_OP_BATCHNORM, 2, 16, 5, 3, 0, 0, 0, TRUE},
  {"batchnorm plain", UNET_OP_BATCHNORM, 3, 3, 4, 5, 0, 0, 0, FALSE},
  {"maxpool blocked", UNET_OP_MAXPOOL2, 2, 16, 6, 4, 0, 0, 0, FALSE},
  {"maxpool plain accumulate", UNET_OP_MAXPOOL2, 2, 3, 4, 6, 0, 0, 0, FALSE, 0, 0,
      0, 0, 0, 0, TRUE},
  {"crop into concat blocked", UNET_OP_CROP_COPY, 2, 16, 7, 8, 0, 0, 0, FALSE, 32, 0,
      1, 2, 4, 5},
  {"crop into concat plain acc", UNET_OP_CROP_COPY, 2, 3, 6, 6, 0, 0, 0, FALSE, 6, 0,
      2, 1, 3, 4, TRUE},
  {"dropout blocked", UNET_OP_DROPOUT, 2, 16, 8, 8, 0, 0, 0, FALSE, 0, 0, 0, 0, 0, 0,
      FALSE, 0.3},
};

/* One backward per forward: the executor refuses a second one (the arena has
 * reused the memory of activations the first backward was done with). */
static void
check_one_backward_per_forward (void)
{
  UnetConfig cfg;
  g_autoptr (GError) error = NULL;
  unet_config_init_classic (&cfg);
  cfg.depth = 1;
  cfg.base_filters = 2;
  g_autoptr (UnetModel) model = unet_model_new (&cfg, &error);
  g_assert_no_error (error);
  UnetNetOptions opts;
  unet_net_options_init (&opts);
  opts.device = UNET_DEVICE_CPU;
  g_autoptr (UnetNet) net = unet_net_new (model, &opts, &error);
  g_assert_no_error (error);
  gint s = unet_config_legal_input_at_least (&cfg, 16), o = unet_config_output_size (&cfg, s);
  g_autofree gfloat *in = g_new0 (gfloat, (gsize) s * s);
  g_autofree gfloat *dz = g_new0 (gfloat, (gsize) cfg.classes * o * o);
  g_assert_true (unet_net_train_forward (net, in, 1, s, s, 1, NULL, &error));
  g_assert_true (unet_net_train_backward (net, dz, &error));
  g_assert_false (unet_net_train_backward (net, dz, &error));
  g_assert_error (error, UNET_ERROR, UNET_ERROR_FAILED);
  g_print ("ok a second backward without a forward is refused: %s\n", error->message);
}

int
main (void)
{
  check_one_backward_per_forward ();
  const UnetDevice devices[] = { UNET_DEVICE_CPU, UNET_DEVICE_CUDA };
  gint ran = 0;

  for (guint dv = 0; dv < G_N_ELEMENTS (devices); dv++)
    for (guint i = 0; i < G_N_ELEMENTS (cases); i++) {
      /* a backend per case: its parameter slab has one size for its life */
      UnetNetOptions opts;
      UnetDevice got;
      g_autoptr (GError) error = NULL;
      unet_net_options_init (&opts);
      opts.device = devices[dv];
      opts.threads = 1;
      UnetBackend *be = unet_backend_new (&opts, &got, &error);
      if (be == NULL) {
        g_print ("# %s backend: skipped (%s)\n", dv ? "cuda" : "cpu", error->message);
        g_assert_true (dv > 0);         /* the CPU backend always exists */
        break;
      }
      if (!unet_backend_can_train (be)) {
        g_print ("# %s backend: cannot train, skipped\n", be->iface->name);
        unet_backend_free (be);
        break;
      }
      run_case (be, &cases[i]);
      ran++;
      unet_backend_free (be);
    }
  g_assert_cmpint (ran, >=, (gint) G_N_ELEMENTS (cases));
  return 0;
}
