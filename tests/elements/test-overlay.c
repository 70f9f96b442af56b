/* Unit test of the overlay picture (elements/unet/overlay.c): the gray stretch
 * of every input format, NaN handling, the class colours and the alpha blend,
 * with expected values worked out by hand from the rule in overlay.h. */
#include "overlay.h"

#include <math.h>
#include <string.h>

/* Renders @w x @h pixels into rows with 4 bytes of padding (must stay 0xAA). */
static guint8 *
render (GstUnetFormat f, const void *in, gsize in_stride, guint32 w,
    guint32 h, const guint8 * labels, gdouble alpha, gsize * out_stride)
{
  gsize stride = (gsize) w * 4 + 4;
  guint8 *out = g_malloc ((gsize) h * stride);

  memset (out, 0xAA, (gsize) h * stride);
  gst_unet_overlay_render (f, in, in_stride, w, h, labels, alpha, out, stride);
  for (guint32 y = 0; y < h; y++)
    for (guint i = 0; i < 4; i++)
      g_assert_cmpuint (out[y * stride + w * 4 + i], ==, 0xAA);
  *out_stride = stride;
  return out;
}

static void
assert_pixel (const guint8 * out, gsize stride, guint32 x, guint32 y,
    guint8 r, guint8 g, guint8 b)
{
  const guint8 *p = out + y * stride + 4 * x;
  g_assert_cmpuint (p[0], ==, r);
  g_assert_cmpuint (p[1], ==, g);
  g_assert_cmpuint (p[2], ==, b);
  g_assert_cmpuint (p[3], ==, 255);
}

/* GRAY8 spanning 0..255, so the stretch is exact and the blend can be
 * worked out by hand. */
static void
test_gray8_blend (void)
{
  const guint8 in[2][3] = { {0, 100, 255}, {255, 100, 0} };
  const guint8 labels[6] = { 0, 0, 0, 1, 2, 1 };
  gsize s;
  g_autofree guint8 *a0 = render (GST_UNET_FORMAT_GRAY8, in, 3, 3, 2, labels,
      0.0, &s);
  g_autofree guint8 *a1 = render (GST_UNET_FORMAT_GRAY8, in, 3, 3, 2, labels,
      1.0, &s);
  g_autofree guint8 *ah = render (GST_UNET_FORMAT_GRAY8, in, 3, 3, 2, labels,
      0.5, &s);
  g_autofree guint8 *aq = render (GST_UNET_FORMAT_GRAY8, in, 3, 3, 2, labels,
      0.25, &s);

  assert_pixel (a0, s, 0, 0, 0, 0, 0);
  assert_pixel (a0, s, 1, 0, 100, 100, 100);
  assert_pixel (a0, s, 2, 0, 255, 255, 255);
  /* alpha 0: labels do not show */
  assert_pixel (a0, s, 0, 1, 255, 255, 255);
  /* alpha 1: the class colours themselves (class 1 red, class 2 green) */
  assert_pixel (a1, s, 0, 1, 255, 64, 64);
  assert_pixel (a1, s, 1, 1, 64, 255, 64);
  assert_pixel (a1, s, 2, 1, 255, 64, 64);
  /* background is never coloured */
  assert_pixel (a1, s, 1, 0, 100, 100, 100);
  /* alpha 0.5 over white: (255 + 64) / 2 = 159.5 -> 160 */
  assert_pixel (ah, s, 0, 1, 255, 160, 160);
  /* over black: 255 / 2 = 127.5 -> 128, 64 / 2 = 32 */
  assert_pixel (ah, s, 2, 1, 128, 32, 32);
  /* alpha 0.25 over 100, green: 75 + 16 = 91, 75 + 63.75 = 138.75 -> 139 */
  assert_pixel (aq, s, 1, 1, 91, 139, 91);
}

