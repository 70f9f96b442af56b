/* gst-unet engine — a segmenter on a net someone else owns (internal).
 *
 * The trainer validates and previews the network it is training through the
 * segmenter, so that its figures and previews are what unetsegment outputs with
 * the model it exports: same normalisation, tile plan, batching, stitching and
 * argmax, on the same backend, with no second copy of the network.
 */
#pragma once

#include "unet.h"

G_BEGIN_DECLS

/* A segmenter that runs `net` (borrowed: it must outlive the segmenter and not be
 * used by another thread meanwhile) with normalisation `norm`; opts->net,
 * opts->override_normalization and opts->normalization are ignored. Every forward
 * uses the net's current parameters: after unet_net_parameters_changed the net
 * refolds its inference layers before its next forward, so a segmenter kept across
 * training steps sees each step's weights. Frames are finished with the current
 * parameters when they are pushed/flushed: push, flush and pop between steps. */
UnetSegmenter *unet_segmenter_new_for_net (UnetNet *net, const UnetNormalization *norm,
                                           const UnetSegmenterOptions *opts,
                                           GError **error);

G_END_DECLS
