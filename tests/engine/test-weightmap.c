/* Masks -> labels and the paper's weight map, checked against a brute-force
 * reference (every pixel against every object pixel, no cutoff). */
#include "training.h"

#include <math.h>
#include <string.h>

static void
test_binary_components (void)
{
  /* Two diagonal touching pixels are two objects under 4-connectivity; 255 is
   * ignored. */
  const gint w = 6, h = 4;
  const gint32 mask[] = {
    1, 1, 0, 0, 0, 1,
    1, 0, 0, 0, 1, 0,
    0, 0, 7, 0, 0, 255,
    0, 0, 7, 7, 0, 255,
  };
  gint32 cls[24], inst[24];
  gint n = -1;
  g_autoptr (GError) error = NULL;

  g_assert_true (unet_mask_to_labels (UNET_MASK_BINARY, mask, w, h, 2, 255, cls,
          inst, &n, &error));
  g_assert_no_error (error);
  g_assert_cmpint (n, ==, 4);
  g_assert_cmpint (inst[0], ==, inst[1]);
  g_assert_cmpint (inst[0], ==, inst[6]);
  g_assert_cmpint (inst[5], !=, inst[10]);
  g_assert_cmpint (inst[14], ==, inst[21]);
  g_assert_cmpint (cls[14], ==, 1);
  g_assert_cmpint (cls[17], ==, UNET_LABEL_IGNORE);
  g_assert_cmpint (inst[17], ==, 0);
  g_assert_cmpint (cls[2], ==, 0);
}

static void
test_indexed_and_instances (void)
{
  const gint w = 4, h = 2;
  /* Touching objects of classes 1 and 2 are separate in indexed mode. */
  const gint32 mask[] = {
    1, 1, 2, 2,
    1, 0, 0, 2,
  };
  gint32 cls[8], inst[8];
  gint n = 0;
  g_autoptr (GError) error = NULL;

  g_assert_true (unet_mask_to_labels (UNET_MASK_INDEXED, mask, w, h, 3, -1, cls,
          inst, &n, &error));
  g_assert_cmpint (n, ==, 2);
  g_assert_cmpint (cls[2], ==, 2);
  g_assert_cmpint (inst[1], !=, inst[2]);

  /* A class index beyond the model's classes is an error naming it. */
  g_assert_false (unet_mask_to_labels (UNET_MASK_INDEXED, mask, w, h, 2, -1, cls,
          inst, &n, &error));
  g_assert_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT);
  g_assert_nonnull (strstr (error->message, "value 2"));
  g_clear_error (&error);

  /* Instances: ids kept as objects (compacted), even when not connected. */
  const gint32 ids[] = {
    900, 900, 5, 0,
    0, 0, 5, 900,
  };
  g_assert_true (unet_mask_to_labels (UNET_MASK_INSTANCES, ids, w, h, 2, -1, cls,
          inst, &n, &error));
  g_assert_cmpint (n, ==, 2);
  g_assert_cmpint (inst[0], ==, inst[7]);
  g_assert_cmpint (inst[2], ==, inst[6]);
  g_assert_cmpint (inst[0], !=, inst[2]);
  g_assert_cmpint (cls[7], ==, 1);
  g_assert_cmpint (cls[3], ==, 0);

  const gint32 neg[] = { 0, -3, 0, 0, 0, 0, 0, 0 };
  g_assert_false (unet_mask_to_labels (UNET_MASK_BINARY, neg, w, h, 2, -1, cls,
          inst, &n, &error));
  g_assert_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT);
}

/* Random blobs (discs and rectangles, some touching) as an instance mask. */
static void
make_blobs (GRand *r, gint w, gint h, gint n_blobs, gint32 *mask)
{
  memset (mask, 0, sizeof (gint32) * w * h);
  for (gint b = 1; b <= n_blobs; b++) {
    gint cx = g_rand_int_range (r, 0, w), cy = g_rand_int_range (r, 0, h);
    gint rad = g_rand_int_range (r, 1, 7);
    gboolean disc = g_rand_boolean (r);
    for (gint y = MAX (cy - rad, 0); y <= MIN (cy + rad, h - 1); y++)
      for (gint x = MAX (cx - rad, 0); x <= MIN (cx + rad, w - 1); x++)
        if (!disc || (x - cx) * (x - cx) + (y - cy) * (y - cy) <= rad * rad)
          mask[y * w + x] = b * 3;      /* later blobs overwrite: touching objects */
  }
}