/* Class k takes colour k mod 8; multiples of 8 take colour 1. */
static void
test_class_colours (void)
{
  static const guint8 expect[][3] = {
    {255, 64, 64}, {64, 255, 64}, {64, 128, 255}, {255, 255, 0},
    {255, 0, 255}, {0, 255, 255}, {255, 128, 0},
  };
  const guint8 in[1][4] = { {0, 0, 0, 0} };
  guint8 labels[4];
  gsize s;

  for (guint k = 1; k < 256; k++) {
    guint idx = k % 8 == 0 ? 0 : k % 8 - 1;
    const guint8 *c = gst_unet_overlay_class_colour ((guint8) k);
    g_assert_cmpmem (c, 3, expect[idx], 3);
  }
  labels[0] = 8;
  labels[1] = 9;
  labels[2] = 16;
  labels[3] = 255;              /* 255 mod 8 = 7: orange */
  g_autofree guint8 *out = render (GST_UNET_FORMAT_GRAY8, in, 4, 4, 1, labels,
      1.0, &s);
  assert_pixel (out, s, 0, 0, 255, 64, 64);
  assert_pixel (out, s, 1, 0, 255, 64, 64);
  assert_pixel (out, s, 2, 0, 255, 64, 64);
  assert_pixel (out, s, 3, 0, 255, 128, 0);
}

/* GRAY16_LE is stretched from its own range (40000..41020: a quarter of a
 * gray level per unit), not from 0..65535. */
static void
test_gray16 (void)
{
  const guint16 in[3] = { 40000, 40510, 41020 };
  const guint8 labels[3] = { 0 };
  gsize s;
  g_autofree guint8 *out = render (GST_UNET_FORMAT_GRAY16_LE, in, sizeof in,
      3, 1, labels, 0.5, &s);

  assert_pixel (out, s, 0, 0, 0, 0, 0);
  assert_pixel (out, s, 1, 0, 128, 128, 128);
  assert_pixel (out, s, 2, 0, 255, 255, 255);
}

/* GRAY32F: NaN pixels are black and do not count for the range; a flat frame
 * is black. */
static void
test_gray32f_nan_and_flat (void)
{
  const gfloat in[4] = { -1.0f, NAN, 3.0f, 1.0f };
  const gfloat flat[2] = { 7.0f, 7.0f };
  const guint8 labels[4] = { 0 };
  gsize s;
  g_autofree guint8 *out = render (GST_UNET_FORMAT_GRAY32F, in, sizeof in,
      4, 1, labels, 0.5, &s);
  g_autofree guint8 *out2 = render (GST_UNET_FORMAT_GRAY32F, flat,
      sizeof flat, 2, 1, labels, 0.5, &s);

  assert_pixel (out, s, 0, 0, 0, 0, 0);
  assert_pixel (out, s, 1, 0, 0, 0, 0);
  assert_pixel (out, s, 2, 0, 255, 255, 255);
  assert_pixel (out, s, 3, 0, 128, 128, 128);
  assert_pixel (out2, s, 0, 0, 0, 0, 0);
  assert_pixel (out2, s, 1, 0, 0, 0, 0);
}

/* RGB and RGBA: the mean of R, G and B; alpha is not used. Rows of the input
 * with padding (stride larger than the pixels). */
static void
test_rgb_mean (void)
{
  const guint8 rgb[2][8] = {
    {0, 0, 0, 30, 60, 90, 0xEE, 0xEE},  /* mean 0, mean 60 */
    {120, 120, 120, 90, 0, 0, 0xEE, 0xEE}       /* mean 120, mean 30 */
  };
  const guint8 rgba[1][8] = { {0, 0, 0, 255, 90, 120, 150, 0} };
  const guint8 labels[4] = { 0 };
  gsize s;
  g_autofree guint8 *out = render (GST_UNET_FORMAT_RGB, rgb, 8, 2, 2, labels,
      0.5, &s);
  g_autofree guint8 *out2 = render (GST_UNET_FORMAT_RGBA, rgba, 8, 2, 1,
      labels, 0.5, &s);

  assert_pixel (out, s, 0, 0, 0, 0, 0);
  /* 60 of 0..120: 127.5 -> 128; 30: 63.75 -> 64 */
  assert_pixel (out, s, 1, 0, 128, 128, 128);
  assert_pixel (out, s, 0, 1, 255, 255, 255);
  assert_pixel (out, s, 1, 1, 64, 64, 64);
  /* alpha 255 of the first pixel does not make it bright */
  assert_pixel (out2, s, 0, 0, 0, 0, 0);
  assert_pixel (out2, s, 1, 0, 255, 255, 255);
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  g_test_add_func ("/overlay/gray8-blend", test_gray8_blend);
  g_test_add_func ("/overlay/class-colours", test_class_colours);
  g_test_add_func ("/overlay/gray16", test_gray16);
  g_test_add_func ("/overlay/gray32f-nan-and-flat", test_gray32f_nan_and_flat);
  g_test_add_func ("/overlay/rgb-mean", test_rgb_mean);
  return g_test_run ();
}
