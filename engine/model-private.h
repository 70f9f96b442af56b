/* gst-unet engine — internal view of a UnetModel for backends and the trainer.
 *
 * A model's parameters live in ONE float32 slab. Each named tensor of the naming
 * contract is a slice of it at a fixed offset; offsets are aligned to
 * UNET_TENSOR_ALIGN floats (64 bytes) so every tensor starts on a cache line.
 * The layout (names, shapes, offsets, slab size) depends only on the config, so
 * gradient and optimiser slabs of the same size share it: the gradient of tensor t
 * is `grad_slab + t->offset`.
 *
 * Canonical order (also the save order):
 *   enc.0 .. enc.{D-1}, bottom, dec.{D-1} .. dec.0, head
 * within a block: [up.weight, up.bias,] conv1.weight, conv1.bias,
 *   [bn1.weight, bn1.bias, bn1.running_mean, bn1.running_var,]
 *   conv2.weight, conv2.bias, [bn2.*]
 */
#pragma once

#include "unet.h"
#include "safetensors.h"

G_BEGIN_DECLS

#define UNET_TENSOR_ALIGN 16    /* floats: 64 bytes */

typedef enum
{
  UNET_TENSOR_CONV_WEIGHT,      /* [cout, cin, 3, 3] (head: [K, F_0, 1, 1]) */
  UNET_TENSOR_CONV_BIAS,        /* [cout] */
  UNET_TENSOR_UP_WEIGHT,        /* ConvTranspose2d [cin, cout, 2, 2] */
  UNET_TENSOR_UP_BIAS,          /* [cout] */
  UNET_TENSOR_BN_WEIGHT,        /* [F] gamma */
  UNET_TENSOR_BN_BIAS,          /* [F] beta */
  UNET_TENSOR_BN_MEAN,          /* [F] running_mean (not trainable) */
  UNET_TENSOR_BN_VAR,           /* [F] running_var (not trainable) */
} UnetTensorKind;

typedef struct
{
  const gchar *name;            /* contract name, e.g. "enc.0.conv1.weight" */
  UnetTensorKind kind;
  gboolean trainable;           /* FALSE for BN running statistics */
  gint n_dims;                  /* 1 or 4 */
  gint shape[4];                /* unused trailing entries are 1 */
  gsize numel;
  gsize offset;                 /* in floats from the start of the slab */
  gint fan_in;                  /* incoming connections of one output neuron */
} UnetTensorInfo;

/* Layout of the parameter slab for a (valid) config. Immutable, shared by every
 * model with an equal config is NOT guaranteed; each model owns its own. */
typedef struct
{
  guint n_tensors;
  UnetTensorInfo *tensors;      /* canonical order */
  gsize slab_numel;             /* floats, including alignment padding */
} UnetLayout;

/* Builds the layout for `cfg` (validated first). Free with unet_layout_free. */
UnetLayout  *unet_layout_new            (const UnetConfig *cfg, GError **error);
void         unet_layout_free           (UnetLayout *layout);
/* Index of `name` in the layout, or -1. */
gint         unet_layout_find           (const UnetLayout *layout, const gchar *name);

/* The model's layout (owned by the model). */
const UnetLayout *unet_model_get_layout (const UnetModel *model);
/* The parameter slab: layout->slab_numel floats, 64-byte aligned; padding is zero. */
gfloat      *unet_model_get_slab        (UnetModel *model);
const gfloat *unet_model_peek_slab      (const UnetModel *model);
/* Data of tensor `index` (canonical order), i.e. slab + tensors[index].offset. */
gfloat      *unet_model_tensor_data     (UnetModel *model, guint index);

/* The metadata table (gchar * -> gchar *, owned by the model). */
GHashTable  *unet_model_get_metadata_table (const UnetModel *model);

/* Slab allocation helpers for the trainer's gradient/optimiser slabs (same layout).
 * Zero-filled, 64-byte aligned; NULL + UNET_ERROR_OUT_OF_MEMORY when it fails. */
gfloat      *unet_slab_alloc0           (gsize numel, GError **error);
/* Every one of n floats is finite (one pass, no branch per element). */
gboolean     unet_slab_all_finite       (const gfloat *v, gsize n);
void         unet_slab_free             (gfloat *slab);

/* Builds a model from an already parsed safetensors file (the trainer uses this to
 * read a checkpoint's model part and then its optim.* tensors from the same file). */
UnetModel   *unet_model_load_from_safetensors (const UnetSafetensors *st, GError **error);

/* Saves the model plus `n_extra` additional F32 tensors (names must not collide
 * with the contract; checkpoints use "optim.*") and extra metadata (may be NULL;
 * string -> string, overriding the model's entries except "unet.config"). */
gboolean     unet_model_save_with_extra (const UnetModel *model, const gchar *path,
                                         const UnetStTensorData *extra, guint n_extra,
                                         GHashTable *extra_metadata, GError **error);
/* The same into memory (tests, fuzz seeds). */
GBytes      *unet_model_serialize       (const UnetModel *model, GError **error);

G_DEFINE_AUTOPTR_CLEANUP_FUNC (UnetLayout, unet_layout_free)

G_END_DECLS
