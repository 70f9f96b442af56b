/* gst-unet CUDA backend — turning CUDA and cuDNN status codes into GErrors with the
 * failing call and its location (see cuda-check.h). */
#include "cuda-check.h"

#include "unet.h"

#include <cuda_runtime_api.h>
#include <cudnn.h>
#include <string.h>

static const char *
base_name (const char *file)
{
  const char *slash = strrchr (file, '/');
  return slash != NULL ? slash + 1 : file;
}

gboolean
unet_cuda_check_impl (int status, const char *what, const char *file, int line,
    GError **error)
{
  cudaError_t err = (cudaError_t) status;

  if (err == cudaSuccess)
    return TRUE;
  /* A failed runtime call also leaves its status as the thread's "last error", which
   * the next kernel launch's check (cudaGetLastError) would report: a failed
   * cudaMallocHost would make the next successful launch fail with out-of-memory.
   * The failure is reported here, so clear it (sticky errors stay: they are
   * returned by every later call anyway). */
  (void) cudaGetLastError ();
  g_set_error (error, UNET_ERROR,
      err == cudaErrorMemoryAllocation ? UNET_ERROR_OUT_OF_MEMORY : UNET_ERROR_BACKEND,
      "CUDA error at %s:%d (%s): %s (%s)", base_name (file), line, what,
      cudaGetErrorString (err), cudaGetErrorName (err));
  return FALSE;
}

gboolean
unet_cudnn_check_impl (int status, const char *what, const char *file, int line,
    GError **error)
{
  cudnnStatus_t st = (cudnnStatus_t) status;

  if (st == CUDNN_STATUS_SUCCESS)
    return TRUE;
  g_set_error (error, UNET_ERROR,
      st == CUDNN_STATUS_INTERNAL_ERROR_HOST_ALLOCATION_FAILED
      || st == CUDNN_STATUS_INTERNAL_ERROR_DEVICE_ALLOCATION_FAILED ?
      UNET_ERROR_OUT_OF_MEMORY : UNET_ERROR_BACKEND,
      "cuDNN error at %s:%d (%s): %s", base_name (file), line, what,
      cudnnGetErrorString (st));
  return FALSE;
}
