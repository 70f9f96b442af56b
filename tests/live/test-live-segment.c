/* Live behaviour of unetsegment in real pipelines (suite 'live'), with a live
 * source (videotestsrc is-live=true) and a clock-synchronised sink:
 *
 * - a camera faster than the model: a leaky queue and QoS drop frames, the
 *   per-frame statistics count them exactly and the capture-to-output latency
 *   stays bounded instead of growing;
 * - the LATENCY query answers the element's real processing time (compared with
 *   the processing-time of every frame and with chain-to-push times measured by
 *   pad probes);
 * - hot reload: with watch-model=true, models written to a temporary name and
 *   renamed (unet_model_save, as unettrain's checkpoints) are swapped in while the
 *   stream runs and the outputs change to the new model's; a file rewritten in
 *   place and left truncated gives a warning, never an error or a swap; the
 *   "reload" action signal does the same on demand.
 *
 * Models are made here with the engine API: "constant" models (all weights zero,
 * head bias +-10) label every pixel background or every pixel foreground, so the
 * foreground-fraction of each frame says which model made it. */
#include <gst/check/gstcheck.h>
#include <glib/gstdio.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include "unet.h"

static gchar *tmpdir;

static gchar *
tmp_path (const gchar * name)
{
  return g_build_filename (tmpdir, name, NULL);
}

/* Valid-padded, 2 classes; every weight 0 so the network output is the head
 * bias: class 1 everywhere when `foreground`, else class 0 everywhere. */
static UnetModel *
constant_model (gboolean foreground)
{
  UnetConfig cfg = { 1, 2, 2, 4, UNET_PADDING_VALID, FALSE, 0.0 };
  UnetModel *m = unet_model_new (&cfg, NULL);
  guint i, n;

  fail_unless (m != NULL);
  n = unet_model_get_n_tensors (m);
  for (i = 0; i < n; i++) {
    const gchar *name = unet_model_get_tensor_name (m, i);
    gint shape[4] = { 1, 1, 1, 1 }, nd = 0, k;
    gsize count = 1;
    gfloat *t = unet_model_get_tensor (m, name, shape, &nd);

    for (k = 0; k < nd; k++)
      count *= shape[k];
    memset (t, 0, count * sizeof (gfloat));
    if (!strcmp (name, "head.bias")) {
      t[0] = foreground ? -10.0f : 10.0f;
      t[1] = foreground ? 10.0f : -10.0f;
    }
  }
  unet_model_set_metadata (m, "unet.normalization", "{\"mode\":\"none\"}");
  return m;
}

/* Atomic: the engine writes a temporary file and renames it over `path`. */
static void
save_constant_model (const gchar * path, gboolean foreground)
{
  g_autoptr (UnetModel) m = constant_model (foreground);
  GError *err = NULL;

  fail_unless (unet_model_save (m, path, &err), "%s", err ? err->message : "");
}

/* A random model, slower than a 100 fps camera on 128x128 frames on one core
 * (depth 2, 16 base filters: about 20-30 ms a frame here). */
static gchar *
slow_model (void)
{
  UnetConfig cfg = { 1, 2, 2, 16, UNET_PADDING_VALID, FALSE, 0.0 };
  g_autoptr (UnetModel) m = unet_model_new (&cfg, NULL);
  gchar *path = tmp_path ("slow.safetensors");

  fail_unless (m != NULL);
  unet_model_init_weights (m, 7);
  fail_unless (unet_model_save (m, path, NULL));
  return path;
}

/* ------------------------------------------------------------ bus helper -- */

typedef struct
{
  guint64 frame_number;
  gdouble foreground;
  GstClockTime latency, processing;
  guint64 dropped, qos_dropped;
} Stat;

typedef struct
{
  GstElement *pipe;
  GstBus *bus;
  GArray *stats;                /* Stat */
  GPtrArray *swaps;             /* gchar* model path of each swap */
  GArray *swap_frames;          /* guint64 first frame of each swap */
  guint warnings, errors;
  gboolean eos;
} Run;

