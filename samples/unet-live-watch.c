/* gst-unet — unet-live-watch: a live segmentation pipeline that acquisition software
 * can react to ("smart microscopy").
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Runs  camera ! queue leaky=downstream ! unetsegment post-messages=true ! fakesink,
 * reads the per-frame "unetsegment-stats" element messages from the bus (structure
 * documented in gstunetsegment.c: frame-number, pts, object-count, foreground-fraction,
 * mean-object-area, processing-time, ...) and acts when the object count crosses a
 * threshold upwards: it prints a line and, with --exposure, sets the camera's exposure
 * through aravissrc's "exposure" property (for example, to shorten exposure once a
 * field of view fills up). It crosses again only after the count fell back to the
 * threshold or below, so a noisy count does not retrigger every frame.
 *
 *   unet-live-watch --model nuclei.safetensors --source aravis --threshold 40 \
 *       --exposure 5000
 *   unet-live-watch --model nuclei.safetensors --source test --frames 100
 *
 * Exit status: 0 at end of stream, 1 on a pipeline error, 2 on bad arguments.
 */
#include <gst/gst.h>
#include <stdio.h>

typedef struct
{
  GMainLoop *loop;
  GstElement *pipeline;
  GstElement *camera;           /* aravissrc, or NULL for other sources */
  gint threshold;
  gdouble exposure_us;          /* <= 0: do not touch the camera */
  gboolean above;
  guint64 frames;
  guint crossings;
  gint status;
} Watch;

static void
on_stats (Watch * w, const GstStructure * s)
{
  guint64 frame = 0, ptime = 0;
  guint count = 0;

  if (!gst_structure_get_uint (s, "object-count", &count))
    return;
  gst_structure_get_uint64 (s, "frame-number", &frame);
  gst_structure_get_uint64 (s, "processing-time", &ptime);
  w->frames++;
  g_print ("frame %" G_GUINT64_FORMAT ": %u objects (%.1f ms)\n", frame, count,
      ptime / 1e6);

  if (!w->above && (gint) count > w->threshold) {
    w->above = TRUE;
    w->crossings++;
    g_print ("frame %" G_GUINT64_FORMAT ": object count %u crossed the threshold %d\n",
        frame, count, w->threshold);
    if (w->camera != NULL && w->exposure_us > 0) {
      gdouble now = 0;

      /* aravissrc applies the property to the running camera */
      g_object_set (w->camera, "exposure", w->exposure_us, NULL);
      g_object_get (w->camera, "exposure", &now, NULL);
      g_print ("camera exposure set to %.0f us (reads back %.0f us)\n",
          w->exposure_us, now);
    }
  } else if (w->above && (gint) count <= w->threshold) {
    w->above = FALSE;
  }
}

static gboolean
on_bus (GstBus * bus, GstMessage * msg, gpointer user_data)
{
  Watch *w = user_data;

  switch (GST_MESSAGE_TYPE (msg)) {
    case GST_MESSAGE_ELEMENT:{
      const GstStructure *s = gst_message_get_structure (msg);

      if (s != NULL && gst_structure_has_name (s, "unetsegment-stats"))
        on_stats (w, s);
      break;
    }
    case GST_MESSAGE_ERROR:{
      g_autoptr (GError) err = NULL;
      g_autofree gchar *dbg = NULL;

      gst_message_parse_error (msg, &err, &dbg);
      g_printerr ("error from %s: %s\n%s\n", GST_OBJECT_NAME (msg->src),
          err->message, dbg ? dbg : "");
      w->status = 1;
      g_main_loop_quit (w->loop);
      break;
    }
    case GST_MESSAGE_EOS:
      g_main_loop_quit (w->loop);
      break;
    default:
      break;
  }
  return G_SOURCE_CONTINUE;
}

