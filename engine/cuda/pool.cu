/* gst-unet CUDA backend — 2x2 max pooling (forward with the winning positions,
 * backward routing through them) and the decoder's crop + concat with its backward.
 * NHWC activations. */
#include "common.cuh"

/* y (n, h/2, w/2, c): one thread per output element. */
template <typename T>
static __global__ void
maxpool_forward_kernel (const T *x, T *y, uint8_t *argmax, int n, int h, int w, int c)
{
  const int oh = h / 2, ow = w / 2;
  const size_t total = (size_t) n * oh * ow * c;
  for (size_t i = blockIdx.x * (size_t) blockDim.x + threadIdx.x; i < total;
       i += (size_t) gridDim.x * blockDim.x) {
    const int ch = (int) (i % c);
    size_t r = i / c;
    const int ox = (int) (r % ow);
    r /= ow;
    const int oy = (int) (r % oh);
    const int b = (int) (r / oh);
    const T *p = x + (((size_t) b * h + oy * 2) * w + ox * 2) * c + ch;
    const float v[4] = { to_f32 (p[0]), to_f32 (p[c]), to_f32 (p[(size_t) w * c]),
      to_f32 (p[(size_t) w * c + c]) };
    int arg = 0;
    /* strict '>' keeps the first maximum; NaN propagates like PyTorch's max pooling */
    for (int k = 1; k < 4; k++)
      if (v[k] > v[arg] || isnan (v[k]))
        arg = isnan (v[arg]) ? arg : k;
    y[i] = p[(arg >> 1) * (size_t) w * c + (arg & 1) * c];
    if (argmax)
      argmax[i] = (uint8_t) arg;
  }
}

extern "C" int
unet_cuda_maxpool_forward (const void *x, void *y, uint8_t *argmax, UnetCudaDType dtype,
                           int n, int h, int w, int c, UnetCudaStream stream)
{
  if (h < 2 || w < 2 || c < 1 || n < 1)
    return (int) cudaErrorInvalidValue;
  const size_t total = (size_t) n * (h / 2) * (w / 2) * c;
  UNET_CUDA_DISPATCH (dtype, maxpool_forward_kernel<T><<<grid_for (total), UNET_CUDA_THREADS,
      0, (cudaStream_t) stream>>> ((const T *) x, (T *) y, argmax, n, h, w, c));
  return launch_status ();
}

/* dx (n, h, w, c): one thread per input element (a gather, no atomics). Rows/columns
 * beyond 2 * (h/2) never won and get 0. */
template <typename T>
static __global__ void
maxpool_backward_kernel (const T *dy, const uint8_t *argmax, T *dx, int n, int h, int w,
                         int c, int accumulate)
{
  const int oh = h / 2, ow = w / 2;
  const size_t total = (size_t) n * h * w * c;
  for (size_t i = blockIdx.x * (size_t) blockDim.x + threadIdx.x; i < total;
       i += (size_t) gridDim.x * blockDim.x) {
    const int ch = (int) (i % c);
    size_t r = i / c;
    const int x = (int) (r % w);
    r /= w;
    const int y = (int) (r % h);
    const int b = (int) (r / h);
    float g = 0.0f;
    if (y / 2 < oh && x / 2 < ow) {
      const size_t o = (((size_t) b * oh + y / 2) * ow + x / 2) * c + ch;
      if (argmax[o] == (uint8_t) ((y & 1) * 2 + (x & 1)))
        g = to_f32 (dy[o]);
    }
    dx[i] = from_f32<T> (accumulate ? to_f32 (dx[i]) + g : g);
  }
}

extern "C" int
unet_cuda_maxpool_backward (const void *dy, const uint8_t *argmax, void *dx,
                            UnetCudaDType dtype, int n, int h, int w, int c, int accumulate,
                            UnetCudaStream stream)
{
  if (h < 2 || w < 2 || c < 1 || n < 1)
    return (int) cudaErrorInvalidValue;
  const size_t total = (size_t) n * h * w * c;
  UNET_CUDA_DISPATCH (dtype, maxpool_backward_kernel<T><<<grid_for (total),
      UNET_CUDA_THREADS, 0, (cudaStream_t) stream>>> ((const T *) dy, argmax, (T *) dx, n,
      h, w, c, accumulate));
  return launch_status ();
}

