/* gst-unet engine — what the CPU backend's files share (internal).
 *
 * The CPU backend is one execution context — one oneDNN engine and stream, one
 * thread-count policy, one layout policy for activations — in two files:
 * cpu-backend.c (tensors, arenas, inference ops, transfers) and cpu-train.c (the
 * parameter slab and the ops of training graphs: forward in training mode and
 * backward, oneDNN primitives and C kernels on the same tensors).
 */
#pragma once

#include "backend.h"

#include <oneapi/dnnl/dnnl.h>
#include <oneapi/dnnl/dnnl_debug.h>

G_BEGIN_DECLS

typedef struct _CpuCtx CpuCtx;
typedef struct _CpuTrainOp CpuTrainOp;
typedef struct _CpuWino8 CpuWino8;

/* $UNET_CPU_CONV_ALGO: how each convolution's algorithm/implementation is chosen. */
typedef enum
{
  CPU_CONV_MEASURE,             /* time every candidate once per shape */
  CPU_CONV_DIRECT,              /* oneDNN's direct kernels */
  CPU_CONV_RULE,                /* default: Winograd 4x3 by shape rule, else direct */
  CPU_CONV_WINOGRAD,            /* Winograd where oneDNN has it, else direct */
  CPU_CONV_AUTO,                /* oneDNN's own heuristic (convolution_auto) */
} CpuConvMode;

typedef struct
{
  dnnl_memory_desc_t md;
  dnnl_memory_t mem;
} CpuPrepared;

typedef struct
{
  UnetLayerKind kind;
  gint cin, cout, k;
  dnnl_memory_desc_t w_user_md;  /* oihw (conv) or iohw (upconv), f32 */
  dnnl_memory_t w_user;
  dnnl_memory_t bias;           /* x, f32 */
  GArray *prepared;             /* CpuPrepared: weights in primitive layouts */
  gfloat *wino8_u;              /* cpu-wino8.c's transformed weights, or NULL */
} CpuLayer;

struct _CpuCtx
{
  dnnl_engine_t engine;
  dnnl_stream_t stream;
  gint threads;
  gboolean bf16;
  gint block;                   /* fp32 channel block of the layouts: 16 or 8 (ISA) */
  CpuConvMode conv_mode;
  gboolean profile;             /* $UNET_CPU_PROFILE: per-op times at op_free */
  CpuLayer *layers;
  gint n_layers;
  gpointer scratch;             /* shared by every op; grown by op_new */
  gsize scratch_bytes;
  /* training (cpu-train.c): the parameter slab and its gradients */
  gfloat *params, *grads;
  gsize n_params;
  gfloat *opt_state[2];         /* optimiser state slabs (n_params floats each) */
  gfloat *loss_z, *loss_g;      /* host logits and dL/dlogits of the loss */
  gsize loss_n;
};

struct _UnetBackendArena
{
  gpointer data;
  gsize bytes;
};

struct _UnetBackendTensor
{
  CpuCtx *ctx;
  UnetDims dims;
  dnnl_memory_desc_t md;        /* views: submemory of the parent's md */
  UnetBackendTensor *parent;
  gsize bytes;
  guint8 *data;                 /* views: the parent's data (offset is in md) */
};

/* A reorder between two memories (used for fallbacks, crops and transfers). */
typedef struct
{
  dnnl_primitive_t prim;
  dnnl_memory_t src, dst;
} CpuReorder;

struct _UnetBackendOp
{
  CpuCtx *ctx;
  UnetOpKind kind;
  dnnl_primitive_t prim;
  dnnl_memory_t src, dst, weights, bias, scratch;
  gsize scratch_bytes;
  CpuReorder pre, post;         /* fallback reorders (prim NULL when unused) */
  gpointer tmp_src, tmp_dst;    /* fallback buffers */
  /* Where src/dst live: image b at base + b * stride. Ops touching a view run
   * once per image (n_images = N) on a dense N=1 descriptor, see cpu_image(). */
  gint n_images;
  guint8 *src_base, *dst_base;
  gsize src_stride, dst_stride;
  UnetDims dims;                /* plain C ops (prim == NULL, no reorder): src dims */
  CpuTrainOp *train;            /* ops of training graphs (cpu-train.c) */
  CpuWino8 *wino8;              /* a convolution run by cpu-wino8.c */
  gint serial;                  /* 1: made for and run with one thread (see cpu_op_new_impl) */
  /* $UNET_CPU_PROFILE */
  gchar *label;
  gint64 prof_us;
  gint prof_calls;
};

#define ALIGN 64


/* Checked oneDNN call: on failure sets `error` (with the call site) and jumps to
 * the function's `fail` label. */