static void
run_init (Run * r, const gchar * desc)
{
  GError *err = NULL;

  memset (r, 0, sizeof (*r));
  r->pipe = gst_parse_launch (desc, &err);
  fail_unless (r->pipe != NULL && err == NULL, "%s: %s", desc,
      err ? err->message : "");
  r->bus = gst_element_get_bus (r->pipe);
  r->stats = g_array_new (FALSE, TRUE, sizeof (Stat));
  r->swaps = g_ptr_array_new_with_free_func (g_free);
  r->swap_frames = g_array_new (FALSE, TRUE, sizeof (guint64));
}

static void
run_clear (Run * r)
{
  gst_element_set_state (r->pipe, GST_STATE_NULL);
  gst_object_unref (r->bus);
  gst_object_unref (r->pipe);
  g_array_unref (r->stats);
  g_ptr_array_unref (r->swaps);
  g_array_unref (r->swap_frames);
}

/* Handles the messages for up to `ms` milliseconds (returns early at EOS). */
static void
run_poll (Run * r, gint ms)
{
  gint64 end = g_get_monotonic_time () + (gint64) ms * 1000;

  while (!r->eos) {
    gint64 left = end - g_get_monotonic_time ();
    GstMessage *msg;

    if (left <= 0)
      break;
    msg = gst_bus_timed_pop (r->bus, left * GST_USECOND);
    if (!msg)
      break;
    switch (GST_MESSAGE_TYPE (msg)) {
      case GST_MESSAGE_LATENCY:
        /* what an application does (gst-launch-1.0 too) */
        gst_bin_recalculate_latency (GST_BIN (r->pipe));
        break;
      case GST_MESSAGE_EOS:
        r->eos = TRUE;
        break;
      case GST_MESSAGE_WARNING:{
        GError *e = NULL;
        gchar *dbg = NULL;

        gst_message_parse_warning (msg, &e, &dbg);
        GST_INFO ("warning: %s (%s)", e->message, dbg);
        g_error_free (e);
        g_free (dbg);
        r->warnings++;
        break;
      }
      case GST_MESSAGE_ERROR:{
        GError *e = NULL;
        gchar *dbg = NULL;

        gst_message_parse_error (msg, &e, &dbg);
        g_printerr ("error: %s (%s)\n", e->message, dbg);
        g_error_free (e);
        g_free (dbg);
        r->errors++;
        break;
      }
      case GST_MESSAGE_ELEMENT:{
        const GstStructure *s = gst_message_get_structure (msg);

        if (gst_structure_has_name (s, "unetsegment-stats")) {
          Stat st = { 0 };

          fail_unless (gst_structure_get (s,
                  "frame-number", G_TYPE_UINT64, &st.frame_number,
                  "foreground-fraction", G_TYPE_DOUBLE, &st.foreground,
                  "latency", G_TYPE_UINT64, &st.latency,
                  "processing-time", G_TYPE_UINT64, &st.processing,
                  "frames-dropped", G_TYPE_UINT64, &st.dropped,
                  "qos-dropped", G_TYPE_UINT64, &st.qos_dropped, NULL),
              "incomplete stats: %" GST_PTR_FORMAT, s);
          g_array_append_val (r->stats, st);
        } else if (gst_structure_has_name (s, "unetsegment-model-swapped")) {
          guint64 f = 0;

          fail_unless (gst_structure_get_uint64 (s, "frame-number", &f));
          g_ptr_array_add (r->swaps,
              g_strdup (gst_structure_get_string (s, "model")));
          g_array_append_val (r->swap_frames, f);
        }
        break;
      }
      default:
        break;
    }
    gst_message_unref (msg);
  }
}

