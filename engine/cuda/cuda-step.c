/* gst-unet engine — the rest of a training step on the CUDA device: backend.h's
 * loss, optimizer_update and optimizer_state slots. Per step the host uploads one
 * batch's labels (u8) and pixel weights (f32) — unless the batch was augmented on the
 * device (cuda-augment.c), which wrote them there — and reads back the scalars it logs
 * (the loss sums, soft Dice's class sums and the confusion matrix; the optimiser's
 * two flags); logits, dL/dlogits, parameters, gradients and optimiser state stay on
 * the device. Everything runs on the backend's compute stream (cuda-private.h).
 *
 * Targets: the batch's labels and weights come from the host (uploaded, below) or
 * were written on the device by cuda_batch_augment (cuda-augment.c; loss called with
 * labels NULL): then nothing is uploaded, dL/dlogits is written unnormalised and
 * divided by the kernel's own sum of weights on the device
 * (unet_cuda_scale_by_weight_sum), and the loss divides by the sum read back.
 *
 * Loss: labels and weights are checked on the host while they are packed into the
 * pinned staging (the errors of unet_loss_cross_entropy), which also gives the sum
 * of weights in the order loss.c sums it; unet_cuda_weighted_xent writes
 * dL/dlogits = S / sum_w * w * (softmax(z) - onehot) (sigmoid(z) - y for one class)
 * straight into the f32 diff_logits tensor, or into an f32 scratch cast down once
 * for a 16-bit net; S is the fp16 loss scale of the gradient seed
 * (cuda_train_seed_scale), 1 otherwise. Soft Dice (dice_weight > 0): class sums
 * (unet_cuda_dice_sums), then its gradient added to the same f32 buffer
 * (unet_cuda_dice_grad), and its value computed on the host from the sums read back.
 *
 * Optimiser: the update of unet_optim_update_host on ctx->params from ctx->grads
 * (after the fp16 fold, cuda_train_grads_ready), with state slabs allocated and
 * zeroed at their first use. The gradients of the updated ranges are checked on the
 * device first: the update kernels skip when the flag is set, so a non-finite
 * gradient changes nothing; the parameters are checked after it; both flags come
 * back in one 8-byte copy. The convolutions' working weights are re-derived from the
 * new master parameters by the training ops (params_version). fp16: an update whose
 * gradients lost a backward pass to an overflow of the dynamic loss scale is skipped
 * (GradScaler's policy; the optimiser's step count still advances in net.c).
 */
#include "config.h"

#include "cuda-private.h"

#include <math.h>
#include <stddef.h>
#include <string.h>

#define MAX_CLASSES 16

/* the scalars the loss reads back: everything before the optimiser's flags */
#define LOSS_SCALARS_BYTES offsetof (CudaStepScalars, flags)

static gboolean
ensure_scalars (CudaCtx *ctx, GError **error)
{
  if (ctx->scalars != NULL)
    return TRUE;
  if (!cuda_alloc ((void **) &ctx->scalars, sizeof (CudaStepScalars), "step scalars",
          error))
    return FALSE;
  if (!CUDA_CHECK (cudaMallocHost ((void **) &ctx->scalars_host, sizeof (CudaStepScalars)),
          error)) {
    cudaFree (ctx->scalars);
    ctx->scalars = NULL;
    ctx->scalars_host = NULL;
    return FALSE;
  }
  return TRUE;
}

/* Pinned staging of at least `need` bytes; the previous batch's copy was waited for
 * (every loss ends with a synchronisation), so growing may free it. */
static gboolean
grow_batch_host (CudaCtx *ctx, gsize need, GError **error)
{
  if (need <= ctx->batch_host_bytes)
    return TRUE;
  if (ctx->batch_host != NULL)
    cudaFreeHost (ctx->batch_host);
  ctx->batch_host = NULL;
  ctx->batch_host_bytes = 0;
  if (!CUDA_CHECK (cudaMallocHost (&ctx->batch_host, need), error))
    return FALSE;
  ctx->batch_host_bytes = need;
  return TRUE;
}

/* labels (n, h, w) checked and packed as u8 after the weights (f32, when given) into
 * the pinned staging; *sum_w: the weights of the labelled pixels summed in index
 * order, in double, as unet_loss_cross_entropy does. */
