/* gst-unet engine — the training half of the CUDA backend (backend.h's training
 * slots): the parameter and gradient slabs on the device, and every op's forward in
 * training mode and backward. It shares the backend's one execution context
 * (cuda-private.h: stream, cuDNN handle, workspace, scratch, allocator) with the
 * inference ops and knows nothing of the network those ops form: the training
 * executor (engine/net-train.c) walks the graph (engine/graph.h) and calls
 * op_forward_training in order, then op_backward in reverse.
 *
 * Parameters: ctx->params, f32 master weights (and batch-norm running statistics,
 * which BATCHNORM updates in place) at the offsets the op descs give. The
 * convolutions read working weights derived from them on the device (ctx->work:
 * each weight [a, b, k, k] permuted to cuDNN's NHWC filter layout [a, k, k, b] in the
 * activation type, at the same slab offset), re-derived by an op when params_set ran
 * since it last did. Gradients: ctx->grads, f32, PyTorch layout; cuDNN's filter
 * gradients come out in KRSC and the activation type into one scratch (ctx->dw) and a
 * kernel adds them into the slab; bias and batch-norm gradients are reduced in f64
 * straight into it (deterministic), and the backward algorithms prefer deterministic
 * ones, so a run repeats bit for bit.
 *
 * Convolutions: CONV is the relation x = src --(w [cout, cin, k, k], pad, stride 1)-->
 * y = dst: forward = cudnnConvolutionForward, diff_src = BackwardData, dw =
 * BackwardFilter. UPCONV2 (ConvTranspose2d 2x2 stride 2) is the data gradient of the
 * stride-2 convolution from the upsampled space x = dst to y = src (filter K = cin,
 * C = cout): forward = BackwardData(src), diff_src = Forward(diff_dst), dw =
 * BackwardFilter(x = diff_dst, dy = src). Algorithms are chosen once per op (per
 * shape), as the inference ops do.
 *
 * Channel views: cuDNN and the per-channel kernels work on dense tensors, so an op
 * reads a view (src, dst for the ReLU mask, diff_dst) through a dense copy in the
 * scratch and writes one (dst, diff_src) through the scratch and a copy kernel;
 * accumulating into a view reads it, adds and writes it back. CROP_COPY reads and
 * writes views directly (copy_window, window_add).
 *
 * FP16 dynamic loss scaling (torch.cuda.amp.GradScaler's policy) lives here, below
 * the executor, so the executor and the CPU backend know nothing of it: an upload
 * into a gradient seed (a tensor that is some op's diff_dst and no op's diff_src:
 * dL/dlogits) is multiplied by the scale S before it is rounded to 16 bit, so small
 * gradients do not flush to zero; one backward pass's parameter gradients go into
 * ctx->step_grads (scaled), and before anything reads or restarts the gradients (the
 * next op_forward_training, grads_get, grads_zero, params_set) the pass is folded:
 * finite -> grads += step_grads / S, and S doubles after 2000 clean passes; inf/NaN ->
 * the pass is dropped and S halves, and the optimiser update that follows (before
 * the next grads_zero) is skipped, as GradScaler skips optimizer.step()
 * (cuda-step.c). At S = 1 a non-finite pass is genuine and is folded as it is. The fold reads one int (the
 * finite flag) back to the host, never parameters or gradients. The slabs the
 * executor sees (grads_get) are always unscaled.
 */
#include "config.h"

#include "cuda-private.h"

#include <string.h>

#define BN_EPS 1e-5f
#define BN_MOMENTUM 0.1f
/* torch.cuda.amp.GradScaler defaults */
#define LOSS_SCALE_INIT 65536.0
#define LOSS_SCALE_GROWTH_INTERVAL 2000
#define LOSS_SCALE_MAX 16777216.0

/* A tensor an op reads or writes densely: the tensor itself, or for a channel view a
 * dense stand-in at byte offset `off` of ctx->scratch. */
typedef struct
{
  UnetBackendTensor *t;         /* NULL: not used by the op */
  gboolean view;
  gsize off;
} Dense;

struct _CudaTrainOp
{
  /* CONV / UPCONV2: the relation x --(w)--> y (see the top of the file) */
  cudnnTensorDescriptor_t x_desc, y_desc;
  cudnnFilterDescriptor_t w_desc;
  cudnnConvolutionDescriptor_t fwd, bwd_data, bwd_filter;
  gint algo_fwd, algo_bwd_data, algo_bwd_filter;
  gsize ws_fwd, ws_bwd_data, ws_bwd_filter;
  gint a, b;                    /* weight [a, b, k, k]: conv (cout, cin), upconv (cin, cout) */
  guint64 work_version;         /* ctx->params_version its working weight has */
  Dense src, dst, diff_dst, diff_src;
  gsize acc_off;                /* scratch for accumulating into a diff_src view */
  gboolean dsrc_native;         /* the backward can accumulate into diff_src itself */
  gboolean f32;                 /* 16-bit net, but cuDNN has no 16-bit NHWC algorithm for
                                   this convolution (1 or odd channels): it runs in f32 */
  float *w32;                   /* f32: its working weight, KRSC */
  float *mean, *invstd;         /* BATCHNORM: the batch statistics of the last forward */
  guint8 *argmax;               /* MAXPOOL2 */
  guint64 seed;                 /* DROPOUT: the mask of the last forward */
  gboolean forward_done;
};

static const float one_f = 1.0f, zero_f = 0.0f;

static gsize
dims_elems (const UnetDims *d)
{
  return (gsize) d->n * d->c * d->h * d->w;
}

/* ------------------------------------------------------------ dense views -- */

static gsize
dense_bytes (const CudaCtx *ctx, const UnetBackendTensor *t)
{
  gsize b = dims_elems (&t->dims) * cuda_esize (ctx);
  return (b + 255) / 256 * 256;
}

/* Registers `t` as a dense operand of the op; views get a stand-in at *scratch_end. */
static void
dense_init (const CudaCtx *ctx, Dense *d, UnetBackendTensor *t, gsize *scratch_end)
{
  d->t = t;
  d->view = t != NULL && t->parent != NULL;
  if (d->view) {
    d->off = *scratch_end;
    *scratch_end += dense_bytes (ctx, t);
  }
}

static void *
dense_ptr (const CudaCtx *ctx, const Dense *d)
{
  return d->view ? (guint8 *) ctx->scratch + d->off : cuda_tensor_data (d->t);
}

/* view -> its stand-in (before the op reads it) */
static gboolean
dense_gather (const CudaCtx *ctx, const Dense *d, GError **error)
{
  const UnetBackendTensor *t = d->t;
  if (!d->view)
    return TRUE;
  return KERNEL_CHECK (unet_cuda_copy_window (cuda_tensor_data (t), t->dims.h, t->dims.w,
          cuda_tensor_stride (t), 0, 0, 0, dense_ptr (ctx, d), t->dims.c, 0, t->dims.n,
          t->dims.h, t->dims.w, t->dims.c, NULL, ctx->dtype, ctx->stream), error);
}

