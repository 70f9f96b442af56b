/* gst-unet engine — the CUDA backend's context, tensors and ops, shared by its
 * inference half (cuda-backend.c) and its training half (cuda-train-ops.c); internal
 * to engine/cuda. One CudaCtx per backend is THE execution context of the device:
 * one compute stream (every kernel and cuDNN call), one copy stream (uploads), one
 * cuDNN handle, one workspace, one scratch and one allocator (cuda_alloc), used by
 * inference and training alike.
 */
#pragma once

#include "backend.h"
#include "cuda-check.h"
#include "cuda-kernels.h"

#include <cuda_runtime_api.h>
#include <cudnn.h>

G_BEGIN_DECLS

typedef struct _CudaCtx CudaCtx;
typedef struct _CudaTrainOp CudaTrainOp;

#define CUDA_ALIGN 256
/* labels on the device: u8, the ignore label 255 (uploaded batches, resident
 * samples, the targets of batches augmented there) */
#define CUDA_LABEL_IGNORE_U8 255

/* The scalars of a step on the device (cuda-step.c), read back in one copy: the loss
 * sums, soft Dice's per-class sums, the confusion matrix (up to `flags`), and the
 * optimiser's two flags (on their own). */
typedef struct
{
  double xent[2];               /* sum of w * loss, sum of w */
  double dice[48];              /* intersection, probability sum, label count per class */
  unsigned long long confusion[256];    /* [label][prediction], 16 x 16 */
  int flags[2];                 /* non-finite gradient; non-finite parameter */
} CudaStepScalars;
#define DEFAULT_WORKSPACE_MIB 512

typedef struct
{
  UnetLayerKind kind;
  gint cin, cout, k;
  void *weight;                 /* KRSC (conv: [cout,k,k,cin]; upconv: [cin,2,2,cout]) */
  float *bias;                  /* [cout] f32 */
  void *bias_lp;                /* [cout] in the activation type (cuDNN's fused op) */
  const gfloat *host_weight;    /* PyTorch layout, valid until the next upload (net.c) */
  float *weight_f32;            /* KRSC f32, uploaded when an op falls back to f32 */
} CudaLayer;

struct _CudaCtx
{
  gint device;
  gchar name[256];
  cudaStream_t stream;          /* every op, in order */
  cudaStream_t copy_stream;     /* host-to-device uploads */
  cudaEvent_t upload_done;      /* copy_stream -> stream */
  cudaEvent_t staging_free;     /* stream -> copy_stream: the staging was consumed */
  cudnnHandle_t cudnn;
  UnetPrecision precision;
  UnetCudaDType dtype;
  cudnnDataType_t cudnn_dtype;
  cudnnMathType_t math;
  gboolean find;                /* benchmark algorithms (cudnnFind*Ex) */
  CudaLayer *layers;
  gint n_layers;
  void *workspace;
  gsize workspace_bytes;
  gboolean workspace_done;
  void *scratch;
  gsize scratch_bytes;
  float *scratch32;             /* f32 operands of convolutions run in f32 */
  gsize scratch32_bytes;
  float *staging_dev;
  gsize staging_dev_bytes;
  float *staging_host;          /* pinned */
  gsize staging_host_bytes;

  /* ---- training (cuda-train-ops.c): slabs in the layout of model-private.h ---- */
  gsize slab_numel;             /* 0 until the first params_set */
  float *params;                /* f32 master parameters (+ batch-norm running stats) */
  float *grads;                 /* f32 gradients, unscaled, accumulated */
  float *step_grads;            /* fp16 only: one backward pass's gradients, scaled by
                                   loss_scale, folded into grads (fold_pass) */
  void *work;                   /* working weights: KRSC, activation type, slab offsets */
  guint64 params_version;       /* bumped by params_set; ops re-derive their weights */
  void *dw;                     /* one filter gradient (cuDNN KRSC, activation type);
                                   also the weight stand-in while algorithms are chosen */
  gsize dw_bytes;
  double *partials;             /* per-channel reduction scratch (cuda-kernels.h) */
  gsize partials_bytes;
  int *flag;                    /* device: non-finite gradient seen */
  gdouble loss_scale;           /* fp16: dynamic loss scale; else 1 */
  gint64 clean_passes;
  gboolean pass_open;           /* fp16: step_grads holds a pass not folded yet */
  gboolean pass_dropped;        /* fp16: a pass since the last grads_zero overflowed and
                                   was dropped: the next optimiser update is skipped */

