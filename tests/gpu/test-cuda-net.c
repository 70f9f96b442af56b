/* The CUDA backend against the CPU backend through the public API (UnetNet and
 * UnetSegmenter): same model, same input, every precision; and the tiling exactness
 * contract on the GPU in fp32. Exits 77 without a CUDA device.
 *
 * Tolerances (probabilities, which lie in [0, 1]; the CPU in fp32 is the reference):
 *   fp32: max |diff| 1e-4. Both sides are true fp32 (cuDNN with CUDNN_FMA_MATH, no
 *         TF32); only the summation order differs, ~1e-6 relative per layer, and the
 *         softmax maps logit differences 1:1 at most. 1e-4 leaves room and still
 *         catches any indexing or layout error (those give O(0.1)).
 *   tf32: mean 5e-3, max 5e-2. Operands rounded to 10 mantissa bits (2^-11 = 4.9e-4
 *         relative), accumulation in f32; over ~10-20 layers of random-init nets the
 *         logit error grows to ~1e-2 in the worst pixels.
 *   fp16: mean 5e-3, max 5e-2: the same 10-bit mantissa, plus 16-bit activations.
 *   bf16: mean 2e-2, max 0.15: 7 mantissa bits (2^-8 = 3.9e-3 per rounding); pixels
 *         near a decision boundary move most. The mean is what shows a systematic
 *         error.
 * Tiled vs whole-frame on the GPU (fp32): the contract is equality to float rounding
 * (same arithmetic per pixel); the two tile shapes may still get different cuDNN
 * algorithms, i.e. another summation order: gpu_fp32_order_tol (gpu-test.h), derived
 * from the fp32 unit roundoff and the net's size. Algorithms are chosen by the
 * heuristics ($UNET_CUDNN_FIND=0), never by timing, so a rerun computes the same. */
#include "config.h"

#include "gpu-test.h"
#include "unet.h"

static int failures;

typedef struct
{
  const char *name;
  UnetConfig cfg;
  gint batch, min_size;
} NetCase;

static UnetModel *
make_model (const UnetConfig *cfg, guint64 seed)
{
  GError *error = NULL;
  UnetModel *m = unet_model_new (cfg, &error);
  if (m == NULL) {
    fprintf (stderr, "model: %s\n", error->message);
    exit (1);
  }
  unet_model_init_weights (m, seed);
  if (cfg->batch_norm) {
    /* non-trivial running statistics so the folding is exercised */
    for (guint i = 0; i < unet_model_get_n_tensors (m); i++) {
      const gchar *n = unet_model_get_tensor_name (m, i);
      gint shape[4], nd;
      if (strstr (n, ".bn") == NULL)
        continue;
      gfloat *t = unet_model_get_tensor (m, n, shape, &nd);
      guint64 s = seed + i;
      for (gint k = 0; k < shape[0]; k++)
        t[k] = g_str_has_suffix (n, "running_var") || g_str_has_suffix (n, ".weight") ?
            rand_uniform (&s, 0.5f, 1.5f) : rand_uniform (&s, -0.2f, 0.2f);
    }
  }
  return m;
}

static gfloat *
run_forward (UnetModel *m, UnetDevice dev, UnetPrecision prec, const gfloat *in, gint batch,
    gint size, gsize out_n)
{
  UnetNetOptions o;
  GError *error = NULL;
  UnetNet *net;
  gfloat *out = g_new (gfloat, out_n);

  unet_net_options_init (&o);
  o.device = dev;
  o.precision = prec;
  net = unet_net_new (m, &o, &error);
  if (net == NULL || !unet_net_forward (net, in, batch, size, size, out, &error)) {
    fprintf (stderr, "FAIL forward on %s: %s\n", unet_device_name (dev), error->message);
    failures++;
    g_clear_error (&error);
    memset (out, 0, out_n * sizeof (gfloat));
  }
  unet_net_free (net);
  return out;
}

