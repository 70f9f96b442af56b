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

/* out (tiles, tile_h, tile_w, channels); one thread per output element. */
template <typename T>
static __global__ void
extract_tiles_kernel (const uint8_t *frame, UnetCudaPixel format, int width, int height,
                      size_t stride, int channels, TileOrigins origins, int n_tiles,
                      int tile_w, int tile_h, float offset, float scale,
                      const float *params, T *out)
{
  if (params != NULL) {
    offset = params[0];
    scale = params[1];
  }
  const size_t total = (size_t) n_tiles * tile_h * tile_w * channels;
  UNET_GRID_LOOP (i, total)
    kb_extract_elem (frame, format, width, height, stride, channels, origins.x, origins.y,
        tile_w, tile_h, offset, scale, out, i);
}

extern "C" int
unet_cuda_extract_tiles (const void *frame, UnetCudaPixel format, int width, int height,
                         size_t stride, int channels, const int *origin_x,
                         const int *origin_y, int n_tiles, int tile_w, int tile_h,
                         float offset, float scale, void *out, UnetCudaDType dtype,
                         UnetCudaStream stream)
{
  return unet_cuda_extract_tiles_params (frame, format, width, height, stride, channels,
      origin_x, origin_y, n_tiles, tile_w, tile_h, offset, scale, NULL, out, dtype, stream);
}

extern "C" int
unet_cuda_extract_tiles_params (const void *frame, UnetCudaPixel format, int width,
                                int height, size_t stride, int channels, const int *origin_x,
                                const int *origin_y, int n_tiles, int tile_w, int tile_h,
                                float offset, float scale, const float *params, void *out,
                                UnetCudaDType dtype, UnetCudaStream stream)
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
          channels, o, n, tile_w, tile_h, offset, scale, params,
          (T *) out + per_tile * first);
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

template <typename T>
static __global__ void
stitch_kernel (const T *logits, int out_h, int out_w, int classes, Blocks blocks, int t,
               uint8_t *labels, size_t labels_stride, float *probs, size_t probs_stride,
               int prob_class)
{
  const UnetCudaBlock b = blocks.b[t];
  UNET_GRID_LOOP (i, (size_t) b.w * b.h)
    kb_stitch_elem (logits, out_h, out_w, classes, b, t, labels, labels_stride, probs,
        probs_stride, prob_class, i);
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
  UNET_GRID_LOOP (i, (size_t) b.w * b.h)
    kb_accumulate_elem (logits, out_h, out_w, classes, b, sigma_x, sigma_y, acc, wsum,
        frame_w, frame_h, i);
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
  UNET_GRID_LOOP (i, (size_t) frame_w * frame_h)
    kb_finalize_elem (acc, wsum, frame_w, frame_h, classes, labels, labels_stride, probs,
        probs_stride, prob_class, i);
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
  UNET_GRID_LOOP (i, (size_t) width * height)
    atomicAdd (&hist[kb_hist_bin (frame, format, width, stride, channels, i)], 1u);
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
  UNET_GRID_LOOP (i, total) {
    const int x = (int) (i % width), y = (int) (i / width);
    const double v = kb_load_pixel (frame + (size_t) y * stride, format, x * channels);
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

/* One block: per-chunk totals of the histogram in shared memory, then thread 0 finds
 * the two order statistics (kb_percentile_params). */
#define PERCENTILE_CHUNKS UNET_CUDA_THREADS

static __global__ void
percentile_params_kernel (const uint32_t *hist, int bins, uint64_t n, double p_lo,
                          double p_hi, float *params)
{
  __shared__ uint64_t chunk_sum[PERCENTILE_CHUNKS];
  const int chunk = bins / PERCENTILE_CHUNKS;
  uint64_t s = 0;
  for (int v = threadIdx.x * chunk; v < (int) (threadIdx.x + 1) * chunk; v++)
    s += hist[v];
  chunk_sum[threadIdx.x] = s;
  __syncthreads ();
  if (threadIdx.x == 0)
    kb_percentile_params (hist, chunk_sum, PERCENTILE_CHUNKS, chunk, n, p_lo, p_hi, params);
}

extern "C" int
unet_cuda_percentile_params (const uint32_t *hist, int bins, uint64_t n, double p_lo,
                             double p_hi, float *params, UnetCudaStream stream)
{
  if ((bins != 256 && bins != 65536) || n < 1)
    return (int) cudaErrorInvalidValue;
  percentile_params_kernel<<<1, PERCENTILE_CHUNKS, 0, (cudaStream_t) stream>>> (hist, bins, n,
      p_lo, p_hi, params);
  return launch_status ();
}

static __global__ void
moments_params_kernel (const double *sums, uint64_t n, float *params)
{
  kb_moments_params (sums, n, params);
}

extern "C" int
unet_cuda_moments_params (const double *sums, uint64_t n, float *params,
                          UnetCudaStream stream)
{
  if (n < 1)
    return (int) cudaErrorInvalidValue;
  moments_params_kernel<<<1, 1, 0, (cudaStream_t) stream>>> (sums, n, params);
  return launch_status ();
}
