/* Engine tests for normalize.c: JSON both ways, every mode on U8/U16/F32 frames
 * with strides, percentiles against numpy.percentile (method='linear') values and
 * against a sort-based reference of the same definition, NaN handling. */
#include "unet.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static void
test_json (void)
{
  static const gchar *good[] = {
    "{\"mode\":\"none\"}",
    "{\"mode\":\"range\",\"min\":0,\"max\":4095}",
    "{\"mode\":\"percentile\",\"low\":1.0,\"high\":99.8}",
    "{\"mode\":\"meanstd\",\"mean\":100.5,\"std\":12}",
    "{\"mode\":\"frame-meanstd\"}",
  };
  for (guint i = 0; i < G_N_ELEMENTS (good); i++) {
    UnetNormalization n, m;
    GError *err = NULL;
    g_assert_true (unet_normalization_from_json (good[i], &n, &err));
    g_assert_no_error (err);
    g_autofree gchar *j = unet_normalization_to_json (&n);
    g_assert_true (unet_normalization_from_json (j, &m, NULL));
    g_assert_cmpint (n.mode, ==, m.mode);
    g_assert_cmpfloat (n.a, ==, m.a);
    g_assert_cmpfloat (n.b, ==, m.b);
  }
  UnetNormalization d;
  unet_normalization_init_default (&d);
  g_assert_cmpint (d.mode, ==, UNET_NORM_PERCENTILE);
  g_assert_cmpfloat (d.a, ==, 1.0);
  g_assert_cmpfloat (d.b, ==, 99.8);

  static const gchar *bad[] = {
    "", "{", "[]", "{\"mode\":\"scale\"}", "{\"mode\":1}", "{}",
    "{\"mode\":\"range\",\"min\":5,\"max\":5}",
    "{\"mode\":\"range\",\"min\":0}",
    "{\"mode\":\"range\",\"min\":0,\"max\":\"1\"}",
    "{\"mode\":\"percentile\",\"low\":50,\"high\":10}",
    "{\"mode\":\"percentile\",\"low\":-1,\"high\":10}",
    "{\"mode\":\"percentile\",\"low\":1,\"high\":101}",
    "{\"mode\":\"meanstd\",\"mean\":0,\"std\":0}",
    "{\"mode\":\"none\",\"min\":0}",
  };
  for (guint i = 0; i < G_N_ELEMENTS (bad); i++) {
    UnetNormalization n;
    GError *err = NULL;
    g_assert_false (unet_normalization_from_json (bad[i], &n, &err));
    g_assert_error (err, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT);
    g_clear_error (&err);
  }
}

/* The definition written out: sort, numpy's linear interpolation (lerp). */
static gint
cmp_double (const void *a, const void *b)
{
  gdouble x = *(const gdouble *) a, y = *(const gdouble *) b;
  return x < y ? -1 : x > y;
}

static gdouble
ref_percentile (const gdouble *sorted, gsize n, gdouble p)
{
  gdouble pos = p / 100.0 * (n - 1);
  gsize i = (gsize) floor (pos);
  if (i >= n - 1)
    return sorted[n - 1];
  gdouble t = pos - i, a = sorted[i], b = sorted[i + 1], d = b - a;
  return t >= 0.5 ? b - d * (1 - t) : a + d * t;
}

/* Frame of w x h in `format` with `pad` bytes of garbage after each row. */
static guint8 *
make_frame (UnetPixelFormat format, gint w, gint h, gsize pad, GRand *r,
    gdouble *values, gsize *stride)
{
  gsize bpp = format == UNET_PIXEL_U8 ? 1 : format == UNET_PIXEL_U16 ? 2 : 4;
  *stride = w * bpp + pad;
  guint8 *buf = g_malloc (*stride * h);
  memset (buf, 0xAB, *stride * h);
  for (gint y = 0; y < h; y++)
    for (gint x = 0; x < w; x++) {
      guint8 *p = buf + y * *stride + x * bpp;
      gdouble v;
      if (format == UNET_PIXEL_U8) {
        /* few distinct values so ties are common */
        guint8 u = (guint8) (g_rand_int_range (r, 0, 12) * 20);
        *p = u;
        v = u;
      } else if (format == UNET_PIXEL_U16) {
        guint16 u = (guint16) g_rand_int_range (r, 0, 65536);
        memcpy (p, &u, 2);
        v = u;
      } else {
        gfloat f = (gfloat) g_rand_double_range (r, -50, 50);
        if (g_rand_int_range (r, 0, 10) == 0)
          f = roundf (f);       /* ties */
        memcpy (p, &f, 4);
        v = f;
      }
      values[y * w + x] = v;
    }
  return buf;
}

