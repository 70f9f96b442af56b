/* gst-unet engine — normalisation parameters from statistics computed elsewhere
 * (internal: the segmenter's on-device path computes the frame statistics on the GPU
 * and needs the same (v - lo) * scale as unet_normalize_frame). */
#pragma once

#include "unet.h"

G_BEGIN_DECLS

/* lo / scale of the modes that need no frame statistics (none, range, meanstd);
 * FALSE for percentile and frame-meanstd. */
gboolean     unet_normalization_fixed_params (const UnetNormalization *norm, gdouble *lo,
                                         gdouble *scale);
/* Percentile mode from a histogram of `bins` integer values (u8: 256, u16: 65536)
 * over n >= 1 pixels: exactly what unet_normalize_frame computes. */
void         unet_normalization_histogram_params (const UnetNormalization *norm,
                                         const gsize *hist, guint bins, gsize n,
                                         gdouble *lo, gdouble *scale);

G_END_DECLS
