/* gst-unet engine — CPU backend: Winograd F(4x4,3x3) convolution for CPUs without
 * AVX-512 (AVX2 + FMA), on the backend's nChw8c f32 tensors.
 *
 * oneDNN 2.6 has Winograd kernels only for AVX-512; on AVX2 its direct kernel runs
 * near the FMA units' peak, so only fewer multiplications make a 3x3 convolution
 * faster. F(4x4,3x3) computes a 4x4 output tile from a 6x6 input tile with 36
 * products per (input, output) channel pair instead of 144 (Lavin & Gray 2016):
 *   Y = A^T [ (G g G^T) (.) (B^T d B) ] A
 * with the interpolation points 0, +-1, +-2 and infinity.
 *
 * Data flow per job (a run of up to CPU_WINO8_TILES output tiles of one image):
 *   1. input transform: each tile's 6x6 x 8-channel block -> V[36][tiles][cin];
 *   2. for each block of 16 output channels: 36 small GEMMs
 *      M[p] (tiles x 16) = V[p] (tiles x cin) . U[p] (cin x 16), the 6x16
 *      register-blocked kernel summing the input channels in order;
 *   3. output transform of those 16 channels, bias, ReLU, stored into nChw8c.
 * U = G g G^T (computed in double, once per layer: cpu_wino8_weights) is 4x the
 * layer's weights. Jobs run in parallel (OpenMP); every output is computed by one
 * job with the same sequence of operations whatever the thread count, the job
 * size or the batch, so the result is bit-identical across thread counts and
 * batching by construction (no check needed, unlike oneDNN's Winograd kernels,
 * cpu-backend.c). It differs from the direct convolution by rounding only
 * (~1e-6 relative per layer, tests/engine/test-backend-ops.c bounds it).
 */
#include "config.h"

#include "cpu-private.h"

#include <string.h>
#if HAVE_OPENMP
#include <omp.h>
#endif

#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
#define WINO8_X86 1
#include <immintrin.h>
#define WINO8_TARGET __attribute__ ((target ("avx2,fma")))
#else
#define WINO8_X86 0
#endif

/* tiles per job at most: V of a job is 36 x 48 x cin floats (1.7 MB at 256
 * input channels), each U block (cin x 16) is reused over the job's 48 tiles */
#define CPU_WINO8_TILES 48

struct _CpuWino8
{
  gint cin, cout, h, w, pad, oh, ow, tiles_x, tiles, nb16;
  gboolean relu;
  const gfloat *u;              /* the layer's U: [36][nb16][cin][16] */
  gfloat *bias;                 /* nb16 * 16 (zeros past cout) */
  gint threads, job_tiles;
  gfloat *scratch;              /* per thread: V [36][job_tiles][cin], M [36][job_tiles][16] */
  gsize per_thread;
};

gboolean
cpu_wino8_available (void)
{
#if WINO8_X86
  __builtin_cpu_init ();
  return __builtin_cpu_supports ("avx2") && __builtin_cpu_supports ("fma");
#else
  return FALSE;
#endif
}

gboolean
cpu_wino8_shape_ok (gint cin, gint cout, gint k, gint pad, gint h, gint w)
{
  return k == 3 && (pad == 0 || pad == 1) && cin % 8 == 0 && cout % 8 == 0
      && cin > 0 && cout > 0 && h + 2 * pad >= 3 && w + 2 * pad >= 3;
}

gfloat *
cpu_wino8_weights (const gfloat *oihw, gint cin, gint cout, GError **error)
{
  static const gdouble G[6][3] = {
    { 1.0 / 4, 0, 0 },
    { -1.0 / 6, -1.0 / 6, -1.0 / 6 },
    { -1.0 / 6, 1.0 / 6, -1.0 / 6 },
    { 1.0 / 24, 1.0 / 12, 1.0 / 6 },
    { 1.0 / 24, -1.0 / 12, 1.0 / 6 },
    { 0, 0, 1 },
  };
  const gint nb16 = (cout + 15) / 16;
  const gsize n = (gsize) 36 * nb16 * cin * 16;
  gfloat *u = cpu_alloc (n * sizeof (gfloat), error);

  if (u == NULL)
    return NULL;
  memset (u, 0, n * sizeof (gfloat));
  for (gint co = 0; co < cout; co++)
    for (gint ci = 0; ci < cin; ci++) {
      const gfloat *g = oihw + ((gsize) co * cin + ci) * 9;
      gdouble t[6][3];
      for (gint i = 0; i < 6; i++)
        for (gint j = 0; j < 3; j++)
          t[i][j] = G[i][0] * g[0 * 3 + j] + G[i][1] * g[1 * 3 + j] + G[i][2] * g[2 * 3 + j];
      for (gint i = 0; i < 6; i++)
        for (gint j = 0; j < 6; j++) {
          gdouble v = t[i][0] * G[j][0] + t[i][1] * G[j][1] + t[i][2] * G[j][2];
          u[(((gsize) (i * 6 + j) * nb16 + co / 16) * cin + ci) * 16 + co % 16] = (gfloat) v;
        }
    }
  return u;
}

