/* gst-unet CUDA backend — elementwise and per-channel ops around the cuDNN
 * convolutions: layout/precision conversion, bias + ReLU, ReLU backward, bias
 * gradients, batch norm (frozen and training), dropout, tensor add. All on NHWC
 * activations, so the channel of element i is i % channels. */
#include "common.cuh"

template <typename T>
static __global__ void
nchw_to_nhwc_kernel (const float *src, T *dst, int n, int c, int h, int w)
{
  UNET_GRID_LOOP (i, (size_t) n * c * h * w)
    kb_nchw_to_nhwc_elem (src, dst, c, h, w, i);
}

template <typename T>
static __global__ void
nhwc_to_nchw_kernel (const T *src, float *dst, int n, int c, int h, int w)
{
  UNET_GRID_LOOP (i, (size_t) n * c * h * w)
    kb_nhwc_to_nchw_elem (src, dst, c, h, w, i);
}

extern "C" int
unet_cuda_nchw_to_nhwc (const float *src, void *dst, UnetCudaDType dtype, int n, int c,
                        int h, int w, UnetCudaStream stream)
{
  const size_t total = (size_t) n * c * h * w;
  UNET_CUDA_DISPATCH (dtype, nchw_to_nhwc_kernel<T><<<grid_for (total), UNET_CUDA_THREADS,
      0, (cudaStream_t) stream>>> (src, (T *) dst, n, c, h, w));
  return launch_status ();
}

extern "C" int
unet_cuda_nhwc_to_nchw (const void *src, UnetCudaDType dtype, float *dst, int n, int c,
                        int h, int w, UnetCudaStream stream)
{
  const size_t total = (size_t) n * c * h * w;
  UNET_CUDA_DISPATCH (dtype, nhwc_to_nchw_kernel<T><<<grid_for (total), UNET_CUDA_THREADS,
      0, (cudaStream_t) stream>>> ((const T *) src, dst, n, c, h, w));
  return launch_status ();
}

template <typename S, typename D>
static __global__ void
cast_kernel (const S *src, D *dst, size_t count)
{
  UNET_GRID_LOOP (i, count)
    kb_cast_elem (src, dst, i);
}

extern "C" int
unet_cuda_cast_from_f32 (const float *src, void *dst, UnetCudaDType dtype, size_t count,
                         UnetCudaStream stream)
{
  UNET_CUDA_DISPATCH (dtype, cast_kernel<float, T><<<grid_for (count), UNET_CUDA_THREADS, 0,
      (cudaStream_t) stream>>> (src, (T *) dst, count));
  return launch_status ();
}

extern "C" int
unet_cuda_cast_to_f32 (const void *src, UnetCudaDType dtype, float *dst, size_t count,
                       UnetCudaStream stream)
{
  UNET_CUDA_DISPATCH (dtype, cast_kernel<T, float><<<grid_for (count), UNET_CUDA_THREADS, 0,
      (cudaStream_t) stream>>> ((const T *) src, dst, count));
  return launch_status ();
}

template <typename T>
static __global__ void
bias_act_kernel (const T *x, T *y, const float *bias, size_t count, int channels, int relu)
{
  UNET_GRID_LOOP (i, count)
    kb_bias_act_elem (x, y, bias, channels, relu, i);
}

extern "C" int
unet_cuda_bias_act (const void *x, void *y, UnetCudaDType dtype, const float *bias,
                    size_t count, int channels, int relu, UnetCudaStream stream)
{
  if (channels < 1)
    return (int) cudaErrorInvalidValue;
  UNET_CUDA_DISPATCH (dtype, bias_act_kernel<T><<<grid_for (count), UNET_CUDA_THREADS, 0,
      (cudaStream_t) stream>>> ((const T *) x, (T *) y, bias, count, channels, relu));
  return launch_status ();
}

template <typename T>
static __global__ void
relu_backward_kernel (const T *y, const T *dy, T *dx, size_t count)
{
  UNET_GRID_LOOP (i, count)
    kb_relu_backward_elem (y, dy, dx, i);
}

extern "C" int
unet_cuda_relu_backward (const void *y, const void *dy, void *dx, UnetCudaDType dtype,
                         size_t count, UnetCudaStream stream)
{
  UNET_CUDA_DISPATCH (dtype, relu_backward_kernel<T><<<grid_for (count), UNET_CUDA_THREADS,
      0, (cudaStream_t) stream>>> ((const T *) y, (const T *) dy, (T *) dx, count));
  return launch_status ();
}

