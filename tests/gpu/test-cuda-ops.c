/* GPU op conformance: every hand-written CUDA kernel (engine/cuda/ .cu files) against a
 * host reference written here from the op's definition (PyTorch semantics where a
 * PyTorch module exists), on awkward shapes (odd sizes, size 1, sizes that are not
 * multiples of the block size), for every activation precision.
 *
 * Tolerances, per precision of the op's input/output element type:
 *   F32:  1e-5 relative + 1e-6 absolute — the kernels compute in f32 like the
 *         reference; differences come from __expf (fast exp, a few ulp) and
 *         summation order only. Pure data movement (pooling, copies) is exact.
 *   F16:  inputs are first rounded to f16 on the device and the reference uses the
 *         rounded values, so only the output rounding remains: 2^-11 relative is half
 *         an ulp; 1e-3 allows one ulp plus the f32 compute differences.
 *   BF16: the same with 8 mantissa bits: 2^-8 = 3.9e-3 relative for one ulp; 8e-3.
 * Exits 77 without a CUDA device. */
#include "config.h"

#include "cuda-kernels.h"
#include "gpu-test.h"
#include "normalize-private.h"
#include "tiling.h"
#include "training.h"

static const char *dtype_names[] = { "f32", "f16", "bf16" };
static const double dtype_rtol[] = { 1e-5, 1e-3, 8e-3 };

static int failures;

/* Device tensor of `n` values of `dtype` made from host floats; `rounded` receives
 * the values as the device holds them (after rounding to dtype). */
static void *
make_input (const float *host, size_t n, UnetCudaDType dtype, float *rounded)
{
  float *f = dev_from_host (host, n * sizeof (float));
  void *d = dev_alloc (n * unet_cuda_dtype_size (dtype));
  GPU_OK (unet_cuda_cast_from_f32 (f, d, dtype, n, NULL));
  GPU_OK (unet_cuda_cast_to_f32 (d, dtype, f, n, NULL));
  host_from_dev (rounded, f, n * sizeof (float));
  cudaFree (f);
  return d;
}

static void
read_output (float *host, const void *dev, size_t n, UnetCudaDType dtype)
{
  float *f = dev_alloc (n * sizeof (float));
  GPU_OK (unet_cuda_cast_to_f32 (dev, dtype, f, n, NULL));
  host_from_dev (host, f, n * sizeof (float));
  cudaFree (f);
}

static void
random_fill (float *x, size_t n, guint64 seed, float lo, float hi)
{
  for (size_t i = 0; i < n; i++)
    x[i] = rand_uniform (&seed, lo, hi);
}

/* ------------------------------------------------------------------ tests -- */

static void
test_extract_tiles (void)
{
  /* a 13x7 frame with padded rows, tiles far outside it (mirror reflects more than
   * once) and inside it; every pixel format */
  const int fw = 13, fh = 7, tw = 31, th = 17, n_tiles = 3;
  const int ox[] = { -20, 5, 9 }, oy[] = { -9, 3, -30 };
  const float offset = 3.0f, scale = 0.25f;
  const size_t stride = 64;
  guint8 *frame = g_malloc0 (stride * fh);
  float *got = g_new (float, (size_t) n_tiles * tw * th), *want = g_new (float,
      (size_t) n_tiles * tw * th);
  guint64 seed = 1;

  for (int fmt = UNET_CUDA_PIXEL_U8; fmt <= UNET_CUDA_PIXEL_F32; fmt++) {
    for (int y = 0; y < fh; y++)
      for (int x = 0; x < fw; x++) {
        float v = rand_uniform (&seed, 0.0f, fmt == UNET_CUDA_PIXEL_U8 ? 255.0f : 65535.0f);
        if (fmt == UNET_CUDA_PIXEL_U8)
          frame[y * stride + x] = (guint8) v;
        else if (fmt == UNET_CUDA_PIXEL_U16)
          ((guint16 *) (frame + y * stride))[x] = (guint16) v;
        else
          ((float *) (frame + y * stride))[x] = v;
      }
    for (int t = 0; t < n_tiles; t++)
      for (int y = 0; y < th; y++)
        for (int x = 0; x < tw; x++) {
          int sx = unet_mirror_index (ox[t] + x, fw), sy = unet_mirror_index (oy[t] + y, fh);
          const guint8 *row = frame + sy * stride;
          float v = fmt == UNET_CUDA_PIXEL_U8 ? row[sx] : fmt == UNET_CUDA_PIXEL_U16 ?
              ((const guint16 *) row)[sx] : ((const float *) row)[sx];
          want[((size_t) t * th + y) * tw + x] = (v - offset) * scale;
        }
    void *dframe = dev_from_host (frame, stride * fh);
    float *dout = dev_alloc ((size_t) n_tiles * tw * th * sizeof (float));
    GPU_OK (unet_cuda_extract_tiles (dframe, (UnetCudaPixel) fmt, fw, fh, stride, 1, ox, oy,
            n_tiles, tw, th, offset, scale, dout, UNET_CUDA_F32, NULL));
    host_from_dev (got, dout, (size_t) n_tiles * tw * th * sizeof (float));
    /* same f32 arithmetic on both sides: exact */
    failures += check_close (fmt == 0 ? "extract u8" : fmt == 1 ? "extract u16" : "extract f32",
        got, want, (size_t) n_tiles * tw * th, 0.0, 0.0);
    cudaFree (dframe);
    cudaFree (dout);
  }
  /* n == 1 frames map everything to the single pixel */
  for (int i = -5; i <= 5; i++)
    if (unet_cuda_mirror_index (i, 1) != 0) {
      fprintf (stderr, "FAIL mirror index n=1\n");
      failures++;
    }
  g_free (frame);
  g_free (got);
  g_free (want);
}

static void
host_probs (const float *z, int classes, float *p, int *arg)
{
  if (classes == 1) {
    p[0] = 1.0f / (1.0f + expf (-z[0]));
    *arg = p[0] >= 0.5f;
    return;
  }
  float m = z[0];
  *arg = 0;
  for (int k = 1; k < classes; k++)
    if (z[k] > m) {
      m = z[k];
      *arg = k;
    }
  double s = 0;
  for (int k = 0; k < classes; k++)
    s += exp (z[k] - m);
  for (int k = 0; k < classes; k++)
    p[k] = (float) (exp (z[k] - m) / s);
}

