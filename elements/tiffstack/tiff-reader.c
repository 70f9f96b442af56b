/* gst-unet — a multi-page (Big)TIFF read page by page
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * The file, libtiff's handle, the lazy page index, page layouts and the reading
 * and conversion of pixels (see tiff-reader.h). No GStreamer.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#undef G_LOG_DOMAIN
#define G_LOG_DOMAIN "tiffstack"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tiff-diag.h"
#include "tiff-reader.h"

/* How the current page is stored and how it maps to what is read out. */
typedef struct
{
  TiffPageInfo info;            /* what the caller sees */
  guint16 bps, spp, sample_format, planar, photometric, compression;
  gboolean tiled;
  guint32 tile_w, tile_h, rows_per_strip;
  gboolean flip_sign;           /* signed -> unsigned by adding 2^(bits-1) */
  gboolean f64;                 /* doubles narrowed to float */
  gboolean separate;            /* planar RGB: one plane per sample */
  guint64 chunk_bytes;          /* decoded bytes of one strip / tile */
  guint64 chunk_row_bytes;      /* bytes of one row of a strip / tile */
} PageLayout;

struct _TiffReader
{
  gchar *path;
  guint64 file_size;
  guint64 max_page_bytes;
  TIFF *tif;
  TiffDiag diag;
  TiffStackMeta meta;
  int fd;                       /* libtiff's descriptor (preads of the index) */
  gboolean big, swapped;        /* BigTIFF, byte order not the host's */

  /* The page index, under index_lock. */
  GMutex index_lock;
  GArray *dir_offsets;          /* guint64 file offset of each page's IFD known */
  guint64 index_next;           /* IFD offset after the last known one, 0: end */
  gboolean index_done;          /* the chain has been followed to its end */
  gboolean index_sorted;        /* offsets so far strictly increasing */
  GHashTable *index_seen;       /* offsets, once they are not increasing */
  gchar *chain_error;           /* why the chain ended early, or NULL */

  /* The current page (reading thread). */
  guint64 cur_dir;              /* G_MAXUINT64 if none */
  PageLayout layout;
  guint8 *scratch;              /* one decoded strip or tile */
  gsize scratch_size;
};

G_DEFINE_QUARK (tiff-reader-error-quark, tiff_reader_error);

guint
tiff_reader_format_bytes (TiffReaderFormat format)
{
  switch (format) {
    case TIFF_READER_FORMAT_U8:
      return 1;
    case TIFF_READER_FORMAT_U16:
      return 2;
    case TIFF_READER_FORMAT_RGB8:
      return 3;
    default:
      return 4;
  }
}

/* "Could not read page N of "path": <why>." */
static void G_GNUC_PRINTF (5, 6)
page_error (TiffReader * r, GError ** error, TiffReaderError code,
    guint64 page, const gchar * fmt, ...)
{
  va_list ap;
  gchar *why;

  va_start (ap, fmt);
  why = g_strdup_vprintf (fmt, ap);
  va_end (ap);
  g_set_error (error, TIFF_READER_ERROR, code,
      "Could not read page %" G_GUINT64_FORMAT " of \"%s\": %s", page,
      r->path, why);
  g_free (why);
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
 * next pointer), from index_next. At the end of the chain, a loop, or an IFD
 * outside the file, marks the index done (with chain_error for the last two).
 * Loops cost nothing while the offsets increase (what writers produce); a set
 * of the offsets seen is built only once they do not. Call with index_lock
 * held. */
