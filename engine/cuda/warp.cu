/* gst-unet CUDA backend — the elastic deformation of a training sample in one pass:
 * affine part (rotation, flip, patch origin) plus a smooth displacement field
 * interpolated from a coarse grid, sampling the image bicubically, the labels by
 * nearest neighbour and the weight map bilinearly, with the mirror rule outside the
 * source. One thread per output pixel. */
#include "common.cuh"

static __global__ void
warp_kernel (const float *image, int channels, const uint8_t *labels, const float *weights,
             int src_w, int src_h, UnetCudaWarp wp, float *out_image, uint8_t *out_labels,
             float *out_weights, int out_w, int out_h)
{
  UNET_GRID_LOOP (i, (size_t) out_w * out_h)
    kb_warp_pixel (image, channels, labels, weights, src_w, src_h, wp, out_image,
        out_labels, out_weights, out_w, out_h, i);
}

extern "C" int
unet_cuda_warp_sample (const float *image, int channels, const uint8_t *labels,
                       const float *weights, int src_w, int src_h, const UnetCudaWarp *warp,
                       float *out_image, uint8_t *out_labels, float *out_weights, int out_w,
                       int out_h, UnetCudaStream stream)
{
  if (src_w < 1 || src_h < 1 || out_w < 1 || out_h < 1 || channels < 1)
    return (int) cudaErrorInvalidValue;
  if (warp->grid_w != 0 && (warp->grid_w < 2 || warp->grid_w > UNET_CUDA_WARP_MAX_GRID
          || warp->grid_h < 2 || warp->grid_h > UNET_CUDA_WARP_MAX_GRID))
    return (int) cudaErrorInvalidValue;
  const size_t total = (size_t) out_w * out_h;
  warp_kernel<<<grid_for (total), UNET_CUDA_THREADS, 0, (cudaStream_t) stream>>> (image,
      channels, labels, weights, src_w, src_h, *warp, out_image, out_labels, out_weights,
      out_w, out_h);
  return launch_status ();
}

/* ----------------------------------------------------- augmented batch -- */

static __global__ void
augment_warp_kernel (const UnetCudaAugSample *samples, const float *grids, int n, int channels,
                     int in_w, int in_h, int out_w, int out_h, int ignore_label, float *tile,
                     uint8_t *labels, float *weights)
{
  UNET_GRID_LOOP (i, (size_t) n * in_w * in_h)
    kb_augment_pixel (samples, grids, channels, in_w, in_h, out_w, out_h, ignore_label, tile,
        labels, weights, i);
}

/* One block per tile (entry blockIdx.x): min and max of its values, then the mean of
 * the gamma'd values (kb_intensity_gamma) in double; a fixed assignment of values to
 * threads and a fixed tree make it deterministic. Entries without intensity: nothing. */
static __global__ void
augment_stats_kernel (const UnetCudaAugSample *samples, const float *tile, size_t count,
                      double *stats)
{
  __shared__ float lo_s[UNET_CUDA_THREADS], hi_s[UNET_CUDA_THREADS];
  __shared__ double sum_s[UNET_CUDA_THREADS / 32];
  const UnetCudaAugSample &s = samples[blockIdx.x];
  const float *x = tile + blockIdx.x * count;
  if (!s.intensity)
    return;
  float lo = x[0], hi = x[0];
  for (size_t i = threadIdx.x; i < count; i += blockDim.x) {
    lo = fminf (lo, x[i]);
    hi = fmaxf (hi, x[i]);
  }
  lo_s[threadIdx.x] = lo;
  hi_s[threadIdx.x] = hi;
  __syncthreads ();
  for (int half = UNET_CUDA_THREADS / 2; half > 0; half >>= 1) {
    if ((int) threadIdx.x < half) {
      lo_s[threadIdx.x] = fminf (lo_s[threadIdx.x], lo_s[threadIdx.x + half]);
      hi_s[threadIdx.x] = fmaxf (hi_s[threadIdx.x], hi_s[threadIdx.x + half]);
    }
    __syncthreads ();
  }
  lo = lo_s[0];
  hi = hi_s[0];
  const float range = (float) ((double) hi - lo);
  double sum = 0.0;
  for (size_t i = threadIdx.x; i < count; i += blockDim.x)
    sum += kb_intensity_gamma (x[i], lo, range, s.gamma);
  sum = block_sum (sum, sum_s);
  if (threadIdx.x == 0) {
    stats[3 * blockIdx.x] = lo;
    stats[3 * blockIdx.x + 1] = hi;
    stats[3 * blockIdx.x + 2] = sum / (double) count;
  }
}

template <typename T>
static __global__ void
augment_finish_kernel (const float *tile, const UnetCudaAugSample *samples,
                       const double *stats, int channels, size_t plane, size_t total, T *out)
{
  UNET_GRID_LOOP (i, total)
    kb_augment_finish_elem (tile, samples, stats, channels, plane, out, i);
}

extern "C" int
unet_cuda_augment_batch (const UnetCudaAugSample *samples, const float *grids, int n,
                         int channels, int in_w, int in_h, int out_w, int out_h,
                         int ignore_label, float *tile, double *stats, void *input,
                         UnetCudaDType dtype, uint8_t *labels, float *weights,
                         UnetCudaStream stream)
{
  if (n < 1 || channels < 1 || out_w < 1 || out_h < 1 || in_w < out_w || in_h < out_h)
    return (int) cudaErrorInvalidValue;
  const size_t plane = (size_t) in_w * in_h, total = (size_t) n * plane;
  const cudaStream_t st = (cudaStream_t) stream;
  augment_warp_kernel<<<grid_for (total), UNET_CUDA_THREADS, 0, st>>> (samples, grids, n,
      channels, in_w, in_h, out_w, out_h, ignore_label, tile, labels, weights);
  int err = launch_status ();
  if (err)
    return err;
  augment_stats_kernel<<<n, UNET_CUDA_THREADS, 0, st>>> (samples, tile, channels * plane,
      stats);
  if ((err = launch_status ()))
    return err;
  UNET_CUDA_DISPATCH (dtype, augment_finish_kernel<T><<<grid_for (total * channels),
      UNET_CUDA_THREADS, 0, st>>> (tile, samples, stats, channels, plane, total * channels,
      (T *) input));
  return launch_status ();
}
