/* gst-unet engine — CUDA + cuDNN backend (the UnetBackendIface of backend.h).
 *
 * Owns: the device choice, one compute stream and one copy stream, the cuDNN
 * handle, the uploaded layers (weights in cuDNN's NHWC filter layout KRSC in the
 * activation precision, biases in f32 and in the activation precision), activation
 * tensors and arenas, one convolution workspace (allocated once, at the first op)
 * and one scratch buffer for ops that write into a channel view, pinned host and
 * device staging for upload/download (grown to the largest tensor seen, so a
 * steady stream allocates nothing), and the ops: cuDNN descriptors and the
 * algorithm chosen once per shape (cudnnFind*Ex on the real buffers, or the
 * heuristics of cudnnGet*_v7 with $UNET_CUDNN_FIND=0).
 *
 * Layout: activations are NHWC (channels innermost), what tensor cores want; a
 * channel view is the parent's memory at a channel offset with the parent's pixel
 * stride. cuDNN writes only dense tensors here: an op whose dst is a view computes
 * into the scratch buffer and a copy kernel moves it (plus the transposed
 * convolution's bias) into place.
 *
 * Precision: FP32 (CUDNN_FMA_MATH: no TF32, bit-comparable with the CPU up to
 * summation order), TF32 (f32 tensors, tensor-op math), BF16 and FP16 (activations
 * and weights in 16 bit, accumulation in f32).
 *
 * Training: the same context (cuda-private.h) serves the training slots, whose ops
 * and parameter slabs are in cuda-train-ops.c; op_new hands a training desc there.
 * On-device tiling (the frame slots) is cuda-frames.c.
 * The loss, the optimiser update and its state are in cuda-step.c.
 *
 * The convolution calls are cuDNN's legacy API (cudnn_cnn.h), which cuDNN 9 marks
 * deprecated but still ships and supports; it is compiled without
 * CUDNN_WARN_DEPRECATED.
 */
#include "config.h"

#include "normalize-private.h"
#include "cuda-backend.h"
#include "cuda-private.h"

#include <string.h>


/* ------------------------------------------------------------ memory -- */



static gboolean
grow_pinned (CudaCtx *ctx, gsize need, GError **error)
{
  if (need <= ctx->staging_host_bytes)
    return TRUE;
  if (ctx->staging_host != NULL) {
    /* an upload may still read it */
    if (!CUDA_CHECK (cudaStreamSynchronize (ctx->copy_stream), error))
      return FALSE;
    cudaFreeHost (ctx->staging_host);
    ctx->staging_host = NULL;
    ctx->staging_host_bytes = 0;
  }
  if (!CUDA_CHECK (cudaMallocHost ((void **) &ctx->staging_host, need), error))
    return FALSE;
  ctx->staging_host_bytes = need;
  return TRUE;
}

/* ------------------------------------------------------------- layers -- */

static void
free_layers (CudaCtx *ctx)
{
  for (gint i = 0; i < ctx->n_layers; i++) {
    cudaFree (ctx->layers[i].weight);
    cudaFree (ctx->layers[i].bias);
    cudaFree (ctx->layers[i].bias_lp);
    cudaFree (ctx->layers[i].weight_f32);
  }
  g_free (ctx->layers);
  ctx->layers = NULL;
  ctx->n_layers = 0;
}

/* PyTorch [a, b, k, k] -> [a, k, k, b]: conv [cout, cin, k, k] -> KRSC, and
 * ConvTranspose2d [cin, cout, 2, 2] -> [cin, 2, 2, cout] (cuDNN's filter for the
 * convolution whose data gradient the transposed convolution is). */
static void
permute_to_krsc (const gfloat *src, gfloat *dst, gint a, gint b, gint k)
{
  for (gint i = 0; i < a; i++)
    for (gint j = 0; j < b; j++)
      for (gint y = 0; y < k; y++)
        for (gint x = 0; x < k; x++)
          dst[(((gsize) i * k + y) * k + x) * b + j] = src[(((gsize) i * b + j) * k + y) * k + x];
}

/* Uploads f32 host data `n` elements into a new device buffer of type `dtype`,
 * converting on the device through the staging buffer. */
static gboolean
upload_converted (CudaCtx *ctx, const gfloat *host, gsize n, UnetCudaDType dtype, void **out,
    const gchar *what, GError **error)
{
  /* Copies go on the backend's (non-blocking) stream: a blocking cudaMemcpy on the
   * legacy default stream is not ordered with the kernels of non-blocking streams,
   * e.g. the cast below or a forward pass still reading the staging buffer. */
  if (!cuda_alloc (out, n * unet_cuda_dtype_size (dtype), what, error))
    return FALSE;
  if (dtype == UNET_CUDA_F32)
    return CUDA_CHECK (cudaMemcpyAsync (*out, host, n * sizeof (gfloat),
            cudaMemcpyHostToDevice, ctx->stream), error)
        && CUDA_CHECK (cudaStreamSynchronize (ctx->stream), error);
  if (!cuda_grow_device ((void **) &ctx->staging_dev, &ctx->staging_dev_bytes, n * sizeof (gfloat),
          "staging", error)
      || !CUDA_CHECK (cudaMemcpyAsync (ctx->staging_dev, host, n * sizeof (gfloat),
              cudaMemcpyHostToDevice, ctx->stream), error)
      || !KERNEL_CHECK (unet_cuda_cast_from_f32 (ctx->staging_dev, *out, dtype, n,
              ctx->stream), error))
    return FALSE;
  /* `host` may be freed on return */
  return CUDA_CHECK (cudaStreamSynchronize (ctx->stream), error);
}

