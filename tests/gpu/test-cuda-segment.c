/* The segmenter's on-device path (upload once, statistics, tile extraction,
 * softmax/argmax/stitch or Gaussian blend on the GPU, download once) against the host
 * tiling path on the same GPU ($UNET_HOST_TILING=1) and against the CPU, through the
 * public API; 8- and 16-bit frames, valid and same (blended) models, every
 * normalisation mode that needs device statistics, a stream of frames of changing
 * size with batch_frames (frames in flight overlap), and the result order. Exits 77
 * without a CUDA device.
 *
 * Tolerances (fp32 everywhere):
 *   Algorithms are chosen by cuDNN's heuristics ($UNET_CUDNN_FIND=0): per shape, not
 *   by timing, so two nets of the same shapes compute the same way.
 *   device vs host tiling, same GPU: gpu_fp32_order_tol (gpu-test.h, from the fp32
 *     unit roundoff and the net's size). The same convolutions; the final softmax
 *     differs (__expf in the stitch kernel vs the softmax kernel: a few ulp), the
 *     normalisation's rounding ((v - lo) * scale in f32 on the device, double then
 *     f32 on the host: one rounding of the input), and the host path may batch tiles
 *     differently (another shape, possibly another algorithm).
 *   device vs CPU: max |diff| 1e-4, as test-cuda-net (summation order only).
 *   stream vs frames one by one: the same path, shapes and algorithms; frames of
 *     other sizes in between must change nothing: gpu_fp32_order_tol as well.
 *   labels: pixels whose top-two probabilities lie within the probability
 *     tolerance may flip; any other difference fails. */
#include "config.h"

#include "gpu-test.h"
#include "unet.h"

static int failures;
/* gpu_fp32_order_tol of the models below (depth 2, base 8) */
static double order_tol;

static UnetModel *
make_model (const UnetConfig *cfg, guint64 seed)
{
  GError *error = NULL;
  UnetModel *m = unet_model_new (cfg, &error);
  g_assert_no_error (error);
  unet_model_init_weights (m, seed);
  return m;
}

static UnetSegmenter *
make_segmenter (UnetModel *m, UnetDevice dev, gboolean host_tiling, UnetNormMode mode,
    gboolean batch_frames)
{
  UnetSegmenterOptions so;
  GError *error = NULL;
  unet_segmenter_options_init (&so);
  so.net.device = dev;
  so.batch_size = 3;
  so.tile_height = so.tile_width = 0;
  so.memory_budget = 64 << 20;
  so.batch_frames = batch_frames;
  so.override_normalization = TRUE;
  so.normalization.mode = mode;
  so.normalization.a = mode == UNET_NORM_RANGE ? 100.0 : 1.0;
  so.normalization.b = mode == UNET_NORM_RANGE ? 3000.0 : 99.8;
  so.outputs = UNET_SEGMENT_LABELS | UNET_SEGMENT_PROBABILITY | UNET_SEGMENT_STATS;
  g_setenv ("UNET_HOST_TILING", host_tiling ? "1" : "0", TRUE);
  UnetSegmenter *seg = unet_segmenter_new (m, &so, &error);
  if (seg == NULL) {
    fprintf (stderr, "FAIL segmenter on %s: %s\n", unet_device_name (dev), error->message);
    exit (1);
  }
  return seg;
}

static int
compare (const char *what, const UnetSegmentResult *got, const UnetSegmentResult *want,
    double tol)
{
  gsize n = (gsize) want->width * want->height, flips = 0;
  if (got->width != want->width || got->height != want->height) {
    fprintf (stderr, "FAIL %s: %dx%d, want %dx%d\n", what, got->width, got->height,
        want->width, want->height);
    return 1;
  }
  if (check_close (what, got->probability, want->probability, n, tol, 0.0))
    return 1;
  for (gsize i = 0; i < n; i++)
    if (got->labels[i] != want->labels[i]) {
      /* a flip is allowed only where the two classes' probabilities tie within tol
       * (2-class models: p(class 1) within tol of 0.5) */
      if (fabs (want->probability[i] - 0.5) > tol) {
        fprintf (stderr, "FAIL %s: label %zu is %d, want %d (p %.6f)\n", what, (size_t) i,
            got->labels[i], want->labels[i], want->probability[i]);
        return 1;
      }
      flips++;
    }
  if (got->stats.object_count != want->stats.object_count && flips == 0) {
    fprintf (stderr, "FAIL %s: %u objects, want %u\n", what, got->stats.object_count,
        want->stats.object_count);
    return 1;
  }
  return 0;
}

