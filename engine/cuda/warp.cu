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
