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
/* gst-unet engine — UnetNet (unet.h): a model on a backend, for inference and
 * training.
 *
 * Owns the backend, the inference layers (batch norm folded into the
 * convolutions), a small cache of inference executions of the graph (graph.c,
 * graph-exec.c), one per input shape (batch, height, width), and for training one
 * training execution plus the host copy of the parameters.
 *
 * Parameters. The host model (net->host) is what inference layers are folded
 * from and what export/checkpoints read. Training reads and writes the backend's
 * parameter slab (params_set / params_get). Two flags keep them in step lazily:
 * `backend_stale` (the host changed: upload before the next training forward) and
 * `host_stale` (the backend changed — an optimiser step on a host-memory slab, or
 * batch-norm running statistics — : download before folding or exporting). The
 * trainer's optimiser runs on the backend (unet_net_optimizer_step), so a step
 * copies no parameters; on the CPU, unet_net_get_parameters hands out the backend's
 * own slab (params_host) for callers that write it directly.
 *
 * Batches. unet_net_train_forward uploads a batch made on the host;
 * unet_net_train_forward_samples has the backend make it from training samples it
 * keeps (unet_net_train_sample_add) and the host's draws, leaving the loss's targets
 * there too, so that unet_net_train_loss takes no labels after it.
 */
#include "config.h"

#include "backend.h"
#include "graph-exec.h"
#include "graph.h"
#include "model-private.h"
#include "net-private.h"
#include "training.h"
#include "unet.h"

#include <math.h>
#include <string.h>

#define NET_MAX_PLANS 2         /* shapes kept: full tiles + a last partial batch */

struct _UnetNet
{
  UnetConfig cfg;
  UnetDevice device;
  UnetNetOptions opts;          /* as given (device: the one asked for) */
  UnetBackend *be;
  GList *plans;                 /* UnetGraphExec (inference), most recently used first */
  GPtrArray *folded;            /* BN-folded layer weights the backend uses */
  UnetModel *host;              /* the parameters, on the host */
  gboolean layers_stale;        /* fold and upload the inference layers again */
  /* training */
  UnetGraphExec *train;         /* the training graph for the last shape */
  gboolean backend_params;      /* the backend holds a parameter slab */
  gboolean backend_stale;       /* ... older than the host's */
  gboolean host_stale;          /* the host's older than the backend's */
  gfloat *grads;                /* host copy of the gradients (backends without
                                   params_host) */
  gfloat *loss_z, *loss_g;      /* host logits / dL/dlogits (backends without a
                                   loss slot) */
  gsize loss_n;
  gboolean targets_on_backend;  /* the last training batch was made on the backend
                                   (unet_net_train_forward_samples): its targets are
                                   there for a loss without labels */
};

/* ----------------------------------------------------------------- plans -- */

static UnetGraphExec *
net_get_plan (UnetNet *net, gint batch, gint height, gint width, GError **error)
{
  UnetGraphExec *x;
  UnetGraph *g;
  for (GList *l = net->plans; l != NULL; l = l->next) {
    const UnetGraph *pg = unet_graph_exec_get_graph (l->data);
    if (pg->batch == batch && pg->height == height && pg->width == width) {
      net->plans = g_list_remove_link (net->plans, l);
      net->plans = g_list_concat (l, net->plans);
      return l->data;
    }
  }
  /* drop the least recently used plan first, so two arenas never coexist
   * needlessly with a third */
  if (g_list_length (net->plans) >= NET_MAX_PLANS) {
    GList *last = g_list_last (net->plans);
    unet_graph_exec_free (last->data);
    net->plans = g_list_delete_link (net->plans, last);
  }
  g = unet_graph_new (&net->cfg, NULL, UNET_GRAPH_INFERENCE, net->be->channel_align,
      batch, height, width, error);
  if (g == NULL || (x = unet_graph_exec_new (net->be, g, error)) == NULL)
    return NULL;
  net->plans = g_list_prepend (net->plans, x);
  return x;
}

/* ---------------------------------------------------------------- layers -- */

