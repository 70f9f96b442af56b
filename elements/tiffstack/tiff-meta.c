/* gst-unet — what a TIFF stack's first page says about the stack
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Physical pixel size, axes (channels, slices, frames, dimension order) and
 * frame interval from the tags and the ImageJ or OME-XML ImageDescription of
 * page 0 (see tiff-meta.h). Plain GLib + libtiff.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#undef G_LOG_DOMAIN
#define G_LOG_DOMAIN "tiffstack"

#include <math.h>
#include <string.h>
#include <stdlib.h>

#include "tiff-meta.h"

/* ---- units --------------------------------------------------------------- */

gboolean
tiff_stack_unit_to_um (const gchar * unit, gdouble * um_per_unit)
{
  static const struct
  {
    const gchar *name;
    gdouble um;
  } units[] = {
    {"micron", 1.0}, {"microns", 1.0}, {"um", 1.0}, {"\xc2\xb5m", 1.0},
    {"\xce\xbcm", 1.0}, {"\\u00B5m", 1.0}, {"\\u00b5m", 1.0},
    {"micrometer", 1.0}, {"micrometre", 1.0}, {"micrometers", 1.0},
    {"nm", 1e-3}, {"nanometer", 1e-3}, {"nanometre", 1e-3},
    {"pm", 1e-6}, {"\xc3\x85", 1e-4}, {"angstrom", 1e-4},
    {"mm", 1e3}, {"millimeter", 1e3}, {"millimetre", 1e3},
    {"cm", 1e4}, {"centimeter", 1e4}, {"centimetre", 1e4},
    {"m", 1e6}, {"meter", 1e6}, {"metre", 1e6},
    {"inch", 25400.0}, {"in", 25400.0}, {"inches", 25400.0},
  };
  gchar *u;
  guint i;

  if (unit == NULL)
    return FALSE;
  u = g_strstrip (g_strdup (unit));
  for (i = 0; i < G_N_ELEMENTS (units); i++) {
    if (g_ascii_strcasecmp (u, units[i].name) == 0
        || strcmp (u, units[i].name) == 0) {
      *um_per_unit = units[i].um;
      g_free (u);
      return TRUE;
    }
  }
  g_free (u);
  return FALSE;
}

/* ---- descriptions -------------------------------------------------------- */

void
tiff_stack_meta_clear (TiffStackMeta * meta)
{
  g_free (meta->unit);
  g_free (meta->description);
  memset (meta, 0, sizeof (*meta));
}

static guint
parse_count (const gchar * s)
{
  gchar *end;
  gdouble v = g_ascii_strtod (s, &end);

  /* Counts above 2^24 are not plausible for a stack dimension. */
  if (end == s || !(v >= 1.0) || v > 16777216.0)
    return 0;
  return (guint) v;
}

static gdouble
parse_length (const gchar * s)
{
  gchar *end;
  gdouble v = g_ascii_strtod (s, &end);

  if (end == s || !isfinite (v) || v <= 0.0)
    return 0.0;
  return v;
}

/* Seconds per time unit as ImageJ (`tunit`) and OME (`TimeIncrementUnit`)
 * write them; 0 for a unit that is not a time. */
static gdouble
time_unit_to_s (const gchar * unit)
{
  static const struct
  {
    const gchar *name;
    gdouble s;
  } units[] = {
    {"", 1.0}, {"s", 1.0}, {"sec", 1.0}, {"second", 1.0}, {"seconds", 1.0},
    {"ms", 1e-3}, {"msec", 1e-3}, {"\xc2\xb5s", 1e-6}, {"\xce\xbcs", 1e-6},
    {"us", 1e-6}, {"ns", 1e-9}, {"min", 60.0}, {"minute", 60.0},
    {"minutes", 60.0}, {"h", 3600.0}, {"hr", 3600.0}, {"hour", 3600.0},
    {"hours", 3600.0},
  };
  gchar *u = g_strstrip (g_strdup (unit ? unit : ""));
  gdouble s = 0.0;
  guint i;

  for (i = 0; i < G_N_ELEMENTS (units); i++)
    if (g_ascii_strcasecmp (u, units[i].name) == 0 || !strcmp (u,
            units[i].name)) {
      s = units[i].s;
      break;
    }
  g_free (u);
  return s;
}

