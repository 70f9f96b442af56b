/* gst-unet CUDA backend — the elastic deformation of a training sample in one pass:
 * affine part (rotation, flip, patch origin) plus a smooth displacement field
 * interpolated from a coarse grid, sampling the image bicubically, the labels by
 * nearest neighbour and the weight map bilinearly, with the mirror rule outside the
 * source. One thread per output pixel. */
#include "common.cuh"

/* Catmull-Rom weights for fractional position t in [0, 1) of samples -1, 0, 1, 2. */
static __device__ __forceinline__ void
cubic_weights (float t, float w[4])
{
  const float t2 = t * t, t3 = t2 * t;
  w[0] = 0.5f * (-t3 + 2.0f * t2 - t);
  w[1] = 0.5f * (3.0f * t3 - 5.0f * t2 + 2.0f);
  w[2] = 0.5f * (-3.0f * t3 + 4.0f * t2 + t);
  w[3] = 0.5f * (t3 - t2);
}

/* Displacement grid lookup with clamped (edge-repeating) indices: the grid covers
 * the patch exactly, so clamping only affects the cubic's outer taps at the ends. */
static __device__ __forceinline__ float2
grid_displacement (const UnetCudaWarp &wp, float x, float y, int out_w, int out_h)
{
  const float gx = out_w > 1 ? x * (wp.grid_w - 1) / (float) (out_w - 1) : 0.0f;
  const float gy = out_h > 1 ? y * (wp.grid_h - 1) / (float) (out_h - 1) : 0.0f;
  const int ix = (int) floorf (gx), iy = (int) floorf (gy);
  float wx[4], wy[4];
  cubic_weights (gx - ix, wx);
  cubic_weights (gy - iy, wy);
  float dx = 0.0f, dy = 0.0f;
  for (int j = 0; j < 4; j++) {
    const int yy = min (max (iy - 1 + j, 0), wp.grid_h - 1);
    for (int i = 0; i < 4; i++) {
      const int xx = min (max (ix - 1 + i, 0), wp.grid_w - 1);
      const float w = wx[i] * wy[j];
      dx += w * wp.grid[(yy * wp.grid_w + xx) * 2];
      dy += w * wp.grid[(yy * wp.grid_w + xx) * 2 + 1];
    }
  }
  return make_float2 (dx, dy);
}

static __global__ void
warp_kernel (const float *image, int channels, const uint8_t *labels, const float *weights,
             int src_w, int src_h, UnetCudaWarp wp, float *out_image, uint8_t *out_labels,
             float *out_weights, int out_w, int out_h)
{
  const size_t total = (size_t) out_w * out_h;
  const size_t src_plane = (size_t) src_w * src_h;
  for (size_t i = blockIdx.x * (size_t) blockDim.x + threadIdx.x; i < total;
       i += (size_t) gridDim.x * blockDim.x) {
    const int x = (int) (i % out_w), y = (int) (i / out_w);
    float sx = wp.affine[0] * x + wp.affine[1] * y + wp.affine[2];
    float sy = wp.affine[3] * x + wp.affine[4] * y + wp.affine[5];
    if (wp.grid_w >= 2 && wp.grid_h >= 2) {
      const float2 d = grid_displacement (wp, (float) x, (float) y, out_w, out_h);
      sx += d.x;
      sy += d.y;
    }
    const int ix = (int) floorf (sx), iy = (int) floorf (sy);
    const float fx = sx - ix, fy = sy - iy;
    if (image && out_image) {
      float wx[4], wy[4];
      cubic_weights (fx, wx);
      cubic_weights (fy, wy);
      int xs[4], ys[4];
      for (int k = 0; k < 4; k++) {
        xs[k] = mirror_index (ix - 1 + k, src_w);
        ys[k] = mirror_index (iy - 1 + k, src_h);
      }
      for (int c = 0; c < channels; c++) {
        const float *plane = image + c * src_plane;
        float v = 0.0f;
        for (int j = 0; j < 4; j++) {
          float row = 0.0f;
          for (int k = 0; k < 4; k++)
            row += wx[k] * plane[(size_t) ys[j] * src_w + xs[k]];
          v += wy[j] * row;
        }
        out_image[c * total + i] = v;
      }
    }
    if (labels && out_labels) {
      /* nearest: round half up, the same as floor (s + 0.5) */
      const int nx = mirror_index ((int) floorf (sx + 0.5f), src_w);
      const int ny = mirror_index ((int) floorf (sy + 0.5f), src_h);
      out_labels[i] = labels[(size_t) ny * src_w + nx];
    }
    if (weights && out_weights) {
      const int x0 = mirror_index (ix, src_w), x1 = mirror_index (ix + 1, src_w);
      const int y0 = mirror_index (iy, src_h), y1 = mirror_index (iy + 1, src_h);
      const float top = (1.0f - fx) * weights[(size_t) y0 * src_w + x0]
          + fx * weights[(size_t) y0 * src_w + x1];
      const float bottom = (1.0f - fx) * weights[(size_t) y1 * src_w + x0]
          + fx * weights[(size_t) y1 * src_w + x1];
      out_weights[i] = (1.0f - fy) * top + fy * bottom;
    }
  }
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
