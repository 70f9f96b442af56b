/* gst-unet — unetsegment: overlap-tile U-Net segmentation of gray and RGB frames.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 */
/**
 * SECTION:element-unetsegment
 * @title: unetsegment
 *
 * Segments GRAY8 / GRAY16_LE / GRAY32F frames (1-channel models) or RGB / RGBA
 * frames (3-channel models, e.g. H&E; alpha is ignored) of any size (1x1 and
 * up) with a U-Net model file (.safetensors), using the U-Net paper's mirror-extended overlap-tile
 * strategy: for valid-padded models the output equals one forward pass over the
 * whole mirror-extended frame. The output has the input's size; its content is
 * chosen by #GstUnetSegment:output.
 *
 * ## Example launch line
 * |[
 * gst-launch-1.0 tiffstacksrc location=stack.tif ! unetsegment model=unet.safetensors \
 *     output=labels ! tiffstacksink location=labels.tif
 * ]|
 *
 * Tiles of one frame, and of consecutive frames when upstream is not live, share a
 * forward pass (#GstUnetSegment:batch-size tiles). In live pipelines every frame is
 * finished before the next is taken (latency over throughput), late frames are
 * dropped (QoS) and the LATENCY query adds the measured processing time.
 *
 * With #GstUnetSegment:post-messages, every output frame posts an element message
 * "unetsegment-stats": frame-number (guint64, 0-based output counter), pts (guint64,
 * GstClockTime), object-count (guint, 4-connected components of
 * #GstUnetSegment:foreground-class), foreground-fraction (gdouble, 0..1),
 * mean-object-area (gdouble, pixels), processing-time (guint64, ns), tiles (gint),
 * tile-width, tile-height (gint, input tile edges), and the parts of
 * processing-time: normalize-time, extract-time, forward-time, stitch-time,
 * post-time (guint64, ns); for live use also latency (guint64, ns: capture to
 * output, i.e. the pipeline clock's running time when the frame leaves minus the
 * frame's running time; GST_CLOCK_TIME_NONE without a clock), frames-dropped
 * (guint64, cumulative since start: frames that never reached the network, i.e.
 * qos-dropped plus frames missing in the input, such as those a leaky queue
 * upstream dropped -- counted exactly from buffer offsets when the source numbers
 * its frames, as videotestsrc does, else estimated from the timestamps at the caps
 * frame rate, as for aravissrc: a camera running slower than its nominal rate
 * makes the estimate high) and qos-dropped (guint64, cumulative: frames this
 * element skipped because QoS said they would be late).
 *
 * Setting #GstUnetSegment:model while PLAYING loads the new model in the calling
 * thread (outside the streaming lock); the streaming thread swaps it in between two
 * frames. If the load fails a warning is posted and the old model stays.
 * #GstUnetSegment::reload does the same for the current file, and with
 * #GstUnetSegment:watch-model the element reloads by itself whenever the file is
 * replaced (a checkpoint written to a temporary name and renamed, as unettrain
 * does) or closed after writing; a file that does not load (written in place and
 * caught half-written, say) only posts a warning. Every swap posts an element
 * message "unetsegment-model-swapped": model (gchararray, the file),
 * frame-number (guint64, output counter of the first frame made by the new
 * model).
 *
 * ## Live acquisition
 * |[
 * gst-launch-1.0 aravissrc ! video/x-raw,format=GRAY16_LE ! tee name=t \
 *     t. ! queue leaky=downstream max-size-buffers=1 ! unetsegment \
 *         model=nuclei.safetensors watch-model=true post-messages=true ! fakesink \
 *     t. ! queue ! tiffstacksink location=raw.tif
 * ]|
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include "gstunetsegment.h"
#include "gstunetenums.h"
#include "gstunetcaps.h"
#include "model-watch.h"
#include "overlay.h"
#include "unet.h"

#include <gst/video/video.h>
#include <string.h>

GST_DEBUG_CATEGORY_STATIC (gst_unet_segment_debug);
#define GST_CAT_DEFAULT gst_unet_segment_debug

typedef enum
{
  OUTPUT_LABELS,
  OUTPUT_PROBABILITIES,
  OUTPUT_OVERLAY,
  OUTPUT_INSTANCES,
} GstUnetSegmentOutput;

typedef enum
{
  NORM_MODEL,
  NORM_NONE,
  NORM_RANGE,
  NORM_PERCENTILE,
  NORM_MEAN_STD,
  NORM_FRAME_MEAN_STD,
} GstUnetSegmentNormalization;

enum
{
  PROP_0,
  PROP_MODEL,
  PROP_DEVICE,
  PROP_GPU_ID,
  PROP_PRECISION,
  PROP_TILE_SIZE,
  PROP_BATCH_SIZE,
  PROP_THREADS,
  PROP_MEMORY_BUDGET,
  PROP_OUTPUT,
  PROP_PROBABILITY_CLASS,
  PROP_FOREGROUND_CLASS,
  PROP_OVERLAY_ALPHA,
  PROP_NORMALIZATION,
  PROP_NORM_MIN,
  PROP_NORM_MAX,
  PROP_NORM_LOW,
  PROP_NORM_HIGH,
  PROP_NORM_MEAN,
  PROP_NORM_STD,
  PROP_POST_MESSAGES,
  PROP_WATCH_MODEL,
};

enum
{
  SIGNAL_RELOAD,
  LAST_SIGNAL,
};

static guint signals[LAST_SIGNAL];

#define DEFAULT_DEVICE UNET_DEVICE_AUTO
#define DEFAULT_GPU_ID 0
#define DEFAULT_PRECISION UNET_PRECISION_FP32
#define DEFAULT_TILE_SIZE 0
#define DEFAULT_BATCH_SIZE 4
#define DEFAULT_THREADS 0
#define DEFAULT_MEMORY_BUDGET 1024
#define DEFAULT_OUTPUT OUTPUT_LABELS
#define DEFAULT_PROBABILITY_CLASS 1
#define DEFAULT_FOREGROUND_CLASS 1
#define DEFAULT_OVERLAY_ALPHA 0.5
#define DEFAULT_NORMALIZATION NORM_MODEL
#define DEFAULT_NORM_MIN 0.0
#define DEFAULT_NORM_MAX 65535.0
#define DEFAULT_NORM_LOW 1.0
#define DEFAULT_NORM_HIGH 99.8
#define DEFAULT_NORM_MEAN 0.0
#define DEFAULT_NORM_STD 1.0
#define DEFAULT_POST_MESSAGES FALSE
#define DEFAULT_WATCH_MODEL FALSE

#define SINK_CAPS GST_VIDEO_CAPS_MAKE ("{ GRAY8, GRAY16_LE, GRAY32F, RGB, RGBA, " \
    GST_UNET_MULTI_CHANNEL_FORMATS " }")
#define SRC_CAPS GST_VIDEO_CAPS_MAKE ("{ GRAY8, GRAY32F, RGBA, GRAY32_LE, GRAY16_LE }")

static GstStaticPadTemplate sink_template = GST_STATIC_PAD_TEMPLATE ("sink",
    GST_PAD_SINK, GST_PAD_ALWAYS, GST_STATIC_CAPS (SINK_CAPS));
static GstStaticPadTemplate src_template = GST_STATIC_PAD_TEMPLATE ("src",
    GST_PAD_SRC, GST_PAD_ALWAYS, GST_STATIC_CAPS (SRC_CAPS));

/* A finished frame waiting to be pushed. */
typedef struct
{
  GstBuffer *inbuf;
  UnetSegmentResult *result;
} ReadyFrame;

struct _GstUnetSegment
{
  GstBaseTransform parent;

  /* Properties (GST_OBJECT_LOCK). */
  gchar *model_path;
  UnetDevice device;
  gint gpu_id;
  UnetPrecision precision;
  guint tile_size;
  gint batch_size;
  gint threads;
  guint memory_budget;          /* MiB */
  GstUnetSegmentOutput output;
  guint probability_class;
  guint foreground_class;
  gdouble overlay_alpha;
  GstUnetSegmentNormalization normalization;
  gdouble norm_min, norm_max, norm_low, norm_high, norm_mean, norm_std;
  gboolean post_messages;

  /* Model swap (GST_OBJECT_LOCK): a segmenter built by set_property while running,
   * taken by the streaming thread between frames. */
  gboolean running;
  UnetSegmenter *pending;
  GMutex load_lock;             /* serialises loads from concurrent set_property */

  /* Model file watch (watch-model), between start() and stop(); the pointer
   * under GST_OBJECT_LOCK. Loads happen in its thread, outside the streaming
   * lock. */
  gboolean watch_model;
  GstUnetModelWatch *watch;

  /* Streaming state. */
  UnetSegmenter *seg;
  GstUnetSegmentOutput active_output;
  guint active_probability_class;
  gboolean active_post_messages;
  GstUnetLayout in_layout, out_layout;
  gint model_channels;          /* in_channels of the model in use (atomic), 0 before start */
  gboolean live;
  GQueue inflight;              /* GstBuffer*, pushed to seg, in push order */
  GQueue ready;                 /* ReadyFrame*, finished, in push order */
  guint64 frames_out;
  GstClockTime max_processing;  /* reported in the LATENCY query */
  guint model_frames;           /* frames made by the current segmenter */
  gboolean provisional;         /* max_processing is a first (warm-up) frame's */

