/* gst-unet — tiffstacksrc: a multi-page (Big)TIFF as a stream of frames
 * SPDX-License-Identifier: LGPL-2.1-or-later
 */
/**
 * SECTION:element-tiffstacksrc
 * @title: tiffstacksrc
 *
 * Reads a multi-page TIFF (classic or BigTIFF, strips or tiles, any byte order,
 * every compression the system libtiff decodes: none, LZW, Deflate, PackBits,
 * ZSTD, LZMA, JPEG, with or without predictor) and pushes one frame per page
 * (IFD), one page at a time: memory use does not depend on the number of pages.
 *
 * Output formats:
 * - 8-bit gray → GRAY8, 16-bit gray → GRAY16_LE (big-endian files are swapped),
 *   32-bit unsigned → GRAY32_LE (e.g. instance ids written by tiffstacksink),
 *   32-bit float → GRAY32F, 64-bit float → GRAY32F (rounded to float),
 *   8-bit RGB (contiguous or planar, JPEG YCbCr decoded to RGB) → RGB.
 * - Signed 8/16-bit samples are converted like ImageJ does: 2^(bits-1) is
 *   added (-32768 → 0, 0 → 32768), so order is kept; the tag
 *   "tiff-value-offset" (-128 or -32768) says what to add to get the stored
 *   value back.
 * - Everything else (1-bit, 32-bit signed, 16-bit RGB, CMYK, more than three
 *   samples, YCbCr that is not JPEG) ends in an error naming file and page.
 * - MinIsWhite and palette pages are passed through as stored (not inverted,
 *   not looked up).
 *
 * Pages of different sizes or formats in one file: the caps are renegotiated
 * before the first frame of the new size (downstream sees a new caps event).
 *
 * The element is a #GstPushSrc in TIME format. Frame k of the selected range has
 * the timestamp k / #GstTiffStackSrc:framerate. DURATION and POSITION queries
 * are answered in TIME and in frames (%GST_FORMAT_DEFAULT); flushing seeks in
 * either format go to a frame, so `progressreport` shows progress and a viewer
 * can scrub. Reverse playback is not supported.
 *
 * ImageJ hyperstacks and OME-TIFF with several channels: #GstTiffStackSrc:channel
 * selects one channel; frames then run over z (fastest) and t. Indices in
 * #GstTiffStackSrc:start-index and #GstTiffStackSrc:stop-index count frames
 * after channel selection, from 0.
 *
 * Metadata is sent downstream as tags before the first frame: the page-0
 * ImageDescription as %GST_TAG_DESCRIPTION, and the custom tags
 * "tiff-pixel-size-x", "tiff-pixel-size-y", "tiff-pixel-size-z" (double,
 * micrometres; from XResolution/YResolution + ResolutionUnit, ImageJ
 * `unit`/`spacing`, or OME `PhysicalSizeX/Y/Z`), "tiff-pixel-unit" (the unit as
 * written in the file), "tiff-channels", "tiff-slices", "tiff-frames" (uint:
 * the axes of the frames as they leave the element, channels fastest, then z,
 * then t; with #GstTiffStackSrc:channel one channel over z and t; a plain
 * multi-page TIFF is z slices, its "tiff-slices" left out while the page count
 * is not known yet, see below), "tiff-frame-interval" (double, seconds, from
 * ImageJ `finterval`/`tunit` or OME `TimeIncrement`), and "tiff-value-offset"
 * for signed data.
 *
 * Pages are indexed lazily: opening a stack reads its first page only, and the
 * chain of directories (IFDs) is followed as frames are asked for; a duration
 * or seeking query, a channel selection or a page range past what is known
 * walks the rest of the chain (two small reads per page).
 *
 * Bad input never crashes, hangs or allocates without bound: libtiff errors go
 * to a per-file handler, IFD loops are detected, every size comes
 * from libtiff and is checked against #GstTiffStackSrc:max-page-size (also
 * libtiff's single-allocation cap). A broken IFD chain (truncated file) streams
 * the pages before the break and then posts an error naming the first page
 * that could not be reached.
 *
 * ## Example launch line
 * |[
 * gst-launch-1.0 tiffstacksrc location=stack.tif ! progressreport format=buffers ! tiffstacksink location=copy.tif
 * ]|
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <string.h>

#include <gst/video/video.h>

#include "gsttiffstacksrc.h"
#include "gsttiffstackpool.h"
#include "tiff-reader.h"
#include "tiffstack-tags.h"

GST_DEBUG_CATEGORY_STATIC (gst_tiff_stack_src_debug);
#define GST_CAT_DEFAULT gst_tiff_stack_src_debug

enum
{
  PROP_0,
  PROP_LOCATION,
  PROP_START_INDEX,
  PROP_STOP_INDEX,
  PROP_LOOP,
  PROP_FRAMERATE,
  PROP_CHANNEL,
  PROP_MERGE_CHANNELS,
  PROP_MAX_PAGE_SIZE,
};

#define DEFAULT_START_INDEX 0
#define DEFAULT_STOP_INDEX -1
#define DEFAULT_LOOP FALSE
#define DEFAULT_FPS_N 1
#define DEFAULT_FPS_D 1
#define DEFAULT_CHANNEL -1
#define DEFAULT_MAX_PAGE_SIZE (G_GUINT64_CONSTANT (1) << 30)

static GstStaticPadTemplate src_template = GST_STATIC_PAD_TEMPLATE ("src",
    GST_PAD_SRC, GST_PAD_ALWAYS, GST_STATIC_CAPS (GST_TIFF_STACK_CAPS));

struct _GstTiffStackSrc
{
  GstPushSrc parent;

  /* properties, under the object lock */
  gchar *location;
  gint start_index, stop_index;
  gboolean loop;
  gint fps_n, fps_d;
  gint channel;
  gboolean merge_channels;
  guint64 max_page_size;

  /* between start() and stop() */
  TiffReader *reader;           /* the file, its page index, the current page */
  gchar *path;                  /* location as opened, for messages */
  /* The selected range (range_lock: create() and queries from other threads;
   * an open range is fixed once the page index reaches the end). */
  GMutex range_lock;
  guint n_pages;                /* reachable pages, once counted (index_all) */
  gboolean error_at_end;        /* the range runs into the broken chain */
  gboolean range_known;         /* range_len is known (else G_MAXUINT) */
  gboolean open_range;          /* the range ends with the chain (index_all) */
  gint sel_channel;             /* channel selected, -1 for every page */
  guint sel_z, sel_t;           /* hyperstack slices and time points */
  guint n_frames;               /* frames after channel selection */
  guint merged_channels;        /* per frame (merge-channels), else 1 */
  guint first, range_len;       /* selected range, in frames */
  gboolean do_loop;
  gint cfg_fps_n, cfg_fps_d;
  guint64 next_frame;           /* output frame counter, monotonic when looping */
  GstUnetLayout frame_layout;   /* caps we offer / negotiated */
  gboolean have_info;
  gboolean tags_sent;
  guint8 *prefetch;             /* first frame, decoded in start() */
  guint64 prefetch_page;
};

