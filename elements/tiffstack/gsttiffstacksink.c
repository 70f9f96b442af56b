/* gst-unet — tiffstacksink: frames to a multi-page (Big)TIFF, one page per frame
 * SPDX-License-Identifier: LGPL-2.1-or-later
 */
/**
 * SECTION:element-tiffstacksink
 * @title: tiffstacksink
 *
 * Writes every frame (GRAY8, GRAY16_LE, GRAY32_LE, GRAY32F or RGB, any stride)
 * as one page
 * of a multi-page TIFF, with optional LZW, Deflate or ZSTD compression
 * (horizontal predictor for integer data with LZW and ZSTD; float data and
 * Deflate are compressed without predictor so that every reader, ImageJ 1.53t
 * included, decodes them; ImageJ 1.53t has no ZSTD decoder). Frames of different sizes or
 * formats become pages of different sizes.
 *
 * Nothing is lost when the pipeline dies: a page's pixel data, tag data and
 * directory (IFD) are appended to the file first; only then is the 4- or
 * 8-byte pointer that links it into the page chain written (libtiff's own
 * link write is held back by this element's I/O layer until the directory is
 * complete). Whenever the process is killed, the file is a valid TIFF holding
 * every page whose link was written. #GstTiffStackSink:fsync also makes each
 * page survive a power failure.
 *
 * BigTIFF (#GstTiffStackSink:bigtiff): classic TIFF cannot pass 4 GiB, and
 * plain ImageJ cannot open BigTIFF. In `auto` mode (the default) the element
 * writes classic TIFF, and when the next page could take the file past 4 GiB
 * (or #GstTiffStackSink:max-file-size) the stack continues in numbered files,
 * as Micro-Manager does: `run.tif`, `run_1.tif`, `run_2.tif`, … (`x.ome.tif`
 * → `x_1.ome.tif`), each a complete stack with its own ImageJ description; a
 * "tiffstacksink-file" element message (location, index, first-frame) is posted
 * for every file started after the first. Whether a page fits is decided from
 * a bound of its size (pixels, × 2 for LZW which may expand incompressible
 * data, plus its directory), so the length of the stream needs not be known
 * (live recordings). `always` writes one BigTIFF (Fiji reads it through
 * Bio-Formats); `never` writes one classic TIFF and fails cleanly with an
 * error when it would pass 4 GiB.
 *
 * Fiji/ImageJ: page 0 carries an ImageJ description
 * (`ImageJ=`, `images=`, `slices=`, `unit=micron`, `spacing=`, `loop=false`)
 * in a fixed-size slot that is rewritten in place after every page, so the
 * count is right at EOS and at most one page behind after a kill. The empty
 * version after `ImageJ=` tells ImageJ to read every page's directory rather
 * than assume contiguous pixel data. Pixel size comes from the upstream tags
 * "tiff-pixel-size-x/-y/-z" (micrometres, e.g. from tiffstacksrc) and is written
 * as XResolution/YResolution (pixels per micrometre, ResolutionUnit none, as
 * ImageJ does) and `spacing`. Other upstream descriptions are not copied.
 *
 * An unwritable location fails the state change with a RESOURCE OPEN_WRITE
 * error; a full disk gives RESOURCE NO_SPACE_LEFT.
 *
 * ## Example launch line
 * |[
 * gst-launch-1.0 videotestsrc num-buffers=100 ! video/x-raw,format=GRAY16_LE,width=512,height=512 ! tiffstacksink location=stack.tif compression=zstd
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

#include <glib/gstdio.h>

#include <gst/video/video.h>

#include "gsttiffstacksink.h"
#include "tiff-diag.h"
#include "tiffstack-tags.h"

GST_DEBUG_CATEGORY_STATIC (gst_tiff_stack_sink_debug);
#define GST_CAT_DEFAULT gst_tiff_stack_sink_debug

typedef enum
{
  COMPRESS_NONE,
  COMPRESS_LZW,
  COMPRESS_DEFLATE,
  COMPRESS_ZSTD,
} Compress;

typedef enum
{
  BIGTIFF_AUTO,
  BIGTIFF_ALWAYS,
  BIGTIFF_NEVER,
} BigTiffMode;

enum
{
  PROP_0,
  PROP_LOCATION,
  PROP_COMPRESSION,
  PROP_BIGTIFF,
  PROP_FSYNC,
  PROP_MAX_FILE_SIZE,
};

#define DEFAULT_COMPRESSION COMPRESS_NONE
#define DEFAULT_BIGTIFF BIGTIFF_AUTO
#define DEFAULT_FSYNC FALSE
#define DEFAULT_MAX_FILE_SIZE 0

/* Room for the ImageJ description; rewritten in place, padded with '\n'. */
#define DESC_BYTES 256
/* Strip size aimed at: large for raw data (few syscalls), moderate for
 * compressed data (readers decode strips in parallel). */
#define STRIP_TARGET_RAW (4u << 20)
#define STRIP_TARGET_COMPRESSED (256u << 10)
/* Classic TIFF offsets are 32-bit. */
#define CLASSIC_LIMIT G_GUINT64_CONSTANT (0xFFFFFFFF)

static GstStaticPadTemplate sink_template = GST_STATIC_PAD_TEMPLATE ("sink",
    GST_PAD_SINK, GST_PAD_ALWAYS, GST_STATIC_CAPS (GST_TIFF_STACK_CAPS));

/* libtiff client I/O on our own descriptor. While a directory is being written
 * ("deferring"), writes that land inside the already written part of the file
 * (libtiff linking the new IFD into the chain) are kept in memory and applied
 * once the directory is complete on disk. */
typedef struct
{
  guint64 offset;
  GBytes *data;
} Patch;

