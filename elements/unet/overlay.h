/* gst-unet — the overlay picture of output=overlay
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Renders a segmented frame for viewing: the input in gray, stretched to 0..255
 * by its own minimum and maximum, with every non-background class blended in
 * its colour. Plain pixel work on mapped frames: no element state, no caps.
 */
#ifndef __GST_UNET_OVERLAY_H__
#define __GST_UNET_OVERLAY_H__

#include "gstunetcaps.h"

G_BEGIN_DECLS

/* Number of distinct class colours; class k > 0 takes colour k mod this (a
 * multiple of it takes colour 1), class 0 (background) stays gray. */
#define GST_UNET_OVERLAY_COLOURS 8

/* The colour of class @k (RGB), for k > 0. */
const guint8 *gst_unet_overlay_class_colour (guint8 k);

/* Fills @rgba (@width × @height RGBA pixels, rows @rgba_stride bytes apart)
 * from @in (pixels of @format: GRAY8, GRAY16_LE, GRAY32F, RGB or RGBA, rows
 * @in_stride bytes apart) and @labels (@width × @height class indices, rows
 * packed). Gray level g = (v - min) · 255 / (max - min) over the frame's
 * non-NaN values (0 when the frame is flat; NaN pixels are 0); an RGB(A)
 * pixel's v is the mean of R, G and B (alpha is not used). A labelled pixel is
 * (1 - @alpha) · g + @alpha · colour, rounded; alpha of the output is 255. */
void gst_unet_overlay_render (GstUnetFormat format, const guint8 * in,
    gsize in_stride, guint32 width, guint32 height, const guint8 * labels,
    gdouble alpha, guint8 * rgba, gsize rgba_stride);

G_END_DECLS

#endif
