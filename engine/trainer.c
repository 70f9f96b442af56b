/* gst-unet engine — the trainer: the step loop, its learning-rate schedule and
 * the guard that watches it.
 *
 * Owns one UnetNet in training mode, one UnetOptimizer over the net's flat
 * parameter slab (trainable tensors only: batch-norm running statistics and the
 * alignment padding are left to the forward pass), and two FIFO sets of pairs
 * (training, validation) built by dataset.c. Validation and previews run the net
 * through a segmenter borrowing it (segmenter-private.h), so they are what
 * unetsegment outputs with the exported model; checkpoint.c writes and reads the
 * checkpoints.
 *
 * Augmentation: per step the host makes every draw (augment.c's unet_augment_draw,
 * pair choice first, in one fixed order). Where the net's backend keeps training
 * samples (CUDA), each training pair is uploaded once when it is added
 * (unet_net_train_sample_add, removed when the pair leaves the set) and the batch is
 * augmented there from the draws (unet_net_train_forward_samples): per step only the
 * draws go up and the loss scalars and flags come back. The samples get a share of
 * the device's memory (the backend's budget); a set that outgrows it sends the
 * trainer back to the host path for good, said once (g_info, and the steps'
 * augment_on_device). Elsewhere (CPU) the host augments each batch
 * (unet_augment_sample) into step buffers the net uploads. Both paths see the same
 * draws.
 *
 * Determinism: step t draws everything (which pairs, tile positions, elastic
 * fields, rotations, flips, gray-value changes, the dropout mask) from generators
 * seeded with hash(seed, t). The whole random state of a run is therefore (seed,
 * step), which is what a checkpoint stores besides the weights and the optimiser
 * buffers; resuming from it on the same pairs reproduces the losses bit for bit
 * on the CPU with the same thread count (oneDNN's backward-weights kernels split
 * their sums by the thread count they are configured for).
 */
#include "unet.h"
#include "checkpoint.h"
#include "dataset.h"
#include "model-private.h"
#include "segmenter-private.h"
#include "training.h"

#include <math.h>
#include <string.h>

#define MAX_BATCH 256
/* The paper's tile: the largest automatic input edge. */
#define AUTO_TILE_CAP 572
/* learning_rate = 0: per optimiser, for the loss as we define it (the weighted
 * MEAN over the tile's pixels, see unet_loss_cross_entropy). Adam's step size does
 * not depend on the loss scale. SGD with momentum 0.99 moves 1/(1 - 0.99) = 100
 * gradients per step at steady state. */
#define DEFAULT_ADAM_LR 1e-3
#define DEFAULT_SGD_LR 1e-3

/* A stored pair (dataset.h); the step samples training pairs. */
typedef UnetPair Pair;

/* Validation and preview segment frames as unetsegment does with its default
 * properties (elements/unet/gstunetsegment.c: tile-size 0 = the automatic tile
 * for a 1 GiB activation budget, batch-size 4, tiles of consecutive frames
 * batched), so held-out scores and previews are what the exported model gives
 * there. Not the training tile: that one is sized for the smallest training frame
 * and a batch of backward passes, and would make the figures depend on it. */
#define SEGMENT_BATCH_SIZE 4

/* The guard's window: steps over which training-tile predictions and losses are
 * pooled before they are judged. */
#define GUARD_WINDOW 100
/* Share of the labelled pixels a class needs for "never predicted" to count. */
#define GUARD_MIN_CLASS_SHARE 0.01
/* Relative distance of the window's mean loss from the uniform-prediction loss. */
#define GUARD_UNIFORM_TOLERANCE 0.02

struct _UnetTrainer
{
  UnetTrainerOptions opts;
  UnetConfig cfg;
  UnetModel *model;             /* metadata holder; parameters synced on export */
  UnetNet *net;
  UnetOptimizer *optim;
  gfloat *params;               /* net's slab (n floats) */
  gsize n_params;

  GQueue train;                 /* Pair*, oldest first */
  GQueue val;
  guint val_capacity;
  guint64 n_added;
  gint min_edge;                /* smallest frame edge seen, 0 = none yet */

  gint64 iteration;

  /* Step buffers, for tile_in x tile_in inputs (reallocated when it changes). */
  gint tile_in, tile_out;
  gfloat *in;                   /* (B,C,Ti,Ti) */
  gint32 *labels;               /* (B,To,To) */
  gfloat *weights;              /* (B,To,To) */

  UnetAugmentParams aug;
  gboolean device_aug;          /* training pairs live on the net's backend */
  UnetAugmentDraw *draws;       /* (B) the step's draws (device path) */
  UnetNetSample **batch;        /* (B) the step's samples (device path) */
  UnetPairOptions pair_opts;
  UnetSegmenter *seg;           /* on `net`, made at the first validation/preview */

  UnetTrainStats last;
  UnetTrainValidation last_val;

  /* guard */
  UnetSegScores window;         /* training-tile predictions of the window */
  gdouble window_loss;          /* sum of the window's losses */
  gint window_steps;
  guint alerts_active;          /* bit per UnetTrainAlert */
  gchar *alert_message;
};

