/* gst-unet CUDA backend — device helpers shared by the .cu files: element type
 * conversions, the mirror rule, grid sizing and dtype dispatch. Included by .cu files
 * only. */
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "cuda-kernels.h"

#define UNET_CUDA_THREADS 256

static __device__ __forceinline__ float to_f32 (float v) { return v; }
static __device__ __forceinline__ float to_f32 (__half v) { return __half2float (v); }
static __device__ __forceinline__ float to_f32 (__nv_bfloat16 v) { return __bfloat162float (v); }

template <typename T> static __device__ __forceinline__ T from_f32 (float v);
template <> __device__ __forceinline__ float from_f32<float> (float v) { return v; }
template <> __device__ __forceinline__ __half from_f32<__half> (float v) { return __float2half_rn (v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16> (float v) { return __float2bfloat16_rn (v); }

/* See unet_cuda_mirror_index in cuda-kernels.h. */
static __host__ __device__ __forceinline__ int
mirror_index (int i, int n)
{
  if (n <= 1)
    return 0;
  const int period = 2 * (n - 1);
  int m = i % period;
  if (m < 0)
    m += period;
  return m < n ? m : period - m;
}

/* Grid for a grid-stride loop over `count` elements: enough blocks to fill the GPU,
 * never more than needed. */
static inline unsigned int
grid_for (size_t count)
{
  size_t blocks = (count + UNET_CUDA_THREADS - 1) / UNET_CUDA_THREADS;
  if (blocks > 65535u * 8u)
    blocks = 65535u * 8u;
  return blocks == 0 ? 1u : (unsigned int) blocks;
}

static inline int
launch_status (void)
{
  return (int) cudaGetLastError ();
}

/* Runs the statements given after dtype with `T` bound to the C++ element type of `dtype`. */
#define UNET_CUDA_DISPATCH(dtype, ...)                                             \
  do {                                                                           \
    switch (dtype) {                                                             \
      case UNET_CUDA_F32: { typedef float T; __VA_ARGS__; } break;                      \
      case UNET_CUDA_F16: { typedef __half T; __VA_ARGS__; } break;                     \
      case UNET_CUDA_BF16: { typedef __nv_bfloat16 T; __VA_ARGS__; } break;             \
      default: return (int) cudaErrorInvalidValue;                               \
    }                                                                            \
  } while (0)

/* Block-wide sum of a double (blockDim.x == UNET_CUDA_THREADS); result in thread 0. */
static __device__ __forceinline__ double
block_sum (double v, double *shared)
{
  for (int off = 16; off > 0; off >>= 1)
    v += __shfl_down_sync (0xffffffffu, v, off);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0)
    shared[warp] = v;
  __syncthreads ();
  v = 0.0;
  if (warp == 0) {
    v = lane < (UNET_CUDA_THREADS / 32) ? shared[lane] : 0.0;
    for (int off = 16; off > 0; off >>= 1)
      v += __shfl_down_sync (0xffffffffu, v, off);
  }
  __syncthreads ();
  return v;
}
