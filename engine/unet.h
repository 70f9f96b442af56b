/* gst-unet engine — public API.
 *
 * Plain C + GLib, no GStreamer, no CUDA or oneDNN types. Everything that can fail
 * returns gboolean (or a pointer) and takes `GError **error` last; errors are in the
 * UNET_ERROR domain. Handles are opaque; every `_free (NULL)` is a no-op and every
 * handle type has g_autoptr support.
 *
 * Layout conventions: tensors are dense NCHW float32 in host memory unless stated;
 * "(B,C,H,W)" beside an argument gives its shape.
 */
#pragma once

#include <glib.h>

G_BEGIN_DECLS

/* ---------------------------------------------------------------- errors -- */

#define UNET_ERROR (unet_error_quark ())
GQuark unet_error_quark (void);

typedef enum
{
  UNET_ERROR_FAILED,            /* anything not covered below */
  UNET_ERROR_INVALID_ARGUMENT,  /* bad config, size, shape or option */
  UNET_ERROR_MODEL,             /* malformed or inconsistent model file */
  UNET_ERROR_IO,                /* file could not be read or written */
  UNET_ERROR_BACKEND,           /* oneDNN / cuDNN / CUDA reported a failure */
  UNET_ERROR_NO_DEVICE,         /* the requested device does not exist or is not built */
  UNET_ERROR_OUT_OF_MEMORY,     /* an allocation failed or would exceed a budget */
} UnetError;

/* ------------------------------------------------------ config + geometry -- */

typedef enum
{
  UNET_PADDING_VALID = 0,       /* unpadded 3x3 convolutions (the paper) */
  UNET_PADDING_SAME = 1,        /* zero-padded 3x3 convolutions */
} UnetPadding;

/* The architecture. Level i (0 = full resolution) has F_i = base_filters << i
 * filters; `depth` is the number of 2x2 poolings (the bottom level is F_depth). */
/* Input channels a model may have: gray, RGB, or up to 8 fluorescence channels
 * (as multi-channel frames carry them, see elements/common/gstunetcaps.h). */
#define UNET_MAX_IN_CHANNELS 8

typedef struct
{
  gint in_channels;             /* 1 (gray), 3 (RGB) or 2..UNET_MAX_IN_CHANNELS planes */
  gint classes;                 /* 1 (sigmoid foreground) or >= 2 (softmax) */
  gint depth;                   /* >= 1 */
  gint base_filters;            /* >= 1 */
  UnetPadding padding;
  gboolean batch_norm;          /* BatchNorm2d after every 3x3 conv, before ReLU */
  gdouble dropout;              /* dropout probability at the bottom, training only */
} UnetConfig;

/* The classic network of the paper: 1 channel, 2 classes, depth 4, 64 filters, valid. */
void     unet_config_init_classic       (UnetConfig *cfg);
gboolean unet_config_validate           (const UnetConfig *cfg, GError **error);

/* Output edge length for an input edge length, or -1 when `input_size` is not legal
 * (a pooling would see an odd size, or a size would drop to <= 0). Same padding:
 * legal inputs are multiples of 2^depth and the output equals the input. */
gint     unet_config_output_size        (const UnetConfig *cfg, gint input_size);
/* Smallest legal input edge >= min_input. */
gint     unet_config_legal_input_at_least (const UnetConfig *cfg, gint min_input);
/* Smallest legal input edge whose output edge is >= min_output. */
gint     unet_config_input_for_output   (const UnetConfig *cfg, gint min_output);
/* Context lost on each side: (input - output) / 2 for valid padding, 0 for same. */
gint     unet_config_border             (const UnetConfig *cfg);
/* 2^depth: legal sizes and tile strides are multiples of this. */
gint     unet_config_size_step          (const UnetConfig *cfg);
guint64  unet_config_parameter_count    (const UnetConfig *cfg);
/* Floating point operations (2 per multiply-add) of one forward pass of one image
 * of in_h x in_w (both legal). */
gdouble  unet_config_forward_flops      (const UnetConfig *cfg, gint in_h, gint in_w);

/* JSON of the `unet.config` metadata entry (keys: in_channels, classes, depth,
 * base_filters, padding "valid"|"same", batch_norm, dropout). */
