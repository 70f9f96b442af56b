/* gst-unet CUDA backend — host launchers of the hand-written kernels.
 *
 * Every launcher takes raw device pointers, sizes and a stream, enqueues its kernels
 * and returns the launch status (cudaGetLastError) as an int (a cudaError_t; 0 is
 * success) so this header needs no CUDA types and can be included from plain C.
 * Kernels never allocate and never see engine structs.
 *
 * Layout: activations on the device are NHWC (channels innermost), the layout tensor
 * cores want; "(N,H,W,C)" beside an argument gives its shape. The element type of
 * activations is `dtype` (float32, float16 or bfloat16); everything that accumulates
 * (loss sums, statistics, optimiser state, master weights) is float32.
 */
#pragma once

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef void *UnetCudaStream;   /* a cudaStream_t */

typedef enum
{
  UNET_CUDA_F32 = 0,
  UNET_CUDA_F16 = 1,
  UNET_CUDA_BF16 = 2,
} UnetCudaDType;

size_t unet_cuda_dtype_size (UnetCudaDType dtype);

/* ------------------------------------------------------------- tiling -- */

/* Raw pixel formats, same values as UnetPixelFormat in unet.h. */
typedef enum
{
  UNET_CUDA_PIXEL_U8 = 0,
  UNET_CUDA_PIXEL_U16 = 1,
  UNET_CUDA_PIXEL_F32 = 2,
} UnetCudaPixel;

/* Reflection without repeating the edge pixel (-1 -> 1, n -> n-2), reflecting again
 * as often as needed when the index is further out than the frame is long; n == 1
 * maps everything to 0. The same rule as engine/tiling.c. */
int unet_cuda_mirror_index (int i, int n);

/* At most this many tiles per launch (their geometry travels as a kernel argument). */
#define UNET_CUDA_MAX_TILES_PER_LAUNCH 128

/* out (n_tiles, tile_h, tile_w, channels), dtype: tile t covers frame pixels
 * [origin_x[t], origin_x[t] + tile_w) x [origin_y[t], ...), mirror-extended outside the
 * frame, each value v becoming (v - offset) * scale. The frame is (height, width,
 * channels) interleaved with `stride` bytes per row. n_tiles may exceed
 * UNET_CUDA_MAX_TILES_PER_LAUNCH (the launcher splits). */
int unet_cuda_extract_tiles (const void *frame, UnetCudaPixel format, int width, int height,
                             size_t stride, int channels, const int *origin_x,
                             const int *origin_y, int n_tiles, int tile_w, int tile_h,
                             float offset, float scale, void *out, UnetCudaDType dtype,
                             UnetCudaStream stream);

/* The same with (offset, scale) = params[0], params[1] read on the device (params
 * non-NULL: normalisation parameters computed there, see unet_cuda_percentile_params). */
int unet_cuda_extract_tiles_params (const void *frame, UnetCudaPixel format, int width,
                                    int height, size_t stride, int channels,
                                    const int *origin_x, const int *origin_y, int n_tiles,
                                    int tile_w, int tile_h, float offset, float scale,
                                    const float *params, void *out, UnetCudaDType dtype,
                                    UnetCudaStream stream);

/* Where tile t's owned block goes: from (src_x, src_y) of the tile's network output
 * to (dst_x, dst_y) of the frame, w x h pixels. */
typedef struct
{
  int src_x, src_y, dst_x, dst_y, w, h;
} UnetCudaBlock;

/* logits (n_tiles, out_h, out_w, classes), dtype. For each tile, softmax over classes
 * (classes >= 2) or sigmoid (classes == 1) of the owned block, then
 *   labels (frame_h, frame_w) u8, `labels_stride` bytes per row: argmax class (first
 *     maximum on ties, like torch.argmax); for classes == 1: p >= 0.5;
 *   probs (frame_h, frame_w) f32, `probs_stride` bytes per row: probability of
 *     class `prob_class`.
 * Either output may be NULL. */
