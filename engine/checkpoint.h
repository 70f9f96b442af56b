/* gst-unet engine — training checkpoints (internal).
 *
 * A checkpoint is a model file (unet_model_load reads it) plus the optimiser
 * buffers as "optim.*" F32 tensors of the parameter slab's length, and an
 * "unet.training" metadata JSON: the step, the seed (a decimal string: JSON
 * numbers lose 64-bit integers in many readers), the optimiser and every other
 * option, the pairs seen and the last figures. Step + seed are the whole random
 * state of a run (see trainer.c), so model + buffers + JSON resume it exactly.
 *
 * Nothing non-finite is written (a diverged run never replaces a good file) or
 * resumed from. Files are written atomically (temporary name, fsync, rename).
 */
#pragma once

#include "safetensors.h"
#include "training.h"
#include "unet.h"

G_BEGIN_DECLS

/* What "unet.training" records besides the options. */
typedef struct
{
  gint64 iteration;
  gdouble learning_rate;        /* the base rate in effect (0 resolved) */
  gint64 warmup;                /* the warm-up in effect */
  gint tile_size;               /* the training tile in use, else the option */
  guint64 pairs_seen;
  const UnetTrainStats *last;   /* the last step's figures (iteration > 0) */
  const UnetTrainValidation *validation;        /* the last, or NULL / frames 0 */
} UnetCheckpointState;

/* The "unet.training" JSON text (g_free it). */
gchar    *unet_checkpoint_training_json (const UnetTrainerOptions *opts,
                                         const UnetCheckpointState *state);


/* Checks that the parameters (n_params) and every optimiser buffer are finite;
 * otherwise an UNET_ERROR_FAILED saying that `path` is kept as it is. */
gboolean  unet_checkpoint_check_finite  (const gfloat *params, gsize n_params,
                                         UnetOptimizer *optim, gint64 iteration,
                                         const gchar *path, GError **error);

/* Writes `model` (its metadata, "unet.training" included, as set) and the
 * optimiser's buffers (n_params floats each) to `path`, atomically. */
gboolean  unet_checkpoint_write         (const UnetModel *model, UnetOptimizer *optim,
                                         gsize n_params, const gchar *path,
                                         GError **error);

/* A checkpoint file, read and checked. */
typedef struct
{
  gchar *path;
  UnetSafetensors *file;
  UnetModel *model;
  gint64 iteration;
  guint64 seed;
  UnetTrainOptimizer optimizer;
  gboolean has_normalization;   /* the model carries "unet.normalization" */
  UnetNormalization normalization;
} UnetCheckpoint;

/* Reads `path`: the model and the "unet.training" step, seed and optimiser
 * (UNET_ERROR_MODEL naming the file when they are missing or of the wrong type).
 * Free with unet_checkpoint_clear, also after a failure. */
gboolean  unet_checkpoint_open          (const gchar *path, UnetCheckpoint *ck,
                                         GError **error);
void      unet_checkpoint_clear         (UnetCheckpoint *ck);

/* Restores the optimiser buffers (when the step is > 0) into `optim`, which
 * has n_params floats each, and checks them and `params` (the weights the trainer
 * loaded from ck->model) for non-finite values. */
gboolean  unet_checkpoint_restore       (const UnetCheckpoint *ck, UnetOptimizer *optim,
                                         const gfloat *params, gsize n_params,
                                         GError **error);

G_END_DECLS