typedef struct
{
  int fd;
  guint64 pos, size, committed;
  gboolean deferring, sealed;
  GArray *patches;
  int err;                      /* errno of the first failed write */
  const gchar *desc;            /* description to look for, with its NUL */
  guint64 desc_off;             /* where it was written, G_MAXUINT64 if not */
  /* While a page's directory is written into the slot reserved for it in
   * front of its pixel data: [slot_lo, slot_hi). A write past slot_hi (and
   * outside the held-back links) fails instead of overwriting pixels. */
  gboolean in_slot;
  guint64 slot_lo, slot_hi;
  gboolean slot_overflow;
} WriterIo;

struct _GstTiffStackSink
{
  GstBaseSink parent;

  /* properties, under the object lock */
  gchar *location;
  Compress compression;
  BigTiffMode bigtiff;
  gboolean fsync;
  guint64 max_file_size;

  /* between start() and stop() */
  gchar *location_cfg;          /* the location; files 1.. are numbered */
  guint file_index;             /* 0 for the location itself */
  guint64 total_pages;          /* over all files */
  guint64 cfg_max_file_size;
  gchar *path;                  /* the file being written */
  Compress cfg_compression;
  BigTiffMode cfg_bigtiff;
  gboolean cfg_fsync;
  WriterIo io;
  TIFF *tif;
  gboolean is_bigtiff;
  gboolean failed;
  gboolean created;             /* the file did not exist before start() */
  gboolean replaced;            /* an existing file was truncated by us */
  TiffDiag diag;
  GstUnetLayout frame_layout;
  gboolean have_info;
  gdouble size_x_um, size_y_um, size_z_um;
  guint axis_c, axis_z, axis_t;  /* stream axes from tags, 0 = not given */
  gdouble frame_interval_s;     /* from the tag, 0 = not given */
  gboolean upstream_live;
  guint64 pages;
  gchar desc[DESC_BYTES];
  guint8 *strip;
  gsize strip_size;
};

#define gst_tiff_stack_sink_parent_class parent_class
G_DEFINE_TYPE (GstTiffStackSink, gst_tiff_stack_sink, GST_TYPE_BASE_SINK);
GST_ELEMENT_REGISTER_DEFINE_WITH_CODE (tiffstacksink, "tiffstacksink",
    GST_RANK_NONE, GST_TYPE_TIFF_STACK_SINK, gst_tiff_stack_register_tags ());

static GType
compression_get_type (void)
{
  static GType type = 0;
  static const GEnumValue values[] = {
    {COMPRESS_NONE, "No compression (fastest, ImageJ reads it natively)",
        "none"},
    {COMPRESS_LZW, "LZW with horizontal predictor", "lzw"},
    {COMPRESS_DEFLATE, "Deflate (zlib), no predictor (ImageJ reads it)",
        "deflate"},
    {COMPRESS_ZSTD, "Zstandard with horizontal predictor (not read by "
          "ImageJ 1.53t)", "zstd"},
    {0, NULL, NULL},
  };

  if (g_once_init_enter (&type)) {
    GType t = g_enum_register_static ("GstTiffStackSinkCompression", values);
    g_once_init_leave (&type, t);
  }
  return type;
}

static GType
bigtiff_get_type (void)
{
  static GType type = 0;
  static const GEnumValue values[] = {
    {BIGTIFF_AUTO, "Classic TIFF, continued in numbered files (NAME_1.tif, "
          "...) past 4 GiB", "auto"},
    {BIGTIFF_ALWAYS, "One BigTIFF file", "always"},
    {BIGTIFF_NEVER, "One classic TIFF file (error at 4 GiB)", "never"},
    {0, NULL, NULL},
  };

  if (g_once_init_enter (&type)) {
    GType t = g_enum_register_static ("GstTiffStackSinkBigTiff", values);
    g_once_init_leave (&type, t);
  }
  return type;
}

static void gst_tiff_stack_sink_set_property (GObject * object,
    guint prop_id, const GValue * value, GParamSpec * pspec);
static void gst_tiff_stack_sink_get_property (GObject * object,
    guint prop_id, GValue * value, GParamSpec * pspec);
static void gst_tiff_stack_sink_finalize (GObject * object);
static gboolean gst_tiff_stack_sink_start (GstBaseSink * bsink);
static gboolean gst_tiff_stack_sink_stop (GstBaseSink * bsink);
static gboolean gst_tiff_stack_sink_set_caps (GstBaseSink * bsink,
    GstCaps * caps);
static gboolean gst_tiff_stack_sink_event (GstBaseSink * bsink,
    GstEvent * event);
static GstFlowReturn gst_tiff_stack_sink_render (GstBaseSink * bsink,
    GstBuffer * buf);