static void
index_step (TiffReader * r)
{
  guint csize = r->big ? 8 : 2, esize = r->big ? 20 : 12, osize =
      r->big ? 8 : 4;
  guint64 off = r->index_next, n, next_pos, page = r->dir_offsets->len;
  guint8 buf[8];
  const gchar *why = NULL;

  if (off == 0) {
    r->index_done = TRUE;
    return;
  }
  if (r->index_sorted && page > 0
      && off <= g_array_index (r->dir_offsets, guint64, page - 1)) {
    r->index_sorted = FALSE;
    r->index_seen = g_hash_table_new_full (g_int64_hash, g_int64_equal,
        g_free, NULL);
    for (guint i = 0; i < page; i++)
      g_hash_table_add (r->index_seen, g_memdup2 (&g_array_index
              (r->dir_offsets, guint64, i), sizeof (guint64)));
  }
  if (!r->index_sorted && g_hash_table_contains (r->index_seen, &off))
    why = "IFD loop";
  else if (off >= r->file_size || r->file_size - off < csize
      || !pread_all (r->fd, buf, csize, off))
    why = "directory offset outside the file";
  else if ((n = get_uint (buf, csize, r->swapped)) == 0
      || n > (r->file_size - off) / esize)
    why = "unreadable directory";
  else if ((next_pos = off + csize + n * esize) > r->file_size
      || r->file_size - next_pos < osize
      || !pread_all (r->fd, buf, osize, next_pos))
    why = "directory runs past the end of the file";
  if (why) {
    r->index_done = TRUE;
    if (page == 0)
      r->chain_error = g_strdup_printf ("the first page's directory is "
          "unreadable (%s)", why);
    else
      r->chain_error = g_strdup_printf ("the chain of pages breaks after "
          "page %" G_GUINT64_FORMAT " (%s)", page - 1, why);
    g_debug ("%s: %s", r->path, r->chain_error);
    return;
  }
  if (!r->index_sorted)
    g_hash_table_add (r->index_seen, g_memdup2 (&off, sizeof off));
  g_array_append_val (r->dir_offsets, off);
  r->index_next = get_uint (buf, osize, r->swapped);
}

/* TRUE when @page exists (indexing up to it). Call with index_lock held. */
static gboolean
index_to (TiffReader * r, guint64 page)
{
  while (!r->index_done && r->dir_offsets->len <= page
      && r->dir_offsets->len < G_MAXUINT - 1)
    index_step (r);
  /* the index holds at most G_MAXUINT - 1 pages: that is the end */
  if (r->dir_offsets->len >= G_MAXUINT - 1)
    r->index_done = TRUE;
  return page < r->dir_offsets->len;
}

gboolean
tiff_reader_has_page (TiffReader * r, guint64 page)
{
  gboolean ok;

  g_mutex_lock (&r->index_lock);
  ok = index_to (r, page);
  g_mutex_unlock (&r->index_lock);
  return ok;
}

guint
tiff_reader_count_pages (TiffReader * r)
{
  guint n;

  g_mutex_lock (&r->index_lock);
  index_to (r, G_MAXUINT - 1);
  r->index_done = TRUE;
  n = r->dir_offsets->len;
  g_mutex_unlock (&r->index_lock);
  return n;
}

gboolean
tiff_reader_get_page_count (TiffReader * r, guint * n_pages)
{
  gboolean done;

  g_mutex_lock (&r->index_lock);
  done = r->index_done;
  *n_pages = done ? r->dir_offsets->len : 0;
  g_mutex_unlock (&r->index_lock);
  return done;
}

guint
tiff_reader_get_pages_indexed (TiffReader * r)
{
  guint n;

  g_mutex_lock (&r->index_lock);
  n = r->dir_offsets->len;
  g_mutex_unlock (&r->index_lock);
  return n;
}

const gchar *
tiff_reader_get_chain_error (TiffReader * r)
{
  const gchar *e;

  /* set once, never changed after */
  g_mutex_lock (&r->index_lock);
  e = r->chain_error;
  g_mutex_unlock (&r->index_lock);
  return e;
}

guint64
tiff_reader_hyperstack_page (const TiffReader * r, guint c, guint z, guint t)
{
  const TiffStackMeta *m = &r->meta;
  guint64 idx[3], size[3], page = 0, stride = 1;
  gint i;

  if (m->dim_order[0] == '\0')
    return z;
  for (i = 0; i < 3; i++) {
    switch (m->dim_order[2 + i]) {
      case 'C':
        idx[i] = c;
        size[i] = MAX (m->channels, 1);
        break;
      case 'Z':
        idx[i] = z;
        size[i] = MAX (m->slices, 1);
        break;
      default:
        idx[i] = t;
        size[i] = MAX (m->frames, 1);
        break;
    }
  }
  for (i = 0; i < 3; i++) {
    page += idx[i] * stride;
    stride *= size[i];
  }
  return page;
}

/* ---- page layouts -------------------------------------------------------- */

/* Reads the tags of the current directory (page @page) into @L; checks them
 * against what is supported, the file size and the page size limit. */
