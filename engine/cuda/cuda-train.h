/* gst-unet engine — CUDA training executor (internal; built only when HAVE_CUDA).
 *
 * The GPU twin of engine/cpu/cpu-train.h: forward in training mode and backward of
 * the whole U-Net with cuDNN (forward, backward data, backward filter) and the
 * kernels of cuda-kernels.h, NHWC activations in the net's precision. Parameters and
 * gradients live on the device as f32 slabs in the model's slab layout
 * (model-private.h): the parameters are the fp32 master weights, the working weights
 * the convolutions read (KRSC, activation type) are derived from them on the device.
 * The host slab stays the authority for the parameters (the host optimiser writes
 * it): it is uploaded at the first forward after unet_cuda_train_parameters_changed.
 * Gradients stay on the device until unet_cuda_train_download_gradients.
 *
 * FP16: dynamic loss scaling (PyTorch GradScaler defaults: scale 2^16, halved on an
 * overflow, doubled after 2000 clean backward passes). The backward pass runs on
 * grad_logits * scale into a per-pass f32 slab; on inf/NaN the scale is halved and
 * the pass repeated from the kept activations, so the gradients handed on are always
 * unscaled and finite unless they are so at scale 1 too.
 */
#pragma once

#include "model-private.h"

G_BEGIN_DECLS

typedef struct _UnetCudaTrain UnetCudaTrain;

/* `layout` must outlive the executor. UNET_ERROR_NO_DEVICE without a usable GPU. */
UnetCudaTrain *unet_cuda_train_new      (const UnetConfig *cfg, const UnetLayout *layout,
                                         const UnetNetOptions *opts, GError **error);
void     unet_cuda_train_free           (UnetCudaTrain *tr);
/* The host parameter slab changed: upload it before the next forward. */
void     unet_cuda_train_parameters_changed (UnetCudaTrain *tr);
/* params: the host slab (uploaded when changed; batch-norm running statistics are
 * written back into it). input (batch, in_channels, height, width) and logits
 * (batch, classes, oh, ow) are host NCHW f32. */
gboolean unet_cuda_train_forward        (UnetCudaTrain *tr, gfloat *params,
                                         const gfloat *input, gint batch, gint height,
                                         gint width, guint64 seed, gfloat *logits,
                                         GError **error);
/* Device gradients acc += dL/dparams of the last forward; grad_logits host NCHW. */
gboolean unet_cuda_train_backward       (UnetCudaTrain *tr, const gfloat *grad_logits,
                                         GError **error);
gboolean unet_cuda_train_zero_gradients (UnetCudaTrain *tr, GError **error);
/* grads (slab_numel floats, host) = the device gradients. */
gboolean unet_cuda_train_download_gradients (UnetCudaTrain *tr, gfloat *grads,
                                         GError **error);
/* Current fp16 loss scale (1 in the other precisions). */
gdouble  unet_cuda_train_get_loss_scale (const UnetCudaTrain *tr);

G_DEFINE_AUTOPTR_CLEANUP_FUNC (UnetCudaTrain, unet_cuda_train_free)

G_END_DECLS
