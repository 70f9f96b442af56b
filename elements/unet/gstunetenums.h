/* gst-unet — enum types shared by the elements of the "unet" plugin.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 */
#pragma once

#include <gst/gst.h>
#include "unet.h"

G_BEGIN_DECLS

/* The device enum has every value in every build ("cuda" without CUDA fails at
 * start with a clear error), so pipelines parse everywhere. Values equal UnetDevice. */
#define GST_TYPE_UNET_DEVICE (gst_unet_device_get_type ())
GType gst_unet_device_get_type (void);

/* Arithmetic precision; every value in every build. The CPU backend computes fp32
 * and bf16 and rejects tf32/fp16 with a clear error at start. Values equal
 * UnetPrecision. */
#define GST_TYPE_UNET_PRECISION (gst_unet_precision_get_type ())
GType gst_unet_precision_get_type (void);

G_END_DECLS
