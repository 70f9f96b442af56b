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

static __global__ void
scale_by_weight_sum_kernel (float *x, size_t count, const double *sum)
{
  UNET_GRID_LOOP (i, count)
    kb_scale_by_weight_sum_elem (x, sum, i);
}

extern "C" int
unet_cuda_scale_by_weight_sum (float *x, size_t count, const double *sum,
                               UnetCudaStream stream)
{
  scale_by_weight_sum_kernel<<<grid_for (count), UNET_CUDA_THREADS, 0,
      (cudaStream_t) stream>>> (x, count, sum);
  return launch_status ();
}

/* ------------------------------------------------------- confusion matrix -- */

/* A histogram per block in shared memory, added to the matrix once per block. */
template <typename T>
static __global__ void
confusion_kernel (const T *logits, const uint8_t *labels, size_t n_pix, int classes,
                  int ignore_label, unsigned long long *confusion)
{
  __shared__ unsigned long long hist[256];
  for (int j = threadIdx.x; j < 256; j += blockDim.x)
    hist[j] = 0;
  __syncthreads ();
  UNET_GRID_LOOP (i, n_pix) {
    const int cell = kb_confusion_cell (logits, labels, classes, ignore_label, i);
    if (cell >= 0)
      atomicAdd (&hist[cell], 1ull);
  }
  __syncthreads ();
  for (int j = threadIdx.x; j < 256; j += blockDim.x)
    if (hist[j] != 0)
      atomicAdd (&confusion[j], hist[j]);
}

extern "C" int
unet_cuda_confusion (const void *logits, UnetCudaDType dtype, const uint8_t *labels,
                     size_t n_pix, int classes, int ignore_label,
                     unsigned long long *confusion, UnetCudaStream stream)
{
  if (classes < 1 || classes > 16)
    return (int) cudaErrorInvalidValue;
  unsigned int blocks = grid_for (n_pix);
  if (blocks > UNET_CUDA_REDUCE_BLOCKS)
    blocks = UNET_CUDA_REDUCE_BLOCKS;
  UNET_CUDA_DISPATCH (dtype, confusion_kernel<T><<<blocks, UNET_CUDA_THREADS, 0,
      (cudaStream_t) stream>>> ((const T *) logits, labels, n_pix, classes, ignore_label,
      confusion));
  return launch_status ();
}

/* -------------------------------------------------------------- soft Dice -- */

#define DICE_SUMS 48

/* Per-block partial sums (partials[q * blocks + block]); only the classes in use. */
template <typename T>
static __global__ void
dice_sums_kernel (const T *logits, const uint8_t *labels, size_t n_pix, int classes,
                  int ignore_label, double *partials)
{
  __shared__ double shared[UNET_CUDA_THREADS / 32];
  double acc[DICE_SUMS];
  const int n_labels = classes > 2 ? classes : 2;
  for (int q = 0; q < DICE_SUMS; q++)
    acc[q] = 0.0;
  UNET_GRID_LOOP (i, n_pix)
    kb_dice_sums_pixel (logits, labels, classes, ignore_label, i, acc);
  for (int q = 0; q < DICE_SUMS; q++) {
    if (q % 16 >= n_labels)
      continue;
    const double s = block_sum (acc[q], shared);
    if (threadIdx.x == 0)
      partials[(size_t) q * gridDim.x + blockIdx.x] = s;
  }
}

/* One block per sum, the partials in a fixed order: deterministic. */
static __global__ void
dice_final_kernel (const double *partials, int blocks, int n_labels, double *sums)
{
  __shared__ double shared[UNET_CUDA_THREADS / 32];
  const int q = blockIdx.x;
  double a = 0.0;
  if (q % 16 < n_labels)
    for (int i = threadIdx.x; i < blocks; i += blockDim.x)
      a += partials[(size_t) q * blocks + i];
  a = block_sum (a, shared);
  if (threadIdx.x == 0)
    sums[q] = a;
}

extern "C" int
unet_cuda_dice_sums (const void *logits, UnetCudaDType dtype, const uint8_t *labels,
                     size_t n_pix, int classes, int ignore_label, double *partials,
                     double *sums, UnetCudaStream stream)
{
  if (classes < 1 || classes > 16)
    return (int) cudaErrorInvalidValue;
  UNET_CUDA_DISPATCH (dtype, dice_sums_kernel<T><<<UNET_CUDA_REDUCE_BLOCKS, UNET_CUDA_THREADS,
      0, (cudaStream_t) stream>>> ((const T *) logits, labels, n_pix, classes, ignore_label,
      partials));
  int err = launch_status ();
  if (err)
    return err;
  dice_final_kernel<<<DICE_SUMS, UNET_CUDA_THREADS, 0, (cudaStream_t) stream>>> (partials,
      UNET_CUDA_REDUCE_BLOCKS, classes > 2 ? classes : 2, sums);
  return launch_status ();
}

template <typename T>
static __global__ void
dice_grad_kernel (const T *logits, const uint8_t *labels, size_t n_pix, int classes,
                  int ignore_label, const double *sums, float scale, float *grad)
{
  UNET_GRID_LOOP (i, n_pix)
    kb_dice_grad_pixel (logits, labels, classes, ignore_label, sums, scale, grad, i);
}

extern "C" int
unet_cuda_dice_grad (const void *logits, UnetCudaDType dtype, const uint8_t *labels,
                     size_t n_pix, int classes, int ignore_label, const double *sums,
                     float scale, float *grad, UnetCudaStream stream)
{
  if (classes < 1 || classes > 16)
    return (int) cudaErrorInvalidValue;
  UNET_CUDA_DISPATCH (dtype, dice_grad_kernel<T><<<grid_for (n_pix), UNET_CUDA_THREADS, 0,
      (cudaStream_t) stream>>> ((const T *) logits, labels, n_pix, classes, ignore_label,
      sums, scale, grad));
  return launch_status ();
}