/* A layer's weight and bias at the graph's (padded) channel counts: the model's
 * values in place, zero in the padded rows and columns (graph.h). An input of
 * cin_parts parts is padded part by part (dec.i.conv1: [crop | upconv]). Conv
 * weights are [cout, cin, k, k], transposed convolutions' [cin, cout, 2, 2]. */
static void
net_pad_layer (UnetLayerParams *lp, const UnetGraphLayer *l, GPtrArray *storage)
{
  const gsize kk = (gsize) l->k * l->k;
  const gint part = l->cin_model / l->cin_parts, ppart = l->cin / l->cin_parts;
  const gboolean up = l->kind == UNET_LAYER_UPCONV;
  gfloat *w = g_new0 (gfloat, (gsize) l->cin * l->cout * kk);
  gfloat *b = g_new0 (gfloat, l->cout);

  for (gint i = 0; i < l->cin_model; i++) {
    const gint pi = i / part * ppart + i % part;
    for (gint o = 0; o < l->cout_model; o++) {
      const gsize src = up ? ((gsize) i * l->cout_model + o) * kk
          : ((gsize) o * l->cin_model + i) * kk;
      const gsize dst = up ? ((gsize) pi * l->cout + o) * kk
          : ((gsize) o * l->cin + pi) * kk;
      memcpy (w + dst, lp->weight + src, kk * sizeof (gfloat));
    }
  }
  memcpy (b, lp->bias, (gsize) l->cout_model * sizeof (gfloat));
  g_ptr_array_add (storage, w);
  g_ptr_array_add (storage, b);
  lp->weight = w;
  lp->bias = b;
  lp->cin = l->cin;
  lp->cout = l->cout;
}

/* Collects the layers in graph order (unet_graph_layers), folding inference batch
 * norm:
 *   w' = w * g / sqrt(v + eps),  b' = (b - m) * g / sqrt(v + eps) + beta
 * (computed in double; exact up to float rounding), and padding them to the
 * backend's channel alignment (net_pad_layer). */
static gboolean
net_upload_layers (UnetNet *net, const UnetModel *model, GError **error)
{
  const gint align = net->be->channel_align;
  const gint n_layers = unet_graph_layers (&net->cfg, align, NULL);
  g_autofree UnetGraphLayer *gl = g_new0 (UnetGraphLayer, n_layers);
  g_autofree UnetLayerParams *layers = g_new0 (UnetLayerParams, n_layers);
  /* folded and padded weights: the backend references them (backend.h) */
  GPtrArray *storage = g_ptr_array_new_with_free_func (g_free);

  unet_graph_layers (&net->cfg, align, gl);
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
    lp->cin = l->cin_model;
    lp->cout = l->cout_model;
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
    if (l->cin != l->cin_model || l->cout != l->cout_model)
      net_pad_layer (lp, l, storage);
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
  if (!unet_config_validate (&net->cfg, error) || net->cfg.depth > 30)
    goto fail_cfg;
  if ((net->host = unet_model_copy (model, error)) == NULL)
    goto fail;

  net->be = unet_backend_new (opts, &net->device, error);
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
  g_list_free_full (net->plans, (GDestroyNotify) unet_graph_exec_free);
  unet_graph_exec_free (net->train);
  unet_model_free (net->host);
  unet_backend_free (net->be);
  g_clear_pointer (&net->folded, g_ptr_array_unref);
  g_free (net->grads);
  g_free (net->loss_z);
  g_free (net->loss_g);
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

/* ------------------------------------------------------------ parameters -- */

/* The host parameters, brought up to date with the backend's. */
static gboolean
net_sync_host (UnetNet *net, GError **error)
{
  if (!net->host_stale)
    return TRUE;
  if (!net->be->iface->params_get (net->be, unet_model_get_slab (net->host), error))
    return FALSE;
  net->host_stale = FALSE;
  return TRUE;
}

/* The inference layers, folded again from the current parameters: drop the plans
 * (their primitives hold weights reordered from the old layers) and upload. */
static gboolean
net_refresh_layers (UnetNet *net, GError **error)
{
  if (!net->layers_stale && !net->host_stale)
    return TRUE;
  if (!net_sync_host (net, error))
    return FALSE;
  g_list_free_full (net->plans, (GDestroyNotify) unet_graph_exec_free);
  net->plans = NULL;
  if (!net_upload_layers (net, net->host, error))
    return FALSE;
  net->layers_stale = FALSE;
  return TRUE;
}

/* The backend's parameter slab, created or brought up to date with the host's. */
static gboolean
net_sync_backend (UnetNet *net, GError **error)
{
  const UnetLayout *layout = unet_model_get_layout (net->host);
  if (net->backend_params && !net->backend_stale)
    return TRUE;
  if (!unet_backend_can_train (net->be)) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_NO_DEVICE,
        "the %s backend cannot train", net->be->iface->name);
    return FALSE;
  }
  if (!net->be->iface->params_set (net->be, unet_model_peek_slab (net->host),
          layout->slab_numel, error))
    return FALSE;
  if (!net->backend_params && !net->be->iface->grads_zero (net->be, error))
    return FALSE;
  net->backend_params = TRUE;
  net->backend_stale = FALSE;
  return TRUE;
}

