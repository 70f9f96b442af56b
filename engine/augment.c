/* gst-unet engine — data augmentation: one warp per sample.
 *
 * Every output pixel (u, v) of the input tile maps to one source position
 *   s = c + R(θ) · F · (u - t_c, v - t_c) + d(u, v)
 * with c the tile centre in the frame (random position), t_c the tile's own centre,
 * F the flips, R the rotation and d the elastic displacement: G×G control points
 * spanning the tile (the corners are control points), displacements ~ N(0, σ²) per
 * axis, interpolated to every pixel with Catmull-Rom (bicubic) splines in control
 * index space, clamped at the grid's edge. The image is sampled bicubic or bilinear,
 * labels nearest, weights bilinear, all with mirror boundary (no edge repeat, as
 * the tiler), so the image, labels and weights see exactly the same warp. Gray-value
 * changes (gamma on the tile's min..max range, contrast around the tile mean,
 * brightness offset) touch the image only.
 *
 * Random draws happen in a fixed order and are all drawn whether or not their part
 * is enabled, so switching one part off leaves the others' draws unchanged.
 *
 * Two halves: unet_augment_draw makes the draws and turns them into a plain
 * UnetAugmentDraw (c, A, the displacement grid, the gray-value factors);
 * unet_augment_apply_host samples a frame with it. unet_augment_sample is the two
 * in a row. A backend holding the sample in its memory applies the same draw there
 * (engine/cuda/kernel-bodies.h, kb_augment_pixel and kb_intensity_*): the trainer
 * draws on the host in the same order either way, so both paths see the same
 * samples.
 */
#include "training.h"

#include <math.h>
#include <string.h>

void
unet_augment_params_init (UnetAugmentParams *params)
{
  params->random_position = TRUE;
  params->elastic = TRUE;
  params->elastic_grid = 3;
  params->elastic_sigma = 10.0;
  params->rotate = TRUE;
  params->max_rotation = 180.0;
  params->flip = TRUE;
  params->intensity = TRUE;
  params->gamma = 1.5;
  params->contrast = 0.2;
  params->brightness = 0.1;
  params->image_interp = UNET_INTERP_BICUBIC;
}

void
unet_augment_params_init_identity (UnetAugmentParams *params)
{
  unet_augment_params_init (params);
  params->random_position = FALSE;
  params->elastic = FALSE;
  params->rotate = FALSE;
  params->flip = FALSE;
  params->intensity = FALSE;
}

/* Mirror index without repeating the edge: -1 -> 1, n -> n - 2 (period 2n - 2). */
static inline gint
mirror (gint64 i, gint n)
{
  if (n == 1)
    return 0;
  gint64 period = 2 * (gint64) n - 2;
  gint64 m = i % period;
  if (m < 0)
    m += period;
  return (gint) (m < n ? m : period - m);
}

/* Catmull-Rom weights for taps at -1, 0, 1, 2 and fraction t in [0, 1). */
static inline void
cubic_weights (gdouble t, gdouble w[4])
{
  gdouble t2 = t * t, t3 = t2 * t;
  w[0] = 0.5 * (-t3 + 2.0 * t2 - t);
  w[1] = 0.5 * (3.0 * t3 - 5.0 * t2 + 2.0);
  w[2] = 0.5 * (-3.0 * t3 + 4.0 * t2 + t);
  w[3] = 0.5 * (t3 - t2);
}

/* Per-pixel Catmull-Rom taps over a control grid of g points spanning n pixels. */
static void
control_taps (gint n, gint g, gint *idx, gdouble *w)
{
  for (gint u = 0; u < n; u++) {
    gdouble t = n > 1 ? (gdouble) u * (g - 1) / (n - 1) : 0.0;
    gint i = (gint) floor (t);
    if (i > g - 2)
      i = g - 2;
    cubic_weights (t - i, w + 4 * u);
    for (gint k = 0; k < 4; k++)
      idx[4 * u + k] = CLAMP (i - 1 + k, 0, g - 1);
  }
}

static inline gfloat
sample_bilinear (const gfloat *src, gint width, gint height, gdouble x, gdouble y)
{
  gdouble fx = floor (x), fy = floor (y);
  gdouble ax = x - fx, ay = y - fy;
  gint64 x0 = (gint64) fx, y0 = (gint64) fy;
  gint xa = mirror (x0, width), xb = mirror (x0 + 1, width);
  gint ya = mirror (y0, height), yb = mirror (y0 + 1, height);
  const gfloat *ra = src + (gsize) ya * width, *rb = src + (gsize) yb * width;
  gdouble top = ra[xa] + ax * (ra[xb] - ra[xa]);
  gdouble bot = rb[xa] + ax * (rb[xb] - rb[xa]);
  return (gfloat) (top + ay * (bot - top));
}