static void
test_stitch_and_softmax (UnetCudaDType dt)
{
  const int n_tiles = 2, oh = 6, ow = 5, fw = 11, fh = 9;
  const UnetCudaBlock blocks[] = { { 1, 0, 0, 0, 4, 6 }, { 0, 2, 4, 3, 5, 4 } };
  for (int classes = 1; classes <= 3; classes += 2) {
    size_t n = (size_t) n_tiles * oh * ow * classes;
    float *z = g_new (float, n), *zr = g_new (float, n);
    float *probs = g_new0 (float, (size_t) fw * fh), *want_p = g_new0 (float, (size_t) fw * fh);
    guint8 *labels = g_new0 (guint8, (size_t) fw * fh), *want_l = g_new0 (guint8,
        (size_t) fw * fh);
    float *sm = g_new (float, n), *want_sm = g_new (float, n);
    char what[64];
    int prob_class = classes - 1;

    random_fill (z, n, 7 + classes, -4.0f, 4.0f);
    void *dz = make_input (z, n, dt, zr);
    for (int t = 0; t < n_tiles; t++)
      for (int y = 0; y < blocks[t].h; y++)
        for (int x = 0; x < blocks[t].w; x++) {
          float p[3];
          int arg;
          host_probs (zr + (((size_t) t * oh + blocks[t].src_y + y) * ow + blocks[t].src_x + x)
              * classes, classes, p, &arg);
          size_t o = (size_t) (blocks[t].dst_y + y) * fw + blocks[t].dst_x + x;
          want_p[o] = p[prob_class];
          want_l[o] = (guint8) arg;
        }
    guint8 *dl = dev_alloc ((size_t) fw * fh);
    float *dp = dev_alloc ((size_t) fw * fh * sizeof (float));
    GPU_OK (unet_cuda_stitch_blocks (dz, dt, n_tiles, oh, ow, classes, blocks, dl, fw, dp,
            fw * sizeof (float), prob_class, NULL));
    host_from_dev (labels, dl, (size_t) fw * fh);
    host_from_dev (probs, dp, (size_t) fw * fh * sizeof (float));
    g_snprintf (what, sizeof what, "stitch probs K=%d %s", classes, dtype_names[dt]);
    /* probabilities are f32 from the rounded logits: f32 tolerance */
    failures += check_close (what, probs, want_p, (size_t) fw * fh, 1e-6, 1e-5);
    for (int i = 0; i < fw * fh; i++) {
      /* a tie within f32 rounding of the logits could flip the argmax; with random
       * logits in [-4, 4] that does not happen for these seeds */
      if (labels[i] != want_l[i]) {
        fprintf (stderr, "FAIL stitch labels K=%d %s at %d: %d vs %d\n", classes,
            dtype_names[dt], i, labels[i], want_l[i]);
        failures++;
        break;
      }
    }
    /* softmax op over every pixel, output in dt */
    void *dsm = dev_alloc (n * unet_cuda_dtype_size (dt));
    GPU_OK (unet_cuda_softmax (dz, dsm, dt, n / classes, classes, NULL));
    read_output (sm, dsm, n, dt);
    for (size_t i = 0; i < n / classes; i++) {
      int arg;
      host_probs (zr + i * classes, classes, want_sm + i * classes, &arg);
    }
    g_snprintf (what, sizeof what, "softmax K=%d %s", classes, dtype_names[dt]);
    failures += check_close (what, sm, want_sm, n, 1e-6, dtype_rtol[dt]);
    cudaFree (dz);
    cudaFree (dl);
    cudaFree (dp);
    cudaFree (dsm);
    g_free (z);
    g_free (zr);
    g_free (probs);
    g_free (want_p);
    g_free (labels);
    g_free (want_l);
    g_free (sm);
    g_free (want_sm);
  }
}

static void
test_pool (UnetCudaDType dt)
{
  const int n = 2, h = 7, w = 9, c = 3, oh = h / 2, ow = w / 2;
  size_t nx = (size_t) n * h * w * c, ny = (size_t) n * oh * ow * c;
  float *x = g_new (float, nx), *xr = g_new (float, nx), *y = g_new (float, ny);
  float *want = g_new (float, ny), *dy = g_new (float, ny), *dyr = g_new (float, ny);
  float *dx = g_new (float, nx), *want_dx = g_new0 (float, nx);
  char what[64];

  random_fill (x, nx, 3, -1.0f, 1.0f);
  random_fill (dy, ny, 4, -1.0f, 1.0f);
  void *dxin = make_input (x, nx, dt, xr);
  void *ddy = make_input (dy, ny, dt, dyr);
  void *dyout = dev_alloc (ny * unet_cuda_dtype_size (dt));
  void *ddx = dev_alloc (nx * unet_cuda_dtype_size (dt));
  guint8 *darg = dev_alloc (ny);
  for (int b = 0; b < n; b++)
    for (int oy = 0; oy < oh; oy++)
      for (int ox = 0; ox < ow; ox++)
        for (int ch = 0; ch < c; ch++) {
          size_t best = 0;
          float m = -INFINITY;
          for (int k = 0; k < 4; k++) {
            size_t i = (((size_t) b * h + oy * 2 + k / 2) * w + ox * 2 + k % 2) * c + ch;
            if (xr[i] > m) {
              m = xr[i];
              best = i;
            }
          }
          size_t o = (((size_t) b * oh + oy) * ow + ox) * c + ch;
          want[o] = m;
          want_dx[best] += dyr[o];
        }
  GPU_OK (unet_cuda_maxpool_forward (dxin, dyout, darg, dt, n, h, w, c, NULL));
  GPU_OK (unet_cuda_maxpool_backward (ddy, darg, ddx, dt, n, h, w, c, 0, NULL));
  read_output (y, dyout, ny, dt);
  read_output (dx, ddx, nx, dt);
  /* selection and routing move values unchanged: exact */
  g_snprintf (what, sizeof what, "maxpool fwd %s", dtype_names[dt]);
  failures += check_close (what, y, want, ny, 0.0, 0.0);
  g_snprintf (what, sizeof what, "maxpool bwd %s", dtype_names[dt]);
  failures += check_close (what, dx, want_dx, nx, 0.0, 0.0);
  cudaFree (dxin);
  cudaFree (ddy);
  cudaFree (dyout);
  cudaFree (ddx);
  cudaFree (darg);
  g_free (x);
  g_free (xr);
  g_free (y);
  g_free (want);
  g_free (dy);
  g_free (dyr);
  g_free (dx);
  g_free (want_dx);
}

static void
test_concat (UnetCudaDType dt)
{
  /* encoder output (1, 9, 8, 3) cropped at (2, 1) to 5x6, concat with (1, 5, 6, 2) */
  const int n = 1, ha = 9, wa = 8, ca = 3, h = 5, w = 6, cb = 2, oy = 2, ox = 1;
  size_t na = (size_t) n * ha * wa * ca, nb = (size_t) n * h * w * cb;
  size_t no = (size_t) n * h * w * (ca + cb);
  float *a = g_new (float, na), *ar = g_new (float, na), *b = g_new (float, nb);
  float *br = g_new (float, nb), *out = g_new (float, no), *want = g_new (float, no);
  float *da = g_new (float, na), *want_da = g_new (float, na), *db = g_new (float, nb);
  float *want_db = g_new (float, nb), *win = g_new (float, no);
  char what[64];

  random_fill (a, na, 5, -2.0f, 2.0f);
  random_fill (b, nb, 6, -2.0f, 2.0f);
  void *d_a = make_input (a, na, dt, ar), *d_b = make_input (b, nb, dt, br);
  void *d_out = dev_alloc (no * unet_cuda_dtype_size (dt));
  for (int y = 0; y < h; y++)
    for (int x = 0; x < w; x++) {
      for (int c = 0; c < ca; c++)
        want[((size_t) y * w + x) * (ca + cb) + c] = ar[(((size_t) y + oy) * wa + x + ox) * ca + c];
      for (int c = 0; c < cb; c++)
        want[((size_t) y * w + x) * (ca + cb) + ca + c] = br[((size_t) y * w + x) * cb + c];
    }
  GPU_OK (unet_cuda_crop_concat (d_a, ha, wa, ca, oy, ox, d_b, cb, d_out, dt, n, h, w, NULL));
  read_output (out, d_out, no, dt);
  g_snprintf (what, sizeof what, "crop+concat %s", dtype_names[dt]);
  failures += check_close (what, out, want, no, 0.0, 0.0);

  /* the same through copy_window into the two halves (what the backend does) */
  void *d_win = dev_alloc (no * unet_cuda_dtype_size (dt));
  GPU_OK (unet_cuda_copy_window (d_a, ha, wa, ca, 0, oy, ox, d_win, ca + cb, 0, n, h, w, ca,
          NULL, dt, NULL));
  GPU_OK (unet_cuda_copy_window (d_b, h, w, cb, 0, 0, 0, d_win, ca + cb, ca, n, h, w, cb,
          NULL, dt, NULL));
  read_output (win, d_win, no, dt);
  g_snprintf (what, sizeof what, "copy_window halves %s", dtype_names[dt]);
  failures += check_close (what, win, want, no, 0.0, 0.0);

  /* backward: da starts as `a` (the pooling's gradient), the window adds */
  memcpy (want_da, ar, na * sizeof (float));
  for (int y = 0; y < h; y++)
    for (int x = 0; x < w; x++) {
      for (int c = 0; c < ca; c++)
        want_da[(((size_t) y + oy) * wa + x + ox) * ca + c] += want[((size_t) y * w + x) * (ca + cb) + c];
      for (int c = 0; c < cb; c++)
        want_db[((size_t) y * w + x) * cb + c] = want[((size_t) y * w + x) * (ca + cb) + ca + c];
    }
  void *d_db = dev_alloc (nb * unet_cuda_dtype_size (dt));
  GPU_OK (unet_cuda_crop_concat_backward (d_out, d_a, ha, wa, ca, oy, ox, d_db, cb, dt, n, h,
          w, NULL));
  read_output (da, d_a, na, dt);
  read_output (db, d_db, nb, dt);
  g_snprintf (what, sizeof what, "crop+concat bwd da %s", dtype_names[dt]);
  /* one addition rounded to dt */
  failures += check_close (what, da, want_da, na, 1e-6, dtype_rtol[dt]);
  g_snprintf (what, sizeof what, "crop+concat bwd db %s", dtype_names[dt]);
  failures += check_close (what, db, want_db, nb, 0.0, 0.0);
  cudaFree (d_a);
  cudaFree (d_b);
  cudaFree (d_out);
  cudaFree (d_win);
  cudaFree (d_db);
  g_free (a);
  g_free (ar);
  g_free (b);
  g_free (br);
  g_free (out);
  g_free (want);
  g_free (da);
  g_free (want_da);
  g_free (db);
  g_free (want_db);
  g_free (win);
}

