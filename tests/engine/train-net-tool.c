/* Driver for tests/engine/train_net_torch_check.py: one training forward + backward
 * of a model file on the CPU training path.
 *
 * Usage: train-net-tool MODEL INPUT GRAD_LOGITS OUT BATCH HEIGHT WIDTH SEED
 * INPUT: (B,C,H,W) float32 raw; GRAD_LOGITS: (B,K,oh,ow) float32 raw.
 * OUT: safetensors with "logits", "grad.<tensor>" for every trainable tensor and
 * "param.<tensor>" for every tensor after the forward (running statistics).
 */
#include "model-private.h"

#include <stdio.h>
#include <stdlib.h>

int
main (int argc, char **argv)
{
  g_autoptr (GError) error = NULL;
  if (argc != 9) {
    fprintf (stderr, "usage: %s MODEL INPUT GRAD OUT B H W SEED\n", argv[0]);
    return 2;
  }
  gint B = atoi (argv[5]), H = atoi (argv[6]), W = atoi (argv[7]);
  guint64 seed = g_ascii_strtoull (argv[8], NULL, 10);
  g_autoptr (UnetModel) model = unet_model_load (argv[1], &error);
  if (!model)
    g_error ("%s", error->message);
  const UnetConfig *cfg = unet_model_get_config (model);
  gint oh = unet_config_output_size (cfg, H), ow = unet_config_output_size (cfg, W);
  gsize n_in = (gsize) B * cfg->in_channels * H * W;
  gsize n_out = (gsize) B * cfg->classes * oh * ow;
  g_autofree gchar *in = NULL, *gl = NULL;
  gsize len_in, len_gl;
  if (!g_file_get_contents (argv[2], &in, &len_in, &error) ||
      !g_file_get_contents (argv[3], &gl, &len_gl, &error))
    g_error ("%s", error->message);
  if (len_in != n_in * 4 || len_gl != n_out * 4)
    g_error ("input sizes %zu/%zu do not match %zu/%zu", len_in, len_gl, n_in * 4,
        n_out * 4);

  UnetNetOptions opts;
  unet_net_options_init (&opts);
  opts.device = UNET_DEVICE_CPU;
  g_autoptr (UnetNet) net = unet_net_new (model, &opts, &error);
  if (!net)
    g_error ("%s", error->message);
  g_autofree gfloat *logits = g_new (gfloat, n_out);
  if (!unet_net_train_forward (net, (gfloat *) in, B, H, W, seed, logits, &error))
    g_error ("%s", error->message);
  if (!unet_net_zero_gradients (net, &error))
    g_error ("%s", error->message);
  if (!unet_net_train_backward (net, (gfloat *) gl, &error))
    g_error ("%s", error->message);
  gsize n_grad, n_par;
  const gfloat *grads = unet_net_get_gradients (net, &n_grad, &error);
  if (grads == NULL)
    g_error ("%s", error->message);
  const gfloat *params = unet_net_get_parameters (net, &n_par, &error);
  if (params == NULL)
    g_error ("%s", error->message);
  g_assert (n_grad == n_par);

  const UnetLayout *layout = unet_model_get_layout (model);
  GArray *t = g_array_new (FALSE, TRUE, sizeof (UnetStTensorData));
  GPtrArray *names = g_ptr_array_new_with_free_func (g_free);
  UnetStTensorData lt = { "logits", 4, {B, cfg->classes, oh, ow}, logits };
  g_array_append_val (t, lt);
  for (guint i = 0; i < layout->n_tensors; i++) {
    const UnetTensorInfo *ti = &layout->tensors[i];
    for (gint g = 0; g < 2; g++) {
      if (g == 0 && !ti->trainable)
        continue;
      gchar *name = g_strdup_printf ("%s.%s", g == 0 ? "grad" : "param", ti->name);
      g_ptr_array_add (names, name);
      UnetStTensorData d = { name, ti->n_dims, {ti->shape[0], ti->shape[1],
              ti->shape[2], ti->shape[3]}, (g == 0 ? grads : params) + ti->offset
      };
      g_array_append_val (t, d);
    }
  }
  if (!unet_safetensors_write (argv[4], NULL, (UnetStTensorData *) t->data, t->len,
          &error))
    g_error ("%s", error->message);
  g_array_unref (t);
  g_ptr_array_unref (names);
  return 0;
}