gchar   *unet_config_to_json            (const UnetConfig *cfg);
gboolean unet_config_from_json          (const gchar *json, UnetConfig *cfg, GError **error);

/* ---------------------------------------------------------- normalisation -- */

/* How raw pixel values become network input; stored as the `unet.normalization`
 * metadata entry so inference repeats what training did. JSON forms:
 *   {"mode":"none"}
 *   {"mode":"range","min":0,"max":4095}          (x - min) / (max - min)
 *   {"mode":"percentile","low":1.0,"high":99.8}  range from per-frame percentiles
 *   {"mode":"meanstd","mean":m,"std":s}          (x - mean) / std, fixed values
 *   {"mode":"frame-meanstd"}                     per-frame mean and std
 */
typedef enum
{
  UNET_NORM_NONE,
  UNET_NORM_RANGE,
  UNET_NORM_PERCENTILE,
  UNET_NORM_MEAN_STD,
  UNET_NORM_FRAME_MEAN_STD,
} UnetNormMode;

typedef struct
{
  UnetNormMode mode;
  gdouble a;                    /* range: min; percentile: low %; meanstd: mean */
  gdouble b;                    /* range: max; percentile: high %; meanstd: std */
} UnetNormalization;

typedef enum
{
  UNET_PIXEL_U8,
  UNET_PIXEL_U16,
  UNET_PIXEL_F32,
  UNET_PIXEL_RGB8,              /* 3 channels, 8-bit, interleaved */
  UNET_PIXEL_RGBA8,             /* RGB8 with a 4th byte per pixel, not used */
} UnetPixelFormat;

/* Default when a model carries none: percentile 1 .. 99.8. */
void     unet_normalization_init_default (UnetNormalization *norm);
gchar   *unet_normalization_to_json     (const UnetNormalization *norm);
gboolean unet_normalization_from_json   (const gchar *json, UnetNormalization *norm, GError **error);
/* Raw frame (width x height, `stride` bytes per row) -> float (H,W), dense. */
gboolean unet_normalize_frame           (const UnetNormalization *norm,
                                         UnetPixelFormat format, gconstpointer data,
                                         gint width, gint height, gsize stride,
                                         gfloat *out, GError **error);

/* Where the samples of a multi-channel frame are: sample c of pixel (x, y) is at
 * byte y * stride + x * pixel_step + c * channel_step. Gray: {1, bpp, 0};
 * interleaved RGB 8-bit: {3, 3, 1}; RGBA (alpha not used): {3, 4, 1}; C planes of
 * plane_bytes each: {C, bpp, plane_bytes}. */
typedef struct
{
  gint channels;
  gsize pixel_step;
  gsize channel_step;
} UnetChannelLayout;

/* Bytes per pixel of `format` (0 for an unknown format). */
gsize    unet_pixel_format_bytes        (UnetPixelFormat format);
/* The sample format (U8/U16/F32) and channel layout of a pixel format: gray
 * formats {1, bpp, 0}, RGB8 {3, 3, 1}, RGBA8 {3, 4, 1}. */
gboolean unet_pixel_format_channels     (UnetPixelFormat format,
                                         UnetPixelFormat *sample,
                                         UnetChannelLayout *layout);
/* Raw multi-channel frame -> float (C,H,W), dense; each channel is normalised on
 * its own (a percentile or frame-mean-std mode takes each channel's statistics). */
gboolean unet_normalize_channels        (const UnetNormalization *norm,
                                         UnetPixelFormat format, gconstpointer data,
                                         gint width, gint height, gsize stride,
                                         const UnetChannelLayout *layout,
                                         gfloat *out, GError **error);

/* ------------------------------------------------------------------ model -- */

/* A model: config, every parameter tensor of the naming contract (DESIGN.md,
 * PyTorch layouts, float32 in host memory) and the string metadata. */
typedef struct _UnetModel UnetModel;

/* New model with every parameter zero (batch-norm running_var and weight one). */
UnetModel   *unet_model_new             (const UnetConfig *cfg, GError **error);
UnetModel   *unet_model_copy            (const UnetModel *model, GError **error);
void         unet_model_free            (UnetModel *model);
/* The paper's initialisation: Gaussian, std sqrt(2/N), N = incoming connections;
 * biases zero. Reproducible for a seed. */