/* ------------------------------------------------------------------- API -- */

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

/* The inference plan of a shape, with the current parameters. */
static UnetGraphExec *
net_inference (UnetNet *net, gint batch, gint height, gint width, GError **error)
{
  if (!net_check_shape (net, batch, height, width, error)
      || !net_refresh_layers (net, error))
    return NULL;
  return net_get_plan (net, batch, height, width, error);
}

gboolean
unet_net_forward_tensors (UnetNet *net, gint batch, gint height, gint width,
    UnetNetTensorFunc fill, UnetNetTensorFunc use, gpointer user, GError **error)
{
  UnetGraphExec *x;
  const UnetGraph *g;

  if ((x = net_inference (net, batch, height, width, error)) == NULL)
    return FALSE;
  g = unet_graph_exec_get_graph (x);
  /* every op but the final softmax/sigmoid: the caller reads the logits */
  return fill (unet_graph_exec_tensor (x, g->input), user, error)
      && unet_graph_exec_forward (x, unet_graph_n_nodes (g) - 1, error)
      && use (unet_graph_exec_tensor (x, g->logits), user, error);
}

gboolean
unet_net_forward (UnetNet *net, const gfloat *input, gint batch, gint height,
    gint width, gfloat *output, GError **error)
{
  const UnetBackendIface *be;
  UnetGraphExec *x;
  const UnetGraph *g;

  g_return_val_if_fail (net != NULL && input != NULL && output != NULL, FALSE);
  be = net->be->iface;
  if ((x = net_inference (net, batch, height, width, error)) == NULL)
    return FALSE;
  g = unet_graph_exec_get_graph (x);
  return be->upload (unet_graph_exec_tensor (x, g->input), input, error)
      && unet_graph_exec_forward (x, -1, error)
      && be->download (unet_graph_exec_tensor (x, g->output), output, error)
      && unet_backend_synchronize (net->be, error);
}

/* -------------------------------------------------------------- training -- */

/* The training execution for a batch shape, built when the shape changes, with the
 * backend's parameters up to date. */
static const UnetGraph *
net_train_graph (UnetNet *net, gint batch, gint height, gint width, GError **error)
{
  const UnetGraph *g = net->train ? unet_graph_exec_get_graph (net->train) : NULL;

  if (unet_config_output_size (&net->cfg, height) < 1
      || unet_config_output_size (&net->cfg, width) < 1) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "training tile %dx%d is not a legal size for this network: try %dx%d", width,
        height, unet_config_legal_input_at_least (&net->cfg, width),
        unet_config_legal_input_at_least (&net->cfg, height));
    return NULL;
  }
  if (!net_check_shape (net, batch, height, width, error)
      || !net_sync_backend (net, error))
    return NULL;
  if (g == NULL || g->batch != batch || g->height != height || g->width != width) {
    UnetGraph *ng;
    g_clear_pointer (&net->train, unet_graph_exec_free);
    ng = unet_graph_new (&net->cfg, unet_model_get_layout (net->host),
        UNET_GRAPH_TRAINING, 1, batch, height, width, error);
    if (ng == NULL || (net->train = unet_graph_exec_new (net->be, ng, error)) == NULL)
      return NULL;
    g = unet_graph_exec_get_graph (net->train);
  }
  return g;
}

