/* Augmentation properties: identity when everything is off (and for sigma = 0),
 * labels stay labels, image/labels/weights share one warp, the elastic field has
 * the requested spread, rotations are isometries, gray-value changes keep the
 * order of values, and a seed reproduces a sample. */
#include "training.h"

#include <math.h>
#include <string.h>

typedef struct
{
  gint w, h, ch;
  gfloat *image;
  gint32 *labels;
  gfloat *weights;
} Frame;

static Frame
frame_random (gint w, gint h, gint ch, guint32 seed)
{
  g_autoptr (GRand) r = g_rand_new_with_seed (seed);
  Frame f = { w, h, ch, g_new (gfloat, (gsize) w * h * ch),
    g_new (gint32, (gsize) w * h), g_new (gfloat, (gsize) w * h)
  };
  for (gsize i = 0; i < (gsize) w * h * ch; i++)
    f.image[i] = (gfloat) g_rand_double_range (r, -2, 2);
  for (gsize i = 0; i < (gsize) w * h; i++) {
    f.labels[i] = g_rand_int_range (r, -1, 3);
    f.weights[i] = f.labels[i] < 0 ? 0.0f : (gfloat) g_rand_double_range (r, 0.5, 11);
  }
  return f;
}

static void
frame_clear (Frame *f)
{
  g_free (f->image);
  g_free (f->labels);
  g_free (f->weights);
}

typedef struct
{
  gint in_w, in_h, out_w, out_h, ch;
  gfloat *img;
  gint32 *lab;
  gfloat *wt;
} Tile;

static Tile
tile_new (gint in_w, gint in_h, gint out_w, gint out_h, gint ch)
{
  Tile t = { in_w, in_h, out_w, out_h, ch, g_new (gfloat, (gsize) in_w * in_h * ch),
    g_new (gint32, (gsize) out_w * out_h), g_new (gfloat, (gsize) out_w * out_h)
  };
  return t;
}

static void
tile_clear (Tile *t)
{
  g_free (t->img);
  g_free (t->lab);
  g_free (t->wt);
}

static void
sample (const UnetAugmentParams *p, guint64 seed, const Frame *f, Tile *t)
{
  UnetRng rng;
  g_autoptr (GError) error = NULL;
  unet_rng_init (&rng, seed);
  g_assert_true (unet_augment_sample (p, &rng, f->image, f->labels, f->weights,
          f->ch, f->w, f->h, t->in_w, t->in_h, t->out_w, t->out_h, t->img, t->lab,
          t->wt, &error));
  g_assert_no_error (error);
}

/* Everything off, or elastic with sigma 0: the tile is the centred crop. */
static void
check_identity (const UnetAugmentParams *p, gint w, gint h, gint in_w, gint in_h,
    gint out_w, gint out_h)
{
  Frame f = frame_random (w, h, 2, 11);
  Tile t = tile_new (in_w, in_h, out_w, out_h, 2);
  sample (p, 5, &f, &t);
  /* Centre (w-1)/2 snapped to the tile's pixel grid. */
  gdouble tcx = (in_w - 1) / 2.0, tcy = (in_h - 1) / 2.0;
  gint x0 = (gint) (floor ((w - 1) / 2.0 - (tcx - floor (tcx)) + 0.5) - floor (tcx));
  gint y0 = (gint) (floor ((h - 1) / 2.0 - (tcy - floor (tcy)) + 0.5) - floor (tcy));
  for (gint c = 0; c < 2; c++)
    for (gint v = 0; v < in_h; v++)
      for (gint u = 0; u < in_w; u++) {
        gint sx = x0 + u, sy = y0 + v;
        /* Inside the frame the warp samples exactly at pixel centres. */
        if (sx < 0 || sy < 0 || sx >= w || sy >= h)
          continue;
        gfloat want = f.image[(gsize) c * w * h + (gsize) sy * w + sx];
        gfloat got = t.img[(gsize) c * in_w * in_h + (gsize) v * in_w + u];
        /* Catmull-Rom at t = 0 has weights (0, 1, 0, 0): exact up to one
         * float rounding of the sum. */
        g_assert_cmpfloat_with_epsilon (got, want, 1e-6);
      }
  gint ox = (in_w - out_w) / 2, oy = (in_h - out_h) / 2;
  for (gint v = 0; v < out_h; v++)
    for (gint u = 0; u < out_w; u++) {
      gsize s = (gsize) (y0 + oy + v) * w + (x0 + ox + u);
      g_assert_cmpint (t.lab[(gsize) v * out_w + u], ==, f.labels[s]);
      g_assert_cmpfloat_with_epsilon (t.wt[(gsize) v * out_w + u], f.weights[s], 1e-6);
    }
  tile_clear (&t);
  frame_clear (&f);
}

