/* gst-unet engine — training building blocks on host float arrays (internal).
 *
 * Pure C, independent of any backend:
 *   masks      raw mask frame -> class map + instance map (weightmap.c)
 *   weight map class balance + the paper's border weights (weightmap.c)
 *   augment    one warp per sample: tile position, elastic field, rotation, flips,
 *              gray-value jitter (augment.c); drawn (UnetAugmentDraw) apart from
 *              being applied, so a backend can apply the host's draws
 *   loss       weighted softmax cross-entropy / sigmoid BCE with an ignore label,
 *              soft-Dice term, Dice metric; value and gradient w.r.t. logits (loss.c)
 *   optimiser  SGD (momentum, Nesterov), Adam, AdamW with PyTorch semantics and
 *              constant / cosine / poly learning-rate schedules on a flat slab
 *              (optim.c)
 *
 * Conventions: images are dense (C,H,W) or (H,W) float32; class maps are gint32
 * (H,W) holding 0..classes-1 or UNET_LABEL_IGNORE; instance maps are gint32 (H,W)
 * holding 0 (no object) or 1..n_instances.
 */
#pragma once

#include "unet.h"
#include "rng.h"

G_BEGIN_DECLS

/* Class-map value of pixels that take no part in the loss or the metrics. */
#define UNET_LABEL_IGNORE (-1)

/* ------------------------------------------------------------ masks -- */

typedef enum
{
  /* Non-zero = foreground (class 1); objects are the 4-connected components of
   * the foreground. */
  UNET_MASK_BINARY,
  /* Value = class index (0 = background, must be < classes); objects are the
   * 4-connected components of the pixels that share one non-zero class, so two
   * touching objects of different classes are separate objects and touching
   * objects of the same class merge (an indexed mask carries nothing that could
   * separate them). */
  UNET_MASK_INDEXED,
  /* Value = instance id (0 = background), used as is (an id need not be
   * connected); every object is foreground class 1. */
  UNET_MASK_INSTANCES,
} UnetMaskMode;

/* Converts a raw mask (H,W) into a class map and an instance map (both (H,W),
 * gint32). `ignore_value` >= 0 marks mask pixels that become UNET_LABEL_IGNORE (and
 * belong to no object); < 0 disables it. `classes` is the model's class count
 * (1 = sigmoid: classes are still 0/1 here). Values that are not valid for the mode
 * (negative, or a class index >= max(classes, 2) in indexed mode) are an
 * UNET_ERROR_INVALID_ARGUMENT naming the value and its position. */
gboolean unet_mask_to_labels            (UnetMaskMode mode, const gint32 *mask,
                                         gint width, gint height, gint classes,
                                         gint ignore_value, gint32 *class_map,
                                         gint32 *instance_map, gint *n_instances,
                                         GError **error);

/* 4-connected components of the pixels with key[i] > 0, equal keys grouped:
 * writes 1..n in raster order of first pixel into `regions` (0 elsewhere) and
 * returns n. `stack` is scratch of width·height ints. */
gint     unet_label_regions             (const gint32 *key, gint width, gint height,
                                         gint32 *regions, gint *stack);

/* ------------------------------------------------------- weight map -- */

typedef struct
{
  gboolean class_balance;       /* w_c = N / (n_present · N_c), else w_c = 1 */
  gdouble border_weight;        /* w0 (10 in the paper); 0 disables the term */
  gdouble border_sigma;         /* sigma in pixels (5 in the paper) */
} UnetWeightMapParams;

void     unet_weight_map_params_init    (UnetWeightMapParams *params);

/* Distance beyond which the border term is dropped: d1 + d2 > cutoff means
 * w0·exp(-(d1+d2)²/(2σ²)) < 1e-3·w0, i.e. cutoff = σ·sqrt(2·ln 1000) ≈ 3.717·σ. */
gdouble  unet_weight_map_cutoff         (const UnetWeightMapParams *params);

/* w(x) = w_c(x) + w0·exp(-(d1(x)+d2(x))²/(2σ²)) for every labelled pixel (object
 * pixels included, as in the paper's formula: there d1 = 0 and d2 is the distance
 * to the nearest other object); 0 on ignored pixels. d1, d2 are Euclidean
 * distances (pixel centres) to the nearest and second-nearest object; the border
 * term needs two objects and is 0 where d1 + d2 > unet_weight_map_cutoff().
 * Cost: one exact distance transform per object inside its bounding box grown by
 * the cutoff, so O(sum of window areas), not pixels × objects.
 * class_map, instance_map (H,W); weights (H,W) out. */