static gboolean
cuda_upload_layers (UnetBackend *be, const UnetLayerParams *layers, gint n_layers,
    GError **error)
{
  CudaCtx *ctx = cuda_ctx_of (be);

  if (!cuda_use_device (ctx, error))
    return FALSE;
  /* a forward pass may still read the old layers */
  if (ctx->n_layers > 0 && !CUDA_CHECK (cudaStreamSynchronize (ctx->stream), error))
    return FALSE;
  free_layers (ctx);
  ctx->layers = g_new0 (CudaLayer, n_layers);
  ctx->n_layers = n_layers;
  for (gint i = 0; i < n_layers; i++) {
    const UnetLayerParams *lp = &layers[i];
    CudaLayer *l = &ctx->layers[i];
    gsize n = (gsize) lp->cin * lp->cout * lp->k * lp->k;
    g_autofree gfloat *krsc = NULL;

    if (lp->cin < 1 || lp->cout < 1 || lp->k < 1 || lp->weight == NULL || lp->bias == NULL) {
      g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
          "layer %d: invalid parameters (%d -> %d, kernel %d)", i, lp->cin, lp->cout, lp->k);
      return FALSE;
    }
    l->kind = lp->kind;
    l->host_weight = lp->weight;
    l->cin = lp->cin;
    l->cout = lp->cout;
    l->k = lp->k;
    krsc = g_new (gfloat, n);
    if (lp->kind == UNET_LAYER_CONV)
      permute_to_krsc (lp->weight, krsc, lp->cout, lp->cin, lp->k);
    else
      permute_to_krsc (lp->weight, krsc, lp->cin, lp->cout, lp->k);
    if (!upload_converted (ctx, krsc, n, ctx->dtype, &l->weight, "weights", error)
        || !upload_converted (ctx, lp->bias, lp->cout, UNET_CUDA_F32, (void **) &l->bias,
            "biases", error)
        || !upload_converted (ctx, lp->bias, lp->cout, ctx->dtype, &l->bias_lp, "biases",
            error))
      return FALSE;
  }
  return TRUE;
}

/* ------------------------------------------------------------ tensors -- */

static UnetBackendTensor *
cuda_tensor_new (UnetBackend *be, const UnetDims *dims, GError **error)
{
  CudaCtx *ctx = cuda_ctx_of (be);
  UnetBackendTensor *t;
  guint64 elems;

  if (dims->n < 1 || dims->c < 1 || dims->h < 1 || dims->w < 1) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "invalid tensor dims %dx%dx%dx%d", dims->n, dims->c, dims->h, dims->w);
    return NULL;
  }
  elems = (guint64) dims->n * dims->c * dims->h * dims->w;
  /* cuDNN's legacy tensor descriptors take int dims and strides (cuda_set_nhwc_desc): an
   * activation of 2^31 elements or more cannot be described. OUT_OF_MEMORY, so the
   * segmenter halves its batch and an explicit tile size gets an actionable error. */
  if (elems > (guint64) G_MAXINT32) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_OUT_OF_MEMORY,
        "activation %d x %d x %d x %d has %" G_GUINT64_FORMAT " elements, more than the "
        "2^31 - 1 cuDNN can address; use a smaller tile-size or batch-size", dims->n,
        dims->c, dims->h, dims->w, elems);
    return NULL;
  }
  t = g_new0 (UnetBackendTensor, 1);
  t->ctx = ctx;
  t->dims = *dims;
  t->bytes = (elems * cuda_esize (ctx) + CUDA_ALIGN - 1) / CUDA_ALIGN * CUDA_ALIGN;
  return t;
}

static UnetBackendTensor *
cuda_tensor_view (UnetBackend *be, UnetBackendTensor *parent, gint c_offset, gint c,
    GError **error)
{
  UnetBackendTensor *t;

  if (parent->parent != NULL || c_offset < 0 || c < 1 || c_offset + c > parent->dims.c) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "invalid channel view [%d, %d) of a %d-channel tensor", c_offset, c_offset + c,
        parent->dims.c);
    return NULL;
  }
  t = g_new0 (UnetBackendTensor, 1);
  t->ctx = parent->ctx;
  t->dims = parent->dims;
  t->dims.c = c;
  t->parent = parent;
  t->c_offset = c_offset;
  return t;
}

static void
cuda_tensor_free (UnetBackendTensor *t)
{
  g_free (t);
}

static gsize
cuda_tensor_bytes (UnetBackendTensor *t)
{
  return t->parent ? 0 : t->bytes;
}

static void
cuda_tensor_bind (UnetBackendTensor *t, UnetBackendArena *arena, gsize offset)
{
  if (t->parent == NULL) {
    t->arena = arena;
    t->offset = offset;
  }
}




static UnetBackendArena *
cuda_arena_new (UnetBackend *be, gsize bytes, GError **error)
{
  UnetBackendArena *a;

  if (!cuda_use_device (cuda_ctx_of (be), error))
    return NULL;
  a = g_new0 (UnetBackendArena, 1);
  if (!cuda_alloc (&a->data, bytes, "activations", error)) {
    g_free (a);
    return NULL;
  }
  a->bytes = bytes;
  return a;
}

static void
cuda_arena_free (UnetBackendArena *arena)
{
  if (arena == NULL)
    return;
  cudaFree (arena->data);
  g_free (arena);
}

/* ---------------------------------------------------------------- ops -- */


static void
cuda_op_free (UnetBackendOp *op)
{
  if (op == NULL)
    return;
  if (op->train != NULL) {
    cuda_train_op_free (op);
    return;
  }
  if (op->x_desc)
    cudnnDestroyTensorDescriptor (op->x_desc);
  if (op->y_desc)
    cudnnDestroyTensorDescriptor (op->y_desc);
  if (op->bias_desc)
    cudnnDestroyTensorDescriptor (op->bias_desc);
  if (op->w_desc)
    cudnnDestroyFilterDescriptor (op->w_desc);
  if (op->conv_desc)
    cudnnDestroyConvolutionDescriptor (op->conv_desc);
  if (op->act_desc)
    cudnnDestroyActivationDescriptor (op->act_desc);
  g_free (op);
}


