/* gst-unet CUDA backend — optimiser updates on fp32 master parameters with PyTorch's
 * semantics (torch.optim.SGD with momentum, torch.optim.Adam), reading gradients of
 * any activation precision (unscaled by grad_scale for fp16 loss scaling) and writing
 * the low-precision copy the forward pass uses in the same pass. */
#include "common.cuh"

template <typename G, typename L>
static __global__ void
sgd_kernel (float *p, const G *grad, float *buf, L *p_lp, size_t count, float lr,
            float momentum, float weight_decay, float grad_scale, int first_step)
{
  UNET_GRID_LOOP (i, count)
    kb_sgd_elem (p, grad, buf, p_lp, lr, momentum, weight_decay, grad_scale, first_step, i);
}

template <typename G, typename L>
static __global__ void
adam_kernel (float *p, const G *grad, float *m, float *v, L *p_lp, size_t count, float lr,
             float beta1, float beta2, float eps, float weight_decay, float grad_scale,
             float bias1, float sqrt_bias2)
{
  UNET_GRID_LOOP (i, count)
    kb_adam_elem (p, grad, m, v, p_lp, lr, beta1, beta2, eps, weight_decay, grad_scale,
        bias1, sqrt_bias2, i);
}

#define DISPATCH2(gd, ld, ...)                                                        \
  do {                                                                            \
    switch (gd) {                                                                 \
      case UNET_CUDA_F32: { typedef float G; UNET_CUDA_DISPATCH (ld, __VA_ARGS__); } break; \
      case UNET_CUDA_F16: { typedef __half G; UNET_CUDA_DISPATCH (ld, __VA_ARGS__); } break; \
      case UNET_CUDA_BF16: { typedef __nv_bfloat16 G; UNET_CUDA_DISPATCH (ld, __VA_ARGS__); } break; \
      default: return (int) cudaErrorInvalidValue;                                \
    }                                                                             \
  } while (0)

extern "C" int
unet_cuda_sgd_step (float *params, const void *grad, UnetCudaDType grad_dtype,
                    float *momentum_buf, void *params_lp, UnetCudaDType lp_dtype, size_t count,
                    float lr, float momentum, float weight_decay, float grad_scale,
                    int first_step, UnetCudaStream stream)
{
  DISPATCH2 (grad_dtype, lp_dtype, sgd_kernel<G, T><<<grid_for (count), UNET_CUDA_THREADS, 0,
      (cudaStream_t) stream>>> (params, (const G *) grad, momentum_buf, (T *) params_lp,
      count, lr, momentum, weight_decay, grad_scale, first_step));
  return launch_status ();
}

extern "C" int
unet_cuda_adam_step (float *params, const void *grad, UnetCudaDType grad_dtype, float *m,
                     float *v, void *params_lp, UnetCudaDType lp_dtype, size_t count,
                     float lr, float beta1, float beta2, float eps, float weight_decay,
                     float grad_scale, int step, UnetCudaStream stream)
{
  if (step < 1)
    return (int) cudaErrorInvalidValue;
  /* bias corrections in double on the host, as PyTorch computes them in Python floats */
  const float bias1 = (float) (1.0 - pow ((double) beta1, step));
  const float sqrt_bias2 = (float) sqrt (1.0 - pow ((double) beta2, step));
  DISPATCH2 (grad_dtype, lp_dtype, adam_kernel<G, T><<<grid_for (count), UNET_CUDA_THREADS,
      0, (cudaStream_t) stream>>> (params, (const G *) grad, m, v, (T *) params_lp, count,
      lr, beta1, beta2, eps, weight_decay, grad_scale, bias1, sqrt_bias2));
  return launch_status ();
}

template <typename T>
static __global__ void
check_finite_kernel (const T *x, size_t count, int *flag)
{
  for (size_t i = blockIdx.x * (size_t) blockDim.x + threadIdx.x; i < count;
       i += (size_t) gridDim.x * blockDim.x) {
    if (!kb_is_finite_elem (x, i)) {
      *flag = 1;
      return;
    }
  }
}

extern "C" int
unet_cuda_check_finite (const void *x, UnetCudaDType dtype, size_t count, int *flag,
                        UnetCudaStream stream)
{
  UNET_CUDA_DISPATCH (dtype, check_finite_kernel<T><<<grid_for (count), UNET_CUDA_THREADS, 0,
      (cudaStream_t) stream>>> ((const T *) x, count, flag));
  return launch_status ();
}