gboolean unet_weight_map_compute        (const UnetWeightMapParams *params,
                                         const gint32 *class_map,
                                         const gint32 *instance_map, gint n_instances,
                                         gint classes, gint width, gint height,
                                         gfloat *weights, GError **error);

/* --------------------------------------------------------- augment -- */

typedef enum
{
  UNET_INTERP_BILINEAR,
  UNET_INTERP_BICUBIC,          /* Catmull-Rom (Keys a = -0.5) */
} UnetInterp;

typedef struct
{
  gboolean random_position;     /* else the tile is centred on the frame */
  gboolean elastic;
  gint elastic_grid;            /* G: G×G control points spanning the tile, >= 2 */
  gdouble elastic_sigma;        /* px, standard deviation of the displacements */
  gboolean rotate;
  gdouble max_rotation;         /* degrees; angle ~ U(-max, max); 180 = any angle */
  gboolean flip;                /* horizontal and vertical flips, each p = 0.5 */
  gboolean intensity;
  gdouble gamma;                /* gamma ~ exp(U(-ln g, ln g)), g >= 1 */
  gdouble contrast;             /* factor ~ U(1 - c, 1 + c) around the tile mean */
  gdouble brightness;           /* offset ~ U(-b, b) in normalised units */
  UnetInterp image_interp;
} UnetAugmentParams;

/* Paper defaults: random position, elastic G = 3, sigma = 10, any rotation, flips,
 * gamma 1.5, contrast 0.2, brightness 0.1, bicubic. */
void     unet_augment_params_init       (UnetAugmentParams *params);
/* Everything off: the tile is the centred crop (the identity warp). */
void     unet_augment_params_init_identity (UnetAugmentParams *params);

/* One sample's augmentation, drawn: every random value of unet_augment_sample in
 * its fixed order, turned into the geometry and gray-value changes it stands for.
 * Applying it (on the host, unet_augment_apply_host, or on a backend from a
 * resident copy of the sample) needs no generator, so the draws of a step can be
 * made on the host and the pixels sampled where the sample lives. A tile pixel
 * (u, v) samples the frame at
 *   s = (cx, cy) + a · (u - tcx, v - tcy) + d(u, v)
 * with d the Catmull-Rom interpolation of the G×G displacement grid `disp` (only
 * when `elastic`). Zero-initialise before the first draw; `disp` is owned (kept
 * and reused by the next draw of the same or a smaller grid) and released by
 * unet_augment_draw_clear. */
typedef struct
{
  gint width, height;           /* the source frame */
  gint in_w, in_h, out_w, out_h;        /* the tile and its centred output region */
  gdouble cx, cy;               /* frame position of the tile centre (snapped) */
  gdouble tcx, tcy;             /* the tile's own centre, (in - 1) / 2 */
  gdouble a[2][2];              /* R(θ)·F: rotation times flips */
  gboolean elastic;
  gint grid;                    /* G (2 when elastic is off: drawn, unused) */
  gdouble *disp;                /* [axis][gy][gx], 2·G·G px */
  gint disp_alloc;              /* doubles allocated at disp */
  gboolean intensity;
  gdouble gamma;                /* exponent on the tile's min..max range */
  gdouble contrast;             /* factor around the tile mean */
  gdouble brightness;           /* offset */
  UnetInterp image_interp;
} UnetAugmentDraw;

/* The draws of one sample (the checks and errors of unet_augment_sample). */
gboolean unet_augment_draw              (const UnetAugmentParams *params, UnetRng *rng,
                                         gint channels, gint width, gint height,
                                         gint in_w, gint in_h, gint out_w, gint out_h,
                                         UnetAugmentDraw *draw, GError **error);
void     unet_augment_draw_clear        (UnetAugmentDraw *draw);
/* The draw's geometry in float and local coordinates, as a device samples with it
 * (engine/cuda's UnetCudaAugSample): s = origin + affine · (u, v, 1) + d(u, v), the
 * origin the integer part of (cx, cy), so that float rounding of the local part
 * scales with the tile, not the frame; `grid` (G, G, 2) gets the displacements
 * (grid[(gy · G + gx) · 2 + axis]) when the draw is elastic (may be NULL). */
