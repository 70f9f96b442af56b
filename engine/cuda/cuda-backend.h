/* gst-unet CUDA backend — entry points beyond backend.h's unet_backend_cuda_new that
 * the GPU tests use (only built when HAVE_CUDA). */
#pragma once

#include "backend.h"
#include "cuda-kernels.h"

#include <cudnn.h>

G_BEGIN_DECLS

/* TRUE when device `gpu_id` exists and can run this build's kernels; `name` (may be
 * NULL) receives "NAME (sm_XY, N GiB)". Errors are UNET_ERROR_NO_DEVICE with
 * "no CUDA device: <CUDA's reason>". */
gboolean     unet_cuda_device_usable    (gint gpu_id, gchar *name, gsize name_size,
                                         GError **error);

/* The storage type, cuDNN data type and cuDNN math type of a precision, shared by the
 * inference backend and the training executor: fp32 uses FMA math (no TF32 tensor
 * cores, so results are comparable with the CPU); tf32 keeps fp32 storage with
 * tensor-op math; bf16 and fp16 store activations and weights in 16 bits. */
void         unet_cuda_precision_types  (UnetPrecision precision, UnetCudaDType *dtype,
                                         cudnnDataType_t *cudnn_dtype,
                                         cudnnMathType_t *math);

G_END_DECLS