  /* ---- the rest of a step on the device (cuda-step.c) ---- */
  CudaStepScalars *scalars;     /* device */
  CudaStepScalars *scalars_host;        /* pinned */
  void *batch_dev;              /* one batch's weights (f32) then labels (u8) */
  gsize batch_dev_bytes;
  void *batch_host;             /* pinned staging of the same */
  gsize batch_host_bytes;
  float *grad32;                /* 16-bit nets: f32 dL/dlogits before the cast */
  gsize grad32_bytes;
  float *opt_state[2];          /* optimiser state slabs (slab_numel floats each) */
  gsize targets_pixels;         /* batch_dev holds targets batch_augment wrote on the
                                   device for this many pixels; 0: none */
  /* ---- resident training samples, augmented batches (cuda-augment.c) ---- */
  GList *samples;               /* UnetBackendSample*, live */
  gsize samples_bytes;          /* their device memory */
  gsize samples_budget;         /* its limit; 0 until the first sample */
  void *aug_host;               /* pinned: one batch's UnetCudaAugSample, then grids */
  gsize aug_host_bytes;
  void *aug_dev;                /* the same on the device */
  gsize aug_dev_bytes;
  cudaEvent_t aug_copied;       /* aug_host's last upload has landed */
  gboolean aug_pending;         /* ... was recorded and not waited for */
  float *aug_tile;              /* (n, C, H, W) f32 warped tiles */
  gsize aug_tile_bytes;
  double *aug_stats;            /* (n, 3): min, max, mean */
  gsize aug_stats_bytes;
};

struct _UnetBackendArena
{
  void *data;
  gsize bytes;
};

struct _UnetBackendTensor
{
  CudaCtx *ctx;
  UnetDims dims;
  UnetBackendTensor *parent;
  gint c_offset;
  UnetBackendArena *arena;
  gsize offset;
  gsize bytes;
  /* training: a gradient seed (some training op's diff_dst and no op's diff_src, i.e.
   * dL/dlogits): fp16 uploads into it are multiplied by the loss scale */
  gboolean is_diff_dst, is_diff_src;
};

struct _UnetBackendOp
{
  CudaCtx *ctx;
  UnetOpDesc d;
  cudnnTensorDescriptor_t x_desc, y_desc, bias_desc;
  cudnnFilterDescriptor_t w_desc;
  cudnnConvolutionDescriptor_t conv_desc;
  cudnnActivationDescriptor_t act_desc;
  gint algo;                    /* cudnnConvolutionFwdAlgo_t / BwdDataAlgo_t */
  gsize ws_bytes;
  gboolean fused;               /* conv + bias + ReLU in one cuDNN call */
  gboolean via_scratch;         /* dst is a view: compute densely into ctx->scratch */
  gboolean f32;                 /* 16-bit net, but cuDNN has no NHWC algorithm for this
                                 * shape (1 or odd channels): run it in f32 */
  CudaTrainOp *train;           /* a training op (desc.training): cuda-train-ops.c */
};

static inline CudaCtx *
cuda_ctx_of (UnetBackend *be)
{
  return be->priv;
}

static inline gsize
cuda_esize (const CudaCtx *ctx)
{
  return unet_cuda_dtype_size (ctx->dtype);
}

/* Kernel launchers return a cudaError_t as int. */
#define KERNEL_CHECK(call, error) CUDA_CHECK (call, error)

/* ---- cuda-backend.c ---- */

/* Makes the backend's device current on the calling thread. */
gboolean     cuda_use_device            (const CudaCtx *ctx, GError **error);
/* cudaMalloc with an actionable out-of-memory error naming `what`. */
gboolean     cuda_alloc                 (void **ptr, gsize bytes, const gchar *what,
                                         GError **error);
/* Grows a device buffer to `need` bytes (never shrinks; contents are lost). */
gboolean     cuda_grow_device           (void **buf, gsize *have, gsize need,
                                         const gchar *what, GError **error);
/* The convolution workspace, allocated once. */
gboolean     cuda_ensure_workspace      (CudaCtx *ctx, GError **error);
/* NHWC descriptor of `dims` with a pixel stride of `stride` elements, in
 * ctx->cudnn_dtype. */
gboolean     cuda_set_nhwc_desc         (CudaCtx *ctx, cudnnTensorDescriptor_t desc,
                                         const UnetDims *dims, gint stride, GError **error);
/* Start of the tensor's first channel (views: inside the parent's memory), its pixel
 * stride in elements, its pixel count n * h * w. */
void        *cuda_tensor_data           (const UnetBackendTensor *t);
gint         cuda_tensor_stride         (const UnetBackendTensor *t);
gsize        cuda_tensor_pixels         (const UnetBackendTensor *t);