static void
check_against_brute_force (gint w, gint h, gint n_blobs, gdouble w0, gdouble sigma,
    guint32 seed)
{
  g_autoptr (GRand) r = g_rand_new_with_seed (seed);
  gsize n_px = (gsize) w * h;
  g_autofree gint32 *mask = g_new (gint32, n_px);
  g_autofree gint32 *cls = g_new (gint32, n_px);
  g_autofree gint32 *inst = g_new (gint32, n_px);
  g_autofree gfloat *wmap = g_new (gfloat, n_px);
  g_autoptr (GError) error = NULL;
  gint n = 0;

  make_blobs (r, w, h, n_blobs, mask);
  /* A few ignored pixels. */
  for (gint k = 0; k < 10; k++)
    mask[g_rand_int_range (r, 0, (gint32) n_px)] = 65535;
  g_assert_true (unet_mask_to_labels (UNET_MASK_INSTANCES, mask, w, h, 2, 65535,
          cls, inst, &n, &error));
  g_assert_cmpint (n, >=, 3);

  UnetWeightMapParams p;
  unet_weight_map_params_init (&p);
  p.border_weight = w0;
  p.border_sigma = sigma;
  g_assert_true (unet_weight_map_compute (&p, cls, inst, n, 2, w, h, wmap, &error));
  g_assert_no_error (error);

  /* Reference class weights. */
  gdouble cnt[2] = { 0, 0 };
  for (gsize i = 0; i < n_px; i++)
    if (cls[i] >= 0)
      cnt[cls[i]]++;
  gdouble wc[2];
  for (gint c = 0; c < 2; c++)
    wc[c] = (cnt[0] + cnt[1]) / (2.0 * cnt[c]);

  gdouble cutoff = unet_weight_map_cutoff (&p);
  /* The cutoff's promise: the dropped term is below 1e-3 w0. */
  g_assert_cmpfloat (fabs (w0 * exp (-cutoff * cutoff / (2 * sigma * sigma)) -
          1e-3 * w0), <, 1e-9 * w0);

  gint n_exact = 0;
  gdouble *dist = g_new (gdouble, n + 1);
  for (gint y = 0; y < h; y++)
    for (gint x = 0; x < w; x++) {
      gsize i = (gsize) y * w + x;
      if (cls[i] < 0) {
        g_assert_cmpfloat (wmap[i], ==, 0.0f);
        continue;
      }
      for (gint j = 0; j <= n; j++)
        dist[j] = G_MAXDOUBLE;
      for (gint yy = 0; yy < h; yy++)
        for (gint xx = 0; xx < w; xx++) {
          gint id = inst[yy * w + xx];
          if (id == 0)
            continue;
          gdouble d = sqrt ((gdouble) (x - xx) * (x - xx) + (y - yy) * (y - yy));
          dist[id] = MIN (dist[id], d);
        }
      gdouble a = G_MAXDOUBLE, b = G_MAXDOUBLE;
      for (gint j = 1; j <= n; j++) {
        if (dist[j] < a) {
          b = a;
          a = dist[j];
        } else if (dist[j] < b) {
          b = dist[j];
        }
      }
      gdouble term = w0 * exp (-(a + b) * (a + b) / (2 * sigma * sigma));
      gdouble ref = wc[cls[i]] + term;
      if (a + b <= cutoff * (1 - 1e-9)) {
        /* Kept: exact up to float32 rounding of the sum (a few ulp; 1e-5
         * relative leaves room and still catches a distance off by 1 px, which
         * changes the term by percents). */
        n_exact++;
        if (fabs (wmap[i] - ref) > 1e-5 * ref)
          g_error ("(%d, %d): weight %.7g, brute force %.7g (d1 %g d2 %g)", x, y,
              wmap[i], ref, a, b);
      } else {
        /* Dropped beyond the cutoff: error below 1e-3 w0 by construction. */
        if (fabs (wmap[i] - ref) > 1e-3 * w0 * (1 + 1e-6) + 1e-5 * ref)
          g_error ("(%d, %d): weight %.7g, brute force %.7g beyond cutoff", x, y,
              wmap[i], ref);
      }
    }
  g_free (dist);
  /* The test must exercise the border term, not only the class weights. */
  g_assert_cmpint (n_exact, >, (gint) (n_px / 10));
}

