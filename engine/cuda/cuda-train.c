/* gst-unet engine — CUDA training executor (cuda-train.h).
 *
 * Mirrors engine/cpu/cpu-train.c op for op, so the two agree up to rounding:
 *   unit   = conv (+ bias) [-> batch norm (batch statistics)] [-> ReLU]
 *   level  = unit, unit, 2x2 max pool (argmax kept)
 *   bottom = unit, unit [-> dropout]
 *   decoder level i = transposed conv 2x2 (+ bias) -> concat (centre crop of the
 *            encoder output, upsampled) -> unit, unit;  head = 1x1 unit, no ReLU.
 *
 * cuDNN does the convolutions. A 3x3/1x1 conv is cudnnConvolutionForward, its
 * backward cudnnConvolutionBackwardData / BackwardFilter. The transposed conv of
 * level i is the data gradient of the stride-2 convolution C whose input is the
 * upsampled tensor and whose output is the low-resolution one (filter K = cin,
 * C = cout, 2x2); hence forward = C.backward_data, its data gradient = C.forward of
 * the upstream gradient, its filter gradient = C.backward_filter(x = upstream
 * gradient, dy = low-resolution input). Filter gradients come out of cuDNN in its
 * NHWC filter layout and activation type into one scratch buffer, and a kernel adds
 * them into the f32 gradient slab in PyTorch layout; bias, batch-norm gradients are
 * reduced in f64 straight into the slab (deterministic reductions).
 *
 * Memory: per input shape (a "plan") every activation, its gradient, the pooling
 * argmax, the concat buffers and the scratch are allocated once; a training step
 * allocates nothing. Algorithms are chosen once per plan (cudnnFind*Ex on the real
 * buffers, or cuDNN's heuristics with $UNET_CUDNN_FIND=0), deterministic ones
 * preferred for the backward passes so a run repeats bit for bit, within one
 * workspace of $UNET_CUDA_WORKSPACE_MB (default 512 MiB, at most a quarter of the
 * free memory).
 */
#include "config.h"

#include "cuda-check.h"
#include "cuda-kernels.h"
#include "cuda-backend.h"
#include "cuda-train.h"

#include <cuda_runtime_api.h>
#include <cudnn.h>
#include <math.h>
#include <string.h>

#define BN_EPS 1e-5f
#define BN_MOMENTUM 0.1f
#define DEFAULT_WORKSPACE_MIB 512
/* torch.cuda.amp.GradScaler defaults */
#define LOSS_SCALE_INIT 65536.0
#define LOSS_SCALE_GROWTH_INTERVAL 2000
#define LOSS_SCALE_MAX 16777216.0

#define KCHECK(call, error) CUDA_CHECK (call, error)

/* cuDNN descriptors of one convolution relation x --(w)--> y and the algorithms of
 * its three directions. */
typedef struct
{
  cudnnTensorDescriptor_t x, y;
  cudnnFilterDescriptor_t w;
  cudnnConvolutionDescriptor_t fwd, bwd_data, bwd_filter;
  gint algo_fwd, algo_bwd_data, algo_bwd_filter;
  gsize ws_fwd, ws_bwd_data, ws_bwd_filter;
} Conv;

typedef struct
{
  gint w_off, b_off;            /* slab offsets (floats) */
  gint bn_off[4];               /* gamma, beta, running_mean, running_var; -1 none */
  gboolean relu;
  gint cin, cout, k, pad;
  gint oh, ow;                  /* output size */
  gsize rows;                   /* n * oh * ow */
  void *src, *dsrc;             /* input (n,h,w,cin) and its gradient (NULL: not needed) */
  void *z, *a, *da;             /* (n,oh,ow,cout); a == z without batch norm */
  float *mean, *invstd;
  Conv conv;
} Unit;

typedef struct
{
  gint w_off, b_off, cin, cout;
  gint h, w;                    /* input size; the output is 2h x 2w */
  void *in, *din;               /* (n,h,w,cin) */
  Conv conv;                    /* x = output space (n,2h,2w,cout), y = input space */
} Up;

typedef struct
{
  gint batch, height, width;
  Unit *units;                  /* enc.0.c1, enc.0.c2, ..., bottom, dec.D-1 .. dec.0, head */
  gint n_units;
  Up *ups;                      /* per level */
  gint n_ups;
  void *input;                  /* (n,H,W,C) */
  void **pool, **dpool;         /* per level (n, eh/2, ew/2, F_i) */
  guint8 **arg;
  gint *eh, *ew, *uh, *uw;
  void **cat, **dcat;           /* per level (n, uh, uw, 2F_i) */
  void *up, *dup;               /* the largest (n, uh, uw, F_i): transposed conv output */
  void *drop, *ddrop;           /* bottom dropout output / gradient, or NULL */
  gsize drop_numel;
  guint64 seed;
  GPtrArray *allocs;            /* device buffers */
  gsize bytes;
  gboolean have_forward;
} Plan;

struct _UnetCudaTrain
{
  UnetConfig cfg;
  const UnetLayout *layout;
  gint device;
  UnetPrecision precision;
  UnetCudaDType dtype;
  cudnnDataType_t cudnn_dtype;
  cudnnMathType_t math;
  gboolean find;
  cudaStream_t stream;
  cudnnHandle_t cudnn;

  float *params;                /* device master weights, slab layout */
  void *work;                   /* working weights: slab offsets, activation type, KRSC */
  float *grads;                 /* device gradients, slab layout (accumulated) */
  float *step_grads;            /* one backward pass's (scaled) gradients */
  gboolean params_dirty;

  void *workspace;
  gsize workspace_bytes;
  void *dw;                     /* the largest filter gradient, activation type */
  double *partials;             /* column-reduction scratch for the widest layer */
  int *flag;                    /* device: non-finite gradient seen */
  float *staging_dev;           /* f32 NCHW input / logits / grad_logits */
  gfloat *staging_host;         /* pinned */
  gsize staging_bytes;

  gdouble loss_scale;
  gint64 clean_passes;
  Plan *plan;
};

/* ------------------------------------------------------------- memory -- */

