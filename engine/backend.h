/* gst-unet engine — internal backend interface.
 *
 * A backend is a struct of function pointers (UnetBackendIface) plus a private
 * context. It knows a handful of generic ops on 4-D activation tensors and nothing
 * about U-Net: the network graph (which op feeds which, crop offsets, liveness and
 * memory reuse) lives once, in net.c, and drives every backend the same way.
 *
 * Life cycle, as net.c uses it:
 *   1. unet_backend_*_new()                         engine, streams, threads
 *   2. upload_layers()                              every parameter, once
 *   3. per input shape ("plan"), once:
 *        tensor_new()/tensor_view()  for every activation (no memory yet; the
 *                                    backend picks the layout, e.g. nChw16c)
 *        tensor_bytes()              -> net.c packs tensors whose lifetimes do not
 *                                    overlap into one arena (liveness)
 *        arena_new() + tensor_bind() memory
 *        op_new()                    primitive/algorithm choice, weight reorders
 *   4. per forward: upload(input) ; op_forward() for each op in order ;
 *      download(output)
 *
 * Tensors: dims are logical NCHW; the physical layout and data type are private to
 * the backend (the oneDNN backend keeps blocked layouts from layer to layer and
 * reorders only in upload/download). A "view" is a channel range of a parent
 * tensor sharing its memory: a producer writes straight into one half of a concat
 * buffer. Ops read the whole src tensor except CROP_COPY, which reads a spatial
 * window.
 *
 * Optional slots (training) may be NULL; callers test them through the inline
 * wrappers at the bottom of this file, in one place.
 */
#pragma once

#include "training.h"
#include "unet.h"

G_BEGIN_DECLS

typedef struct _UnetBackend UnetBackend;
typedef struct _UnetBackendTensor UnetBackendTensor;   /* backend-defined */
typedef struct _UnetBackendArena UnetBackendArena;     /* backend-defined */
typedef struct _UnetBackendOp UnetBackendOp;           /* backend-defined */
typedef struct _UnetBackendFrames UnetBackendFrames;   /* backend-defined */
typedef struct _UnetBackendSample UnetBackendSample;   /* backend-defined */

typedef struct
{
  gint n, c, h, w;
} UnetDims;

/* ----------------------------------------------------------- parameters -- */

typedef enum
{
  UNET_LAYER_CONV,              /* Conv2d, weight [cout, cin, k, k] */
  UNET_LAYER_UPCONV,            /* ConvTranspose2d, weight [cin, cout, 2, 2] */
} UnetLayerKind;

/* One layer's parameters: host float32, PyTorch layouts. The pointers stay valid
 * (net.c owns them) until the next upload_layers() or free, so a host backend may
 * use them in place instead of keeping a copy. Inference batch norm is folded into
 * weight/bias by net.c before the upload (training will add the BN tensors here). */
typedef struct
{
  UnetLayerKind kind;
  gint cin, cout, k;            /* k: 3 or 1 (conv), 2 (upconv) */
  const gfloat *weight;
  const gfloat *bias;           /* [cout] */
} UnetLayerParams;

/* ------------------------------------------------------------------ ops -- */

typedef enum
{
  UNET_OP_CONV,                 /* dst = [relu] (conv_kxk(src, pad) + bias);
                                   src (n,cin,h,w) -> dst (n,cout,h+2p-k+1,..) */
  UNET_OP_MAXPOOL2,             /* 2x2 stride 2 max; (n,c,h,w) -> (n,c,h/2,w/2) */
  UNET_OP_UPCONV2,              /* ConvTranspose2d 2x2 stride 2 + bias;
                                   (n,cin,h,w) -> (n,cout,2h,2w) */
  UNET_OP_CROP_COPY,            /* dst = src[:, :, y0:y0+dst.h, x0:x0+dst.w] */
  UNET_OP_SOFTMAX,              /* softmax over channels */
  UNET_OP_SIGMOID,              /* elementwise logistic */
  UNET_OP_BATCHNORM,            /* training graphs only: dst = [relu] (BatchNorm2d in
                                   training mode (src)): batch statistics (biased
                                   variance) normalise, eps 1e-5; the running mean and
                                   (unbiased) variance in the parameter slab move by
                                   momentum 0.1. Inference graphs fold it into CONV. */
  UNET_OP_DROPOUT,              /* training graphs only: inverted dropout, drop
                                   probability `dropout`, mask drawn from the seed of
                                   op_forward_training. Not in inference graphs. */
} UnetOpKind;

