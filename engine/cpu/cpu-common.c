/* gst-unet engine — what the CPU backend's files share (cpu-private.h): the thread
 * policy, the allocator and tensor addressing of the one context. Both
 * cpu-backend.c and cpu-train.c call these, and cpu-backend.c calls cpu-train.c:
 * the backend's files depend on each other one way only. */
#include "config.h"

#include "cpu-private.h"

#if HAVE_OPENMP
#include <omp.h>
#endif

void
cpu_set_threads (CpuCtx *ctx)
{
#if HAVE_OPENMP
  omp_set_num_threads (ctx->threads);
#endif
}

gpointer
cpu_alloc (gsize bytes, GError **error)
{
  gpointer p = NULL;
  if (bytes == 0)
    bytes = ALIGN;
  if (posix_memalign (&p, 4096, bytes) != 0) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_OUT_OF_MEMORY,
        "cannot allocate %" G_GSIZE_FORMAT " bytes for the CPU backend", bytes);
    return NULL;
  }
  return p;
}

static dnnl_format_tag_t
cpu_block_tag (gint bs)
{
  return bs == 16 ? dnnl_aBcd16b : bs == 8 ? dnnl_aBcd8b : dnnl_abcd;
}

guint8 *
cpu_tensor_data (UnetBackendTensor *t)
{
  return t->parent ? t->parent->data : t->data;
}

gint
cpu_tensor_block (const UnetBackendTensor *t)
{
  const UnetBackendTensor *root = t->parent ? t->parent : t;
  return root->md.format_desc.blocking.inner_nblks > 0
      ? (gint) root->md.format_desc.blocking.inner_blks[0] : 1;
}

/* Image-at-a-time addressing of a tensor. Image b of a channel view [c0, c0+c)
 * of a nchw or nChw{8,16}c (c0 a multiple of the block) parent is itself a dense
 * N=1 tensor of the same layout starting c0*H*W elements into the parent's image
 * b: channel planes (nchw) and channel blocks are contiguous within an image. oneDNN's
 * fast convolutions reject strided submemory descriptors but take these, so a
 * transposed convolution writes into half of a concat buffer with no copy. */
gboolean
cpu_image (UnetBackendTensor *t, dnnl_memory_desc_t *md, guint8 **base, gsize *stride,
    GError **error)
{
  UnetBackendTensor *root = t->parent ? t->parent : t;
  dnnl_dims_t d = { 1, t->dims.c, t->dims.h, t->dims.w };
  gsize elt = root->md.data_type == dnnl_bf16 ? 2 : 4;
  gint c0 = t->parent ? (gint) t->md.offset0 / (t->dims.h * t->dims.w) : 0;

  if (cpu_tensor_data (t) == NULL) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_FAILED,
        "CPU backend: tensor used before it was bound to an arena");
    return FALSE;
  }
  DNNL_TRY (dnnl_memory_desc_init_by_tag (md, 4, d, root->md.data_type,
          cpu_block_tag (cpu_tensor_block (t))));
  *stride = dnnl_memory_desc_get_size (&root->md) / root->dims.n;
  *base = cpu_tensor_data (t) + (gsize) c0 * t->dims.h * t->dims.w * elt;
  return TRUE;
fail:
  return FALSE;
}