/* Polls until `cond` holds, for at most `ms`. */
#define POLL_UNTIL(r, cond, ms) G_STMT_START { \
    gint64 _end = g_get_monotonic_time () + (gint64) (ms) * 1000; \
    while (!(cond) && !(r)->eos && g_get_monotonic_time () < _end) \
      run_poll ((r), 50); \
  } G_STMT_END

static Stat *
last_stat (Run * r)
{
  return r->stats->len ? &g_array_index (r->stats, Stat, r->stats->len - 1) :
      NULL;
}

static int
cmp_time (gconstpointer a, gconstpointer b)
{
  GstClockTime x = *(const GstClockTime *) a, y = *(const GstClockTime *) b;
  return x < y ? -1 : x > y;
}

/* ---------------------------------------------- fast camera, slow model -- */

typedef struct
{
  gint64 t_in;                  /* monotonic us at the sink pad */
  GArray *chain_time;           /* GstClockTime: sink pad -> src pad */
  guint64 last_offset_out;
  guint n_in, n_out;
} Probes;

static GstPadProbeReturn
probe_in (GstPad * pad, GstPadProbeInfo * info, gpointer user_data)
{
  Probes *p = user_data;

  p->t_in = g_get_monotonic_time ();
  p->n_in++;
  return GST_PAD_PROBE_OK;
}

static GstPadProbeReturn
probe_out (GstPad * pad, GstPadProbeInfo * info, gpointer user_data)
{
  Probes *p = user_data;
  GstClockTime t = (g_get_monotonic_time () - p->t_in) * GST_USECOND;

  g_array_append_val (p->chain_time, t);
  p->last_offset_out = GST_BUFFER_OFFSET (GST_PAD_PROBE_INFO_BUFFER (info));
  p->n_out++;
  return GST_PAD_PROBE_OK;
}