#define gst_tiff_stack_src_parent_class parent_class
G_DEFINE_TYPE (GstTiffStackSrc, gst_tiff_stack_src, GST_TYPE_PUSH_SRC);
GST_ELEMENT_REGISTER_DEFINE_WITH_CODE (tiffstacksrc, "tiffstacksrc",
    GST_RANK_NONE, GST_TYPE_TIFF_STACK_SRC, gst_tiff_stack_register_tags ());

static void gst_tiff_stack_src_set_property (GObject * object, guint prop_id,
    const GValue * value, GParamSpec * pspec);
static void gst_tiff_stack_src_get_property (GObject * object, guint prop_id,
    GValue * value, GParamSpec * pspec);
static void gst_tiff_stack_src_finalize (GObject * object);
static gboolean gst_tiff_stack_src_start (GstBaseSrc * bsrc);
static gboolean gst_tiff_stack_src_stop (GstBaseSrc * bsrc);
static GstCaps *gst_tiff_stack_src_get_caps (GstBaseSrc * bsrc,
    GstCaps * filter);
static gboolean gst_tiff_stack_src_decide_allocation (GstBaseSrc * bsrc,
    GstQuery * query);
static gboolean gst_tiff_stack_src_is_seekable (GstBaseSrc * bsrc);
static gboolean gst_tiff_stack_src_do_seek (GstBaseSrc * bsrc,
    GstSegment * segment);
static gboolean gst_tiff_stack_src_query (GstBaseSrc * bsrc, GstQuery * query);
static GstFlowReturn gst_tiff_stack_src_create (GstPushSrc * psrc,
    GstBuffer ** buf);

static void
gst_tiff_stack_src_class_init (GstTiffStackSrcClass * klass)
{
  GObjectClass *gobject_class = G_OBJECT_CLASS (klass);
  GstElementClass *element_class = GST_ELEMENT_CLASS (klass);
  GstBaseSrcClass *basesrc_class = GST_BASE_SRC_CLASS (klass);
  GstPushSrcClass *pushsrc_class = GST_PUSH_SRC_CLASS (klass);

  GST_DEBUG_CATEGORY_INIT (gst_tiff_stack_src_debug, "tiffstacksrc", 0,
      "TIFF stack source");
  gst_tiff_stack_register_tags ();

  gobject_class->set_property = gst_tiff_stack_src_set_property;
  gobject_class->get_property = gst_tiff_stack_src_get_property;
  gobject_class->finalize = gst_tiff_stack_src_finalize;

  g_object_class_install_property (gobject_class, PROP_LOCATION,
      g_param_spec_string ("location", "Location",
          "Multi-page TIFF or BigTIFF file to read", NULL,
          G_PARAM_READWRITE | G_PARAM_STATIC_STRINGS |
          GST_PARAM_MUTABLE_READY));
  g_object_class_install_property (gobject_class, PROP_START_INDEX,
      g_param_spec_int ("start-index", "Start index",
          "First frame to read (0-based; counts frames after channel "
          "selection)", 0, G_MAXINT, DEFAULT_START_INDEX,
          G_PARAM_READWRITE | G_PARAM_STATIC_STRINGS |
          GST_PARAM_MUTABLE_READY));
  g_object_class_install_property (gobject_class, PROP_STOP_INDEX,
      g_param_spec_int ("stop-index", "Stop index",
          "Last frame to read, inclusive (-1 = the last page of the file)",
          -1, G_MAXINT, DEFAULT_STOP_INDEX,
          G_PARAM_READWRITE | G_PARAM_STATIC_STRINGS |
          GST_PARAM_MUTABLE_READY));
  g_object_class_install_property (gobject_class, PROP_LOOP,
      g_param_spec_boolean ("loop", "Loop",
          "Start again at start-index after stop-index (timestamps keep "
          "increasing; duration is then unknown)", DEFAULT_LOOP,
          G_PARAM_READWRITE | G_PARAM_STATIC_STRINGS |
          GST_PARAM_MUTABLE_READY));
  g_object_class_install_property (gobject_class, PROP_FRAMERATE,
      gst_param_spec_fraction ("framerate", "Frame rate",
          "Frames per second used for timestamps (the default 1/1 makes the "
          "timestamp in seconds equal the frame index)", 1, G_MAXINT,
          G_MAXINT, 1, DEFAULT_FPS_N, DEFAULT_FPS_D,
          G_PARAM_READWRITE | G_PARAM_STATIC_STRINGS |
          GST_PARAM_MUTABLE_READY));
  g_object_class_install_property (gobject_class, PROP_CHANNEL,
      g_param_spec_int ("channel", "Channel",
          "Channel of an ImageJ hyperstack or OME-TIFF to read, frames then "
          "run over z and t (-1 = every page in file order)", -1, G_MAXINT,
          DEFAULT_CHANNEL,
          G_PARAM_READWRITE | G_PARAM_STATIC_STRINGS |
          GST_PARAM_MUTABLE_READY));
  g_object_class_install_property (gobject_class, PROP_MERGE_CHANNELS,
      g_param_spec_boolean ("merge-channels", "Merge channels",
          "Every frame holds all channels (at most 8) of one z/t position of an "
          "ImageJ hyperstack or OME-TIFF, as planes (caps format e.g. "
          "GRAY16_LE_C2), for models with several input channels; frames run "
          "over z and t", FALSE,
          G_PARAM_READWRITE | G_PARAM_STATIC_STRINGS |
          GST_PARAM_MUTABLE_READY));
  g_object_class_install_property (gobject_class, PROP_MAX_PAGE_SIZE,
      g_param_spec_uint64 ("max-page-size", "Maximum page size",
          "Largest decoded page, strip or tile accepted, in bytes; larger "
          "ones are refused as damaged (guards against absurd dimensions)",
          1024, G_MAXSSIZE, DEFAULT_MAX_PAGE_SIZE,
          G_PARAM_READWRITE | G_PARAM_STATIC_STRINGS |
          GST_PARAM_MUTABLE_READY));

  gst_element_class_add_static_pad_template (element_class, &src_template);
  gst_element_class_set_static_metadata (element_class,
      "TIFF stack source", "Source/File/Video",
      "Streams the pages of a multi-page (Big)TIFF as video frames",
      "gst-unet project");

  basesrc_class->start = GST_DEBUG_FUNCPTR (gst_tiff_stack_src_start);
  basesrc_class->stop = GST_DEBUG_FUNCPTR (gst_tiff_stack_src_stop);
  basesrc_class->get_caps = GST_DEBUG_FUNCPTR (gst_tiff_stack_src_get_caps);
  basesrc_class->decide_allocation =
      GST_DEBUG_FUNCPTR (gst_tiff_stack_src_decide_allocation);
  basesrc_class->is_seekable =
      GST_DEBUG_FUNCPTR (gst_tiff_stack_src_is_seekable);
  basesrc_class->do_seek = GST_DEBUG_FUNCPTR (gst_tiff_stack_src_do_seek);
  basesrc_class->query = GST_DEBUG_FUNCPTR (gst_tiff_stack_src_query);
  pushsrc_class->create = GST_DEBUG_FUNCPTR (gst_tiff_stack_src_create);
}

