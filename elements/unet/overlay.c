/* gst-unet — the overlay picture of output=overlay
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Class colours and alpha blending of labels over the gray-stretched input
 * (see overlay.h); used by unetsegment for output=overlay.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include "overlay.h"

/* Class colours of the overlay (entry 0 is never used: background stays gray). */
static const guint8 class_colours[GST_UNET_OVERLAY_COLOURS][3] = {
  {0, 0, 0}, {255, 64, 64}, {64, 255, 64}, {64, 128, 255}, {255, 255, 0},
  {255, 0, 255}, {0, 255, 255}, {255, 128, 0},
};

const guint8 *
gst_unet_overlay_class_colour (guint8 k)
{
  if (k % GST_UNET_OVERLAY_COLOURS == 0)
    return class_colours[1];
  return class_colours[k % GST_UNET_OVERLAY_COLOURS];
}

/* The value pixel @x of @row stands for: the sample, or the mean of R, G, B. */
static inline gdouble
pixel_value (GstUnetFormat f, const guint8 * row, guint32 x)
{
  switch (f) {
    case GST_UNET_FORMAT_GRAY8:
      return row[x];
    case GST_UNET_FORMAT_GRAY16_LE:
      return ((const guint16 *) row)[x];
    case GST_UNET_FORMAT_RGB:
      return (row[3 * x] + row[3 * x + 1] + row[3 * x + 2]) / 3.0;
    case GST_UNET_FORMAT_RGBA:
      return (row[4 * x] + row[4 * x + 1] + row[4 * x + 2]) / 3.0;
    default:
      return ((const gfloat *) row)[x];
  }
}

void
gst_unet_overlay_render (GstUnetFormat format, const guint8 * in,
    gsize in_stride, guint32 width, guint32 height, const guint8 * labels,
    gdouble alpha, guint8 * rgba, gsize rgba_stride)
{
  gdouble lo = G_MAXDOUBLE, hi = -G_MAXDOUBLE, scale;
  guint32 x, y;

  for (y = 0; y < height; y++) {
    const guint8 *row = in + (gsize) y * in_stride;
    for (x = 0; x < width; x++) {
      gdouble v = pixel_value (format, row, x);
      if (v == v) {
        lo = MIN (lo, v);
        hi = MAX (hi, v);
      }
    }
  }
  scale = hi > lo ? 255.0 / (hi - lo) : 0.0;
  for (y = 0; y < height; y++) {
    const guint8 *row = in + (gsize) y * in_stride;
    guint8 *o = rgba + (gsize) y * rgba_stride;
    for (x = 0; x < width; x++) {
      gdouble v = pixel_value (format, row, x), g = v == v ? (v - lo) * scale :
          0.0;
      guint8 k = labels[(gsize) y * width + x];
      gdouble a = k ? alpha : 0.0;
      const guint8 *c = k ? gst_unet_overlay_class_colour (k) : class_colours[0];
      o[4 * x + 0] = (guint8) CLAMP ((1 - a) * g + a * c[0] + 0.5, 0, 255);
      o[4 * x + 1] = (guint8) CLAMP ((1 - a) * g + a * c[1] + 0.5, 0, 255);
      o[4 * x + 2] = (guint8) CLAMP ((1 - a) * g + a * c[2] + 0.5, 0, 255);
      o[4 * x + 3] = 255;
    }
  }
}
