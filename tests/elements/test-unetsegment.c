/* GstHarness tests of unetsegment: every input format x output mode against the
 * engine's segmenter, 1x1 frames, batching across frames and draining at EOS,
 * statistics messages, the LATENCY query, bad and missing models (state change
 * fails, element reusable), and swapping the model while PLAYING. Models are made
 * here with the engine API (small random valid-padded nets). */
#include <gst/check/gstcheck.h>
#include <gst/check/gstharness.h>
#include <glib/gstdio.h>
#include <math.h>
#include <string.h>
#include <unistd.h>

#include "unet.h"

static gchar *tmpdir;
static gchar *model_a, *model_b, *model_bad;

static gchar *
make_model_full (const gchar *name, guint64 seed, gint classes, gint depth,
    gint base)
{
  UnetConfig cfg = { 1, classes, depth, base, UNET_PADDING_VALID, FALSE, 0.0 };
  g_autoptr (UnetModel) m = unet_model_new (&cfg, NULL);
  gchar *path = g_build_filename (tmpdir, name, NULL);

  fail_unless (m != NULL);
  unet_model_init_weights (m, seed);
  /* Raw values in: the test frames are already in 0..1 or small integers. */
  unet_model_set_metadata (m, "unet.normalization",
      "{\"mode\":\"range\",\"min\":0,\"max\":255}");
  fail_unless (unet_model_save (m, path, NULL));
  return path;
}

static gchar *
make_model_sized (const gchar *name, guint64 seed, gint classes, gint base)
{
  return make_model_full (name, seed, classes, 2, base);
}

static gchar *
make_model_depth (const gchar *name, gint depth)
{
  return make_model_full (name, 1, 2, depth, 4);
}

static gchar *
make_model (const gchar *name, guint64 seed, gint classes)
{
  return make_model_sized (name, seed, classes, 4);
}

static void
setup_models (void)
{
  tmpdir = g_dir_make_tmp ("unetsegment-XXXXXX", NULL);
  fail_unless (tmpdir != NULL);
  model_a = make_model ("a.safetensors", 1, 2);
  model_b = make_model ("b.safetensors", 2, 3);
  model_bad = g_build_filename (tmpdir, "bad.safetensors", NULL);
  fail_unless (g_file_set_contents (model_bad, "\x10\0\0\0\0\0\0\0{not json}", 18,
          NULL));
}

static void
teardown_models (void)
{
  g_unlink (model_a);
  g_unlink (model_b);
  g_unlink (model_bad);
  g_rmdir (tmpdir);
  g_free (model_a);
  g_free (model_b);
  g_free (model_bad);
  g_free (tmpdir);
}

static const gchar *formats[] = { "GRAY8", "GRAY16_LE", "GRAY32F" };
static const gint bpps[] = { 1, 2, 4 };
static const UnetPixelFormat pixfmts[] = { UNET_PIXEL_U8, UNET_PIXEL_U16, UNET_PIXEL_F32 };
static const gchar *outputs[] = { "labels", "probabilities", "overlay", "instances" };
static const gchar *out_formats[] = { "GRAY8", "GRAY32F", "RGBA", "GRAY32_LE" };
static const gint out_bpps[] = { 1, 4, 4, 4 };

/* A frame with GStreamer's default stride (rows rounded up to 4 bytes). */
static GstBuffer *
make_frame (gint fi, gint w, gint h, guint seed, guint8 **dense)
{
  gint stride = GST_ROUND_UP_4 (w * bpps[fi]), x, y;
  GstBuffer *buf = gst_buffer_new_allocate (NULL, (gsize) stride * h, NULL);
  GstMapInfo map;
  GRand *r = g_rand_new_with_seed (seed);

  *dense = g_malloc ((gsize) w * h * bpps[fi]);
  gst_buffer_map (buf, &map, GST_MAP_WRITE);
  memset (map.data, 0xab, map.size);
  for (y = 0; y < h; y++) {
    for (x = 0; x < w; x++) {
      guint8 *d = map.data + (gsize) y * stride + (gsize) x * bpps[fi];
      /* Smooth blobs plus noise, 0..255 in every format. */
      gdouble v = 127.5 + 100 * sin (x * 0.3) * cos (y * 0.25)
          + g_rand_double_range (r, -20, 20);
      v = CLAMP (v, 0, 255);
      if (fi == 0)
        *d = (guint8) v;
      else if (fi == 1)
        *(guint16 *) d = (guint16) v;
      else
        *(gfloat *) d = (gfloat) v;
      memcpy (*dense + ((gsize) y * w + x) * bpps[fi], d, bpps[fi]);
    }
  }
  gst_buffer_unmap (buf, &map);
  g_rand_free (r);
  return buf;
}

