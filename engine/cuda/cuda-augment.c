/* gst-unet engine — training samples resident on the CUDA device and the batches
 * augmented from them: backend.h's sample_new, sample_free and batch_augment.
 *
 * A sample is uploaded once, when the trainer adds its pair: the normalised image
 * (C, H, W) f32, the weight map (H, W) f32 and the class map (H, W) as u8 (255 the
 * ignore label, as the loss reads it), in one allocation and one copy. Samples share
 * a budget, a quarter of the device's memory (UNET_CUDA_SAMPLE_MIB overrides it,
 * tests): the rest is the network's. Past it sample_new fails with
 * UNET_ERROR_OUT_OF_MEMORY and the trainer goes back to augmenting on the host.
 *
 * Per step, batch_augment turns the host's draws (training.h's UnetAugmentDraw) into
 * one UnetCudaAugSample per batch entry plus the elastic grids, packs them into
 * pinned staging and uploads them in one copy — the step's only upload — then
 * unet_cuda_augment_batch writes the net input and the loss targets (ctx->batch_dev:
 * weights f32 then labels u8, the layout of the uploaded targets of cuda-step.c) on
 * the compute stream. Buffers grow on the first batch of a shape, never per step.
 */
#include "config.h"

#include "cuda-private.h"

#include <math.h>
#include <string.h>

#define MAX_GRID 64

struct _UnetBackendSample
{
  CudaCtx *ctx;
  void *mem;                    /* image, weights, labels */
  gsize bytes;
  gint channels, width, height;
  float *image;
  float *weights;               /* NULL: none (1 on labelled pixels) */
  guint8 *labels;
};

static gsize
align_up (gsize n)
{
  return (n + CUDA_ALIGN - 1) / CUDA_ALIGN * CUDA_ALIGN;
}

static gsize
sample_budget (CudaCtx *ctx)
{
  if (ctx->samples_budget == 0) {
    const gchar *env = g_getenv ("UNET_CUDA_SAMPLE_MIB");
    gsize free_b = 0, total_b = 0;
    if (env != NULL && *env != '\0')
      ctx->samples_budget = (gsize) g_ascii_strtoull (env, NULL, 10) << 20;
    else if (cudaMemGetInfo (&free_b, &total_b) == cudaSuccess)
      ctx->samples_budget = total_b / 4;
    else
      (void) cudaGetLastError ();
    ctx->samples_budget = MAX (ctx->samples_budget, 1);
  }
  return ctx->samples_budget;
}

/* The class map as u8 after the image and weights in `host`, checked as the loss
 * checks a batch (cuda-step.c's pack_batch). */
static gboolean
pack_sample (guint8 *host, const UnetBackendSample *s, const gfloat *image,
    const gint32 *class_map, const gfloat *weights, gint classes, GError **error)
{
  const gsize plane = (gsize) s->width * s->height;
  const gint n_labels = MAX (classes, 2);
  guint8 *lab = host + ((guint8 *) s->labels - (guint8 *) s->mem);

  memcpy (host, image, plane * s->channels * sizeof (gfloat));
  if (weights != NULL) {
    for (gsize i = 0; i < plane; i++)
      if (!(weights[i] >= 0.0f) || !isfinite (weights[i])) {
        g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
            "pixel weight %g at index %" G_GSIZE_FORMAT " is not a finite value >= 0",
            weights[i], i);
        return FALSE;
      }
    memcpy (host + ((guint8 *) s->weights - (guint8 *) s->mem), weights,
        plane * sizeof (gfloat));
  }
  for (gsize i = 0; i < plane; i++) {
    const gint32 l = class_map[i];
    if (l != UNET_LABEL_IGNORE && (l < 0 || l >= n_labels)) {
      g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
          "label %d at (%d, %d) is not a class of a %d-class model", l,
          (gint) (i % s->width), (gint) (i / s->width), classes);
      return FALSE;
    }
    lab[i] = l == UNET_LABEL_IGNORE ? CUDA_LABEL_IGNORE_U8 : (guint8) l;
  }
  return TRUE;
}