  /* Drop accounting for the statistics (streaming thread). */
  guint64 qos_dropped;          /* skipped here on QoS */
  guint64 upstream_dropped;     /* missing in the input (gaps) */
  guint64 last_offset;          /* GST_BUFFER_OFFSET of the last input, or NONE */
  GstClockTime ref_pts;         /* timestamp gaps: PTS of frame 0, or NONE */
  guint64 last_index;           /* ... and frame number of the last input */
  gint fps_n, fps_d;            /* caps frame rate, for timestamp gaps */
  gint budget_warned_w, budget_warned_h;        /* frame size last warned about */
};

#define gst_unet_segment_parent_class parent_class
G_DEFINE_TYPE (GstUnetSegment, gst_unet_segment, GST_TYPE_BASE_TRANSFORM);
GST_ELEMENT_REGISTER_DEFINE (unetsegment, "unetsegment", GST_RANK_NONE,
    GST_TYPE_UNET_SEGMENT);

GType
gst_unet_segment_output_get_type (void)
{
  static gsize type = 0;
  static const GEnumValue values[] = {
    {OUTPUT_LABELS, "GRAY8 class index per pixel", "labels"},
    {OUTPUT_PROBABILITIES, "GRAY32F probability of probability-class",
        "probabilities"},
    {OUTPUT_OVERLAY, "RGBA: the input in gray with classes in colour", "overlay"},
    {OUTPUT_INSTANCES,
        "Ids of the connected components (4-connected) of foreground-class: "
          "GRAY32_LE, or GRAY16_LE where downstream only takes that (a frame "
          "with more than 65535 objects is then an error)", "instances"},
    {0, NULL, NULL}
  };

  if (g_once_init_enter (&type)) {
    GType t = g_enum_register_static ("GstUnetSegmentOutput", values);
    g_once_init_leave (&type, t);
  }
  return type;
}

GType
gst_unet_segment_normalization_get_type (void)
{
  static gsize type = 0;
  static const GEnumValue values[] = {
    {NORM_MODEL, "As stored in the model (unet.normalization)", "model"},
    {NORM_NONE, "Raw pixel values", "none"},
    {NORM_RANGE, "(x - norm-min) / (norm-max - norm-min)", "range"},
    {NORM_PERCENTILE, "Range from per-frame percentiles norm-low .. norm-high",
        "percentile"},
    {NORM_MEAN_STD, "(x - norm-mean) / norm-std", "meanstd"},
    {NORM_FRAME_MEAN_STD, "Per-frame mean and standard deviation",
        "frame-meanstd"},
    {0, NULL, NULL}
  };

  if (g_once_init_enter (&type)) {
    GType t = g_enum_register_static ("GstUnetSegmentNormalization", values);
    g_once_init_leave (&type, t);
  }
  return type;
}

static void gst_unet_segment_set_property (GObject * object, guint prop_id,
    const GValue * value, GParamSpec * pspec);
static void gst_unet_segment_get_property (GObject * object, guint prop_id,
    GValue * value, GParamSpec * pspec);
static void gst_unet_segment_finalize (GObject * object);
static GstCaps *gst_unet_segment_transform_caps (GstBaseTransform * trans,
    GstPadDirection direction, GstCaps * caps, GstCaps * filter);
static gboolean gst_unet_segment_set_caps (GstBaseTransform * trans,
    GstCaps * incaps, GstCaps * outcaps);
static gboolean gst_unet_segment_start (GstBaseTransform * trans);
static gboolean gst_unet_segment_stop (GstBaseTransform * trans);
static GstFlowReturn gst_unet_segment_submit_input_buffer (GstBaseTransform *
    trans, gboolean is_discont, GstBuffer * input);
static GstFlowReturn gst_unet_segment_generate_output (GstBaseTransform * trans,
    GstBuffer ** outbuf);
static gboolean gst_unet_segment_sink_event (GstBaseTransform * trans,
    GstEvent * event);
static gboolean gst_unet_segment_query (GstBaseTransform * trans,
    GstPadDirection direction, GstQuery * query);
static gboolean gst_unet_segment_reload (GstUnetSegment * self);

static void
gst_unet_segment_class_init (GstUnetSegmentClass * klass)
{
  GObjectClass *gobject_class = G_OBJECT_CLASS (klass);
  GstElementClass *element_class = GST_ELEMENT_CLASS (klass);
  GstBaseTransformClass *trans_class = GST_BASE_TRANSFORM_CLASS (klass);
  const GParamFlags rw = G_PARAM_READWRITE | G_PARAM_STATIC_STRINGS;
  const GParamFlags rw_ready = rw | GST_PARAM_MUTABLE_READY;

  GST_DEBUG_CATEGORY_INIT (gst_unet_segment_debug, "unetsegment", 0,
      "U-Net overlap-tile segmentation");

  gobject_class->set_property = gst_unet_segment_set_property;
  gobject_class->get_property = gst_unet_segment_get_property;
  gobject_class->finalize = gst_unet_segment_finalize;

  g_object_class_install_property (gobject_class, PROP_MODEL,
      g_param_spec_string ("model", "Model",
          "U-Net model file (.safetensors); may be changed while PLAYING "
          "(loaded first, swapped between frames)", NULL,
          rw | GST_PARAM_MUTABLE_PLAYING));
  g_object_class_install_property (gobject_class, PROP_DEVICE,
      g_param_spec_enum ("device", "Device", "Where the network runs",
          GST_TYPE_UNET_DEVICE, DEFAULT_DEVICE, rw_ready));
  g_object_class_install_property (gobject_class, PROP_GPU_ID,
      g_param_spec_int ("gpu-id", "GPU id", "CUDA device index", 0, 64,
          DEFAULT_GPU_ID, rw_ready));
  g_object_class_install_property (gobject_class, PROP_PRECISION,
      g_param_spec_enum ("precision", "Precision",
          "Arithmetic of the network: fp32 and bf16 on every device, tf32 and fp16 "
          "on CUDA only", GST_TYPE_UNET_PRECISION, DEFAULT_PRECISION, rw_ready));
  g_object_class_install_property (gobject_class, PROP_TILE_SIZE,
      g_param_spec_uint ("tile-size", "Tile size",
          "Network input tile edge in pixels, rounded up to a legal size "
          "(0 = automatic: fewest input pixels within memory-budget)", 0, 65536,
          DEFAULT_TILE_SIZE, rw_ready));
  g_object_class_install_property (gobject_class, PROP_BATCH_SIZE,
      g_param_spec_int ("batch-size", "Batch size",
          "Tiles per forward pass (tiles of consecutive frames share a batch "
          "unless upstream is live)", 1, 256, DEFAULT_BATCH_SIZE, rw_ready));
  g_object_class_install_property (gobject_class, PROP_THREADS,
      g_param_spec_int ("threads", "Threads",
          "CPU threads (0 = $UNET_NUM_THREADS or all cores)", 0, 1024,
          DEFAULT_THREADS, rw_ready));
  g_object_class_install_property (gobject_class, PROP_MEMORY_BUDGET,
      g_param_spec_uint ("memory-budget", "Memory budget",
          "MiB of network activations per batch, for the automatic tile size",
          1, 1024 * 1024, DEFAULT_MEMORY_BUDGET, rw_ready));
  g_object_class_install_property (gobject_class, PROP_OUTPUT,
      g_param_spec_enum ("output", "Output", "What the output frames hold",
          GST_TYPE_UNET_SEGMENT_OUTPUT, DEFAULT_OUTPUT, rw_ready));
  g_object_class_install_property (gobject_class, PROP_PROBABILITY_CLASS,
      g_param_spec_uint ("probability-class", "Probability class",
          "Class whose probability output=probabilities gives (a 1-class "
          "sigmoid model has classes 0 = background, 1 = foreground)", 0, 255,
          DEFAULT_PROBABILITY_CLASS, rw_ready));
  g_object_class_install_property (gobject_class, PROP_FOREGROUND_CLASS,
      g_param_spec_uint ("foreground-class", "Foreground class",
          "Class whose connected components are the instances and the objects "
          "counted in the statistics", 0, 255, DEFAULT_FOREGROUND_CLASS,
          rw_ready));
  g_object_class_install_property (gobject_class, PROP_OVERLAY_ALPHA,
      g_param_spec_double ("overlay-alpha", "Overlay alpha",
          "Opacity of the class colours in output=overlay", 0.0, 1.0,
          DEFAULT_OVERLAY_ALPHA, rw | GST_PARAM_MUTABLE_PLAYING));
  g_object_class_install_property (gobject_class, PROP_NORMALIZATION,
      g_param_spec_enum ("normalization", "Normalization",
          "How raw pixels become network input (model = what the model file "
          "says, so inference repeats training)",
          GST_TYPE_UNET_SEGMENT_NORMALIZATION, DEFAULT_NORMALIZATION,
          rw_ready));
  g_object_class_install_property (gobject_class, PROP_NORM_MIN,
      g_param_spec_double ("norm-min", "Range minimum",
          "normalization=range: raw value mapped to 0", -G_MAXDOUBLE,
          G_MAXDOUBLE, DEFAULT_NORM_MIN, rw_ready));
  g_object_class_install_property (gobject_class, PROP_NORM_MAX,
      g_param_spec_double ("norm-max", "Range maximum",
          "normalization=range: raw value mapped to 1 (e.g. 4095 for a 12-bit "
          "camera)", -G_MAXDOUBLE, G_MAXDOUBLE, DEFAULT_NORM_MAX, rw_ready));
  g_object_class_install_property (gobject_class, PROP_NORM_LOW,
      g_param_spec_double ("norm-low", "Low percentile",
          "normalization=percentile: percent of pixels mapped to <= 0", 0.0,
          100.0, DEFAULT_NORM_LOW, rw_ready));
  g_object_class_install_property (gobject_class, PROP_NORM_HIGH,
      g_param_spec_double ("norm-high", "High percentile",
          "normalization=percentile: percent of pixels mapped to <= 1", 0.0,
          100.0, DEFAULT_NORM_HIGH, rw_ready));
  g_object_class_install_property (gobject_class, PROP_NORM_MEAN,
      g_param_spec_double ("norm-mean", "Mean",
          "normalization=meanstd: value subtracted", -G_MAXDOUBLE, G_MAXDOUBLE,
          DEFAULT_NORM_MEAN, rw_ready));
  g_object_class_install_property (gobject_class, PROP_NORM_STD,
      g_param_spec_double ("norm-std", "Standard deviation",
          "normalization=meanstd: divisor", G_MINDOUBLE, G_MAXDOUBLE,
          DEFAULT_NORM_STD, rw_ready));
  g_object_class_install_property (gobject_class, PROP_POST_MESSAGES,
      g_param_spec_boolean ("post-messages", "Post messages",
          "Post an \"unetsegment-stats\" element message per frame (objects, "
          "foreground fraction, timing)", DEFAULT_POST_MESSAGES, rw_ready));
  g_object_class_install_property (gobject_class, PROP_WATCH_MODEL,
      g_param_spec_boolean ("watch-model", "Watch model",
          "Reload the model file whenever it is replaced or rewritten while "
          "running (e.g. checkpoints of a training pipeline); swapped between "
          "frames, a file that does not load only posts a warning",
          DEFAULT_WATCH_MODEL, rw_ready));

  /**
   * GstUnetSegment::reload:
   * @self: the element
   *
   * Action signal: reads the #GstUnetSegment:model file again in the calling
   * thread and, if it loads, swaps it in between two frames (an
   * "unetsegment-model-swapped" message follows). If it does not load, a warning
   * is posted and the current model stays.
   *
   * Returns: %TRUE if the file loaded (or the element is not running, and will
   * read it when it starts), %FALSE if the current model stays.
   */
  signals[SIGNAL_RELOAD] = g_signal_new_class_handler ("reload",
      G_TYPE_FROM_CLASS (klass), G_SIGNAL_RUN_LAST | G_SIGNAL_ACTION,
      G_CALLBACK (gst_unet_segment_reload), NULL, NULL, NULL, G_TYPE_BOOLEAN,
      0);

  gst_element_class_add_static_pad_template (element_class, &sink_template);
  gst_element_class_add_static_pad_template (element_class, &src_template);
  gst_element_class_set_static_metadata (element_class,
      "U-Net segmentation", "Filter/Analyzer/Video",
      "Segments gray frames of any size with a U-Net (mirror-extended "
      "overlap-tile, exact for valid-padded models)",
      "gst-unet developers");

  trans_class->transform_caps =
      GST_DEBUG_FUNCPTR (gst_unet_segment_transform_caps);
  trans_class->set_caps = GST_DEBUG_FUNCPTR (gst_unet_segment_set_caps);
  trans_class->start = GST_DEBUG_FUNCPTR (gst_unet_segment_start);
  trans_class->stop = GST_DEBUG_FUNCPTR (gst_unet_segment_stop);
  trans_class->submit_input_buffer =
      GST_DEBUG_FUNCPTR (gst_unet_segment_submit_input_buffer);
  trans_class->generate_output =
      GST_DEBUG_FUNCPTR (gst_unet_segment_generate_output);
  trans_class->sink_event = GST_DEBUG_FUNCPTR (gst_unet_segment_sink_event);
  trans_class->query = GST_DEBUG_FUNCPTR (gst_unet_segment_query);
  trans_class->passthrough_on_same_caps = FALSE;

  gst_type_mark_as_plugin_api (GST_TYPE_UNET_DEVICE, 0);
  gst_type_mark_as_plugin_api (GST_TYPE_UNET_SEGMENT_OUTPUT, 0);
  gst_type_mark_as_plugin_api (GST_TYPE_UNET_SEGMENT_NORMALIZATION, 0);
  gst_type_mark_as_plugin_api (GST_TYPE_UNET_PRECISION, 0);
}

