/* unettrain element tests (suite 'trainer'): two GstHarness on the one element
 * (image + src, and mask), pairing by timestamp, unpaired buffers, size and format
 * mismatches naming both streams, progress/checkpoint messages, training on after
 * EOS until `iterations`, the model file it writes (loads, carries the training
 * normalisation), the CSV log, a bad model failing the state change, and previews
 * equal to what unetsegment outputs with the checkpoint of the same step. */
#include <gst/check/gstcheck.h>
#include <gst/check/gstharness.h>
#include <gst/video/video.h>
#include <glib/gstdio.h>
#include <string.h>

#include "unet.h"

#define W 40
#define H 40

static gchar *tmpdir;

static void
setup (void)
{
  tmpdir = g_dir_make_tmp ("unettrain-XXXXXX", NULL);
  fail_unless (tmpdir != NULL);
}

static void
teardown (void)
{
  GDir *d = g_dir_open (tmpdir, 0, NULL);
  const gchar *name;
  while (d && (name = g_dir_read_name (d)) != NULL) {
    gchar *p = g_build_filename (tmpdir, name, NULL);
    g_unlink (p);
    g_free (p);
  }
  if (d)
    g_dir_close (d);
  g_rmdir (tmpdir);
  g_clear_pointer (&tmpdir, g_free);
}

static GstElement *
make_trainer (const gchar *output, guint64 iterations)
{
  GstElement *e = gst_element_factory_make ("unettrain", NULL);
  fail_unless (e != NULL);
  gst_object_ref_sink (e);
  g_object_set (e, "depth", 2, "base-filters", 8, "iterations", iterations,
      "optimizer", 1 /* adam */ , "learning-rate", 1e-3, "threads", 1,
      "device", 1 /* cpu */ , "normalization",
      "{\"mode\":\"range\",\"min\":0,\"max\":255}", NULL);
  if (output)
    g_object_set (e, "output-model", output, NULL);
  return e;
}

static GstBuffer *
frame (gint w, gint h, gsize bpp, GstClockTime pts, guint seed, gboolean mask)
{
  GstBuffer *b = gst_buffer_new_allocate (NULL, (gsize) GST_ROUND_UP_4 (w *
          bpp) * h, NULL);
  GstMapInfo map;
  gst_buffer_map (b, &map, GST_MAP_WRITE);
  GRand *r = g_rand_new_with_seed (seed);
  gdouble cx = g_rand_double_range (r, 8, w - 8);
  gdouble cy = g_rand_double_range (r, 8, h - 8);
  gsize stride = GST_ROUND_UP_4 (w * bpp);
  for (gint y = 0; y < h; y++)
    for (gint x = 0; x < w; x++) {
      gboolean in = (x - cx) * (x - cx) + (y - cy) * (y - cy) < 36.0;
      guint8 v = mask ? (in ? 255 : 0) : (guint8) ((in ? 170 : 60) +
          g_rand_int_range (r, -40, 40));
      for (gsize k = 0; k < bpp; k++)
        map.data[y * stride + x * bpp + k] = v;
    }
  g_rand_free (r);
  gst_buffer_unmap (b, &map);
  GST_BUFFER_PTS (b) = pts;
  GST_BUFFER_DURATION (b) = GST_SECOND;
  return b;
}

static gchar *
caps_str (const gchar *format, gint w, gint h)
{
  return g_strdup_printf ("video/x-raw,format=%s,width=%d,height=%d,"
      "framerate=1/1", format, w, h);
}

/* Pulls events until EOS (or fails after ~60 s). */
static void
wait_eos (GstHarness *h)
{
  for (gint i = 0; i < 6000; i++) {
    GstEvent *ev;
    while ((ev = gst_harness_try_pull_event (h)) != NULL) {
      gboolean eos = GST_EVENT_TYPE (ev) == GST_EVENT_EOS;
      gst_event_unref (ev);
      if (eos)
        return;
    }
    g_usleep (10000);
  }
  fail ("no EOS from unettrain");
}

static guint
count_messages (GstBus *bus, const gchar *name, GstStructure **last)
{
  guint n = 0;
  GstMessage *m;
  while ((m = gst_bus_pop_filtered (bus, GST_MESSAGE_ELEMENT)) != NULL) {
    const GstStructure *s = gst_message_get_structure (m);
    if (gst_structure_has_name (s, name)) {
      n++;
      if (last) {
        if (*last)
          gst_structure_free (*last);
        *last = gst_structure_copy (s);
      }
    }
    gst_message_unref (m);
  }
  return n;
}

