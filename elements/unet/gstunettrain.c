/* GStreamer U-Net training element
 *
 * This library is free software; you can redistribute it and/or modify it under
 * the terms of the GNU Library General Public License as published by the Free
 * Software Foundation; either version 2 of the License, or (at your option) any
 * later version.
 */
/**
 * SECTION:element-unettrain
 * @title: unettrain
 *
 * Trains (or fine-tunes) a U-Net from two streams: gray images on the `image` pad
 * and their annotations on the `mask` pad, paired by timestamp. Each pair is
 * normalised and turned into a class map and the paper's border weight map, then
 * kept in a bounded dataset (`dataset-capacity`, oldest dropped). While data flows
 * the element takes `steps-per-pair` optimiser steps per pair; after EOS on both
 * pads it keeps training from the pairs it holds until `iterations`, writes
 * `output-model` and sends EOS. Every step posts an `unettrain-progress` element
 * message (iteration, loss, dice, learning-rate, samples-per-second,
 * augment-on-device — the batch was augmented on the GPU from the pairs kept there,
 * FALSE on the CPU or once the pairs outgrew the GPU's share for them — and
 * validation-dice when computed); every checkpoint an `unettrain-checkpoint`
 * message (location, iteration). The src pad carries the current prediction on
 * each image as GRAY8 class indices (`preview`).
 *
 * Pairing: buffers whose PTS differ by at most `timestamp-tolerance` form a pair;
 * a buffer without a partner (the other stream skipped it, or ended) is dropped
 * with a warning. Buffers without timestamps pair in arrival order.
 *
 * Checkpoints hold the model, the optimiser state and the step; with `resume` a
 * run continues from `output-model` where it stopped. Files are written to a
 * temporary name, synced and renamed, so a crash never leaves half a model.
 *
 * ## Example launch line
 * |[
 * gst-launch-1.0 unettrain name=t output-model=nuclei.safetensors iterations=2000 \
 *     depth=3 base-filters=16 optimizer=adam learning-rate=0.001 preview=false \
 *   tiffstacksrc location=images.tif ! t.image \
 *   tiffstacksrc location=masks.tif ! t.mask \
 *   t.src ! fakesink
 * ]|
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include "gstunettrain.h"
#include "gstunetenums.h"
#include "unet.h"

#include <gst/video/video.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

GST_DEBUG_CATEGORY_STATIC (gst_unet_train_debug);
#define GST_CAT_DEFAULT gst_unet_train_debug

enum
{
  PROP_0,
  PROP_MODEL,
  PROP_OUTPUT_MODEL,
  PROP_RESUME,
  PROP_ITERATIONS,
  PROP_CHECKPOINT_INTERVAL,
  PROP_VALIDATION_INTERVAL,
  PROP_STEPS_PER_PAIR,
  PROP_OPTIMIZER,
  PROP_LEARNING_RATE,
  PROP_MOMENTUM,
  PROP_NESTEROV,
  PROP_WEIGHT_DECAY,
  PROP_SCHEDULE,
  PROP_BATCH_SIZE,
  PROP_TILE_SIZE,
  PROP_ELASTIC_GRID,
  PROP_ELASTIC_SIGMA,
  PROP_ROTATION,
  PROP_FLIP,
  PROP_INTENSITY_JITTER,
  PROP_BORDER_WEIGHT,
  PROP_BORDER_SIGMA,
  PROP_CLASS_BALANCE,
  PROP_MASK_MODE,
  PROP_IGNORE_LABEL,
  PROP_DICE_WEIGHT,
  PROP_VALIDATION_FRACTION,
  PROP_DATASET_CAPACITY,
  PROP_SEED,
  PROP_DEVICE,
  PROP_THREADS,
  PROP_LOG_LOCATION,
  PROP_NORMALIZATION,
  PROP_PREVIEW,
  PROP_TIMESTAMP_TOLERANCE,
  PROP_DEPTH,
  PROP_IN_CHANNELS,
  PROP_BASE_FILTERS,
  PROP_PADDING,
  PROP_BATCH_NORM,
  PROP_CLASSES,
  PROP_DROPOUT,
  PROP_WARMUP,
  PROP_KEEP_BEST,
  PROP_BEST_MODEL,
  PROP_BEST_METRIC,
};

typedef enum
{
  BEST_RAND_ERROR,
  BEST_PIXEL_ERROR,
  BEST_DICE,
} BestMetric;

#define DEFAULT_ITERATIONS 4000
#define DEFAULT_CHECKPOINT_INTERVAL 0
#define DEFAULT_VALIDATION_INTERVAL 100
#define DEFAULT_STEPS_PER_PAIR 1
#define DEFAULT_OPTIMIZER UNET_TRAIN_ADAM
#define DEFAULT_LEARNING_RATE 0.0  /* the optimiser's default */
#define DEFAULT_MOMENTUM 0.99
#define DEFAULT_WEIGHT_DECAY 0.0
#define DEFAULT_SCHEDULE UNET_TRAIN_SCHEDULE_COSINE
#define DEFAULT_BATCH_SIZE 1
#define DEFAULT_TILE_SIZE 0
#define DEFAULT_ELASTIC_GRID 3
#define DEFAULT_ELASTIC_SIGMA 10.0
#define DEFAULT_ROTATION 180.0
#define DEFAULT_FLIP TRUE
#define DEFAULT_INTENSITY_JITTER 1.0
#define DEFAULT_BORDER_WEIGHT 10.0
#define DEFAULT_BORDER_SIGMA 5.0
#define DEFAULT_CLASS_BALANCE TRUE
#define DEFAULT_MASK_MODE UNET_TRAIN_MASK_BINARY
#define DEFAULT_IGNORE_LABEL -1
#define DEFAULT_DICE_WEIGHT 0.0
#define DEFAULT_VALIDATION_FRACTION 0.0
#define DEFAULT_DATASET_CAPACITY 1000
#define DEFAULT_SEED 0
#define DEFAULT_DEVICE UNET_DEVICE_AUTO
#define DEFAULT_THREADS 0
#define DEFAULT_PREVIEW TRUE
#define DEFAULT_TIMESTAMP_TOLERANCE GST_MSECOND
#define DEFAULT_DEPTH 4
#define DEFAULT_BASE_FILTERS 16
#define DEFAULT_PADDING UNET_PADDING_VALID
#define DEFAULT_BATCH_NORM FALSE
#define DEFAULT_CLASSES 2
#define DEFAULT_DROPOUT 0.0
#define DEFAULT_WARMUP 200
#define DEFAULT_KEEP_BEST FALSE
#define DEFAULT_BEST_METRIC BEST_RAND_ERROR

struct _GstUnetTrain
{
  GstAggregator parent;

  GstAggregatorPad *image_pad;
  GstAggregatorPad *mask_pad;

  /* properties (under the object lock) */
  gchar *model_location;
  gchar *output_location;
  gboolean resume;
  guint64 iterations;
  guint checkpoint_interval;
  guint validation_interval;
  guint steps_per_pair;
  UnetTrainerOptions opts;      /* the option-like properties live here */
  gchar *log_location;
  gchar *normalization;
  gboolean keep_best;
  gchar *best_location;         /* NULL: derived from output-model */
  BestMetric best_metric;
  gboolean preview;
  guint64 timestamp_tolerance;

  /* streaming state (between start and stop) */
  UnetTrainer *trainer;
  FILE *log;
  gint64 start_time;            /* monotonic, us */
  gint64 saved_iteration;       /* iteration of the last checkpoint written */
  gchar *best_path;             /* where keep-best writes (resolved at start) */
  gdouble best_score;           /* lower is better; G_MAXDOUBLE = none yet */
  gboolean log_failed;
  guint64 dropped;
  gint cancel;                  /* atomic: stop training (state change down) */
  GstVideoInfo out_info;
  gboolean out_info_valid;
};

static GstStaticPadTemplate image_template = GST_STATIC_PAD_TEMPLATE ("image",
    GST_PAD_SINK, GST_PAD_ALWAYS,
    GST_STATIC_CAPS (GST_VIDEO_CAPS_MAKE ("{ GRAY8, GRAY16_LE, RGB, RGBA }")));

/* Colour formats are accepted so that a mask saved as a colour picture (a common
 * mistake) fails with a message naming both streams, not a bare not-negotiated. */
static GstStaticPadTemplate mask_template = GST_STATIC_PAD_TEMPLATE ("mask",
    GST_PAD_SINK, GST_PAD_ALWAYS,
    GST_STATIC_CAPS (GST_VIDEO_CAPS_MAKE
        ("{ GRAY8, GRAY16_LE, RGB, BGR, RGBA, BGRA, RGBx, BGRx }")));

static GstStaticPadTemplate src_template = GST_STATIC_PAD_TEMPLATE ("src",
    GST_PAD_SRC, GST_PAD_ALWAYS,
    GST_STATIC_CAPS (GST_VIDEO_CAPS_MAKE ("GRAY8")));

#define gst_unet_train_parent_class parent_class
G_DEFINE_TYPE (GstUnetTrain, gst_unet_train, GST_TYPE_AGGREGATOR);
GST_ELEMENT_REGISTER_DEFINE (unettrain, "unettrain", GST_RANK_NONE,
    GST_TYPE_UNET_TRAIN);

/* ------------------------------------------------------------- enums -- */

