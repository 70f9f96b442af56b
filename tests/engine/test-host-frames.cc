/* segmenter.c's on-device frame path on the host "device" (host-frames.h): the CPU
 * backend plus frame slots built from the CUDA kernels' bodies. Against the host
 * tiling path of the same CPU net: labels, probability and statistics per frame, for
 * valid (stitched) and same (blended) models, 1 to 3 classes, 8- and 16-bit frames,
 * every normalisation the device computes, frames of 1x1, odd and very elongated
 * sizes; a stream with batch_frames (ring order, downloads overlapping the next
 * upload, frames of changing size); out-of-memory batch halving by an injected error;
 * a failure in the middle of a stream (finished frames stay, the failed one is
 * dropped, the stream goes on).
 *
 * Tolerance on probabilities: the two paths run the same CPU convolutions on inputs
 * that differ by one float rounding (the device path normalises in float with
 * parameters rounded to float, the host path in double) and compute the final
 * softmax differently (expf in the stitch body vs the backend's softmax): a few
 * 2^-24 relative roundings, carried through a random-init net whose gain per layer
 * is of order one; PROB_TOL = 1e-5 is 100 such roundings. Index errors give O(0.1). */
#include "config.h"

#include "host-frames.h"
#include "unet.h"

#include <glib.h>
#include <math.h>
#include <string.h>

#include <vector>

static const double PROB_TOL = 1e-5;

static HostFramesStats hstats;

static void
reset_stats (void)
{
  if (hstats.log != NULL)
    g_string_free (hstats.log, TRUE);
  memset (&hstats, 0, sizeof hstats);
  hstats.log = g_string_new (NULL);
}

static UnetModel *
make_model (int classes, UnetPadding padding, guint64 seed)
{
  UnetConfig cfg = { 1, classes, 2, 4, padding, FALSE, 0.0 };
  GError *error = NULL;
  UnetModel *m = unet_model_new (&cfg, &error);
  g_assert_no_error (error);
  unet_model_init_weights (m, seed);
  return m;
}

struct SegOpts
{
  UnetNormMode mode = UNET_NORM_PERCENTILE;
  int tile = 0, batch = 3;
  bool batch_frames = false;
  guint outputs = UNET_SEGMENT_LABELS | UNET_SEGMENT_PROBABILITY | UNET_SEGMENT_STATS;
};

/* device: the host "device" path; otherwise the host tiling path. */
static UnetSegmenter *
make_segmenter (UnetModel *m, const SegOpts &o, bool device)
{
  UnetSegmenterOptions so;
  GError *error = NULL;
  unet_segmenter_options_init (&so);
  so.net.device = UNET_DEVICE_CPU;
  so.net.threads = 1;
  so.batch_size = o.batch;
  so.tile_height = so.tile_width = o.tile;
  so.memory_budget = 16 << 20;
  so.batch_frames = o.batch_frames;
  so.override_normalization = TRUE;
  so.normalization.mode = o.mode;
  so.normalization.a = o.mode == UNET_NORM_RANGE ? 100.0 : 1.0;
  so.normalization.b = o.mode == UNET_NORM_RANGE ? 3000.0 : 99.8;
  so.outputs = o.outputs;
  host_frames_install (device ? &hstats : NULL);
  UnetSegmenter *seg = unet_segmenter_new (m, &so, &error);
  host_frames_install (NULL);
  g_assert_no_error (error);
  return seg;
}

static std::vector<guint8>
make_frame (UnetPixelFormat fmt, int w, int h, guint64 seed)
{
  const size_t bpp = fmt == UNET_PIXEL_U8 ? 1 : 2;
  std::vector<guint8> f ((size_t) w * h * bpp);
  guint64 s = seed * 0x9e3779b97f4a7c15ull + 7;
  for (int y = 0; y < h; y++)
    for (int x = 0; x < w; x++) {
      s ^= s << 13;
      s ^= s >> 7;
      s ^= s << 17;
      /* smooth structure plus noise, so the nets see edges */
      double v = 0.5 + 0.4 * sin (x * 0.3) * cos (y * 0.2) + 0.1 * ((s >> 40) / 16777216.0);
      if (fmt == UNET_PIXEL_U8)
        f[(size_t) y * w + x] = (guint8) (v * 255);
      else
        ((guint16 *) f.data ())[(size_t) y * w + x] = (guint16) (v * 4095);
    }
  return f;
}