GST_START_TEST (test_pairs_train_and_save)
{
  gchar *out = g_build_filename (tmpdir, "m.safetensors", NULL);
  gchar *log = g_build_filename (tmpdir, "log.csv", NULL);
  GstElement *e = make_trainer (out, 5);
  g_object_set (e, "log-location", log, "checkpoint-interval", 4, NULL);
  GstBus *bus = gst_bus_new ();
  gst_element_set_bus (e, bus);

  GstHarness *hi = gst_harness_new_with_element (e, "image", "src");
  GstHarness *hm = gst_harness_new_with_element (e, "mask", NULL);
  gchar *c = caps_str ("GRAY8", W, H);
  gst_harness_set_src_caps_str (hi, c);
  gst_harness_set_src_caps_str (hm, c);
  g_free (c);

  for (guint i = 0; i < 3; i++) {
    fail_unless_equals_int (gst_harness_push (hi, frame (W, H, 1,
                i * GST_SECOND, i, FALSE)), GST_FLOW_OK);
    fail_unless_equals_int (gst_harness_push (hm, frame (W, H, 1,
                i * GST_SECOND, i, TRUE)), GST_FLOW_OK);
    /* One preview per pair: GRAY8 class indices at the image's PTS. */
    GstBuffer *p = gst_harness_pull (hi);
    fail_unless (p != NULL);
    fail_unless_equals_uint64 (GST_BUFFER_PTS (p), i * GST_SECOND);
    GstMapInfo map;
    gst_buffer_map (p, &map, GST_MAP_READ);
    fail_unless (map.size >= (gsize) W * H);
    for (gsize k = 0; k < (gsize) W * H; k++)
      fail_unless (map.data[k] <= 1);
    gst_buffer_unmap (p, &map);
    gst_buffer_unref (p);
  }
  GstCaps *oc = gst_pad_get_current_caps (GST_ELEMENT (e)->srcpads->data);
  GstVideoInfo vi;
  fail_unless (gst_video_info_from_caps (&vi, oc));
  fail_unless_equals_int (GST_VIDEO_INFO_FORMAT (&vi), GST_VIDEO_FORMAT_GRAY8);
  fail_unless_equals_int (GST_VIDEO_INFO_WIDTH (&vi), W);
  gst_caps_unref (oc);

  /* EOS on both: training goes on from the 3 held pairs to 5 steps, then the
   * model is written and EOS goes downstream. */
  gst_harness_push_event (hi, gst_event_new_eos ());
  gst_harness_push_event (hm, gst_event_new_eos ());
  wait_eos (hi);

  GstStructure *last = NULL;
  fail_unless_equals_int (count_messages (bus, "unettrain-progress", &last), 5);
  guint64 it = 0;
  gdouble loss = -1;
  fail_unless (gst_structure_get_uint64 (last, "iteration", &it));
  fail_unless_equals_uint64 (it, 5);
  fail_unless (gst_structure_get_double (last, "loss", &loss));
  fail_unless (loss > 0.0);
  fail_unless (gst_structure_has_field (last, "learning-rate"));
  fail_unless (gst_structure_has_field (last, "samples-per-second"));
  /* the test's trainer runs on the CPU: batches augmented on the host */
  gboolean on_device = TRUE;
  fail_unless (gst_structure_get_boolean (last, "augment-on-device", &on_device));
  fail_if (on_device);
  gst_structure_free (last);

  /* Checkpoint messages were taken above with the other element messages:
   * the files tell the rest. The model loads and keeps the normalisation. */
  GError *err = NULL;
  UnetModel *m = unet_model_load (out, &err);
  fail_unless (m != NULL, "%s", err ? err->message : "");
  UnetNormalization n;
  unet_model_get_normalization (m, &n);
  fail_unless_equals_int (n.mode, UNET_NORM_RANGE);
  fail_unless (strstr (unet_model_get_metadata (m, "unet.training"),
          "\"iteration\":5") != NULL);
  unet_model_free (m);

  gchar *text = NULL;
  fail_unless (g_file_get_contents (log, &text, NULL, NULL));
  gchar **lines = g_strsplit (text, "\n", -1);
  fail_unless_equals_string (lines[0],
      "iteration,loss,dice,val_dice,lr,samples_per_s,time,val_pixel_error,"
      "val_rand_error,alert");
  fail_unless_equals_int (g_strv_length (lines), 7);    /* header, 5, "" */
  fail_unless (g_str_has_prefix (lines[5], "5,"));
  g_strfreev (lines);
  g_free (text);

  gst_harness_teardown (hm);
  gst_harness_teardown (hi);
  gst_object_unref (e);
  gst_object_unref (bus);
  g_free (out);
  g_free (log);
}

GST_END_TEST;