int unet_cuda_stitch_blocks (const void *logits, UnetCudaDType dtype, int n_tiles, int out_h,
                             int out_w, int classes, const UnetCudaBlock *blocks,
                             uint8_t *labels, size_t labels_stride, float *probs,
                             size_t probs_stride, int prob_class, UnetCudaStream stream);

/* Blending of overlapping tiles (same padding): acc (classes, frame_h, frame_w) f32 and
 * wsum (frame_h, frame_w) f32 get, for every tile pixel of a block,
 * acc += window(x, y) * p(class), wsum += window(x, y), where window is the separable
 * Gaussian exp(-d^2 / (2 sigma^2)) of the distance d to the tile output's centre along
 * each axis (sigma = out_size * sigma_frac). Tiles are processed one after another, so
 * overlapping blocks never race. */
int unet_cuda_accumulate_blocks (const void *logits, UnetCudaDType dtype, int n_tiles,
                                 int out_h, int out_w, int classes,
                                 const UnetCudaBlock *blocks, float sigma_frac,
                                 float *acc, float *wsum, int frame_w, int frame_h,
                                 UnetCudaStream stream);
/* labels / probs from acc / wsum as in unet_cuda_stitch_blocks (outputs may be NULL). */
int unet_cuda_finalize_blend (const float *acc, const float *wsum, int frame_w, int frame_h,
                              int classes, uint8_t *labels, size_t labels_stride,
                              float *probs, size_t probs_stride, int prob_class,
                              UnetCudaStream stream);

/* Frame statistics for normalisation: hist (65536 or 256 bins) u32 must be zeroed by
 * the caller; counts every pixel of channel 0 of a u8/u16 frame. */
int unet_cuda_histogram (const void *frame, UnetCudaPixel format, int width, int height,
                         size_t stride, int channels, uint32_t *hist, UnetCudaStream stream);
/* sums[0] = sum, sums[1] = sum of squares (double) over channel 0 of the frame;
 * overwritten (deterministic two-pass reduction through `partials`, which holds
 * UNET_CUDA_REDUCE_BLOCKS * 2 doubles). */
#define UNET_CUDA_REDUCE_BLOCKS 256
int unet_cuda_frame_moments (const void *frame, UnetCudaPixel format, int width, int height,
                             size_t stride, int channels, double *partials, double *sums,
                             UnetCudaStream stream);

/* Normalisation parameters on the device, no host round trip: params[0] = lo,
 * params[1] = scale of (v - lo) * scale. Percentiles p_lo < p_hi (0..100) of the n
 * pixels counted in hist (256 or 65536 bins), interpolated as NumPy does (exactly
 * unet_normalize_frame's percentile mode); or mean and 1/std from the moments sums
 * (unet_cuda_frame_moments). One tiny launch each. */
int unet_cuda_percentile_params (const uint32_t *hist, int bins, uint64_t n, double p_lo,
                                 double p_hi, float *params, UnetCudaStream stream);
int unet_cuda_moments_params (const double *sums, uint64_t n, float *params,
                              UnetCudaStream stream);

/* ------------------------------------------------------------- layout -- */

/* dst (n, h, w, c) dtype <- src (n, c, h, w) f32, and back. */
int unet_cuda_nchw_to_nhwc (const float *src, void *dst, UnetCudaDType dtype, int n, int c,
                            int h, int w, UnetCudaStream stream);
int unet_cuda_nhwc_to_nchw (const void *src, UnetCudaDType dtype, float *dst, int n, int c,
                            int h, int w, UnetCudaStream stream);
/* dst[i] = (dtype) src[i] and back, count elements. */
int unet_cuda_cast_from_f32 (const float *src, void *dst, UnetCudaDType dtype, size_t count,
                             UnetCudaStream stream);
int unet_cuda_cast_to_f32 (const void *src, UnetCudaDType dtype, float *dst, size_t count,
                           UnetCudaStream stream);

