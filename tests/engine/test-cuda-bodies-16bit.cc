/* The kernels' bodies with 16-bit elements (__nv_bfloat16, __half), on the CPU: CUDA's
 * conversion functions compile with the host compiler, so the casts, layout changes,
 * bias/ReLU and pooling of a bf16 / fp16 net run here exactly as in the kernels.
 * Built where CUDA's headers are (the CUDA backend is built); no GPU, no nvcc.
 *
 * References nobody here wrote: fp16 is GCC's _Float16 (IEEE binary16, round to
 * nearest even); bf16 is the top 16 bits of the float rounded to nearest even (the
 * bfloat16 definition; the test's bit manipulation). Casts must match them exactly;
 * ops that compute in f32 and round once must equal "compute in f32, then round". */
#define UNET_KB_HOST_16BIT 1
#include "config.h"

#include "kernel-bodies.h"

#include <glib.h>
#include <math.h>
#include <string.h>

#include <vector>

static float
ref_bf16 (float x)
{
  guint32 u;
  memcpy (&u, &x, 4);
  if (isnan (x))
    return x;
  u += 0x7fff + ((u >> 16) & 1);        /* round to nearest, ties to even */
  u &= 0xffff0000u;
  float r;
  memcpy (&r, &u, 4);
  return r;
}

static float
ref_f16 (float x)
{
  return (float) (_Float16) x;
}

static std::vector<float>
test_values (void)
{
  std::vector<float> v = { 0.0f, -0.0f, 1.0f, -1.0f, 0.1f, 1.0f / 3, 65504.0f, 65520.0f,
    1e-8f, 6e-5f, 3.0e38f, INFINITY, -INFINITY, 1.00390625f, 1.01171875f, 255.5f };
  guint64 s = 99;
  for (int i = 0; i < 4000; i++) {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    float f;
    guint32 bits = (guint32) (s >> 32);
    memcpy (&f, &bits, 4);
    if (!isnan (f))
      v.push_back (f);
    v.push_back ((float) ((s >> 40) / 16777216.0 * 200.0 - 100.0));
  }
  return v;
}

template <typename T>
static void
check_casts (const char *name, float (*ref) (float))
{
  std::vector<float> x = test_values (), back (x.size ());
  std::vector<T> lp (x.size ());
  for (size_t i = 0; i < x.size (); i++)
    kb_cast_elem (x.data (), lp.data (), i);
  for (size_t i = 0; i < x.size (); i++)
    kb_cast_elem (lp.data (), back.data (), i);
  for (size_t i = 0; i < x.size (); i++) {
    float want = ref (x[i]);
    if (!(back[i] == want) && !(isnan (back[i]) && isnan (want)))
      g_error ("%s cast of %.9g: %.9g, want %.9g", name, x[i], back[i], want);
  }
}

static void
test_casts (void)
{
  check_casts<__nv_bfloat16> ("bf16", ref_bf16);
  check_casts<__half> ("fp16", ref_f16);
}

/* bias + ReLU, layout and max pooling on 16-bit tensors: the f32 computation of the
 * rounded inputs, rounded once. */
template <typename T>
static void
check_ops (float (*ref) (float))
{
  const int n = 2, c = 5, h = 7, w = 3;
  const size_t total = (size_t) n * c * h * w;
  std::vector<float> xf (total), bias (c), nchw (total);
  guint64 s = 7;
  for (auto &v : xf) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    v = ref ((float) ((s >> 40) / 16777216.0 * 8.0 - 4.0));
  }
  for (int k = 0; k < c; k++)
    bias[k] = 0.37f * (k - 2);
  std::vector<T> x (total), y (total), t (total);
  for (size_t i = 0; i < total; i++)
    x[i] = from_f32<T> (xf[i]);
  for (size_t i = 0; i < total; i++)
    kb_bias_act_elem (x.data (), y.data (), bias.data (), c, 1, i);
  for (size_t i = 0; i < total; i++)
    g_assert_cmpfloat (to_f32 (y[i]), ==, ref (fmaxf (xf[i] + bias[i % c], 0.0f)));
  /* NHWC (n, h, w, c) -> NCHW f32 -> NHWC: lossless for 16-bit values */
  for (size_t i = 0; i < total; i++)
    kb_nhwc_to_nchw_elem (x.data (), nchw.data (), c, h, w, i);
  for (size_t i = 0; i < total; i++)
    kb_nchw_to_nhwc_elem (nchw.data (), t.data (), c, h, w, i);
  for (size_t i = 0; i < total; i++)
    g_assert_cmpfloat (to_f32 (t[i]), ==, xf[i]);
  /* 2x2 max pooling picks one of the four inputs, bit for bit */
  const int oh = h / 2, ow = w / 2;
  std::vector<T> p ((size_t) n * oh * ow * c);
  std::vector<guint8> arg (p.size ());
  for (size_t i = 0; i < p.size (); i++)
    kb_maxpool_forward_elem (x.data (), p.data (), arg.data (), h, w, c, i);
  for (int b = 0; b < n; b++)
    for (int yy = 0; yy < oh; yy++)
      for (int xx = 0; xx < ow; xx++)
        for (int k = 0; k < c; k++) {
          float m = -INFINITY;
          for (int d = 0; d < 4; d++)
            m = fmaxf (m, xf[(((size_t) b * h + 2 * yy + d / 2) * w + 2 * xx + d % 2) * c + k]);
          g_assert_cmpfloat (to_f32 (p[(((size_t) b * oh + yy) * ow + xx) * c + k]), ==, m);
        }
}

/* The augmented batch's last body into a 16-bit net input: the f32 value of
 * kb_augment_finish_elem<float> (gray values on or off), rounded once. */
template <typename T>
static void
check_augment_finish (float (*ref) (float))
{
  const int n = 2, c = 3;
  const size_t plane = 7 * 5, total = n * c * plane;
  std::vector<float> tile (total), want (total);
  std::vector<T> got (total);
  UnetCudaAugSample recs[2];
  memset (recs, 0, sizeof recs);
  recs[0].intensity = 1;
  recs[0].gamma = 0.8f;
  recs[0].contrast = 1.1f;
  recs[0].brightness = -0.05f;
  const double stats[6] = { -1.5, 2.25, 0.3, 0.0, 0.0, 0.0 };
  for (size_t i = 0; i < total; i++)
    tile[i] = i < c * plane ? -1.5f + 3.75f * (float) (i % 17) / 16.0f
        : (float) i * 0.37f - 40.0f;
  for (size_t i = 0; i < total; i++) {
    kb_augment_finish_elem (tile.data (), recs, stats, c, plane, want.data (), i);
    kb_augment_finish_elem (tile.data (), recs, stats, c, plane, got.data (), i);
  }
  for (size_t i = 0; i < total; i++)
    g_assert_cmpfloat (to_f32 (got[i]), ==, ref (want[i]));
}

static void
test_ops (void)
{
  check_ops<__nv_bfloat16> (ref_bf16);
  check_ops<__half> (ref_f16);
  check_augment_finish<__nv_bfloat16> (ref_bf16);
  check_augment_finish<__half> (ref_f16);
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  g_test_add_func ("/cuda-bodies-16bit/casts", test_casts);
  g_test_add_func ("/cuda-bodies-16bit/ops", test_ops);
  return g_test_run ();
}