static void
gst_tiff_stack_src_init (GstTiffStackSrc * self)
{
  self->start_index = DEFAULT_START_INDEX;
  self->stop_index = DEFAULT_STOP_INDEX;
  self->loop = DEFAULT_LOOP;
  self->fps_n = DEFAULT_FPS_N;
  self->fps_d = DEFAULT_FPS_D;
  self->channel = DEFAULT_CHANNEL;
  self->max_page_size = DEFAULT_MAX_PAGE_SIZE;
  g_mutex_init (&self->range_lock);
  gst_base_src_set_format (GST_BASE_SRC (self), GST_FORMAT_TIME);
}

static void
gst_tiff_stack_src_finalize (GObject * object)
{
  GstTiffStackSrc *self = GST_TIFF_STACK_SRC (object);

  g_free (self->location);
  g_mutex_clear (&self->range_lock);
  G_OBJECT_CLASS (parent_class)->finalize (object);
}

static void
gst_tiff_stack_src_set_property (GObject * object, guint prop_id,
    const GValue * value, GParamSpec * pspec)
{
  GstTiffStackSrc *self = GST_TIFF_STACK_SRC (object);

  GST_OBJECT_LOCK (self);
  switch (prop_id) {
    case PROP_LOCATION:
      g_free (self->location);
      self->location = g_value_dup_string (value);
      break;
    case PROP_START_INDEX:
      self->start_index = g_value_get_int (value);
      break;
    case PROP_STOP_INDEX:
      self->stop_index = g_value_get_int (value);
      break;
    case PROP_LOOP:
      self->loop = g_value_get_boolean (value);
      break;
    case PROP_FRAMERATE:
      self->fps_n = gst_value_get_fraction_numerator (value);
      self->fps_d = gst_value_get_fraction_denominator (value);
      break;
    case PROP_CHANNEL:
      self->channel = g_value_get_int (value);
      break;
    case PROP_MERGE_CHANNELS:
      self->merge_channels = g_value_get_boolean (value);
      break;
    case PROP_MAX_PAGE_SIZE:
      self->max_page_size = g_value_get_uint64 (value);
      break;
    default:
      G_OBJECT_WARN_INVALID_PROPERTY_ID (object, prop_id, pspec);
      break;
  }
  GST_OBJECT_UNLOCK (self);
}

static void
gst_tiff_stack_src_get_property (GObject * object, guint prop_id,
    GValue * value, GParamSpec * pspec)
{
  GstTiffStackSrc *self = GST_TIFF_STACK_SRC (object);

  GST_OBJECT_LOCK (self);
  switch (prop_id) {
    case PROP_LOCATION:
      g_value_set_string (value, self->location);
      break;
    case PROP_START_INDEX:
      g_value_set_int (value, self->start_index);
      break;
    case PROP_STOP_INDEX:
      g_value_set_int (value, self->stop_index);
      break;
    case PROP_LOOP:
      g_value_set_boolean (value, self->loop);
      break;
    case PROP_FRAMERATE:
      gst_value_set_fraction (value, self->fps_n, self->fps_d);
      break;
    case PROP_CHANNEL:
      g_value_set_int (value, self->channel);
      break;
    case PROP_MERGE_CHANNELS:
      g_value_set_boolean (value, self->merge_channels);
      break;
    case PROP_MAX_PAGE_SIZE:
      g_value_set_uint64 (value, self->max_page_size);
      break;
    default:
      G_OBJECT_WARN_INVALID_PROPERTY_ID (object, prop_id, pspec);
      break;
  }
  GST_OBJECT_UNLOCK (self);
}

/* ---- frames, pages and time -------------------------------------------- */

static GstClockTime
frame_to_time (GstTiffStackSrc * self, guint64 frame)
{
  return gst_util_uint64_scale (frame, (guint64) self->cfg_fps_d * GST_SECOND,
      self->cfg_fps_n);
}

static guint64
time_to_frame (GstTiffStackSrc * self, GstClockTime t)
{
  return gst_util_uint64_scale (t, self->cfg_fps_n,
      (guint64) self->cfg_fps_d * GST_SECOND);
}

/* Page of the selected frame @sel (z fastest, then t) of channel @channel of a
 * hyperstack; with every page selected, page @sel. */
static guint64
frame_page (GstTiffStackSrc * self, guint64 sel, guint channel)
{
  if (self->sel_channel < 0)
    return sel;
  return tiff_reader_hyperstack_page (self->reader, channel,
      (guint) (sel % self->sel_z), (guint) (sel / self->sel_z));
}

/* The axes of the stream as it leaves the element (channels fastest, then z,
 * then t, ImageJ's order), for the tags: one channel of a hyperstack runs over
 * z and t; every page of a hyperstack whose non-singleton axes are in that
 * order keeps the file's axes; anything else (a plain multi-page TIFF, an OME
 * order such as XYZCT with several channels and slices) is a stack of z
 * slices, as ImageJ shows it. */