static gboolean
page_layout (TiffReader * r, PageLayout * L, guint64 page, GError ** error)
{
  TIFF *tif = r->tif;
  guint64 scanline, raw_page, out_size;
  guint16 v16;
  gboolean known = TRUE;

  memset (L, 0, sizeof (*L));
  if (!TIFFGetField (tif, TIFFTAG_IMAGEWIDTH, &L->info.width)
      || !TIFFGetField (tif, TIFFTAG_IMAGELENGTH, &L->info.height)
      || L->info.width == 0 || L->info.height == 0) {
    page_error (r, error, TIFF_READER_ERROR_DAMAGED, page,
        "the page has no image size");
    return FALSE;
  }
  if (L->info.width > G_MAXINT / 4 || L->info.height > G_MAXINT / 4) {
    page_error (r, error, TIFF_READER_ERROR_DAMAGED, page,
        "absurd page size %u x %u", L->info.width, L->info.height);
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
    page_error (r, error, TIFF_READER_ERROR_UNSUPPORTED, page,
        "compression scheme %u is not supported by this libtiff",
        L->compression);
    return FALSE;
  }
  if (L->photometric == PHOTOMETRIC_YCBCR) {
    if (L->compression != COMPRESSION_JPEG) {
      page_error (r, error, TIFF_READER_ERROR_UNSUPPORTED, page,
          "YCbCr pages are only supported JPEG-compressed");
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
      page_error (r, error, TIFF_READER_ERROR_UNSUPPORTED, page,
          "photometric interpretation %u is not supported for one sample "
          "per pixel", L->photometric);
      return FALSE;
    }
    known = FALSE;
    switch (L->sample_format) {
      case SAMPLEFORMAT_IEEEFP:
        L->info.format = TIFF_READER_FORMAT_F32;
        L->f64 = L->bps == 64;
        known = L->bps == 32 || L->bps == 64;
        break;
      case SAMPLEFORMAT_INT:
        L->flip_sign = TRUE;
        /* fall through */
      case SAMPLEFORMAT_UINT:
      case SAMPLEFORMAT_VOID:
        known = TRUE;
        if (L->bps == 8)
          L->info.format = TIFF_READER_FORMAT_U8;
        else if (L->bps == 16)
          L->info.format = TIFF_READER_FORMAT_U16;
        else if (L->bps == 32 && !L->flip_sign)
          L->info.format = TIFF_READER_FORMAT_U32;
        else
          known = FALSE;
        break;
      default:
        break;
    }
    if (!known) {
      page_error (r, error, TIFF_READER_ERROR_UNSUPPORTED, page,
          "%u-bit %s samples are not supported (8/16-bit integer, 32-bit "
          "unsigned and 32/64-bit float are)", L->bps,
          L->sample_format == SAMPLEFORMAT_IEEEFP ? "float" :
          L->sample_format == SAMPLEFORMAT_INT ? "signed" :
          L->sample_format == SAMPLEFORMAT_UINT ? "unsigned" : "complex");
      return FALSE;
    }
  } else if (L->spp == 3 && L->photometric == PHOTOMETRIC_RGB && L->bps == 8
      && (L->sample_format == SAMPLEFORMAT_UINT
          || L->sample_format == SAMPLEFORMAT_VOID)) {
    L->info.format = TIFF_READER_FORMAT_RGB8;
    L->separate = L->planar == PLANARCONFIG_SEPARATE;
  } else {
    page_error (r, error, TIFF_READER_ERROR_UNSUPPORTED, page,
        "%u samples of %u bits per pixel (photometric %u) are not supported: "
        "only gray (1 sample) and 8-bit RGB (3 samples)", L->spp, L->bps,
        L->photometric);
    return FALSE;
  }
  L->info.bytes_per_pixel = tiff_reader_format_bytes (L->info.format);
  if (L->flip_sign)
    L->info.value_offset = L->bps == 8 ? -128 : -32768;

  tiff_diag_clear (&r->diag);
  scanline = TIFFScanlineSize64 (tif);
  L->tiled = TIFFIsTiled (tif);
  if (L->tiled) {
    if (!TIFFGetField (tif, TIFFTAG_TILEWIDTH, &L->tile_w)
        || !TIFFGetField (tif, TIFFTAG_TILELENGTH, &L->tile_h)
        || L->tile_w == 0 || L->tile_h == 0) {
      page_error (r, error, TIFF_READER_ERROR_DAMAGED, page,
          "the page is tiled but has no tile size");
      return FALSE;
    }
    L->chunk_bytes = TIFFTileSize64 (tif);
    L->chunk_row_bytes = TIFFTileRowSize64 (tif);
  } else {
    TIFFGetFieldDefaulted (tif, TIFFTAG_ROWSPERSTRIP, &L->rows_per_strip);
    L->rows_per_strip = CLAMP (L->rows_per_strip, 1, L->info.height);
    L->chunk_bytes = TIFFStripSize64 (tif);
    L->chunk_row_bytes = scanline;
  }
  if (scanline == 0 || L->chunk_bytes == 0 || L->chunk_row_bytes == 0) {
    page_error (r, error, TIFF_READER_ERROR_DAMAGED, page,
        "invalid strip or tile size (%s)", tiff_diag_message (&r->diag,
            "overflow"));
    return FALSE;
  }
  if (!g_uint64_checked_mul (&raw_page, scanline, L->info.height)
      || (L->separate && !g_uint64_checked_mul (&raw_page, raw_page, 3))) {
    page_error (r, error, TIFF_READER_ERROR_DAMAGED, page,
        "absurd page size %u x %u", L->info.width, L->info.height);
    return FALSE;
  }
  /* A frame as read out, rows padded to 4 bytes (as GStreamer's frames are);
   * cannot overflow: width and height are below 2^29. */
  out_size = (((guint64) L->info.width * L->info.bytes_per_pixel + 3) & ~3ull)
      * L->info.height;
  if (MAX (raw_page, out_size) > r->max_page_bytes
      || L->chunk_bytes > r->max_page_bytes) {
    page_error (r, error, TIFF_READER_ERROR_TOO_LARGE, page,
        "the page is %u x %u pixels (%" G_GUINT64_FORMAT " bytes), more than "
        "the limit of %" G_GUINT64_FORMAT " bytes per page; the file is "
        "damaged or the limit must be raised", L->info.width, L->info.height,
        MAX (raw_page, out_size), r->max_page_bytes);
    return FALSE;
  }
  if (L->compression == COMPRESSION_NONE && raw_page > r->file_size) {
    page_error (r, error, TIFF_READER_ERROR_DAMAGED, page,
        "the page needs %" G_GUINT64_FORMAT " bytes but the file has only %"
        G_GUINT64_FORMAT " (truncated or damaged)", raw_page, r->file_size);
    return FALSE;
  }
  return TRUE;
}