typedef struct
{
  UnetOpKind kind;
  gint layer;                   /* inference CONV, UPCONV2: index into the uploaded
                                   layers; -1 in training graphs */
  gint k;                       /* CONV: kernel edge (3 or 1); UPCONV2: 2 */
  gint pad;                     /* CONV: zero padding on every side (0 or 1) */
  gboolean relu;                /* CONV, BATCHNORM: fused ReLU */
  gint crop_y, crop_x;          /* CROP_COPY: top-left corner of the window in src */
  UnetBackendTensor *src;
  UnetBackendTensor *dst;       /* may be a view */

  /* ---- training graphs (training TRUE): built for op_forward_training and
   * op_backward. Parameters are read from, and gradients added to, the backend's
   * parameter and gradient slabs (params_set) at these float offsets. */
  gboolean training;
  gint weight, bias;            /* CONV, UPCONV2 */
  gint bn[4];                   /* BATCHNORM: gamma, beta, running_mean, running_var */
  gdouble dropout;              /* DROPOUT: drop probability in [0, 1) */
  UnetBackendTensor *diff_dst;  /* dL/d dst, shaped as dst (may be a view) */
  UnetBackendTensor *diff_src;  /* dL/d src, shaped as src (may be a view); NULL
                                   when nothing needs it (the net input) */
  gboolean accumulate;          /* diff_src += this op's contribution (src has a
                                   later reader whose backward ran first); else
                                   diff_src is written whole (CROP_COPY: zero
                                   outside the window) */
} UnetOpDesc;

/* ------------------------------------------------------------ interface -- */

