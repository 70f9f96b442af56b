/* gst-unet — tiffstacksrc: a multi-page (Big)TIFF as a stream of frames
 * SPDX-License-Identifier: LGPL-2.1-or-later
 */
#ifndef __GST_TIFF_STACK_SRC_H__
#define __GST_TIFF_STACK_SRC_H__

#include <gst/gst.h>
#include <gst/base/gstpushsrc.h>

G_BEGIN_DECLS

#define GST_TYPE_TIFF_STACK_SRC (gst_tiff_stack_src_get_type ())
G_DECLARE_FINAL_TYPE (GstTiffStackSrc, gst_tiff_stack_src, GST,
    TIFF_STACK_SRC, GstPushSrc);

GST_ELEMENT_REGISTER_DECLARE (tiffstacksrc);

G_END_DECLS

#endif