/* The training forward pass over the input tensor as it is now. */
static gboolean
net_train_run (UnetNet *net, guint64 seed, GError **error)
{
  if (!unet_graph_exec_forward_training (net->train, seed, error))
    return FALSE;
  /* batch norm's running statistics moved on the backend */
  if (net->cfg.batch_norm)
    net->host_stale = net->layers_stale = TRUE;
  return TRUE;
}

gboolean
unet_net_train_forward (UnetNet *net, const gfloat *input, gint batch, gint height,
    gint width, guint64 seed, gfloat *logits, GError **error)
{
  const UnetBackendIface *be;
  const UnetGraph *g;

  g_return_val_if_fail (net != NULL && input != NULL, FALSE);
  be = net->be->iface;
  net->targets_on_backend = FALSE;
  if ((g = net_train_graph (net, batch, height, width, error)) == NULL
      || !be->upload (unet_graph_exec_tensor (net->train, g->input), input, error)
      || !net_train_run (net, seed, error))
    return FALSE;
  if (logits != NULL
      && !be->download (unet_graph_exec_tensor (net->train, g->logits), logits, error))
    return FALSE;
  return unet_backend_synchronize (net->be, error);
}

gboolean
unet_net_train_samples_supported (UnetNet *net)
{
  g_return_val_if_fail (net != NULL, FALSE);
  return unet_backend_can_train (net->be) && unet_backend_can_hold_samples (net->be);
}

UnetNetSample *
unet_net_train_sample_add (UnetNet *net, const gfloat *image, const gint32 *class_map,
    const gfloat *weights, gint width, gint height, GError **error)
{
  g_return_val_if_fail (net != NULL && image != NULL && class_map != NULL, NULL);
  if (!unet_net_train_samples_supported (net)) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_NO_DEVICE,
        "the %s backend cannot keep training samples", net->be->iface->name);
    return NULL;
  }
  return (UnetNetSample *) net->be->iface->sample_new (net->be, image,
      net->cfg.in_channels, class_map, weights, width, height, net->cfg.classes, error);
}

void
unet_net_train_sample_remove (UnetNet *net, UnetNetSample *sample)
{
  g_return_if_fail (net != NULL);
  if (sample != NULL)
    net->be->iface->sample_free ((UnetBackendSample *) sample);
}

gboolean
unet_net_train_forward_samples (UnetNet *net, UnetNetSample *const *samples,
    const UnetAugmentDraw *draws, gint batch, guint64 seed, GError **error)
{
  const UnetGraph *g;

  g_return_val_if_fail (net != NULL && samples != NULL && draws != NULL, FALSE);
  if (!unet_net_train_samples_supported (net)) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_NO_DEVICE,
        "the %s backend cannot keep training samples", net->be->iface->name);
    return FALSE;
  }
  if (batch < 1 || unet_config_output_size (&net->cfg, draws[0].in_h) != draws[0].out_h
      || unet_config_output_size (&net->cfg, draws[0].in_w) != draws[0].out_w) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "a batch of %d samples augmented to %dx%d tiles with %dx%d outputs does not fit "
        "this network", batch, draws[0].in_w, draws[0].in_h, draws[0].out_w,
        draws[0].out_h);
    return FALSE;
  }
  net->targets_on_backend = FALSE;
  if ((g = net_train_graph (net, batch, draws[0].in_h, draws[0].in_w, error)) == NULL
      || !net->be->iface->batch_augment (net->be, (UnetBackendSample *const *) samples,
          draws, batch, unet_graph_exec_tensor (net->train, g->input), error))
    return FALSE;
  net->targets_on_backend = TRUE;
  return net_train_run (net, seed, error);
}