static void
gst_tiff_stack_sink_class_init (GstTiffStackSinkClass * klass)
{
  GObjectClass *gobject_class = G_OBJECT_CLASS (klass);
  GstElementClass *element_class = GST_ELEMENT_CLASS (klass);
  GstBaseSinkClass *basesink_class = GST_BASE_SINK_CLASS (klass);

  GST_DEBUG_CATEGORY_INIT (gst_tiff_stack_sink_debug, "tiffstacksink", 0,
      "TIFF stack sink");
  gst_tiff_stack_register_tags ();

  gobject_class->set_property = gst_tiff_stack_sink_set_property;
  gobject_class->get_property = gst_tiff_stack_sink_get_property;
  gobject_class->finalize = gst_tiff_stack_sink_finalize;

  g_object_class_install_property (gobject_class, PROP_LOCATION,
      g_param_spec_string ("location", "Location",
          "TIFF file to write (replaced if it exists)", NULL,
          G_PARAM_READWRITE | G_PARAM_STATIC_STRINGS |
          GST_PARAM_MUTABLE_READY));
  g_object_class_install_property (gobject_class, PROP_COMPRESSION,
      g_param_spec_enum ("compression", "Compression",
          "Compression of every page", compression_get_type (),
          DEFAULT_COMPRESSION,
          G_PARAM_READWRITE | G_PARAM_STATIC_STRINGS |
          GST_PARAM_MUTABLE_READY));
  g_object_class_install_property (gobject_class, PROP_BIGTIFF,
      g_param_spec_enum ("bigtiff", "BigTIFF",
          "Write BigTIFF (64-bit offsets, files over 4 GiB): auto decides "
          "before the first page from upstream's duration (BigTIFF when "
          "unknown)", bigtiff_get_type (), DEFAULT_BIGTIFF,
          G_PARAM_READWRITE | G_PARAM_STATIC_STRINGS |
          GST_PARAM_MUTABLE_READY));
  g_object_class_install_property (gobject_class, PROP_MAX_FILE_SIZE,
      g_param_spec_uint64 ("max-file-size", "Maximum file size",
          "Continue the stack in a new numbered file (NAME_1.tif, ...) when "
          "the next page could make the current one larger than this many "
          "bytes (0: only at the 4 GiB limit of classic TIFF); a file holds at "
          "least one page", 0, G_MAXUINT64, DEFAULT_MAX_FILE_SIZE,
          G_PARAM_READWRITE | G_PARAM_STATIC_STRINGS |
          GST_PARAM_MUTABLE_READY));
  g_object_class_install_property (gobject_class, PROP_FSYNC,
      g_param_spec_boolean ("fsync", "fsync",
          "Flush every page to the disk (fdatasync) before taking the next: "
          "pages then survive a power failure, not only a crash", DEFAULT_FSYNC,
          G_PARAM_READWRITE | G_PARAM_STATIC_STRINGS |
          GST_PARAM_MUTABLE_READY));

  gst_element_class_add_static_pad_template (element_class, &sink_template);
  gst_element_class_set_static_metadata (element_class,
      "TIFF stack sink", "Sink/File/Video",
      "Writes video frames as the pages of a multi-page (Big)TIFF that "
      "ImageJ/Fiji opens as a stack", "gst-unet project");

  basesink_class->start = GST_DEBUG_FUNCPTR (gst_tiff_stack_sink_start);
  basesink_class->stop = GST_DEBUG_FUNCPTR (gst_tiff_stack_sink_stop);
  basesink_class->set_caps = GST_DEBUG_FUNCPTR (gst_tiff_stack_sink_set_caps);
  basesink_class->event = GST_DEBUG_FUNCPTR (gst_tiff_stack_sink_event);
  basesink_class->render = GST_DEBUG_FUNCPTR (gst_tiff_stack_sink_render);
}

static void
gst_tiff_stack_sink_init (GstTiffStackSink * self)
{
  self->compression = DEFAULT_COMPRESSION;
  self->bigtiff = DEFAULT_BIGTIFF;
  self->fsync = DEFAULT_FSYNC;
  self->io.fd = -1;
  /* A file writer: no clock synchronisation, like filesink. */
  gst_base_sink_set_sync (GST_BASE_SINK (self), FALSE);
}

static void
gst_tiff_stack_sink_finalize (GObject * object)
{
  GstTiffStackSink *self = GST_TIFF_STACK_SINK (object);

  g_free (self->location);
  G_OBJECT_CLASS (parent_class)->finalize (object);
}

static void
gst_tiff_stack_sink_set_property (GObject * object, guint prop_id,
    const GValue * value, GParamSpec * pspec)
{
  GstTiffStackSink *self = GST_TIFF_STACK_SINK (object);

  GST_OBJECT_LOCK (self);
  switch (prop_id) {
    case PROP_LOCATION:
      g_free (self->location);
      self->location = g_value_dup_string (value);
      break;
    case PROP_COMPRESSION:
      self->compression = g_value_get_enum (value);
      break;
    case PROP_BIGTIFF:
      self->bigtiff = g_value_get_enum (value);
      break;
    case PROP_FSYNC:
      self->fsync = g_value_get_boolean (value);
      break;
    case PROP_MAX_FILE_SIZE:
      self->max_file_size = g_value_get_uint64 (value);
      break;
    default:
      G_OBJECT_WARN_INVALID_PROPERTY_ID (object, prop_id, pspec);
      break;
  }
  GST_OBJECT_UNLOCK (self);
}

static void
gst_tiff_stack_sink_get_property (GObject * object, guint prop_id,
    GValue * value, GParamSpec * pspec)
{
  GstTiffStackSink *self = GST_TIFF_STACK_SINK (object);

  GST_OBJECT_LOCK (self);
  switch (prop_id) {
    case PROP_LOCATION:
      g_value_set_string (value, self->location);
      break;
    case PROP_COMPRESSION:
      g_value_set_enum (value, self->compression);
      break;
    case PROP_BIGTIFF:
      g_value_set_enum (value, self->bigtiff);
      break;
    case PROP_FSYNC:
      g_value_set_boolean (value, self->fsync);
      break;
    case PROP_MAX_FILE_SIZE:
      g_value_set_uint64 (value, self->max_file_size);
      break;
    default:
      G_OBJECT_WARN_INVALID_PROPERTY_ID (object, prop_id, pspec);
      break;
  }
  GST_OBJECT_UNLOCK (self);
}

/* ---- client I/O ---------------------------------------------------------- */

static gboolean
io_pwrite_all (WriterIo * io, const guint8 * buf, gsize size, guint64 off)
{
  while (size > 0) {
    ssize_t n = pwrite (io->fd, buf, size, off);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0) {
      if (io->err == 0)
        io->err = n < 0 ? errno : ENOSPC;
      return FALSE;
    }
    buf += n;
    size -= n;
    off += n;
  }
  return TRUE;
}

static tmsize_t
io_write (thandle_t h, void *buf, tmsize_t size)
{
  WriterIo *io = (WriterIo *) h;

  if (size < 0 || io->sealed)
    return -1;
  if (io->deferring && io->pos < io->committed) {
    Patch patch = { io->pos, g_bytes_new (buf, size) };
    g_array_append_val (io->patches, patch);
  } else if (io->in_slot && (io->pos < io->slot_lo
          || io->pos + (guint64) size > io->slot_hi)) {
    io->slot_overflow = TRUE;
    return -1;
  } else {
    if (io->desc && io->desc_off == G_MAXUINT64 && size == DESC_BYTES
        && memcmp (buf, io->desc, DESC_BYTES) == 0)
      io->desc_off = io->pos;
    if (!io_pwrite_all (io, buf, size, io->pos))
      return -1;
  }
  io->pos += size;
  io->size = MAX (io->size, io->pos);
  return size;
}

