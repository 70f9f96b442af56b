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
typedef struct
{
  gint in_channels;             /* 1 or 3 */
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

/* ------------------------------------------------------------------ model -- */

/* A model: config, every parameter tensor of the naming contract (DESIGN.md,
 * PyTorch layouts, float32 in host memory) and the string metadata. */
typedef struct _UnetModel UnetModel;

/* New model with every parameter zero (batch-norm running_var and weight one). */
UnetModel   *unet_model_new             (const UnetConfig *cfg, GError **error);
UnetModel   *unet_model_copy            (const UnetModel *model);
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
/* Training on a UnetNet (implemented with the backend's backward passes). The
 * parameter and gradient slabs use the model's canonical tensor order (see
 * engine/model-private.h), so host-side optimisers work on flat arrays.
 *
 * One step:  unet_net_train_forward -> host loss and dL/dlogits ->
 *            unet_net_train_backward (gradients *accumulate*; zero them first) ->
 *            optimiser on unet_net_get_parameters() -> unet_net_parameters_changed. */

/* Forward in training mode: batch norm uses batch statistics (and updates the running
 * statistics with momentum 0.1), dropout is active with a mask drawn from `seed`,
 * activations are kept for the backward pass. input (B, in_channels, H, W);
 * logits (B, classes, out_h, out_w) — raw scores, before softmax/sigmoid. */
gboolean     unet_net_train_forward     (UnetNet *net, const gfloat *input,
                                         gint batch, gint height, gint width,
                                         guint64 seed, gfloat *logits, GError **error);
/* grad_logits (B, classes, out_h, out_w) = dL/dlogits of the last train_forward. */
gboolean     unet_net_train_backward    (UnetNet *net, const gfloat *grad_logits,
                                         GError **error);
void         unet_net_zero_gradients    (UnetNet *net);
/* Host views of the flat parameter / gradient slabs (n elements each). */
gfloat      *unet_net_get_parameters    (UnetNet *net, gsize *n);
const gfloat *unet_net_get_gradients    (UnetNet *net, gsize *n);
/* After the parameters were changed on the host: re-upload / re-fold them. */
gboolean     unet_net_parameters_changed (UnetNet *net, GError **error);
/* Copy the current parameters (incl. batch-norm running statistics) into `model`,
 * which must have the same config. */
gboolean     unet_net_export_model      (UnetNet *net, UnetModel *model, GError **error);

G_DEFINE_AUTOPTR_CLEANUP_FUNC (UnetModel, unet_model_free)
G_DEFINE_AUTOPTR_CLEANUP_FUNC (UnetNet, unet_net_free)

G_END_DECLS