/* Liveness is read when caps arrive, so it is set before the caps. */
static GstHarness *
new_harness_live (const gchar *fmt, gint w, gint h, const gchar *props,
    gboolean live)
{
  /* One thread: small frames; OpenMP barriers are slow on a busy machine. */
  gchar *desc = g_strdup_printf ("unetsegment threads=1 %s", props);
  GstHarness *hr = gst_harness_new_parse (desc);
  gchar *caps = g_strdup_printf ("video/x-raw,format=%s,width=%d,height=%d,"
      "framerate=10/1", fmt, w, h);

  gst_harness_set_live (hr, live);
  gst_harness_set_src_caps_str (hr, caps);
  g_free (caps);
  g_free (desc);
  return hr;
}

static GstHarness *
new_harness (const gchar *fmt, gint w, gint h, const gchar *props)
{
  return new_harness_live (fmt, w, h, props, TRUE);
}

/* Every input format x output mode: caps, size, timestamps, and the pixels equal
 * the engine's result for the same frame (so strides and layouts are right). */
GST_START_TEST (test_formats_and_outputs)
{
  gint fi, oi, w = 37, h = 23;

  for (fi = 0; fi < 3; fi++) {
    for (oi = 0; oi < 4; oi++) {
      gchar *props = g_strdup_printf ("model=%s output=%s tile-size=0 "
          "batch-size=2", model_a, outputs[oi]);
      GstHarness *hr = new_harness (formats[fi], w, h, props);
      guint8 *dense;
      GstBuffer *in = make_frame (fi, w, h, 7 + fi, &dense), *out;
      GstCaps *caps;
      GstMapInfo map;
      UnetSegmenterOptions opts;
      g_autoptr (UnetModel) m = unet_model_load (model_a, NULL);
      g_autoptr (UnetSegmenter) seg = NULL;
      UnetSegmentResult *r;
      gint ostride = GST_ROUND_UP_4 (w * out_bpps[oi]), y;

      GST_BUFFER_PTS (in) = 5 * GST_SECOND;
      GST_BUFFER_DURATION (in) = GST_SECOND / 10;
      fail_unless_equals_int (gst_harness_push (hr, in), GST_FLOW_OK);
      out = gst_harness_pull (hr);
      fail_unless (out != NULL);
      caps = gst_pad_get_current_caps (hr->sinkpad);
      fail_unless_equals_string (gst_structure_get_string (gst_caps_get_structure
              (caps, 0), "format"), out_formats[oi]);
      gst_caps_unref (caps);
      fail_unless_equals_uint64 (GST_BUFFER_PTS (out), 5 * GST_SECOND);
      fail_unless_equals_uint64 (GST_BUFFER_DURATION (out), GST_SECOND / 10);
      fail_unless_equals_int (gst_buffer_get_size (out), ostride * h);

      unet_segmenter_options_init (&opts);
      opts.outputs = UNET_SEGMENT_LABELS | UNET_SEGMENT_PROBABILITY |
          UNET_SEGMENT_INSTANCES;
      opts.batch_size = 2;
      seg = unet_segmenter_new (m, &opts, NULL);
      fail_unless (seg != NULL);
      r = unet_segmenter_process (seg, pixfmts[fi], dense, w, h,
          (gsize) w * bpps[fi], NULL);
      fail_unless (r != NULL);

      gst_buffer_map (out, &map, GST_MAP_READ);
      for (y = 0; y < h; y++) {
        const guint8 *row = map.data + (gsize) y * ostride;
        gsize o = (gsize) y * w;
        if (oi == 0)
          fail_unless (memcmp (row, r->labels + o, w) == 0);
        else if (oi == 1)
          fail_unless (memcmp (row, r->probability + o, w * 4) == 0);
        else if (oi == 3)
          fail_unless (memcmp (row, r->instances + o, w * 4) == 0);
        else {
          gint x;
          for (x = 0; x < w; x++) {
            /* Background pixels are gray (R == G == B), opaque. */
            fail_unless_equals_int (row[4 * x + 3], 255);
            if (r->labels[o + x] == 0)
              fail_unless (row[4 * x] == row[4 * x + 1]
                  && row[4 * x + 1] == row[4 * x + 2]);
          }
        }
      }
      gst_buffer_unmap (out, &map);
      gst_buffer_unref (out);
      unet_segment_result_free (r);
      g_free (dense);
      g_free (props);
      gst_harness_teardown (hr);
    }
  }
}

GST_END_TEST;

