/* A host "device" for the segmenter's on-device frame path (tests only).
 *
 * host_frames_install() makes every UnetNet created afterwards get the CPU backend
 * with the optional frame slots of backend.h added, implemented in host memory with
 * the CUDA kernels' own per-element bodies (engine/cuda/kernel-bodies.h): upload,
 * normalisation statistics, extraction, stitch / blend, finalisation, and a download
 * that lands in the caller's buffers only at frame_wait, as the asynchronous GPU copy
 * does. So segmenter.c's device path (slot ring, block geometry, batch_frames
 * ordering, dropping unfinished frames, out-of-memory halving) runs in CI without a
 * GPU. It checks the protocol as it goes: a slot reused before its download was
 * waited for, a stitch of tiles that were never extracted, or outputs downloaded that
 * frame_begin did not ask for fail with UNET_ERROR_FAILED. */
#pragma once

#include <glib.h>

G_BEGIN_DECLS

typedef struct
{
  /* injected failures: frame_extract of more than this many tiles fails with
   * UNET_ERROR_OUT_OF_MEMORY (0: never) */
  gint oom_above;
  /* the frame_extract call with this 1-based number fails with UNET_ERROR_BACKEND
   * (0: never) */
  gint fail_extract_call;
  /* counters */
  gint extract_calls;
  gint max_extract_n;           /* largest n that succeeded */
  gint frames_uploaded, frames_waited;
  /* largest buffers frame_begin allocated (bytes), per kind */
  gsize labels_bytes, probs_bytes, acc_bytes, wsum_bytes;
  /* the calls in order: one letter per call (U upload, N normalize, B begin,
   * E extract, S stitch, D download, W wait) followed by the slot number */
  GString *log;
} HostFramesStats;

/* Installs (stats non-NULL) or removes (NULL) the host device for nets created
 * afterwards; nets already created keep working and report into the last stats
 * given. */
void host_frames_install (HostFramesStats *stats);

G_END_DECLS