static void
test_modes (void)
{
  GRand *r = g_rand_new_with_seed (11);
  for (gint format = UNET_PIXEL_U8; format <= UNET_PIXEL_F32; format++) {
    for (gint trial = 0; trial < 6; trial++) {
      gint w = g_rand_int_range (r, 1, 70), h = g_rand_int_range (r, 1, 40);
      gsize n = (gsize) w * h, stride;
      g_autofree gdouble *v = g_new (gdouble, n);
      g_autofree gdouble *sorted = g_new (gdouble, n);
      g_autofree guint8 *frame = make_frame (format, w, h, trial % 3 * 4, r, v, &stride);
      g_autofree gfloat *out = g_new (gfloat, n);
      memcpy (sorted, v, n * sizeof (gdouble));
      qsort (sorted, n, sizeof (gdouble), cmp_double);

      UnetNormalization modes[] = {
        {UNET_NORM_NONE, 0, 0},
        {UNET_NORM_RANGE, 10, 1000},
        {UNET_NORM_PERCENTILE, 1.0, 99.8},
        {UNET_NORM_PERCENTILE, 0.0, 100.0},
        {UNET_NORM_PERCENTILE, 37.5, 50.0},
        {UNET_NORM_MEAN_STD, 5, 3},
        {UNET_NORM_FRAME_MEAN_STD, 0, 0},
      };
      for (guint m = 0; m < G_N_ELEMENTS (modes); m++) {
        gdouble lo = 0, scale = 1;
        const UnetNormalization *nm = &modes[m];
        if (nm->mode == UNET_NORM_RANGE || nm->mode == UNET_NORM_MEAN_STD) {
          lo = nm->a;
          scale = nm->mode == UNET_NORM_RANGE ? 1.0 / (nm->b - nm->a) : 1.0 / nm->b;
        } else if (nm->mode == UNET_NORM_PERCENTILE) {
          lo = ref_percentile (sorted, n, nm->a);
          gdouble hi = ref_percentile (sorted, n, nm->b);
          scale = hi > lo ? 1.0 / (hi - lo) : 1.0;
        } else if (nm->mode == UNET_NORM_FRAME_MEAN_STD) {
          gdouble s = 0, ss = 0;
          for (gsize i = 0; i < n; i++)
            s += v[i];
          lo = s / n;
          for (gsize i = 0; i < n; i++)
            ss += (v[i] - lo) * (v[i] - lo);
          scale = ss > 0 ? 1.0 / sqrt (ss / n) : 1.0;
        }
        GError *err = NULL;
        g_assert_true (unet_normalize_frame (nm, format, frame, w, h, stride, out,
                &err));
        g_assert_no_error (err);
        for (gsize i = 0; i < n; i++) {
          gdouble want = (v[i] - lo) * scale;
          /* float32 output of a double computation: half an ulp of float (6e-8
           * relative); summation order in mean/std adds ~1e-12. */
          if (fabs (out[i] - want) > 1e-6 * MAX (1.0, fabs (want)))
            g_error ("format %d mode %u pixel %zu: %.9g vs %.9g", format, m, i,
                out[i], want);
        }
      }
    }
  }
  g_rand_free (r);
}