GST_START_TEST (test_one_pixel)
{
  GstHarness *hr;
  gchar *props = g_strdup_printf ("model=%s output=probabilities", model_a);
  GstBuffer *out;
  GstMapInfo map;
  gfloat p;

  hr = new_harness ("GRAY32F", 1, 1, props);
  out = gst_harness_push_and_pull (hr, gst_buffer_new_wrapped (g_memdup2
          ((gfloat[]) { 100.0f}, 4), 4));
  fail_unless (out != NULL);
  gst_buffer_map (out, &map, GST_MAP_READ);
  fail_unless_equals_int (map.size, 4);
  memcpy (&p, map.data, 4);
  fail_unless (p >= 0.0f && p <= 1.0f);
  gst_buffer_unmap (out, &map);
  gst_buffer_unref (out);
  gst_harness_teardown (hr);
  g_free (props);
}

GST_END_TEST;

/* Not live: tiles of consecutive small frames share a batch; frames come out in
 * order, the rest at EOS. */
GST_START_TEST (test_batch_across_frames)
{
  gchar *props = g_strdup_printf ("model=%s batch-size=4", model_a);
  GstHarness *hr = new_harness_live ("GRAY8", 16, 12, props, FALSE);
  gint i;
  guint8 *dense;

  for (i = 0; i < 6; i++) {
    GstBuffer *b = make_frame (0, 16, 12, i, &dense);
    g_free (dense);
    GST_BUFFER_PTS (b) = i * GST_SECOND;
    fail_unless_equals_int (gst_harness_push (hr, b), GST_FLOW_OK);
  }
  /* One tile per frame, batch of 4: the first 4 are out, 2 wait. */
  fail_unless_equals_int (gst_harness_buffers_in_queue (hr), 4);
  fail_unless (gst_harness_push_event (hr, gst_event_new_eos ()));
  fail_unless_equals_int (gst_harness_buffers_in_queue (hr), 6);
  for (i = 0; i < 6; i++) {
    GstBuffer *b = gst_harness_pull (hr);
    fail_unless_equals_uint64 (GST_BUFFER_PTS (b), i * GST_SECOND);
    gst_buffer_unref (b);
  }
  gst_harness_teardown (hr);
  g_free (props);
}

GST_END_TEST;

/* Live: every frame is finished at once. */
GST_START_TEST (test_live_no_wait)
{
  gchar *props = g_strdup_printf ("model=%s batch-size=4", model_a);
  GstHarness *hr = new_harness_live ("GRAY8", 16, 12, props, TRUE);
  guint8 *dense;
  GstBuffer *b;
  GstClockTime min = 0;

  b = make_frame (0, 16, 12, 0, &dense);
  g_free (dense);
  fail_unless_equals_int (gst_harness_push (hr, b), GST_FLOW_OK);
  fail_unless_equals_int (gst_harness_buffers_in_queue (hr), 1);
  /* The LATENCY query reports the measured processing time. */
  min = gst_harness_query_latency (hr);
  fail_unless (min > 0);
  gst_harness_teardown (hr);
  g_free (props);
}

GST_END_TEST;

GST_START_TEST (test_stats_messages)
{
  gchar *props = g_strdup_printf ("model=%s post-messages=true output=instances",
      model_a);
  GstHarness *hr = new_harness ("GRAY8", 40, 30, props);
  GstBus *bus = gst_bus_new ();
  GstMessage *msg;
  const GstStructure *s;
  guint8 *dense;
  GstBuffer *b, *out;
  guint count;
  gdouble frac, area;
  guint64 t, pts;

  gst_element_set_bus (hr->element, bus);
  b = make_frame (0, 40, 30, 3, &dense);
  g_free (dense);
  GST_BUFFER_PTS (b) = 42;
  out = gst_harness_push_and_pull (hr, b);
  gst_buffer_unref (out);
  msg = gst_bus_pop_filtered (bus, GST_MESSAGE_ELEMENT);
  fail_unless (msg != NULL);
  s = gst_message_get_structure (msg);
  fail_unless (gst_structure_has_name (s, "unetsegment-stats"));
  fail_unless (gst_structure_get_uint (s, "object-count", &count));
  fail_unless (gst_structure_get_double (s, "foreground-fraction", &frac));
  fail_unless (gst_structure_get_double (s, "mean-object-area", &area));
  fail_unless (gst_structure_get_uint64 (s, "processing-time", &t));
  fail_unless (gst_structure_get_uint64 (s, "pts", &pts));
  fail_unless_equals_uint64 (pts, 42);
  fail_unless (frac >= 0.0 && frac <= 1.0);
  fail_unless (t > 0);
  /* Both come from one integer foreground pixel count (<= 1200) in double:
   * 1e-6 is many ulp of 1200, an off-by-one pixel is 1. */
  if (count > 0)
    fail_unless (fabs (area * count - frac * 40 * 30) < 1e-6);
  gst_message_unref (msg);
  gst_element_set_bus (hr->element, NULL);
  gst_object_unref (bus);
  gst_harness_teardown (hr);
  g_free (props);
}

GST_END_TEST;

