/* gst-unet engine — the CUDA backend's on-device tiling: the ring of frame slots
 * behind backend.h's frame_* slots (upload, normalise, extract, stitch, download on
 * three streams, ordered by events), on the backend's one context (cuda-private.h).
 * The ops and tensors are cuda-backend.c's. */
#include "config.h"

#include "cuda-private.h"
#include "normalize-private.h"

#include <string.h>

/* ------------------------------------------------------ on-device tiling -- */

/* One frame in flight: its raw pixels and results, pinned on the host and on the
 * device, and the events that order upload (copy stream), compute (compute stream)
 * and download (download stream). Only the outputs the segmenter asked for are
 * allocated (frame_begin). */
typedef struct
{
  gint width, height, classes, prob_class;
  UnetPixelFormat format;
  gsize row_bytes;
  gboolean blend, labels;       /* labels: delivered; prob_class -1: no probability */
  gfloat lo, scale;             /* fixed normalisation ... */
  gboolean dev_norm;            /* ... or dev_params, computed on the device */
  float *dev_params;            /* (lo, scale) */
  guint8 *host_in;              /* pinned raw frame, dense rows */
  gsize host_in_cap;
  void *dev_in;
  gsize dev_in_cap;
  guint8 *dev_labels, *host_labels;     /* (H,W); host pinned */
  gsize dev_labels_cap, host_labels_cap;        /* bytes */
  float *dev_probs, *host_probs;        /* (H,W) */
  gsize dev_probs_cap, host_probs_cap;  /* bytes */
  float *dev_acc, *dev_wsum;    /* blending: (K,H,W), (H,W) */
  gsize acc_cap, wsum_cap;      /* bytes */
  guint8 *dst_labels;           /* where frame_wait copies to (may be NULL) */
  gfloat *dst_probs;
  cudaEvent_t uploaded, downloaded;
  gboolean pending;
} FrameSlot;

struct _UnetBackendFrames
{
  CudaCtx *ctx;
  gint depth;
  FrameSlot *slots;
  cudaStream_t d2h;             /* downloads */
  cudaEvent_t computed;         /* compute stream -> download stream, per download */
  /* frame statistics, on the copy stream only (so one set serves every slot) */
  guint32 *dev_hist;            /* 65536 bins */
  double *dev_partials, *dev_sums;
};

static gboolean
slot_idle (UnetBackendFrames *fr, FrameSlot *s, GError **error)
{
  (void) fr;
  /* never-recorded events complete at once */
  return CUDA_CHECK (cudaEventSynchronize (s->uploaded), error)
      && CUDA_CHECK (cudaEventSynchronize (s->downloaded), error);
}

void
cuda_frames_free (UnetBackendFrames *fr)
{
  if (fr == NULL)
    return;
  cudaSetDevice (fr->ctx->device);
  cudaStreamSynchronize (fr->ctx->copy_stream);
  cudaStreamSynchronize (fr->ctx->stream);
  if (fr->d2h != NULL)
    cudaStreamSynchronize (fr->d2h);
  for (gint i = 0; fr->slots != NULL && i < fr->depth; i++) {
    FrameSlot *s = &fr->slots[i];
    if (s->host_in != NULL)
      cudaFreeHost (s->host_in);
    if (s->host_labels != NULL)
      cudaFreeHost (s->host_labels);
    if (s->host_probs != NULL)
      cudaFreeHost (s->host_probs);
    cudaFree (s->dev_in);
    cudaFree (s->dev_labels);
    cudaFree (s->dev_probs);
    cudaFree (s->dev_acc);
    cudaFree (s->dev_wsum);
    cudaFree (s->dev_params);
    if (s->uploaded != NULL)
      cudaEventDestroy (s->uploaded);
    if (s->downloaded != NULL)
      cudaEventDestroy (s->downloaded);
  }
  g_free (fr->slots);
  cudaFree (fr->dev_hist);
  cudaFree (fr->dev_partials);
  cudaFree (fr->dev_sums);
  if (fr->computed != NULL)
    cudaEventDestroy (fr->computed);
  if (fr->d2h != NULL)
    cudaStreamDestroy (fr->d2h);
  g_free (fr);
}

