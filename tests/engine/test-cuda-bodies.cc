/* The CUDA kernels' per-element bodies (engine/cuda/kernel-bodies.h), run on the CPU
 * over whole grids and compared with the CPU backend's and the CPU training code's
 * results on awkward shapes (1x1, odd sizes, sizes that are no multiple of the GPU's
 * 256-thread block, tiles reaching far outside the frame). The bodies are the exact
 * code the kernels run per element: a change of their index math or arithmetic fails
 * here, in CI, without a GPU or nvcc. Only the grid-stride loops, the block
 * reductions and the atomics stay GPU-only (tests/gpu/test-cuda-ops.c).
 *
 * Host shims: __expf / __logf are expf / logf here. Elements are float (the host has
 * no __half / __nv_bfloat16); the 16-bit conversions are checked on the GPU.
 *
 * Tolerances: index errors give O(0.1)-O(1) differences; where both sides compute
 * the same float expression the check is exact (EXACT); where the reference works in
 * double or in another association, TOL_F32 = 1e-5 relative to the magnitude (a
 * handful of float roundings, 2^-24 = 6e-8 each, on values of order one). */
#include "config.h"

#include "kernel-bodies.h"
#include "host-samples.h"

#include "cpu/cpu-train.h"
#include "normalize-private.h"
#include "rng.h"
#include "tiling.h"
#include "training.h"

#include <glib.h>
#include <math.h>
#include <string.h>

#include <vector>

static const double TOL_F32 = 1e-5;

/* ------------------------------------------------------------ helpers -- */

struct Rng
{
  guint64 s;
  explicit Rng (guint64 seed) : s (seed * 0x9e3779b97f4a7c15ull + 1) {}
  guint64 next ()
  {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    return s;
  }
  float uniform (float lo, float hi)
  {
    return lo + (hi - lo) * (float) ((next () >> 40) * (1.0 / 16777216.0));
  }
  int below (int n) { return (int) (next () % (guint64) n); }
};

static std::vector<float>
random_floats (size_t n, guint64 seed, float lo = -2.0f, float hi = 2.0f)
{
  Rng r (seed);
  std::vector<float> v (n);
  for (auto &x : v)
    x = r.uniform (lo, hi);
  return v;
}

/* Runs body(i) for every i of the grid, as the grid-stride loop does. */
template <typename F>
static void
grid (size_t total, F body)
{
  for (size_t i = 0; i < total; i++)
    body (i);
}

/* Fails with the worst element when |got - want| > atol + rtol |want| anywhere. */
static void
assert_close (const char *what, const float *got, const float *want, size_t n, double atol,
    double rtol)
{
  size_t bad = 0, worst = 0;
  double worst_d = -1.0;
  for (size_t i = 0; i < n; i++) {
    double d = fabs ((double) got[i] - want[i]);
    if (!(d <= atol + rtol * fabs ((double) want[i])) || isnan (got[i]) != isnan (want[i])) {
      bad++;
      if (!(d <= worst_d)) {
        worst_d = d;
        worst = i;
      }
    }
  }
  if (bad)
    g_error ("%s: %zu of %zu elements differ; worst [%zu] %.9g vs %.9g", what, bad, n, worst,
        got[worst], want[worst]);
}

static void
assert_equal_u8 (const char *what, const guint8 *got, const guint8 *want, size_t n)
{
  for (size_t i = 0; i < n; i++)
    if (got[i] != want[i])
      g_error ("%s: element %zu is %d, want %d", what, i, got[i], want[i]);
}

/* (n, c, h, w) <-> (n, h, w, c) by plain loops (the test's own reference). */
static std::vector<float>
to_nhwc (const std::vector<float> &x, int n, int c, int h, int w)
{
  std::vector<float> y (x.size ());
  for (int b = 0; b < n; b++)
    for (int k = 0; k < c; k++)
      for (int yy = 0; yy < h; yy++)
        for (int xx = 0; xx < w; xx++)
          y[(((size_t) b * h + yy) * w + xx) * c + k] = x[(((size_t) b * c + k) * h + yy) * w + xx];
  return y;
}

static std::vector<float>
to_nchw (const std::vector<float> &x, int n, int c, int h, int w)
{
  std::vector<float> y (x.size ());
  for (int b = 0; b < n; b++)
    for (int k = 0; k < c; k++)
      for (int yy = 0; yy < h; yy++)
        for (int xx = 0; xx < w; xx++)
          y[(((size_t) b * c + k) * h + yy) * w + xx] = x[(((size_t) b * h + yy) * w + xx) * c + k];
  return y;
}

/* Shapes (n, c, h, w) every elementwise test runs: 1x1, odd, and larger than one
 * 256-thread block without being a multiple of it. */
static const int shapes[][4] = {
  { 1, 1, 1, 1 }, { 1, 3, 1, 5 }, { 2, 5, 7, 3 }, { 3, 17, 9, 11 }, { 1, 2, 33, 1 },
};

/* ------------------------------------------------------------- tiling -- */

template <typename P>
static void
extract_case (UnetCudaPixel format, int fw, int fh, int channels, int tw, int th, guint64 seed)
{
  Rng r (seed);
  const size_t bpp = sizeof (P);
  const size_t stride = (size_t) fw * channels * bpp + 3 * bpp;      /* padded rows */
  std::vector<guint8> frame (stride * fh);
  for (int y = 0; y < fh; y++)
    for (int x = 0; x < fw * channels; x++) {
      const int levels = format == UNET_CUDA_PIXEL_U8 ? 256 : 65536;
      P v = (P) (format == UNET_CUDA_PIXEL_F32 ? r.uniform (-5, 5) : r.below (levels));
      memcpy (&frame[y * stride + x * bpp], &v, bpp);
    }
  /* origins inside, far left/above (several reflections), beyond the far edge */
  const int ox[] = { 0, -7, fw - 1, -3 * fw - 2, 2 * fw + 1 };
  const int oy[] = { 0, -5, -2 * fh - 1, fh - 1, 3 * fh };
  const int n_tiles = 5;
  const float offset = 3.5f, scale = 0.25f;
  const size_t per_tile = (size_t) tw * th * channels, total = per_tile * n_tiles;
  std::vector<float> got (total), want (total);

  grid (total, [&] (size_t i) {
    kb_extract_elem (frame.data (), format, fw, fh, stride, channels, ox, oy, tw, th, offset,
        scale, got.data (), i);
  });
  /* reference: the host path normalises the frame, then tiling.c extracts (one
   * channel); interleaved channels by plain indexing with tiling.c's mirror rule */
  for (int c = 0; c < channels; c++) {
    std::vector<float> plane ((size_t) fw * fh), tile ((size_t) tw * th);
    for (int y = 0; y < fh; y++)
      for (int x = 0; x < fw; x++) {
        P v;
        memcpy (&v, &frame[y * stride + ((size_t) x * channels + c) * bpp], bpp);
        plane[(size_t) y * fw + x] = ((float) v - offset) * scale;
      }
    for (int t = 0; t < n_tiles; t++) {
      unet_tile_extract (plane.data (), fh, fw, oy[t], ox[t], th, tw, 1, tile.data ());
      for (int y = 0; y < th; y++)
        for (int x = 0; x < tw; x++)
          want[t * per_tile + ((size_t) y * tw + x) * channels + c] = tile[(size_t) y * tw + x];
      g_assert_cmpint (unet_mirror_index (ox[t] - 1, fw), ==, mirror_index (ox[t] - 1, fw));
    }
  }
  assert_close ("extract", got.data (), want.data (), total, 0, 0);      /* EXACT */
}

static void
test_extract (void)
{
  extract_case<guint8> (UNET_CUDA_PIXEL_U8, 1, 1, 1, 3, 3, 1);
  extract_case<guint16> (UNET_CUDA_PIXEL_U16, 7, 5, 1, 4, 6, 2);
  extract_case<float> (UNET_CUDA_PIXEL_F32, 13, 9, 1, 5, 5, 3);
  extract_case<guint8> (UNET_CUDA_PIXEL_U8, 9, 4, 3, 7, 3, 4);
  extract_case<guint16> (UNET_CUDA_PIXEL_U16, 1, 17, 1, 9, 2, 5);
  extract_case<guint16> (UNET_CUDA_PIXEL_U16, 300, 3, 1, 259, 3, 6);
}

/* Softmax (sigmoid) of one pixel's logits in double: the reference. */
static void
ref_probs (const float *z, int classes, int zstride, double *p)
{
  if (classes == 1) {
    p[0] = 1.0 / (1.0 + exp (-(double) z[0]));
    return;
  }
  double m = z[0], s = 0;
  for (int k = 1; k < classes; k++)
    m = MAX (m, (double) z[(size_t) k * zstride]);
  for (int k = 0; k < classes; k++)
    s += exp (z[(size_t) k * zstride] - m);
  for (int k = 0; k < classes; k++)
    p[k] = exp (z[(size_t) k * zstride] - m) / s;
}