static void *
make_frame (UnetPixelFormat fmt, gint w, gint h, guint64 seed)
{
  guint64 s = seed;
  if (fmt == UNET_PIXEL_U8) {
    guint8 *f = g_new (guint8, (gsize) w * h);
    for (gint y = 0; y < h; y++)
      for (gint x = 0; x < w; x++)
        f[(gsize) y * w + x] = (guint8) (128 + 100 * sin (x * 0.21 + seed) * cos (y * 0.17)
            + rand_uniform (&s, -20, 20));
    return f;
  }
  guint16 *f = g_new (guint16, (gsize) w * h);
  for (gint y = 0; y < h; y++)
    for (gint x = 0; x < w; x++)
      f[(gsize) y * w + x] = (guint16) (2000 + 1500 * sin (x * 0.13 + seed) * cos (y * 0.19)
          + rand_uniform (&s, -300, 300));
  return f;
}

static UnetSegmentResult *
process (UnetSegmenter *seg, UnetPixelFormat fmt, const void *frame, gint w, gint h)
{
  GError *error = NULL;
  gsize bpp = fmt == UNET_PIXEL_U8 ? 1 : 2;
  UnetSegmentResult *r = unet_segmenter_process (seg, fmt, frame, w, h, (gsize) w * bpp,
      &error);
  if (r == NULL) {
    fprintf (stderr, "FAIL process: %s\n", error->message);
    exit (1);
  }
  return r;
}

/* One frame: device path vs host tiling (same GPU) vs CPU. */
static void
one_frame (const char *name, UnetModel *m, UnetPixelFormat fmt, UnetNormMode mode, gint w,
    gint h)
{
  void *frame = make_frame (fmt, w, h, 3);
  UnetSegmenter *dev = make_segmenter (m, UNET_DEVICE_CUDA, FALSE, mode, FALSE);
  UnetSegmenter *host = make_segmenter (m, UNET_DEVICE_CUDA, TRUE, mode, FALSE);
  UnetSegmenter *cpu = make_segmenter (m, UNET_DEVICE_CPU, FALSE, mode, FALSE);
  UnetSegmentResult *rd = process (dev, fmt, frame, w, h);
  UnetSegmentResult *rh = process (host, fmt, frame, w, h);
  UnetSegmentResult *rc = process (cpu, fmt, frame, w, h);
  gchar *a = g_strdup_printf ("%s %dx%d mode %d: device vs host tiling", name, w, h, mode);
  gchar *b = g_strdup_printf ("%s %dx%d mode %d: device vs CPU", name, w, h, mode);
  failures += compare (a, rd, rh, order_tol);
  failures += compare (b, rd, rc, 1e-4);
  g_free (a);
  g_free (b);
  unet_segment_result_free (rd);
  unet_segment_result_free (rh);
  unet_segment_result_free (rc);
  unet_segmenter_free (dev);
  unet_segmenter_free (host);
  unet_segmenter_free (cpu);
  g_free (frame);
}

/* A stream with frames in flight: sizes change (buffers grow), results come back in
 * push order and equal frames processed one by one. */