UnetBackendFrames *
cuda_frames_new (UnetBackend *be, gint depth, GError **error)
{
  CudaCtx *ctx = cuda_ctx_of (be);
  UnetBackendFrames *fr = g_new0 (UnetBackendFrames, 1);

  fr->ctx = ctx;
  fr->depth = CLAMP (depth, 1, 8);
  fr->slots = g_new0 (FrameSlot, fr->depth);
  if (!cuda_use_device (ctx, error)
      || !CUDA_CHECK (cudaStreamCreateWithFlags (&fr->d2h, cudaStreamNonBlocking), error)
      || !CUDA_CHECK (cudaEventCreateWithFlags (&fr->computed, cudaEventDisableTiming), error)
      || !cuda_alloc ((void **) &fr->dev_hist, 65536 * sizeof (guint32), "histograms", error)
      || !cuda_alloc ((void **) &fr->dev_partials, UNET_CUDA_REDUCE_BLOCKS * 2
          * sizeof (double), "frame statistics", error)
      || !cuda_alloc ((void **) &fr->dev_sums, 2 * sizeof (double), "frame statistics",
          error))
    goto fail;
  for (gint i = 0; i < fr->depth; i++)
    if (!CUDA_CHECK (cudaEventCreateWithFlags (&fr->slots[i].uploaded,
                cudaEventDisableTiming), error)
        || !CUDA_CHECK (cudaEventCreateWithFlags (&fr->slots[i].downloaded,
                cudaEventDisableTiming), error)
        || !cuda_alloc ((void **) &fr->slots[i].dev_params, 2 * sizeof (float),
            "frame statistics", error))
      goto fail;
  return fr;

fail:
  cuda_frames_free (fr);
  return NULL;
}

/* The slot, with our device current on this thread. */
static FrameSlot *
frame_slot (UnetBackendFrames *fr, gint slot, GError **error)
{
  if (slot < 0 || slot >= fr->depth) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT, "frame slot %d of %d", slot,
        fr->depth);
    return NULL;
  }
  if (!cuda_use_device (fr->ctx, error))
    return NULL;
  return &fr->slots[slot];
}

/* Grows a pinned buffer of a slot that is idle (slot_idle was waited for). */
static gboolean
grow_pinned_buf (void **buf, gsize *cap, gsize need, GError **error)
{
  if (need <= *cap)
    return TRUE;
  if (*buf != NULL)
    cudaFreeHost (*buf);
  *buf = NULL;
  *cap = 0;
  if (!CUDA_CHECK (cudaMallocHost ((void **) buf, need), error))
    return FALSE;
  *cap = need;
  return TRUE;
}

gboolean
cuda_frame_upload (UnetBackendFrames *fr, gint slot, UnetPixelFormat format,
    gconstpointer data, gint width, gint height, gsize stride, GError **error)
{
  CudaCtx *ctx = fr->ctx;
  FrameSlot *s = frame_slot (fr, slot, error);
  gsize bpp = format == UNET_PIXEL_U8 ? 1 : format == UNET_PIXEL_U16 ? 2 : 4;
  gsize row = (gsize) width * bpp, bytes = row * height;

  if (s == NULL || !slot_idle (fr, s, error))
    return FALSE;
  if (width < 1 || height < 1 || stride < row || data == NULL) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "bad frame: %dx%d, stride %" G_GSIZE_FORMAT, width, height, stride);
    return FALSE;
  }
  if (!grow_pinned_buf ((void **) &s->host_in, &s->host_in_cap, bytes, error)
      /* the compute stream may still read the device copy of this slot's last frame */
      || (bytes > s->dev_in_cap && !CUDA_CHECK (cudaStreamSynchronize (ctx->stream), error))
      || !cuda_grow_device (&s->dev_in, &s->dev_in_cap, bytes, "frames", error))
    return FALSE;
  for (gint y = 0; y < height; y++)
    memcpy (s->host_in + (gsize) y * row, (const guint8 *) data + (gsize) y * stride, row);
  s->width = width;
  s->height = height;
  s->format = format;
  s->row_bytes = row;
  s->dev_norm = FALSE;
  s->lo = 0.0f;
  s->scale = 1.0f;
  return CUDA_CHECK (cudaMemcpyAsync (s->dev_in, s->host_in, bytes, cudaMemcpyHostToDevice,
          ctx->copy_stream), error)
      && CUDA_CHECK (cudaEventRecord (s->uploaded, ctx->copy_stream), error)
      && CUDA_CHECK (cudaStreamWaitEvent (ctx->stream, s->uploaded, 0), error);
}