static gboolean
choose_fwd_algo (CudaCtx *ctx, UnetBackendOp *op, const void *x, const void *w, void *y,
    GError **error)
{
  cudnnConvolutionFwdAlgoPerf_t perf[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
  gint got = 0;
  cudnnStatus_t st = CUDNN_STATUS_NOT_SUPPORTED;

  if (ctx->find)
    st = cudnnFindConvolutionForwardAlgorithmEx (ctx->cudnn, op->x_desc, x, op->w_desc, w,
        op->conv_desc, op->y_desc, y, CUDNN_CONVOLUTION_FWD_ALGO_COUNT, &got, perf,
        ctx->workspace, ctx->workspace_bytes);
  if (st != CUDNN_STATUS_SUCCESS
      && !CUDNN_CHECK (cudnnGetConvolutionForwardAlgorithm_v7 (ctx->cudnn, op->x_desc,
              op->w_desc, op->conv_desc, op->y_desc, CUDNN_CONVOLUTION_FWD_ALGO_COUNT, &got,
              perf), error))
    return FALSE;
  for (gint i = 0; i < got; i++) {
    if (perf[i].status == CUDNN_STATUS_SUCCESS && perf[i].memory <= ctx->workspace_bytes) {
      op->algo = perf[i].algo;
      op->ws_bytes = perf[i].memory;
      return CUDNN_CHECK (cudnnSetConvolutionMathType (op->conv_desc, perf[i].mathType),
          error);
    }
  }
  g_set_error (error, UNET_ERROR, UNET_ERROR_BACKEND,
      "cuDNN has no convolution algorithm for %dx%dx%dx%d (%d -> %d channels) within a "
      "%.0f MiB workspace", op->d.src->dims.n, op->d.src->dims.c, op->d.src->dims.h,
      op->d.src->dims.w, op->d.src->dims.c, op->d.dst->dims.c,
      ctx->workspace_bytes / 1048576.0);
  return FALSE;
}

static gboolean
choose_bwd_data_algo (CudaCtx *ctx, UnetBackendOp *op, const void *w, const void *dy,
    void *dx, GError **error)
{
  cudnnConvolutionBwdDataAlgoPerf_t perf[CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT];
  gint got = 0;
  cudnnStatus_t st = CUDNN_STATUS_NOT_SUPPORTED;

  /* the transposed convolution's input is the "dy" (x_desc), its output "dx" (y_desc) */
  if (ctx->find)
    st = cudnnFindConvolutionBackwardDataAlgorithmEx (ctx->cudnn, op->w_desc, w, op->x_desc,
        dy, op->conv_desc, op->y_desc, dx, CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT, &got, perf,
        ctx->workspace, ctx->workspace_bytes);
  if (st != CUDNN_STATUS_SUCCESS
      && !CUDNN_CHECK (cudnnGetConvolutionBackwardDataAlgorithm_v7 (ctx->cudnn, op->w_desc,
              op->x_desc, op->conv_desc, op->y_desc, CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT,
              &got, perf), error))
    return FALSE;
  for (gint i = 0; i < got; i++) {
    if (perf[i].status == CUDNN_STATUS_SUCCESS && perf[i].memory <= ctx->workspace_bytes) {
      op->algo = perf[i].algo;
      op->ws_bytes = perf[i].memory;
      return CUDNN_CHECK (cudnnSetConvolutionMathType (op->conv_desc, perf[i].mathType),
          error);
    }
  }
  g_set_error (error, UNET_ERROR, UNET_ERROR_BACKEND,
      "cuDNN has no transposed-convolution algorithm for %dx%dx%dx%d within a %.0f MiB "
      "workspace", op->d.src->dims.n, op->d.src->dims.c, op->d.src->dims.h,
      op->d.src->dims.w, ctx->workspace_bytes / 1048576.0);
  return FALSE;
}

/* Where a conv/upconv writes its dense output: the dst itself, or the scratch. */
static void *
op_dense_out (UnetBackendOp *op)
{
  return op->via_scratch ? op->ctx->scratch : cuda_tensor_data (op->d.dst);
}

/* Sets the op's descriptors for data type `dt` and math `math`. */
static gboolean
conv_describe (CudaCtx *ctx, UnetBackendOp *op, cudnnDataType_t dt, cudnnMathType_t math,
    GError **error)
{
  const UnetOpDesc *d = &op->d;
  const CudaLayer *l = &ctx->layers[d->layer];
  gboolean up = d->kind == UNET_OP_UPCONV2;
  UnetDims dense = d->dst->dims;
  gint pad = up ? 0 : d->pad, stride = up ? 2 : 1;
  cudnnDataType_t keep = ctx->cudnn_dtype;
  gboolean ok;

  ctx->cudnn_dtype = dt;        /* cuda_set_nhwc_desc reads it */
  ok = cuda_set_nhwc_desc (ctx, op->x_desc, &d->src->dims,
      op->f32 ? d->src->dims.c : cuda_tensor_stride (d->src), error)
      && cuda_set_nhwc_desc (ctx, op->y_desc, &dense, dense.c, error);
  ctx->cudnn_dtype = keep;
  return ok
      && CUDNN_CHECK (cudnnSetTensor4dDescriptor (op->bias_desc, CUDNN_TENSOR_NHWC, dt, 1,
          l->cout, 1, 1), error)
      /* conv: K = cout, C = cin; upconv: the filter of the convolution it is the data
       * gradient of, K = cin, C = cout */
      && CUDNN_CHECK (cudnnSetFilter4dDescriptor (op->w_desc, dt, CUDNN_TENSOR_NHWC,
          up ? l->cin : l->cout, up ? l->cout : l->cin, l->k, l->k), error)
      && CUDNN_CHECK (cudnnSetConvolution2dDescriptor (op->conv_desc, pad, pad, stride,
          stride, 1, 1, CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT), error)
      && CUDNN_CHECK (cudnnSetConvolutionMathType (op->conv_desc, math), error);
}

/* The f32 buffers of an op that runs in f32: input, then output, dense NHWC. */
static float *
op_x32 (UnetBackendOp *op)
{
  return op->ctx->scratch32;
}

static float *
op_y32 (UnetBackendOp *op)
{
  const UnetDims *s = &op->d.src->dims;
  gsize x_elems = (gsize) s->n * s->c * s->h * s->w;
  return op->ctx->scratch32 + (x_elems + 63) / 64 * 64;
}

static gboolean
conv_choose_algo (CudaCtx *ctx, UnetBackendOp *op, GError **error)
{
  const CudaLayer *l = &ctx->layers[op->d.layer];
  const void *x = op->f32 ? (const void *) op_x32 (op) : cuda_tensor_data (op->d.src);
  const void *w = op->f32 ? (const void *) l->weight_f32 : l->weight;
  void *y = op->f32 ? (void *) op_y32 (op) : op_dense_out (op);

  if (op->d.kind == UNET_OP_UPCONV2)
    return choose_bwd_data_algo (ctx, op, w, x, y, error);
  return choose_fwd_algo (ctx, op, x, w, y, error);
}

/* The layer's f32 KRSC weights, uploaded at the first op that needs them (again
 * after every upload_layers: the ops of a plan outlive a re-upload). */
static gboolean
ensure_weight_f32 (CudaCtx *ctx, CudaLayer *l, GError **error)
{
  gsize n = (gsize) l->cin * l->cout * l->k * l->k;
  g_autofree gfloat *krsc = NULL;

  if (l->weight_f32 != NULL)
    return TRUE;
  krsc = g_new (gfloat, n);
  if (l->kind == UNET_LAYER_CONV)
    permute_to_krsc (l->host_weight, krsc, l->cout, l->cin, l->k);
  else
    permute_to_krsc (l->host_weight, krsc, l->cin, l->cout, l->k);
  return upload_converted (ctx, krsc, n, UNET_CUDA_F32, (void **) &l->weight_f32,
      "f32 weights", error);
}

/* From now on this op converts its input to f32, convolves in f32 (FMA math: true
 * f32) with f32 weights, adds bias and ReLU in f32 and converts the result to the
 * activation type. */
static gboolean
conv_use_f32 (CudaCtx *ctx, UnetBackendOp *op, GError **error)
{
  CudaLayer *l = &ctx->layers[op->d.layer];
  const UnetDims *s = &op->d.src->dims, *t = &op->d.dst->dims;
  gsize x_elems = (gsize) s->n * s->c * s->h * s->w;
  gsize y_elems = (gsize) t->n * t->c * t->h * t->w;

  if (op->d.src->parent != NULL) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_BACKEND,
        "layer %d: cuDNN has no 16-bit algorithm for %d input channels and the input is "
        "a channel view; use precision fp32 or tf32", op->d.layer, l->cin);
    return FALSE;
  }
  op->f32 = TRUE;
  op->fused = FALSE;
  if (!ensure_weight_f32 (ctx, l, error))
    return FALSE;
  return cuda_grow_device ((void **) &ctx->scratch32, &ctx->scratch32_bytes,
      ((x_elems + 63) / 64 * 64 + y_elems) * sizeof (float), "f32 scratch", error)
      && conv_describe (ctx, op, CUDNN_DATA_FLOAT, CUDNN_FMA_MATH, error)
      && conv_choose_algo (ctx, op, error);
}