CpuWino8 *
cpu_wino8_new (const gfloat *u, const gfloat *bias, gint cin, gint cout, gint h,
    gint w, gint pad, gboolean relu, gint threads, GError **error)
{
  CpuWino8 *k = g_new0 (CpuWino8, 1);

  k->cin = cin;
  k->cout = cout;
  k->h = h;
  k->w = w;
  k->pad = pad;
  k->oh = h + 2 * pad - 2;
  k->ow = w + 2 * pad - 2;
  k->tiles_x = (k->ow + 3) / 4;
  k->tiles = k->tiles_x * ((k->oh + 3) / 4);
  k->nb16 = (cout + 15) / 16;
  k->relu = relu;
  k->u = u;
  k->threads = MAX (threads, 1);
  /* about four jobs per thread at least (taken dynamically: a thread slowed by
   * other work on the machine takes fewer), each a multiple of the GEMM's 6 rows */
  k->job_tiles = (k->tiles + 4 * k->threads - 1) / (4 * k->threads);
  k->job_tiles = CLAMP ((k->job_tiles + 5) / 6 * 6, 6, CPU_WINO8_TILES);
  k->per_thread = (gsize) 36 * k->job_tiles * (cin + 16);
  if ((k->bias = cpu_alloc ((gsize) k->nb16 * 16 * sizeof (gfloat), error)) == NULL
      || (k->scratch = cpu_alloc (k->per_thread * k->threads * sizeof (gfloat),
              error)) == NULL) {
    cpu_wino8_free (k);
    return NULL;
  }
  memset (k->bias, 0, (gsize) k->nb16 * 16 * sizeof (gfloat));
  memcpy (k->bias, bias, (gsize) cout * sizeof (gfloat));
  return k;
}

void
cpu_wino8_free (CpuWino8 *k)
{
  if (k == NULL)
    return;
  free (k->bias);
  free (k->scratch);
  g_free (k);
}

#if WINO8_X86

#define WINO8_INLINE WINO8_TARGET static inline __attribute__ ((always_inline))

/* B^T x for one column (or row) of six 8-channel values */
WINO8_INLINE void
wino8_bt (const __m256 d[6], __m256 t[6])
{
  const __m256 two = _mm256_set1_ps (2.0f), four = _mm256_set1_ps (4.0f),
      five = _mm256_set1_ps (5.0f);
  /* t0 = 4 d0 - 5 d2 + d4, t5 = 4 d1 - 5 d3 + d5 */
  t[0] = _mm256_add_ps (_mm256_fnmadd_ps (five, d[2], _mm256_mul_ps (four, d[0])), d[4]);
  t[5] = _mm256_add_ps (_mm256_fnmadd_ps (five, d[3], _mm256_mul_ps (four, d[1])), d[5]);
  /* t1,2 = (d4 - 4 d2) -+ (4 d1 - d3) */
  const __m256 a = _mm256_fnmadd_ps (four, d[2], d[4]);
  const __m256 b = _mm256_fmsub_ps (four, d[1], d[3]);
  t[1] = _mm256_sub_ps (a, b);
  t[2] = _mm256_add_ps (a, b);
  /* t3,4 = (d4 - d2) -+ (2 d1 - 2 d3) */
  const __m256 c = _mm256_sub_ps (d[4], d[2]);
  const __m256 e = _mm256_mul_ps (two, _mm256_sub_ps (d[1], d[3]));
  t[3] = _mm256_sub_ps (c, e);
  t[4] = _mm256_add_ps (c, e);
}