#define GST_TYPE_UNET_TRAIN_OPTIMIZER (gst_unet_train_optimizer_get_type ())
static GType
gst_unet_train_optimizer_get_type (void)
{
  static GType type = 0;
  static const GEnumValue values[] = {
    {UNET_TRAIN_SGD, "SGD with momentum (the paper)", "sgd"},
    {UNET_TRAIN_ADAM, "Adam", "adam"},
    {UNET_TRAIN_ADAMW, "AdamW (decoupled weight decay)", "adamw"},
    {0, NULL, NULL},
  };
  if (g_once_init_enter (&type))
    g_once_init_leave (&type,
        g_enum_register_static ("GstUnetTrainOptimizer", values));
  return type;
}

#define GST_TYPE_UNET_TRAIN_SCHEDULE (gst_unet_train_schedule_get_type ())
static GType
gst_unet_train_schedule_get_type (void)
{
  static GType type = 0;
  static const GEnumValue values[] = {
    {UNET_TRAIN_SCHEDULE_CONSTANT, "Constant learning rate", "constant"},
    {UNET_TRAIN_SCHEDULE_COSINE, "Cosine decay to 0 at iterations", "cosine"},
    {UNET_TRAIN_SCHEDULE_POLY, "Polynomial decay (power 0.9)", "poly"},
    {0, NULL, NULL},
  };
  if (g_once_init_enter (&type))
    g_once_init_leave (&type,
        g_enum_register_static ("GstUnetTrainSchedule", values));
  return type;
}

#define GST_TYPE_UNET_TRAIN_MASK_MODE (gst_unet_train_mask_mode_get_type ())
static GType
gst_unet_train_mask_mode_get_type (void)
{
  static GType type = 0;
  static const GEnumValue values[] = {
    {UNET_TRAIN_MASK_BINARY, "Non-zero is foreground", "binary"},
    {UNET_TRAIN_MASK_INDEXED, "Pixel value is the class index", "indexed"},
    {UNET_TRAIN_MASK_INSTANCES, "Pixel value is an object id (0 background)",
        "instances"},
    {0, NULL, NULL},
  };
  if (g_once_init_enter (&type))
    g_once_init_leave (&type,
        g_enum_register_static ("GstUnetTrainMaskMode", values));
  return type;
}

#define GST_TYPE_UNET_TRAIN_PADDING (gst_unet_train_padding_get_type ())
static GType
gst_unet_train_padding_get_type (void)
{
  static GType type = 0;
  static const GEnumValue values[] = {
    {UNET_PADDING_VALID, "Unpadded convolutions (the paper)", "valid"},
    {UNET_PADDING_SAME, "Zero-padded convolutions", "same"},
    {0, NULL, NULL},
  };
  if (g_once_init_enter (&type))
    g_once_init_leave (&type,
        g_enum_register_static ("GstUnetTrainPadding", values));
  return type;
}

#define GST_TYPE_UNET_TRAIN_BEST_METRIC (gst_unet_train_best_metric_get_type ())
static GType
gst_unet_train_best_metric_get_type (void)
{
  static GType type = 0;
  static const GEnumValue values[] = {
    {BEST_RAND_ERROR, "Lowest adapted Rand error of the objects", "rand-error"},
    {BEST_PIXEL_ERROR, "Lowest pixel error", "pixel-error"},
    {BEST_DICE, "Highest foreground Dice", "dice"},
    {0, NULL, NULL},
  };
  if (g_once_init_enter (&type))
    g_once_init_leave (&type,
        g_enum_register_static ("GstUnetTrainBestMetric", values));
  return type;
}

/* ----------------------------------------------------------- helpers -- */

static gboolean
video_format_to_pixel (GstVideoFormat f, UnetPixelFormat *out)
{
  switch (f) {
    case GST_VIDEO_FORMAT_GRAY8:
      *out = UNET_PIXEL_U8;
      return TRUE;
    case GST_VIDEO_FORMAT_GRAY16_LE:
      *out = UNET_PIXEL_U16;
      return TRUE;
    default:
      return FALSE;
  }
}

/* Image frames: gray for 1-channel models, RGB / RGBA (alpha not used) for
 * 3-channel ones; the trainer refuses a frame whose channels are not the
 * model's, naming both counts. */
static gboolean
image_format_to_pixel (GstVideoFormat f, UnetPixelFormat *out)
{
  switch (f) {
    case GST_VIDEO_FORMAT_RGB:
      *out = UNET_PIXEL_RGB8;
      return TRUE;
    case GST_VIDEO_FORMAT_RGBA:
      *out = UNET_PIXEL_RGBA8;
      return TRUE;
    default:
      return video_format_to_pixel (f, out);
  }
}

static gboolean
pad_video_info (GstAggregatorPad *pad, GstVideoInfo *info)
{
  GstCaps *caps = gst_pad_get_current_caps (GST_PAD (pad));
  gboolean ok = caps != NULL && gst_video_info_from_caps (info, caps);
  if (caps)
    gst_caps_unref (caps);
  return ok;
}

/* A CSV number cell ("" for a figure that was not computed, < 0). */
static void
cell (gchar *buf, gsize len, const gchar *fmt, gdouble v, gboolean present)
{
  buf[0] = '\0';
  if (present)
    g_ascii_formatd (buf, len, fmt, v);
}

static const gchar *
alert_name (UnetTrainAlert a)
{
  switch (a) {
    case UNET_TRAIN_ALERT_NONE:
      return "";
    case UNET_TRAIN_ALERT_UNIFORM:
      return "uniform-prediction";
    case UNET_TRAIN_ALERT_CLASS_NEVER_PREDICTED:
      return "class-never-predicted";
    case UNET_TRAIN_ALERT_VALIDATION_CLASS_NEVER_PREDICTED:
      return "validation-class-never-predicted";
  }
  return "";
}

#define LOG_HEADER "iteration,loss,dice,val_dice,lr,samples_per_s,time," \
  "val_pixel_error,val_rand_error,alert\n"

/* One CSV row; a write error (full disk, I/O error) is an element error: rows
 * must not vanish while the run reports success. */
static gboolean
log_row (GstUnetTrain *self, const UnetTrainStats *s,
    const UnetTrainValidation *v, UnetTrainAlert alert)
{
  if (self->log == NULL)
    return TRUE;
  gchar loss[G_ASCII_DTOSTR_BUF_SIZE], dice[G_ASCII_DTOSTR_BUF_SIZE];
  gchar vd[G_ASCII_DTOSTR_BUF_SIZE], lr[G_ASCII_DTOSTR_BUF_SIZE];
  gchar sps[G_ASCII_DTOSTR_BUF_SIZE], tm[G_ASCII_DTOSTR_BUF_SIZE];
  gchar vp[G_ASCII_DTOSTR_BUF_SIZE], vr[G_ASCII_DTOSTR_BUF_SIZE];
  gboolean have_v = v->frames > 0;
  cell (loss, sizeof (loss), "%.6g", s->loss, TRUE);
  cell (dice, sizeof (dice), "%.6g", s->dice, TRUE);
  cell (vd, sizeof (vd), "%.6g", v->dice, have_v);
  cell (lr, sizeof (lr), "%.6g", s->learning_rate, TRUE);
  cell (sps, sizeof (sps), "%.4g", s->samples_per_second, TRUE);
  cell (tm, sizeof (tm), "%.3f",
      (g_get_monotonic_time () - self->start_time) / 1e6, TRUE);
  cell (vp, sizeof (vp), "%.6g", v->pixel_error, have_v);
  cell (vr, sizeof (vr), "%.6g", v->rand_error, have_v && v->rand_error >= 0.0);
  errno = 0;
  if (fprintf (self->log, "%" G_GINT64_FORMAT ",%s,%s,%s,%s,%s,%s,%s,%s,%s\n",
          s->iteration, loss, dice, vd, lr, sps, tm, vp, vr,
          alert_name (alert)) < 0 || fflush (self->log) != 0) {
    int e = errno;
    g_autofree gchar *loc = NULL;
    GST_OBJECT_LOCK (self);
    loc = g_strdup (self->log_location);
    GST_OBJECT_UNLOCK (self);
    GST_ELEMENT_ERROR (self, RESOURCE, WRITE,
        ("Could not write the training log \"%s\" at iteration %"
            G_GINT64_FORMAT ": %s.", loc, s->iteration,
            e ? g_strerror (e) : "write error"),
        ("Free space or choose another log-location; the checkpoint and model "
            "files are separate."));
    self->log_failed = TRUE;
    return FALSE;
  }
  return TRUE;
}

/* Posts a guard alert as a warning (it reaches gst-launch's output and every bus
 * watcher) and as an element message with the kind, for programs. */
static void
post_alert (GstUnetTrain *self, UnetTrainAlert alert, const gchar *message,
    gint64 iteration)
{
  GST_ELEMENT_WARNING (self, STREAM, FAILED,
      ("Training problem at iteration %" G_GINT64_FORMAT ": %s", iteration,
          message), ("guard: %s", alert_name (alert)));
  gst_element_post_message (GST_ELEMENT (self),
      gst_message_new_element (GST_OBJECT (self),
          gst_structure_new ("unettrain-alert",
              "kind", G_TYPE_STRING, alert_name (alert),
              "iteration", G_TYPE_UINT64, (guint64) iteration,
              "message", G_TYPE_STRING, message, NULL)));
}