GST_START_TEST (test_fast_camera_slow_model)
{
  const gint n = 60, fps = 100;
  const GstClockTime period = GST_SECOND / fps;
  gchar *model = slow_model ();
  gchar *desc = g_strdup_printf ("videotestsrc is-live=true num-buffers=%d "
      "pattern=ball ! video/x-raw,format=GRAY8,width=128,height=128,"
      "framerate=%d/1 ! queue leaky=downstream max-size-buffers=1 "
      "max-size-bytes=0 max-size-time=0 ! unetsegment name=seg model=%s "
      "threads=1 post-messages=true ! fakesink sync=true", n, fps, model);
  Run r;
  Probes p = { 0 };
  GstElement *seg;
  GstPad *sinkpad, *srcpad;
  GstQuery *q;
  GstClockTime max_proc = 0, max_warm = 0, ours, up_min, seg_min, pipe_min,
      bound;
  gboolean live;
  GArray *lat;
  guint i;
  Stat *last;

  run_init (&r, desc);
  seg = gst_bin_get_by_name (GST_BIN (r.pipe), "seg");
  sinkpad = gst_element_get_static_pad (seg, "sink");
  srcpad = gst_element_get_static_pad (seg, "src");
  p.chain_time = g_array_new (FALSE, FALSE, sizeof (GstClockTime));
  gst_pad_add_probe (sinkpad, GST_PAD_PROBE_TYPE_BUFFER, probe_in, &p, NULL);
  gst_pad_add_probe (srcpad, GST_PAD_PROBE_TYPE_BUFFER, probe_out, &p, NULL);

  fail_unless (gst_element_set_state (r.pipe, GST_STATE_PLAYING) !=
      GST_STATE_CHANGE_FAILURE);
  /* 60 frames at 100 fps: 0.6 s of camera; 30 s is room for a loaded machine */
  POLL_UNTIL (&r, FALSE, 30000);
  fail_unless (r.eos, "no EOS within 30 s");
  fail_unless_equals_int (r.errors, 0);

  /* The model is slower than the camera: frames were dropped, not queued. */
  fail_unless (r.stats->len == p.n_out);
  fail_unless (p.n_out < (guint) n, "nothing dropped: %u of %d frames out",
      p.n_out, n);
  fail_unless (p.n_out >= 2);
  last = last_stat (&r);
  /* Every frame up to the last one out was segmented or counted as dropped
   * (videotestsrc numbers its frames, so the count is exact). */
  fail_unless_equals_uint64 (last->dropped, p.last_offset_out + 1 - p.n_out);
  fail_unless (last->qos_dropped <= last->dropped);
  GST_INFO ("%u of %d frames segmented, %" G_GUINT64_FORMAT " dropped (%"
      G_GUINT64_FORMAT " by QoS)", p.n_out, n, last->dropped,
      last->qos_dropped);

  /* Latency bounded: a frame waits at most for the frame being segmented
   * (leaky queue of one), then is segmented; the source adds one frame period
   * (it pushes a frame when its capture interval ends). 3x that plus 100 ms of
   * scheduling slack on a loaded 2-core machine still fails if frames queue up
   * (60 frames queued at ~25 ms each would be > 1 s). */
  lat = g_array_new (FALSE, FALSE, sizeof (GstClockTime));
  for (i = 0; i < r.stats->len; i++) {
    Stat *s = &g_array_index (r.stats, Stat, i);
    fail_unless (GST_CLOCK_TIME_IS_VALID (s->latency));
    fail_unless (s->latency >= s->processing, "latency %" GST_TIME_FORMAT
        " < processing %" GST_TIME_FORMAT, GST_TIME_ARGS (s->latency),
        GST_TIME_ARGS (s->processing));
    max_proc = MAX (max_proc, s->processing);
    if (i > 0)
      max_warm = MAX (max_warm, s->processing);
    g_array_append_val (lat, s->latency);
  }
  g_array_sort (lat, cmp_time);
  bound = 3 * (max_proc + period) + 100 * GST_MSECOND;
  fail_unless (g_array_index (lat, GstClockTime, lat->len - 1) <= bound,
      "max latency %" GST_TIME_FORMAT " > %" GST_TIME_FORMAT,
      GST_TIME_ARGS (g_array_index (lat, GstClockTime, lat->len - 1)),
      GST_TIME_ARGS (bound));

  /* LATENCY query: what the element adds to upstream's latency is its largest
   * processing time after the first (warm-up) frame (it raises the figure when a
   * frame takes more than 10 % longer than the reported one, so it lies in
   * [max / 1.1, max]). */
  q = gst_query_new_latency ();
  fail_unless (gst_pad_peer_query (sinkpad, q));
  gst_query_parse_latency (q, &live, &up_min, NULL);
  fail_unless (live);
  gst_query_unref (q);
  q = gst_query_new_latency ();
  fail_unless (gst_pad_query (srcpad, q));
  gst_query_parse_latency (q, &live, &seg_min, NULL);
  gst_query_unref (q);
  fail_unless (seg_min > up_min);
  ours = seg_min - up_min;
  fail_unless (ours <= max_warm && ours * 11 >= max_warm * 10,
      "element latency %" GST_TIME_FORMAT ", largest processing time %"
      GST_TIME_FORMAT, GST_TIME_ARGS (ours), GST_TIME_ARGS (max_warm));
  /* ... and it is real: at least the median time a frame spends in the element
   * as the pad probes see it (processing plus the map/copy around it, which is
   * small next to ~20 ms of network: 0.8 leaves room for it). */
  g_array_sort (p.chain_time, cmp_time);
  fail_unless (ours * 10 >= g_array_index (p.chain_time, GstClockTime,
          p.chain_time->len / 2) * 8, "element latency %" GST_TIME_FORMAT
      ", median chain-to-push %" GST_TIME_FORMAT, GST_TIME_ARGS (ours),
      GST_TIME_ARGS (g_array_index (p.chain_time, GstClockTime,
              p.chain_time->len / 2)));
  /* The pipeline's latency includes it. */
  q = gst_query_new_latency ();
  fail_unless (gst_element_query (r.pipe, q));
  gst_query_parse_latency (q, &live, &pipe_min, NULL);
  gst_query_unref (q);
  fail_unless (live && pipe_min >= seg_min);

  gst_object_unref (sinkpad);
  gst_object_unref (srcpad);
  gst_object_unref (seg);
  g_array_unref (lat);
  g_array_unref (p.chain_time);
  run_clear (&r);
  g_unlink (model);
  g_free (model);
  g_free (desc);
}