gboolean
tiff_reader_select_page (TiffReader * r, guint64 page, GError ** error)
{
  gboolean known;
  guint64 offset;
  int ok;

  if (page == r->cur_dir)
    return TRUE;
  tiff_diag_clear (&r->diag);
  g_mutex_lock (&r->index_lock);
  known = index_to (r, page);
  offset = known ? g_array_index (r->dir_offsets, guint64, page) : 0;
  g_mutex_unlock (&r->index_lock);
  if (!known) {
    const gchar *chain = tiff_reader_get_chain_error (r);
    page_error (r, error, TIFF_READER_ERROR_NO_PAGE, page, "%s",
        chain ? chain : "the file has fewer pages");
    return FALSE;
  }
  /* Next page: follow the chain. Any other: jump to its IFD by offset
   * (libtiff 4.5's TIFFSetDirectory walks the chain from the start, which
   * made channel selection quadratic in the number of pages). */
  if (r->cur_dir != G_MAXUINT64 && page == r->cur_dir + 1)
    ok = TIFFReadDirectory (r->tif);
  else
    ok = TIFFSetSubDirectory (r->tif, offset);
  r->cur_dir = G_MAXUINT64;
  if (!ok) {
    page_error (r, error, TIFF_READER_ERROR_DAMAGED, page,
        "its directory (IFD) is unreadable");
    return FALSE;
  }
  if (!page_layout (r, &r->layout, page, error))
    return FALSE;
  r->cur_dir = page;
  return TRUE;
}

guint64
tiff_reader_get_current_page (const TiffReader * r)
{
  return r->cur_dir;
}