gboolean
unet_net_train_backward (UnetNet *net, const gfloat *grad_logits, GError **error)
{
  const UnetGraph *g;

  g_return_val_if_fail (net != NULL, FALSE);
  if (net->train == NULL) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_FAILED,
        "backward pass without a training forward pass before it");
    return FALSE;
  }
  g = unet_graph_exec_get_graph (net->train);
  if (grad_logits != NULL
      && !net->be->iface->upload (unet_graph_exec_tensor (net->train, g->diff_logits),
          grad_logits, error))
    return FALSE;
  return unet_graph_exec_backward (net->train, error);
}

/* The loss on the host, for backends without a loss slot: logits down, dL/dlogits
 * up. */
static gboolean
net_loss_host (UnetNet *net, UnetBackendTensor *logits, const gint32 *labels,
    const gfloat *weights, gdouble dice_weight, UnetBackendTensor *diff_logits,
    gdouble *loss, UnetConfusion *confusion, GError **error)
{
  const UnetBackendIface *be = net->be->iface;
  const UnetGraph *g = unet_graph_exec_get_graph (net->train);
  const UnetDims *d = &unet_graph_tensor (g, g->logits)->dims;
  const gsize n = (gsize) d->n * d->c * d->h * d->w;

  return unet_loss_buffers (&net->loss_z, &net->loss_g, &net->loss_n, n, error)
      && be->download (logits, net->loss_z, error)
      && unet_backend_synchronize (net->be, error)
      && unet_loss_batch (net->loss_z, labels, weights, d->n, d->c, d->h, d->w,
          dice_weight, loss, net->loss_g, confusion, error)
      && be->upload (diff_logits, net->loss_g, error);
}

gboolean
unet_net_train_loss (UnetNet *net, const gint32 *labels, const gfloat *weights,
    gdouble dice_weight, gdouble *loss, UnetConfusion *confusion, GError **error)
{
  const UnetBackendIface *be;
  const UnetGraph *g;
  UnetBackendTensor *z, *dz;

  g_return_val_if_fail (net != NULL && (labels != NULL || weights == NULL) && loss != NULL
      && confusion != NULL, FALSE);
  if (net->train == NULL) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_FAILED,
        "loss without a training forward pass before it");
    return FALSE;
  }
  be = net->be->iface;
  g = unet_graph_exec_get_graph (net->train);
  z = unet_graph_exec_tensor (net->train, g->logits);
  dz = unet_graph_exec_tensor (net->train, g->diff_logits);
  if (labels == NULL && (be->loss == NULL || !net->targets_on_backend)) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "a loss without labels needs a batch made on the backend "
        "(unet_net_train_forward_samples) before it");
    return FALSE;
  }
  if (be->loss == NULL)
    return net_loss_host (net, z, labels, weights, dice_weight, dz, loss, confusion,
        error);
  return be->loss (net->be, z, labels, weights, dice_weight, dz, loss, confusion, error);
}

gboolean
unet_net_optimizer_step (UnetNet *net, UnetOptimizer *opt, gboolean *finite,
    GError **error)
{
  const UnetBackendIface *be;
  UnetOptimUpdate u;

  g_return_val_if_fail (net != NULL && opt != NULL && finite != NULL, FALSE);
  be = net->be->iface;
  unet_optimizer_next_update (opt, &u);
  if (u.n != unet_model_get_layout (net->host)->slab_numel) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "optimiser over %" G_GSIZE_FORMAT " floats for a network of %" G_GSIZE_FORMAT,
        u.n, unet_model_get_layout (net->host)->slab_numel);
    return FALSE;
  }
  if (!net_sync_backend (net, error))
    return FALSE;
  if (be->optimizer_update != NULL) {
    if (!be->optimizer_update (net->be, &u, finite, error))
      return FALSE;
    /* the backend's parameters are the newest */
    net->host_stale = net->layers_stale = TRUE;
  } else {
    /* on the host, with the optimiser's own state */
    gfloat *buffers[2] = { unet_optimizer_get_buffer (opt, 0),
      unet_optimizer_get_buffer (opt, 1) };
    const gfloat *grads = unet_net_get_gradients (net, NULL, error);
    gfloat *params = grads ? unet_net_get_parameters (net, NULL, error) : NULL;
    if (params == NULL
        || !unet_optim_update_host (&u, params, grads, buffers, error)
        || !unet_net_parameters_changed (net, error))
      return FALSE;
    *finite = unet_slab_all_finite (params, u.n);
  }
  unet_optimizer_advance (opt);
  return TRUE;
}