#define DNNL_TRY(call)                                                        \
  G_STMT_START {                                                              \
    dnnl_status_t st_ = (call);                                               \
    if (st_ != dnnl_success) {                                                \
      g_set_error (error, UNET_ERROR, UNET_ERROR_BACKEND,                     \
          "oneDNN: %s failed: %s (%s:%d)", #call, dnnl_status2str (st_),      \
          __FILE__, __LINE__);                                                \
      goto fail;                                                              \
    }                                                                         \
  } G_STMT_END


G_GNUC_INTERNAL void      cpu_set_threads     (CpuCtx *ctx);
/* 4096-aligned; free() it */
G_GNUC_INTERNAL gpointer  cpu_alloc           (gsize bytes, GError **error);
G_GNUC_INTERNAL guint8   *cpu_tensor_data     (UnetBackendTensor *t);
/* Channel-block size of a tensor's (root's) layout: 16 (nChw16c) or 1 (nchw). */
G_GNUC_INTERNAL gint      cpu_tensor_block    (const UnetBackendTensor *t);
/* Image b of `t` at *base + b * *stride, as a dense N=1 tensor of md. */
G_GNUC_INTERNAL gboolean  cpu_image           (UnetBackendTensor *t, dnnl_memory_desc_t *md,
                                               guint8 **base, gsize *stride,
                                               GError **error);

/* cpu-conv-cache.c: verdicts of the default convolution choice kept on disk for
 * the machine (0: unknown). Callers hold cpu_choice_lock. */
G_GNUC_INTERNAL gint      cpu_conv_cache_lookup (const gchar *key);
G_GNUC_INTERNAL void      cpu_conv_cache_store (const gchar *key, gint verdict);

/* cpu-wino8.c: Winograd F(4x4,3x3) on nChw8c f32 for AVX2 + FMA CPUs */
G_GNUC_INTERNAL gboolean  cpu_wino8_available (void);
G_GNUC_INTERNAL gboolean  cpu_wino8_shape_ok  (gint cin, gint cout, gint k, gint pad,
                                               gint h, gint w);
/* U = G g G^T of an oihw 3x3 layer, [36][ceil(cout/16)][cin][16]; free() it */
G_GNUC_INTERNAL gfloat   *cpu_wino8_weights   (const gfloat *oihw, gint cin, gint cout,
                                               GError **error);
G_GNUC_INTERNAL CpuWino8 *cpu_wino8_new       (const gfloat *u, const gfloat *bias,
                                               gint cin, gint cout, gint h, gint w,
                                               gint pad, gboolean relu, gint threads,
                                               GError **error);
/* one image: src (1, cin, h, w) and dst (1, cout, oh, ow), both dense nChw8c */
G_GNUC_INTERNAL void      cpu_wino8_run       (const CpuWino8 *k, const gfloat *src,
                                               gfloat *dst);
G_GNUC_INTERNAL void      cpu_wino8_free      (CpuWino8 *k);

/* cpu-train.c: the training slots of the interface (backend.h) */
G_GNUC_INTERNAL CpuTrainOp *cpu_train_op_new  (CpuCtx *ctx, const UnetOpDesc *desc,
                                               GError **error);
G_GNUC_INTERNAL void      cpu_train_op_free   (CpuTrainOp *op);
G_GNUC_INTERNAL gboolean  cpu_train_op_forward (CpuTrainOp *op, guint64 seed,
                                               GError **error);
G_GNUC_INTERNAL gboolean  cpu_train_op_backward (CpuTrainOp *op, GError **error);
G_GNUC_INTERNAL gboolean  cpu_params_set      (UnetBackend *be, const gfloat *host,
                                               gsize numel, GError **error);
G_GNUC_INTERNAL gboolean  cpu_params_get      (UnetBackend *be, gfloat *host,
                                               GError **error);
G_GNUC_INTERNAL gboolean  cpu_grads_zero      (UnetBackend *be, GError **error);
G_GNUC_INTERNAL gboolean  cpu_grads_get       (UnetBackend *be, gfloat *host,
                                               GError **error);
G_GNUC_INTERNAL gfloat   *cpu_params_host     (UnetBackend *be, gboolean gradients);
G_GNUC_INTERNAL gboolean  cpu_loss            (UnetBackend *be, UnetBackendTensor *logits,
                                               const gint32 *labels, const gfloat *weights,
                                               gdouble dice_weight,
                                               UnetBackendTensor *diff_logits,
                                               gdouble *loss, UnetConfusion *confusion,
                                               GError **error);
G_GNUC_INTERNAL gboolean  cpu_optimizer_update (UnetBackend *be, const UnetOptimUpdate *u,
                                               gboolean *finite, GError **error);
G_GNUC_INTERNAL gboolean  cpu_optimizer_state (UnetBackend *be, guint index, gfloat *host,
                                               gboolean to_backend, GError **error);

G_END_DECLS
