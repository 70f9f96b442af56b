/* Finite-difference checks of every backward op of the CPU training executor
 * (engine/cpu/cpu-train.c): max-pool, transposed 2x2 convolution (written into a
 * channel range of a concat buffer), batch norm in training mode, dropout and the
 * oneDNN convolutions (3x3 valid/same, 1x1).
 *
 * Each check takes f = Σ r·out (r random, double accumulation), its analytic
 * gradient from the op's backward with dL/dout = r, and central differences of
 * f for every input element. Tolerance: f is a sum of float32 outputs, so it
 * carries a rounding error of about 2^-24 · Σ|r·out|; a central difference with
 * step s divides twice that by s (factor 4 margin), plus 1e-4 relative for the
 * float32 backward and, for the one non-linear op (batch norm), the O(s²)
 * truncation term, s²/6·f''' ~ 2e-5 at s = 1e-2, bounded by 1e-4 of the
 * largest gradient. */
#include "cpu/cpu-train.h"

#include <math.h>
#include <string.h>

typedef gdouble (*Objective) (gpointer ctx, gdouble *abs_sum);

static void
fd_check (const gchar *what, gfloat *x, gsize n, const gfloat *grad, Objective f,
    gpointer ctx, gdouble step, gdouble trunc_rel)
{
  gdouble gmax = 0.0;
  for (gsize i = 0; i < n; i++)
    gmax = MAX (gmax, fabs (grad[i]));
  g_assert_cmpfloat (gmax, >, 0.0);
  for (gsize i = 0; i < n; i++) {
    gfloat v = x[i];
    gdouble a1, a2;
    x[i] = (gfloat) (v + step);
    gdouble hi = (gdouble) x[i];
    gdouble fp = f (ctx, &a1);
    x[i] = (gfloat) (v - step);
    gdouble lo = (gdouble) x[i];
    gdouble fm = f (ctx, &a2);
    x[i] = v;
    gdouble num = (fp - fm) / (hi - lo);
    gdouble tol = 4.0 * 2.0 * ldexp (MAX (a1, a2), -24) / (hi - lo)
        + 1e-4 * fabs (grad[i]) + trunc_rel * gmax + 1e-6 * gmax;
    if (fabs (num - grad[i]) > tol)
      g_error ("%s[%" G_GSIZE_FORMAT "]: finite difference %.8g, backward %.8g "
          "(tolerance %.3g)", what, i, num, (gdouble) grad[i], tol);
  }
}

static void
fill (GRand *r, gfloat *x, gsize n, gdouble scale)
{
  for (gsize i = 0; i < n; i++)
    x[i] = (gfloat) (g_rand_double_range (r, -1, 1) * scale);
}

static gdouble
dot (const gfloat *r, const gfloat *y, gsize n, gdouble *abs_sum)
{
  gdouble s = 0, a = 0;
  for (gsize i = 0; i < n; i++) {
    s += (gdouble) r[i] * y[i];
    a += fabs ((gdouble) r[i] * y[i]);
  }
  *abs_sum = a;
  return s;
}

/* ------------------------------------------------------------ max-pool -- */

typedef struct
{
  gint n, c, h, w;
  gfloat *x, *y, *r;
  guint8 *arg;
} PoolCtx;

static gdouble
pool_f (gpointer p, gdouble *a)
{
  PoolCtx *c = p;
  unet_cpu_maxpool2_forward (c->x, c->n, c->c, c->h, c->w, c->y, c->arg);
  return dot (c->r, c->y, (gsize) c->n * c->c * (c->h / 2) * (c->w / 2), a);
}

static void
test_maxpool (void)
{
  PoolCtx c = { 2, 3, 6, 8 };
  gsize ni = 2 * 3 * 6 * 8, no = ni / 4;
  g_autoptr (GRand) r = g_rand_new_with_seed (1);
  c.x = g_new (gfloat, ni);
  c.y = g_new (gfloat, no);
  c.r = g_new (gfloat, no);
  c.arg = g_new (guint8, no);
  /* Distinct values 0.01 apart (a random permutation), so steps of 1e-3 never
   * change which element is the maximum. */
  for (gsize i = 0; i < ni; i++)
    c.x[i] = (gfloat) (0.01 * i);
  for (gsize i = ni - 1; i > 0; i--) {
    gsize j = g_rand_int_range (r, 0, (gint32) i + 1);
    gfloat t = c.x[i];
    c.x[i] = c.x[j];
    c.x[j] = t;
  }
  fill (r, c.r, no, 1.0);
  gdouble a;
  pool_f (&c, &a);
  g_autofree gfloat *g = g_new0 (gfloat, ni);
  unet_cpu_maxpool2_backward (c.r, c.arg, c.n, c.c, c.h, c.w, g);
  fd_check ("maxpool dsrc", c.x, ni, g, pool_f, &c, 1e-3, 0.0);
  /* Ties go to the first element in row-major order (PyTorch's choice). */
  gfloat tie[4] = { 1, 1, 1, 1 }, out;
  guint8 arg;
  unet_cpu_maxpool2_forward (tie, 1, 1, 2, 2, &out, &arg);
  g_assert_cmpint (arg, ==, 0);
  g_free (c.x);
  g_free (c.y);
  g_free (c.r);
  g_free (c.arg);
}