static void
test_channel_ops (UnetCudaDType dt)
{
  /* rows x channels with channels both below and above the block size */
  const int chans[] = { 1, 5, 300 };
  for (int ci = 0; ci < 3; ci++) {
    const int c = chans[ci];
    const size_t rows = 1037, n = rows * c;
    float *x = g_new (float, n), *xr = g_new (float, n), *y = g_new (float, n);
    float *want = g_new (float, n), *bias = g_new (float, c), *db = g_new (float, c);
    float *want_db = g_new0 (float, c), *gamma = g_new (float, c), *beta = g_new (float, c);
    float *dx = g_new (float, n), *want_dx = g_new (float, n);
    double *sum = g_new0 (double, c), *sum2 = g_new0 (double, c), *sdy = g_new0 (double, c),
        *sdyx = g_new0 (double, c);
    float *rm = g_new (float, c), *rv = g_new (float, c), *want_rm = g_new (float, c),
        *want_rv = g_new (float, c);
    char what[96];

    random_fill (x, n, 11 + c, -3.0f, 3.0f);
    random_fill (bias, c, 12 + c, -1.0f, 1.0f);
    random_fill (gamma, c, 13 + c, 0.5f, 1.5f);
    random_fill (beta, c, 14 + c, -0.5f, 0.5f);
    void *d_x = make_input (x, n, dt, xr);
    void *d_y = dev_alloc (n * unet_cuda_dtype_size (dt));
    float *d_bias = dev_from_host (bias, c * sizeof (float));
    float *d_db = dev_alloc (c * sizeof (float));
    double *partials = dev_alloc (((size_t) UNET_CUDA_REDUCE_BLOCKS * 2 + 2) * c * sizeof (double));

    /* bias + ReLU */
    for (size_t i = 0; i < n; i++)
      want[i] = fmaxf (xr[i] + bias[i % c], 0.0f);
    GPU_OK (unet_cuda_bias_act (d_x, d_y, dt, d_bias, n, c, 1, NULL));
    read_output (y, d_y, n, dt);
    g_snprintf (what, sizeof what, "bias+relu c=%d %s", c, dtype_names[dt]);
    failures += check_close (what, y, want, n, 1e-6, dtype_rtol[dt]);

    /* ReLU backward from the output y, then the bias gradient of x (as dy) */
    float *yr = g_new (float, n);
    read_output (yr, d_y, n, dt);
    for (size_t i = 0; i < n; i++)
      want[i] = yr[i] > 0.0f ? xr[i] : 0.0f;
    GPU_OK (unet_cuda_relu_backward (d_y, d_x, d_y, dt, n, NULL));
    read_output (y, d_y, n, dt);
    g_snprintf (what, sizeof what, "relu bwd c=%d %s", c, dtype_names[dt]);
    failures += check_close (what, y, want, n, 0.0, 0.0);
    g_free (yr);

    for (size_t i = 0; i < n; i++)
      sum[i % c] += xr[i];
    for (int k = 0; k < c; k++)
      want_db[k] = (float) sum[k] + 0.5f;
    for (int k = 0; k < c; k++)
      db[k] = 0.5f;             /* accumulate onto 0.5 */
    GPU_OK (cudaMemcpy (d_db, db, c * sizeof (float), cudaMemcpyHostToDevice));
    GPU_OK (unet_cuda_bias_grad (d_x, dt, rows, c, d_db, 1, partials, NULL));
    host_from_dev (db, d_db, c * sizeof (float));
    g_snprintf (what, sizeof what, "bias grad c=%d %s", c, dtype_names[dt]);
    /* f64 sums of the same values, one final f32 rounding each side */
    failures += check_close (what, db, want_db, c, 1e-5, 1e-6);

    /* batch norm, training mode (torch.nn.BatchNorm2d, momentum 0.1, eps 1e-5) */
    for (size_t i = 0; i < n; i++)
      sum2[i % c] += (double) xr[i] * xr[i];
    float *d_gamma = dev_from_host (gamma, c * sizeof (float));
    float *d_beta = dev_from_host (beta, c * sizeof (float));
    for (int k = 0; k < c; k++) {
      rm[k] = 0.0f;
      rv[k] = 1.0f;
    }
    float *d_rm = dev_from_host (rm, c * sizeof (float)), *d_rv = dev_from_host (rv,
        c * sizeof (float));
    float *d_mean = dev_alloc (c * sizeof (float)), *d_invstd = dev_alloc (c * sizeof (float));
    double *mean = g_new (double, c), *invstd = g_new (double, c);
    for (int k = 0; k < c; k++) {
      mean[k] = sum[k] / rows;
      double var = sum2[k] / rows - mean[k] * mean[k];
      invstd[k] = 1.0 / sqrt (var + 1e-5);
      want_rm[k] = (float) (0.1 * mean[k]);
      want_rv[k] = (float) (0.9 + 0.1 * var * rows / (rows - 1));
    }
    for (size_t i = 0; i < n; i++) {
      int k = (int) (i % c);
      want[i] = (float) ((xr[i] - mean[k]) * invstd[k] * gamma[k] + beta[k]);
    }
    GPU_OK (unet_cuda_batchnorm_forward_train (d_x, d_y, dt, rows, c, d_gamma, d_beta, 1e-5f,
            0.1f, d_rm, d_rv, d_mean, d_invstd, partials, NULL));
    read_output (y, d_y, n, dt);
    host_from_dev (rm, d_rm, c * sizeof (float));
    host_from_dev (rv, d_rv, c * sizeof (float));
    g_snprintf (what, sizeof what, "batchnorm fwd c=%d %s", c, dtype_names[dt]);
    /* normalised values are O(1): absolute 1e-5 covers f32 rounding of mean/invstd */
    failures += check_close (what, y, want, n, 1e-5, dtype_rtol[dt]);
    g_snprintf (what, sizeof what, "batchnorm running stats c=%d %s", c, dtype_names[dt]);
    failures += check_close (what, rm, want_rm, c, 1e-6, 1e-5);
    failures += check_close (what, rv, want_rv, c, 1e-6, 1e-5);

    /* backward with dy = x (any data will do), dgamma/dbeta accumulate from 0 */
    for (size_t i = 0; i < n; i++) {
      int k = (int) (i % c);
      double xhat = (xr[i] - mean[k]) * invstd[k];
      sdy[k] += xr[i];
      sdyx[k] += xr[i] * xhat;
    }
    for (size_t i = 0; i < n; i++) {
      int k = (int) (i % c);
      double xhat = (xr[i] - mean[k]) * invstd[k];
      want_dx[i] = (float) (gamma[k] * invstd[k] / rows * (rows * (double) xr[i] - sdy[k]
              - xhat * sdyx[k]));
    }
    float *d_dg = dev_alloc (c * sizeof (float)), *d_dbeta = dev_alloc (c * sizeof (float));
    GPU_OK (unet_cuda_batchnorm_backward (d_x, d_x, d_y, dt, rows, c, d_gamma, d_mean,
            d_invstd, d_dg, d_dbeta, partials, NULL));
    read_output (dx, d_y, n, dt);
    g_snprintf (what, sizeof what, "batchnorm bwd c=%d %s", c, dtype_names[dt]);
    /* dx is a difference of O(rows) sums scaled by 1/rows: absolute 1e-4 */
    failures += check_close (what, dx, want_dx, n, 1e-4, dtype_rtol[dt]);

    cudaFree (d_x);
    cudaFree (d_y);
    cudaFree (d_bias);
    cudaFree (d_db);
    cudaFree (partials);
    cudaFree (d_gamma);
    cudaFree (d_beta);
    cudaFree (d_rm);
    cudaFree (d_rv);
    cudaFree (d_mean);
    cudaFree (d_invstd);
    cudaFree (d_dg);
    cudaFree (d_dbeta);
    g_free (x);
    g_free (xr);
    g_free (y);
    g_free (want);
    g_free (bias);
    g_free (db);
    g_free (want_db);
    g_free (gamma);
    g_free (beta);
    g_free (dx);
    g_free (want_dx);
    g_free (sum);
    g_free (sum2);
    g_free (sdy);
    g_free (sdyx);
    g_free (rm);
    g_free (rv);
    g_free (want_rm);
    g_free (want_rv);
    g_free (mean);
    g_free (invstd);
  }
}