GST_START_TEST (test_checkpoint_messages)
{
  gchar *out = g_build_filename (tmpdir, "c.safetensors", NULL);
  GstElement *e = make_trainer (out, 4);
  g_object_set (e, "checkpoint-interval", 2, "preview", FALSE, NULL);
  GstBus *bus = gst_bus_new ();
  gst_element_set_bus (e, bus);
  GstHarness *hi = gst_harness_new_with_element (e, "image", "src");
  GstHarness *hm = gst_harness_new_with_element (e, "mask", NULL);
  gchar *c = caps_str ("GRAY8", W, H);
  gst_harness_set_src_caps_str (hi, c);
  gst_harness_set_src_caps_str (hm, c);
  g_free (c);
  gst_harness_push (hi, frame (W, H, 1, 0, 3, FALSE));
  gst_harness_push (hm, frame (W, H, 1, 0, 3, TRUE));
  gst_harness_push_event (hi, gst_event_new_eos ());
  gst_harness_push_event (hm, gst_event_new_eos ());
  wait_eos (hi);

  GstStructure *last = NULL;
  fail_unless_equals_int (count_messages (bus, "unettrain-checkpoint", &last),
      2);
  guint64 it = 0;
  fail_unless (gst_structure_get_uint64 (last, "iteration", &it));
  fail_unless_equals_uint64 (it, 4);
  fail_unless_equals_string (gst_structure_get_string (last, "location"), out);
  gst_structure_free (last);
  /* Only the model in the directory: no temporary file survives. */
  GDir *d = g_dir_open (tmpdir, 0, NULL);
  guint files = 0;
  while (g_dir_read_name (d))
    files++;
  g_dir_close (d);
  fail_unless_equals_int (files, 1);

  gst_harness_teardown (hm);
  gst_harness_teardown (hi);
  gst_object_unref (e);
  gst_object_unref (bus);
  g_free (out);
}

GST_END_TEST;

GST_START_TEST (test_unpaired_dropped)
{
  GstElement *e = make_trainer (NULL, 1000);
  GstBus *bus = gst_bus_new ();
  gst_element_set_bus (e, bus);
  GstHarness *hi = gst_harness_new_with_element (e, "image", "src");
  GstHarness *hm = gst_harness_new_with_element (e, "mask", NULL);
  gchar *c = caps_str ("GRAY8", W, H);
  gst_harness_set_src_caps_str (hi, c);
  gst_harness_set_src_caps_str (hm, c);
  g_free (c);

  /* image 0 1 2, mask 0 2: image 1 has no partner. */
  gst_harness_push (hi, frame (W, H, 1, 0, 1, FALSE));
  gst_harness_push (hm, frame (W, H, 1, 0, 1, TRUE));
  GstBuffer *p = gst_harness_pull (hi);
  fail_unless_equals_uint64 (GST_BUFFER_PTS (p), 0);
  gst_buffer_unref (p);
  gst_harness_push (hi, frame (W, H, 1, GST_SECOND, 2, FALSE));
  gst_harness_push (hm, frame (W, H, 1, 2 * GST_SECOND, 3, TRUE));
  gst_harness_push (hi, frame (W, H, 1, 2 * GST_SECOND, 3, FALSE));
  p = gst_harness_pull (hi);
  fail_unless_equals_uint64 (GST_BUFFER_PTS (p), 2 * GST_SECOND);
  gst_buffer_unref (p);

  GstMessage *m = gst_bus_pop_filtered (bus, GST_MESSAGE_WARNING);
  fail_unless (m != NULL);
  GError *err = NULL;
  gst_message_parse_warning (m, &err, NULL);
  fail_unless (strstr (err->message, "image") != NULL, "%s", err->message);
  g_error_free (err);
  gst_message_unref (m);
  fail_unless (gst_bus_pop_filtered (bus, GST_MESSAGE_ERROR) == NULL);

  gst_harness_teardown (hm);
  gst_harness_teardown (hi);
  gst_object_unref (e);
  gst_object_unref (bus);
}

GST_END_TEST;

