/* gst-unet — a buffer pool whose allocations may fail (see the header)
 * SPDX-License-Identifier: LGPL-2.1-or-later
 */
#include "gsttiffstackpool.h"

struct _GstTiffStackPool
{
  GstBufferPool parent;
  guint size;                   /* bytes of one buffer, from the config */
};

G_DEFINE_TYPE (GstTiffStackPool, gst_tiff_stack_pool, GST_TYPE_BUFFER_POOL);

static gboolean
gst_tiff_stack_pool_set_config (GstBufferPool * pool, GstStructure * config)
{
  GstTiffStackPool *self = GST_TIFF_STACK_POOL (pool);
  guint size, min, max;

  if (!gst_buffer_pool_config_get_params (config, NULL, &size, &min, &max)
      || size == 0)
    return FALSE;
  self->size = size;
  return GST_BUFFER_POOL_CLASS (gst_tiff_stack_pool_parent_class)->set_config
      (pool, config);
}

static GstFlowReturn
gst_tiff_stack_pool_alloc_buffer (GstBufferPool * pool, GstBuffer ** buffer,
    GstBufferPoolAcquireParams * params)
{
  GstTiffStackPool *self = GST_TIFF_STACK_POOL (pool);
  gpointer data = g_try_malloc (self->size);

  (void) params;
  if (data == NULL) {
    GST_WARNING_OBJECT (pool, "cannot allocate a buffer of %u bytes",
        self->size);
    return GST_FLOW_ERROR;
  }
  *buffer = gst_buffer_new_wrapped_full (0, data, self->size, 0, self->size,
      data, g_free);
  return GST_FLOW_OK;
}

static void
gst_tiff_stack_pool_class_init (GstTiffStackPoolClass * klass)
{
  GstBufferPoolClass *pool_class = GST_BUFFER_POOL_CLASS (klass);

  pool_class->set_config = gst_tiff_stack_pool_set_config;
  pool_class->alloc_buffer = gst_tiff_stack_pool_alloc_buffer;
}

static void
gst_tiff_stack_pool_init (GstTiffStackPool * self)
{
  (void) self;
}

GstBufferPool *
gst_tiff_stack_pool_new (void)
{
  return g_object_new (GST_TYPE_TIFF_STACK_POOL, NULL);
}