static void
gst_unet_segment_init (GstUnetSegment * self)
{
  GstBaseTransform *trans = GST_BASE_TRANSFORM (self);

  self->device = DEFAULT_DEVICE;
  self->gpu_id = DEFAULT_GPU_ID;
  self->precision = DEFAULT_PRECISION;
  self->tile_size = DEFAULT_TILE_SIZE;
  self->batch_size = DEFAULT_BATCH_SIZE;
  self->threads = DEFAULT_THREADS;
  self->memory_budget = DEFAULT_MEMORY_BUDGET;
  self->output = DEFAULT_OUTPUT;
  self->probability_class = DEFAULT_PROBABILITY_CLASS;
  self->foreground_class = DEFAULT_FOREGROUND_CLASS;
  self->overlay_alpha = DEFAULT_OVERLAY_ALPHA;
  self->normalization = DEFAULT_NORMALIZATION;
  self->norm_min = DEFAULT_NORM_MIN;
  self->norm_max = DEFAULT_NORM_MAX;
  self->norm_low = DEFAULT_NORM_LOW;
  self->norm_high = DEFAULT_NORM_HIGH;
  self->norm_mean = DEFAULT_NORM_MEAN;
  self->norm_std = DEFAULT_NORM_STD;
  self->post_messages = DEFAULT_POST_MESSAGES;
  self->watch_model = DEFAULT_WATCH_MODEL;
  g_mutex_init (&self->load_lock);
  g_queue_init (&self->inflight);
  g_queue_init (&self->ready);

  /* No transform()/transform_ip(): outputs come from generate_output, never
   * passthrough; late frames are dropped in live pipelines. */
  gst_base_transform_set_passthrough (trans, FALSE);
  gst_base_transform_set_in_place (trans, FALSE);
  gst_base_transform_set_qos_enabled (trans, TRUE);
}

static void
ready_frame_free (ReadyFrame * r)
{
  gst_buffer_unref (r->inbuf);
  unet_segment_result_free (r->result);
  g_free (r);
}

static void
gst_unet_segment_finalize (GObject * object)
{
  GstUnetSegment *self = GST_UNET_SEGMENT (object);

  g_free (self->model_path);
  unet_segmenter_free (self->pending);
  unet_segmenter_free (self->seg);
  g_queue_clear_full (&self->inflight, (GDestroyNotify) gst_buffer_unref);
  g_queue_clear_full (&self->ready, (GDestroyNotify) ready_frame_free);
  g_mutex_clear (&self->load_lock);
  G_OBJECT_CLASS (parent_class)->finalize (object);
}

/* ------------------------------------------------------------ segmenter -- */

/* Segmenter options from the properties; call with the object lock held.
 * While running, what shapes the output frames (output, probability-class,
 * post-messages) is the value negotiated at start, whatever the properties say
 * now: a model loaded meanwhile must produce what the caps promise. */
static void
options_from_properties (GstUnetSegment * self, UnetSegmenterOptions * o)
{
  GstUnetSegmentOutput output = self->running ? self->active_output :
      self->output;
  gboolean post_messages = self->running ? self->active_post_messages :
      self->post_messages;
  guint probability_class = self->running ? self->active_probability_class :
      self->probability_class;

  unet_segmenter_options_init (o);
  o->net.device = self->device;
  o->net.gpu_id = self->gpu_id;
  o->net.precision = self->precision;
  o->net.threads = self->threads;
  o->tile_height = o->tile_width = (gint) self->tile_size;
  o->batch_size = self->batch_size;
  o->memory_budget = (guint64) self->memory_budget << 20;
  /* The element flushes after every frame when upstream is live. */
  o->batch_frames = TRUE;
  o->override_normalization = self->normalization != NORM_MODEL;
  switch (self->normalization) {
    case NORM_MODEL:
      break;
    case NORM_NONE:
      o->normalization.mode = UNET_NORM_NONE;
      break;
    case NORM_RANGE:
      o->normalization.mode = UNET_NORM_RANGE;
      o->normalization.a = self->norm_min;
      o->normalization.b = self->norm_max;
      break;
    case NORM_PERCENTILE:
      o->normalization.mode = UNET_NORM_PERCENTILE;
      o->normalization.a = self->norm_low;
      o->normalization.b = self->norm_high;
      break;
    case NORM_MEAN_STD:
      o->normalization.mode = UNET_NORM_MEAN_STD;
      o->normalization.a = self->norm_mean;
      o->normalization.b = self->norm_std;
      break;
    case NORM_FRAME_MEAN_STD:
      o->normalization.mode = UNET_NORM_FRAME_MEAN_STD;
      break;
  }
  switch (output) {
    case OUTPUT_LABELS:
    case OUTPUT_OVERLAY:
      o->outputs = UNET_SEGMENT_LABELS;
      break;
    case OUTPUT_PROBABILITIES:
      o->outputs = UNET_SEGMENT_PROBABILITY;
      break;
    case OUTPUT_INSTANCES:
      o->outputs = UNET_SEGMENT_INSTANCES;
      break;
  }
  if (post_messages)
    o->outputs |= UNET_SEGMENT_STATS;
  o->probability_class = (gint) probability_class;
  o->foreground_class = (gint) self->foreground_class;
}

