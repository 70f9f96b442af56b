/* gst-unet — enum types shared by the elements of the "unet" plugin.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include "gstunetenums.h"

GType
gst_unet_device_get_type (void)
{
  static gsize type = 0;
  static const GEnumValue values[] = {
    {UNET_DEVICE_AUTO, "CUDA when a usable GPU exists, else CPU", "auto"},
    {UNET_DEVICE_CPU, "CPU (oneDNN)", "cpu"},
#if HAVE_CUDA
    {UNET_DEVICE_CUDA, "CUDA GPU (cuDNN)", "cuda"},
#else
    {UNET_DEVICE_CUDA, "CUDA GPU (not built: fails at start)", "cuda"},
#endif
    {0, NULL, NULL}
  };

  if (g_once_init_enter (&type)) {
    GType t = g_enum_register_static ("GstUnetDevice", values);
    g_once_init_leave (&type, t);
  }
  return type;
}

GType
gst_unet_precision_get_type (void)
{
  static gsize type = 0;
  static const GEnumValue values[] = {
    {UNET_PRECISION_FP32, "32-bit float (CPU and CUDA; no TF32 on the GPU)", "fp32"},
    {UNET_PRECISION_TF32, "TF32 tensor cores, f32 activations (CUDA only)", "tf32"},
    {UNET_PRECISION_BF16, "bfloat16 activations and weights, f32 accumulation", "bf16"},
    {UNET_PRECISION_FP16, "float16 activations and weights, f32 accumulation (CUDA only)",
        "fp16"},
    {0, NULL, NULL}
  };

  if (g_once_init_enter (&type)) {
    GType t = g_enum_register_static ("GstUnetPrecision", values);
    g_once_init_leave (&type, t);
  }
  return type;
}