/* ------------------------------------------------------ elementwise ops -- */

/* y (count / channels, channels) = act(x + bias[c]) in place allowed (x == y);
 * bias f32 (channels) may be NULL; relu != 0 applies max(0, .). */
int unet_cuda_bias_act (const void *x, void *y, UnetCudaDType dtype, const float *bias,
                        size_t count, int channels, int relu, UnetCudaStream stream);
/* dx = dy * (y > 0) (ReLU backward from the output), in place allowed. */
int unet_cuda_relu_backward (const void *y, const void *dy, void *dx, UnetCudaDType dtype,
                             size_t count, UnetCudaStream stream);
/* db[c] (+)= sum over rows of dy (rows, channels); accumulate != 0 adds to db.
 * partials: UNET_CUDA_REDUCE_BLOCKS * 2 * channels + 2 * channels doubles of scratch
 * (the column-reduction scratch of every per-channel op here). */
int unet_cuda_bias_grad (const void *dy, UnetCudaDType dtype, size_t rows, int channels,
                         float *db, int accumulate, double *partials, UnetCudaStream stream);
/* y = x * scale[c] + shift[c] (then ReLU when relu != 0): batch norm with frozen
 * statistics folded into a per-channel affine map. */
int unet_cuda_channel_affine (const void *x, void *y, UnetCudaDType dtype, const float *scale,
                              const float *shift, size_t count, int channels, int relu,
                              UnetCudaStream stream);
/* Batch norm in training mode over x (rows, channels): mean/invstd (channels) of the
 * batch (biased variance), running statistics updated as PyTorch does
 * (running = (1 - momentum) * running + momentum * batch, unbiased variance), then
 * y = (x - mean) * invstd * gamma + beta. partials: as for unet_cuda_bias_grad. */
int unet_cuda_batchnorm_forward_train (const void *x, void *y, UnetCudaDType dtype,
                                       size_t rows, int channels, const float *gamma,
                                       const float *beta, float eps, float momentum,
                                       float *running_mean, float *running_var,
                                       float *save_mean, float *save_invstd,
                                       double *partials, UnetCudaStream stream);
/* dx from dy, x and the saved statistics; dgamma/dbeta (channels) accumulate. */
int unet_cuda_batchnorm_backward (const void *x, const void *dy, void *dx,
                                  UnetCudaDType dtype, size_t rows, int channels,
                                  const float *gamma, const float *save_mean,
                                  const float *save_invstd, float *dgamma, float *dbeta,
                                  double *partials, UnetCudaStream stream);
/* Inverted dropout: y = x * keep / (1 - p), keep drawn per element from (seed, index)
 * by a counter-based hash, so backward recomputes the same mask. */
int unet_cuda_dropout (const void *x, void *y, UnetCudaDType dtype, size_t count, float p,
                       uint64_t seed, UnetCudaStream stream);

/* ---------------------------------------------------- pool and concat -- */

/* 2x2 max pooling, stride 2 (floor for odd sizes, like torch.nn.MaxPool2d(2)):
 * x (n, h, w, c) -> y (n, h/2, w/2, c); argmax (same shape as y) gets the winning
 * position 0..3 (dy * 2 + dx; first maximum wins), may be NULL for inference. */
int unet_cuda_maxpool_forward (const void *x, void *y, uint8_t *argmax, UnetCudaDType dtype,
                               int n, int h, int w, int c, UnetCudaStream stream);
/* dx (n, h, w, c) = dy routed to the recorded positions; accumulate != 0 adds to dx. */
int unet_cuda_maxpool_backward (const void *dy, const uint8_t *argmax, void *dx,
                                UnetCudaDType dtype, int n, int h, int w, int c,
                                int accumulate, UnetCudaStream stream);
/* out (n, h, w, ca + cb) = concat(a cropped at (off_y, off_x) from (n, ha, wa, ca),
 * b (n, h, w, cb)) along channels. */
