/* gst-unet engine — a graph made concrete on a backend (graph-exec.h). */
#include "config.h"

#include "graph-exec.h"

#include <string.h>

#define ARENA_ALIGN 4096

struct _UnetGraphExec
{
  UnetBackend *be;
  UnetGraph *g;
  UnetBackendTensor **tensors;  /* per graph tensor */
  gint n_tensors;
  UnetBackendOp **ops;          /* per node */
  gint n_ops;
  UnetBackendArena *arena;
  gboolean have_forward;        /* training: a forward pass ran since the last build */
};

void
unet_graph_exec_free (UnetGraphExec *x)
{
  if (x == NULL)
    return;
  for (gint i = 0; i < x->n_ops; i++)
    if (x->ops[i])
      x->be->iface->op_free (x->ops[i]);
  /* views before their parents */
  for (gint i = x->n_tensors - 1; i >= 0; i--)
    if (x->tensors[i])
      x->be->iface->tensor_free (x->tensors[i]);
  if (x->arena)
    x->be->iface->arena_free (x->arena);
  g_free (x->ops);
  g_free (x->tensors);
  unet_graph_free (x->g);
  g_free (x);
}

UnetGraphExec *
unet_graph_exec_new (UnetBackend *be, UnetGraph *g, GError **error)
{
  const UnetBackendIface *bi = be->iface;
  const gboolean training = g->mode == UNET_GRAPH_TRAINING;
  UnetGraphExec *x = g_new0 (UnetGraphExec, 1);

  x->be = be;
  x->g = g;
  if (training && !unet_backend_can_train (be)) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_NO_DEVICE,
        "the %s backend cannot train", bi->name);
    goto fail;
  }
  x->n_tensors = (gint) g->tensors->len;
  x->tensors = g_new0 (UnetBackendTensor *, x->n_tensors);
  x->n_ops = unet_graph_n_nodes (g);
  x->ops = g_new0 (UnetBackendOp *, x->n_ops);

  for (gint i = 0; i < x->n_tensors; i++) {
    UnetGraphTensor *t = unet_graph_tensor (g, i);
    if (t->parent >= 0)
      continue;
    if ((x->tensors[i] = bi->tensor_new (be, &t->dims, error)) == NULL)
      goto fail;
    t->bytes = (bi->tensor_bytes (x->tensors[i]) + ARENA_ALIGN - 1)
        / ARENA_ALIGN * ARENA_ALIGN;
  }
  /* views before op_new and before binding: a view may change its parent's
   * layout, never its size (backend.h) */
  for (gint i = 0; i < x->n_tensors; i++) {
    UnetGraphTensor *t = unet_graph_tensor (g, i);
    if (t->parent < 0)
      continue;
    x->tensors[i] = bi->tensor_view (be, x->tensors[t->parent], t->c_offset, t->dims.c,
        error);
    if (x->tensors[i] == NULL)
      goto fail;
  }
  if ((x->arena = bi->arena_new (be, unet_graph_pack (g, ARENA_ALIGN), error)) == NULL)
    goto fail;
  for (gint i = 0; i < x->n_tensors; i++)
    if (unet_graph_tensor (g, i)->parent < 0)
      bi->tensor_bind (x->tensors[i], x->arena, unet_graph_tensor (g, i)->offset);

  for (gint k = 0; k < x->n_ops; k++) {
    const UnetGraphNode *n = unet_graph_node (g, k);
    UnetOpDesc d = {
      .kind = n->kind, .layer = training ? -1 : n->layer, .k = n->k, .pad = n->pad,
      .relu = n->relu, .crop_y = n->crop_y, .crop_x = n->crop_x,
      .src = x->tensors[n->src], .dst = x->tensors[n->dst],
      .training = training, .weight = n->weight, .bias = n->bias,
      .dropout = n->dropout,
      .diff_dst = n->diff_dst >= 0 ? x->tensors[n->diff_dst] : NULL,
      .diff_src = n->diff_src >= 0 ? x->tensors[n->diff_src] : NULL,
      .accumulate = n->accumulate,
    };
    memcpy (d.bn, n->bn, sizeof d.bn);
    if ((x->ops[k] = bi->op_new (be, &d, error)) == NULL)
      goto fail;
  }
  return x;

fail:
  unet_graph_exec_free (x);
  return NULL;
}

const UnetGraph *
unet_graph_exec_get_graph (const UnetGraphExec *x)
{
  return x->g;
}

UnetBackendTensor *
unet_graph_exec_tensor (UnetGraphExec *x, gint id)
{
  g_return_val_if_fail (id >= 0 && id < x->n_tensors, NULL);
  return x->tensors[id];
}

gboolean
unet_graph_exec_forward (UnetGraphExec *x, gint n_nodes, GError **error)
{
  if (n_nodes < 0 || n_nodes > x->n_ops)
    n_nodes = x->n_ops;
  for (gint k = 0; k < n_nodes; k++)
    if (!x->be->iface->op_forward (x->ops[k], error))
      return FALSE;
  return TRUE;
}

gboolean
unet_graph_exec_forward_training (UnetGraphExec *x, guint64 seed, GError **error)
{
  g_return_val_if_fail (x->g->mode == UNET_GRAPH_TRAINING, FALSE);
  x->have_forward = FALSE;
  for (gint k = 0; k < x->n_ops; k++)
    if (!x->be->iface->op_forward_training (x->ops[k], seed, error))
      return FALSE;
  x->have_forward = TRUE;
  return TRUE;
}

gboolean
unet_graph_exec_backward (UnetGraphExec *x, GError **error)
{
  g_return_val_if_fail (x->g->mode == UNET_GRAPH_TRAINING, FALSE);
  if (!x->have_forward) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_FAILED,
        "backward pass without a training forward pass before it (each forward "
        "allows one backward)");
    return FALSE;
  }
  /* one backward per forward: the arena lets gradients reuse the memory of
   * activations whose backward has run, so a second pass would read them
   * overwritten */
  x->have_forward = FALSE;
  for (gint k = x->n_ops - 1; k >= 0; k--)
    if (!x->be->iface->op_backward (x->ops[k], error))
      return FALSE;
  return TRUE;
}