void         unet_model_init_weights    (UnetModel *model, guint64 seed);

/* safetensors load/save. Loading validates strictly (header length, JSON, dtypes
 * F32/F16/BF16, offsets in range and not overlapping, every contract tensor present
 * with the shape the config implies) and never crashes on any byte sequence.
 * Saving writes a temporary file in the same directory, fsyncs it and renames it. */
UnetModel   *unet_model_load            (const gchar *path, GError **error);
UnetModel   *unet_model_load_from_data  (const guint8 *data, gsize size, GError **error);
gboolean     unet_model_save            (const UnetModel *model, const gchar *path,
                                         GError **error);

const UnetConfig *unet_model_get_config (const UnetModel *model);
guint        unet_model_get_n_tensors   (const UnetModel *model);
const gchar *unet_model_get_tensor_name (const UnetModel *model, guint index);
/* The named tensor's data (dense, PyTorch layout) or NULL. `shape` (may be NULL)
 * receives up to 4 dimensions, `n_dims` (may be NULL) their count. */
gfloat      *unet_model_get_tensor      (UnetModel *model, const gchar *name,
                                         gint shape[4], gint *n_dims);
const gfloat *unet_model_peek_tensor    (const UnetModel *model, const gchar *name,
                                         gint shape[4], gint *n_dims);
/* Metadata strings (`unet.config` is derived from the config and always present). */
const gchar *unet_model_get_metadata    (const UnetModel *model, const gchar *key);
void         unet_model_set_metadata    (UnetModel *model, const gchar *key,
                                         const gchar *value);
/* The model's `unet.normalization`, or the default when it has none. */
void         unet_model_get_normalization (const UnetModel *model, UnetNormalization *norm);

/* ------------------------------------------------------------ inference -- */

typedef enum
{
  UNET_DEVICE_AUTO,             /* CUDA when a usable GPU exists, else CPU */
  UNET_DEVICE_CPU,
  UNET_DEVICE_CUDA,
} UnetDevice;

typedef enum
{
  UNET_PRECISION_FP32,
  UNET_PRECISION_TF32,
  UNET_PRECISION_BF16,
  UNET_PRECISION_FP16,
} UnetPrecision;

typedef struct
{
  UnetDevice device;
  gint gpu_id;
  gint threads;                 /* CPU threads; 0 = $UNET_NUM_THREADS or all cores */
  UnetPrecision precision;
} UnetNetOptions;

void         unet_net_options_init      (UnetNetOptions *opts);
const gchar *unet_device_name           (UnetDevice device);
/* NULL when `precision` runs at full speed on this machine's CPU; otherwise a
 * sentence (g_free it) saying that it is slower than fp32 here and why, e.g. bf16
 * on a CPU without AMX. For a warning before a CPU net is built. */
gchar       *unet_cpu_precision_slower  (UnetPrecision precision);

/* A model instantiated on a backend for inference. Primitives are created once per
 * input shape and reused; the model is copied, so it may be freed afterwards. */
typedef struct _UnetNet UnetNet;

UnetNet     *unet_net_new               (const UnetModel *model, const UnetNetOptions *opts,
                                         GError **error);
void         unet_net_free              (UnetNet *net);
UnetDevice   unet_net_get_device        (const UnetNet *net);
const UnetConfig *unet_net_get_config   (const UnetNet *net);

/* input (B, in_channels, height, width), normalised, height and width legal;
 * output (B, classes, out_h, out_w): softmax probabilities over classes, or the
 * sigmoid foreground probability when classes == 1. */
gboolean     unet_net_forward           (UnetNet *net, const gfloat *input,
                                         gint batch, gint height, gint width,
                                         gfloat *output, GError **error);

