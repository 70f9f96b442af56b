/* gst-unet engine — overlap-tile planner (internal).
 *
 * Pure geometry, shared by every backend: which input tile edges are legal, where
 * each tile sits in the frame, which output pixels each tile owns, how a frame is
 * mirror-extended, and how large the activations of a tile are. No pixels are touched
 * here; host-side extraction and stitching live in tile-extract-stitch.c (a GPU path replaces
 * those with kernels and keeps this planner).
 *
 * Coordinates: frame pixels, y down, x right, (0,0) top-left. A tile's input window may
 * start at negative coordinates and end past the frame: those pixels come from the
 * mirror extension (unet_mirror_index).
 *
 * Valid padding (exact): along each axis the tile output edge is To, the stride S is
 * the largest multiple of 2^depth <= To, tile k owns output pixels [k*S, (k+1)*S)
 * (clipped to the frame) and its input window starts at k*S - border. Every input
 * origin is then on one global 2^depth grid anchored at -border, so the stitched
 * output equals one forward pass over the mirror-extended frame (origin -border,
 * extended to a legal size) up to float rounding.
 *
 * Same padding (blended): tiles of edge T (a multiple of 2^depth) start at k*S with
 * S = the largest multiple of 2^depth <= T/2 (at least 2^depth); each tile's whole
 * output is accumulated with a Gaussian window (sigma = T/8) and normalised by the
 * summed weights.
 */
#pragma once

#include "unet.h"

G_BEGIN_DECLS

/* One axis of a plan. */
typedef struct
{
  gint frame;                   /* frame extent along this axis (>= 1) */
  gint tile_in;                 /* network input edge (legal) */
  gint tile_out;                /* network output edge */
  gint stride;                  /* distance between consecutive tile origins */
  gint n_tiles;                 /* >= 1 */
  gint border;                  /* input origin = output origin - border */
} UnetTileAxis;

typedef struct
{
  UnetTileAxis y, x;
  gboolean blend;               /* TRUE for same padding: Gaussian-weighted overlap */
  gint n_tiles;                 /* y.n_tiles * x.n_tiles */
} UnetTilePlan;

/* One tile, in frame coordinates. */
typedef struct
{
  gint in_y, in_x;              /* top-left of the input window (may be < 0) */
  gint out_y, out_x;            /* top-left of the output window (in + border) */
  /* The frame region this tile writes, [y0,y1) x [x0,x1), inside the frame:
   * valid: the owned block; same: the whole output window clipped to the frame. */
  gint y0, y1, x0, x1;
} UnetTile;

/* Mirror index without repeating the edge pixel (-1 -> 1, n -> n-2), reflecting
 * again as often as needed (period 2(n-1)); n == 1 maps every index to 0. */
gint     unet_mirror_index              (gint i, gint n);

/* Plan one axis for a requested input tile edge (0 = the smallest usable one).
 * The request is rounded up to a legal edge, raised to the smallest one whose
 * output can hold a 2^depth stride (unless one tile covers the frame), and lowered
 * to the smallest edge that covers the whole frame in one tile. */
gboolean unet_tile_axis_plan            (const UnetConfig *cfg, gint frame, gint requested_in,
                                         UnetTileAxis *axis, GError **error);

/* A plan with explicit tile edges (each may be 0 = smallest usable). */
gboolean unet_tile_plan_init            (UnetTilePlan *plan, const UnetConfig *cfg,
                                         gint frame_h, gint frame_w,
                                         gint tile_h, gint tile_w, GError **error);

/* The plan that processes the fewest input pixels (n_tiles * tile area) among tile
 * shapes whose activations for `batch` tiles fit `budget_bytes` (ties: fewer tiles),
 * estimated with unet_tile_activation_bytes (`channel_align` as there). When even
 * the smallest usable tile exceeds the budget, that tile is used. */
gboolean unet_tile_plan_auto            (UnetTilePlan *plan, const UnetConfig *cfg,
                                         gint channel_align, gint frame_h, gint frame_w,
                                         guint64 budget_bytes, gint batch, GError **error);

/* Tile `index` (row-major over the y, x tile grid, 0 <= index < n_tiles). */
void     unet_tile_plan_get_tile        (const UnetTilePlan *plan, gint index, UnetTile *tile);

/* Bytes of float32 activations of one forward pass of one in_h x in_w tile: the
 * peak of the live tensors (skip connections kept for the decoder plus the input
 * and output of the op in flight), as a backend that frees (or reuses) each tensor
 * after its last use needs, with inner widths padded to a multiple of
 * `channel_align` as the backend's inference graphs are (graph.h; <= 1: none). */
guint64  unet_tile_activation_bytes     (const UnetConfig *cfg, gint channel_align,
                                         gint in_h, gint in_w);

/* 1-D Gaussian importance window of n samples, sigma = n/8, peak 1 at the centre. */
void     unet_tile_gaussian_window      (gint n, gfloat *w);

/* ------------------------------------------------ host extraction/stitching --
 * Host implementations (tile-extract-stitch.c) of the pixel work around the planner. A GPU
 * backend replaces these with kernels of the same shapes. */

/* frame (height, width) normalised, one plane -> dst (channels, th, tw): the
 * mirror-extended window starting at (in_y, in_x); the plane is repeated into every
 * channel (gray into a 3-channel model). */
void     unet_tile_extract              (const gfloat *frame, gint height, gint width,
                                         gint in_y, gint in_x, gint th, gint tw,
                                         gint channels, gfloat *dst);

/* tile_out (classes, plan->y.tile_out, plan->x.tile_out) -> probs (classes, H, W):
 * copy the tile's owned region (valid padding). */
void     unet_tile_stitch_copy          (const UnetTilePlan *plan, const UnetTile *tile,
                                         gint classes, const gfloat *tile_out,
                                         gfloat *probs);

/* Blending (same padding): acc (classes, H, W) += w * tile_out and wsum (H, W) += w
 * over the tile's region, w = wy[y] * wx[x] (unet_tile_gaussian_window of the tile
 * output edges). */
void     unet_tile_stitch_blend         (const UnetTilePlan *plan, const UnetTile *tile,
                                         gint classes, const gfloat *tile_out,
                                         const gfloat *wy, const gfloat *wx,
                                         gfloat *acc, gfloat *wsum);
/* acc (classes, n) /= wsum (n). */
void     unet_tile_blend_finish         (gint classes, gsize n, gfloat *acc,
                                         const gfloat *wsum);

G_END_DECLS
