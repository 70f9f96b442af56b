/* gst-unet engine — choosing a backend (backend.h): the one place that knows which
 * backends this build has. */
#include "config.h"

#include "backend.h"

UnetBackend *
unet_backend_new (const UnetNetOptions *opts, UnetDevice *device, GError **error)
{
  const gboolean have_cuda = HAVE_CUDA_BACKEND;

  if (opts->device == UNET_DEVICE_CUDA && !have_cuda) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_NO_DEVICE,
        "device cuda requested but gst-unet was built without CUDA; use device cpu");
    return NULL;
  }
#if HAVE_CUDA_BACKEND
  if (opts->device == UNET_DEVICE_CUDA || opts->device == UNET_DEVICE_AUTO) {
    /* AUTO: no usable GPU is not an error, the CPU takes over */
    UnetBackend *be = unet_backend_cuda_new (opts,
        opts->device == UNET_DEVICE_CUDA ? error : NULL);
    *device = UNET_DEVICE_CUDA;
    if (be != NULL || opts->device == UNET_DEVICE_CUDA)
      return be;
  }
#endif
  *device = UNET_DEVICE_CPU;
  return unet_backend_cpu_new (opts, error);
}