const TiffPageInfo *
tiff_reader_get_page_info (const TiffReader * r)
{
  return r->cur_dir == G_MAXUINT64 ? NULL : &r->layout.info;
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
ensure_scratch (TiffReader * r, guint64 size)
{
  if (r->scratch_size >= size)
    return TRUE;
  g_free (r->scratch);
  r->scratch = g_try_malloc (size);
  r->scratch_size = r->scratch ? size : 0;
  return r->scratch != NULL;
}

/* Fast path for raw pages in native byte order whose strips lie back to
 * back in the file (what most writers produce): one pread of the whole page
 * straight into the frame instead of a seek and a read per strip. Returns
 * FALSE, having read nothing, whenever the layout does not allow it; libtiff
 * then reads the page the ordinary way (and reports any damage). */
static gboolean
read_contiguous (TiffReader * r, guint8 * dst)
{
  const PageLayout *L = &r->layout;
  TIFF *tif = r->tif;
  guint32 height = L->info.height;
  guint32 nstrips = (height + L->rows_per_strip - 1) / L->rows_per_strip;
  guint64 strip_bytes = (guint64) L->rows_per_strip * L->chunk_row_bytes;
  guint64 total = (guint64) height * L->chunk_row_bytes, off0, done = 0;
  guint16 fill = FILLORDER_MSB2LSB;
  guint32 s;

  TIFFGetFieldDefaulted (tif, TIFFTAG_FILLORDER, &fill);
  if (L->compression != COMPRESSION_NONE || r->swapped
      || fill != FILLORDER_MSB2LSB || r->fd < 0
      || TIFFNumberOfStrips (tif) != nstrips)
    return FALSE;
  off0 = TIFFGetStrileOffset (tif, 0);
  for (s = 0; s < nstrips; s++) {
    guint64 rows = MIN (L->rows_per_strip, height - s * L->rows_per_strip);
    if (TIFFGetStrileOffset (tif, s) != off0 + s * strip_bytes
        || TIFFGetStrileByteCount (tif, s) < rows * L->chunk_row_bytes)
      return FALSE;
  }
  if (off0 == 0 || off0 > r->file_size || total > r->file_size - off0)
    return FALSE;
  while (done < total) {
    ssize_t n = pread (r->fd, dst + done, total - done, off0 + done);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      return FALSE;
    done += n;
  }
  return TRUE;
}

gboolean
tiff_reader_read_page (TiffReader * r, guint8 * dst, gsize stride,
    GError ** error)
{
  const PageLayout *L = &r->layout;
  TIFF *tif = r->tif;
  guint64 page = r->cur_dir;
  guint32 width = L->info.width, height = L->info.height;
  gsize pstride = L->info.bytes_per_pixel;
  guint nplanes = L->separate ? 3 : 1, p;
  gboolean direct = !L->tiled && !L->separate && !L->flip_sign && !L->f64
      && stride == L->chunk_row_bytes;

  g_return_val_if_fail (page != G_MAXUINT64, FALSE);
  g_return_val_if_fail (stride >= (gsize) width * pstride, FALSE);

  tiff_diag_clear (&r->diag);
  if (direct && read_contiguous (r, dst))
    return TRUE;
  if (!direct && !ensure_scratch (r, L->chunk_bytes)) {
    page_error (r, error, TIFF_READER_ERROR_NO_MEMORY, page,
        "cannot allocate %" G_GUINT64_FORMAT " bytes", L->chunk_bytes);
    return FALSE;
  }

  if (!L->tiled) {
    guint32 per_plane = (height + L->rows_per_strip - 1) / L->rows_per_strip;
    guint32 s, row;

    if ((guint64) TIFFNumberOfStrips (tif) < (guint64) per_plane * nplanes) {
      page_error (r, error, TIFF_READER_ERROR_DAMAGED, page,
          "the page has fewer strips than its size needs");
      return FALSE;
    }
    for (p = 0; p < nplanes; p++) {
      for (s = 0; s < per_plane; s++) {
        guint32 row0 = s * L->rows_per_strip;
        guint32 rows = MIN (L->rows_per_strip, height - row0);
        tmsize_t want = (tmsize_t) (rows * L->chunk_row_bytes);
        guint8 *out = direct ? dst + row0 * stride : r->scratch;

        if (TIFFReadEncodedStrip (tif, p * per_plane + s, out, want) != want) {
          page_error (r, error, TIFF_READER_ERROR_DAMAGED, page,
              "strip %u is damaged or truncated", p * per_plane + s);
          return FALSE;
        }
        if (direct)
          continue;
        for (row = 0; row < rows; row++)
          convert_run (L, r->scratch + row * L->chunk_row_bytes,
              dst + (row0 + row) * stride, width, p);
      }
    }
  } else {
    guint32 x, y, row;

    for (p = 0; p < nplanes; p++) {
      for (y = 0; y < height; y += L->tile_h) {
        for (x = 0; x < width; x += L->tile_w) {
          guint32 tile = TIFFComputeTile (tif, x, y, 0, p);
          guint32 cols = MIN (L->tile_w, width - x);
          guint32 rows = MIN (L->tile_h, height - y);

          if (TIFFReadEncodedTile (tif, tile, r->scratch,
                  (tmsize_t) L->chunk_bytes) < 0) {
            page_error (r, error, TIFF_READER_ERROR_DAMAGED, page,
                "tile %u is damaged or truncated", tile);
            return FALSE;
          }
          for (row = 0; row < rows; row++)
            convert_run (L, r->scratch + row * L->chunk_row_bytes,
                dst + (y + row) * stride + x * pstride, cols, p);
        }
      }
    }
  }
  return TRUE;
}

const gchar *
tiff_reader_get_libtiff_message (const TiffReader * r, const gchar * fallback)
{
  return tiff_diag_message (&r->diag, fallback);
}

/* ---- open / free --------------------------------------------------------- */

TiffReader *
tiff_reader_open (const gchar * path, guint64 max_page_bytes, GError ** error)
{
  TiffReader *r;
  TIFFOpenOptions *opts;
  struct stat st;
  int fd;

  g_return_val_if_fail (path != NULL, NULL);

  /* O_NONBLOCK: opening a FIFO must not wait for a writer (it is refused as
   * not a regular file below); reads of a regular file ignore the flag. */
  fd = open (path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) {
    int e = errno;
    if (e == ENOENT)
      g_set_error (error, TIFF_READER_ERROR, TIFF_READER_ERROR_NOT_FOUND,
          "File \"%s\" does not exist.", path);
    else
      g_set_error (error, TIFF_READER_ERROR, TIFF_READER_ERROR_OPEN,
          "Could not open file \"%s\" for reading: %s.", path,
          g_strerror (e));
    return NULL;
  }
  if (fstat (fd, &st) < 0 || !S_ISREG (st.st_mode)) {
    close (fd);
    g_set_error (error, TIFF_READER_ERROR, TIFF_READER_ERROR_OPEN,
        "\"%s\" is not a regular file.", path);
    return NULL;
  }
  /* Pages are read front to back: let the kernel read ahead. */
  posix_fadvise (fd, 0, 0, POSIX_FADV_SEQUENTIAL);

  r = g_new0 (TiffReader, 1);
  r->path = g_strdup (path);
  r->file_size = st.st_size;
  r->max_page_bytes = max_page_bytes;
  r->cur_dir = G_MAXUINT64;
  g_mutex_init (&r->index_lock);
  r->dir_offsets = g_array_new (FALSE, FALSE, sizeof (guint64));
  r->index_sorted = TRUE;

  opts = tiff_diag_open_options (&r->diag, max_page_bytes);
  /* "m": no memory mapping, so resident memory stays one page whatever the
   * file size (mapped pages would count as resident). */
  r->tif = TIFFFdOpenExt (fd, path, "rm", opts);
  TIFFOpenOptionsFree (opts);
  if (r->tif == NULL) {
    close (fd);
    g_set_error (error, TIFF_READER_ERROR, TIFF_READER_ERROR_NOT_TIFF,
        "\"%s\" is not a TIFF file or its first page is unreadable "
        "(libtiff: %s).", path, tiff_diag_message (&r->diag, "no message"));
    tiff_reader_free (r);
    return NULL;
  }
  r->fd = TIFFFileno (r->tif);
  r->big = TIFFIsBigTIFF (r->tif);
  r->swapped = TIFFIsByteSwapped (r->tif);

  /* The page index starts with page 0, which libtiff has just read; the rest
   * of the chain is followed as far as needed (index_to). */
  r->index_next = TIFFCurrentDirOffset (r->tif);
  if (!tiff_reader_has_page (r, 0)) {
    g_set_error (error, TIFF_READER_ERROR, TIFF_READER_ERROR_NO_PAGE,
        "\"%s\" has no readable page (%s).", path,
        r->chain_error ? r->chain_error : "no IFD");
    tiff_reader_free (r);
    return NULL;
  }
  tiff_stack_meta_read (&r->meta, r->tif);
  if (!page_layout (r, &r->layout, 0, error)) {
    tiff_reader_free (r);
    return NULL;
  }
  r->cur_dir = 0;
  return r;
}

void
tiff_reader_free (TiffReader * r)
{
  if (r == NULL)
    return;
  if (r->tif)
    TIFFClose (r->tif);
  tiff_diag_clear (&r->diag);
  tiff_stack_meta_clear (&r->meta);
  g_free (r->path);
  g_free (r->chain_error);
  g_free (r->scratch);
  g_array_unref (r->dir_offsets);
  if (r->index_seen)
    g_hash_table_unref (r->index_seen);
  g_mutex_clear (&r->index_lock);
  g_free (r);
}

const gchar *
tiff_reader_get_path (const TiffReader * r)
{
  return r->path;
}

const TiffStackMeta *
tiff_reader_get_meta (const TiffReader * r)
{
  return &r->meta;
}