static void
test_loss (UnetCudaDType dt)
{
  for (int classes = 1; classes <= 3; classes += 2) {
    const size_t n_pix = 999;
    size_t n = n_pix * classes;
    float *z = g_new (float, n), *zr = g_new (float, n), *w = g_new (float, n_pix);
    float *grad = g_new (float, n), *want = g_new (float, n);
    guint8 *lab = g_new (guint8, n_pix);
    double out[2], lsum = 0.0, wsum = 0.0;
    guint64 seed = 21 + classes;
    char what[64];

    random_fill (z, n, 20 + classes, -5.0f, 5.0f);
    for (size_t i = 0; i < n_pix; i++) {
      lab[i] = (guint8) (rand_uniform (&seed, 0.0f, classes == 1 ? 2.0f : classes + 0.999f));
      w[i] = rand_uniform (&seed, 0.1f, 10.0f);
    }
    lab[3] = 255;                 /* ignored */
    void *d_z = make_input (z, n, dt, zr);
    guint8 *d_lab = dev_from_host (lab, n_pix);
    float *d_w = dev_from_host (w, n_pix * sizeof (float));
    float *d_grad = dev_alloc (n * sizeof (float));
    double *partials = dev_alloc (2 * UNET_CUDA_REDUCE_BLOCKS * sizeof (double));
    double *d_out = dev_alloc (2 * sizeof (double));
    const float gs = 0.01f;

    for (size_t i = 0; i < n_pix; i++) {
      int y = lab[i];
      int counted = y != 255 && (classes == 1 ? y <= 1 : y < classes);
      double wi = counted ? w[i] : 0.0;
      if (classes == 1) {
        double zi = zr[i], p = 1.0 / (1.0 + exp (-zi));
        if (counted) {
          lsum += wi * (fmax (zi, 0.0) - zi * y + log1p (exp (-fabs (zi))));
          wsum += wi;
        }
        want[i] = (float) (gs * wi * (p - y));
      } else {
        double m = zr[i * classes], s = 0.0;
        for (int k = 1; k < classes; k++)
          m = fmax (m, zr[i * classes + k]);
        for (int k = 0; k < classes; k++)
          s += exp (zr[i * classes + k] - m);
        double lse = m + log (s);
        if (counted) {
          lsum += wi * (lse - zr[i * classes + y]);
          wsum += wi;
        }
        for (int k = 0; k < classes; k++)
          want[i * classes + k] = (float) (gs * wi * (exp (zr[i * classes + k] - lse)
                  - (k == y ? 1.0 : 0.0)));
      }
    }
    GPU_OK (unet_cuda_weighted_xent (d_z, dt, d_lab, d_w, n_pix, classes, 255, gs, d_grad,
            partials, d_out, NULL));
    host_from_dev (out, d_out, sizeof out);
    host_from_dev (grad, d_grad, n * sizeof (float));
    g_snprintf (what, sizeof what, "xent grad K=%d %s", classes, dtype_names[dt]);
    /* f32 compute with __expf/__logf against f64: a few ulp of f32 */
    failures += check_close (what, grad, want, n, 1e-6, 1e-4);
    {
      float got2[2] = { (float) out[0], (float) out[1] }, want2[2] = { (float) lsum,
        (float) wsum };
      g_snprintf (what, sizeof what, "xent sums K=%d %s", classes, dtype_names[dt]);
      /* per-pixel f32 losses summed in f64 */
      failures += check_close (what, got2, want2, 2, 1e-4, 1e-5);
    }
    cudaFree (d_z);
    cudaFree (d_lab);
    cudaFree (d_w);
    cudaFree (d_grad);
    cudaFree (partials);
    cudaFree (d_out);
    g_free (z);
    g_free (zr);
    g_free (w);
    g_free (grad);
    g_free (want);
    g_free (lab);
  }
}

/* The confusion matrix (shared-memory histograms + atomics) and soft Dice's sums
 * (block reductions) and gradient over whole grids, against unet_confusion_add and
 * unet_loss_soft_dice on the logits as the device holds them. */
