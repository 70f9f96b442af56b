/* Unit tests of the overlap-tile planner (engine/tiling.c), the host extraction and
 * stitching (engine/tile-extract-stitch.c) and the connected-component labelling. Everything is
 * checked against brute-force definitions, over many configurations and frame sizes
 * including 1. */
#include "tiling.h"

#include <string.h>

/* Brute-force mirror extension: walk from 0 towards i one step at a time, bouncing
 * off both edges without repeating them. */
static gint
mirror_walk (gint i, gint n)
{
  gint pos = 0, dir = i >= 0 ? 1 : -1, k;

  if (n == 1)
    return 0;
  for (k = 0; k < ABS (i); k++) {
    if (pos + dir < 0 || pos + dir >= n)
      dir = -dir;
    pos += dir;
  }
  return pos;
}

static void
test_mirror (void)
{
  gint n, i;

  for (n = 1; n <= 9; n++)
    for (i = -60; i <= 60; i++)
      g_assert_cmpint (unet_mirror_index (i, n), ==, mirror_walk (i, n));
  /* The documented examples: -1 -> 1 and n -> n-2. */
  g_assert_cmpint (unet_mirror_index (-1, 10), ==, 1);
  g_assert_cmpint (unet_mirror_index (10, 10), ==, 8);
  g_assert_cmpint (unet_mirror_index (-1000001, 1), ==, 0);
}

static void
config (UnetConfig *cfg, gint depth, UnetPadding padding)
{
  memset (cfg, 0, sizeof (*cfg));
  cfg->in_channels = 1;
  cfg->classes = 2;
  cfg->depth = depth;
  cfg->base_filters = 4;
  cfg->padding = padding;
}

/* Invariants of one axis plan. */
static void
check_axis (const UnetConfig *cfg, const UnetTileAxis *a, gint frame)
{
  gint step = unet_config_size_step (cfg), k;
  gint *covered = g_new0 (gint, frame);

  g_assert_cmpint (a->frame, ==, frame);
  g_assert_cmpint (unet_config_output_size (cfg, a->tile_in), ==, a->tile_out);
  g_assert_cmpint (a->border, ==, unet_config_border (cfg));
  g_assert_cmpint (a->n_tiles, >=, 1);
  if (a->n_tiles > 1) {
    /* On the global grid, and each stride fits in the tile output. */
    g_assert_cmpint (a->stride % step, ==, 0);
    g_assert_cmpint (a->stride, >, 0);
    g_assert_cmpint (a->stride, <=, a->tile_out);
  } else {
    g_assert_cmpint (a->tile_out, >=, frame);
    /* Not larger than needed to cover the frame. */
    if (cfg->padding == UNET_PADDING_VALID)
      g_assert_cmpint (a->tile_in, ==, unet_config_input_for_output (cfg, frame));
    else
      g_assert_cmpint (a->tile_in, ==, unet_config_legal_input_at_least (cfg, frame));
  }
  if (cfg->padding == UNET_PADDING_VALID) {
    /* Owned blocks partition the frame. */
    for (k = 0; k < a->n_tiles; k++) {
      gint o = k * (a->n_tiles > 1 ? a->stride : 0), e = MIN (o + a->stride, frame), p;
      g_assert_cmpint (o, <, frame);
      for (p = o; p < e; p++)
        covered[p]++;
    }
    for (k = 0; k < frame; k++)
      g_assert_cmpint (covered[k], ==, 1);
  } else {
    /* Tiles cover the frame (with overlap). */
    g_assert_cmpint ((a->n_tiles - 1) * a->stride + a->tile_out, >=, frame);
    if (a->n_tiles > 1)
      g_assert_cmpint ((a->n_tiles - 2) * a->stride + a->tile_out, <, frame);
  }
  g_free (covered);
}