/* ------------------------------------------------------------ up-conv -- */

typedef struct
{
  gint n, cin, h, w, cout, ctot;  /* output is channels [cout, 2cout) of ctot */
  gfloat *x, *wt, *b, *y, *r;
} UpCtx;

static gdouble
up_f (gpointer p, gdouble *a)
{
  UpCtx *c = p;
  gsize plane = (gsize) 4 * c->h * c->w;
  memset (c->y, 0, sizeof (gfloat) * c->n * c->ctot * plane);
  g_assert_true (unet_cpu_upconv2_forward (c->x, c->n, c->cin, c->h, c->w, c->wt, c->b,
          c->cout, c->y + c->cout * plane, c->ctot * plane, NULL));
  return dot (c->r, c->y, (gsize) c->n * c->ctot * plane, a);
}

static void
test_upconv (void)
{
  UpCtx c = { 2, 3, 3, 5, 4, 8 };
  g_autoptr (GRand) r = g_rand_new_with_seed (2);
  gsize nx = 2 * 3 * 3 * 5, nw = 3 * 4 * 4, plane = 4 * 3 * 5;
  gsize ny = (gsize) c.n * c.ctot * plane;
  c.x = g_new (gfloat, nx);
  c.wt = g_new (gfloat, nw);
  c.b = g_new (gfloat, c.cout);
  c.y = g_new (gfloat, ny);
  c.r = g_new (gfloat, ny);
  fill (r, c.x, nx, 1);
  fill (r, c.wt, nw, 1);
  fill (r, c.b, c.cout, 1);
  fill (r, c.r, ny, 1);
  gdouble a;
  up_f (&c, &a);
  /* The channels before the written range stay untouched (zero). */
  for (gsize i = 0; i < (gsize) c.cout * plane; i++)
    g_assert_cmpfloat (c.y[i], ==, 0.0f);
  g_autofree gfloat *gx = g_new0 (gfloat, nx);
  g_autofree gfloat *gw = g_new0 (gfloat, nw);
  g_autofree gfloat *gb = g_new0 (gfloat, c.cout);
  g_assert_true (unet_cpu_upconv2_backward (c.x, c.n, c.cin, c.h, c.w, c.wt, c.cout,
          c.r + c.cout * plane, c.ctot * plane, gx, gw, gb, NULL));
  fd_check ("upconv dsrc", c.x, nx, gx, up_f, &c, 1e-2, 0.0);
  fd_check ("upconv dweight", c.wt, nw, gw, up_f, &c, 1e-2, 0.0);
  fd_check ("upconv dbias", c.b, c.cout, gb, up_f, &c, 1e-2, 0.0);
  g_free (c.x);
  g_free (c.wt);
  g_free (c.b);
  g_free (c.y);
  g_free (c.r);
}

/* --------------------------------------------------------- batch norm -- */

typedef struct
{
  gint n, c;
  gsize hw;
  gfloat *x, *g, *b, *y, *r, *mean, *invstd;
} BnCtx;

static gdouble
bn_f (gpointer p, gdouble *a)
{
  BnCtx *c = p;
  unet_cpu_bn_forward_train (c->x, c->n, c->c, c->hw, c->g, c->b, c->y, c->mean,
      c->invstd, NULL, NULL);
  return dot (c->r, c->y, c->n * c->c * c->hw, a);
}