static gboolean
dev_alloc (void **ptr, gsize bytes, const gchar *what, GError **error)
{
  cudaError_t err = cudaMalloc (ptr, bytes > 0 ? bytes : 1);
  if (err != cudaSuccess) {
    gsize free_b = 0, total_b = 0;
    (void) cudaGetLastError ();
    cudaMemGetInfo (&free_b, &total_b);
    *ptr = NULL;
    g_set_error (error, UNET_ERROR,
        err == cudaErrorMemoryAllocation ? UNET_ERROR_OUT_OF_MEMORY : UNET_ERROR_BACKEND,
        "could not allocate %.1f MiB of GPU memory for training %s (%.1f of %.1f MiB "
        "free): %s; use a smaller tile-size or batch-size", bytes / 1048576.0, what,
        free_b / 1048576.0, total_b / 1048576.0, cudaGetErrorString (err));
    return FALSE;
  }
  return TRUE;
}

static void
dev_free (gpointer p)
{
  cudaFree (p);
}

static gsize
esize (const UnetCudaTrain *tr)
{
  return unet_cuda_dtype_size (tr->dtype);
}

/* A plan buffer of `count` elements of `elem` bytes, zeroed. */
static gpointer
plan_alloc (UnetCudaTrain *tr, Plan *p, gsize count, gsize elem, const gchar *what,
    GError **error)
{
  void *m = NULL;
  gsize bytes = MAX (count * elem, 1);
  if (!dev_alloc (&m, bytes, what, error))
    return NULL;
  g_ptr_array_add (p->allocs, m);
  p->bytes += bytes;
  if (!CUDA_CHECK (cudaMemsetAsync (m, 0, bytes, tr->stream), error))
    return NULL;
  return m;
}

#define PLAN_ALLOC(ptr, count, elem, what)                                      \
  G_STMT_START {                                                              \
    if (((ptr) = plan_alloc (tr, p, (count), (elem), (what), error)) == NULL) \
      goto fail;                                                              \
  } G_STMT_END

/* --------------------------------------------------------- convolutions -- */

static void
conv_clear (Conv *c)
{
  if (c->x)
    cudnnDestroyTensorDescriptor (c->x);
  if (c->y)
    cudnnDestroyTensorDescriptor (c->y);
  if (c->w)
    cudnnDestroyFilterDescriptor (c->w);
  if (c->fwd)
    cudnnDestroyConvolutionDescriptor (c->fwd);
  if (c->bwd_data)
    cudnnDestroyConvolutionDescriptor (c->bwd_data);
  if (c->bwd_filter)
    cudnnDestroyConvolutionDescriptor (c->bwd_filter);
  memset (c, 0, sizeof (*c));
}

/* Picks the first result that succeeded within the workspace, deterministic ones
 * first when `prefer_det`. perf entries are read through the common fields. */
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

/* Sets up the relation x (n,xc,xh,xw) --conv(K = yc, C = xc, k, pad, stride)--> y
 * (n,yc,yh,yw) and chooses its algorithms on the given buffers (contents are
 * overwritten: only called while planning). */
static gboolean
conv_init (UnetCudaTrain *tr, Conv *c, gint n, gint xc, gint xh, gint xw, gint yc, gint yh,
    gint yw, gint k, gint pad, gint stride, void *x, void *y, const void *w, void *dw,
    gboolean need_bwd_data, GError **error)
{
  cudnnConvolutionFwdAlgoPerf_t pf[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
  cudnnConvolutionBwdDataAlgoPerf_t pd[CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT];
  cudnnConvolutionBwdFilterAlgoPerf_t pw[CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT];
  cudnnMathType_t math = tr->math;
  gint got = 0;
  gboolean found;
  cudnnStatus_t st;

  if ((guint64) n * MAX (xc * xh * xw, yc * yh * yw) >= G_MAXINT32) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "training batch too large for cuDNN: %d x %d x %d x %d elements", n, xc, xh, xw);
    return FALSE;
  }
  if (!CUDNN_CHECK (cudnnCreateTensorDescriptor (&c->x), error)
      || !CUDNN_CHECK (cudnnCreateTensorDescriptor (&c->y), error)
      || !CUDNN_CHECK (cudnnCreateFilterDescriptor (&c->w), error)
      || !CUDNN_CHECK (cudnnCreateConvolutionDescriptor (&c->fwd), error)
      || !CUDNN_CHECK (cudnnCreateConvolutionDescriptor (&c->bwd_data), error)
      || !CUDNN_CHECK (cudnnCreateConvolutionDescriptor (&c->bwd_filter), error)
      || !CUDNN_CHECK (cudnnSetTensor4dDescriptor (c->x, CUDNN_TENSOR_NHWC, tr->cudnn_dtype,
              n, xc, xh, xw), error)
      || !CUDNN_CHECK (cudnnSetTensor4dDescriptor (c->y, CUDNN_TENSOR_NHWC, tr->cudnn_dtype,
              n, yc, yh, yw), error)
      || !CUDNN_CHECK (cudnnSetFilter4dDescriptor (c->w, tr->cudnn_dtype, CUDNN_TENSOR_NHWC,
              yc, xc, k, k), error))
    return FALSE;
  cudnnConvolutionDescriptor_t descs[3] = { c->fwd, c->bwd_data, c->bwd_filter };
  for (gint i = 0; i < 3; i++)
    if (!CUDNN_CHECK (cudnnSetConvolution2dDescriptor (descs[i], pad, pad, stride, stride,
                1, 1, CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT), error)
        || !CUDNN_CHECK (cudnnSetConvolutionMathType (descs[i], tr->math), error))
      return FALSE;

  /* forward: x, w -> y */
  st = CUDNN_STATUS_NOT_SUPPORTED;
  if (tr->find)
    st = cudnnFindConvolutionForwardAlgorithmEx (tr->cudnn, c->x, x, c->w, w, c->fwd, c->y,
        y, CUDNN_CONVOLUTION_FWD_ALGO_COUNT, &got, pf, tr->workspace, tr->workspace_bytes);
  if (st != CUDNN_STATUS_SUCCESS
      && !CUDNN_CHECK (cudnnGetConvolutionForwardAlgorithm_v7 (tr->cudnn, c->x, c->w, c->fwd,
              c->y, CUDNN_CONVOLUTION_FWD_ALGO_COUNT, &got, pf), error))
    return FALSE;
  PICK_ALGO (pf, got, FALSE, tr->workspace_bytes, c->algo_fwd, c->ws_fwd, math, found);
  if (!found || !CUDNN_CHECK (cudnnSetConvolutionMathType (c->fwd, math), error))
    goto none;

  /* backward data: w, dy -> dx (y and x buffers stand in for dy and dx) */
  if (need_bwd_data) {
    st = CUDNN_STATUS_NOT_SUPPORTED;
    if (tr->find)
      st = cudnnFindConvolutionBackwardDataAlgorithmEx (tr->cudnn, c->w, w, c->y, y,
          c->bwd_data, c->x, x, CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT, &got, pd,
          tr->workspace, tr->workspace_bytes);
    if (st != CUDNN_STATUS_SUCCESS
        && !CUDNN_CHECK (cudnnGetConvolutionBackwardDataAlgorithm_v7 (tr->cudnn, c->w, c->y,
                c->bwd_data, c->x, CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT, &got, pd), error))
      return FALSE;
    PICK_ALGO (pd, got, TRUE, tr->workspace_bytes, c->algo_bwd_data, c->ws_bwd_data, math,
        found);
    if (!found || !CUDNN_CHECK (cudnnSetConvolutionMathType (c->bwd_data, math), error))
      goto none;
  }

  /* backward filter: x, dy -> dw */
  st = CUDNN_STATUS_NOT_SUPPORTED;
  if (tr->find)
    st = cudnnFindConvolutionBackwardFilterAlgorithmEx (tr->cudnn, c->x, x, c->y, y,
        c->bwd_filter, c->w, dw, CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT, &got, pw,
        tr->workspace, tr->workspace_bytes);
  if (st != CUDNN_STATUS_SUCCESS
      && !CUDNN_CHECK (cudnnGetConvolutionBackwardFilterAlgorithm_v7 (tr->cudnn, c->x, c->y,
              c->bwd_filter, c->w, CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT, &got, pw),
          error))
    return FALSE;
  PICK_ALGO (pw, got, TRUE, tr->workspace_bytes, c->algo_bwd_filter, c->ws_bwd_filter, math,
      found);
  if (!found || !CUDNN_CHECK (cudnnSetConvolutionMathType (c->bwd_filter, math), error))
    goto none;
  return TRUE;