/* stand-in -> the view (after the op wrote it); `bias` (f32, may be NULL) added */
static gboolean
dense_scatter (const CudaCtx *ctx, const Dense *d, const float *bias, GError **error)
{
  const UnetBackendTensor *t = d->t;
  if (!d->view)
    return TRUE;
  return KERNEL_CHECK (unet_cuda_copy_window (dense_ptr (ctx, d), t->dims.h, t->dims.w,
          t->dims.c, 0, 0, 0, cuda_tensor_data (t), cuda_tensor_stride (t), 0, t->dims.n,
          t->dims.h, t->dims.w, t->dims.c, bias, ctx->dtype, ctx->stream), error);
}

/* Where a backward writes dL/dsrc: the tensor itself when it is dense and either
 * written whole or the producer can accumulate (dsrc_native: cuDNN's beta, the pooling
 * kernel's flag, window_add), else the stand-in, which dsrc_end moves into place. *acc tells the
 * producer whether to accumulate into what it gets. */
static void *
dsrc_begin (UnetBackendOp *op, gboolean *acc)
{
  CudaTrainOp *tr = op->train;
  gboolean direct = !tr->diff_src.view && (!op->d.accumulate || tr->dsrc_native);
  *acc = direct && op->d.accumulate;
  return direct ? cuda_tensor_data (tr->diff_src.t)
      : (guint8 *) op->ctx->scratch + tr->diff_src.off;
}

static gboolean
dsrc_end (UnetBackendOp *op, const void *out, GError **error)
{
  CudaCtx *ctx = op->ctx;
  CudaTrainOp *tr = op->train;
  const UnetBackendTensor *t = tr->diff_src.t;
  gsize count = dims_elems (&t->dims);
  void *tmp = (guint8 *) ctx->scratch + tr->acc_off;

  if (out == cuda_tensor_data (t))
    return TRUE;
  if (!tr->diff_src.view)       /* dense, accumulated by a producer that cannot */
    return KERNEL_CHECK (unet_cuda_add (out, cuda_tensor_data (t), ctx->dtype, count,
            ctx->stream), error);
  if (op->d.accumulate) {
    Dense old = { (UnetBackendTensor *) t, TRUE, tr->acc_off };
    if (!dense_gather (ctx, &old, error)
        || !KERNEL_CHECK (unet_cuda_add (tmp, (void *) out, ctx->dtype, count, ctx->stream),
            error))
      return FALSE;
  }
  return dense_scatter (ctx, &tr->diff_src, NULL, error);
}

/* Parameter gradients go here: the f32 slab, or in fp16 the pass's scaled slab. */
static float *
grad_slab (CudaCtx *ctx)
{
  return ctx->step_grads != NULL ? ctx->step_grads : ctx->grads;
}

/* ---------------------------------------------------------------- slabs -- */

static gboolean
check_slab (CudaCtx *ctx, GError **error)
{
  if (ctx->slab_numel == 0) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_FAILED,
        "training on the GPU before the parameters were set (params_set)");
    return FALSE;
  }
  return TRUE;
}

/* fp16: one backward pass's step_grads -> grads (see the top of the file). */
static gboolean
fold_pass (CudaCtx *ctx, GError **error)
{
  int bad = 0;

  if (!ctx->pass_open)
    return TRUE;
  ctx->pass_open = FALSE;
  if (!CUDA_CHECK (cudaMemsetAsync (ctx->flag, 0, sizeof (int), ctx->stream), error)
      || !KERNEL_CHECK (unet_cuda_check_finite (ctx->step_grads, UNET_CUDA_F32,
              ctx->slab_numel, ctx->flag, ctx->stream), error)
      || !CUDA_CHECK (cudaMemcpyAsync (&bad, ctx->flag, sizeof (int), cudaMemcpyDeviceToHost,
              ctx->stream), error)
      || !CUDA_CHECK (cudaStreamSynchronize (ctx->stream), error))
    return FALSE;
  if (!bad || ctx->loss_scale <= 1.0) {
    if (!KERNEL_CHECK (unet_cuda_scale_add_f32 (ctx->step_grads, ctx->grads,
                ctx->slab_numel, (float) (1.0 / ctx->loss_scale), ctx->stream), error))
      return FALSE;
  }
  if (!bad) {
    if (++ctx->clean_passes >= LOSS_SCALE_GROWTH_INTERVAL) {
      ctx->clean_passes = 0;
      ctx->loss_scale = MIN (ctx->loss_scale * 2.0, LOSS_SCALE_MAX);
    }
  } else {
    ctx->clean_passes = 0;
    ctx->pass_dropped = ctx->loss_scale > 1.0;
    if (ctx->loss_scale > 1.0)
      g_debug ("cuda: fp16 gradient overflow at loss scale %g: pass dropped, scale %g",
          ctx->loss_scale, MAX (ctx->loss_scale * 0.5, 1.0));
    ctx->loss_scale = MAX (ctx->loss_scale * 0.5, 1.0);
  }
  return CUDA_CHECK (cudaMemsetAsync (ctx->step_grads, 0, ctx->slab_numel * sizeof (float),
          ctx->stream), error);
}

gboolean
cuda_train_grads_ready (CudaCtx *ctx, GError **error)
{
  return check_slab (ctx, error) && cuda_use_device (ctx, error) && fold_pass (ctx, error);
}

gfloat
cuda_train_seed_scale (const UnetBackendTensor *t)
{
  const CudaCtx *ctx = t->ctx;
  const UnetBackendTensor *root = t->parent != NULL ? t->parent : t;
  if (ctx->step_grads == NULL || !root->is_diff_dst || root->is_diff_src)
    return 1.0f;
  return (gfloat) ctx->loss_scale;
}

static void
free_slabs (CudaCtx *ctx)
{
  cudaFree (ctx->params);
  cudaFree (ctx->grads);
  cudaFree (ctx->step_grads);
  cudaFree (ctx->work);
  cudaFree (ctx->flag);
  ctx->params = ctx->grads = ctx->step_grads = NULL;
  ctx->work = NULL;
  ctx->flag = NULL;
  ctx->slab_numel = 0;
}

void
cuda_train_ctx_free (CudaCtx *ctx)
{
  free_slabs (ctx);
  cudaFree (ctx->dw);
  cudaFree (ctx->partials);
  ctx->dw = NULL;
  ctx->partials = NULL;
  ctx->dw_bytes = ctx->partials_bytes = 0;
}

gboolean
cuda_params_set (UnetBackend *be, const gfloat *host, gsize numel, GError **error)
{
  CudaCtx *ctx = cuda_ctx_of (be);

  if (numel == 0 || host == NULL || (ctx->slab_numel != 0 && numel != ctx->slab_numel)) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "parameter slab of %" G_GSIZE_FORMAT " floats (the backend holds %" G_GSIZE_FORMAT
        ")", numel, ctx->slab_numel);
    return FALSE;
  }
  if (!cuda_use_device (ctx, error))
    return FALSE;
  if (ctx->slab_numel == 0) {
    gboolean fp16 = ctx->precision == UNET_PRECISION_FP16;
    if (!cuda_alloc ((void **) &ctx->params, numel * sizeof (float), "parameters", error)
        || !cuda_alloc ((void **) &ctx->grads, numel * sizeof (float), "gradients", error)
        || !cuda_alloc (&ctx->work, numel * cuda_esize (ctx), "working weights", error)
        || (fp16 && !cuda_alloc ((void **) &ctx->step_grads, numel * sizeof (float),
                "gradients", error))
        || (fp16 && !cuda_alloc ((void **) &ctx->flag, sizeof (int), "flags", error))
        || !CUDA_CHECK (cudaMemsetAsync (ctx->grads, 0, numel * sizeof (float), ctx->stream),
            error)
        || (fp16 && !CUDA_CHECK (cudaMemsetAsync (ctx->step_grads, 0,
                    numel * sizeof (float), ctx->stream), error))) {
      free_slabs (ctx);
      return FALSE;
    }
    ctx->slab_numel = numel;
    ctx->loss_scale = fp16 ? LOSS_SCALE_INIT : 1.0;
    ctx->clean_passes = 0;
  } else if (!fold_pass (ctx, error)) {
    return FALSE;
  }
  ctx->params_version++;
  /* on the compute stream, after every op that read the old values; `host` may be
   * freed on return */
  return CUDA_CHECK (cudaMemcpyAsync (ctx->params, host, numel * sizeof (float),
          cudaMemcpyHostToDevice, ctx->stream), error)
      && CUDA_CHECK (cudaStreamSynchronize (ctx->stream), error);
}