static void
test_axis_plans (void)
{
  UnetConfig cfg;
  UnetTileAxis a;
  gint depth, pad, frame, req;

  for (pad = 0; pad < 2; pad++) {
    for (depth = 1; depth <= 4; depth++) {
      config (&cfg, depth, pad);
      for (frame = 1; frame <= 260; frame += (frame < 40 ? 1 : 7)) {
        for (req = 0; req <= 300; req += 5) {
          g_assert_true (unet_tile_axis_plan (&cfg, frame, req, &a, NULL));
          check_axis (&cfg, &a, frame);
          /* The request is honoured (rounded up to legal) unless it is too small
           * to own a block or larger than the frame needs. */
          if (pad == UNET_PADDING_VALID && a.n_tiles > 1 && req > a.tile_in)
            g_assert_cmpint (unet_config_legal_input_at_least (&cfg, req), ==,
                a.tile_in);
        }
      }
    }
  }
  /* The classic geometry: 572 -> 388, stride 384. */
  config (&cfg, 4, UNET_PADDING_VALID);
  g_assert_true (unet_tile_axis_plan (&cfg, 2048, 572, &a, NULL));
  g_assert_cmpint (a.tile_out, ==, 388);
  g_assert_cmpint (a.stride, ==, 384);
  g_assert_cmpint (a.n_tiles, ==, 6);
  g_assert_cmpint (a.border, ==, 92);
  /* The smallest legal tile (188 -> 4) cannot own a 16-pixel block: raised. */
  g_assert_true (unet_tile_axis_plan (&cfg, 100, 188, &a, NULL));
  g_assert_cmpint (a.tile_out, >=, 16);
  /* ... but it covers a 1-pixel frame on its own. */
  g_assert_true (unet_tile_axis_plan (&cfg, 1, 0, &a, NULL));
  g_assert_cmpint (a.tile_in, ==, 188);
  g_assert_false (unet_tile_axis_plan (&cfg, 0, 0, &a, NULL));
  g_assert_false (unet_tile_axis_plan (&cfg, 10, -1, &a, NULL));
}

/* Tiles: origins on the global grid, input = output - border, regions inside. */
static void
test_plan_tiles (void)
{
  UnetConfig cfg;
  UnetTilePlan plan;
  UnetTile t;
  gint i, step;

  config (&cfg, 3, UNET_PADDING_VALID);
  step = unet_config_size_step (&cfg);
  g_assert_true (unet_tile_plan_init (&plan, &cfg, 7, 300, 0, 60, NULL));
  g_assert_cmpint (plan.y.n_tiles, ==, 1);
  g_assert_cmpint (plan.x.n_tiles, >, 1);
  g_assert_cmpint (plan.n_tiles, ==, plan.y.n_tiles * plan.x.n_tiles);
  for (i = 0; i < plan.n_tiles; i++) {
    unet_tile_plan_get_tile (&plan, i, &t);
    g_assert_cmpint ((t.in_x + unet_config_border (&cfg)) % step, ==, 0);
    g_assert_cmpint (t.in_x, ==, t.out_x - unet_config_border (&cfg));
    g_assert_cmpint (t.x0, >=, t.out_x);
    g_assert_cmpint (t.x1, <=, t.out_x + plan.x.tile_out);
    g_assert_cmpint (t.x1, <=, 300);
    g_assert_cmpint (t.y1, ==, 7);
  }
}