static inline gfloat
sample_bicubic (const gfloat *src, gint width, gint height, gdouble x, gdouble y)
{
  gdouble fx = floor (x), fy = floor (y);
  gint64 x0 = (gint64) fx, y0 = (gint64) fy;
  gdouble wx[4], wy[4];
  gint xi[4];
  cubic_weights (x - fx, wx);
  cubic_weights (y - fy, wy);
  for (gint k = 0; k < 4; k++)
    xi[k] = mirror (x0 - 1 + k, width);
  gdouble acc = 0.0;
  for (gint j = 0; j < 4; j++) {
    const gfloat *row = src + (gsize) mirror (y0 - 1 + j, height) * width;
    acc += wy[j] * (wx[0] * row[xi[0]] + wx[1] * row[xi[1]] + wx[2] * row[xi[2]] +
        wx[3] * row[xi[3]]);
  }
  return (gfloat) acc;
}

/* Snaps a centre to the pixel grid of a tile whose own centre has fraction
 * `frac` (0 or 0.5), so that an unrotated, undeformed tile samples exactly at
 * pixel centres (a plain copy, no interpolation blur). */
static gdouble
snap_centre (gdouble c, gdouble frac)
{
  return floor (c - frac + 0.5) + frac;
}

gboolean
unet_augment_draw (const UnetAugmentParams *params, UnetRng *rng, gint channels,
    gint width, gint height, gint in_w, gint in_h, gint out_w, gint out_h,
    UnetAugmentDraw *draw, GError **error)
{
  if (channels < 1 || width < 1 || height < 1 || out_w < 1 || out_h < 1 ||
      in_w < out_w || in_h < out_h || (in_w - out_w) % 2 || (in_h - out_h) % 2 ||
      (gsize) width * height > G_MAXINT || (gsize) in_w * in_h > G_MAXINT) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "cannot sample a %dx%d tile (output %dx%d) of %d channel(s) from a %dx%d "
        "frame", in_w, in_h, out_w, out_h, channels, width, height);
    return FALSE;
  }
  if (params->elastic && (params->elastic_grid < 2 || params->elastic_grid > 64 ||
          !(params->elastic_sigma >= 0.0) || !isfinite (params->elastic_sigma))) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "elastic grid %d (2..64) and sigma %g (>= 0) are not usable",
        params->elastic_grid, params->elastic_sigma);
    return FALSE;
  }
  if (params->intensity && (!(params->gamma >= 1.0) || !(params->contrast >= 0.0) ||
          !(params->brightness >= 0.0) || !isfinite (params->gamma) ||
          !isfinite (params->contrast) || !isfinite (params->brightness))) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "intensity jitter gamma %g (>= 1), contrast %g, brightness %g (>= 0) are "
        "not usable", params->gamma, params->contrast, params->brightness);
    return FALSE;
  }

  /* ---- draws, fixed order ---- */
  const gint G = params->elastic ? params->elastic_grid : 2;
  gdouble u_cx = unet_rng_uniform (rng), u_cy = unet_rng_uniform (rng);
  gdouble u_angle = unet_rng_uniform (rng);
  gboolean flip_x = unet_rng_uniform (rng) < 0.5;
  gboolean flip_y = unet_rng_uniform (rng) < 0.5;
  gdouble u_gamma = unet_rng_uniform (rng), u_contrast = unet_rng_uniform (rng);
  gdouble u_bright = unet_rng_uniform (rng);
  if (draw->disp_alloc < 2 * G * G) {
    g_free (draw->disp);
    draw->disp = g_new (gdouble, 2 * G * G);
    draw->disp_alloc = 2 * G * G;
  }
  for (gint k = 0; k < 2 * G * G; k++)
    draw->disp[k] = unet_rng_normal (rng) * (params->elastic ? params->elastic_sigma : 0.0);

  /* ---- geometry ---- */
  draw->width = width;
  draw->height = height;
  draw->in_w = in_w;
  draw->in_h = in_h;
  draw->out_w = out_w;
  draw->out_h = out_h;
  draw->grid = G;
  draw->elastic = params->elastic;
  draw->image_interp = params->image_interp;
  const gdouble tcx = (in_w - 1) / 2.0, tcy = (in_h - 1) / 2.0;
  const gdouble frac_x = tcx - floor (tcx), frac_y = tcy - floor (tcy);
  gdouble cx, cy;
  if (params->random_position) {
    /* Keep the output region inside the frame where it fits. */
    gdouble lo_x = MIN ((out_w - 1) / 2.0, (width - 1) / 2.0);
    gdouble lo_y = MIN ((out_h - 1) / 2.0, (height - 1) / 2.0);
    cx = lo_x + u_cx * (width - 1 - 2 * lo_x);
    cy = lo_y + u_cy * (height - 1 - 2 * lo_y);
  } else {
    cx = (width - 1) / 2.0;
    cy = (height - 1) / 2.0;
  }
  draw->tcx = tcx;
  draw->tcy = tcy;
  draw->cx = snap_centre (cx, frac_x);
  draw->cy = snap_centre (cy, frac_y);

  gdouble angle = params->rotate ? (2.0 * u_angle - 1.0) * params->max_rotation *
      G_PI / 180.0 : 0.0;
  gdouble ca = cos (angle), sa = sin (angle);
  gdouble fx = (params->flip && flip_x) ? -1.0 : 1.0;
  gdouble fy = (params->flip && flip_y) ? -1.0 : 1.0;
  /* Source = centre + A · (u - tcx, v - tcy) + d, A = R · F. */
  draw->a[0][0] = ca * fx;
  draw->a[0][1] = -sa * fy;
  draw->a[1][0] = sa * fx;
  draw->a[1][1] = ca * fy;

  /* ---- gray values ---- */
  draw->intensity = params->intensity;
  draw->gamma = draw->contrast = 1.0;
  draw->brightness = 0.0;
  if (params->intensity) {
    gdouble lg = log (params->gamma);
    draw->gamma = exp ((2.0 * u_gamma - 1.0) * lg);
    draw->contrast = 1.0 + (2.0 * u_contrast - 1.0) * params->contrast;
    draw->brightness = (2.0 * u_bright - 1.0) * params->brightness;
  }
  return TRUE;
}