static void
stream_axes (GstTiffStackSrc * self, guint * c, guint * z, guint * t)
{
  const TiffStackMeta *m = tiff_reader_get_meta (self->reader);
  gint i, last = -1;
  gboolean in_order = TRUE;

  if (self->sel_channel >= 0) {
    *c = MAX (self->merged_channels, 1);
    *z = self->sel_z;
    *t = self->sel_t;
    return;
  }
  *c = MAX (m->channels, 1);
  *z = MAX (m->slices, 1);
  *t = MAX (m->frames, 1);
  for (i = 2; i < 5 && m->dim_order[0]; i++) {
    gchar a = m->dim_order[i];
    guint n = a == 'C' ? *c : a == 'Z' ? *z : *t;
    gint rank = a == 'C' ? 0 : a == 'Z' ? 1 : 2;
    if (n > 1) {
      in_order = in_order && rank > last;
      last = rank;
    }
  }
  if (!(m->channels || m->slices || m->frames) || !in_order) {
    /* Every page a z slice. The page count is known once the chain has been
     * indexed; before that (pages are indexed lazily, see start()) a file
     * with axes metadata gives it, and a plain TIFF leaves it out (0 here):
     * walking a long chain for a tag would cost what lazy indexing saves. A
     * sink counts the pages it writes anyway. */
    guint n_pages;

    *c = *t = 1;
    if (tiff_reader_get_page_count (self->reader, &n_pages))
      *z = n_pages;
    else if (m->channels || m->slices || m->frames)
      *z = (guint) MIN ((guint64) MAX (m->channels, 1) * MAX (m->slices, 1)
          * MAX (m->frames, 1), G_MAXUINT);
    else
      *z = 0;
  }
}

static void
post_page_error (GstTiffStackSrc * self, guint64 page, const gchar * what)
{
  GST_ELEMENT_ERROR (self, STREAM, DECODE,
      ("Could not read page %" G_GUINT64_FORMAT " of \"%s\": %s", page,
          self->path, what), ("libtiff: %s", self->reader ?
          tiff_reader_get_libtiff_message (self->reader, "(no message)") :
          "(no message)"));
}

/* An error of the reader (its message names file and page) as the element's. */
static void
post_reader_error (GstTiffStackSrc * self, const GError * err)
{
  const gchar *tiff_msg = self->reader ?
      tiff_reader_get_libtiff_message (self->reader, "(no message)") :
      "(no message)";

  switch (err->code) {
    case TIFF_READER_ERROR_NOT_FOUND:
      GST_ELEMENT_ERROR (self, RESOURCE, NOT_FOUND, ("%s", err->message),
          (NULL));
      break;
    case TIFF_READER_ERROR_OPEN:
      GST_ELEMENT_ERROR (self, RESOURCE, OPEN_READ, ("%s", err->message),
          (NULL));
      break;
    case TIFF_READER_ERROR_NOT_TIFF:
      GST_ELEMENT_ERROR (self, STREAM, WRONG_TYPE, ("%s", err->message),
          (NULL));
      break;
    case TIFF_READER_ERROR_TOO_LARGE:
      GST_ELEMENT_ERROR (self, STREAM, DECODE, ("%s (the limit is "
              "max-page-size).", err->message), ("libtiff: %s", tiff_msg));
      break;
    default:
      GST_ELEMENT_ERROR (self, STREAM, DECODE, ("%s", err->message),
          ("libtiff: %s", tiff_msg));
      break;
  }
}

/* The caps format of what the reader reads out. 16-bit samples come in host
 * order, which is little-endian on every platform this builds for. */
G_STATIC_ASSERT (G_BYTE_ORDER == G_LITTLE_ENDIAN);
static GstUnetFormat
page_format (const TiffPageInfo * page)
{
  switch (page->format) {
    case TIFF_READER_FORMAT_U8:
      return GST_UNET_FORMAT_GRAY8;
    case TIFF_READER_FORMAT_U16:
      return GST_UNET_FORMAT_GRAY16_LE;
    case TIFF_READER_FORMAT_U32:
      return GST_UNET_FORMAT_GRAY32_LE;
    case TIFF_READER_FORMAT_F32:
      return GST_UNET_FORMAT_GRAY32F;
    case TIFF_READER_FORMAT_RGB8:
      return GST_UNET_FORMAT_RGB;
  }
  return GST_UNET_FORMAT_UNKNOWN;
}

/* The current page. */
static const TiffPageInfo *
cur_page (GstTiffStackSrc * self)
{
  return tiff_reader_get_page_info (self->reader);
}

static gboolean
layout_info (GstTiffStackSrc * self, const TiffPageInfo * page,
    GstUnetLayout * info)
{
  const TiffStackMeta *meta = tiff_reader_get_meta (self->reader);

  memset (info, 0, sizeof (*info));
  info->fps_n = self->cfg_fps_n;
  info->fps_d = self->cfg_fps_d;
  /* Pixel aspect ratio = pixel width / pixel height. */
  if (meta->size_x_um > 0.0 && meta->size_y_um > 0.0
      && meta->size_x_um != meta->size_y_um) {
    gint n, d;
    gst_util_double_to_fraction (meta->size_x_um / meta->size_y_um, &n, &d);
    if (n > 0 && d > 0) {
      info->par_n = n;
      info->par_d = d;
    }
  }
  return gst_unet_layout_set_planes (info, page_format (page),
      MAX (self->merged_channels, 1), page->width, page->height);
}

/* ---- the selected range ---------------------------------------------------- */

/* Follows the chain to its end and fixes what depends on the page count.
 * Call with range_lock held. */
static void
index_all (GstTiffStackSrc * self)
{
  self->n_pages = tiff_reader_count_pages (self->reader);
  if (self->range_known || !self->open_range)
    return;
  /* Only a range without stop-index and without channel selection is left
   * open (see start()): it runs to the last page. */
  self->n_frames = self->n_pages;
  self->range_len = self->n_frames > self->first ? self->n_frames - self->first : 0;
  self->error_at_end = tiff_reader_get_chain_error (self->reader) != NULL;
  self->range_known = TRUE;
}

/* The range length, indexing every page if @complete or it is unknown. */
static guint
range_len_locked (GstTiffStackSrc * self, gboolean complete)
{
  guint len;

  g_mutex_lock (&self->range_lock);
  if (complete && !self->range_known)
    index_all (self);
  len = self->range_len;
  g_mutex_unlock (&self->range_lock);
  return len;
}