/* Statistics on the copy stream right after the upload (they overlap the previous
 * frame's compute), parameters into the slot's dev_params, then the compute stream
 * waits for them. The host never waits. */
gboolean
cuda_frame_normalize (UnetBackendFrames *fr, gint slot, const UnetNormalization *norm,
    GError **error)
{
  CudaCtx *ctx = fr->ctx;
  FrameSlot *s = frame_slot (fr, slot, error);
  gdouble lo, scale;
  guint64 npix;

  if (s == NULL)
    return FALSE;
  if (unet_normalization_fixed_params (norm, &lo, &scale)) {
    s->dev_norm = FALSE;
    s->lo = (gfloat) lo;
    s->scale = (gfloat) scale;
    return TRUE;
  }
  if (s->format == UNET_PIXEL_F32) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "frame statistics on the device are for 8- and 16-bit frames");
    return FALSE;
  }
  npix = (guint64) s->width * s->height;
  if (norm->mode == UNET_NORM_PERCENTILE) {
    gint bins = s->format == UNET_PIXEL_U8 ? 256 : 65536;
    if (!CUDA_CHECK (cudaMemsetAsync (fr->dev_hist, 0, bins * sizeof (guint32),
                ctx->copy_stream), error)
        || !KERNEL_CHECK (unet_cuda_histogram (s->dev_in, (UnetCudaPixel) s->format,
                s->width, s->height, s->row_bytes, 1, fr->dev_hist, ctx->copy_stream), error)
        || !KERNEL_CHECK (unet_cuda_percentile_params (fr->dev_hist, bins, npix, norm->a,
                norm->b, s->dev_params, ctx->copy_stream), error))
      return FALSE;
  } else if (!KERNEL_CHECK (unet_cuda_frame_moments (s->dev_in, (UnetCudaPixel) s->format,
              s->width, s->height, s->row_bytes, 1, fr->dev_partials, fr->dev_sums,
              ctx->copy_stream), error)
      || !KERNEL_CHECK (unet_cuda_moments_params (fr->dev_sums, npix, s->dev_params,
              ctx->copy_stream), error)) {
    return FALSE;
  }
  s->dev_norm = TRUE;
  return CUDA_CHECK (cudaEventRecord (s->uploaded, ctx->copy_stream), error)
      && CUDA_CHECK (cudaStreamWaitEvent (ctx->stream, s->uploaded, 0), error);
}

/* Grows a device output buffer of an idle slot; the compute stream may still use the
 * old one (an earlier frame of this slot), so it is drained first. */
static gboolean
grow_output (CudaCtx *ctx, void **buf, gsize *cap, gsize need, GError **error)
{
  if (need <= *cap)
    return TRUE;
  return CUDA_CHECK (cudaStreamSynchronize (ctx->stream), error)
      && cuda_grow_device (buf, cap, need, "frame outputs", error);
}