/* Load `path` and instantiate it with `opts`; errors name the file. */
static UnetSegmenter *
build_segmenter (const gchar * path, const UnetSegmenterOptions * opts,
    GError ** error)
{
  g_autoptr (UnetModel) model = NULL;
  GError *err = NULL;
  UnetSegmenter *seg;

  model = unet_model_load (path, &err);
  if (!model) {
    g_set_error (error, err->domain, err->code,
        "Could not load the model file \"%s\": %s", path, err->message);
    g_error_free (err);
    return NULL;
  }
  seg = unet_segmenter_new (model, opts, &err);
  if (!seg) {
    if (g_error_matches (err, UNET_ERROR, UNET_ERROR_NO_DEVICE))
      g_set_error (error, err->domain, err->code,
          "Device \"%s\" is not available for model \"%s\": %s",
          unet_device_name (opts->net.device), path, err->message);
    else
      g_set_error (error, err->domain, err->code,
          "Could not set up model \"%s\": %s", path, err->message);
    g_error_free (err);
    return NULL;
  }
  return seg;
}

/* Move finished frames from the segmenter to the ready queue. */
static void
collect_finished (GstUnetSegment * self, UnetSegmenter * seg)
{
  UnetSegmentResult *r;

  while ((r = unet_segmenter_pop (seg))) {
    ReadyFrame *rf = g_new0 (ReadyFrame, 1);
    rf->inbuf = g_queue_pop_head (&self->inflight);
    g_assert (rf->inbuf);
    rf->result = r;
    g_queue_push_tail (&self->ready, rf);
  }
  /* After a failure the segmenter drops the frames it can no longer finish (the
   * newest ones); drop their buffers too. */
  while (g_queue_get_length (&self->inflight) > unet_segmenter_get_queued (seg))
    gst_buffer_unref (g_queue_pop_tail (&self->inflight));
}

/* Run pending tiles and move every finished frame to the ready queue. */
static gboolean
flush_segmenter (GstUnetSegment * self, UnetSegmenter * seg, GError ** error)
{
  gboolean ok;

  if (!seg)
    return TRUE;
  ok = unet_segmenter_flush (seg, error);
  collect_finished (self, seg);
  return ok;
}

/* Called by the streaming thread between frames: take a model loaded by
 * set_property; frames queued in the old segmenter finish with the old model. */
static gboolean
maybe_swap_model (GstUnetSegment * self, GError ** error)
{
  UnetSegmenter *next;
  gchar *path;
  gboolean ok;

  GST_OBJECT_LOCK (self);
  next = g_steal_pointer (&self->pending);
  path = next ? g_strdup (self->model_path) : NULL;
  GST_OBJECT_UNLOCK (self);
  if (!next)
    return TRUE;
  ok = flush_segmenter (self, self->seg, error);
  unet_segmenter_free (self->seg);
  self->seg = next;
  g_atomic_int_set (&self->model_channels,
      unet_segmenter_get_config (self->seg)->in_channels);
  self->model_frames = 0;
  GST_INFO_OBJECT (self, "switched to model %s", path);
  /* Frames still in the ready queue were made by the old model. */
  gst_element_post_message (GST_ELEMENT (self),
      gst_message_new_element (GST_OBJECT (self),
          gst_structure_new ("unetsegment-model-swapped",
              "model", G_TYPE_STRING, path,
              "frame-number", G_TYPE_UINT64,
              self->frames_out + g_queue_get_length (&self->ready), NULL)));
  g_free (path);
  return ok;
}

/* Load a new model while running (called from set_property, the reload signal
 * or the file watch, never the streaming thread). On failure the old model stays
 * and a warning is posted. Returns whether the new model was taken. */
static gboolean
reload_model (GstUnetSegment * self, const gchar * path)
{
  UnetSegmenterOptions opts;
  UnetSegmenter *seg, *old = NULL;
  GError *err = NULL;
  gboolean taken = FALSE;

  g_mutex_lock (&self->load_lock);
  GST_OBJECT_LOCK (self);
  options_from_properties (self, &opts);
  GST_OBJECT_UNLOCK (self);

  seg = build_segmenter (path, &opts, &err);
  GST_OBJECT_LOCK (self);
  if (seg && self->running) {
    old = self->pending;
    self->pending = seg;
    g_free (self->model_path);
    self->model_path = g_strdup (path);
    seg = NULL;
    taken = TRUE;
  }
  GST_OBJECT_UNLOCK (self);
  g_mutex_unlock (&self->load_lock);
  unet_segmenter_free (old);
  unet_segmenter_free (seg);
  if (err) {
    GST_ELEMENT_WARNING (self, RESOURCE, OPEN_READ,
        ("Could not switch to model \"%s\"; keeping the current model.", path),
        ("%s", err->message));
    g_error_free (err);
  }
  if (taken) {
    GST_OBJECT_LOCK (self);
    if (self->watch)
      gst_unet_model_watch_follow (self->watch, path);
    GST_OBJECT_UNLOCK (self);
  }
  return taken;
}

static gboolean
gst_unet_segment_reload (GstUnetSegment * self)
{
  gchar *path;
  gboolean running, ok = TRUE;

  GST_OBJECT_LOCK (self);
  running = self->running;
  path = g_strdup (self->model_path);
  GST_OBJECT_UNLOCK (self);
  if (running && path)
    ok = reload_model (self, path);
  g_free (path);
  return ok;
}

/* ---------------------------------------------------------- model watch -- */

/* Watcher thread: a new version of the model file is complete. */
static void
on_model_replaced (const gchar * path, gpointer user_data)
{
  GstUnetSegment *self = user_data;

  GST_INFO_OBJECT (self, "model file %s was replaced, reloading", path);
  reload_model (self, path);
}

static void
on_model_cannot_watch (const gchar * path, const GError * error,
    gpointer user_data)
{
  GstUnetSegment *self = user_data;

  GST_ELEMENT_WARNING (self, RESOURCE, SETTINGS,
      ("Cannot watch the model file \"%s\"; it will not be reloaded when it "
          "changes.", path), ("%s", error->message));
}

static const GstUnetModelWatchCallbacks watch_callbacks = {
  on_model_replaced, on_model_cannot_watch,
};

/* ------------------------------------------------------------ properties -- */

static void
gst_unet_segment_set_property (GObject * object, guint prop_id,
    const GValue * value, GParamSpec * pspec)
{
  GstUnetSegment *self = GST_UNET_SEGMENT (object);
  gboolean deferred;

  if (prop_id == PROP_MODEL) {
    gchar *path = g_value_dup_string (value);
    gboolean running;

    GST_OBJECT_LOCK (self);
    running = self->running;
    if (!running) {
      g_free (self->model_path);
      self->model_path = g_strdup (path);
    }
    GST_OBJECT_UNLOCK (self);
    if (running) {
      if (path)
        reload_model (self, path);
      else
        GST_ELEMENT_WARNING (self, RESOURCE, SETTINGS,
            ("The model cannot be unset while running; keeping it."), (NULL));
    }
    g_free (path);
    return;
  }

  GST_OBJECT_LOCK (self);
  deferred = FALSE;
  switch (prop_id) {
    case PROP_DEVICE:
      self->device = g_value_get_enum (value);
      break;
    case PROP_GPU_ID:
      self->gpu_id = g_value_get_int (value);
      break;
    case PROP_PRECISION:
      self->precision = g_value_get_enum (value);
      break;
    case PROP_TILE_SIZE:
      self->tile_size = g_value_get_uint (value);
      break;
    case PROP_BATCH_SIZE:
      self->batch_size = g_value_get_int (value);
      break;
    case PROP_THREADS:
      self->threads = g_value_get_int (value);
      break;
    case PROP_MEMORY_BUDGET:
      self->memory_budget = g_value_get_uint (value);
      break;
    case PROP_OUTPUT:
      self->output = g_value_get_enum (value);
      deferred = self->running && self->output != self->active_output;
      break;
    case PROP_PROBABILITY_CLASS:
      self->probability_class = g_value_get_uint (value);
      deferred = self->running
          && self->probability_class != self->active_probability_class;
      break;
    case PROP_FOREGROUND_CLASS:
      self->foreground_class = g_value_get_uint (value);
      break;
    case PROP_OVERLAY_ALPHA:
      self->overlay_alpha = g_value_get_double (value);
      break;
    case PROP_NORMALIZATION:
      self->normalization = g_value_get_enum (value);
      break;
    case PROP_NORM_MIN:
      self->norm_min = g_value_get_double (value);
      break;
    case PROP_NORM_MAX:
      self->norm_max = g_value_get_double (value);
      break;
    case PROP_NORM_LOW:
      self->norm_low = g_value_get_double (value);
      break;
    case PROP_NORM_HIGH:
      self->norm_high = g_value_get_double (value);
      break;
    case PROP_NORM_MEAN:
      self->norm_mean = g_value_get_double (value);
      break;
    case PROP_NORM_STD:
      self->norm_std = g_value_get_double (value);
      break;
    case PROP_POST_MESSAGES:
      self->post_messages = g_value_get_boolean (value);
      break;
    case PROP_WATCH_MODEL:
      self->watch_model = g_value_get_boolean (value);
      break;
    default:
      G_OBJECT_WARN_INVALID_PROPERTY_ID (object, prop_id, pspec);
      break;
  }
  GST_OBJECT_UNLOCK (self);
  /* GObject does not enforce "changeable only in NULL or READY": the frames keep
   * the format negotiated at start, and the user learns when the value applies. */
  if (deferred)
    GST_ELEMENT_WARNING (self, RESOURCE, SETTINGS,
        ("\"%s\" changed while running: the element keeps the value it started "
            "with until it is stopped (READY) and started again.", pspec->name),
        (NULL));
}