gboolean
cuda_params_get (UnetBackend *be, gfloat *host, GError **error)
{
  CudaCtx *ctx = cuda_ctx_of (be);
  return check_slab (ctx, error) && cuda_use_device (ctx, error)
      && CUDA_CHECK (cudaMemcpyAsync (host, ctx->params, ctx->slab_numel * sizeof (float),
          cudaMemcpyDeviceToHost, ctx->stream), error)
      && CUDA_CHECK (cudaStreamSynchronize (ctx->stream), error);
}

gboolean
cuda_grads_zero (UnetBackend *be, GError **error)
{
  CudaCtx *ctx = cuda_ctx_of (be);
  /* the fold of an open pass still moves the loss scale */
  if (!cuda_train_grads_ready (ctx, error))
    return FALSE;
  ctx->pass_dropped = FALSE;
  return CUDA_CHECK (cudaMemsetAsync (ctx->grads, 0, ctx->slab_numel * sizeof (float),
          ctx->stream), error);
}

gboolean
cuda_grads_get (UnetBackend *be, gfloat *host, GError **error)
{
  CudaCtx *ctx = cuda_ctx_of (be);
  return cuda_train_grads_ready (ctx, error)
      && CUDA_CHECK (cudaMemcpyAsync (host, ctx->grads, ctx->slab_numel * sizeof (float),
          cudaMemcpyDeviceToHost, ctx->stream), error)
      && CUDA_CHECK (cudaStreamSynchronize (ctx->stream), error);
}


/* ----------------------------------------------------------- algorithms -- */

/* The first result that succeeded within the workspace, deterministic ones first
 * when `prefer_det` (backward passes: a run repeats bit for bit). The perf structs
 * of the three directions share these fields. */
#define PICK_ALGO(perf, got, prefer_det, ws_limit, out_algo, out_ws, out_math, found)  \
  G_STMT_START {                                                                   \
    found = FALSE;                                                                 \
    for (gint pass_ = (prefer_det) ? 0 : 1; pass_ < 2 && !found; pass_++)          \
      for (gint i_ = 0; i_ < (got) && !found; i_++)                                \
        if ((perf)[i_].status == CUDNN_STATUS_SUCCESS                              \
            && (perf)[i_].memory <= (ws_limit)                                     \
            && (pass_ == 1 || (perf)[i_].determinism == CUDNN_DETERMINISTIC)) {    \
          out_algo = (gint) (perf)[i_].algo;                                       \
          out_ws = (perf)[i_].memory;                                              \
          out_math = (perf)[i_].mathType;                                          \
          found = TRUE;                                                            \
        }                                                                          \
  } G_STMT_END

static gboolean
no_algorithm (CudaCtx *ctx, UnetBackendOp *op, const gchar *direction, GError **error)
{
  const UnetDims *s = &op->d.src->dims, *t = &op->d.dst->dims;
  g_clear_error (error);
  g_set_error (error, UNET_ERROR, UNET_ERROR_BACKEND,
      "cuDNN has no %s algorithm for the %s %dx%dx%dx%d -> %dx%dx%dx%d in %s within a "
      "%.0f MiB workspace%s", direction,
      op->d.kind == UNET_OP_UPCONV2 ? "transposed convolution" : "convolution", s->n, s->c,
      s->h, s->w, t->n, t->c, t->h, t->w, ctx->dtype == UNET_CUDA_F32 ? "32 bit" : "16 bit",
      ctx->workspace_bytes / 1048576.0,
      ctx->dtype != UNET_CUDA_F32 ? "; use precision fp32 or tf32" : "");
  return FALSE;
}

/* Chooses the algorithms of the relation's directions the op needs, on buffers x, y
 * (dense, as the descriptors say) with ctx->dw standing in for the weights and their
 * gradient (every output is overwritten: called while ops are built, or when an op
 * switches to f32 before it recomputes). */
