/* gst-unet engine — UnetNet (unet.h): a model's layers on a backend, and inference.
 *
 * Owns the layers (batch norm folded into the convolutions for inference), the
 * backend, and a small cache of plans, one per input shape (batch, height, width).
 * The network's structure is graph.c's: a plan is that graph made concrete —
 * backend tensors for its tensors (views for the concat halves), one arena in
 * which tensors whose lifetimes do not overlap share memory (unet_graph_pack), and
 * one backend op per node (primitive creation) — all once. A forward then only
 * uploads the input, runs the ops in order and downloads the output.
 */
#include "config.h"

#include "backend.h"
#include "graph.h"
#include "model-private.h"
#include "net-private.h"
#include "unet.h"

#include <math.h>
#include <string.h>

#define NET_MAX_PLANS 2         /* shapes kept: full tiles + a last partial batch */
#define NET_ARENA_ALIGN 4096

typedef struct
{
  gint batch, height, width;
  UnetBackend *be;
  UnetBackendTensor **tensors;  /* per graph tensor */
  gint n_tensors;
  UnetBackendOp **ops;
  gint n_ops;
  UnetBackendArena *arena;
  gsize arena_bytes;
  gint input, output, logits;
} NetPlan;

struct _UnetNet
{
  UnetConfig cfg;
  UnetDevice device;
  UnetNetOptions opts;          /* as given (device: the one asked for) */
  UnetBackend *be;
  GList *plans;                 /* NetPlan, most recently used first */
  GPtrArray *folded;            /* BN-folded layer weights the backend uses */
  /* Training (net-private.h, net-train.c): the host copy of the parameters the
   * layers were folded from, a flag to rebuild them, net-train.c's state. */
  UnetModel *host;
  gboolean host_dirty;
  gpointer train;
};

/* ----------------------------------------------------------------- plans -- */

static void
net_plan_free (NetPlan *p)
{
  if (p == NULL)
    return;
  for (gint i = 0; i < p->n_ops; i++)
    if (p->ops[i])
      p->be->iface->op_free (p->ops[i]);
  /* views before their parents */
  for (gint i = p->n_tensors - 1; i >= 0; i--)
    if (p->tensors[i])
      p->be->iface->tensor_free (p->tensors[i]);
  if (p->arena)
    p->be->iface->arena_free (p->arena);
  g_free (p->ops);
  g_free (p->tensors);
  g_free (p);
}

static NetPlan *
net_plan_new (UnetNet *net, gint batch, gint height, gint width, GError **error)
{
  const UnetBackendIface *be = net->be->iface;
  g_autoptr (UnetGraph) g = unet_graph_new (&net->cfg, NULL, UNET_GRAPH_INFERENCE,
      batch, height, width, error);
  NetPlan *p;

  if (g == NULL)
    return NULL;
  p = g_new0 (NetPlan, 1);
  p->be = net->be;
  p->batch = batch;
  p->height = height;
  p->width = width;
  p->n_tensors = (gint) g->tensors->len;
  p->tensors = g_new0 (UnetBackendTensor *, p->n_tensors);
  p->n_ops = unet_graph_n_nodes (g);
  p->ops = g_new0 (UnetBackendOp *, p->n_ops);
  p->input = g->input;
  p->output = g->output;
  p->logits = g->logits;

  for (gint i = 0; i < p->n_tensors; i++) {
    UnetGraphTensor *t = unet_graph_tensor (g, i);
    if (t->parent >= 0)
      continue;
    if ((p->tensors[i] = be->tensor_new (net->be, &t->dims, error)) == NULL)
      goto fail;
    t->bytes = (be->tensor_bytes (p->tensors[i]) + NET_ARENA_ALIGN - 1)
        / NET_ARENA_ALIGN * NET_ARENA_ALIGN;
  }
  p->arena_bytes = unet_graph_pack (g, NET_ARENA_ALIGN);
  if ((p->arena = be->arena_new (net->be, p->arena_bytes, error)) == NULL)
    goto fail;
  for (gint i = 0; i < p->n_tensors; i++) {
    UnetGraphTensor *t = unet_graph_tensor (g, i);
    if (t->parent >= 0) {
      p->tensors[i] = be->tensor_view (net->be, p->tensors[t->parent], t->c_offset,
          t->dims.c, error);
      if (p->tensors[i] == NULL)
        goto fail;
    } else {
      be->tensor_bind (p->tensors[i], p->arena, t->offset);
    }
  }
  for (gint k = 0; k < p->n_ops; k++) {
    const UnetGraphNode *n = unet_graph_node (g, k);
    UnetOpDesc d = {
      .kind = n->kind, .layer = n->layer, .k = n->k, .pad = n->pad, .relu = n->relu,
      .crop_y = n->crop_y, .crop_x = n->crop_x,
      .src = p->tensors[n->src], .dst = p->tensors[n->dst],
      .weight = -1, .bias = -1, .bn = {-1, -1, -1, -1},
    };
    if ((p->ops[k] = be->op_new (net->be, &d, error)) == NULL)
      goto fail;
  }
  return p;

fail:
  net_plan_free (p);
  return NULL;
}

