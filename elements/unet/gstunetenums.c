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
