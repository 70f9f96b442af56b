/* gst-unet CUDA backend — 2x2 max pooling (forward with the winning positions,
 * backward routing through them) and the decoder's crop + concat with its backward.
 * NHWC activations. */
#include "common.cuh"

/* y (n, h/2, w/2, c): one thread per output element. */
template <typename T>
static __global__ void
maxpool_forward_kernel (const T *x, T *y, uint8_t *argmax, int n, int h, int w, int c)
{
  UNET_GRID_LOOP (i, (size_t) n * (h / 2) * (w / 2) * c)
    kb_maxpool_forward_elem (x, y, argmax, h, w, c, i);
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

/* dx (n, h, w, c): one thread per input element (a gather, no atomics). */
template <typename T>
static __global__ void
maxpool_backward_kernel (const T *dy, const uint8_t *argmax, T *dx, int n, int h, int w,
                         int c, int accumulate)
{
  UNET_GRID_LOOP (i, (size_t) n * h * w * c)
    kb_maxpool_backward_elem (dy, argmax, dx, h, w, c, accumulate, i);
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
  UNET_GRID_LOOP (i, (size_t) n * h * w * (ca + cb))
    kb_crop_concat_elem (a, ha, wa, ca, off_y, off_x, b, cb, out, h, w, i);
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
  UNET_GRID_LOOP (i, (size_t) n * h * w * (ca + cb))
    kb_crop_concat_backward_elem (dout, da, ha, wa, ca, off_y, off_x, db, cb, h, w, i);
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

/* dst window += src: one thread per element of src (the window maps one-to-one). */
template <typename T>
static __global__ void
window_add_kernel (const T *src, int src_stride, int src_off, T *dst, int dst_h, int dst_w,
                   int dst_stride, int dst_off, int y0, int x0, int n, int h, int w, int c)
{
  UNET_GRID_LOOP (i, (size_t) n * h * w * c)
    kb_window_add_elem (src, src_stride, src_off, dst, dst_h, dst_w, dst_stride, dst_off, y0,
        x0, h, w, c, i);
}

extern "C" int
unet_cuda_window_add (const void *src, int src_stride, int src_off, void *dst, int dst_h,
                      int dst_w, int dst_stride, int dst_off, int y0, int x0, int n, int h,
                      int w, int c, UnetCudaDType dtype, UnetCudaStream stream)
{
  if (y0 < 0 || x0 < 0 || y0 + h > dst_h || x0 + w > dst_w || n < 1 || h < 1 || w < 1
      || c < 1 || src_off < 0 || dst_off < 0 || src_off + c > src_stride
      || dst_off + c > dst_stride)
    return (int) cudaErrorInvalidValue;
  const size_t total = (size_t) n * h * w * c;
  UNET_CUDA_DISPATCH (dtype, window_add_kernel<T><<<grid_for (total), UNET_CUDA_THREADS, 0,
      (cudaStream_t) stream>>> ((const T *) src, src_stride, src_off, (T *) dst, dst_h, dst_w,
      dst_stride, dst_off, y0, x0, n, h, w, c));
  return launch_status ();
}