none:
  if (error != NULL && *error == NULL)
    g_set_error (error, UNET_ERROR, UNET_ERROR_BACKEND,
        "cuDNN has no training algorithm for %dx%dx%dx%d -> %d channels (kernel %d, "
        "stride %d) within a %.0f MiB workspace", n, xc, xh, xw, yc, k, stride,
        tr->workspace_bytes / 1048576.0);
  return FALSE;
}

static const float one_f = 1.0f, zero_f = 0.0f;

static gboolean
conv_forward (UnetCudaTrain *tr, Conv *c, const void *x, const void *w, void *y,
    GError **error)
{
  return CUDNN_CHECK (cudnnConvolutionForward (tr->cudnn, &one_f, c->x, x, c->w, w, c->fwd,
          c->algo_fwd, tr->workspace, c->ws_fwd, &zero_f, c->y, y), error);
}

/* dx = conv^T (dy); overwrites dx */
static gboolean
conv_backward_data (UnetCudaTrain *tr, Conv *c, const void *w, const void *dy, void *dx,
    GError **error)
{
  return CUDNN_CHECK (cudnnConvolutionBackwardData (tr->cudnn, &one_f, c->w, w, c->y, dy,
          c->bwd_data, c->algo_bwd_data, tr->workspace, c->ws_bwd_data, &zero_f, c->x, dx),
      error);
}

/* tr->dw = dL/dw (cuDNN filter layout), then slab[off] += it (a x kk x b -> a x b x kk) */
static gboolean
conv_backward_filter (UnetCudaTrain *tr, Conv *c, const void *x, const void *dy, gint a,
    gint b, gint kk, gint off, GError **error)
{
  return CUDNN_CHECK (cudnnConvolutionBackwardFilter (tr->cudnn, &one_f, c->x, x, c->y, dy,
          c->bwd_filter, c->algo_bwd_filter, tr->workspace, c->ws_bwd_filter, &zero_f,
          c->w, tr->dw), error)
      && KCHECK (unet_cuda_filter_grad_accumulate (tr->dw, tr->dtype, tr->step_grads + off,
          a, b, kk, 1.0f, tr->stream), error);
}

/* --------------------------------------------------------------- plan -- */

static void
plan_free (Plan *p)
{
  if (p == NULL)
    return;
  for (gint i = 0; i < p->n_units; i++)
    conv_clear (&p->units[i].conv);
  for (gint i = 0; i < p->n_ups; i++)
    conv_clear (&p->ups[i].conv);
  g_free (p->units);
  g_free (p->ups);
  g_free (p->pool);
  g_free (p->dpool);
  g_free (p->arg);
  g_free (p->cat);
  g_free (p->dcat);
  g_free (p->eh);
  g_free (p->ew);
  g_free (p->uh);
  g_free (p->uw);
  if (p->allocs != NULL)
    g_ptr_array_unref (p->allocs);
  g_free (p);
}

static gint
slab_offset (const UnetLayout *layout, const gchar *name)
{
  gint i = unet_layout_find (layout, name);
  return i < 0 ? -1 : (gint) layout->tensors[i].offset;
}

/* Unit for `layer` (e.g. "enc.0.conv1"), input (n,h,w,cin): offsets and buffers;
 * the convolution is set up later (it needs src). */
static gboolean
unit_init (UnetCudaTrain *tr, Plan *p, Unit *u, const gchar *layer, const gchar *bn,
    gint cin, gint h, gint w, gint cout, gint k, gint pad, gboolean relu, GError **error)
{
  g_autofree gchar *wn = g_strdup_printf ("%s.weight", layer);
  g_autofree gchar *bname = g_strdup_printf ("%s.bias", layer);
  gint oh = h + 2 * pad - k + 1, ow = w + 2 * pad - k + 1;
  gsize numel;

  u->w_off = slab_offset (tr->layout, wn);
  u->b_off = slab_offset (tr->layout, bname);
  if (u->w_off < 0 || u->b_off < 0) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_MODEL, "layout has no %s", wn);
    return FALSE;
  }
  for (gint q = 0; q < 4; q++)
    u->bn_off[q] = -1;
  if (bn != NULL) {
    const gchar *parts[4] = { "weight", "bias", "running_mean", "running_var" };
    for (gint q = 0; q < 4; q++) {
      g_autofree gchar *name = g_strdup_printf ("%s.%s", bn, parts[q]);
      if ((u->bn_off[q] = slab_offset (tr->layout, name)) < 0) {
        g_set_error (error, UNET_ERROR, UNET_ERROR_MODEL, "layout has no %s", name);
        return FALSE;
      }
    }
  }
  u->relu = relu;
  u->cin = cin;
  u->cout = cout;
  u->k = k;
  u->pad = pad;
  u->oh = oh;
  u->ow = ow;
  u->rows = (gsize) p->batch * oh * ow;
  numel = u->rows * cout;
  PLAN_ALLOC (u->z, numel, esize (tr), "activations");
  if (bn != NULL) {
    PLAN_ALLOC (u->a, numel, esize (tr), "activations");
    PLAN_ALLOC (u->mean, cout, sizeof (float), "batch statistics");
    PLAN_ALLOC (u->invstd, cout, sizeof (float), "batch statistics");
  } else {
    u->a = u->z;
  }
  PLAN_ALLOC (u->da, numel, esize (tr), "gradients");
  return TRUE;