static gboolean
pack_batch (CudaCtx *ctx, const gint32 *labels, const gfloat *weights, const UnetDims *d,
    gsize *bytes, gdouble *sum_w, GError **error)
{
  const gsize hw = (gsize) d->h * d->w, n = (gsize) d->n * hw;
  const gsize wbytes = weights != NULL ? n * sizeof (gfloat) : 0;
  const gint n_labels = MAX (d->c, 2);
  guint8 *lab;
  gdouble s = 0.0;

  if (!grow_batch_host (ctx, wbytes + n, error))
    return FALSE;
  lab = (guint8 *) ctx->batch_host + wbytes;
  for (gsize i = 0; i < n; i++) {
    const gint32 l = labels[i];
    if (l == UNET_LABEL_IGNORE) {
      lab[i] = CUDA_LABEL_IGNORE_U8;
      continue;
    }
    if (l < 0 || l >= n_labels) {
      g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
          "label %d at (%d, %d) of sample %d is not a class of a %d-class model", l,
          (gint) (i % hw % d->w), (gint) (i % hw / d->w), (gint) (i / hw), d->c);
      return FALSE;
    }
    const gdouble w = weights != NULL ? weights[i] : 1.0;
    if (!(w >= 0.0) || !isfinite (w)) {
      g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
          "pixel weight %g at index %" G_GSIZE_FORMAT " is not a finite value >= 0", w, i);
      return FALSE;
    }
    lab[i] = (guint8) l;
    s += w;
  }
  if (weights != NULL)
    memcpy (ctx->batch_host, weights, wbytes);
  *bytes = wbytes + n;
  *sum_w = s;
  return TRUE;
}

static gboolean
dense_bound (const UnetBackendTensor *t)
{
  return t->arena != NULL && cuda_tensor_stride (t) == t->dims.c;
}