/* ------------------------------------------------------------ helpers -- */

static guint64
mix64 (guint64 a, guint64 b)
{
  guint64 x = a ^ (b * G_GUINT64_CONSTANT (0x9e3779b97f4a7c15));
  return unet_rng_splitmix64 (&x);
}

/* Stream ids keep the generators of one step independent of each other. */
enum
{
  STREAM_SAMPLE = 1,
  STREAM_DROPOUT = 2,
};

static guint64
step_seed (guint64 seed, gint64 step, guint64 stream)
{
  return mix64 (mix64 (seed, stream), (guint64) step);
}

/* A GFunc over training pairs: their copy on the net's backend goes. */
static void
remove_device_sample (gpointer pair, gpointer trainer)
{
  UnetPair *p = pair;
  UnetTrainer *t = trainer;
  unet_net_train_sample_remove (t->net, g_steal_pointer (&p->device));
}

/* The pair's copy on the net's backend, while the trainer augments there. A set
 * past the backend's budget (out of memory) sends the trainer to the host path for
 * good: every copy goes, and it says so once. Other errors fail. */
static gboolean
upload_pair (UnetTrainer *t, UnetPair *p, GError **error)
{
  GError *local = NULL;
  if (!t->device_aug)
    return TRUE;
  p->device = unet_net_train_sample_add (t->net, p->image, p->classes, p->weights,
      p->width, p->height, &local);
  if (p->device != NULL)
    return TRUE;
  if (!g_error_matches (local, UNET_ERROR, UNET_ERROR_OUT_OF_MEMORY)) {
    g_propagate_error (error, local);
    return FALSE;
  }
  g_info ("training: %s; augmenting on the host from now on (each batch uploaded)",
      local->message);
  g_error_free (local);
  g_queue_foreach (&t->train, remove_device_sample, t);
  t->device_aug = FALSE;
  return TRUE;
}

static void
free_step_buffers (UnetTrainer *t)
{
  g_clear_pointer (&t->in, g_free);
  g_clear_pointer (&t->labels, g_free);
  g_clear_pointer (&t->weights, g_free);
  t->tile_in = t->tile_out = 0;
}

void
unet_trainer_options_init (UnetTrainerOptions *opts)
{
  memset (opts, 0, sizeof (*opts));
  unet_config_init_classic (&opts->architecture);
  unet_normalization_init_default (&opts->normalization);
  opts->optimizer = UNET_TRAIN_ADAM;
  opts->learning_rate = 0.0;
  opts->warmup = 200;
  opts->momentum = 0.99;
  opts->nesterov = FALSE;
  opts->weight_decay = 0.0;
  opts->schedule = UNET_TRAIN_SCHEDULE_CONSTANT;
  opts->iterations = 1000;
  opts->batch_size = 1;
  opts->tile_size = 0;
  opts->elastic = TRUE;
  opts->elastic_grid = 3;
  opts->elastic_sigma = 10.0;
  opts->rotation = 180.0;
  opts->flip = TRUE;
  opts->intensity_jitter = 1.0;
  opts->border_weight = 10.0;
  opts->border_sigma = 5.0;
  opts->class_balance = TRUE;
  opts->mask_mode = UNET_TRAIN_MASK_BINARY;
  opts->ignore_label = -1;
  opts->dice_weight = 0.0;
  opts->validation_fraction = 0.0;
  opts->dataset_capacity = 1000;
  opts->seed = 0;
  unet_net_options_init (&opts->net);
}

static gboolean
validate_options (const UnetTrainerOptions *o, GError **error)
{
#define BAD(...) G_STMT_START { \
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT, __VA_ARGS__); \
    return FALSE; } G_STMT_END
  if (!(o->learning_rate >= 0.0 && o->learning_rate < 1e3))
    BAD ("learning rate %g must be 0 (the optimiser's default) or in (0, 1000)",
        o->learning_rate);
  if (o->warmup < 0)
    BAD ("warm-up of %" G_GINT64_FORMAT " steps must be >= 0", o->warmup);
  if (!(o->momentum >= 0.0 && o->momentum < 1.0))
    BAD ("momentum %g must be in [0, 1)", o->momentum);
  if (o->nesterov && !(o->momentum > 0.0))
    BAD ("Nesterov momentum needs momentum > 0");
  if (!(o->weight_decay >= 0.0 && o->weight_decay < 1.0))
    BAD ("weight decay %g must be in [0, 1)", o->weight_decay);
  if (o->iterations < 1)
    BAD ("iterations %" G_GINT64_FORMAT " must be >= 1", o->iterations);
  if (o->batch_size < 1 || o->batch_size > MAX_BATCH)
    BAD ("batch size %d must be in 1..%d", o->batch_size, MAX_BATCH);
  if (o->tile_size < 0 || o->tile_size > 8192)
    BAD ("tile size %d must be 0 (auto) or a size up to 8192", o->tile_size);
  if (o->elastic && (o->elastic_grid < 2 || o->elastic_grid > 64))
    BAD ("elastic grid %d must be in 2..64", o->elastic_grid);
  if (!(o->elastic_sigma >= 0.0 && o->elastic_sigma <= 1000.0))
    BAD ("elastic sigma %g must be in [0, 1000]", o->elastic_sigma);
  if (!(o->rotation >= 0.0 && o->rotation <= 180.0))
    BAD ("rotation %g must be in [0, 180] degrees", o->rotation);
  if (!(o->intensity_jitter >= 0.0 && o->intensity_jitter <= 4.0))
    BAD ("intensity jitter %g must be in [0, 4]", o->intensity_jitter);
  if (!(o->border_weight >= 0.0 && o->border_weight <= 1e4))
    BAD ("border weight %g must be in [0, 10000]", o->border_weight);
  if (!(o->border_sigma > 0.0 && o->border_sigma <= 1000.0))
    BAD ("border sigma %g must be in (0, 1000]", o->border_sigma);
  if (o->ignore_label < -1 || o->ignore_label > 65535)
    BAD ("ignore label %d must be -1 (none) or 0..65535", o->ignore_label);
  if (!(o->dice_weight >= 0.0 && o->dice_weight <= 100.0))
    BAD ("Dice loss weight %g must be in [0, 100]", o->dice_weight);
  if (!(o->validation_fraction >= 0.0 && o->validation_fraction < 1.0))
    BAD ("validation fraction %g must be in [0, 1)", o->validation_fraction);
  if (o->dataset_capacity < 1)
    BAD ("dataset capacity %d must be >= 1", o->dataset_capacity);