fail:
  return FALSE;
}

/* Input size of unit u: its output plus what the convolution removes. */
static gboolean
unit_conv_init (UnetCudaTrain *tr, Plan *p, Unit *u, gint h, gint w, GError **error)
{
  gint oh = h + 2 * u->pad - u->k + 1, ow = w + 2 * u->pad - u->k + 1;
  return conv_init (tr, &u->conv, p->batch, u->cin, h, w, u->cout, oh, ow, u->k, u->pad, 1,
      u->src, u->z, (guint8 *) tr->work + (gsize) u->w_off * esize (tr), tr->dw,
      u->dsrc != NULL, error);
}

static Plan *
plan_new (UnetCudaTrain *tr, gint batch, gint height, gint width, GError **error)
{
  const UnetConfig *cfg = &tr->cfg;
  const gint D = cfg->depth;
  const gboolean valid = cfg->padding == UNET_PADDING_VALID;
  const gint pad = valid ? 0 : 1, shrink = valid ? 2 : 0;
  Plan *p = g_new0 (Plan, 1);
  gint h = height, w = width, u = 0, cin = cfg->in_channels;
  gsize up_max = 0;
  gint *in_h, *in_w;            /* per unit: input size */

  p->batch = batch;
  p->height = height;
  p->width = width;
  p->allocs = g_ptr_array_new_with_free_func (dev_free);
  p->n_units = 4 * D + 3;
  p->units = g_new0 (Unit, p->n_units);
  p->ups = g_new0 (Up, D);
  p->n_ups = D;
  p->pool = g_new0 (void *, D);
  p->dpool = g_new0 (void *, D);
  p->arg = g_new0 (guint8 *, D);
  p->cat = g_new0 (void *, D);
  p->dcat = g_new0 (void *, D);
  p->eh = g_new0 (gint, D);
  p->ew = g_new0 (gint, D);
  p->uh = g_new0 (gint, D);
  p->uw = g_new0 (gint, D);
  in_h = g_newa (gint, p->n_units);
  in_w = g_newa (gint, p->n_units);

  PLAN_ALLOC (p->input, (gsize) batch * cfg->in_channels * height * width, esize (tr),
      "input");
  for (gint i = 0; i < D; i++) {
    gint f = cfg->base_filters << i;
    gchar l1[32], l2[32], b1[32], b2[32];
    g_snprintf (l1, sizeof l1, "enc.%d.conv1", i);
    g_snprintf (l2, sizeof l2, "enc.%d.conv2", i);
    g_snprintf (b1, sizeof b1, "enc.%d.bn1", i);
    g_snprintf (b2, sizeof b2, "enc.%d.bn2", i);
    if (h - 2 * shrink < 2 || w - 2 * shrink < 2)
      goto illegal;
    in_h[u] = h;
    in_w[u] = w;
    if (!unit_init (tr, p, &p->units[u++], l1, cfg->batch_norm ? b1 : NULL, cin, h, w, f,
            3, pad, TRUE, error))
      goto fail;
    h -= shrink;
    w -= shrink;
    in_h[u] = h;
    in_w[u] = w;
    if (!unit_init (tr, p, &p->units[u++], l2, cfg->batch_norm ? b2 : NULL, f, h, w, f, 3,
            pad, TRUE, error))
      goto fail;
    h -= shrink;
    w -= shrink;
    if (h < 2 || w < 2 || h % 2 || w % 2)
      goto illegal;
    p->eh[i] = h;
    p->ew[i] = w;
    h /= 2;
    w /= 2;
    PLAN_ALLOC (p->pool[i], (gsize) batch * f * h * w, esize (tr), "activations");
    PLAN_ALLOC (p->dpool[i], (gsize) batch * f * h * w, esize (tr), "gradients");
    PLAN_ALLOC (p->arg[i], (gsize) batch * f * h * w, 1, "pooling indices");
    cin = f;
  }
  {
    gint f = cfg->base_filters << D;
    if (h - 2 * shrink < 1 || w - 2 * shrink < 1)
      goto illegal;
    in_h[u] = h;
    in_w[u] = w;
    if (!unit_init (tr, p, &p->units[u++], "bottom.conv1",
            cfg->batch_norm ? "bottom.bn1" : NULL, cin, h, w, f, 3, pad, TRUE, error))
      goto fail;
    h -= shrink;
    w -= shrink;
    in_h[u] = h;
    in_w[u] = w;
    if (!unit_init (tr, p, &p->units[u++], "bottom.conv2",
            cfg->batch_norm ? "bottom.bn2" : NULL, f, h, w, f, 3, pad, TRUE, error))
      goto fail;
    h -= shrink;
    w -= shrink;
    cin = f;
    if (cfg->dropout > 0.0) {
      p->drop_numel = (gsize) batch * f * h * w;
      PLAN_ALLOC (p->drop, p->drop_numel, esize (tr), "activations");
      PLAN_ALLOC (p->ddrop, p->drop_numel, esize (tr), "gradients");
    }
  }
  for (gint i = D - 1; i >= 0; i--) {
    gint f = cfg->base_filters << i;
    gchar name[32], l1[32], l2[32], b1[32], b2[32];
    Up *up = &p->ups[i];
    up->h = h;
    up->w = w;
    up->cin = cin;
    up->cout = f;
    h *= 2;
    w *= 2;
    if (h > p->eh[i] || w > p->ew[i] || h - 2 * shrink < 1 || w - 2 * shrink < 1)
      goto illegal;
    p->uh[i] = h;
    p->uw[i] = w;
    g_snprintf (name, sizeof name, "dec.%d.up.weight", i);
    up->w_off = slab_offset (tr->layout, name);
    g_snprintf (name, sizeof name, "dec.%d.up.bias", i);
    up->b_off = slab_offset (tr->layout, name);
    if (up->w_off < 0 || up->b_off < 0) {
      g_set_error (error, UNET_ERROR, UNET_ERROR_MODEL, "layout has no dec.%d.up", i);
      goto fail;
    }
    up_max = MAX (up_max, (gsize) batch * f * h * w);
    PLAN_ALLOC (p->cat[i], (gsize) batch * 2 * f * h * w, esize (tr), "activations");
    PLAN_ALLOC (p->dcat[i], (gsize) batch * 2 * f * h * w, esize (tr), "gradients");
    g_snprintf (l1, sizeof l1, "dec.%d.conv1", i);
    g_snprintf (l2, sizeof l2, "dec.%d.conv2", i);
    g_snprintf (b1, sizeof b1, "dec.%d.bn1", i);
    g_snprintf (b2, sizeof b2, "dec.%d.bn2", i);
    in_h[u] = h;
    in_w[u] = w;
    if (!unit_init (tr, p, &p->units[u++], l1, cfg->batch_norm ? b1 : NULL, 2 * f, h, w,
            f, 3, pad, TRUE, error))
      goto fail;
    h -= shrink;
    w -= shrink;
    in_h[u] = h;
    in_w[u] = w;
    if (!unit_init (tr, p, &p->units[u++], l2, cfg->batch_norm ? b2 : NULL, f, h, w, f, 3,
            pad, TRUE, error))
      goto fail;
    h -= shrink;
    w -= shrink;
    cin = f;
  }
  in_h[u] = h;
  in_w[u] = w;
  if (!unit_init (tr, p, &p->units[u++], "head", NULL, cin, h, w, cfg->classes, 1, 0,
          FALSE, error))
    goto fail;
  g_assert (u == p->n_units);
  PLAN_ALLOC (p->up, up_max, esize (tr), "activations");
  PLAN_ALLOC (p->dup, up_max, esize (tr), "gradients");

  /* Wire sources and source gradients (as cpu-train.c). */
  {
    Unit *U = p->units;
    for (gint i = 0; i < D; i++) {
      U[2 * i].src = i == 0 ? p->input : p->pool[i - 1];
      U[2 * i].dsrc = i == 0 ? NULL : p->dpool[i - 1];
      U[2 * i + 1].src = U[2 * i].a;
      U[2 * i + 1].dsrc = U[2 * i].da;
    }
    U[2 * D].src = p->pool[D - 1];
    U[2 * D].dsrc = p->dpool[D - 1];
    U[2 * D + 1].src = U[2 * D].a;
    U[2 * D + 1].dsrc = U[2 * D].da;
    for (gint i = D - 1; i >= 0; i--) {
      gint k = 2 * D + 2 + 2 * (D - 1 - i);
      U[k].src = p->cat[i];
      U[k].dsrc = p->dcat[i];
      U[k + 1].src = U[k].a;
      U[k + 1].dsrc = U[k].da;
      if (i == D - 1) {
        p->ups[i].in = p->drop ? p->drop : U[2 * D + 1].a;
        p->ups[i].din = p->drop ? p->ddrop : U[2 * D + 1].da;
      } else {
        gint kn = 2 * D + 2 + 2 * (D - 2 - i);
        p->ups[i].in = U[kn + 1].a;
        p->ups[i].din = U[kn + 1].da;
      }
    }
    U[4 * D + 2].src = U[4 * D + 1].a;
    U[4 * D + 2].dsrc = U[4 * D + 1].da;
  }
  for (gint i = 0; i < p->n_units; i++)
    if (!unit_conv_init (tr, p, &p->units[i], in_h[i], in_w[i], error))
      goto fail;
  for (gint i = 0; i < D; i++) {
    Up *up = &p->ups[i];
    if (!conv_init (tr, &up->conv, batch, up->cout, 2 * up->h, 2 * up->w, up->cin, up->h,
            up->w, 2, 0, 2, p->up, up->in, (guint8 *) tr->work + (gsize) up->w_off * esize (tr),
            tr->dw, TRUE, error))
      goto fail;
  }
  if (!CUDA_CHECK (cudaStreamSynchronize (tr->stream), error))
    goto fail;
  return p;

illegal:
  g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
      "input %dx%d is not a legal size for this network", width, height);