gboolean
cuda_loss (UnetBackend *be, UnetBackendTensor *logits, const gint32 *labels,
    const gfloat *weights, gdouble dice_weight, UnetBackendTensor *diff_logits,
    gdouble *loss, UnetConfusion *confusion, GError **error)
{
  CudaCtx *ctx = cuda_ctx_of (be);
  const UnetDims *d = &logits->dims;
  const gint classes = d->c;
  const gsize n_pix = cuda_tensor_pixels (logits);
  const gsize n_labels = MAX (classes, 2);
  const gboolean f32 = ctx->dtype == UNET_CUDA_F32;
  const gsize partials = (gsize) 48 * UNET_CUDA_REDUCE_BLOCKS * sizeof (double);
  const CudaStepScalars *s;
  gsize bytes;
  gdouble sum_w, seed;
  float *grad;
  const float *wdev;
  const guint8 *ldev;

  const gboolean on_device = labels == NULL;

  if (classes < 1 || classes > MAX_CLASSES
      || (on_device && (weights != NULL || ctx->targets_pixels != n_pix))
      || memcmp (d, &diff_logits->dims, sizeof *d) != 0 || !dense_bound (logits)
      || !dense_bound (diff_logits)) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "loss on the GPU needs labels (or a batch augmented on the device for these "
        "logits) and bound, dense logits and gradient tensors of one shape with 1 to %d "
        "classes (logits of %d classes)", MAX_CLASSES, classes);
    return FALSE;
  }
  if (!(dice_weight >= 0.0) || !isfinite (dice_weight)) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "soft Dice weight %g is not a finite value >= 0", dice_weight);
    return FALSE;
  }
  if (!cuda_use_device (ctx, error)
      || !ensure_scalars (ctx, error))
    return FALSE;
  if (on_device) {
    /* cuda_batch_augment's targets: weights then labels; the sum of weights comes from
     * the cross-entropy kernel's own sum (normalised after it, on the device) */
    bytes = 0;
    sum_w = 0.0;
  } else if (!pack_batch (ctx, labels, weights, d, &bytes, &sum_w, error)
      || !cuda_grow_device (&ctx->batch_dev, &ctx->batch_dev_bytes, bytes, "labels", error)) {
    return FALSE;
  } else {
    /* the host's targets replace any the device wrote */
    ctx->targets_pixels = 0;
  }
  if ((!f32 && !cuda_grow_device ((void **) &ctx->grad32, &ctx->grad32_bytes,
              n_pix * classes * sizeof (float), "loss gradient", error))
      || !cuda_grow_device ((void **) &ctx->partials, &ctx->partials_bytes, partials,
          "reduction scratch", error))
    return FALSE;
  wdev = weights != NULL || on_device ? ctx->batch_dev : NULL;
  ldev = (const guint8 *) ctx->batch_dev + (wdev != NULL ? n_pix * sizeof (float) : 0);
  grad = f32 ? cuda_tensor_data (diff_logits) : ctx->grad32;
  seed = cuda_train_seed_scale (diff_logits);

  if ((!on_device && !CUDA_CHECK (cudaMemcpyAsync (ctx->batch_dev, ctx->batch_host, bytes,
                  cudaMemcpyHostToDevice, ctx->stream), error))
      || !CUDA_CHECK (cudaMemsetAsync (ctx->scalars, 0, LOSS_SCALARS_BYTES, ctx->stream),
          error)
      || !KERNEL_CHECK (unet_cuda_weighted_xent (cuda_tensor_data (logits), ctx->dtype, ldev,
              wdev, n_pix, classes, CUDA_LABEL_IGNORE_U8,
              (float) (on_device ? seed : sum_w > 0.0 ? seed / sum_w : 0.0), grad,
              ctx->partials, ctx->scalars->xent, ctx->stream), error)
      || (on_device && !KERNEL_CHECK (unet_cuda_scale_by_weight_sum (grad,
                  n_pix * classes, ctx->scalars->xent, ctx->stream), error)))
    return FALSE;
  if (dice_weight > 0.0
      && (!KERNEL_CHECK (unet_cuda_dice_sums (cuda_tensor_data (logits), ctx->dtype, ldev,
                  n_pix, classes, CUDA_LABEL_IGNORE_U8, ctx->partials, ctx->scalars->dice,
                  ctx->stream), error)
          || !KERNEL_CHECK (unet_cuda_dice_grad (cuda_tensor_data (logits), ctx->dtype, ldev,
                  n_pix, classes, CUDA_LABEL_IGNORE_U8, ctx->scalars->dice,
                  (float) (dice_weight * seed), grad, ctx->stream), error)))
    return FALSE;
  if ((!f32 && !KERNEL_CHECK (unet_cuda_cast_from_f32 (ctx->grad32,
                  cuda_tensor_data (diff_logits), ctx->dtype, n_pix * classes, ctx->stream),
              error))
      || !KERNEL_CHECK (unet_cuda_confusion (cuda_tensor_data (logits), ctx->dtype, ldev,
              n_pix, classes, CUDA_LABEL_IGNORE_U8, ctx->scalars->confusion, ctx->stream), error)
      || !CUDA_CHECK (cudaMemcpyAsync (ctx->scalars_host, ctx->scalars, LOSS_SCALARS_BYTES,
              cudaMemcpyDeviceToHost, ctx->stream), error)
      || !CUDA_CHECK (cudaStreamSynchronize (ctx->stream), error))
    return FALSE;

  /* the values, as unet_loss_batch combines them */
  s = ctx->scalars_host;
  if (on_device)
    sum_w = s->xent[1];
  *loss = sum_w > 0.0 ? s->xent[0] * (1.0 / sum_w) : 0.0;
  if (dice_weight > 0.0) {
    gdouble mean = 0.0;
    for (gsize c = 1; c < n_labels; c++)
      mean += (2.0 * s->dice[c] + 1.0) / (s->dice[16 + c] + s->dice[32 + c] + 1.0);
    mean /= (gdouble) (n_labels - 1);
    *loss += dice_weight * (1.0 - mean);
  }
  unet_confusion_init (confusion, classes);
  for (gsize l = 0; l < n_labels; l++)
    for (gsize p = 0; p < n_labels; p++)
      confusion->n[l][p] = s->confusion[l * 16 + p];
  return TRUE;
}

/* ------------------------------------------------------------ optimiser -- */