gboolean
unet_net_optimizer_state (UnetNet *net, UnetOptimizer *opt, gboolean to_net,
    GError **error)
{
  const UnetBackendIface *be;

  g_return_val_if_fail (net != NULL && opt != NULL, FALSE);
  be = net->be->iface;
  /* without the slot the state never leaves the optimiser */
  if (be->optimizer_state == NULL)
    return TRUE;
  if (!net_sync_backend (net, error))
    return FALSE;
  for (guint i = 0; i < unet_optimizer_get_n_buffers (opt); i++)
    if (!be->optimizer_state (net->be, i, unet_optimizer_get_buffer (opt, i), to_net,
            error))
      return FALSE;
  return TRUE;
}

gboolean
unet_net_zero_gradients (UnetNet *net, GError **error)
{
  g_return_val_if_fail (net != NULL, FALSE);
  return net_sync_backend (net, error) && net->be->iface->grads_zero (net->be, error);
}

gfloat *
unet_net_get_parameters (UnetNet *net, gsize *n, GError **error)
{
  const UnetLayout *layout = unet_model_get_layout (net->host);
  gfloat *slab;

  g_return_val_if_fail (net != NULL, NULL);
  if (n != NULL)
    *n = layout->slab_numel;
  /* a host-memory backend slab is the parameters themselves: the caller's writes
   * go straight to the backend */
  if (unet_backend_can_train (net->be) && net->be->iface->params_host != NULL) {
    if (!net_sync_backend (net, error))
      return NULL;
    if ((slab = net->be->iface->params_host (net->be, FALSE)) != NULL) {
      net->host_stale = TRUE;
      return slab;
    }
  }
  if (!net_sync_host (net, error))
    return NULL;
  return unet_model_get_slab (net->host);
}

const gfloat *
unet_net_get_gradients (UnetNet *net, gsize *n, GError **error)
{
  const UnetLayout *layout = unet_model_get_layout (net->host);
  const UnetBackendIface *be;
  gfloat *slab;

  g_return_val_if_fail (net != NULL, NULL);
  be = net->be->iface;
  if (n != NULL)
    *n = layout->slab_numel;
  if (!net_sync_backend (net, error))
    return NULL;
  if (be->params_host != NULL && (slab = be->params_host (net->be, TRUE)) != NULL)
    return slab;
  if (net->grads == NULL
      && (net->grads = unet_slab_alloc0 (layout->slab_numel, error)) == NULL)
    return NULL;
  if (!be->grads_get (net->be, net->grads, error))
    return NULL;
  return net->grads;
}

gboolean
unet_net_parameters_changed (UnetNet *net, GError **error)
{
  g_return_val_if_fail (net != NULL, FALSE);
  net->layers_stale = TRUE;
  /* where the caller wrote: the backend's own slab (get_parameters handed it out
   * and set host_stale), or the host's, which the backend must then receive */
  if (!net->host_stale && net->backend_params)
    net->backend_stale = TRUE;
  (void) error;
  return TRUE;
}

gboolean
unet_net_export_model (UnetNet *net, UnetModel *model, GError **error)
{
  const UnetConfig *a = &net->cfg, *b = unet_model_get_config (model);
  if (a->in_channels != b->in_channels || a->classes != b->classes ||
      a->depth != b->depth || a->base_filters != b->base_filters ||
      a->padding != b->padding || a->batch_norm != b->batch_norm) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "cannot export the network's parameters into a model of another architecture");
    return FALSE;
  }
  if (!net_sync_host (net, error))
    return FALSE;
  memcpy (unet_model_get_slab (model), unet_model_peek_slab (net->host),
      sizeof (gfloat) * unet_model_get_layout (net->host)->slab_numel);
  return TRUE;
}