#undef BAD
  return TRUE;
}

static void
setup_params (UnetTrainer *t)
{
  const UnetTrainerOptions *o = &t->opts;

  unet_augment_params_init (&t->aug);
  t->aug.random_position = TRUE;
  t->aug.elastic = o->elastic && o->elastic_sigma > 0.0;
  t->aug.elastic_grid = o->elastic_grid;
  t->aug.elastic_sigma = o->elastic_sigma;
  t->aug.rotate = o->rotation > 0.0;
  t->aug.max_rotation = o->rotation;
  t->aug.flip = o->flip;
  t->aug.intensity = o->intensity_jitter > 0.0;
  /* jitter 1 = the paper-like defaults of unet_augment_params_init, scaled. */
  t->aug.gamma = 1.0 + 0.5 * o->intensity_jitter;
  t->aug.contrast = MIN (0.2 * o->intensity_jitter, 0.9);
  t->aug.brightness = 0.1 * o->intensity_jitter;
  t->aug.image_interp = UNET_INTERP_BICUBIC;

  UnetPairOptions *po = &t->pair_opts;
  po->in_channels = t->cfg.in_channels;
  po->classes = t->cfg.classes;
  po->normalization = o->normalization;
  switch (o->mask_mode) {
    case UNET_TRAIN_MASK_BINARY:
      po->mask_mode = UNET_MASK_BINARY;
      break;
    case UNET_TRAIN_MASK_INDEXED:
      po->mask_mode = UNET_MASK_INDEXED;
      break;
    case UNET_TRAIN_MASK_INSTANCES:
      po->mask_mode = UNET_MASK_INSTANCES;
      break;
  }
  po->ignore_label = o->ignore_label;
  unet_weight_map_params_init (&po->weight_map);
  po->weight_map.class_balance = o->class_balance;
  po->weight_map.border_weight = o->border_weight;
  po->weight_map.border_sigma = o->border_sigma;
}

static UnetOptimizer *
make_optimizer (const UnetTrainer *t, const UnetLayout *layout, GError **error)
{
  const UnetTrainerOptions *o = &t->opts;
  UnetOptimParams p;
  unet_optim_params_init (&p);
  switch (o->optimizer) {
    case UNET_TRAIN_SGD:
      p.kind = UNET_OPTIM_SGD;
      break;
    case UNET_TRAIN_ADAM:
      p.kind = UNET_OPTIM_ADAM;
      break;
    case UNET_TRAIN_ADAMW:
      p.kind = UNET_OPTIM_ADAMW;
      break;
  }
  p.lr = o->learning_rate > 0.0 ? o->learning_rate
      : unet_trainer_default_learning_rate (o->optimizer);
  p.warmup_steps = unet_trainer_warmup_steps (o);
  p.momentum = o->momentum;
  p.nesterov = o->nesterov;
  p.weight_decay = o->weight_decay;
  switch (o->schedule) {
    case UNET_TRAIN_SCHEDULE_CONSTANT:
      p.schedule = UNET_LR_CONSTANT;
      break;
    case UNET_TRAIN_SCHEDULE_COSINE:
      p.schedule = UNET_LR_COSINE;
      break;
    case UNET_TRAIN_SCHEDULE_POLY:
      p.schedule = UNET_LR_POLY;
      break;
  }
  p.total_steps = o->iterations;

  /* PyTorch semantics: every trainable tensor (biases too) gets weight decay. */
  g_autofree UnetOptimRange *ranges = g_new0 (UnetOptimRange, layout->n_tensors);
  guint n = 0;
  for (guint i = 0; i < layout->n_tensors; i++) {
    const UnetTensorInfo *ti = &layout->tensors[i];
    if (!ti->trainable)
      continue;
    ranges[n].offset = ti->offset;
    ranges[n].numel = ti->numel;
    ranges[n].decay = TRUE;
    n++;
  }
  return unet_optimizer_new (&p, layout->slab_numel, ranges, n, error);
}