/* keep-best: the validation score, lower is better. */
static gdouble
best_score (const GstUnetTrain *self, const UnetTrainValidation *v)
{
  switch (self->best_metric) {
    case BEST_RAND_ERROR:
      /* Frames without objects have no Rand error: fall back to pixel error. */
      return v->rand_error >= 0.0 ? v->rand_error : v->pixel_error;
    case BEST_PIXEL_ERROR:
      return v->pixel_error;
    case BEST_DICE:
      return -v->dice;
  }
  return v->pixel_error;
}

static gboolean
save_best (GstUnetTrain *self, const UnetTrainValidation *v, gint64 iteration)
{
  g_autoptr (GError) err = NULL;
  g_autoptr (UnetModel) m = unet_trainer_export_model (self->trainer, &err);
  if (m == NULL || !unet_model_save (m, self->best_path, &err)) {
    GST_ELEMENT_ERROR (self, RESOURCE, WRITE,
        ("Could not write the best model to \"%s\".", self->best_path),
        ("%s", err->message));
    return FALSE;
  }
  gst_element_post_message (GST_ELEMENT (self),
      gst_message_new_element (GST_OBJECT (self),
          gst_structure_new ("unettrain-best",
              "location", G_TYPE_STRING, self->best_path,
              "iteration", G_TYPE_UINT64, (guint64) iteration,
              "validation-pixel-error", G_TYPE_DOUBLE, v->pixel_error,
              "validation-rand-error", G_TYPE_DOUBLE, v->rand_error,
              "validation-dice", G_TYPE_DOUBLE, v->dice, NULL)));
  return TRUE;
}

static gboolean
save_checkpoint (GstUnetTrain *self)
{
  g_autoptr (GError) err = NULL;
  if (self->output_location == NULL)
    return TRUE;
  if (!unet_trainer_save_checkpoint (self->trainer, self->output_location,
          &err)) {
    GST_ELEMENT_ERROR (self, RESOURCE, WRITE,
        ("Could not write the model to \"%s\".", self->output_location),
        ("%s", err->message));
    return FALSE;
  }
  self->saved_iteration = unet_trainer_get_iteration (self->trainer);
  gst_element_post_message (GST_ELEMENT (self),
      gst_message_new_element (GST_OBJECT (self),
          gst_structure_new ("unettrain-checkpoint",
              "location", G_TYPE_STRING, self->output_location,
              "iteration", G_TYPE_UINT64, (guint64) self->saved_iteration,
              NULL)));
  return TRUE;
}

/* One step + its messages, log row, validation, guard and checkpoint. */
static gboolean
train_step (GstUnetTrain *self)
{
  g_autoptr (GError) err = NULL;
  UnetTrainStats s;
  if (!unet_trainer_step (self->trainer, &s, &err)) {
    GST_ELEMENT_ERROR (self, LIBRARY, FAILED,
        ("Training step %" G_GINT64_FORMAT " failed: %s",
            unet_trainer_get_iteration (self->trainer) + 1, err->message),
        (NULL));
    return FALSE;
  }
  UnetTrainValidation v = { 0, -1.0, -1.0, -1.0, UNET_TRAIN_ALERT_NONE, NULL };
  guint n_val = 0;
  unet_trainer_get_n_pairs (self->trainer, &n_val);
  gboolean last = (guint64) s.iteration >= self->iterations;
  if (n_val > 0 && ((self->validation_interval > 0
              && s.iteration % self->validation_interval == 0) || last)) {
    if (!unet_trainer_validate (self->trainer, &v, &err)) {
      GST_ELEMENT_ERROR (self, LIBRARY, FAILED,
          ("Validation failed: %s", err->message), (NULL));
      return FALSE;
    }
  }

  GstStructure *st = gst_structure_new ("unettrain-progress",
      "iteration", G_TYPE_UINT64, (guint64) s.iteration,
      "loss", G_TYPE_DOUBLE, s.loss,
      "dice", G_TYPE_DOUBLE, s.dice,
      "learning-rate", G_TYPE_DOUBLE, s.learning_rate,
      "samples-per-second", G_TYPE_DOUBLE, s.samples_per_second,
      "augment-on-device", G_TYPE_BOOLEAN, s.augment_on_device, NULL);
  if (v.frames > 0) {
    gst_structure_set (st, "validation-dice", G_TYPE_DOUBLE, v.dice,
        "validation-pixel-error", G_TYPE_DOUBLE, v.pixel_error,
        "validation-frames", G_TYPE_UINT, v.frames, NULL);
    if (v.rand_error >= 0.0)
      gst_structure_set (st, "validation-rand-error", G_TYPE_DOUBLE,
          v.rand_error, NULL);
  }
  gst_element_post_message (GST_ELEMENT (self),
      gst_message_new_element (GST_OBJECT (self), st));
  if (s.alert != UNET_TRAIN_ALERT_NONE)
    post_alert (self, s.alert, s.alert_message, s.iteration);
  if (v.alert != UNET_TRAIN_ALERT_NONE)
    post_alert (self, v.alert, v.alert_message, s.iteration);
  if (!log_row (self, &s, &v, v.alert != UNET_TRAIN_ALERT_NONE ? v.alert
          : s.alert))
    return FALSE;

  if (v.frames > 0 && self->best_path != NULL) {
    gdouble score = best_score (self, &v);
    if (score < self->best_score) {
      self->best_score = score;
      if (!save_best (self, &v, s.iteration))
        return FALSE;
    }
  }

  if ((self->checkpoint_interval > 0
          && s.iteration % self->checkpoint_interval == 0) || last)
    return save_checkpoint (self);
  return TRUE;
}

static GstFlowReturn
push_preview (GstUnetTrain *self, GstVideoFrame *image, GstBuffer *inbuf)
{
  g_autoptr (GError) err = NULL;
  GstVideoInfo *in = &image->info;
  if (!self->out_info_valid) {
    GST_ELEMENT_ERROR (self, CORE, NEGOTIATION,
        ("The preview caps were not negotiated."), (NULL));
    return GST_FLOW_NOT_NEGOTIATED;
  }
  GstBuffer *out = gst_buffer_new_allocate (NULL,
      GST_VIDEO_INFO_SIZE (&self->out_info), NULL);
  GstVideoFrame of;
  if (!gst_video_frame_map (&of, &self->out_info, out, GST_MAP_WRITE)) {
    gst_buffer_unref (out);
    GST_ELEMENT_ERROR (self, CORE, FAILED, ("Could not map a preview buffer."),
        (NULL));
    return GST_FLOW_ERROR;
  }
  UnetPixelFormat fmt = UNET_PIXEL_U8;
  image_format_to_pixel (GST_VIDEO_INFO_FORMAT (in), &fmt);
  gboolean ok = unet_trainer_predict (self->trainer, fmt,
      GST_VIDEO_FRAME_PLANE_DATA (image, 0),
      GST_VIDEO_FRAME_PLANE_STRIDE (image, 0), GST_VIDEO_INFO_WIDTH (in),
      GST_VIDEO_INFO_HEIGHT (in), GST_VIDEO_FRAME_PLANE_DATA (&of, 0),
      GST_VIDEO_FRAME_PLANE_STRIDE (&of, 0), &err);
  gst_video_frame_unmap (&of);
  if (!ok) {
    gst_buffer_unref (out);
    GST_ELEMENT_ERROR (self, LIBRARY, FAILED,
        ("Could not compute the preview: %s", err->message), (NULL));
    return GST_FLOW_ERROR;
  }
  GST_BUFFER_PTS (out) = GST_BUFFER_PTS (inbuf);
  GST_BUFFER_DURATION (out) = GST_BUFFER_DURATION (inbuf);
  if (GST_BUFFER_PTS_IS_VALID (inbuf))
    GST_AGGREGATOR_PAD (GST_AGGREGATOR (self)->srcpad)->segment.position =
        GST_BUFFER_PTS (inbuf);
  return gst_aggregator_finish_buffer (GST_AGGREGATOR (self), out);
}