/* The segmenter's block geometry for a tile (segmenter.c device_push). */
static UnetCudaBlock
block_of (const UnetTile &t)
{
  return UnetCudaBlock { t.x0 - t.out_x, t.y0 - t.out_y, t.x0, t.y0, t.x1 - t.x0, t.y1 - t.y0 };
}

/* A whole frame through the stitch (valid) or accumulate + finalize (same) bodies,
 * against tiling.c's stitch / blend on the host path's (K, out_h, out_w) tiles. */
static void
stitch_case (UnetPadding padding, int classes, int fh, int fw, int tile, guint64 seed)
{
  UnetConfig cfg = { 1, classes, 2, 4, padding, FALSE, 0.0 };
  UnetTilePlan plan;
  GError *error = NULL;
  g_assert_true (unet_tile_plan_init (&plan, &cfg, fh, fw, tile, tile, &error));
  g_assert_no_error (error);
  const int oh = plan.y.tile_out, ow = plan.x.tile_out, T = plan.n_tiles;
  const size_t per_tile = (size_t) oh * ow * classes, npix = (size_t) fw * fh;
  /* logits of every tile, NHWC as the GPU holds them */
  std::vector<float> logits = random_floats (per_tile * T, seed, -4, 4);
  const int prob_class = classes - 1;

  std::vector<guint8> labels (npix, 255), want_labels (npix);
  std::vector<float> probs (npix, -1.0f), want_probs ((size_t) classes * npix, 0.0f);
  std::vector<float> acc ((size_t) classes * npix, 0.0f), wsum (npix, 0.0f);
  std::vector<float> wsum_ref (npix, 0.0f), wy (oh), wx (ow);
  unet_tile_gaussian_window (oh, wy.data ());
  unet_tile_gaussian_window (ow, wx.data ());

  for (int t = 0; t < T; t++) {
    UnetTile tl;
    unet_tile_plan_get_tile (&plan, t, &tl);
    const UnetCudaBlock b = block_of (tl);
    /* host path: the net's softmax gives (K, oh, ow) probabilities of the tile */
    std::vector<float> tile_p (per_tile);
    for (int p = 0; p < oh * ow; p++) {
      double pr[8];
      ref_probs (&logits[t * per_tile + (size_t) p * classes], classes, 1, pr);
      for (int k = 0; k < classes; k++)
        tile_p[(size_t) k * oh * ow + p] = (float) pr[k];
    }
    if (plan.blend) {
      unet_tile_stitch_blend (&plan, &tl, classes, tile_p.data (), wy.data (), wx.data (),
          want_probs.data (), wsum_ref.data ());
      grid ((size_t) b.w * b.h, [&] (size_t i) {
        kb_accumulate_elem (&logits[t * per_tile], oh, ow, classes, b, 0.125f * ow,
            0.125f * oh, acc.data (), wsum.data (), fw, fh, i);
      });
    } else {
      unet_tile_stitch_copy (&plan, &tl, classes, tile_p.data (), want_probs.data ());
      grid ((size_t) b.w * b.h, [&] (size_t i) {
        kb_stitch_elem (logits.data (), oh, ow, classes, b, t, labels.data (), (size_t) fw,
            probs.data (), (size_t) fw * 4, prob_class, i);
      });
    }
  }
  if (plan.blend) {
    assert_close ("blend weights", wsum.data (), wsum_ref.data (), npix, 1e-6, TOL_F32);
    unet_tile_blend_finish (classes, npix, want_probs.data (), wsum_ref.data ());
    grid (npix, [&] (size_t i) {
      kb_finalize_elem (acc.data (), wsum.data (), fw, fh, classes, labels.data (),
          (size_t) fw, probs.data (), (size_t) fw * 4, prob_class, i);
    });
  }
  /* labels: argmax of the reference probabilities (p >= 0.5 for one class); a pixel
   * whose two best classes tie within the tolerance may go either way */
  for (size_t i = 0; i < npix; i++) {
    int arg = 0;
    if (classes == 1) {
      arg = want_probs[i] >= 0.5f;
    } else {
      for (int k = 1; k < classes; k++)
        if (want_probs[k * npix + i] > want_probs[arg * npix + i])
          arg = k;
    }
    want_labels[i] = (guint8) arg;
    if (labels[i] != arg) {
      double a = classes == 1 ? 0.5 : want_probs[labels[i] * npix + i];
      double best = want_probs[arg * npix + i];
      if (fabs (best - a) > TOL_F32)
        g_error ("stitch labels: pixel %zu is %d, want %d (p %g vs %g)", i, labels[i], arg, a,
            best);
      want_labels[i] = labels[i];
    }
  }
  assert_equal_u8 ("stitch labels", labels.data (), want_labels.data (), npix);
  assert_close ("stitch probability", probs.data (), &want_probs[(size_t) prob_class * npix],
      npix, 1e-6, TOL_F32);
}

static void
test_stitch (void)
{
  stitch_case (UNET_PADDING_VALID, 2, 1, 1, 0, 11);
  stitch_case (UNET_PADDING_VALID, 3, 37, 53, 0, 12);
  stitch_case (UNET_PADDING_VALID, 1, 19, 300, 0, 13);
  stitch_case (UNET_PADDING_VALID, 2, 61, 29, 60, 14);
}

static void
test_blend (void)
{
  stitch_case (UNET_PADDING_SAME, 2, 1, 1, 0, 21);
  stitch_case (UNET_PADDING_SAME, 3, 45, 23, 16, 22);
  stitch_case (UNET_PADDING_SAME, 1, 70, 9, 0, 23);
}

static void
percentile_case (int bins, const std::vector<guint32> &hist, double plo, double phi)
{
  const int chunks = 256, chunk = bins / chunks;
  std::vector<guint64> chunk_sum (chunks, 0);
  std::vector<gsize> h64 (bins);
  guint64 n = 0;
  for (int v = 0; v < bins; v++) {
    chunk_sum[v / chunk] += hist[v];
    h64[v] = hist[v];
    n += hist[v];
  }
  float params[2];
  kb_percentile_params (hist.data (), chunk_sum.data (), chunks, chunk, n, plo, phi, params);
  UnetNormalization norm = { UNET_NORM_PERCENTILE, plo, phi };
  gdouble lo, scale;
  unet_normalization_histogram_params (&norm, h64.data (), bins, n, &lo, &scale);
  g_assert_cmpfloat (params[0], ==, (float) lo);        /* EXACT: the same doubles */
  g_assert_cmpfloat (params[1], ==, (float) scale);
}

static void
test_norm_params (void)
{
  for (int bins : { 256, 65536 }) {
    Rng r (bins);
    std::vector<guint32> hist (bins, 0);
    hist[bins - 1] = 1;                                 /* n = 1 */
    percentile_case (bins, hist, 0.0, 100.0);
    percentile_case (bins, hist, 1.0, 99.8);
    hist[bins - 1] = 0;
    hist[7] = 1000;                                     /* constant frame */
    percentile_case (bins, hist, 1.0, 99.8);
    std::vector<guint32> ramp (bins, 0);      /* 16 distinct, unevenly spaced values: */
    for (int v = 0; v < 16; v++)               /* the interpolation decides */
      ramp[(size_t) v * v * (bins / 256)] = 1 + v % 3;
    percentile_case (bins, ramp, 11.5, 97.25);
    for (int k = 0; k < 300; k++)                       /* sparse, uneven */
      hist[r.below (bins)] += 1 + r.below (50);
    percentile_case (bins, hist, 1.0, 99.8);
    percentile_case (bins, hist, 0.0, 100.0);
    percentile_case (bins, hist, 33.3, 66.7);
  }
  /* moments: mean and 1/std of a frame, and a constant frame's scale of 1 */
  std::vector<float> px = random_floats (1001, 31, 0, 4095);
  double s[2] = { 0, 0 }, mean = 0, var = 0;
  for (float v : px) {
    s[0] += v;
    s[1] += (double) v * v;
    mean += v;
  }
  mean /= px.size ();
  for (float v : px)
    var += (v - mean) * (v - mean);
  var /= px.size ();
  float params[2];
  kb_moments_params (s, px.size (), params);
  g_assert_cmpfloat_with_epsilon (params[0], mean, mean * TOL_F32);
  g_assert_cmpfloat_with_epsilon (params[1], 1.0 / sqrt (var), TOL_F32 / sqrt (var));
  double c[2] = { 5.0 * 9, 25.0 * 9 };
  kb_moments_params (c, 9, params);
  g_assert_cmpfloat (params[0], ==, 5.0f);
  g_assert_cmpfloat (params[1], ==, 1.0f);
}

/* ------------------------------------------------------- layout, casts -- */