fail:
  plan_free (p);
  return NULL;
}

/* ------------------------------------------------------------ executor -- */

static gboolean
ensure_staging (UnetCudaTrain *tr, gsize bytes, GError **error)
{
  if (bytes <= tr->staging_bytes)
    return TRUE;
  if (!CUDA_CHECK (cudaStreamSynchronize (tr->stream), error))
    return FALSE;
  cudaFree (tr->staging_dev);
  tr->staging_dev = NULL;
  if (tr->staging_host != NULL)
    cudaFreeHost (tr->staging_host);
  tr->staging_host = NULL;
  tr->staging_bytes = 0;
  if (!dev_alloc ((void **) &tr->staging_dev, bytes, "staging", error)
      || !CUDA_CHECK (cudaMallocHost ((void **) &tr->staging_host, bytes), error))
    return FALSE;
  tr->staging_bytes = bytes;
  return TRUE;
}

UnetCudaTrain *
unet_cuda_train_new (const UnetConfig *cfg, const UnetLayout *layout,
    const UnetNetOptions *opts, GError **error)
{
  UnetCudaTrain *tr;
  const gchar *find = g_getenv ("UNET_CUDNN_FIND");
  const gchar *env = g_getenv ("UNET_CUDA_WORKSPACE_MB");
  gsize slab = layout->slab_numel, widest = 0, dw_max = 0, free_b = 0, total_b = 0, want;

  if (!unet_config_validate (cfg, error))
    return NULL;
  if (cfg->dropout < 0.0 || cfg->dropout >= 1.0) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "dropout %g must be in [0, 1)", cfg->dropout);
    return NULL;
  }
  if (!unet_cuda_device_usable (opts->gpu_id, NULL, 0, error))
    return NULL;
  tr = g_new0 (UnetCudaTrain, 1);
  tr->cfg = *cfg;
  tr->layout = layout;
  tr->device = opts->gpu_id;
  tr->precision = opts->precision;
  tr->find = find == NULL || g_strcmp0 (find, "0") != 0;
  tr->params_dirty = TRUE;
  tr->loss_scale = 1.0;
  unet_cuda_precision_types (opts->precision, &tr->dtype, &tr->cudnn_dtype, &tr->math);
  if (opts->precision == UNET_PRECISION_FP16)
    tr->loss_scale = LOSS_SCALE_INIT;
  for (guint i = 0; i < layout->n_tensors; i++) {
    const UnetTensorInfo *t = &layout->tensors[i];
    widest = MAX (widest, (gsize) t->shape[0]);
    if (t->kind == UNET_TENSOR_CONV_WEIGHT || t->kind == UNET_TENSOR_UP_WEIGHT)
      dw_max = MAX (dw_max, t->numel);
  }
  want = (gsize) DEFAULT_WORKSPACE_MIB << 20;
  if (env != NULL && *env != '\0')
    want = (gsize) g_ascii_strtoull (env, NULL, 10) << 20;
  if (!CUDA_CHECK (cudaSetDevice (tr->device), error)
      || !CUDA_CHECK (cudaStreamCreateWithFlags (&tr->stream, cudaStreamNonBlocking), error)
      || !CUDNN_CHECK (cudnnCreate (&tr->cudnn), error)
      || !CUDNN_CHECK (cudnnSetStream (tr->cudnn, tr->stream), error)
      || !dev_alloc ((void **) &tr->params, slab * sizeof (float), "parameters", error)
      || !dev_alloc (&tr->work, slab * esize (tr), "working weights", error)
      || !dev_alloc ((void **) &tr->grads, slab * sizeof (float), "gradients", error)
      || !dev_alloc ((void **) &tr->step_grads, slab * sizeof (float), "gradients", error)
      || !dev_alloc (&tr->dw, dw_max * esize (tr), "filter gradients", error)
      || !dev_alloc ((void **) &tr->partials,
          ((gsize) UNET_CUDA_REDUCE_BLOCKS * 2 + 2) * widest * sizeof (double),
          "reduction scratch", error)
      || !dev_alloc ((void **) &tr->flag, sizeof (int), "flags", error)
      || !CUDA_CHECK (cudaMemset (tr->grads, 0, slab * sizeof (float)), error)
      || !CUDA_CHECK (cudaMemset (tr->work, 0, slab * esize (tr)), error)
      /* the memsets ran on the legacy stream, which the non-blocking one does
       * not wait for */
      || !CUDA_CHECK (cudaDeviceSynchronize (), error)
      || !CUDA_CHECK (cudaMemGetInfo (&free_b, &total_b), error))
    goto fail;
  if (want > free_b / 4)
    want = free_b / 4;
  if (want > 0 && !dev_alloc (&tr->workspace, want, "the cuDNN workspace", error))
    goto fail;
  tr->workspace_bytes = want;
  return tr;

