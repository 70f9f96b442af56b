/* gst-unet engine — what net-train.c needs from a UnetNet (internal).
 *
 * A UnetNet keeps a host copy of its model (the parameter slab in the layout of
 * engine/model-private.h). Training updates that copy; the inference layers on the
 * backend (batch norm folded) are rebuilt from it lazily, at the next
 * unet_net_forward after unet_net_mark_parameters_dirty().
 */
#pragma once

#include "backend.h"
#include "unet.h"

G_BEGIN_DECLS

/* The net's host model (owned by the net). */
UnetModel   *unet_net_get_host_model    (UnetNet *net);
/* Re-fold and re-upload the inference layers from the host model before the next
 * forward. */
void         unet_net_mark_parameters_dirty (UnetNet *net);
/* The options the net was created with (net-train.c: precision, gpu-id). */
const UnetNetOptions *unet_net_get_options (const UnetNet *net);
/* Slot for net-train.c's state; freed with unet_net_train_state_free by
 * unet_net_free. */
gpointer    *unet_net_get_train_slot    (UnetNet *net);
void         unet_net_train_state_free  (gpointer state);

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
