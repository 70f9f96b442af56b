/* gst-unet — tiffstacksink: frames to a multi-page (Big)TIFF, one page per frame
 * SPDX-License-Identifier: LGPL-2.1-or-later
 */
#ifndef __GST_TIFF_STACK_SINK_H__
#define __GST_TIFF_STACK_SINK_H__

#include <gst/gst.h>
#include <gst/base/gstbasesink.h>

G_BEGIN_DECLS

#define GST_TYPE_TIFF_STACK_SINK (gst_tiff_stack_sink_get_type ())
G_DECLARE_FINAL_TYPE (GstTiffStackSink, gst_tiff_stack_sink, GST,
    TIFF_STACK_SINK, GstBaseSink);

GST_ELEMENT_REGISTER_DECLARE (tiffstacksink);

G_END_DECLS

#endif
