/* gst-unet — a buffer pool whose allocations may fail
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * GstBufferPool's default allocation goes through the system allocator, which
 * uses g_malloc(): a failed allocation aborts the process. A page size comes
 * from the file (up to max-page-size, 1 GiB by default), so tiffstacksrc takes
 * its frames from this pool instead: each buffer is g_try_malloc()ed, and an
 * allocation that fails is GST_FLOW_ERROR, which the element reports as an
 * error naming the page. The pool preallocates nothing (min-buffers 0), so
 * configuring it for a large page never allocates either.
 */
#ifndef __GST_TIFF_STACK_POOL_H__
#define __GST_TIFF_STACK_POOL_H__

#include <gst/gst.h>

G_BEGIN_DECLS

#define GST_TYPE_TIFF_STACK_POOL (gst_tiff_stack_pool_get_type ())
G_DECLARE_FINAL_TYPE (GstTiffStackPool, gst_tiff_stack_pool, GST,
    TIFF_STACK_POOL, GstBufferPool);

GstBufferPool *gst_tiff_stack_pool_new (void);

G_END_DECLS

#endif
