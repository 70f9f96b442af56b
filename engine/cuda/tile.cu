/* gst-unet CUDA backend — the frame side of segmentation: mirror-extended tile
 * extraction with normalisation straight from the raw u8/u16/f32 frame, softmax /
 * sigmoid + argmax + stitching of each tile's owned block into the output frame, the
 * Gaussian blending of overlapping tiles, and the frame statistics normalisation
 * needs. A frame crosses the bus once each way; everything in between is here. */
#include "common.cuh"

extern "C" size_t
unet_cuda_dtype_size (UnetCudaDType dtype)
{
  return dtype == UNET_CUDA_F32 ? 4 : 2;
}

extern "C" int
unet_cuda_mirror_index (int i, int n)
{
  return mirror_index (i, n);
}

struct TileOrigins
{
  int x[UNET_CUDA_MAX_TILES_PER_LAUNCH];
  int y[UNET_CUDA_MAX_TILES_PER_LAUNCH];
};

static __device__ __forceinline__ float
load_pixel (const uint8_t *row, UnetCudaPixel format, int idx)
{
  switch (format) {
    case UNET_CUDA_PIXEL_U8:
      return (float) row[idx];
    case UNET_CUDA_PIXEL_U16:
      return (float) ((const uint16_t *) row)[idx];
    default:
      return ((const float *) row)[idx];
  }
}

/* out (tiles, tile_h, tile_w, channels); one thread per output element. */
template <typename T>
static __global__ void
extract_tiles_kernel (const uint8_t *frame, UnetCudaPixel format, int width, int height,
                      size_t stride, int channels, TileOrigins origins, int n_tiles,
                      int tile_w, int tile_h, float offset, float scale, T *out)
{
  const size_t total = (size_t) n_tiles * tile_h * tile_w * channels;
  for (size_t i = blockIdx.x * (size_t) blockDim.x + threadIdx.x; i < total;
       i += (size_t) gridDim.x * blockDim.x) {
    const int c = (int) (i % channels);
    size_t r = i / channels;
    const int x = (int) (r % tile_w);
    r /= tile_w;
    const int y = (int) (r % tile_h);
    const int t = (int) (r / tile_h);
    const int fx = mirror_index (origins.x[t] + x, width);
    const int fy = mirror_index (origins.y[t] + y, height);
    const float v = load_pixel (frame + (size_t) fy * stride, format, fx * channels + c);
    out[i] = from_f32<T> ((v - offset) * scale);
  }
}

extern "C" int
unet_cuda_extract_tiles (const void *frame, UnetCudaPixel format, int width, int height,
                         size_t stride, int channels, const int *origin_x,
                         const int *origin_y, int n_tiles, int tile_w, int tile_h,
                         float offset, float scale, void *out, UnetCudaDType dtype,
                         UnetCudaStream stream)
{
  if (width < 1 || height < 1 || channels < 1 || tile_w < 1 || tile_h < 1 || n_tiles < 0)
    return (int) cudaErrorInvalidValue;
  const size_t per_tile = (size_t) tile_w * tile_h * channels;
  for (int first = 0; first < n_tiles; first += UNET_CUDA_MAX_TILES_PER_LAUNCH) {
    const int n = n_tiles - first < UNET_CUDA_MAX_TILES_PER_LAUNCH ?
        n_tiles - first : UNET_CUDA_MAX_TILES_PER_LAUNCH;
    TileOrigins o;
    for (int t = 0; t < n; t++) {
      o.x[t] = origin_x[first + t];
      o.y[t] = origin_y[first + t];
    }
    const size_t total = per_tile * n;
    UNET_CUDA_DISPATCH (dtype, {
      extract_tiles_kernel<T><<<grid_for (total), UNET_CUDA_THREADS, 0,
          (cudaStream_t) stream>>> ((const uint8_t *) frame, format, width, height, stride,
          channels, o, n, tile_w, tile_h, offset, scale, (T *) out + per_tile * first);
    });
    int err = launch_status ();
    if (err)
      return err;
  }
  return 0;
}