static NetPlan *
net_get_plan (UnetNet *net, gint batch, gint height, gint width, GError **error)
{
  NetPlan *p;
  for (GList *l = net->plans; l != NULL; l = l->next) {
    p = l->data;
    if (p->batch == batch && p->height == height && p->width == width) {
      net->plans = g_list_remove_link (net->plans, l);
      net->plans = g_list_concat (l, net->plans);
      return p;
    }
  }
  /* drop the least recently used plan first, so two arenas never coexist
   * needlessly with a third */
  if (g_list_length (net->plans) >= NET_MAX_PLANS) {
    GList *last = g_list_last (net->plans);
    net_plan_free (last->data);
    net->plans = g_list_delete_link (net->plans, last);
  }
  p = net_plan_new (net, batch, height, width, error);
  if (p != NULL)
    net->plans = g_list_prepend (net->plans, p);
  return p;
}

/* ---------------------------------------------------------------- layers -- */

/* Collects the layers in graph order (unet_graph_layers), folding inference batch
 * norm:
 *   w' = w * g / sqrt(v + eps),  b' = (b - m) * g / sqrt(v + eps) + beta
 * (computed in double; exact up to float rounding). */
static gboolean
net_upload_layers (UnetNet *net, const UnetModel *model, GError **error)
{
  const gint n_layers = unet_graph_layers (&net->cfg, NULL);
  g_autofree UnetGraphLayer *gl = g_new0 (UnetGraphLayer, n_layers);
  g_autofree UnetLayerParams *layers = g_new0 (UnetLayerParams, n_layers);
  /* folded batch-norm weights: the backend references them (backend.h) */
  GPtrArray *storage = g_ptr_array_new_with_free_func (g_free);

  unet_graph_layers (&net->cfg, gl);
  for (gint i = 0; i < n_layers; i++) {
    const UnetGraphLayer *l = &gl[i];
    UnetLayerParams *lp = &layers[i];
    gchar name[64];
    gint ws[4], nd;
    g_snprintf (name, sizeof name, "%s.weight", l->name);
    const gfloat *w = unet_model_peek_tensor (model, name, ws, &nd);
    g_snprintf (name, sizeof name, "%s.bias", l->name);
    const gfloat *b = unet_model_peek_tensor (model, name, NULL, NULL);
    if (w == NULL || b == NULL || nd != 4) {
      g_set_error (error, UNET_ERROR, UNET_ERROR_MODEL,
          "model has no tensor %s.weight/.bias", l->name);
      goto fail;
    }
    lp->kind = l->kind;
    lp->cin = l->cin;
    lp->cout = l->cout;
    lp->k = l->k;
    lp->weight = w;
    lp->bias = b;
    if (l->bn[0] != '\0') {
      const gfloat *bnp[4];
      const gchar *parts[4] = { "weight", "bias", "running_mean", "running_var" };
      gsize per = (gsize) lp->cin * lp->k * lp->k;
      gfloat *fw = g_new (gfloat, per * lp->cout), *fb = g_new (gfloat, lp->cout);
      g_ptr_array_add (storage, fw);
      g_ptr_array_add (storage, fb);
      for (gint q = 0; q < 4; q++) {
        g_snprintf (name, sizeof name, "%s.%s", l->bn, parts[q]);
        if ((bnp[q] = unet_model_peek_tensor (model, name, NULL, NULL)) == NULL) {
          g_set_error (error, UNET_ERROR, UNET_ERROR_MODEL, "model has no tensor %s",
              name);
          goto fail;
        }
      }
      for (gint o = 0; o < lp->cout; o++) {
        gdouble sc = bnp[0][o] / sqrt ((gdouble) bnp[3][o] + 1e-5);
        for (gsize q = 0; q < per; q++)
          fw[o * per + q] = (gfloat) (w[o * per + q] * sc);
        fb[o] = (gfloat) (((gdouble) b[o] - bnp[2][o]) * sc + bnp[1][o]);
      }
      lp->weight = fw;
      lp->bias = fb;
    }
  }
  if (!net->be->iface->upload_layers (net->be, layers, n_layers, error))
    goto fail;
  g_clear_pointer (&net->folded, g_ptr_array_unref);
  net->folded = storage;
  return TRUE;

fail:
  g_ptr_array_unref (storage);
  return FALSE;
}