/* Creates net + optimiser for t->model; t->opts and t->cfg are set. */
static gboolean
trainer_setup (UnetTrainer *t, GError **error)
{
  t->cfg = *unet_model_get_config (t->model);
  setup_params (t);
  g_autofree gchar *nj = unet_normalization_to_json (&t->opts.normalization);
  unet_model_set_metadata (t->model, "unet.normalization", nj);

  t->net = unet_net_new (t->model, &t->opts.net, error);
  if (t->net == NULL)
    return FALSE;
  t->params = unet_net_get_parameters (t->net, &t->n_params, error);
  const UnetLayout *layout = unet_model_get_layout (t->model);
  if (t->params == NULL)
    return FALSE;
  if (t->n_params != layout->slab_numel) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_BACKEND,
        "the network's parameter slab has %" G_GSIZE_FORMAT
        " floats, the model layout %" G_GSIZE_FORMAT, t->n_params,
        layout->slab_numel);
    return FALSE;
  }
  t->optim = make_optimizer (t, layout, error);
  if (t->optim == NULL)
    return FALSE;

  g_queue_init (&t->train);
  g_queue_init (&t->val);
  t->device_aug = unet_net_train_samples_supported (t->net);
  t->draws = g_new0 (UnetAugmentDraw, t->opts.batch_size);
  t->batch = g_new0 (UnetNetSample *, t->opts.batch_size);
  t->val_capacity = MAX (1, (guint) (t->opts.dataset_capacity *
          t->opts.validation_fraction));
  t->last_val.frames = 0;
  t->last_val.pixel_error = t->last_val.rand_error = t->last_val.dice = -1.0;
  unet_seg_scores_init (&t->window, t->cfg.classes);
  return TRUE;
}

UnetTrainer *
unet_trainer_new (const UnetTrainerOptions *opts, const UnetModel *model,
    GError **error)
{
  g_return_val_if_fail (opts != NULL, NULL);
  if (!validate_options (opts, error))
    return NULL;

  g_autoptr (UnetModel) m = NULL;
  if (model != NULL) {
    if ((m = unet_model_copy (model, error)) == NULL)
      return NULL;
  } else {
    m = unet_model_new (&opts->architecture, error);
    if (m == NULL)
      return NULL;
    unet_model_init_weights (m, opts->seed);
  }
  if (unet_model_get_config (m)->classes > 16) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "training supports up to 16 classes, the model has %d",
        unet_model_get_config (m)->classes);
    return NULL;
  }

  UnetTrainer *t = g_new0 (UnetTrainer, 1);
  t->opts = *opts;
  t->model = g_steal_pointer (&m);
  if (!trainer_setup (t, error)) {
    unet_trainer_free (t);
    return NULL;
  }
  return t;
}

void
unet_trainer_free (UnetTrainer *t)
{
  if (t == NULL)
    return;
  unet_segmenter_free (t->seg);
  if (t->net != NULL)
    g_queue_foreach (&t->train, remove_device_sample, t);
  g_queue_clear_full (&t->train, unet_pair_free);
  g_queue_clear_full (&t->val, unet_pair_free);
  free_step_buffers (t);
  for (gint b = 0; t->draws != NULL && b < t->opts.batch_size; b++)
    unet_augment_draw_clear (&t->draws[b]);
  g_free (t->draws);
  g_free (t->batch);
  unet_optimizer_free (t->optim);
  unet_net_free (t->net);
  unet_model_free (t->model);
  g_free (t->alert_message);
  g_free (t);
}

gint64
unet_trainer_warmup_steps (const UnetTrainerOptions *o)
{
  return MIN (o->warmup, o->iterations / 4);
}

gdouble
unet_trainer_default_learning_rate (UnetTrainOptimizer optimizer)
{
  switch (optimizer) {
    case UNET_TRAIN_SGD:
      return DEFAULT_SGD_LR;
    case UNET_TRAIN_ADAM:
    case UNET_TRAIN_ADAMW:
      return DEFAULT_ADAM_LR;
  }
  return DEFAULT_ADAM_LR;
}

const UnetConfig *
unet_trainer_get_config (const UnetTrainer *t)
{
  return &t->cfg;
}

gint64
unet_trainer_get_iteration (const UnetTrainer *t)
{
  return t->iteration;
}

guint
unet_trainer_get_n_pairs (const UnetTrainer *t, guint *n_validation)
{
  if (n_validation)
    *n_validation = t->val.length;
  return t->train.length;
}

/* --------------------------------------------------------------- pairs -- */