struct Blocks
{
  UnetCudaBlock b[UNET_CUDA_MAX_TILES_PER_LAUNCH];
};

/* Probabilities of one pixel's logits z (classes) into p; returns the argmax. */
template <typename T>
static __device__ __forceinline__ int
pixel_probs (const T *z, int classes, int prob_class, float *p_out)
{
  if (classes == 1) {
    const float p = 1.0f / (1.0f + __expf (-to_f32 (z[0])));
    *p_out = p;
    return p >= 0.5f ? 1 : 0;
  }
  float zmax = to_f32 (z[0]);
  int arg = 0;
  for (int k = 1; k < classes; k++) {
    const float v = to_f32 (z[k]);
    if (v > zmax) {
      zmax = v;
      arg = k;
    }
  }
  float sum = 0.0f;
  for (int k = 0; k < classes; k++)
    sum += __expf (to_f32 (z[k]) - zmax);
  *p_out = __expf (to_f32 (z[prob_class]) - zmax) / sum;
  return arg;
}

template <typename T>
static __global__ void
stitch_kernel (const T *logits, int out_h, int out_w, int classes, Blocks blocks, int t,
               uint8_t *labels, size_t labels_stride, float *probs, size_t probs_stride,
               int prob_class)
{
  const UnetCudaBlock b = blocks.b[t];
  const size_t total = (size_t) b.w * b.h;
  for (size_t i = blockIdx.x * (size_t) blockDim.x + threadIdx.x; i < total;
       i += (size_t) gridDim.x * blockDim.x) {
    const int x = (int) (i % b.w), y = (int) (i / b.w);
    const T *z = logits + (((size_t) t * out_h + b.src_y + y) * out_w + b.src_x + x) * classes;
    float p;
    const int arg = pixel_probs (z, classes, prob_class, &p);
    if (labels)
      labels[(size_t) (b.dst_y + y) * labels_stride + b.dst_x + x] = (uint8_t) arg;
    if (probs)
      *(float *) ((uint8_t *) probs + (size_t) (b.dst_y + y) * probs_stride +
          (size_t) (b.dst_x + x) * 4) = p;
  }
}

extern "C" int
unet_cuda_stitch_blocks (const void *logits, UnetCudaDType dtype, int n_tiles, int out_h,
                         int out_w, int classes, const UnetCudaBlock *blocks,
                         uint8_t *labels, size_t labels_stride, float *probs,
                         size_t probs_stride, int prob_class, UnetCudaStream stream)
{
  if (classes < 1 || prob_class < 0 || prob_class >= classes)
    return (int) cudaErrorInvalidValue;
  const size_t per_tile = (size_t) out_h * out_w * classes;
  for (int first = 0; first < n_tiles; first += UNET_CUDA_MAX_TILES_PER_LAUNCH) {
    const int n = n_tiles - first < UNET_CUDA_MAX_TILES_PER_LAUNCH ?
        n_tiles - first : UNET_CUDA_MAX_TILES_PER_LAUNCH;
    Blocks bl;
    for (int t = 0; t < n; t++)
      bl.b[t] = blocks[first + t];
    /* One launch per tile: owned blocks never overlap, so these could run together,
     * but per-tile launches keep the index arithmetic simple and cost microseconds. */
    for (int t = 0; t < n; t++) {
      const size_t total = (size_t) bl.b[t].w * bl.b[t].h;
      if (total == 0)
        continue;
      UNET_CUDA_DISPATCH (dtype, {
        stitch_kernel<T><<<grid_for (total), UNET_CUDA_THREADS, 0, (cudaStream_t) stream>>>
            ((const T *) logits + per_tile * first, out_h, out_w, classes, bl, t, labels,
            labels_stride, probs, probs_stride, prob_class);
      });
      int err = launch_status ();
      if (err)
        return err;
    }
  }
  return 0;
}