/* Two column sums over a (rows, channels) matrix whose elements come from `f (r, c)`
 * (returning a KbPair: the two summands). Block b covers rows b * rpi + lane_r,
 * stepping by gridDim.x * rpi, so neighbouring threads read neighbouring channels
 * (coalesced in NHWC); each block writes its two sums per channel to partials
 * (gridDim.x, 2, channels) and a second kernel adds the blocks' partials in a fixed
 * order: no atomics, the same bits on every run. */
template <typename F>
static __device__ void
column_partials (F f, size_t rows, int channels, double *partials)
{
  __shared__ double sa[UNET_CUDA_THREADS], sb[UNET_CUDA_THREADS];
  const int wide = channels >= (int) blockDim.x;
  const int rpi = wide ? 1 : (int) blockDim.x / channels;
  const int lane_c = wide ? (int) threadIdx.x : (int) threadIdx.x % channels;
  const int lane_r = wide ? 0 : (int) threadIdx.x / channels;
  for (int c0 = 0; c0 < channels; c0 += blockDim.x) {
    const int c = c0 + lane_c;
    double a = 0.0, b = 0.0;
    if (c < channels && lane_r < rpi) {
      for (size_t r = (size_t) blockIdx.x * rpi + lane_r; r < rows;
           r += (size_t) gridDim.x * rpi) {
        const KbPair v = f (r, c);
        a += v.a;
        b += v.b;
      }
    }
    sa[threadIdx.x] = a;
    sb[threadIdx.x] = b;
    __syncthreads ();
    if (lane_r == 0 && c < channels) {
      double ta = 0.0, tb = 0.0;
      for (int k = 0; k < rpi; k++) {
        ta += sa[lane_c + k * channels];
        tb += sb[lane_c + k * channels];
      }
      partials[((size_t) blockIdx.x * 2) * channels + c] = ta;
      partials[((size_t) blockIdx.x * 2 + 1) * channels + c] = tb;
    }
    __syncthreads ();
  }
}

static __global__ void
column_final_kernel (const double *partials, int n_blocks, int channels, double *out)
{
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= channels)
    return;
  double a = 0.0, b = 0.0;
  for (int p = 0; p < n_blocks; p++) {
    a += partials[((size_t) p * 2) * channels + c];
    b += partials[((size_t) p * 2 + 1) * channels + c];
  }
  /* the final sums go after the partials: out (2, channels) */
  out[c] = a;
  out[channels + c] = b;
}

static int
column_final (double *partials, int channels, UnetCudaStream stream)
{
  column_final_kernel<<<(channels + UNET_CUDA_THREADS - 1) / UNET_CUDA_THREADS,
      UNET_CUDA_THREADS, 0, (cudaStream_t) stream>>> (partials, UNET_CUDA_REDUCE_BLOCKS,
      channels, partials + (size_t) UNET_CUDA_REDUCE_BLOCKS * 2 * channels);
  return launch_status ();
}

template <typename T>
static __global__ void
bias_grad_partial_kernel (const T *dy, size_t rows, int channels, double *partials)
{
  column_partials (LoadPair<T> { dy, channels }, rows, channels, partials);
}

static __global__ void
store_sums_kernel (const double *sums, int channels, float *out, int accumulate)
{
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c < channels)
    kb_store_sum (sums, out, accumulate, c);
}

extern "C" int
unet_cuda_bias_grad (const void *dy, UnetCudaDType dtype, size_t rows, int channels,
                     float *db, int accumulate, double *partials, UnetCudaStream stream)
{
  if (channels < 1)
    return (int) cudaErrorInvalidValue;
  UNET_CUDA_DISPATCH (dtype, bias_grad_partial_kernel<T><<<UNET_CUDA_REDUCE_BLOCKS,
      UNET_CUDA_THREADS, 0, (cudaStream_t) stream>>> ((const T *) dy, rows, channels,
      partials));
  int err = launch_status ();
  if (err || (err = column_final (partials, channels, stream)))
    return err;
  store_sums_kernel<<<(channels + UNET_CUDA_THREADS - 1) / UNET_CUDA_THREADS,
      UNET_CUDA_THREADS, 0, (cudaStream_t) stream>>> (partials +
      (size_t) UNET_CUDA_REDUCE_BLOCKS * 2 * channels, channels, db, accumulate);
  return launch_status ();
}

template <typename T>
static __global__ void
channel_affine_kernel (const T *x, T *y, const float *scale, const float *shift,
                       size_t count, int channels, int relu)
{
  UNET_GRID_LOOP (i, count)
    kb_channel_affine_elem (x, y, scale, shift, channels, relu, i);
}

