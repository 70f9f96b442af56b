/* Small shared pieces of the public API: the error domain and option defaults. */
#include "unet.h"

G_DEFINE_QUARK (unet-error-quark, unet_error)

void
unet_net_options_init (UnetNetOptions *opts)
{
  opts->device = UNET_DEVICE_AUTO;
  opts->gpu_id = 0;
  opts->threads = 0;
  opts->precision = UNET_PRECISION_FP32;
}

const gchar *
unet_device_name (UnetDevice device)
{
  switch (device) {
    case UNET_DEVICE_AUTO:
      return "auto";
    case UNET_DEVICE_CPU:
      return "cpu";
    case UNET_DEVICE_CUDA:
      return "cuda";
  }
  return "unknown";
}