/* `output` (and `probability-class`) changed while PLAYING: GObject does not
 * enforce "changeable in NULL/READY only", so the element keeps the values it
 * started with everywhere — new caps after the change (a new frame size here)
 * still carry the negotiated format and the frames are filled in it (the
 * change used to make transform_caps and the writers disagree: heap overflow),
 * and a model reloaded meanwhile is built for the same output. The change is
 * reported and takes effect at the next start. */
GST_START_TEST (test_output_change_while_playing)
{
  gint from, to;

  for (from = 0; from < 4; from++) {
    for (to = 0; to < 4; to++) {
      gchar *props;
      GstHarness *hr;
      GstElement *e;
      GstBus *bus = gst_bus_new ();
      GstMessage *msg;
      gint size;

      if (from == to)
        continue;
      props = g_strdup_printf ("model=%s output=%s", model_a, outputs[from]);
      hr = new_harness ("GRAY8", 16, 12, props);
      e = gst_harness_find_element (hr, "unetsegment");
      gst_element_set_bus (hr->element, bus);
      for (size = 0; size < 3; size++) {
        gint w = 16 + 5 * size, h = 12 + 3 * size, y;
        gchar *caps = g_strdup_printf ("video/x-raw,format=GRAY8,width=%d,"
            "height=%d,framerate=10/1", w, h);
        guint8 *dense;
        GstBuffer *in, *out;
        GstCaps *c;
        GstMapInfo map;
        g_autoptr (UnetModel) m = unet_model_load (model_a, NULL);
        g_autoptr (UnetSegmenter) seg = NULL;
        UnetSegmenterOptions opts;
        UnetSegmentResult *r;
        gint ostride = GST_ROUND_UP_4 (w * out_bpps[from]);

        if (size == 1) {
          gst_util_set_object_arg (G_OBJECT (e), "output", outputs[to]);
          g_object_set (e, "probability-class", 0, NULL);
        } else if (size == 2) {
          /* a reload keeps the negotiated output too */
          gboolean ok = FALSE;
          g_signal_emit_by_name (e, "reload", &ok);
          fail_unless (ok);
        }
        gst_harness_set_src_caps_str (hr, caps);
        g_free (caps);
        in = make_frame (0, w, h, 11 + size, &dense);
        out = gst_harness_push_and_pull (hr, in);
        fail_unless (out != NULL);
        c = gst_pad_get_current_caps (hr->sinkpad);
        fail_unless_equals_string (gst_structure_get_string
            (gst_caps_get_structure (c, 0), "format"), out_formats[from]);
        gst_caps_unref (c);
        fail_unless_equals_int (gst_buffer_get_size (out), ostride * h);

        unet_segmenter_options_init (&opts);
        opts.outputs = UNET_SEGMENT_LABELS | UNET_SEGMENT_PROBABILITY |
            UNET_SEGMENT_INSTANCES;
        opts.probability_class = 1;
        seg = unet_segmenter_new (m, &opts, NULL);
        r = unet_segmenter_process (seg, UNET_PIXEL_U8, dense, w, h, w, NULL);
        fail_unless (r != NULL);
        gst_buffer_map (out, &map, GST_MAP_READ);
        for (y = 0; y < h && from != 2; y++) {
          const guint8 *row = map.data + (gsize) y * ostride;
          gsize o = (gsize) y * w;
          if (from == 0)
            fail_unless (memcmp (row, r->labels + o, w) == 0);
          else if (from == 1)
            fail_unless (memcmp (row, r->probability + o, w * 4) == 0);
          else
            fail_unless (memcmp (row, r->instances + o, w * 4) == 0);
        }
        gst_buffer_unmap (out, &map);
        gst_buffer_unref (out);
        unet_segment_result_free (r);
        g_free (dense);
      }
      msg = gst_bus_pop_filtered (bus, GST_MESSAGE_WARNING);
      fail_unless (msg != NULL, "no warning for a change while running");
      gst_message_unref (msg);
      gst_element_set_bus (hr->element, NULL);
      gst_object_unref (bus);
      gst_object_unref (e);
      gst_harness_teardown (hr);
      g_free (props);
    }
  }
}

GST_END_TEST;

/* A model with 300 classes whose head makes class 257 win everywhere: 8-bit
 * labels cannot hold it (257 used to come out as class 1), so output=labels and
 * overlay refuse the model with an error naming the limit, and instances and
 * statistics of foreground class 1 find nothing. */
