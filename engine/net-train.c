/* gst-unet engine — training entry points of UnetNet (unet.h, "training (net)").
 *
 * Training runs on the host with the CPU training executor (engine/cpu/cpu-train.c:
 * oneDNN convolutions, forward_training + backward) over the net's host model, for
 * every device: the parameter and gradient slabs the trainer and the optimiser see
 * are host memory in any case. After an optimiser step the inference layers of the
 * net's backend are rebuilt lazily (net-private.h), so unet_net_forward always uses
 * the current parameters, with batch norm folded from the running statistics.
 */
#include "config.h"

#include "cpu/cpu-train.h"
#include "model-private.h"
#include "net-private.h"

#include <string.h>

typedef struct
{
  UnetCpuTrain *exec;
  gfloat *grads;                /* slab layout, slab_numel floats */
  gsize n;
} NetTrain;

void
unet_net_train_state_free (gpointer state)
{
  NetTrain *t = state;
  if (t == NULL)
    return;
  unet_cpu_train_free (t->exec);
  unet_slab_free (t->grads);
  g_free (t);
}

static NetTrain *
net_train (UnetNet *net, GError **error)
{
  gpointer *slot = unet_net_get_train_slot (net);
  if (*slot != NULL)
    return *slot;
  UnetModel *model = unet_net_get_host_model (net);
  const UnetLayout *layout = unet_model_get_layout (model);
  NetTrain *t = g_new0 (NetTrain, 1);
  t->n = layout->slab_numel;
  t->exec = unet_cpu_train_new (unet_model_get_config (model), layout, error);
  if (t->exec == NULL || (t->grads = unet_slab_alloc0 (t->n, error)) == NULL) {
    unet_net_train_state_free (t);
    return NULL;
  }
  *slot = t;
  return t;
}

gboolean
unet_net_train_forward (UnetNet *net, const gfloat *input, gint batch, gint height,
    gint width, guint64 seed, gfloat *logits, GError **error)
{
  g_return_val_if_fail (net != NULL && input != NULL && logits != NULL, FALSE);
  NetTrain *t = net_train (net, error);
  if (t == NULL)
    return FALSE;
  const UnetConfig *cfg = unet_net_get_config (net);
  if (unet_config_output_size (cfg, height) < 1 || unet_config_output_size (cfg, width) < 1) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "training tile %dx%d is not a legal size for this network: try %dx%d", width,
        height, unet_config_legal_input_at_least (cfg, width),
        unet_config_legal_input_at_least (cfg, height));
    return FALSE;
  }
  gfloat *params = unet_model_get_slab (unet_net_get_host_model (net));
  if (!unet_cpu_train_forward (t->exec, params, input, batch, height, width, seed,
          logits, error))
    return FALSE;
  /* Batch norm running statistics changed. */
  if (cfg->batch_norm)
    unet_net_mark_parameters_dirty (net);
  return TRUE;
}

gboolean
unet_net_train_backward (UnetNet *net, const gfloat *grad_logits, GError **error)
{
  g_return_val_if_fail (net != NULL && grad_logits != NULL, FALSE);
  NetTrain *t = net_train (net, error);
  if (t == NULL)
    return FALSE;
  const gfloat *params = unet_model_peek_slab (unet_net_get_host_model (net));
  return unet_cpu_train_backward (t->exec, params, grad_logits, t->grads, error);
}

void
unet_net_zero_gradients (UnetNet *net)
{
  NetTrain *t = net_train (net, NULL);
  if (t != NULL)
    memset (t->grads, 0, sizeof (gfloat) * t->n);
}

gfloat *
unet_net_get_parameters (UnetNet *net, gsize *n)
{
  UnetModel *model = unet_net_get_host_model (net);
  if (n != NULL)
    *n = unet_model_get_layout (model)->slab_numel;
  return unet_model_get_slab (model);
}

const gfloat *
unet_net_get_gradients (UnetNet *net, gsize *n)
{
  NetTrain *t = net_train (net, NULL);
  if (n != NULL)
    *n = t != NULL ? t->n : 0;
  return t != NULL ? t->grads : NULL;
}

gboolean
unet_net_parameters_changed (UnetNet *net, GError **error)
{
  unet_net_mark_parameters_dirty (net);
  return TRUE;
}

gboolean
unet_net_export_model (UnetNet *net, UnetModel *model, GError **error)
{
  const UnetModel *host = unet_net_get_host_model (net);
  const UnetConfig *a = unet_model_get_config (host), *b = unet_model_get_config (model);
  if (a->in_channels != b->in_channels || a->classes != b->classes ||
      a->depth != b->depth || a->base_filters != b->base_filters ||
      a->padding != b->padding || a->batch_norm != b->batch_norm) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "cannot export the network's parameters into a model of another architecture");
    return FALSE;
  }
  memcpy (unet_model_get_slab (model), unet_model_peek_slab (host),
      sizeof (gfloat) * unet_model_get_layout (host)->slab_numel);
  return TRUE;
}