static tmsize_t
io_read (thandle_t h, void *buf, tmsize_t size)
{
  WriterIo *io = (WriterIo *) h;
  ssize_t n;
  guint i;

  if (size < 0)
    return -1;
  do {
    n = pread (io->fd, buf, size, io->pos);
  } while (n < 0 && errno == EINTR);
  if (n < 0)
    return -1;
  /* What libtiff wrote but we hold back must read as written. */
  for (i = 0; i < io->patches->len; i++) {
    Patch *p = &g_array_index (io->patches, Patch, i);
    gsize len;
    const guint8 *data = g_bytes_get_data (p->data, &len);
    guint64 lo = MAX (p->offset, io->pos);
    guint64 hi = MIN (p->offset + len, io->pos + (guint64) n);
    if (lo < hi)
      memcpy ((guint8 *) buf + (lo - io->pos), data + (lo - p->offset),
          hi - lo);
  }
  io->pos += n;
  return n;
}

static toff_t
io_seek (thandle_t h, toff_t off, int whence)
{
  WriterIo *io = (WriterIo *) h;

  switch (whence) {
    case SEEK_SET:
      io->pos = off;
      break;
    case SEEK_CUR:
      io->pos += off;
      break;
    case SEEK_END:
      io->pos = io->size + off;
      break;
    default:
      return (toff_t) - 1;
  }
  return io->pos;
}

static int
io_close (thandle_t h)
{
  return 0;
}

static toff_t
io_size (thandle_t h)
{
  return ((WriterIo *) h)->size;
}

static int
io_map (thandle_t h, void **base, toff_t * size)
{
  return 0;
}

static void
io_unmap (thandle_t h, void *base, toff_t size)
{
}

static void
patch_clear (gpointer p)
{
  g_bytes_unref (((Patch *) p)->data);
}

/* Writes the held-back link pointers: the page becomes part of the file. */
static gboolean
io_apply_patches (WriterIo * io)
{
  guint i;
  gboolean ok = TRUE;

  for (i = 0; ok && i < io->patches->len; i++) {
    Patch *p = &g_array_index (io->patches, Patch, i);
    gsize len;
    const guint8 *data = g_bytes_get_data (p->data, &len);
    ok = io_pwrite_all (io, data, len, p->offset);
  }
  g_array_set_size (io->patches, 0);
  return ok;
}

/* ---- errors --------------------------------------------------------------- */

static void
post_write_error (GstTiffStackSink * self, const gchar * what)
{
  const gchar *tiff_msg = tiff_diag_message (&self->diag,
      "(no message)");

  self->failed = TRUE;
  self->io.sealed = TRUE;
  if (self->io.err == ENOSPC || self->io.err == EDQUOT)
    GST_ELEMENT_ERROR (self, RESOURCE, NO_SPACE_LEFT,
        ("No space left on the device while writing \"%s\" (%" G_GUINT64_FORMAT
            " pages were complete).", self->path, self->total_pages),
        ("%s; libtiff: %s", what, tiff_msg));
  else if (self->io.err != 0)
    GST_ELEMENT_ERROR (self, RESOURCE, WRITE,
        ("Could not write to \"%s\": %s (%" G_GUINT64_FORMAT
            " pages were complete).", self->path, g_strerror (self->io.err),
            self->total_pages), ("%s; libtiff: %s", what, tiff_msg));
  else
    GST_ELEMENT_ERROR (self, RESOURCE, WRITE,
        ("Could not write page %" G_GUINT64_FORMAT " of \"%s\": %s.",
            self->total_pages, self->path, tiff_msg), ("%s", what));
}

/* ---- start / stop -------------------------------------------------------- */

/* Channels, slices and time points of the @images pages of the file, in
 * ImageJ's order (channels fastest, then z, then t). From the stream's axes
 * (tags, e.g. from tiffstacksrc) when they describe the pages, with the number
 * of time points (or of slices for a z-stack) following the pages actually
 * written (a recording still running, a page range); without axes a stream
 * with a frame rate, or from a live source, is a time-lapse (camera, video),
 * anything else a z-stack. */
static void
stack_axes (GstTiffStackSink * self, guint64 images, guint64 * c,
    guint64 * z, guint64 * t)
{
  gboolean have = self->axis_c || self->axis_z || self->axis_t;

  *c = MAX (self->axis_c, 1);
  *z = MAX (self->axis_z, 1);
  *t = MAX (self->axis_t, 1);
  if (have && *c * *z * *t == images)
    return;
  if (have && *t > 1 && images % (*c * *z) == 0) {
    *t = images / (*c * *z);
    return;
  }
  if (have && *t == 1 && images % *c == 0) {
    *z = images / *c;
    return;
  }
  *c = 1;
  if (!have && (self->frame_layout.fps_n > 0 || self->upstream_live)) {
    *z = 1;
    *t = images;
  } else {
    *z = images;
    *t = 1;
  }
}