static void
gst_unet_segment_get_property (GObject * object, guint prop_id,
    GValue * value, GParamSpec * pspec)
{
  GstUnetSegment *self = GST_UNET_SEGMENT (object);

  GST_OBJECT_LOCK (self);
  switch (prop_id) {
    case PROP_MODEL:
      g_value_set_string (value, self->model_path);
      break;
    case PROP_DEVICE:
      g_value_set_enum (value, self->device);
      break;
    case PROP_GPU_ID:
      g_value_set_int (value, self->gpu_id);
      break;
    case PROP_PRECISION:
      g_value_set_enum (value, self->precision);
      break;
    case PROP_TILE_SIZE:
      g_value_set_uint (value, self->tile_size);
      break;
    case PROP_BATCH_SIZE:
      g_value_set_int (value, self->batch_size);
      break;
    case PROP_THREADS:
      g_value_set_int (value, self->threads);
      break;
    case PROP_MEMORY_BUDGET:
      g_value_set_uint (value, self->memory_budget);
      break;
    case PROP_OUTPUT:
      g_value_set_enum (value, self->output);
      break;
    case PROP_PROBABILITY_CLASS:
      g_value_set_uint (value, self->probability_class);
      break;
    case PROP_FOREGROUND_CLASS:
      g_value_set_uint (value, self->foreground_class);
      break;
    case PROP_OVERLAY_ALPHA:
      g_value_set_double (value, self->overlay_alpha);
      break;
    case PROP_NORMALIZATION:
      g_value_set_enum (value, self->normalization);
      break;
    case PROP_NORM_MIN:
      g_value_set_double (value, self->norm_min);
      break;
    case PROP_NORM_MAX:
      g_value_set_double (value, self->norm_max);
      break;
    case PROP_NORM_LOW:
      g_value_set_double (value, self->norm_low);
      break;
    case PROP_NORM_HIGH:
      g_value_set_double (value, self->norm_high);
      break;
    case PROP_NORM_MEAN:
      g_value_set_double (value, self->norm_mean);
      break;
    case PROP_NORM_STD:
      g_value_set_double (value, self->norm_std);
      break;
    case PROP_POST_MESSAGES:
      g_value_set_boolean (value, self->post_messages);
      break;
    case PROP_WATCH_MODEL:
      g_value_set_boolean (value, self->watch_model);
      break;
    default:
      G_OBJECT_WARN_INVALID_PROPERTY_ID (object, prop_id, pspec);
      break;
  }
  GST_OBJECT_UNLOCK (self);
}

/* ------------------------------------------------------------------ caps -- */

/* The channels of a frame: RGB and RGBA are three 8-bit channels (alpha is not
 * used), the gray formats one, the _C<n> formats n planes of @stride × height
 * bytes. */
static void
frame_channels (const GstUnetLayout * l, gsize stride, UnetChannelLayout * c)
{
  gboolean rgb = l->format == GST_UNET_FORMAT_RGB
      || l->format == GST_UNET_FORMAT_RGBA;

  c->channels = rgb ? 3 : (gint) MAX (l->channels, 1);
  c->pixel_step = l->bpp;
  c->channel_step = rgb ? 1 : stride * l->height;
}

/* Channels of a caps format name: RGB/RGBA 3, "<gray>_C<n>" n, gray 1. */
static gint
format_name_channels (const gchar * name)
{
  const gchar *suffix = strrchr (name, '_');

  if (!strcmp (name, "RGB") || !strcmp (name, "RGBA"))
    return 3;
  if (suffix && suffix[1] == 'C' && g_ascii_isdigit (suffix[2]))
    return suffix[2] - '0';
  return 1;
}

static gint
layout_channels (const GstUnetLayout * l)
{
  UnetChannelLayout ch;
  frame_channels (l, l->stride, &ch);
  return ch.channels;
}

static void
post_channel_error (GstUnetSegment * self, const GstUnetLayout * l, gint want)
{
  g_autofree gchar *fmt = gst_unet_layout_format_name (l);

  GST_ELEMENT_ERROR (self, CORE, NEGOTIATION,
      ("The model takes %d input channel%s but the input frames (%s) have "
          "%d: %s.", want, want == 1 ? "" : "s", fmt, layout_channels (l),
          want == 3 ? "give it RGB or RGBA frames, or 3 fluorescence "
          "channels (tiffstacksrc merge-channels=true)" : want == 1 ?
          "give it GRAY8, GRAY16_LE or GRAY32F frames (tiffstacksrc "
          "channel=N selects one channel of a hyperstack)" :
          "give it frames of that many channels (tiffstacksrc "
          "merge-channels=true on a hyperstack or OME-TIFF)"), (NULL));
}

/* Frames must have the model's channels (the caps only offer those, but the
 * model may have been swapped since negotiation). */
static gboolean
check_channels (GstUnetSegment * self)
{
  gint want = unet_segmenter_get_config (self->seg)->in_channels;

  if (layout_channels (&self->in_layout) == want)
    return TRUE;
  post_channel_error (self, &self->in_layout, want);
  return FALSE;
}

static const gchar *
output_format_name (GstUnetSegmentOutput output)
{
  switch (output) {
    case OUTPUT_LABELS:
      return "GRAY8";
    case OUTPUT_PROBABILITIES:
      return "GRAY32F";
    case OUTPUT_OVERLAY:
      return "RGBA";
    case OUTPUT_INSTANCES:
      return "GRAY32_LE";       /* or GRAY16_LE: see transform_caps */
  }
  return "GRAY8";
}

static GstCaps *
gst_unet_segment_transform_caps (GstBaseTransform * trans,
    GstPadDirection direction, GstCaps * caps, GstCaps * filter)
{
  GstUnetSegment *self = GST_UNET_SEGMENT (trans);
  GstCaps *ret = gst_caps_new_empty ();
  GstUnetSegmentOutput output;
  guint i;

  /* While running, the format negotiated at start (the writers use it). */
  GST_OBJECT_LOCK (self);
  output = self->running ? self->active_output : self->output;
  GST_OBJECT_UNLOCK (self);

  /* Same size and rate; the format follows `output` downstream and may be any
   * gray format upstream. */
  for (i = 0; i < gst_caps_get_size (caps); i++) {
    GstStructure *s = gst_structure_copy (gst_caps_get_structure (caps, i));

    gst_structure_remove_fields (s, "format", "colorimetry", "chroma-site",
        NULL);
    if (direction == GST_PAD_SINK && output == OUTPUT_INSTANCES) {
      /* 32-bit ids first: a frame can hold more than 65535 objects. 16-bit
       * ids remain for downstream elements that only take GRAY16_LE. */
      GValue list = G_VALUE_INIT, v = G_VALUE_INIT;

      g_value_init (&list, GST_TYPE_LIST);
      g_value_init (&v, G_TYPE_STRING);
      g_value_set_static_string (&v, "GRAY32_LE");
      gst_value_list_append_value (&list, &v);
      g_value_set_static_string (&v, "GRAY16_LE");
      gst_value_list_append_value (&list, &v);
      gst_structure_take_value (s, "format", &list);
      g_value_unset (&v);
    } else if (direction == GST_PAD_SINK) {
      gst_structure_set (s, "format", G_TYPE_STRING,
          output_format_name (output), NULL);
    } else {
      GValue list = G_VALUE_INIT, v = G_VALUE_INIT;
      static const gchar *fmts[] = { "GRAY8", "GRAY16_LE", "GRAY32F", "RGB",
        "RGBA", "GRAY8_C2", "GRAY8_C3", "GRAY8_C4", "GRAY8_C5", "GRAY8_C6",
        "GRAY8_C7", "GRAY8_C8", "GRAY16_LE_C2", "GRAY16_LE_C3", "GRAY16_LE_C4",
        "GRAY16_LE_C5", "GRAY16_LE_C6", "GRAY16_LE_C7", "GRAY16_LE_C8",
        "GRAY32F_C2", "GRAY32F_C3", "GRAY32F_C4", "GRAY32F_C5", "GRAY32F_C6",
        "GRAY32F_C7", "GRAY32F_C8"
      };
      /* With a model loaded, only frames of its number of channels: then a
       * mismatch fails negotiation, synchronously for sources that check
       * their caps in start() (see the error posted below). */
      gint want = g_atomic_int_get (&self->model_channels);
      guint f;

      g_value_init (&list, GST_TYPE_LIST);
      g_value_init (&v, G_TYPE_STRING);
      for (f = 0; f < G_N_ELEMENTS (fmts); f++) {
        if (want > 0 && format_name_channels (fmts[f]) != want)
          continue;
        g_value_set_static_string (&v, fmts[f]);
        gst_value_list_append_value (&list, &v);
      }
      gst_structure_take_value (s, "format", &list);
      g_value_unset (&v);
    }
    ret = gst_caps_merge_structure (ret, s);
  }
  if (filter) {
    GstCaps *tmp = gst_caps_intersect_full (filter, ret,
        GST_CAPS_INTERSECT_FIRST);
    gst_caps_unref (ret);
    ret = tmp;
  }
  /* Upstream asking with its one fixed format, which the model cannot take:
   * negotiation is going to fail, so say why (with both channel counts) rather
   * than leave the user with "not-negotiated". */
  if (direction == GST_PAD_SRC && filter && gst_caps_is_empty (ret)
      && gst_caps_is_fixed (filter) && g_atomic_int_get (&self->model_channels)) {
    GstUnetLayout l;
    if (gst_unet_layout_from_caps (&l, filter)
        && layout_channels (&l) != g_atomic_int_get (&self->model_channels))
      post_channel_error (self, &l, g_atomic_int_get (&self->model_channels));
  }
  GST_DEBUG_OBJECT (self, "%s caps %" GST_PTR_FORMAT " -> %" GST_PTR_FORMAT,
      direction == GST_PAD_SINK ? "sink" : "src", caps, ret);
  return ret;
}