GST_START_TEST (test_many_classes)
{
  UnetConfig cfg = { 1, 300, 2, 4, UNET_PADDING_VALID, FALSE, 0.0 };
  g_autoptr (UnetModel) m = unet_model_new (&cfg, NULL);
  gchar *path = g_build_filename (tmpdir, "many.safetensors", NULL);
  gint shape[4], nd, i;
  gfloat *w, *b;
  const gchar *refused[] = { "labels", "overlay" };

  fail_unless (m != NULL);
  unet_model_init_weights (m, 5);
  w = unet_model_get_tensor (m, "head.weight", shape, &nd);
  b = unet_model_get_tensor (m, "head.bias", NULL, NULL);
  fail_unless (w != NULL && b != NULL && shape[0] == 300);
  memset (w, 0, sizeof (gfloat) * shape[0] * shape[1]);
  for (i = 0; i < 300; i++)
    b[i] = i == 257 ? 10.0f : 0.0f;
  fail_unless (unet_model_save (m, path, NULL));

  for (i = 0; i < 2; i++) {
    GstElement *e = gst_element_factory_make ("unetsegment", NULL);
    GstBus *bus = gst_bus_new ();
    GstMessage *msg;
    GError *err = NULL;

    gst_element_set_bus (e, bus);
    g_object_set (e, "model", path, NULL);
    gst_util_set_object_arg (G_OBJECT (e), "output", refused[i]);
    fail_unless_equals_int (gst_element_set_state (e, GST_STATE_PAUSED),
        GST_STATE_CHANGE_FAILURE);
    msg = gst_bus_pop_filtered (bus, GST_MESSAGE_ERROR);
    fail_unless (msg != NULL);
    gst_message_parse_error (msg, &err, NULL);
    fail_unless (strstr (err->message, "300 classes") != NULL
        && strstr (err->message, "256") != NULL, "%s", err->message);
    g_error_free (err);
    gst_message_unref (msg);
    gst_element_set_state (e, GST_STATE_NULL);
    gst_element_set_bus (e, NULL);
    gst_object_unref (bus);
    gst_object_unref (e);
  }

  {
    gchar *props = g_strdup_printf ("model=%s output=instances "
        "foreground-class=1 post-messages=true", path);
    GstHarness *hr = new_harness ("GRAY8", 20, 16, props);
    GstBus *bus = gst_bus_new ();
    GstMessage *msg;
    guint8 *dense;
    GstBuffer *out;
    GstMapInfo map;
    guint count = 99;
    gsize k;

    gst_element_set_bus (hr->element, bus);
    out = gst_harness_push_and_pull (hr, make_frame (0, 20, 16, 1, &dense));
    fail_unless (out != NULL);
    gst_buffer_map (out, &map, GST_MAP_READ);
    for (k = 0; k < map.size; k++)
      fail_unless_equals_int (map.data[k], 0);
    gst_buffer_unmap (out, &map);
    gst_buffer_unref (out);
    msg = gst_bus_pop_filtered (bus, GST_MESSAGE_ELEMENT);
    fail_unless (msg != NULL);
    fail_unless (gst_structure_get_uint (gst_message_get_structure (msg),
            "object-count", &count));
    fail_unless_equals_int (count, 0);
    gst_message_unref (msg);
    g_free (dense);
    gst_element_set_bus (hr->element, NULL);
    gst_object_unref (bus);
    gst_harness_teardown (hr);
    g_free (props);
  }
  g_unlink (path);
  g_free (path);
}

GST_END_TEST;

/* The model file rewritten in place (O_TRUNC + write, as `cp` does; every third
 * time stopped half-way) over and over while the element runs with watch-model
 * and is told to reload: each load takes the new file or warns and keeps the
 * old model; never a signal (the loader used to map the file: SIGBUS when it
 * shrank), never an error, and the stream never stops. Bounded in time. */
typedef struct
{
  gchar *path;
  gchar *versions[2];
  gsize sizes[2];
  gint stop;
  guint rewrites;
} Rewriter;

static gpointer
rewriter_thread (gpointer data)
{
  Rewriter *rw = data;
  guint i;

  for (i = 0; !g_atomic_int_get (&rw->stop); i++) {
    const gchar *p = rw->versions[i % 2];
    gsize size = rw->sizes[i % 2], end = i % 3 == 2 ? size / 2 : size, off;
    FILE *f = fopen (rw->path, "r+");

    fail_unless (f != NULL);
    fail_unless (ftruncate (fileno (f), 0) == 0);
    for (off = 0; off < end; off += 4096)
      fail_unless (fwrite (p + off, MIN (end - off, 4096), 1, f) == 1
          && fflush (f) == 0);
    fclose (f);
    rw->rewrites++;
    g_usleep (1000);
  }
  return NULL;
}

