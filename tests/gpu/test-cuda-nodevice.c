/* Device selection of the CUDA build, runs (and must pass) in every CUDA build, GPU
 * or not:
 *   - the mirror rule compiled into the CUDA objects equals engine/tiling.c's;
 *   - device=cuda without a usable GPU fails with UNET_ERROR_NO_DEVICE and
 *     "no CUDA device: <CUDA's reason>" (with a GPU: it succeeds and reports cuda);
 *   - an out-of-range gpu-id is UNET_ERROR_NO_DEVICE everywhere;
 *   - device=auto falls back to the CPU without a GPU (picks CUDA with one) and the
 *     net it returns runs a forward pass with sane probabilities;
 *   - the segmenter passes the same error through. */
#include "config.h"

#include "cuda-backend.h"
#include "cuda-kernels.h"
#include "tiling.h"
#include "unet.h"

#include <cuda_runtime_api.h>
#include <math.h>
#include <stdio.h>

static int failures;

#define EXPECT(cond, ...)                                                             \
  do {                                                                            \
    if (!(cond)) {                                                                \
      fprintf (stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                       \
      fprintf (stderr, __VA_ARGS__);                                              \
      fputc ('\n', stderr);                                                       \
      failures++;                                                                 \
    }                                                                             \
  } while (0)

static UnetModel *
tiny_model (void)
{
  UnetConfig cfg = { .in_channels = 1, .classes = 2, .depth = 1, .base_filters = 2,
    .padding = UNET_PADDING_SAME, .batch_norm = FALSE, .dropout = 0.0 };
  GError *error = NULL;
  UnetModel *m = unet_model_new (&cfg, &error);
  if (m == NULL) {
    fprintf (stderr, "model: %s\n", error->message);
    exit (1);
  }
  unet_model_init_weights (m, 7);
  return m;
}

int
main (void)
{
  int count = 0;
  cudaError_t cerr = cudaGetDeviceCount (&count);
  gboolean have_gpu = cerr == cudaSuccess && count > 0;
  g_autoptr (UnetModel) model = tiny_model ();
  UnetNetOptions opts;
  GError *error = NULL;
  UnetNet *net;

  printf ("CUDA devices: %d (%s)\n", have_gpu ? count : 0,
      cerr == cudaSuccess ? "ok" : cudaGetErrorString (cerr));
  (void) cudaGetLastError ();

  for (int n = 1; n <= 9; n++)
    for (int i = -100; i <= 100; i++)
      EXPECT (unet_cuda_mirror_index (i, n) == unet_mirror_index (i, n),
          "mirror index %d of %d: cuda %d, tiling.c %d", i, n, unet_cuda_mirror_index (i, n),
          unet_mirror_index (i, n));

  /* device=cuda */
  unet_net_options_init (&opts);
  opts.device = UNET_DEVICE_CUDA;
  net = unet_net_new (model, &opts, &error);
  if (have_gpu) {
    EXPECT (net != NULL, "device=cuda with a GPU failed: %s", error ? error->message : "?");
    if (net != NULL)
      EXPECT (unet_net_get_device (net) == UNET_DEVICE_CUDA, "device=cuda is not on cuda");
  } else {
    EXPECT (net == NULL, "device=cuda without a GPU returned a net");
    EXPECT (error != NULL && g_error_matches (error, UNET_ERROR, UNET_ERROR_NO_DEVICE),
        "device=cuda without a GPU: expected UNET_ERROR_NO_DEVICE, got %s",
        error ? error->message : "no error");
    if (error != NULL) {
      EXPECT (g_str_has_prefix (error->message, "no CUDA device: "),
          "unclear message: \"%s\"", error->message);
      printf ("device=cuda without a GPU: \"%s\"\n", error->message);
    }
  }
  g_clear_error (&error);
  unet_net_free (net);

  /* an impossible gpu-id */
  opts.gpu_id = 4096;
  net = unet_net_new (model, &opts, &error);
  EXPECT (net == NULL && g_error_matches (error, UNET_ERROR, UNET_ERROR_NO_DEVICE),
      "gpu-id 4096: expected UNET_ERROR_NO_DEVICE, got %s", error ? error->message : "a net");
  if (error != NULL)
    printf ("gpu-id 4096: \"%s\"\n", error->message);
  g_clear_error (&error);
  unet_net_free (net);
  EXPECT (!unet_cuda_device_usable (-1, NULL, 0, &error)
      && g_error_matches (error, UNET_ERROR, UNET_ERROR_NO_DEVICE), "gpu-id -1 accepted");
  g_clear_error (&error);

  /* device=auto: CPU without a GPU, CUDA with one; either way a working net */
  opts.gpu_id = 0;
  opts.device = UNET_DEVICE_AUTO;
  net = unet_net_new (model, &opts, &error);
  EXPECT (net != NULL, "device=auto failed: %s", error ? error->message : "?");
  if (net != NULL) {
    const gint hw = 16;
    gfloat in[16 * 16], out[2 * 16 * 16];
    EXPECT (unet_net_get_device (net) == (have_gpu ? UNET_DEVICE_CUDA : UNET_DEVICE_CPU),
        "device=auto chose %s", unet_device_name (unet_net_get_device (net)));
    for (gint i = 0; i < hw * hw; i++)
      in[i] = (gfloat) ((i * 37) % 17) / 17.0f;
    EXPECT (unet_net_forward (net, in, 1, hw, hw, out, &error), "forward: %s",
        error ? error->message : "?");
    for (gint i = 0; i < hw * hw; i++) {
      /* softmax over 2 classes: both in [0, 1], summing to 1 within f32 rounding */
      EXPECT (out[i] >= 0.0f && out[i] <= 1.0f && fabsf (out[i] + out[hw * hw + i] - 1.0f)
          < 1e-5f, "pixel %d: p = %g, %g", i, out[i], out[hw * hw + i]);
      if (failures)
        break;
    }
    printf ("device=auto runs on %s\n", unet_device_name (unet_net_get_device (net)));
  }
  g_clear_error (&error);
  unet_net_free (net);

  /* the segmenter reports the same error */
  if (!have_gpu) {
    UnetSegmenterOptions so;
    UnetSegmenter *seg;
    unet_segmenter_options_init (&so);
    so.net.device = UNET_DEVICE_CUDA;
    seg = unet_segmenter_new (model, &so, &error);
    EXPECT (seg == NULL && g_error_matches (error, UNET_ERROR, UNET_ERROR_NO_DEVICE),
        "segmenter device=cuda: expected UNET_ERROR_NO_DEVICE, got %s",
        error ? error->message : "a segmenter");
    g_clear_error (&error);
    unet_segmenter_free (seg);
  }

  if (failures) {
    fprintf (stderr, "%d check(s) failed\n", failures);
    return 1;
  }
  printf ("device selection ok\n");
  return 0;
}