typedef struct
{
  const gchar *name;
  void (*free) (UnetBackend *be);

  gboolean (*upload_layers) (UnetBackend *be, const UnetLayerParams *layers,
                             gint n_layers, GError **error);

  UnetBackendTensor *(*tensor_new) (UnetBackend *be, const UnetDims *dims,
                                    GError **error);
  /* Channels [c_offset, c_offset + c) of `parent`; shares its memory. May change
   * the parent's layout (never its size), so create views before op_new() on the
   * parent. */
  UnetBackendTensor *(*tensor_view) (UnetBackend *be, UnetBackendTensor *parent,
                                     gint c_offset, gint c, GError **error);
  void (*tensor_free) (UnetBackendTensor *t);
  /* Bytes the tensor needs in an arena (views: 0). */
  gsize (*tensor_bytes) (UnetBackendTensor *t);

  UnetBackendArena *(*arena_new) (UnetBackend *be, gsize bytes, GError **error);
  void (*arena_free) (UnetBackendArena *arena);
  /* Places `t` at `offset` (aligned by net.c to 4096) in `arena`; views follow
   * their parent. Must happen before op_new() for the ops that use `t`. */
  void (*tensor_bind) (UnetBackendTensor *t, UnetBackendArena *arena, gsize offset);

  UnetBackendOp *(*op_new) (UnetBackend *be, const UnetOpDesc *desc, GError **error);
  void (*op_free) (UnetBackendOp *op);
  gboolean (*op_forward) (UnetBackendOp *op, GError **error);

  /* Host NCHW float32 (dense, dims of `t`) <-> tensor. */
  gboolean (*upload) (UnetBackendTensor *t, const gfloat *host, GError **error);
  gboolean (*download) (UnetBackendTensor *t, gfloat *host, GError **error);
  /* Waits for queued work (asynchronous backends); may be NULL. */
  gboolean (*synchronize) (UnetBackend *be, GError **error);

  /* ---- training (optional: NULL = the backend does not train) ----
   * The parameter slab (engine/model-private.h's layout, f32) lives on the backend,
   * with a gradient slab of the same size. Per step the training executor
   * (engine/net-train.c) runs op_forward_training over the forward nodes in order,
   * then op_backward over them in reverse; it never copies parameters, gradients
   * or activations to the host on the way.
   *   params_set          host -> backend parameters (allocates both slabs on the
   *                       first call; the size never changes afterwards)
   *   params_get          backend -> host (checkpoints, export, inference refold)
   *   grads_zero          gradient slab = 0
   *   grads_get           backend -> host gradients (tests, gradient checks)
   *   params_host         the parameter / gradient slab itself when it is host
   *                       memory the caller may read and write in place (CPU), else
   *                       NULL (may itself be NULL)
   *   op_forward_training as op_forward, keeping what op_backward needs (batch-norm
   *                       statistics, pooling argmax, dropout mask); `seed` draws
   *                       the dropout mask
   *   op_backward         from diff_dst: diff_src (written or accumulated, see
   *                       UnetOpDesc) and the op's parameter gradients (always
   *                       added to the gradient slab). May overwrite diff_dst (a
   *                       fused ReLU masks it in place): nothing reads it after. */
  gboolean (*params_set) (UnetBackend *be, const gfloat *host, gsize numel,
                          GError **error);
  gboolean (*params_get) (UnetBackend *be, gfloat *host, GError **error);
  gboolean (*grads_zero) (UnetBackend *be, GError **error);
  gboolean (*grads_get) (UnetBackend *be, gfloat *host, GError **error);
  gfloat *(*params_host) (UnetBackend *be, gboolean gradients);
  gboolean (*op_forward_training) (UnetBackendOp *op, guint64 seed, GError **error);
  gboolean (*op_backward) (UnetBackendOp *op, GError **error);

  /* ---- the rest of a training step on the backend (optional: NULL = the net
   * does it on the host, with copies; engine/net.c) ----
   *   loss              the weighted cross-entropy of `logits` (softmax over the
   *                     channels; sigmoid BCE for one channel) against the batch's
   *                     class map `labels` (UNET_LABEL_IGNORE: not counted) and pixel
   *                     `weights` — host arrays (n, h, w) the backend uploads — as
   *                     unet_loss_cross_entropy, plus dice_weight times
   *                     unet_loss_soft_dice when dice_weight > 0. Writes dL/dlogits
   *                     into `diff_logits`; only the scalars come back: the loss and
   *                     the prediction's confusion matrix.
   *   optimizer_update  the update `u` of the parameter slab from the gradient slab
   *                     (unet_optim_update_host's arithmetic), with u->n_buffers
   *                     state slabs kept on the backend (zero before the first
   *                     update). Non-finite gradients: UNET_ERROR_FAILED, nothing
   *                     changed. *finite: every parameter is finite afterwards. A
   *                     backend with dynamic loss scaling (CUDA fp16) skips, with
   *                     TRUE, an update whose gradients lost a backward pass to an
   *                     overflow (GradScaler's policy).
   *   optimizer_state   state slab `index` backend -> host, or host -> backend
   *                     (`to_backend`): checkpoints and resume. */
  /*                 labels NULL: the targets batch_augment wrote on the backend for
   *                 a batch of the logits' shape (weights must be NULL too). */
  gboolean (*loss) (UnetBackend *be, UnetBackendTensor *logits, const gint32 *labels,
                    const gfloat *weights, gdouble dice_weight,
                    UnetBackendTensor *diff_logits, gdouble *loss,
                    UnetConfusion *confusion, GError **error);
  gboolean (*optimizer_update) (UnetBackend *be, const UnetOptimUpdate *u,
                                gboolean *finite, GError **error);
  gboolean (*optimizer_state) (UnetBackend *be, guint index, gfloat *host,
                               gboolean to_backend, GError **error);

  /* ---- training samples resident on the backend (optional: NULL = the trainer
   * augments on the host and uploads each batch; engine/trainer.c) ----
   *   sample_new     uploads one training pair once: image (channels, height, width)
   *                  f32, class map (height, width) (0..max(classes, 2) - 1 or
   *                  UNET_LABEL_IGNORE; checked), weight map (height, width) f32
   *                  (finite, >= 0; checked) or NULL. UNET_ERROR_OUT_OF_MEMORY when
   *                  the backend's budget for samples (backend-defined) is spent.
   *   sample_free    releases it (NULL: no-op); every sample goes before the backend
   *   batch_augment  one training batch from n resident samples and their draws
   *                  (training.h's UnetAugmentDraw, applied as
   *                  unet_augment_apply_host applies it): the image tiles into
   *                  `input` (n, channels, in_h, in_w), and the labels / weights of
   *                  the centred output regions kept on the backend as the targets of
   *                  the next loss() called with labels NULL. Per call only the draws
   *                  travel to the backend. */
  UnetBackendSample *(*sample_new) (UnetBackend *be, const gfloat *image, gint channels,
                                    const gint32 *class_map, const gfloat *weights,
                                    gint width, gint height, gint classes, GError **error);
  void (*sample_free) (UnetBackendSample *sample);
  gboolean (*batch_augment) (UnetBackend *be, UnetBackendSample *const *samples,
                             const UnetAugmentDraw *draws, gint n,
                             UnetBackendTensor *input, GError **error);

  /* ---- on-device tiling (optional: NULL = the segmenter tiles on the host) ----
   * A ring of `depth` frame slots, each with pinned staging for one raw frame and
   * one result, and device buffers for the frame and its outputs (grown when a
   * larger frame arrives, never per frame). Per slot, in order:
   *   frame_upload    raw frame -> pinned staging -> device (copy stream, async)
   *   frame_normalize (v - lo) * scale parameters of the frame: constants of the
   *                   fixed modes, or percentile / frame mean-std statistics of
   *                   channel 0 (u8/u16 frames) computed and kept on the device (after
   *                   the upload, on the copy stream): no host synchronisation
   *   frame_begin     size and clear the slot's outputs for its frame (only the
   *                   outputs asked for: labels and/or one class's probability)
   *   frame_extract   n tiles, mirror-extended and normalised (frame_normalize),
   *                   into batch entries [b0, b0 + n) of a net input tensor
   *   frame_stitch    softmax/sigmoid of tiles [b0, b0 + n) of a logits tensor:
   *                   owned blocks copied (blend FALSE) or Gaussian-accumulated
   *   frame_download  labels and/or one class's probability -> pinned -> host
   *                   pointers, after the compute stream's work for the slot
   *                   (download stream, async; blend results finalised first)
   *   frame_wait      the slot's download has landed in the host pointers
   * Upload of the next frame, compute of this one and download of the previous
   * one run on three streams, ordered by events. */
  UnetBackendFrames *(*frames_new) (UnetBackend *be, gint depth, GError **error);
  void (*frames_free) (UnetBackendFrames *fr);
  gboolean (*frame_upload) (UnetBackendFrames *fr, gint slot, UnetPixelFormat format,
                            gconstpointer data, gint width, gint height, gsize stride,
                            GError **error);
  gboolean (*frame_normalize) (UnetBackendFrames *fr, gint slot,
                               const UnetNormalization *norm, GError **error);
  /* labels: frame_download delivers labels; prob_class: the class whose probability
   * it delivers, or -1 for none */
  gboolean (*frame_begin) (UnetBackendFrames *fr, gint slot, gint classes, gboolean labels,
                           gint prob_class, gboolean blend, GError **error);
  gboolean (*frame_extract) (UnetBackendFrames *fr, gint slot, const gint *origin_x,
                             const gint *origin_y, gint n, gint b0,
                             UnetBackendTensor *input, GError **error);
  /* blocks: n x {src_x, src_y, dst_x, dst_y, w, h} (tile output -> frame) */
  gboolean (*frame_stitch) (UnetBackendFrames *fr, gint slot, UnetBackendTensor *logits,
                            gint b0, gint n, const gint *blocks, gboolean blend,
                            GError **error);
  gboolean (*frame_download) (UnetBackendFrames *fr, gint slot, guint8 *labels,
                              gfloat *probability, GError **error);
  gboolean (*frame_wait) (UnetBackendFrames *fr, gint slot, GError **error);
} UnetBackendIface;