static void
parse_imagej (TiffStackMeta * meta, const gchar * desc, gdouble * spacing)
{
  gchar **lines = g_strsplit (desc, "\n", -1);
  gchar tunit[32] = "";
  guint i;

  meta->is_imagej = TRUE;
  g_strlcpy (meta->dim_order, "XYCZT", sizeof (meta->dim_order));
  for (i = 0; lines[i]; i++) {
    gchar *eq = strchr (lines[i], '=');
    const gchar *val;

    if (!eq)
      continue;
    *eq = '\0';
    val = eq + 1;
    if (!strcmp (lines[i], "channels"))
      meta->channels = parse_count (val);
    else if (!strcmp (lines[i], "slices"))
      meta->slices = parse_count (val);
    else if (!strcmp (lines[i], "frames"))
      meta->frames = parse_count (val);
    else if (!strcmp (lines[i], "unit")) {
      g_free (meta->unit);
      meta->unit = g_strstrip (g_strdup (val));
    } else if (!strcmp (lines[i], "spacing"))
      *spacing = parse_length (val);
    else if (!strcmp (lines[i], "finterval"))
      meta->frame_interval_s = parse_length (val);
    else if (!strcmp (lines[i], "tunit"))
      g_strlcpy (tunit, val, sizeof (tunit));
  }
  g_strfreev (lines);
  if (meta->frame_interval_s > 0.0)
    meta->frame_interval_s *= time_unit_to_s (tunit);
}

typedef struct
{
  TiffStackMeta *meta;
  gboolean done;
} OmeParse;

static const gchar *
local_name (const gchar * name)
{
  const gchar *colon = strrchr (name, ':');
  return colon ? colon + 1 : name;
}

static gdouble
ome_size_um (const gchar ** names, const gchar ** values, const gchar * attr)
{
  gchar *unit_attr = g_strconcat (attr, "Unit", NULL);
  const gchar *value = NULL, *unit = NULL;
  gdouble v, factor = 1.0;      /* OME's default unit is the micrometre */
  guint i;

  for (i = 0; names[i]; i++) {
    if (!strcmp (names[i], attr))
      value = values[i];
    else if (!strcmp (names[i], unit_attr))
      unit = values[i];
  }
  g_free (unit_attr);
  if (!value)
    return 0.0;
  v = parse_length (value);
  if (unit && !tiff_stack_unit_to_um (unit, &factor))
    return 0.0;
  return v * factor;
}

static void
ome_start (GMarkupParseContext * ctx, const gchar * element,
    const gchar ** names, const gchar ** values, gpointer user_data,
    GError ** error)
{
  OmeParse *p = user_data;
  TiffStackMeta *meta = p->meta;
  guint i;
  gdouble v;

  if (p->done || strcmp (local_name (element), "Pixels") != 0)
    return;

  /* Only the first image's Pixels element describes the main series. */
  p->done = TRUE;
  meta->is_ome = TRUE;
  for (i = 0; names[i]; i++) {
    if (!strcmp (names[i], "SizeC"))
      meta->channels = parse_count (values[i]);
    else if (!strcmp (names[i], "SizeZ"))
      meta->slices = parse_count (values[i]);
    else if (!strcmp (names[i], "SizeT"))
      meta->frames = parse_count (values[i]);
    else if (!strcmp (names[i], "DimensionOrder") && strlen (values[i]) == 5
        && values[i][0] == 'X' && values[i][1] == 'Y'
        && strchr (values[i] + 2, 'C') && strchr (values[i] + 2, 'Z')
        && strchr (values[i] + 2, 'T'))
      g_strlcpy (meta->dim_order, values[i], sizeof (meta->dim_order));
  }
  if (meta->dim_order[0] == '\0')
    g_strlcpy (meta->dim_order, "XYZCT", sizeof (meta->dim_order));
  if ((v = ome_size_um (names, values, "PhysicalSizeX")) > 0.0)
    meta->size_x_um = v;
  if ((v = ome_size_um (names, values, "PhysicalSizeY")) > 0.0)
    meta->size_y_um = v;
  if ((v = ome_size_um (names, values, "PhysicalSizeZ")) > 0.0)
    meta->size_z_um = v;
  {
    const gchar *inc = NULL, *unit = "s";
    for (i = 0; names[i]; i++) {
      if (!strcmp (names[i], "TimeIncrement"))
        inc = values[i];
      else if (!strcmp (names[i], "TimeIncrementUnit"))
        unit = values[i];
    }
    if (inc && (v = parse_length (inc)) > 0.0)
      meta->frame_interval_s = v * time_unit_to_s (unit);
  }
  if (meta->size_x_um > 0.0) {
    g_free (meta->unit);
    meta->unit = g_strdup ("\xc2\xb5m");
  }
}

