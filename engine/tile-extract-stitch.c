/* Host-side pixel work around the tile planner: mirror-extended tile extraction and
 * stitching of tile outputs (owned-block copy for valid padding, Gaussian blending for
 * same padding). Shapes are in tiling.h; a GPU path replaces these with kernels. */
#include "tiling.h"

#include <string.h>

void
unet_tile_extract (const gfloat *frame, gint height, gint width,
    gint in_y, gint in_x, gint th, gint tw, gint channels, gfloat *dst)
{
  /* Columns [in_x, in_x + tw) split into a mirrored left part, the part inside the
   * frame (one memcpy per row) and a mirrored right part. */
  gint mid0 = CLAMP (-in_x, 0, tw);
  gint mid1 = CLAMP (width - in_x, mid0, tw);
  gint r, c, ch;

  for (r = 0; r < th; r++) {
    const gfloat *src = frame + (gsize) unet_mirror_index (in_y + r, height) * width;
    gfloat *d = dst + (gsize) r * tw;

    for (c = 0; c < mid0; c++)
      d[c] = src[unet_mirror_index (in_x + c, width)];
    if (mid1 > mid0)
      memcpy (d + mid0, src + in_x + mid0, (gsize) (mid1 - mid0) * sizeof (gfloat));
    for (c = mid1; c < tw; c++)
      d[c] = src[unet_mirror_index (in_x + c, width)];
  }
  for (ch = 1; ch < channels; ch++)
    memcpy (dst + (gsize) ch * th * tw, dst, (gsize) th * tw * sizeof (gfloat));
}

void
unet_tile_stitch_copy (const UnetTilePlan *plan, const UnetTile *t,
    gint classes, const gfloat *tile_out, gfloat *probs)
{
  gint to_h = plan->y.tile_out, to_w = plan->x.tile_out;
  gint h = plan->y.frame, w = plan->x.frame;
  gint n = t->x1 - t->x0, k, y;

  for (k = 0; k < classes; k++) {
    const gfloat *src = tile_out + (gsize) k * to_h * to_w;
    gfloat *dst = probs + (gsize) k * h * w;
    for (y = t->y0; y < t->y1; y++)
      memcpy (dst + (gsize) y * w + t->x0,
          src + (gsize) (y - t->out_y) * to_w + (t->x0 - t->out_x),
          (gsize) n * sizeof (gfloat));
  }
}

void
unet_tile_stitch_blend (const UnetTilePlan *plan, const UnetTile *t,
    gint classes, const gfloat *tile_out, const gfloat *wy, const gfloat *wx,
    gfloat *acc, gfloat *wsum)
{
  gint to_h = plan->y.tile_out, to_w = plan->x.tile_out;
  gint h = plan->y.frame, w = plan->x.frame;
  gint k, y, x;

  for (y = t->y0; y < t->y1; y++) {
    gfloat fy = wy[y - t->out_y];
    gfloat *ws = wsum + (gsize) y * w;
    for (x = t->x0; x < t->x1; x++)
      ws[x] += fy * wx[x - t->out_x];
  }
  for (k = 0; k < classes; k++) {
    const gfloat *src = tile_out + (gsize) k * to_h * to_w;
    gfloat *dst = acc + (gsize) k * h * w;
    for (y = t->y0; y < t->y1; y++) {
      gfloat fy = wy[y - t->out_y];
      const gfloat *s = src + (gsize) (y - t->out_y) * to_w;
      gfloat *d = dst + (gsize) y * w;
      for (x = t->x0; x < t->x1; x++)
        d[x] += fy * wx[x - t->out_x] * s[x - t->out_x];
    }
  }
}

void
unet_tile_blend_finish (gint classes, gsize n, gfloat *acc, const gfloat *wsum)
{
  gint k;
  gsize i;

  for (k = 0; k < classes; k++) {
    gfloat *a = acc + (gsize) k * n;
    for (i = 0; i < n; i++)
      a[i] /= wsum[i];
  }
}
