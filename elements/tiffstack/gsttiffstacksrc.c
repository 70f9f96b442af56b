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

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gst/video/video.h>

#include "gsttiffstacksrc.h"
#include "gsttiffstackpool.h"
#include "tiffstack-common.h"

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

/* How one page is stored and how it maps to an output frame. */
typedef struct
{
  guint32 width, height;
  guint16 bps, spp, sample_format, planar, photometric, compression;
  gboolean tiled;
  guint32 tile_w, tile_h, rows_per_strip;
  GstUnetFormat format;
  gboolean flip_sign;           /* signed -> unsigned by adding 2^(bits-1) */
  gboolean f64;                 /* doubles narrowed to float */
  gboolean separate;            /* planar RGB: one plane per sample */
  guint64 chunk_bytes;          /* decoded bytes of one strip / tile */
  guint64 chunk_row_bytes;      /* bytes of one row of a strip / tile */
} PageLayout;

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
  TIFF *tif;
  GstTiffStackDiag diag;
  gchar *path;                  /* location as opened, for messages */
  guint64 file_size;
  /* The page index (index_lock: create() and queries from other threads). */
  GMutex index_lock;
  GArray *dir_offsets;          /* guint64 file offset of each page's IFD known */
  guint64 index_next;           /* IFD offset after the last known one, 0: end */
  gboolean index_done;          /* the chain has been followed to its end */
  gboolean index_sorted;        /* offsets so far strictly increasing */
  GHashTable *index_seen;       /* offsets, once they are not increasing */
  guint n_pages;                /* reachable IFDs, once index_done */
  gchar *chain_error;           /* why the IFD chain ended early, or NULL */
  gboolean error_at_end;        /* the range runs into the broken chain */
  gboolean range_known;         /* range_len is known (else G_MAXUINT) */
  gboolean open_range;          /* the range ends with the chain (index_all) */
  GstTiffStackMeta meta;
  gint sel_channel;             /* channel selected, -1 for every page */
  guint sel_c, sel_z, sel_t;    /* hyperstack dimensions used for selection */
  guint n_sel;                  /* frames after channel selection */
  guint merge_c;                /* channels per frame (merge-channels), else 1 */
  guint first, range_len;       /* selected range, in frames */
  gboolean do_loop;
  gint cfg_fps_n, cfg_fps_d;
  guint64 next_frame;           /* output frame counter, monotonic when looping */
  guint cur_dir;                /* directory libtiff holds, G_MAXUINT if none */
  PageLayout layout;            /* layout of cur_dir */
  GstUnetLayout vinfo;     /* caps we offer / negotiated */
  gboolean have_info;
  gboolean tags_sent;
  guint8 *scratch;
  gsize scratch_size;
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
static gboolean read_page (GstTiffStackSrc * self, GstUnetFrame * frame,
    guint64 page);

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
  self->cur_dir = G_MAXUINT;
  self->diag.owner = GST_OBJECT (self);
  g_mutex_init (&self->index_lock);
  gst_base_src_set_format (GST_BASE_SRC (self), GST_FORMAT_TIME);
}

static void
gst_tiff_stack_src_finalize (GObject * object)
{
  GstTiffStackSrc *self = GST_TIFF_STACK_SRC (object);

  g_free (self->location);
  g_mutex_clear (&self->index_lock);
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

/* Page holding selected frame @sel (z fastest, then t) of the chosen channel,
 * following the stack's dimension order (ImageJ: XYCZT). */
static guint64
sel_to_page (GstTiffStackSrc * self, guint64 sel)
{
  guint64 idx[3], size[3], page = 0, stride = 1;
  guint64 z, t;
  gint i;

  if (self->sel_channel < 0)
    return sel;
  z = sel % self->sel_z;
  t = sel / self->sel_z;
  for (i = 0; i < 3; i++) {
    switch (self->meta.dim_order[2 + i]) {
      case 'C':
        idx[i] = self->sel_channel;
        size[i] = self->sel_c;
        break;
      case 'Z':
        idx[i] = z;
        size[i] = self->sel_z;
        break;
      default:
        idx[i] = t;
        size[i] = self->sel_t;
        break;
    }
  }
  for (i = 0; i < 3; i++) {
    page += idx[i] * stride;
    stride *= size[i];
  }
  return page;
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
  const GstTiffStackMeta *m = &self->meta;
  gint i, last = -1;
  gboolean in_order = TRUE;

  if (self->sel_channel >= 0) {
    *c = MAX (self->merge_c, 1);
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
    gboolean done;
    guint n_pages;

    g_mutex_lock (&self->index_lock);
    done = self->index_done;
    n_pages = self->n_pages;
    g_mutex_unlock (&self->index_lock);
    *c = *t = 1;
    if (done)
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
          self->path, what), ("libtiff: %s",
          gst_tiff_stack_diag_message (&self->diag, "(no message)")));
}

/* Reads the tags of the current directory into @L; on refusal returns FALSE
 * with a sentence for the user in @why. */
