/* gst-unet CUDA backend — the per-element bodies of the hand-written kernels.
 *
 * Every kernel in the .cu files is a grid-stride loop (or a per-channel / per-pixel
 * loop) around one of the functions below. They are __host__ __device__ so the same
 * index math and arithmetic run in two places: on the GPU inside the kernels, and on
 * the CPU in the unit tests (tests/engine/test-cuda-bodies.cc, compiled by the host
 * C++ compiler without nvcc) and the host frame "device" of the segmenter tests,
 * which loop over whole grids and compare with the CPU backend and training code.
 * Nothing here may be copied into CPU code: include this header instead.
 *
 * C++ only (templates over the element type). Under nvcc the element types are
 * float, __half and __nv_bfloat16; the host compiler sees float only, and the 16-bit
 * types too with UNET_KB_HOST_16BIT (CUDA's headers needed, no nvcc). __expf /
 * __logf (the GPU's fast intrinsics) become expf / logf on the host: the index math
 * is exact, the transcendental results agree to a few ulp. */
#pragma once

#ifndef __cplusplus
#error "kernel-bodies.h is C++ (CUDA or host)"
#endif

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "cuda-kernels.h"
/* the optimiser's per-element arithmetic, shared with the host (__host__ __device__
 * under nvcc) */
#include "../optim-elem.h"

#ifdef __CUDACC__
#define UNET_HD __host__ __device__ __forceinline__
#else
#define UNET_HD inline
#endif
/* The 16-bit types: always under nvcc; on the host with UNET_KB_HOST_16BIT (CUDA's
 * headers compile with the host compiler; tests/engine/test-cuda-bodies-16bit). */
#if defined(__CUDACC__) || defined(UNET_KB_HOST_16BIT)
#define UNET_KB_16BIT 1
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#endif

/* ------------------------------------------------------- element types -- */

static UNET_HD float to_f32 (float v) { return v; }
template <typename T> static UNET_HD T from_f32 (float v);
template <> UNET_HD float from_f32<float> (float v) { return v; }
#ifdef UNET_KB_16BIT
static UNET_HD float to_f32 (__half v) { return __half2float (v); }
static UNET_HD float to_f32 (__nv_bfloat16 v) { return __bfloat162float (v); }
template <> UNET_HD __half from_f32<__half> (float v) { return __float2half_rn (v); }
template <> UNET_HD __nv_bfloat16 from_f32<__nv_bfloat16> (float v)
{
  return __float2bfloat16_rn (v);
}
#endif

/* The GPU's fast exp/log; their host shims. */
static UNET_HD float
kb_expf (float x)
{
#ifdef __CUDA_ARCH__
  return __expf (x);
#else
  return expf (x);
#endif
}

static UNET_HD float
kb_logf (float x)
{
#ifdef __CUDA_ARCH__
  return __logf (x);
#else
  return logf (x);
#endif
}

static UNET_HD int kb_mini (int a, int b) { return a < b ? a : b; }
static UNET_HD int kb_maxi (int a, int b) { return a > b ? a : b; }
static UNET_HD float kb_fmaxf (float a, float b) { return fmaxf (a, b); }

/* Two floats (the summands of the two-column reductions). */
struct KbPair
{
  float a, b;
};

/* See unet_cuda_mirror_index in cuda-kernels.h. */
static UNET_HD int
mirror_index (int i, int n)
{
  if (n <= 1)
    return 0;
  const int period = 2 * (n - 1);
  int m = i % period;
  if (m < 0)
    m += period;
  return m < n ? m : period - m;
}

/* ------------------------------------------------------------- tiling -- */

static UNET_HD float
kb_load_pixel (const uint8_t *row, UnetCudaPixel format, int idx)
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

/* Element i of out (tiles, tile_h, tile_w, channels): tile t's window at
 * (ox[t], oy[t]), mirror-extended, (v - offset) * scale. */
template <typename T>
static UNET_HD void
kb_extract_elem (const uint8_t *frame, UnetCudaPixel format, int width, int height,
                 size_t stride, int channels, const int *ox, const int *oy, int tile_w,
                 int tile_h, float offset, float scale, T *out, size_t i)
{
  const int c = (int) (i % channels);
  size_t r = i / channels;
  const int x = (int) (r % tile_w);
  r /= tile_w;
  const int y = (int) (r % tile_h);
  const int t = (int) (r / tile_h);
  const int fx = mirror_index (ox[t] + x, width);
  const int fy = mirror_index (oy[t] + y, height);
  const float v = kb_load_pixel (frame + (size_t) fy * stride, format, fx * channels + c);
  out[i] = from_f32<T> ((v - offset) * scale);
}

/* Probabilities of one pixel's logits z (classes) into p; returns the argmax (first
 * maximum on ties; classes == 1: p >= 0.5). */