void
unet_augment_draw_clear (UnetAugmentDraw *draw)
{
  g_clear_pointer (&draw->disp, g_free);
  draw->disp_alloc = 0;
}

void
unet_augment_draw_local (const UnetAugmentDraw *draw, gint origin[2], gfloat affine[6],
    gfloat *grid)
{
  const gdouble ox = floor (draw->cx), oy = floor (draw->cy);
  const gint G = draw->grid;

  origin[0] = (gint) ox;
  origin[1] = (gint) oy;
  /* the fraction of the centre (0 or 0.5) folds into the translation */
  affine[0] = (gfloat) draw->a[0][0];
  affine[1] = (gfloat) draw->a[0][1];
  affine[2] = (gfloat) (draw->cx - ox - draw->a[0][0] * draw->tcx
      - draw->a[0][1] * draw->tcy);
  affine[3] = (gfloat) draw->a[1][0];
  affine[4] = (gfloat) draw->a[1][1];
  affine[5] = (gfloat) (draw->cy - oy - draw->a[1][0] * draw->tcx
      - draw->a[1][1] * draw->tcy);
  if (grid == NULL || !draw->elastic)
    return;
  for (gint gy = 0; gy < G; gy++)
    for (gint gx = 0; gx < G; gx++)
      for (gint axis = 0; axis < 2; axis++)
        grid[(gy * G + gx) * 2 + axis] = (gfloat) draw->disp[(axis * G + gy) * G + gx];
}