static gboolean
page_layout (GstTiffStackSrc * self, PageLayout * L, gchar ** why)
{
  TIFF *tif = self->tif;
  guint64 scanline, raw_page, out_size;
  GstUnetLayout info = { 0, };
  guint16 v16;

  memset (L, 0, sizeof (*L));
  L->format = GST_UNET_FORMAT_UNKNOWN;
  if (!TIFFGetField (tif, TIFFTAG_IMAGEWIDTH, &L->width)
      || !TIFFGetField (tif, TIFFTAG_IMAGELENGTH, &L->height)
      || L->width == 0 || L->height == 0) {
    *why = g_strdup ("the page has no image size");
    return FALSE;
  }
  if (L->width > G_MAXINT / 4 || L->height > G_MAXINT / 4) {
    *why = g_strdup_printf ("absurd page size %u x %u", L->width, L->height);
    return FALSE;
  }
  TIFFGetFieldDefaulted (tif, TIFFTAG_BITSPERSAMPLE, &L->bps);
  TIFFGetFieldDefaulted (tif, TIFFTAG_SAMPLESPERPIXEL, &L->spp);
  TIFFGetFieldDefaulted (tif, TIFFTAG_SAMPLEFORMAT, &L->sample_format);
  TIFFGetFieldDefaulted (tif, TIFFTAG_PLANARCONFIG, &L->planar);
  TIFFGetFieldDefaulted (tif, TIFFTAG_COMPRESSION, &L->compression);
  if (TIFFGetField (tif, TIFFTAG_PHOTOMETRIC, &v16))
    L->photometric = v16;
  else
    L->photometric = L->spp >= 3 ? PHOTOMETRIC_RGB : PHOTOMETRIC_MINISBLACK;

  if (!TIFFIsCODECConfigured (L->compression)) {
    *why = g_strdup_printf ("compression scheme %u is not supported by this "
        "libtiff", L->compression);
    return FALSE;
  }
  if (L->photometric == PHOTOMETRIC_YCBCR) {
    if (L->compression != COMPRESSION_JPEG) {
      *why = g_strdup ("YCbCr pages are only supported JPEG-compressed");
      return FALSE;
    }
    /* libtiff's JPEG codec converts to RGB; sizes below then describe RGB. */
    TIFFSetField (tif, TIFFTAG_JPEGCOLORMODE, JPEGCOLORMODE_RGB);
    L->photometric = PHOTOMETRIC_RGB;
  }

  if (L->spp == 1) {
    if (L->photometric != PHOTOMETRIC_MINISBLACK
        && L->photometric != PHOTOMETRIC_MINISWHITE
        && L->photometric != PHOTOMETRIC_PALETTE) {
      *why = g_strdup_printf ("photometric interpretation %u is not supported "
          "for one sample per pixel", L->photometric);
      return FALSE;
    }
    switch (L->sample_format) {
      case SAMPLEFORMAT_IEEEFP:
        if (L->bps == 32)
          L->format = GST_UNET_FORMAT_GRAY32F;
        else if (L->bps == 64) {
          L->format = GST_UNET_FORMAT_GRAY32F;
          L->f64 = TRUE;
        }
        break;
      case SAMPLEFORMAT_INT:
        L->flip_sign = TRUE;
        /* fall through */
      case SAMPLEFORMAT_UINT:
      case SAMPLEFORMAT_VOID:
        if (L->bps == 8)
          L->format = GST_UNET_FORMAT_GRAY8;
        else if (L->bps == 16)
          L->format = GST_UNET_FORMAT_GRAY16_LE;
        else if (L->bps == 32 && !L->flip_sign)
          L->format = GST_UNET_FORMAT_GRAY32_LE;
        break;
      default:
        break;
    }
    if (L->format == GST_UNET_FORMAT_UNKNOWN) {
      *why = g_strdup_printf ("%u-bit %s samples are not supported (8/16-bit "
          "integer, 32-bit unsigned and 32/64-bit float are)", L->bps,
          L->sample_format == SAMPLEFORMAT_IEEEFP ? "float" :
          L->sample_format == SAMPLEFORMAT_INT ? "signed" :
          L->sample_format == SAMPLEFORMAT_UINT ? "unsigned" : "complex");
      return FALSE;
    }
  } else if (L->spp == 3 && L->photometric == PHOTOMETRIC_RGB && L->bps == 8
      && (L->sample_format == SAMPLEFORMAT_UINT
          || L->sample_format == SAMPLEFORMAT_VOID)) {
    L->format = GST_UNET_FORMAT_RGB;
    L->separate = L->planar == PLANARCONFIG_SEPARATE;
  } else {
    *why = g_strdup_printf ("%u samples of %u bits per pixel (photometric %u) "
        "are not supported: only gray (1 sample) and 8-bit RGB (3 samples)",
        L->spp, L->bps, L->photometric);
    return FALSE;
  }

  gst_tiff_stack_diag_clear (&self->diag);
  scanline = TIFFScanlineSize64 (tif);
  L->tiled = TIFFIsTiled (tif);
  if (L->tiled) {
    if (!TIFFGetField (tif, TIFFTAG_TILEWIDTH, &L->tile_w)
        || !TIFFGetField (tif, TIFFTAG_TILELENGTH, &L->tile_h)
        || L->tile_w == 0 || L->tile_h == 0) {
      *why = g_strdup ("the page is tiled but has no tile size");
      return FALSE;
    }
    L->chunk_bytes = TIFFTileSize64 (tif);
    L->chunk_row_bytes = TIFFTileRowSize64 (tif);
  } else {
    TIFFGetFieldDefaulted (tif, TIFFTAG_ROWSPERSTRIP, &L->rows_per_strip);
    L->rows_per_strip = CLAMP (L->rows_per_strip, 1, L->height);
    L->chunk_bytes = TIFFStripSize64 (tif);
    L->chunk_row_bytes = scanline;
  }
  if (scanline == 0 || L->chunk_bytes == 0 || L->chunk_row_bytes == 0) {
    *why = g_strdup_printf ("invalid strip or tile size (%s)",
        gst_tiff_stack_diag_message (&self->diag, "overflow"));
    return FALSE;
  }
  if (!g_uint64_checked_mul (&raw_page, scanline, L->height)
      || (L->separate && !g_uint64_checked_mul (&raw_page, raw_page, 3))) {
    *why = g_strdup_printf ("absurd page size %u x %u", L->width, L->height);
    return FALSE;
  }
  if (!gst_unet_layout_set (&info, L->format, L->width, L->height)) {
    *why = g_strdup_printf ("absurd page size %u x %u", L->width, L->height);
    return FALSE;
  }
  out_size = info.size;
  if (MAX (raw_page, out_size) > self->max_page_size
      || L->chunk_bytes > self->max_page_size) {
    *why = g_strdup_printf ("the page is %u x %u pixels (%" G_GUINT64_FORMAT
        " bytes), more than max-page-size (%" G_GUINT64_FORMAT " bytes); "
        "the file is damaged or max-page-size must be raised", L->width,
        L->height, MAX (raw_page, out_size), self->max_page_size);
    return FALSE;
  }
  if (L->compression == COMPRESSION_NONE && raw_page > self->file_size) {
    *why = g_strdup_printf ("the page needs %" G_GUINT64_FORMAT " bytes but "
        "the file has only %" G_GUINT64_FORMAT " (truncated or damaged)",
        raw_page, self->file_size);
    return FALSE;
  }
  return TRUE;
}

