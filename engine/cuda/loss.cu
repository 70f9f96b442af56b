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
  for (size_t i = blockIdx.x * (size_t) blockDim.x + threadIdx.x; i < n_pix;
       i += (size_t) gridDim.x * blockDim.x) {
    const int y = labels[i];
    const T *z = logits + i * classes;
    const bool counted = y != ignore_label && (classes == 1 ? y <= 1 : y < classes);
    const float w = counted ? (weights ? weights[i] : 1.0f) : 0.0f;
    if (classes == 1) {
      const float zi = to_f32 (z[0]);
      if (counted) {
        /* max(z, 0) - z y + log(1 + exp(-|z|)): BCEWithLogits, stable for any z */
        const float l = fmaxf (zi, 0.0f) - zi * y + log1pf (__expf (-fabsf (zi)));
        loss_sum += (double) w * l;
        weight_sum += w;
      }
      if (grad)
        grad[i] = grad_scale * w * (1.0f / (1.0f + __expf (-zi)) - (float) y);
    } else {
      float zmax = to_f32 (z[0]);
      for (int k = 1; k < classes; k++)
        zmax = fmaxf (zmax, to_f32 (z[k]));
      float sum = 0.0f;
      for (int k = 0; k < classes; k++)
        sum += __expf (to_f32 (z[k]) - zmax);
      const float lse = zmax + __logf (sum);
      if (counted) {
        loss_sum += (double) w * (lse - to_f32 (z[y]));
        weight_sum += w;
      }
      if (grad) {
        for (int k = 0; k < classes; k++) {
          const float p = __expf (to_f32 (z[k]) - lse);
          grad[i * classes + k] = grad_scale * w * (p - (k == y ? 1.0f : 0.0f));
        }
      }
    }
  }
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