static void
test_known_values (void)
{
  /* numpy.percentile([1,2,3,4,10], [1, 99.8]) = 1.04, 9.952 */
  const gfloat f[] = { 10, 2, 1, 4, 3 };
  gfloat out[8];
  UnetNormalization n = { UNET_NORM_PERCENTILE, 1.0, 99.8 };
  g_assert_true (unet_normalize_frame (&n, UNET_PIXEL_F32, f, 5, 1, 20, out, NULL));
  /* tolerance: float32 output */
  g_assert_cmpfloat (fabs (out[2] - (1 - 1.04) / (9.952 - 1.04)), <, 1e-7);
  g_assert_cmpfloat (fabs (out[0] - (10 - 1.04) / (9.952 - 1.04)), <, 1e-7);

  /* numpy.percentile(arange(256), [1, 99.8]) = 2.55, 254.49 */
  guint8 ramp[256];
  gfloat o2[256];
  for (gint i = 0; i < 256; i++)
    ramp[255 - i] = (guint8) i;
  g_assert_true (unet_normalize_frame (&n, UNET_PIXEL_U8, ramp, 16, 16, 16, o2, NULL));
  g_assert_cmpfloat (fabs (o2[255] - (0 - 2.55) / (254.49 - 2.55)), <, 1e-7);
  g_assert_cmpfloat (fabs (o2[0] - (255 - 2.55) / (254.49 - 2.55)), <, 1e-7);

  /* numpy: mean 3.875, std 2.5708704 of [3,1,4,1,5,9,2,6] */
  const guint16 u[] = { 3, 1, 4, 1, 5, 9, 2, 6 };
  UnetNormalization fm = { UNET_NORM_FRAME_MEAN_STD, 0, 0 };
  g_assert_true (unet_normalize_frame (&fm, UNET_PIXEL_U16, u, 4, 2, 8, out, NULL));
  g_assert_cmpfloat (fabs (out[5] - (9 - 3.875) / 2.5708704), <, 1e-6);

  /* constant frame: zeros, no error */
  guint8 c[6] = { 7, 7, 7, 7, 7, 7 };
  g_assert_true (unet_normalize_frame (&n, UNET_PIXEL_U8, c, 3, 2, 3, out, NULL));
  for (gint i = 0; i < 6; i++)
    g_assert_cmpfloat (out[i], ==, 0.0f);
  g_assert_true (unet_normalize_frame (&fm, UNET_PIXEL_U8, c, 3, 2, 3, out, NULL));
  for (gint i = 0; i < 6; i++)
    g_assert_cmpfloat (out[i], ==, 0.0f);
}

static void
test_nan_and_errors (void)
{
  /* non-finite pixels: excluded from statistics, written as 0 */
  const gfloat f[] = { 1, NAN, 3, INFINITY, 5, -INFINITY };
  gfloat out[6];
  UnetNormalization n = { UNET_NORM_PERCENTILE, 0.0, 100.0 };
  g_assert_true (unet_normalize_frame (&n, UNET_PIXEL_F32, f, 6, 1, 24, out, NULL));
  const gfloat want[] = { 0.0f, 0.0f, 0.5f, 0.0f, 1.0f, 0.0f };
  for (gint i = 0; i < 6; i++)
    g_assert_cmpfloat (out[i], ==, want[i]);
  UnetNormalization fm = { UNET_NORM_FRAME_MEAN_STD, 0, 0 };
  g_assert_true (unet_normalize_frame (&fm, UNET_PIXEL_F32, f, 6, 1, 24, out, NULL));
  g_assert_cmpfloat (fabs (out[0] + sqrt (1.5)), <, 1e-6);    /* (1-3)/sqrt(8/3) */
  g_assert_cmpfloat (out[1], ==, 0.0f);
  const gfloat allnan[] = { NAN, NAN };
  g_assert_true (unet_normalize_frame (&n, UNET_PIXEL_F32, allnan, 2, 1, 8, out, NULL));
  g_assert_cmpfloat (out[0], ==, 0.0f);

  GError *err = NULL;
  UnetNormalization r = { UNET_NORM_RANGE, 3, 3 };
  guint8 px[4] = { 0 };
  g_assert_false (unet_normalize_frame (&r, UNET_PIXEL_U8, px, 2, 2, 2, out, &err));
  g_assert_error (err, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT);
  g_clear_error (&err);
  r.b = 4;
  g_assert_false (unet_normalize_frame (&r, UNET_PIXEL_U8, px, 2, 2, 1, out, &err));
  g_assert_error (err, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT);      /* stride */
  g_clear_error (&err);
  g_assert_false (unet_normalize_frame (&r, UNET_PIXEL_U8, px, 0, 2, 2, out, &err));
  g_assert_error (err, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT);
  g_clear_error (&err);
}