GST_START_TEST (test_model_rewritten_in_place)
{
  gchar *a = make_model_sized ("rw-a.safetensors", 3, 2, 16);
  gchar *b = make_model_sized ("rw-b.safetensors", 4, 2, 12);
  Rewriter rw = { g_build_filename (tmpdir, "rw.safetensors", NULL) };
  gchar *props;
  GstHarness *hr;
  GstElement *e;
  GstBus *bus = gst_bus_new ();
  GstMessage *msg;
  GThread *t;
  gint64 end;
  guint frames = 0, reloads = 0;
  gboolean ok = FALSE;

  fail_unless (g_file_get_contents (a, &rw.versions[0], &rw.sizes[0], NULL));
  fail_unless (g_file_get_contents (b, &rw.versions[1], &rw.sizes[1], NULL));
  fail_unless (g_file_set_contents (rw.path, rw.versions[0], rw.sizes[0], NULL));
  props = g_strdup_printf ("model=%s watch-model=true", rw.path);
  hr = new_harness ("GRAY8", 16, 12, props);
  e = gst_harness_find_element (hr, "unetsegment");
  gst_element_set_bus (hr->element, bus);

  t = g_thread_new ("rewriter", rewriter_thread, &rw);
  end = g_get_monotonic_time () + 2 * G_USEC_PER_SEC;
  while (g_get_monotonic_time () < end) {
    guint8 *dense;
    GstBuffer *out;

    g_signal_emit_by_name (e, "reload", &ok);
    reloads += ok;
    out = gst_harness_push_and_pull (hr, make_frame (0, 16, 12, frames, &dense));
    fail_unless (out != NULL);
    gst_buffer_unref (out);
    g_free (dense);
    frames++;
  }
  g_atomic_int_set (&rw.stop, 1);
  g_thread_join (t);
  GST_INFO ("%u rewrites, %u frames, %u reloads taken", rw.rewrites, frames,
      reloads);
  fail_unless (rw.rewrites > 10);
  msg = gst_bus_pop_filtered (bus, GST_MESSAGE_ERROR);
  fail_unless (msg == NULL);

  /* the writer gone, a complete file loads */
  fail_unless (g_file_set_contents (rw.path, rw.versions[1], rw.sizes[1], NULL));
  g_signal_emit_by_name (e, "reload", &ok);
  fail_unless (ok);

  gst_element_set_bus (hr->element, NULL);
  gst_object_unref (bus);
  gst_object_unref (e);
  gst_harness_teardown (hr);
  g_unlink (rw.path);
  g_unlink (a);
  g_unlink (b);
  g_free (rw.path);
  g_free (rw.versions[0]);
  g_free (rw.versions[1]);
  g_free (a);
  g_free (b);
  g_free (props);
}

GST_END_TEST;

/* A model whose smallest legal tile needs more activations than memory-budget:
 * the tile is used (nothing smaller is legal), and a warning says so — once per
 * frame size; with a budget that fits, no warning. */
GST_START_TEST (test_memory_budget_exceeded)
{
  gchar *deep = make_model_depth ("deep.safetensors", 4);
  gint budget;

  for (budget = 1; budget <= 1024; budget += 1023) {
    gchar *props = g_strdup_printf ("model=%s memory-budget=%d batch-size=2",
        deep, budget);
    GstHarness *hr = new_harness ("GRAY8", 24, 20, props);
    GstBus *bus = gst_bus_new ();
    GstMessage *msg;
    gint i;

    gst_element_set_bus (hr->element, bus);
    for (i = 0; i < 2; i++) {
      guint8 *dense;
      GstBuffer *out = gst_harness_push_and_pull (hr,
          make_frame (0, 24, 20, i, &dense));
      fail_unless (out != NULL);
      gst_buffer_unref (out);
      g_free (dense);
    }
    msg = gst_bus_pop_filtered (bus, GST_MESSAGE_WARNING);
    if (budget == 1) {
      GError *err = NULL;
      fail_unless (msg != NULL, "no warning for an exceeded memory-budget");
      gst_message_parse_warning (msg, &err, NULL);
      fail_unless (strstr (err->message, "memory-budget (1 MiB) is exceeded")
          != NULL, "%s", err->message);
      g_error_free (err);
      gst_message_unref (msg);
      /* once per frame size */
      msg = gst_bus_pop_filtered (bus, GST_MESSAGE_WARNING);
    }
    fail_unless (msg == NULL);
    gst_element_set_bus (hr->element, NULL);
    gst_object_unref (bus);
    gst_harness_teardown (hr);
    g_free (props);
  }
  g_unlink (deep);
  g_free (deep);
}

GST_END_TEST;

/* A missing or corrupt model fails the state change with an error naming the
 * file; the element then works with a good model. */
