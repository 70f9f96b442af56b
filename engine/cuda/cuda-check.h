/* gst-unet CUDA backend — checked calls. CUDA_CHECK / CUDNN_CHECK evaluate a call,
 * and on failure set a GError in the UNET_ERROR domain naming the call and its
 * file:line (out-of-memory becomes UNET_ERROR_OUT_OF_MEMORY, everything else
 * UNET_ERROR_BACKEND) and evaluate to FALSE; they never exit. Plain C. */
#pragma once

#include <glib.h>

G_BEGIN_DECLS

/* status is a cudaError_t / cudnnStatus_t (int-sized enums). */
gboolean unet_cuda_check_impl  (int status, const char *what, const char *file, int line,
                                GError **error);
gboolean unet_cudnn_check_impl (int status, const char *what, const char *file, int line,
                                GError **error);

#define CUDA_CHECK(call, error) \
  unet_cuda_check_impl ((int) (call), #call, __FILE__, __LINE__, (error))
#define CUDNN_CHECK(call, error) \
  unet_cudnn_check_impl ((int) (call), #call, __FILE__, __LINE__, (error))

G_END_DECLS
