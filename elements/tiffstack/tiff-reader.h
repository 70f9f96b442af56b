/* gst-unet — a multi-page (Big)TIFF read page by page
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * The reading half of tiffstacksrc, without GStreamer (plain C + GLib +
 * libtiff), so that it is tested and fuzzed on its own. It owns the open file
 * and libtiff's handle with per-file diagnostics (tiff-diag.h), the page-0
 * metadata (tiff-meta.h), the lazy page index — the chain of directories
 * (IFDs) followed only as far as asked, two small reads per page, loops and
 * offsets outside the file detected — the checks of a page's layout against the
 * file size and a page size limit, and the reading of strips or tiles into a
 * frame with the conversion to the output sample format:
 *
 * - 8-bit gray → U8, 16-bit gray → U16 (host order: big-endian files are
 *   swapped), 32-bit unsigned → U32, 32-bit float → F32, 64-bit float → F32
 *   (rounded to float), 8-bit RGB (contiguous or planar; JPEG YCbCr decoded to
 *   RGB) → RGB8 (R, G, B bytes).
 * - Signed 8/16-bit samples get 2^(bits-1) added (-32768 → 0, 0 → 32768), as
 *   ImageJ does, so order is kept; value_offset says how to get them back.
 * - Anything else (1-bit, 32-bit signed, 16-bit RGB, CMYK, more than three
 *   samples, YCbCr that is not JPEG) is refused with an error naming the page.
 * - MinIsWhite and palette pages are read as stored (not inverted, not looked
 *   up).
 *
 * Every failure is a TIFF_READER_ERROR naming the file (and the page), never a
 * crash or an allocation beyond the limit: every size comes from libtiff and is
 * checked before use. Threads: the page-index calls (has_page, count_pages,
 * get_page_count, get_chain_error) may come from any thread; selecting and
 * reading pages from one thread at a time.
 */
#ifndef __TIFF_READER_H__
#define __TIFF_READER_H__

#include <glib.h>

#include "tiff-meta.h"

G_BEGIN_DECLS

#define TIFF_READER_ERROR (tiff_reader_error_quark ())
GQuark tiff_reader_error_quark (void);

typedef enum
{
  TIFF_READER_ERROR_NOT_FOUND,  /* the file does not exist */
  TIFF_READER_ERROR_OPEN,       /* cannot be opened, or not a regular file */
  TIFF_READER_ERROR_NOT_TIFF,   /* not a TIFF, or its first directory is unreadable */
  TIFF_READER_ERROR_NO_PAGE,    /* the chain of pages ends before the page */
  TIFF_READER_ERROR_UNSUPPORTED,        /* a sample layout this reader does not convert */
  TIFF_READER_ERROR_TOO_LARGE,  /* a page above the page size limit */
  TIFF_READER_ERROR_DAMAGED,    /* a directory, strip or tile cannot be decoded */
  TIFF_READER_ERROR_NO_MEMORY,
} TiffReaderError;

typedef enum
{
  TIFF_READER_FORMAT_U8,
  TIFF_READER_FORMAT_U16,
  TIFF_READER_FORMAT_U32,
  TIFF_READER_FORMAT_F32,
  TIFF_READER_FORMAT_RGB8,
} TiffReaderFormat;

/* A page as it is read out (after conversion). */
typedef struct
{
  guint32 width, height;
  TiffReaderFormat format;
  guint bytes_per_pixel;
  /* Add to a value read to get the value stored in the file: -128 or -32768
   * for signed 8/16-bit samples, else 0. */
  gint value_offset;
} TiffPageInfo;

typedef struct _TiffReader TiffReader;

/* Opens @path, reads its first directory and metadata and checks that page 0
 * can be read. @max_page_bytes bounds a decoded page, strip or tile (also
 * libtiff's largest single allocation): larger ones are refused as damaged. */
TiffReader *tiff_reader_open (const gchar * path, guint64 max_page_bytes,
    GError ** error);
void tiff_reader_free (TiffReader * reader);

const gchar *tiff_reader_get_path (const TiffReader * reader);
/* Metadata of page 0 (pixel size, hyperstack axes, description). */
const TiffStackMeta *tiff_reader_get_meta (const TiffReader * reader);

/* ---- page index (any thread) ---- */

/* TRUE when page @page exists, following the chain up to it. */
gboolean tiff_reader_has_page (TiffReader * reader, guint64 page);
/* Follows the chain to its end: the number of reachable pages. */
guint tiff_reader_count_pages (TiffReader * reader);
/* TRUE, with the page count, when the chain has been followed to its end. */
gboolean tiff_reader_get_page_count (TiffReader * reader, guint * n_pages);
/* Pages indexed so far. */
guint tiff_reader_get_pages_indexed (TiffReader * reader);
/* Why the chain ended before its last IFD said so (a loop, a directory outside
 * or past the end of the file: "the chain of pages breaks after page N (...)"),
 * or NULL when it ended properly or has not been followed to its end. Valid
 * until the reader is freed. */
const gchar *tiff_reader_get_chain_error (TiffReader * reader);
/* Page of channel @c, slice @z, time point @t of an ImageJ hyperstack or
 * OME-TIFF, following its dimension order (ImageJ: XYCZT, channels fastest);
 * with no axes metadata, page @z. */
guint64 tiff_reader_hyperstack_page (const TiffReader * reader, guint c,
    guint z, guint t);

/* ---- reading (one thread) ---- */

/* Makes @page the current page and checks its layout. */
gboolean tiff_reader_select_page (TiffReader * reader, guint64 page,
    GError ** error);
/* The current page: G_MAXUINT64 when none. */
guint64 tiff_reader_get_current_page (const TiffReader * reader);
/* Layout of the current page (NULL when none). */
const TiffPageInfo *tiff_reader_get_page_info (const TiffReader * reader);
/* Reads the current page into @dst: height rows of width × bytes_per_pixel
 * bytes, @stride bytes apart. */
gboolean tiff_reader_read_page (TiffReader * reader, guint8 * dst,
    gsize stride, GError ** error);
/* The last diagnostic libtiff gave for this file (for logs), or @fallback. */
const gchar *tiff_reader_get_libtiff_message (const TiffReader * reader,
    const gchar * fallback);

/* Bytes per pixel of @format. */
guint tiff_reader_format_bytes (TiffReaderFormat format);

G_DEFINE_AUTOPTR_CLEANUP_FUNC (TiffReader, tiff_reader_free);

G_END_DECLS

#endif