static void
check_bad_model (const gchar *path, const gchar *expect_in_message)
{
  GstElement *pipe = gst_parse_launch ("appsrc name=src caps=\"video/x-raw,"
      "format=GRAY8,width=8,height=8,framerate=1/1\" ! unetsegment threads=1 name=seg ! "
      "appsink name=sink sync=false", NULL);
  GstElement *seg = gst_bin_get_by_name (GST_BIN (pipe), "seg");
  GstElement *src = gst_bin_get_by_name (GST_BIN (pipe), "src");
  GstElement *sink = gst_bin_get_by_name (GST_BIN (pipe), "sink");
  GstBus *bus = gst_element_get_bus (pipe);
  GstMessage *msg;
  GError *err = NULL;
  GstSample *sample;
  GstBuffer *buf;
  GstFlowReturn flow;

  if (path)
    g_object_set (seg, "model", path, NULL);
  fail_unless_equals_int (gst_element_set_state (pipe, GST_STATE_PAUSED),
      GST_STATE_CHANGE_FAILURE);
  msg = gst_bus_pop_filtered (bus, GST_MESSAGE_ERROR);
  fail_unless (msg != NULL);
  gst_message_parse_error (msg, &err, NULL);
  GST_INFO ("error: %s", err->message);
  fail_unless (strstr (err->message, expect_in_message) != NULL, "%s",
      err->message);
  g_error_free (err);
  gst_message_unref (msg);
  gst_element_set_state (pipe, GST_STATE_NULL);

  /* Reusable. */
  g_object_set (seg, "model", model_a, NULL);
  fail_unless (gst_element_set_state (pipe, GST_STATE_PLAYING) !=
      GST_STATE_CHANGE_FAILURE);
  buf = gst_buffer_new_allocate (NULL, 64, NULL);
  g_signal_emit_by_name (src, "push-buffer", buf, &flow);
  gst_buffer_unref (buf);
  fail_unless_equals_int (flow, GST_FLOW_OK);
  /* Not live: the frame may wait for a batch to fill; EOS drains. */
  g_signal_emit_by_name (src, "end-of-stream", &flow);
  g_signal_emit_by_name (sink, "pull-sample", &sample);
  fail_unless (sample != NULL);
  gst_sample_unref (sample);
  gst_element_set_state (pipe, GST_STATE_NULL);
  gst_object_unref (bus);
  gst_object_unref (seg);
  gst_object_unref (src);
  gst_object_unref (sink);
  gst_object_unref (pipe);
}

GST_START_TEST (test_missing_model)
{
  gchar *missing = g_build_filename (tmpdir, "does-not-exist.safetensors", NULL);

  check_bad_model (NULL, "model");
  check_bad_model (missing, missing);
  check_bad_model (model_bad, model_bad);
  g_free (missing);
}

GST_END_TEST;

/* Changing `model` while PLAYING: the next frame uses the new model (3 classes
 * here, so labels up to 2 can appear only with it); a bad file keeps the old one
 * and posts a warning. */
GST_START_TEST (test_model_swap)
{
  gchar *props = g_strdup_printf ("model=%s output=probabilities "
      "probability-class=1", model_a);
  GstHarness *hr = new_harness ("GRAY8", 24, 20, props);
  GstBus *bus = gst_bus_new ();
  guint8 *dense;
  GstBuffer *b, *out;
  GstMessage *msg;
  gchar *path;
  g_autoptr (UnetModel) mb = unet_model_load (model_b, NULL);
  UnetSegmenterOptions opts;
  g_autoptr (UnetSegmenter) seg = NULL;
  UnetSegmentResult *r;
  GstMapInfo map;
  GstElement *e = gst_harness_find_element (hr, "unetsegment");

  gst_element_set_bus (hr->element, bus);
  b = make_frame (0, 24, 20, 9, &dense);
  out = gst_harness_push_and_pull (hr, gst_buffer_copy (b));
  gst_buffer_unref (out);

  g_object_set (e, "model", model_b, NULL);
  g_object_get (e, "model", &path, NULL);
  fail_unless_equals_string (path, model_b);
  g_free (path);
  out = gst_harness_push_and_pull (hr, gst_buffer_copy (b));
  unet_segmenter_options_init (&opts);
  opts.outputs = UNET_SEGMENT_PROBABILITY;
  seg = unet_segmenter_new (mb, &opts, NULL);
  r = unet_segmenter_process (seg, UNET_PIXEL_U8, dense, 24, 20, 24, NULL);
  gst_buffer_map (out, &map, GST_MAP_READ);
  fail_unless (memcmp (map.data, r->probability, 24 * 20 * 4) == 0);
  gst_buffer_unmap (out, &map);
  gst_buffer_unref (out);
  unet_segment_result_free (r);

  /* A bad file: warning, model unchanged, still working. */
  g_object_set (e, "model", model_bad, NULL);
  msg = gst_bus_pop_filtered (bus, GST_MESSAGE_WARNING);
  fail_unless (msg != NULL);
  gst_message_unref (msg);
  g_object_get (e, "model", &path, NULL);
  fail_unless_equals_string (path, model_b);
  g_free (path);
  out = gst_harness_push_and_pull (hr, gst_buffer_copy (b));
  fail_unless (out != NULL);
  gst_buffer_unref (out);

  gst_buffer_unref (b);
  g_free (dense);
  gst_element_set_bus (hr->element, NULL);
  gst_object_unref (bus);
  gst_object_unref (e);
  gst_harness_teardown (hr);
  g_free (props);
}

