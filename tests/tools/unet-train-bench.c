/* unet-train-bench: times training steps of the engine's UnetTrainer on
 * synthetic blob frames, for tests/bench/bench_train.py.
 *
 *   unet-train-bench [--depth D] [--base-filters B] [--classes K] [--padding
 *       valid|same] [--tile T] [--batch N] [--frame F] [--steps S] [--warmup W]
 *       [--threads N] [--optimizer sgd|adam] [--no-augment]
 *
 * Prints one JSON object: the config, the tile used, the seconds of every timed
 * step and the losses. The frames (F x F, GRAY8) are bright discs on noise with
 * binary masks, the same generator the bench's PyTorch side uses.
 */
#include "unet.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void
make_blobs (guint32 seed, gint w, gint h, guint8 *img, guint8 *mask)
{
  g_autoptr (GRand) r = g_rand_new_with_seed (seed);
  memset (mask, 0, (gsize) w * h);
  gint n = 3 + g_rand_int_range (r, 0, 4) + (w * h) / 3000;
  for (gint i = 0; i < n; i++) {
    gdouble cx = g_rand_double_range (r, 0, w);
    gdouble cy = g_rand_double_range (r, 0, h);
    gdouble rad = g_rand_double_range (r, 4, 10);
    gint y0 = MAX (0, (gint) (cy - rad)), y1 = MIN (h - 1, (gint) (cy + rad) + 1);
    gint x0 = MAX (0, (gint) (cx - rad)), x1 = MIN (w - 1, (gint) (cx + rad) + 1);
    for (gint y = y0; y <= y1; y++)
      for (gint x = x0; x <= x1; x++)
        if ((x - cx) * (x - cx) + (y - cy) * (y - cy) <= rad * rad)
          mask[(gsize) y * w + x] = 255;
  }
  for (gsize i = 0; i < (gsize) w * h; i++) {
    gdouble base = mask[i] ? 170.0 : 60.0;
    gdouble v = base + g_rand_double_range (r, -1, 1) * 45.0;
    img[i] = (guint8) CLAMP (v, 0, 255);
  }
}

int
main (int argc, char **argv)
{
  gint depth = 4, base = 64, classes = 2, tile = 572, batch = 1, frame = 0;
  gint steps = 5, warmup = 1, threads = 0;
  gchar *optimizer = NULL, *padding = NULL;
  gboolean no_augment = FALSE;
  GOptionEntry entries[] = {
    {"depth", 0, 0, G_OPTION_ARG_INT, &depth, "Depth", "D"},
    {"base-filters", 0, 0, G_OPTION_ARG_INT, &base, "Base filters", "B"},
    {"classes", 0, 0, G_OPTION_ARG_INT, &classes, "Classes", "K"},
    {"padding", 0, 0, G_OPTION_ARG_STRING, &padding, "valid|same", "P"},
    {"tile", 0, 0, G_OPTION_ARG_INT, &tile, "Input tile edge", "T"},
    {"batch", 0, 0, G_OPTION_ARG_INT, &batch, "Tiles per step", "N"},
    {"frame", 0, 0, G_OPTION_ARG_INT, &frame, "Frame edge (0: tile output)", "F"},
    {"steps", 0, 0, G_OPTION_ARG_INT, &steps, "Timed steps", "S"},
    {"warmup", 0, 0, G_OPTION_ARG_INT, &warmup, "Untimed steps", "W"},
    {"threads", 0, 0, G_OPTION_ARG_INT, &threads, "CPU threads", "N"},
    {"optimizer", 0, 0, G_OPTION_ARG_STRING, &optimizer, "sgd|adam", "O"},
    {"no-augment", 0, 0, G_OPTION_ARG_NONE, &no_augment, "No augmentation",
        NULL},
    {NULL},
  };
  g_autoptr (GOptionContext) ctx = g_option_context_new ("- time training steps");
  g_autoptr (GError) err = NULL;
  g_option_context_add_main_entries (ctx, entries, NULL);
  if (!g_option_context_parse (ctx, &argc, &argv, &err)) {
    g_printerr ("%s\n", err->message);
    return 2;
  }

  UnetTrainerOptions o;
  unet_trainer_options_init (&o);
  o.architecture.depth = depth;
  o.architecture.base_filters = base;
  o.architecture.classes = classes;
  o.architecture.padding = g_strcmp0 (padding, "same") == 0 ?
      UNET_PADDING_SAME : UNET_PADDING_VALID;
  o.normalization.mode = UNET_NORM_RANGE;
  o.normalization.a = 0;
  o.normalization.b = 255;
  o.tile_size = tile;
  o.batch_size = batch;
  o.iterations = warmup + steps;
  o.net.device = UNET_DEVICE_CPU;
  o.net.threads = threads;
  if (g_strcmp0 (optimizer, "adam") == 0) {
    o.optimizer = UNET_TRAIN_ADAM;
    o.learning_rate = 1e-4;
  } else {
    o.optimizer = UNET_TRAIN_SGD;
    o.learning_rate = 1e-3;
    o.momentum = 0.99;
  }
  if (no_augment) {
    o.elastic = FALSE;
    o.rotation = 0;
    o.flip = FALSE;
    o.intensity_jitter = 0;
  }

  g_autoptr (UnetTrainer) t = unet_trainer_new (&o, NULL, &err);
  if (t == NULL) {
    g_printerr ("%s\n", err->message);
    return 1;
  }
  const UnetConfig *cfg = unet_trainer_get_config (t);
  gint legal = unet_config_legal_input_at_least (cfg, tile);
  gint out = unet_config_output_size (cfg, legal);
  if (frame <= 0)
    frame = MAX (out, 64);
  g_autofree guint8 *img = g_malloc ((gsize) frame * frame);
  g_autofree guint8 *mask = g_malloc ((gsize) frame * frame);
  for (gint i = 0; i < 4; i++) {
    make_blobs (77 + i, frame, frame, img, mask);
    if (!unet_trainer_add_pair (t, UNET_PIXEL_U8, img, frame, UNET_PIXEL_U8,
            mask, frame, frame, frame, &err)) {
      g_printerr ("%s\n", err->message);
      return 1;
    }
  }

  GString *times = g_string_new (NULL), *losses = g_string_new (NULL);
  for (gint i = 0; i < warmup + steps; i++) {
    UnetTrainStats s;
    gint64 t0 = g_get_monotonic_time ();
    if (!unet_trainer_step (t, &s, &err)) {
      g_printerr ("%s\n", err->message);
      return 1;
    }
    gdouble secs = (g_get_monotonic_time () - t0) / 1e6;
    if (i >= warmup) {
      g_string_append_printf (times, "%s%.6f", times->len ? "," : "", secs);
      g_string_append_printf (losses, "%s%.6g", losses->len ? "," : "", s.loss);
    }
  }
  printf ("{\"depth\":%d,\"base_filters\":%d,\"classes\":%d,\"tile\":%d,"
      "\"tile_out\":%d,\"batch\":%d,\"frame\":%d,\"step_seconds\":[%s],"
      "\"losses\":[%s]}\n", depth, base, classes, legal, out, batch, frame,
      times->str, losses->str);
  g_string_free (times, TRUE);
  g_string_free (losses, TRUE);
  g_free (optimizer);
  g_free (padding);
  return 0;
}
