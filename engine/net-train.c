/* gst-unet engine — training entry points of UnetNet (unet.h, "training (net)").
 *
 * A CPU net trains on the host with the CPU training executor (engine/cpu/cpu-train.c:
 * oneDNN convolutions, forward_training + backward) over the net's host model; a CUDA
 * net with the CUDA executor (engine/cuda/cuda-train.c), which keeps parameters and
 * gradients on the device and syncs them lazily: the host parameter slab is uploaded
 * at the first forward after unet_net_parameters_changed, the gradients are
 * downloaded into the host gradient slab by unet_net_get_gradients. Either way the
 * parameter and gradient slabs the trainer and the optimiser see are host memory. After an optimiser step the inference layers of the
 * net's backend are rebuilt lazily (net-private.h), so unet_net_forward always uses
 * the current parameters, with batch norm folded from the running statistics.
 */
#include "config.h"

#include "cpu/cpu-train.h"
#if HAVE_CUDA_BACKEND
#include "cuda/cuda-train.h"
#endif
#include "model-private.h"
#include "net-private.h"

#include <string.h>
#if HAVE_OPENMP
#include <omp.h>
#endif

typedef struct
{
  UnetCpuTrain *exec;           /* CPU nets */
#if HAVE_CUDA_BACKEND
  UnetCudaTrain *cuda;          /* CUDA nets (exec is NULL) */
#endif
  gfloat *grads;                /* slab layout, slab_numel floats */
  gsize n;
} NetTrain;

/* The CPU executor's OpenMP loops and oneDNN's primitives run with the calling
 * thread's team size, which only this sets for training: the net's `threads` option,
 * else $UNET_NUM_THREADS, else OpenMP's default (OMP_NUM_THREADS or all cores). */
static void
cpu_train_set_threads (const UnetNet *net)
{
#if HAVE_OPENMP
  gint threads = unet_net_get_options (net)->threads;
  if (threads <= 0) {
    const gchar *env = g_getenv ("UNET_NUM_THREADS");
    gint64 v = env != NULL ? g_ascii_strtoll (env, NULL, 10) : 0;
    threads = v > 0 && v <= 4096 ? (gint) v : 0;
  }
  if (threads > 0)
    omp_set_num_threads (threads);
#else
  (void) net;
#endif
}

void
unet_net_train_state_free (gpointer state)
{
  NetTrain *t = state;
  if (t == NULL)
    return;
  unet_cpu_train_free (t->exec);
#if HAVE_CUDA_BACKEND
  unet_cuda_train_free (t->cuda);
#endif
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
  const UnetConfig *cfg = unet_model_get_config (model);
  gboolean ok;
  t->n = layout->slab_numel;
#if HAVE_CUDA_BACKEND
  if (unet_net_get_device (net) == UNET_DEVICE_CUDA) {
    UnetNetOptions opts = *unet_net_get_options (net);
    t->cuda = unet_cuda_train_new (cfg, layout, &opts, error);
    ok = t->cuda != NULL;
  } else
#endif
  {
    t->exec = unet_cpu_train_new (cfg, layout, error);
    ok = t->exec != NULL;
  }
  if (!ok || (t->grads = unet_slab_alloc0 (t->n, error)) == NULL) {
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
#if HAVE_CUDA_BACKEND
  if (t->cuda != NULL) {
    if (!unet_cuda_train_forward (t->cuda, params, input, batch, height, width, seed,
            logits, error))
      return FALSE;
  } else
#endif
  {
    cpu_train_set_threads (net);
    if (!unet_cpu_train_forward (t->exec, params, input, batch, height, width, seed,
            logits, error))
      return FALSE;
  }
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
#if HAVE_CUDA_BACKEND
  if (t->cuda != NULL)
    return unet_cuda_train_backward (t->cuda, grad_logits, error);
#endif
  const gfloat *params = unet_model_peek_slab (unet_net_get_host_model (net));
  cpu_train_set_threads (net);
  return unet_cpu_train_backward (t->exec, params, grad_logits, t->grads, error);
}

void
unet_net_zero_gradients (UnetNet *net)
{
  NetTrain *t = net_train (net, NULL);
  if (t == NULL)
    return;
  memset (t->grads, 0, sizeof (gfloat) * t->n);
#if HAVE_CUDA_BACKEND
  GError *error = NULL;
  if (t->cuda != NULL && !unet_cuda_train_zero_gradients (t->cuda, &error)) {
    /* the next backward reports the device failure; this one only logs it */
    g_warning ("could not zero the GPU gradients: %s", error->message);
    g_error_free (error);
  }
#endif
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
#if HAVE_CUDA_BACKEND
  GError *error = NULL;
  if (t != NULL && t->cuda != NULL
      && !unet_cuda_train_download_gradients (t->cuda, t->grads, &error)) {
    g_warning ("could not read the GPU gradients: %s", error->message);
    g_error_free (error);
    t = NULL;
  }
#endif
  if (n != NULL)
    *n = t != NULL ? t->n : 0;
  return t != NULL ? t->grads : NULL;
}

gboolean
unet_net_parameters_changed (UnetNet *net, GError **error)
{
#if HAVE_CUDA_BACKEND
  NetTrain *t = *unet_net_get_train_slot (net);
  if (t != NULL && t->cuda != NULL)
    unet_cuda_train_parameters_changed (t->cuda);
#endif
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