gboolean
unet_augment_apply_host (const UnetAugmentDraw *draw, const gfloat *image,
    const gint32 *class_map, const gfloat *weights, gint channels, gfloat *out_image,
    gint32 *out_labels, gfloat *out_weights, GError **error)
{
  const gint width = draw->width, height = draw->height;
  const gint in_w = draw->in_w, in_h = draw->in_h;
  const gint out_w = draw->out_w, out_h = draw->out_h;
  const gint G = draw->grid;
  const gboolean elastic = draw->elastic;
  const gdouble tcx = draw->tcx, tcy = draw->tcy, cx = draw->cx, cy = draw->cy;
  const gdouble a00 = draw->a[0][0], a01 = draw->a[0][1];
  const gdouble a10 = draw->a[1][0], a11 = draw->a[1][1];

  if (channels < 1 || draw->disp == NULL || G < 2) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "augmentation of %d channel(s) without a draw", channels);
    return FALSE;
  }

  g_autofree gint *ix = g_new (gint, 4 * in_w);
  g_autofree gdouble *wx = g_new (gdouble, 4 * in_w);
  g_autofree gint *iy = g_new (gint, 4 * in_h);
  g_autofree gdouble *wy = g_new (gdouble, 4 * in_h);
  control_taps (in_w, G, ix, wx);
  control_taps (in_h, G, iy, wy);

  /* ---- one pass: source position per tile pixel, then every output ---- */
  const gsize src_plane = (gsize) width * height;
  const gsize tile_plane = (gsize) in_w * in_h;
  const gint ox = (in_w - out_w) / 2, oy = (in_h - out_h) / 2;
  g_autofree gdouble *row_dx = g_new (gdouble, G);
  g_autofree gdouble *row_dy = g_new (gdouble, G);
  const gdouble *dxg = draw->disp, *dyg = draw->disp + G * G;

  for (gint v = 0; v < in_h; v++) {
    for (gint j = 0; j < G; j++) {
      gdouble sx = 0.0, sy = 0.0;
      for (gint k = 0; k < 4; k++) {
        gint gy = iy[4 * v + k];
        sx += wy[4 * v + k] * dxg[gy * G + j];
        sy += wy[4 * v + k] * dyg[gy * G + j];
      }
      row_dx[j] = sx;
      row_dy[j] = sy;
    }
    const gdouble py = v - tcy;
    for (gint u = 0; u < in_w; u++) {
      gdouble dx = 0.0, dy = 0.0;
      if (elastic)
        for (gint k = 0; k < 4; k++) {
          dx += wx[4 * u + k] * row_dx[ix[4 * u + k]];
          dy += wx[4 * u + k] * row_dy[ix[4 * u + k]];
        }
      const gdouble px = u - tcx;
      const gdouble sx = cx + a00 * px + a01 * py + dx;
      const gdouble sy = cy + a10 * px + a11 * py + dy;
      const gsize t = (gsize) v * in_w + u;

      for (gint c = 0; c < channels; c++) {
        const gfloat *plane = image + c * src_plane;
        out_image[c * tile_plane + t] =
            draw->image_interp == UNET_INTERP_BICUBIC
            ? sample_bicubic (plane, width, height, sx, sy)
            : sample_bilinear (plane, width, height, sx, sy);
      }

      if (u < ox || u >= ox + out_w || v < oy || v >= oy + out_h)
        continue;
      const gsize o = (gsize) (v - oy) * out_w + (u - ox);
      gint nx = mirror ((gint64) floor (sx + 0.5), width);
      gint ny = mirror ((gint64) floor (sy + 0.5), height);
      gint32 label = class_map[(gsize) ny * width + nx];
      out_labels[o] = label;
      if (out_weights) {
        if (weights) {
          /* Ignored pixels keep weight 0 whatever the neighbours interpolate to. */
          out_weights[o] = label == UNET_LABEL_IGNORE ? 0.0f
              : sample_bilinear (weights, width, height, sx, sy);
        } else {
          out_weights[o] = label == UNET_LABEL_IGNORE ? 0.0f : 1.0f;
        }
      }
    }
  }

  /* ---- gray values, image only ---- */
  if (draw->intensity) {
    const gsize n = channels * tile_plane;
    const gdouble gamma = draw->gamma, contrast = draw->contrast;
    const gdouble bright = draw->brightness;
    gfloat lo = out_image[0], hi = out_image[0];
    for (gsize i = 1; i < n; i++) {
      lo = MIN (lo, out_image[i]);
      hi = MAX (hi, out_image[i]);
    }
    gdouble range = (gdouble) hi - lo, mean = 0.0;
    for (gsize i = 0; i < n; i++) {
      gdouble x = out_image[i];
      if (range > 0.0)
        x = lo + range * pow ((x - lo) / range, gamma);
      out_image[i] = (gfloat) x;
      mean += x;
    }
    mean /= n;
    for (gsize i = 0; i < n; i++)
      out_image[i] = (gfloat) (mean + contrast * (out_image[i] - mean) + bright);
  }
  return TRUE;
}

gboolean
unet_augment_sample (const UnetAugmentParams *params, UnetRng *rng,
    const gfloat *image, const gint32 *class_map, const gfloat *weights,
    gint channels, gint width, gint height, gint in_w, gint in_h, gint out_w,
    gint out_h, gfloat *out_image, gint32 *out_labels, gfloat *out_weights,
    GError **error)
{
  UnetAugmentDraw draw = { 0 };
  gboolean ok = unet_augment_draw (params, rng, channels, width, height, in_w, in_h,
      out_w, out_h, &draw, error)
      && unet_augment_apply_host (&draw, image, class_map, weights, channels,
      out_image, out_labels, out_weights, error);
  unet_augment_draw_clear (&draw);
  return ok;
}