static gboolean
choose_algos (CudaCtx *ctx, UnetBackendOp *op, void *x, void *y, GError **error)
{
  CudaTrainOp *tr = op->train;
  gboolean up = op->d.kind == UNET_OP_UPCONV2;
  /* conv: forward always, data gradient for diff_src; upconv: its forward is the
   * relation's data gradient, its diff_src the relation's forward */
  gboolean need_data = up || op->d.diff_src != NULL;
  gboolean need_fwd = !up || op->d.diff_src != NULL;
  cudnnConvolutionFwdAlgoPerf_t pf[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
  cudnnConvolutionBwdDataAlgoPerf_t pd[CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT];
  cudnnConvolutionBwdFilterAlgoPerf_t pw[CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT];
  cudnnMathType_t math = ctx->math;
  cudnnStatus_t st;
  gint got = 0;
  gboolean found;

  if (need_fwd) {
    st = CUDNN_STATUS_NOT_SUPPORTED;
    if (ctx->find)
      st = cudnnFindConvolutionForwardAlgorithmEx (ctx->cudnn, tr->x_desc, x, tr->w_desc,
          ctx->dw, tr->fwd, tr->y_desc, y, CUDNN_CONVOLUTION_FWD_ALGO_COUNT, &got, pf,
          ctx->workspace, ctx->workspace_bytes);
    if (st != CUDNN_STATUS_SUCCESS
        && !CUDNN_CHECK (cudnnGetConvolutionForwardAlgorithm_v7 (ctx->cudnn, tr->x_desc,
                tr->w_desc, tr->fwd, tr->y_desc, CUDNN_CONVOLUTION_FWD_ALGO_COUNT, &got, pf),
            error))
      return FALSE;
    /* the forward direction of UPCONV2 is a backward pass of the op */
    PICK_ALGO (pf, got, op->d.kind == UNET_OP_UPCONV2, ctx->workspace_bytes, tr->algo_fwd,
        tr->ws_fwd, math, found);
    if (!found || !CUDNN_CHECK (cudnnSetConvolutionMathType (tr->fwd, math), error))
      return no_algorithm (ctx, op, "forward", error);
  }
  if (need_data) {
    st = CUDNN_STATUS_NOT_SUPPORTED;
    if (ctx->find)
      st = cudnnFindConvolutionBackwardDataAlgorithmEx (ctx->cudnn, tr->w_desc, ctx->dw,
          tr->y_desc, y, tr->bwd_data, tr->x_desc, x, CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT,
          &got, pd, ctx->workspace, ctx->workspace_bytes);
    if (st != CUDNN_STATUS_SUCCESS
        && !CUDNN_CHECK (cudnnGetConvolutionBackwardDataAlgorithm_v7 (ctx->cudnn, tr->w_desc,
                tr->y_desc, tr->bwd_data, tr->x_desc, CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT,
                &got, pd), error))
      return FALSE;
    PICK_ALGO (pd, got, op->d.kind == UNET_OP_CONV, ctx->workspace_bytes, tr->algo_bwd_data,
        tr->ws_bwd_data, math, found);
    if (!found || !CUDNN_CHECK (cudnnSetConvolutionMathType (tr->bwd_data, math), error))
      return no_algorithm (ctx, op, "backward-data", error);
  }
  st = CUDNN_STATUS_NOT_SUPPORTED;
  if (ctx->find)
    st = cudnnFindConvolutionBackwardFilterAlgorithmEx (ctx->cudnn, tr->x_desc, x,
        tr->y_desc, y, tr->bwd_filter, tr->w_desc, ctx->dw,
        CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT, &got, pw, ctx->workspace,
        ctx->workspace_bytes);
  if (st != CUDNN_STATUS_SUCCESS
      && !CUDNN_CHECK (cudnnGetConvolutionBackwardFilterAlgorithm_v7 (ctx->cudnn, tr->x_desc,
              tr->y_desc, tr->bwd_filter, tr->w_desc, CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT,
              &got, pw), error))
    return FALSE;
  PICK_ALGO (pw, got, TRUE, ctx->workspace_bytes, tr->algo_bwd_filter, tr->ws_bwd_filter,
      math, found);
  if (!found || !CUDNN_CHECK (cudnnSetConvolutionMathType (tr->bwd_filter, math), error))
    return no_algorithm (ctx, op, "backward-filter", error);
  return TRUE;
}

/* The relation's descriptors in data type `dt` with math `math`. */
static gboolean
conv_describe (CudaCtx *ctx, UnetBackendOp *op, cudnnDataType_t dt, cudnnMathType_t math,
    GError **error)
{
  CudaTrainOp *tr = op->train;
  const UnetOpDesc *d = &op->d;
  gboolean up = d->kind == UNET_OP_UPCONV2;
  /* the relation's x and y sides: conv src -> dst, upconv dst -> src */
  const UnetDims *xd = up ? &d->dst->dims : &d->src->dims;
  const UnetDims *yd = up ? &d->src->dims : &d->dst->dims;
  gint k = up ? 2 : d->k, pad = up ? 0 : d->pad, stride = up ? 2 : 1;
  cudnnConvolutionDescriptor_t descs[3] = { tr->fwd, tr->bwd_data, tr->bwd_filter };
  cudnnDataType_t keep = ctx->cudnn_dtype;
  gboolean ok;

  ctx->cudnn_dtype = dt;        /* cuda_set_nhwc_desc reads it */
  ok = cuda_set_nhwc_desc (ctx, tr->x_desc, xd, xd->c, error)
      && cuda_set_nhwc_desc (ctx, tr->y_desc, yd, yd->c, error);
  ctx->cudnn_dtype = keep;
  /* K = y channels, C = x channels */
  if (!ok || !CUDNN_CHECK (cudnnSetFilter4dDescriptor (tr->w_desc, dt, CUDNN_TENSOR_NHWC,
              yd->c, xd->c, k, k), error))
    return FALSE;
  for (gint i = 0; i < 3; i++)
    if (!CUDNN_CHECK (cudnnSetConvolution2dDescriptor (descs[i], pad, pad, stride, stride, 1,
                1, CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT), error)
        || !CUDNN_CHECK (cudnnSetConvolutionMathType (descs[i], math), error))
      return FALSE;
  return TRUE;
}

/* f32 mode's buffers in ctx->scratch32: two of src's shape (A: src, B: d src), two of
 * dst's (A: dst, B: d dst), dense NHWC. */
static gsize
aligned_elems (const UnetDims *d)
{
  return (dims_elems (d) + 63) / 64 * 64;
}

static float *
f32_buf (UnetBackendOp *op, gboolean dst_side, gboolean b)
{
  gsize ns = aligned_elems (&op->d.src->dims), nd = aligned_elems (&op->d.dst->dims);
  return op->ctx->scratch32 + (dst_side ? 2 * ns + (b ? nd : 0) : (b ? ns : 0));
}

/* From now on this op casts its operands to f32 and runs cuDNN in f32 (FMA math) with
 * f32 working weights; its diff_src, cast back, is added through the stand-in. */
static gboolean
conv_use_f32 (CudaCtx *ctx, UnetBackendOp *op, GError **error)
{
  CudaTrainOp *tr = op->train;
  gint k = op->d.kind == UNET_OP_UPCONV2 ? 2 : op->d.k;
  gsize wn = (gsize) tr->a * tr->b * k * k;
  gsize need = 2 * (aligned_elems (&op->d.src->dims) + aligned_elems (&op->d.dst->dims));

  tr->f32 = TRUE;
  tr->dsrc_native = FALSE;
  tr->work_version = G_MAXUINT64;
  if (!cuda_grow_device ((void **) &ctx->scratch32, &ctx->scratch32_bytes,
          need * sizeof (float), "f32 scratch", error)
      || !cuda_grow_device (&ctx->dw, &ctx->dw_bytes, wn * sizeof (float),
          "filter gradients", error)
      || (tr->w32 == NULL && !cuda_alloc ((void **) &tr->w32, wn * sizeof (float),
              "f32 weights", error)))
    return FALSE;
  return conv_describe (ctx, op, CUDNN_DATA_FLOAT, CUDNN_FMA_MATH, error)
      && choose_algos (ctx, op, op->d.kind == UNET_OP_UPCONV2 ? f32_buf (op, TRUE, FALSE)
          : f32_buf (op, FALSE, FALSE), op->d.kind == UNET_OP_UPCONV2
          ? f32_buf (op, FALSE, FALSE) : f32_buf (op, TRUE, FALSE), error);
}

static gboolean
conv_init (CudaCtx *ctx, UnetBackendOp *op, GError **error)
{
  const UnetOpDesc *d = &op->d;
  CudaTrainOp *tr = op->train;
  gboolean up = d->kind == UNET_OP_UPCONV2;
  const UnetDims *s = &d->src->dims, *t = &d->dst->dims;
  gint k = up ? 2 : d->k, pad = up ? 0 : d->pad;

  if (up ? (d->k != 2 || t->h != 2 * s->h || t->w != 2 * s->w)
      : ((d->k != 1 && d->k != 3) || d->pad < 0 || t->h != s->h + 2 * pad - k + 1
          || t->w != s->w + 2 * pad - k + 1)) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "%s with kernel %d, padding %d does not map %dx%dx%dx%d to %dx%dx%dx%d",
        up ? "transposed convolution" : "convolution", d->k, d->pad, s->n, s->c, s->h, s->w,
        t->n, t->c, t->h, t->w);
    return FALSE;
  }
  tr->a = up ? s->c : t->c;
  tr->b = up ? t->c : s->c;
  if (d->weight < 0 || d->bias < 0) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "training %s without parameter offsets", up ? "transposed convolution" : "convolution");
    return FALSE;
  }
  if (!cuda_ensure_workspace (ctx, error)
      || !cuda_grow_device (&ctx->dw, &ctx->dw_bytes,
          (gsize) tr->a * tr->b * k * k * cuda_esize (ctx), "filter gradients", error)
      || !CUDNN_CHECK (cudnnCreateTensorDescriptor (&tr->x_desc), error)
      || !CUDNN_CHECK (cudnnCreateTensorDescriptor (&tr->y_desc), error)
      || !CUDNN_CHECK (cudnnCreateFilterDescriptor (&tr->w_desc), error)
      || !CUDNN_CHECK (cudnnCreateConvolutionDescriptor (&tr->fwd), error)
      || !CUDNN_CHECK (cudnnCreateConvolutionDescriptor (&tr->bwd_data), error)
      || !CUDNN_CHECK (cudnnCreateConvolutionDescriptor (&tr->bwd_filter), error))
    return FALSE;
  if (conv_describe (ctx, op, ctx->cudnn_dtype, ctx->math, error)
      && choose_algos (ctx, op, dense_ptr (ctx, up ? &tr->dst : &tr->src),
          dense_ptr (ctx, up ? &tr->src : &tr->dst), error))
    return TRUE;
  if (ctx->dtype == UNET_CUDA_F32)
    return FALSE;
  /* as the inference ops do: this shape runs in f32, decided once, here */
  g_debug ("cuda: training %s %d -> %d channels has no 16-bit NHWC algorithm (%s); "
      "running it in f32", up ? "transposed convolution" : "convolution", s->c, t->c,
      error != NULL && *error != NULL ? (*error)->message : "");
  g_clear_error (error);
  return conv_use_f32 (ctx, op, error);
}

