/* gst-unet — what a TIFF stack's first page says about the stack
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Physical pixel size (XResolution/YResolution + ResolutionUnit, ImageJ
 * `unit`/`spacing`, OME `PhysicalSizeX/Y/Z`), hyperstack axes and frame
 * interval, parsed from the tags and the ImageJ or OME-XML ImageDescription of
 * page 0. Plain GLib + libtiff; what cannot be understood is left unknown.
 */
#ifndef __TIFF_META_H__
#define __TIFF_META_H__

#include <glib.h>
#include <tiffio.h>

G_BEGIN_DECLS

typedef struct
{
  gdouble size_x_um, size_y_um, size_z_um;      /* 0 when unknown */
  gchar *unit;                  /* unit as written in the file, or NULL */
  gchar *description;           /* ImageDescription of page 0, or NULL */
  gboolean is_imagej, is_ome;
  guint channels, slices, frames;       /* 0 when unknown */
  gdouble frame_interval_s;     /* time between time points, 0 when unknown */
  gchar dim_order[6];           /* "XYCZT" (ImageJ) or OME DimensionOrder */
} TiffStackMeta;

void tiff_stack_meta_clear (TiffStackMeta * meta);
/* Reads the current directory of @tif (page 0). Never fails: what cannot be
 * understood is left unknown. */
void tiff_stack_meta_read (TiffStackMeta * meta, TIFF * tif);
/* Parses an ImageJ or OME-XML description into @meta. */
void tiff_stack_meta_parse_description (TiffStackMeta * meta,
    const gchar * description);

/* Micrometres per @unit ("micron", "um", "µm", "nm", "mm", "cm", "m",
 * "inch", ...); FALSE when the unit is unknown or not a length. */
gboolean tiff_stack_unit_to_um (const gchar * unit, gdouble * um_per_unit);

G_END_DECLS

#endif