GST_END_TEST;

/* ------------------------------------------------------------ hot reload -- */

#define LIVE_SEGMENT_DESC "videotestsrc is-live=true pattern=snow ! " \
  "video/x-raw,format=GRAY8,width=48,height=40,framerate=50/1 ! " \
  "queue leaky=downstream max-size-buffers=1 ! unetsegment name=seg model=%s " \
  "threads=1 post-messages=true %s ! fakesink sync=true"

/* Frames made after swap `k` (by frame number) have this foreground fraction
 * and frames before it the other, up to the next swap. */
static void
check_outputs_follow_swaps (Run * r, const gdouble * fg_after, guint n_swaps)
{
  guint i, k;

  for (i = 0; i < r->stats->len; i++) {
    Stat *s = &g_array_index (r->stats, Stat, i);
    gdouble want = fg_after[0];

    for (k = 0; k < n_swaps; k++)
      if (s->frame_number >= g_array_index (r->swap_frames, guint64, k))
        want = fg_after[k + 1];
    fail_unless (s->foreground == want, "frame %" G_GUINT64_FORMAT
        ": foreground %g, expected %g", s->frame_number, s->foreground, want);
  }
}

/* Waits for `k` swaps and then for a frame made after the last one. */
static void
wait_swap (Run * r, guint k)
{
  POLL_UNTIL (r, r->swaps->len >= k, 15000);
  fail_unless_equals_int (r->swaps->len, k);
  POLL_UNTIL (r, last_stat (r) && last_stat (r)->frame_number >
      g_array_index (r->swap_frames, guint64, k - 1), 15000);
  fail_unless (last_stat (r)->frame_number >
      g_array_index (r->swap_frames, guint64, k - 1));
}

GST_START_TEST (test_watch_model)
{
  gchar *path = tmp_path ("watched.safetensors");
  gchar *desc;
  Run r;
  gchar *data = NULL;
  gsize len = 0;
  gint fd;
  guint frames;
  const gdouble fg[] = { 0.0, 1.0, 0.0, 1.0 };

  save_constant_model (path, FALSE);
  desc = g_strdup_printf (LIVE_SEGMENT_DESC, path, "watch-model=true");
  run_init (&r, desc);
  fail_unless (gst_element_set_state (r.pipe, GST_STATE_PLAYING) !=
      GST_STATE_CHANGE_FAILURE);
  POLL_UNTIL (&r, r.stats->len >= 3, 15000);
  fail_unless (r.stats->len >= 3, "no frames");

  /* A checkpoint written mid-stream (temporary file + rename). */
  save_constant_model (path, TRUE);
  wait_swap (&r, 1);
  fail_unless_equals_string (g_ptr_array_index (r.swaps, 0), path);
  save_constant_model (path, FALSE);
  wait_swap (&r, 2);

  /* A writer that rewrites the file in place and stops half-way: a warning
   * at most, the model in use stays. */
  {
    g_autoptr (UnetModel) m = constant_model (TRUE);
    gchar *full = tmp_path ("full.safetensors");

    fail_unless (unet_model_save (m, full, NULL));
    fail_unless (g_file_get_contents (full, &data, &len, NULL));
    g_unlink (full);
    g_free (full);
  }
  fd = g_open (path, O_WRONLY | O_TRUNC, 0);
  fail_unless (fd >= 0);
  fail_unless (write (fd, data, len / 2) == (gssize) (len / 2));
  fail_unless (close (fd) == 0);
  POLL_UNTIL (&r, r.warnings >= 1, 15000);
  fail_unless_equals_int (r.warnings, 1);
  /* the stream goes on with the old model */
  frames = r.stats->len;
  POLL_UNTIL (&r, r.stats->len >= frames + 5, 15000);
  fail_unless (r.stats->len >= frames + 5);
  fail_unless_equals_int (r.swaps->len, 2);

  /* ... and the next complete checkpoint is taken. */
  save_constant_model (path, TRUE);
  wait_swap (&r, 3);

  fail_unless_equals_int (r.errors, 0);
  fail_unless_equals_int (r.warnings, 1);
  check_outputs_follow_swaps (&r, fg, 3);

  run_clear (&r);
  g_free (data);
  g_unlink (path);
  g_free (path);
  g_free (desc);
}