static void
test_brute_force (void)
{
  check_against_brute_force (64, 56, 14, 10.0, 5.0, 1);
  check_against_brute_force (61, 47, 25, 10.0, 3.0, 2);
  check_against_brute_force (40, 90, 8, 5.0, 8.0, 3);
  check_against_brute_force (1, 30, 6, 10.0, 5.0, 4);
}

static void
test_class_balance_and_switches (void)
{
  const gint w = 8, h = 1;
  const gint32 cls[] = { 0, 0, 0, 0, 0, 0, 1, UNET_LABEL_IGNORE };
  const gint32 inst[] = { 0, 0, 0, 0, 0, 0, 1, 0 };
  gfloat wmap[8];
  UnetWeightMapParams p;
  g_autoptr (GError) error = NULL;

  unet_weight_map_params_init (&p);
  g_assert_true (unet_weight_map_compute (&p, cls, inst, 1, 2, w, h, wmap, &error));
  /* 7 labelled pixels, 6 background, 1 foreground: w = 7/(2*6), 7/(2*1); one
   * object only, so no border term. 1e-6: float32 rounding of 7/12 (3e-8). */
  g_assert_cmpfloat_with_epsilon (wmap[0], 7.0 / 12.0, 1e-6);
  g_assert_cmpfloat_with_epsilon (wmap[6], 3.5, 1e-6);
  g_assert_cmpfloat (wmap[7], ==, 0.0f);

  p.class_balance = FALSE;
  p.border_weight = 0.0;
  g_assert_true (unet_weight_map_compute (&p, cls, inst, 1, 2, w, h, wmap, &error));
  g_assert_cmpfloat (wmap[0], ==, 1.0f);
  g_assert_cmpfloat (wmap[6], ==, 1.0f);

  p.border_sigma = -1;
  p.border_weight = 10;
  g_assert_false (unet_weight_map_compute (&p, cls, inst, 1, 2, w, h, wmap, &error));
  g_assert_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT);
}

/* Many objects on a large frame: the windowed transform must stay fast. */
static void
test_large_frame (void)
{
  const gint w = 1024, h = 1024;
  gsize n_px = (gsize) w * h;
  g_autoptr (GRand) r = g_rand_new_with_seed (7);
  g_autofree gint32 *mask = g_new (gint32, n_px);
  g_autofree gint32 *cls = g_new (gint32, n_px);
  g_autofree gint32 *inst = g_new (gint32, n_px);
  g_autofree gfloat *wmap = g_new (gfloat, n_px);
  g_autoptr (GError) error = NULL;
  UnetWeightMapParams p;
  gint n;

  make_blobs (r, w, h, 2000, mask);
  unet_weight_map_params_init (&p);
  g_assert_true (unet_mask_to_labels (UNET_MASK_BINARY, mask, w, h, 2, -1, cls,
          inst, &n, &error));
  gint64 t0 = g_get_monotonic_time ();
  g_assert_true (unet_weight_map_compute (&p, cls, inst, n, 2, w, h, wmap, &error));
  gint64 t1 = g_get_monotonic_time ();
  g_test_message ("1024x1024, %d objects: weight map in %.1f ms", n,
      (t1 - t0) / 1000.0);
  gdouble max_w = 0;
  for (gsize i = 0; i < n_px; i++)
    max_w = MAX (max_w, wmap[i]);
  /* Touching objects exist, so some pixel gets most of w0 on top of w_c. */
  g_assert_cmpfloat (max_w, >, 8.0);
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  g_test_add_func ("/weightmap/binary-components", test_binary_components);
  g_test_add_func ("/weightmap/indexed-instances", test_indexed_and_instances);
  g_test_add_func ("/weightmap/brute-force", test_brute_force);
  g_test_add_func ("/weightmap/class-balance", test_class_balance_and_switches);
  g_test_add_func ("/weightmap/large-frame", test_large_frame);
  return g_test_run ();
}