/* Pushes one pair with the given mask caps; returns the ERROR message text. */
static gchar *
mismatch_error (const gchar *mask_format, gint mw, gint mh, gsize mbpp)
{
  GstElement *e = make_trainer (NULL, 1000);
  GstBus *bus = gst_bus_new ();
  gst_element_set_bus (e, bus);
  GstHarness *hi = gst_harness_new_with_element (e, "image", "src");
  GstHarness *hm = gst_harness_new_with_element (e, "mask", NULL);
  gchar *ci = caps_str ("GRAY8", W, H), *cm = caps_str (mask_format, mw, mh);
  gst_harness_set_src_caps_str (hi, ci);
  gst_harness_set_src_caps_str (hm, cm);
  g_free (ci);
  g_free (cm);
  gst_harness_push (hi, frame (W, H, 1, 0, 1, FALSE));
  gst_harness_push (hm, frame (mw, mh, mbpp, 0, 1, TRUE));

  GstMessage *m = gst_bus_timed_pop_filtered (bus, 30 * GST_SECOND,
      GST_MESSAGE_ERROR);
  fail_unless (m != NULL, "no error for a %s %dx%d mask", mask_format, mw, mh);
  GError *err = NULL;
  gst_message_parse_error (m, &err, NULL);
  gchar *text = g_strdup (err->message);
  g_error_free (err);
  gst_message_unref (m);
  /* No preview for a rejected pair. */
  fail_unless (gst_harness_try_pull (hi) == NULL);
  gst_harness_teardown (hm);
  gst_harness_teardown (hi);
  gst_object_unref (e);
  gst_object_unref (bus);
  return text;
}

GST_START_TEST (test_size_mismatch)
{
  gchar *text = mismatch_error ("GRAY8", W, H - 8, 1);
  fail_unless (strstr (text, "40x40") != NULL, "%s", text);
  fail_unless (strstr (text, "40x32") != NULL, "%s", text);
  g_free (text);
}

GST_END_TEST;

GST_START_TEST (test_format_mismatch)
{
  gchar *text = mismatch_error ("RGB", W, H, 3);
  fail_unless (strstr (text, "GRAY8") != NULL, "%s", text);
  fail_unless (strstr (text, "RGB") != NULL, "%s", text);
  g_free (text);
}

GST_END_TEST;

GST_START_TEST (test_bad_model)
{
  gchar *bad = g_build_filename (tmpdir, "bad.safetensors", NULL);
  fail_unless (g_file_set_contents (bad, "not a model at all", -1, NULL));
  GstElement *e = make_trainer (NULL, 10);
  g_object_set (e, "model", bad, NULL);
  GstBus *bus = gst_bus_new ();
  gst_element_set_bus (e, bus);
  fail_unless_equals_int (gst_element_set_state (e, GST_STATE_PAUSED),
      GST_STATE_CHANGE_FAILURE);
  GstMessage *m = gst_bus_pop_filtered (bus, GST_MESSAGE_ERROR);
  fail_unless (m != NULL);
  GError *err = NULL;
  gst_message_parse_error (m, &err, NULL);
  fail_unless (strstr (err->message, "bad.safetensors") != NULL, "%s",
      err->message);
  g_error_free (err);
  gst_message_unref (m);
  /* The element stays usable: fix the property and it starts. */
  gst_element_set_state (e, GST_STATE_NULL);
  g_object_set (e, "model", NULL, NULL);
  fail_unless (gst_element_set_state (e, GST_STATE_PAUSED) !=
      GST_STATE_CHANGE_FAILURE);
  gst_element_set_state (e, GST_STATE_NULL);
  gst_object_unref (e);
  gst_object_unref (bus);
  g_free (bad);
}

GST_END_TEST;

/* One stream ends without a single buffer: the other's buffers are dropped
 * as unpaired and, at its EOS, an error says there is nothing to train on
 * (within seconds; a hang fails on the timed pop). */
GST_START_TEST (test_one_stream_empty)
{
  for (gint empty_mask = 0; empty_mask < 2; empty_mask++) {
    GstElement *e = make_trainer (NULL, 10);
    GstBus *bus = gst_bus_new ();
    gst_element_set_bus (e, bus);
    GstHarness *hi = gst_harness_new_with_element (e, "image", "src");
    GstHarness *hm = gst_harness_new_with_element (e, "mask", NULL);
    GstHarness *full = empty_mask ? hi : hm, *empty = empty_mask ? hm : hi;
    gchar *c = caps_str ("GRAY8", W, H);
    gst_harness_set_src_caps_str (full, c);
    g_free (c);

    fail_unless (gst_harness_push_event (empty, gst_event_new_eos ()));
    for (guint i = 0; i < 2; i++)
      gst_harness_push (full, frame (W, H, 1, i * GST_SECOND, i, !empty_mask));
    fail_unless (gst_harness_push_event (full, gst_event_new_eos ()));

    GstMessage *m = gst_bus_timed_pop_filtered (bus, 20 * GST_SECOND,
        GST_MESSAGE_ERROR);
    fail_unless (m != NULL, "no error with an empty %s stream",
        empty_mask ? "mask" : "image");
    GError *err = NULL;
    gst_message_parse_error (m, &err, NULL);
    fail_unless (strstr (err->message, "nothing to train") != NULL, "%s",
        err->message);
    g_error_free (err);
    gst_message_unref (m);

    gst_harness_teardown (hm);
    gst_harness_teardown (hi);
    gst_element_set_bus (e, NULL);
    gst_object_unref (e);
    gst_object_unref (bus);
  }
}

