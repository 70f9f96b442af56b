/* gst-unet CUDA backend — entry points beyond backend.h's unet_backend_cuda_new that
 * the GPU tests use (only built when HAVE_CUDA). */
#pragma once

#include "backend.h"

G_BEGIN_DECLS

/* TRUE when device `gpu_id` exists and can run this build's kernels; `name` (may be
 * NULL) receives "NAME (sm_XY, N GiB)". Errors are UNET_ERROR_NO_DEVICE with
 * "no CUDA device: <CUDA's reason>". */
gboolean     unet_cuda_device_usable    (gint gpu_id, gchar *name, gsize name_size,
                                         GError **error);

G_END_DECLS
