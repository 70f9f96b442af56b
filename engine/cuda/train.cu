/* gst-unet CUDA backend — kernels of the training executor (cuda-train.c) that the
 * other op families do not cover: moving a cuDNN filter gradient (KRSC, activation
 * type) into the f32 gradient slab (PyTorch layout), and a scaled f32 accumulate. */
#include "common.cuh"

/* dst[(i * b + j) * kk + s] += scale * src[(i * kk + s) * b + j]:
 * src (a, kk, b) dtype -> dst (a, b, kk) f32, accumulating. One thread per element of
 * dst, so no two threads write the same element. */
template <typename T>
static __global__ void
filter_grad_kernel (const T *src, float *dst, int a, int b, int kk, float scale)
{
  UNET_GRID_LOOP (o, (size_t) a * b * kk)
    kb_filter_grad_elem (src, dst, b, kk, scale, o);
}

extern "C" int
unet_cuda_filter_grad_accumulate (const void *src, UnetCudaDType dtype, float *dst, int a,
                                  int b, int kk, float scale, UnetCudaStream stream)
{
  if (a < 1 || b < 1 || kk < 1)
    return (int) cudaErrorInvalidValue;
  const size_t count = (size_t) a * b * kk;
  UNET_CUDA_DISPATCH (dtype, filter_grad_kernel<T><<<grid_for (count), UNET_CUDA_THREADS,
      0, (cudaStream_t) stream>>> ((const T *) src, dst, a, b, kk, scale));
  return launch_status ();
}

static __global__ void
scale_add_kernel (const float *x, float *y, size_t count, float scale)
{
  UNET_GRID_LOOP (i, count)
    kb_scale_add_elem (x, y, scale, i);
}

extern "C" int
unet_cuda_scale_add_f32 (const float *x, float *y, size_t count, float scale,
                         UnetCudaStream stream)
{
  scale_add_kernel<<<grid_for (count), UNET_CUDA_THREADS, 0, (cudaStream_t) stream>>> (x,
      y, count, scale);
  return launch_status ();
}