static void
test_batch_norm (void)
{
  BnCtx c = { 2, 3, 5 };
  g_autoptr (GRand) r = g_rand_new_with_seed (3);
  gsize nx = 2 * 3 * 5;
  c.x = g_new (gfloat, nx);
  c.g = g_new (gfloat, 3);
  c.b = g_new (gfloat, 3);
  c.y = g_new (gfloat, nx);
  c.r = g_new (gfloat, nx);
  c.mean = g_new (gfloat, 3);
  c.invstd = g_new (gfloat, 3);
  fill (r, c.x, nx, 2);
  fill (r, c.g, 3, 1);
  fill (r, c.b, 3, 1);
  fill (r, c.r, nx, 1);
  gdouble a;
  bn_f (&c, &a);
  g_autofree gfloat *gx = g_new0 (gfloat, nx);
  g_autofree gfloat *gg = g_new0 (gfloat, 3);
  g_autofree gfloat *gb = g_new0 (gfloat, 3);
  unet_cpu_bn_backward (c.x, c.r, c.n, c.c, c.hw, c.g, c.mean, c.invstd, gx, gg, gb);
  fd_check ("bn dx", c.x, nx, gx, bn_f, &c, 1e-2, 1e-4);
  fd_check ("bn dgamma", c.g, 3, gg, bn_f, &c, 1e-2, 1e-4);
  fd_check ("bn dbeta", c.b, 3, gb, bn_f, &c, 1e-2, 1e-4);

  /* dx may alias dy. */
  g_autofree gfloat *dy = g_memdup2 (c.r, sizeof (gfloat) * nx);
  memset (gg, 0, sizeof (gfloat) * 3);
  memset (gb, 0, sizeof (gfloat) * 3);
  unet_cpu_bn_backward (c.x, dy, c.n, c.c, c.hw, c.g, c.mean, c.invstd, dy, gg, gb);
  g_assert_cmpmem (dy, nx * 4, gx, nx * 4);

  /* Running statistics: momentum 0.1, unbiased variance (PyTorch). */
  gfloat rm[3] = { 1, 1, 1 }, rv[3] = { 2, 2, 2 };
  unet_cpu_bn_forward_train (c.x, c.n, c.c, c.hw, c.g, c.b, c.y, c.mean, c.invstd, rm, rv);
  for (gint ch = 0; ch < 3; ch++) {
    gdouble s = 0, s2 = 0, cnt = c.n * c.hw;
    for (gint b = 0; b < c.n; b++)
      for (gsize i = 0; i < c.hw; i++)
        s += c.x[(b * 3 + ch) * c.hw + i];
    gdouble m = s / cnt;
    for (gint b = 0; b < c.n; b++)
      for (gsize i = 0; i < c.hw; i++) {
        gdouble d = c.x[(b * 3 + ch) * c.hw + i] - m;
        s2 += d * d;
      }
    /* float32 running statistics of magnitude 1..2 (ulp 1.2e-7 .. 2.4e-7)
     * after one update: 1e-6 is a few ulp; a wrong momentum or an n instead
     * of n - 1 changes them by > 1e-3. */
    g_assert_cmpfloat_with_epsilon (rm[ch], 0.9 + 0.1 * m, 1e-6);
    g_assert_cmpfloat_with_epsilon (rv[ch], 1.8 + 0.1 * s2 / (cnt - 1), 1e-6);
  }
  g_free (c.x);
  g_free (c.g);
  g_free (c.b);
  g_free (c.y);
  g_free (c.r);
  g_free (c.mean);
  g_free (c.invstd);
}

/* ------------------------------------------------------------ dropout -- */

typedef struct
{
  gsize n;
  gdouble p;
  gfloat *x, *y, *r;
  guint8 *mask;
} DropCtx;

static gdouble
drop_f (gpointer p, gdouble *a)
{
  DropCtx *c = p;
  unet_cpu_dropout_forward (c->x, c->n, c->p, 42, c->mask, c->y);
  return dot (c->r, c->y, c->n, a);
}

static void
test_dropout (void)
{
  DropCtx c = { 4000, 0.3 };
  g_autoptr (GRand) r = g_rand_new_with_seed (4);
  c.x = g_new (gfloat, c.n);
  c.y = g_new (gfloat, c.n);
  c.r = g_new (gfloat, c.n);
  c.mask = g_new (guint8, c.n);
  fill (r, c.x, c.n, 1);
  fill (r, c.r, c.n, 1);
  gdouble a;
  drop_f (&c, &a);
  gsize kept = 0;
  for (gsize i = 0; i < c.n; i++) {
    kept += c.mask[i];
    g_assert_cmpfloat (c.y[i], ==, c.mask[i] ? (gfloat) (c.x[i] * (gfloat) (1 / 0.7)) : 0.0f);
  }
  /* Binomial(4000, 0.7): sd 29; 5 sd. */
  g_assert_cmpfloat (fabs ((gdouble) kept - 2800.0), <, 145.0);
  g_autofree gfloat *gx = g_new (gfloat, c.n);
  unet_cpu_dropout_backward (c.r, c.mask, c.n, c.p, gx);
  fd_check ("dropout dsrc", c.x, 300, gx, drop_f, &c, 1e-2, 0.0);
  g_free (c.x);
  g_free (c.y);
  g_free (c.r);
  g_free (c.mask);
}