/* The op's working weight, derived from the master weights after every params_set. */
static void *
working_weight (CudaCtx *ctx, UnetBackendOp *op)
{
  if (op->train->f32)
    return op->train->w32;
  return (guint8 *) ctx->work + (gsize) op->d.weight * cuda_esize (ctx);
}

static gboolean
ensure_working_weight (CudaCtx *ctx, UnetBackendOp *op, GError **error)
{
  CudaTrainOp *tr = op->train;
  gint k = op->d.kind == UNET_OP_UPCONV2 ? 2 : op->d.k;
  gsize numel = (gsize) tr->a * tr->b * k * k;

  if (tr->work_version == ctx->params_version)
    return TRUE;
  if (!check_slab (ctx, error))
    return FALSE;
  if ((gsize) op->d.weight + numel > ctx->slab_numel
      || (gsize) op->d.bias + (gsize) op->d.dst->dims.c > ctx->slab_numel) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "weight at %d (%" G_GSIZE_FORMAT " floats) or bias at %d is outside the %"
        G_GSIZE_FORMAT "-float parameter slab", op->d.weight, numel, op->d.bias,
        ctx->slab_numel);
    return FALSE;
  }
  /* [a, b, k, k] -> [a, k, k, b] is NCHW -> NHWC of (n = a, c = b, h = k, w = k) */
  if (!KERNEL_CHECK (unet_cuda_nchw_to_nhwc (ctx->params + op->d.weight,
              working_weight (ctx, op), tr->f32 ? UNET_CUDA_F32 : ctx->dtype, tr->a, tr->b,
              k, k, ctx->stream), error))
    return FALSE;
  tr->work_version = ctx->params_version;
  return TRUE;
}

/* ------------------------------------------------------------------ ops -- */

void
cuda_train_op_free (UnetBackendOp *op)
{
  CudaTrainOp *tr;

  if (op == NULL)
    return;
  tr = op->train;
  if (tr != NULL) {
    if (tr->x_desc)
      cudnnDestroyTensorDescriptor (tr->x_desc);
    if (tr->y_desc)
      cudnnDestroyTensorDescriptor (tr->y_desc);
    if (tr->w_desc)
      cudnnDestroyFilterDescriptor (tr->w_desc);
    if (tr->fwd)
      cudnnDestroyConvolutionDescriptor (tr->fwd);
    if (tr->bwd_data)
      cudnnDestroyConvolutionDescriptor (tr->bwd_data);
    if (tr->bwd_filter)
      cudnnDestroyConvolutionDescriptor (tr->bwd_filter);
    cudaFree (tr->mean);
    cudaFree (tr->invstd);
    cudaFree (tr->argmax);
    cudaFree (tr->w32);
    g_free (tr);
  }
  g_free (op);
}

/* Shapes and parameters of a training desc: backend.h's shape rules, then what
 * this backend needs (bound tensors, parameters inside the slab). */
static gboolean
check_desc (const CudaCtx *ctx, const UnetOpDesc *d, GError **error)
{
  const UnetDims *t = &d->dst->dims;
  gboolean ok = TRUE;

  if (!unet_op_desc_check_shapes (d, &d->src->dims, &d->dst->dims,
          d->diff_src ? &d->diff_src->dims : NULL, d->diff_dst ? &d->diff_dst->dims : NULL,
          error))
    return FALSE;
  if (cuda_tensor_data (d->src) == NULL || cuda_tensor_data (d->dst) == NULL
      || cuda_tensor_data (d->diff_dst) == NULL
      || (d->diff_src != NULL && cuda_tensor_data (d->diff_src) == NULL)) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "training op %d: every tensor must be bound to an arena before op_new", d->kind);
    return FALSE;
  }
  switch (d->kind) {
    case UNET_OP_BATCHNORM:
      ok = d->bn[0] >= 0 && d->bn[1] >= 0 && d->bn[2] >= 0 && d->bn[3] >= 0;
      if (ok && ctx->slab_numel != 0)
        for (gint q = 0; q < 4; q++)
          ok = ok && (gsize) d->bn[q] + (gsize) t->c <= ctx->slab_numel;
      break;
    case UNET_OP_DROPOUT:
      ok = d->dropout >= 0.0 && d->dropout < 1.0;
      break;
    case UNET_OP_SOFTMAX:
    case UNET_OP_SIGMOID:
      g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
          "op %d has no training form (training graphs end at the logits)", d->kind);
      return FALSE;
    default:
      break;
  }
  if (!ok)
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "training op %d: its parameters do not fit (batch-norm offsets outside the "
        "slab, or dropout outside [0, 1))", d->kind);
  return ok;
}