static GstFlowReturn
process_pair (GstUnetTrain *self, GstBuffer *ibuf, GstBuffer *mbuf)
{
  GstVideoInfo ii, mi;
  if (!pad_video_info (self->image_pad, &ii)
      || !pad_video_info (self->mask_pad, &mi)) {
    GST_ELEMENT_ERROR (self, CORE, NEGOTIATION,
        ("A buffer arrived on the image or mask pad before its caps."), (NULL));
    return GST_FLOW_NOT_NEGOTIATED;
  }
  const gchar *ifmt = gst_video_format_to_string (GST_VIDEO_INFO_FORMAT (&ii));
  const gchar *mfmt = gst_video_format_to_string (GST_VIDEO_INFO_FORMAT (&mi));
  if (GST_VIDEO_INFO_WIDTH (&ii) != GST_VIDEO_INFO_WIDTH (&mi)
      || GST_VIDEO_INFO_HEIGHT (&ii) != GST_VIDEO_INFO_HEIGHT (&mi)) {
    GST_ELEMENT_ERROR (self, STREAM, FORMAT,
        ("Image and mask sizes differ: image is %dx%d %s, mask is %dx%d %s.",
            GST_VIDEO_INFO_WIDTH (&ii), GST_VIDEO_INFO_HEIGHT (&ii), ifmt,
            GST_VIDEO_INFO_WIDTH (&mi), GST_VIDEO_INFO_HEIGHT (&mi), mfmt),
        ("Every mask must annotate the image with the same timestamp, pixel "
            "for pixel."));
    return GST_FLOW_ERROR;
  }
  UnetPixelFormat ipf, mpf;
  if (!image_format_to_pixel (GST_VIDEO_INFO_FORMAT (&ii), &ipf)
      || !video_format_to_pixel (GST_VIDEO_INFO_FORMAT (&mi), &mpf)) {
    GST_ELEMENT_ERROR (self, STREAM, FORMAT,
        ("Unusable mask format: image is %s, mask is %s; masks must hold "
            "integer labels (GRAY8 or GRAY16_LE).", ifmt, mfmt), (NULL));
    return GST_FLOW_ERROR;
  }

  GstVideoFrame iframe, mframe;
  if (!gst_video_frame_map (&iframe, &ii, ibuf, GST_MAP_READ)) {
    GST_ELEMENT_ERROR (self, STREAM, FORMAT,
        ("An image buffer is smaller than its caps (%s %dx%d) say.", ifmt,
            GST_VIDEO_INFO_WIDTH (&ii), GST_VIDEO_INFO_HEIGHT (&ii)), (NULL));
    return GST_FLOW_ERROR;
  }
  if (!gst_video_frame_map (&mframe, &mi, mbuf, GST_MAP_READ)) {
    gst_video_frame_unmap (&iframe);
    GST_ELEMENT_ERROR (self, STREAM, FORMAT,
        ("A mask buffer is smaller than its caps (%s %dx%d) say.", mfmt,
            GST_VIDEO_INFO_WIDTH (&mi), GST_VIDEO_INFO_HEIGHT (&mi)), (NULL));
    return GST_FLOW_ERROR;
  }

  g_autoptr (GError) err = NULL;
  GstFlowReturn ret = GST_FLOW_OK;
  if (!unet_trainer_add_pair (self->trainer, ipf,
          GST_VIDEO_FRAME_PLANE_DATA (&iframe, 0),
          GST_VIDEO_FRAME_PLANE_STRIDE (&iframe, 0), mpf,
          GST_VIDEO_FRAME_PLANE_DATA (&mframe, 0),
          GST_VIDEO_FRAME_PLANE_STRIDE (&mframe, 0),
          GST_VIDEO_INFO_WIDTH (&ii), GST_VIDEO_INFO_HEIGHT (&ii), &err)) {
    GST_ELEMENT_ERROR (self, STREAM, FORMAT,
        ("Could not use the image/mask pair at %" GST_TIME_FORMAT ": %s",
            GST_TIME_ARGS (GST_BUFFER_PTS (ibuf)), err->message), (NULL));
    ret = GST_FLOW_ERROR;
    goto done;
  }

  for (guint i = 0; i < self->steps_per_pair
      && (guint64) unet_trainer_get_iteration (self->trainer) <
      self->iterations; i++) {
    if (!train_step (self)) {
      ret = GST_FLOW_ERROR;
      goto done;
    }
  }
  if (self->preview)
    ret = push_preview (self, &iframe, ibuf);

done:
  gst_video_frame_unmap (&mframe);
  gst_video_frame_unmap (&iframe);
  return ret;
}

static void
drop_unpaired (GstUnetTrain *self, GstAggregatorPad *pad, const gchar *why)
{
  GstBuffer *b = gst_aggregator_pad_pop_buffer (pad);
  if (self->dropped++ == 0)
    GST_ELEMENT_WARNING (self, STREAM, FAILED,
        ("Dropped a %s buffer without a partner (%s).",
            pad == self->image_pad ? "image" : "mask", why),
        ("PTS %" GST_TIME_FORMAT "; further drops are only logged.",
            GST_TIME_ARGS (b ? GST_BUFFER_PTS (b) : GST_CLOCK_TIME_NONE)));
  GST_INFO_OBJECT (self, "dropped unpaired %s buffer (%s), %" G_GUINT64_FORMAT
      " so far", pad == self->image_pad ? "image" : "mask", why, self->dropped);
  if (b)
    gst_buffer_unref (b);
}

/* After EOS on both pads: train on the held pairs until `iterations`. */
static GstFlowReturn
finish_training (GstUnetTrain *self)
{
  if (self->trainer == NULL)
    return GST_FLOW_EOS;
  guint n_val = 0;
  guint n_train = unet_trainer_get_n_pairs (self->trainer, &n_val);
  if ((guint64) unet_trainer_get_iteration (self->trainer) < self->iterations
      && n_train == 0) {
    GST_ELEMENT_ERROR (self, STREAM, FAILED,
        ("No image/mask pairs were received, so there is nothing to train on."),
        ("%" G_GUINT64_FORMAT " unpaired buffers were dropped.", self->dropped));
    return GST_FLOW_ERROR;
  }
  while ((guint64) unet_trainer_get_iteration (self->trainer) < self->iterations
      && !g_atomic_int_get (&self->cancel)) {
    if (!train_step (self))
      return GST_FLOW_ERROR;
  }
  if (unet_trainer_get_iteration (self->trainer) != self->saved_iteration
      && !save_checkpoint (self))
    return GST_FLOW_ERROR;
  return GST_FLOW_EOS;
}

/* ------------------------------------------------------------ vfuncs -- */

static GstFlowReturn
gst_unet_train_aggregate (GstAggregator *agg, gboolean timeout)
{
  GstUnetTrain *self = GST_UNET_TRAIN (agg);
  GstBuffer *ib = gst_aggregator_pad_peek_buffer (self->image_pad);
  GstBuffer *mb = gst_aggregator_pad_peek_buffer (self->mask_pad);
  gboolean ieos = gst_aggregator_pad_is_eos (self->image_pad);
  gboolean meos = gst_aggregator_pad_is_eos (self->mask_pad);
  GstFlowReturn ret = GST_FLOW_OK;

  if (ib && mb) {
    GstClockTime ip = GST_BUFFER_PTS (ib), mp = GST_BUFFER_PTS (mb);
    if (GST_CLOCK_TIME_IS_VALID (ip) && GST_CLOCK_TIME_IS_VALID (mp)
        && (ip > mp ? ip - mp : mp - ip) > self->timestamp_tolerance) {
      drop_unpaired (self, ip < mp ? self->image_pad : self->mask_pad,
          "its timestamp has no match on the other pad");
    } else {
      gst_aggregator_selected_samples (agg, GST_BUFFER_PTS (ib),
          GST_BUFFER_DTS (ib), GST_BUFFER_DURATION (ib), NULL);
      gst_aggregator_pad_drop_buffer (self->image_pad);
      gst_aggregator_pad_drop_buffer (self->mask_pad);
      ret = process_pair (self, ib, mb);
    }
  } else if (ib && meos) {
    drop_unpaired (self, self->image_pad, "the mask stream ended");
  } else if (mb && ieos) {
    drop_unpaired (self, self->mask_pad, "the image stream ended");
  } else if (ieos && meos) {
    ret = finish_training (self);
  } else {
    ret = GST_AGGREGATOR_FLOW_NEED_DATA;
  }
  if (ib)
    gst_buffer_unref (ib);
  if (mb)
    gst_buffer_unref (mb);
  return ret;
}

static gboolean
parse_normalization (const gchar *s, UnetNormalization *norm, GError **error)
{
  if (s[0] == '{')
    return unet_normalization_from_json (s, norm, error);
  g_autofree gchar *json = g_strdup_printf ("{\"mode\":\"%s\"}", s);
  return unet_normalization_from_json (json, norm, error);
}