static gboolean
ensure_state (CudaCtx *ctx, guint n_buffers, GError **error)
{
  for (guint b = 0; b < n_buffers; b++) {
    if (ctx->opt_state[b] != NULL)
      continue;
    if (!cuda_alloc ((void **) &ctx->opt_state[b], ctx->slab_numel * sizeof (float),
            "optimiser state", error))
      return FALSE;
    if (!CUDA_CHECK (cudaMemsetAsync (ctx->opt_state[b], 0, ctx->slab_numel * sizeof (float),
                ctx->stream), error))
      return FALSE;
  }
  return TRUE;
}

/* The next run of ranges from *r: contiguous ones (with the same decay when
 * `same_decay`) are one launch. */
static guint
next_run (const UnetOptimUpdate *u, guint r, gboolean same_decay, gsize *off, gsize *len)
{
  *off = u->ranges[r].offset;
  *len = u->ranges[r].numel;
  for (r++; r < u->n_ranges && u->ranges[r].offset == *off + *len
      && (!same_decay || !u->ranges[r].decay == !u->ranges[r - 1].decay); r++)
    *len += u->ranges[r].numel;
  return r;
}

static gboolean
update_checked (const CudaCtx *ctx, const UnetOptimUpdate *u, GError **error)
{
  const gboolean ok = (u->kind == UNET_OPTIM_SGD && u->n_buffers <= 1)
      || ((u->kind == UNET_OPTIM_ADAM || u->kind == UNET_OPTIM_ADAMW) && u->n_buffers == 2);
  if (u->n != ctx->slab_numel || !ok || u->t < 1 || (u->n_ranges > 0 && u->ranges == NULL)) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "optimiser update (%s, step %" G_GINT64_FORMAT ") of %" G_GSIZE_FORMAT
        " floats with %u state slabs, the backend holds %" G_GSIZE_FORMAT,
        unet_optim_kind_name (u->kind), u->t, u->n, u->n_buffers, ctx->slab_numel);
    return FALSE;
  }
  for (guint r = 0; r < u->n_ranges; r++)
    if (u->ranges[r].offset > u->n || u->ranges[r].numel > u->n - u->ranges[r].offset) {
      g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
          "optimiser range %u (%" G_GSIZE_FORMAT " + %" G_GSIZE_FORMAT
          ") exceeds the slab of %" G_GSIZE_FORMAT, r, u->ranges[r].offset,
          u->ranges[r].numel, u->n);
      return FALSE;
    }
  return TRUE;
}

