/* unet-segment-frame: segment one raw frame with the engine's segmenter and write the
 * stitched probabilities, for the conformance tests and by hand.
 *
 *   unet-segment-frame MODEL FRAME WIDTH HEIGHT FORMAT OUTPUT [TILE_H,TILE_W,BATCH ...]
 *
 * FRAME: raw pixels, dense rows (FORMAT u8 | u16 | f32, little-endian). OUTPUT: a
 * file name prefix; for every tile spec (default "0,0,1" = automatic tile) the
 * probabilities (classes, H, W) float32 go to OUTPUT.<index>.f32, and a line
 * "index tile_h tile_w n_tiles" goes to stdout. --norm none|model (default none:
 * the network sees the raw values, so tiling is tested on its own). --frames N
 * pushes the frame N times before one flush (batching across frames) and checks
 * every copy is identical. --channels C: FRAME holds C planes (C,H,W), for a model
 * with C input channels. */
#include "unet.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static gchar *norm_opt = NULL;
static gint n_frames = 1;
static gint threads = 0;
static gint channels = 1;

static GOptionEntry entries[] = {
  {"norm", 0, 0, G_OPTION_ARG_STRING, &norm_opt, "none (default) or model", "MODE"},
  {"frames", 0, 0, G_OPTION_ARG_INT, &n_frames, "push the frame N times", "N"},
  {"threads", 0, 0, G_OPTION_ARG_INT, &threads, "CPU threads", "N"},
  {"channels", 0, 0, G_OPTION_ARG_INT, &channels, "planes in FRAME (C,H,W)", "C"},
  {NULL}
};

static int
fail (GError *err)
{
  fprintf (stderr, "unet-segment-frame: %s\n", err->message);
  g_error_free (err);
  return 1;
}

int
main (int argc, char **argv)
{
  GOptionContext *ctx = g_option_context_new ("MODEL FRAME W H FORMAT OUT [TH,TW,B ...]");
  GError *err = NULL;
  g_autoptr (UnetModel) model = NULL;
  gchar *data = NULL;
  gsize len;
  gint w, h, i, bpp;
  UnetPixelFormat fmt;
  const gchar *default_spec[] = { "0,0,1" };
  const gchar **specs;
  gint n_specs;

  g_option_context_add_main_entries (ctx, entries, NULL);
  if (!g_option_context_parse (ctx, &argc, &argv, &err))
    return fail (err);
  g_option_context_free (ctx);
  if (argc < 7) {
    fprintf (stderr, "usage: unet-segment-frame MODEL FRAME W H FORMAT OUT [TH,TW,B ...]\n");
    return 2;
  }
  w = atoi (argv[3]);
  h = atoi (argv[4]);
  if (!strcmp (argv[5], "u8")) {
    fmt = UNET_PIXEL_U8;
    bpp = 1;
  } else if (!strcmp (argv[5], "u16")) {
    fmt = UNET_PIXEL_U16;
    bpp = 2;
  } else if (!strcmp (argv[5], "f32")) {
    fmt = UNET_PIXEL_F32;
    bpp = 4;
  } else {
    fprintf (stderr, "unknown format %s\n", argv[5]);
    return 2;
  }
  model = unet_model_load (argv[1], &err);
  if (!model)
    return fail (err);
  if (!g_file_get_contents (argv[2], &data, &len, &err))
    return fail (err);
  if (w < 1 || h < 1 || channels < 1
      || len != (gsize) w * h * bpp * channels) {
    fprintf (stderr, "frame file has %" G_GSIZE_FORMAT " bytes, not %dx%dx%dx%d\n",
        len, channels, w, h, bpp);
    return 2;
  }
  if (argc > 7) {
    specs = (const gchar **) argv + 7;
    n_specs = argc - 7;
  } else {
    specs = default_spec;
    n_specs = 1;
  }

  for (i = 0; i < n_specs; i++) {
    UnetSegmenterOptions opts;
    g_autoptr (UnetSegmenter) seg = NULL;
    UnetSegmentResult *first = NULL, *r;
    gint th, tw, b, k;
    gchar *path;

    if (sscanf (specs[i], "%d,%d,%d", &th, &tw, &b) != 3) {
      fprintf (stderr, "bad tile spec %s\n", specs[i]);
      return 2;
    }
    unet_segmenter_options_init (&opts);
    opts.net.threads = threads;
    opts.tile_height = th;
    opts.tile_width = tw;
    opts.batch_size = b;
    opts.batch_frames = TRUE;
    opts.outputs = UNET_SEGMENT_PROBABILITIES;
    if (!norm_opt || !strcmp (norm_opt, "none")) {
      opts.override_normalization = TRUE;
      opts.normalization.mode = UNET_NORM_NONE;
    }
    seg = unet_segmenter_new (model, &opts, &err);
    if (!seg)
      return fail (err);
    for (k = 0; k < n_frames; k++) {
      UnetChannelLayout planes = { channels, bpp, (gsize) w * h * bpp };
      if (!unet_segmenter_push_channels (seg, fmt, data, w, h, (gsize) w * bpp,
              &planes, NULL, &err))
        return fail (err);
    }
    if (!unet_segmenter_flush (seg, &err))
      return fail (err);
    for (k = 0; k < n_frames; k++) {
      r = unet_segmenter_pop (seg);
      if (!r) {
        fprintf (stderr, "frame %d did not finish\n", k);
        return 1;
      }
      if (!first) {
        first = r;
        continue;
      }
      if (memcmp (first->probabilities, r->probabilities,
              sizeof (gfloat) * r->classes * w * h)) {
        fprintf (stderr, "frame copy %d differs from the first\n", k);
        return 1;
      }
      unet_segment_result_free (r);
    }
    path = g_strdup_printf ("%s.%d.f32", argv[6], i);
    if (!g_file_set_contents (path, (const gchar *) first->probabilities,
            sizeof (gfloat) * first->classes * w * h, &err))
      return fail (err);
    printf ("%d %d %d %d\n", i, first->stats.tile_height, first->stats.tile_width,
        first->stats.n_tiles);
    g_free (path);
    unet_segment_result_free (first);
  }
  g_free (data);
  return 0;
}
