/* gst-unet — shared helpers of the tiffstack plugin
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * What both tiffstack elements share: the custom tags that carry physical pixel
 * size between them (GStreamer has no standard tags for it), the per-file libtiff
 * error/warning handlers, and the parsing of ImageJ / OME-XML image descriptions.
 */
#ifndef __GST_TIFF_STACK_COMMON_H__
#define __GST_TIFF_STACK_COMMON_H__

#include <gst/gst.h>
#include <gst/video/video.h>
#include "gstunetcaps.h"
#include <tiffio.h>

G_BEGIN_DECLS

/* Custom tags (registered by gst_tiff_stack_register_tags()):
 * sizes are G_TYPE_DOUBLE in micrometres, counts G_TYPE_UINT. */
#define GST_TIFF_STACK_TAG_PIXEL_SIZE_X "tiff-pixel-size-x"
#define GST_TIFF_STACK_TAG_PIXEL_SIZE_Y "tiff-pixel-size-y"
#define GST_TIFF_STACK_TAG_PIXEL_SIZE_Z "tiff-pixel-size-z"
#define GST_TIFF_STACK_TAG_PIXEL_UNIT   "tiff-pixel-unit"
#define GST_TIFF_STACK_TAG_CHANNELS     "tiff-channels"
#define GST_TIFF_STACK_TAG_SLICES       "tiff-slices"
#define GST_TIFF_STACK_TAG_FRAMES       "tiff-frames"
#define GST_TIFF_STACK_TAG_VALUE_OFFSET "tiff-value-offset"
#define GST_TIFF_STACK_TAG_FRAME_INTERVAL "tiff-frame-interval"

void gst_tiff_stack_register_tags (void);

/* Per-file libtiff diagnostics. libtiff calls the handlers with this as user
 * data; the last error is kept so that a GST_ELEMENT_ERROR can quote it. */
typedef struct
{
  GstObject *owner;             /* for debug logs; not owned */
  gchar *last_error;            /* latest error (or first warning) */
} GstTiffStackDiag;

void gst_tiff_stack_diag_clear (GstTiffStackDiag * diag);
/* The last libtiff error, or @fallback when libtiff said nothing. */
const gchar *gst_tiff_stack_diag_message (GstTiffStackDiag * diag,
    const gchar * fallback);
/* Open options with the per-file handlers and a single-allocation cap. Free
 * with TIFFOpenOptionsFree() once the file is open. */
TIFFOpenOptions *gst_tiff_stack_open_options (GstTiffStackDiag * diag,
    guint64 max_single_alloc);

/* Metadata of a stack, from the tags and description of its first page. */
typedef struct
{
  gdouble size_x_um, size_y_um, size_z_um;      /* 0 when unknown */
  gchar *unit;                  /* unit as written in the file, or NULL */
  gchar *description;           /* ImageDescription of page 0, or NULL */
  gboolean is_imagej, is_ome;
  guint channels, slices, frames;       /* 0 when unknown */
  gdouble frame_interval_s;     /* time between time points, 0 when unknown */
  gchar dim_order[6];           /* "XYCZT" (ImageJ) or OME DimensionOrder */
} GstTiffStackMeta;

void gst_tiff_stack_meta_clear (GstTiffStackMeta * meta);
/* Reads the current directory of @tif (page 0). Never fails: what cannot be
 * understood is left unknown. */
void gst_tiff_stack_meta_read (GstTiffStackMeta * meta, TIFF * tif);
/* Parses an ImageJ or OME-XML description into @meta (exposed for tests). */
void gst_tiff_stack_meta_parse_description (GstTiffStackMeta * meta,
    const gchar * description);
GstTagList *gst_tiff_stack_meta_to_tags (const GstTiffStackMeta * meta);

/* Micrometres per @unit ("micron", "um", "µm", "nm", "mm", "cm", "m",
 * "inch", ...); FALSE when the unit is unknown or not a length. */
gboolean gst_tiff_stack_unit_to_um (const gchar * unit, gdouble * um_per_unit);

/* Frame formats (parsed with the shared gstunetcaps helpers). */
#define GST_TIFF_STACK_CAPS \
  GST_VIDEO_CAPS_MAKE ("{ GRAY8, GRAY16_LE, GRAY32_LE, GRAY32F, RGB, " \
      GST_UNET_MULTI_CHANNEL_FORMATS " }")

G_END_DECLS

#endif
