/* gst-unet — raw video caps and frames shared by the gst-unet elements
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * GStreamer 1.22's GstVideoFormat has no GRAY32F and no 32-bit unsigned gray
 * (named here GRAY32_LE, after GRAY16_LE), so the elements cannot use
 * GstVideoInfo / GstVideoFrame and parse `video/x-raw` caps themselves. Frames
 * have one plane whose rows are at the default stride (width × bytes per pixel
 * rounded up to 4, as GStreamer's) unless a GstVideoMeta on the buffer gives
 * another stride or offset. Each element still declares its own pad template
 * caps; these helpers only parse and map.
 */
#ifndef __GST_UNET_CAPS_H__
#define __GST_UNET_CAPS_H__

#include <gst/gst.h>
#include <gst/video/video.h>

G_BEGIN_DECLS

typedef enum
{
  GST_UNET_FORMAT_GRAY8,
  GST_UNET_FORMAT_GRAY16_LE,
  GST_UNET_FORMAT_GRAY32F,
  GST_UNET_FORMAT_RGB,
  GST_UNET_FORMAT_RGBA,
  GST_UNET_FORMAT_GRAY32_LE,    /* 32-bit unsigned gray (instance ids) */
  GST_UNET_FORMAT_UNKNOWN,
} GstUnetFormat;

/* Multi-channel frames (fluorescence channels of a hyperstack): C planes of a
 * gray format one after the other, each `height` rows of `stride` bytes; the
 * caps format is the gray format's name with "_C<C>" appended, C = 2..8
 * (e.g. "GRAY16_LE_C2"). No GStreamer element outside this project takes them,
 * so they can never be mistaken for a single gray plane. */
#define GST_UNET_MAX_CHANNELS 8
#define GST_UNET_MULTI_CHANNEL_FORMATS \
  "GRAY8_C2, GRAY8_C3, GRAY8_C4, GRAY8_C5, GRAY8_C6, GRAY8_C7, GRAY8_C8, " \
  "GRAY16_LE_C2, GRAY16_LE_C3, GRAY16_LE_C4, GRAY16_LE_C5, GRAY16_LE_C6, " \
  "GRAY16_LE_C7, GRAY16_LE_C8, GRAY32F_C2, GRAY32F_C3, GRAY32F_C4, " \
  "GRAY32F_C5, GRAY32F_C6, GRAY32F_C7, GRAY32F_C8"

typedef struct
{
  GstUnetFormat format;
  guint32 width, height;
  guint bpp;                    /* bytes per pixel (of one plane) */
  guint channels;               /* planes: 1, or 2..8 for the _C<n> formats */
  gsize stride, size;           /* default stride and frame size (all planes) */
  gint fps_n, fps_d, par_n, par_d;
} GstUnetLayout;

/* The caps name of @format ("unknown" for GST_UNET_FORMAT_UNKNOWN). */
const gchar *gst_unet_format_name (GstUnetFormat format);
/* GST_UNET_FORMAT_UNKNOWN when @name is NULL or not in the table. */
GstUnetFormat gst_unet_format_from_name (const gchar * name);
/* Bytes per pixel; 0 for GST_UNET_FORMAT_UNKNOWN. */
guint gst_unet_format_bpp (GstUnetFormat format);
/* Row stride GStreamer uses for a packed plane: @width × @bpp rounded up to 4. */
guint64 gst_unet_default_stride (guint64 width, guint bpp);

/* Sets format, size, bpp, default stride and frame size (a frame rate or pixel
 * aspect ratio left at 0 becomes 0/1 and 1/1), one plane. FALSE for an unknown
 * format or when the frame would not fit in memory sizes (absurd dimensions). */
gboolean gst_unet_layout_set (GstUnetLayout * layout, GstUnetFormat format,
    guint32 width, guint32 height);
/* The same with @channels planes (GRAY8, GRAY16_LE and GRAY32F only for more
 * than one). */
gboolean gst_unet_layout_set_planes (GstUnetLayout * layout,
    GstUnetFormat format, guint channels, guint32 width, guint32 height);
/* The caps format name of @layout ("GRAY16_LE_C2" for 2 planes); free it. */
gchar *gst_unet_layout_format_name (const GstUnetLayout * layout);
/* Parses fixed `video/x-raw` caps (format, width, height, framerate and
 * pixel-aspect-ratio, the last two optional). FALSE when not fixed, a field is
 * missing, the format is not in the table or the size is invalid. */
gboolean gst_unet_layout_from_caps (GstUnetLayout * layout,
    const GstCaps * caps);
GstCaps *gst_unet_layout_to_caps (const GstUnetLayout * layout);
gboolean gst_unet_layout_equal (const GstUnetLayout * a,
    const GstUnetLayout * b);

/* A mapped frame: first row and stride. */
typedef struct
{
  GstBuffer *buf;
  GstMapInfo map;
  guint8 *data;                 /* first row */
  gsize stride;
} GstUnetFrame;

/* Maps @buf as a frame of @layout, honouring a GstVideoMeta stride/offset
 * (planes of a multi-channel frame follow each other at stride × height).
 * FALSE when the buffer cannot be mapped or is too small for the frame. */
gboolean gst_unet_frame_map (GstUnetFrame * frame, const GstUnetLayout * layout,
    GstBuffer * buf, GstMapFlags flags);
void gst_unet_frame_unmap (GstUnetFrame * frame);

G_END_DECLS

#endif