/* ------------------------------------------------------- training (net) -- */
/* Training on a UnetNet: the network's training graph (engine/graph.c) run on the
 * net's backend, forward in training mode and backward, with the parameters and
 * gradients on the backend. The parameter and gradient slabs use the model's
 * canonical tensor order (see engine/model-private.h), so optimisers work on flat
 * arrays.
 *
 * One step on the backend (what the trainer does; training.h):
 *            unet_net_train_forward (logits NULL) -> unet_net_train_loss ->
 *            unet_net_zero_gradients -> unet_net_train_backward (NULL) ->
 *            unet_net_optimizer_step.
 * Or with host arrays (tests, gradient checks): unet_net_train_forward -> host
 *            loss and dL/dlogits -> unet_net_train_backward (gradients
 *            *accumulate*; zero them first) -> an optimiser on
 *            unet_net_get_parameters() -> unet_net_parameters_changed. */

/* Forward in training mode: batch norm uses batch statistics (and updates the running
 * statistics with momentum 0.1), dropout is active with a mask drawn from `seed`,
 * activations are kept for the backward pass. input (B, in_channels, H, W);
 * logits (B, classes, out_h, out_w) — raw scores, before softmax/sigmoid — or NULL
 * to leave them on the backend (unet_net_train_loss, training.h). */
gboolean     unet_net_train_forward     (UnetNet *net, const gfloat *input,
                                         gint batch, gint height, gint width,
                                         guint64 seed, gfloat *logits, GError **error);
/* grad_logits (B, classes, out_h, out_w) = dL/dlogits of the last train_forward, or
 * NULL: the one unet_net_train_loss left on the backend. */
gboolean     unet_net_train_backward    (UnetNet *net, const gfloat *grad_logits,
                                         GError **error);
gboolean     unet_net_zero_gradients    (UnetNet *net, GError **error);
/* Host views of the flat parameter / gradient slabs (n elements each), valid until
 * the next call on the net. On a backend whose slabs are host memory (the CPU)
 * these are the backend's own slabs, so no parameters are copied; on a GPU they
 * are host copies, read back for this call. NULL with `error` set on failure. */
gfloat      *unet_net_get_parameters    (UnetNet *net, gsize *n, GError **error);
const gfloat *unet_net_get_gradients    (UnetNet *net, gsize *n, GError **error);
/* After the parameters from unet_net_get_parameters were changed: re-upload /
 * re-fold them (lazily, at the next forward). */
gboolean     unet_net_parameters_changed (UnetNet *net, GError **error);
/* Copy the current parameters (incl. batch-norm running statistics) into `model`,
 * which must have the same config. */
gboolean     unet_net_export_model      (UnetNet *net, UnetModel *model, GError **error);

/* Removes the temporaries a model/checkpoint writer leaves when it is killed
 * before its rename (PATH.tmp-XXXXXX, regular files of exactly that pattern;
 * nothing else is touched); returns how many. For a writer to call when it starts:
 * no other writer may be writing PATH at the same time. */
guint        unet_model_remove_stale_temporaries (const gchar *path);

/* ---------------------------------------------------------------- trainer -- */
/* Pairs in -> optimiser steps, checkpoints, metrics (engine/trainer.c; the pairs
 * in dataset.c, the checkpoint files in checkpoint.c).
 *
 * A trainer owns a network on a backend, an optimiser, and a dataset of pairs
 * (training: normalised image, class map, precomputed weight map; validation: raw
 * image, class map, instance map). Validation and previews run the network
 * through the segmenter with unetsegment's default properties, so they are what
 * unetsegment outputs with the exported model. Pairs are
 * split on arrival into whole frames for training and for validation: pair number i
 * (counting every pair ever added, from 0) is held out when
 * floor((i + 1)·f) > floor(i·f) for f = validation_fraction, i.e. every 1/f-th
 * frame, evenly spread and independent of timing (pair 0 always trains). Both sets
 * are bounded: the training set by dataset_capacity, the validation set by
 * max (1, dataset_capacity * validation_fraction); when full, the OLDEST pair of
 * that set is dropped (a live stream keeps training on what it saw recently).
 *
 * Every random draw of step number t comes from a generator seeded with
 * (seed, t), so the only random state is the step counter: a checkpoint (model +
 * optimiser buffers + step, in the "unet.training" metadata) resumes a run exactly. */

typedef enum
{
  UNET_TRAIN_SGD,               /* momentum (0.99 in the paper), optional Nesterov */
  UNET_TRAIN_ADAM,
  UNET_TRAIN_ADAMW,             /* decoupled weight decay */
} UnetTrainOptimizer;