static void
test_plan_auto (void)
{
  UnetConfig cfg;
  UnetTilePlan plan, other;
  gint pad, frames[][2] = { {1, 1}, {7, 300}, {389, 389}, {1000, 700}, {64, 64} };
  guint f;

  for (pad = 0; pad < 2; pad++) {
    config (&cfg, 3, pad);
    for (f = 0; f < G_N_ELEMENTS (frames); f++) {
      gint h = frames[f][0], w = frames[f][1], th, tw;
      guint64 budget = 8 << 20;
      gdouble best;

      g_assert_true (unet_tile_plan_auto (&plan, &cfg, 1, h, w, budget, 2, NULL));
      best = (gdouble) plan.n_tiles * plan.y.tile_in * plan.x.tile_in;
      g_assert_cmpuint (2 * unet_tile_activation_bytes (&cfg, 1, plan.y.tile_in,
              plan.x.tile_in), <=, budget);
      /* No explicit plan within the budget processes fewer input pixels. */
      for (th = 0; th <= plan.y.tile_in + 64; th += 8) {
        for (tw = 0; tw <= 1100; tw += 8) {
          g_assert_true (unet_tile_plan_init (&other, &cfg, h, w, th, tw, NULL));
          if (2 * unet_tile_activation_bytes (&cfg, 1, other.y.tile_in,
                  other.x.tile_in) > budget)
            continue;
          g_assert_cmpfloat ((gdouble) other.n_tiles * other.y.tile_in *
              other.x.tile_in, >=, best);
        }
      }
    }
  }
  /* A budget too small for anything: the smallest usable tile. */
  config (&cfg, 3, UNET_PADDING_VALID);
  g_assert_true (unet_tile_plan_auto (&plan, &cfg, 1, 1000, 1000, 1, 1, NULL));
  g_assert_true (unet_tile_plan_init (&other, &cfg, 1000, 1000, 0, 0, NULL));
  g_assert_cmpint (plan.y.tile_in, ==, other.y.tile_in);
  g_assert_cmpint (plan.x.tile_in, ==, other.x.tile_in);
}

/* Activation estimate of the classic tile, summed by hand from the network walk. */
static void
test_activation_bytes (void)
{
  UnetConfig cfg;
  guint64 b;

  unet_config_init_classic (&cfg);
  b = unet_tile_activation_bytes (&cfg, 1, 572, 572);
  /* The level-0 conv2 has its input and output live at once, 64 * (570^2 + 568^2)
   * floats ~ 166 MB; the peak (at the level-0 concatenation, with the skip) is
   * larger, and below a generous 1 GB. */
  g_assert_cmpuint (b, >=, (guint64) 64 * (570 * 570 + 568 * 568) * 4);
  g_assert_cmpuint (b, <, (guint64) 1 << 30);
  g_assert_cmpuint (unet_tile_activation_bytes (&cfg, 1, 572, 588), >, b);
  /* Same padding: 64 * 2 * 572^2 floats live in the level-0 conv2 at least. */
  cfg.padding = UNET_PADDING_SAME;
  g_assert_cmpuint (unet_tile_activation_bytes (&cfg, 1, 576, 576), >=,
      (guint64) 64 * 2 * 576 * 576 * 4);
  /* Widths padded to blocks of 8 (the CPU backend's inference graphs): base 64 has
   * nothing to pad; base 12 (widths 12, 24, 48...) counts its first level as 16
   * channels, so its estimate lies above the unpadded one and no higher than that
   * of base 16 (whose peak, at the first level, is the same). */
  g_assert_cmpuint (unet_tile_activation_bytes (&cfg, 8, 576, 576), ==,
      unet_tile_activation_bytes (&cfg, 1, 576, 576));
  cfg.padding = UNET_PADDING_VALID;
  cfg.base_filters = 12;
  b = unet_tile_activation_bytes (&cfg, 8, 572, 572);
  g_assert_cmpuint (b, >, unet_tile_activation_bytes (&cfg, 1, 572, 572));
  cfg.base_filters = 16;
  g_assert_cmpuint (b, <=, unet_tile_activation_bytes (&cfg, 1, 572, 572));
  /* the level-0 conv2 of the padded base 12: 16 * (570^2 + 568^2) floats */
  cfg.base_filters = 12;
  g_assert_cmpuint (b, >=, (guint64) 16 * (570 * 570 + 568 * 568) * 4);
}

static void
test_extract (void)
{
  gint h = 5, w = 7, y, x, c;
  gfloat frame[35], tile[3 * 40 * 50];

  for (y = 0; y < h * w; y++)
    frame[y] = (gfloat) y;
  unet_tile_extract (frame, h, w, -17, -23, 40, 50, 3, tile);
  for (c = 0; c < 3; c++)
    for (y = 0; y < 40; y++)
      for (x = 0; x < 50; x++)
        g_assert_cmpfloat (tile[(c * 40 + y) * 50 + x], ==,
            frame[mirror_walk (y - 17, h) * w + mirror_walk (x - 23, w)]);
  /* A 1x1 frame fills everything with its pixel. */
  frame[0] = 42.0f;
  unet_tile_extract (frame, 1, 1, -3, -3, 4, 4, 1, tile);
  for (y = 0; y < 16; y++)
    g_assert_cmpfloat (tile[y], ==, 42.0f);
}