static gboolean
conv_op_init (CudaCtx *ctx, UnetBackendOp *op, GError **error)
{
  const UnetOpDesc *d = &op->d;
  const CudaLayer *l;
  gboolean up = d->kind == UNET_OP_UPCONV2;
  UnetDims dense = d->dst->dims;
  gint pad = up ? 0 : d->pad;

  if (d->layer < 0 || d->layer >= ctx->n_layers) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT, "op uses layer %d of %d",
        d->layer, ctx->n_layers);
    return FALSE;
  }
  l = &ctx->layers[d->layer];
  if ((l->kind == UNET_LAYER_UPCONV) != up || d->src->dims.c != l->cin
      || d->dst->dims.c != l->cout || d->src->dims.n != d->dst->dims.n
      || (up && (d->dst->dims.h != 2 * d->src->dims.h || d->dst->dims.w != 2 * d->src->dims.w))
      || (!up && (d->dst->dims.h != d->src->dims.h + 2 * pad - l->k + 1
              || d->dst->dims.w != d->src->dims.w + 2 * pad - l->k + 1))) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "layer %d (%d -> %d, kernel %d) does not fit %dx%dx%dx%d -> %dx%dx%dx%d", d->layer,
        l->cin, l->cout, l->k, d->src->dims.n, d->src->dims.c, d->src->dims.h,
        d->src->dims.w, d->dst->dims.n, d->dst->dims.c, d->dst->dims.h, d->dst->dims.w);
    return FALSE;
  }
  op->via_scratch = d->dst->parent != NULL;
  if (op->via_scratch
      && !cuda_grow_device (&ctx->scratch, &ctx->scratch_bytes,
          (gsize) dense.n * dense.c * dense.h * dense.w * cuda_esize (ctx), "scratch", error))
    return FALSE;
  if (!cuda_ensure_workspace (ctx, error)
      || !CUDNN_CHECK (cudnnCreateTensorDescriptor (&op->x_desc), error)
      || !CUDNN_CHECK (cudnnCreateTensorDescriptor (&op->y_desc), error)
      || !CUDNN_CHECK (cudnnCreateTensorDescriptor (&op->bias_desc), error)
      || !CUDNN_CHECK (cudnnCreateFilterDescriptor (&op->w_desc), error)
      || !CUDNN_CHECK (cudnnCreateConvolutionDescriptor (&op->conv_desc), error)
      || !CUDNN_CHECK (cudnnCreateActivationDescriptor (&op->act_desc), error)
      || !CUDNN_CHECK (cudnnSetActivationDescriptor (op->act_desc, CUDNN_ACTIVATION_RELU,
              CUDNN_NOT_PROPAGATE_NAN, 0.0), error))
    return FALSE;
  /* cuDNN's fused bias + activation runs any algorithm with ReLU (identity would
   * need IMPLICIT_PRECOMP_GEMM), so only ReLU convolutions are fused */
  op->fused = !up && d->relu;
  if (conv_describe (ctx, op, ctx->cudnn_dtype, ctx->math, error)
      && conv_choose_algo (ctx, op, error))
    return TRUE;
  if (ctx->dtype == UNET_CUDA_F32)
    return FALSE;
  /* cuDNN's legacy API may have no NHWC 16-bit algorithm for 1 or an odd number of
   * channels (every gray model's first convolution): this shape runs in f32 instead,
   * decided once, here */
  g_debug ("cuda: layer %d (%d -> %d channels) has no 16-bit NHWC algorithm (%s); "
      "running it in f32", d->layer, l->cin, l->cout, error && *error ? (*error)->message : "");
  g_clear_error (error);
  return conv_use_f32 (ctx, op, error);
}

