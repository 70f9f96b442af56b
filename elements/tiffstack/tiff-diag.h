/* gst-unet — libtiff's diagnostics for one open file
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * libtiff reports errors and warnings through handlers, not return values. These
 * are per-file handlers (TIFFOpenOptions, no global state) that keep the latest
 * message so that the caller can quote it in its own error. Plain GLib +
 * libtiff; messages are also logged with g_debug (G_MESSAGES_DEBUG=tiffstack).
 */
#ifndef __TIFF_DIAG_H__
#define __TIFF_DIAG_H__

#include <glib.h>
#include <tiffio.h>

G_BEGIN_DECLS

typedef struct
{
  gchar *last_error;            /* latest error (or first warning), or NULL */
} TiffDiag;

void tiff_diag_clear (TiffDiag * diag);
/* The last libtiff error, or @fallback when libtiff said nothing. */
const gchar *tiff_diag_message (const TiffDiag * diag, const gchar * fallback);
/* Open options with @diag's handlers and a single-allocation cap. Free with
 * TIFFOpenOptionsFree() once the file is open; @diag must live as long as the
 * file. */
TIFFOpenOptions *tiff_diag_open_options (TiffDiag * diag,
    guint64 max_single_alloc);

G_END_DECLS

#endif