static gboolean
gst_unet_segment_set_caps (GstBaseTransform * trans, GstCaps * incaps,
    GstCaps * outcaps)
{
  GstUnetSegment *self = GST_UNET_SEGMENT (trans);
  GstQuery *q;

  /* Rows are also bounded to G_MAXINT / 2 bytes for the engine's strides. */
  if (!gst_unet_layout_from_caps (&self->in_layout, incaps)
      || !gst_unet_layout_from_caps (&self->out_layout, outcaps)
      || (guint64) self->in_layout.width * self->in_layout.bpp > G_MAXINT / 2
      || (guint64) self->out_layout.width * self->out_layout.bpp >
      G_MAXINT / 2) {
    GST_ELEMENT_ERROR (self, CORE, NEGOTIATION,
        ("Invalid caps: %" GST_PTR_FORMAT " -> %" GST_PTR_FORMAT, incaps,
            outcaps), (NULL));
    return FALSE;
  }
  if (!gst_structure_get_fraction (gst_caps_get_structure (incaps, 0),
          "framerate", &self->fps_n, &self->fps_d))
    self->fps_n = self->fps_d = 0;
  /* Live upstream: finish every frame before taking the next. */
  self->live = FALSE;
  q = gst_query_new_latency ();
  if (gst_pad_peer_query (GST_BASE_TRANSFORM_SINK_PAD (trans), q))
    gst_query_parse_latency (q, &self->live, NULL, NULL);
  gst_query_unref (q);
  GST_INFO_OBJECT (self, "upstream is %slive", self->live ? "" : "not ");
  return TRUE;
}

/* ------------------------------------------------------------- lifecycle -- */

static void
drop_all (GstUnetSegment * self)
{
  if (self->seg) {
    flush_segmenter (self, self->seg, NULL);
    g_queue_clear_full (&self->inflight, (GDestroyNotify) gst_buffer_unref);
  }
  g_queue_clear_full (&self->ready, (GDestroyNotify) ready_frame_free);
}

static gboolean
gst_unet_segment_start (GstBaseTransform * trans)
{
  GstUnetSegment *self = GST_UNET_SEGMENT (trans);
  UnetSegmenterOptions opts;
  gchar *path;
  GError *err = NULL;
  gboolean watch;
  GstUnetFileVersion *loaded = NULL;

  GST_OBJECT_LOCK (self);
  path = g_strdup (self->model_path);
  watch = self->watch_model;
  options_from_properties (self, &opts);
  self->active_output = self->output;
  self->active_probability_class = self->probability_class;
  self->active_post_messages = self->post_messages;
  GST_OBJECT_UNLOCK (self);

  if (!path || !*path) {
    GST_ELEMENT_ERROR (self, RESOURCE, NOT_FOUND,
        ("No model file: set the \"model\" property to a .safetensors file."),
        (NULL));
    g_free (path);
    return FALSE;
  }
  /* Before loading: a version written during the load is then seen as new. */
  if (watch)
    loaded = gst_unet_file_version_of (path);
  self->seg = build_segmenter (path, &opts, &err);
  if (!self->seg) {
    gst_unet_file_version_free (loaded);
    if (g_error_matches (err, UNET_ERROR, UNET_ERROR_NO_DEVICE))
      GST_ELEMENT_ERROR (self, RESOURCE, SETTINGS, ("%s", err->message),
          ("device=%s gpu-id=%d", unet_device_name (opts.net.device),
              opts.net.gpu_id));
    else if (g_error_matches (err, UNET_ERROR, UNET_ERROR_IO))
      GST_ELEMENT_ERROR (self, RESOURCE, OPEN_READ, ("%s", err->message),
          (NULL));
    else
      GST_ELEMENT_ERROR (self, RESOURCE, SETTINGS, ("%s", err->message),
          (NULL));
    g_error_free (err);
    g_free (path);
    return FALSE;
  }
  g_atomic_int_set (&self->model_channels,
      unet_segmenter_get_config (self->seg)->in_channels);
  GST_INFO_OBJECT (self, "model %s on %s", path,
      unet_device_name (unet_segmenter_get_device (self->seg)));
  if (unet_segmenter_get_device (self->seg) == UNET_DEVICE_CPU) {
    gchar *slower = unet_cpu_precision_slower (opts.net.precision);
    if (slower != NULL)
      GST_ELEMENT_WARNING (self, RESOURCE, SETTINGS, ("%s", slower), (NULL));
    g_free (slower);
  }
  self->frames_out = 0;
  self->max_processing = 0;
  self->model_frames = 0;
  self->provisional = FALSE;
  self->qos_dropped = self->upstream_dropped = 0;
  self->last_offset = GST_BUFFER_OFFSET_NONE;
  self->ref_pts = GST_CLOCK_TIME_NONE;
  self->budget_warned_w = self->budget_warned_h = 0;
  GST_OBJECT_LOCK (self);
  self->running = TRUE;
  GST_OBJECT_UNLOCK (self);
  if (watch) {
    GstUnetModelWatch *w = gst_unet_model_watch_start (path, loaded,
        &watch_callbacks, self);
    GST_OBJECT_LOCK (self);
    self->watch = w;
    GST_OBJECT_UNLOCK (self);
  }
  g_free (path);
  return TRUE;
}

static gboolean
gst_unet_segment_stop (GstBaseTransform * trans)
{
  GstUnetSegment *self = GST_UNET_SEGMENT (trans);
  UnetSegmenter *pending;
  GstUnetModelWatch *watch;

  /* Waits for a reload in progress in the watcher thread. */
  GST_OBJECT_LOCK (self);
  watch = g_steal_pointer (&self->watch);
  GST_OBJECT_UNLOCK (self);
  gst_unet_model_watch_stop (watch);
  /* Wait for a load in progress, then refuse new ones. */
  g_mutex_lock (&self->load_lock);
  GST_OBJECT_LOCK (self);
  self->running = FALSE;
  pending = g_steal_pointer (&self->pending);
  GST_OBJECT_UNLOCK (self);
  g_mutex_unlock (&self->load_lock);

  unet_segmenter_free (pending);
  drop_all (self);
  g_clear_pointer (&self->seg, unet_segmenter_free);
  g_atomic_int_set (&self->model_channels, 0);
  g_queue_clear_full (&self->inflight, (GDestroyNotify) gst_buffer_unref);
  return TRUE;
}

/* ------------------------------------------------------------ streaming -- */

static UnetPixelFormat
pixel_format (GstUnetFormat f)
{
  switch (f) {
    case GST_UNET_FORMAT_GRAY16_LE:
      return UNET_PIXEL_U16;
    case GST_UNET_FORMAT_GRAY32F:
      return UNET_PIXEL_F32;
    default:
      return UNET_PIXEL_U8;
  }
}

/* Frames missing between the previous input and `buf` (e.g. dropped by a leaky
 * queue upstream): exact from video frame numbers (offset .. offset_end = one
 * frame), else estimated from timestamps at the caps frame rate. The frame number
 * is taken from the time since the first frame, not from the last gap, so that
 * rounding the jitter of each timestamp does not add up over the stream. */