static void
test_confusion_dice (UnetCudaDType dt)
{
  for (int classes = 1; classes <= 5; classes += 2) {
    const size_t n_pix = 70001;       /* more pixels than one grid pass of some blocks */
    const size_t n = n_pix * classes;
    float *z = g_new (float, n), *zr = g_new (float, n), *zc = g_new (float, n);
    float *grad = g_new (float, n), *want = g_new0 (float, n), *gc = g_new (float, n);
    guint8 *lab = g_new (guint8, n_pix);
    gint32 *lab32 = g_new (gint32, n_pix);
    guint64 seed = 41 + classes;
    unsigned long long conf[256];
    double sums[48], dice_ref;
    UnetConfusion ref;
    GError *error = NULL;
    char what[64];

    random_fill (z, n, 40 + classes, -4.0f, 4.0f);
    for (size_t i = 0; i < n_pix; i++) {
      int y = (int) rand_uniform (&seed, 0.0f, classes == 1 ? 1.999f : classes - 0.001f);
      if (i % 11 == 3)
        y = 255;
      lab[i] = (guint8) y;
      lab32[i] = y == 255 ? UNET_LABEL_IGNORE : y;
    }
    void *d_z = make_input (z, n, dt, zr);
    for (size_t i = 0; i < n_pix; i++)           /* (pixel, class) -> NCHW, batch 1 */
      for (int k = 0; k < classes; k++)
        zc[(size_t) k * n_pix + i] = zr[i * classes + k];
    unet_confusion_init (&ref, classes);
    g_assert_true (unet_confusion_add (&ref, zc, lab32, 1, classes, 1, (int) n_pix, &error));
    g_assert_true (unet_loss_soft_dice (zc, lab32, 1, classes, 1, (int) n_pix, 2.0, &dice_ref,
            want, &error));
    g_assert_no_error (error);

    guint8 *d_lab = dev_from_host (lab, n_pix);
    unsigned long long *d_conf = dev_alloc (sizeof conf);
    double *partials = dev_alloc (48 * UNET_CUDA_REDUCE_BLOCKS * sizeof (double));
    double *d_sums = dev_alloc (sizeof sums);
    float *d_grad = dev_alloc (n * sizeof (float));
    GPU_OK (cudaMemset (d_conf, 0, sizeof conf));
    GPU_OK (cudaMemset (d_grad, 0, n * sizeof (float)));
    GPU_OK (unet_cuda_confusion (d_z, dt, d_lab, n_pix, classes, 255, d_conf, NULL));
    GPU_OK (unet_cuda_dice_sums (d_z, dt, d_lab, n_pix, classes, 255, partials, d_sums, NULL));
    GPU_OK (unet_cuda_dice_grad (d_z, dt, d_lab, n_pix, classes, 255, d_sums, 2.0f, d_grad,
            NULL));
    host_from_dev (conf, d_conf, sizeof conf);
    host_from_dev (sums, d_sums, sizeof sums);
    host_from_dev (grad, d_grad, n * sizeof (float));
    for (int l = 0; l < 16; l++)
      for (int q = 0; q < 16; q++) {
        guint64 w = l < ref.n_classes && q < ref.n_classes ? ref.n[l][q] : 0;
        if (conf[l * 16 + q] != w) {
          fprintf (stderr, "FAIL confusion K=%d %s [%d][%d] %llu want %" G_GUINT64_FORMAT "\n",
              classes, dtype_names[dt], l, q, conf[l * 16 + q], w);
          failures++;
        }
      }
    {
      const int n_labels = MAX (classes, 2);
      double mean = 0.0;
      for (int c = 1; c < n_labels; c++)
        mean += (2.0 * sums[c] + 1.0) / (sums[16 + c] + sums[32 + c] + 1.0);
      float got1 = (float) (1.0 - mean / (n_labels - 1)), want1 = (float) dice_ref;
      g_snprintf (what, sizeof what, "soft Dice K=%d %s", classes, dtype_names[dt]);
      /* f32 probabilities (__expf) summed in f64 against f64 probabilities */
      failures += check_close (what, &got1, &want1, 1, 1e-6, 1e-5);
    }
    for (size_t i = 0; i < n_pix; i++)
      for (int k = 0; k < classes; k++)
        gc[(size_t) k * n_pix + i] = grad[i * classes + k];
    double gmax = 0.0;
    for (size_t i = 0; i < n; i++)
      gmax = fmax (gmax, fabs (want[i]));
    g_snprintf (what, sizeof what, "soft Dice grad K=%d %s", classes, dtype_names[dt]);
    /* f32 probabilities (a few ulp each) against f64: p_k (dp_k - sum_j p_j dp_j)
     * subtracts terms up to the largest gradient, so 1e-5 of it absolute */
    failures += check_close (what, gc, want, n, 1e-5 * gmax, 1e-4);
    cudaFree (d_z);
    cudaFree (d_lab);
    cudaFree (d_conf);
    cudaFree (partials);
    cudaFree (d_sums);
    cudaFree (d_grad);
    g_free (z);
    g_free (zr);
    g_free (zc);
    g_free (grad);
    g_free (want);
    g_free (gc);
    g_free (lab);
    g_free (lab32);
  }
}

static void
test_optim (void)
{
  const size_t n = 1000;
  /* two decayed slices around an undecayed one, and a gap nothing updates */
  const UnetOptimRange ranges[] = { { 0, 400, TRUE }, { 400, 300, FALSE }, { 800, 200, TRUE } };
  float *p = g_new (float, n), *g = g_new (float, n), *hp = g_new (float, n);
  float *got = g_new (float, n);

  random_fill (p, n, 31, -1.0f, 1.0f);
  random_fill (g, n, 32, -1.0f, 1.0f);
  for (int kind = 0; kind < 3; kind++) {
    UnetOptimParams op;
    GError *error = NULL;
    unet_optim_params_init (&op);
    op.kind = kind == 0 ? UNET_OPTIM_SGD : kind == 1 ? UNET_OPTIM_ADAM : UNET_OPTIM_ADAMW;
    op.lr = kind == 0 ? 0.01 : 1e-3;
    op.momentum = 0.9;
    op.nesterov = TRUE;
    op.weight_decay = 1e-2;
    UnetOptimizer *opt = unet_optimizer_new (&op, n, ranges, G_N_ELEMENTS (ranges), &error);
    g_assert_no_error (error);
    float *d_p = dev_from_host (p, n * sizeof (float)), *d_g = dev_from_host (g,
        n * sizeof (float));
    float *d_a = dev_alloc (n * sizeof (float)), *d_b = dev_alloc (n * sizeof (float));
    float *ha = g_new0 (float, n), *hb = g_new0 (float, n);
    gfloat *state[2] = { ha, hb };
    GPU_OK (cudaMemset (d_a, 0, n * sizeof (float)));
    GPU_OK (cudaMemset (d_b, 0, n * sizeof (float)));
    memcpy (hp, p, n * sizeof (float));
    for (int step = 1; step <= 3; step++) {
      UnetOptimUpdate u;
      unet_optimizer_next_update (opt, &u);
      g_assert_true (unet_optim_update_host (&u, hp, g, state, &error));
      for (guint r = 0; r < u.n_ranges; r++) {
        size_t o = u.ranges[r].offset, len = u.ranges[r].numel;
        double wd = u.ranges[r].decay ? u.weight_decay : 0.0;
        if (kind == 0)
          GPU_OK (unet_cuda_optim_sgd (d_p + o, d_g + o, d_a + o, len, u.lr, u.momentum, wd,
                  u.nesterov, u.t == 1, NULL, NULL));
        else
          GPU_OK (unet_cuda_optim_adam (d_p + o, d_g + o, d_a + o, d_b + o, len, u.lr,
                  u.beta1, u.beta2, u.eps, wd, kind == 2,
                  u.lr / (1.0 - pow (u.beta1, (double) u.t)),
                  sqrt (1.0 - pow (u.beta2, (double) u.t)), NULL, NULL));
      }
      unet_optimizer_advance (opt);
    }
    host_from_dev (got, d_p, n * sizeof (float));
    /* the same double arithmetic of engine/optim-elem.h on both sides; only the
     * device's FMA contraction and sqrt rounding may move the last float bit */
    failures += check_close (kind == 0 ? "sgd nesterov 3 steps" : kind == 1 ? "adam 3 steps"
        : "adamw 3 steps", got, hp, n, 1e-7, 1e-6);
    {
      /* a set skip flag changes nothing */
      int one = 1;
      int *d_skip = dev_from_host (&one, sizeof one);
      GPU_OK (unet_cuda_optim_sgd (d_p, d_g, d_a, n, 1.0, 0.9, 0.0, 0, 0, d_skip, NULL));
      host_from_dev (hp, d_p, n * sizeof (float));
      failures += check_close ("skipped update", hp, got, n, 0.0, 0.0);
      cudaFree (d_skip);
    }
    unet_optimizer_free (opt);
    cudaFree (d_p);
    cudaFree (d_g);
    cudaFree (d_a);
    cudaFree (d_b);
    g_free (ha);
    g_free (hb);
  }
  {
    /* non-finite detection */
    float bad[5] = { 1, 2, NAN, 4, 5 };
    int flag = 0;
    float *d = dev_from_host (bad, sizeof bad);
    int *d_flag = dev_alloc (sizeof (int));
    GPU_OK (unet_cuda_check_finite (d, UNET_CUDA_F32, 5, d_flag, NULL));
    host_from_dev (&flag, d_flag, sizeof flag);
    if (flag != 1) {
      fprintf (stderr, "FAIL check_finite missed a NaN\n");
      failures++;
    }
    cudaFree (d);
    cudaFree (d_flag);
  }
  g_free (p);
  g_free (g);
  g_free (hp);
  g_free (got);
}