fail:
  unet_cuda_train_free (tr);
  return NULL;
}

void
unet_cuda_train_free (UnetCudaTrain *tr)
{
  if (tr == NULL)
    return;
  if (tr->stream != NULL)
    cudaStreamSynchronize (tr->stream);
  plan_free (tr->plan);
  cudaFree (tr->params);
  cudaFree (tr->work);
  cudaFree (tr->grads);
  cudaFree (tr->step_grads);
  cudaFree (tr->dw);
  cudaFree (tr->partials);
  cudaFree (tr->flag);
  cudaFree (tr->workspace);
  cudaFree (tr->staging_dev);
  if (tr->staging_host != NULL)
    cudaFreeHost (tr->staging_host);
  if (tr->cudnn != NULL)
    cudnnDestroy (tr->cudnn);
  if (tr->stream != NULL)
    cudaStreamDestroy (tr->stream);
  g_free (tr);
}

void
unet_cuda_train_parameters_changed (UnetCudaTrain *tr)
{
  tr->params_dirty = TRUE;
}

gdouble
unet_cuda_train_get_loss_scale (const UnetCudaTrain *tr)
{
  return tr->loss_scale;
}

/* Host slab -> master weights -> working weights (every weight tensor permuted from
 * PyTorch [a, b, k, k] to [a, k, k, b] in the activation type, at the same slab
 * offset). */
static gboolean
upload_parameters (UnetCudaTrain *tr, const gfloat *params, GError **error)
{
  const UnetLayout *L = tr->layout;

  if (!CUDA_CHECK (cudaMemcpyAsync (tr->params, params, L->slab_numel * sizeof (float),
              cudaMemcpyHostToDevice, tr->stream), error))
    return FALSE;
  for (guint i = 0; i < L->n_tensors; i++) {
    const UnetTensorInfo *t = &L->tensors[i];
    if (t->kind != UNET_TENSOR_CONV_WEIGHT && t->kind != UNET_TENSOR_UP_WEIGHT)
      continue;
    if (!KCHECK (unet_cuda_nchw_to_nhwc (tr->params + t->offset,
                (guint8 *) tr->work + t->offset * esize (tr), tr->dtype, t->shape[0],
                t->shape[1], t->shape[2], t->shape[3], tr->stream), error))
      return FALSE;
  }
  tr->params_dirty = FALSE;
  return TRUE;
}

static void *
weight_of (UnetCudaTrain *tr, gint off)
{
  return (guint8 *) tr->work + (gsize) off * esize (tr);
}

static gboolean
unit_forward (UnetCudaTrain *tr, Unit *u, GError **error)
{
  gsize numel = u->rows * u->cout;
  const float *bias = tr->params + u->b_off;

  if (!conv_forward (tr, &u->conv, u->src, weight_of (tr, u->w_off), u->z, error))
    return FALSE;
  if (u->bn_off[0] < 0)
    return KCHECK (unet_cuda_bias_act (u->z, u->z, tr->dtype, bias, numel, u->cout, u->relu,
            tr->stream), error);
  return KCHECK (unet_cuda_bias_act (u->z, u->z, tr->dtype, bias, numel, u->cout, FALSE,
          tr->stream), error)
      && KCHECK (unet_cuda_batchnorm_forward_train (u->z, u->a, tr->dtype, u->rows, u->cout,
          tr->params + u->bn_off[0], tr->params + u->bn_off[1], BN_EPS, BN_MOMENTUM,
          tr->params + u->bn_off[2], tr->params + u->bn_off[3], u->mean, u->invstd,
          tr->partials, tr->stream), error)
      && (!u->relu || KCHECK (unet_cuda_bias_act (u->a, u->a, tr->dtype, NULL, numel, u->cout,
              TRUE, tr->stream), error));
}

/* u->da holds dL/da; turns it into dL/dz in place, adds the parameter gradients to
 * step_grads and writes dL/dsrc. */