static void
test_layout (void)
{
  for (auto &s : shapes) {
    const int n = s[0], c = s[1], h = s[2], w = s[3];
    const size_t total = (size_t) n * c * h * w;
    std::vector<float> x = random_floats (total, total), nhwc (total), back (total);
    grid (total, [&] (size_t i) { kb_nchw_to_nhwc_elem (x.data (), nhwc.data (), c, h, w, i); });
    std::vector<float> want = to_nhwc (x, n, c, h, w);
    assert_close ("nchw -> nhwc", nhwc.data (), want.data (), total, 0, 0);
    grid (total, [&] (size_t i) { kb_nhwc_to_nchw_elem (nhwc.data (), back.data (), c, h, w, i); });
    assert_close ("nhwc -> nchw", back.data (), x.data (), total, 0, 0);
    std::vector<float> cast (total);
    grid (total, [&] (size_t i) { kb_cast_elem (x.data (), cast.data (), i); });
    assert_close ("cast f32", cast.data (), x.data (), total, 0, 0);
  }
}

/* -------------------------------------------------------- elementwise -- */

static void
test_bias_act (void)
{
  for (auto &s : shapes) {
    const int c = s[1];
    const size_t total = (size_t) s[0] * c * s[2] * s[3];
    std::vector<float> x = random_floats (total, 40 + total), bias = random_floats (c, 41);
    std::vector<float> scale = random_floats (c, 42, 0.5f, 2.0f), shift = random_floats (c, 43);
    for (int relu = 0; relu < 2; relu++) {
      std::vector<float> y (total), want (total), y2 (total), want2 (total);
      grid (total, [&] (size_t i) {
        kb_bias_act_elem (x.data (), y.data (), bias.data (), c, relu, i);
      });
      grid (total, [&] (size_t i) {
        kb_channel_affine_elem (x.data (), y2.data (), scale.data (), shift.data (), c, relu, i);
      });
      for (size_t i = 0; i < total; i++) {
        float v = x[i] + bias[i % c], a = x[i] * scale[i % c] + shift[i % c];
        want[i] = relu && v < 0 ? 0.0f : v;
        want2[i] = relu && a < 0 ? 0.0f : a;
      }
      assert_close ("bias + act", y.data (), want.data (), total, 0, 0);
      assert_close ("channel affine", y2.data (), want2.data (), total, 0, 0);
    }
    /* no bias: the in-place activation of a conv that fused its bias */
    std::vector<float> y (x);
    grid (total, [&] (size_t i) {
      kb_bias_act_elem (y.data (), y.data (), (const float *) NULL, c, 1, i);
    });
    for (size_t i = 0; i < total; i++)
      g_assert_cmpfloat (y[i], ==, MAX (x[i], 0.0f));
    /* ReLU backward from the output, add */
    std::vector<float> dy = random_floats (total, 44), dx (total), sum (dy);
    grid (total, [&] (size_t i) { kb_relu_backward_elem (y.data (), dy.data (), dx.data (), i); });
    grid (total, [&] (size_t i) { kb_add_elem (x.data (), sum.data (), i); });
    for (size_t i = 0; i < total; i++) {
      g_assert_cmpfloat (dx[i], ==, y[i] > 0 ? dy[i] : 0.0f);
      g_assert_cmpfloat (sum[i], ==, dy[i] + x[i]);
    }
  }
}

static void
test_softmax (void)
{
  for (int classes : { 1, 2, 5 }) {
    const size_t pixels = 301;
    std::vector<float> x = random_floats (pixels * classes, 50 + classes, -30, 30), y (x.size ());
    std::vector<float> want (x.size ());
    grid (pixels, [&] (size_t i) { kb_softmax_pixel (x.data (), y.data (), classes, i); });
    for (size_t i = 0; i < pixels; i++) {
      double p[8];
      ref_probs (&x[i * classes], classes, 1, p);
      for (int k = 0; k < classes; k++)
        want[i * classes + k] = (float) p[k];
    }
    assert_close ("softmax", y.data (), want.data (), y.size (), 1e-7, TOL_F32);
  }
}

static void
test_batchnorm (void)
{
  for (auto &s : shapes) {
    const int n = s[0], c = s[1], h = s[2], w = s[3];
    const size_t rows = (size_t) n * h * w, total = rows * c;
    std::vector<float> x = random_floats (total, 60 + total, -3, 5);   /* NCHW */
    std::vector<float> gamma = random_floats (c, 61, 0.5f, 1.5f), beta = random_floats (c, 62);
    std::vector<float> dy = random_floats (total, 63);
    /* CPU training code, NCHW */
    std::vector<float> y_ref (total), mean_ref (c), invstd_ref (c);
    std::vector<float> rm_ref (c, 0.2f), rv_ref (c, 1.3f);
    unet_cpu_bn_forward_train (x.data (), n, c, (gsize) h * w, gamma.data (), beta.data (),
        y_ref.data (), mean_ref.data (), invstd_ref.data (), rm_ref.data (), rv_ref.data ());
    std::vector<float> dx_ref (total), dg_ref (c, 0.0f), db_ref (c, 0.0f);
    unet_cpu_bn_backward (x.data (), dy.data (), n, c, (gsize) h * w, gamma.data (),
        mean_ref.data (), invstd_ref.data (), dx_ref.data (), dg_ref.data (), db_ref.data ());
    /* the bodies on NHWC; the column sums (a block reduction on the GPU) in double */
    std::vector<float> xh = to_nhwc (x, n, c, h, w), dyh = to_nhwc (dy, n, c, h, w);
    std::vector<double> sums (2 * c, 0.0);
    LoadMoments<float> lm { xh.data (), c };
    for (size_t r = 0; r < rows; r++)
      for (int k = 0; k < c; k++) {
        KbPair p = lm (r, k);
        sums[k] += p.a;
        sums[c + k] += p.b;
      }
    std::vector<float> mean (c), invstd (c), rm (c, 0.2f), rv (c, 1.3f), y (total);
    for (int k = 0; k < c; k++)
      kb_bn_finish_stats (sums.data (), rows, c, 1e-5f, 0.1f, rm.data (), rv.data (),
          mean.data (), invstd.data (), k);
    grid (total, [&] (size_t i) {
      kb_bn_apply_elem (xh.data (), y.data (), c, gamma.data (), beta.data (), mean.data (),
          invstd.data (), i);
    });
    assert_close ("bn mean", mean.data (), mean_ref.data (), c, 1e-6, TOL_F32);
    assert_close ("bn invstd", invstd.data (), invstd_ref.data (), c, 1e-6, TOL_F32);
    assert_close ("bn running mean", rm.data (), rm_ref.data (), c, 1e-6, TOL_F32);
    assert_close ("bn running var", rv.data (), rv_ref.data (), c, 1e-6, TOL_F32);
    std::vector<float> yc = to_nchw (y, n, c, h, w);
    assert_close ("bn forward", yc.data (), y_ref.data (), total, 1e-5, TOL_F32);
    /* backward */
    std::vector<double> gs (2 * c, 0.0);
    LoadBnGrad<float> lg { xh.data (), dyh.data (), mean.data (), invstd.data (), c };
    for (size_t r = 0; r < rows; r++)
      for (int k = 0; k < c; k++) {
        KbPair p = lg (r, k);
        gs[k] += p.a;
        gs[c + k] += p.b;
      }
    std::vector<float> dx (total), dg (c, 0.0f), db (c, 0.0f);
    for (int k = 0; k < c; k++)
      kb_bn_backward_params (gs.data (), c, dg.data (), db.data (), k);
    grid (total, [&] (size_t i) {
      kb_bn_backward_elem (xh.data (), dyh.data (), dx.data (), rows, c, gamma.data (),
          mean.data (), invstd.data (), gs.data (), i);
    });
    std::vector<float> dxc = to_nchw (dx, n, c, h, w);
    /* dx subtracts sums of the size of rows * |dy|: absolute tolerance scaled to it */
    const double sum_tol = 1e-5 * sqrt ((double) rows);
    assert_close ("bn backward dx", dxc.data (), dx_ref.data (), total, sum_tol, TOL_F32);
    assert_close ("bn dgamma", dg.data (), dg_ref.data (), c, sum_tol, TOL_F32);
    assert_close ("bn dbeta", db.data (), db_ref.data (), c, sum_tol, TOL_F32);
    /* the bias gradient's summands */
    LoadPair<float> lp { dyh.data (), c };
    std::vector<double> bsum (c, 0.0);
    for (size_t r = 0; r < rows; r++)
      for (int k = 0; k < c; k++)
        bsum[k] += lp (r, k).a;
    std::vector<float> dbias (c, 1.0f);
    for (int k = 0; k < c; k++)
      kb_store_sum (bsum.data (), dbias.data (), 1, k);
    for (int k = 0; k < c; k++)
      g_assert_cmpfloat_with_epsilon (dbias[k], 1.0 + db_ref[k], sum_tol + TOL_F32);
  }
}