int unet_cuda_crop_concat (const void *a, int ha, int wa, int ca, int off_y, int off_x,
                           const void *b, int cb, void *out, UnetCudaDType dtype, int n,
                           int h, int w, UnetCudaStream stream);
/* Backward: da (n, ha, wa, ca) += dout[..., :ca] inside the crop window (da is added
 * to: the encoder output also feeds the pooling); db (n, h, w, cb) = dout[..., ca:]. */
int unet_cuda_crop_concat_backward (const void *dout, void *da, int ha, int wa, int ca,
                                    int off_y, int off_x, void *db, int cb,
                                    UnetCudaDType dtype, int n, int h, int w,
                                    UnetCudaStream stream);
/* dst (n, h, w, .) channels [dst_off, dst_off + c) (pixel stride dst_stride elements)
 * = src window [y0, y0 + h) x [x0, x0 + w) of (n, src_h, src_w, .) channels
 * [src_off, src_off + c) (pixel stride src_stride), plus bias[c] (f32, may be NULL).
 * Covers the centre crop into the first half of a concat buffer and the copy of a
 * transposed convolution's output (+ bias) into its second half. */
int unet_cuda_copy_window (const void *src, int src_h, int src_w, int src_stride, int src_off,
                           int y0, int x0, void *dst, int dst_stride, int dst_off, int n,
                           int h, int w, int c, const float *bias, UnetCudaDType dtype,
                           UnetCudaStream stream);
/* The backward of copy_window: dst window [y0, y0 + h) x [x0, x0 + w) of (n, dst_h, dst_w,
 * .) channels [dst_off, dst_off + c) (pixel stride dst_stride) += src (n, h, w, .)
 * channels [src_off, src_off + c) (pixel stride src_stride). The gradient of a crop:
 * zero dst first for a written (not accumulated) gradient. */
int unet_cuda_window_add (const void *src, int src_stride, int src_off, void *dst, int dst_h,
                          int dst_w, int dst_stride, int dst_off, int y0, int x0, int n,
                          int h, int w, int c, UnetCudaDType dtype, UnetCudaStream stream);
/* y (pixels, classes) = softmax over classes (classes >= 2) or sigmoid (classes == 1),
 * computed in f32; in place allowed. */
int unet_cuda_softmax (const void *x, void *y, UnetCudaDType dtype, size_t pixels,
                       int classes, UnetCudaStream stream);
/* y (+)= x, count elements (accumulate gradients of a tensor used twice). */
int unet_cuda_add (const void *x, void *y, UnetCudaDType dtype, size_t count,
                   UnetCudaStream stream);

/* ----------------------------------------------------------------- loss -- */

/* Weighted cross-entropy over pixels. logits (n_pix, classes) dtype; labels (n_pix) u8;
 * weights (n_pix) f32 or NULL (1). Pixels whose label == ignore_label (or >= classes
 * for classes >= 2) contribute nothing. classes >= 2: softmax cross-entropy
 * -log softmax(z)[y]; classes == 1: binary cross-entropy with logits, y in {0, 1}.
 * out[0] = sum of w * loss, out[1] = sum of w over counted pixels (f64, deterministic).
 * grad (n_pix, classes) f32 (may be NULL) = grad_scale * w * dloss/dz, i.e.
 * softmax(z) - onehot(y) (or sigmoid(z) - y). partials: 2 * UNET_CUDA_REDUCE_BLOCKS
 * doubles of scratch. */
int unet_cuda_weighted_xent (const void *logits, UnetCudaDType dtype, const uint8_t *labels,
                             const float *weights, size_t n_pix, int classes,
                             int ignore_label, float grad_scale, float *grad,
                             double *partials, double *out, UnetCudaStream stream);

/* x (count f32) *= 1 / sum[1] (0 when sum[1] is 0): dL/dlogits written by
 * unet_cuda_weighted_xent with grad_scale = S alone, normalised by the sum of
 * weights it computed into sum (out), on the device (targets built there). */