static gboolean
unit_backward (UnetCudaTrain *tr, Unit *u, GError **error)
{
  gsize numel = u->rows * u->cout;
  float *g = tr->step_grads;

  if (u->relu && !KCHECK (unet_cuda_relu_backward (u->a, u->da, u->da, tr->dtype, numel,
              tr->stream), error))
    return FALSE;
  if (u->bn_off[0] >= 0
      && !KCHECK (unet_cuda_batchnorm_backward (u->z, u->da, u->da, tr->dtype, u->rows,
              u->cout, tr->params + u->bn_off[0], u->mean, u->invstd, g + u->bn_off[0],
              g + u->bn_off[1], tr->partials, tr->stream), error))
    return FALSE;
  if (!KCHECK (unet_cuda_bias_grad (u->da, tr->dtype, u->rows, u->cout, g + u->b_off, TRUE,
              tr->partials, tr->stream), error)
      || !conv_backward_filter (tr, &u->conv, u->src, u->da, u->cout, u->cin, u->k * u->k,
          u->w_off, error))
    return FALSE;
  return u->dsrc == NULL
      || conv_backward_data (tr, &u->conv, weight_of (tr, u->w_off), u->da, u->dsrc, error);
}

gboolean
unet_cuda_train_forward (UnetCudaTrain *tr, gfloat *params, const gfloat *input,
    gint batch, gint height, gint width, guint64 seed, gfloat *logits, GError **error)
{
  const UnetConfig *cfg = &tr->cfg;
  const gint D = cfg->depth;
  Plan *p = tr->plan;
  gsize in_bytes, out_bytes;
  Unit *U, *head;

  if (batch < 1 || batch > 65536 || height < 1 || width < 1) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "training batch %d of %dx%d is not usable", batch, width, height);
    return FALSE;
  }
  if (!CUDA_CHECK (cudaSetDevice (tr->device), error))
    return FALSE;
  if (tr->params_dirty && !upload_parameters (tr, params, error))
    return FALSE;
  if (p == NULL || p->batch != batch || p->height != height || p->width != width) {
    plan_free (tr->plan);
    tr->plan = NULL;
    if ((p = plan_new (tr, batch, height, width, error)) == NULL)
      return FALSE;
    tr->plan = p;
  }
  p->have_forward = FALSE;
  p->seed = seed;
  U = p->units;
  head = &U[4 * D + 2];
  in_bytes = (gsize) batch * cfg->in_channels * height * width * sizeof (gfloat);
  out_bytes = head->rows * head->cout * sizeof (gfloat);
  if (!ensure_staging (tr, MAX (in_bytes, out_bytes), error))
    return FALSE;
  memcpy (tr->staging_host, input, in_bytes);
  if (!CUDA_CHECK (cudaMemcpyAsync (tr->staging_dev, tr->staging_host, in_bytes,
              cudaMemcpyHostToDevice, tr->stream), error)
      || !KCHECK (unet_cuda_nchw_to_nhwc (tr->staging_dev, p->input, tr->dtype, batch,
              cfg->in_channels, height, width, tr->stream), error))
    return FALSE;

  for (gint i = 0; i < D; i++) {
    gint f = cfg->base_filters << i;
    if (!unit_forward (tr, &U[2 * i], error) || !unit_forward (tr, &U[2 * i + 1], error)
        || !KCHECK (unet_cuda_maxpool_forward (U[2 * i + 1].a, p->pool[i], p->arg[i],
                tr->dtype, batch, p->eh[i], p->ew[i], f, tr->stream), error))
      return FALSE;
  }
  if (!unit_forward (tr, &U[2 * D], error) || !unit_forward (tr, &U[2 * D + 1], error))
    return FALSE;
  if (p->drop != NULL
      && !KCHECK (unet_cuda_dropout (U[2 * D + 1].a, p->drop, tr->dtype, p->drop_numel,
              (float) cfg->dropout, seed, tr->stream), error))
    return FALSE;
  for (gint i = D - 1; i >= 0; i--) {
    gint f = cfg->base_filters << i;
    gint k = 2 * D + 2 + 2 * (D - 1 - i);
    Up *up = &p->ups[i];
    gsize up_numel = (gsize) batch * p->uh[i] * p->uw[i] * f;
    /* transposed conv = data gradient of the stride-2 conv from up-space to in-space */
    if (!conv_backward_data (tr, &up->conv, weight_of (tr, up->w_off), up->in, p->up, error)
        || !KCHECK (unet_cuda_bias_act (p->up, p->up, tr->dtype, tr->params + up->b_off,
                up_numel, f, FALSE, tr->stream), error)
        || !KCHECK (unet_cuda_crop_concat (U[2 * i + 1].a, p->eh[i], p->ew[i], f,
                (p->eh[i] - p->uh[i]) / 2, (p->ew[i] - p->uw[i]) / 2, p->up, f, p->cat[i],
                tr->dtype, batch, p->uh[i], p->uw[i], tr->stream), error)
        || !unit_forward (tr, &U[k], error) || !unit_forward (tr, &U[k + 1], error))
      return FALSE;
  }
  if (!unit_forward (tr, head, error)
      || !KCHECK (unet_cuda_nhwc_to_nchw (head->z, tr->dtype, tr->staging_dev, batch,
              head->cout, head->oh, head->ow, tr->stream), error)
      || !CUDA_CHECK (cudaMemcpyAsync (tr->staging_host, tr->staging_dev, out_bytes,
              cudaMemcpyDeviceToHost, tr->stream), error)
      || !CUDA_CHECK (cudaStreamSynchronize (tr->stream), error))
    return FALSE;
  memcpy (logits, tr->staging_host, out_bytes);

  /* the running statistics moved on the device; the host slab is the authority */
  if (cfg->batch_norm) {
    for (gint i = 0; i < p->n_units; i++) {
      const Unit *un = &U[i];
      if (un->bn_off[2] < 0)
        continue;
      for (gint q = 2; q < 4; q++)
        if (!CUDA_CHECK (cudaMemcpy (params + un->bn_off[q], tr->params + un->bn_off[q],
                    un->cout * sizeof (float), cudaMemcpyDeviceToHost), error))
          return FALSE;
    }
  }
  p->have_forward = TRUE;
  return TRUE;
}