static void
test_identity (void)
{
  UnetAugmentParams p;
  unet_augment_params_init_identity (&p);
  check_identity (&p, 37, 29, 20, 16, 12, 8);
  check_identity (&p, 36, 30, 21, 17, 5, 3);
  p.image_interp = UNET_INTERP_BILINEAR;
  check_identity (&p, 40, 41, 24, 24, 24, 24);
  /* Elastic deformation with sigma = 0 is the identity. */
  unet_augment_params_init_identity (&p);
  p.elastic = TRUE;
  p.elastic_sigma = 0.0;
  check_identity (&p, 37, 29, 20, 16, 12, 8);
}

static void
test_labels_stay_labels_and_reproducible (void)
{
  UnetAugmentParams p;
  unet_augment_params_init (&p);
  p.intensity = FALSE;
  p.image_interp = UNET_INTERP_BILINEAR;
  Frame f = frame_random (50, 45, 1, 3);
  Tile a = tile_new (44, 44, 20, 20, 1), b = tile_new (44, 44, 20, 20, 1);
  for (guint64 seed = 0; seed < 20; seed++) {
    sample (&p, seed, &f, &a);
    for (gsize i = 0; i < 400; i++) {
      g_assert_cmpint (a.lab[i], >=, -1);
      g_assert_cmpint (a.lab[i], <=, 2);
      /* Bilinear weights are convex combinations: within the source range. */
      g_assert_cmpfloat (a.wt[i], >=, 0.0f);
      g_assert_cmpfloat (a.wt[i], <=, 11.0f);
      if (a.lab[i] == UNET_LABEL_IGNORE)
        g_assert_cmpfloat (a.wt[i], ==, 0.0f);
    }
    for (gsize i = 0; i < 44 * 44; i++) {
      g_assert_cmpfloat (a.img[i], >=, -2.0f);
      g_assert_cmpfloat (a.img[i], <=, 2.0f);
    }
    sample (&p, seed, &f, &b);
    g_assert_cmpmem (a.img, 44 * 44 * 4, b.img, 44 * 44 * 4);
    g_assert_cmpmem (a.lab, 400 * 4, b.lab, 400 * 4);
    g_assert_cmpmem (a.wt, 400 * 4, b.wt, 400 * 4);
  }
  sample (&p, 100, &f, &a);
  sample (&p, 101, &f, &b);
  g_assert_true (memcmp (a.img, b.img, 44 * 44 * 4) != 0);
  tile_clear (&a);
  tile_clear (&b);
  frame_clear (&f);
}

/* Image channels = source x and y ramps: bilinear sampling returns the source
 * position of every tile pixel, so the warp itself can be inspected. */
static Frame
frame_ramps (gint w, gint h)
{
  Frame f = { w, h, 2, g_new (gfloat, (gsize) w * h * 2), g_new (gint32,
        (gsize) w * h), NULL
  };
  for (gint y = 0; y < h; y++)
    for (gint x = 0; x < w; x++) {
      f.image[(gsize) y * w + x] = (gfloat) x;
      f.image[(gsize) w * h + (gsize) y * w + x] = (gfloat) y;
      f.labels[(gsize) y * w + x] = (x * 7 + y * 3) % 5;
    }
  return f;
}