gboolean
unet_trainer_add_pair (UnetTrainer *t, UnetPixelFormat image_format,
    gconstpointer image, gsize image_stride, UnetPixelFormat mask_format,
    gconstpointer mask, gsize mask_stride, gint width, gint height,
    GError **error)
{
  g_return_val_if_fail (t != NULL && image != NULL && mask != NULL, FALSE);

  gboolean hold_out = unet_dataset_holds_out (t->n_added,
      t->opts.validation_fraction, t->train.length);
  Pair *p = unet_pair_new (&t->pair_opts, hold_out, image_format, image,
      image_stride, mask_format, mask, mask_stride, width, height, error);
  if (p == NULL)
    return FALSE;
  if (hold_out) {
    t->n_added++;
    unet_dataset_push (&t->val, t->val_capacity, p, NULL, NULL);
    return TRUE;
  }
  /* the evicted pair's device copy goes first, so that the budget holds the set */
  unet_dataset_push (&t->train, (guint) t->opts.dataset_capacity, p,
      remove_device_sample, t);
  if (!upload_pair (t, p, error)) {
    unet_pair_free (g_queue_pop_tail (&t->train));
    return FALSE;
  }
  t->n_added++;
  gint edge = MIN (width, height);
  if (t->min_edge == 0 || edge < t->min_edge)
    t->min_edge = edge;
  return TRUE;
}

/* ---------------------------------------------------------------- tile -- */

/* The training tile: the user's (rounded up to legal) or the largest legal edge
 * <= 572 whose output fits the smallest training frame (the smallest legal edge
 * when even that one's output is larger). */
static gint
choose_tile (const UnetTrainer *t)
{
  const UnetConfig *cfg = &t->cfg;
  if (t->opts.tile_size > 0)
    return unet_config_legal_input_at_least (cfg, t->opts.tile_size);

  gint smallest = unet_config_legal_input_at_least (cfg, 1);
  gint best = -1;
  gint step = unet_config_size_step (cfg);
  for (gint s = smallest; s <= MAX (AUTO_TILE_CAP, smallest); s += 1) {
    gint out = unet_config_output_size (cfg, s);
    if (out <= 0)
      continue;
    if (t->min_edge > 0 && out > t->min_edge)
      break;
    best = s;
    /* Legal sizes are spaced by the size step: skip ahead. */
    s += step - 1;
  }
  return best > 0 ? best : smallest;
}

static gboolean
ensure_step_buffers (UnetTrainer *t, gint tile_in, GError **error)
{
  if (t->tile_in == tile_in)
    return TRUE;
  free_step_buffers (t);
  gint out = unet_config_output_size (&t->cfg, tile_in);
  if (out <= 0) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "tile size %d is not a legal input for this network", tile_in);
    return FALSE;
  }
  gsize b = t->opts.batch_size;
  gsize in_n = b * t->cfg.in_channels * tile_in * tile_in;
  gsize out_n = b * out * out;
  t->in = g_try_new (gfloat, in_n);
  t->labels = g_try_new (gint32, out_n);
  t->weights = g_try_new (gfloat, out_n);
  if (!t->in || !t->labels || !t->weights) {
    free_step_buffers (t);
    g_set_error (error, UNET_ERROR, UNET_ERROR_OUT_OF_MEMORY,
        "cannot allocate the buffers of a batch of %d tiles of %d px",
        t->opts.batch_size, tile_in);
    return FALSE;
  }
  t->tile_in = tile_in;
  t->tile_out = out;
  return TRUE;
}

/* --------------------------------------------------------------- guard -- */

static void
raise_alert (UnetTrainer *t, UnetTrainAlert alert, gchar *message,
    UnetTrainAlert *out_alert, const gchar **out_message)
{
  g_free (t->alert_message);
  t->alert_message = message;
  *out_alert = alert;
  *out_message = t->alert_message;
}

static const gchar *
class_name (const UnetTrainer *t, gint c, gchar *buf, gsize len)
{
  if (t->cfg.classes <= 2 && t->opts.mask_mode == UNET_TRAIN_MASK_BINARY)
    g_snprintf (buf, len, "class %d (%s)", c, c ? "mask non-zero" : "mask zero");
  else
    g_snprintf (buf, len, "class %d", c);
  return buf;
}

/* Pools the step's tile predictions into the window and judges a full window
 * (from the second window after warm-up on, when a network has had the steps to
 * leave its initial state). Sets t->last.alert on a new alert. */
