/* unet-forward — runs the engine's forward pass on raw float32 data.
 *
 *   unet-forward -m model.safetensors -i input.raw -o probs.raw -n B -H H -W W
 *                [--threads N] [--batch-size b] [--precision fp32|bf16]
 *                [--device cpu|cuda|auto] [--repeat N]
 *
 * input.raw: (B, in_channels, H, W) float32, little-endian, dense NCHW.
 * probs.raw: (B, classes, out_h, out_w) float32 probabilities (softmax over
 * classes, or the sigmoid foreground probability for one class).
 * The B images are run in chunks of --batch-size (default: all at once).
 * --repeat N runs the whole input N more times after the first (warm-up) run and
 * prints "ms/run median min" on stdout; --serve times one run per "run" line on
 * stdin (tests/bench/bench_forward.py alternates engines round by round with it).
 * The PyTorch conformance test (tests/engine/conformance_forward.py) drives it.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "unet.h"

static gint
cmp_double (gconstpointer a, gconstpointer b)
{
  gdouble x = *(const gdouble *) a, y = *(const gdouble *) b;
  return x < y ? -1 : x > y;
}

static gboolean
run_all (UnetNet *net, const gfloat *in, gfloat *out, gint n, gint chunk, gint h,
    gint w, gsize in_per, gsize out_per, GError **error)
{
  for (gint b = 0; b < n; b += chunk) {
    gint m = MIN (chunk, n - b);
    if (!unet_net_forward (net, in + (gsize) b * in_per, m, h, w,
            out + (gsize) b * out_per, error))
      return FALSE;
  }
  return TRUE;
}

int
main (int argc, char **argv)
{
  gchar *model_path = NULL, *in_path = NULL, *out_path = NULL;
  gchar *precision = NULL, *device = NULL;
  gint n = 1, h = 0, w = 0, threads = 0, chunk = 0, repeat = 0;
  gboolean serve = FALSE;
  GOptionEntry entries[] = {
    {"model", 'm', 0, G_OPTION_ARG_FILENAME, &model_path, "model (.safetensors)", "FILE"},
    {"input", 'i', 0, G_OPTION_ARG_FILENAME, &in_path, "raw float32 (B,C,H,W)", "FILE"},
    {"output", 'o', 0, G_OPTION_ARG_FILENAME, &out_path, "raw float32 probabilities",
        "FILE"},
    {"images", 'n', 0, G_OPTION_ARG_INT, &n, "number of images B (default 1)", "B"},
    {"height", 'H', 0, G_OPTION_ARG_INT, &h, "input height", "H"},
    {"width", 'W', 0, G_OPTION_ARG_INT, &w, "input width", "W"},
    {"threads", 't', 0, G_OPTION_ARG_INT, &threads, "CPU threads (0 = default)", "N"},
    {"batch-size", 'b', 0, G_OPTION_ARG_INT, &chunk, "images per forward (0 = all)",
        "N"},
    {"precision", 'p', 0, G_OPTION_ARG_STRING, &precision, "fp32 (default) or bf16",
        "P"},
    {"device", 'd', 0, G_OPTION_ARG_STRING, &device, "cpu (default), cuda or auto",
        "D"},
    {"repeat", 'r', 0, G_OPTION_ARG_INT, &repeat, "timed runs after a warm-up", "N"},
    {"serve", 0, 0, G_OPTION_ARG_NONE, &serve,
        "after the warm-up print \"ready\", then one timed run per \"run\" line on "
        "stdin (prints its ms); any other line or EOF ends", NULL},
    {NULL}
  };
  g_autoptr (GOptionContext) octx = g_option_context_new ("- U-Net forward on raw data");
  g_autoptr (GError) error = NULL;
  g_autoptr (UnetModel) model = NULL;
  g_autoptr (UnetNet) net = NULL;
  g_autofree gchar *in_data = NULL;
  g_autofree gfloat *out = NULL;
  UnetNetOptions opts;
  const UnetConfig *cfg;
  gsize in_len = 0, in_per, out_per;
  gint oh, ow;
  int status = 1;

  g_option_context_add_main_entries (octx, entries, NULL);
  if (!g_option_context_parse (octx, &argc, &argv, &error))
    goto fail;
  if (model_path == NULL || in_path == NULL || h <= 0 || w <= 0 || n <= 0) {
    g_printerr ("unet-forward: -m, -i, -H and -W are required (see --help)\n");
    return 2;
  }
  unet_net_options_init (&opts);
  opts.device = UNET_DEVICE_CPU;
  opts.threads = threads;
  if (precision != NULL && g_strcmp0 (precision, "bf16") == 0)
    opts.precision = UNET_PRECISION_BF16;
  else if (precision != NULL && g_strcmp0 (precision, "fp32") != 0) {
    g_printerr ("unet-forward: --precision must be fp32 or bf16\n");
    return 2;
  }
  if (device != NULL && g_strcmp0 (device, "cuda") == 0)
    opts.device = UNET_DEVICE_CUDA;
  else if (device != NULL && g_strcmp0 (device, "auto") == 0)
    opts.device = UNET_DEVICE_AUTO;
  else if (device != NULL && g_strcmp0 (device, "cpu") != 0) {
    g_printerr ("unet-forward: --device must be cpu, cuda or auto\n");
    return 2;
  }

  if ((model = unet_model_load (model_path, &error)) == NULL)
    goto fail;
  cfg = unet_model_get_config (model);
  oh = unet_config_output_size (cfg, h);
  ow = unet_config_output_size (cfg, w);
  if (oh < 1 || ow < 1) {
    g_printerr ("unet-forward: %dx%d is not a legal input size for this model "
        "(nearest legal: %dx%d)\n", w, h, unet_config_legal_input_at_least (cfg, w),
        unet_config_legal_input_at_least (cfg, h));
    return 1;
  }
  in_per = (gsize) cfg->in_channels * h * w;
  out_per = (gsize) cfg->classes * oh * ow;
  if (!g_file_get_contents (in_path, &in_data, &in_len, &error))
    goto fail;
  if (in_len != in_per * n * sizeof (gfloat)) {
    g_printerr ("unet-forward: %s has %" G_GSIZE_FORMAT " bytes, expected %"
        G_GSIZE_FORMAT " for (%d,%d,%d,%d) float32\n", in_path, in_len,
        in_per * n * sizeof (gfloat), n, cfg->in_channels, h, w);
    return 1;
  }
  if ((net = unet_net_new (model, &opts, &error)) == NULL)
    goto fail;
  if (unet_net_get_device (net) == UNET_DEVICE_CPU) {
    g_autofree gchar *slower = unet_cpu_precision_slower (opts.precision);
    if (slower != NULL)
      g_printerr ("unet-forward: warning: %s\n", slower);
  }
  /* the net holds its own copy of the parameters */
  g_clear_pointer (&model, unet_model_free);
  cfg = unet_net_get_config (net);
  out = g_try_new (gfloat, out_per * n);
  if (out == NULL) {
    g_printerr ("unet-forward: cannot allocate the output\n");
    return 1;
  }
  if (chunk <= 0 || chunk > n)
    chunk = n;

  if (!run_all (net, (const gfloat *) in_data, out, n, chunk, h, w, in_per, out_per,
          &error))
    goto fail;
  if (repeat > 0) {
    g_autofree gdouble *ms = g_new (gdouble, repeat);
    for (gint r = 0; r < repeat; r++) {
      gint64 t0 = g_get_monotonic_time ();
      if (!run_all (net, (const gfloat *) in_data, out, n, chunk, h, w, in_per,
              out_per, &error))
        goto fail;
      ms[r] = (g_get_monotonic_time () - t0) / 1000.0;
    }
    qsort (ms, repeat, sizeof (gdouble), cmp_double);
    g_print ("ms/run median %.2f min %.2f\n", ms[repeat / 2], ms[0]);
  }
  if (serve) {
    gchar line[64];
    g_print ("ready\n");
    fflush (stdout);
    while (fgets (line, sizeof line, stdin) != NULL && strcmp (line, "run\n") == 0) {
      gint64 t0 = g_get_monotonic_time ();
      if (!run_all (net, (const gfloat *) in_data, out, n, chunk, h, w, in_per,
              out_per, &error))
        goto fail;
      g_print ("%.3f\n", (g_get_monotonic_time () - t0) / 1000.0);
      fflush (stdout);
    }
  }
  if (out_path != NULL && !g_file_set_contents (out_path, (const gchar *) out,
          out_per * n * sizeof (gfloat), &error))
    goto fail;
  status = 0;
fail:
  if (error != NULL)
    g_printerr ("unet-forward: %s\n", error->message);
  g_free (model_path);
  g_free (in_path);
  g_free (out_path);
  g_free (precision);
  g_free (device);
  return status;
}
