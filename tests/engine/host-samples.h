/* A host "device" for the trainer's resident-sample path (tests only).
 *
 * host_samples_install() makes every UnetNet created afterwards get the CPU backend
 * with backend.h's sample slots added (sample_new, sample_free, batch_augment, and a
 * loss that takes the targets batch_augment left), the batch made in host memory by
 * the CUDA kernels' own bodies (kb_augment_pixel, kb_intensity_gamma,
 * kb_augment_finish_elem) over the grids the kernels cover — so trainer.c's device
 * path (draw order, pairs kept in step with their samples, the budget fallback) and
 * net.c's API run in CI without a GPU. C++ (kernel-bodies.h). */
#pragma once

#include "kernel-bodies.h"
#include "training.h"

#include <vector>

typedef struct
{
  gint max_samples;             /* sample_new past this many live: out of memory
                                   (0: no limit) */
  gint live_samples;            /* counters */
  gint uploads, batches, device_losses;
} HostSamplesStats;

/* Installs (stats non-NULL) or removes (NULL) the host device for nets created
 * afterwards. */
void host_samples_install (HostSamplesStats *stats);

/* The record of one batch entry for a frame (image (C, h, w), labels8 (h, w) with 255
 * ignored, weights (h, w) or NULL) and its draw; its grid appended to `grids`. */
UnetCudaAugSample host_samples_record (const UnetAugmentDraw *draw, const float *image,
                                       const guint8 *labels8, const float *weights,
                                       std::vector<float> &grids);

/* unet_cuda_augment_batch on the CPU: the warp (kb_augment_pixel) into tile (n, C,
 * in, in) f32, labels8 / weights (n, out, out), unless `warp` is false (then `tile`
 * is the input), the per-tile statistics as augment_stats_kernel makes them, and
 * kb_augment_finish_elem into input (n, in, in, C). */
void host_samples_augment (const std::vector<UnetCudaAugSample> &recs,
                           const std::vector<float> &grids, int channels, int in, int out,
                           std::vector<float> &tile, std::vector<float> &input,
                           std::vector<guint8> &labels8, std::vector<float> &weights,
                           bool warp);