static void
test_dropout (void)
{
  const size_t count = 100003;
  std::vector<float> x = random_floats (count, 70), y (count), y2 (count);
  for (float p : { 0.0f, 0.5f, 0.9f }) {
    grid (count, [&] (size_t i) { kb_dropout_elem (x.data (), y.data (), p, 1234, i); });
    grid (count, [&] (size_t i) { kb_dropout_elem (x.data (), y2.data (), p, 1234, i); });
    size_t kept = 0;
    for (size_t i = 0; i < count; i++) {
      g_assert_cmpfloat (y[i], ==, y2[i]);              /* backward redraws the same mask */
      if (y[i] != 0.0f) {
        kept++;
        g_assert_cmpfloat (y[i], ==, x[i] * (1.0f / (1.0f - p)));
      }
    }
    /* the keep fraction is binomial(count, 1 - p): within 5 standard deviations */
    double sd = sqrt (count * p * (1 - p));
    g_assert_cmpfloat (fabs ((double) kept - count * (1.0 - p)), <=, 5 * sd + 0.5);
    /* the CPU's dropout (another generator) keeps the same fraction */
    std::vector<guint8> mask (count);
    std::vector<float> yc (count);
    unet_cpu_dropout_forward (x.data (), count, p, 1234, mask.data (), yc.data ());
    size_t kept_cpu = 0;
    for (guint8 m : mask)
      kept_cpu += m;
    g_assert_cmpfloat (fabs ((double) kept - (double) kept_cpu), <=, 10 * sd + 0.5);
  }
}

static void
test_copy_window (void)
{
  /* src (n, sh, sw, stride channels), window at (y0, x0) of channels [off, off + c)
   * into dst channels [doff, doff + c) of a dst_stride-channel tensor, with bias */
  const int n = 2, sh = 9, sw = 13, src_stride = 7, src_off = 2, c = 3, y0 = 3, x0 = 5;
  const int h = 5, w = 7, dst_stride = 5, dst_off = 1;
  std::vector<float> src = random_floats ((size_t) n * sh * sw * src_stride, 80);
  std::vector<float> bias = random_floats (c, 81);
  std::vector<float> dst ((size_t) n * h * w * dst_stride, 42.0f), want (dst);
  for (int b = 0; b < n; b++)
    for (int y = 0; y < h; y++)
      for (int x = 0; x < w; x++)
        for (int k = 0; k < c; k++)
          want[(((size_t) b * h + y) * w + x) * dst_stride + dst_off + k] =
              src[(((size_t) b * sh + y + y0) * sw + x + x0) * src_stride + src_off + k] + bias[k];
  grid ((size_t) n * h * w * c, [&] (size_t i) {
    kb_copy_window_elem (src.data (), sh, sw, src_stride, src_off, y0, x0, dst.data (),
        dst_stride, dst_off, h, w, c, bias.data (), i);
  });
  assert_close ("copy window", dst.data (), want.data (), dst.size (), 0, 0);
}

static void
test_window_add (void)
{
  /* the transpose of test_copy_window: src (n, h, w, src_stride) channels [off, off + c)
   * added into the window at (y0, x0) of dst (n, dh, dw, dst_stride) channels
   * [doff, doff + c); everything outside the window and those channels stays */
  const int n = 2, h = 5, w = 7, src_stride = 5, src_off = 1, c = 3, y0 = 3, x0 = 5;
  const int dh = 9, dw = 13, dst_stride = 7, dst_off = 2;
  std::vector<float> src = random_floats ((size_t) n * h * w * src_stride, 82);
  std::vector<float> dst = random_floats ((size_t) n * dh * dw * dst_stride, 83), want (dst);
  for (int b = 0; b < n; b++)
    for (int y = 0; y < h; y++)
      for (int x = 0; x < w; x++)
        for (int k = 0; k < c; k++)
          want[(((size_t) b * dh + y + y0) * dw + x + x0) * dst_stride + dst_off + k] +=
              src[(((size_t) b * h + y) * w + x) * src_stride + src_off + k];
  grid ((size_t) n * h * w * c, [&] (size_t i) {
    kb_window_add_elem (src.data (), src_stride, src_off, dst.data (), dh, dw, dst_stride,
        dst_off, y0, x0, h, w, c, i);
  });
  /* one f32 addition per element, the same one the reference does */
  assert_close ("window add", dst.data (), want.data (), dst.size (), 0, 0);
}

/* ---------------------------------------------------- pool and concat -- */

static void
test_maxpool (void)
{
  for (auto &s : shapes) {
    const int n = s[0], c = s[1], h = s[2] + 1, w = s[3] + 1;       /* >= 2 */
    const int oh = h / 2, ow = w / 2;
    const size_t in_total = (size_t) n * c * h * w, out_total = (size_t) n * c * oh * ow;
    std::vector<float> x = random_floats (in_total, 90 + in_total);
    if (in_total > 8)
      x[5] = x[6];                                      /* a tie: the first maximum wins */
    std::vector<float> y_ref (out_total), dy = random_floats (out_total, 91);
    std::vector<guint8> arg_ref (out_total);
    unet_cpu_maxpool2_forward (x.data (), n, c, h, w, y_ref.data (), arg_ref.data ());
    std::vector<float> dx_ref (in_total);
    unet_cpu_maxpool2_backward (dy.data (), arg_ref.data (), n, c, h, w, dx_ref.data ());

    std::vector<float> xh = to_nhwc (x, n, c, h, w), y (out_total);
    std::vector<guint8> arg (out_total);
    grid (out_total, [&] (size_t i) {
      kb_maxpool_forward_elem (xh.data (), y.data (), arg.data (), h, w, c, i);
    });
    std::vector<float> yc = to_nchw (y, n, c, oh, ow);
    assert_close ("maxpool forward", yc.data (), y_ref.data (), out_total, 0, 0);
    std::vector<float> dyh = to_nhwc (dy, n, c, oh, ow), dx (in_total, 7.0f);
    grid (in_total, [&] (size_t i) {
      kb_maxpool_backward_elem (dyh.data (), arg.data (), dx.data (), h, w, c, 0, i);
    });
    std::vector<float> dxc = to_nchw (dx, n, c, h, w);
    assert_close ("maxpool backward", dxc.data (), dx_ref.data (), in_total, 0, 0);
    /* accumulate mode adds to what is there */
    grid (in_total, [&] (size_t i) {
      kb_maxpool_backward_elem (dyh.data (), arg.data (), dx.data (), h, w, c, 1, i);
    });
    dxc = to_nchw (dx, n, c, h, w);
    for (size_t i = 0; i < in_total; i++)
      g_assert_cmpfloat (dxc[i], ==, 2.0f * dx_ref[i]);
  }
}

static void
test_crop_concat (void)
{
  const int dims[][7] = {                 /* n, ha, wa, ca, h, w, cb */
    { 1, 1, 1, 1, 1, 1, 1 }, { 2, 9, 11, 3, 5, 7, 2 }, { 1, 40, 37, 5, 33, 30, 17 },
  };
  for (auto &d : dims) {
    const int n = d[0], ha = d[1], wa = d[2], ca = d[3], h = d[4], w = d[5], cb = d[6];
    const int off_y = (ha - h) / 2, off_x = (wa - w) / 2, cc = ca + cb;
    std::vector<float> a = random_floats ((size_t) n * ha * wa * ca, 100 + ha);
    std::vector<float> b = random_floats ((size_t) n * h * w * cb, 101 + h);
    const size_t total = (size_t) n * h * w * cc;
    std::vector<float> out (total), want (total);
    for (int bi = 0; bi < n; bi++)
      for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
          float *o = &want[(((size_t) bi * h + y) * w + x) * cc];
          for (int k = 0; k < ca; k++)
            o[k] = a[(((size_t) bi * ha + y + off_y) * wa + x + off_x) * ca + k];
          for (int k = 0; k < cb; k++)
            o[ca + k] = b[(((size_t) bi * h + y) * w + x) * cb + k];
        }
    grid (total, [&] (size_t i) {
      kb_crop_concat_elem (a.data (), ha, wa, ca, off_y, off_x, b.data (), cb, out.data (), h,
          w, i);
    });
    assert_close ("crop + concat", out.data (), want.data (), total, 0, 0);
    /* backward: the window of da accumulates, db is written; the rest of da stays */
    std::vector<float> dout = random_floats (total, 102);
    std::vector<float> da (a.size (), 1.0f), db (b.size (), 9.0f);
    std::vector<float> want_da (da), want_db (db.size ());
    for (int bi = 0; bi < n; bi++)
      for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
          const float *g = &dout[(((size_t) bi * h + y) * w + x) * cc];
          for (int k = 0; k < ca; k++)
            want_da[(((size_t) bi * ha + y + off_y) * wa + x + off_x) * ca + k] += g[k];
          for (int k = 0; k < cb; k++)
            want_db[(((size_t) bi * h + y) * w + x) * cb + k] = g[ca + k];
        }
    grid (total, [&] (size_t i) {
      kb_crop_concat_backward_elem (dout.data (), da.data (), ha, wa, ca, off_y, off_x,
          db.data (), cb, h, w, i);
    });
    assert_close ("crop + concat backward (a)", da.data (), want_da.data (), da.size (), 0, 0);
    assert_close ("crop + concat backward (b)", db.data (), want_db.data (), db.size (), 0, 0);
  }
}

/* ------------------------------------------------------------------ loss -- */