GST_END_TEST;

/* A bad output-model fails the state change up front (it used to show only
 * when the model was saved, after all the training); a model path that is a
 * directory is refused with the reason in the message. */
GST_START_TEST (test_bad_output_model)
{
  gchar *missing = g_build_filename (tmpdir, "no-such-dir", "m.safetensors",
      NULL);
  const gchar *outputs[] = { tmpdir, missing };
  GstBus *bus = gst_bus_new ();
  GError *err = NULL;
  GstMessage *m;

  for (guint i = 0; i < G_N_ELEMENTS (outputs); i++) {
    GstElement *e = make_trainer (outputs[i], 10);
    gst_element_set_bus (e, bus);
    fail_unless_equals_int (gst_element_set_state (e, GST_STATE_PAUSED),
        GST_STATE_CHANGE_FAILURE);
    m = gst_bus_pop_filtered (bus, GST_MESSAGE_ERROR);
    fail_unless (m != NULL);
    gst_message_parse_error (m, &err, NULL);
    fail_unless (strstr (err->message, "output-model") != NULL, "%s",
        err->message);
    fail_unless (strstr (err->message, outputs[i]) != NULL, "%s",
        err->message);
    g_clear_error (&err);
    gst_message_unref (m);
    gst_element_set_state (e, GST_STATE_NULL);
    gst_element_set_bus (e, NULL);
    gst_object_unref (e);
  }

  GstElement *e = make_trainer (NULL, 10);
  g_object_set (e, "model", tmpdir, NULL);
  gst_element_set_bus (e, bus);
  fail_unless_equals_int (gst_element_set_state (e, GST_STATE_PAUSED),
      GST_STATE_CHANGE_FAILURE);
  m = gst_bus_pop_filtered (bus, GST_MESSAGE_ERROR);
  fail_unless (m != NULL);
  gst_message_parse_error (m, &err, NULL);
  fail_unless (strstr (err->message, "directory") != NULL, "%s",
      err->message);
  g_clear_error (&err);
  gst_message_unref (m);
  gst_element_set_state (e, GST_STATE_NULL);
  gst_element_set_bus (e, NULL);
  gst_object_unref (e);
  gst_object_unref (bus);
  g_free (missing);
}

GST_END_TEST;

/* Runs one pair + EOS through a fresh element and returns it still running. */
static GstElement *
start_after_eos (const gchar *out, guint64 iterations, gboolean resume,
    GstBus *bus, GstHarness **hi, GstHarness **hm)
{
  GstElement *e = make_trainer (out, iterations);
  g_object_set (e, "preview", FALSE, "resume", resume, NULL);
  gst_element_set_bus (e, bus);
  *hi = gst_harness_new_with_element (e, "image", "src");
  *hm = gst_harness_new_with_element (e, "mask", NULL);
  gchar *c = caps_str ("GRAY8", W, H);
  gst_harness_set_src_caps_str (*hi, c);
  gst_harness_set_src_caps_str (*hm, c);
  g_free (c);
  gst_harness_push (*hi, frame (W, H, 1, 0, 9, FALSE));
  gst_harness_push (*hm, frame (W, H, 1, 0, 9, TRUE));
  gst_harness_push_event (*hi, gst_event_new_eos ());
  gst_harness_push_event (*hm, gst_event_new_eos ());
  return e;
}

static guint64
checkpoint_iteration (const gchar *path)
{
  GError *err = NULL;
  UnetModel *m = unet_model_load (path, &err);
  fail_unless (m != NULL, "%s", err ? err->message : "");
  const gchar *tj = unet_model_get_metadata (m, "unet.training");
  const gchar *p = strstr (tj, "\"iteration\":");
  fail_unless (p != NULL);
  guint64 it = g_ascii_strtoull (p + strlen ("\"iteration\":"), NULL, 10);
  unet_model_free (m);
  return it;
}

/* Stopping the pipeline while it trains on after EOS ends training promptly
 * and leaves a checkpoint of the last step; resume continues from it. */
/* Held-out whole frames: validation scores on the bus and in the CSV, and
 * keep-best writes the best model (a loadable model) beside output-model. */