GST_END_TEST;

/* device=cuda where CUDA is not built or no GPU exists: a clear error. */
GST_START_TEST (test_cuda_unavailable)
{
  GstElement *e = gst_element_factory_make ("unetsegment", NULL);
  GstBus *bus = gst_bus_new ();
  GstStateChangeReturn ret;
  GstMessage *msg;

  gst_element_set_bus (e, bus);
  gst_util_set_object_arg (G_OBJECT (e), "device", "cuda");
  g_object_set (e, "model", model_a, NULL);
  ret = gst_element_set_state (e, GST_STATE_PAUSED);
  if (ret == GST_STATE_CHANGE_FAILURE) {
    GError *err = NULL;
    msg = gst_bus_pop_filtered (bus, GST_MESSAGE_ERROR);
    fail_unless (msg != NULL);
    gst_message_parse_error (msg, &err, NULL);
    fail_unless (strstr (err->message, "cuda") != NULL
        || strstr (err->message, "CUDA") != NULL, "%s", err->message);
    g_error_free (err);
    gst_message_unref (msg);
  }
  gst_element_set_state (e, GST_STATE_NULL);
  gst_element_set_bus (e, NULL);
  gst_object_unref (bus);
  gst_object_unref (e);
}

GST_END_TEST;

/* precision=bf16 on the CPU: a warning saying it is slower and why exactly when the
 * engine says so for this CPU (no AMX); none for fp32. */
GST_START_TEST (test_cpu_precision_warning)
{
  const gchar *precisions[2] = { "fp32", "bf16" };
  gchar *slower = unet_cpu_precision_slower (UNET_PRECISION_BF16);
  gchar *fp32 = unet_cpu_precision_slower (UNET_PRECISION_FP32);

  fail_unless (fp32 == NULL);
  for (gint i = 0; i < 2; i++) {
    GstElement *e = gst_element_factory_make ("unetsegment", NULL);
    GstBus *bus = gst_bus_new ();
    GstMessage *msg;

    gst_element_set_bus (e, bus);
    gst_util_set_object_arg (G_OBJECT (e), "device", "cpu");
    gst_util_set_object_arg (G_OBJECT (e), "precision", precisions[i]);
    g_object_set (e, "model", model_a, NULL);
    fail_unless (gst_element_set_state (e, GST_STATE_PAUSED)
        != GST_STATE_CHANGE_FAILURE);
    msg = gst_bus_pop_filtered (bus, GST_MESSAGE_WARNING);
    if (i == 1 && slower != NULL) {
      GError *err = NULL;
      fail_unless (msg != NULL);
      gst_message_parse_warning (msg, &err, NULL);
      fail_unless_equals_string (err->message, slower);
      /* AVX-512 without AMX: slower; below AVX-512: computed in fp32 */
      fail_unless ((strstr (err->message, "slower than fp32") != NULL
              && strstr (err->message, "AMX") != NULL)
          || (strstr (err->message, "not available on this CPU") != NULL
              && strstr (err->message, "computes in fp32") != NULL), "%s",
          err->message);
      g_error_free (err);
    } else {
      fail_unless (msg == NULL);
    }
    if (msg != NULL)
      gst_message_unref (msg);
    gst_element_set_state (e, GST_STATE_NULL);
    gst_element_set_bus (e, NULL);
    gst_object_unref (bus);
    gst_object_unref (e);
  }
  g_free (slower);
}

GST_END_TEST;

static Suite *
unetsegment_suite (void)
{
  Suite *s = suite_create ("unetsegment");
  TCase *tc = tcase_create ("general");

  tcase_set_timeout (tc, 120);
  tcase_add_unchecked_fixture (tc, setup_models, teardown_models);
  tcase_add_test (tc, test_formats_and_outputs);
  tcase_add_test (tc, test_one_pixel);
  tcase_add_test (tc, test_batch_across_frames);
  tcase_add_test (tc, test_live_no_wait);
  tcase_add_test (tc, test_stats_messages);
  tcase_add_test (tc, test_missing_model);
  tcase_add_test (tc, test_model_swap);
  tcase_add_test (tc, test_output_change_while_playing);
  tcase_add_test (tc, test_many_classes);
  tcase_add_test (tc, test_model_rewritten_in_place);
  tcase_add_test (tc, test_memory_budget_exceeded);
  tcase_add_test (tc, test_cuda_unavailable);
  tcase_add_test (tc, test_cpu_precision_warning);
  suite_add_tcase (s, tc);
  return s;
}

GST_CHECK_MAIN (unetsegment);