static void
guard_step (UnetTrainer *t, gdouble loss, const UnetConfusion *conf)
{
  const gint K = t->cfg.classes;
  t->last.alert = UNET_TRAIN_ALERT_NONE;
  t->last.alert_message = NULL;
  unet_seg_scores_add_confusion (&t->window, conf);
  t->window_loss += loss;
  if (++t->window_steps < GUARD_WINDOW)
    return;

  guint now = 0;
  gdouble mean = t->window_loss / t->window_steps;
  gdouble uniform = log ((gdouble) MAX (K, 2));
  gint missing = unet_seg_scores_missing_class (&t->window,
      GUARD_MIN_CLASS_SHARE);
  gboolean judge = t->iteration >= unet_trainer_warmup_steps (&t->opts)
      + 2 * GUARD_WINDOW;
  if (judge && t->opts.dice_weight == 0.0
      && fabs (mean - uniform) <= GUARD_UNIFORM_TOLERANCE * uniform)
    now |= 1u << UNET_TRAIN_ALERT_UNIFORM;
  if (judge && missing >= 0)
    now |= 1u << UNET_TRAIN_ALERT_CLASS_NEVER_PREDICTED;
  guint train_bits = (1u << UNET_TRAIN_ALERT_UNIFORM)
      | (1u << UNET_TRAIN_ALERT_CLASS_NEVER_PREDICTED);
  guint fresh = now & ~t->alerts_active;
  t->alerts_active = (t->alerts_active & ~train_bits) | now;

  gchar cn[64];
  if (fresh & (1u << UNET_TRAIN_ALERT_UNIFORM)) {
    raise_alert (t, UNET_TRAIN_ALERT_UNIFORM, g_strdup_printf ("the loss has "
            "stayed at %.4f for the last %d steps, the value of a constant "
            "uniform prediction (ln %d = %.4f): the network outputs the same for "
            "every pixel. Likely cause: steps too large for the optimiser (they "
            "silenced the ReLUs) - lower learning-rate, keep warm-up, or use "
            "optimizer=adam; or images without contrast (check normalization).",
            mean, GUARD_WINDOW, MAX (K, 2), uniform),
        &t->last.alert, &t->last.alert_message);
  } else if (fresh & (1u << UNET_TRAIN_ALERT_CLASS_NEVER_PREDICTED)) {
    raise_alert (t, UNET_TRAIN_ALERT_CLASS_NEVER_PREDICTED,
        g_strdup_printf ("%s, %.1f %% of the labelled pixels of the last %d "
            "steps' tiles, was never predicted: the network collapsed to the "
            "other class%s. Likely cause: a learning rate too high (lower it or "
            "keep warm-up), class-balance=false on imbalanced masks, or masks "
            "read the wrong way (mask-mode, ignore-label).",
            class_name (t, missing, cn, sizeof (cn)),
            100.0 * t->window.label[missing] / MAX (t->window.labelled, 1),
            GUARD_WINDOW, K > 2 ? "es" : ""),
        &t->last.alert, &t->last.alert_message);
  }
  unet_seg_scores_init (&t->window, K);
  t->window_loss = 0.0;
  t->window_steps = 0;
}

/* ---------------------------------------------------------------- step -- */

gboolean
unet_trainer_step (UnetTrainer *t, UnetTrainStats *stats, GError **error)
{
  g_return_val_if_fail (t != NULL, FALSE);
  if (t->train.length == 0) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "no training pairs: add at least one image/mask pair before training");
    return FALSE;
  }
  gint64 t0 = g_get_monotonic_time ();
  if (!ensure_step_buffers (t, choose_tile (t), error))
    return FALSE;

  const gint B = t->opts.batch_size, C = t->cfg.in_channels, K = t->cfg.classes;
  const gint Ti = t->tile_in, To = t->tile_out;
  const gsize in_one = (gsize) C * Ti * Ti, out_one = (gsize) To * To;

  /* the draws, in one order for both paths: pair, then its augmentation */
  const gboolean on_device = t->device_aug;
  const guint64 dropout_seed = step_seed (t->opts.seed, t->iteration, STREAM_DROPOUT);
  UnetRng rng;
  unet_rng_init (&rng, step_seed (t->opts.seed, t->iteration, STREAM_SAMPLE));
  for (gint b = 0; b < B; b++) {
    guint idx = (guint) unet_rng_below (&rng, t->train.length);
    const Pair *p = g_queue_peek_nth (&t->train, idx);
    if (on_device) {
      t->batch[b] = p->device;
      if (!unet_augment_draw (&t->aug, &rng, C, p->width, p->height, Ti, Ti, To, To,
              &t->draws[b], error))
        return FALSE;
    } else if (!unet_augment_sample (&t->aug, &rng, p->image, p->classes, p->weights,
            C, p->width, p->height, Ti, Ti, To, To, t->in + b * in_one,
            t->labels + b * out_one, t->weights + b * out_one, error)) {
      return FALSE;
    }
  }

  /* forward, loss, backward and the optimiser's step on the net's backend: the
   * logits, their gradient, the gradients and the parameters stay there; the loss
   * and the prediction's confusion matrix come back. On the device path the batch
   * is made there too, and so are the loss's targets. */
  gdouble lr = unet_optimizer_get_lr (t->optim);
  gdouble loss = 0.0;
  UnetConfusion conf;
  gboolean finite = FALSE;
  if (on_device) {
    if (!unet_net_train_forward_samples (t->net, t->batch, t->draws, B, dropout_seed,
            error)
        || !unet_net_train_loss (t->net, NULL, NULL, t->opts.dice_weight, &loss, &conf,
            error))
      return FALSE;
  } else if (!unet_net_train_forward (t->net, t->in, B, Ti, Ti, dropout_seed, NULL, error)
      || !unet_net_train_loss (t->net, t->labels, t->weights, t->opts.dice_weight,
          &loss, &conf, error)) {
    return FALSE;
  }
  if (!isfinite (loss)) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_FAILED,
        "the loss diverged (%g) at iteration %" G_GINT64_FORMAT
        ": lower the learning rate or add warm-up; the last checkpoint is kept",
        loss, t->iteration + 1);
    return FALSE;
  }
  UnetDiceCounts counts;
  unet_dice_counts_init (&counts, K);
  unet_dice_counts_add_confusion (&counts, &conf);

  if (!unet_net_zero_gradients (t->net, error)
      || !unet_net_train_backward (t->net, NULL, error)
      || !unet_net_optimizer_step (t->net, t->optim, &finite, error))
    return FALSE;
  if (!finite) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_FAILED,
        "the weights diverged (not finite) at iteration %" G_GINT64_FORMAT
        ": lower the learning rate or add warm-up; the last checkpoint is kept",
        t->iteration + 1);
    return FALSE;
  }

  t->iteration++;
  gdouble secs = (g_get_monotonic_time () - t0) / 1e6;
  t->last.iteration = t->iteration;
  t->last.loss = loss;
  t->last.dice = unet_dice_counts_foreground (&counts);
  t->last.learning_rate = lr;
  t->last.samples_per_second = secs > 0.0 ? B / secs : 0.0;
  t->last.augment_on_device = on_device;
  guard_step (t, loss, &conf);
  if (stats)
    *stats = t->last;
  return TRUE;
}