template <typename T>
static __global__ void
accumulate_kernel (const T *logits, int out_h, int out_w, int classes, UnetCudaBlock b,
                   float sigma_x, float sigma_y, float *acc, float *wsum, int frame_w,
                   int frame_h)
{
  const size_t total = (size_t) b.w * b.h;
  const size_t plane = (size_t) frame_w * frame_h;
  for (size_t i = blockIdx.x * (size_t) blockDim.x + threadIdx.x; i < total;
       i += (size_t) gridDim.x * blockDim.x) {
    const int x = (int) (i % b.w), y = (int) (i / b.w);
    const int tx = b.src_x + x, ty = b.src_y + y;
    const float dx = tx - 0.5f * (out_w - 1), dy = ty - 0.5f * (out_h - 1);
    const float wgt = __expf (-dx * dx / (2.0f * sigma_x * sigma_x)
        - dy * dy / (2.0f * sigma_y * sigma_y));
    const T *z = logits + ((size_t) ty * out_w + tx) * classes;
    const size_t o = (size_t) (b.dst_y + y) * frame_w + b.dst_x + x;
    if (classes == 1) {
      acc[o] += wgt / (1.0f + __expf (-to_f32 (z[0])));
    } else {
      float zmax = to_f32 (z[0]);
      for (int k = 1; k < classes; k++)
        zmax = fmaxf (zmax, to_f32 (z[k]));
      float sum = 0.0f;
      for (int k = 0; k < classes; k++)
        sum += __expf (to_f32 (z[k]) - zmax);
      for (int k = 0; k < classes; k++)
        acc[k * plane + o] += wgt * __expf (to_f32 (z[k]) - zmax) / sum;
    }
    wsum[o] += wgt;
  }
}

extern "C" int
unet_cuda_accumulate_blocks (const void *logits, UnetCudaDType dtype, int n_tiles,
                             int out_h, int out_w, int classes,
                             const UnetCudaBlock *blocks, float sigma_frac, float *acc,
                             float *wsum, int frame_w, int frame_h, UnetCudaStream stream)
{
  if (classes < 1 || sigma_frac <= 0.0f)
    return (int) cudaErrorInvalidValue;
  const size_t per_tile = (size_t) out_h * out_w * classes;
  for (int t = 0; t < n_tiles; t++) {
    const size_t total = (size_t) blocks[t].w * blocks[t].h;
    if (total == 0)
      continue;
    UNET_CUDA_DISPATCH (dtype, {
      accumulate_kernel<T><<<grid_for (total), UNET_CUDA_THREADS, 0, (cudaStream_t) stream>>>
          ((const T *) logits + per_tile * t, out_h, out_w, classes, blocks[t],
          sigma_frac * out_w, sigma_frac * out_h, acc, wsum, frame_w, frame_h);
    });
    int err = launch_status ();
    if (err)
      return err;
  }
  return 0;
}

static __global__ void
finalize_kernel (const float *acc, const float *wsum, int frame_w, int frame_h, int classes,
                 uint8_t *labels, size_t labels_stride, float *probs, size_t probs_stride,
                 int prob_class)
{
  const size_t plane = (size_t) frame_w * frame_h;
  for (size_t i = blockIdx.x * (size_t) blockDim.x + threadIdx.x; i < plane;
       i += (size_t) gridDim.x * blockDim.x) {
    const int x = (int) (i % frame_w), y = (int) (i / frame_w);
    const float inv = wsum[i] > 0.0f ? 1.0f / wsum[i] : 0.0f;
    int arg;
    if (classes == 1) {
      arg = acc[i] * inv >= 0.5f ? 1 : 0;
    } else {
      arg = 0;
      float best = acc[i];
      for (int k = 1; k < classes; k++) {
        if (acc[k * plane + i] > best) {
          best = acc[k * plane + i];
          arg = k;
        }
      }
    }
    if (labels)
      labels[(size_t) y * labels_stride + x] = (uint8_t) arg;
    if (probs)
      *(float *) ((uint8_t *) probs + (size_t) y * probs_stride + (size_t) x * 4) =
          acc[(size_t) prob_class * plane + i] * inv;
  }
}