gboolean
cuda_frame_begin (UnetBackendFrames *fr, gint slot, gint classes, gboolean labels,
    gint prob_class, gboolean blend, GError **error)
{
  CudaCtx *ctx = fr->ctx;
  FrameSlot *s = frame_slot (fr, slot, error);
  gsize n;

  if (s == NULL)
    return FALSE;
  if (classes < 1 || classes > 255 || prob_class < -1 || prob_class >= classes) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "%d classes, probability of class %d", classes, prob_class);
    return FALSE;
  }
  n = (gsize) s->width * s->height;
  s->classes = classes;
  s->labels = labels;
  s->prob_class = prob_class;
  s->blend = blend;
  /* the slot is idle (frame_upload waited for its last download) */
  if (labels
      && (!grow_pinned_buf ((void **) &s->host_labels, &s->host_labels_cap, n, error)
          || !grow_output (ctx, (void **) &s->dev_labels, &s->dev_labels_cap, n, error)))
    return FALSE;
  if (prob_class >= 0
      && (!grow_pinned_buf ((void **) &s->host_probs, &s->host_probs_cap, n * sizeof (float),
              error)
          || !grow_output (ctx, (void **) &s->dev_probs, &s->dev_probs_cap,
              n * sizeof (float), error)))
    return FALSE;
  if (blend) {
    gsize acc = n * classes * sizeof (float), wsum = n * sizeof (float);
    if (!grow_output (ctx, (void **) &s->dev_acc, &s->acc_cap, acc, error)
        || !grow_output (ctx, (void **) &s->dev_wsum, &s->wsum_cap, wsum, error))
      return FALSE;
    return CUDA_CHECK (cudaMemsetAsync (s->dev_acc, 0, acc, ctx->stream), error)
        && CUDA_CHECK (cudaMemsetAsync (s->dev_wsum, 0, wsum, ctx->stream), error);
  }
  return TRUE;
}

gboolean
cuda_frame_extract (UnetBackendFrames *fr, gint slot, const gint *origin_x,
    const gint *origin_y, gint n, gint b0, UnetBackendTensor *input, GError **error)
{
  CudaCtx *ctx = fr->ctx;
  FrameSlot *s = frame_slot (fr, slot, error);
  const UnetDims *d = &input->dims;
  gsize per_tile = (gsize) d->c * d->h * d->w;

  if (s == NULL)
    return FALSE;
  if (input->parent != NULL || cuda_tensor_data (input) == NULL || d->c != 1 || b0 < 0 || n < 1
      || b0 + n > d->n) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "tiles [%d, %d) do not fit a %dx%dx%dx%d input tensor", b0, b0 + n, d->n, d->c,
        d->h, d->w);
    return FALSE;
  }
  /* the kernel computes (v - offset) * scale, or with the device's parameters */
  return KERNEL_CHECK (unet_cuda_extract_tiles_params (s->dev_in, (UnetCudaPixel) s->format,
          s->width, s->height, s->row_bytes, 1, origin_x, origin_y, n, d->w, d->h, s->lo,
          s->scale, s->dev_norm ? s->dev_params : NULL,
          (guint8 *) cuda_tensor_data (input) + (gsize) b0 * per_tile * cuda_esize (ctx), ctx->dtype,
          ctx->stream), error);
}