static void
count_input_gap (GstUnetSegment * self, GstBuffer * buf)
{
  guint64 off = GST_BUFFER_OFFSET (buf);
  GstClockTime pts = GST_BUFFER_PTS (buf);

  if (off == GST_BUFFER_OFFSET_NONE || GST_BUFFER_OFFSET_END (buf) != off + 1)
    off = GST_BUFFER_OFFSET_NONE;
  if (off != GST_BUFFER_OFFSET_NONE
      && self->last_offset != GST_BUFFER_OFFSET_NONE) {
    if (off > self->last_offset + 1)
      self->upstream_dropped += off - self->last_offset - 1;
  } else if (GST_CLOCK_TIME_IS_VALID (pts) && self->fps_n > 0
      && self->fps_d > 0) {
    GstClockTime period = gst_util_uint64_scale_int (GST_SECOND, self->fps_d,
        self->fps_n);

    if (!GST_CLOCK_TIME_IS_VALID (self->ref_pts) || pts < self->ref_pts
        || period == 0) {
      self->ref_pts = pts;
      self->last_index = 0;
    } else {
      guint64 idx = (pts - self->ref_pts + period / 2) / period;

      if (idx > self->last_index + 1)
        self->upstream_dropped += idx - self->last_index - 1;
      /* every frame takes a number, even one stamped early */
      self->last_index = MAX (idx, self->last_index + 1);
    }
  }
  self->last_offset = off;
}

static GstFlowReturn
gst_unet_segment_submit_input_buffer (GstBaseTransform * trans,
    gboolean is_discont, GstBuffer * input)
{
  GstUnetSegment *self = GST_UNET_SEGMENT (trans);
  GstFlowReturn ret;
  GstBuffer *buf;
  GstUnetFrame vf;
  GError *err = NULL;
  gboolean ok;

  count_input_gap (self, input);
  /* The parent handles QoS (drops late frames) and queues the buffer. */
  ret = GST_BASE_TRANSFORM_CLASS (parent_class)->submit_input_buffer (trans,
      is_discont, input);
  if (ret == GST_BASE_TRANSFORM_FLOW_DROPPED)
    self->qos_dropped++;
  if (ret != GST_FLOW_OK || !trans->queued_buf)
    return ret;
  buf = g_steal_pointer (&trans->queued_buf);

  if (!maybe_swap_model (self, &err))
    goto failed;
  if (!check_channels (self)) {
    gst_buffer_unref (buf);
    return GST_FLOW_ERROR;
  }
  if (!gst_unet_frame_map (&vf, &self->in_layout, buf, GST_MAP_READ)) {
    gst_buffer_unref (buf);
    GST_ELEMENT_ERROR (self, STREAM, FAILED,
        ("Input buffer is smaller than its caps say."), (NULL));
    return GST_FLOW_ERROR;
  }
  {
    UnetChannelLayout channels;
    frame_channels (&self->in_layout, vf.stride, &channels);
    ok = unet_segmenter_push_channels (self->seg,
        pixel_format (self->in_layout.format), vf.data, self->in_layout.width,
        self->in_layout.height, vf.stride, &channels, NULL, &err);
  }
  gst_unet_frame_unmap (&vf);
  if (ok)
    g_queue_push_tail (&self->inflight, buf);
  else
    gst_buffer_unref (buf);
  collect_finished (self, self->seg);
  if (ok && self->live)
    ok = flush_segmenter (self, self->seg, &err);
  if (!ok)
    goto failed_unref;
  return GST_FLOW_OK;

failed:
  gst_buffer_unref (buf);
failed_unref:
  GST_ELEMENT_ERROR (self, STREAM, FAILED, ("Segmentation failed: %s",
          err->message), (NULL));
  g_error_free (err);
  return GST_FLOW_ERROR;
}

/* Capture to now: the clock's running time minus the frame's (NONE without a
 * clock, before PLAYING or for frames outside the segment). */
static GstClockTime
frame_latency (GstUnetSegment * self, GstBuffer * inbuf)
{
  GstBaseTransform *trans = GST_BASE_TRANSFORM (self);
  GstClock *clock = gst_element_get_clock (GST_ELEMENT (self));
  GstClockTime rt, now, base, ret = GST_CLOCK_TIME_NONE;

  if (!clock)
    return ret;
  rt = trans->segment.format == GST_FORMAT_TIME ?
      gst_segment_to_running_time (&trans->segment, GST_FORMAT_TIME,
      GST_BUFFER_PTS (inbuf)) : GST_CLOCK_TIME_NONE;
  base = gst_element_get_base_time (GST_ELEMENT (self));
  now = gst_clock_get_time (clock);
  gst_object_unref (clock);
  if (GST_CLOCK_TIME_IS_VALID (rt) && GST_CLOCK_TIME_IS_VALID (base)
      && now >= base && now - base >= rt)
    ret = now - base - rt;
  return ret;
}

static void
post_stats (GstUnetSegment * self, GstBuffer * inbuf,
    const UnetSegmentStats * st, guint64 number)
{
  GstStructure *s;

#define NS(sec) ((guint64) ((sec) * GST_SECOND))
  s = gst_structure_new ("unetsegment-stats",
      "frame-number", G_TYPE_UINT64, number,
      "pts", G_TYPE_UINT64, (guint64) GST_BUFFER_PTS (inbuf),
      "object-count", G_TYPE_UINT, st->object_count,
      "foreground-fraction", G_TYPE_DOUBLE, st->foreground_fraction,
      "mean-object-area", G_TYPE_DOUBLE, st->mean_object_area,
      "processing-time", G_TYPE_UINT64, NS (st->time_total),
      "tiles", G_TYPE_INT, st->n_tiles,
      "tile-width", G_TYPE_INT, st->tile_width,
      "tile-height", G_TYPE_INT, st->tile_height,
      "normalize-time", G_TYPE_UINT64, NS (st->time_normalize),
      "extract-time", G_TYPE_UINT64, NS (st->time_extract),
      "forward-time", G_TYPE_UINT64, NS (st->time_forward),
      "stitch-time", G_TYPE_UINT64, NS (st->time_stitch),
      "post-time", G_TYPE_UINT64, NS (st->time_post),
      "latency", G_TYPE_UINT64, (guint64) frame_latency (self, inbuf),
      "frames-dropped", G_TYPE_UINT64,
      self->qos_dropped + self->upstream_dropped,
      "qos-dropped", G_TYPE_UINT64, self->qos_dropped, NULL);
#undef NS
  gst_element_post_message (GST_ELEMENT (self),
      gst_message_new_element (GST_OBJECT (self), s));
}