/* Makes @page the reader's current page. */
static gboolean
goto_page (GstTiffStackSrc * self, guint64 page)
{
  GError *err = NULL;

  if (!tiff_reader_select_page (self->reader, page, &err)) {
    post_reader_error (self, err);
    g_error_free (err);
    return FALSE;
  }
  return TRUE;
}

/* Reads the current page into @frame. */
static gboolean
read_page (GstTiffStackSrc * self, GstUnetFrame * frame)
{
  GError *err = NULL;

  if (!tiff_reader_read_page (self->reader, frame->data, frame->stride, &err)) {
    post_reader_error (self, err);
    g_error_free (err);
    return FALSE;
  }
  return TRUE;
}

/* ---- start / stop -------------------------------------------------------- */

static gboolean
gst_tiff_stack_src_stop (GstBaseSrc * bsrc)
{
  GstTiffStackSrc *self = GST_TIFF_STACK_SRC (bsrc);

  g_clear_pointer (&self->reader, tiff_reader_free);
  g_clear_pointer (&self->path, g_free);
  g_clear_pointer (&self->prefetch, g_free);
  g_mutex_lock (&self->range_lock);
  self->range_known = FALSE;
  self->open_range = FALSE;
  self->n_pages = 0;
  g_mutex_unlock (&self->range_lock);
  self->have_info = FALSE;
  self->tags_sent = FALSE;
  self->next_frame = 0;
  return TRUE;
}

/* Asks the linked peer whether it can take the first page's caps at all.
 * basesrc would find out in its streaming thread, and an error posted there
 * while the application is still inside gst_element_set_state() can be lost:
 * gst-launch-1.0 1.22 quits its main loop from its bus sync handler, and a
 * quit before g_main_loop_run() is forgotten, so the launcher hung forever
 * after printing the error. Failing here fails the state change itself.
 * Downstream is already PAUSED (a bin changes sinks first) and answers caps
 * queries; an unlinked pad is left to the ordinary negotiation. */
static gboolean
downstream_accepts_first_page (GstTiffStackSrc * self)
{
  GstPad *pad = GST_BASE_SRC_PAD (self);
  GstCaps *caps, *peer_caps;
  gboolean ok;
  gchar *desc;

  if (!gst_pad_is_linked (pad))
    return TRUE;
  caps = gst_unet_layout_to_caps (&self->frame_layout);
  peer_caps = gst_pad_peer_query_caps (pad, caps);
  ok = !gst_caps_is_empty (peer_caps);
  gst_caps_unref (peer_caps);
  if (!ok) {
    desc = gst_caps_to_string (caps);
    GST_ELEMENT_ERROR (self, CORE, NEGOTIATION,
        ("\"%s\" holds %ux%u %s frames and downstream does not accept that "
            "format or size.", self->path, cur_page (self)->width,
            cur_page (self)->height,
            gst_unet_format_name (page_format (cur_page (self)))),
        ("offered caps: %s", desc));
    g_free (desc);
  }
  gst_caps_unref (caps);
  return ok;
}