GST_START_TEST (test_validation_and_keep_best)
{
  gchar *out = g_build_filename (tmpdir, "m.safetensors", NULL);
  gchar *best = g_build_filename (tmpdir, "m.best.safetensors", NULL);
  gchar *log = g_build_filename (tmpdir, "log.csv", NULL);
  /* a temporary of a writer killed earlier: removed at start */
  gchar *stale = g_build_filename (tmpdir, "m.safetensors.tmp-a1B2c3", NULL);
  fail_unless (g_file_set_contents (stale, "half a model", -1, NULL));
  GstElement *e = make_trainer (out, 6);
  g_object_set (e, "log-location", log, "validation-fraction", 0.5,
      "validation-interval", 2, "keep-best", TRUE, NULL);
  GstBus *bus = gst_bus_new ();
  gst_element_set_bus (e, bus);
  GstHarness *hi = gst_harness_new_with_element (e, "image", "src");
  GstHarness *hm = gst_harness_new_with_element (e, "mask", NULL);
  gchar *c = caps_str ("GRAY8", W, H);
  gst_harness_set_src_caps_str (hi, c);
  gst_harness_set_src_caps_str (hm, c);
  g_free (c);
  fail_if (g_file_test (stale, G_FILE_TEST_EXISTS));
  /* 4 pairs at f = 0.5: pairs 1 and 3 are held out */
  for (guint i = 0; i < 4; i++) {
    fail_unless_equals_int (gst_harness_push (hi, frame (W, H, 1,
                i * GST_SECOND, i, FALSE)), GST_FLOW_OK);
    fail_unless_equals_int (gst_harness_push (hm, frame (W, H, 1,
                i * GST_SECOND, i, TRUE)), GST_FLOW_OK);
    /* the preview of each pair: the pair has been taken in */
    gst_buffer_unref (gst_harness_pull (hi));
  }
  gst_harness_push_event (hi, gst_event_new_eos ());
  gst_harness_push_event (hm, gst_event_new_eos ());
  wait_eos (hi);

  GstMessage *m;
  guint n_val = 0, n_best = 0;
  while ((m = gst_bus_pop_filtered (bus, GST_MESSAGE_ELEMENT)) != NULL) {
    const GstStructure *st = gst_message_get_structure (m);
    gdouble pe = -1, re = -1, d = -1;
    guint frames = 0;
    if (gst_structure_has_name (st, "unettrain-progress")
        && gst_structure_get_double (st, "validation-pixel-error", &pe)) {
      fail_unless (gst_structure_get_double (st, "validation-rand-error", &re));
      fail_unless (gst_structure_get_double (st, "validation-dice", &d));
      fail_unless (gst_structure_get_uint (st, "validation-frames", &frames));
      /* step 2 comes with pair 1, the only held-out frame then */
      fail_unless_equals_int (frames, n_val == 0 ? 1 : 2);
      fail_unless (pe >= 0.0 && pe <= 1.0 && re >= 0.0 && re <= 1.0
          && d >= 0.0 && d <= 1.0, "%g %g %g", pe, re, d);
      n_val++;
    }
    if (gst_structure_has_name (st, "unettrain-best")) {
      fail_unless_equals_string (gst_structure_get_string (st, "location"),
          best);
      n_best++;
    }
    gst_message_unref (m);
  }
  /* steps 2, 4 and 6 (the last) are validated; the first is always a best */
  fail_unless_equals_int (n_val, 3);
  fail_unless (n_best >= 1 && n_best <= 3);
  GError *err = NULL;
  UnetModel *bm = unet_model_load (best, &err);
  fail_unless (bm != NULL, "%s", err ? err->message : "");
  fail_unless (strstr (unet_model_get_metadata (bm, "unet.training"),
          "validation_rand_error") != NULL);
  unet_model_free (bm);

  gchar *text = NULL;
  fail_unless (g_file_get_contents (log, &text, NULL, NULL));
  gchar **lines = g_strsplit (text, "\n", -1);
  fail_unless_equals_int (g_strv_length (lines), 8);    /* header, 6, "" */
  gchar **cols = g_strsplit (lines[6], ",", -1);
  fail_unless_equals_int (g_strv_length (cols), 10);
  fail_unless_equals_string (cols[0], "6");
  fail_unless (cols[3][0] != '\0' && cols[7][0] != '\0' && cols[8][0] != '\0');
  g_strfreev (cols);
  cols = g_strsplit (lines[1], ",", -1);
  fail_unless (cols[3][0] == '\0' && cols[7][0] == '\0');    /* step 1: none */
  g_strfreev (cols);
  g_strfreev (lines);
  g_free (text);

  gst_harness_teardown (hm);
  gst_harness_teardown (hi);
  gst_object_unref (bus);
  g_free (out);
  g_free (best);
  g_free (log);
  g_free (stale);
}

GST_END_TEST;