static void
cubic_w (float t, float w[4])
{
  float t2 = t * t, t3 = t2 * t;
  w[0] = 0.5f * (-t3 + 2.0f * t2 - t);
  w[1] = 0.5f * (3.0f * t3 - 5.0f * t2 + 2.0f);
  w[2] = 0.5f * (-3.0f * t3 + 4.0f * t2 + t);
  w[3] = 0.5f * (t3 - t2);
}

static void
test_warp (void)
{
  const int sw = 23, sh = 19, ow = 17, oh = 15;
  UnetCudaWarp wp = { 0 };
  float *img = g_new (float, (size_t) sw * sh), *wts = g_new (float, (size_t) sw * sh);
  guint8 *lab = g_new (guint8, (size_t) sw * sh);
  float *got_i = g_new (float, (size_t) ow * oh), *want_i = g_new (float, (size_t) ow * oh);
  float *got_w = g_new (float, (size_t) ow * oh), *want_w = g_new (float, (size_t) ow * oh);
  guint8 *got_l = g_new (guint8, (size_t) ow * oh), *want_l = g_new (guint8, (size_t) ow * oh);
  guint64 seed = 41;
  int lab_bad = 0;
  const float ang = 0.3f;

  random_fill (img, (size_t) sw * sh, 40, 0.0f, 1.0f);
  random_fill (wts, (size_t) sw * sh, 42, 1.0f, 10.0f);
  for (int i = 0; i < sw * sh; i++)
    lab[i] = (guint8) rand_uniform (&seed, 0.0f, 3.0f);
  /* rotation by 0.3 rad about the patch centre, shifted so it reaches outside */
  wp.affine[0] = cosf (ang);
  wp.affine[1] = -sinf (ang);
  wp.affine[2] = -4.3f;
  wp.affine[3] = sinf (ang);
  wp.affine[4] = cosf (ang);
  wp.affine[5] = 2.7f;
  wp.grid_w = 3;
  wp.grid_h = 4;
  for (int i = 0; i < 3 * 4 * 2; i++)
    wp.grid[i] = rand_uniform (&seed, -3.0f, 3.0f);
  for (int y = 0; y < oh; y++)
    for (int x = 0; x < ow; x++) {
      float sx = wp.affine[0] * x + wp.affine[1] * y + wp.affine[2];
      float sy = wp.affine[3] * x + wp.affine[4] * y + wp.affine[5];
      float gx = x * (wp.grid_w - 1) / (float) (ow - 1), gy = y * (wp.grid_h - 1) / (float) (oh - 1);
      int ix = (int) floorf (gx), iy = (int) floorf (gy);
      float wx[4], wy[4], ddx = 0, ddy = 0;
      cubic_w (gx - ix, wx);
      cubic_w (gy - iy, wy);
      for (int j = 0; j < 4; j++)
        for (int i = 0; i < 4; i++) {
          int yy = CLAMP (iy - 1 + j, 0, wp.grid_h - 1), xx = CLAMP (ix - 1 + i, 0, wp.grid_w - 1);
          ddx += wx[i] * wy[j] * wp.grid[(yy * wp.grid_w + xx) * 2];
          ddy += wx[i] * wy[j] * wp.grid[(yy * wp.grid_w + xx) * 2 + 1];
        }
      sx += ddx;
      sy += ddy;
      int fx0 = (int) floorf (sx), fy0 = (int) floorf (sy);
      float fx = sx - fx0, fy = sy - fy0, v = 0;
      cubic_w (fx, wx);
      cubic_w (fy, wy);
      for (int j = 0; j < 4; j++) {
        float row = 0;
        for (int i = 0; i < 4; i++)
          row += wx[i] * img[unet_mirror_index (fy0 - 1 + j, sh) * sw
              + unet_mirror_index (fx0 - 1 + i, sw)];
        v += wy[j] * row;
      }
      want_i[y * ow + x] = v;
      want_l[y * ow + x] = lab[unet_mirror_index ((int) floorf (sy + 0.5f), sh) * sw
          + unet_mirror_index ((int) floorf (sx + 0.5f), sw)];
      int x0 = unet_mirror_index (fx0, sw), x1 = unet_mirror_index (fx0 + 1, sw);
      int y0 = unet_mirror_index (fy0, sh), y1 = unet_mirror_index (fy0 + 1, sh);
      want_w[y * ow + x] = (1 - fy) * ((1 - fx) * wts[y0 * sw + x0] + fx * wts[y0 * sw + x1])
          + fy * ((1 - fx) * wts[y1 * sw + x0] + fx * wts[y1 * sw + x1]);
    }
  float *d_img = dev_from_host (img, (size_t) sw * sh * sizeof (float));
  float *d_w = dev_from_host (wts, (size_t) sw * sh * sizeof (float));
  guint8 *d_lab = dev_from_host (lab, (size_t) sw * sh);
  float *d_oi = dev_alloc ((size_t) ow * oh * sizeof (float));
  float *d_ow = dev_alloc ((size_t) ow * oh * sizeof (float));
  guint8 *d_ol = dev_alloc ((size_t) ow * oh);
  GPU_OK (unet_cuda_warp_sample (d_img, 1, d_lab, d_w, sw, sh, &wp, d_oi, d_ol, d_ow, ow, oh,
          NULL));
  host_from_dev (got_i, d_oi, (size_t) ow * oh * sizeof (float));
  host_from_dev (got_w, d_ow, (size_t) ow * oh * sizeof (float));
  host_from_dev (got_l, d_ol, (size_t) ow * oh);
  /* the same f32 formulas; FMA contraction on the device moves the sample position
   * by ~1e-6 px, the interpolants change by (slope <= ~3) x that */
  failures += check_close ("warp image", got_i, want_i, (size_t) ow * oh, 1e-4, 1e-4);
  failures += check_close ("warp weights", got_w, want_w, (size_t) ow * oh, 1e-4, 1e-4);
  for (int i = 0; i < ow * oh; i++)
    lab_bad += got_l[i] != want_l[i];
  /* nearest sampling can flip where a position lies within ~1e-6 of a half pixel;
   * allow 1 % of the pixels for that, a wrong mapping breaks far more */
  if (lab_bad > ow * oh / 100) {
    fprintf (stderr, "FAIL warp labels: %d of %d differ\n", lab_bad, ow * oh);
    failures++;
  } else {
    printf ("ok warp labels (%d of %d at a rounding boundary)\n", lab_bad, ow * oh);
  }
  cudaFree (d_img);
  cudaFree (d_w);
  cudaFree (d_lab);
  cudaFree (d_oi);
  cudaFree (d_ow);
  cudaFree (d_ol);
  g_free (img);
  g_free (wts);
  g_free (lab);
  g_free (got_i);
  g_free (want_i);
  g_free (got_w);
  g_free (want_w);
  g_free (got_l);
  g_free (want_l);
}