static gboolean
gst_tiff_stack_src_start (GstBaseSrc * bsrc)
{
  GstTiffStackSrc *self = GST_TIFF_STACK_SRC (bsrc);
  const TiffStackMeta *meta;
  gint start_index, stop_index, channel;
  gboolean merge;
  guint64 max_page_size, last, sel;
  GError *err = NULL;

  GST_OBJECT_LOCK (self);
  self->path = g_strdup (self->location);
  start_index = self->start_index;
  stop_index = self->stop_index;
  channel = self->channel;
  merge = self->merge_channels;
  max_page_size = self->max_page_size;
  self->do_loop = self->loop;
  self->cfg_fps_n = self->fps_n;
  self->cfg_fps_d = self->fps_d;
  GST_OBJECT_UNLOCK (self);

  if (self->path == NULL || self->path[0] == '\0') {
    GST_ELEMENT_ERROR (self, RESOURCE, NOT_FOUND,
        ("No file name specified for reading."), (NULL));
    goto fail;
  }
  /* Reads page 0 (its layout checked) and the metadata; the rest of the chain
   * of pages is followed as far as needed. */
  self->reader = tiff_reader_open (self->path, max_page_size, &err);
  if (self->reader == NULL) {
    post_reader_error (self, err);
    g_error_free (err);
    goto fail;
  }
  meta = tiff_reader_get_meta (self->reader);

  g_mutex_lock (&self->range_lock);
  self->range_known = self->open_range = FALSE;
  /* Channel selection (hyperstacks): every page is indexed. */
  self->sel_channel = -1;
  if (channel >= 0) {
    guint c = MAX (meta->channels, 1);
    if ((guint) channel >= c) {
      g_mutex_unlock (&self->range_lock);
      GST_ELEMENT_ERROR (self, RESOURCE, SETTINGS,
          ("channel=%d but \"%s\" has %u channel%s.", channel, self->path, c,
              c == 1 ? "" : "s"), (NULL));
      goto fail;
    }
    if (c > 1) {
      self->sel_channel = channel;
      self->sel_z = MAX (meta->slices, 1);
      self->sel_t = MAX (meta->frames, 1);
    }
  }
  /* merge-channels: frames over z and t as for channel 0, each read with the
   * pages of every channel. */
  self->merged_channels = 1;
  if (merge) {
    guint c = MAX (meta->channels, 1);
    if (channel >= 0) {
      g_mutex_unlock (&self->range_lock);
      GST_ELEMENT_ERROR (self, RESOURCE, SETTINGS,
          ("channel=%d and merge-channels=true exclude each other.", channel),
          (NULL));
      goto fail;
    }
    if (c > GST_UNET_MAX_CHANNELS) {
      g_mutex_unlock (&self->range_lock);
      GST_ELEMENT_ERROR (self, RESOURCE, SETTINGS,
          ("\"%s\" has %u channels; merge-channels takes at most %d (select "
              "one with channel=N).", self->path, c, GST_UNET_MAX_CHANNELS),
          (NULL));
      goto fail;
    }
    if (c > 1) {
      self->sel_channel = 0;
      self->sel_z = MAX (meta->slices, 1);
      self->sel_t = MAX (meta->frames, 1);
      self->merged_channels = c;
    }
  }
  if (self->sel_channel >= 0) {
    /* Frames whose page exists (a truncated hyperstack ends early). */
    guint64 total = (guint64) self->sel_z * self->sel_t;
    index_all (self);
    for (sel = 0; sel < total
        && frame_page (self, sel, self->sel_channel) < self->n_pages;)
      sel++;
    self->n_frames = sel;
    if (self->n_frames == 0) {
      g_mutex_unlock (&self->range_lock);
      GST_ELEMENT_ERROR (self, STREAM, DECODE,
          ("\"%s\" has no page for channel %d.", self->path, channel), (NULL));
      goto fail;
    }
  } else {
    self->n_frames = G_MAXUINT;    /* not known yet */
  }

  if (self->sel_channel < 0
      && !tiff_reader_has_page (self->reader, start_index))
    index_all (self);
  if (self->sel_channel < 0
      && tiff_reader_get_page_count (self->reader, &self->n_pages))
    self->n_frames = self->n_pages;
  if ((guint) start_index >= self->n_frames) {
    g_mutex_unlock (&self->range_lock);
    GST_ELEMENT_ERROR (self, RESOURCE, SETTINGS,
        ("start-index=%d is past the last frame of \"%s\" (%u frames).",
            start_index, self->path, self->n_frames), (NULL));
    goto fail;
  }
  if (stop_index >= 0 && stop_index < start_index) {
    g_mutex_unlock (&self->range_lock);
    GST_ELEMENT_ERROR (self, RESOURCE, SETTINGS,
        ("stop-index=%d is before start-index=%d.", stop_index, start_index),
        (NULL));
    goto fail;
  }
  self->first = start_index;
  if (stop_index >= 0 && self->sel_channel < 0
      && !tiff_reader_has_page (self->reader, stop_index))
    index_all (self);
  if (self->sel_channel < 0
      && tiff_reader_get_page_count (self->reader, &self->n_pages))
    self->n_frames = self->n_pages;
  if (stop_index >= 0 || self->n_frames != G_MAXUINT) {
    last = self->n_frames - 1;
    if (stop_index >= 0 && (guint64) stop_index < last)
      last = stop_index;
    self->range_len = last - start_index + 1;
    self->error_at_end = tiff_reader_get_chain_error (self->reader) != NULL
        && (stop_index < 0 || (guint64) stop_index >= self->n_frames);
    self->range_known = TRUE;
  } else {
    /* Up to the end of the chain, found when it is reached (index_all). */
    self->range_len = G_MAXUINT;
    self->error_at_end = FALSE;
    self->open_range = TRUE;
  }
  g_mutex_unlock (&self->range_lock);
  self->next_frame = 0;
  self->tags_sent = FALSE;

  /* Caps of the first frame, so negotiation happens before create(). */
  if (!goto_page (self, frame_page (self, self->first, self->sel_channel)))
    goto fail;
  if (!layout_info (self, cur_page (self), &self->frame_layout)) {
    post_page_error (self, tiff_reader_get_current_page (self->reader),
        "unsupported page size");
    goto fail;
  }
  if (!downstream_accepts_first_page (self))
    goto fail;
  /* Decode the first frame now: a damaged first page then fails the state
   * change itself, which every application handles, instead of racing the
   * application's main loop from the streaming thread (gst-launch-1.0 1.22
   * can miss an error posted before its main loop runs). The frame is kept
   * and becomes the first buffer. */
  self->prefetch = g_try_malloc (self->frame_layout.size);
  if (self->prefetch == NULL) {
    post_page_error (self, tiff_reader_get_current_page (self->reader),
        "out of memory");
    goto fail;
  }
  {
    GstUnetFrame frame = { NULL, };
    frame.data = self->prefetch;
    frame.stride = self->frame_layout.stride;
    if (!read_page (self, &frame))
      goto fail;
  }
  self->prefetch_page = tiff_reader_get_current_page (self->reader);
  self->have_info = TRUE;
  GST_INFO_OBJECT (self, "%s: %u pages indexed, %u frames selected from %u, "
      "%s, first page %ux%u", self->path,
      tiff_reader_get_pages_indexed (self->reader), self->range_len,
      self->first, meta->is_imagej ? "ImageJ" : meta->is_ome ? "OME" :
      "plain", cur_page (self)->width, cur_page (self)->height);
  return TRUE;

fail:
  gst_tiff_stack_src_stop (bsrc);
  return FALSE;
}

/* ---- caps and allocation ------------------------------------------------- */

static GstCaps *
gst_tiff_stack_src_get_caps (GstBaseSrc * bsrc, GstCaps * filter)
{
  GstTiffStackSrc *self = GST_TIFF_STACK_SRC (bsrc);
  GstCaps *caps, *tmp;

  GST_OBJECT_LOCK (self);
  if (self->have_info)
    caps = gst_unet_layout_to_caps (&self->frame_layout);
  else
    caps = gst_pad_get_pad_template_caps (GST_BASE_SRC_PAD (bsrc));
  GST_OBJECT_UNLOCK (self);

  if (filter) {
    tmp = gst_caps_intersect_full (filter, caps, GST_CAPS_INTERSECT_FIRST);
    gst_caps_unref (caps);
    caps = tmp;
  }
  return caps;
}

/* Frames always come from our own pool at the default stride: downstream's
 * video pools cannot describe GRAY32F in GStreamer 1.22, and a pool keeps
 * memory flat (no allocation per page). */
static gboolean
gst_tiff_stack_src_decide_allocation (GstBaseSrc * bsrc, GstQuery * query)
{
  GstTiffStackSrc *self = GST_TIFF_STACK_SRC (bsrc);
  GstUnetLayout layout;
  GstAllocationParams params;
  GstAllocator *allocator = NULL;
  GstBufferPool *pool;
  GstStructure *config;
  GstCaps *caps;

  gst_query_parse_allocation (query, &caps, NULL);
  if (caps == NULL || !gst_unet_layout_from_caps (&layout, caps))
    return FALSE;

  if (gst_query_get_n_allocation_params (query) > 0)
    gst_query_parse_nth_allocation_param (query, 0, &allocator, &params);
  else
    gst_allocation_params_init (&params);

  /* A pool whose allocations may fail, preallocating nothing: a page size
   * comes from the file, and the default pool's g_malloc() aborts. */
  pool = gst_tiff_stack_pool_new ();
  config = gst_buffer_pool_get_config (pool);
  gst_buffer_pool_config_set_params (config, caps, layout.size, 0, 0);
  gst_buffer_pool_config_set_allocator (config, allocator, &params);
  if (!gst_buffer_pool_set_config (pool, config)) {
    GST_ERROR_OBJECT (self, "buffer pool refused its configuration");
    gst_object_unref (pool);
    if (allocator)
      gst_object_unref (allocator);
    return FALSE;
  }
  while (gst_query_get_n_allocation_pools (query) > 0)
    gst_query_remove_nth_allocation_pool (query, 0);
  gst_query_add_allocation_pool (query, pool, layout.size, 0, 0);
  gst_object_unref (pool);
  if (allocator)
    gst_object_unref (allocator);

  return GST_BASE_SRC_CLASS (parent_class)->decide_allocation (bsrc, query);
}