static void
compare_nets (const NetCase *c)
{
  static const char *prec_names[] = { "fp32", "tf32", "bf16", "fp16" };
  static const double max_tol[] = { 1e-4, 5e-2, 0.15, 5e-2 };
  static const double mean_tol[] = { 1e-5, 5e-3, 2e-2, 5e-3 };
  g_autoptr (UnetModel) m = make_model (&c->cfg, 17);
  gint size = unet_config_legal_input_at_least (&c->cfg, c->min_size);
  gint osz = unet_config_output_size (&c->cfg, size);
  gsize in_n = (gsize) c->batch * c->cfg.in_channels * size * size;
  gsize out_n = (gsize) c->batch * c->cfg.classes * osz * osz;
  gfloat *in = g_new (gfloat, in_n), *ref;
  guint64 seed = 99;

  for (gsize i = 0; i < in_n; i++)
    in[i] = rand_uniform (&seed, -1.0f, 1.0f);
  ref = run_forward (m, UNET_DEVICE_CPU, UNET_PRECISION_FP32, in, c->batch, size, out_n);
  for (int p = UNET_PRECISION_FP32; p <= UNET_PRECISION_FP16; p++) {
    gfloat *got = run_forward (m, UNET_DEVICE_CUDA, p, in, c->batch, size, out_n);
    double mx = 0, mean = 0;
    gsize worst = 0;
    for (gsize i = 0; i < out_n; i++) {
      double d = fabs ((double) got[i] - ref[i]);
      if (d > mx || isnan (got[i])) {
        mx = isnan (got[i]) ? INFINITY : d;
        worst = i;
      }
      mean += d;
    }
    mean /= out_n;
    if (!(mx <= max_tol[p]) || !(mean <= mean_tol[p])) {
      fprintf (stderr, "FAIL %s %s: max |diff| %.3g at %zu (cuda %g, cpu %g), mean %.3g "
          "(limits %.3g, %.3g)\n", c->name, prec_names[p], mx, worst, got[worst], ref[worst],
          mean, max_tol[p], mean_tol[p]);
      failures++;
    } else {
      printf ("ok %s %s %dx%d x%d: max |diff| %.3g, mean %.3g\n", c->name, prec_names[p],
          size, size, c->batch, mx, mean);
    }
    g_free (got);
  }
  g_free (ref);
  g_free (in);
}

static gfloat *
segment (UnetModel *m, UnetDevice dev, gint tile, const guint16 *frame, gint w, gint h)
{
  UnetSegmenterOptions so;
  GError *error = NULL;
  UnetSegmenter *seg;
  UnetSegmentResult *r = NULL;
  gfloat *out = g_new0 (gfloat, (gsize) w * h);

  unet_segmenter_options_init (&so);
  so.net.device = dev;
  so.tile_height = so.tile_width = tile;
  so.batch_size = 3;
  so.outputs = UNET_SEGMENT_PROBABILITY;
  so.override_normalization = TRUE;
  so.normalization.mode = UNET_NORM_RANGE;
  so.normalization.a = 0;
  so.normalization.b = 4095;
  seg = unet_segmenter_new (m, &so, &error);
  if (seg != NULL)
    r = unet_segmenter_process (seg, UNET_PIXEL_U16, frame, w, h, (gsize) w * 2, &error);
  if (r == NULL || r->probability == NULL) {
    fprintf (stderr, "FAIL segment on %s, tile %d: %s\n", unet_device_name (dev), tile,
        error ? error->message : "no probability");
    failures++;
  } else {
    memcpy (out, r->probability, (gsize) w * h * sizeof (gfloat));
  }
  g_clear_error (&error);
  unet_segment_result_free (r);
  unet_segmenter_free (seg);
  return out;
}

static void
tiled_exactness (void)
{
  UnetConfig cfg = { .in_channels = 1, .classes = 2, .depth = 3, .base_filters = 4,
    .padding = UNET_PADDING_VALID };
  g_autoptr (UnetModel) m = make_model (&cfg, 5);
  const gint w = 150, h = 97;
  guint16 *frame = g_new (guint16, (gsize) w * h);
  guint64 seed = 3;
  gint small = unet_config_legal_input_at_least (&cfg, 1);
  gint whole = unet_config_input_for_output (&cfg, MAX (w, h));

  for (gint i = 0; i < w * h; i++)
    frame[i] = (guint16) rand_uniform (&seed, 0.0f, 4095.0f);
  gfloat *tiled = segment (m, UNET_DEVICE_CUDA, small, frame, w, h);
  gfloat *one = segment (m, UNET_DEVICE_CUDA, whole, frame, w, h);
  gfloat *cpu = segment (m, UNET_DEVICE_CPU, small, frame, w, h);
  failures += check_close ("gpu fp32 tiled == whole frame", tiled, one, (gsize) w * h,
      gpu_fp32_order_tol (cfg.depth, cfg.base_filters), 0);
  failures += check_close ("gpu fp32 tiled == cpu tiled", tiled, cpu, (gsize) w * h, 1e-4, 0);
  g_free (tiled);
  g_free (one);
  g_free (cpu);
  g_free (frame);
}

int
main (void)
{
  /* odd channel counts, 1 and 3 input channels, sigmoid and softmax, both paddings,
   * batch norm folding, batches > 1 */
  const NetCase cases[] = {
    { "valid d2 b4 K2", { 1, 2, 2, 4, UNET_PADDING_VALID, FALSE, 0.0 }, 2, 40 },
    { "same d2 b3 bn K1 rgb", { 3, 1, 2, 3, UNET_PADDING_SAME, TRUE, 0.0 }, 3, 20 },
    { "valid d4 b8 K3", { 1, 3, 4, 8, UNET_PADDING_VALID, FALSE, 0.0 }, 1, 188 },
  };

  gpu_require_device ();
  gpu_deterministic_algorithms ();
  for (guint i = 0; i < G_N_ELEMENTS (cases); i++)
    compare_nets (&cases[i]);
  tiled_exactness ();
  if (failures) {
    fprintf (stderr, "%d check(s) failed\n", failures);
    return 1;
  }
  printf ("CUDA backend matches the CPU backend\n");
  return 0;
}