static void
stream (UnetModel *m)
{
  const gint sizes[][2] = { {70, 50}, {70, 50}, {123, 97}, {40, 40}, {123, 97}, {200, 31} };
  const gint n = G_N_ELEMENTS (sizes);
  UnetSegmenter *seg = make_segmenter (m, UNET_DEVICE_CUDA, FALSE, UNET_NORM_PERCENTILE,
      TRUE);
  UnetSegmenter *ref = make_segmenter (m, UNET_DEVICE_CUDA, FALSE, UNET_NORM_PERCENTILE,
      FALSE);
  void *frames[G_N_ELEMENTS (sizes)];
  GError *error = NULL;
  gint popped = 0;

  for (gint i = 0; i < n; i++) {
    frames[i] = make_frame (UNET_PIXEL_U16, sizes[i][0], sizes[i][1], 10 + i);
    if (!unet_segmenter_push (seg, UNET_PIXEL_U16, frames[i], sizes[i][0], sizes[i][1],
            (gsize) sizes[i][0] * 2, GINT_TO_POINTER (i + 1), &error)) {
      fprintf (stderr, "FAIL stream push %d: %s\n", i, error->message);
      exit (1);
    }
    /* the caller's buffer may be reused at once */
    memset (frames[i], 0, (gsize) sizes[i][0] * sizes[i][1] * 2);
    g_free (frames[i]);
    frames[i] = make_frame (UNET_PIXEL_U16, sizes[i][0], sizes[i][1], 10 + i);
    UnetSegmentResult *r;
    while ((r = unet_segmenter_pop (seg)) != NULL) {
      gint k = GPOINTER_TO_INT (r->user_data) - 1;
      if (k != popped) {
        fprintf (stderr, "FAIL stream: frame %d came out as number %d\n", k, popped);
        failures++;
      }
      UnetSegmentResult *want = process (ref, UNET_PIXEL_U16, frames[k], sizes[k][0],
          sizes[k][1]);
      failures += compare ("stream frame vs one by one", r, want, order_tol);
      unet_segment_result_free (want);
      unet_segment_result_free (r);
      popped++;
    }
  }
  if (!unet_segmenter_flush (seg, &error)) {
    fprintf (stderr, "FAIL stream flush: %s\n", error->message);
    exit (1);
  }
  UnetSegmentResult *r;
  while ((r = unet_segmenter_pop (seg)) != NULL) {
    gint k = GPOINTER_TO_INT (r->user_data) - 1;
    if (k != popped) {
      fprintf (stderr, "FAIL stream: frame %d came out as number %d\n", k, popped);
      failures++;
    }
    UnetSegmentResult *want = process (ref, UNET_PIXEL_U16, frames[k], sizes[k][0],
        sizes[k][1]);
    failures += compare ("stream frame vs one by one", r, want, order_tol);
    unet_segment_result_free (want);
    unet_segment_result_free (r);
    popped++;
  }
  if (popped != n) {
    fprintf (stderr, "FAIL stream: %d of %d frames came back\n", popped, n);
    failures++;
  }
  for (gint i = 0; i < n; i++)
    g_free (frames[i]);
  unet_segmenter_free (seg);
  unet_segmenter_free (ref);
}

int
main (void)
{
  gpu_require_device ();
  gpu_deterministic_algorithms ();

  UnetConfig valid = { 1, 2, 2, 8, UNET_PADDING_VALID, FALSE, 0.0 };
  UnetConfig same = { 1, 2, 2, 8, UNET_PADDING_SAME, TRUE, 0.0 };
  g_autoptr (UnetModel) mv = make_model (&valid, 5);
  g_autoptr (UnetModel) ms = make_model (&same, 6);
  order_tol = gpu_fp32_order_tol (2, 8);

  const UnetNormMode modes[] = { UNET_NORM_PERCENTILE, UNET_NORM_FRAME_MEAN_STD,
    UNET_NORM_RANGE };
  for (guint i = 0; i < G_N_ELEMENTS (modes); i++) {
    one_frame ("valid u16", mv, UNET_PIXEL_U16, modes[i], 151, 87);
    one_frame ("valid u8", mv, UNET_PIXEL_U8, modes[i], 64, 129);
    one_frame ("same u16", ms, UNET_PIXEL_U16, modes[i], 151, 87);
  }
  /* smaller than one tile: mirror extension beyond the frame */
  one_frame ("valid tiny", mv, UNET_PIXEL_U16, UNET_NORM_PERCENTILE, 9, 5);
  stream (mv);

  if (failures) {
    fprintf (stderr, "%d failures\n", failures);
    return 1;
  }
  printf ("all on-device segmentation checks passed\n");
  return 0;
}