static void
update_description (GstTiffStackSink * self, guint64 images)
{
  GString *s = g_string_new ("ImageJ=\n");
  gchar num[G_ASCII_DTOSTR_BUF_SIZE];
  guint64 c, z, t;
  gdouble finterval = self->frame_interval_s;

  stack_axes (self, images, &c, &z, &t);
  if (finterval <= 0.0 && self->frame_layout.fps_n > 0 && self->frame_layout.fps_d > 0
      && !(self->axis_c || self->axis_z || self->axis_t))
    finterval = (gdouble) self->frame_layout.fps_d / self->frame_layout.fps_n;
  g_string_append_printf (s, "images=%" G_GUINT64_FORMAT "\n", images);
  if (c > 1)
    g_string_append_printf (s, "channels=%" G_GUINT64_FORMAT "\n", c);
  if (z > 1)
    g_string_append_printf (s, "slices=%" G_GUINT64_FORMAT "\n", z);
  if (t > 1)
    g_string_append_printf (s, "frames=%" G_GUINT64_FORMAT "\n", t);
  if (c > 1 || t > 1)
    g_string_append (s, "hyperstack=true\n");
  if (c > 1)
    g_string_append (s, "mode=grayscale\n");
  if (self->size_x_um > 0.0)
    g_string_append (s, "unit=micron\n");
  if (self->size_z_um > 0.0)
    g_string_append_printf (s, "spacing=%s\n",
        g_ascii_formatd (num, sizeof (num), "%.10g", self->size_z_um));
  if (finterval > 0.0 && t > 1)
    g_string_append_printf (s, "finterval=%s\n",
        g_ascii_formatd (num, sizeof (num), "%.10g", finterval));
  g_string_append (s, "loop=false\n");
  /* The slot is fixed: pad with blank lines, which readers skip. At most
   * about 200 bytes are used (10 lines of at most 21 bytes). */
  memset (self->desc, '\n', DESC_BYTES - 1);
  memcpy (self->desc, s->str, MIN (s->len, DESC_BYTES - 1));
  self->desc[DESC_BYTES - 1] = '\0';
  g_string_free (s, TRUE);
}

/* Closes the file being written (every complete page is in it already). */
static void
close_file (GstTiffStackSink * self)
{
  if (self->tif) {
    /* Every complete page is already linked; nothing may be written now (a
     * half-set next directory would otherwise be flushed by TIFFClose). */
    self->io.sealed = TRUE;
    TIFFClose (self->tif);
    self->tif = NULL;
  }
  if (self->io.fd >= 0) {
    if (!self->failed && self->cfg_fsync)
      fdatasync (self->io.fd);
    close (self->io.fd);
    self->io.fd = -1;
    /* No page: no file. One we created, or emptied, holding no complete page
     * (upstream failed or sent nothing) is removed rather than left as a
     * 0-byte or header-only .tif; a file that was there before and that we
     * never touched keeps its content. */
    if (self->pages == 0 && (self->created || self->replaced)
        && self->path && g_unlink (self->path) == 0)
      GST_INFO_OBJECT (self, "no page written: removed \"%s\"", self->path);
  }
}

static gboolean
gst_tiff_stack_sink_stop (GstBaseSink * bsink)
{
  GstTiffStackSink *self = GST_TIFF_STACK_SINK (bsink);

  close_file (self);
  if (self->io.patches) {
    g_array_unref (self->io.patches);
    self->io.patches = NULL;
  }
  tiff_diag_clear (&self->diag);
  g_clear_pointer (&self->path, g_free);
  g_clear_pointer (&self->location_cfg, g_free);
  g_clear_pointer (&self->strip, g_free);
  self->strip_size = 0;
  self->have_info = FALSE;
  return TRUE;
}