static void
test_one_warp (void)
{
  /* Labels (nearest) follow the same warp as the image. */
  UnetAugmentParams p;
  unet_augment_params_init (&p);
  p.intensity = FALSE;
  p.image_interp = UNET_INTERP_BILINEAR;
  Frame f = frame_ramps (160, 150);
  Tile t = tile_new (48, 48, 20, 20, 2);
  gint checked = 0;
  for (guint64 seed = 0; seed < 10; seed++) {
    sample (&p, seed, &f, &t);
    for (gint v = 0; v < 20; v++)
      for (gint u = 0; u < 20; u++) {
        gsize ti = (gsize) (v + 14) * 48 + (u + 14);
        gdouble sx = t.img[ti], sy = t.img[48 * 48 + ti];
        /* Ramps are only linear away from the mirrored border. */
        if (sx < 1 || sy < 1 || sx > 158 || sy > 148)
          continue;
        /* Skip positions within float rounding of a pixel boundary. */
        if (fabs (sx - floor (sx) - 0.5) < 1e-3 || fabs (sy - floor (sy) - 0.5) < 1e-3)
          continue;
        gint nx = (gint) floor (sx + 0.5), ny = (gint) floor (sy + 0.5);
        g_assert_cmpint (t.lab[v * 20 + u], ==, f.labels[ny * 160 + nx]);
        checked++;
      }
  }
  g_assert_cmpint (checked, >, 2000);
  tile_clear (&t);
  frame_clear (&f);
}

static void
test_rotation_isometry (void)
{
  UnetAugmentParams p;
  unet_augment_params_init_identity (&p);
  p.rotate = TRUE;
  p.flip = TRUE;
  p.image_interp = UNET_INTERP_BILINEAR;
  Frame f = frame_ramps (120, 120);
  Tile t = tile_new (40, 40, 40, 40, 2);
  gdouble max_angle_seen = 0;
  for (guint64 seed = 0; seed < 16; seed++) {
    sample (&p, seed, &f, &t);
    /* Tile corners (0,0), (39,0), (0,39): distances 39 and orthogonal. */
    gdouble x0 = t.img[0], y0 = t.img[1600];
    gdouble x1 = t.img[39], y1 = t.img[1600 + 39];
    gdouble x2 = t.img[39 * 40], y2 = t.img[1600 + 39 * 40];
    /* bilinear of a ramp is exact up to float rounding (1e-4 of 120 px). */
    g_assert_cmpfloat_with_epsilon (hypot (x1 - x0, y1 - y0), 39.0, 1e-3);
    g_assert_cmpfloat_with_epsilon (hypot (x2 - x0, y2 - y0), 39.0, 1e-3);
    /* dot of two 39 px edges (|a||b| = 1521): 0.1 is an angle of 7e-5 rad,
     * ~10x the float32 rounding of coordinates near 120 px (ulp 7.6e-6,
     * times 2 * 39 per product), far below any real shear. */
    g_assert_cmpfloat_with_epsilon ((x1 - x0) * (x2 - x0) + (y1 - y0) * (y2 - y0),
        0.0, 1e-1);
    max_angle_seen = MAX (max_angle_seen, fabs (atan2 (y1 - y0, x1 - x0)));
  }
  /* "Any angle": over 16 draws some rotation exceeds 90 degrees. */
  g_assert_cmpfloat (max_angle_seen, >, G_PI / 2);
  tile_clear (&t);
  frame_clear (&f);
}

static void
test_elastic_spread (void)
{
  /* Tile corners are control points: their displacement is one N(0, sigma²)
   * draw per axis. 300 tiles x 2 axes x 4 corners: the standard deviation
   * estimate is within ~3% (1/sqrt(2n)); 10% tolerance. */
  UnetAugmentParams p;
  unet_augment_params_init_identity (&p);
  p.elastic = TRUE;
  p.elastic_sigma = 10.0;
  p.image_interp = UNET_INTERP_BILINEAR;
  Frame f = frame_ramps (200, 200);
  Tile t = tile_new (40, 40, 40, 40, 2);
  gdouble s2 = 0;
  gint n = 0;
  const gsize corners[4] = { 0, 39, 39 * 40, 40 * 40 - 1 };
  for (guint64 seed = 0; seed < 300; seed++) {
    sample (&p, seed, &f, &t);
    for (gint k = 0; k < 4; k++) {
      gsize i = corners[k];
      gdouble dx = t.img[i] - (80 + (gdouble) (i % 40));
      gdouble dy = t.img[1600 + i] - (80 + (gdouble) (i / 40));
      s2 += dx * dx + dy * dy;
      n += 2;
    }
  }
  gdouble sd = sqrt (s2 / n);
  g_test_message ("corner displacement sd %.3f (sigma 10)", sd);
  g_assert_cmpfloat (fabs (sd - 10.0), <, 1.0);
  tile_clear (&t);
  frame_clear (&f);
}

