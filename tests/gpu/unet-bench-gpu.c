/* unet-bench-gpu: engine-alone throughput of the segmenter on the GPU (no
 * GStreamer), for tests/bench/bench_gpu.py.
 *
 *   unet-bench-gpu MODEL [--precision fp32|tf32|bf16|fp16] [--frames N] [--size S]
 *                  [--tile T] [--batch B] [--device cuda|cpu]
 *
 * Segments N random 16-bit S x S frames (labels out), after 2 warm-up frames (plans,
 * cuDNN algorithm search), and prints key=value lines: tile, n_tiles,
 * flops_per_frame, median_ms, mpx_s (megapixels of input frames per second, from the
 * median frame time). Exits 77 when device=cuda and there is no CUDA device. */
#include "config.h"

#include "unet.h"

#include <cuda_runtime_api.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static gchar *precision_opt = NULL, *device_opt = NULL;
static gint n_frames = 20, size = 2048, tile = 0, batch = 4;

static GOptionEntry entries[] = {
  {"precision", 0, 0, G_OPTION_ARG_STRING, &precision_opt, "fp32|tf32|bf16|fp16", "P"},
  {"device", 0, 0, G_OPTION_ARG_STRING, &device_opt, "cuda (default) or cpu", "D"},
  {"frames", 0, 0, G_OPTION_ARG_INT, &n_frames, "timed frames (default 20)", "N"},
  {"size", 0, 0, G_OPTION_ARG_INT, &size, "frame edge (default 2048)", "S"},
  {"tile", 0, 0, G_OPTION_ARG_INT, &tile, "input tile edge (0 = automatic)", "T"},
  {"batch", 0, 0, G_OPTION_ARG_INT, &batch, "tiles per forward (default 4)", "B"},
  {NULL}
};

static int
cmp_double (const void *a, const void *b)
{
  double x = *(const double *) a, y = *(const double *) b;
  return x < y ? -1 : x > y;
}

int
main (int argc, char **argv)
{
  GOptionContext *octx = g_option_context_new ("MODEL");
  GError *err = NULL;
  UnetSegmenterOptions so;
  UnetSegmenter *seg;
  UnetModel *model;
  guint16 *frames[2];
  double *times;
  gint th = 0, tw = 0, nt = 0;
  int count = 0;

  g_option_context_add_main_entries (octx, entries, NULL);
  if (!g_option_context_parse (octx, &argc, &argv, &err) || argc != 2 || n_frames < 1
      || size < 1 || batch < 1) {
    fprintf (stderr, "usage: unet-bench-gpu MODEL [options] (%s)\n", err ? err->message : "");
    return 2;
  }
  g_option_context_free (octx);
  unet_segmenter_options_init (&so);
  so.net.device = g_strcmp0 (device_opt, "cpu") == 0 ? UNET_DEVICE_CPU : UNET_DEVICE_CUDA;
  if (so.net.device == UNET_DEVICE_CUDA
      && (cudaGetDeviceCount (&count) != cudaSuccess || count < 1)) {
    printf ("no CUDA device: skipping\n");
    return 77;
  }
  if (precision_opt == NULL || !strcmp (precision_opt, "fp32"))
    so.net.precision = UNET_PRECISION_FP32;
  else if (!strcmp (precision_opt, "tf32"))
    so.net.precision = UNET_PRECISION_TF32;
  else if (!strcmp (precision_opt, "bf16"))
    so.net.precision = UNET_PRECISION_BF16;
  else if (!strcmp (precision_opt, "fp16"))
    so.net.precision = UNET_PRECISION_FP16;
  else {
    fprintf (stderr, "unknown precision %s\n", precision_opt);
    return 2;
  }
  so.tile_height = so.tile_width = tile;
  so.batch_size = batch;
  so.outputs = UNET_SEGMENT_LABELS;
  if ((model = unet_model_load (argv[1], &err)) == NULL
      || (seg = unet_segmenter_new (model, &so, &err)) == NULL) {
    fprintf (stderr, "unet-bench-gpu: %s\n", err->message);
    return 1;
  }
  for (int f = 0; f < 2; f++) {
    guint64 s = 12345 + f;
    frames[f] = g_new (guint16, (gsize) size * size);
    for (gsize i = 0; i < (gsize) size * size; i++) {
      s = s * 6364136223846793005ull + 1442695040888963407ull;
      frames[f][i] = (guint16) (s >> 52);
    }
  }
  times = g_new (double, n_frames);
  for (int i = -2; i < n_frames; i++) {
    gint64 t0 = g_get_monotonic_time ();
    UnetSegmentResult *r = unet_segmenter_process (seg, UNET_PIXEL_U16, frames[(i + 2) % 2],
        size, size, (gsize) size * 2, &err);
    if (r == NULL) {
      fprintf (stderr, "unet-bench-gpu: %s\n", err->message);
      return 1;
    }
    if (i >= 0)
      times[i] = (g_get_monotonic_time () - t0) / 1e3;
    th = r->stats.tile_height;
    tw = r->stats.tile_width;
    nt = r->stats.n_tiles;
    unet_segment_result_free (r);
  }
  qsort (times, n_frames, sizeof (double), cmp_double);
  {
    double med = times[n_frames / 2];
    printf ("device=%s\nprecision=%s\ntile=%dx%d\nn_tiles=%d\nflops_per_frame=%.6g\n"
        "median_ms=%.4f\nmpx_s=%.3f\n", unet_device_name (unet_segmenter_get_device (seg)),
        precision_opt ? precision_opt : "fp32", th, tw, nt,
        nt * unet_config_forward_flops (unet_segmenter_get_config (seg), th, tw), med,
        (double) size * size / 1e6 / (med / 1e3));
  }
  unet_segmenter_free (seg);
  unet_model_free (model);
  g_free (frames[0]);
  g_free (frames[1]);
  g_free (times);
  return 0;
}