void     unet_augment_draw_local        (const UnetAugmentDraw *draw, gint origin[2],
                                         gfloat affine[6], gfloat *grid);
/* The sample of `draw` on the host: arguments and outputs as unet_augment_sample
 * (the frame must be draw->width x draw->height). */
gboolean unet_augment_apply_host        (const UnetAugmentDraw *draw, const gfloat *image,
                                         const gint32 *class_map, const gfloat *weights,
                                         gint channels, gfloat *out_image,
                                         gint32 *out_labels, gfloat *out_weights,
                                         GError **error);

/* One training sample in one sampling pass (unet_augment_draw, then
 * unet_augment_apply_host).
 * image (C,H,W), class_map (H,W), weights (H,W) or NULL: the source frame.
 * out_image (C,in_h,in_w): the network input tile (image bicubic/bilinear, mirror
 * boundary, then the gray-value changes). out_labels/out_weights (out_h,out_w):
 * the centre region of the same warp (offset ((in_h-out_h)/2, (in_w-out_w)/2);
 * labels nearest, weights bilinear, mirror boundary). out_weights may be NULL;
 * when `weights` is NULL out_weights is 1 on labelled pixels and 0 on ignored ones.
 * The draws come from `rng` in a fixed order, so a seed reproduces the sample. */
gboolean unet_augment_sample            (const UnetAugmentParams *params, UnetRng *rng,
                                         const gfloat *image, const gint32 *class_map,
                                         const gfloat *weights, gint channels,
                                         gint width, gint height,
                                         gint in_w, gint in_h, gint out_w, gint out_h,
                                         gfloat *out_image, gint32 *out_labels,
                                         gfloat *out_weights, GError **error);

/* ------------------------------------------------------------ loss -- */

/* Weighted pixel-wise loss, mean normalised by the sum of weights:
 *   K >= 2: L = Σ_i w_i · (-log softmax(z_i)[y_i]) / Σ_i w_i
 *   K == 1: L = Σ_i w_i · BCEWithLogits(z_i, y_i) / Σ_i w_i,  y_i ∈ {0, 1}
 * over pixels i with y_i != UNET_LABEL_IGNORE (ignored pixels have weight 0).
 * Equals PyTorch's (F.cross_entropy(z, y, reduction='none', ignore_index=-1) * w)
 * .sum() / (w * (y != -1)).sum(). L = 0 and the gradient is 0 when Σ w = 0.
 * logits (B,K,H,W); labels (B,H,W); weights (B,H,W) or NULL (all 1);
 * grad_logits (B,K,H,W) or NULL: dL/dlogits is WRITTEN (not accumulated). */
gboolean unet_loss_cross_entropy        (const gfloat *logits, const gint32 *labels,
                                         const gfloat *weights, gint batch, gint classes,
                                         gint height, gint width, gdouble *loss,
                                         gfloat *grad_logits, GError **error);

/* Soft-Dice loss over the foreground classes (1..K-1, or the sigmoid class for
 * K == 1), per image pair of the batch pooled:
 *   D_c = (2 Σ p_c g_c + eps) / (Σ p_c + Σ g_c + eps),  L = 1 - mean_c D_c
 * with p = softmax (sigmoid) probabilities, g = one-hot labels, sums over
 * non-ignored pixels of the whole batch, eps = 1. `scale` · dL/dlogits is ADDED to
 * grad_logits (may be NULL), so the term composes with the cross-entropy. */
gboolean unet_loss_soft_dice            (const gfloat *logits, const gint32 *labels,
                                         gint batch, gint classes, gint height,
                                         gint width, gdouble scale, gdouble *loss,
                                         gfloat *grad_logits, GError **error);

/* Hard Dice of the prediction (argmax, or p > 0.5 for K == 1) against the labels,
 * over non-ignored pixels: dice[c] for c in 0..max(K,2)-1 (K == 1 reports
 * background and foreground), and *foreground = Dice of "class != 0" vs
 * "label != 0". A class absent from both prediction and labels scores 1.
 * Accumulate counts over several calls with UnetDiceCounts. */