static void
xent_case (int batch, int classes, int h, int w, bool weighted, guint64 seed)
{
  Rng r (seed);
  const size_t npix = (size_t) batch * h * w;
  std::vector<float> z = random_floats (npix * classes, seed, -6, 6);        /* NCHW */
  std::vector<gint32> lab (npix);
  std::vector<guint8> lab8 (npix);
  std::vector<float> wts (npix);
  for (size_t i = 0; i < npix; i++) {
    int v = r.below (classes == 1 ? 2 : classes) ;
    if (r.below (7) == 0)
      v = UNET_LABEL_IGNORE;
    lab[i] = v;
    lab8[i] = v == UNET_LABEL_IGNORE ? 255 : (guint8) v;
    wts[i] = weighted ? r.uniform (0.1f, 3.0f) : 1.0f;
  }
  double loss_ref;
  std::vector<float> grad_ref (z.size ());
  GError *error = NULL;
  g_assert_true (unet_loss_cross_entropy (z.data (), lab.data (), weighted ? wts.data () : NULL,
          batch, classes, h, w, &loss_ref, grad_ref.data (), &error));
  g_assert_no_error (error);
  /* the bodies: NHWC logits, per-pixel labels u8 (255 = ignore), grad scaled by
   * 1 / sum w as the trainer does */
  std::vector<float> zh = to_nhwc (z, batch, classes, h, w);
  double lsum = 0, wsum = 0;
  grid (npix, [&] (size_t i) {
    kb_xent_pixel (zh.data (), lab8.data (), weighted ? wts.data () : (const float *) NULL,
        classes, 255, 1.0f, (float *) NULL, i, &lsum, &wsum);
  });
  g_assert_cmpfloat (wsum, >, 0.0);
  g_assert_cmpfloat_with_epsilon (lsum / wsum, loss_ref, TOL_F32 * MAX (1.0, fabs (loss_ref)));
  std::vector<float> grad (z.size ());
  double l2 = 0, w2 = 0;
  grid (npix, [&] (size_t i) {
    kb_xent_pixel (zh.data (), lab8.data (), weighted ? wts.data () : (const float *) NULL,
        classes, 255, (float) (1.0 / wsum), grad.data (), i, &l2, &w2);
  });
  std::vector<float> gc = to_nchw (grad, batch, classes, h, w);
  /* p - onehot cancels where p is close to 1: a float p carries an absolute error of
   * a few ulp of 1 (2^-24 each; 8 of them), times the pixel's weight (<= 3) and
   * the 1 / sum w scale; the CPU computes in double */
  const double atol = 8.0 / 16777216.0 * 3.0 / wsum;
  assert_close ("xent gradient", gc.data (), grad_ref.data (), gc.size (), atol, TOL_F32);
}

static void
test_xent (void)
{
  xent_case (1, 2, 1, 1, false, 1);
  xent_case (2, 3, 7, 5, true, 2);
  xent_case (1, 1, 17, 19, true, 3);
  xent_case (3, 2, 11, 29, false, 4);
}

/* The confusion matrix: kb_confusion_cell per pixel against unet_confusion_add, with
 * ties (all logits equal: the first class wins) and z == 0 for one class (not
 * foreground). Exact: the same comparisons on the same floats. */
static void
confusion_case (int batch, int classes, int h, int w, guint64 seed)
{
  Rng r (seed);
  const size_t npix = (size_t) batch * h * w, hw = (size_t) h * w;
  std::vector<float> z = random_floats (npix * classes, seed, -3, 3);        /* NCHW */
  std::vector<gint32> lab (npix);
  std::vector<guint8> lab8 (npix);
  for (size_t i = 0; i < npix; i++) {
    int v = r.below (classes == 1 ? 2 : classes);
    if (r.below (5) == 0)
      v = UNET_LABEL_IGNORE;
    lab[i] = v;
    lab8[i] = v == UNET_LABEL_IGNORE ? 255 : (guint8) v;
    if (r.below (6) == 0)       /* a tie across the classes, or z = 0 */
      for (int k = 0; k < classes; k++)
        z[(i / hw * classes + k) * hw + i % hw] = classes == 1 ? 0.0f : 0.5f;
  }
  UnetConfusion ref;
  GError *error = NULL;
  unet_confusion_init (&ref, classes);
  g_assert_true (unet_confusion_add (&ref, z.data (), lab.data (), batch, classes, h, w,
          &error));
  g_assert_no_error (error);
  std::vector<float> zh = to_nhwc (z, batch, classes, h, w);
  guint64 got[256] = { 0 };
  grid (npix, [&] (size_t i) {
    int cell = kb_confusion_cell (zh.data (), lab8.data (), classes, 255, i);
    g_assert_cmpint (cell, <, 256);
    if (cell >= 0)
      got[cell]++;
  });
  guint64 total = 0;
  for (int l = 0; l < 16; l++)
    for (int p = 0; p < 16; p++) {
      guint64 want = l < ref.n_classes && p < ref.n_classes ? ref.n[l][p] : 0;
      if (got[l * 16 + p] != want)
        g_error ("confusion K=%d [%d][%d]: %" G_GUINT64_FORMAT " want %" G_GUINT64_FORMAT,
            classes, l, p, got[l * 16 + p], want);
      total += want;
    }
  g_assert_cmpuint (total, >, 0);
}

static void
test_confusion (void)
{
  confusion_case (1, 1, 1, 1, 1);
  confusion_case (2, 1, 13, 7, 2);
  confusion_case (2, 2, 9, 11, 3);
  confusion_case (1, 5, 17, 3, 4);
  confusion_case (3, 16, 5, 6, 5);
}

/* Soft Dice: the class sums of kb_dice_sums_pixel, the loss from them and the
 * gradient of kb_dice_grad_pixel (added to what is there) against unet_loss_soft_dice.
 * The bodies take f32 probabilities (expf), the reference doubles: each probability
 * carries a few float roundings (2^-24 relative each), so the loss agrees to TOL_F32
 * and each gradient element to TOL_F32 of the largest one (the softmax's p (dp - dot)
 * subtracts terms of that size). */
static void
dice_case (int batch, int classes, int h, int w, double scale, guint64 seed)
{
  Rng r (seed);
  const size_t npix = (size_t) batch * h * w;
  std::vector<float> z = random_floats (npix * classes, seed, -4, 4);        /* NCHW */
  std::vector<gint32> lab (npix);
  std::vector<guint8> lab8 (npix);
  for (size_t i = 0; i < npix; i++) {
    int v = r.below (classes == 1 ? 2 : classes);
    if (r.below (7) == 0)
      v = UNET_LABEL_IGNORE;
    lab[i] = v;
    lab8[i] = v == UNET_LABEL_IGNORE ? 255 : (guint8) v;
  }
  std::vector<float> base = random_floats (z.size (), seed + 100, -0.1f, 0.1f);
  std::vector<float> grad_ref (base);
  double loss_ref;
  GError *error = NULL;
  g_assert_true (unet_loss_soft_dice (z.data (), lab.data (), batch, classes, h, w, scale,
          &loss_ref, grad_ref.data (), &error));
  g_assert_no_error (error);

  std::vector<float> zh = to_nhwc (z, batch, classes, h, w);
  double sums[48] = { 0 };
  grid (npix, [&] (size_t i) {
    kb_dice_sums_pixel (zh.data (), lab8.data (), classes, 255, i, sums);
  });
  /* the loss from the sums: 1 - mean over the foreground classes of
   * (2 I + 1) / (P + G + 1) */
  const int n_labels = MAX (classes, 2);
  double mean = 0.0;
  for (int c = 1; c < n_labels; c++)
    mean += (2.0 * sums[c] + 1.0) / (sums[16 + c] + sums[32 + c] + 1.0);
  mean /= n_labels - 1;
  g_assert_cmpfloat_with_epsilon (1.0 - mean, loss_ref, TOL_F32);
  for (int q = 0; q < 48; q++)
    if (q % 16 == 0 || q % 16 >= n_labels)
      g_assert_cmpfloat (sums[q], ==, 0.0);

  std::vector<float> grad = to_nhwc (base, batch, classes, h, w);
  grid (npix, [&] (size_t i) {
    kb_dice_grad_pixel (zh.data (), lab8.data (), classes, 255, sums, (float) scale,
        grad.data (), i);
  });
  std::vector<float> gc = to_nchw (grad, batch, classes, h, w);
  double gmax = 0.0;
  for (size_t i = 0; i < z.size (); i++)
    gmax = MAX (gmax, fabs ((double) grad_ref[i] - base[i]));
  g_assert_cmpfloat (gmax, >, 0.0);
  assert_close ("soft Dice gradient", gc.data (), grad_ref.data (), gc.size (),
      TOL_F32 * gmax, TOL_F32);
}

static void
test_dice (void)
{
  dice_case (1, 1, 1, 1, 1.0, 1);
  dice_case (2, 1, 13, 9, 0.5, 2);
  dice_case (2, 2, 11, 7, 1.0, 3);
  dice_case (1, 4, 17, 5, 2.0, 4);
  dice_case (2, 16, 6, 5, 65536.0, 5);
}

