/* gst-unet engine — what the segmenter and the tests need from a UnetNet
 * (internal): its backend, a forward pass whose tensors stay on the backend, and a
 * test hook on backend creation.
 */
#pragma once

#include "backend.h"
#include "unet.h"

G_BEGIN_DECLS

/* The net's backend (the segmenter's on-device tiling talks to it directly). */
UnetBackend *unet_net_get_backend       (UnetNet *net);
/* One inference forward pass whose input and logits stay on the backend: `fill`
 * writes the input tensor (batch, in_channels, height, width), every op up to the
 * head runs, `use` reads the logits tensor (batch, classes, oh, ow) — raw scores,
 * the final softmax/sigmoid is left to the reader. Same checks as unet_net_forward. */
typedef gboolean (*UnetNetTensorFunc) (UnetBackendTensor *t, gpointer user,
                                       GError **error);
gboolean     unet_net_forward_tensors   (UnetNet *net, gint batch, gint height, gint width,
                                         UnetNetTensorFunc fill, UnetNetTensorFunc use,
                                         gpointer user, GError **error);

/* Tests only: called with every backend unet_net_new creates, before the layers are
 * uploaded; it may replace be->iface with one that adds optional slots (the host
 * frame "device" of tests/engine/host-frames.cc adds the frame slots to the CPU
 * backend). NULL removes the hook. Not thread-safe: set it before creating nets. */
typedef void (*UnetBackendHook) (UnetBackend *be, gpointer user);
void         unet_net_set_backend_hook  (UnetBackendHook hook, gpointer user);

G_END_DECLS