void
tiff_stack_meta_parse_description (TiffStackMeta * meta,
    const gchar * desc)
{
  if (desc == NULL)
    return;

  if (g_str_has_prefix (desc, "ImageJ=")) {
    gdouble spacing = 0.0, factor;

    parse_imagej (meta, desc, &spacing);
    if (spacing > 0.0 && tiff_stack_unit_to_um (meta->unit, &factor))
      meta->size_z_um = spacing * factor;
  } else if (strstr (desc, "<OME") != NULL) {
    static const GMarkupParser parser = { ome_start, NULL, NULL, NULL, NULL };
    OmeParse p = { meta, FALSE };
    GMarkupParseContext *ctx =
        g_markup_parse_context_new (&parser, 0, &p,
        NULL);
    const gchar *start = strstr (desc, "<OME");
    GError *err = NULL;

    /* Parse from the root element: GMarkup rejects some prologs (DOCTYPE). */
    if (!g_markup_parse_context_parse (ctx, start, -1, &err) && !p.done)
      g_debug ("OME-XML not understood: %s", err ? err->message : "?");
    g_clear_error (&err);
    g_markup_parse_context_free (ctx);
  }
}

void
tiff_stack_meta_read (TiffStackMeta * meta, TIFF * tif)
{
  const char *desc = NULL;
  float xres = 0.0f, yres = 0.0f;
  guint16 resunit = RESUNIT_INCH;
  gdouble factor;

  tiff_stack_meta_clear (meta);
  if (TIFFGetField (tif, TIFFTAG_IMAGEDESCRIPTION, &desc) && desc) {
    meta->description = g_utf8_make_valid (desc, -1);
    tiff_stack_meta_parse_description (meta, meta->description);
  }
  if (meta->is_ome && meta->size_x_um > 0.0)
    return;

  if (!TIFFGetField (tif, TIFFTAG_XRESOLUTION, &xres) || !(xres > 0.0f)
      || !isfinite (xres))
    return;
  if (!TIFFGetField (tif, TIFFTAG_YRESOLUTION, &yres) || !(yres > 0.0f)
      || !isfinite (yres))
    yres = xres;
  TIFFGetFieldDefaulted (tif, TIFFTAG_RESOLUTIONUNIT, &resunit);

  /* ImageJ writes pixels per description unit with ResolutionUnit = none. */
  if (meta->is_imagej && tiff_stack_unit_to_um (meta->unit, &factor)) {
    meta->size_x_um = factor / xres;
    meta->size_y_um = factor / yres;
  } else if (resunit == RESUNIT_INCH || resunit == RESUNIT_CENTIMETER) {
    factor = resunit == RESUNIT_INCH ? 25400.0 : 10000.0;
    meta->size_x_um = factor / xres;
    meta->size_y_um = factor / yres;
    g_free (meta->unit);
    meta->unit = g_strdup (resunit == RESUNIT_INCH ? "inch" : "cm");
  }
}