/* ----------------------------------------------------------- inference -- */

/* The segmenter on the trainer's net (see SEGMENT_BATCH_SIZE). It borrows the
 * net, whose forward passes refold the parameters after every step, so it always
 * runs the current weights. */
static gboolean
ensure_segmenter (UnetTrainer *t, GError **error)
{
  if (t->seg != NULL)
    return TRUE;
  UnetSegmenterOptions so;
  unet_segmenter_options_init (&so);
  so.tile_height = so.tile_width = 0;
  so.batch_size = SEGMENT_BATCH_SIZE;
  so.memory_budget = 0;
  so.batch_frames = TRUE;
  so.outputs = UNET_SEGMENT_LABELS;
  t->seg = unet_segmenter_new_for_net (t->net, &t->opts.normalization, &so,
      error);
  return t->seg != NULL;
}

/* Adds a segmented held-out frame (its pair is the result's user data). */
static gboolean
score_result (UnetSegScores *scores, const UnetSegmentResult *r,
    GError **error)
{
  const Pair *p = r->user_data;
  gsize plane = (gsize) p->width * p->height;
  g_autofree gint32 *pred = g_try_new (gint32, plane);
  if (pred == NULL) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_OUT_OF_MEMORY,
        "cannot allocate the prediction of a %dx%d frame", p->width,
        p->height);
    return FALSE;
  }
  for (gsize i = 0; i < plane; i++)
    pred[i] = r->labels[i];
  return unet_seg_scores_add_frame (scores, pred, p->classes, p->objects,
      p->width, p->height, error);
}

/* Pops every finished frame, scoring them while `scores` is not NULL (after a
 * failure: dropping them, so that the next call starts on an empty queue). */
static gboolean
score_finished (UnetTrainer *t, UnetSegScores *scores, GError **error)
{
  gboolean ok = TRUE;
  UnetSegmentResult *r;
  while ((r = unet_segmenter_pop (t->seg)) != NULL) {
    if (ok && scores != NULL && !score_result (scores, r, error))
      ok = FALSE;
    unet_segment_result_free (r);
  }
  return ok;
}

/* Every held-out frame through the segmenter, in set order. */
static gboolean
score_held_out (UnetTrainer *t, UnetSegScores *scores, GError **error)
{
  for (GList * l = t->val.head; l != NULL; l = l->next) {
    const Pair *p = l->data;
    if (!unet_segmenter_push (t->seg, p->raw_format, p->raw, p->width,
            p->height, p->raw_stride, l->data, error)
        || !score_finished (t, scores, error))
      return FALSE;
  }
  return unet_segmenter_flush (t->seg, error) && score_finished (t, scores,
      error);
}

gboolean
unet_trainer_validate (UnetTrainer *t, UnetTrainValidation *v, GError **error)
{
  g_return_val_if_fail (t != NULL && v != NULL, FALSE);
  memset (v, 0, sizeof (*v));
  v->pixel_error = v->rand_error = v->dice = -1.0;
  if (t->val.length == 0)
    return TRUE;
  const gint K = t->cfg.classes;
  UnetSegScores scores;
  unet_seg_scores_init (&scores, K);
  if (!ensure_segmenter (t, error))
    return FALSE;
  if (!score_held_out (t, &scores, error)) {
    /* frames of this call still queued (pushed, not failed) must not be
     * scored by the next one */
    (void) unet_segmenter_flush (t->seg, NULL);
    (void) score_finished (t, NULL, NULL);
    return FALSE;
  }
  v->frames = t->val.length;
  v->pixel_error = unet_seg_scores_pixel_error (&scores);
  v->rand_error = unet_seg_scores_rand_error (&scores);
  v->dice = unet_seg_scores_dice (&scores);

  guint bit = 1u << UNET_TRAIN_ALERT_VALIDATION_CLASS_NEVER_PREDICTED;
  gint missing = unet_seg_scores_missing_class (&scores, GUARD_MIN_CLASS_SHARE);
  gboolean judge = t->iteration >= unet_trainer_warmup_steps (&t->opts)
      + 2 * GUARD_WINDOW;
  if (judge && missing >= 0 && !(t->alerts_active & bit)) {
    gchar cn[64];
    raise_alert (t, UNET_TRAIN_ALERT_VALIDATION_CLASS_NEVER_PREDICTED,
        g_strdup_printf ("%s, %.1f %% of the labelled pixels of the %u held-out "
            "frames, is never predicted on them at iteration %" G_GINT64_FORMAT
            ": the model has collapsed to the other class%s. Likely cause: a "
            "learning rate too high (lower it or keep warm-up), class-balance="
            "false on imbalanced masks, or masks read the wrong way (mask-mode).",
            class_name (t, missing, cn, sizeof (cn)),
            100.0 * scores.label[missing] / MAX (scores.labelled, 1),
            v->frames, t->iteration, K > 2 ? "es" : ""),
        &v->alert, &v->alert_message);
  }
  if (judge && missing >= 0)
    t->alerts_active |= bit;
  else
    t->alerts_active &= ~bit;
  t->last_val = *v;
  t->last_val.alert_message = NULL;
  return TRUE;
}

