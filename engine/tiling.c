/* Overlap-tile planner: legal tile edges, tile positions, owned regions, mirror
 * indexing and activation-size estimates. Pure geometry (see tiling.h for the
 * exactness argument); no pixel is read or written here. */
#include "tiling.h"

#include "graph.h"

#include <math.h>

gint
unet_mirror_index (gint i, gint n)
{
  gint period, r;

  if (n <= 1)
    return 0;
  /* Reflection without repeating the edge pixel is periodic with period 2(n-1):
   * 0 1 .. n-1 n-2 .. 1 | 0 1 .. */
  period = 2 * (n - 1);
  r = i % period;
  if (r < 0)
    r += period;
  return r < n ? r : period - r;
}

gboolean
unet_tile_axis_plan (const UnetConfig *cfg, gint frame, gint requested_in,
    UnetTileAxis *axis, GError **error)
{
  gint step, tin, tout, whole_in;

  if (frame < 1) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "frame extent %d is not positive", frame);
    return FALSE;
  }
  if (requested_in < 0) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "tile size %d is negative", requested_in);
    return FALSE;
  }
  step = unet_config_size_step (cfg);
  axis->frame = frame;

  if (cfg->padding == UNET_PADDING_SAME) {
    /* The smallest tile covering the frame at once is the whole-frame pass. */
    whole_in = unet_config_legal_input_at_least (cfg, frame);
    tin = unet_config_legal_input_at_least (cfg, MAX (requested_in, 1));
    if (tin <= 0 || whole_in <= 0)
      goto too_large;
    if (tin > whole_in)
      tin = whole_in;
    axis->tile_in = tin;
    axis->tile_out = tin;
    axis->border = 0;
    if (tin >= frame) {
      axis->stride = tin;
      axis->n_tiles = 1;
    } else {
      /* Half-tile overlap on the 2^depth grid. */
      axis->stride = MAX (step, (tin / 2) / step * step);
      axis->n_tiles = (frame - tin + axis->stride - 1) / axis->stride + 1;
    }
    return TRUE;
  }

  whole_in = unet_config_input_for_output (cfg, frame);
  tin = unet_config_legal_input_at_least (cfg, MAX (requested_in, 1));
  if (tin <= 0 || whole_in <= 0)
    goto too_large;
  tout = unet_config_output_size (cfg, tin);
  if (tout < frame && tout < step) {
    /* A tile must own a whole 2^depth block to stay on the global grid. */
    tin = unet_config_input_for_output (cfg, step);
    if (tin <= 0)
      goto too_large;
    tout = unet_config_output_size (cfg, tin);
  }
  if (tout >= frame) {
    tin = whole_in;
    tout = unet_config_output_size (cfg, tin);
  }
  axis->tile_in = tin;
  axis->tile_out = tout;
  axis->border = unet_config_border (cfg);
  if (tout >= frame) {
    axis->stride = frame;
    axis->n_tiles = 1;
  } else {
    axis->stride = tout / step * step;
    axis->n_tiles = (frame + axis->stride - 1) / axis->stride;
  }
  return TRUE;

too_large:
  g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
      "no legal tile edge for a frame extent of %d and a requested tile of %d",
      frame, requested_in);
  return FALSE;
}

gboolean
unet_tile_plan_init (UnetTilePlan *plan, const UnetConfig *cfg,
    gint frame_h, gint frame_w, gint tile_h, gint tile_w, GError **error)
{
  if (!unet_tile_axis_plan (cfg, frame_h, tile_h, &plan->y, error)
      || !unet_tile_axis_plan (cfg, frame_w, tile_w, &plan->x, error))
    return FALSE;
  plan->blend = cfg->padding == UNET_PADDING_SAME;
  plan->n_tiles = plan->y.n_tiles * plan->x.n_tiles;
  return TRUE;
}

/* Every distinct axis plan for a frame extent, from the smallest usable tile to
 * the one covering the frame. Legal edges are 2^depth apart. */
static GArray *
axis_candidates (const UnetConfig *cfg, gint frame, GError **error)
{
  GArray *arr = g_array_new (FALSE, FALSE, sizeof (UnetTileAxis));
  UnetTileAxis a;
  gint req = 0;

  for (;;) {
    if (!unet_tile_axis_plan (cfg, frame, req, &a, error)) {
      g_array_free (arr, TRUE);
      return NULL;
    }
    if (arr->len > 0
        && g_array_index (arr, UnetTileAxis, arr->len - 1).tile_in == a.tile_in)
      break;
    g_array_append_val (arr, a);
    if (a.n_tiles == 1)
      break;
    req = a.tile_in + 1;
  }
  return arr;
}

