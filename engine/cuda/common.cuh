/* gst-unet CUDA backend — device helpers shared by the .cu files: element type
 * conversions, the mirror rule, grid sizing and dtype dispatch. Included by .cu files
 * only. */
#pragma once

#include <cuda_runtime.h>
#include <stdint.h>

#include "cuda-kernels.h"

#define UNET_CUDA_THREADS 256

/* to_f32 / from_f32, mirror_index and every per-element body: kernel-bodies.h
 * (__host__ __device__, shared with the CPU tests). */
#include "kernel-bodies.h"

/* for (size_t i = global thread index; i < total; i += grid size) */
#define UNET_GRID_LOOP(i, total)                                                  \
  for (size_t i = blockIdx.x * (size_t) blockDim.x + threadIdx.x; i < (total);  \
       i += (size_t) gridDim.x * blockDim.x)

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

/* The status of the launch just made. Failed calls clear the runtime's last error
 * when they are reported (unet_cuda_check_impl), so an earlier failure, e.g. of a
 * cudaMallocHost, is not reported again here. */
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