/* ------------------------------------------------------------- optimiser -- */

/* The kernels' bodies over the ranges of an update (weight decay per range, a gap
 * that is not updated) against unet_optim_update_host, several steps: exact, as both
 * run engine/optim-elem.h's double arithmetic; the check is that the kernels hand it
 * the right element, state, decay and step (first step, Nesterov, decoupled). */
static void
optim_case (UnetOptimKind kind, double wd, gboolean nesterov, double momentum)
{
  const size_t n = 1031;
  const UnetOptimRange ranges[] = { { 0, 500, TRUE }, { 500, 200, FALSE }, { 800, 231, TRUE } };
  UnetOptimParams op;
  unet_optim_params_init (&op);
  op.kind = kind;
  op.lr = 0.01;
  op.momentum = momentum;
  op.nesterov = nesterov;
  op.weight_decay = wd;
  GError *error = NULL;
  UnetOptimizer *opt = unet_optimizer_new (&op, n, ranges, G_N_ELEMENTS (ranges), &error);
  g_assert_no_error (error);
  std::vector<float> p = random_floats (n, 110), p_ref (p), s0 (n, 0.0f), s1 (n, 0.0f);
  std::vector<float> r0 (n, 0.0f), r1 (n, 0.0f);
  gfloat *ref_state[2] = { r0.data (), r1.data () };
  for (int step = 1; step <= 4; step++) {
    std::vector<float> g = random_floats (n, 111 + step);
    UnetOptimUpdate u;
    unet_optimizer_next_update (opt, &u);
    g_assert_true (unet_optim_update_host (&u, p_ref.data (), g.data (), ref_state, &error));
    g_assert_no_error (error);
    const double step_size = u.lr / (1.0 - pow (u.beta1, (double) u.t));
    const double bc2_sqrt = sqrt (1.0 - pow (u.beta2, (double) u.t));
    for (guint r = 0; r < u.n_ranges; r++) {
      const size_t off = u.ranges[r].offset;
      const double d = u.ranges[r].decay ? u.weight_decay : 0.0;
      grid (u.ranges[r].numel, [&] (size_t i) {
        if (kind == UNET_OPTIM_SGD)
          kb_optim_sgd_elem (p.data () + off, g.data () + off,
              u.n_buffers ? s0.data () + off : NULL, u.lr, u.momentum, d, u.nesterov,
              u.t == 1, i);
        else
          kb_optim_adam_elem (p.data () + off, g.data () + off, s0.data () + off,
              s1.data () + off, u.lr, u.beta1, u.beta2, u.eps, d,
              kind == UNET_OPTIM_ADAMW, step_size, bc2_sqrt, i);
      });
    }
    unet_optimizer_advance (opt);
    assert_close ("optimiser step", p.data (), p_ref.data (), n, 0, 0);
    assert_close ("optimiser state 0", s0.data (), r0.data (), n, 0, 0);
    assert_close ("optimiser state 1", s1.data (), r1.data (), n, 0, 0);
  }
  /* the gap kept its values */
  std::vector<float> p0 = random_floats (n, 110);
  assert_close ("not updated", p.data () + 700, p0.data () + 700, 100, 0, 0);
  unet_optimizer_free (opt);
}

static void
test_optim (void)
{
  optim_case (UNET_OPTIM_SGD, 0.0, FALSE, 0.0);
  optim_case (UNET_OPTIM_SGD, 1e-3, FALSE, 0.9);
  optim_case (UNET_OPTIM_SGD, 1e-3, TRUE, 0.99);
  optim_case (UNET_OPTIM_ADAM, 0.0, FALSE, 0.0);
  optim_case (UNET_OPTIM_ADAM, 1e-3, FALSE, 0.0);
  optim_case (UNET_OPTIM_ADAMW, 1e-2, FALSE, 0.0);
  std::vector<float> fin = { 1.0f, INFINITY, 2.0f };
  g_assert_true (kb_is_finite_elem (fin.data (), 0));
  g_assert_false (kb_is_finite_elem (fin.data (), 1));
}

/* -------------------------------------------------------------- training -- */

static void
test_filter_grad (void)
{
  const int dims[][3] = { { 1, 1, 1 }, { 3, 5, 9 }, { 17, 2, 4 }, { 64, 33, 9 } };
  for (auto &d : dims) {
    const int a = d[0], b = d[1], kk = d[2];
    const size_t count = (size_t) a * b * kk;
    /* src: a cuDNN filter gradient (a, kk, b); dst: PyTorch (a, b, kk), accumulating */
    std::vector<float> src = random_floats (count, 120 + count), dst = random_floats (count, 121);
    std::vector<float> want (dst);
    for (int i = 0; i < a; i++)
      for (int j = 0; j < b; j++)
        for (int s = 0; s < kk; s++)
          want[((size_t) i * b + j) * kk + s] += 0.5f * src[((size_t) i * kk + s) * b + j];
    grid (count, [&] (size_t o) {
      kb_filter_grad_elem (src.data (), dst.data (), b, kk, 0.5f, o);
    });
    assert_close ("filter gradient", dst.data (), want.data (), count, 0, 0);
    std::vector<float> y (dst), wy (dst);
    for (size_t i = 0; i < count; i++)
      wy[i] += -2.0f * src[i];
    grid (count, [&] (size_t i) { kb_scale_add_elem (src.data (), y.data (), -2.0f, i); });
    assert_close ("scale add", y.data (), wy.data (), count, 0, 0);
  }
}

/* ------------------------------------------------------------------ warp -- */

/* Double-precision reference of the warp (the definition in cuda-kernels.h). */
static double
cr (double t, int k)
{
  const double t2 = t * t, t3 = t2 * t;
  switch (k) {
    case 0: return 0.5 * (-t3 + 2 * t2 - t);
    case 1: return 0.5 * (3 * t3 - 5 * t2 + 2);
    case 2: return 0.5 * (-3 * t3 + 4 * t2 + t);
    default: return 0.5 * (t3 - t2);
  }
}

static void
warp_case (int src_w, int src_h, int out_w, int out_h, int grid_n, double angle, bool flip,
    guint64 seed)
{
  const int channels = 2;
  std::vector<float> img = random_floats ((size_t) channels * src_w * src_h, seed, 0, 1);
  std::vector<float> wts = random_floats ((size_t) src_w * src_h, seed + 1, 0, 5);
  std::vector<guint8> lab ((size_t) src_w * src_h);
  for (size_t i = 0; i < lab.size (); i++)
    lab[i] = (guint8) (i * 7 % 5);
  UnetCudaWarp wp;
  memset (&wp, 0, sizeof wp);
  const double ca = cos (angle), sa = sin (angle), fx = flip ? -1 : 1;
  wp.affine[0] = (float) (ca * fx);
  wp.affine[1] = (float) -sa;
  wp.affine[2] = (float) (0.3 * src_w);
  wp.affine[3] = (float) (sa * fx);
  wp.affine[4] = (float) ca;
  wp.affine[5] = (float) (-0.2 * src_h);
  wp.grid_w = wp.grid_h = grid_n;
  Rng r (seed + 2);
  for (int k = 0; k < grid_n * grid_n * 2; k++)
    wp.grid[k] = r.uniform (-3, 3);
  const size_t total = (size_t) out_w * out_h;
  std::vector<float> oi ((size_t) channels * total), ow (total);
  std::vector<guint8> ol (total);
  grid (total, [&] (size_t i) {
    kb_warp_pixel (img.data (), channels, lab.data (), wts.data (), src_w, src_h, wp, oi.data (),
        ol.data (), ow.data (), out_w, out_h, i);
  });
  std::vector<float> want_i (oi.size ()), want_w (total);
  for (int y = 0; y < out_h; y++)
    for (int x = 0; x < out_w; x++) {
      const size_t i = (size_t) y * out_w + x;
      double sx = (double) wp.affine[0] * x + (double) wp.affine[1] * y + wp.affine[2];
      double sy = (double) wp.affine[3] * x + (double) wp.affine[4] * y + wp.affine[5];
      if (grid_n >= 2) {
        /* Catmull-Rom over the node grid, node i at x = i (out_w - 1) / (grid - 1),
         * indices clamped at the grid's edge */
        double gx = out_w > 1 ? x * (grid_n - 1.0) / (out_w - 1) : 0;
        double gy = out_h > 1 ? y * (grid_n - 1.0) / (out_h - 1) : 0;
        int ix = (int) floor (gx), iy = (int) floor (gy);
        for (int j = 0; j < 4; j++)
          for (int k = 0; k < 4; k++) {
            int yy = CLAMP (iy - 1 + j, 0, grid_n - 1), xx = CLAMP (ix - 1 + k, 0, grid_n - 1);
            double wgt = cr (gx - ix, k) * cr (gy - iy, j);
            sx += wgt * wp.grid[(yy * grid_n + xx) * 2];
            sy += wgt * wp.grid[(yy * grid_n + xx) * 2 + 1];
          }
      }
      int ix = (int) floor (sx), iy = (int) floor (sy);
      double tx = sx - ix, ty = sy - iy;
      for (int c = 0; c < channels; c++) {
        double v = 0;
        for (int j = 0; j < 4; j++)
          for (int k = 0; k < 4; k++)
            v += cr (tx, k) * cr (ty, j) * img[(size_t) c * src_w * src_h
                + (size_t) unet_mirror_index (iy - 1 + j, src_h) * src_w
                + unet_mirror_index (ix - 1 + k, src_w)];
        want_i[c * total + i] = (float) v;
      }
      double bl = 0;
      for (int j = 0; j < 2; j++)
        for (int k = 0; k < 2; k++)
          bl += (k ? tx : 1 - tx) * (j ? ty : 1 - ty)
              * wts[(size_t) unet_mirror_index (iy + j, src_h) * src_w
              + unet_mirror_index (ix + k, src_w)];
      want_w[i] = (float) bl;
      /* nearest: exact unless the position lies within float rounding of a pixel edge */
      int nx = unet_mirror_index ((int) floor (sx + 0.5), src_w);
      int ny = unet_mirror_index ((int) floor (sy + 0.5), src_h);
      double edge = MIN (fabs (sx + 0.5 - floor (sx + 0.5)), fabs (sy + 0.5 - floor (sy + 0.5)));
      if (edge > 1e-3 && ol[i] != lab[(size_t) ny * src_w + nx])
        g_error ("warp labels: pixel (%d, %d) is %d, want %d", x, y, ol[i],
            lab[(size_t) ny * src_w + nx]);
    }
  /* positions are float on the GPU: |s| up to ~2 src_w, rounding 2^-24 relative moves
   * the sample by ~1e-5 pixels; the cubic's slope is O(1) on values in [0, 1] */
  assert_close ("warp image", oi.data (), want_i.data (), oi.size (), 1e-4, 0);
  assert_close ("warp weights", ow.data (), want_w.data (), total, 5e-4, 0);
}

