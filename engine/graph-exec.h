/* gst-unet engine — a graph (graph.h) made concrete on a backend (internal).
 *
 * UnetGraphExec holds, for one graph: a backend tensor per graph tensor (views for
 * the concat halves and their gradients), one arena in which tensors whose
 * lifetimes do not overlap share memory (unet_graph_pack), and one backend op per
 * node — created once. Running it is then only a loop over the ops: op_forward for
 * inference; op_forward_training in order, then op_backward in reverse, for
 * training. The caller moves data in and out of the graph's input, logits, output
 * and d logits tensors with the backend's upload/download (or, for on-device
 * tiling, its frame slots).
 */
#pragma once

#include "backend.h"
#include "graph.h"

G_BEGIN_DECLS

typedef struct _UnetGraphExec UnetGraphExec;

/* Takes `graph`, also on failure. */
UnetGraphExec *unet_graph_exec_new      (UnetBackend *be, UnetGraph *graph, GError **error);
void         unet_graph_exec_free       (UnetGraphExec *x);
const UnetGraph *unet_graph_exec_get_graph (const UnetGraphExec *x);
/* The backend tensor of graph tensor `id` (graph->input, ->logits, ...). */
UnetBackendTensor *unet_graph_exec_tensor (UnetGraphExec *x, gint id);

/* Inference: op_forward for nodes [0, n_nodes) (-1: all). */
gboolean     unet_graph_exec_forward    (UnetGraphExec *x, gint n_nodes, GError **error);
/* Training graphs: op_forward_training for every node; `seed` draws dropout. */
gboolean     unet_graph_exec_forward_training (UnetGraphExec *x, guint64 seed,
                                         GError **error);
/* Training graphs: op_backward for every node in reverse, from d logits (the
 * caller's) to the parameter gradients (added to the backend's gradient slab).
 * Once per forward pass: the arena reuses the memory of activations whose
 * backward has run, so a second backward is refused (UNET_ERROR_FAILED). */
gboolean     unet_graph_exec_backward   (UnetGraphExec *x, GError **error);

G_DEFINE_AUTOPTR_CLEANUP_FUNC (UnetGraphExec, unet_graph_exec_free)

G_END_DECLS