typedef enum
{
  UNET_TRAIN_SCHEDULE_CONSTANT,
  UNET_TRAIN_SCHEDULE_COSINE,   /* to 0 at `iterations` */
  UNET_TRAIN_SCHEDULE_POLY,     /* (1 - t/iterations)^0.9 */
} UnetTrainSchedule;

typedef enum
{
  UNET_TRAIN_MASK_BINARY,       /* non-zero = foreground; objects: 4-connected */
  UNET_TRAIN_MASK_INDEXED,      /* value = class index */
  UNET_TRAIN_MASK_INSTANCES,    /* value = object id, 0 = background */
} UnetTrainMaskMode;

typedef struct
{
  UnetConfig architecture;      /* used when no model is given */
  UnetNormalization normalization;  /* raw pixels -> network input; stored in the model */
  UnetTrainOptimizer optimizer;
  gdouble learning_rate;        /* 0 = the optimiser's default (see below) */
  gint64 warmup;                /* linear warm-up steps (0 = none), at most
                                 * iterations / 4 are used */
  gdouble momentum;             /* SGD momentum (Adam/AdamW: betas 0.9, 0.999) */
  gboolean nesterov;
  gdouble weight_decay;
  UnetTrainSchedule schedule;
  gint64 iterations;            /* length of the run (schedules decay over it) */
  gint batch_size;              /* samples per step (the paper: 1 large tile) */
  gint tile_size;               /* input edge; 0 = auto (see unet_trainer_new) */
  gboolean elastic;
  gint elastic_grid;            /* control points per side (3) */
  gdouble elastic_sigma;        /* px (10) */
  gdouble rotation;             /* max degrees, 0 = off, 180 = any angle */
  gboolean flip;
  gdouble intensity_jitter;     /* 0 = off; 1 = gamma 1.5, contrast 0.2, brightness 0.1 */
  gdouble border_weight;        /* w0 (10) */
  gdouble border_sigma;         /* px (5) */
  gboolean class_balance;
  UnetTrainMaskMode mask_mode;
  gint ignore_label;            /* mask value without loss; -1 = none */
  gdouble dice_weight;          /* weight of the soft-Dice loss term; 0 = off */
  gdouble validation_fraction;  /* [0, 1) */
  gint dataset_capacity;        /* training pairs held (>= 1) */
  guint64 seed;
  UnetNetOptions net;           /* device, threads */
} UnetTrainerOptions;

/* What the training guard saw (unet_trainer_step, unet_trainer_validate). */
typedef enum
{
  UNET_TRAIN_ALERT_NONE,
  /* The mean loss over the last window stayed within 2 % of the value a constant
   * uniform prediction has (ln max(K, 2)): the network outputs the same for every
   * pixel (dead ReLUs after too large steps, or an input without contrast). */
  UNET_TRAIN_ALERT_UNIFORM,
  /* A class that makes up >= 1 % of the labelled pixels was not predicted once in
   * the last window of training tiles: collapse to the other class(es). */
  UNET_TRAIN_ALERT_CLASS_NEVER_PREDICTED,
  /* Same on the held-out frames. */
  UNET_TRAIN_ALERT_VALIDATION_CLASS_NEVER_PREDICTED,
} UnetTrainAlert;

/* One step's figures. `dice` is the foreground Dice of the step's tiles. */
typedef struct
{
  gint64 iteration;             /* steps done, after this one */
  gdouble loss;
  gdouble dice;
  gdouble learning_rate;        /* used by this step */
  gdouble samples_per_second;   /* batch / wall time of this step */
  /* The step's batch was augmented on the net's device from samples kept there
   * (CUDA with the training set within its budget); FALSE: on the host, uploaded. */
  gboolean augment_on_device;
  /* Set on the step where the guard starts seeing a problem (once until it
   * clears); alert_message is owned by the trainer, valid until the next call. */
  UnetTrainAlert alert;
  const gchar *alert_message;
} UnetTrainStats;