static UnetBackendOp *
cuda_op_new (UnetBackend *be, const UnetOpDesc *desc, GError **error)
{
  CudaCtx *ctx = cuda_ctx_of (be);
  UnetBackendOp *op;
  const UnetDims *s, *t;
  gboolean ok = TRUE;

  if (desc->src == NULL || desc->dst == NULL) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT, "op %d without src or dst",
        desc->kind);
    return NULL;
  }
  if (desc->training)
    return cuda_train_op_new (ctx, desc, error);
  op = g_new0 (UnetBackendOp, 1);
  s = &desc->src->dims;
  t = &desc->dst->dims;
  op->ctx = ctx;
  op->d = *desc;
  if (!cuda_use_device (ctx, error) || !unet_op_desc_check_shapes (desc, s, t, NULL, NULL, error))
    goto fail;
  switch (desc->kind) {
    case UNET_OP_CONV:
    case UNET_OP_UPCONV2:
      ok = conv_op_init (ctx, op, error);
      break;
    case UNET_OP_SIGMOID:
      ok = s->c == 1;           /* the kernel's one-channel logistic */
      break;
    case UNET_OP_MAXPOOL2:
    case UNET_OP_CROP_COPY:
    case UNET_OP_SOFTMAX:
      break;
    default:
      ok = FALSE;               /* batch norm, dropout: training graphs only */
      break;
  }
  if (!ok) {
    if (error != NULL && *error == NULL)
      g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
          "op %d: shapes %dx%dx%dx%d -> %dx%dx%dx%d do not fit", desc->kind, s->n, s->c,
          s->h, s->w, t->n, t->c, t->h, t->w);
    goto fail;
  }
  /* pooling and the softmax work on dense tensors; net.c never hands them views */
  if (desc->kind != UNET_OP_CONV && desc->kind != UNET_OP_UPCONV2
      && desc->kind != UNET_OP_CROP_COPY
      && (desc->src->parent != NULL || desc->dst->parent != NULL)) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "op %d reads or writes a channel view, which only convolutions and crops may",
        desc->kind);
    goto fail;
  }
  return op;

fail:
  cuda_op_free (op);
  return NULL;
}

static const float one_f = 1.0f, zero_f = 0.0f;

/* A 16-bit net's convolution that runs in f32 (conv_use_f32): input -> f32, convolve,
 * bias (+ ReLU), -> the activation type, into the dst or (via the scratch) its view. */
static gboolean
conv_forward_f32 (UnetBackendOp *op, GError **error)
{
  CudaCtx *ctx = op->ctx;
  CudaLayer *l = &ctx->layers[op->d.layer];
  const UnetBackendTensor *src = op->d.src, *dst = op->d.dst;
  gsize x_elems = cuda_tensor_pixels (src) * src->dims.c;
  gsize count = cuda_tensor_pixels (dst) * dst->dims.c;
  float *x32 = op_x32 (op), *y32 = op_y32 (op);

  if (!ensure_weight_f32 (ctx, l, error)
      || !KERNEL_CHECK (unet_cuda_cast_to_f32 (cuda_tensor_data (src), ctx->dtype, x32, x_elems,
              ctx->stream), error))
    return FALSE;
  if (op->d.kind == UNET_OP_UPCONV2) {
    if (!CUDNN_CHECK (cudnnConvolutionBackwardData (ctx->cudnn, &one_f, op->w_desc,
                l->weight_f32, op->x_desc, x32, op->conv_desc, op->algo, ctx->workspace,
                op->ws_bytes, &zero_f, op->y_desc, y32), error))
      return FALSE;
  } else if (!CUDNN_CHECK (cudnnConvolutionForward (ctx->cudnn, &one_f, op->x_desc, x32,
              op->w_desc, l->weight_f32, op->conv_desc, op->algo, ctx->workspace,
              op->ws_bytes, &zero_f, op->y_desc, y32), error)) {
    return FALSE;
  }
  if (!KERNEL_CHECK (unet_cuda_bias_act (y32, y32, UNET_CUDA_F32, l->bias, count,
              dst->dims.c, op->d.relu, ctx->stream), error))
    return FALSE;
  if (!op->via_scratch)
    return KERNEL_CHECK (unet_cuda_cast_from_f32 (y32, cuda_tensor_data (dst), ctx->dtype, count,
            ctx->stream), error);
  return KERNEL_CHECK (unet_cuda_cast_from_f32 (y32, ctx->scratch, ctx->dtype, count,
          ctx->stream), error)
      && KERNEL_CHECK (unet_cuda_copy_window (ctx->scratch, dst->dims.h, dst->dims.w,
          dst->dims.c, 0, 0, 0, cuda_tensor_data (dst), cuda_tensor_stride (dst), 0, dst->dims.n,
          dst->dims.h, dst->dims.w, dst->dims.c, NULL, ctx->dtype, ctx->stream), error);
}

/* cuDNN accepted the shape when the algorithm was chosen but has no kernel for it
 * now: a 16-bit op switches to f32 for good (once per op, i.e. per shape). */
static gboolean
conv_unsupported (UnetBackendOp *op, cudnnStatus_t st, GError **error)
{
  if (CUDNN_STATUS_CATEGORY (st) != CUDNN_STATUS_NOT_SUPPORTED || op->f32
      || op->ctx->dtype == UNET_CUDA_F32)
    return CUDNN_CHECK (st, error);
  g_debug ("cuda: layer %d not supported in 16 bit at run time; running it in f32",
      op->d.layer);
  return conv_use_f32 (op->ctx, op, error) && conv_forward_f32 (op, error);
}