static UnetSegmentResult *
process (UnetSegmenter *seg, UnetPixelFormat fmt, const std::vector<guint8> &f, int w, int h)
{
  GError *error = NULL;
  const size_t bpp = fmt == UNET_PIXEL_U8 ? 1 : 2;
  UnetSegmentResult *r = unet_segmenter_process (seg, fmt, f.data (), w, h, (gsize) w * bpp,
      &error);
  g_assert_no_error (error);
  g_assert_nonnull (r);
  return r;
}

/* Probability within PROB_TOL; labels equal except where the reference's two best
 * classes tie within PROB_TOL (2 classes: p(1) near 0.5; 1 class: p near 0.5);
 * statistics equal when no label moved. */
static void
compare (const char *what, const UnetSegmentResult *got, const UnetSegmentResult *want,
    int classes)
{
  const size_t n = (size_t) want->width * want->height;
  g_assert_cmpint (got->width, ==, want->width);
  g_assert_cmpint (got->height, ==, want->height);
  g_assert_nonnull (got->probability);
  g_assert_nonnull (got->labels);
  size_t flips = 0;
  double worst = 0.0;
  for (size_t i = 0; i < n; i++) {
    worst = MAX (worst, fabs (got->probability[i] - want->probability[i]));
    if (!(fabs (got->probability[i] - want->probability[i]) <= PROB_TOL))
      g_error ("%s: pixel %zu: probability %.9g vs %.9g", what, i, got->probability[i],
          want->probability[i]);
    if (got->labels[i] != want->labels[i]) {
      if (classes > 2 || fabs (want->probability[i] - 0.5) > PROB_TOL)
        g_error ("%s: pixel %zu: label %d vs %d (p %g)", what, i, got->labels[i],
            want->labels[i], want->probability[i]);
      flips++;
    }
  }
  g_test_message ("%s: max |p - p_host| %.3g, %zu label flips at ties", what, worst, flips);
  if (flips == 0) {
    g_assert_cmpuint (got->stats.object_count, ==, want->stats.object_count);
    g_assert_cmpfloat (got->stats.foreground_fraction, ==, want->stats.foreground_fraction);
  }
  g_assert_cmpint (got->stats.n_tiles, ==, want->stats.n_tiles);
}

static void
one_frame (UnetModel *m, int classes, UnetPixelFormat fmt, const SegOpts &o, int w, int h)
{
  reset_stats ();
  std::vector<guint8> f = make_frame (fmt, w, h, (guint64) w * 131 + h);
  UnetSegmenter *dev = make_segmenter (m, o, true);
  UnetSegmenter *host = make_segmenter (m, o, false);
  UnetSegmentResult *rd = process (dev, fmt, f, w, h);
  g_assert_cmpint (hstats.frames_uploaded, ==, 1);      /* it did take the device path */
  g_assert_cmpint (hstats.frames_waited, ==, 1);
  UnetSegmentResult *rh = process (host, fmt, f, w, h);
  g_assert_cmpint (hstats.frames_uploaded, ==, 1);      /* and the host path did not */
  gchar *what = g_strdup_printf ("K%d %s mode %d %dx%d tile %d", classes,
      fmt == UNET_PIXEL_U8 ? "u8" : "u16", o.mode, w, h, o.tile);
  compare (what, rd, rh, classes);
  g_free (what);
  unet_segment_result_free (rd);
  unet_segment_result_free (rh);
  unet_segmenter_free (dev);
  unet_segmenter_free (host);
}

static void
test_frames_match_host_path (void)
{
  const UnetNormMode modes[] = { UNET_NORM_PERCENTILE, UNET_NORM_FRAME_MEAN_STD, UNET_NORM_RANGE };
  for (UnetPadding pad : { UNET_PADDING_VALID, UNET_PADDING_SAME })
    for (int classes : { 1, 2, 3 }) {
      UnetModel *m = make_model (classes, pad, 10 + classes);
      for (UnetNormMode mode : modes) {
        SegOpts o;
        o.mode = mode;
        one_frame (m, classes, UNET_PIXEL_U16, o, 37, 23);
        one_frame (m, classes, UNET_PIXEL_U8, o, 1, 1);
      }
      SegOpts o;
      one_frame (m, classes, UNET_PIXEL_U8, o, 300, 5);
      o.tile = pad == UNET_PADDING_VALID ? 44 : 16;     /* many tiles, partial batches */
      o.batch = 4;
      one_frame (m, classes, UNET_PIXEL_U16, o, 53, 41);
      unet_model_free (m);
    }
}

/* Only the outputs asked for are allocated (defect: probability buffers for
 * labels-only segmentation, blend weights of classes x n). */