gboolean
unet_tile_plan_auto (UnetTilePlan *plan, const UnetConfig *cfg, gint channel_align,
    gint frame_h, gint frame_w, guint64 budget_bytes, gint batch, GError **error)
{
  GArray *ys, *xs;
  gboolean found = FALSE;
  gdouble best_px = 0;
  gint best_tiles = 0;
  guint i, j;

  batch = MAX (batch, 1);
  ys = axis_candidates (cfg, frame_h, error);
  if (!ys)
    return FALSE;
  xs = axis_candidates (cfg, frame_w, error);
  if (!xs) {
    g_array_free (ys, TRUE);
    return FALSE;
  }
  /* The smallest usable tile is the fallback when nothing fits the budget. */
  plan->y = g_array_index (ys, UnetTileAxis, 0);
  plan->x = g_array_index (xs, UnetTileAxis, 0);

  for (i = 0; i < ys->len; i++) {
    const UnetTileAxis *ay = &g_array_index (ys, UnetTileAxis, i);
    for (j = 0; j < xs->len; j++) {
      const UnetTileAxis *ax = &g_array_index (xs, UnetTileAxis, j);
      gdouble px = (gdouble) ay->n_tiles * ay->tile_in * ax->n_tiles * ax->tile_in;
      gint tiles = ay->n_tiles * ax->n_tiles;
      guint64 act = unet_tile_activation_bytes (cfg, channel_align, ay->tile_in,
          ax->tile_in);

      /* Candidates grow along j: once over budget, larger ones are too. */
      if (act > budget_bytes / (guint64) batch)
        break;
      if (!found || px < best_px || (px == best_px && tiles < best_tiles)) {
        found = TRUE;
        best_px = px;
        best_tiles = tiles;
        plan->y = *ay;
        plan->x = *ax;
      }
    }
  }
  g_array_free (ys, TRUE);
  g_array_free (xs, TRUE);
  plan->blend = cfg->padding == UNET_PADDING_SAME;
  plan->n_tiles = plan->y.n_tiles * plan->x.n_tiles;
  return TRUE;
}

void
unet_tile_plan_get_tile (const UnetTilePlan *plan, gint index, UnetTile *t)
{
  gint ty = index / plan->x.n_tiles, tx = index % plan->x.n_tiles;

  t->out_y = ty * plan->y.stride;
  t->out_x = tx * plan->x.stride;
  t->in_y = t->out_y - plan->y.border;
  t->in_x = t->out_x - plan->x.border;
  t->y0 = t->out_y;
  t->x0 = t->out_x;
  if (plan->blend) {
    t->y1 = MIN (t->out_y + plan->y.tile_out, plan->y.frame);
    t->x1 = MIN (t->out_x + plan->x.tile_out, plan->x.frame);
  } else {
    t->y1 = MIN (t->out_y + plan->y.stride, plan->y.frame);
    t->x1 = MIN (t->out_x + plan->x.stride, plan->x.frame);
  }
}

guint64
unet_tile_activation_bytes (const UnetConfig *cfg, gint channel_align, gint in_h,
    gint in_w)
{
  /* Peak of the live tensors in a forward pass that frees each tensor after its
   * last use: the skip tensors kept for the decoder plus the input and output of
   * the op in flight (what a liveness-packed backend needs). */
  gint shrink = cfg->padding == UNET_PADDING_VALID ? 2 : 0;
  gint64 h = in_h, w = in_w, cur, skips = 0, peak, next;
  gint64 skip_sz[32];
  gint i, d = cfg->depth;

#define F(i) ((gint64) unet_graph_width (cfg, channel_align, (i)))
#define STEP(out_elems) do { next = (out_elems); \
    peak = MAX (peak, skips + cur + next); cur = next; } while (0)
  cur = (gint64) cfg->in_channels * h * w;
  peak = cur;
  for (i = 0; i < d && i < 32; i++) {
    h -= shrink;
    w -= shrink;
    STEP (F (i) * h * w);
    h -= shrink;
    w -= shrink;
    STEP (F (i) * h * w);
    /* The conv2 output stays as the skip; the pooled copy is the new current. */
    skip_sz[i] = cur;
    h /= 2;
    w /= 2;
    next = F (i) * h * w;
    peak = MAX (peak, skips + cur + next);
    skips += cur;
    cur = next;
  }
  for (i = 0; i < 2; i++) {
    h -= shrink;
    w -= shrink;
    STEP (F (d) * h * w);
  }
  for (i = MIN (d, 32) - 1; i >= 0; i--) {
    h *= 2;
    w *= 2;
    STEP (F (i) * h * w);                       /* upsampled */
    skips -= skip_sz[i];
    /* concat = cropped skip + upsampled: live with both inputs */
    next = 2 * F (i) * h * w;
    peak = MAX (peak, skips + skip_sz[i] + cur + next);
    cur = next;
    h -= shrink;
    w -= shrink;
    STEP (F (i) * h * w);
    h -= shrink;
    w -= shrink;
    STEP (F (i) * h * w);
  }
  STEP ((gint64) cfg->classes * h * w);         /* logits */
  STEP ((gint64) cfg->classes * h * w);         /* probabilities */
#undef STEP
#undef F
  return (guint64) MAX (peak, 0) * sizeof (gfloat);
}

void
unet_tile_gaussian_window (gint n, gfloat *w)
{
  gdouble sigma = n / 8.0, c = (n - 1) / 2.0;
  gint i;

  for (i = 0; i < n; i++) {
    gdouble d = (i - c) / sigma;
    w[i] = (gfloat) exp (-0.5 * d * d);
  }
}