int unet_cuda_scale_by_weight_sum (float *x, size_t count, const double *sum,
                                   UnetCudaStream stream);

/* The confusion matrix of a batch: confusion (16 x 16 u64, [label][prediction],
 * zeroed by the caller) += one count per pixel whose label is not ignore_label
 * (kb_confusion_cell: argmax, or z > 0 for one class). Labels must be valid;
 * classes 1..16. */
int unet_cuda_confusion (const void *logits, UnetCudaDType dtype, const uint8_t *labels,
                         size_t n_pix, int classes, int ignore_label,
                         unsigned long long *confusion, UnetCudaStream stream);
/* Soft Dice's sums over the pixels whose label is not ignore_label (kb_dice_sums_pixel):
 * sums[c], sums[16 + c], sums[32 + c] = intersection, probability sum and label count
 * of foreground class c (f64, deterministic; 48 doubles written). partials:
 * 48 * UNET_CUDA_REDUCE_BLOCKS doubles of scratch. classes 1..16. */
int unet_cuda_dice_sums (const void *logits, UnetCudaDType dtype, const uint8_t *labels,
                         size_t n_pix, int classes, int ignore_label, double *partials,
                         double *sums, UnetCudaStream stream);
/* grad (n_pix, classes) f32 += scale * d(soft Dice)/dz from the sums above
 * (kb_dice_grad_pixel). */
int unet_cuda_dice_grad (const void *logits, UnetCudaDType dtype, const uint8_t *labels,
                         size_t n_pix, int classes, int ignore_label, const double *sums,
                         float scale, float *grad, UnetCudaStream stream);

/* -------------------------------------------------------------- optimiser -- */

/* One slice of torch.optim.SGD (dampening 0; momentum_buf NULL: no momentum) on f32
 * master parameters from f32 gradients: unet_optim_sgd_elem (engine/optim-elem.h)
 * per element. skip (device int, may be NULL): non-zero -> nothing changes (a
 * non-finite gradient flagged by unet_cuda_check_finite before, same stream). */
int unet_cuda_optim_sgd (float *params, const float *grads, float *momentum_buf,
                         size_t count, double lr, double momentum, double weight_decay,
                         int nesterov, int first, const int *skip, UnetCudaStream stream);
/* One slice of torch.optim.Adam / AdamW (decoupled): unet_optim_adam_elem per element,
 * step_size = lr / (1 - beta1^t), bc2_sqrt = sqrt(1 - beta2^t); skip as above. */
int unet_cuda_optim_adam (float *params, const float *grads, float *m, float *v,
                          size_t count, double lr, double beta1, double beta2, double eps,
                          double weight_decay, int decoupled, double step_size,
                          double bc2_sqrt, const int *skip, UnetCudaStream stream);
/* *flag (int, zeroed by the caller) becomes 1 if any element is inf or NaN (fp16 loss
 * scaling skips such steps). */
int unet_cuda_check_finite (const void *x, UnetCudaDType dtype, size_t count, int *flag,
                            UnetCudaStream stream);

/* ------------------------------------------------------------------ warp -- */

#define UNET_CUDA_WARP_MAX_GRID 16

/* One training sample's geometric augmentation, applied in one pass. Output pixel
 * (x, y) of an out_w x out_h patch samples the source at
 *   (sx, sy) = A * (x, y, 1) + d(x, y)
 * where A = affine[0..5] (row-major 2x3: rotation, flip, patch origin) and d is the
 * elastic displacement: a grid_w x grid_h array of (dx, dy) pairs (grid[(j*grid_w+i)*2])
 * spread evenly over the patch (node i at x = i * (out_w - 1) / (grid_w - 1)) and
 * interpolated bicubically (Catmull-Rom) in between. Sampling uses the mirror rule
 * outside the source: image (channels, src_h, src_w) f32 bicubic (Catmull-Rom), labels
 * (src_h, src_w) u8 nearest, weights (src_h, src_w) f32 bilinear. Any source may be
 * NULL (its output is skipped). */