template <typename T>
static UNET_HD int
kb_pixel_probs (const T *z, int classes, int prob_class, float *p_out)
{
  if (classes == 1) {
    const float p = 1.0f / (1.0f + kb_expf (-to_f32 (z[0])));
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
    sum += kb_expf (to_f32 (z[k]) - zmax);
  *p_out = kb_expf (to_f32 (z[prob_class]) - zmax) / sum;
  return arg;
}

/* Pixel i (of b.w x b.h) of tile t's owned block: logits (tiles, out_h, out_w,
 * classes) -> labels / probs of the frame (either may be NULL). */
template <typename T>
static UNET_HD void
kb_stitch_elem (const T *logits, int out_h, int out_w, int classes, const UnetCudaBlock &b,
                int t, uint8_t *labels, size_t labels_stride, float *probs,
                size_t probs_stride, int prob_class, size_t i)
{
  const int x = (int) (i % b.w), y = (int) (i / b.w);
  const T *z = logits + (((size_t) t * out_h + b.src_y + y) * out_w + b.src_x + x) * classes;
  float p;
  const int arg = kb_pixel_probs (z, classes, prob_class, &p);
  if (labels)
    labels[(size_t) (b.dst_y + y) * labels_stride + b.dst_x + x] = (uint8_t) arg;
  if (probs)
    *(float *) ((uint8_t *) probs + (size_t) (b.dst_y + y) * probs_stride +
        (size_t) (b.dst_x + x) * 4) = p;
}

/* Pixel i of one tile's block into the Gaussian blend: logits is that tile's
 * (out_h, out_w, classes); acc (classes, frame_h, frame_w), wsum (frame_h, frame_w). */
template <typename T>
static UNET_HD void
kb_accumulate_elem (const T *logits, int out_h, int out_w, int classes,
                    const UnetCudaBlock &b, float sigma_x, float sigma_y, float *acc,
                    float *wsum, int frame_w, int frame_h, size_t i)
{
  const size_t plane = (size_t) frame_w * frame_h;
  const int x = (int) (i % b.w), y = (int) (i / b.w);
  const int tx = b.src_x + x, ty = b.src_y + y;
  const float dx = tx - 0.5f * (out_w - 1), dy = ty - 0.5f * (out_h - 1);
  const float wgt = kb_expf (-dx * dx / (2.0f * sigma_x * sigma_x)
      - dy * dy / (2.0f * sigma_y * sigma_y));
  const T *z = logits + ((size_t) ty * out_w + tx) * classes;
  const size_t o = (size_t) (b.dst_y + y) * frame_w + b.dst_x + x;
  if (classes == 1) {
    acc[o] += wgt / (1.0f + kb_expf (-to_f32 (z[0])));
  } else {
    float zmax = to_f32 (z[0]);
    for (int k = 1; k < classes; k++)
      zmax = kb_fmaxf (zmax, to_f32 (z[k]));
    float sum = 0.0f;
    for (int k = 0; k < classes; k++)
      sum += kb_expf (to_f32 (z[k]) - zmax);
    for (int k = 0; k < classes; k++)
      acc[k * plane + o] += wgt * kb_expf (to_f32 (z[k]) - zmax) / sum;
  }
  wsum[o] += wgt;
}

/* Pixel i of the frame: labels / probs from acc / wsum (either output may be NULL). */
static UNET_HD void
kb_finalize_elem (const float *acc, const float *wsum, int frame_w, int frame_h, int classes,
                  uint8_t *labels, size_t labels_stride, float *probs, size_t probs_stride,
                  int prob_class, size_t i)
{
  const size_t plane = (size_t) frame_w * frame_h;
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

/* Histogram bin of pixel i (channel 0 of a u8/u16 frame). */
static UNET_HD unsigned int
kb_hist_bin (const uint8_t *frame, UnetCudaPixel format, int width, size_t stride,
             int channels, size_t i)
{
  const int x = (int) (i % width), y = (int) (i / width);
  const uint8_t *row = frame + (size_t) y * stride;
  return format == UNET_CUDA_PIXEL_U8 ? row[x * channels] :
      ((const uint16_t *) row)[x * channels];
}

/* Order statistic k (0-based) of a histogram whose bins are grouped in chunks of
 * `chunk` bins with per-chunk totals chunk_sum[n_chunks]: the first value whose
 * running count exceeds k (the last bin if none). */
static UNET_HD double
kb_hist_kth (const uint32_t *hist, const uint64_t *chunk_sum, int n_chunks, int chunk,
             uint64_t k)
{
  uint64_t acc = 0;
  for (int c = 0; c < n_chunks; c++) {
    if (acc + chunk_sum[c] > k) {
      for (int v = c * chunk; v < (c + 1) * chunk; v++) {
        acc += hist[v];
        if (acc > k)
          return (double) v;
      }
    }
    acc += chunk_sum[c];
  }
  return (double) (n_chunks * chunk - 1);
}

/* Percentile normalisation from the histogram, as normalize.c computes it (NumPy's
 * linear interpolation between order statistics): params[0] = lo, params[1] = scale
 * of (v - lo) * scale, for percentiles p_lo < p_hi of n pixels. */
static UNET_HD void
kb_percentile_params (const uint32_t *hist, const uint64_t *chunk_sum, int n_chunks,
                      int chunk, uint64_t n, double p_lo, double p_hi, float *params)
{
  double q[2];
  const double p[2] = { p_lo, p_hi };
  for (int j = 0; j < 2; j++) {
    const double pos = p[j] / 100.0 * (double) (n - 1);
    const uint64_t i = (uint64_t) floor (pos);
    if (i >= n - 1) {
      q[j] = kb_hist_kth (hist, chunk_sum, n_chunks, chunk, n - 1);
    } else {
      const double a = kb_hist_kth (hist, chunk_sum, n_chunks, chunk, i);
      const double b = kb_hist_kth (hist, chunk_sum, n_chunks, chunk, i + 1);
      const double t = pos - (double) i, d = b - a;
      q[j] = t >= 0.5 ? b - d * (1.0 - t) : a + d * t;
    }
  }
  params[0] = (float) q[0];
  params[1] = (float) (q[1] > q[0] ? 1.0 / (q[1] - q[0]) : 1.0);
}

/* Frame mean/std normalisation from sums[0] = sum, sums[1] = sum of squares of n
 * pixels: lo = mean, scale = 1 / std (1 for a constant frame). */
static UNET_HD void
kb_moments_params (const double *sums, uint64_t n, float *params)
{
  const double mean = sums[0] / (double) n;
  double var = sums[1] / (double) n - mean * mean;
  if (var < 0.0)
    var = 0.0;
  params[0] = (float) mean;
  params[1] = (float) (var > 0.0 ? 1.0 / sqrt (var) : 1.0);
}

/* ------------------------------------------------------------- layout -- */

/* Element i of dst (n, h, w, c) from src (n, c, h, w). */
template <typename T>
static UNET_HD void
kb_nchw_to_nhwc_elem (const float *src, T *dst, int c, int h, int w, size_t i)
{
  const int ch = (int) (i % c);
  size_t r = i / c;
  const int x = (int) (r % w);
  r /= w;
  const int y = (int) (r % h);
  const int b = (int) (r / h);
  dst[i] = from_f32<T> (src[(((size_t) b * c + ch) * h + y) * w + x]);
}

/* Element i of dst (n, c, h, w) from src (n, h, w, c). */
template <typename T>
static UNET_HD void
kb_nhwc_to_nchw_elem (const T *src, float *dst, int c, int h, int w, size_t i)
{
  const int x = (int) (i % w);
  size_t r = i / w;
  const int y = (int) (r % h);
  r /= h;
  const int ch = (int) (r % c);
  const int b = (int) (r / c);
  dst[i] = to_f32 (src[(((size_t) b * h + y) * w + x) * c + ch]);
}

template <typename S, typename D>
static UNET_HD void
kb_cast_elem (const S *src, D *dst, size_t i)
{
  dst[i] = from_f32<D> (to_f32 (src[i]));
}

/* ---------------------------------------------------------- elementwise -- */

template <typename T>
static UNET_HD void
kb_bias_act_elem (const T *x, T *y, const float *bias, int channels, int relu, size_t i)
{
  float v = to_f32 (x[i]);
  if (bias)
    v += bias[i % channels];
  if (relu)
    v = kb_fmaxf (v, 0.0f);
  y[i] = from_f32<T> (v);
}

template <typename T>
static UNET_HD void
kb_relu_backward_elem (const T *y, const T *dy, T *dx, size_t i)
{
  dx[i] = to_f32 (y[i]) > 0.0f ? dy[i] : from_f32<T> (0.0f);
}

template <typename T>
static UNET_HD void
kb_channel_affine_elem (const T *x, T *y, const float *scale, const float *shift,
                        int channels, int relu, size_t i)
{
  const int c = (int) (i % channels);
  float v = to_f32 (x[i]) * scale[c] + shift[c];
  if (relu)
    v = kb_fmaxf (v, 0.0f);
  y[i] = from_f32<T> (v);
}

/* Summands of the column reductions over (rows, channels). */
template <typename T>
struct LoadPair
{
  const T *x;
  int channels;
  UNET_HD KbPair operator() (size_t r, int c) const
  {
    return KbPair { to_f32 (x[r * channels + c]), 0.0f };
  }
};

template <typename T>
struct LoadMoments
{
  const T *x;
  int channels;
  UNET_HD KbPair operator() (size_t r, int c) const
  {
    const float v = to_f32 (x[r * channels + c]);
    return KbPair { v, v * v };
  }
};

template <typename T>
struct LoadBnGrad
{
  const T *x, *dy;
  const float *mean, *invstd;
  int channels;
  UNET_HD KbPair operator() (size_t r, int c) const
  {
    const size_t i = r * channels + c;
    const float g = to_f32 (dy[i]);
    return KbPair { g, g * (to_f32 (x[i]) - mean[c]) * invstd[c] };
  }
};

/* out[c] = (accumulate ? out[c] : 0) + sums[c]. */
static UNET_HD void
kb_store_sum (const double *sums, float *out, int accumulate, int c)
{
  out[c] = accumulate ? out[c] + (float) sums[c] : (float) sums[c];
}

/* Channel c: sums (2, channels) of x and x^2 -> batch mean / invstd (biased
 * variance), running statistics updated with the unbiased one (PyTorch). */
static UNET_HD void
kb_bn_finish_stats (const double *sums, size_t rows, int channels, float eps, float momentum,
                    float *running_mean, float *running_var, float *save_mean,
                    float *save_invstd, int c)
{
  const double mean = sums[c] / (double) rows;
  double var = sums[channels + c] / (double) rows - mean * mean;
  if (var < 0.0)
    var = 0.0;
  save_mean[c] = (float) mean;
  save_invstd[c] = (float) (1.0 / sqrt (var + eps));
  const double unbiased = rows > 1 ? var * (double) rows / (double) (rows - 1) : var;
  running_mean[c] = (float) ((1.0 - momentum) * running_mean[c] + momentum * mean);
  running_var[c] = (float) ((1.0 - momentum) * running_var[c] + momentum * unbiased);
}

template <typename T>
static UNET_HD void
kb_bn_apply_elem (const T *x, T *y, int channels, const float *gamma, const float *beta,
                  const float *mean, const float *invstd, size_t i)
{
  const int c = (int) (i % channels);
  y[i] = from_f32<T> ((to_f32 (x[i]) - mean[c]) * invstd[c] * gamma[c] + beta[c]);
}

/* Channel c's parameter gradients from sums (2, channels) = (sum dy, sum dy xhat). */
static UNET_HD void
kb_bn_backward_params (const double *sums, int channels, float *dgamma, float *dbeta, int c)
{
  dgamma[c] += (float) sums[channels + c];
  dbeta[c] += (float) sums[c];
}

/* dx = gamma * invstd / N * (N dy - sum dy - xhat * sum (dy xhat)) (PyTorch's
 * batch_norm_backward in training mode). */
template <typename T>
static UNET_HD void
kb_bn_backward_elem (const T *x, const T *dy, T *dx, size_t rows, int channels,
                     const float *gamma, const float *mean, const float *invstd,
                     const double *sums, size_t i)
{
  const int c = (int) (i % channels);
  const float xhat = (to_f32 (x[i]) - mean[c]) * invstd[c];
  const float n = (float) rows;
  const float v = gamma[c] * invstd[c] / n * (n * to_f32 (dy[i]) - (float) sums[c]
      - xhat * (float) sums[channels + c]);
  dx[i] = from_f32<T> (v);
}

/* splitmix64 of (seed, index): a counter-based generator, so forward and backward
 * draw the same mask without storing it. */
static UNET_HD float
kb_uniform01 (uint64_t seed, uint64_t index)
{
  uint64_t z = seed + (index + 1) * 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
  return (float) (z >> 40) * (1.0f / 16777216.0f);
}

template <typename T>
static UNET_HD void
kb_dropout_elem (const T *x, T *y, float p, uint64_t seed, size_t i)
{
  const float keep_scale = 1.0f / (1.0f - p);
  y[i] = from_f32<T> (kb_uniform01 (seed, i) >= p ? to_f32 (x[i]) * keep_scale : 0.0f);
}

template <typename T>
static UNET_HD void
kb_add_elem (const T *x, T *y, size_t i)
{
  y[i] = from_f32<T> (to_f32 (y[i]) + to_f32 (x[i]));
}

/* Element i of the window (n, h, w, c) of dst: src pixel (y + y0, x + x0), channel
 * src_off + ch of a src_stride-channel tensor -> dst channel dst_off + ch (+ bias). */
template <typename T>
static UNET_HD void
kb_copy_window_elem (const T *src, int src_h, int src_w, int src_stride, int src_off, int y0,
                     int x0, T *dst, int dst_stride, int dst_off, int h, int w, int c,
                     const float *bias, size_t i)
{
  const int ch = (int) (i % c);
  const size_t pix = i / c;
  const int x = (int) (pix % w);
  size_t r = pix / w;
  const int y = (int) (r % h);
  const int b = (int) (r / h);
  const size_t sp = ((size_t) b * src_h + y + y0) * src_w + x + x0;
  float v = to_f32 (src[sp * src_stride + src_off + ch]);
  if (bias)
    v += bias[ch];
  dst[pix * dst_stride + dst_off + ch] = from_f32<T> (v);
}

/* Pixel i: softmax over its classes (sigmoid for one class). */
template <typename T>
static UNET_HD void
kb_softmax_pixel (const T *x, T *y, int classes, size_t i)
{
  const T *z = x + i * classes;
  T *o = y + i * classes;
  if (classes == 1) {
    o[0] = from_f32<T> (1.0f / (1.0f + kb_expf (-to_f32 (z[0]))));
    return;
  }
  float zmax = to_f32 (z[0]);
  for (int k = 1; k < classes; k++)
    zmax = kb_fmaxf (zmax, to_f32 (z[k]));
  float sum = 0.0f;
  for (int k = 0; k < classes; k++)
    sum += kb_expf (to_f32 (z[k]) - zmax);
  const float inv = 1.0f / sum;
  for (int k = 0; k < classes; k++)
    o[k] = from_f32<T> (kb_expf (to_f32 (z[k]) - zmax) * inv);
}

/* ---------------------------------------------------- pool and concat -- */

/* Element i of y (n, h/2, w/2, c); argmax (may be NULL) gets the winner 0..3. */
template <typename T>
static UNET_HD void
kb_maxpool_forward_elem (const T *x, T *y, uint8_t *argmax, int h, int w, int c, size_t i)
{
  const int oh = h / 2, ow = w / 2;
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

/* Element i of dx (n, h, w, c): a gather through argmax; rows/columns beyond
 * 2 * (h/2) never won and get 0. */
template <typename T>
static UNET_HD void
kb_maxpool_backward_elem (const T *dy, const uint8_t *argmax, T *dx, int h, int w, int c,
                          int accumulate, size_t i)
{
  const int oh = h / 2, ow = w / 2;
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

/* Element i of out (n, h, w, ca + cb): a's window at (off_y, off_x), then b. */
template <typename T>
static UNET_HD void
kb_crop_concat_elem (const T *a, int ha, int wa, int ca, int off_y, int off_x, const T *b,
                     int cb, T *out, int h, int w, size_t i)
{
  const int cc = ca + cb;
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

/* Element i of dout: into da's window (accumulating) or db (written). */
template <typename T>
static UNET_HD void
kb_crop_concat_backward_elem (const T *dout, T *da, int ha, int wa, int ca, int off_y,
                              int off_x, T *db, int cb, int h, int w, size_t i)
{
  const int cc = ca + cb;
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

/* Element i of src (n, h, w, c), channels [src_off, src_off + c) of a src_stride-channel
 * tensor, added into dst pixel (y + y0, x + x0) of (n, dst_h, dst_w, .), channel
 * dst_off + ch of a dst_stride-channel tensor: the backward of copy_window (the
 * gradient of a crop lands in its window). Distinct i touch distinct dst elements. */
template <typename T>
static UNET_HD void
kb_window_add_elem (const T *src, int src_stride, int src_off, T *dst, int dst_h, int dst_w,
                    int dst_stride, int dst_off, int y0, int x0, int h, int w, int c,
                    size_t i)
{
  const int ch = (int) (i % c);
  const size_t pix = i / c;
  const int x = (int) (pix % w);
  size_t r = pix / w;
  const int y = (int) (r % h);
  const int b = (int) (r / h);
  T *p = dst + (((size_t) b * dst_h + y + y0) * dst_w + x + x0) * dst_stride + dst_off + ch;
  *p = from_f32<T> (to_f32 (*p) + to_f32 (src[pix * src_stride + src_off + ch]));
}

/* ------------------------------------------------------------------ loss -- */

/* Pixel i of the weighted cross-entropy: adds w * loss and w to *loss_sum /
 * *weight_sum when the pixel counts, writes grad (n_pix, classes) when non-NULL. */
template <typename T>
static UNET_HD void
kb_xent_pixel (const T *logits, const uint8_t *labels, const float *weights, int classes,
               int ignore_label, float grad_scale, float *grad, size_t i, double *loss_sum,
               double *weight_sum)
{
  const int y = labels[i];
  const T *z = logits + i * classes;
  const bool counted = y != ignore_label && (classes == 1 ? y <= 1 : y < classes);
  const float w = counted ? (weights ? weights[i] : 1.0f) : 0.0f;
  if (classes == 1) {
    const float zi = to_f32 (z[0]);
    if (counted) {
      /* max(z, 0) - z y + log(1 + exp(-|z|)): BCEWithLogits, stable for any z */
      const float l = kb_fmaxf (zi, 0.0f) - zi * y + log1pf (kb_expf (-fabsf (zi)));
      *loss_sum += (double) w * l;
      *weight_sum += w;
    }
    if (grad)
      grad[i] = grad_scale * w * (1.0f / (1.0f + kb_expf (-zi)) - (float) y);
  } else {
    float zmax = to_f32 (z[0]);
    for (int k = 1; k < classes; k++)
      zmax = kb_fmaxf (zmax, to_f32 (z[k]));
    float sum = 0.0f;
    for (int k = 0; k < classes; k++)
      sum += kb_expf (to_f32 (z[k]) - zmax);
    const float lse = zmax + kb_logf (sum);
    if (counted) {
      *loss_sum += (double) w * (lse - to_f32 (z[y]));
      *weight_sum += w;
    }
    if (grad) {
      for (int k = 0; k < classes; k++) {
        const float p = kb_expf (to_f32 (z[k]) - lse);
        grad[i * classes + k] = grad_scale * w * (p - (k == y ? 1.0f : 0.0f));
      }
    }
  }
}

/* The class probabilities of one pixel's logits z (classes of them, contiguous):
 * softmax (classes >= 2) or p[0] = sigmoid (classes == 1), in f32. classes <= 16. */
template <typename T>
static UNET_HD void
kb_class_probs (const T *z, int classes, float *p)
{
  if (classes == 1) {
    p[0] = 1.0f / (1.0f + kb_expf (-to_f32 (z[0])));
    return;
  }
  float zmax = to_f32 (z[0]);
  for (int k = 1; k < classes; k++)
    zmax = kb_fmaxf (zmax, to_f32 (z[k]));
  float sum = 0.0f;
  for (int k = 0; k < classes; k++) {
    p[k] = kb_expf (to_f32 (z[k]) - zmax);
    sum += p[k];
  }
  for (int k = 0; k < classes; k++)
    p[k] /= sum;
}

/* Pixel i's cell of the confusion matrix [label][prediction] (16 x 16, row-major):
 * label * 16 + prediction, or -1 for an ignored pixel. The prediction is the first
 * largest logit (classes >= 2) or z > 0 (classes == 1), as unet_confusion_add. Labels
 * are valid (checked on the host) or ignore_label; classes <= 16. */
template <typename T>
static UNET_HD int
kb_confusion_cell (const T *logits, const uint8_t *labels, int classes, int ignore_label,
                   size_t i)
{
  const int y = labels[i];
  if (y == ignore_label)
    return -1;
  const T *z = logits + i * classes;
  int pred = 0;
  if (classes == 1) {
    pred = to_f32 (z[0]) > 0.0f ? 1 : 0;
  } else {
    for (int k = 1; k < classes; k++)
      if (to_f32 (z[k]) > to_f32 (z[pred]))
        pred = k;
  }
  return y * 16 + pred;
}

/* Soft Dice (unet_loss_soft_dice): pixel i's share of the per-class sums over the
 * counted pixels, for each foreground class c in 1 .. max(classes, 2) - 1:
 * acc[c] += p_c (label c: the intersection), acc[16 + c] += p_c, acc[32 + c] += 1
 * (label c). p_c: the softmax probability of class c, or the sigmoid for one class.
 * classes <= 16. */
template <typename T>
static UNET_HD void
kb_dice_sums_pixel (const T *logits, const uint8_t *labels, int classes, int ignore_label,
                    size_t i, double *acc)
{
  const int y = labels[i];
  if (y == ignore_label)
    return;
  const int n_labels = classes > 2 ? classes : 2, off = classes == 1 ? 1 : 0;
  float p[16];
  kb_class_probs (logits + i * classes, classes, p);
  for (int c = 1; c < n_labels; c++) {
    const double pc = p[c - off];
    acc[16 + c] += pc;
    if (y == c) {
      acc[c] += pc;
      acc[32 + c] += 1.0;
    }
  }
}

/* Soft Dice's gradient at pixel i: grad (n_pix, classes) f32 += scale * dL/dz from the
 * sums of kb_dice_sums_pixel (the whole batch): with U_c = P_c + G_c + 1,
 * dL/dp_c = -(2 g_c U_c - (2 I_c + 1)) / (U_c^2 n_fg), through the softmax
 * (p_k (dL/dp_k - sum_j p_j dL/dp_j)) or the sigmoid (p (1 - p)). */
template <typename T>
static UNET_HD void
kb_dice_grad_pixel (const T *logits, const uint8_t *labels, int classes, int ignore_label,
                    const double *sums, float scale, float *grad, size_t i)
{
  const int y = labels[i];
  if (y == ignore_label)
    return;
  const int n_labels = classes > 2 ? classes : 2, off = classes == 1 ? 1 : 0;
  const double n_fg = n_labels - 1;
  float p[16];
  double dp[16];
  kb_class_probs (logits + i * classes, classes, p);
  for (int k = 0; k < classes; k++)
    dp[k] = 0.0;
  for (int c = 1; c < n_labels; c++) {
    const double u = sums[16 + c] + sums[32 + c] + 1.0;
    const double g = y == c ? 1.0 : 0.0;
    dp[c - off] = -(2.0 * g * u - (2.0 * sums[c] + 1.0)) / (u * u * n_fg);
  }
  if (classes == 1) {
    grad[i] += (float) (scale * dp[0] * p[0] * (1.0 - p[0]));
    return;
  }
  double dot = 0.0;
  for (int k = 0; k < classes; k++)
    dot += p[k] * dp[k];
  for (int k = 0; k < classes; k++)
    grad[i * classes + k] += (float) (scale * p[k] * (dp[k] - dot));
}

/* ------------------------------------------------------------- optimiser -- */

/* The update of element i of a slice (master parameters w, gradients g, state): the
 * element functions of engine/optim-elem.h, the same code the host optimiser
 * (unet_optim_update_host) runs, in double per element. buf NULL: SGD without
 * momentum. */
static UNET_HD void
kb_optim_sgd_elem (float *w, const float *g, float *buf, double lr, double momentum,
                   double weight_decay, int nesterov, int first, size_t i)
{
  unet_optim_sgd_elem (w + i, g[i], buf != NULL ? buf + i : NULL, lr, momentum,
      weight_decay, nesterov, first);
}

static UNET_HD void
kb_optim_adam_elem (float *w, const float *g, float *m, float *v, double lr, double beta1,
                    double beta2, double eps, double weight_decay, int decoupled,
                    double step_size, double bc2_sqrt, size_t i)
{
  unet_optim_adam_elem (w + i, g[i], m + i, v + i, lr, beta1, beta2, eps, weight_decay,
      decoupled, step_size, bc2_sqrt);
}

template <typename T>
static UNET_HD bool
kb_is_finite_elem (const T *x, size_t i)
{
  return isfinite (to_f32 (x[i]));
}

/* -------------------------------------------------------------- training -- */

/* Element o of dst (a, b, kk) f32 += scale * src (a, kk, b). */
template <typename T>
static UNET_HD void
kb_filter_grad_elem (const T *src, float *dst, int b, int kk, float scale, size_t o)
{
  const int s = (int) (o % kk);
  const size_t ij = o / kk;
  const int j = (int) (ij % b);
  const size_t i = ij / b;
  dst[o] += scale * to_f32 (src[(i * kk + s) * b + j]);
}

static UNET_HD void
kb_scale_add_elem (const float *x, float *y, float scale, size_t i)
{
  y[i] += scale * x[i];
}

/* ------------------------------------------------------------------ warp -- */

/* Catmull-Rom weights for fractional position t in [0, 1) of samples -1, 0, 1, 2. */
static UNET_HD void
kb_cubic_weights (float t, float w[4])
{
  const float t2 = t * t, t3 = t2 * t;
  w[0] = 0.5f * (-t3 + 2.0f * t2 - t);
  w[1] = 0.5f * (3.0f * t3 - 5.0f * t2 + 2.0f);
  w[2] = 0.5f * (-3.0f * t3 + 4.0f * t2 + t);
  w[3] = 0.5f * (t3 - t2);
}

/* Displacement grid lookup with clamped (edge-repeating) indices: the grid covers
 * the patch exactly, so clamping only affects the cubic's outer taps at the ends.
 * grid: grid_w x grid_h (dx, dy) pairs, grid[(j * grid_w + i) * 2 + axis]. */
static UNET_HD KbPair
kb_grid_displacement (const float *grid, int grid_w, int grid_h, float x, float y, int out_w,
                      int out_h)
{
  const float gx = out_w > 1 ? x * (grid_w - 1) / (float) (out_w - 1) : 0.0f;
  const float gy = out_h > 1 ? y * (grid_h - 1) / (float) (out_h - 1) : 0.0f;
  const int ix = (int) floorf (gx), iy = (int) floorf (gy);
  float wx[4], wy[4];
  kb_cubic_weights (gx - ix, wx);
  kb_cubic_weights (gy - iy, wy);
  float dx = 0.0f, dy = 0.0f;
  for (int j = 0; j < 4; j++) {
    const int yy = kb_mini (kb_maxi (iy - 1 + j, 0), grid_h - 1);
    for (int i = 0; i < 4; i++) {
      const int xx = kb_mini (kb_maxi (ix - 1 + i, 0), grid_w - 1);
      const float w = wx[i] * wy[j];
      dx += w * grid[(yy * grid_w + xx) * 2];
      dy += w * grid[(yy * grid_w + xx) * 2 + 1];
    }
  }
  return KbPair { dx, dy };
}

/* A source position split into the pixel below it and the fraction: s = i + f,
 * f in [0, 1), for the interpolations below. */
struct KbTap
{
  int ix, iy;
  float fx, fy;
};

static UNET_HD KbTap
kb_tap (float sx, float sy)
{
  const int ix = (int) floorf (sx), iy = (int) floorf (sy);
  return KbTap { ix, iy, sx - ix, sy - iy };
}

/* Catmull-Rom (bicubic) sample of every channel of image (channels, src_h, src_w) at
 * `p`, mirror rule outside; out[c * out_stride]. */
static UNET_HD void
kb_sample_bicubic (const float *image, int channels, int src_w, int src_h, KbTap p,
                   float *out, size_t out_stride)
{
  const size_t src_plane = (size_t) src_w * src_h;
  float wx[4], wy[4];
  kb_cubic_weights (p.fx, wx);
  kb_cubic_weights (p.fy, wy);
  int xs[4], ys[4];
  for (int k = 0; k < 4; k++) {
    xs[k] = mirror_index (p.ix - 1 + k, src_w);
    ys[k] = mirror_index (p.iy - 1 + k, src_h);
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
    out[c * out_stride] = v;
  }
}

/* Bilinear sample of one plane (src_h, src_w) at `p`, mirror rule outside. */
static UNET_HD float
kb_sample_bilinear (const float *plane, int src_w, int src_h, KbTap p)
{
  const int x0 = mirror_index (p.ix, src_w), x1 = mirror_index (p.ix + 1, src_w);
  const int y0 = mirror_index (p.iy, src_h), y1 = mirror_index (p.iy + 1, src_h);
  const float top = (1.0f - p.fx) * plane[(size_t) y0 * src_w + x0]
      + p.fx * plane[(size_t) y0 * src_w + x1];
  const float bottom = (1.0f - p.fx) * plane[(size_t) y1 * src_w + x0]
      + p.fx * plane[(size_t) y1 * src_w + x1];
  return (1.0f - p.fy) * top + p.fy * bottom;
}

/* Nearest pixel (round half up, floor (s + 0.5)), mirror rule outside. */
static UNET_HD size_t
kb_nearest_index (float sx, float sy, int src_w, int src_h)
{
  const int nx = mirror_index ((int) floorf (sx + 0.5f), src_w);
  const int ny = mirror_index ((int) floorf (sy + 0.5f), src_h);
  return (size_t) ny * src_w + nx;
}

/* Output pixel i of the warped sample (see unet_cuda_warp_sample). */
static UNET_HD void
kb_warp_pixel (const float *image, int channels, const uint8_t *labels, const float *weights,
               int src_w, int src_h, const UnetCudaWarp &wp, float *out_image,
               uint8_t *out_labels, float *out_weights, int out_w, int out_h, size_t i)
{
  const size_t total = (size_t) out_w * out_h;
  const int x = (int) (i % out_w), y = (int) (i / out_w);
  float sx = wp.affine[0] * x + wp.affine[1] * y + wp.affine[2];
  float sy = wp.affine[3] * x + wp.affine[4] * y + wp.affine[5];
  if (wp.grid_w >= 2 && wp.grid_h >= 2) {
    const KbPair d = kb_grid_displacement (wp.grid, wp.grid_w, wp.grid_h, (float) x,
        (float) y, out_w, out_h);
    sx += d.a;
    sy += d.b;
  }
  const KbTap p = kb_tap (sx, sy);
  if (image && out_image)
    kb_sample_bicubic (image, channels, src_w, src_h, p, out_image + i, total);
  if (labels && out_labels)
    out_labels[i] = labels[kb_nearest_index (sx, sy, src_w, src_h)];
  if (weights && out_weights)
    out_weights[i] = kb_sample_bilinear (weights, src_w, src_h, p);
}

/* --------------------------------------------------- augmented batch -- */

/* Tile pixel i of batch entry b = i / (in_w in_h) (see unet_cuda_augment_batch): the
 * image into tile (n, channels, in_h, in_w) f32, before the gray values; inside the
 * centred output region the label (nearest) into labels (n, out_h, out_w) and the
 * weight (bilinear; 0 where the label is `ignore_label`, 1 on labelled pixels of a
 * sample without weights) into weights (n, out_h, out_w). Positions are local to the
 * sample's integer origin, so their float rounding scales with the tile, not with
 * the frame. */
/* The local source position (relative to the sample's origin) of tile pixel (u, v). */
static UNET_HD KbPair
kb_augment_position (const UnetCudaAugSample &s, const float *grids, int u, int v, int in_w,
                     int in_h)
{
  float lx = s.affine[0] * u + s.affine[1] * v + s.affine[2];
  float ly = s.affine[3] * u + s.affine[4] * v + s.affine[5];
  if (s.grid >= 2) {
    const KbPair d = kb_grid_displacement (grids + s.grid_offset, s.grid, s.grid,
        (float) u, (float) v, in_w, in_h);
    lx += d.a;
    ly += d.b;
  }
  return KbPair { lx, ly };
}

static UNET_HD void
kb_augment_pixel (const UnetCudaAugSample *samples, const float *grids, int channels,
                  int in_w, int in_h, int out_w, int out_h, int ignore_label, float *tile,
                  uint8_t *labels, float *weights, size_t i)
{
  const size_t plane = (size_t) in_w * in_h;
  const size_t b = i / plane, t = i % plane;
  const int u = (int) (t % in_w), v = (int) (t / in_w);
  const UnetCudaAugSample &s = samples[b];
  const KbPair l = kb_augment_position (s, grids, u, v, in_w, in_h);
  const float lx = l.a, ly = l.b;
  KbTap p = kb_tap (lx, ly);
  p.ix += s.origin_x;
  p.iy += s.origin_y;
  float *out = tile + b * channels * plane + t;
  if (s.bilinear) {
    for (int c = 0; c < channels; c++)
      out[c * plane] = kb_sample_bilinear (s.image + c * (size_t) s.src_w * s.src_h,
          s.src_w, s.src_h, p);
  } else {
    kb_sample_bicubic (s.image, channels, s.src_w, s.src_h, p, out, plane);
  }
  const int ox = (in_w - out_w) / 2, oy = (in_h - out_h) / 2;
  if (u < ox || u >= ox + out_w || v < oy || v >= oy + out_h)
    return;
  const size_t o = b * out_w * out_h + (size_t) (v - oy) * out_w + (u - ox);
  /* nearest in local coordinates: floor (o + l + 0.5) = o + floor (l + 0.5) */
  const int nx = mirror_index (s.origin_x + (int) floorf (lx + 0.5f), s.src_w);
  const int ny = mirror_index (s.origin_y + (int) floorf (ly + 0.5f), s.src_h);
  const uint8_t label = s.labels[(size_t) ny * s.src_w + nx];
  labels[o] = label;
  weights[o] = label == ignore_label ? 0.0f
      : s.weights != NULL ? kb_sample_bilinear (s.weights, s.src_w, s.src_h, p) : 1.0f;
}

/* The gray-value changes of augment.c on one value of a tile whose values span
 * lo .. lo + range: gamma on that range ... */
static UNET_HD float
kb_intensity_gamma (float x, float lo, float range, float gamma)
{
  return range > 0.0f ? lo + range * powf ((x - lo) / range, gamma) : x;
}

/* ... then contrast around the tile's mean (of the gamma'd values) and brightness. */
static UNET_HD float
kb_intensity_out (float xg, float mean, float contrast, float brightness)
{
  return mean + contrast * (xg - mean) + brightness;
}

/* Element i of the net input (n, in_h, in_w, channels), dtype T, from the tile
 * (n, channels, in_h, in_w) f32: the gray-value changes of samples[b] with the tile's
 * statistics stats[3 b ..] = lo, hi, mean of the gamma'd values (when it has them). */
template <typename T>
static UNET_HD void
kb_augment_finish_elem (const float *tile, const UnetCudaAugSample *samples,
                        const double *stats, int channels, size_t plane, T *out, size_t i)
{
  const int c = (int) (i % channels);
  const size_t pix = i / channels, b = pix / plane, t = pix % plane;
  float x = tile[(b * channels + c) * plane + t];
  const UnetCudaAugSample &s = samples[b];
  if (s.intensity) {
    const float lo = (float) stats[3 * b], range = (float) (stats[3 * b + 1] - stats[3 * b]);
    x = kb_intensity_out (kb_intensity_gamma (x, lo, range, s.gamma),
        (float) stats[3 * b + 2], s.contrast, s.brightness);
  }
  out[i] = from_f32<T> (x);
}

/* Element i of unet_cuda_scale_by_weight_sum. */
static UNET_HD void
kb_scale_by_weight_sum_elem (float *x, const double *sum, size_t i)
{
  x[i] = sum[1] > 0.0 ? (float) (x[i] / sum[1]) : 0.0f;
}