/* A^T x for six 8-channel values -> four */
WINO8_INLINE void
wino8_at (const __m256 m[6], __m256 o[4])
{
  const __m256 two = _mm256_set1_ps (2.0f), four = _mm256_set1_ps (4.0f),
      eight = _mm256_set1_ps (8.0f);
  const __m256 s12 = _mm256_add_ps (m[1], m[2]), d12 = _mm256_sub_ps (m[1], m[2]);
  const __m256 s34 = _mm256_add_ps (m[3], m[4]), d34 = _mm256_sub_ps (m[3], m[4]);
  o[0] = _mm256_add_ps (_mm256_add_ps (m[0], s12), s34);
  o[1] = _mm256_fmadd_ps (two, d34, d12);
  o[2] = _mm256_fmadd_ps (four, s34, s12);
  o[3] = _mm256_add_ps (_mm256_fmadd_ps (eight, d34, d12), m[5]);
}

/* The tile's 6x6 input block of channels [8 cb, 8 cb + 8), transformed, into
 * V[p][lt][8 cb ..]. */
WINO8_TARGET static void
wino8_input (const CpuWino8 *k, const gfloat *src, gint t, gint lt, gfloat *V)
{
  const gint ty = t / k->tiles_x, tx = t % k->tiles_x;
  const gint y0 = 4 * ty - k->pad, x0 = 4 * tx - k->pad;
  const gsize plane = (gsize) k->h * k->w * 8;
  const gsize vstride = (gsize) k->job_tiles * k->cin;

  const gboolean inside = y0 >= 0 && x0 >= 0 && y0 + 6 <= k->h && x0 + 6 <= k->w;
  gfloat *v = V + (gsize) lt * k->cin;

  for (gint cb = 0; cb < k->cin / 8; cb++, v += 8) {
    const gfloat *p = src + cb * plane;
    __m256 t1[6][6];
    /* t1[.][c] = B^T (column c of d), then each row of t1 times B */
    for (gint c = 0; c < 6; c++) {
      __m256 col[6], res[6];
      const gint x = x0 + c;
#pragma GCC unroll 6
      for (gint r = 0; r < 6; r++) {
        const gint y = y0 + r;
        col[r] = (inside || (y >= 0 && y < k->h && x >= 0 && x < k->w))
            ? _mm256_loadu_ps (p + ((gsize) y * k->w + x) * 8) : _mm256_setzero_ps ();
      }
      wino8_bt (col, res);
#pragma GCC unroll 6
      for (gint r = 0; r < 6; r++)
        t1[r][c] = res[r];
    }
    for (gint r = 0; r < 6; r++) {
      __m256 res[6];
      wino8_bt (t1[r], res);
#pragma GCC unroll 6
      for (gint c = 0; c < 6; c++)
        _mm256_storeu_ps (v + (r * 6 + c) * vstride, res[c]);
    }
  }
}

/* C (rows x 16) = A (rows x cin, row stride cin) . B (cin x 16), rows <= 6;
 * each output sums the input channels in order with one FMA chain. */
/* (always inlined with a constant `rows`, so the 12 accumulators stay in
 * registers) */
WINO8_TARGET static inline __attribute__ ((always_inline)) void
wino8_gemm_rows (const gfloat *A, const gfloat *B, gfloat *C, gint cin, const gint rows)
{
  __m256 c0[6], c1[6];
#pragma GCC unroll 6
  for (gint i = 0; i < 6; i++)
    c0[i] = c1[i] = _mm256_setzero_ps ();
  for (gint q = 0; q < cin; q++) {
    const __m256 b0 = _mm256_load_ps (B + q * 16), b1 = _mm256_load_ps (B + q * 16 + 8);
#pragma GCC unroll 6
    for (gint i = 0; i < rows; i++) {
      const __m256 a = _mm256_broadcast_ss (A + (gsize) i * cin + q);
      c0[i] = _mm256_fmadd_ps (a, b0, c0[i]);
      c1[i] = _mm256_fmadd_ps (a, b1, c1[i]);
    }
  }
#pragma GCC unroll 6
  for (gint i = 0; i < rows; i++) {
    _mm256_storeu_ps (C + i * 16, c0[i]);
    _mm256_storeu_ps (C + i * 16 + 8, c1[i]);
  }
}

WINO8_TARGET static void
wino8_gemm (const gfloat *A, const gfloat *B, gfloat *C, gint cin, gint n)
{
  gint r = 0;
  for (; r + 6 <= n; r += 6)
    wino8_gemm_rows (A + (gsize) r * cin, B, C + r * 16, cin, 6);
  A += (gsize) r * cin;
  C += r * 16;
  switch (n - r) {
    case 5: wino8_gemm_rows (A, B, C, cin, 5); break;
    case 4: wino8_gemm_rows (A, B, C, cin, 4); break;
    case 3: wino8_gemm_rows (A, B, C, cin, 3); break;
    case 2: wino8_gemm_rows (A, B, C, cin, 2); break;
    case 1: wino8_gemm_rows (A, B, C, cin, 1); break;
    default: break;
  }
}