static gboolean
conv_forward (UnetBackendOp *op, GError **error)
{
  CudaCtx *ctx = op->ctx;
  const CudaLayer *l = &ctx->layers[op->d.layer];
  const UnetBackendTensor *dst = op->d.dst;
  void *out = op_dense_out (op);
  gsize count = cuda_tensor_pixels (dst) * dst->dims.c;
  gboolean bias_done = FALSE;
  cudnnStatus_t st;

  if (op->f32)
    return conv_forward_f32 (op, error);
  if (op->d.kind == UNET_OP_UPCONV2) {
    st = cudnnConvolutionBackwardData (ctx->cudnn, &one_f, op->w_desc, l->weight,
        op->x_desc, cuda_tensor_data (op->d.src), op->conv_desc, op->algo, ctx->workspace,
        op->ws_bytes, &zero_f, op->y_desc, out);
    if (st != CUDNN_STATUS_SUCCESS)
      return conv_unsupported (op, st, error);
  } else if (op->fused) {
    st = cudnnConvolutionBiasActivationForward (ctx->cudnn, &one_f, op->x_desc,
        cuda_tensor_data (op->d.src), op->w_desc, l->weight, op->conv_desc, op->algo,
        ctx->workspace, op->ws_bytes, &zero_f, op->y_desc, out, op->bias_desc, l->bias_lp,
        op->act_desc, op->y_desc, out);
    /* cuDNN 9 reports sub-codes (3000 + n) of the NOT_SUPPORTED category */
    if (CUDNN_STATUS_CATEGORY (st) == CUDNN_STATUS_NOT_SUPPORTED) {
      /* this algorithm/precision has no fused kernel: convolve, then a bias+ReLU
       * kernel, from now on */
      g_debug ("cuda: fused conv+bias+ReLU not supported for layer %d, unfusing",
          op->d.layer);
      op->fused = FALSE;
      return conv_forward (op, error);
    }
    if (!CUDNN_CHECK (st, error))
      return FALSE;
    bias_done = TRUE;
  } else {
    st = cudnnConvolutionForward (ctx->cudnn, &one_f, op->x_desc, cuda_tensor_data (op->d.src),
        op->w_desc, l->weight, op->conv_desc, op->algo, ctx->workspace, op->ws_bytes,
        &zero_f, op->y_desc, out);
    if (st != CUDNN_STATUS_SUCCESS)
      return conv_unsupported (op, st, error);
  }
  if (op->via_scratch) {
    /* dense result -> the view, adding the bias (and ReLU) on the way */
    if (!bias_done && op->d.relu
        && !KERNEL_CHECK (unet_cuda_bias_act (out, out, ctx->dtype, l->bias, count,
                dst->dims.c, TRUE, ctx->stream), error))
      return FALSE;
    return KERNEL_CHECK (unet_cuda_copy_window (out, dst->dims.h, dst->dims.w, dst->dims.c, 0,
            0, 0, cuda_tensor_data (dst), cuda_tensor_stride (dst), 0, dst->dims.n, dst->dims.h,
            dst->dims.w, dst->dims.c, bias_done || op->d.relu ? NULL : l->bias, ctx->dtype,
            ctx->stream), error);
  }
  if (bias_done)
    return TRUE;
  return KERNEL_CHECK (unet_cuda_bias_act (out, out, ctx->dtype, l->bias, count, dst->dims.c,
          op->d.relu, ctx->stream), error);
}

static gboolean
cuda_op_forward (UnetBackendOp *op, GError **error)
{
  CudaCtx *ctx = op->ctx;
  const UnetBackendTensor *src = op->d.src, *dst = op->d.dst;

  if (op->train != NULL) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "op %d was built for training: run it with op_forward_training", op->d.kind);
    return FALSE;
  }
  if (!cuda_use_device (ctx, error))
    return FALSE;
  switch (op->d.kind) {
    case UNET_OP_CONV:
    case UNET_OP_UPCONV2:
      return conv_forward (op, error);
    case UNET_OP_MAXPOOL2:
      return KERNEL_CHECK (unet_cuda_maxpool_forward (cuda_tensor_data (src), cuda_tensor_data (dst),
              NULL, ctx->dtype, src->dims.n, src->dims.h, src->dims.w, src->dims.c,
              ctx->stream), error);
    case UNET_OP_CROP_COPY:
      return KERNEL_CHECK (unet_cuda_copy_window (cuda_tensor_data (src), src->dims.h, src->dims.w,
              cuda_tensor_stride (src), 0, op->d.crop_y, op->d.crop_x, cuda_tensor_data (dst),
              cuda_tensor_stride (dst), 0, dst->dims.n, dst->dims.h, dst->dims.w, dst->dims.c,
              NULL, ctx->dtype, ctx->stream), error);
    case UNET_OP_SOFTMAX:
    case UNET_OP_SIGMOID:
      return KERNEL_CHECK (unet_cuda_softmax (cuda_tensor_data (src), cuda_tensor_data (dst),
              ctx->dtype, cuda_tensor_pixels (src), src->dims.c, ctx->stream), error);
    case UNET_OP_BATCHNORM:       /* training ops only (op_new refuses them here) */
    case UNET_OP_DROPOUT:
      break;
  }
  g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT, "unknown op %d", op->d.kind);
  return FALSE;
}

/* ------------------------------------------------------ upload/download -- */

/* The tensor is bound; a channel view goes through a dense NHWC copy in the scratch
 * (grown here, the first time a view of this size is moved). */
static gboolean
check_bound (const UnetBackendTensor *t, GError **error)
{
  CudaCtx *ctx = t->ctx;
  if (cuda_tensor_data (t) == NULL) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "upload/download needs a tensor bound to an arena");
    return FALSE;
  }
  return t->parent == NULL
      || cuda_grow_device (&ctx->scratch, &ctx->scratch_bytes,
          cuda_tensor_pixels (t) * t->dims.c * cuda_esize (ctx), "scratch", error);
}

/* dense NHWC scratch <-> the view's channels */
static gboolean
view_copy (const UnetBackendTensor *t, gboolean to_view, GError **error)
{
  CudaCtx *ctx = t->ctx;
  const UnetDims *d = &t->dims;
  if (to_view)
    return KERNEL_CHECK (unet_cuda_copy_window (ctx->scratch, d->h, d->w, d->c, 0, 0, 0,
            cuda_tensor_data (t), cuda_tensor_stride (t), 0, d->n, d->h, d->w, d->c, NULL,
            ctx->dtype, ctx->stream), error);
  return KERNEL_CHECK (unet_cuda_copy_window (cuda_tensor_data (t), d->h, d->w,
          cuda_tensor_stride (t), 0, 0, 0, ctx->scratch, d->c, 0, d->n, d->h, d->w, d->c,
          NULL, ctx->dtype, ctx->stream), error);
}

