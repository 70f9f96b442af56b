/* gst-unet CUDA backend — optimiser updates of the f32 master parameters from the f32
 * (unscaled) gradient slab with PyTorch's semantics (torch.optim.SGD, Adam, AdamW):
 * the per-element arithmetic is engine/optim-elem.h's, the code the host optimiser
 * runs. The working weights of the convolutions are re-derived from the master
 * parameters by the training ops (params_version), not here. */
#include "common.cuh"

/* skip (device int, may be NULL): when non-zero (a non-finite gradient was seen by
 * unet_cuda_check_finite before, on the same stream), nothing is changed. */
static __global__ void
sgd_kernel (float *w, const float *g, float *buf, size_t count, double lr, double momentum,
            double weight_decay, int nesterov, int first, const int *skip)
{
  if (skip != NULL && *skip)
    return;
  UNET_GRID_LOOP (i, count)
    kb_optim_sgd_elem (w, g, buf, lr, momentum, weight_decay, nesterov, first, i);
}

static __global__ void
adam_kernel (float *w, const float *g, float *m, float *v, size_t count, double lr,
             double beta1, double beta2, double eps, double weight_decay, int decoupled,
             double step_size, double bc2_sqrt, const int *skip)
{
  if (skip != NULL && *skip)
    return;
  UNET_GRID_LOOP (i, count)
    kb_optim_adam_elem (w, g, m, v, lr, beta1, beta2, eps, weight_decay, decoupled,
        step_size, bc2_sqrt, i);
}

extern "C" int
unet_cuda_optim_sgd (float *params, const float *grads, float *momentum_buf, size_t count,
                     double lr, double momentum, double weight_decay, int nesterov,
                     int first, const int *skip, UnetCudaStream stream)
{
  sgd_kernel<<<grid_for (count), UNET_CUDA_THREADS, 0, (cudaStream_t) stream>>> (params,
      grads, momentum_buf, count, lr, momentum, weight_decay, nesterov, first, skip);
  return launch_status ();
}

extern "C" int
unet_cuda_optim_adam (float *params, const float *grads, float *m, float *v, size_t count,
                      double lr, double beta1, double beta2, double eps, double weight_decay,
                      int decoupled, double step_size, double bc2_sqrt, const int *skip,
                      UnetCudaStream stream)
{
  adam_kernel<<<grid_for (count), UNET_CUDA_THREADS, 0, (cudaStream_t) stream>>> (params,
      grads, m, v, count, lr, beta1, beta2, eps, weight_decay, decoupled, step_size,
      bc2_sqrt, skip);
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