gboolean
cuda_optimizer_update (UnetBackend *be, const UnetOptimUpdate *u, gboolean *finite,
    GError **error)
{
  CudaCtx *ctx = cuda_ctx_of (be);
  int *flags;
  gsize off, len;
  const gboolean first = u->t == 1;
  const gboolean decoupled = u->kind == UNET_OPTIM_ADAMW;
  const gdouble step_size = u->lr / (1.0 - pow (u->beta1, (gdouble) u->t));
  const gdouble bc2_sqrt = sqrt (1.0 - pow (u->beta2, (gdouble) u->t));

  /* the fp16 fold first: the gradient slab is complete and unscaled */
  if (!cuda_train_grads_ready (ctx, error)
      || !update_checked (ctx, u, error)
      || !ensure_scalars (ctx, error)
      || !ensure_state (ctx, u->n_buffers, error))
    return FALSE;
  if (ctx->pass_dropped) {
    /* fp16: a backward pass of these gradients overflowed at a loss scale > 1 and was
     * dropped (cuda-train-ops.c): skip the step, as torch.cuda.amp.GradScaler does */
    g_debug ("cuda: optimiser step %" G_GINT64_FORMAT " skipped (fp16 gradient overflow)",
        u->t);
    *finite = TRUE;
    return TRUE;
  }
  flags = ctx->scalars->flags;
  if (!CUDA_CHECK (cudaMemsetAsync (flags, 0, 2 * sizeof (int), ctx->stream), error))
    return FALSE;
  for (guint r = 0; r < u->n_ranges;) {
    r = next_run (u, r, FALSE, &off, &len);
    if (!KERNEL_CHECK (unet_cuda_check_finite (ctx->grads + off, UNET_CUDA_F32, len,
                &flags[0], ctx->stream), error))
      return FALSE;
  }
  for (guint r = 0; r < u->n_ranges;) {
    const gdouble wd = u->ranges[r].decay ? u->weight_decay : 0.0;
    gboolean ok;
    r = next_run (u, r, TRUE, &off, &len);
    if (u->kind == UNET_OPTIM_SGD)
      ok = KERNEL_CHECK (unet_cuda_optim_sgd (ctx->params + off, ctx->grads + off,
              u->n_buffers > 0 ? ctx->opt_state[0] + off : NULL, len, u->lr, u->momentum,
              wd, u->nesterov, first, &flags[0], ctx->stream), error);
    else
      ok = KERNEL_CHECK (unet_cuda_optim_adam (ctx->params + off, ctx->grads + off,
              ctx->opt_state[0] + off, ctx->opt_state[1] + off, len, u->lr, u->beta1,
              u->beta2, u->eps, wd, decoupled, step_size, bc2_sqrt, &flags[0],
              ctx->stream), error);
    if (!ok)
      return FALSE;
  }
  if (!KERNEL_CHECK (unet_cuda_check_finite (ctx->params, UNET_CUDA_F32, ctx->slab_numel,
              &flags[1], ctx->stream), error)
      || !CUDA_CHECK (cudaMemcpyAsync (ctx->scalars_host->flags, flags, 2 * sizeof (int),
              cudaMemcpyDeviceToHost, ctx->stream), error)
      || !CUDA_CHECK (cudaStreamSynchronize (ctx->stream), error))
    return FALSE;
  if (ctx->scalars_host->flags[0]) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_FAILED,
        "non-finite gradient in step %" G_GINT64_FORMAT " (lower the learning rate?)",
        u->t);
    return FALSE;
  }
  /* the convolutions re-derive their working weights before their next use */
  ctx->params_version++;
  *finite = !ctx->scalars_host->flags[1];
  return TRUE;
}

gboolean
cuda_optimizer_state (UnetBackend *be, guint index, gfloat *host, gboolean to_backend,
    GError **error)
{
  CudaCtx *ctx = cuda_ctx_of (be);
  const gsize bytes = ctx->slab_numel * sizeof (float);

  if (index >= G_N_ELEMENTS (ctx->opt_state) || host == NULL) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "optimiser state slab %u of %u", index, (guint) G_N_ELEMENTS (ctx->opt_state));
    return FALSE;
  }
  if (ctx->slab_numel == 0) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_FAILED,
        "optimiser state on the GPU before the parameters were set (params_set)");
    return FALSE;
  }
  if (!cuda_use_device (ctx, error) || !ensure_state (ctx, index + 1, error))
    return FALSE;
  /* on the compute stream, ordered after the updates; synchronous for the host */
  return CUDA_CHECK (cudaMemcpyAsync (to_backend ? (void *) ctx->opt_state[index] : host,
          to_backend ? (const void *) host : ctx->opt_state[index], bytes,
          to_backend ? cudaMemcpyHostToDevice : cudaMemcpyDeviceToHost, ctx->stream), error)
      && CUDA_CHECK (cudaStreamSynchronize (ctx->stream), error);
}

void
cuda_step_ctx_free (CudaCtx *ctx)
{
  cudaFree (ctx->scalars);
  if (ctx->scalars_host != NULL)
    cudaFreeHost (ctx->scalars_host);
  cudaFree (ctx->batch_dev);
  if (ctx->batch_host != NULL)
    cudaFreeHost (ctx->batch_host);
  cudaFree (ctx->grad32);
  for (guint b = 0; b < G_N_ELEMENTS (ctx->opt_state); b++)
    cudaFree (ctx->opt_state[b]);
  ctx->scalars = NULL;
  ctx->scalars_host = NULL;
  ctx->batch_dev = ctx->batch_host = NULL;
  ctx->grad32 = NULL;
  ctx->opt_state[0] = ctx->opt_state[1] = NULL;
  ctx->batch_dev_bytes = ctx->batch_host_bytes = ctx->grad32_bytes = 0;
}