UnetBackendOp *
cuda_train_op_new (CudaCtx *ctx, const UnetOpDesc *desc, GError **error)
{
  UnetBackendOp *op;
  CudaTrainOp *tr;
  gsize scratch = 0, pooled;
  gboolean ok = TRUE;

  if (!cuda_use_device (ctx, error) || !check_desc (ctx, desc, error))
    return NULL;
  op = g_new0 (UnetBackendOp, 1);
  tr = op->train = g_new0 (CudaTrainOp, 1);
  op->ctx = ctx;
  op->d = *desc;
  tr->work_version = G_MAXUINT64;
  /* dense stand-ins of the views the op reads or writes through the scratch */
  if (desc->kind != UNET_OP_CROP_COPY) {
    dense_init (ctx, &tr->src, desc->src, &scratch);
    dense_init (ctx, &tr->dst, desc->dst, &scratch);
    dense_init (ctx, &tr->diff_dst, desc->diff_dst, &scratch);
  }
  if (desc->diff_src != NULL) {
    /* a dense diff_src is written in place unless it is accumulated and the producer
     * cannot add (batch norm, dropout: their result goes to a stand-in, then added) */
    gboolean native = desc->kind == UNET_OP_MAXPOOL2 || desc->kind == UNET_OP_CONV
        || desc->kind == UNET_OP_UPCONV2 || desc->kind == UNET_OP_CROP_COPY;
    tr->dsrc_native = native;
    tr->diff_src.t = desc->diff_src;
    tr->diff_src.view = desc->diff_src->parent != NULL;
    /* a 16-bit convolution may switch to f32 (conv_use_f32), which adds through it */
    if (tr->diff_src.view || (desc->accumulate && !native)
        || (desc->accumulate && ctx->dtype != UNET_CUDA_F32
            && (desc->kind == UNET_OP_CONV || desc->kind == UNET_OP_UPCONV2))) {
      tr->diff_src.off = scratch;
      scratch += dense_bytes (ctx, desc->diff_src);
    }
    if (tr->diff_src.view && desc->accumulate) {
      tr->acc_off = scratch;
      scratch += dense_bytes (ctx, desc->diff_src);
    }
  } else if (desc->kind == UNET_OP_BATCHNORM) {
    /* its kernel always writes dx: into the scratch, discarded */
    tr->diff_src.off = scratch;
    scratch += dense_bytes (ctx, desc->src);
  }
  if (scratch > 0
      && !cuda_grow_device (&ctx->scratch, &ctx->scratch_bytes, scratch, "scratch", error))
    goto fail;
  /* per-channel reductions: bias, batch-norm */
  pooled = ((gsize) UNET_CUDA_REDUCE_BLOCKS * 2 + 2) * desc->dst->dims.c * sizeof (double);
  if ((desc->kind == UNET_OP_CONV || desc->kind == UNET_OP_UPCONV2
          || desc->kind == UNET_OP_BATCHNORM)
      && !cuda_grow_device ((void **) &ctx->partials, &ctx->partials_bytes, pooled,
          "reduction scratch", error))
    goto fail;
  switch (desc->kind) {
    case UNET_OP_CONV:
    case UNET_OP_UPCONV2:
      ok = conv_init (ctx, op, error);
      break;
    case UNET_OP_BATCHNORM:
      ok = cuda_alloc ((void **) &tr->mean, desc->dst->dims.c * sizeof (float),
          "batch statistics", error)
          && cuda_alloc ((void **) &tr->invstd, desc->dst->dims.c * sizeof (float),
          "batch statistics", error);
      break;
    case UNET_OP_MAXPOOL2:
      ok = cuda_alloc ((void **) &tr->argmax, dims_elems (&desc->dst->dims),
          "pooling indices", error);
      break;
    default:
      break;
  }
  if (!ok)
    goto fail;
  /* gradient seeds (dL/dlogits) are what fp16 loss scaling multiplies */
  (desc->diff_dst->parent ? desc->diff_dst->parent : desc->diff_dst)->is_diff_dst = TRUE;
  if (desc->diff_src != NULL)
    (desc->diff_src->parent ? desc->diff_src->parent : desc->diff_src)->is_diff_src = TRUE;
  return op;

fail:
  cuda_train_op_free (op);
  return NULL;
}

/* ------------------------------------------------------------- forward -- */

/* cuDNN accepted the shape when the algorithms were chosen but has no 16-bit kernel
 * for it now: the op switches to f32 for good (once per op, i.e. per shape). */
static gboolean
unsupported_16bit (UnetBackendOp *op, cudnnStatus_t st)
{
  return CUDNN_STATUS_CATEGORY (st) == CUDNN_STATUS_NOT_SUPPORTED && !op->train->f32
      && op->ctx->dtype != UNET_CUDA_F32;
}

static gboolean
switch_to_f32 (CudaCtx *ctx, UnetBackendOp *op, GError **error)
{
  g_debug ("cuda: training op %d not supported in 16 bit at run time; running it in f32",
      op->d.kind);
  return conv_use_f32 (ctx, op, error) && ensure_working_weight (ctx, op, error);
}

/* f32 mode: src -> f32, convolve, bias (+ ReLU), -> the activation type. */
static gboolean
conv_forward_f32 (CudaCtx *ctx, UnetBackendOp *op, GError **error)
{
  CudaTrainOp *tr = op->train;
  const UnetOpDesc *d = &op->d;
  float *s32 = f32_buf (op, FALSE, FALSE), *d32 = f32_buf (op, TRUE, FALSE);
  gsize ns = dims_elems (&d->src->dims), nd = dims_elems (&d->dst->dims);

  if (!KERNEL_CHECK (unet_cuda_cast_to_f32 (dense_ptr (ctx, &tr->src), ctx->dtype, s32, ns,
              ctx->stream), error))
    return FALSE;
  if (d->kind == UNET_OP_UPCONV2) {
    if (!CUDNN_CHECK (cudnnConvolutionBackwardData (ctx->cudnn, &one_f, tr->w_desc, tr->w32,
                tr->y_desc, s32, tr->bwd_data, tr->algo_bwd_data, ctx->workspace,
                tr->ws_bwd_data, &zero_f, tr->x_desc, d32), error))
      return FALSE;
  } else if (!CUDNN_CHECK (cudnnConvolutionForward (ctx->cudnn, &one_f, tr->x_desc, s32,
              tr->w_desc, tr->w32, tr->fwd, tr->algo_fwd, ctx->workspace, tr->ws_fwd,
              &zero_f, tr->y_desc, d32), error)) {
    return FALSE;
  }
  return KERNEL_CHECK (unet_cuda_bias_act (d32, d32, UNET_CUDA_F32, ctx->params + d->bias,
          nd, d->dst->dims.c, d->relu, ctx->stream), error)
      && KERNEL_CHECK (unet_cuda_cast_from_f32 (d32, dense_ptr (ctx, &tr->dst), ctx->dtype,
          nd, ctx->stream), error)
      && dense_scatter (ctx, &tr->dst, NULL, error);
}

static gboolean
conv_forward_training (CudaCtx *ctx, UnetBackendOp *op, GError **error)
{
  CudaTrainOp *tr = op->train;
  const UnetOpDesc *d = &op->d;
  void *x = dense_ptr (ctx, &tr->src), *y = dense_ptr (ctx, &tr->dst);
  const float *bias = ctx->params + d->bias;
  gsize count = dims_elems (&d->dst->dims);
  gboolean bias_in_copy = tr->dst.view && !d->relu;
  cudnnStatus_t st;

  if (!ensure_working_weight (ctx, op, error) || !dense_gather (ctx, &tr->src, error))
    return FALSE;
  if (tr->f32)
    return conv_forward_f32 (ctx, op, error);
  if (d->kind == UNET_OP_UPCONV2)
    st = cudnnConvolutionBackwardData (ctx->cudnn, &one_f, tr->w_desc,
        working_weight (ctx, op), tr->y_desc, x, tr->bwd_data, tr->algo_bwd_data,
        ctx->workspace, tr->ws_bwd_data, &zero_f, tr->x_desc, y);
  else
    st = cudnnConvolutionForward (ctx->cudnn, &one_f, tr->x_desc, x, tr->w_desc,
        working_weight (ctx, op), tr->fwd, tr->algo_fwd, ctx->workspace, tr->ws_fwd,
        &zero_f, tr->y_desc, y);
  if (unsupported_16bit (op, st))
    return switch_to_f32 (ctx, op, error) && conv_forward_f32 (ctx, op, error);
  if (!CUDNN_CHECK (st, error))
    return FALSE;
  /* + bias (and ReLU); into a view the copy adds the bias on the way */
  if (!bias_in_copy
      && !KERNEL_CHECK (unet_cuda_bias_act (y, y, ctx->dtype, bias, count, d->dst->dims.c,
              d->relu, ctx->stream), error))
    return FALSE;
  return dense_scatter (ctx, &tr->dst, bias_in_copy ? bias : NULL, error);
}

