/* gst-unet — libtiff's diagnostics for one open file
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Per-file error and warning handlers that keep the latest message (see
 * tiff-diag.h); used by the TIFF reader and by tiffstacksink.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#undef G_LOG_DOMAIN
#define G_LOG_DOMAIN "tiffstack"

#include "tiff-diag.h"

static const gchar *
file_name (TIFF * tif)
{
  return tif ? TIFFFileName (tif) : "(opening)";
}

static int
diag_error (TIFF * tif, void *user_data, const char *module, const char *fmt,
    va_list ap)
{
  TiffDiag *diag = user_data;
  gchar *msg = g_strdup_vprintf (fmt, ap);

  g_free (diag->last_error);
  diag->last_error = module ? g_strdup_printf ("%s: %s", module, msg) : msg;
  if (module)
    g_free (msg);
  g_debug ("%s: libtiff: %s", file_name (tif), diag->last_error);
  return 1;
}

static int
diag_warning (TIFF * tif, void *user_data, const char *module,
    const char *fmt, va_list ap)
{
  TiffDiag *diag = user_data;
  gchar *msg = g_strdup_vprintf (fmt, ap);

  g_debug ("%s: libtiff warning: %s: %s", file_name (tif), module ? module :
      "", msg);
  /* libtiff reports IFD loops as warnings: keep the message for errors. */
  if (diag->last_error == NULL)
    diag->last_error = g_strdup_printf ("warning: %s: %s", module ? module :
        "", msg);
  g_free (msg);
  return 1;
}

void
tiff_diag_clear (TiffDiag * diag)
{
  g_clear_pointer (&diag->last_error, g_free);
}

const gchar *
tiff_diag_message (const TiffDiag * diag, const gchar * fallback)
{
  return diag->last_error ? diag->last_error : fallback;
}

TIFFOpenOptions *
tiff_diag_open_options (TiffDiag * diag, guint64 max_single_alloc)
{
  TIFFOpenOptions *opts = TIFFOpenOptionsAlloc ();

  TIFFOpenOptionsSetErrorHandlerExtR (opts, diag_error, diag);
  TIFFOpenOptionsSetWarningHandlerExtR (opts, diag_warning, diag);
  TIFFOpenOptionsSetMaxSingleMemAlloc (opts,
      (tmsize_t) MIN (max_single_alloc, (guint64) G_MAXSSIZE));
  return opts;
}
