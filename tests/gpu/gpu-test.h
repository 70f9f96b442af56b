/* Small helpers shared by the GPU tests: skip without a device, device buffers,
 * comparisons that report the worst element. Header-only (static functions), plain C. */
#pragma once

#include <cuda_runtime_api.h>
#include <glib.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SKIP 77

/* Exit 77 (skip) when there is no usable CUDA device. */
static inline void
gpu_require_device (void)
{
  int n = 0;
  cudaError_t err = cudaGetDeviceCount (&n);
  if (err != cudaSuccess || n < 1) {
    printf ("SKIP: no CUDA device (%s)\n",
        err != cudaSuccess ? cudaGetErrorString (err) : "device count 0");
    exit (SKIP);
  }
}

/* Two nets built separately must run the same arithmetic: cudnnFind* times the
 * algorithms and may pick different ones for the same shape (different summation
 * order, ~1e-6 to 1e-5 per layer). The heuristic choice ($UNET_CUDNN_FIND=0) depends
 * on the shape only. Every test that compares two nets calls this first. */
static inline void
gpu_deterministic_algorithms (void)
{
  g_setenv ("UNET_CUDNN_FIND", "0", TRUE);
}

/* Tolerance on probabilities (in [0, 1]) for two fp32 computations of the same net
 * that may differ in summation order (different shapes get different cuDNN
 * algorithms even with the heuristics) or in one rounding of the normalised input:
 * a sum of K products in any order is within K u sum|terms| of the exact one (u =
 * 2^-24, Higham's bound), so two orders differ by at most 2 K u per convolution
 * relative to activations of order one (Kaiming-initialised test nets), adding up
 * linearly over the L convolutions; softmax and sigmoid move a probability by at most
 * the logit change. K is largest (9 x channels) at the bottom of the U: 9 base 2^depth.
 * L = 2 depth (encoder) + 2 (bottom) + 3 depth (up-convolution + 2) + 1 (head). */
static inline double
gpu_fp32_order_tol (int depth, int base_filters)
{
  const double u = 1.0 / 16777216.0;
  const double k_max = 9.0 * base_filters * (double) (1 << depth);
  const double layers = 5.0 * depth + 3.0;
  return 2.0 * k_max * u * layers;
}

#define GPU_OK(call)                                                                  \
  do {                                                                            \
    int gpu_ok_err_ = (int) (call);                                               \
    if (gpu_ok_err_ != 0) {                                                       \
      fprintf (stderr, "%s:%d: %s failed: %s\n", __FILE__, __LINE__, #call,       \
          cudaGetErrorString ((cudaError_t) gpu_ok_err_));                        \
      exit (1);                                                                   \
    }                                                                             \
  } while (0)

static inline void *
dev_alloc (size_t bytes)
{
  void *p = NULL;
  GPU_OK (cudaMalloc (&p, bytes ? bytes : 1));
  GPU_OK (cudaMemset (p, 0, bytes ? bytes : 1));
  return p;
}

static inline void *
dev_from_host (const void *host, size_t bytes)
{
  void *p = dev_alloc (bytes);
  GPU_OK (cudaMemcpy (p, host, bytes, cudaMemcpyHostToDevice));
  return p;
}

static inline void
host_from_dev (void *host, const void *dev, size_t bytes)
{
  GPU_OK (cudaDeviceSynchronize ());
  GPU_OK (cudaMemcpy (host, dev, bytes, cudaMemcpyDeviceToHost));
}

/* Compares `n` floats; |got - want| <= atol + rtol * |want| for every element.
 * Prints the worst one and returns 1 on failure (0 on success). */
static inline int
check_close (const char *what, const float *got, const float *want, size_t n, double atol,
    double rtol)
{
  size_t worst = 0, bad = 0;
  double worst_excess = -1.0;
  for (size_t i = 0; i < n; i++) {
    double lim = atol + rtol * fabs ((double) want[i]);
    double d = fabs ((double) got[i] - (double) want[i]);
    if (!(d <= lim) || isnan (got[i]) != isnan (want[i]))
      bad++;
    if (d - lim > worst_excess || isnan (got[i])) {
      worst_excess = d - lim;
      worst = i;
    }
  }
  if (bad) {
    fprintf (stderr, "FAIL %s: %zu of %zu elements off; worst [%zu] got %.8g want %.8g "
        "(atol %g rtol %g)\n", what, bad, n, worst, got[worst], want[worst], atol, rtol);
    return 1;
  }
  printf ("ok %s (%zu elements)\n", what, n);
  return 0;
}

static inline float
rand_uniform (guint64 *state, float lo, float hi)
{
  /* splitmix64: deterministic data without depending on the engine's PRNG */
  guint64 z = (*state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
  return lo + (hi - lo) * (float) ((z >> 40) * (1.0 / 16777216.0));
}