typedef struct
{
  gint n_classes;               /* max(K, 2) */
  guint64 inter[16], pred[16], label[16];  /* per class; K <= 16 is checked */
  guint64 fg_inter, fg_pred, fg_label;
} UnetDiceCounts;

void     unet_dice_counts_init          (UnetDiceCounts *counts, gint classes);
gboolean unet_dice_counts_add           (UnetDiceCounts *counts, const gfloat *logits,
                                         const gint32 *labels, gint batch, gint classes,
                                         gint height, gint width, GError **error);
gdouble  unet_dice_counts_class         (const UnetDiceCounts *counts, gint cls);
gdouble  unet_dice_counts_foreground    (const UnetDiceCounts *counts);

/* Confusion matrix of a batch's prediction (argmax, or z > 0 for K == 1) against
 * its labels over the labelled pixels: n[label][prediction], classes 0..max(K,2)-1
 * (K <= 16). A training step's statistics (Dice, the guard's counts) come from it,
 * so a backend that computes the loss on its device reads back only this. */
typedef struct
{
  gint n_classes;               /* max(K, 2) */
  guint64 n[16][16];
} UnetConfusion;

void     unet_confusion_init            (UnetConfusion *conf, gint classes);
gboolean unet_confusion_add             (UnetConfusion *conf, const gfloat *logits,
                                         const gint32 *labels, gint batch, gint classes,
                                         gint height, gint width, GError **error);
void     unet_dice_counts_add_confusion (UnetDiceCounts *counts, const UnetConfusion *conf);

/* A training batch's loss on host arrays: unet_loss_cross_entropy plus
 * dice_weight times unet_loss_soft_dice (when > 0), grad_logits written, and the
 * prediction's confusion matrix. */
gboolean unet_loss_batch                (const gfloat *logits, const gint32 *labels,
                                         const gfloat *weights, gint batch, gint classes,
                                         gint height, gint width, gdouble dice_weight,
                                         gdouble *loss, gfloat *grad_logits,
                                         UnetConfusion *confusion, GError **error);
/* (Re)allocates the two float buffers of unet_loss_batch (logits and gradient) to
 * hold at least n each; *have is their size. */
gboolean unet_loss_buffers              (gfloat **logits, gfloat **grad, gsize *have,
                                         gsize n, GError **error);

/* ------------------------------------------------ held-out scores -- */

/* Scores of predicted class maps against labelled frames, accumulated over frames
 * (scores.c): plain pixel error = mean(pred != label) over labelled pixels; the
 * adapted Rand error of the ground-truth objects (ISBI 2012 definition, per frame,
 * averaged); foreground Dice (class != 0); per-class pixel counts. */
#define UNET_SCORES_MAX_CLASSES 16
typedef struct
{
  gint n_classes;               /* max(K, 2) */
  guint64 labelled, wrong;
  guint64 pred[UNET_SCORES_MAX_CLASSES], label[UNET_SCORES_MAX_CLASSES];
  guint64 inter[UNET_SCORES_MAX_CLASSES];
  guint64 fg_inter, fg_pred, fg_label;
  gdouble rand_error_sum;
  guint rand_frames, frames;
} UnetSegScores;

void     unet_seg_scores_init           (UnetSegScores *scores, gint classes);
/* pred, labels (H,W): class indices (labels may hold UNET_LABEL_IGNORE);
 * objects (H,W): ground-truth object ids (0 = none) for the Rand error, or NULL. */
gboolean unet_seg_scores_add_frame      (UnetSegScores *scores, const gint32 *pred,
                                         const gint32 *labels, const gint32 *objects,
                                         gint width, gint height, GError **error);
/* Counts of a batch without objects (no Rand error), e.g. a training step's. */
void     unet_seg_scores_add_confusion  (UnetSegScores *scores, const UnetConfusion *conf);
/* -1 when nothing was scored. */
gdouble  unet_seg_scores_pixel_error    (const UnetSegScores *scores);
gdouble  unet_seg_scores_rand_error     (const UnetSegScores *scores);
gdouble  unet_seg_scores_dice           (const UnetSegScores *scores);
/* The first class that makes up at least `min_share` of the labelled pixels but
 * was never predicted, or -1. */