extern "C" int
unet_cuda_channel_affine (const void *x, void *y, UnetCudaDType dtype, const float *scale,
                          const float *shift, size_t count, int channels, int relu,
                          UnetCudaStream stream)
{
  if (channels < 1)
    return (int) cudaErrorInvalidValue;
  UNET_CUDA_DISPATCH (dtype, channel_affine_kernel<T><<<grid_for (count), UNET_CUDA_THREADS,
      0, (cudaStream_t) stream>>> ((const T *) x, (T *) y, scale, shift, count, channels,
      relu));
  return launch_status ();
}

template <typename T>
static __global__ void
bn_stats_partial_kernel (const T *x, size_t rows, int channels, double *partials)
{
  column_partials (LoadMoments<T> { x, channels }, rows, channels, partials);
}

/* sums (2, channels): sum x, sum x^2 -> batch mean / invstd, running stats updated. */
static __global__ void
bn_finish_stats_kernel (const double *sums, size_t rows, int channels, float eps,
                        float momentum, float *running_mean, float *running_var,
                        float *save_mean, float *save_invstd)
{
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c < channels)
    kb_bn_finish_stats (sums, rows, channels, eps, momentum, running_mean, running_var,
        save_mean, save_invstd, c);
}

template <typename T>
static __global__ void
bn_apply_kernel (const T *x, T *y, size_t count, int channels, const float *gamma,
                 const float *beta, const float *mean, const float *invstd)
{
  UNET_GRID_LOOP (i, count)
    kb_bn_apply_elem (x, y, channels, gamma, beta, mean, invstd, i);
}

extern "C" int
unet_cuda_batchnorm_forward_train (const void *x, void *y, UnetCudaDType dtype, size_t rows,
                                   int channels, const float *gamma, const float *beta,
                                   float eps, float momentum, float *running_mean,
                                   float *running_var, float *save_mean, float *save_invstd,
                                   double *partials, UnetCudaStream stream)
{
  if (channels < 1 || rows < 1)
    return (int) cudaErrorInvalidValue;
  const size_t count = rows * channels;
  UNET_CUDA_DISPATCH (dtype, bn_stats_partial_kernel<T><<<UNET_CUDA_REDUCE_BLOCKS,
      UNET_CUDA_THREADS, 0, (cudaStream_t) stream>>> ((const T *) x, rows, channels,
      partials));
  int err = launch_status ();
  if (err || (err = column_final (partials, channels, stream)))
    return err;
  bn_finish_stats_kernel<<<(channels + UNET_CUDA_THREADS - 1) / UNET_CUDA_THREADS,
      UNET_CUDA_THREADS, 0, (cudaStream_t) stream>>> (partials +
      (size_t) UNET_CUDA_REDUCE_BLOCKS * 2 * channels, rows, channels, eps, momentum,
      running_mean, running_var, save_mean, save_invstd);
  if ((err = launch_status ()))
    return err;
  UNET_CUDA_DISPATCH (dtype, bn_apply_kernel<T><<<grid_for (count), UNET_CUDA_THREADS, 0,
      (cudaStream_t) stream>>> ((const T *) x, (T *) y, count, channels, gamma, beta,
      save_mean, save_invstd));
  return launch_status ();
}

template <typename T>
static __global__ void
bn_grad_partial_kernel (const T *x, const T *dy, const float *mean, const float *invstd,
                        size_t rows, int channels, double *partials)
{
  column_partials (LoadBnGrad<T> { x, dy, mean, invstd, channels }, rows, channels,
      partials);
}

/* dx (kb_bn_backward_elem) and, in the first `channels` threads, dgamma / dbeta. */
template <typename T>
static __global__ void
bn_backward_apply_kernel (const T *x, const T *dy, T *dx, size_t rows, int channels,
                          const float *gamma, const float *mean, const float *invstd,
                          const double *sums, float *dgamma, float *dbeta)
{
  const size_t first = blockIdx.x * (size_t) blockDim.x + threadIdx.x;
  if (first < (size_t) channels)
    kb_bn_backward_params (sums, channels, dgamma, dbeta, (int) first);
  UNET_GRID_LOOP (i, rows * channels)
    kb_bn_backward_elem (x, dy, dx, rows, channels, gamma, mean, invstd, sums, i);
}