/* One backward pass into step_grads (zeroed first), head->da already set. */
static gboolean
backward_pass (UnetCudaTrain *tr, Plan *p, GError **error)
{
  const UnetConfig *cfg = &tr->cfg;
  const gint D = cfg->depth;
  const gint batch = p->batch;
  Unit *U = p->units;
  float *g = tr->step_grads;

  if (!CUDA_CHECK (cudaMemsetAsync (g, 0, tr->layout->slab_numel * sizeof (float),
              tr->stream), error)
      || !unit_backward (tr, &U[4 * D + 2], error))
    return FALSE;
  /* encoder outputs collect the skip gradient (crop) and the pool gradient */
  for (gint i = 0; i < D; i++)
    if (!CUDA_CHECK (cudaMemsetAsync (U[2 * i + 1].da, 0,
                U[2 * i + 1].rows * U[2 * i + 1].cout * esize (tr), tr->stream), error))
      return FALSE;
  for (gint i = 0; i < D; i++) {
    gint f = cfg->base_filters << i;
    gint k = 2 * D + 2 + 2 * (D - 1 - i);
    Up *up = &p->ups[i];
    gsize up_rows = (gsize) batch * p->uh[i] * p->uw[i];
    if (!unit_backward (tr, &U[k + 1], error) || !unit_backward (tr, &U[k], error)
        || !KCHECK (unet_cuda_crop_concat_backward (p->dcat[i], U[2 * i + 1].da, p->eh[i],
                p->ew[i], f, (p->eh[i] - p->uh[i]) / 2, (p->ew[i] - p->uw[i]) / 2, p->dup, f,
                tr->dtype, batch, p->uh[i], p->uw[i], tr->stream), error)
        || !KCHECK (unet_cuda_bias_grad (p->dup, tr->dtype, up_rows, f, g + up->b_off, TRUE,
                tr->partials, tr->stream), error)
        /* filter [cin, 2, 2, cout]: x = upstream gradient (up-space), dy = the input */
        || !conv_backward_filter (tr, &up->conv, p->dup, up->in, up->cin, up->cout, 4,
            up->w_off, error)
        /* d input = the stride-2 convolution of the upstream gradient */
        || !conv_forward (tr, &up->conv, p->dup, weight_of (tr, up->w_off), up->din, error))
      return FALSE;
  }
  if (p->drop != NULL
      && !KCHECK (unet_cuda_dropout (p->ddrop, U[2 * D + 1].da, tr->dtype, p->drop_numel,
              (float) cfg->dropout, p->seed, tr->stream), error))
    return FALSE;
  if (!unit_backward (tr, &U[2 * D + 1], error) || !unit_backward (tr, &U[2 * D], error))
    return FALSE;
  for (gint i = D - 1; i >= 0; i--) {
    gint f = cfg->base_filters << i;
    if (!KCHECK (unet_cuda_maxpool_backward (p->dpool[i], p->arg[i], U[2 * i + 1].da,
                tr->dtype, batch, p->eh[i], p->ew[i], f, TRUE, tr->stream), error)
        || !unit_backward (tr, &U[2 * i + 1], error) || !unit_backward (tr, &U[2 * i], error))
      return FALSE;
  }
  return TRUE;
}

/* grad_logits * scale -> head->da (NHWC, activation type) */
static gboolean
upload_grad_logits (UnetCudaTrain *tr, Plan *p, const gfloat *grad_logits, GError **error)
{
  const UnetConfig *cfg = &tr->cfg;
  Unit *head = &p->units[4 * cfg->depth + 2];
  gsize n = head->rows * head->cout;
  const gfloat s = (gfloat) tr->loss_scale;

  /* the previous use of the pinned buffer (a download) completed synchronously */
  for (gsize i = 0; i < n; i++)
    tr->staging_host[i] = grad_logits[i] * s;
  return CUDA_CHECK (cudaMemcpyAsync (tr->staging_dev, tr->staging_host, n * sizeof (gfloat),
          cudaMemcpyHostToDevice, tr->stream), error)
      && KCHECK (unet_cuda_nchw_to_nhwc (tr->staging_dev, head->da, tr->dtype, p->batch,
          head->cout, head->oh, head->ow, tr->stream), error)
      /* the pinned buffer may be rewritten once the copy is done */
      && CUDA_CHECK (cudaStreamSynchronize (tr->stream), error);
}

gboolean
unet_cuda_train_backward (UnetCudaTrain *tr, const gfloat *grad_logits, GError **error)
{
  Plan *p = tr->plan;
  const gsize n = tr->layout->slab_numel;

  if (p == NULL || !p->have_forward) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_FAILED,
        "backward pass without a training forward pass before it");
    return FALSE;
  }
  if (!CUDA_CHECK (cudaSetDevice (tr->device), error))
    return FALSE;
  for (;;) {
    int bad = 0;
    if (!upload_grad_logits (tr, p, grad_logits, error) || !backward_pass (tr, p, error))
      return FALSE;
    if (tr->precision != UNET_PRECISION_FP16)
      break;
    if (!CUDA_CHECK (cudaMemsetAsync (tr->flag, 0, sizeof (int), tr->stream), error)
        || !KCHECK (unet_cuda_check_finite (tr->step_grads, UNET_CUDA_F32, n, tr->flag,
                tr->stream), error)
        || !CUDA_CHECK (cudaMemcpyAsync (&bad, tr->flag, sizeof (int), cudaMemcpyDeviceToHost,
                tr->stream), error)
        || !CUDA_CHECK (cudaStreamSynchronize (tr->stream), error))
      return FALSE;
    if (!bad) {
      if (++tr->clean_passes >= LOSS_SCALE_GROWTH_INTERVAL) {
        tr->clean_passes = 0;
        tr->loss_scale = MIN (tr->loss_scale * 2.0, LOSS_SCALE_MAX);
      }
      break;
    }
    /* overflow: halve the scale and run the pass again from the kept activations;
     * at scale 1 the gradients are non-finite in any precision: hand them on */
    tr->clean_passes = 0;
    if (tr->loss_scale <= 1.0)
      break;
    tr->loss_scale = MAX (tr->loss_scale * 0.5, 1.0);
    g_debug ("cuda train: fp16 gradient overflow, loss scale now %g", tr->loss_scale);
  }
  /* grads += step_grads / scale */
  return KCHECK (unet_cuda_scale_add_f32 (tr->step_grads, tr->grads, n,
          (float) (1.0 / tr->loss_scale), tr->stream), error);
}

gboolean
unet_cuda_train_zero_gradients (UnetCudaTrain *tr, GError **error)
{
  return CUDA_CHECK (cudaSetDevice (tr->device), error)
      && CUDA_CHECK (cudaMemsetAsync (tr->grads, 0, tr->layout->slab_numel * sizeof (float),
          tr->stream), error);
}

gboolean
unet_cuda_train_download_gradients (UnetCudaTrain *tr, gfloat *grads, GError **error)
{
  return CUDA_CHECK (cudaSetDevice (tr->device), error)
      && CUDA_CHECK (cudaMemcpyAsync (grads, tr->grads,
          tr->layout->slab_numel * sizeof (float), cudaMemcpyDeviceToHost, tr->stream), error)
      && CUDA_CHECK (cudaStreamSynchronize (tr->stream), error);
}