/* Scores on the held-out frames (whole frames, segmented as unetsegment does). */
typedef struct
{
  guint frames;                 /* 0: no validation frames, the rest is -1 */
  gdouble pixel_error;          /* mean(prediction != label) over labelled pixels */
  gdouble rand_error;           /* adapted Rand error of the foreground objects
                                 * (ISBI 2012), mean over frames; -1 if none */
  gdouble dice;                 /* foreground (class != 0) Dice */
  UnetTrainAlert alert;         /* as in UnetTrainStats */
  const gchar *alert_message;
} UnetTrainValidation;

typedef struct _UnetTrainer UnetTrainer;

/* Adam at its default learning rate (learning_rate 0 = 1e-3), 200 warm-up steps,
 * cosine schedule (SGD with momentum 0.99 is the paper's optimiser: optimizer SGD,
 * learning_rate 0 = 1e-3), batch 1, auto tile, elastic 3 / 10 px, any rotation,
 * flips, intensity jitter 1, w0 10, sigma 5, class balance, binary masks, no
 * ignore label, no Dice term, no validation, capacity 1000, seed 0, architecture =
 * the classic net (the element's default is depth 4, 16 base filters),
 * normalisation = the default. */
void         unet_trainer_options_init  (UnetTrainerOptions *opts);

/* A trainer for `model` (fine-tuning; copied) or, when NULL, for a new model of
 * opts->architecture initialised as in the paper from opts->seed. Tile size 0
 * means: the legal input edge nearest 572 (never more), lowered for small frames to
 * the largest whose output fits the smallest frame added so far. */
UnetTrainer *unet_trainer_new           (const UnetTrainerOptions *opts,
                                         const UnetModel *model, GError **error);
/* Resumes from a checkpoint written by unet_trainer_save_checkpoint: model,
 * optimiser buffers, step counter and seed come from the file (optimiser kind and
 * architecture in `opts` are ignored in favour of the file's); the dataset does not
 * (add the same pairs again). */
UnetTrainer *unet_trainer_new_from_checkpoint (const UnetTrainerOptions *opts,
                                         const gchar *path, GError **error);
void         unet_trainer_free          (UnetTrainer *trainer);

const UnetConfig *unet_trainer_get_config (const UnetTrainer *trainer);
gint64       unet_trainer_get_iteration (const UnetTrainer *trainer);
/* Pairs held: training (return value) and validation (`n_validation`, may be NULL). */
guint        unet_trainer_get_n_pairs   (const UnetTrainer *trainer, guint *n_validation);

/* Adds one pair. image: raw pixels (normalised here), gray or RGB8/RGBA8 with as
 * many channels as the model's in_channels (an error naming both otherwise);
 * mask: U8 or U16 raw
 * labels interpreted by opts->mask_mode, same width and height. Invalid mask values
 * are an UNET_ERROR_INVALID_ARGUMENT naming the value and position. */
gboolean     unet_trainer_add_pair      (UnetTrainer *trainer,
                                         UnetPixelFormat image_format, gconstpointer image,
                                         gsize image_stride,
                                         UnetPixelFormat mask_format, gconstpointer mask,
                                         gsize mask_stride, gint width, gint height,
                                         GError **error);

/* One optimiser step on batch_size samples drawn from the training pairs. Needs at
 * least one training pair. */
gboolean     unet_trainer_step          (UnetTrainer *trainer, UnetTrainStats *stats,
                                         GError **error);
/* Scores of the validation pairs: whole frames segmented with the current weights
 * as unetsegment segments them with its default properties and the exported
 * model (automatic tile, batch 4, 1 GiB budget); v->frames = 0 when there are
 * none. */
gboolean     unet_trainer_validate      (UnetTrainer *trainer, UnetTrainValidation *v,
                                         GError **error);
/* The warm-up a run uses: min (warmup, iterations / 4). */
gint64       unet_trainer_warmup_steps  (const UnetTrainerOptions *opts);
/* The learning rate `learning_rate = 0` means for an optimiser. */
gdouble      unet_trainer_default_learning_rate (UnetTrainOptimizer optimizer);
/* Class-index labels (H,W) of a raw frame with the current weights: byte for byte
 * what unetsegment (default properties, same device) outputs with the model
 * unet_trainer_export_model returns now. */
gboolean     unet_trainer_predict       (UnetTrainer *trainer,
                                         UnetPixelFormat format, gconstpointer image,
                                         gsize stride, gint width, gint height,
                                         guint8 *labels, gsize labels_stride,
                                         GError **error);