static gboolean
layout_info (GstTiffStackSrc * self, const PageLayout * L,
    GstUnetLayout * info)
{
  memset (info, 0, sizeof (*info));
  info->fps_n = self->cfg_fps_n;
  info->fps_d = self->cfg_fps_d;
  /* Pixel aspect ratio = pixel width / pixel height. */
  if (self->meta.size_x_um > 0.0 && self->meta.size_y_um > 0.0
      && self->meta.size_x_um != self->meta.size_y_um) {
    gint n, d;
    gst_util_double_to_fraction (self->meta.size_x_um / self->meta.size_y_um,
        &n, &d);
    if (n > 0 && d > 0) {
      info->par_n = n;
      info->par_d = d;
    }
  }
  return gst_unet_layout_set_planes (info, L->format, MAX (self->merge_c, 1),
      L->width, L->height);
}

/* ---- the page index ------------------------------------------------------ */

static gboolean
pread_all (int fd, guint8 * buf, gsize size, guint64 off)
{
  while (size > 0) {
    ssize_t n = pread (fd, buf, size, off);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      return FALSE;
    buf += n;
    size -= n;
    off += n;
  }
  return TRUE;
}

static guint64
get_uint (const guint8 * p, guint size, gboolean swap)
{
  guint16 v16;
  guint32 v32;
  guint64 v64;

  switch (size) {
    case 2:
      memcpy (&v16, p, 2);
      return swap ? GUINT16_SWAP_LE_BE (v16) : v16;
    case 4:
      memcpy (&v32, p, 4);
      return swap ? GUINT32_SWAP_LE_BE (v32) : v32;
    default:
      memcpy (&v64, p, 8);
      return swap ? GUINT64_SWAP_LE_BE (v64) : v64;
  }
}

/* Follows the main IFD chain by one page (two small preads: entry count and
 * next pointer), from self->index_next. At the end of the chain, a loop, or
 * an IFD outside the file, marks the index done (with chain_error for the
 * last two). Loops cost nothing while the offsets increase (what writers
 * produce); a set of the offsets seen is built only once they do not.
 * Call with index_lock held. */
static void
index_step (GstTiffStackSrc * self)
{
  TIFF *tif = self->tif;
  int fd = TIFFFileno (tif);
  gboolean big = TIFFIsBigTIFF (tif), swap = TIFFIsByteSwapped (tif);
  guint csize = big ? 8 : 2, esize = big ? 20 : 12, osize = big ? 8 : 4;
  guint64 off = self->index_next, n, next_pos, page = self->dir_offsets->len;
  guint8 buf[8];
  const gchar *why = NULL;

  if (off == 0) {
    self->index_done = TRUE;
    return;
  }
  if (self->index_sorted && page > 0
      && off <= g_array_index (self->dir_offsets, guint64, page - 1)) {
    self->index_sorted = FALSE;
    self->index_seen = g_hash_table_new_full (g_int64_hash, g_int64_equal,
        g_free, NULL);
    for (guint i = 0; i < page; i++)
      g_hash_table_add (self->index_seen, g_memdup2 (&g_array_index
              (self->dir_offsets, guint64, i), sizeof (guint64)));
  }
  if (!self->index_sorted && g_hash_table_contains (self->index_seen, &off))
    why = "IFD loop";
  else if (off >= self->file_size || self->file_size - off < csize
      || !pread_all (fd, buf, csize, off))
    why = "directory offset outside the file";
  else if ((n = get_uint (buf, csize, swap)) == 0
      || n > (self->file_size - off) / esize)
    why = "unreadable directory";
  else if ((next_pos = off + csize + n * esize) > self->file_size
      || self->file_size - next_pos < osize
      || !pread_all (fd, buf, osize, next_pos))
    why = "directory runs past the end of the file";
  if (why) {
    self->index_done = TRUE;
    self->chain_error = g_strdup_printf ("the chain of pages breaks after "
        "page %" G_GUINT64_FORMAT " (%s)", page - 1, why);
    GST_WARNING_OBJECT (self, "%s", self->chain_error);
    return;
  }
  if (!self->index_sorted)
    g_hash_table_add (self->index_seen, g_memdup2 (&off, sizeof off));
  g_array_append_val (self->dir_offsets, off);
  self->index_next = get_uint (buf, osize, swap);
}