extern "C" int
unet_cuda_batchnorm_backward (const void *x, const void *dy, void *dx, UnetCudaDType dtype,
                              size_t rows, int channels, const float *gamma,
                              const float *save_mean, const float *save_invstd,
                              float *dgamma, float *dbeta, double *partials,
                              UnetCudaStream stream)
{
  if (channels < 1 || rows < 1)
    return (int) cudaErrorInvalidValue;
  const size_t count = rows * channels;
  UNET_CUDA_DISPATCH (dtype, bn_grad_partial_kernel<T><<<UNET_CUDA_REDUCE_BLOCKS,
      UNET_CUDA_THREADS, 0, (cudaStream_t) stream>>> ((const T *) x, (const T *) dy,
      save_mean, save_invstd, rows, channels, partials));
  int err = launch_status ();
  if (err || (err = column_final (partials, channels, stream)))
    return err;
  const unsigned int grid = grid_for (count > (size_t) channels ? count : channels);
  UNET_CUDA_DISPATCH (dtype, bn_backward_apply_kernel<T><<<grid, UNET_CUDA_THREADS, 0,
      (cudaStream_t) stream>>> ((const T *) x, (const T *) dy, (T *) dx, rows, channels,
      gamma, save_mean, save_invstd, partials + (size_t) UNET_CUDA_REDUCE_BLOCKS * 2 *
      channels, dgamma, dbeta));
  return launch_status ();
}

/* kb_uniform01 is counter-based: forward and backward draw the same mask. */
template <typename T>
static __global__ void
dropout_kernel (const T *x, T *y, size_t count, float p, uint64_t seed)
{
  UNET_GRID_LOOP (i, count)
    kb_dropout_elem (x, y, p, seed, i);
}

extern "C" int
unet_cuda_dropout (const void *x, void *y, UnetCudaDType dtype, size_t count, float p,
                   uint64_t seed, UnetCudaStream stream)
{
  if (!(p >= 0.0f && p < 1.0f))
    return (int) cudaErrorInvalidValue;
  UNET_CUDA_DISPATCH (dtype, dropout_kernel<T><<<grid_for (count), UNET_CUDA_THREADS, 0,
      (cudaStream_t) stream>>> ((const T *) x, (T *) y, count, p, seed));
  return launch_status ();
}

template <typename T>
static __global__ void
add_kernel (const T *x, T *y, size_t count)
{
  UNET_GRID_LOOP (i, count)
    kb_add_elem (x, y, i);
}

extern "C" int
unet_cuda_add (const void *x, void *y, UnetCudaDType dtype, size_t count,
               UnetCudaStream stream)
{
  UNET_CUDA_DISPATCH (dtype, add_kernel<T><<<grid_for (count), UNET_CUDA_THREADS, 0,
      (cudaStream_t) stream>>> ((const T *) x, (T *) y, count));
  return launch_status ();
}

/* See unet_cuda_copy_window: one thread per destination element. */
template <typename T>
static __global__ void
copy_window_kernel (const T *src, int src_h, int src_w, int src_stride, int src_off, int y0,
                    int x0, T *dst, int dst_stride, int dst_off, int n, int h, int w, int c,
                    const float *bias)
{
  UNET_GRID_LOOP (i, (size_t) n * h * w * c)
    kb_copy_window_elem (src, src_h, src_w, src_stride, src_off, y0, x0, dst, dst_stride,
        dst_off, h, w, c, bias, i);
}

extern "C" int
unet_cuda_copy_window (const void *src, int src_h, int src_w, int src_stride, int src_off,
                       int y0, int x0, void *dst, int dst_stride, int dst_off, int n, int h,
                       int w, int c, const float *bias, UnetCudaDType dtype,
                       UnetCudaStream stream)
{
  if (y0 < 0 || x0 < 0 || y0 + h > src_h || x0 + w > src_w || c < 1
      || src_off + c > src_stride || dst_off + c > dst_stride)
    return (int) cudaErrorInvalidValue;
  const size_t total = (size_t) n * h * w * c;
  UNET_CUDA_DISPATCH (dtype, copy_window_kernel<T><<<grid_for (total), UNET_CUDA_THREADS, 0,
      (cudaStream_t) stream>>> ((const T *) src, src_h, src_w, src_stride, src_off, y0, x0,
      (T *) dst, dst_stride, dst_off, n, h, w, c, bias));
  return launch_status ();
}

/* One thread per pixel; classes is small (the head's outputs). */
template <typename T>
static __global__ void
softmax_kernel (const T *x, T *y, size_t pixels, int classes)
{
  UNET_GRID_LOOP (i, pixels)
    kb_softmax_pixel (x, y, classes, i);
}

extern "C" int
unet_cuda_softmax (const void *x, void *y, UnetCudaDType dtype, size_t pixels, int classes,
                   UnetCudaStream stream)
{
  if (classes < 1)
    return (int) cudaErrorInvalidValue;
  UNET_CUDA_DISPATCH (dtype, softmax_kernel<T><<<grid_for (pixels), UNET_CUDA_THREADS, 0,
      (cudaStream_t) stream>>> ((const T *) x, (T *) y, pixels, classes));
  return launch_status ();
}