/* ---- seeking and queries ------------------------------------------------- */

static gboolean
gst_tiff_stack_src_is_seekable (GstBaseSrc * bsrc)
{
  return TRUE;
}

static gboolean
gst_tiff_stack_src_do_seek (GstBaseSrc * bsrc, GstSegment * segment)
{
  GstTiffStackSrc *self = GST_TIFF_STACK_SRC (bsrc);
  guint64 frame;

  if (segment->rate < 0.0) {
    GST_WARNING_OBJECT (self, "reverse playback is not supported");
    return FALSE;
  }
  if (self->cfg_fps_n <= 0)
    return FALSE;
  frame = time_to_frame (self, segment->start);
  if (!self->do_loop) {
    /* past the known pages: index up to the frame (never beyond) */
    guint len;

    g_mutex_lock (&self->range_lock);
    if (!self->range_known
        && !tiff_reader_has_page (self->reader, (guint64) self->first + frame))
      index_all (self);
    len = self->range_len;
    g_mutex_unlock (&self->range_lock);
    if (frame > len)
      frame = len;
  }
  GST_DEBUG_OBJECT (self, "seek to %" GST_TIME_FORMAT " -> frame %"
      G_GUINT64_FORMAT, GST_TIME_ARGS (segment->start), frame);
  self->next_frame = frame;
  segment->position = frame_to_time (self, frame);
  return TRUE;
}

/* Frames are counted in DEFAULT, and in BUFFERS (progressreport's
 * format=buffers): one buffer per frame. */
static gboolean
is_frames (GstFormat fmt)
{
  return fmt == GST_FORMAT_DEFAULT || fmt == GST_FORMAT_BUFFERS;
}

static gboolean
convert_frames (GstTiffStackSrc * self, GstFormat src_fmt, gint64 src_val,
    GstFormat dest_fmt, gint64 * dest_val)
{
  if (src_fmt == dest_fmt || src_val == -1
      || (is_frames (src_fmt) && is_frames (dest_fmt))) {
    *dest_val = src_val;
    return TRUE;
  }
  if (self->cfg_fps_n <= 0)
    return FALSE;
  if (is_frames (src_fmt) && dest_fmt == GST_FORMAT_TIME) {
    *dest_val = frame_to_time (self, src_val);
    return TRUE;
  }
  if (src_fmt == GST_FORMAT_TIME && is_frames (dest_fmt)) {
    *dest_val = time_to_frame (self, src_val);
    return TRUE;
  }
  return FALSE;
}

static gboolean
gst_tiff_stack_src_query (GstBaseSrc * bsrc, GstQuery * query)
{
  GstTiffStackSrc *self = GST_TIFF_STACK_SRC (bsrc);
  GstFormat fmt, dest_fmt;
  gint64 val, dest_val;
  gboolean started = self->have_info;

  switch (GST_QUERY_TYPE (query)) {
    case GST_QUERY_DURATION:
      gst_query_parse_duration (query, &fmt, NULL);
      if (!started || (fmt != GST_FORMAT_TIME && !is_frames (fmt)))
        break;
      if (self->do_loop)
        val = -1;
      else if (is_frames (fmt))
        val = range_len_locked (self, TRUE);
      else
        val = frame_to_time (self, range_len_locked (self, TRUE));
      gst_query_set_duration (query, fmt, val);
      return TRUE;
    case GST_QUERY_CONVERT:
      gst_query_parse_convert (query, &fmt, &val, &dest_fmt, NULL);
      if (!started)
        break;
      if (!convert_frames (self, fmt, val, dest_fmt, &dest_val))
        return FALSE;
      gst_query_set_convert (query, fmt, val, dest_fmt, dest_val);
      return TRUE;
    case GST_QUERY_SEEKING:
      gst_query_parse_seeking (query, &fmt, NULL, NULL, NULL);
      if (!started || (fmt != GST_FORMAT_TIME && !is_frames (fmt)))
        break;
      if (self->do_loop)
        val = -1;
      else if (is_frames (fmt))
        val = range_len_locked (self, TRUE);
      else
        val = frame_to_time (self, range_len_locked (self, TRUE));
      gst_query_set_seeking (query, fmt, TRUE, 0, val);
      return TRUE;
    default:
      break;
  }
  return GST_BASE_SRC_CLASS (parent_class)->query (bsrc, query);
}

/* ---- streaming ----------------------------------------------------------- */

/* merge-channels: planes 1.. of frame @k from the pages of channels 1.. (plane
 * 0, channel 0, is read by the caller); every page must match channel 0's.
 * @range_len: the range's length as create() read it under range_lock. */
static gboolean
read_other_channels (GstTiffStackSrc * self, GstUnetFrame * frame, guint64 k,
    guint range_len)
{
  TiffPageInfo first = *cur_page (self);
  guint c;
  gboolean ok = TRUE;

  for (c = 1; ok && c < self->merged_channels; c++) {
    GstUnetFrame plane = *frame;
    guint64 page = frame_page (self, self->first + k % range_len, c);

    ok = goto_page (self, page);
    if (ok && (cur_page (self)->width != first.width
            || cur_page (self)->height != first.height
            || cur_page (self)->format != first.format)) {
      post_page_error (self, page, "merge-channels needs every channel's page "
          "to have the size and format of channel 0's");
      ok = FALSE;
    }
    plane.data = frame->data + (gsize) c * frame->stride * self->frame_layout.height;
    ok = ok && read_page (self, &plane);
  }
  return ok;
}