/* A log that cannot be written (here /dev/full: ENOSPC on every write) is an
 * error naming the log, not a run that loses its rows and exits 0; keep-best
 * without held-out frames is refused before any training. */
GST_START_TEST (test_log_unwritable_and_keep_best_needs_validation)
{
  gchar *out = g_build_filename (tmpdir, "m.safetensors", NULL);
  GstBus *bus = gst_bus_new ();
  GError *err = NULL;
  const gchar *expect[] = { "/dev/full", "validation-fraction" };
  for (guint i = 0; i < 2; i++) {
    GstElement *e = make_trainer (out, 10);
    if (i == 0)
      g_object_set (e, "log-location", "/dev/full", NULL);
    else
      g_object_set (e, "keep-best", TRUE, NULL);
    gst_element_set_bus (e, bus);
    fail_unless_equals_int (gst_element_set_state (e, GST_STATE_PAUSED),
        GST_STATE_CHANGE_FAILURE);
    GstMessage *m = gst_bus_pop_filtered (bus, GST_MESSAGE_ERROR);
    fail_unless (m != NULL);
    gst_message_parse_error (m, &err, NULL);
    fail_unless (strstr (err->message, expect[i]) != NULL, "%s", err->message);
    g_clear_error (&err);
    gst_message_unref (m);
    gst_element_set_state (e, GST_STATE_NULL);
    gst_element_set_bus (e, NULL);
    gst_object_unref (e);
  }
  gst_object_unref (bus);
  g_free (out);
}

GST_END_TEST;

GST_START_TEST (test_interrupt_and_resume)
{
  gchar *out = g_build_filename (tmpdir, "r.safetensors", NULL);
  GstBus *bus = gst_bus_new ();
  GstHarness *hi, *hm;
  GstElement *e = start_after_eos (out, 1000000, FALSE, bus, &hi, &hm);
  /* Wait for a few steps of the post-EOS training. */
  guint steps = 0;
  for (gint i = 0; i < 6000 && steps < 3; i++) {
    steps += count_messages (bus, "unettrain-progress", NULL);
    g_usleep (10000);
  }
  fail_unless (steps >= 3);
  gst_harness_teardown (hm);
  gst_harness_teardown (hi);    /* -> NULL: interrupts the training loop */
  gst_object_unref (e);
  guint64 stopped = checkpoint_iteration (out);
  fail_unless (stopped >= 3 && stopped < 1000000);

  /* Resume to stopped + 2: exactly two more steps. */
  while (count_messages (bus, "unettrain-progress", NULL) > 0);
  e = start_after_eos (out, stopped + 2, TRUE, bus, &hi, &hm);
  wait_eos (hi);
  GstStructure *last = NULL;
  fail_unless_equals_int (count_messages (bus, "unettrain-progress", &last),
      2);
  guint64 it = 0;
  fail_unless (gst_structure_get_uint64 (last, "iteration", &it));
  fail_unless_equals_uint64 (it, stopped + 2);
  gst_structure_free (last);
  fail_unless_equals_uint64 (checkpoint_iteration (out), stopped + 2);
  gst_harness_teardown (hm);
  gst_harness_teardown (hi);
  gst_object_unref (e);
  gst_object_unref (bus);
  g_free (out);
}

GST_END_TEST;

/* (W,H) labels of `img` by unetsegment with the model file `path` and its
 * default properties, on the trainer's device and thread count. */
static guint8 *
unetsegment_labels (const gchar *path, GstBuffer *img)
{
  GstElement *e = gst_element_factory_make ("unetsegment", NULL);
  fail_unless (e != NULL);
  gst_object_ref_sink (e);
  g_object_set (e, "model", path, "device", 1 /* cpu */ , "threads", 1, NULL);
  GstHarness *h = gst_harness_new_with_element (e, "sink", "src");
  gchar *c = caps_str ("GRAY8", W, H);
  gst_harness_set_src_caps_str (h, c);
  g_free (c);
  fail_unless_equals_int (gst_harness_push (h, img), GST_FLOW_OK);
  GstBuffer *out = gst_harness_pull (h);
  fail_unless (out != NULL);
  guint8 *labels = g_malloc ((gsize) W * H);
  /* GRAY8 of width 40: rows of 40 bytes, no padding */
  fail_unless_equals_uint64 (gst_buffer_extract (out, 0, labels, (gsize) W * H),
      (gsize) W * H);
  gst_buffer_unref (out);
  gst_harness_teardown (h);
  gst_object_unref (e);
  return labels;
}

/* The preview is what unetsegment outputs: after each pair the element takes one
 * step, writes its checkpoint (checkpoint-interval 1) and pushes the preview of
 * the pair's image; unetsegment given that file must output the same bytes for
 * the same image. */