gboolean
cuda_frame_stitch (UnetBackendFrames *fr, gint slot, UnetBackendTensor *logits, gint b0,
    gint n, const gint *blocks, gboolean blend, GError **error)
{
  CudaCtx *ctx = fr->ctx;
  FrameSlot *s = frame_slot (fr, slot, error);
  const UnetDims *d = &logits->dims;
  gsize per_tile = (gsize) d->c * d->h * d->w;
  g_autofree UnetCudaBlock *bl = NULL;
  const void *z;

  if (s == NULL)
    return FALSE;
  if (logits->parent != NULL || cuda_tensor_data (logits) == NULL || d->c != s->classes || b0 < 0
      || n < 1 || b0 + n > d->n || blend != s->blend) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "tiles [%d, %d) do not fit a %dx%dx%dx%d logits tensor", b0, b0 + n, d->n, d->c,
        d->h, d->w);
    return FALSE;
  }
  bl = g_new (UnetCudaBlock, n);
  for (gint t = 0; t < n; t++) {
    const gint *b = blocks + 6 * t;
    bl[t] = (UnetCudaBlock) { b[0], b[1], b[2], b[3], b[4], b[5] };
    if (b[0] < 0 || b[1] < 0 || b[4] < 0 || b[5] < 0 || b[0] + b[4] > d->w
        || b[1] + b[5] > d->h || b[2] < 0 || b[3] < 0 || b[2] + b[4] > s->width
        || b[3] + b[5] > s->height) {
      g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
          "tile block %d (%d,%d %dx%d -> %d,%d) is outside the tile or the frame", t, b[0],
          b[1], b[4], b[5], b[2], b[3]);
      return FALSE;
    }
  }
  z = (const guint8 *) cuda_tensor_data (logits) + (gsize) b0 * per_tile * cuda_esize (ctx);
  if (blend)
    return KERNEL_CHECK (unet_cuda_accumulate_blocks (z, ctx->dtype, n, d->h, d->w, d->c, bl,
            0.125f, s->dev_acc, s->dev_wsum, s->width, s->height, ctx->stream), error);
  /* without blending the stitch writes labels and probabilities now; blended ones
   * are finalised from acc / wsum at download time */
  return KERNEL_CHECK (unet_cuda_stitch_blocks (z, ctx->dtype, n, d->h, d->w, d->c, bl,
          s->labels ? s->dev_labels : NULL, s->width,
          s->prob_class >= 0 ? s->dev_probs : NULL, (gsize) s->width * sizeof (float),
          MAX (s->prob_class, 0), ctx->stream), error);
}

gboolean
cuda_frame_download (UnetBackendFrames *fr, gint slot, guint8 *labels, gfloat *probability,
    GError **error)
{
  CudaCtx *ctx = fr->ctx;
  FrameSlot *s = frame_slot (fr, slot, error);
  gsize n;

  if (s == NULL)
    return FALSE;
  if ((labels != NULL && !s->labels) || (probability != NULL && s->prob_class < 0)) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "frame slot %d: %s was not asked for in frame_begin", slot,
        labels != NULL && !s->labels ? "labels" : "a probability");
    return FALSE;
  }
  n = (gsize) s->width * s->height;
  if (s->blend
      && !KERNEL_CHECK (unet_cuda_finalize_blend (s->dev_acc, s->dev_wsum, s->width,
              s->height, s->classes, s->labels ? s->dev_labels : NULL, s->width,
              s->prob_class >= 0 ? s->dev_probs : NULL, (gsize) s->width * sizeof (float),
              MAX (s->prob_class, 0), ctx->stream), error))
    return FALSE;
  s->dst_labels = labels;
  s->dst_probs = probability;
  if (!CUDA_CHECK (cudaEventRecord (fr->computed, ctx->stream), error)
      || !CUDA_CHECK (cudaStreamWaitEvent (fr->d2h, fr->computed, 0), error)
      || (labels != NULL && !CUDA_CHECK (cudaMemcpyAsync (s->host_labels, s->dev_labels, n,
                  cudaMemcpyDeviceToHost, fr->d2h), error))
      || (probability != NULL && !CUDA_CHECK (cudaMemcpyAsync (s->host_probs, s->dev_probs,
                  n * sizeof (float), cudaMemcpyDeviceToHost, fr->d2h), error))
      || !CUDA_CHECK (cudaEventRecord (s->downloaded, fr->d2h), error))
    return FALSE;
  s->pending = TRUE;
  return TRUE;
}

gboolean
cuda_frame_wait (UnetBackendFrames *fr, gint slot, GError **error)
{
  FrameSlot *s = frame_slot (fr, slot, error);
  gsize n;

  if (s == NULL || !CUDA_CHECK (cudaEventSynchronize (s->downloaded), error))
    return FALSE;
  if (!s->pending)
    return TRUE;
  n = (gsize) s->width * s->height;
  if (s->dst_labels != NULL)
    memcpy (s->dst_labels, s->host_labels, n);
  if (s->dst_probs != NULL)
    memcpy (s->dst_probs, s->host_probs, n * sizeof (float));
  s->pending = FALSE;
  s->dst_labels = NULL;
  s->dst_probs = NULL;
  return TRUE;
}