static void
test_frame_buffer_sizes (void)
{
  UnetModel *ms = make_model (3, UNET_PADDING_SAME, 3);
  const int w = 45, h = 31;
  std::vector<guint8> f = make_frame (UNET_PIXEL_U8, w, h, 1);
  SegOpts o;
  o.outputs = UNET_SEGMENT_LABELS;
  reset_stats ();
  UnetSegmenter *seg = make_segmenter (ms, o, true);
  UnetSegmentResult *r = process (seg, UNET_PIXEL_U8, f, w, h);
  g_assert_cmpuint (hstats.labels_bytes, ==, (gsize) w * h);
  g_assert_cmpuint (hstats.probs_bytes, ==, 0);
  g_assert_cmpuint (hstats.acc_bytes, ==, (gsize) 3 * w * h * sizeof (float));
  g_assert_cmpuint (hstats.wsum_bytes, ==, (gsize) w * h * sizeof (float));
  g_assert_null (r->probability);
  unet_segment_result_free (r);
  unet_segmenter_free (seg);

  o.outputs = UNET_SEGMENT_PROBABILITY;
  reset_stats ();
  seg = make_segmenter (ms, o, true);
  r = process (seg, UNET_PIXEL_U8, f, w, h);
  g_assert_cmpuint (hstats.labels_bytes, ==, 0);
  g_assert_cmpuint (hstats.probs_bytes, ==, (gsize) w * h * sizeof (float));
  g_assert_null (r->labels);
  g_assert_nonnull (r->probability);
  unet_segment_result_free (r);
  unet_segmenter_free (seg);
  unet_model_free (ms);
}

/* A stream with batch_frames: the three-slot ring, downloads that land only when
 * waited for, frames of changing size, results in push order and equal to the host
 * path frame by frame. */
static void
test_stream_batch_frames (void)
{
  UnetModel *m = make_model (2, UNET_PADDING_VALID, 4);
  const int sizes[][2] = { { 70, 50 }, { 70, 50 }, { 123, 97 }, { 1, 1 }, { 123, 97 },
    { 200, 31 }, { 9, 5 } };
  const int n = G_N_ELEMENTS (sizes);
  SegOpts o;
  o.batch_frames = true;
  reset_stats ();
  UnetSegmenter *seg = make_segmenter (m, o, true);
  SegOpts oh;
  UnetSegmenter *ref = make_segmenter (m, oh, false);
  std::vector<std::vector<guint8>> frames;
  GError *error = NULL;
  int popped = 0;
  for (int i = 0; i <= n; i++) {
    if (i < n) {
      frames.push_back (make_frame (UNET_PIXEL_U16, sizes[i][0], sizes[i][1], 20 + i));
      std::vector<guint8> copy = frames.back ();
      g_assert_true (unet_segmenter_push (seg, UNET_PIXEL_U16, copy.data (), sizes[i][0],
              sizes[i][1], (gsize) sizes[i][0] * 2, GINT_TO_POINTER (i + 1), &error));
      g_assert_no_error (error);
      /* the caller's buffer may be reused at once */
      memset (copy.data (), 0xff, copy.size ());
    } else {
      g_assert_true (unet_segmenter_flush (seg, &error));
      g_assert_no_error (error);
    }
    UnetSegmentResult *r;
    while ((r = unet_segmenter_pop (seg)) != NULL) {
      int k = GPOINTER_TO_INT (r->user_data) - 1;
      g_assert_cmpint (k, ==, popped);
      UnetSegmentResult *want = process (ref, UNET_PIXEL_U16, frames[k], sizes[k][0], sizes[k][1]);
      compare ("stream", r, want, 2);
      unet_segment_result_free (want);
      unet_segment_result_free (r);
      popped++;
    }
    /* with frames in flight, at most the ring's depth minus one is finished late */
    if (i < n)
      g_assert_cmpint (popped, >=, i + 1 - 3);
  }
  g_assert_cmpint (popped, ==, n);
  g_assert_cmpint (hstats.frames_uploaded, ==, n);
  g_assert_cmpint (hstats.frames_waited, ==, n);
  /* overlap: frame 0's download is waited for only after frame 1 was uploaded */
  const char *log = hstats.log->str;
  const char *d0 = strstr (log, "D0 "), *u1 = strstr (log, "U1 "), *w0 = strstr (log, "W0 ");
  g_assert_true (d0 != NULL && u1 != NULL && w0 != NULL);
  g_assert_true (d0 < u1 && u1 < w0);
  unet_segmenter_free (seg);
  unet_segmenter_free (ref);
  unet_model_free (m);
}