/* Output channels [16 nb, 16 nb + 16) of the job's tiles: transform, bias, ReLU,
 * store the in-range pixels. */
WINO8_TARGET static void
wino8_output (const CpuWino8 *k, const gfloat *M, gint t0, gint n, gint nb, gfloat *dst)
{
  const gsize mstride = (gsize) k->job_tiles * 16;
  const gsize plane = (gsize) k->oh * k->ow * 8;
  const __m256 zero = _mm256_setzero_ps ();

  for (gint lt = 0; lt < n; lt++) {
    const gint t = t0 + lt, ty = t / k->tiles_x, tx = t % k->tiles_x;
    for (gint half = 0; half < 2; half++) {
      const gint co = nb * 16 + half * 8;
      if (co >= k->cout)
        break;
      const __m256 bias = _mm256_loadu_ps (k->bias + co);
      __m256 t1[4][6], o[4][4];
#pragma GCC unroll 6
      for (gint c = 0; c < 6; c++) {
        __m256 col[6], res[4];
#pragma GCC unroll 6
        for (gint r = 0; r < 6; r++)
          col[r] = _mm256_loadu_ps (M + (r * 6 + c) * mstride + lt * 16 + half * 8);
        wino8_at (col, res);
        for (gint r = 0; r < 4; r++)
          t1[r][c] = res[r];
      }
      for (gint r = 0; r < 4; r++)
        wino8_at (t1[r], o[r]);
      gfloat *p = dst + (gsize) (co / 8) * plane + ((gsize) 4 * ty * k->ow + 4 * tx) * 8;
      const gint rows = MIN (4, k->oh - 4 * ty), cols = MIN (4, k->ow - 4 * tx);
      for (gint r = 0; r < 4; r++)
        for (gint c = 0; c < 4; c++) {
          o[r][c] = _mm256_add_ps (o[r][c], bias);
          if (k->relu)
            o[r][c] = _mm256_max_ps (o[r][c], zero);
        }
      if (rows == 4 && cols == 4) {
#pragma GCC unroll 4
        for (gint r = 0; r < 4; r++)
#pragma GCC unroll 4
          for (gint c = 0; c < 4; c++)
            _mm256_storeu_ps (p + ((gsize) r * k->ow + c) * 8, o[r][c]);
      } else {
        for (gint r = 0; r < rows; r++)
          for (gint c = 0; c < cols; c++)
            _mm256_storeu_ps (p + ((gsize) r * k->ow + c) * 8, o[r][c]);
      }
    }
  }
}

WINO8_TARGET static void
wino8_job (const CpuWino8 *k, const gfloat *src, gfloat *dst, gint job, gfloat *scratch)
{
  const gint t0 = job * k->job_tiles, n = MIN (k->job_tiles, k->tiles - t0);
  gfloat *V = scratch, *M = scratch + (gsize) 36 * k->job_tiles * k->cin;
  const gsize vstride = (gsize) k->job_tiles * k->cin;

  for (gint lt = 0; lt < n; lt++)
    wino8_input (k, src, t0 + lt, lt, V);
  for (gint nb = 0; nb < k->nb16; nb++) {
    for (gint p = 0; p < 36; p++)
      wino8_gemm (V + p * vstride, k->u + (((gsize) p * k->nb16 + nb) * k->cin) * 16,
          M + (gsize) p * k->job_tiles * 16, k->cin, n);
    wino8_output (k, M, t0, n, nb, dst);
  }
}

#endif /* WINO8_X86 */

void
cpu_wino8_run (const CpuWino8 *k, const gfloat *src, gfloat *dst)
{
#if WINO8_X86
  const gint jobs = (k->tiles + k->job_tiles - 1) / k->job_tiles;
#if HAVE_OPENMP
#pragma omp parallel for schedule(dynamic, 1) num_threads(k->threads)
#endif
  for (gint j = 0; j < jobs; j++) {
#if HAVE_OPENMP
    const gint me = omp_get_thread_num ();
#else
    const gint me = 0;
#endif
    wino8_job (k, src, dst, j, k->scratch + (gsize) me * k->per_thread);
  }
#else
  (void) k;
  (void) src;
  (void) dst;
  g_assert_not_reached ();      /* cpu_wino8_available () is FALSE */
#endif
}