/* Stitching writes every pixel exactly once (valid) / blends to the plain value
 * when every tile predicts the same constant (same). */
static void
test_stitch (void)
{
  UnetConfig cfg;
  UnetTilePlan plan;
  UnetTile t;
  gint pad, i, h = 37, w = 53;
  gsize n = (gsize) h * w, p;

  for (pad = 0; pad < 2; pad++) {
    gfloat *acc = g_new0 (gfloat, 2 * n), *wsum = g_new0 (gfloat, n), *tile, *wy, *wx;
    gsize tn;

    config (&cfg, 2, pad);
    g_assert_true (unet_tile_plan_init (&plan, &cfg, h, w, 16, 24, NULL));
    g_assert_cmpint (plan.n_tiles, >, 1);
    tn = (gsize) plan.y.tile_out * plan.x.tile_out;
    tile = g_new (gfloat, 2 * tn);
    wy = g_new (gfloat, plan.y.tile_out);
    wx = g_new (gfloat, plan.x.tile_out);
    unet_tile_gaussian_window (plan.y.tile_out, wy);
    unet_tile_gaussian_window (plan.x.tile_out, wx);
    for (p = 0; p < tn; p++) {
      tile[p] = 1.0f;
      tile[tn + p] = 0.25f;
    }
    for (i = 0; i < plan.n_tiles; i++) {
      unet_tile_plan_get_tile (&plan, i, &t);
      if (plan.blend) {
        unet_tile_stitch_blend (&plan, &t, 2, tile, wy, wx, acc, wsum);
      } else {
        /* Accumulate via a scratch frame to count writes. */
        gfloat *tmp = g_new0 (gfloat, 2 * n);
        unet_tile_stitch_copy (&plan, &t, 2, tile, tmp);
        for (p = 0; p < 2 * n; p++)
          acc[p] += tmp[p];
        g_free (tmp);
      }
    }
    if (plan.blend) {
      unet_tile_blend_finish (2, n, acc, wsum);
      for (p = 0; p < n; p++) {
        /* float rounding of a ratio of equal weighted sums */
        g_assert_cmpfloat_with_epsilon (acc[p], 1.0f, 1e-5);
        g_assert_cmpfloat_with_epsilon (acc[n + p], 0.25f, 1e-5);
      }
    } else {
      for (p = 0; p < n; p++) {
        g_assert_cmpfloat (acc[p], ==, 1.0f);
        g_assert_cmpfloat (acc[n + p], ==, 0.25f);
      }
    }
    g_free (acc);
    g_free (wsum);
    g_free (tile);
    g_free (wy);
    g_free (wx);
  }
}

static void
test_gaussian (void)
{
  gfloat w[64];

  unet_tile_gaussian_window (64, w);
  g_assert_cmpfloat (w[31], ==, w[32]);
  g_assert_cmpfloat (w[0], >, 0.0f);
  g_assert_cmpfloat (w[0], <, w[16]);
  g_assert_cmpfloat (w[31], <=, 1.0f);
  g_assert_cmpfloat (w[31], >, 0.99f);
}