/* Out of memory with 8 tiles per pass: 8 -> 4 -> 2, and the result is the same. */
static void
test_oom_halving (void)
{
  UnetModel *m = make_model (2, UNET_PADDING_VALID, 5);
  const int w = 97, h = 61;
  std::vector<guint8> f = make_frame (UNET_PIXEL_U16, w, h, 2);
  SegOpts o;
  o.tile = 44;
  o.batch = 8;
  reset_stats ();
  hstats.oom_above = 3;
  UnetSegmenter *dev = make_segmenter (m, o, true);
  UnetSegmenter *host = make_segmenter (m, o, false);
  UnetSegmentResult *rd = process (dev, UNET_PIXEL_U16, f, w, h);
  /* reported in the frame's stats (unetsegment posts it as a warning) */
  g_assert_cmpint (rd->stats.batch_reduced, ==, 2);
  g_assert_cmpint (rd->stats.n_tiles, >, 8);
  g_assert_cmpint (hstats.max_extract_n, ==, 2);
  UnetSegmentResult *rh = process (host, UNET_PIXEL_U16, f, w, h);
  compare ("out-of-memory halving", rd, rh, 2);
  /* the halved batch stays: the next frame never asks for more */
  int calls = hstats.extract_calls;
  UnetSegmentResult *r2 = process (dev, UNET_PIXEL_U16, f, w, h);
  g_assert_cmpint (hstats.extract_calls - calls, ==, (rd->stats.n_tiles + 1) / 2);
  g_assert_cmpint (r2->stats.batch_reduced, ==, 0);     /* reported once */
  unet_segment_result_free (r2);
  unet_segment_result_free (rd);
  unet_segment_result_free (rh);
  unet_segmenter_free (dev);
  unet_segmenter_free (host);
  unet_model_free (m);
}

/* A backend failure in frame 2 of a batch_frames stream: frames 0 and 1 (their
 * downloads already started) stay poppable, frame 2 is dropped, the stream goes on. */
static void
test_failure_drops_unfinished (void)
{
  UnetModel *m = make_model (2, UNET_PADDING_VALID, 6);
  const int w = 40, h = 30;
  SegOpts o;
  o.batch_frames = true;
  o.batch = 16;                         /* one extract call per frame */
  reset_stats ();
  hstats.fail_extract_call = 3;
  UnetSegmenter *seg = make_segmenter (m, o, true);
  GError *error = NULL;
  std::vector<guint8> f = make_frame (UNET_PIXEL_U8, w, h, 3);
  for (int i = 0; i < 2; i++)
    g_assert_true (unet_segmenter_push (seg, UNET_PIXEL_U8, f.data (), w, h, w,
            GINT_TO_POINTER (i + 1), &error));
  g_assert_false (unet_segmenter_push (seg, UNET_PIXEL_U8, f.data (), w, h, w,
          GINT_TO_POINTER (3), &error));
  g_assert_error (error, UNET_ERROR, UNET_ERROR_BACKEND);
  g_clear_error (&error);
  for (int i = 0; i < 2; i++) {
    UnetSegmentResult *r = unet_segmenter_pop (seg);
    g_assert_nonnull (r);
    g_assert_cmpint (GPOINTER_TO_INT (r->user_data), ==, i + 1);
    g_assert_nonnull (r->labels);
    unet_segment_result_free (r);
  }
  g_assert_null (unet_segmenter_pop (seg));
  g_assert_true (unet_segmenter_push (seg, UNET_PIXEL_U8, f.data (), w, h, w,
          GINT_TO_POINTER (4), &error));
  g_assert_true (unet_segmenter_flush (seg, &error));
  UnetSegmentResult *r = unet_segmenter_pop (seg);
  g_assert_nonnull (r);
  g_assert_cmpint (GPOINTER_TO_INT (r->user_data), ==, 4);
  unet_segment_result_free (r);
  unet_segmenter_free (seg);
  unet_model_free (m);
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  g_setenv ("UNET_HOST_TILING", "0", TRUE);
  g_test_add_func ("/host-frames/match-host-path", test_frames_match_host_path);
  g_test_add_func ("/host-frames/buffer-sizes", test_frame_buffer_sizes);
  g_test_add_func ("/host-frames/stream-batch-frames", test_stream_batch_frames);
  g_test_add_func ("/host-frames/oom-halving", test_oom_halving);
  g_test_add_func ("/host-frames/failure-drops-unfinished", test_failure_drops_unfinished);
  int rc = g_test_run ();
  if (hstats.log != NULL)
    g_string_free (hstats.log, TRUE);
  return rc;
}