typedef struct
{
  float affine[6];
  int grid_w, grid_h;           /* 2..UNET_CUDA_WARP_MAX_GRID, or 0 for no elastic part */
  float grid[UNET_CUDA_WARP_MAX_GRID * UNET_CUDA_WARP_MAX_GRID * 2];
} UnetCudaWarp;

int unet_cuda_warp_sample (const float *image, int channels, const uint8_t *labels,
                           const float *weights, int src_w, int src_h,
                           const UnetCudaWarp *warp, float *out_image, uint8_t *out_labels,
                           float *out_weights, int out_w, int out_h, UnetCudaStream stream);

/* One entry of an augmented batch: a training sample resident on the device and
 * its drawn augmentation (engine/training.h's UnetAugmentDraw, in float). Tile pixel
 * (u, v) samples the frame at (origin_x, origin_y) + l with the local position
 *   l = affine * (u, v, 1) + d(u, v),
 * d the Catmull-Rom interpolation of the grid x grid displacement pairs at
 * grids + grid_offset (layout as UnetCudaWarp's grid, nodes spanning the input
 * tile; grid 0: none). The origin is the integer part of the tile centre's frame
 * position, so l stays within about a tile of 0. */
typedef struct
{
  const float *image;           /* (channels, src_h, src_w) f32 */
  const uint8_t *labels;        /* (src_h, src_w) u8, 255 = ignore */
  const float *weights;         /* (src_h, src_w) f32, or NULL (1 on labelled pixels) */
  int src_w, src_h;
  int origin_x, origin_y;
  float affine[6];
  int grid, grid_offset;
  int bilinear;                 /* the image bilinear, else bicubic (Catmull-Rom) */
  int intensity;                /* gray-value changes on */
  float gamma, contrast, brightness;
} UnetCudaAugSample;

/* A training batch of n entries from resident samples, as unet_augment_apply_host
 * makes it on the host (kb_augment_pixel, kb_augment_finish_elem):
 *   input (n, in_h, in_w, channels) dtype: the warped image (bicubic or bilinear),
 *     then per entry with intensity: gamma on the tile's min..max range, contrast
 *     around the mean of the result, brightness;
 *   labels (n, out_h, out_w) u8 (nearest) and weights (n, out_h, out_w) f32
 *     (bilinear, 0 where the label is ignore_label): the centred output region.
 * samples and grids are device memory (the per-step upload); tile (n, channels,
 * in_h, in_w) f32 and stats (3 n doubles) are scratch. Three kernels: the warp, one
 * block per tile for its min/max and mean (deterministic), the gray values with the
 * layout change. */
int unet_cuda_augment_batch (const UnetCudaAugSample *samples, const float *grids, int n,
                             int channels, int in_w, int in_h, int out_w, int out_h,
                             int ignore_label, float *tile, double *stats, void *input,
                             UnetCudaDType dtype, uint8_t *labels, float *weights,
                             UnetCudaStream stream);

/* -------------------------------------------------------------- training -- */

/* dst (a, b, kk) f32 += scale * src (a, kk, b) dtype: a cuDNN NHWC filter gradient
 * (conv [cout, k, k, cin]: a = cout, b = cin; transposed conv [cin, 2, 2, cout]:
 * a = cin, b = cout) into the gradient slab in PyTorch layout. */
int unet_cuda_filter_grad_accumulate (const void *src, UnetCudaDType dtype, float *dst, int a,
                                      int b, int kk, float scale, UnetCudaStream stream);
/* y += scale * x, count f32 elements. */
int unet_cuda_scale_add_f32 (const float *x, float *y, size_t count, float scale,
                             UnetCudaStream stream);

#ifdef __cplusplus
}
#endif