UnetBackendSample *
cuda_sample_new (UnetBackend *be, const gfloat *image, gint channels,
    const gint32 *class_map, const gfloat *weights, gint width, gint height, gint classes,
    GError **error)
{
  CudaCtx *ctx = cuda_ctx_of (be);
  UnetBackendSample *s;
  gsize plane, img_bytes, w_bytes;
  guint8 *host;
  gboolean ok;

  if (image == NULL || class_map == NULL || channels < 1 || width < 1 || height < 1
      || classes < 1 || classes > 16 || (gsize) width * height > G_MAXINT / 4) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "cannot keep a %dx%d training sample of %d channel(s), %d classes on the GPU",
        width, height, channels, classes);
    return NULL;
  }
  plane = (gsize) width * height;
  img_bytes = align_up (plane * channels * sizeof (float));
  w_bytes = weights != NULL ? align_up (plane * sizeof (float)) : 0;
  s = g_new0 (UnetBackendSample, 1);
  s->ctx = ctx;
  s->channels = channels;
  s->width = width;
  s->height = height;
  s->bytes = img_bytes + w_bytes + plane;
  if (!cuda_use_device (ctx, error))
    goto fail;
  if (ctx->samples_bytes + s->bytes > sample_budget (ctx)) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_OUT_OF_MEMORY,
        "the training samples on the GPU would take %.1f MiB, over their budget of "
        "%.1f MiB", (ctx->samples_bytes + s->bytes) / 1048576.0,
        sample_budget (ctx) / 1048576.0);
    goto fail;
  }
  if (!cuda_alloc (&s->mem, s->bytes, "a training sample", error))
    goto fail;
  s->image = s->mem;
  s->weights = weights != NULL ? (float *) ((guint8 *) s->mem + img_bytes) : NULL;
  s->labels = (guint8 *) s->mem + img_bytes + w_bytes;
  if ((host = g_try_malloc (s->bytes)) == NULL) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_OUT_OF_MEMORY,
        "cannot allocate %" G_GSIZE_FORMAT " bytes to stage a training sample", s->bytes);
    goto fail;
  }
  /* one copy on the compute stream, waited for: the staging is freed after it */
  ok = pack_sample (host, s, image, class_map, weights, classes, error)
      && CUDA_CHECK (cudaMemcpyAsync (s->mem, host, s->bytes, cudaMemcpyHostToDevice,
          ctx->stream), error)
      && CUDA_CHECK (cudaStreamSynchronize (ctx->stream), error);
  g_free (host);
  if (!ok)
    goto fail;
  ctx->samples_bytes += s->bytes;
  ctx->samples = g_list_prepend (ctx->samples, s);
  return s;

fail:
  cudaFree (s->mem);
  g_free (s);
  return NULL;
}

void
cuda_sample_free (UnetBackendSample *s)
{
  if (s == NULL)
    return;
  CudaCtx *ctx = s->ctx;
  /* a batch of the step in flight may still read it */
  cudaSetDevice (ctx->device);
  cudaStreamSynchronize (ctx->stream);
  cudaFree (s->mem);
  ctx->samples_bytes -= s->bytes;
  ctx->samples = g_list_remove (ctx->samples, s);
  g_free (s);
}

/* The record of one batch entry: the sample's device pointers and the draw in float
 * local coordinates (unet_augment_draw_local). */
static void
draw_record (const UnetAugmentDraw *d, const UnetBackendSample *s, UnetCudaAugSample *r,
    float *grid, gint grid_offset)
{
  gint origin[2];

  memset (r, 0, sizeof *r);
  r->image = s->image;
  r->labels = s->labels;
  r->weights = s->weights;
  r->src_w = s->width;
  r->src_h = s->height;
  unet_augment_draw_local (d, origin, r->affine, grid);
  r->origin_x = origin[0];
  r->origin_y = origin[1];
  r->grid = d->elastic ? d->grid : 0;
  r->grid_offset = d->elastic ? grid_offset : 0;
  r->bilinear = d->image_interp == UNET_INTERP_BILINEAR;
  r->intensity = d->intensity;
  r->gamma = (float) d->gamma;
  r->contrast = (float) d->contrast;
  r->brightness = (float) d->brightness;
}

/* Pinned staging of at least `need` bytes; the copy out of it of the previous batch
 * has landed (ctx->aug_copied). */
static gboolean
grow_aug_host (CudaCtx *ctx, gsize need, GError **error)
{
  if (ctx->aug_copied == NULL
      && !CUDA_CHECK (cudaEventCreateWithFlags (&ctx->aug_copied, cudaEventDisableTiming),
          error))
    return FALSE;
  if (ctx->aug_pending && !CUDA_CHECK (cudaEventSynchronize (ctx->aug_copied), error))
    return FALSE;
  ctx->aug_pending = FALSE;
  if (need <= ctx->aug_host_bytes)
    return TRUE;
  if (ctx->aug_host != NULL)
    cudaFreeHost (ctx->aug_host);
  ctx->aug_host = NULL;
  ctx->aug_host_bytes = 0;
  if (!CUDA_CHECK (cudaMallocHost (&ctx->aug_host, need), error))
    return FALSE;
  ctx->aug_host_bytes = need;
  return TRUE;
}