struct _UnetBackend
{
  const UnetBackendIface *iface;
  gpointer priv;                /* the backend's context */
  gint channel_align;           /* inference graphs pad inner channel counts to a
                                   multiple of this, with zero weights (graph.h);
                                   0 or 1: no padding */
};

/* Constructors. `opts` gives threads and precision (CPU: FP32 or BF16). */
UnetBackend *unet_backend_cpu_new       (const UnetNetOptions *opts, GError **error);
/* Built only when HAVE_CUDA; UNET_ERROR_NO_DEVICE when no usable GPU exists. */
UnetBackend *unet_backend_cuda_new      (const UnetNetOptions *opts, GError **error);
/* The backend for opts->device (AUTO: CUDA when built and usable, else CPU), the
 * device it runs on in *device — the one place that chooses (backend.c). */
UnetBackend *unet_backend_new           (const UnetNetOptions *opts, UnetDevice *device,
                                         GError **error);

/* The shape rules of UnetOpDesc above, for every backend's op_new, given the
 * dimensions of desc's src, dst, diff_src and diff_dst (the last two NULL when
 * absent): src/dst per kind (channel counts of CONV and UPCONV2 are the layer's),
 * and in a training desc the gradient tensors shaped as their tensors. */
gboolean     unet_op_desc_check_shapes  (const UnetOpDesc *desc, const UnetDims *src,
                                         const UnetDims *dst, const UnetDims *diff_src,
                                         const UnetDims *diff_dst, GError **error);

/* Optional-slot checks, in one place. */
static inline gboolean
unet_backend_can_train (const UnetBackend *be)
{
  return be->iface->params_set != NULL && be->iface->op_forward_training != NULL
      && be->iface->op_backward != NULL;
}

static inline gboolean
unet_backend_can_hold_samples (const UnetBackend *be)
{
  return be->iface->sample_new != NULL && be->iface->sample_free != NULL
      && be->iface->batch_augment != NULL && be->iface->loss != NULL;
}

static inline gboolean
unet_backend_can_tile (const UnetBackend *be)
{
  return be->iface->frames_new != NULL;
}

static inline gboolean
unet_backend_synchronize (UnetBackend *be, GError **error)
{
  return be->iface->synchronize == NULL || be->iface->synchronize (be, error);
}

static inline void
unet_backend_free (UnetBackend *be)
{
  if (be != NULL)
    be->iface->free (be);
}

G_END_DECLS