gint     unet_seg_scores_missing_class  (const UnetSegScores *scores, gdouble min_share);

/* ------------------------------------------------------- optimiser -- */

typedef enum
{
  UNET_OPTIM_SGD,               /* torch.optim.SGD (dampening 0) */
  UNET_OPTIM_ADAM,              /* torch.optim.Adam (L2 weight decay on the gradient) */
  UNET_OPTIM_ADAMW,             /* torch.optim.AdamW (decoupled weight decay) */
} UnetOptimKind;

typedef enum
{
  UNET_LR_CONSTANT,
  UNET_LR_COSINE,               /* lr_min + (lr - lr_min)(1 + cos(pi t / T)) / 2 */
  UNET_LR_POLY,                 /* lr (1 - min(t, T) / T)^power (PolynomialLR) */
} UnetLrSchedule;

typedef struct
{
  UnetOptimKind kind;
  gdouble lr;
  gdouble momentum;             /* SGD */
  gboolean nesterov;            /* SGD, needs momentum > 0 */
  gdouble beta1, beta2, eps;    /* Adam / AdamW */
  gdouble weight_decay;
  UnetLrSchedule schedule;
  gint64 total_steps;           /* T of the cosine / poly schedules */
  gdouble poly_power;
  gdouble lr_min;               /* cosine */
  gint64 warmup_steps;          /* linear warm-up: step t < W uses lr·(t+1)/W */
} UnetOptimParams;

/* SGD, lr 0.01, momentum 0.99 (the paper), no weight decay, constant schedule;
 * Adam betas (0.9, 0.999), eps 1e-8; poly power 0.9. */
void     unet_optim_params_init         (UnetOptimParams *params);
const gchar *unet_optim_kind_name       (UnetOptimKind kind);
const gchar *unet_lr_schedule_name      (UnetLrSchedule schedule);

/* A slice of the flat slab the optimiser updates; `decay` = apply weight decay. */
typedef struct
{
  gsize offset;
  gsize numel;
  gboolean decay;
} UnetOptimRange;

typedef struct _UnetOptimizer UnetOptimizer;

/* An optimiser for a slab of n floats; only the given ranges are updated (the
 * rest — batch-norm running statistics, alignment padding — is left alone).
 * ranges == NULL means the whole slab with decay. State is float32, zero. */
UnetOptimizer *unet_optimizer_new       (const UnetOptimParams *params, gsize n,
                                         const UnetOptimRange *ranges, guint n_ranges,
                                         GError **error);
void     unet_optimizer_free            (UnetOptimizer *opt);
const UnetOptimParams *unet_optimizer_get_params (const UnetOptimizer *opt);
/* Steps taken so far (t; the next step is number t + 1). */
gint64   unet_optimizer_get_step        (const UnetOptimizer *opt);
/* Learning rate the next step uses (schedule at t). */
gdouble  unet_optimizer_get_lr          (const UnetOptimizer *opt);
/* One step: params (n) -= update(grads (n)). Non-finite gradients are an
 * UNET_ERROR_FAILED and leave params and state untouched. */
gboolean unet_optimizer_step            (UnetOptimizer *opt, gfloat *params,
                                         const gfloat *grads, GError **error);

/* One step's update with the schedule applied: what a backend needs to run it on
 * its own slabs (backend.h optimizer_update), and what unet_optim_update_host
 * runs on host ones. */
typedef struct
{
  UnetOptimKind kind;
  gdouble lr;                   /* this step's, schedule and warm-up applied */
  gdouble momentum, beta1, beta2, eps, weight_decay;
  gboolean nesterov;
  gint64 t;                     /* 1-based step number (Adam's bias correction;
                                   SGD's momentum buffer starts at t == 1) */
  const UnetOptimRange *ranges; /* the slices updated; weight decay per range */
  guint n_ranges;
  guint n_buffers;              /* state slabs: 0 or 1 (SGD), 2 (Adam/AdamW) */
  gsize n;                      /* slab length */
} UnetOptimUpdate;

/* The next step's update (valid while `opt` lives). */
void     unet_optimizer_next_update     (const UnetOptimizer *opt, UnetOptimUpdate *u);
/* Counts a step whose update ran elsewhere (a backend). */
void     unet_optimizer_advance         (UnetOptimizer *opt);
/* The update on host slabs: params and the n_buffers state slabs (n floats each).
 * Non-finite gradients in the updated ranges: UNET_ERROR_FAILED, nothing changed. */
