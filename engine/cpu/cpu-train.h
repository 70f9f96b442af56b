/* gst-unet engine — the CPU backend's training kernels (internal).
 *
 * The CPU backend runs training graphs (graph.h) with the ops of cpu-train.c:
 * convolutions and the 2x2 transposed convolution on oneDNN's forward_training /
 * backward_data / backward_weights primitives, max-pool, batch norm, dropout and
 * crop on the backend's (channel-blocked) layouts in C with OpenMP. The functions
 * below are the plain-NCHW forms of those kernels, exported for the per-op
 * finite-difference tests (tests/engine/test-train-ops.c); the standalone
 * transposed convolution is four GEMMs (dnnl_sgemm).
 *
 * Shapes are written beside each argument; "acc" marks outputs that are ADDED to.
 */
#pragma once

#include "backend.h"

G_BEGIN_DECLS

/* ------------------------------------------------------------- ops -- */

/* 2x2 stride-2 max pool. src (n,c,h,w), h and w even; dst (n,c,h/2,w/2);
 * arg (n,c,h/2,w/2): index 0..3 of the maximum (first in row-major order on ties,
 * as PyTorch). */
void     unet_cpu_maxpool2_forward      (const gfloat *src, gint n, gint c, gint h, gint w,
                                         gfloat *dst, guint8 *arg);
/* dsrc (n,c,h,w) acc += ddst (n,c,h/2,w/2) routed to the maxima. */
void     unet_cpu_maxpool2_backward     (const gfloat *ddst, const guint8 *arg, gint n,
                                         gint c, gint h, gint w, gfloat *dsrc);

/* ConvTranspose2d(kernel 2, stride 2) + bias. src (n,cin,h,w); weight
 * [cin,cout,2,2]; bias [cout]; dst (n,cout,2h,2w) whose sample b starts at
 * dst + b * dst_batch_stride (so it can be a channel range of a concat buffer). */
gboolean unet_cpu_upconv2_forward       (const gfloat *src, gint n, gint cin, gint h, gint w,
                                         const gfloat *weight, const gfloat *bias, gint cout,
                                         gfloat *dst, gsize dst_batch_stride, GError **error);
/* dsrc (n,cin,h,w) written (may be NULL); dweight, dbias acc. */
gboolean unet_cpu_upconv2_backward      (const gfloat *src, gint n, gint cin, gint h, gint w,
                                         const gfloat *weight, gint cout,
                                         const gfloat *ddst, gsize ddst_batch_stride,
                                         gfloat *dsrc, gfloat *dweight, gfloat *dbias,
                                         GError **error);

/* BatchNorm2d in training mode (eps 1e-5, momentum 0.1, PyTorch semantics: batch
 * statistics with the biased variance normalise; the running variance gets the
 * unbiased one). x, y (n,c,hw); mean, invstd [c] saved for backward; running_mean,
 * running_var [c] updated in place (may be NULL). */
void     unet_cpu_bn_forward_train      (const gfloat *x, gint n, gint c, gsize hw,
                                         const gfloat *gamma, const gfloat *beta,
                                         gfloat *y, gfloat *mean, gfloat *invstd,
                                         gfloat *running_mean, gfloat *running_var);
/* dx (n,c,hw) written — may alias dy; dgamma, dbeta acc. */
void     unet_cpu_bn_backward           (const gfloat *x, const gfloat *dy, gint n, gint c,
                                         gsize hw, const gfloat *gamma, const gfloat *mean,
                                         const gfloat *invstd, gfloat *dx, gfloat *dgamma,
                                         gfloat *dbeta);

/* Dropout: keep with probability 1 - p, scale kept values by 1/(1 - p); the mask
 * (count bytes) is drawn from `seed`. dst may alias src. */
void     unet_cpu_dropout_forward       (const gfloat *src, gsize count, gdouble p,
                                         guint64 seed, guint8 *mask, gfloat *dst);
void     unet_cpu_dropout_backward      (const gfloat *ddst, const guint8 *mask, gsize count,
                                         gdouble p, gfloat *dsrc);

/* 3x3 / 1x1 convolution + bias (stride 1, zero padding `pad`) on oneDNN. */
typedef struct _UnetCpuConv UnetCpuConv;

/* `be`: a CPU backend (unet_backend_cpu_new), whose oneDNN engine and stream
 * the convolution uses; it must outlive the convolution. */
UnetCpuConv *unet_cpu_conv_new          (UnetBackend *be, gint n, gint cin, gint h, gint w,
                                         gint cout, gint k, gint pad, GError **error);
void     unet_cpu_conv_free             (UnetCpuConv *conv);
/* src (n,cin,h,w); weight [cout,cin,k,k]; bias [cout]; dst (n,cout,h+2pad-k+1,..) */
gboolean unet_cpu_conv_forward          (UnetCpuConv *conv, const gfloat *src,
                                         const gfloat *weight, const gfloat *bias,
                                         gfloat *dst, GError **error);
/* dsrc written (may be NULL: not needed for the first layer); dweight, dbias acc. */
gboolean unet_cpu_conv_backward         (UnetCpuConv *conv, const gfloat *src,
                                         const gfloat *weight, const gfloat *ddst,
                                         gfloat *dsrc, gfloat *dweight, gfloat *dbias,
                                         GError **error);

G_DEFINE_AUTOPTR_CLEANUP_FUNC (UnetCpuConv, unet_cpu_conv_free)

G_END_DECLS