static gboolean
gst_tiff_stack_sink_start (GstBaseSink * bsink)
{
  GstTiffStackSink *self = GST_TIFF_STACK_SINK (bsink);
  static const guint16 codecs[] = { COMPRESSION_NONE, COMPRESSION_LZW,
    COMPRESSION_ADOBE_DEFLATE, COMPRESSION_ZSTD
  };

  GST_OBJECT_LOCK (self);
  self->path = g_strdup (self->location);
  self->location_cfg = g_strdup (self->location);
  self->cfg_max_file_size = self->max_file_size;
  self->cfg_compression = self->compression;
  self->cfg_bigtiff = self->bigtiff;
  self->cfg_fsync = self->fsync;
  GST_OBJECT_UNLOCK (self);

  self->failed = FALSE;
  self->pages = 0;
  self->total_pages = 0;
  self->file_index = 0;
  self->size_x_um = self->size_y_um = self->size_z_um = 0.0;
  self->axis_c = self->axis_z = self->axis_t = 0;
  self->frame_interval_s = 0.0;
  self->upstream_live = FALSE;
  memset (&self->io, 0, sizeof (self->io));
  self->io.fd = -1;
  self->io.desc_off = G_MAXUINT64;

  if (self->path == NULL || self->path[0] == '\0') {
    GST_ELEMENT_ERROR (self, RESOURCE, NOT_FOUND,
        ("No file name specified for writing."), (NULL));
    goto fail;
  }
  if (!TIFFIsCODECConfigured (codecs[self->cfg_compression])) {
    GST_ELEMENT_ERROR (self, RESOURCE, SETTINGS,
        ("This libtiff cannot write the chosen compression."), (NULL));
    goto fail;
  }
  /* Open now, so an unwritable path fails the state change; the TIFF header
   * follows with the first frame, once BigTIFF or not is decided. An existing
   * file is only emptied then (open_tiff()), so a run that fails before its
   * first frame leaves it as it was. */
  self->created = self->replaced = FALSE;
  self->io.fd = open (self->path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
  if (self->io.fd >= 0)
    self->created = TRUE;
  else if (errno == EEXIST)
    self->io.fd = open (self->path, O_RDWR | O_CLOEXEC);
  if (self->io.fd < 0) {
    GST_ELEMENT_ERROR (self, RESOURCE, OPEN_WRITE,
        ("Could not open file \"%s\" for writing: %s.", self->path,
            g_strerror (errno)), (NULL));
    goto fail;
  }
  self->io.patches = g_array_new (FALSE, FALSE, sizeof (Patch));
  g_array_set_clear_func (self->io.patches, patch_clear);
  return TRUE;

fail:
  gst_tiff_stack_sink_stop (bsink);
  return FALSE;
}

static gboolean
open_tiff (GstTiffStackSink * self)
{
  TIFFOpenOptions *opts;
  gboolean big;

  switch (self->cfg_bigtiff) {
    case BIGTIFF_ALWAYS:
      big = TRUE;
      break;
    default:
      big = FALSE;
      break;
  }
  self->is_bigtiff = big;
  if (self->file_index == 0) {
    GstClockTime min_lat, max_lat;
    gboolean live;
    gst_base_sink_query_latency (GST_BASE_SINK (self), &live,
        &self->upstream_live, &min_lat, &max_lat);
  }

  if (!self->created) {
    struct stat st;
    /* Devices and pipes are written as they are; a regular file is emptied. */
    if (fstat (self->io.fd, &st) == 0 && S_ISREG (st.st_mode)) {
      if (ftruncate (self->io.fd, 0) < 0) {
        self->io.err = errno;
        post_write_error (self, "emptying the existing file");
        return FALSE;
      }
      self->replaced = TRUE;
    }
  }

  opts = tiff_diag_open_options (&self->diag, G_MAXSSIZE);
  tiff_diag_clear (&self->diag);
  self->tif = TIFFClientOpenExt (self->path, big ? "w8" : "w",
      (thandle_t) & self->io, io_read, io_write, io_seek, io_close, io_size,
      io_map, io_unmap, opts);
  TIFFOpenOptionsFree (opts);
  if (self->tif == NULL) {
    post_write_error (self, "creating the TIFF header");
    return FALSE;
  }
  return TRUE;
}

/* ---- caps, tags ----------------------------------------------------------- */

static gboolean
gst_tiff_stack_sink_set_caps (GstBaseSink * bsink, GstCaps * caps)
{
  GstTiffStackSink *self = GST_TIFF_STACK_SINK (bsink);
  GstUnetLayout info;

  if (!gst_unet_layout_from_caps (&info, caps)) {
    GST_ELEMENT_ERROR (self, CORE, NEGOTIATION,
        ("Invalid caps for tiffstacksink."), ("%" GST_PTR_FORMAT, caps));
    return FALSE;
  }
  self->frame_layout = info;
  self->have_info = TRUE;
  return TRUE;
}

static gboolean
gst_tiff_stack_sink_event (GstBaseSink * bsink, GstEvent * event)
{
  GstTiffStackSink *self = GST_TIFF_STACK_SINK (bsink);

  if (GST_EVENT_TYPE (event) == GST_EVENT_EOS && self->total_pages == 0
      && !self->failed)
    GST_ELEMENT_WARNING (self, STREAM, FAILED,
        ("The stream ended before its first frame: \"%s\" is not written.",
            self->path), (NULL));
  if (GST_EVENT_TYPE (event) == GST_EVENT_TAG) {
    GstTagList *tags;
    gdouble v;

    gst_event_parse_tag (event, &tags);
    if (gst_tag_list_get_double (tags, GST_TIFF_STACK_TAG_PIXEL_SIZE_X, &v)
        && v > 0.0)
      self->size_x_um = v;
    if (gst_tag_list_get_double (tags, GST_TIFF_STACK_TAG_PIXEL_SIZE_Y, &v)
        && v > 0.0)
      self->size_y_um = v;
    if (gst_tag_list_get_double (tags, GST_TIFF_STACK_TAG_PIXEL_SIZE_Z, &v)
        && v > 0.0)
      self->size_z_um = v;
    if (gst_tag_list_get_double (tags, GST_TIFF_STACK_TAG_FRAME_INTERVAL, &v)
        && v > 0.0)
      self->frame_interval_s = v;
    {
      guint n;
      if (gst_tag_list_get_uint (tags, GST_TIFF_STACK_TAG_CHANNELS, &n))
        self->axis_c = n;
      if (gst_tag_list_get_uint (tags, GST_TIFF_STACK_TAG_SLICES, &n))
        self->axis_z = n;
      if (gst_tag_list_get_uint (tags, GST_TIFF_STACK_TAG_FRAMES, &n))
        self->axis_t = n;
    }
  }
  return GST_BASE_SINK_CLASS (parent_class)->event (bsink, event);
}

/* ---- writing ------------------------------------------------------------- */

/* An upper bound of a page's directory and its out-of-line tag data: at most
 * 32 entries (about 20 are set) of 20 bytes (BigTIFF) plus count and next
 * pointer; the strip offset and byte count arrays (8 bytes per value in
 * BigTIFF); the ImageJ description slot, software string, two rationals and
 * per-sample arrays; 2 bytes of word alignment after each item. */
static guint64
dir_slot_bytes (guint32 strips)
{
  return 32 * 20 + 16 + (guint64) strips * 2 * 8 + DESC_BYTES + 64 + 16
      + 4 * 8 + 8 * 2;
}

static gboolean
write_page (GstTiffStackSink * self, GstUnetFrame * frame)
{
  static const guint16 codecs[] = { COMPRESSION_NONE, COMPRESSION_LZW,
    COMPRESSION_ADOBE_DEFLATE, COMPRESSION_ZSTD
  };
  TIFF *tif = self->tif;
  const GstUnetLayout *info = &self->frame_layout;
  GstUnetFormat fmt = info->format;
  guint32 width = info->width;
  guint32 height = info->height;
  gsize pstride = info->bpp;
  gsize stride = frame->stride;
  const guint8 *src = frame->data;
  gsize row_bytes = (gsize) width * pstride;
  gboolean compressed = self->cfg_compression != COMPRESS_NONE;
  gboolean is_float = fmt == GST_UNET_FORMAT_GRAY32F;
  guint32 rps, row0, r, strip;
  guint64 slot_lo, data_start, data_end;
  gsize target;
  gboolean ok;

  TIFFSetField (tif, TIFFTAG_IMAGEWIDTH, width);
  TIFFSetField (tif, TIFFTAG_IMAGELENGTH, height);
  TIFFSetField (tif, TIFFTAG_BITSPERSAMPLE,
      fmt == GST_UNET_FORMAT_RGB ? 8 : (guint) pstride * 8);
  TIFFSetField (tif, TIFFTAG_SAMPLESPERPIXEL,
      fmt == GST_UNET_FORMAT_RGB ? 3 : 1);
  TIFFSetField (tif, TIFFTAG_SAMPLEFORMAT,
      is_float ? SAMPLEFORMAT_IEEEFP : SAMPLEFORMAT_UINT);
  TIFFSetField (tif, TIFFTAG_PHOTOMETRIC, fmt == GST_UNET_FORMAT_RGB ?
      PHOTOMETRIC_RGB : PHOTOMETRIC_MINISBLACK);
  TIFFSetField (tif, TIFFTAG_PLANARCONFIG, PLANARCONFIG_CONTIG);
  TIFFSetField (tif, TIFFTAG_COMPRESSION, codecs[self->cfg_compression]);
  /* No predictor for Deflate: ImageJ 1.53t decodes Deflate pages with a
   * horizontal predictor wrongly (LZW ones right). */
  if (compressed && !is_float && self->cfg_compression != COMPRESS_DEFLATE)
    TIFFSetField (tif, TIFFTAG_PREDICTOR, PREDICTOR_HORIZONTAL);
  target = compressed ? STRIP_TARGET_COMPRESSED : STRIP_TARGET_RAW;
  rps = CLAMP (target / MAX (row_bytes, 1), 1, height);
  TIFFSetField (tif, TIFFTAG_ROWSPERSTRIP, rps);
  if (self->size_x_um > 0.0) {
    gdouble sy = self->size_y_um > 0.0 ? self->size_y_um : self->size_x_um;
    TIFFSetField (tif, TIFFTAG_XRESOLUTION, (float) (1.0 / self->size_x_um));
    TIFFSetField (tif, TIFFTAG_YRESOLUTION, (float) (1.0 / sy));
    TIFFSetField (tif, TIFFTAG_RESOLUTIONUNIT, RESUNIT_NONE);
  }
  if (self->pages == 0) {
    update_description (self, 1);
    TIFFSetField (tif, TIFFTAG_IMAGEDESCRIPTION, self->desc);
    TIFFSetField (tif, TIFFTAG_SOFTWARE, "gst-unet tiffstacksink " VERSION);
    self->io.desc = self->desc;
  }

  /* Raw pages go straight from the frame when rows are packed; encoders with
   * a predictor modify their input, so compressed strips are copied. */
  if (compressed || stride != row_bytes) {
    gsize need = (gsize) rps * row_bytes;
    if (self->strip_size < need) {
      g_free (self->strip);
      self->strip = g_try_malloc (need);
      self->strip_size = self->strip ? need : 0;
      if (!self->strip) {
        post_write_error (self, "allocating a strip buffer");
        return FALSE;
      }
    }
  }
  /* Layout of a page: [directory + tag data][pixel data], the directory in a
   * slot reserved in front of the pixels (see dir_slot_bytes()). With
   * uncompressed pages this puts page k+1's directory right after page k's
   * pixels, never further than the pixels of one page: tifffile (and
   * everything built on it) then sees from the ImageJ description and the
   * second directory's offset that pages are not one contiguous block, and
   * reads page by page. (With the directory after the pixels, a 2-page stack,
   * or any stack of pages smaller than a directory, looked contiguous and
   * read wrong.) The pixels of an odd-sized page start at an odd offset so
   * that the next directory, which must be word aligned, follows them without
   * a gap byte that a contiguous read would take for pixel data. */
  slot_lo = self->io.size;
  data_start = slot_lo + dir_slot_bytes ((height + rps - 1) / rps);
  if ((data_start ^ ((guint64) row_bytes * height)) & 1)
    data_start++;
  self->io.size = data_start;
  tiff_diag_clear (&self->diag);
  for (row0 = 0, strip = 0; row0 < height; row0 += rps, strip++) {
    guint32 rows = MIN (rps, height - row0);
    const guint8 *data = src + row0 * stride;
    if (compressed || stride != row_bytes) {
      for (r = 0; r < rows; r++)
        memcpy (self->strip + r * row_bytes, src + (row0 + r) * stride,
            row_bytes);
      data = self->strip;
    }
    if (TIFFWriteEncodedStrip (tif, strip, (void *) data,
            (tmsize_t) rows * row_bytes) < 0) {
      post_write_error (self, "writing pixel data");
      return FALSE;
    }
  }

  /* Directory and tag data are appended; the link into the chain is held
   * back (see WriterIo) and written last, so the page appears atomically. */
  data_end = self->io.size;
  self->io.committed = slot_lo;
  self->io.deferring = TRUE;
  /* libtiff puts a new directory at the end of the file: make that the slot. */
  self->io.size = slot_lo;
  self->io.slot_lo = slot_lo;
  self->io.slot_hi = data_start;
  self->io.slot_overflow = FALSE;
  self->io.in_slot = TRUE;
  ok = TIFFWriteDirectory (tif);
  self->io.in_slot = FALSE;
  self->io.deferring = FALSE;
  self->io.size = MAX (self->io.size, data_end);
  if (!ok) {
    g_array_set_size (self->io.patches, 0);
    post_write_error (self, self->io.slot_overflow ?
        "the page directory did not fit the slot reserved for it" :
        "writing the page directory");
    return FALSE;
  }
  if (!io_apply_patches (&self->io)) {
    post_write_error (self, "linking the page");
    return FALSE;
  }
  self->pages++;
  self->total_pages++;

  if (self->io.desc_off != G_MAXUINT64) {
    update_description (self, self->pages);
    if (!io_pwrite_all (&self->io, (const guint8 *) self->desc, DESC_BYTES,
            self->io.desc_off)) {
      post_write_error (self, "updating the ImageJ description");
      return FALSE;
    }
  }
  if (self->cfg_fsync && fdatasync (self->io.fd) < 0) {
    self->io.err = errno;
    post_write_error (self, "fdatasync");
    return FALSE;
  }
  return TRUE;
}

/* File @index of the stack: the location itself for 0, else the location with
 * "_<index>" before its extension (before ".ome.tif" for OME-TIFF names). */
static gchar *
numbered_path (const gchar * location, guint index)
{
  const gchar *base = strrchr (location, '/');
  const gchar *ext;
  gchar *lower;
  gsize pos;

  if (index == 0)
    return g_strdup (location);
  base = base ? base + 1 : location;
  lower = g_ascii_strdown (base, -1);
  if (g_str_has_suffix (lower, ".ome.tif"))
    ext = base + strlen (base) - 8;
  else if (g_str_has_suffix (lower, ".ome.tiff"))
    ext = base + strlen (base) - 9;
  else if ((ext = strrchr (base, '.')) == NULL || ext == base)
    ext = base + strlen (base);
  g_free (lower);
  pos = ext - location;
  return g_strdup_printf ("%.*s_%u%s", (int) pos, location, index, ext);
}

/* Bytes the next page may add to the file, at most: its directory slot and
 * pixels (LZW may expand incompressible data by up to ~1.4x, 2x bounds it;
 * Deflate and ZSTD by a fraction of a percent plus block headers). */
static guint64
page_bound (GstTiffStackSink * self)
{
  guint64 pixels = (guint64) self->frame_layout.height * self->frame_layout.width
      * self->frame_layout.bpp;
  guint32 strips = self->frame_layout.height;  /* at most one strip per row */

  switch (self->cfg_compression) {
    case COMPRESS_LZW:
      pixels *= 2;
      break;
    case COMPRESS_DEFLATE:
    case COMPRESS_ZSTD:
      pixels += pixels / 8 + 4096;
      break;
    default:
      break;
  }
  return pixels + dir_slot_bytes (strips) + 2;
}

/* Starts the next numbered file of the stack. */
static gboolean
open_next_file (GstTiffStackSink * self)
{
  GArray *patches = self->io.patches;

  close_file (self);
  self->file_index++;
  g_free (self->path);
  self->path = numbered_path (self->location_cfg, self->file_index);
  memset (&self->io, 0, sizeof (self->io));
  self->io.patches = patches;
  self->io.fd = -1;
  self->io.desc_off = G_MAXUINT64;
  self->pages = 0;
  self->created = self->replaced = FALSE;
  self->io.fd = open (self->path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
  if (self->io.fd < 0) {
    self->failed = TRUE;
    GST_ELEMENT_ERROR (self, RESOURCE, OPEN_WRITE,
        ("Could not open file \"%s\" for writing the continuation of the "
            "stack: %s.", self->path, g_strerror (errno)), (NULL));
    return FALSE;
  }
  self->created = TRUE;
  GST_INFO_OBJECT (self, "continuing the stack in \"%s\" from frame %"
      G_GUINT64_FORMAT, self->path, self->total_pages);
  gst_element_post_message (GST_ELEMENT (self),
      gst_message_new_element (GST_OBJECT (self),
          gst_structure_new ("tiffstacksink-file", "location", G_TYPE_STRING,
              self->path, "index", G_TYPE_UINT, self->file_index,
              "first-frame", G_TYPE_UINT64, self->total_pages, NULL)));
  return open_tiff (self);
}

/* Before a page: does it fit the current file? Continue in a new file, or fail
 * (bigtiff=never at the classic limit). */
static gboolean
ensure_room (GstTiffStackSink * self)
{
  guint64 limit = self->cfg_max_file_size;
  guint64 need = page_bound (self);

  if (self->pages == 0)
    return TRUE;
  if (!self->is_bigtiff && (limit == 0 || limit > CLASSIC_LIMIT))
    limit = CLASSIC_LIMIT;
  if (limit == 0 || self->io.size + need <= limit)
    return TRUE;
  if (!self->is_bigtiff && self->cfg_bigtiff == BIGTIFF_NEVER
      && limit == CLASSIC_LIMIT) {
    self->failed = TRUE;
    GST_ELEMENT_ERROR (self, RESOURCE, NO_SPACE_LEFT,
        ("Frame %" G_GUINT64_FORMAT " would take \"%s\" past the 4 GiB limit "
            "of classic TIFF (bigtiff=never); %" G_GUINT64_FORMAT " pages are "
            "complete. Use bigtiff=auto (numbered files) or bigtiff=always.",
            self->total_pages, self->path, self->total_pages), (NULL));
    return FALSE;
  }
  return open_next_file (self);
}

static GstFlowReturn
gst_tiff_stack_sink_render (GstBaseSink * bsink, GstBuffer * buf)
{
  GstTiffStackSink *self = GST_TIFF_STACK_SINK (bsink);
  GstUnetFrame frame;
  gboolean ok;
  guint c;

  if (self->failed)
    return GST_FLOW_ERROR;
  if (!self->have_info) {
    GST_ELEMENT_ERROR (self, CORE, NEGOTIATION,
        ("Received a buffer before caps."), (NULL));
    return GST_FLOW_NOT_NEGOTIATED;
  }
  if (self->tif == NULL && !open_tiff (self))
    return GST_FLOW_ERROR;
  if (!gst_unet_frame_map (&frame, &self->frame_layout, buf, GST_MAP_READ)) {
    GST_ELEMENT_ERROR (self, STREAM, FAILED,
        ("Buffer of %" G_GSIZE_FORMAT " bytes is too small for the caps.",
            gst_buffer_get_size (buf)), (NULL));
    return GST_FLOW_ERROR;
  }
  /* A multi-channel frame is one page per channel, channels fastest as in
   * an ImageJ hyperstack (its axes tags say channels=C). */
  ok = TRUE;
  for (c = 0; ok && c < MAX (self->frame_layout.channels, 1); c++) {
    GstUnetFrame plane = frame;
    plane.data = frame.data + (gsize) c * frame.stride * self->frame_layout.height;
    ok = ensure_room (self) && write_page (self, &plane);
  }
  gst_unet_frame_unmap (&frame);
  return ok ? GST_FLOW_OK : GST_FLOW_ERROR;
}
