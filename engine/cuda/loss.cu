/* gst-unet CUDA backend — the weighted pixel-wise cross-entropy of the U-Net paper
 * (softmax over classes, or sigmoid for one class) and its gradient, in one pass over
 * the logits. Sums are reduced deterministically (per-block partials, then one block
 * in a fixed order). */
#include "common.cuh"

template <typename T>
static __global__ void
xent_kernel (const T *logits, const uint8_t *labels, const float *weights, size_t n_pix,
             int classes, int ignore_label, float grad_scale, float *grad, double *partials)
{
  __shared__ double shared[UNET_CUDA_THREADS / 32];
  double loss_sum = 0.0, weight_sum = 0.0;
  UNET_GRID_LOOP (i, n_pix)
    kb_xent_pixel (logits, labels, weights, classes, ignore_label, grad_scale, grad, i,
        &loss_sum, &weight_sum);
  loss_sum = block_sum (loss_sum, shared);
  weight_sum = block_sum (weight_sum, shared);
  if (threadIdx.x == 0) {
    partials[blockIdx.x * 2] = loss_sum;
    partials[blockIdx.x * 2 + 1] = weight_sum;
  }
}

static __global__ void
xent_sum_kernel (const double *partials, int n, double *out)
{
  __shared__ double shared[UNET_CUDA_THREADS / 32];
  double a = 0.0, b = 0.0;
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    a += partials[i * 2];
    b += partials[i * 2 + 1];
  }
  a = block_sum (a, shared);
  b = block_sum (b, shared);
  if (threadIdx.x == 0) {
    out[0] = a;
    out[1] = b;
  }
}

extern "C" int
unet_cuda_weighted_xent (const void *logits, UnetCudaDType dtype, const uint8_t *labels,
                         const float *weights, size_t n_pix, int classes, int ignore_label,
                         float grad_scale, float *grad, double *partials, double *out,
                         UnetCudaStream stream)
{
  if (classes < 1)
    return (int) cudaErrorInvalidValue;
  UNET_CUDA_DISPATCH (dtype, xent_kernel<T><<<UNET_CUDA_REDUCE_BLOCKS, UNET_CUDA_THREADS, 0,
      (cudaStream_t) stream>>> ((const T *) logits, labels, weights, n_pix, classes,
      ignore_label, grad_scale, grad, partials));
  int err = launch_status ();
  if (err)
    return err;
  xent_sum_kernel<<<1, UNET_CUDA_THREADS, 0, (cudaStream_t) stream>>> (partials,
      UNET_CUDA_REDUCE_BLOCKS, out);
  return launch_status ();
}
