/* The CPU backend's Winograd F(4x4,3x3) convolution for AVX2 CPUs (engine/cpu/
 * cpu-wino8.c), on awkward shapes: channel counts that are multiples of 8 but not
 * of 16, outputs whose size is not a multiple of the 4x4 tile, padding 0 and 1,
 * ReLU on and off, one input channel block to 128 channels.
 *
 * 1. Against a float64 direct convolution written here: |y - ref| <= 2^-24 · 64 ·
 *    Σ|terms| per output (Σ|w·x| + |b|). Why 64: a float32 direct sum of n terms
 *    is within ~n·2^-24 of Σ|terms| in the worst case, Winograd adds the
 *    transforms' rounding, amplified by their largest coefficients (5 in B, 8 in A,
 *    1/24 .. 1/4 in G, applied in double here): the error analyses of F(4x4,3x3)
 *    (Barabasz et al. 2020) put it at tens of ulps of Σ|terms|; the largest ratio
 *    measured here is printed (up to about 20 ulps).
 * 2. The same bits for 1, 2, 3 and 7 threads (the job size follows the thread
 *    count): the property the overlap-tile tests and the cluster's shards rely on.
 * 3. Every output written (the destination is filled with NaN first) and nothing
 *    past it (a guard zone after the destination keeps its NaNs).
 * Skips (77) on a CPU without AVX2 + FMA. */
#include "config.h"

#include "cpu/cpu-private.h"

#include <math.h>
#include <string.h>

typedef struct
{
  gint cin, cout, h, w, pad;
  gboolean relu;
} Case;

static const Case cases[] = {
  { 8, 8, 3, 3, 0, FALSE },
  { 8, 16, 7, 9, 1, TRUE },
  { 16, 24, 13, 11, 0, TRUE },
  { 24, 8, 4, 5, 0, FALSE },
  { 40, 56, 6, 7, 1, TRUE },
  { 64, 16, 20, 9, 1, FALSE },
  { 128, 128, 30, 30, 0, TRUE },
  { 32, 40, 57, 3, 0, FALSE },
};

static guint32 rng_state = 12345u;

static gfloat
uniform (void)
{
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 17;
  rng_state ^= rng_state << 5;
  return (gfloat) ((rng_state >> 8) * (2.0 / 16777216.0) - 1.0);
}

/* nchw plane index -> nChw8c */
static gsize
blocked (gint c, gint y, gint x, gint h, gint w)
{
  return ((((gsize) (c / 8) * h + y) * w + x) * 8) + c % 8;
}

static void
run_case (const Case *c)
{
  const gint oh = c->h + 2 * c->pad - 2, ow = c->w + 2 * c->pad - 2;
  const gsize ns = (gsize) c->cin * c->h * c->w, nd = (gsize) c->cout * oh * ow;
  const gsize guard = 64;
  g_autofree gfloat *w = g_new (gfloat, (gsize) c->cout * c->cin * 9);
  g_autofree gfloat *b = g_new (gfloat, c->cout);
  g_autofree gfloat *x = g_new (gfloat, ns);
  g_autofree gfloat *xb = g_new (gfloat, ns);
  g_autofree gfloat *y0 = g_new (gfloat, nd + guard);
  g_autofree gfloat *y = g_new (gfloat, nd + guard);
  GError *error = NULL;
  gfloat *u;
  gdouble worst = 0.0;
  static const gint threads[] = { 1, 2, 3, 7 };

  for (gsize i = 0; i < (gsize) c->cout * c->cin * 9; i++)
    w[i] = uniform () / sqrtf (9.0f * c->cin);
  for (gint i = 0; i < c->cout; i++)
    b[i] = 0.1f * uniform ();
  for (gsize i = 0; i < ns; i++)
    x[i] = uniform ();
  for (gint ch = 0; ch < c->cin; ch++)
    for (gint yy = 0; yy < c->h; yy++)
      for (gint xx = 0; xx < c->w; xx++)
        xb[blocked (ch, yy, xx, c->h, c->w)] = x[((gsize) ch * c->h + yy) * c->w + xx];

  u = cpu_wino8_weights (w, c->cin, c->cout, &error);
  g_assert_no_error (error);
  for (guint t = 0; t < G_N_ELEMENTS (threads); t++) {
    gfloat *out = t == 0 ? y0 : y;
    CpuWino8 *k = cpu_wino8_new (u, b, c->cin, c->cout, c->h, c->w, c->pad, c->relu,
        threads[t], &error);
    g_assert_no_error (error);
    for (gsize i = 0; i < nd + guard; i++)
      out[i] = NAN;
    cpu_wino8_run (k, xb, out);
    cpu_wino8_free (k);
    for (gsize i = nd; i < nd + guard; i++)
      g_assert_true (isnan (out[i]));
    if (t > 0 && memcmp (y0, y, nd * sizeof (gfloat)) != 0)
      g_error ("%dx%d %dx%d pad %d: %d threads differ from 1 thread", c->cin, c->cout,
          c->h, c->w, c->pad, threads[t]);
  }
  free (u);

  for (gint co = 0; co < c->cout; co++)
    for (gint oy = 0; oy < oh; oy++)
      for (gint ox = 0; ox < ow; ox++) {
        gdouble acc = b[co], mag = fabs (b[co]);
        for (gint ci = 0; ci < c->cin; ci++)
          for (gint ky = 0; ky < 3; ky++)
            for (gint kx = 0; kx < 3; kx++) {
              const gint iy = oy - c->pad + ky, ix = ox - c->pad + kx;
              if (iy < 0 || iy >= c->h || ix < 0 || ix >= c->w)
                continue;
              const gdouble term = (gdouble) w[(((gsize) co * c->cin + ci) * 3 + ky) * 3 + kx]
                  * x[((gsize) ci * c->h + iy) * c->w + ix];
              acc += term;
              mag += fabs (term);
            }
        if (c->relu && acc < 0.0)
          acc = 0.0;
        const gdouble got = y0[blocked (co, oy, ox, oh, ow)];
        g_assert_false (isnan (got));
        const gdouble ulps = fabs (got - acc) / (mag * ldexp (1.0, -24));
        if (ulps > 64.0)
          g_error ("%dx%d %dx%d pad %d: output (%d,%d,%d) %.9g vs %.9g: %.1f ulps of "
              "sum|terms|", c->cin, c->cout, c->h, c->w, c->pad, co, oy, ox, got, acc, ulps);
        worst = MAX (worst, ulps);
      }
  g_test_message ("%3dx%-3d %2dx%-2d pad %d relu %d: worst %.1f ulps of sum|terms|, "
      "thread counts agree bit for bit", c->cin, c->cout, c->h, c->w, c->pad, c->relu,
      worst);
}

static void
test_cases (void)
{
  for (guint i = 0; i < G_N_ELEMENTS (cases); i++)
    run_case (&cases[i]);
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  if (!cpu_wino8_available ()) {
    g_print ("1..0 # SKIP this CPU has no AVX2 + FMA\n");
    return 77;
  }
  g_test_add_func ("/cpu-wino8/cases", test_cases);
  return g_test_run ();
}