/* host NCHW f32 -> pinned -> (copy stream) device staging -> (compute stream) NHWC. */
static gboolean
cuda_upload (UnetBackendTensor *t, const gfloat *host, GError **error)
{
  CudaCtx *ctx = t->ctx;
  gsize bytes = cuda_tensor_pixels (t) * t->dims.c * sizeof (gfloat);
  gfloat scale;

  if (!cuda_use_device (ctx, error)
      || !check_bound (t, error)
      || !grow_pinned (ctx, bytes, error)
      || !cuda_grow_device ((void **) &ctx->staging_dev, &ctx->staging_dev_bytes, bytes, "staging",
          error)
      /* the previous upload's H2D copy must be done before the pinned buffer is
       * rewritten */
      || !CUDA_CHECK (cudaStreamSynchronize (ctx->copy_stream), error))
    return FALSE;
  scale = cuda_train_seed_scale (t);
  if (scale == 1.0f) {
    memcpy (ctx->staging_host, host, bytes);
  } else {
    /* fp16 training: dL/dlogits times the loss scale before it is rounded to 16 bit */
    for (gsize i = 0; i < bytes / sizeof (gfloat); i++)
      ctx->staging_host[i] = host[i] * scale;
  }
  return CUDA_CHECK (cudaStreamWaitEvent (ctx->copy_stream, ctx->staging_free, 0), error)
      && CUDA_CHECK (cudaMemcpyAsync (ctx->staging_dev, ctx->staging_host, bytes,
          cudaMemcpyHostToDevice, ctx->copy_stream), error)
      && CUDA_CHECK (cudaEventRecord (ctx->upload_done, ctx->copy_stream), error)
      && CUDA_CHECK (cudaStreamWaitEvent (ctx->stream, ctx->upload_done, 0), error)
      && KERNEL_CHECK (unet_cuda_nchw_to_nhwc (ctx->staging_dev,
          t->parent != NULL ? ctx->scratch : cuda_tensor_data (t), ctx->dtype, t->dims.n,
          t->dims.c, t->dims.h, t->dims.w, ctx->stream), error)
      && (t->parent == NULL || view_copy (t, TRUE, error))
      && CUDA_CHECK (cudaEventRecord (ctx->staging_free, ctx->stream), error);
}

/* NHWC -> (compute stream) device staging NCHW f32 -> pinned -> host. Synchronous:
 * the host data is valid on return. */
static gboolean
cuda_download (UnetBackendTensor *t, gfloat *host, GError **error)
{
  CudaCtx *ctx = t->ctx;
  gsize bytes = cuda_tensor_pixels (t) * t->dims.c * sizeof (gfloat);

  if (!cuda_use_device (ctx, error)
      || !check_bound (t, error)
      || !grow_pinned (ctx, bytes, error)
      || !cuda_grow_device ((void **) &ctx->staging_dev, &ctx->staging_dev_bytes, bytes, "staging",
          error)
      || (t->parent != NULL && !view_copy (t, FALSE, error))
      || !KERNEL_CHECK (unet_cuda_nhwc_to_nchw (t->parent != NULL ? ctx->scratch
              : cuda_tensor_data (t), ctx->dtype, ctx->staging_dev, t->dims.n, t->dims.c,
              t->dims.h, t->dims.w, ctx->stream), error)
      || !CUDA_CHECK (cudaMemcpyAsync (ctx->staging_host, ctx->staging_dev, bytes,
              cudaMemcpyDeviceToHost, ctx->stream), error)
      || !CUDA_CHECK (cudaEventRecord (ctx->staging_free, ctx->stream), error)
      || !CUDA_CHECK (cudaStreamSynchronize (ctx->stream), error))
    return FALSE;
  memcpy (host, ctx->staging_host, bytes);
  return TRUE;
}

static gboolean
cuda_synchronize (UnetBackend *be, GError **error)
{
  CudaCtx *ctx = cuda_ctx_of (be);
  return cuda_use_device (ctx, error)
      && CUDA_CHECK (cudaStreamSynchronize (ctx->copy_stream), error)
      && CUDA_CHECK (cudaStreamSynchronize (ctx->stream), error);
}

/* ------------------------------------------------------------ backend -- */

static void
cuda_free (UnetBackend *be)
{
  CudaCtx *ctx = cuda_ctx_of (be);

  if (ctx != NULL) {
    cudaSetDevice (ctx->device);
    if (ctx->stream != NULL)
      cudaStreamSynchronize (ctx->stream);
    if (ctx->copy_stream != NULL)
      cudaStreamSynchronize (ctx->copy_stream);
    free_layers (ctx);
    cuda_augment_ctx_free (ctx);
    cuda_step_ctx_free (ctx);
    cuda_train_ctx_free (ctx);
    cudaFree (ctx->workspace);
    cudaFree (ctx->scratch);
    cudaFree (ctx->scratch32);
    cudaFree (ctx->staging_dev);
    if (ctx->staging_host != NULL)
      cudaFreeHost (ctx->staging_host);
    if (ctx->cudnn != NULL)
      cudnnDestroy (ctx->cudnn);
    if (ctx->upload_done != NULL)
      cudaEventDestroy (ctx->upload_done);
    if (ctx->staging_free != NULL)
      cudaEventDestroy (ctx->staging_free);
    if (ctx->stream != NULL)
      cudaStreamDestroy (ctx->stream);
    if (ctx->copy_stream != NULL)
      cudaStreamDestroy (ctx->copy_stream);
    g_free (ctx);
  }
  g_free (be);
}