static void
test_warp (void)
{
  warp_case (1, 1, 3, 2, 0, 0.0, false, 130);
  warp_case (17, 9, 13, 11, 0, 0.4, true, 131);
  warp_case (31, 29, 20, 17, 4, -1.1, false, 132);
  warp_case (40, 7, 33, 9, 16, 2.5, true, 133);
  warp_case (5, 300, 3, 257, 2, 0.0, false, 134);
}

/* The identity warp is the CPU augmentation's identity crop (augment.c). */
static void
test_warp_vs_augment (void)
{
  const int w = 23, h = 18, in_w = 15, in_h = 11;
  std::vector<float> img = random_floats ((size_t) w * h, 140, 0, 1);
  std::vector<float> wts = random_floats ((size_t) w * h, 141, 0, 2);
  std::vector<gint32> lab ((size_t) w * h);
  std::vector<guint8> lab8 (lab.size ());
  for (size_t i = 0; i < lab.size (); i++)
    lab8[i] = (guint8) (lab[i] = (gint32) (i % 3));
  UnetAugmentParams ap;
  unet_augment_params_init_identity (&ap);
  UnetRng rng;
  unet_rng_init (&rng, 5);
  std::vector<float> oi ((size_t) in_w * in_h), ow ((size_t) in_w * in_h);
  std::vector<gint32> ol ((size_t) in_w * in_h);
  GError *error = NULL;
  g_assert_true (unet_augment_sample (&ap, &rng, img.data (), lab.data (), wts.data (), 1, w, h,
          in_w, in_h, in_w, in_h, oi.data (), ol.data (), ow.data (), &error));
  /* the identity sample is centred: source = centre + (u - tcx) with centre snapped */
  const double tcx = (in_w - 1) / 2.0, tcy = (in_h - 1) / 2.0;
  const double cx = floor ((w - 1) / 2.0 - (tcx - floor (tcx)) + 0.5) + (tcx - floor (tcx));
  const double cy = floor ((h - 1) / 2.0 - (tcy - floor (tcy)) + 0.5) + (tcy - floor (tcy));
  UnetCudaWarp wp;
  memset (&wp, 0, sizeof wp);
  wp.affine[0] = wp.affine[4] = 1.0f;
  wp.affine[2] = (float) (cx - tcx);
  wp.affine[5] = (float) (cy - tcy);
  const size_t total = (size_t) in_w * in_h;
  std::vector<float> gi (total), gw (total);
  std::vector<guint8> gl (total);
  grid (total, [&] (size_t i) {
    kb_warp_pixel (img.data (), 1, lab8.data (), wts.data (), w, h, wp, gi.data (), gl.data (),
        gw.data (), in_w, in_h, i);
  });
  assert_close ("identity warp vs augment image", gi.data (), oi.data (), total, 1e-6, 0);
  assert_close ("identity warp vs augment weights", gw.data (), ow.data (), total, 1e-6, 0);
  for (size_t i = 0; i < total; i++)
    g_assert_cmpint (gl[i], ==, ol[i]);
}

/* ------------------------------------------------------ augmented batch -- */

/* One entry's frame: image (C, h, w) in [-2, 2], labels 0..2 with some ignored
 * (UNET_LABEL_IGNORE), weights in [0.5, 11] (0 on ignored pixels, as weightmap.c). */
struct AugFrame
{
  int w, h;
  std::vector<float> image, weights;
  std::vector<gint32> labels;
  std::vector<guint8> labels8;
};

static AugFrame
aug_frame (int channels, int w, int h, bool ignore, guint64 seed)
{
  AugFrame f;
  f.w = w;
  f.h = h;
  f.image = random_floats ((size_t) channels * w * h, seed, -2.0f, 2.0f);
  f.weights = random_floats ((size_t) w * h, seed + 1, 0.5f, 11.0f);
  Rng r (seed + 2);
  for (int i = 0; i < w * h; i++) {
    gint32 l = ignore && r.below (6) == 0 ? UNET_LABEL_IGNORE : r.below (3);
    f.labels.push_back (l);
    f.labels8.push_back (l == UNET_LABEL_IGNORE ? 255 : (guint8) l);
    if (l == UNET_LABEL_IGNORE)
      f.weights[i] = 0.0f;
  }
  return f;
}

/* NHWC (n, in, in, C) -> NCHW. */
static std::vector<float>
to_nchw (const std::vector<float> &x, int n, int channels, int in)
{
  std::vector<float> y (x.size ());
  const size_t plane = (size_t) in * in;
  for (int b = 0; b < n; b++)
    for (size_t t = 0; t < plane; t++)
      for (int c = 0; c < channels; c++)
        y[(b * channels + c) * plane + t] = x[(b * plane + t) * channels + c];
  return y;
}

/* The device bodies against unet_augment_apply_host for the same draws: two entries
 * from two frames of different sizes (one smaller than the tile: mirror). */