static void
test_large_sorted (void)
{
  /* selection on sorted, reversed and constant-run F32 input (quickselect's bad
   * cases) agrees with the histogram path on the same integer values */
  const gint w = 1000, h = 300;
  g_autofree gfloat *f = g_new (gfloat, w * h);
  g_autofree guint16 *u = g_new (guint16, w * h);
  g_autofree gfloat *o1 = g_new (gfloat, w * h);
  g_autofree gfloat *o2 = g_new (gfloat, w * h);
  UnetNormalization n = { UNET_NORM_PERCENTILE, 1.0, 99.8 };
  for (gint pattern = 0; pattern < 3; pattern++) {
    for (gint i = 0; i < w * h; i++) {
      gint v = pattern == 0 ? i / 7 : pattern == 1 ? (w * h - i) / 5 : (i % 3) * 1000;
      u[i] = (guint16) v;
      f[i] = (gfloat) v;
    }
    g_assert_true (unet_normalize_frame (&n, UNET_PIXEL_F32, f, w, h, w * 4, o1, NULL));
    g_assert_true (unet_normalize_frame (&n, UNET_PIXEL_U16, u, w, h, w * 2, o2, NULL));
    g_assert_true (memcmp (o1, o2, sizeof (gfloat) * w * h) == 0);
  }
}

/* Multi-channel frames: each channel is normalised as that channel alone would be
 * as a gray frame (percentile statistics per channel), whatever the layout:
 * interleaved RGB, RGBA (4th byte ignored), planes with a padded stride. */
static void
test_channels (void)
{
  const gint w = 13, h = 7, c = 3;
  gsize plane = (gsize) w * h, stride = 16;
  guint8 *rgba = g_malloc (plane * 4), *planes = g_malloc (stride * h * c);
  guint8 *gray = g_malloc (plane);
  gfloat *want = g_malloc (plane * sizeof (gfloat) * c);
  gfloat *got = g_malloc (plane * sizeof (gfloat) * c);
  UnetNormalization norm = { UNET_NORM_PERCENTILE, 1.0, 99.8 };
  UnetChannelLayout interleaved = { 3, 4, 1 }, planar = { 3, 1, stride * h };
  UnetChannelLayout bad = { 3, 0, 1 };
  UnetPixelFormat sample;
  UnetChannelLayout l;
  GError *err = NULL;
  GRand *rand = g_rand_new_with_seed (5);

  for (gsize p = 0; p < plane; p++)
    for (gint k = 0; k < 4; k++)
      rgba[p * 4 + k] = g_rand_int_range (rand, 0, 256) / (k + 1);
  memset (planes, 0xaa, stride * h * c);
  for (gint k = 0; k < c; k++) {
    for (gsize p = 0; p < plane; p++)
      gray[p] = rgba[p * 4 + k];
    g_assert_true (unet_normalize_frame (&norm, UNET_PIXEL_U8, gray, w, h, w,
            want + k * plane, &err));
    for (gint y = 0; y < h; y++)
      memcpy (planes + k * stride * h + y * stride, gray + y * w, w);
  }
  g_assert_true (unet_normalize_channels (&norm, UNET_PIXEL_U8, rgba, w, h,
          (gsize) w * 4, &interleaved, got, &err));
  g_assert_cmpmem (got, plane * c * sizeof (gfloat), want,
      plane * c * sizeof (gfloat));
  memset (got, 0, plane * c * sizeof (gfloat));
  g_assert_true (unet_normalize_channels (&norm, UNET_PIXEL_U8, planes, w, h,
          stride, &planar, got, &err));
  g_assert_cmpmem (got, plane * c * sizeof (gfloat), want,
      plane * c * sizeof (gfloat));
  g_assert_false (unet_normalize_channels (&norm, UNET_PIXEL_U8, rgba, w, h,
          (gsize) w * 4, &bad, got, &err));
  g_assert_error (err, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT);
  g_clear_error (&err);
  g_assert_true (unet_pixel_format_channels (UNET_PIXEL_RGBA8, &sample, &l));
  g_assert_cmpint (sample, ==, UNET_PIXEL_U8);
  g_assert_cmpint (l.channels, ==, 3);
  g_assert_cmpuint (l.pixel_step, ==, 4);
  g_assert_cmpuint (l.channel_step, ==, 1);
  g_rand_free (rand);
  g_free (rgba);
  g_free (planes);
  g_free (gray);
  g_free (want);
  g_free (got);
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  g_test_add_func ("/normalize/json", test_json);
  g_test_add_func ("/normalize/modes", test_modes);
  g_test_add_func ("/normalize/known-values", test_known_values);
  g_test_add_func ("/normalize/nan-and-errors", test_nan_and_errors);
  g_test_add_func ("/normalize/large-sorted", test_large_sorted);
  g_test_add_func ("/normalize/channels", test_channels);
  return g_test_run ();
}