/* The current model with "unet.normalization" and "unet.training" metadata. */
UnetModel   *unet_trainer_export_model  (UnetTrainer *trainer, GError **error);
/* Model + optimiser state ("optim.*" tensors) + "unet.training" JSON (step, seed,
 * options, last figures), written atomically (temporary file, fsync, rename). The
 * file loads in unet_model_load (which ignores optim.*). */
gboolean     unet_trainer_save_checkpoint (UnetTrainer *trainer, const gchar *path,
                                         GError **error);

G_DEFINE_AUTOPTR_CLEANUP_FUNC (UnetTrainer, unet_trainer_free)

/* -------------------------------------------------------------- segmenter -- */
/* Frames of any size in, full-size segmentation out: normalise -> plan overlap tiles
 * (engine/tiling.h) -> extract mirror-extended tiles -> batched forward -> stitch.
 * Valid-padded models: the result equals one forward pass over the whole
 * mirror-extended frame (to float rounding). Same-padded models: overlapping tiles
 * blended with a Gaussian window (sigma = tile/8).
 *
 * Frames are queued: unet_segmenter_push() runs a forward whenever `batch_size` tiles
 * are pending — tiles of consecutive frames share a batch when `batch_frames` is set
 * (a small frame needs one tile) — and unet_segmenter_pop() returns finished frames
 * in push order. unet_segmenter_flush() runs what is pending (end of stream, or after
 * every frame when latency matters). With batch_frames unset every push finishes its
 * frame. Not thread-safe: one thread drives a segmenter. */

/* Class-index labels are one byte: classes 0..255. */
#define UNET_MAX_LABEL_CLASSES 256

typedef enum
{
  UNET_SEGMENT_LABELS = 1 << 0,         /* guint8 (H,W) class index (K == 1: p >= 0.5);
                                         * models of more than UNET_MAX_LABEL_CLASSES
                                         * classes are refused */
  UNET_SEGMENT_PROBABILITY = 1 << 1,    /* gfloat (H,W) of probability_class */
  UNET_SEGMENT_PROBABILITIES = 1 << 2,  /* gfloat (K,H,W), every class */
  UNET_SEGMENT_INSTANCES = 1 << 3,      /* guint16 (H,W) connected components */
  UNET_SEGMENT_STATS = 1 << 4,          /* object count, areas (implies components) */
} UnetSegmentOutputs;

typedef struct
{
  UnetNetOptions net;
  gint tile_height, tile_width; /* network input tile edges; 0 = automatic */
  gint batch_size;              /* tiles per forward pass, >= 1 (default 1) */
  guint64 memory_budget;        /* bytes of activations of one batch, for the automatic
                                 * tile size; 0 = 1 GiB */
  gboolean batch_frames;        /* let tiles of consecutive frames share a batch */
  gboolean override_normalization;      /* use `normalization`, not the model's */
  UnetNormalization normalization;
  guint outputs;                /* UnetSegmentOutputs flags */
  gint probability_class;       /* for UNET_SEGMENT_PROBABILITY (default 1, or 0 when K == 1) */
  gint foreground_class;        /* for instances/stats (default 1, or 1 = "p >= 0.5" when K == 1) */
} UnetSegmenterOptions;

/* Per-frame figures. Instances are 4-connected components of the foreground class
 * (pixels sharing an edge), numbered 1.. in raster order of their first pixel;
 * numbers saturate at 65535 in the guint16 image (object_count stays exact). */
typedef struct
{
  guint64 frame_number;         /* 0-based push counter */
  gint width, height;
  gint n_tiles, tile_height, tile_width;        /* tiles and their input edges */
  guint object_count;
  gdouble foreground_fraction;  /* foreground pixels / all pixels */
  gdouble mean_object_area;     /* pixels; 0 when there is no object */
  /* Seconds. forward = this frame's share of its batches' forward passes. */
  gdouble time_normalize, time_extract, time_forward, time_stitch, time_post;
  gdouble time_total;           /* push to finished, excluding waits for other frames */
  guint64 activation_bytes;     /* float32 activations of one batch of these tiles
                                 * (unet_tile_activation_bytes x batch_size) */
  gboolean over_budget;         /* automatic tile size, but even the smallest legal
                                 * tile exceeds memory_budget: it is used anyway */
  gint batch_reduced;           /* > 0: a batch of tiles ran out of device memory
                                 * during this frame, and the segmenter now runs
                                 * this many tiles per batch (the frame's result is
                                 * complete) */
} UnetSegmentStats;

