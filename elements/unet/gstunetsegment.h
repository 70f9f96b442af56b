/* gst-unet — unetsegment: overlap-tile U-Net segmentation of gray frames.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 */
#pragma once

#include <gst/gst.h>
#include <gst/base/gstbasetransform.h>

G_BEGIN_DECLS

#define GST_TYPE_UNET_SEGMENT (gst_unet_segment_get_type ())
G_DECLARE_FINAL_TYPE (GstUnetSegment, gst_unet_segment, GST, UNET_SEGMENT,
    GstBaseTransform);

GST_ELEMENT_REGISTER_DECLARE (unetsegment);

#define GST_TYPE_UNET_SEGMENT_OUTPUT (gst_unet_segment_output_get_type ())
GType gst_unet_segment_output_get_type (void);
#define GST_TYPE_UNET_SEGMENT_NORMALIZATION (gst_unet_segment_normalization_get_type ())
GType gst_unet_segment_normalization_get_type (void);

G_END_DECLS