gboolean unet_optim_update_host         (const UnetOptimUpdate *u, gfloat *params,
                                         const gfloat *grads, gfloat *const *buffers,
                                         GError **error);

/* State for checkpoints: named float32 buffers of n floats each
 * ("optim.momentum_buffer" for SGD with momentum; "optim.exp_avg",
 * "optim.exp_avg_sq" for Adam/AdamW) plus the step counter. */
guint    unet_optimizer_get_n_buffers   (const UnetOptimizer *opt);
const gchar *unet_optimizer_get_buffer_name (const UnetOptimizer *opt, guint index);
gfloat  *unet_optimizer_get_buffer      (UnetOptimizer *opt, guint index);
/* Restores the step counter (and whether buffers hold data, i.e. step > 0). */
void     unet_optimizer_set_step        (UnetOptimizer *opt, gint64 step);

G_DEFINE_AUTOPTR_CLEANUP_FUNC (UnetOptimizer, unet_optimizer_free)

/* ------------------------------------- a training step on a net (net.c) -- */
/* Training samples resident on the net's backend (backends with the slots, e.g.
 * CUDA; the CPU has none: unet_net_train_samples_supported FALSE). A sample is the
 * stored pair of the trainer (dataset.h): image (channels, height, width) with the
 * model's input channels, class map, weight map or NULL; uploaded once, checked
 * (labels of the model's classes or UNET_LABEL_IGNORE, weights finite and >= 0).
 * UNET_ERROR_OUT_OF_MEMORY when the backend's budget for samples is spent. Every
 * sample must be removed before the net is freed or the backend frees it. */
typedef struct _UnetNetSample UnetNetSample;
gboolean unet_net_train_samples_supported (UnetNet *net);
UnetNetSample *unet_net_train_sample_add (UnetNet *net, const gfloat *image,
                                         const gint32 *class_map, const gfloat *weights,
                                         gint width, gint height, GError **error);
/* NULL: no-op. */
void     unet_net_train_sample_remove   (UnetNet *net, UnetNetSample *sample);
/* unet_net_train_forward on a batch made on the backend: entry b is samples[b]
 * augmented with draws[b] (unet_augment_draw for that sample's frame and the tile
 * draws[b].in_w x in_h, the same tile and output region for every entry), exactly
 * as unet_augment_apply_host makes it. The labels and weights of the output regions
 * stay on the backend for unet_net_train_loss (labels and weights NULL). Per call
 * only the draws travel to the backend. */
gboolean unet_net_train_forward_samples (UnetNet *net, UnetNetSample *const *samples,
                                         const UnetAugmentDraw *draws, gint batch,
                                         guint64 seed, GError **error);
/* After unet_net_train_forward: the loss of the batch's class map `labels` and
 * pixel `weights` ((B, out_h, out_w) each) on the net's backend — the weighted
 * cross-entropy of unet_loss_cross_entropy plus dice_weight times the soft Dice —
 * with dL/dlogits left on the backend for unet_net_train_backward (grad_logits
 * NULL). Only the loss and the confusion matrix come back. labels and weights NULL
 * after unet_net_train_forward_samples: the targets it made on the backend. */
gboolean unet_net_train_loss            (UnetNet *net, const gint32 *labels,
                                         const gfloat *weights, gdouble dice_weight,
                                         gdouble *loss, UnetConfusion *confusion,
                                         GError **error);
/* The optimiser's next step on the net's parameters from its gradients, on the
 * backend (its state slabs live there); *finite: the parameters are all finite
 * afterwards. Non-finite gradients: UNET_ERROR_FAILED, nothing changed. */
gboolean unet_net_optimizer_step        (UnetNet *net, UnetOptimizer *opt,
                                         gboolean *finite, GError **error);
/* The optimiser's state slabs: backend -> opt's buffers (before a checkpoint is
 * written), or opt's buffers -> backend (`to_net`, after a resume). */
gboolean unet_net_optimizer_state       (UnetNet *net, UnetOptimizer *opt,
                                         gboolean to_net, GError **error);

G_END_DECLS