GST_END_TEST;

/* The "reload" action signal, without a file watch. */
GST_START_TEST (test_reload_signal)
{
  gchar *path = tmp_path ("signalled.safetensors");
  gchar *desc;
  Run r;
  GstElement *seg;
  gboolean ok = FALSE;
  guint frames;
  const gdouble fg[] = { 0.0, 1.0 };

  save_constant_model (path, FALSE);
  desc = g_strdup_printf (LIVE_SEGMENT_DESC, path, "");
  run_init (&r, desc);
  seg = gst_bin_get_by_name (GST_BIN (r.pipe), "seg");
  fail_unless (gst_element_set_state (r.pipe, GST_STATE_PLAYING) !=
      GST_STATE_CHANGE_FAILURE);
  POLL_UNTIL (&r, r.stats->len >= 3, 15000);
  fail_unless (r.stats->len >= 3, "no frames");

  /* without the watch, a new file alone changes nothing */
  save_constant_model (path, TRUE);
  frames = r.stats->len;
  POLL_UNTIL (&r, r.stats->len >= frames + 5, 15000);
  fail_unless_equals_int (r.swaps->len, 0);

  g_signal_emit_by_name (seg, "reload", &ok);
  fail_unless (ok);
  wait_swap (&r, 1);

  /* a broken file: FALSE, a warning, the model stays */
  fail_unless (g_file_set_contents (path, "\x10\0\0\0", 4, NULL));
  g_signal_emit_by_name (seg, "reload", &ok);
  fail_unless (!ok);
  frames = r.stats->len;
  POLL_UNTIL (&r, r.warnings >= 1 && r.stats->len >= frames + 3, 15000);
  fail_unless_equals_int (r.warnings, 1);
  fail_unless_equals_int (r.swaps->len, 1);
  fail_unless_equals_int (r.errors, 0);
  check_outputs_follow_swaps (&r, fg, 1);

  gst_object_unref (seg);
  run_clear (&r);
  g_unlink (path);
  g_free (path);
  g_free (desc);
}

GST_END_TEST;

static Suite *
live_segment_suite (void)
{
  Suite *s = suite_create ("live-segment");
  TCase *tc = tcase_create ("general");

  tcase_set_timeout (tc, 120);
  suite_add_tcase (s, tc);
  tcase_add_test (tc, test_fast_camera_slow_model);
  tcase_add_test (tc, test_watch_model);
  tcase_add_test (tc, test_reload_signal);
  return s;
}

int
main (int argc, char **argv)
{
  int ret;

  gst_check_init (&argc, &argv);
  tmpdir = g_dir_make_tmp ("live-segment-XXXXXX", NULL);
  g_assert (tmpdir != NULL);
  ret = gst_check_run_suite (live_segment_suite (), "live-segment",
      __FILE__);
  g_rmdir (tmpdir);
  g_free (tmpdir);
  return ret;
}