static GstFlowReturn
gst_tiff_stack_src_create (GstPushSrc * psrc, GstBuffer ** outbuf)
{
  GstTiffStackSrc *self = GST_TIFF_STACK_SRC (psrc);
  GstBaseSrc *bsrc = GST_BASE_SRC (psrc);
  GstBuffer *buf = NULL;
  GstUnetFrame frame;
  GstUnetLayout info;
  GstClockTime pts, stop;
  GstFlowReturn ret;
  guint64 k = self->next_frame, page;
  guint range_len;
  const gchar *chain_error;
  const TiffPageInfo *pinfo;

  /* An open range ends where the chain does: index up to this frame. */
  g_mutex_lock (&self->range_lock);
  if (!self->range_known
      && !tiff_reader_has_page (self->reader, (guint64) self->first + k))
    index_all (self);
  range_len = self->range_len;
  g_mutex_unlock (&self->range_lock);
  chain_error = tiff_reader_get_chain_error (self->reader);
  if (range_len == 0) {
    post_page_error (self, self->first, chain_error ? chain_error :
        "the file has fewer pages");
    return GST_FLOW_ERROR;
  }

  if (!self->do_loop && k >= range_len) {
    if (self->error_at_end) {
      post_page_error (self, self->n_pages, chain_error);
      return GST_FLOW_ERROR;
    }
    return GST_FLOW_EOS;
  }
  pts = frame_to_time (self, k);
  GST_OBJECT_LOCK (self);
  stop = bsrc->segment.stop;
  GST_OBJECT_UNLOCK (self);
  if (GST_CLOCK_TIME_IS_VALID (stop) && pts >= stop)
    return GST_FLOW_EOS;

  if (self->do_loop && k > 0 && k % range_len == 0 && self->error_at_end) {
    post_page_error (self, self->n_pages, chain_error);
    return GST_FLOW_ERROR;
  }
  page = frame_page (self, self->first + k % range_len, self->sel_channel);
  if (!goto_page (self, page))
    return GST_FLOW_ERROR;
  pinfo = cur_page (self);

  if (!layout_info (self, pinfo, &info)) {
    post_page_error (self, page, "unsupported page size");
    return GST_FLOW_ERROR;
  }
  if (!gst_unet_layout_equal (&info, &self->frame_layout)) {
    GST_INFO_OBJECT (self, "page %" G_GUINT64_FORMAT " is %ux%u %s: "
        "renegotiating", page, pinfo->width, pinfo->height,
        gst_unet_format_name (page_format (pinfo)));
    GST_OBJECT_LOCK (self);
    self->frame_layout = info;
    GST_OBJECT_UNLOCK (self);
    if (!gst_base_src_negotiate (bsrc)) {
      GST_ELEMENT_ERROR (self, CORE, NEGOTIATION,
          ("Page %" G_GUINT64_FORMAT " of \"%s\" is %ux%u %s and downstream "
              "does not accept that.", page, self->path, pinfo->width,
              pinfo->height, gst_unet_format_name (page_format (pinfo))),
          (NULL));
      return GST_FLOW_NOT_NEGOTIATED;
    }
  }

  if (!self->tags_sent) {
    GstTagList *tags = gst_tiff_stack_meta_to_tags (tiff_reader_get_meta (self->reader));
    guint c, z, t;

    stream_axes (self, &c, &z, &t);
    gst_tag_list_add (tags, GST_TAG_MERGE_REPLACE, GST_TIFF_STACK_TAG_CHANNELS,
        c, GST_TIFF_STACK_TAG_FRAMES, t, NULL);
    if (z > 0)
      gst_tag_list_add (tags, GST_TAG_MERGE_REPLACE,
          GST_TIFF_STACK_TAG_SLICES, z, NULL);
    else
      gst_tag_list_remove_tag (tags, GST_TIFF_STACK_TAG_SLICES);
    if (pinfo->value_offset != 0)
      gst_tag_list_add (tags, GST_TAG_MERGE_REPLACE,
          GST_TIFF_STACK_TAG_VALUE_OFFSET, (gdouble) pinfo->value_offset, NULL);
    gst_tag_list_add (tags, GST_TAG_MERGE_REPLACE, GST_TAG_CONTAINER_FORMAT,
        "TIFF", NULL);
    gst_tag_list_set_scope (tags, GST_TAG_SCOPE_GLOBAL);
    /* basesrc queues serialized events sent to the element and pushes them
     * after the segment, before this buffer. Its send_event directly, not
     * gst_element_send_event(): that takes the state lock, which a state change
     * to NULL holds while it waits for this thread to stop (a deadlock seen
     * when a pipeline was shut down as its first frame was made). */
    GST_ELEMENT_CLASS (parent_class)->send_event (GST_ELEMENT (bsrc),
        gst_event_new_tag (tags));
    self->tags_sent = TRUE;
  }

  ret = GST_BASE_SRC_CLASS (parent_class)->alloc (bsrc, k,
      self->frame_layout.size, &buf);
  if (ret == GST_FLOW_ERROR) {
    gchar *why = g_strdup_printf ("cannot allocate a frame of %" G_GSIZE_FORMAT
        " bytes (out of memory)", self->frame_layout.size);
    post_page_error (self, page, why);
    g_free (why);
  }
  if (ret != GST_FLOW_OK)
    return ret;
  if (!gst_unet_frame_map (&frame, &self->frame_layout, buf, GST_MAP_WRITE)) {
    gst_buffer_unref (buf);
    GST_ELEMENT_ERROR (self, RESOURCE, FAILED,
        ("Could not map an output buffer."), (NULL));
    return GST_FLOW_ERROR;
  }
  if (self->prefetch && page == self->prefetch_page) {
    guint32 r;
    gsize row = (gsize) self->frame_layout.width * self->frame_layout.bpp;
    for (r = 0; r < self->frame_layout.height; r++)
      memcpy (frame.data + r * frame.stride,
          self->prefetch + r * self->frame_layout.stride, row);
  } else if (!read_page (self, &frame)) {
    gst_unet_frame_unmap (&frame);
    gst_buffer_unref (buf);
    return GST_FLOW_ERROR;
  }
  g_clear_pointer (&self->prefetch, g_free);
  if (self->merged_channels > 1 && !read_other_channels (self, &frame, k, range_len)) {
    gst_unet_frame_unmap (&frame);
    gst_buffer_unref (buf);
    return GST_FLOW_ERROR;
  }
  gst_unet_frame_unmap (&frame);

  GST_BUFFER_PTS (buf) = pts;
  GST_BUFFER_DTS (buf) = GST_CLOCK_TIME_NONE;
  GST_BUFFER_DURATION (buf) = frame_to_time (self, k + 1) - pts;
  GST_BUFFER_OFFSET (buf) = k;
  GST_BUFFER_OFFSET_END (buf) = k + 1;
  self->next_frame = k + 1;
  *outbuf = buf;
  return GST_FLOW_OK;
}