static gboolean
gst_unet_train_start (GstAggregator *agg)
{
  GstUnetTrain *self = GST_UNET_TRAIN (agg);
  g_autoptr (GError) err = NULL;
  g_autoptr (UnetModel) model = NULL;

  GST_OBJECT_LOCK (self);
  UnetTrainerOptions opts = self->opts;
  g_autofree gchar *model_location = g_strdup (self->model_location);
  g_autofree gchar *output = g_strdup (self->output_location);
  g_autofree gchar *norm = g_strdup (self->normalization);
  g_autofree gchar *log_location = g_strdup (self->log_location);
  g_autofree gchar *best_location = g_strdup (self->best_location);
  gboolean keep_best = self->keep_best;
  gboolean resume = self->resume;
  GST_OBJECT_UNLOCK (self);

  g_atomic_int_set (&self->cancel, 0);
  self->dropped = 0;
  self->out_info_valid = FALSE;
  self->start_time = g_get_monotonic_time ();
  opts.iterations = self->iterations;

  gboolean have_norm = norm != NULL && norm[0] != '\0';
  if (have_norm && !parse_normalization (norm, &opts.normalization, &err)) {
    GST_ELEMENT_ERROR (self, LIBRARY, SETTINGS,
        ("Invalid normalization \"%s\": %s", norm, err->message), (NULL));
    return FALSE;
  }

  /* A wrong output-model would otherwise only show when the first checkpoint
   * is written, after all the training. */
  if (output != NULL && output[0] != '\0') {
    g_autofree gchar *dir = g_path_get_dirname (output);
    const gchar *why = NULL;
    if (g_file_test (output, G_FILE_TEST_IS_DIR))
      why = "it is a directory; give a file name such as DIR/model.safetensors";
    else if (!g_file_test (dir, G_FILE_TEST_IS_DIR))
      why = "its directory does not exist";
    else if (access (dir, W_OK) != 0)
      why = "its directory is not writable";
    if (why != NULL) {
      GST_ELEMENT_ERROR (self, RESOURCE, OPEN_WRITE,
          ("Cannot write output-model \"%s\": %s.", output, why), (NULL));
      return FALSE;
    }
  }

  self->best_score = G_MAXDOUBLE;
  self->log_failed = FALSE;
  g_clear_pointer (&self->best_path, g_free);
  if (keep_best) {
    if (!(opts.validation_fraction > 0.0)) {
      GST_ELEMENT_ERROR (self, LIBRARY, SETTINGS,
          ("keep-best needs held-out frames: set validation-fraction (e.g. 0.1 "
              "holds out every tenth frame)."), (NULL));
      return FALSE;
    }
    if (best_location != NULL && best_location[0] != '\0') {
      self->best_path = g_steal_pointer (&best_location);
    } else if (output != NULL && output[0] != '\0') {
      const gchar *dot = strrchr (output, '.');
      const gchar *slash = strrchr (output, '/');
      if (dot != NULL && (slash == NULL || dot > slash))
        self->best_path = g_strdup_printf ("%.*s.best%s", (int) (dot - output),
            output, dot);
      else
        self->best_path = g_strconcat (output, ".best", NULL);
    } else {
      GST_ELEMENT_ERROR (self, LIBRARY, SETTINGS,
          ("keep-best needs best-model or output-model to know where to write."),
          (NULL));
      return FALSE;
    }
  }

  /* Temporaries of a writer killed before its rename (ours, by exact name). */
  guint stale = 0;
  if (output != NULL && output[0] != '\0')
    stale += unet_model_remove_stale_temporaries (output);
  if (self->best_path != NULL)
    stale += unet_model_remove_stale_temporaries (self->best_path);
  if (stale > 0)
    GST_INFO_OBJECT (self, "removed %u stale temporary file(s) of an earlier "
        "run that was killed while writing", stale);

  gboolean resumed = FALSE;
  if (resume && output != NULL && g_file_test (output, G_FILE_TEST_EXISTS)) {
    self->trainer = unet_trainer_new_from_checkpoint (&opts, output, &err);
    if (self->trainer == NULL) {
      GST_ELEMENT_ERROR (self, RESOURCE, READ,
          ("Could not resume from \"%s\".", output), ("%s", err->message));
      return FALSE;
    }
    resumed = TRUE;
  } else {
    if (model_location != NULL && model_location[0] != '\0') {
      model = unet_model_load (model_location, &err);
      if (model == NULL) {
        GST_ELEMENT_ERROR (self, RESOURCE, READ,
            ("Could not load the model \"%s\": %s", model_location,
                err->message), (NULL));
        return FALSE;
      }
      if (!have_norm)
        unet_model_get_normalization (model, &opts.normalization);
    }
    self->trainer = unet_trainer_new (&opts, model, &err);
    if (self->trainer == NULL) {
      GST_ELEMENT_ERROR (self, LIBRARY, SETTINGS,
          ("Could not set up training: %s", err->message), (NULL));
      return FALSE;
    }
  }
  self->saved_iteration = unet_trainer_get_iteration (self->trainer);

  if (log_location != NULL && log_location[0] != '\0') {
    gboolean append = resumed && g_file_test (log_location, G_FILE_TEST_EXISTS);
    self->log = fopen (log_location, append ? "a" : "w");
    if (self->log == NULL) {
      GST_ELEMENT_ERROR (self, RESOURCE, OPEN_WRITE,
          ("Could not open the training log \"%s\".", log_location),
          ("%s", g_strerror (errno)));
      unet_trainer_free (g_steal_pointer (&self->trainer));
      return FALSE;
    }
    if (!append && (fputs (LOG_HEADER, self->log) < 0
            || fflush (self->log) != 0)) {
      GST_ELEMENT_ERROR (self, RESOURCE, OPEN_WRITE,
          ("Could not write the training log \"%s\".", log_location),
          ("%s", g_strerror (errno)));
      fclose (g_steal_pointer (&self->log));
      unet_trainer_free (g_steal_pointer (&self->trainer));
      return FALSE;
    }
  }
  GST_INFO_OBJECT (self, "training %s at iteration %" G_GINT64_FORMAT
      " of %" G_GUINT64_FORMAT, resumed ? "resumed" : "started",
      unet_trainer_get_iteration (self->trainer), self->iterations);
  return TRUE;
}

static gboolean
gst_unet_train_stop (GstAggregator *agg)
{
  GstUnetTrain *self = GST_UNET_TRAIN (agg);
  g_clear_pointer (&self->trainer, unet_trainer_free);
  g_clear_pointer (&self->best_path, g_free);
  if (self->log) {
    if (fclose (self->log) != 0 && !self->log_failed)
      GST_ELEMENT_WARNING (self, RESOURCE, WRITE,
          ("Could not close the training log: %s.", g_strerror (errno)),
          (NULL));
    self->log = NULL;
  }
  return TRUE;
}

/* The preview has the image's size and rate, in GRAY8. */
static GstFlowReturn
gst_unet_train_update_src_caps (GstAggregator *agg, GstCaps *downstream,
    GstCaps **ret)
{
  GstUnetTrain *self = GST_UNET_TRAIN (agg);
  GstVideoInfo ii, oi;
  if (!pad_video_info (self->image_pad, &ii))
    return GST_AGGREGATOR_FLOW_NEED_DATA;
  gst_video_info_set_format (&oi, GST_VIDEO_FORMAT_GRAY8,
      GST_VIDEO_INFO_WIDTH (&ii), GST_VIDEO_INFO_HEIGHT (&ii));
  GST_VIDEO_INFO_FPS_N (&oi) = GST_VIDEO_INFO_FPS_N (&ii);
  GST_VIDEO_INFO_FPS_D (&oi) = GST_VIDEO_INFO_FPS_D (&ii);
  GstCaps *caps = gst_video_info_to_caps (&oi);
  if (!gst_caps_can_intersect (caps, downstream)) {
    gst_caps_unref (caps);
    return GST_FLOW_NOT_NEGOTIATED;
  }
  *ret = caps;
  return GST_FLOW_OK;
}

static gboolean
gst_unet_train_negotiated_src_caps (GstAggregator *agg, GstCaps *caps)
{
  GstUnetTrain *self = GST_UNET_TRAIN (agg);
  self->out_info_valid = gst_video_info_from_caps (&self->out_info, caps);
  return self->out_info_valid;
}

static gboolean
gst_unet_train_sink_event (GstAggregator *agg, GstAggregatorPad *pad,
    GstEvent *event)
{
  GstUnetTrain *self = GST_UNET_TRAIN (agg);
  if (GST_EVENT_TYPE (event) == GST_EVENT_CAPS && pad == self->image_pad)
    gst_pad_mark_reconfigure (agg->srcpad);
  return GST_AGGREGATOR_CLASS (parent_class)->sink_event (agg, pad, event);
}

static GstStateChangeReturn
gst_unet_train_change_state (GstElement *element, GstStateChange transition)
{
  GstUnetTrain *self = GST_UNET_TRAIN (element);
  /* Training after EOS runs in the streaming thread: let it end before the
   * aggregator waits for that thread. */
  if (transition == GST_STATE_CHANGE_PAUSED_TO_READY)
    g_atomic_int_set (&self->cancel, 1);
  return GST_ELEMENT_CLASS (parent_class)->change_state (element, transition);
}

/* -------------------------------------------------------- properties -- */