static void
test_frame_stats (void)
{
  const int w = 301, h = 77;
  const size_t stride = 700;
  guint8 *frame = g_malloc0 (stride * h);
  guint32 *hist = g_new0 (guint32, 65536), *want = g_new0 (guint32, 65536);
  double sums[2], s = 0, s2 = 0;
  guint64 seed = 51;
  int bad = 0;

  for (int y = 0; y < h; y++)
    for (int x = 0; x < w; x++) {
      guint16 v = (guint16) rand_uniform (&seed, 0.0f, 4096.0f);
      ((guint16 *) (frame + y * stride))[x] = v;
      want[v]++;
      s += v;
      s2 += (double) v * v;
    }
  void *d_f = dev_from_host (frame, stride * h);
  guint32 *d_h = dev_alloc (65536 * sizeof (guint32));
  double *d_p = dev_alloc (2 * UNET_CUDA_REDUCE_BLOCKS * sizeof (double));
  double *d_s = dev_alloc (2 * sizeof (double));
  GPU_OK (unet_cuda_histogram (d_f, UNET_CUDA_PIXEL_U16, w, h, stride, 1, d_h, NULL));
  GPU_OK (unet_cuda_frame_moments (d_f, UNET_CUDA_PIXEL_U16, w, h, stride, 1, d_p, d_s, NULL));
  host_from_dev (hist, d_h, 65536 * sizeof (guint32));
  host_from_dev (sums, d_s, sizeof sums);
  for (int i = 0; i < 65536; i++)
    bad += hist[i] != want[i];
  /* integer sums below 2^53 are exact in f64 whatever the order */
  if (bad || sums[0] != s || sums[1] != s2) {
    fprintf (stderr, "FAIL frame stats: %d histogram bins off, sum %g vs %g, sum2 %g vs %g\n",
        bad, sums[0], s, sums[1], s2);
    failures++;
  } else {
    printf ("ok histogram + moments\n");
  }
  /* the normalisation parameters computed on the device from them equal what
   * normalize.c computes on the host (kb_percentile_params is the same code; this
   * checks the kernel's chunk sums and launch) */
  float *d_params = dev_alloc (2 * sizeof (float));
  float params[2];
  gsize *h64 = g_new (gsize, 65536);
  for (int i = 0; i < 65536; i++)
    h64[i] = want[i];
  GPU_OK (unet_cuda_percentile_params (d_h, 65536, (guint64) w * h, 1.0, 99.8, d_params, NULL));
  host_from_dev (params, d_params, sizeof params);
  UnetNormalization pn = { UNET_NORM_PERCENTILE, 1.0, 99.8 };
  gdouble lo, scale;
  unet_normalization_histogram_params (&pn, h64, 65536, (gsize) w * h, &lo, &scale);
  GPU_OK (unet_cuda_moments_params (d_s, (guint64) w * h, d_params + 0, NULL));
  float mp[2];
  host_from_dev (mp, d_params, sizeof mp);
  double mean = s / ((double) w * h), var = s2 / ((double) w * h) - mean * mean;
  if (params[0] != (float) lo || params[1] != (float) scale || mp[0] != (float) mean
      || mp[1] != (float) (1.0 / sqrt (var))) {
    fprintf (stderr, "FAIL normalisation parameters: percentile (%g, %g) vs (%g, %g), "
        "moments (%g, %g) vs (%g, %g)\n", params[0], params[1], lo, scale, mp[0], mp[1],
        mean, 1.0 / sqrt (var));
    failures++;
  } else {
    printf ("ok normalisation parameters on the device\n");
  }
  cudaFree (d_params);
  g_free (h64);
  cudaFree (d_f);
  cudaFree (d_h);
  cudaFree (d_p);
  cudaFree (d_s);
  g_free (frame);
  g_free (hist);
  g_free (want);
}

static void
test_dropout (void)
{
  const size_t n = 100000;
  const float p = 0.3f;
  float *x = g_new (float, n), *y = g_new (float, n), *y2 = g_new (float, n);
  size_t kept = 0;
  int bad = 0;

  for (size_t i = 0; i < n; i++)
    x[i] = 1.0f + (float) (i % 7);
  float *d_x = dev_from_host (x, n * sizeof (float)), *d_y = dev_alloc (n * sizeof (float));
  GPU_OK (unet_cuda_dropout (d_x, d_y, UNET_CUDA_F32, n, p, 1234, NULL));
  host_from_dev (y, d_y, n * sizeof (float));
  GPU_OK (unet_cuda_dropout (d_x, d_y, UNET_CUDA_F32, n, p, 1234, NULL));
  host_from_dev (y2, d_y, n * sizeof (float));
  for (size_t i = 0; i < n; i++) {
    if (y[i] != 0.0f) {
      kept++;
      bad += fabsf (y[i] - x[i] / (1.0f - p)) > 1e-6f * x[i];
    }
    bad += y[i] != y2[i];
  }
  /* binomial(n, 0.7): sd = sqrt(n p (1-p)) = 145; 6 sd never fails by chance */
  if (bad || fabs ((double) kept - 0.7 * n) > 6 * 145) {
    fprintf (stderr, "FAIL dropout: kept %zu of %zu, %d bad values\n", kept, n, bad);
    failures++;
  } else {
    printf ("ok dropout (kept %zu of %zu, same mask for the same seed)\n", kept, n);
  }
  cudaFree (d_x);
  cudaFree (d_y);
  g_free (x);
  g_free (y);
  g_free (y2);
}

static void
test_layout (UnetCudaDType dt)
{
  const int n = 2, c = 3, h = 5, w = 7;
  size_t cnt = (size_t) n * c * h * w;
  float *x = g_new (float, cnt), *back = g_new (float, cnt), *nhwc = g_new (float, cnt),
      *want = g_new (float, cnt), *xr = g_new (float, cnt);
  char what[64];

  random_fill (x, cnt, 61, -1.0f, 1.0f);
  void *tmp = make_input (x, cnt, dt, xr);  /* only for the rounded values */
  float *d_x = dev_from_host (xr, cnt * sizeof (float)), *d_back = dev_alloc (cnt * sizeof (float));
  void *d_nhwc = dev_alloc (cnt * unet_cuda_dtype_size (dt));
  GPU_OK (unet_cuda_nchw_to_nhwc (d_x, d_nhwc, dt, n, c, h, w, NULL));
  GPU_OK (unet_cuda_nhwc_to_nchw (d_nhwc, dt, d_back, n, c, h, w, NULL));
  read_output (nhwc, d_nhwc, cnt, dt);
  host_from_dev (back, d_back, cnt * sizeof (float));
  for (int b = 0; b < n; b++)
    for (int ch = 0; ch < c; ch++)
      for (int y = 0; y < h; y++)
        for (int xx = 0; xx < w; xx++)
          want[(((size_t) b * h + y) * w + xx) * c + ch] = xr[(((size_t) b * c + ch) * h + y) * w + xx];
  g_snprintf (what, sizeof what, "nchw->nhwc %s", dtype_names[dt]);
  failures += check_close (what, nhwc, want, cnt, 0.0, 0.0);
  g_snprintf (what, sizeof what, "nhwc->nchw %s", dtype_names[dt]);
  failures += check_close (what, back, xr, cnt, 0.0, 0.0);
  cudaFree (tmp);
  cudaFree (d_x);
  cudaFree (d_back);
  cudaFree (d_nhwc);
  g_free (x);
  g_free (back);
  g_free (nhwc);
  g_free (want);
  g_free (xr);
}

/* unet_cuda_augment_batch against unet_augment_apply_host for the same draws (paper
 * defaults: position, elastic G = 3, rotation, flips, gray values; bicubic): two
 * entries of 3 channels from frames of different sizes (one smaller than the tile).
 * Without the gray values: image within 1e-3 of data spanning 4 (the float position,
 * local to the tile, moves the sample by <= 16 L 2^-24 ~ 3e-5 px for L ~ 30, times
 * the Catmull-Rom slope <= 7.6; FMA contraction on the device changes roundings, not
 * the bound's order), weights within 1e-2 (data spanning 10.5, bilinear slope), labels
 * equal but at <= 1 % of the pixels (a position within rounding of a half pixel).
 * With them: the gamma exponent g in [1/1.5, 1.5] turns an error e of a value on the
 * tile's range r into <= r (e / r)^g (g < 1, Hoelder) or g e (g >= 1), then contrast
 * <= 1.2 and the mean (<= e). */