static GstFlowReturn
gst_unet_segment_generate_output (GstBaseTransform * trans,
    GstBuffer ** outbuf)
{
  GstUnetSegment *self = GST_UNET_SEGMENT (trans);
  ReadyFrame *rf = g_queue_pop_head (&self->ready);
  UnetSegmentResult *r;
  GstUnetFrame of, inf;
  GstBuffer *out;
  GstClockTime proc;
  gdouble alpha;
  gint y, w, h;

  *outbuf = NULL;
  if (!rf)
    return GST_FLOW_OK;
  r = rf->result;
  w = r->width;
  h = r->height;
  if (w != (gint) self->out_layout.width
      || h != (gint) self->out_layout.height) {
    ready_frame_free (rf);
    GST_ELEMENT_ERROR (self, CORE, NEGOTIATION,
        ("Frame size %dx%d does not match the output caps.", w, h), (NULL));
    return GST_FLOW_NOT_NEGOTIATED;
  }
  out = gst_buffer_new_allocate (NULL, self->out_layout.size, NULL);
  gst_buffer_copy_into (out, rf->inbuf, GST_BUFFER_COPY_METADATA, 0, -1);
  if (!gst_unet_frame_map (&of, &self->out_layout, out, GST_MAP_WRITE)) {
    gst_buffer_unref (out);
    ready_frame_free (rf);
    GST_ELEMENT_ERROR (self, STREAM, FAILED, ("Could not map the output."),
        (NULL));
    return GST_FLOW_ERROR;
  }
  switch (self->active_output) {
    case OUTPUT_LABELS:
      for (y = 0; y < h; y++)
        memcpy (of.data + (gsize) y * of.stride,
            r->labels + (gsize) y * w, w);
      break;
    case OUTPUT_PROBABILITIES:
      for (y = 0; y < h; y++)
        memcpy (of.data + (gsize) y * of.stride,
            r->probability + (gsize) y * w, (gsize) w * sizeof (gfloat));
      break;
    case OUTPUT_INSTANCES:
      if (self->out_layout.format == GST_UNET_FORMAT_GRAY32_LE) {
        for (y = 0; y < h; y++)
          memcpy (of.data + (gsize) y * of.stride,
              r->instances + (gsize) y * w, (gsize) w * sizeof (guint32));
        break;
      }
      /* GRAY16_LE: ids are 1..object-count; never merge objects silently. */
      if (r->stats.object_count > G_MAXUINT16) {
        guint count = r->stats.object_count;
        gst_unet_frame_unmap (&of);
        gst_buffer_unref (out);
        ready_frame_free (rf);
        GST_ELEMENT_ERROR (self, STREAM, FAILED,
            ("Frame %" G_GUINT64_FORMAT " has %u objects, more than the 65535 "
                "ids of GRAY16_LE output. Let unetsegment output GRAY32_LE "
                "(e.g. \"unetsegment output=instances ! "
                "video/x-raw,format=GRAY32_LE ! tiffstacksink ...\"; "
                "tiffstacksink writes 32-bit TIFF).", self->frames_out,
                count), (NULL));
        return GST_FLOW_ERROR;
      }
      for (y = 0; y < h; y++) {
        guint16 *o = (guint16 *) (of.data + (gsize) y * of.stride);
        const guint32 *ids = r->instances + (gsize) y * w;
        gint x;
        for (x = 0; x < w; x++)
          o[x] = (guint16) ids[x];
      }
      break;
    case OUTPUT_OVERLAY:
      GST_OBJECT_LOCK (self);
      alpha = self->overlay_alpha;
      GST_OBJECT_UNLOCK (self);
      if (gst_unet_frame_map (&inf, &self->in_layout, rf->inbuf,
              GST_MAP_READ)) {
        gst_unet_overlay_render (self->in_layout.format, inf.data, inf.stride,
            self->in_layout.width, self->in_layout.height, r->labels, alpha,
            of.data, of.stride);
        gst_unet_frame_unmap (&inf);
      }
      break;
  }
  gst_unet_frame_unmap (&of);

  proc = (GstClockTime) (r->stats.time_total * GST_SECOND);
  GST_LOG_OBJECT (self, "frame %" G_GUINT64_FORMAT ": %d tiles, normalize %.2f "
      "ms, extract %.2f ms, forward %.2f ms, stitch %.2f ms, post %.2f ms",
      self->frames_out, r->stats.n_tiles, r->stats.time_normalize * 1e3,
      r->stats.time_extract * 1e3, r->stats.time_forward * 1e3,
      r->stats.time_stitch * 1e3, r->stats.time_post * 1e3);
  if (r->stats.over_budget && (r->stats.width != self->budget_warned_w
          || r->stats.height != self->budget_warned_h)) {
    guint budget;
    gint batch;

    GST_OBJECT_LOCK (self);
    budget = self->memory_budget;
    batch = self->batch_size;
    GST_OBJECT_UNLOCK (self);
    self->budget_warned_w = r->stats.width;
    self->budget_warned_h = r->stats.height;
    GST_ELEMENT_WARNING (self, RESOURCE, SETTINGS,
        ("memory-budget (%u MiB) is exceeded: the smallest tile this model "
            "accepts (%dx%d) needs %" G_GUINT64_FORMAT " MiB of activations "
            "per batch of %d tiles, and is used anyway. Raise memory-budget, "
            "or lower batch-size.", budget, r->stats.tile_width,
            r->stats.tile_height, (r->stats.activation_bytes + (1 << 20) - 1)
            >> 20, batch),
        ("frame %dx%d", r->stats.width, r->stats.height));
  }
  if (r->stats.batch_reduced > 0)
    GST_ELEMENT_WARNING (self, RESOURCE, NO_SPACE_LEFT,
        ("out of %s memory with larger batches of tiles: continuing with %d tiles "
            "per batch (slower). Lower batch-size or memory-budget to avoid the retry.",
            unet_device_name (self->device), r->stats.batch_reduced),
        ("frame %dx%d, tiles %dx%d", r->stats.width, r->stats.height,
            r->stats.tile_width, r->stats.tile_height));
  if (self->active_post_messages)
    post_stats (self, rf->inbuf, &r->stats, self->frames_out);
  self->frames_out++;
  /* Report a larger latency when processing got noticeably slower. The first
   * frame of a model is not representative (oneDNN creates its primitives and
   * buffers then: 10-100x a normal frame); keeping it would make a synchronised
   * sink hold every frame that much longer and starve a live pipeline. So the
   * very first frame's time is provisional (replaced by the second's) and the
   * first frame after a model swap is not counted. */
  {
    GstClockTime before = self->max_processing;

    if (self->model_frames == 0 && before > 0) {
      /* a swapped-in model warming up */
    } else if (self->model_frames == 0) {
      self->provisional = TRUE;
      before = GST_CLOCK_TIME_NONE;
      GST_OBJECT_LOCK (self);
      self->max_processing = proc;
      GST_OBJECT_UNLOCK (self);
    } else if (self->provisional
        || proc > self->max_processing + self->max_processing / 10) {
      self->provisional = FALSE;
      GST_OBJECT_LOCK (self);
      self->max_processing = proc;
      GST_OBJECT_UNLOCK (self);
    }
    self->model_frames++;
    if (self->max_processing != before && (self->live
            || GST_CLOCK_TIME_IS_VALID (before)))
      gst_element_post_message (GST_ELEMENT (self),
          gst_message_new_latency (GST_OBJECT (self)));
  }
  ready_frame_free (rf);
  *outbuf = out;
  return GST_FLOW_OK;
}

/* Finish every queued frame and push it (before serialized events and at EOS). */
static GstFlowReturn
drain (GstUnetSegment * self)
{
  GstBaseTransform *trans = GST_BASE_TRANSFORM (self);
  GError *err = NULL;
  GstFlowReturn ret = GST_FLOW_OK;
  GstBuffer *out;

  if (!flush_segmenter (self, self->seg, &err)) {
    GST_ELEMENT_ERROR (self, STREAM, FAILED, ("Segmentation failed: %s",
            err->message), (NULL));
    g_error_free (err);
    ret = GST_FLOW_ERROR;
  }
  while (ret == GST_FLOW_OK && !g_queue_is_empty (&self->ready)) {
    ret = gst_unet_segment_generate_output (trans, &out);
    if (ret == GST_FLOW_OK && out)
      ret = gst_pad_push (GST_BASE_TRANSFORM_SRC_PAD (trans), out);
  }
  if (ret != GST_FLOW_OK)
    g_queue_clear_full (&self->ready, (GDestroyNotify) ready_frame_free);
  return ret;
}

static gboolean
gst_unet_segment_sink_event (GstBaseTransform * trans, GstEvent * event)
{
  GstUnetSegment *self = GST_UNET_SEGMENT (trans);

  switch (GST_EVENT_TYPE (event)) {
    case GST_EVENT_FLUSH_STOP:
      drop_all (self);
      self->last_offset = GST_BUFFER_OFFSET_NONE;
      self->ref_pts = GST_CLOCK_TIME_NONE;
      break;
    case GST_EVENT_TAG:{
      GstTagList *tags;
      guint channels;
      /* Output frames have one channel: the stream axes tag of tiffstacksrc
       * ("tiff-channels") must say so downstream. */
      gst_event_parse_tag (event, &tags);
      if (gst_tag_list_get_uint (tags, "tiff-channels", &channels)
          && channels != 1) {
        GstTagList *copy = gst_tag_list_copy (tags);
        gst_tag_list_add (copy, GST_TAG_MERGE_REPLACE, "tiff-channels", 1u,
            NULL);
        gst_event_unref (event);
        event = gst_event_new_tag (copy);
      }
      break;
    }
    default:
      /* Frames queued for batching go out before any serialized event (caps,
       * segment, gap, EOS ...), keeping the stream order. */
      if (GST_EVENT_IS_SERIALIZED (event) && self->seg)
        drain (self);
      /* A new segment (a seek) is no gap in the stream. */
      if (GST_EVENT_TYPE (event) == GST_EVENT_SEGMENT) {
        self->last_offset = GST_BUFFER_OFFSET_NONE;
        self->ref_pts = GST_CLOCK_TIME_NONE;
      }
      break;
  }
  return GST_BASE_TRANSFORM_CLASS (parent_class)->sink_event (trans, event);
}

static gboolean
gst_unet_segment_query (GstBaseTransform * trans, GstPadDirection direction,
    GstQuery * query)
{
  GstUnetSegment *self = GST_UNET_SEGMENT (trans);

  if (direction == GST_PAD_SINK && GST_QUERY_TYPE (query) == GST_QUERY_DRAIN) {
    if (self->seg)
      drain (self);
  } else if (direction == GST_PAD_SRC
      && GST_QUERY_TYPE (query) == GST_QUERY_LATENCY) {
    gboolean live;
    GstClockTime min, max, ours;

    if (!gst_pad_peer_query (GST_BASE_TRANSFORM_SINK_PAD (trans), query))
      return FALSE;
    gst_query_parse_latency (query, &live, &min, &max);
    GST_OBJECT_LOCK (self);
    ours = self->max_processing;
    GST_OBJECT_UNLOCK (self);
    min += ours;
    if (GST_CLOCK_TIME_IS_VALID (max))
      max += ours;
    gst_query_set_latency (query, live, min, max);
    GST_DEBUG_OBJECT (self, "latency: ours %" GST_TIME_FORMAT ", total min %"
        GST_TIME_FORMAT, GST_TIME_ARGS (ours), GST_TIME_ARGS (min));
    return TRUE;
  }
  return GST_BASE_TRANSFORM_CLASS (parent_class)->query (trans, direction,
      query);
}