static void
augment_case (int channels, int in, int out, const UnetAugmentParams &params,
    bool ignore, guint64 seed)
{
  const int n = 2, sizes[2][2] = { { in + 13, in + 6 }, { in / 2 + 1, in - 3 } };
  const size_t plane = (size_t) in * in, count = channels * plane, oplane = (size_t) out * out;
  std::vector<AugFrame> frames;
  std::vector<UnetAugmentDraw> draws (n);
  std::vector<UnetCudaAugSample> recs (n);
  std::vector<float> grids;
  UnetRng rng;
  GError *error = NULL;

  memset (draws.data (), 0, n * sizeof (UnetAugmentDraw));
  unet_rng_init (&rng, seed);
  for (int b = 0; b < n; b++) {
    frames.push_back (aug_frame (channels, sizes[b][0], sizes[b][1], ignore, seed + 10 * b));
    g_assert_true (unet_augment_draw (&params, &rng, channels, sizes[b][0], sizes[b][1], in, in,
            out, out, &draws[b], &error));
    g_assert_no_error (error);
  }
  for (int b = 0; b < n; b++)
    recs[b] = host_samples_record (&draws[b], frames[b].image.data (),
        frames[b].labels8.data (), frames[b].weights.data (), grids);

  /* the host, with and without the gray values */
  std::vector<float> h_img (n * count), h_warp (n * count), h_w (n * oplane);
  std::vector<gint32> h_lab (n * oplane);
  for (int b = 0; b < n; b++) {
    UnetAugmentDraw plain = draws[b];
    plain.intensity = FALSE;
    g_assert_true (unet_augment_apply_host (&draws[b], frames[b].image.data (),
            frames[b].labels.data (), frames[b].weights.data (), channels,
            h_img.data () + b * count, h_lab.data () + b * oplane, h_w.data () + b * oplane,
            &error));
    g_assert_true (unet_augment_apply_host (&plain, frames[b].image.data (),
            frames[b].labels.data (), frames[b].weights.data (), channels,
            h_warp.data () + b * count, h_lab.data () + b * oplane, h_w.data () + b * oplane,
            &error));
    g_assert_no_error (error);
  }

  /* 1. the warp. The host computes positions and interpolates in double, the bodies
   * in float, with positions local to an integer origin: |l| <= L, L = the tile's
   * half diagonal + 1 + 1.25^2 max |displacement| (Catmull-Rom's weights sum to at
   * most 1.25 in absolute value per axis). About 8 float roundings of values <= L
   * (affine, grid taps) move the position by delta <= 16 L 2^-24 (a factor 2 kept).
   * A Catmull-Rom sample of data spanning R moves by at most 1.5 R (the derivative
   * weights, zero-sum, sum to <= 3 in absolute value) times 1.25 (the other axis'
   * weights) per pixel of each axis: |image error| <= 2 * 1.9 R delta, plus the
   * rounding of 16 float products (<= 32 2^-24 max|v| 1.5625). Bilinear weights:
   * slope <= R_w per axis, error <= 2 R_w delta. */
  std::vector<float> tile, input, d_w;
  std::vector<guint8> d_lab;
  std::vector<UnetCudaAugSample> plain_recs (recs);
  for (auto &r : plain_recs)
    r.intensity = 0;
  host_samples_augment (plain_recs, grids, channels, in, out, tile, input, d_lab, d_w, true);
  double max_disp = 0.0;
  for (float g : grids)
    max_disp = fmax (max_disp, fabs (g));
  const double L = in * 0.7072 + 1.0 + 1.5625 * max_disp;
  const double delta = 16.0 * L / 16777216.0;
  const double tol_img = 2 * 1.9 * 4.0 * delta + 32.0 * 2.0 * 1.5625 / 16777216.0;
  const double tol_w = 2 * 11.0 * delta + 1e-6;
  std::vector<float> d_nchw = to_nchw (input, n, channels, in);
  assert_close ("augment warp image (NHWC out)", d_nchw.data (), h_warp.data (), n * count,
      tol_img, 0);
  assert_close ("augment warp image (tile)", tile.data (), h_warp.data (), n * count, tol_img, 0);
  /* labels: nearest, equal unless the float position lies within delta of a half
   * pixel (floor (l + 0.5) may go either way there); weights where the labels agree
   * (0 on ignored pixels on both sides) */
  size_t boundary = 0;
  const int o0 = (in - out) / 2;
  for (int b = 0; b < n; b++)
    for (int y = 0; y < out; y++)
      for (int x = 0; x < out; x++) {
        const size_t o = b * oplane + (size_t) y * out + x;
        const gint32 want = h_lab[o];
        const int got = d_lab[o] == 255 ? UNET_LABEL_IGNORE : d_lab[o];
        if (got == want) {
          if (want == UNET_LABEL_IGNORE)
            g_assert_cmpfloat (d_w[o], ==, 0.0f);
          else if (!(fabs ((double) d_w[o] - h_w[o]) <= tol_w))
            g_error ("augment weight [%d] (%d, %d): %.9g vs %.9g", b, x, y, d_w[o], h_w[o]);
          continue;
        }
        const KbPair l = kb_augment_position (recs[b], grids.data (), x + o0, y + o0, in, in);
        const double ex = l.a + 0.5 - floor (l.a + 0.5), ey = l.b + 0.5 - floor (l.b + 0.5);
        if (fmin (fmin (ex, 1 - ex), fmin (ey, 1 - ey)) > delta)
          g_error ("augment label [%d] (%d, %d) is %d, want %d (local position %.7f, %.7f)",
              b, x, y, got, want, l.a, l.b);
        boundary++;
      }
  g_assert_cmpuint (boundary, <=, (size_t) n * oplane / 100);

  /* 2. the gray values on the host's own warped tiles: float against double. powf is
   * within a few ulp, (x - lo) / range within one, the rest a few roundings of values
   * <= max|x| + range: 1e-5 (max|x| + range) keeps a margin of about 10. */
  if (params.intensity) {
    std::vector<float> tile_h (h_warp);
    host_samples_augment (recs, grids, channels, in, out, tile_h, input, d_lab, d_w, false);
    d_nchw = to_nchw (input, n, channels, in);
    for (int b = 0; b < n; b++) {
      float lo = h_warp[b * count], hi = lo, mx = 0.0f;
      for (size_t i = 0; i < count; i++) {
        lo = fminf (lo, h_warp[b * count + i]);
        hi = fmaxf (hi, h_warp[b * count + i]);
        mx = fmaxf (mx, fabsf (h_img[b * count + i]));
      }
      assert_close ("augment gray values", d_nchw.data () + b * count,
          h_img.data () + b * count, count, 1e-5 * (mx + (hi - lo)), 0);
    }
  }
  for (auto &d : draws)
    unet_augment_draw_clear (&d);
}

static void
test_augment_batch (void)
{
  UnetAugmentParams p;
  unet_augment_params_init (&p);
  /* everything on: elastic G = 3, any rotation, flips, gray values, bicubic */
  augment_case (1, 31, 15, p, true, 150);
  augment_case (3, 27, 19, p, true, 151);
  /* bilinear, a larger grid and sigma, stronger jitter */
  p.image_interp = UNET_INTERP_BILINEAR;
  p.elastic_grid = 5;
  p.elastic_sigma = 4.0;
  p.gamma = 3.0;
  p.contrast = 0.9;
  p.brightness = 0.4;
  augment_case (3, 33, 33, p, false, 152);
  augment_case (1, 21, 7, p, true, 153);
  /* no elastic part, rotation only (no flips), bicubic */
  p.image_interp = UNET_INTERP_BICUBIC;
  p.elastic = FALSE;
  p.flip = FALSE;
  augment_case (1, 25, 13, p, true, 154);
  /* flips only, centred, no gray values */
  p.rotate = FALSE;
  p.flip = TRUE;
  p.random_position = FALSE;
  p.intensity = FALSE;
  augment_case (3, 19, 9, p, false, 155);
  /* the identity: the centred crop */
  unet_augment_params_init_identity (&p);
  augment_case (1, 17, 17, p, true, 156);
  for (guint64 s = 0; s < 12; s++) {
    unet_augment_params_init (&p);
    p.image_interp = s % 2 ? UNET_INTERP_BILINEAR : UNET_INTERP_BICUBIC;
    p.elastic_grid = 2 + (int) (s % 4);
    augment_case (1 + 2 * (int) (s % 2), 23 + 2 * (int) s, 11 + 2 * (int) (s % 3), p, s % 3 != 0,
        160 + s);
  }
}

/* unet_cuda_scale_by_weight_sum's body: the normalisation the host loss applies. */
static void
test_scale_by_weight_sum (void)
{
  std::vector<float> x = random_floats (37, 170), want (x);
  const double sums[2] = { 3.0, 7.25 }, zero[2] = { 3.0, 0.0 };
  for (auto &v : want)
    v = (float) (v / 7.25);
  grid (x.size (), [&] (size_t i) { kb_scale_by_weight_sum_elem (x.data (), sums, i); });
  assert_close ("scale by weight sum", x.data (), want.data (), x.size (), 0, 0);
  grid (x.size (), [&] (size_t i) { kb_scale_by_weight_sum_elem (x.data (), zero, i); });
  for (float v : x)
    g_assert_cmpfloat (v, ==, 0.0f);
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  g_test_add_func ("/cuda-bodies/extract", test_extract);
  g_test_add_func ("/cuda-bodies/stitch", test_stitch);
  g_test_add_func ("/cuda-bodies/blend-finalize", test_blend);
  g_test_add_func ("/cuda-bodies/normalization-params", test_norm_params);
  g_test_add_func ("/cuda-bodies/layout-cast", test_layout);
  g_test_add_func ("/cuda-bodies/bias-relu-affine", test_bias_act);
  g_test_add_func ("/cuda-bodies/softmax", test_softmax);
  g_test_add_func ("/cuda-bodies/batchnorm", test_batchnorm);
  g_test_add_func ("/cuda-bodies/dropout", test_dropout);
  g_test_add_func ("/cuda-bodies/copy-window", test_copy_window);
  g_test_add_func ("/cuda-bodies/window-add", test_window_add);
  g_test_add_func ("/cuda-bodies/maxpool", test_maxpool);
  g_test_add_func ("/cuda-bodies/crop-concat", test_crop_concat);
  g_test_add_func ("/cuda-bodies/cross-entropy", test_xent);
  g_test_add_func ("/cuda-bodies/confusion", test_confusion);
  g_test_add_func ("/cuda-bodies/soft-dice", test_dice);
  g_test_add_func ("/cuda-bodies/optimizer", test_optim);
  g_test_add_func ("/cuda-bodies/filter-gradient", test_filter_grad);
  g_test_add_func ("/cuda-bodies/warp", test_warp);
  g_test_add_func ("/cuda-bodies/warp-vs-augment", test_warp_vs_augment);
  g_test_add_func ("/cuda-bodies/augment-batch", test_augment_batch);
  g_test_add_func ("/cuda-bodies/scale-by-weight-sum", test_scale_by_weight_sum);
  return g_test_run ();
}