/* TRUE when @page exists (indexing up to it). Call with index_lock held. */
static gboolean
index_to (GstTiffStackSrc * self, guint64 page)
{
  while (!self->index_done && self->dir_offsets->len <= page
      && self->dir_offsets->len < G_MAXUINT - 1)
    index_step (self);
  return page < self->dir_offsets->len;
}

/* Follows the chain to its end and fixes what depends on the page count.
 * Call with index_lock held. */
static void
index_all (GstTiffStackSrc * self)
{
  index_to (self, G_MAXUINT - 1);
  self->index_done = TRUE;
  self->n_pages = self->dir_offsets->len;
  if (self->range_known || !self->open_range)
    return;
  /* Only a range without stop-index and without channel selection is left
   * open (see start()): it runs to the last page. */
  self->n_sel = self->n_pages;
  self->range_len = self->n_sel > self->first ? self->n_sel - self->first : 0;
  self->error_at_end = self->chain_error != NULL;
  self->range_known = TRUE;
}

/* The range length, indexing every page if @complete or it is unknown. */
static guint
range_len_locked (GstTiffStackSrc * self, gboolean complete)
{
  guint len;

  g_mutex_lock (&self->index_lock);
  if (complete && !self->range_known)
    index_all (self);
  len = self->range_len;
  g_mutex_unlock (&self->index_lock);
  return len;
}

/* Makes @page libtiff's current directory and reads its layout. */
static gboolean
goto_page (GstTiffStackSrc * self, guint64 page)
{
  gchar *why = NULL;
  gboolean known;
  guint64 offset;
  int ok;

  if (page == self->cur_dir)
    return TRUE;
  gst_tiff_stack_diag_clear (&self->diag);
  g_mutex_lock (&self->index_lock);
  known = index_to (self, page);
  offset = known ? g_array_index (self->dir_offsets, guint64, page) : 0;
  g_mutex_unlock (&self->index_lock);
  if (!known) {
    post_page_error (self, page, self->chain_error ? self->chain_error :
        "the file has fewer pages");
    return FALSE;
  }
  /* Next page: follow the chain. Any other: jump to its IFD by offset
   * (libtiff 4.5's TIFFSetDirectory walks the chain from the start, which
   * made channel selection quadratic in the number of pages). */
  if (self->cur_dir != G_MAXUINT && page == (guint64) self->cur_dir + 1)
    ok = TIFFReadDirectory (self->tif);
  else
    ok = TIFFSetSubDirectory (self->tif, offset);
  if (!ok) {
    self->cur_dir = G_MAXUINT;
    post_page_error (self, page, "its directory (IFD) is unreadable");
    return FALSE;
  }
  self->cur_dir = page;
  if (!page_layout (self, &self->layout, &why)) {
    self->cur_dir = G_MAXUINT;
    post_page_error (self, page, why);
    g_free (why);
    return FALSE;
  }
  return TRUE;
}

/* ---- start / stop -------------------------------------------------------- */