static void
gst_unet_train_set_property (GObject *object, guint prop_id,
    const GValue *value, GParamSpec *pspec)
{
  GstUnetTrain *self = GST_UNET_TRAIN (object);
  UnetTrainerOptions *o = &self->opts;

  GST_OBJECT_LOCK (self);
  switch (prop_id) {
    case PROP_MODEL:
      g_free (self->model_location);
      self->model_location = g_value_dup_string (value);
      break;
    case PROP_OUTPUT_MODEL:
      g_free (self->output_location);
      self->output_location = g_value_dup_string (value);
      break;
    case PROP_RESUME:
      self->resume = g_value_get_boolean (value);
      break;
    case PROP_ITERATIONS:
      self->iterations = g_value_get_uint64 (value);
      break;
    case PROP_CHECKPOINT_INTERVAL:
      self->checkpoint_interval = g_value_get_uint (value);
      break;
    case PROP_VALIDATION_INTERVAL:
      self->validation_interval = g_value_get_uint (value);
      break;
    case PROP_STEPS_PER_PAIR:
      self->steps_per_pair = g_value_get_uint (value);
      break;
    case PROP_OPTIMIZER:
      o->optimizer = g_value_get_enum (value);
      break;
    case PROP_LEARNING_RATE:
      o->learning_rate = g_value_get_double (value);
      break;
    case PROP_MOMENTUM:
      o->momentum = g_value_get_double (value);
      break;
    case PROP_NESTEROV:
      o->nesterov = g_value_get_boolean (value);
      break;
    case PROP_WEIGHT_DECAY:
      o->weight_decay = g_value_get_double (value);
      break;
    case PROP_SCHEDULE:
      o->schedule = g_value_get_enum (value);
      break;
    case PROP_BATCH_SIZE:
      o->batch_size = g_value_get_int (value);
      break;
    case PROP_TILE_SIZE:
      o->tile_size = g_value_get_int (value);
      break;
    case PROP_ELASTIC_GRID:
      o->elastic_grid = g_value_get_int (value);
      break;
    case PROP_ELASTIC_SIGMA:
      o->elastic_sigma = g_value_get_double (value);
      o->elastic = o->elastic_sigma > 0.0;
      break;
    case PROP_ROTATION:
      o->rotation = g_value_get_double (value);
      break;
    case PROP_FLIP:
      o->flip = g_value_get_boolean (value);
      break;
    case PROP_INTENSITY_JITTER:
      o->intensity_jitter = g_value_get_double (value);
      break;
    case PROP_BORDER_WEIGHT:
      o->border_weight = g_value_get_double (value);
      break;
    case PROP_BORDER_SIGMA:
      o->border_sigma = g_value_get_double (value);
      break;
    case PROP_CLASS_BALANCE:
      o->class_balance = g_value_get_boolean (value);
      break;
    case PROP_MASK_MODE:
      o->mask_mode = g_value_get_enum (value);
      break;
    case PROP_IGNORE_LABEL:
      o->ignore_label = g_value_get_int (value);
      break;
    case PROP_DICE_WEIGHT:
      o->dice_weight = g_value_get_double (value);
      break;
    case PROP_VALIDATION_FRACTION:
      o->validation_fraction = g_value_get_double (value);
      break;
    case PROP_DATASET_CAPACITY:
      o->dataset_capacity = g_value_get_int (value);
      break;
    case PROP_SEED:
      o->seed = g_value_get_uint64 (value);
      break;
    case PROP_DEVICE:
      o->net.device = g_value_get_enum (value);
      break;
    case PROP_THREADS:
      o->net.threads = g_value_get_int (value);
      break;
    case PROP_LOG_LOCATION:
      g_free (self->log_location);
      self->log_location = g_value_dup_string (value);
      break;
    case PROP_NORMALIZATION:
      g_free (self->normalization);
      self->normalization = g_value_dup_string (value);
      break;
    case PROP_PREVIEW:
      self->preview = g_value_get_boolean (value);
      break;
    case PROP_TIMESTAMP_TOLERANCE:
      self->timestamp_tolerance = g_value_get_uint64 (value);
      break;
    case PROP_DEPTH:
      o->architecture.depth = g_value_get_int (value);
      break;
    case PROP_IN_CHANNELS:
      o->architecture.in_channels = g_value_get_int (value);
      break;
    case PROP_BASE_FILTERS:
      o->architecture.base_filters = g_value_get_int (value);
      break;
    case PROP_PADDING:
      o->architecture.padding = g_value_get_enum (value);
      break;
    case PROP_BATCH_NORM:
      o->architecture.batch_norm = g_value_get_boolean (value);
      break;
    case PROP_CLASSES:
      o->architecture.classes = g_value_get_int (value);
      break;
    case PROP_DROPOUT:
      o->architecture.dropout = g_value_get_double (value);
      break;
    case PROP_WARMUP:
      o->warmup = (gint64) g_value_get_uint64 (value);
      break;
    case PROP_KEEP_BEST:
      self->keep_best = g_value_get_boolean (value);
      break;
    case PROP_BEST_MODEL:
      g_free (self->best_location);
      self->best_location = g_value_dup_string (value);
      break;
    case PROP_BEST_METRIC:
      self->best_metric = g_value_get_enum (value);
      break;
    default:
      G_OBJECT_WARN_INVALID_PROPERTY_ID (object, prop_id, pspec);
      break;
  }
  GST_OBJECT_UNLOCK (self);
}

static void
gst_unet_train_get_property (GObject *object, guint prop_id, GValue *value,
    GParamSpec *pspec)
{
  GstUnetTrain *self = GST_UNET_TRAIN (object);
  const UnetTrainerOptions *o = &self->opts;

  GST_OBJECT_LOCK (self);
  switch (prop_id) {
    case PROP_MODEL:
      g_value_set_string (value, self->model_location);
      break;
    case PROP_OUTPUT_MODEL:
      g_value_set_string (value, self->output_location);
      break;
    case PROP_RESUME:
      g_value_set_boolean (value, self->resume);
      break;
    case PROP_ITERATIONS:
      g_value_set_uint64 (value, self->iterations);
      break;
    case PROP_CHECKPOINT_INTERVAL:
      g_value_set_uint (value, self->checkpoint_interval);
      break;
    case PROP_VALIDATION_INTERVAL:
      g_value_set_uint (value, self->validation_interval);
      break;
    case PROP_STEPS_PER_PAIR:
      g_value_set_uint (value, self->steps_per_pair);
      break;
    case PROP_OPTIMIZER:
      g_value_set_enum (value, o->optimizer);
      break;
    case PROP_LEARNING_RATE:
      g_value_set_double (value, o->learning_rate);
      break;
    case PROP_MOMENTUM:
      g_value_set_double (value, o->momentum);
      break;
    case PROP_NESTEROV:
      g_value_set_boolean (value, o->nesterov);
      break;
    case PROP_WEIGHT_DECAY:
      g_value_set_double (value, o->weight_decay);
      break;
    case PROP_SCHEDULE:
      g_value_set_enum (value, o->schedule);
      break;
    case PROP_BATCH_SIZE:
      g_value_set_int (value, o->batch_size);
      break;
    case PROP_TILE_SIZE:
      g_value_set_int (value, o->tile_size);
      break;
    case PROP_ELASTIC_GRID:
      g_value_set_int (value, o->elastic_grid);
      break;
    case PROP_ELASTIC_SIGMA:
      g_value_set_double (value, o->elastic_sigma);
      break;
    case PROP_ROTATION:
      g_value_set_double (value, o->rotation);
      break;
    case PROP_FLIP:
      g_value_set_boolean (value, o->flip);
      break;
    case PROP_INTENSITY_JITTER:
      g_value_set_double (value, o->intensity_jitter);
      break;
    case PROP_BORDER_WEIGHT:
      g_value_set_double (value, o->border_weight);
      break;
    case PROP_BORDER_SIGMA:
      g_value_set_double (value, o->border_sigma);
      break;
    case PROP_CLASS_BALANCE:
      g_value_set_boolean (value, o->class_balance);
      break;
    case PROP_MASK_MODE:
      g_value_set_enum (value, o->mask_mode);
      break;
    case PROP_IGNORE_LABEL:
      g_value_set_int (value, o->ignore_label);
      break;
    case PROP_DICE_WEIGHT:
      g_value_set_double (value, o->dice_weight);
      break;
    case PROP_VALIDATION_FRACTION:
      g_value_set_double (value, o->validation_fraction);
      break;
    case PROP_DATASET_CAPACITY:
      g_value_set_int (value, o->dataset_capacity);
      break;
    case PROP_SEED:
      g_value_set_uint64 (value, o->seed);
      break;
    case PROP_DEVICE:
      g_value_set_enum (value, o->net.device);
      break;
    case PROP_THREADS:
      g_value_set_int (value, o->net.threads);
      break;
    case PROP_LOG_LOCATION:
      g_value_set_string (value, self->log_location);
      break;
    case PROP_NORMALIZATION:
      g_value_set_string (value, self->normalization);
      break;
    case PROP_PREVIEW:
      g_value_set_boolean (value, self->preview);
      break;
    case PROP_TIMESTAMP_TOLERANCE:
      g_value_set_uint64 (value, self->timestamp_tolerance);
      break;
    case PROP_DEPTH:
      g_value_set_int (value, o->architecture.depth);
      break;
    case PROP_IN_CHANNELS:
      g_value_set_int (value, o->architecture.in_channels);
      break;
    case PROP_BASE_FILTERS:
      g_value_set_int (value, o->architecture.base_filters);
      break;
    case PROP_PADDING:
      g_value_set_enum (value, o->architecture.padding);
      break;
    case PROP_BATCH_NORM:
      g_value_set_boolean (value, o->architecture.batch_norm);
      break;
    case PROP_CLASSES:
      g_value_set_int (value, o->architecture.classes);
      break;
    case PROP_DROPOUT:
      g_value_set_double (value, o->architecture.dropout);
      break;
    case PROP_WARMUP:
      g_value_set_uint64 (value, (guint64) o->warmup);
      break;
    case PROP_KEEP_BEST:
      g_value_set_boolean (value, self->keep_best);
      break;
    case PROP_BEST_MODEL:
      g_value_set_string (value, self->best_location);
      break;
    case PROP_BEST_METRIC:
      g_value_set_enum (value, self->best_metric);
      break;
    default:
      G_OBJECT_WARN_INVALID_PROPERTY_ID (object, prop_id, pspec);
      break;
  }
  GST_OBJECT_UNLOCK (self);
}

static void
gst_unet_train_finalize (GObject *object)
{
  GstUnetTrain *self = GST_UNET_TRAIN (object);
  g_free (self->model_location);
  g_free (self->output_location);
  g_free (self->log_location);
  g_free (self->normalization);
  g_free (self->best_location);
  G_OBJECT_CLASS (parent_class)->finalize (object);
}

/* ------------------------------------------------------- class / init -- */

#define RW (G_PARAM_READWRITE | G_PARAM_STATIC_STRINGS | GST_PARAM_MUTABLE_READY)

/* The image pad offers only frames with the model's channels (gray for 1, RGB
 * and RGBA for 3), so a mismatch fails negotiation, synchronously for sources
 * that check their caps before streaming, with an error naming both counts
 * (an error from the streaming thread could leave gst-launch-1.0 1.22 hanging
 * after a preroll). */