gboolean
cuda_op_forward_training (UnetBackendOp *op, guint64 seed, GError **error)
{
  CudaCtx *ctx = op->ctx;
  CudaTrainOp *tr = op->train;
  const UnetOpDesc *d = &op->d;
  const UnetBackendTensor *src = d->src, *dst = d->dst;
  gsize rows = cuda_tensor_pixels (dst);
  gint c = dst->dims.c;
  void *x, *y;

  if (tr == NULL) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "op %d was built for inference (desc.training is FALSE)", d->kind);
    return FALSE;
  }
  /* an fp16 backward pass before this forward is complete */
  if (!cuda_use_device (ctx, error) || !check_slab (ctx, error) || !fold_pass (ctx, error))
    return FALSE;
  tr->forward_done = FALSE;
  x = tr->src.t != NULL ? dense_ptr (ctx, &tr->src) : NULL;
  y = tr->dst.t != NULL ? dense_ptr (ctx, &tr->dst) : NULL;
  switch (d->kind) {
    case UNET_OP_CONV:
    case UNET_OP_UPCONV2:
      if (!conv_forward_training (ctx, op, error))
        return FALSE;
      break;
    case UNET_OP_BATCHNORM:
      if (!check_desc (ctx, d, error)     /* the offsets against the slab's size */
          || !dense_gather (ctx, &tr->src, error)
          || !KERNEL_CHECK (unet_cuda_batchnorm_forward_train (x, y, ctx->dtype, rows, c,
                  ctx->params + d->bn[0], ctx->params + d->bn[1], BN_EPS, BN_MOMENTUM,
                  ctx->params + d->bn[2], ctx->params + d->bn[3], tr->mean, tr->invstd,
                  ctx->partials, ctx->stream), error)
          || (d->relu && !KERNEL_CHECK (unet_cuda_bias_act (y, y, ctx->dtype, NULL,
                      rows * c, c, TRUE, ctx->stream), error))
          || !dense_scatter (ctx, &tr->dst, NULL, error))
        return FALSE;
      break;
    case UNET_OP_MAXPOOL2:
      if (!dense_gather (ctx, &tr->src, error)
          || !KERNEL_CHECK (unet_cuda_maxpool_forward (x, y, tr->argmax, ctx->dtype,
                  src->dims.n, src->dims.h, src->dims.w, c, ctx->stream), error)
          || !dense_scatter (ctx, &tr->dst, NULL, error))
        return FALSE;
      break;
    case UNET_OP_DROPOUT:
      tr->seed = seed;
      if (!dense_gather (ctx, &tr->src, error)
          || !KERNEL_CHECK (unet_cuda_dropout (x, y, ctx->dtype, rows * c,
                  (float) d->dropout, seed, ctx->stream), error)
          || !dense_scatter (ctx, &tr->dst, NULL, error))
        return FALSE;
      break;
    case UNET_OP_CROP_COPY:
      if (!KERNEL_CHECK (unet_cuda_copy_window (cuda_tensor_data (src), src->dims.h,
                  src->dims.w, cuda_tensor_stride (src), 0, d->crop_y, d->crop_x,
                  cuda_tensor_data (dst), cuda_tensor_stride (dst), 0, dst->dims.n,
                  dst->dims.h, dst->dims.w, c, NULL, ctx->dtype, ctx->stream), error))
        return FALSE;
      break;
    default:
      g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT, "unknown op %d", d->kind);
      return FALSE;
  }
  tr->forward_done = TRUE;
  return TRUE;
}

/* ------------------------------------------------------------ backward -- */

/* diff_dst dense (gathered), masked by dst > 0 when the op has a fused ReLU. */
static void *
diff_dst_masked (CudaCtx *ctx, UnetBackendOp *op, GError **error)
{
  CudaTrainOp *tr = op->train;
  void *dy = dense_ptr (ctx, &tr->diff_dst);

  if (!dense_gather (ctx, &tr->diff_dst, error))
    return NULL;
  if (op->d.relu
      && (!dense_gather (ctx, &tr->dst, error)
          || !KERNEL_CHECK (unet_cuda_relu_backward (dense_ptr (ctx, &tr->dst), dy, dy,
                  ctx->dtype, dims_elems (&op->d.dst->dims), ctx->stream), error)))
    return NULL;
  return dy;
}

/* f32 mode: dy (masked, activation type) and src -> f32; the filter gradient (when
 * `filter`) and diff_src in f32, diff_src cast back. */
static gboolean
conv_backward_f32 (CudaCtx *ctx, UnetBackendOp *op, const void *dy, gboolean filter,
    GError **error)
{
  CudaTrainOp *tr = op->train;
  const UnetOpDesc *d = &op->d;
  gboolean up = d->kind == UNET_OP_UPCONV2, acc;
  float *s32 = f32_buf (op, FALSE, FALSE), *ds32 = f32_buf (op, FALSE, TRUE);
  float *dy32 = f32_buf (op, TRUE, TRUE);
  gsize ns = dims_elems (&d->src->dims), nd = dims_elems (&d->dst->dims);
  void *out;

  if (!KERNEL_CHECK (unet_cuda_cast_to_f32 (dy, ctx->dtype, dy32, nd, ctx->stream), error)
      || !KERNEL_CHECK (unet_cuda_cast_to_f32 (dense_ptr (ctx, &tr->src), ctx->dtype, s32,
              ns, ctx->stream), error))
    return FALSE;
  if (filter
      && (!CUDNN_CHECK (cudnnConvolutionBackwardFilter (ctx->cudnn, &one_f, tr->x_desc,
                  up ? dy32 : s32, tr->y_desc, up ? s32 : dy32, tr->bwd_filter,
                  tr->algo_bwd_filter, ctx->workspace, tr->ws_bwd_filter, &zero_f, tr->w_desc,
                  ctx->dw), error)
          || !KERNEL_CHECK (unet_cuda_filter_grad_accumulate (ctx->dw, UNET_CUDA_F32,
                  grad_slab (ctx) + d->weight, tr->a, tr->b, up ? 4 : d->k * d->k, 1.0f,
                  ctx->stream), error)))
    return FALSE;
  if (d->diff_src == NULL)
    return TRUE;
  out = dsrc_begin (op, &acc);  /* acc is FALSE: f32 mode adds through the stand-in */
  if (up) {
    if (!CUDNN_CHECK (cudnnConvolutionForward (ctx->cudnn, &one_f, tr->x_desc, dy32,
                tr->w_desc, tr->w32, tr->fwd, tr->algo_fwd, ctx->workspace, tr->ws_fwd,
                &zero_f, tr->y_desc, ds32), error))
      return FALSE;
  } else if (!CUDNN_CHECK (cudnnConvolutionBackwardData (ctx->cudnn, &one_f, tr->w_desc,
              tr->w32, tr->y_desc, dy32, tr->bwd_data, tr->algo_bwd_data, ctx->workspace,
              tr->ws_bwd_data, &zero_f, tr->x_desc, ds32), error)) {
    return FALSE;
  }
  return KERNEL_CHECK (unet_cuda_cast_from_f32 (ds32, out, ctx->dtype, ns, ctx->stream),
      error)
      && dsrc_end (op, out, error);
}