/* ------------------------------------------------------------------- API -- */

static UnetBackendHook backend_hook;
static gpointer backend_hook_user;

void
unet_net_set_backend_hook (UnetBackendHook hook, gpointer user)
{
  backend_hook = hook;
  backend_hook_user = user;
}

UnetNet *
unet_net_new (const UnetModel *model, const UnetNetOptions *opts, GError **error)
{
  UnetNetOptions defaults;
  UnetNet *net;

  g_return_val_if_fail (model != NULL, NULL);
  if (opts == NULL) {
    unet_net_options_init (&defaults);
    opts = &defaults;
  }
  net = g_new0 (UnetNet, 1);
  net->cfg = *unet_model_get_config (model);
  net->opts = *opts;
  net->host = unet_model_copy (model);
  if (!unet_config_validate (&net->cfg, error) || net->cfg.depth > 30)
    goto fail_cfg;

  switch (opts->device) {
    case UNET_DEVICE_CUDA:
#if HAVE_CUDA_BACKEND
      net->be = unet_backend_cuda_new (opts, error);
      net->device = UNET_DEVICE_CUDA;
      break;
#else
      g_set_error (error, UNET_ERROR, UNET_ERROR_NO_DEVICE,
          "device cuda requested but gst-unet was built without CUDA; use device cpu");
      goto fail;
#endif
    case UNET_DEVICE_AUTO:
#if HAVE_CUDA_BACKEND
      net->be = unet_backend_cuda_new (opts, NULL);
      net->device = UNET_DEVICE_CUDA;
      if (net->be != NULL)
        break;
#endif
      /* fall through */
    case UNET_DEVICE_CPU:
    default:
      net->be = unet_backend_cpu_new (opts, error);
      net->device = UNET_DEVICE_CPU;
      break;
  }
  if (net->be != NULL && backend_hook != NULL)
    backend_hook (net->be, backend_hook_user);
  if (net->be == NULL || net->host == NULL
      || !net_upload_layers (net, net->host, error))
    goto fail;
  return net;

fail_cfg:
  if (error != NULL && *error == NULL)
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "depth %d is too large", net->cfg.depth);
fail:
  unet_net_free (net);
  return NULL;
}

void
unet_net_free (UnetNet *net)
{
  if (net == NULL)
    return;
  g_list_free_full (net->plans, (GDestroyNotify) net_plan_free);
  unet_net_train_state_free (net->train);
  unet_model_free (net->host);
  unet_backend_free (net->be);
  g_clear_pointer (&net->folded, g_ptr_array_unref);
  g_free (net);
}