static const UnetBackendIface cuda_iface = {
  .name = "cuda",
  .free = cuda_free,
  .upload_layers = cuda_upload_layers,
  .tensor_new = cuda_tensor_new,
  .tensor_view = cuda_tensor_view,
  .tensor_free = cuda_tensor_free,
  .tensor_bytes = cuda_tensor_bytes,
  .arena_new = cuda_arena_new,
  .arena_free = cuda_arena_free,
  .tensor_bind = cuda_tensor_bind,
  .op_new = cuda_op_new,
  .op_free = cuda_op_free,
  .op_forward = cuda_op_forward,
  .upload = cuda_upload,
  .download = cuda_download,
  .synchronize = cuda_synchronize,
  .params_set = cuda_params_set,
  .params_get = cuda_params_get,
  .grads_zero = cuda_grads_zero,
  .grads_get = cuda_grads_get,
  .params_host = NULL,          /* the slabs live on the device */
  .op_forward_training = cuda_op_forward_training,
  .op_backward = cuda_op_backward,
  .loss = cuda_loss,
  .optimizer_update = cuda_optimizer_update,
  .optimizer_state = cuda_optimizer_state,
  .sample_new = cuda_sample_new,
  .sample_free = cuda_sample_free,
  .batch_augment = cuda_batch_augment,
  .frames_new = cuda_frames_new,
  .frames_free = cuda_frames_free,
  .frame_upload = cuda_frame_upload,
  .frame_normalize = cuda_frame_normalize,
  .frame_begin = cuda_frame_begin,
  .frame_extract = cuda_frame_extract,
  .frame_stitch = cuda_frame_stitch,
  .frame_download = cuda_frame_download,
  .frame_wait = cuda_frame_wait,
};

gboolean
unet_cuda_device_usable (gint gpu_id, gchar *name, gsize name_size, GError **error)
{
  gint count = 0;
  cudaError_t err = cudaGetDeviceCount (&count);
  struct cudaDeviceProp prop;

  if (err != cudaSuccess || count < 1) {
    (void) cudaGetLastError ();
    g_set_error (error, UNET_ERROR, UNET_ERROR_NO_DEVICE, "no CUDA device: %s",
        err != cudaSuccess ? cudaGetErrorString (err) : "cudaGetDeviceCount reported 0");
    return FALSE;
  }
  if (gpu_id < 0 || gpu_id >= count) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_NO_DEVICE,
        "no CUDA device %d: there %s %d (gpu-id 0..%d)", gpu_id, count == 1 ? "is" : "are",
        count, count - 1);
    return FALSE;
  }
  if (!CUDA_CHECK (cudaGetDeviceProperties (&prop, gpu_id), error))
    return FALSE;
  if (prop.major * 10 + prop.minor < UNET_CUDA_MIN_SM) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_NO_DEVICE,
        "CUDA device %d (%s, sm_%d%d) is older than the architectures gst-unet was built "
        "for (sm_%d and newer); rebuild with -Dgpu_arch=%d%d", gpu_id, prop.name, prop.major,
        prop.minor, UNET_CUDA_MIN_SM, prop.major, prop.minor);
    return FALSE;
  }
  if (name != NULL)
    g_snprintf (name, name_size, "%s (sm_%d%d, %.1f GiB)", prop.name, prop.major, prop.minor,
        prop.totalGlobalMem / 1073741824.0);
  return TRUE;
}

UnetBackend *
unet_backend_cuda_new (const UnetNetOptions *opts, GError **error)
{
  UnetBackend *be;
  CudaCtx *ctx;
  GError *local = NULL;
  gchar name[256];
  const gchar *find = g_getenv ("UNET_CUDNN_FIND");

  if (!unet_cuda_device_usable (opts->gpu_id, name, sizeof name, &local)) {
    if (opts->device == UNET_DEVICE_AUTO)
      g_info ("device auto: %s; using the CPU", local->message);
    g_propagate_error (error, local);
    return NULL;
  }
  be = g_new0 (UnetBackend, 1);
  ctx = g_new0 (CudaCtx, 1);
  be->iface = &cuda_iface;
  be->priv = ctx;
  ctx->device = opts->gpu_id;
  g_strlcpy (ctx->name, name, sizeof ctx->name);
  ctx->precision = opts->precision;
  ctx->loss_scale = 1.0;
  ctx->find = find == NULL || g_strcmp0 (find, "0") != 0;
  unet_cuda_precision_types (opts->precision, &ctx->dtype, &ctx->cudnn_dtype, &ctx->math);
  if (!CUDA_CHECK (cudaSetDevice (ctx->device), error)
      || !CUDA_CHECK (cudaStreamCreateWithFlags (&ctx->stream, cudaStreamNonBlocking), error)
      || !CUDA_CHECK (cudaStreamCreateWithFlags (&ctx->copy_stream, cudaStreamNonBlocking),
          error)
      || !CUDA_CHECK (cudaEventCreateWithFlags (&ctx->upload_done, cudaEventDisableTiming),
          error)
      || !CUDA_CHECK (cudaEventCreateWithFlags (&ctx->staging_free, cudaEventDisableTiming),
          error)
      || !CUDNN_CHECK (cudnnCreate (&ctx->cudnn), error)
      || !CUDNN_CHECK (cudnnSetStream (ctx->cudnn, ctx->stream), error)) {
    cuda_free (be);
    return NULL;
  }
  g_info ("device %s: CUDA device %d, %s, cuDNN %zu", unet_device_name (opts->device),
      ctx->device, ctx->name, cudnnGetVersion ());
  return be;
}

void
unet_cuda_precision_types (UnetPrecision precision, UnetCudaDType * dtype,
    cudnnDataType_t * cudnn_dtype, cudnnMathType_t * math)
{
  switch (precision) {
    case UNET_PRECISION_BF16:
      *dtype = UNET_CUDA_BF16;
      *cudnn_dtype = CUDNN_DATA_BFLOAT16;
      *math = CUDNN_TENSOR_OP_MATH;
      break;
    case UNET_PRECISION_FP16:
      *dtype = UNET_CUDA_F16;
      *cudnn_dtype = CUDNN_DATA_HALF;
      *math = CUDNN_TENSOR_OP_MATH;
      break;
    case UNET_PRECISION_TF32:
      *dtype = UNET_CUDA_F32;
      *cudnn_dtype = CUDNN_DATA_FLOAT;
      *math = CUDNN_TENSOR_OP_MATH;
      break;
    case UNET_PRECISION_FP32:
    default:
      *dtype = UNET_CUDA_F32;
      *cudnn_dtype = CUDNN_DATA_FLOAT;
      *math = CUDNN_FMA_MATH;
      break;
  }
}