static gboolean
conv_backward (CudaCtx *ctx, UnetBackendOp *op, GError **error)
{
  CudaTrainOp *tr = op->train;
  const UnetOpDesc *d = &op->d;
  gboolean up = d->kind == UNET_OP_UPCONV2;
  float *g = grad_slab (ctx);
  gint kk = up ? 4 : d->k * d->k;
  void *dy, *x, *out;
  gboolean acc;
  cudnnStatus_t st;

  if ((dy = diff_dst_masked (ctx, op, error)) == NULL
      || !ensure_working_weight (ctx, op, error) || !dense_gather (ctx, &tr->src, error))
    return FALSE;
  x = dense_ptr (ctx, &tr->src);
  /* bias: the sum of dL/d dst over pixels */
  if (!KERNEL_CHECK (unet_cuda_bias_grad (dy, ctx->dtype, cuda_tensor_pixels (d->dst),
              d->dst->dims.c, g + d->bias, TRUE, ctx->partials, ctx->stream), error))
    return FALSE;
  if (tr->f32)
    return conv_backward_f32 (ctx, op, dy, TRUE, error);
  /* weights: relation x = src, y = dy (conv) or x = dy, y = src (upconv) */
  st = cudnnConvolutionBackwardFilter (ctx->cudnn, &one_f, tr->x_desc, up ? dy : x,
      tr->y_desc, up ? x : dy, tr->bwd_filter, tr->algo_bwd_filter, ctx->workspace,
      tr->ws_bwd_filter, &zero_f, tr->w_desc, ctx->dw);
  if (unsupported_16bit (op, st))
    return switch_to_f32 (ctx, op, error) && conv_backward_f32 (ctx, op, dy, TRUE, error);
  if (!CUDNN_CHECK (st, error)
      || !KERNEL_CHECK (unet_cuda_filter_grad_accumulate (ctx->dw, ctx->dtype, g + d->weight,
              tr->a, tr->b, kk, 1.0f, ctx->stream), error))
    return FALSE;
  if (d->diff_src == NULL)
    return TRUE;
  out = dsrc_begin (op, &acc);
  if (up)
    st = cudnnConvolutionForward (ctx->cudnn, &one_f, tr->x_desc, dy, tr->w_desc,
        working_weight (ctx, op), tr->fwd, tr->algo_fwd, ctx->workspace, tr->ws_fwd,
        acc ? &one_f : &zero_f, tr->y_desc, out);
  else
    st = cudnnConvolutionBackwardData (ctx->cudnn, &one_f, tr->w_desc,
        working_weight (ctx, op), tr->y_desc, dy, tr->bwd_data, tr->algo_bwd_data,
        ctx->workspace, tr->ws_bwd_data, acc ? &one_f : &zero_f, tr->x_desc, out);
  if (unsupported_16bit (op, st))
    return switch_to_f32 (ctx, op, error) && conv_backward_f32 (ctx, op, dy, FALSE, error);
  return CUDNN_CHECK (st, error) && dsrc_end (op, out, error);
}

gboolean
cuda_op_backward (UnetBackendOp *op, GError **error)
{
  CudaCtx *ctx = op->ctx;
  CudaTrainOp *tr = op->train;
  const UnetOpDesc *d = &op->d;
  const UnetBackendTensor *src = d->src, *dst = d->dst, *dd = d->diff_dst;
  gsize rows = cuda_tensor_pixels (dst);
  gint c = dst->dims.c;
  float *g;
  void *dy, *out;
  gboolean acc;

  if (tr == NULL || !tr->forward_done) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_FAILED,
        "backward of op %d without a training forward before it", d->kind);
    return FALSE;
  }
  if (!cuda_use_device (ctx, error))
    return FALSE;
  ctx->pass_open = ctx->step_grads != NULL;
  g = grad_slab (ctx);
  switch (d->kind) {
    case UNET_OP_CONV:
    case UNET_OP_UPCONV2:
      return conv_backward (ctx, op, error);
    case UNET_OP_BATCHNORM:
      if ((dy = diff_dst_masked (ctx, op, error)) == NULL
          || !dense_gather (ctx, &tr->src, error))
        return FALSE;
      if (d->diff_src == NULL) {
        /* only dgamma, dbeta are wanted; dx goes to the scratch */
        out = (guint8 *) ctx->scratch + tr->diff_src.off;
      } else {
        out = dsrc_begin (op, &acc);
      }
      return KERNEL_CHECK (unet_cuda_batchnorm_backward (dense_ptr (ctx, &tr->src), dy, out,
              ctx->dtype, rows, c, ctx->params + d->bn[0], tr->mean, tr->invstd,
              g + d->bn[0], g + d->bn[1], ctx->partials, ctx->stream), error)
          && (d->diff_src == NULL || dsrc_end (op, out, error));
    case UNET_OP_MAXPOOL2:
      if (d->diff_src == NULL)
        return TRUE;
      out = dsrc_begin (op, &acc);
      return dense_gather (ctx, &tr->diff_dst, error)
          && KERNEL_CHECK (unet_cuda_maxpool_backward (dense_ptr (ctx, &tr->diff_dst),
              tr->argmax, out, ctx->dtype, src->dims.n, src->dims.h, src->dims.w, c, acc,
              ctx->stream), error)
          && dsrc_end (op, out, error);
    case UNET_OP_DROPOUT:
      if (d->diff_src == NULL)
        return TRUE;
      out = dsrc_begin (op, &acc);
      /* the same mask (seed, element index) scales the gradient */
      return dense_gather (ctx, &tr->diff_dst, error)
          && KERNEL_CHECK (unet_cuda_dropout (dense_ptr (ctx, &tr->diff_dst), out,
              ctx->dtype, rows * c, (float) d->dropout, tr->seed, ctx->stream), error)
          && dsrc_end (op, out, error);
    case UNET_OP_CROP_COPY:
      if (d->diff_src == NULL)
        return TRUE;
      out = dsrc_begin (op, &acc);
      /* written whole: zero outside the window */
      return (acc || CUDA_CHECK (cudaMemsetAsync (out, 0, dims_elems (&src->dims)
                  * cuda_esize (ctx), ctx->stream), error))
          && KERNEL_CHECK (unet_cuda_window_add (cuda_tensor_data (dd), cuda_tensor_stride (dd),
              0, out, src->dims.h, src->dims.w, src->dims.c, 0, d->crop_y, d->crop_x,
              dst->dims.n, dst->dims.h, dst->dims.w, c, ctx->dtype, ctx->stream), error)
          && dsrc_end (op, out, error);
    default:
      break;
  }
  g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT, "unknown op %d", d->kind);
  return FALSE;
}