static gboolean
batch_checked (UnetBackendSample *const *samples, const UnetAugmentDraw *draws, gint n,
    const UnetBackendTensor *input, GError **error)
{
  const UnetDims *d = &input->dims;
  gboolean ok = n >= 1 && d->n == n && input->arena != NULL
      && cuda_tensor_stride (input) == d->c;
  for (gint b = 0; ok && b < n; b++) {
    const UnetAugmentDraw *w = &draws[b];
    ok = samples[b] != NULL && samples[b]->ctx == input->ctx
        && samples[b]->channels == d->c && w->width == samples[b]->width
        && w->height == samples[b]->height && w->in_w == d->w && w->in_h == d->h
        && w->out_w == draws[0].out_w && w->out_h == draws[0].out_h
        && w->out_w >= 1 && w->out_h >= 1 && w->in_w >= w->out_w && w->in_h >= w->out_h
        && (!w->elastic || (w->grid >= 2 && w->grid <= MAX_GRID && w->disp != NULL));
  }
  if (!ok)
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "a batch of %d augmented samples does not match the input tensor (%d x %d x %d x "
        "%d) or its samples", n, d->n, d->c, d->h, d->w);
  return ok;
}

gboolean
cuda_batch_augment (UnetBackend *be, UnetBackendSample *const *samples,
    const UnetAugmentDraw *draws, gint n, UnetBackendTensor *input, GError **error)
{
  CudaCtx *ctx = cuda_ctx_of (be);
  const UnetDims *d = &input->dims;
  gsize rec_bytes, grid_floats = 0, need, n_pix;
  UnetCudaAugSample *rec;
  float *grids;
  gint out_w, out_h;

  if (!batch_checked (samples, draws, n, input, error))
    return FALSE;
  out_w = draws[0].out_w;
  out_h = draws[0].out_h;
  n_pix = (gsize) n * out_w * out_h;
  for (gint b = 0; b < n; b++)
    if (draws[b].elastic)
      grid_floats += 2 * (gsize) draws[b].grid * draws[b].grid;
  rec_bytes = align_up (n * sizeof (UnetCudaAugSample));
  need = rec_bytes + grid_floats * sizeof (float);
  if (!cuda_use_device (ctx, error)
      || !grow_aug_host (ctx, need, error)
      || !cuda_grow_device (&ctx->aug_dev, &ctx->aug_dev_bytes, need, "augmentation draws",
          error)
      || !cuda_grow_device ((void **) &ctx->aug_tile, &ctx->aug_tile_bytes,
          (gsize) n * d->c * d->h * d->w * sizeof (float), "augmented tiles", error)
      || !cuda_grow_device ((void **) &ctx->aug_stats, &ctx->aug_stats_bytes,
          3 * n * sizeof (double), "augmentation statistics", error)
      || !cuda_grow_device (&ctx->batch_dev, &ctx->batch_dev_bytes,
          n_pix * (sizeof (float) + 1), "labels", error))
    return FALSE;

  rec = ctx->aug_host;
  grids = (float *) ((guint8 *) ctx->aug_host + rec_bytes);
  grid_floats = 0;
  for (gint b = 0; b < n; b++) {
    draw_record (&draws[b], samples[b], &rec[b], grids + grid_floats, (gint) grid_floats);
    if (draws[b].elastic)
      grid_floats += 2 * (gsize) draws[b].grid * draws[b].grid;
  }
  ctx->targets_pixels = 0;
  if (!CUDA_CHECK (cudaMemcpyAsync (ctx->aug_dev, ctx->aug_host, need,
              cudaMemcpyHostToDevice, ctx->stream), error)
      || !CUDA_CHECK (cudaEventRecord (ctx->aug_copied, ctx->stream), error))
    return FALSE;
  ctx->aug_pending = TRUE;
  if (!KERNEL_CHECK (unet_cuda_augment_batch (ctx->aug_dev,
              (const float *) ((const guint8 *) ctx->aug_dev + rec_bytes), n, d->c, d->w,
              d->h, out_w, out_h, CUDA_LABEL_IGNORE_U8, ctx->aug_tile, ctx->aug_stats,
              cuda_tensor_data (input), ctx->dtype,
              (guint8 *) ctx->batch_dev + n_pix * sizeof (float), ctx->batch_dev, ctx->stream),
          error))
    return FALSE;
  ctx->targets_pixels = n_pix;
  return TRUE;
}

void
cuda_augment_ctx_free (CudaCtx *ctx)
{
  while (ctx->samples != NULL)
    cuda_sample_free (ctx->samples->data);
  cudaFree (ctx->aug_dev);
  cudaFree (ctx->aug_tile);
  cudaFree (ctx->aug_stats);
  if (ctx->aug_host != NULL)
    cudaFreeHost (ctx->aug_host);
  if (ctx->aug_copied != NULL)
    cudaEventDestroy (ctx->aug_copied);
  ctx->aug_dev = ctx->aug_host = NULL;
  ctx->aug_tile = NULL;
  ctx->aug_stats = NULL;
  ctx->aug_copied = NULL;
  ctx->aug_dev_bytes = ctx->aug_host_bytes = ctx->aug_tile_bytes = ctx->aug_stats_bytes = 0;
}