static void
test_augment_batch (void)
{
  const int n = 2, C = 3, in = 25, out = 13, fw[2] = { 37, 11 }, fh[2] = { 29, 31 };
  const size_t plane = (size_t) in * in, count = C * plane, opix = (size_t) out * out;
  UnetAugmentParams ap;
  UnetAugmentDraw draws[2];
  UnetCudaAugSample recs[2];
  float grids[2 * 18];
  float *img[2], *wts[2], *d_img[2], *d_wts[2];
  gint32 *lab[2];
  guint8 *lab8[2], *d_lab[2];
  UnetRng rng;
  GError *error = NULL;
  guint64 seed = 91;

  memset (draws, 0, sizeof draws);
  unet_augment_params_init (&ap);
  unet_rng_init (&rng, 17);
  for (int b = 0; b < n; b++) {
    const size_t fp = (size_t) fw[b] * fh[b];
    img[b] = g_new (float, C * fp);
    wts[b] = g_new (float, fp);
    lab[b] = g_new (gint32, fp);
    lab8[b] = g_new (guint8, fp);
    random_fill (img[b], C * fp, 50 + b, -2.0f, 2.0f);
    random_fill (wts[b], fp, 60 + b, 0.5f, 11.0f);
    for (size_t i = 0; i < fp; i++) {
      int l = (int) rand_uniform (&seed, 0.0f, 3.999f) - 1;
      lab[b][i] = l < 0 ? UNET_LABEL_IGNORE : l;
      lab8[b][i] = l < 0 ? 255 : (guint8) l;
      if (l < 0)
        wts[b][i] = 0.0f;
    }
    d_img[b] = dev_from_host (img[b], C * fp * sizeof (float));
    d_wts[b] = dev_from_host (wts[b], fp * sizeof (float));
    d_lab[b] = dev_from_host (lab8[b], fp);
    g_assert_true (unet_augment_draw (&ap, &rng, C, fw[b], fh[b], in, in, out, out, &draws[b],
            &error));
    gint origin[2];
    memset (&recs[b], 0, sizeof recs[b]);
    recs[b].image = d_img[b];
    recs[b].labels = d_lab[b];
    recs[b].weights = d_wts[b];
    recs[b].src_w = fw[b];
    recs[b].src_h = fh[b];
    unet_augment_draw_local (&draws[b], origin, recs[b].affine, grids + 18 * b);
    recs[b].origin_x = origin[0];
    recs[b].origin_y = origin[1];
    recs[b].grid = 3;
    recs[b].grid_offset = 18 * b;
    recs[b].intensity = 1;
    recs[b].gamma = (float) draws[b].gamma;
    recs[b].contrast = (float) draws[b].contrast;
    recs[b].brightness = (float) draws[b].brightness;
  }
  float *want = g_new (float, n * count), *want_plain = g_new (float, n * count);
  float *want_w = g_new (float, n * opix), *got = g_new (float, n * count);
  float *got_w = g_new (float, n * opix), *got_nchw = g_new (float, n * count);
  gint32 *want_l = g_new (gint32, n * opix);
  guint8 *got_l = g_new (guint8, n * opix);
  for (int b = 0; b < n; b++) {
    UnetAugmentDraw plain = draws[b];
    plain.intensity = FALSE;
    g_assert_true (unet_augment_apply_host (&draws[b], img[b], lab[b], wts[b], C,
            want + b * count, want_l + b * opix, want_w + b * opix, &error));
    g_assert_true (unet_augment_apply_host (&plain, img[b], lab[b], wts[b], C,
            want_plain + b * count, want_l + b * opix, want_w + b * opix, &error));
  }
  float *d_grids = dev_from_host (grids, sizeof grids);
  float *d_tile = dev_alloc (n * count * sizeof (float));
  float *d_input = dev_alloc (n * count * sizeof (float));
  float *d_w = dev_alloc (n * opix * sizeof (float));
  guint8 *d_l = dev_alloc (n * opix);
  double *d_stats = dev_alloc (3 * n * sizeof (double));
  for (int pass = 0; pass < 2; pass++) {
    for (int b = 0; b < n; b++)
      recs[b].intensity = pass;
    UnetCudaAugSample *d_recs = dev_from_host (recs, sizeof recs);
    GPU_OK (unet_cuda_augment_batch (d_recs, d_grids, n, C, in, in, out, out, 255, d_tile,
            d_stats, d_input, UNET_CUDA_F32, d_l, d_w, NULL));
    host_from_dev (got, d_input, n * count * sizeof (float));
    host_from_dev (got_w, d_w, n * opix * sizeof (float));
    host_from_dev (got_l, d_l, n * opix);
    cudaFree (d_recs);
    for (int b = 0; b < n; b++)
      for (size_t t = 0; t < plane; t++)
        for (int c = 0; c < C; c++)
          got_nchw[(b * C + c) * plane + t] = got[(b * plane + t) * C + c];
    if (pass == 0) {
      failures += check_close ("augment batch image", got_nchw, want_plain, n * count, 1e-3, 0);
      int bad = 0;
      for (size_t i = 0; i < n * opix; i++) {
        const int l = got_l[i] == 255 ? UNET_LABEL_IGNORE : got_l[i];
        if (l != want_l[i])
          bad++;
        else if (l == UNET_LABEL_IGNORE ? got_w[i] != 0.0f : !(fabsf (got_w[i] - want_w[i]) <= 1e-2f))
          bad += 1000;
      }
      if (bad > (int) (n * opix / 100)) {
        fprintf (stderr, "FAIL augment batch labels/weights: %d\n", bad);
        failures++;
      }
      continue;
    }
    for (int b = 0; b < n; b++) {
      float lo = want_plain[b * count], hi = lo;
      for (size_t i = 0; i < count; i++) {
        lo = fminf (lo, want_plain[b * count + i]);
        hi = fmaxf (hi, want_plain[b * count + i]);
      }
      const double r = hi - lo, e = 1e-3, g = draws[b].gamma;
      const double moved = g < 1.0 ? r * pow (e / r, g) : g * e;
      failures += check_close ("augment batch gray values", got_nchw + b * count,
          want + b * count, count, 1.2 * moved + 2 * e, 0);
    }
  }
  cudaFree (d_grids);
  cudaFree (d_tile);
  cudaFree (d_input);
  cudaFree (d_w);
  cudaFree (d_l);
  cudaFree (d_stats);
  for (int b = 0; b < n; b++) {
    cudaFree (d_img[b]);
    cudaFree (d_wts[b]);
    cudaFree (d_lab[b]);
    g_free (img[b]);
    g_free (wts[b]);
    g_free (lab[b]);
    g_free (lab8[b]);
    unet_augment_draw_clear (&draws[b]);
  }
  g_free (want);
  g_free (want_plain);
  g_free (want_w);
  g_free (want_l);
  g_free (got);
  g_free (got_w);
  g_free (got_l);
  g_free (got_nchw);
}

int
main (void)
{
  gpu_require_device ();
  test_extract_tiles ();
  for (int dt = UNET_CUDA_F32; dt <= UNET_CUDA_BF16; dt++) {
    test_stitch_and_softmax ((UnetCudaDType) dt);
    test_pool ((UnetCudaDType) dt);
    test_concat ((UnetCudaDType) dt);
    test_channel_ops ((UnetCudaDType) dt);
    test_loss ((UnetCudaDType) dt);
    test_confusion_dice ((UnetCudaDType) dt);
    test_layout ((UnetCudaDType) dt);
  }
  test_optim ();
  test_warp ();
  test_augment_batch ();
  test_frame_stats ();
  test_dropout ();
  if (failures) {
    fprintf (stderr, "%d check(s) failed\n", failures);
    return 1;
  }
  printf ("all GPU op checks passed\n");
  return 0;
}