static void
test_intensity_monotone (void)
{
  UnetAugmentParams p;
  unet_augment_params_init_identity (&p);
  p.intensity = TRUE;
  Frame f = frame_random (30, 30, 1, 9);
  Tile t = tile_new (30, 30, 30, 30, 1);
  Tile ref = tile_new (30, 30, 30, 30, 1);
  UnetAugmentParams off;
  unet_augment_params_init_identity (&off);
  sample (&off, 1, &f, &ref);
  gint changed = 0;
  for (guint64 seed = 0; seed < 10; seed++) {
    sample (&p, seed, &f, &t);
    g_assert_cmpmem (t.lab, 900 * 4, ref.lab, 900 * 4);
    for (gsize i = 0; i + 1 < 900; i++) {
      if (ref.img[i] < ref.img[i + 1])
        g_assert_cmpfloat (t.img[i], <=, t.img[i + 1]);
      changed += fabsf (t.img[i] - ref.img[i]) > 1e-3f;
    }
  }
  g_assert_cmpint (changed, >, 1000);
  tile_clear (&t);
  tile_clear (&ref);
  frame_clear (&f);
}

static void
test_errors (void)
{
  UnetAugmentParams p;
  unet_augment_params_init (&p);
  Frame f = frame_random (10, 10, 1, 1);
  Tile t = tile_new (20, 20, 20, 20, 1);
  UnetRng rng;
  g_autoptr (GError) error = NULL;
  unet_rng_init (&rng, 0);
  /* Output larger than input. */
  g_assert_false (unet_augment_sample (&p, &rng, f.image, f.labels, NULL, 1, 10, 10,
          10, 10, 12, 12, t.img, t.lab, t.wt, &error));
  g_assert_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT);
  g_clear_error (&error);
  /* Odd border. */
  g_assert_false (unet_augment_sample (&p, &rng, f.image, f.labels, NULL, 1, 10, 10,
          11, 11, 10, 10, t.img, t.lab, t.wt, &error));
  g_assert_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT);
  g_clear_error (&error);
  p.elastic_grid = 1;
  g_assert_false (unet_augment_sample (&p, &rng, f.image, f.labels, NULL, 1, 10, 10,
          20, 20, 20, 20, t.img, t.lab, t.wt, &error));
  g_assert_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT);
  g_clear_error (&error);
  /* A tile far larger than a tiny frame works (mirror keeps reflecting). */
  unet_augment_params_init (&p);
  g_assert_true (unet_augment_sample (&p, &rng, f.image, f.labels, NULL, 1, 1, 1,
          20, 20, 20, 20, t.img, t.lab, t.wt, &error));
  g_assert_cmpfloat (t.wt[0], ==, f.labels[0] < 0 ? 0.0f : 1.0f);
  tile_clear (&t);
  frame_clear (&f);
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  g_test_add_func ("/augment/identity", test_identity);
  g_test_add_func ("/augment/labels-reproducible",
      test_labels_stay_labels_and_reproducible);
  g_test_add_func ("/augment/one-warp", test_one_warp);
  g_test_add_func ("/augment/rotation-isometry", test_rotation_isometry);
  g_test_add_func ("/augment/elastic-spread", test_elastic_spread);
  g_test_add_func ("/augment/intensity-monotone", test_intensity_monotone);
  g_test_add_func ("/augment/errors", test_errors);
  return g_test_run ();
}