/* Flood fill reference for 4-connected components. */
static guint
flood_count (const guint8 *m, gint w, gint h, guint32 *out)
{
  gint *stack = g_new (gint, w * h * 4 + 1), sp, p;
  guint count = 0;

  memset (out, 0, sizeof (guint32) * w * h);
  for (p = 0; p < w * h; p++) {
    if (!m[p] || out[p])
      continue;
    count++;
    sp = 0;
    stack[sp++] = p;
    out[p] = count;
    while (sp) {
      gint q = stack[--sp], x = q % w, y = q / w, d;
      gint nb[4][2] = { {x - 1, y}, {x + 1, y}, {x, y - 1}, {x, y + 1} };
      for (d = 0; d < 4; d++) {
        gint nx = nb[d][0], ny = nb[d][1], r;
        if (nx < 0 || ny < 0 || nx >= w || ny >= h)
          continue;
        r = ny * w + nx;
        if (m[r] && !out[r]) {
          out[r] = count;
          stack[sp++] = r;
        }
      }
    }
  }
  g_free (stack);
  return count;
}

static void
test_components (void)
{
  GRand *rand = g_rand_new_with_seed (1234);
  gint trial;
  /* Diagonal neighbours are separate objects under 4-connectivity; a U shape is one. */
  const guint8 diag[9] = { 1, 0, 0, 0, 1, 0, 0, 0, 1 };
  const guint8 u[12] = { 1, 0, 1, 1, 0, 1, 1, 1, 1, 0, 0, 0 };
  guint32 inst[64 * 64], ref[64 * 64];
  guint64 area;

  g_assert_cmpuint (unet_label_components (diag, 1, 3, 3, inst, &area), ==, 3);
  g_assert_cmpuint (area, ==, 3);
  g_assert_cmpuint (unet_label_components (u, 1, 3, 4, inst, &area), ==, 1);
  g_assert_cmpuint (area, ==, 7);
  g_assert_cmpuint (inst[2], ==, 1);
  for (trial = 0; trial < 50; trial++) {
    gint w = g_rand_int_range (rand, 1, 64), h = g_rand_int_range (rand, 1, 64), p;
    guint8 m[64 * 64];
    gdouble dens = g_rand_double (rand);
    guint n;

    for (p = 0; p < w * h; p++)
      m[p] = g_rand_double (rand) < dens ? 2 : 0;
    n = unet_label_components (m, 2, w, h, inst, NULL);
    for (p = 0; p < w * h; p++)
      m[p] = m[p] == 2;
    g_assert_cmpuint (n, ==, flood_count (m, w, h, ref));
    /* Flood fill also numbers in raster order of first pixels. */
    g_assert_cmpmem (inst, w * h * 4, ref, w * h * 4);
  }
  g_rand_free (rand);
}

/* More objects than 16 bits can number (the issue: 132238 objects came out as
 * 1.4 M pixels of id 65535): a 600x600 checkerboard has 180000 single-pixel
 * components, each with its own id, numbered in raster order. */
static void
test_components_many (void)
{
  const gint w = 600, h = 600;
  guint8 *m = g_new (guint8, w * h);
  guint32 *inst = g_new (guint32, w * h), next = 0;
  gint p;
  guint64 area;

  for (p = 0; p < w * h; p++)
    m[p] = ((p % w) + (p / w)) % 2 == 0;
  g_assert_cmpuint (unet_label_components (m, 1, w, h, inst, &area), ==,
      w * h / 2);
  g_assert_cmpuint (area, ==, w * h / 2);
  for (p = 0; p < w * h; p++) {
    if (m[p])
      g_assert_cmpuint (inst[p], ==, ++next);
    else
      g_assert_cmpuint (inst[p], ==, 0);
  }
  g_free (m);
  g_free (inst);
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  g_test_add_func ("/tiling/mirror", test_mirror);
  g_test_add_func ("/tiling/axis-plans", test_axis_plans);
  g_test_add_func ("/tiling/plan-tiles", test_plan_tiles);
  g_test_add_func ("/tiling/plan-auto", test_plan_auto);
  g_test_add_func ("/tiling/activation-bytes", test_activation_bytes);
  g_test_add_func ("/tiling/extract", test_extract);
  g_test_add_func ("/tiling/stitch", test_stitch);
  g_test_add_func ("/tiling/gaussian", test_gaussian);
  g_test_add_func ("/tiling/components", test_components);
  g_test_add_func ("/tiling/components-many", test_components_many);
  return g_test_run ();
}