UnetDevice
unet_net_get_device (const UnetNet *net)
{
  return net->device;
}

const UnetConfig *
unet_net_get_config (const UnetNet *net)
{
  return &net->cfg;
}

/* ---------------------------------------------------------------- training hooks -- */

/* Parameters changed on the host (training): drop the plans (their primitives hold
 * weights reordered from the old layers) and fold/upload the layers again. */
static gboolean
net_reload_layers (UnetNet *net, GError **error)
{
  g_list_free_full (net->plans, (GDestroyNotify) net_plan_free);
  net->plans = NULL;
  if (!net_upload_layers (net, net->host, error))
    return FALSE;
  net->host_dirty = FALSE;
  return TRUE;
}

UnetModel *
unet_net_get_host_model (UnetNet *net)
{
  return net->host;
}

void
unet_net_mark_parameters_dirty (UnetNet *net)
{
  net->host_dirty = TRUE;
}

const UnetNetOptions *
unet_net_get_options (const UnetNet *net)
{
  return &net->opts;
}

gpointer *
unet_net_get_train_slot (UnetNet *net)
{
  return &net->train;
}

/* Checks shared by the forward entry points. */
static gboolean
net_check_shape (UnetNet *net, gint batch, gint height, gint width, GError **error)
{
  gint oh = unet_config_output_size (&net->cfg, height);
  gint ow = unet_config_output_size (&net->cfg, width);
  if (oh < 1 || ow < 1) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "input %dx%d is not a legal tile size for this network (depth %d, %s "
        "padding): try %dx%d", width, height, net->cfg.depth,
        net->cfg.padding == UNET_PADDING_VALID ? "valid" : "same",
        unet_config_legal_input_at_least (&net->cfg, width),
        unet_config_legal_input_at_least (&net->cfg, height));
    return FALSE;
  }
  if (batch < 1 || batch > 65536) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "batch size must be in 1..65536, not %d", batch);
    return FALSE;
  }
  return TRUE;
}

UnetBackend *
unet_net_get_backend (UnetNet *net)
{
  return net->be;
}

gboolean
unet_net_forward_tensors (UnetNet *net, gint batch, gint height, gint width,
    UnetNetTensorFunc fill, UnetNetTensorFunc use, gpointer user, GError **error)
{
  const UnetBackendIface *be = net->be->iface;
  NetPlan *p;

  if (!net_check_shape (net, batch, height, width, error))
    return FALSE;
  if (net->host_dirty && !net_reload_layers (net, error))
    return FALSE;
  if ((p = net_get_plan (net, batch, height, width, error)) == NULL
      || !fill (p->tensors[p->input], user, error))
    return FALSE;
  /* every op but the final softmax/sigmoid: the caller reads the logits */
  for (gint k = 0; k < p->n_ops - 1; k++)
    if (!be->op_forward (p->ops[k], error))
      return FALSE;
  return use (p->tensors[p->logits], user, error);
}

gboolean
unet_net_forward (UnetNet *net, const gfloat *input, gint batch, gint height,
    gint width, gfloat *output, GError **error)
{
  const UnetBackendIface *be;
  NetPlan *p;

  g_return_val_if_fail (net != NULL && input != NULL && output != NULL, FALSE);
  be = net->be->iface;
  if (!net_check_shape (net, batch, height, width, error))
    return FALSE;
  if (net->host_dirty && !net_reload_layers (net, error))
    return FALSE;
  if ((p = net_get_plan (net, batch, height, width, error)) == NULL)
    return FALSE;
  if (!be->upload (p->tensors[p->input], input, error))
    return FALSE;
  for (gint k = 0; k < p->n_ops; k++)
    if (!be->op_forward (p->ops[k], error))
      return FALSE;
  return be->download (p->tensors[p->output], output, error)
      && unet_backend_synchronize (net->be, error);
}