static gboolean
gst_unet_train_sink_query (GstAggregator *agg, GstAggregatorPad *pad,
    GstQuery *query)
{
  GstUnetTrain *self = GST_UNET_TRAIN (agg);

  if (GST_QUERY_TYPE (query) == GST_QUERY_CAPS && pad == self->image_pad
      && self->trainer != NULL) {
    gint want = unet_trainer_get_config (self->trainer)->in_channels;
    GstCaps *filter, *caps, *res;
    gst_query_parse_caps (query, &filter);
    caps = gst_caps_from_string (want == 3 ?
        GST_VIDEO_CAPS_MAKE ("{ RGB, RGBA }") :
        GST_VIDEO_CAPS_MAKE ("{ GRAY8, GRAY16_LE }"));
    res = filter ? gst_caps_intersect_full (filter, caps,
        GST_CAPS_INTERSECT_FIRST) : gst_caps_ref (caps);
    if (filter && gst_caps_is_empty (res) && gst_caps_is_fixed (filter)) {
      GstVideoInfo info;
      if (gst_video_info_from_caps (&info, filter)) {
        gint have = GST_VIDEO_INFO_N_COMPONENTS (&info) >= 3 ? 3 : 1;
        if (have != want)
          GST_ELEMENT_ERROR (self, CORE, NEGOTIATION,
              ("The model takes %d input channel%s but the image frames (%s) "
                  "have %d: give it %s frames.", want, want == 1 ? "" : "s",
                  gst_video_format_to_string (GST_VIDEO_INFO_FORMAT (&info)),
                  have, want == 3 ? "RGB or RGBA" : "GRAY8 or GRAY16_LE"),
              (NULL));
      }
    }
    gst_query_set_caps_result (query, res);
    gst_caps_unref (res);
    gst_caps_unref (caps);
    return TRUE;
  }
  return GST_AGGREGATOR_CLASS (parent_class)->sink_query (agg, pad, query);
}

static void
gst_unet_train_class_init (GstUnetTrainClass *klass)
{
  GObjectClass *gobject_class = G_OBJECT_CLASS (klass);
  GstElementClass *element_class = GST_ELEMENT_CLASS (klass);
  GstAggregatorClass *agg_class = GST_AGGREGATOR_CLASS (klass);

  gobject_class->set_property = gst_unet_train_set_property;
  gobject_class->get_property = gst_unet_train_get_property;
  gobject_class->finalize = gst_unet_train_finalize;

  g_object_class_install_property (gobject_class, PROP_MODEL,
      g_param_spec_string ("model", "Model",
          "safetensors model to fine-tune (empty: a new network from depth, "
          "base-filters, padding, batch-norm, classes, dropout)", NULL, RW));
  g_object_class_install_property (gobject_class, PROP_OUTPUT_MODEL,
      g_param_spec_string ("output-model", "Output model",
          "Where checkpoints and the final model are written (safetensors, "
          "atomically; loads in unetsegment)", NULL, RW));
  g_object_class_install_property (gobject_class, PROP_RESUME,
      g_param_spec_boolean ("resume", "Resume",
          "Continue from the checkpoint at output-model (weights, optimiser "
          "state, iteration) when it exists", FALSE, RW));
  g_object_class_install_property (gobject_class, PROP_ITERATIONS,
      g_param_spec_uint64 ("iterations", "Iterations",
          "Optimiser steps of the whole run", 1, G_MAXINT64,
          DEFAULT_ITERATIONS, RW));
  g_object_class_install_property (gobject_class, PROP_CHECKPOINT_INTERVAL,
      g_param_spec_uint ("checkpoint-interval", "Checkpoint interval",
          "Write output-model every N steps (0: only at the end)", 0,
          G_MAXUINT, DEFAULT_CHECKPOINT_INTERVAL, RW));
  g_object_class_install_property (gobject_class, PROP_VALIDATION_INTERVAL,
      g_param_spec_uint ("validation-interval", "Validation interval",
          "Compute the validation Dice every N steps and at the end (0: only "
          "at the end)", 0, G_MAXUINT, DEFAULT_VALIDATION_INTERVAL, RW));
  g_object_class_install_property (gobject_class, PROP_STEPS_PER_PAIR,
      g_param_spec_uint ("steps-per-pair", "Steps per pair",
          "Optimiser steps taken for every pair received while streaming", 0,
          1000, DEFAULT_STEPS_PER_PAIR, RW));
  g_object_class_install_property (gobject_class, PROP_OPTIMIZER,
      g_param_spec_enum ("optimizer", "Optimizer", "Optimiser",
          GST_TYPE_UNET_TRAIN_OPTIMIZER, DEFAULT_OPTIMIZER, RW));
  g_object_class_install_property (gobject_class, PROP_LEARNING_RATE,
      g_param_spec_double ("learning-rate", "Learning rate",
          "Peak learning rate (after warm-up); 0 = the optimiser's default: "
          "1e-3 for adam/adamw, 1e-3 for sgd with momentum 0.99 (for our loss, "
          "the weighted MEAN over the tile)", 0.0, 100.0, DEFAULT_LEARNING_RATE,
          RW));
  g_object_class_install_property (gobject_class, PROP_MOMENTUM,
      g_param_spec_double ("momentum", "Momentum",
          "SGD momentum (0.99 in the paper)", 0.0, 0.9999, DEFAULT_MOMENTUM,
          RW));
  g_object_class_install_property (gobject_class, PROP_NESTEROV,
      g_param_spec_boolean ("nesterov", "Nesterov", "Nesterov momentum (SGD)",
          FALSE, RW));
  g_object_class_install_property (gobject_class, PROP_WEIGHT_DECAY,
      g_param_spec_double ("weight-decay", "Weight decay",
          "L2 (sgd, adam) or decoupled (adamw) weight decay", 0.0, 0.999,
          DEFAULT_WEIGHT_DECAY, RW));
  g_object_class_install_property (gobject_class, PROP_SCHEDULE,
      g_param_spec_enum ("schedule", "Schedule", "Learning-rate schedule",
          GST_TYPE_UNET_TRAIN_SCHEDULE, DEFAULT_SCHEDULE, RW));
  g_object_class_install_property (gobject_class, PROP_BATCH_SIZE,
      g_param_spec_int ("batch-size", "Batch size",
          "Tiles per step (the paper: one large tile)", 1, 256,
          DEFAULT_BATCH_SIZE, RW));
  g_object_class_install_property (gobject_class, PROP_TILE_SIZE,
      g_param_spec_int ("tile-size", "Tile size",
          "Network input edge in pixels, rounded up to a legal size (0: the "
          "legal size nearest 572, smaller for small frames)", 0, 8192,
          DEFAULT_TILE_SIZE, RW));
  g_object_class_install_property (gobject_class, PROP_ELASTIC_GRID,
      g_param_spec_int ("elastic-grid", "Elastic grid",
          "Control points per side of the elastic deformation", 2, 64,
          DEFAULT_ELASTIC_GRID, RW));
  g_object_class_install_property (gobject_class, PROP_ELASTIC_SIGMA,
      g_param_spec_double ("elastic-sigma", "Elastic sigma",
          "Standard deviation of the control-point displacements in pixels "
          "(0: no elastic deformation)", 0.0, 1000.0, DEFAULT_ELASTIC_SIGMA,
          RW));
  g_object_class_install_property (gobject_class, PROP_ROTATION,
      g_param_spec_double ("rotation", "Rotation",
          "Largest random rotation in degrees (0: off, 180: any angle)", 0.0,
          180.0, DEFAULT_ROTATION, RW));
  g_object_class_install_property (gobject_class, PROP_FLIP,
      g_param_spec_boolean ("flip", "Flip", "Random horizontal/vertical flips",
          DEFAULT_FLIP, RW));
  g_object_class_install_property (gobject_class, PROP_INTENSITY_JITTER,
      g_param_spec_double ("intensity-jitter", "Intensity jitter",
          "Strength of the random gamma/contrast/brightness changes (0: off, "
          "1: gamma 1.5, contrast 0.2, brightness 0.1)", 0.0, 4.0,
          DEFAULT_INTENSITY_JITTER, RW));
  g_object_class_install_property (gobject_class, PROP_BORDER_WEIGHT,
      g_param_spec_double ("border-weight", "Border weight",
          "w0 of the border weights between touching objects (0: off)", 0.0,
          10000.0, DEFAULT_BORDER_WEIGHT, RW));
  g_object_class_install_property (gobject_class, PROP_BORDER_SIGMA,
      g_param_spec_double ("border-sigma", "Border sigma",
          "sigma of the border weights in pixels", 0.01, 1000.0,
          DEFAULT_BORDER_SIGMA, RW));
  g_object_class_install_property (gobject_class, PROP_CLASS_BALANCE,
      g_param_spec_boolean ("class-balance", "Class balance",
          "Weigh pixels to balance class frequencies", DEFAULT_CLASS_BALANCE,
          RW));
  g_object_class_install_property (gobject_class, PROP_MASK_MODE,
      g_param_spec_enum ("mask-mode", "Mask mode",
          "How mask pixel values are read", GST_TYPE_UNET_TRAIN_MASK_MODE,
          DEFAULT_MASK_MODE, RW));
  g_object_class_install_property (gobject_class, PROP_IGNORE_LABEL,
      g_param_spec_int ("ignore-label", "Ignore label",
          "Mask value of unannotated pixels that take no part in the loss "
          "(-1: none)", -1, 65535, DEFAULT_IGNORE_LABEL, RW));
  g_object_class_install_property (gobject_class, PROP_DICE_WEIGHT,
      g_param_spec_double ("dice-weight", "Dice weight",
          "Weight of a soft-Dice term added to the cross-entropy (0: off)",
          0.0, 100.0, DEFAULT_DICE_WEIGHT, RW));
  g_object_class_install_property (gobject_class, PROP_VALIDATION_FRACTION,
      g_param_spec_double ("validation-fraction", "Validation fraction",
          "Share of the pairs held out (chosen from the seed) for the "
          "validation Dice", 0.0, 0.99, DEFAULT_VALIDATION_FRACTION, RW));
  g_object_class_install_property (gobject_class, PROP_DATASET_CAPACITY,
      g_param_spec_int ("dataset-capacity", "Dataset capacity",
          "Training pairs held in memory; the oldest is dropped when full", 1,
          G_MAXINT, DEFAULT_DATASET_CAPACITY, RW));
  g_object_class_install_property (gobject_class, PROP_SEED,
      g_param_spec_uint64 ("seed", "Seed",
          "Seed of the initialisation, sampling, augmentation and split", 0,
          G_MAXUINT64, DEFAULT_SEED, RW));
  g_object_class_install_property (gobject_class, PROP_DEVICE,
      g_param_spec_enum ("device", "Device", "Where training runs",
          GST_TYPE_UNET_DEVICE, DEFAULT_DEVICE, RW));
  g_object_class_install_property (gobject_class, PROP_THREADS,
      g_param_spec_int ("threads", "Threads",
          "CPU threads (0: $UNET_NUM_THREADS or all cores)", 0, 1024,
          DEFAULT_THREADS, RW));
  g_object_class_install_property (gobject_class, PROP_LOG_LOCATION,
      g_param_spec_string ("log-location", "Log location",
          "CSV log, one row per step: iteration,loss,dice,val_dice,lr,"
          "samples_per_s,time", NULL, RW));
  g_object_class_install_property (gobject_class, PROP_NORMALIZATION,
      g_param_spec_string ("normalization", "Normalization",
          "How pixels become network input, stored in the model: unet.h JSON "
          "(e.g. {\"mode\":\"range\",\"min\":0,\"max\":255}) or a mode name; "
          "empty: the fine-tuned model's, else percentile 1..99.8", NULL, RW));
  g_object_class_install_property (gobject_class, PROP_PREVIEW,
      g_param_spec_boolean ("preview", "Preview",
          "Push the current prediction on each image (GRAY8 class indices)",
          DEFAULT_PREVIEW, RW));
  g_object_class_install_property (gobject_class, PROP_TIMESTAMP_TOLERANCE,
      g_param_spec_uint64 ("timestamp-tolerance", "Timestamp tolerance",
          "Largest PTS difference (ns) of an image and the mask it pairs with",
          0, G_MAXUINT64, DEFAULT_TIMESTAMP_TOLERANCE, RW));
  g_object_class_install_property (gobject_class, PROP_DEPTH,
      g_param_spec_int ("depth", "Depth",
          "Poolings of a new network (no model)", 1, 8, DEFAULT_DEPTH, RW));
  g_object_class_install_property (gobject_class, PROP_IN_CHANNELS,
      g_param_spec_int ("in-channels", "Input channels",
          "Channels of a new network's input (no model): 1 for gray images, "
          "3 for RGB/RGBA ones", 1, 3, 1, RW));
  g_object_class_install_property (gobject_class, PROP_BASE_FILTERS,
      g_param_spec_int ("base-filters", "Base filters",
          "Filters at full resolution of a new network", 1, 1024,
          DEFAULT_BASE_FILTERS, RW));
  g_object_class_install_property (gobject_class, PROP_PADDING,
      g_param_spec_enum ("padding", "Padding",
          "Convolution padding of a new network", GST_TYPE_UNET_TRAIN_PADDING,
          DEFAULT_PADDING, RW));
  g_object_class_install_property (gobject_class, PROP_BATCH_NORM,
      g_param_spec_boolean ("batch-norm", "Batch norm",
          "Batch normalisation in a new network", DEFAULT_BATCH_NORM, RW));
  g_object_class_install_property (gobject_class, PROP_CLASSES,
      g_param_spec_int ("classes", "Classes",
          "Classes of a new network (1: sigmoid foreground)", 1, 16,
          DEFAULT_CLASSES, RW));
  g_object_class_install_property (gobject_class, PROP_DROPOUT,
      g_param_spec_double ("dropout", "Dropout",
          "Dropout probability at the bottom of a new network", 0.0, 0.95,
          DEFAULT_DROPOUT, RW));
  g_object_class_install_property (gobject_class, PROP_WARMUP,
      g_param_spec_uint64 ("warmup", "Warm-up",
          "Steps over which the learning rate rises linearly to its value, "
          "at most a quarter of iterations (then the schedule applies)", 0,
          G_MAXINT64, DEFAULT_WARMUP, RW));
  g_object_class_install_property (gobject_class, PROP_KEEP_BEST,
      g_param_spec_boolean ("keep-best", "Keep best",
          "Write the model with the best validation score (best-metric) so far "
          "to best-model after each validation (needs validation-fraction > 0)",
          DEFAULT_KEEP_BEST, RW));
  g_object_class_install_property (gobject_class, PROP_BEST_MODEL,
      g_param_spec_string ("best-model", "Best model",
          "Where keep-best writes (empty: output-model with .best before the "
          "extension, e.g. model.best.safetensors)", NULL, RW));
  g_object_class_install_property (gobject_class, PROP_BEST_METRIC,
      g_param_spec_enum ("best-metric", "Best metric",
          "Validation score keep-best ranks by",
          GST_TYPE_UNET_TRAIN_BEST_METRIC, DEFAULT_BEST_METRIC, RW));

  gst_element_class_add_static_pad_template_with_gtype (element_class,
      &image_template, GST_TYPE_AGGREGATOR_PAD);
  gst_element_class_add_static_pad_template_with_gtype (element_class,
      &mask_template, GST_TYPE_AGGREGATOR_PAD);
  gst_element_class_add_static_pad_template_with_gtype (element_class,
      &src_template, GST_TYPE_AGGREGATOR_PAD);
  gst_element_class_set_static_metadata (element_class, "U-Net trainer",
      "Filter/Analyzer/Video",
      "Trains a U-Net from paired image and mask streams with elastic "
      "deformation and border-weighted loss", "gst-unet");

  element_class->change_state = GST_DEBUG_FUNCPTR (gst_unet_train_change_state);
  agg_class->aggregate = GST_DEBUG_FUNCPTR (gst_unet_train_aggregate);
  agg_class->start = GST_DEBUG_FUNCPTR (gst_unet_train_start);
  agg_class->stop = GST_DEBUG_FUNCPTR (gst_unet_train_stop);
  agg_class->sink_event = GST_DEBUG_FUNCPTR (gst_unet_train_sink_event);
  agg_class->sink_query = GST_DEBUG_FUNCPTR (gst_unet_train_sink_query);
  agg_class->get_next_time = gst_aggregator_simple_get_next_time;
  agg_class->update_src_caps =
      GST_DEBUG_FUNCPTR (gst_unet_train_update_src_caps);
  agg_class->negotiated_src_caps =
      GST_DEBUG_FUNCPTR (gst_unet_train_negotiated_src_caps);

  gst_type_mark_as_plugin_api (GST_TYPE_UNET_TRAIN_OPTIMIZER, 0);
  gst_type_mark_as_plugin_api (GST_TYPE_UNET_TRAIN_SCHEDULE, 0);
  gst_type_mark_as_plugin_api (GST_TYPE_UNET_TRAIN_MASK_MODE, 0);
  gst_type_mark_as_plugin_api (GST_TYPE_UNET_TRAIN_PADDING, 0);

  GST_DEBUG_CATEGORY_INIT (gst_unet_train_debug, "unettrain", 0,
      "U-Net trainer");
}