gboolean
unet_trainer_predict (UnetTrainer *t, UnetPixelFormat format,
    gconstpointer image, gsize stride, gint width, gint height,
    guint8 *labels, gsize labels_stride, GError **error)
{
  g_return_val_if_fail (t != NULL && image != NULL && labels != NULL, FALSE);
  if (!unet_dataset_check_frame (width, height, stride,
          unet_pixel_format_bytes (format), "image", error)
      || !ensure_segmenter (t, error))
    return FALSE;
  g_autoptr (UnetSegmentResult) r = unet_segmenter_process (t->seg, format,
      image, width, height, stride, error);
  if (r == NULL)
    return FALSE;
  for (gint y = 0; y < height; y++)
    memcpy (labels + (gsize) y * labels_stride, r->labels + (gsize) y * width,
        width);
  return TRUE;
}

/* --------------------------------------------------------- checkpoints -- */

/* Copies the net's parameters into t->model with a fresh "unet.training". */
static gboolean
sync_model (UnetTrainer *t, GError **error)
{
  if (!unet_net_export_model (t->net, t->model, error))
    return FALSE;
  const UnetTrainerOptions *o = &t->opts;
  UnetCheckpointState state = {
    .iteration = t->iteration,
    .learning_rate = o->learning_rate > 0.0 ? o->learning_rate
        : unet_trainer_default_learning_rate (o->optimizer),
    .warmup = unet_trainer_warmup_steps (o),
    .tile_size = t->tile_in > 0 ? t->tile_in : o->tile_size,
    .pairs_seen = t->n_added,
    .last = &t->last,
    .validation = &t->last_val,
  };
  g_autofree gchar *tj = unet_checkpoint_training_json (o, &state);
  unet_model_set_metadata (t->model, "unet.training", tj);
  return TRUE;
}

UnetModel *
unet_trainer_export_model (UnetTrainer *t, GError **error)
{
  g_return_val_if_fail (t != NULL, NULL);
  if (!sync_model (t, error))
    return NULL;
  return unet_model_copy (t->model, error);
}

gboolean
unet_trainer_save_checkpoint (UnetTrainer *t, const gchar *path,
    GError **error)
{
  g_return_val_if_fail (t != NULL && path != NULL, FALSE);
  /* Never replace a good checkpoint with a diverged one. */
  gsize n_params = 0;
  const gfloat *params = unet_net_get_parameters (t->net, &n_params, error);
  /* the optimiser's state lives on the backend: into the optimiser's buffers */
  return params != NULL
      && unet_net_optimizer_state (t->net, t->optim, FALSE, error)
      && unet_checkpoint_check_finite (params, n_params, t->optim,
      t->iteration, path, error)
      && sync_model (t, error)
      && unet_checkpoint_write (t->model, t->optim, t->n_params, path, error);
}

UnetTrainer *
unet_trainer_new_from_checkpoint (const UnetTrainerOptions *opts,
    const gchar *path, GError **error)
{
  g_return_val_if_fail (opts != NULL && path != NULL, NULL);
  UnetCheckpoint ck;
  UnetTrainer *t = NULL;
  if (unet_checkpoint_open (path, &ck, error)) {
    UnetTrainerOptions o = *opts;
    o.seed = ck.seed;
    o.optimizer = ck.optimizer;
    if (ck.has_normalization)
      o.normalization = ck.normalization;
    t = unet_trainer_new (&o, ck.model, error);
    /* the restored weights and optimiser state go to the backend */
    if (t != NULL && (!unet_checkpoint_restore (&ck, t->optim, t->params,
                t->n_params, error)
            || !unet_net_parameters_changed (t->net, error)
            || !unet_net_optimizer_state (t->net, t->optim, TRUE, error)))
      g_clear_pointer (&t, unet_trainer_free);
    if (t != NULL)
      t->iteration = ck.iteration;
  }
  unet_checkpoint_clear (&ck);
  return t;
}