/* ---- cuda-train-ops.c: the training slots of backend.h ---- */

UnetBackendOp *cuda_train_op_new        (CudaCtx *ctx, const UnetOpDesc *desc,
                                         GError **error);
void         cuda_train_op_free         (UnetBackendOp *op);
/* Frees the training slabs and scratch of the context. */
void         cuda_train_ctx_free        (CudaCtx *ctx);
/* The loss scale a gradient seed upload applies (1 but in fp16 training): also the
 * grad_scale a loss computed on the device must write dL/dlogits with. */
gfloat       cuda_train_seed_scale      (const UnetBackendTensor *t);
/* fp16: folds a pending backward pass into ctx->grads (cuda-train-ops.c); anything
 * that reads ctx->grads (an optimiser step on the device) calls it first. */
gboolean     cuda_train_grads_ready     (CudaCtx *ctx, GError **error);
gboolean     cuda_params_set            (UnetBackend *be, const gfloat *host, gsize numel,
                                         GError **error);
gboolean     cuda_params_get            (UnetBackend *be, gfloat *host, GError **error);
gboolean     cuda_grads_zero            (UnetBackend *be, GError **error);
gboolean     cuda_grads_get             (UnetBackend *be, gfloat *host, GError **error);
gboolean     cuda_op_forward_training   (UnetBackendOp *op, guint64 seed, GError **error);
gboolean     cuda_op_backward           (UnetBackendOp *op, GError **error);

/* ---- cuda-frames.c: the frame slots of backend.h (on-device tiling) ---- */
UnetBackendFrames *cuda_frames_new (UnetBackend *be, gint depth, GError **error);
void         cuda_frames_free (UnetBackendFrames *fr);
gboolean     cuda_frame_upload (UnetBackendFrames *fr, gint slot, UnetPixelFormat format,
                                gconstpointer data, gint width, gint height, gsize stride,
                                GError **error);
gboolean     cuda_frame_normalize (UnetBackendFrames *fr, gint slot,
                                   const UnetNormalization *norm, GError **error);
gboolean     cuda_frame_begin (UnetBackendFrames *fr, gint slot, gint classes,
                               gboolean labels, gint prob_class, gboolean blend,
                               GError **error);
gboolean     cuda_frame_extract (UnetBackendFrames *fr, gint slot, const gint *origin_x,
                                 const gint *origin_y, gint n, gint b0,
                                 UnetBackendTensor *input, GError **error);
gboolean     cuda_frame_stitch (UnetBackendFrames *fr, gint slot,
                                UnetBackendTensor *logits, gint b0, gint n,
                                const gint *blocks, gboolean blend, GError **error);
gboolean     cuda_frame_download (UnetBackendFrames *fr, gint slot, guint8 *labels,
                                  gfloat *probability, GError **error);
gboolean     cuda_frame_wait (UnetBackendFrames *fr, gint slot, GError **error);

/* ---- cuda-step.c: loss, optimiser update and state on the device ---- */

gboolean     cuda_loss                  (UnetBackend *be, UnetBackendTensor *logits,
                                         const gint32 *labels, const gfloat *weights,
                                         gdouble dice_weight,
                                         UnetBackendTensor *diff_logits, gdouble *loss,
                                         UnetConfusion *confusion, GError **error);
gboolean     cuda_optimizer_update      (UnetBackend *be, const UnetOptimUpdate *u,
                                         gboolean *finite, GError **error);
gboolean     cuda_optimizer_state       (UnetBackend *be, guint index, gfloat *host,
                                         gboolean to_backend, GError **error);
/* ---- cuda-augment.c: resident training samples, batches augmented on the device ---- */
UnetBackendSample *cuda_sample_new      (UnetBackend *be, const gfloat *image, gint channels,
                                         const gint32 *class_map, const gfloat *weights,
                                         gint width, gint height, gint classes,
                                         GError **error);
void         cuda_sample_free           (UnetBackendSample *s);
gboolean     cuda_batch_augment         (UnetBackend *be, UnetBackendSample *const *samples,
                                         const UnetAugmentDraw *draws, gint n,
                                         UnetBackendTensor *input, GError **error);
/* Frees every sample and the batch buffers (from the backend's free). */
void         cuda_augment_ctx_free      (CudaCtx *ctx);
/* Frees the step's buffers (from cuda_train_ctx_free). */
void         cuda_step_ctx_free         (CudaCtx *ctx);

G_END_DECLS