static gboolean
gst_tiff_stack_src_stop (GstBaseSrc * bsrc)
{
  GstTiffStackSrc *self = GST_TIFF_STACK_SRC (bsrc);

  if (self->tif) {
    TIFFClose (self->tif);
    self->tif = NULL;
  }
  gst_tiff_stack_diag_clear (&self->diag);
  gst_tiff_stack_meta_clear (&self->meta);
  g_clear_pointer (&self->path, g_free);
  g_clear_pointer (&self->chain_error, g_free);
  g_clear_pointer (&self->scratch, g_free);
  g_clear_pointer (&self->prefetch, g_free);
  g_mutex_lock (&self->index_lock);
  g_clear_pointer (&self->dir_offsets, g_array_unref);
  g_clear_pointer (&self->index_seen, g_hash_table_unref);
  self->index_next = 0;
  self->index_done = FALSE;
  self->index_sorted = TRUE;
  self->range_known = FALSE;
  self->open_range = FALSE;
  self->n_pages = 0;
  g_mutex_unlock (&self->index_lock);
  self->scratch_size = 0;
  self->cur_dir = G_MAXUINT;
  self->have_info = FALSE;
  self->tags_sent = FALSE;
  self->next_frame = 0;
  self->n_pages = 0;
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
  caps = gst_unet_layout_to_caps (&self->vinfo);
  peer_caps = gst_pad_peer_query_caps (pad, caps);
  ok = !gst_caps_is_empty (peer_caps);
  gst_caps_unref (peer_caps);
  if (!ok) {
    desc = gst_caps_to_string (caps);
    GST_ELEMENT_ERROR (self, CORE, NEGOTIATION,
        ("\"%s\" holds %ux%u %s frames and downstream does not accept that "
            "format or size.", self->path, self->layout.width,
            self->layout.height,
            gst_unet_format_name (self->layout.format)),
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
  TIFFOpenOptions *opts;
  struct stat st;
  gint start_index, stop_index, channel;
  gboolean merge;
  guint64 max_page_size, last, sel;
  gchar *why = NULL;
  int fd;

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

  /* O_NONBLOCK: opening a FIFO must not wait for a writer (it is refused as
   * not a regular file below); reads of a regular file ignore the flag. */
  fd = open (self->path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) {
    if (errno == ENOENT)
      GST_ELEMENT_ERROR (self, RESOURCE, NOT_FOUND,
          ("File \"%s\" does not exist.", self->path), (NULL));
    else
      GST_ELEMENT_ERROR (self, RESOURCE, OPEN_READ,
          ("Could not open file \"%s\" for reading: %s.", self->path,
              g_strerror (errno)), (NULL));
    goto fail;
  }
  if (fstat (fd, &st) < 0 || !S_ISREG (st.st_mode)) {
    close (fd);
    GST_ELEMENT_ERROR (self, RESOURCE, OPEN_READ,
        ("\"%s\" is not a regular file.", self->path), (NULL));
    goto fail;
  }
  self->file_size = st.st_size;
  /* Pages are read front to back: let the kernel read ahead. */
  posix_fadvise (fd, 0, 0, POSIX_FADV_SEQUENTIAL);

  opts = gst_tiff_stack_open_options (&self->diag, max_page_size);
  /* "m": no memory mapping, so resident memory stays one page whatever the
   * file size (mapped pages would count as resident). */
  self->tif = TIFFFdOpenExt (fd, self->path, "rm", opts);
  TIFFOpenOptionsFree (opts);
  if (self->tif == NULL) {
    close (fd);
    GST_ELEMENT_ERROR (self, STREAM, WRONG_TYPE,
        ("\"%s\" is not a TIFF file or its first page is unreadable.",
            self->path), ("libtiff: %s",
            gst_tiff_stack_diag_message (&self->diag, "(no message)")));
    goto fail;
  }

  /* The page index starts with page 0, which libtiff has just read; the rest
   * of the chain is followed as far as needed (index_to). */
  g_mutex_lock (&self->index_lock);
  self->dir_offsets = g_array_new (FALSE, FALSE, sizeof (guint64));
  self->index_sorted = TRUE;
  self->index_done = FALSE;
  self->range_known = self->open_range = FALSE;
  self->index_next = TIFFCurrentDirOffset (self->tif);
  if (!index_to (self, 0)) {
    g_mutex_unlock (&self->index_lock);
    GST_ELEMENT_ERROR (self, STREAM, DECODE,
        ("\"%s\" has no readable page.", self->path), ("%s",
            self->chain_error ? self->chain_error : "(no IFD)"));
    goto fail;
  }
  self->cur_dir = 0;
  gst_tiff_stack_meta_read (&self->meta, self->tif);
  if (!page_layout (self, &self->layout, &why)) {
    g_mutex_unlock (&self->index_lock);
    self->cur_dir = G_MAXUINT;
    post_page_error (self, 0, why);
    g_free (why);
    goto fail;
  }

  /* Channel selection (hyperstacks): every page is indexed. */
  self->sel_channel = -1;
  if (channel >= 0) {
    guint c = MAX (self->meta.channels, 1);
    if ((guint) channel >= c) {
      g_mutex_unlock (&self->index_lock);
      GST_ELEMENT_ERROR (self, RESOURCE, SETTINGS,
          ("channel=%d but \"%s\" has %u channel%s.", channel, self->path, c,
              c == 1 ? "" : "s"), (NULL));
      goto fail;
    }
    if (c > 1) {
      self->sel_channel = channel;
      self->sel_c = c;
      self->sel_z = MAX (self->meta.slices, 1);
      self->sel_t = MAX (self->meta.frames, 1);
    }
  }
  /* merge-channels: frames over z and t as for channel 0, each read with the
   * pages of every channel. */
  self->merge_c = 1;
  if (merge) {
    guint c = MAX (self->meta.channels, 1);
    if (channel >= 0) {
      g_mutex_unlock (&self->index_lock);
      GST_ELEMENT_ERROR (self, RESOURCE, SETTINGS,
          ("channel=%d and merge-channels=true exclude each other.", channel),
          (NULL));
      goto fail;
    }
    if (c > GST_UNET_MAX_CHANNELS) {
      g_mutex_unlock (&self->index_lock);
      GST_ELEMENT_ERROR (self, RESOURCE, SETTINGS,
          ("\"%s\" has %u channels; merge-channels takes at most %d (select "
              "one with channel=N).", self->path, c, GST_UNET_MAX_CHANNELS),
          (NULL));
      goto fail;
    }
    if (c > 1) {
      self->sel_channel = 0;
      self->sel_c = c;
      self->sel_z = MAX (self->meta.slices, 1);
      self->sel_t = MAX (self->meta.frames, 1);
      self->merge_c = c;
    }
  }
  if (self->sel_channel >= 0) {
    /* Frames whose page exists (a truncated hyperstack ends early). */
    guint64 total = (guint64) self->sel_z * self->sel_t;
    index_all (self);
    for (sel = 0; sel < total && sel_to_page (self, sel) < self->n_pages;)
      sel++;
    self->n_sel = sel;
    if (self->n_sel == 0) {
      g_mutex_unlock (&self->index_lock);
      GST_ELEMENT_ERROR (self, STREAM, DECODE,
          ("\"%s\" has no page for channel %d.", self->path, channel), (NULL));
      goto fail;
    }
  } else {
    self->n_sel = G_MAXUINT;    /* not known yet */
  }

  if (self->sel_channel < 0 && !index_to (self, start_index))
    index_all (self);
  if (self->index_done && self->sel_channel < 0)
    self->n_sel = self->n_pages;
  if ((guint) start_index >= self->n_sel) {
    g_mutex_unlock (&self->index_lock);
    GST_ELEMENT_ERROR (self, RESOURCE, SETTINGS,
        ("start-index=%d is past the last frame of \"%s\" (%u frames).",
            start_index, self->path, self->n_sel), (NULL));
    goto fail;
  }
  if (stop_index >= 0 && stop_index < start_index) {
    g_mutex_unlock (&self->index_lock);
    GST_ELEMENT_ERROR (self, RESOURCE, SETTINGS,
        ("stop-index=%d is before start-index=%d.", stop_index, start_index),
        (NULL));
    goto fail;
  }
  self->first = start_index;
  if (stop_index >= 0 && self->sel_channel < 0 && !index_to (self, stop_index))
    index_all (self);
  if (self->index_done && self->sel_channel < 0)
    self->n_sel = self->n_pages;
  if (stop_index >= 0 || self->index_done) {
    last = self->n_sel - 1;
    if (stop_index >= 0 && (guint64) stop_index < last)
      last = stop_index;
    self->range_len = last - start_index + 1;
    self->error_at_end = self->chain_error != NULL
        && (stop_index < 0 || (guint64) stop_index >= self->n_sel);
    self->range_known = TRUE;
  } else {
    /* Up to the end of the chain, found when it is reached (index_all). */
    self->range_len = G_MAXUINT;
    self->error_at_end = FALSE;
    self->open_range = TRUE;
  }
  g_mutex_unlock (&self->index_lock);
  self->next_frame = 0;
  self->tags_sent = FALSE;

  /* Caps of the first frame, so negotiation happens before create(). */
  if (!goto_page (self, sel_to_page (self, self->first)))
    goto fail;
  if (!layout_info (self, &self->layout, &self->vinfo)) {
    post_page_error (self, self->cur_dir, "unsupported page size");
    goto fail;
  }
  if (!downstream_accepts_first_page (self))
    goto fail;
  /* Decode the first frame now: a damaged first page then fails the state
   * change itself, which every application handles, instead of racing the
   * application's main loop from the streaming thread (gst-launch-1.0 1.22
   * can miss an error posted before its main loop runs). The frame is kept
   * and becomes the first buffer. */
  self->prefetch = g_try_malloc (self->vinfo.size);
  if (self->prefetch == NULL) {
    post_page_error (self, self->cur_dir, "out of memory");
    goto fail;
  }
  {
    GstUnetFrame frame = { NULL, };
    frame.data = self->prefetch;
    frame.stride = self->vinfo.stride;
    if (!read_page (self, &frame, self->cur_dir))
      goto fail;
  }
  self->prefetch_page = self->cur_dir;
  self->have_info = TRUE;
  GST_INFO_OBJECT (self, "%s: %u pages indexed, %u frames selected from %u, "
      "%s, first page %ux%u", self->path, self->dir_offsets->len,
      self->range_len,
      self->first, self->meta.is_imagej ? "ImageJ" : self->meta.is_ome ?
      "OME" : "plain", self->layout.width, self->layout.height);
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
    caps = gst_unet_layout_to_caps (&self->vinfo);
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

    g_mutex_lock (&self->index_lock);
    if (!self->range_known && !index_to (self, (guint64) self->first + frame))
      index_all (self);
    len = self->range_len;
    g_mutex_unlock (&self->index_lock);
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

/* ---- reading pixels ------------------------------------------------------ */

/* Converts @n stored pixels (or samples of @plane for planar RGB) to the
 * output format. */
static void
convert_run (const PageLayout * L, const guint8 * src, guint8 * dst, gsize n,
    guint plane)
{
  gsize i;

  if (L->separate) {
    for (i = 0; i < n; i++)
      dst[i * 3 + plane] = src[i];
  } else if (L->f64) {
    for (i = 0; i < n; i++) {
      gdouble d;
      gfloat f;
      memcpy (&d, src + i * 8, 8);
      f = (gfloat) d;
      memcpy (dst + i * 4, &f, 4);
    }
  } else if (L->flip_sign && L->bps == 8) {
    for (i = 0; i < n; i++)
      dst[i] = src[i] ^ 0x80;
  } else if (L->flip_sign) {
    /* libtiff delivers host-order int16; adding 32768 flips the sign bit. */
    for (i = 0; i < n; i++) {
      guint16 v;
      memcpy (&v, src + i * 2, 2);
      v ^= 0x8000;
      memcpy (dst + i * 2, &v, 2);
    }
  } else {
    memcpy (dst, src, n * (L->bps / 8) * L->spp);
  }
}

static gboolean
ensure_scratch (GstTiffStackSrc * self, guint64 size)
{
  if (self->scratch_size >= size)
    return TRUE;
  g_free (self->scratch);
  self->scratch = g_try_malloc (size);
  self->scratch_size = self->scratch ? size : 0;
  return self->scratch != NULL;
}

/* Fast path for raw pages in native byte order whose strips lie back to
 * back in the file (what most writers produce): one pread of the whole page
 * straight into the frame instead of a seek and a read per strip. Returns
 * FALSE, having read nothing, whenever the layout does not allow it; libtiff
 * then reads the page the ordinary way (and reports any damage). */
static gboolean
read_contiguous (GstTiffStackSrc * self, guint8 * dst)
{
  const PageLayout *L = &self->layout;
  TIFF *tif = self->tif;
  guint32 nstrips = (L->height + L->rows_per_strip - 1) / L->rows_per_strip;
  guint64 strip_bytes = (guint64) L->rows_per_strip * L->chunk_row_bytes;
  guint64 total = (guint64) L->height * L->chunk_row_bytes, off0, done = 0;
  guint16 fill = FILLORDER_MSB2LSB;
  guint32 s;
  int fd = TIFFFileno (tif);

  TIFFGetFieldDefaulted (tif, TIFFTAG_FILLORDER, &fill);
  if (L->compression != COMPRESSION_NONE || TIFFIsByteSwapped (tif)
      || fill != FILLORDER_MSB2LSB || fd < 0
      || TIFFNumberOfStrips (tif) != nstrips)
    return FALSE;
  off0 = TIFFGetStrileOffset (tif, 0);
  for (s = 0; s < nstrips; s++) {
    guint64 rows = MIN (L->rows_per_strip, L->height - s * L->rows_per_strip);
    if (TIFFGetStrileOffset (tif, s) != off0 + s * strip_bytes
        || TIFFGetStrileByteCount (tif, s) < rows * L->chunk_row_bytes)
      return FALSE;
  }
  if (off0 == 0 || off0 > self->file_size || total > self->file_size - off0)
    return FALSE;
  while (done < total) {
    ssize_t n = pread (fd, dst + done, total - done, off0 + done);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      return FALSE;
    done += n;
  }
  return TRUE;
}

static gboolean
read_page (GstTiffStackSrc * self, GstUnetFrame * frame, guint64 page)
{
  const PageLayout *L = &self->layout;
  TIFF *tif = self->tif;
  guint8 *dst = frame->data;
  gsize stride = frame->stride;
  gsize pstride = self->vinfo.bpp;
  guint nplanes = L->separate ? 3 : 1, p;
  gboolean direct = !L->tiled && !L->separate && !L->flip_sign && !L->f64
      && stride == L->chunk_row_bytes;
  gchar *why;

  gst_tiff_stack_diag_clear (&self->diag);
  if (direct && read_contiguous (self, dst))
    return TRUE;
  if (!direct && !ensure_scratch (self, L->chunk_bytes)) {
    why = g_strdup_printf ("cannot allocate %" G_GUINT64_FORMAT " bytes",
        L->chunk_bytes);
    goto failed;
  }

  if (!L->tiled) {
    guint32 per_plane = (L->height + L->rows_per_strip - 1) / L->rows_per_strip;
    guint32 s, r;

    if ((guint64) TIFFNumberOfStrips (tif) < (guint64) per_plane * nplanes) {
      why = g_strdup ("the page has fewer strips than its size needs");
      goto failed;
    }
    for (p = 0; p < nplanes; p++) {
      for (s = 0; s < per_plane; s++) {
        guint32 row0 = s * L->rows_per_strip;
        guint32 rows = MIN (L->rows_per_strip, L->height - row0);
        tmsize_t want = (tmsize_t) (rows * L->chunk_row_bytes);
        guint8 *out = direct ? dst + row0 * stride : self->scratch;

        if (TIFFReadEncodedStrip (tif, p * per_plane + s, out, want) != want) {
          why = g_strdup_printf ("strip %u is damaged or truncated",
              p * per_plane + s);
          goto failed;
        }
        if (direct)
          continue;
        for (r = 0; r < rows; r++)
          convert_run (L, self->scratch + r * L->chunk_row_bytes,
              dst + (row0 + r) * stride, L->width, p);
      }
    }
  } else {
    guint32 x, y, r;

    for (p = 0; p < nplanes; p++) {
      for (y = 0; y < L->height; y += L->tile_h) {
        for (x = 0; x < L->width; x += L->tile_w) {
          guint32 tile = TIFFComputeTile (tif, x, y, 0, p);
          guint32 cols = MIN (L->tile_w, L->width - x);
          guint32 rows = MIN (L->tile_h, L->height - y);

          if (TIFFReadEncodedTile (tif, tile, self->scratch,
                  (tmsize_t) L->chunk_bytes) < 0) {
            why = g_strdup_printf ("tile %u is damaged or truncated", tile);
            goto failed;
          }
          for (r = 0; r < rows; r++)
            convert_run (L, self->scratch + r * L->chunk_row_bytes,
                dst + (y + r) * stride + x * pstride, cols, p);
        }
      }
    }
  }
  return TRUE;

failed:
  post_page_error (self, page, why);
  g_free (why);
  return FALSE;
}

/* ---- streaming ----------------------------------------------------------- */

/* merge-channels: planes 1.. of frame @k from the pages of channels 1.. (plane
 * 0, channel 0, is read by the caller); every page must match channel 0's.
 * @range_len: the range's length as create() read it under index_lock. */
static gboolean
read_other_channels (GstTiffStackSrc * self, GstUnetFrame * frame, guint64 k,
    guint range_len)
{
  PageLayout first = self->layout;
  guint c;
  gboolean ok = TRUE;

  for (c = 1; ok && c < self->merge_c; c++) {
    GstUnetFrame plane = *frame;
    guint64 page;

    self->sel_channel = c;
    page = sel_to_page (self, self->first + k % range_len);
    self->sel_channel = 0;
    ok = goto_page (self, page);
    if (ok && (self->layout.width != first.width
            || self->layout.height != first.height
            || self->layout.format != first.format)) {
      post_page_error (self, page, "merge-channels needs every channel's page "
          "to have the size and format of channel 0's");
      ok = FALSE;
    }
    plane.data = frame->data + (gsize) c * frame->stride * self->vinfo.height;
    ok = ok && read_page (self, &plane, page);
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

  /* An open range ends where the chain does: index up to this frame. */
  g_mutex_lock (&self->index_lock);
  if (!self->range_known && !index_to (self, (guint64) self->first + k))
    index_all (self);
  range_len = self->range_len;
  g_mutex_unlock (&self->index_lock);
  if (range_len == 0) {
    post_page_error (self, self->first, self->chain_error ?
        self->chain_error : "the file has fewer pages");
    return GST_FLOW_ERROR;
  }

  if (!self->do_loop && k >= range_len) {
    if (self->error_at_end) {
      post_page_error (self, self->n_pages, self->chain_error);
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
    post_page_error (self, self->n_pages, self->chain_error);
    return GST_FLOW_ERROR;
  }
  page = sel_to_page (self, self->first + k % range_len);
  if (!goto_page (self, page))
    return GST_FLOW_ERROR;

  if (!layout_info (self, &self->layout, &info)) {
    post_page_error (self, page, "unsupported page size");
    return GST_FLOW_ERROR;
  }
  if (!gst_unet_layout_equal (&info, &self->vinfo)) {
    GST_INFO_OBJECT (self, "page %" G_GUINT64_FORMAT " is %ux%u %s: "
        "renegotiating", page, self->layout.width, self->layout.height,
        gst_unet_format_name (self->layout.format));
    GST_OBJECT_LOCK (self);
    self->vinfo = info;
    GST_OBJECT_UNLOCK (self);
    if (!gst_base_src_negotiate (bsrc)) {
      GST_ELEMENT_ERROR (self, CORE, NEGOTIATION,
          ("Page %" G_GUINT64_FORMAT " of \"%s\" is %ux%u %s and downstream "
              "does not accept that.", page, self->path, self->layout.width,
              self->layout.height,
              gst_unet_format_name (self->layout.format)), (NULL));
      return GST_FLOW_NOT_NEGOTIATED;
    }
  }

  if (!self->tags_sent) {
    GstTagList *tags = gst_tiff_stack_meta_to_tags (&self->meta);
    guint c, z, t;

    stream_axes (self, &c, &z, &t);
    gst_tag_list_add (tags, GST_TAG_MERGE_REPLACE, GST_TIFF_STACK_TAG_CHANNELS,
        c, GST_TIFF_STACK_TAG_FRAMES, t, NULL);
    if (z > 0)
      gst_tag_list_add (tags, GST_TAG_MERGE_REPLACE,
          GST_TIFF_STACK_TAG_SLICES, z, NULL);
    else
      gst_tag_list_remove_tag (tags, GST_TIFF_STACK_TAG_SLICES);
    if (self->layout.flip_sign)
      gst_tag_list_add (tags, GST_TAG_MERGE_REPLACE,
          GST_TIFF_STACK_TAG_VALUE_OFFSET,
          self->layout.bps == 8 ? -128.0 : -32768.0, NULL);
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
      self->vinfo.size, &buf);
  if (ret == GST_FLOW_ERROR) {
    gchar *why = g_strdup_printf ("cannot allocate a frame of %" G_GSIZE_FORMAT
        " bytes (out of memory)", self->vinfo.size);
    post_page_error (self, page, why);
    g_free (why);
  }
  if (ret != GST_FLOW_OK)
    return ret;
  if (!gst_unet_frame_map (&frame, &self->vinfo, buf, GST_MAP_WRITE)) {
    gst_buffer_unref (buf);
    GST_ELEMENT_ERROR (self, RESOURCE, FAILED,
        ("Could not map an output buffer."), (NULL));
    return GST_FLOW_ERROR;
  }
  if (self->prefetch && page == self->prefetch_page) {
    guint32 r;
    gsize row = (gsize) self->vinfo.width * self->vinfo.bpp;
    for (r = 0; r < self->vinfo.height; r++)
      memcpy (frame.data + r * frame.stride,
          self->prefetch + r * self->vinfo.stride, row);
  } else if (!read_page (self, &frame, page)) {
    gst_unet_frame_unmap (&frame);
    gst_buffer_unref (buf);
    return GST_FLOW_ERROR;
  }
  g_clear_pointer (&self->prefetch, g_free);
  if (self->merge_c > 1 && !read_other_channels (self, &frame, k, range_len)) {
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
