/* gst-unet engine — the trainer's dataset: image/mask pairs (internal).
 *
 * A pair is stored ready for what it is used for:
 * - a training pair for sampling: the normalised image (C,H,W), the class map
 *   (H,W) and the weight map (H,W) computed once from the instance labels (the
 *   paper's w_c + w0·exp(-(d1+d2)²/2σ²));
 * - a held-out pair for scoring: the raw image, segmented at validation time
 *   through the segmenter exactly as unetsegment segments it (normalisation
 *   included), the class map, and the object ids the Rand error needs.
 *
 * The split and the bounded sets are described with unet_trainer_add_pair in
 * unet.h; unet_dataset_holds_out and unet_dataset_push implement them. The sets
 * themselves are GQueues of UnetPair* that the trainer owns.
 */
#pragma once

#include "unet.h"
#include "training.h"

G_BEGIN_DECLS

/* How a raw pair becomes a stored one. */
typedef struct
{
  gint in_channels;             /* the model's */
  gint classes;                 /* the model's (1 = sigmoid) */
  UnetNormalization normalization;
  UnetMaskMode mask_mode;
  gint ignore_label;            /* mask value without loss, -1 = none */
  UnetWeightMapParams weight_map;
} UnetPairOptions;

typedef struct
{
  gint width, height;
  gfloat *image;                /* (C,H,W) normalised; training pairs, else NULL */
  gint32 *classes;              /* (H,W) 0..K-1 or UNET_LABEL_IGNORE */
  gfloat *weights;              /* (H,W); training pairs, else NULL */
  gint32 *objects;              /* (H,W) object ids; held-out pairs, else NULL */
  /* Held-out pairs: the raw image, dense rows of `raw_stride` bytes. */
  UnetPixelFormat raw_format;
  guint8 *raw;
  gsize raw_stride;
  /* Training pairs: the pair's copy on the trainer's backend (a UnetNetSample,
   * training.h) while the trainer augments there; the trainer removes it before the
   * pair is freed. NULL otherwise. */
  gpointer device;
} UnetPair;

/* Frames the trainer takes: 1..65536 pixels per side, at most 2^28 pixels, rows of
 * at least width·bpp bytes. `what` names the frame in the error ("image", "mask"). */
gboolean  unet_dataset_check_frame      (gint width, gint height, gsize stride, gsize bpp,
                                         const gchar *what, GError **error);

/* A stored pair from a raw image (gray, RGB8 or RGBA8 with o->in_channels
 * channels) and a raw U8/U16 mask of the same size, for training or, when
 * `held_out`, for scoring. Errors: frames out of bounds, a mask that is not
 * integer labels or has values invalid for the mask mode, an image whose channels
 * are not the model's. */
UnetPair *unet_pair_new                 (const UnetPairOptions *o, gboolean held_out,
                                         UnetPixelFormat image_format, gconstpointer image,
                                         gsize image_stride, UnetPixelFormat mask_format,
                                         gconstpointer mask, gsize mask_stride,
                                         gint width, gint height, GError **error);
/* Takes a UnetPair* (a GDestroyNotify for the sets); NULL is a no-op. */
void      unet_pair_free                (gpointer pair);

/* Whether pair number `index` (every pair ever added, from 0) is held out for
 * validation: floor((index + 1)·f) > floor(index·f), i.e. every 1/f-th pair by
 * arrival number, independent of timing and seed — except while the training set
 * is empty (`n_training` 0): the first pair always trains so that steps can start. */
gboolean  unet_dataset_holds_out        (guint64 index, gdouble fraction, guint n_training);

/* Appends `pair` to `set`, first dropping the oldest pairs while the set holds
 * `capacity` (>= 1) or more; `evict` (may be NULL) sees each before it is freed. */
void      unet_dataset_push             (GQueue *set, guint capacity, UnetPair *pair,
                                         GFunc evict, gpointer user);

G_END_DECLS