extern "C" int
unet_cuda_finalize_blend (const float *acc, const float *wsum, int frame_w, int frame_h,
                          int classes, uint8_t *labels, size_t labels_stride, float *probs,
                          size_t probs_stride, int prob_class, UnetCudaStream stream)
{
  if (classes < 1 || prob_class < 0 || prob_class >= classes)
    return (int) cudaErrorInvalidValue;
  const size_t plane = (size_t) frame_w * frame_h;
  finalize_kernel<<<grid_for (plane), UNET_CUDA_THREADS, 0, (cudaStream_t) stream>>> (acc,
      wsum, frame_w, frame_h, classes, labels, labels_stride, probs, probs_stride,
      prob_class);
  return launch_status ();
}

static __global__ void
histogram_kernel (const uint8_t *frame, UnetCudaPixel format, int width, int height,
                  size_t stride, int channels, uint32_t *hist)
{
  const size_t total = (size_t) width * height;
  for (size_t i = blockIdx.x * (size_t) blockDim.x + threadIdx.x; i < total;
       i += (size_t) gridDim.x * blockDim.x) {
    const int x = (int) (i % width), y = (int) (i / width);
    const uint8_t *row = frame + (size_t) y * stride;
    const unsigned int v = format == UNET_CUDA_PIXEL_U8 ? row[x * channels] :
        ((const uint16_t *) row)[x * channels];
    atomicAdd (&hist[v], 1u);
  }
}

extern "C" int
unet_cuda_histogram (const void *frame, UnetCudaPixel format, int width, int height,
                     size_t stride, int channels, uint32_t *hist, UnetCudaStream stream)
{
  if (format == UNET_CUDA_PIXEL_F32 || width < 1 || height < 1)
    return (int) cudaErrorInvalidValue;
  histogram_kernel<<<grid_for ((size_t) width * height), UNET_CUDA_THREADS, 0,
      (cudaStream_t) stream>>> ((const uint8_t *) frame, format, width, height, stride,
      channels, hist);
  return launch_status ();
}

static __global__ void
moments_partial_kernel (const uint8_t *frame, UnetCudaPixel format, int width, int height,
                        size_t stride, int channels, double *partials)
{
  __shared__ double shared[UNET_CUDA_THREADS / 32];
  const size_t total = (size_t) width * height;
  double s = 0.0, s2 = 0.0;
  for (size_t i = blockIdx.x * (size_t) blockDim.x + threadIdx.x; i < total;
       i += (size_t) gridDim.x * blockDim.x) {
    const int x = (int) (i % width), y = (int) (i / width);
    const double v = load_pixel (frame + (size_t) y * stride, format, x * channels);
    s += v;
    s2 += v * v;
  }
  s = block_sum (s, shared);
  s2 = block_sum (s2, shared);
  if (threadIdx.x == 0) {
    partials[blockIdx.x * 2] = s;
    partials[blockIdx.x * 2 + 1] = s2;
  }
}

/* Sums `n` pairs of partials in a fixed order (deterministic). */
static __global__ void
sum_pairs_kernel (const double *partials, int n, double *out)
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
unet_cuda_frame_moments (const void *frame, UnetCudaPixel format, int width, int height,
                         size_t stride, int channels, double *partials, double *sums,
                         UnetCudaStream stream)
{
  if (width < 1 || height < 1)
    return (int) cudaErrorInvalidValue;
  moments_partial_kernel<<<UNET_CUDA_REDUCE_BLOCKS, UNET_CUDA_THREADS, 0,
      (cudaStream_t) stream>>> ((const uint8_t *) frame, format, width, height, stride,
      channels, partials);
  int err = launch_status ();
  if (err)
    return err;
  sum_pairs_kernel<<<1, UNET_CUDA_THREADS, 0, (cudaStream_t) stream>>> (partials,
      UNET_CUDA_REDUCE_BLOCKS, sums);
  return launch_status ();
}
