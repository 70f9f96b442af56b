/* gst-unet engine — what the CUDA backend's files share (cuda-private.h): the
 * device, the allocator, tensor addressing, descriptors and the workspace of the one
 * context. Everything in engine/cuda calls these; they call nothing of engine/cuda
 * but the checks, so the backend's files depend on each other one way only:
 * cuda-backend.c -> cuda-frames.c, cuda-augment.c, cuda-step.c -> cuda-train-ops.c
 * -> here. */
#include "config.h"

#include "cuda-private.h"

/* The CUDA runtime's current device is per host thread, and GStreamer calls the
 * backend from whatever thread streams: every entry point that touches the device
 * selects ours first (cheap: a thread-local store when it is already current), or
 * gpu-id != 0 would silently run on device 0. */
gboolean
cuda_use_device (const CudaCtx *ctx, GError **error)
{
  return CUDA_CHECK (cudaSetDevice (ctx->device), error);
}

gboolean
cuda_alloc (void **ptr, gsize bytes, const gchar *what, GError **error)
{
  cudaError_t err = cudaMalloc (ptr, bytes > 0 ? bytes : 1);
  if (err != cudaSuccess) {
    gsize free_b = 0, total_b = 0;
    (void) cudaGetLastError ();
    cudaMemGetInfo (&free_b, &total_b);
    *ptr = NULL;
    g_set_error (error, UNET_ERROR,
        err == cudaErrorMemoryAllocation ? UNET_ERROR_OUT_OF_MEMORY : UNET_ERROR_BACKEND,
        "could not allocate %.1f MiB of GPU memory for %s (%.1f of %.1f MiB free): %s; "
        "use a smaller tile-size or batch-size", bytes / 1048576.0, what,
        free_b / 1048576.0, total_b / 1048576.0, cudaGetErrorString (err));
    return FALSE;
  }
  return TRUE;
}

/* Grows a device buffer (never shrinks); only called while planning or on the
 * first frame of a shape, never in the steady state. */
gboolean
cuda_grow_device (void **buf, gsize *have, gsize need, const gchar *what, GError **error)
{
  if (need <= *have)
    return TRUE;
  if (*buf != NULL) {
    cudaFree (*buf);
    *buf = NULL;
    *have = 0;
  }
  if (!cuda_alloc (buf, need, what, error))
    return FALSE;
  *have = need;
  return TRUE;
}

/* Start of the tensor's first channel (views: the parent's memory + offset). */
void *
cuda_tensor_data (const UnetBackendTensor *t)
{
  if (t->parent != NULL)
    return (guint8 *) cuda_tensor_data (t->parent) + (gsize) t->c_offset * cuda_esize (t->ctx);
  return t->arena != NULL ? (guint8 *) t->arena->data + t->offset : NULL;
}

gsize
cuda_tensor_pixels (const UnetBackendTensor *t)
{
  return (gsize) t->dims.n * t->dims.h * t->dims.w;
}

/* The workspace is allocated once, at the first convolution, with
 * $UNET_CUDA_WORKSPACE_MB (default 512 MiB) or a quarter of the free memory,
 * whichever is smaller; algorithms needing more are not chosen. */
gboolean
cuda_ensure_workspace (CudaCtx *ctx, GError **error)
{
  gsize want = (gsize) DEFAULT_WORKSPACE_MIB << 20, free_b = 0, total_b = 0;
  const gchar *env = g_getenv ("UNET_CUDA_WORKSPACE_MB");

  if (ctx->workspace_done)
    return TRUE;
  if (env != NULL && *env != '\0')
    want = (gsize) g_ascii_strtoull (env, NULL, 10) << 20;
  if (!CUDA_CHECK (cudaMemGetInfo (&free_b, &total_b), error))
    return FALSE;
  if (want > free_b / 4)
    want = free_b / 4;
  if (want > 0 && !cuda_alloc (&ctx->workspace, want, "the cuDNN workspace", error))
    return FALSE;
  ctx->workspace_bytes = want;
  ctx->workspace_done = TRUE;
  return TRUE;
}

/* Elements between neighbouring pixels. */
gint
cuda_tensor_stride (const UnetBackendTensor *t)
{
  return t->parent != NULL ? t->parent->dims.c : t->dims.c;
}

gboolean
cuda_set_nhwc_desc (CudaCtx *ctx, cudnnTensorDescriptor_t desc, const UnetDims *dims, gint stride,
    GError **error)
{
  /* NHWC with a pixel stride of `stride` elements (== c when dense); the strides are
   * int: tensor_new refused anything larger */
  if ((guint64) dims->n * dims->h * dims->w * stride > (guint64) G_MAXINT32) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_OUT_OF_MEMORY,
        "activation %d x %d x %d x %d is too large for cuDNN (2^31 elements)", dims->n,
        stride, dims->h, dims->w);
    return FALSE;
  }
  return CUDNN_CHECK (cudnnSetTensor4dDescriptorEx (desc, ctx->cudnn_dtype, dims->n, dims->c,
          dims->h, dims->w, dims->h * dims->w * stride, 1, dims->w * stride, stride), error);
}