/* -------------------------------------------------------- convolution -- */

/* The convolutions run on a CPU backend's oneDNN engine and stream. */
typedef UnetBackend UnetBackendHandle;
G_DEFINE_AUTOPTR_CLEANUP_FUNC (UnetBackendHandle, unet_backend_free)

static UnetBackend *
cpu_backend (void)
{
  UnetNetOptions opts;
  g_autoptr (GError) error = NULL;
  unet_net_options_init (&opts);
  UnetBackend *be = unet_backend_cpu_new (&opts, &error);
  g_assert_no_error (error);
  return be;
}

typedef struct
{
  UnetCpuConv *conv;
  gsize ny;
  gfloat *x, *wt, *b, *y, *r;
} ConvCtx;

static gdouble
conv_f (gpointer p, gdouble *a)
{
  ConvCtx *c = p;
  g_assert_true (unet_cpu_conv_forward (c->conv, c->x, c->wt, c->b, c->y, NULL));
  return dot (c->r, c->y, c->ny, a);
}

static void
check_conv (gint n, gint cin, gint h, gint w, gint cout, gint k, gint pad, guint32 seed)
{
  g_autoptr (GRand) r = g_rand_new_with_seed (seed);
  g_autoptr (GError) error = NULL;
  ConvCtx c = { 0 };
  g_autoptr (UnetBackendHandle) be = cpu_backend ();
  c.conv = unet_cpu_conv_new (be, n, cin, h, w, cout, k, pad, &error);
  g_assert_no_error (error);
  gint oh = h + 2 * pad - k + 1, ow = w + 2 * pad - k + 1;
  gsize nx = (gsize) n * cin * h * w, nw = (gsize) cout * cin * k * k;
  c.ny = (gsize) n * cout * oh * ow;
  c.x = g_new (gfloat, nx);
  c.wt = g_new (gfloat, nw);
  c.b = g_new (gfloat, cout);
  c.y = g_new (gfloat, c.ny);
  c.r = g_new (gfloat, c.ny);
  fill (r, c.x, nx, 1);
  fill (r, c.wt, nw, 1);
  fill (r, c.b, cout, 1);
  fill (r, c.r, c.ny, 1);
  gdouble a;
  conv_f (&c, &a);
  g_autofree gfloat *gx = g_new0 (gfloat, nx);
  g_autofree gfloat *gw = g_new0 (gfloat, nw);
  g_autofree gfloat *gb = g_new0 (gfloat, cout);
  /* Gradients accumulate: start from 1 and subtract it afterwards. */
  for (gsize i = 0; i < nw; i++)
    gw[i] = 1.0f;
  g_assert_true (unet_cpu_conv_backward (c.conv, c.x, c.wt, c.r, gx, gw, gb, &error));
  for (gsize i = 0; i < nw; i++)
    gw[i] -= 1.0f;
  fd_check ("conv dsrc", c.x, nx, gx, conv_f, &c, 1e-2, 0.0);
  fd_check ("conv dweight", c.wt, nw, gw, conv_f, &c, 1e-2, 0.0);
  fd_check ("conv dbias", c.b, cout, gb, conv_f, &c, 1e-2, 0.0);
  unet_cpu_conv_free (c.conv);
  g_free (c.x);
  g_free (c.wt);
  g_free (c.b);
  g_free (c.y);
  g_free (c.r);
}

static void
test_conv (void)
{
  check_conv (2, 3, 7, 6, 4, 3, 0, 5);
  check_conv (1, 2, 5, 9, 3, 3, 1, 6);
  check_conv (2, 5, 4, 3, 2, 1, 0, 7);
  /* An output of nothing is an error, not a crash. */
  g_autoptr (GError) error = NULL;
  g_autoptr (UnetBackendHandle) be = cpu_backend ();
  g_assert_null (unet_cpu_conv_new (be, 1, 1, 2, 2, 1, 3, 0, &error));
  g_assert_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT);
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  g_test_add_func ("/train-ops/maxpool", test_maxpool);
  g_test_add_func ("/train-ops/upconv", test_upconv);
  g_test_add_func ("/train-ops/batch-norm", test_batch_norm);
  g_test_add_func ("/train-ops/dropout", test_dropout);
  g_test_add_func ("/train-ops/conv", test_conv);
  return g_test_run ();
}