typedef struct
{
  gpointer user_data;           /* as given to unet_segmenter_push */
  gint width, height, classes;
  guint8 *labels;               /* (H,W) dense, or NULL when not asked for */
  gfloat *probability;          /* (H,W) of probability_class, or NULL */
  gfloat *probabilities;        /* (K,H,W), or NULL */
  guint32 *instances;           /* (H,W) ids 1.. (0 = background), or NULL */
  UnetSegmentStats stats;
} UnetSegmentResult;

typedef struct _UnetSegmenter UnetSegmenter;

void         unet_segmenter_options_init (UnetSegmenterOptions *opts);
/* Instantiates the net (the model is copied; it may be freed afterwards). */
UnetSegmenter *unet_segmenter_new       (const UnetModel *model,
                                         const UnetSegmenterOptions *opts, GError **error);
void         unet_segmenter_free        (UnetSegmenter *seg);
const UnetConfig *unet_segmenter_get_config (const UnetSegmenter *seg);
UnetDevice   unet_segmenter_get_device  (const UnetSegmenter *seg);
/* The normalisation in use (the override or the model's). */
void         unet_segmenter_get_normalization (const UnetSegmenter *seg,
                                         UnetNormalization *norm);

/* Queue a raw frame (width x height, `stride` bytes per row). The pixels are
 * normalised before this returns, so `data` may be reused at once. */
gboolean     unet_segmenter_push        (UnetSegmenter *seg, UnetPixelFormat format,
                                         gconstpointer data, gint width, gint height,
                                         gsize stride, gpointer user_data, GError **error);
/* The same for a frame of several channels (see UnetChannelLayout): their number
 * must be the model's in_channels (an error naming both otherwise; a gray frame
 * is never copied into the channels of a colour model). */
gboolean     unet_segmenter_push_channels (UnetSegmenter *seg, UnetPixelFormat format,
                                         gconstpointer data, gint width, gint height,
                                         gsize stride, const UnetChannelLayout *layout,
                                         gpointer user_data, GError **error);
/* Run every pending tile (a partial batch). */
gboolean     unet_segmenter_flush       (UnetSegmenter *seg, GError **error);
/* The oldest finished frame, or NULL. Free with unet_segment_result_free. */
UnetSegmentResult *unet_segmenter_pop   (UnetSegmenter *seg);
/* Frames pushed but not popped yet. */
guint        unet_segmenter_get_queued  (const UnetSegmenter *seg);
/* push + flush + pop: segment one frame synchronously (on a segmenter with no
 * frame queued; otherwise the oldest finished frame is returned). */
UnetSegmentResult *unet_segmenter_process (UnetSegmenter *seg, UnetPixelFormat format,
                                         gconstpointer data, gint width, gint height,
                                         gsize stride, GError **error);
void         unet_segment_result_free   (UnetSegmentResult *result);

/* Connected components (4-connectivity) of `mask` (pixels equal to `value`):
 * instances (H,W) numbered 1.. in raster order (0 = background; a frame has fewer
 * than 2^32 pixels, so ids never saturate), may be NULL; returns the number of
 * components (= the largest id), `*area` the foreground pixel count. */
guint        unet_label_components      (const guint8 *mask, guint8 value,
                                         gint width, gint height,
                                         guint32 *instances, guint64 *area);

G_DEFINE_AUTOPTR_CLEANUP_FUNC (UnetModel, unet_model_free)
G_DEFINE_AUTOPTR_CLEANUP_FUNC (UnetNet, unet_net_free)
G_DEFINE_AUTOPTR_CLEANUP_FUNC (UnetSegmenter, unet_segmenter_free)
G_DEFINE_AUTOPTR_CLEANUP_FUNC (UnetSegmentResult, unet_segment_result_free)

G_END_DECLS