int
main (int argc, char **argv)
{
  g_autofree gchar *model = NULL, *source = NULL, *camera_name = NULL;
  g_autofree gchar *format = NULL, *device = NULL, *desc = NULL;
  gint threshold = 20, frames = -1, fps = 25;
  gdouble exposure = 0;
  g_autoptr (GError) error = NULL;
  Watch w = { 0 };
  GOptionEntry entries[] = {
    {"model", 'm', 0, G_OPTION_ARG_FILENAME, &model, "Model (.safetensors)", "FILE"},
    {"source", 's', 0, G_OPTION_ARG_STRING, &source,
        "aravis or test (default test: videotestsrc)", "SRC"},
    {"camera", 'c', 0, G_OPTION_ARG_STRING, &camera_name,
        "aravis camera name (default: first found)", "NAME"},
    {"format", 'f', 0, G_OPTION_ARG_STRING, &format,
        "GRAY8 or GRAY16_LE (default GRAY8)", "FMT"},
    {"fps", 0, 0, G_OPTION_ARG_INT, &fps, "Frame rate (default 25)", "N"},
    {"device", 'd', 0, G_OPTION_ARG_STRING, &device,
        "auto, cpu or cuda (default auto)", "DEV"},
    {"threshold", 't', 0, G_OPTION_ARG_INT, &threshold,
        "React when the object count goes above N (default 20)", "N"},
    {"exposure", 'e', 0, G_OPTION_ARG_DOUBLE, &exposure,
        "Set this camera exposure (us) when it does (aravis only)", "US"},
    {"frames", 'n', 0, G_OPTION_ARG_INT, &frames,
        "Stop after N frames (default: run until interrupted)", "N"},
    {NULL}
  };
  g_autoptr (GOptionContext) ctx =
      g_option_context_new ("- react to live U-Net segmentation");
  GstBus *bus;
  GstStateChangeReturn ret;
  const gchar *src_desc;
  g_autofree gchar *src_extra = NULL;

  g_option_context_add_main_entries (ctx, entries, NULL);
  g_option_context_add_group (ctx, gst_init_get_option_group ());
  if (!g_option_context_parse (ctx, &argc, &argv, &error)) {
    g_printerr ("%s\n", error->message);
    return 2;
  }
  if (model == NULL) {
    g_printerr ("--model is required (see --help)\n");
    return 2;
  }
  if (source == NULL)
    source = g_strdup ("test");
  if (format == NULL)
    format = g_strdup ("GRAY8");
  if (device == NULL)
    device = g_strdup ("auto");
  if (g_strcmp0 (format, "GRAY8") != 0 && g_strcmp0 (format, "GRAY16_LE") != 0) {
    g_printerr ("--format must be GRAY8 or GRAY16_LE\n");
    return 2;
  }
  if (fps <= 0 || fps > 10000) {
    g_printerr ("--fps must be between 1 and 10000\n");
    return 2;
  }
  if (g_strcmp0 (source, "aravis") == 0) {
    src_desc = "aravissrc";
    src_extra = camera_name ? g_strdup_printf ("camera-name=\"%s\"", camera_name)
        : g_strdup ("");
  } else if (g_strcmp0 (source, "test") == 0) {
    src_desc = "videotestsrc is-live=true pattern=ball";
    src_extra = g_strdup ("");
  } else {
    g_printerr ("--source must be aravis or test\n");
    return 2;
  }

  /* the leaky queue keeps latency bounded when the model is slower than the camera */
  desc = g_strdup_printf ("%s name=cam num-buffers=%d %s "
      "! video/x-raw,format=%s,framerate=%d/1 "
      "! queue leaky=downstream max-size-buffers=2 max-size-bytes=0 max-size-time=0 "
      "! unetsegment name=seg model=\"%s\" device=%s post-messages=true "
      "! fakesink sync=false", src_desc, frames, src_extra, format, fps, model,
      device);
  w.pipeline = gst_parse_launch (desc, &error);
  if (w.pipeline == NULL || error != NULL) {
    g_printerr ("could not build the pipeline: %s\n(%s)\n",
        error ? error->message : "unknown error", desc);
    if (w.pipeline)
      gst_object_unref (w.pipeline);
    return 1;
  }
  if (g_strcmp0 (source, "aravis") == 0)
    w.camera = gst_bin_get_by_name (GST_BIN (w.pipeline), "cam");
  w.threshold = threshold;
  w.exposure_us = exposure;
  w.loop = g_main_loop_new (NULL, FALSE);

  bus = gst_element_get_bus (w.pipeline);
  gst_bus_add_watch (bus, on_bus, &w);
  ret = gst_element_set_state (w.pipeline, GST_STATE_PLAYING);
  if (ret == GST_STATE_CHANGE_FAILURE) {
    /* print the element's error (the reason), without waiting on the loop */
    GstMessage *msg = gst_bus_timed_pop_filtered (bus, 0, GST_MESSAGE_ERROR);

    if (msg != NULL) {
      on_bus (bus, msg, &w);
      gst_message_unref (msg);
    } else {
      g_printerr ("the pipeline could not start\n");
    }
    w.status = 1;
  } else {
    g_main_loop_run (w.loop);
  }

  gst_element_set_state (w.pipeline, GST_STATE_NULL);
  gst_bus_remove_watch (bus);
  gst_object_unref (bus);
  g_print ("%" G_GUINT64_FORMAT " frames segmented, %u threshold crossing(s)\n",
      w.frames, w.crossings);
  if (w.camera)
    gst_object_unref (w.camera);
  gst_object_unref (w.pipeline);
  g_main_loop_unref (w.loop);
  return w.status;
}