GST_START_TEST (test_preview_equals_unetsegment)
{
  gchar *out = g_build_filename (tmpdir, "p.safetensors", NULL);
  GstElement *e = make_trainer (out, 4);
  g_object_set (e, "checkpoint-interval", 1, "learning-rate", 1e-2, NULL);
  GstHarness *hi = gst_harness_new_with_element (e, "image", "src");
  GstHarness *hm = gst_harness_new_with_element (e, "mask", NULL);
  gchar *c = caps_str ("GRAY8", W, H);
  gst_harness_set_src_caps_str (hi, c);
  gst_harness_set_src_caps_str (hm, c);
  g_free (c);

  guint mixed = 0;
  gchar *diff = NULL;           /* checked after the teardown: no hang on failure */
  for (guint i = 0; i < 4; i++) {
    fail_unless_equals_int (gst_harness_push (hi, frame (W, H, 1,
                i * GST_SECOND, 50 + i, FALSE)), GST_FLOW_OK);
    fail_unless_equals_int (gst_harness_push (hm, frame (W, H, 1,
                i * GST_SECOND, 50 + i, TRUE)), GST_FLOW_OK);
    GstBuffer *p = gst_harness_pull (hi);
    fail_unless (p != NULL);
    guint8 preview[W * H];
    fail_unless_equals_uint64 (gst_buffer_extract (p, 0, preview, sizeof
            (preview)), sizeof (preview));
    gst_buffer_unref (p);
    guint8 *want = unetsegment_labels (out, frame (W, H, 1, i * GST_SECOND,
            50 + i, FALSE));
    for (gsize k = 0; k < sizeof (preview) && diff == NULL; k++)
      if (preview[k] != want[k])
        diff = g_strdup_printf ("pair %u, pixel (%d, %d): preview %u, "
            "unetsegment %u", i, (gint) (k % W), (gint) (k / W), preview[k],
            want[k]);
    gsize fg = 0;
    for (gsize k = 0; k < sizeof (preview); k++)
      fg += preview[k] != 0;
    mixed += fg > 0 && fg < sizeof (preview);
    g_free (want);
  }
  gst_harness_push_event (hi, gst_event_new_eos ());
  gst_harness_push_event (hm, gst_event_new_eos ());
  wait_eos (hi);
  gst_harness_teardown (hm);
  gst_harness_teardown (hi);
  gst_object_unref (e);
  g_free (out);
  fail_unless (diff == NULL, "%s", diff);
  /* labels with both classes: a comparison that could have failed */
  fail_unless (mixed > 0);
}

GST_END_TEST;

static Suite *
unettrain_suite (void)
{
  Suite *s = suite_create ("unettrain");
  TCase *tc = tcase_create ("general");
  tcase_add_checked_fixture (tc, setup, teardown);
  tcase_set_timeout (tc, 120);
  tcase_add_test (tc, test_pairs_train_and_save);
  tcase_add_test (tc, test_checkpoint_messages);
  tcase_add_test (tc, test_unpaired_dropped);
  tcase_add_test (tc, test_size_mismatch);
  tcase_add_test (tc, test_format_mismatch);
  tcase_add_test (tc, test_bad_model);
  tcase_add_test (tc, test_bad_output_model);
  tcase_add_test (tc, test_one_stream_empty);
  tcase_add_test (tc, test_interrupt_and_resume);
  tcase_add_test (tc, test_validation_and_keep_best);
  tcase_add_test (tc, test_log_unwritable_and_keep_best_needs_validation);
  tcase_add_test (tc, test_preview_equals_unetsegment);
  suite_add_tcase (s, tc);
  return s;
}

int
main (int argc, char **argv)
{
  const gchar *build = g_getenv ("UNET_BUILD_ROOT");

  /* Scan the unet plugin in this process into a private registry: in the
   * sanitizer build the uninstrumented gst-plugin-scanner cannot load an
   * instrumented plugin, this (instrumented) test binary can. */
  g_setenv ("GST_REGISTRY_FORK", "no", TRUE);
  if (build) {
    gchar *plugins = g_build_filename (build, "elements", "unet", NULL);
    gchar *registry = g_build_filename (build, "tests",
        "registry-unettrain.bin", NULL);
    g_setenv ("GST_PLUGIN_PATH_1_0", plugins, TRUE);
    g_setenv ("GST_REGISTRY_1_0", registry, TRUE);
    g_free (plugins);
    g_free (registry);
  }
  gst_check_init (&argc, &argv);
  return gst_check_run_suite (unettrain_suite (), "unettrain", __FILE__);
}
