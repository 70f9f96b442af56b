/* gst-unet — the stream contract of the tiffstack plugin
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * What both tiffstack elements put on or read from the stream: the custom tags
 * that carry physical pixel size and stack axes between them (GStreamer has no
 * standard tags for them) and the frame formats of their caps.
 */
#ifndef __GST_TIFF_STACK_TAGS_H__
#define __GST_TIFF_STACK_TAGS_H__

#include <gst/gst.h>
#include <gst/video/video.h>
#include "gstunetcaps.h"
#include "tiff-meta.h"

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

/* @meta as tags (sizes, unit, axes, frame interval, description). */
GstTagList *gst_tiff_stack_meta_to_tags (const TiffStackMeta * meta);

/* Frame formats (parsed with the shared gstunetcaps helpers). */
#define GST_TIFF_STACK_CAPS \
  GST_VIDEO_CAPS_MAKE ("{ GRAY8, GRAY16_LE, GRAY32_LE, GRAY32F, RGB, " \
      GST_UNET_MULTI_CHANNEL_FORMATS " }")

G_END_DECLS

#endif