static GstAggregatorPad *
add_sink_pad (GstUnetTrain *self, GstStaticPadTemplate *tmpl)
{
  GstPadTemplate *templ = gst_static_pad_template_get (tmpl);
  GstAggregatorPad *pad = g_object_new (GST_TYPE_AGGREGATOR_PAD,
      "name", tmpl->name_template, "direction", GST_PAD_SINK,
      "template", templ, NULL);
  gst_object_unref (templ);
  gst_element_add_pad (GST_ELEMENT (self), GST_PAD (pad));
  return pad;
}

static void
gst_unet_train_init (GstUnetTrain *self)
{
  unet_trainer_options_init (&self->opts);
  self->opts.optimizer = DEFAULT_OPTIMIZER;
  self->opts.learning_rate = DEFAULT_LEARNING_RATE;
  self->opts.momentum = DEFAULT_MOMENTUM;
  self->opts.schedule = DEFAULT_SCHEDULE;
  self->opts.warmup = DEFAULT_WARMUP;
  self->keep_best = DEFAULT_KEEP_BEST;
  self->best_metric = DEFAULT_BEST_METRIC;
  self->opts.architecture.depth = DEFAULT_DEPTH;
  self->opts.architecture.base_filters = DEFAULT_BASE_FILTERS;
  self->opts.architecture.classes = DEFAULT_CLASSES;
  self->iterations = DEFAULT_ITERATIONS;
  self->checkpoint_interval = DEFAULT_CHECKPOINT_INTERVAL;
  self->validation_interval = DEFAULT_VALIDATION_INTERVAL;
  self->steps_per_pair = DEFAULT_STEPS_PER_PAIR;
  self->preview = DEFAULT_PREVIEW;
  self->timestamp_tolerance = DEFAULT_TIMESTAMP_TOLERANCE;
  self->image_pad = add_sink_pad (self, &image_template);
  self->mask_pad = add_sink_pad (self, &mask_template);
}