/* out (n, h, w, ca + cb): one thread per output element. */
template <typename T>
static __global__ void
crop_concat_kernel (const T *a, int ha, int wa, int ca, int off_y, int off_x, const T *b,
                    int cb, T *out, int n, int h, int w)
{
  const int cc = ca + cb;
  const size_t total = (size_t) n * h * w * cc;
  for (size_t i = blockIdx.x * (size_t) blockDim.x + threadIdx.x; i < total;
       i += (size_t) gridDim.x * blockDim.x) {
    const int ch = (int) (i % cc);
    size_t r = i / cc;
    const int x = (int) (r % w);
    r /= w;
    const int y = (int) (r % h);
    const int bi = (int) (r / h);
    if (ch < ca)
      out[i] = a[(((size_t) bi * ha + y + off_y) * wa + x + off_x) * ca + ch];
    else
      out[i] = b[(((size_t) bi * h + y) * w + x) * cb + ch - ca];
  }
}

extern "C" int
unet_cuda_crop_concat (const void *a, int ha, int wa, int ca, int off_y, int off_x,
                       const void *b, int cb, void *out, UnetCudaDType dtype, int n, int h,
                       int w, UnetCudaStream stream)
{
  if (off_y < 0 || off_x < 0 || off_y + h > ha || off_x + w > wa || ca < 1 || cb < 1)
    return (int) cudaErrorInvalidValue;
  const size_t total = (size_t) n * h * w * (ca + cb);
  UNET_CUDA_DISPATCH (dtype, crop_concat_kernel<T><<<grid_for (total), UNET_CUDA_THREADS, 0,
      (cudaStream_t) stream>>> ((const T *) a, ha, wa, ca, off_y, off_x, (const T *) b, cb,
      (T *) out, n, h, w));
  return launch_status ();
}

/* One thread per element of dout: the crop window maps one-to-one into da, so the
 * additions never collide. */
template <typename T>
static __global__ void
crop_concat_backward_kernel (const T *dout, T *da, int ha, int wa, int ca, int off_y,
                             int off_x, T *db, int cb, int n, int h, int w)
{
  const int cc = ca + cb;
  const size_t total = (size_t) n * h * w * cc;
  for (size_t i = blockIdx.x * (size_t) blockDim.x + threadIdx.x; i < total;
       i += (size_t) gridDim.x * blockDim.x) {
    const int ch = (int) (i % cc);
    size_t r = i / cc;
    const int x = (int) (r % w);
    r /= w;
    const int y = (int) (r % h);
    const int bi = (int) (r / h);
    if (ch < ca) {
      T *p = da + (((size_t) bi * ha + y + off_y) * wa + x + off_x) * ca + ch;
      *p = from_f32<T> (to_f32 (*p) + to_f32 (dout[i]));
    } else {
      db[(((size_t) bi * h + y) * w + x) * cb + ch - ca] = dout[i];
    }
  }
}

extern "C" int
unet_cuda_crop_concat_backward (const void *dout, void *da, int ha, int wa, int ca,
                                int off_y, int off_x, void *db, int cb, UnetCudaDType dtype,
                                int n, int h, int w, UnetCudaStream stream)
{
  if (off_y < 0 || off_x < 0 || off_y + h > ha || off_x + w > wa || ca < 1 || cb < 1)
    return (int) cudaErrorInvalidValue;
  const size_t total = (size_t) n * h * w * (ca + cb);
  UNET_CUDA_DISPATCH (dtype, crop_concat_backward_kernel<T><<<grid_for (total),
      UNET_CUDA_THREADS, 0, (cudaStream_t) stream>>> ((const T *) dout, (T *) da, ha, wa, ca,
      off_y, off_x, (T *) db, cb, n, h, w));
  return launch_status ();
}
