/* gst-unet engine — training checkpoints: the "unet.training" JSON, the finiteness
 * checks, writing model + optimiser state, and reading them back. See checkpoint.h.
 */
#include "checkpoint.h"
#include "model-private.h"

#include <json-glib/json-glib.h>
#include <string.h>

static const gchar *
optimizer_name (UnetTrainOptimizer o)
{
  switch (o) {
    case UNET_TRAIN_SGD:
      return "sgd";
    case UNET_TRAIN_ADAM:
      return "adam";
    case UNET_TRAIN_ADAMW:
      return "adamw";
  }
  return "sgd";
}

static gboolean
optimizer_from_name (const gchar *name, UnetTrainOptimizer *o)
{
  for (gint i = UNET_TRAIN_SGD; i <= UNET_TRAIN_ADAMW; i++) {
    if (g_strcmp0 (name, optimizer_name (i)) == 0) {
      *o = i;
      return TRUE;
    }
  }
  return FALSE;
}

static const gchar *
schedule_name (UnetTrainSchedule s)
{
  switch (s) {
    case UNET_TRAIN_SCHEDULE_CONSTANT:
      return "constant";
    case UNET_TRAIN_SCHEDULE_COSINE:
      return "cosine";
    case UNET_TRAIN_SCHEDULE_POLY:
      return "poly";
  }
  return "constant";
}

static const gchar *
mask_mode_name (UnetTrainMaskMode m)
{
  switch (m) {
    case UNET_TRAIN_MASK_BINARY:
      return "binary";
    case UNET_TRAIN_MASK_INDEXED:
      return "indexed";
    case UNET_TRAIN_MASK_INSTANCES:
      return "instances";
  }
  return "binary";
}

gchar *
unet_checkpoint_training_json (const UnetTrainerOptions *o,
    const UnetCheckpointState *s)
{
  g_autoptr (JsonBuilder) b = json_builder_new ();
  json_builder_begin_object (b);
#define KV_INT(k, v) json_builder_set_member_name (b, k); json_builder_add_int_value (b, v)
#define KV_DBL(k, v) json_builder_set_member_name (b, k); json_builder_add_double_value (b, v)
#define KV_STR(k, v) json_builder_set_member_name (b, k); json_builder_add_string_value (b, v)
#define KV_BOOL(k, v) json_builder_set_member_name (b, k); json_builder_add_boolean_value (b, v)
  KV_INT ("iteration", s->iteration);
  /* A decimal string: JSON numbers lose 64-bit integers in many readers. */
  g_autofree gchar *seed = g_strdup_printf ("%" G_GUINT64_FORMAT, o->seed);
  KV_STR ("seed", seed);
  KV_STR ("optimizer", optimizer_name (o->optimizer));
  KV_DBL ("learning_rate", s->learning_rate);
  KV_INT ("warmup", s->warmup);
  KV_DBL ("momentum", o->momentum);
  KV_BOOL ("nesterov", o->nesterov);
  KV_DBL ("weight_decay", o->weight_decay);
  KV_STR ("schedule", schedule_name (o->schedule));
  KV_INT ("iterations", o->iterations);
  KV_INT ("batch_size", o->batch_size);
  KV_INT ("tile_size", s->tile_size);
  KV_BOOL ("elastic", o->elastic);
  KV_INT ("elastic_grid", o->elastic_grid);
  KV_DBL ("elastic_sigma", o->elastic_sigma);
  KV_DBL ("rotation", o->rotation);
  KV_BOOL ("flip", o->flip);
  KV_DBL ("intensity_jitter", o->intensity_jitter);
  KV_DBL ("border_weight", o->border_weight);
  KV_DBL ("border_sigma", o->border_sigma);
  KV_BOOL ("class_balance", o->class_balance);
  KV_STR ("mask_mode", mask_mode_name (o->mask_mode));
  KV_INT ("ignore_label", o->ignore_label);
  KV_DBL ("dice_weight", o->dice_weight);
  KV_DBL ("validation_fraction", o->validation_fraction);
  KV_INT ("pairs_seen", (gint64) s->pairs_seen);
  if (s->iteration > 0 && s->last != NULL) {
    KV_DBL ("loss", s->last->loss);
    KV_DBL ("dice", s->last->dice);
  }
  if (s->validation != NULL && s->validation->frames > 0) {
    KV_INT ("validation_frames", s->validation->frames);
    KV_DBL ("validation_pixel_error", s->validation->pixel_error);
    if (s->validation->rand_error >= 0.0) {
      KV_DBL ("validation_rand_error", s->validation->rand_error);
    }
    KV_DBL ("validation_dice", s->validation->dice);
  }
#undef KV_INT
#undef KV_DBL
#undef KV_STR
#undef KV_BOOL
  json_builder_end_object (b);
  g_autoptr (JsonNode) root = json_builder_get_root (b);
  return json_to_string (root, FALSE);
}

gboolean
unet_checkpoint_check_finite (const gfloat *params, gsize n_params,
    UnetOptimizer *optim, gint64 iteration, const gchar *path, GError **error)
{
  if (!unet_slab_all_finite (params, n_params)) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_FAILED,
        "not writing \"%s\" at iteration %" G_GINT64_FORMAT ": the weights are "
        "not finite (training diverged); the file already there is kept", path,
        iteration);
    return FALSE;
  }
  for (guint i = 0; i < unet_optimizer_get_n_buffers (optim); i++)
    if (!unet_slab_all_finite (unet_optimizer_get_buffer (optim, i),
            n_params)) {
      g_set_error (error, UNET_ERROR, UNET_ERROR_FAILED,
          "not writing \"%s\" at iteration %" G_GINT64_FORMAT ": the optimiser "
          "state \"%s\" is not finite (training diverged); the file already "
          "there is kept", path, iteration,
          unet_optimizer_get_buffer_name (optim, i));
      return FALSE;
    }
  return TRUE;
}

gboolean
unet_checkpoint_write (const UnetModel *model, UnetOptimizer *optim,
    gsize n_params, const gchar *path, GError **error)
{
  guint n = unet_optimizer_get_n_buffers (optim);
  g_autofree UnetStTensorData *extra = g_new0 (UnetStTensorData, MAX (n, 1));
  for (guint i = 0; i < n; i++) {
    extra[i].name = unet_optimizer_get_buffer_name (optim, i);
    extra[i].n_dims = 1;
    extra[i].shape[0] = (gint) n_params;
    extra[i].data = unet_optimizer_get_buffer (optim, i);
  }
  return unet_model_save_with_extra (model, path, extra, n, NULL, error);
}

/* The step, seed and optimiser of an "unet.training" JSON text. */
static gboolean
parse_training (const gchar *json, gint64 *iteration, guint64 *seed,
    UnetTrainOptimizer *optimizer, GError **error)
{
  g_autoptr (JsonParser) parser = json_parser_new ();
  if (json == NULL || !json_parser_load_from_data (parser, json, -1, NULL)
      || !JSON_NODE_HOLDS_OBJECT (json_parser_get_root (parser)))
    goto bad;
  JsonObject *o = json_node_get_object (json_parser_get_root (parser));
  /* Each member of the type we write: an iteration that is a string, an object
   * or a float is a damaged checkpoint, not "iteration 0". */
  JsonNode *it = json_object_get_member (o, "iteration");
  JsonNode *sd = json_object_get_member (o, "seed");
  JsonNode *op = json_object_get_member (o, "optimizer");
  if (it == NULL || sd == NULL || op == NULL
      || !JSON_NODE_HOLDS_VALUE (it) || json_node_get_value_type (it) != G_TYPE_INT64
      || !JSON_NODE_HOLDS_VALUE (sd) || json_node_get_value_type (sd) != G_TYPE_STRING
      || !JSON_NODE_HOLDS_VALUE (op) || json_node_get_value_type (op) != G_TYPE_STRING)
    goto bad;
  *iteration = json_node_get_int (it);
  const gchar *s = json_node_get_string (sd);
  gchar *end = NULL;
  if (s == NULL)
    goto bad;
  *seed = g_ascii_strtoull (s, &end, 10);
  if (end == s || *end != '\0' || *iteration < 0)
    goto bad;
  if (!optimizer_from_name (json_node_get_string (op), optimizer))
    goto bad;
  return TRUE;

bad:
  g_set_error (error, UNET_ERROR, UNET_ERROR_MODEL,
      "not a training checkpoint: the \"unet.training\" metadata is missing, "
      "or its iteration (an integer >= 0), seed (a decimal string) or optimizer "
      "(sgd, adam or adamw) is missing or of the wrong type");
  return FALSE;
}

void
unet_checkpoint_clear (UnetCheckpoint *ck)
{
  g_clear_pointer (&ck->path, g_free);
  g_clear_pointer (&ck->file, unet_safetensors_free);
  g_clear_pointer (&ck->model, unet_model_free);
}

gboolean
unet_checkpoint_open (const gchar *path, UnetCheckpoint *ck, GError **error)
{
  memset (ck, 0, sizeof (*ck));
  ck->path = g_strdup (path);
  ck->file = unet_safetensors_open (path, error);
  if (ck->file == NULL)
    return FALSE;
  if (!parse_training (unet_safetensors_get_metadata_value (ck->file,
              "unet.training"), &ck->iteration, &ck->seed, &ck->optimizer,
          error)) {
    g_prefix_error (error, "%s: ", path);
    return FALSE;
  }
  ck->model = unet_model_load_from_safetensors (ck->file, error);
  if (ck->model == NULL)
    return FALSE;
  const gchar *nj = unet_model_get_metadata (ck->model, "unet.normalization");
  if (nj != NULL) {
    if (!unet_normalization_from_json (nj, &ck->normalization, error))
      return FALSE;
    ck->has_normalization = TRUE;
  }
  return TRUE;
}

gboolean
unet_checkpoint_restore (const UnetCheckpoint *ck, UnetOptimizer *optim,
    const gfloat *params, gsize n_params, GError **error)
{
  guint n = unet_optimizer_get_n_buffers (optim);
  for (guint i = 0; i < n && ck->iteration > 0; i++) {
    const gchar *name = unet_optimizer_get_buffer_name (optim, i);
    const UnetStTensor *st_t = unet_safetensors_lookup (ck->file, name);
    if (st_t == NULL || st_t->numel != n_params) {
      g_set_error (error, UNET_ERROR, UNET_ERROR_MODEL,
          "%s: optimiser state \"%s\" is missing or has %" G_GUINT64_FORMAT
          " values instead of %" G_GSIZE_FORMAT, ck->path, name,
          st_t ? st_t->numel : 0, n_params);
      return FALSE;
    }
    if (!unet_safetensors_read_f32 (st_t, unet_optimizer_get_buffer (optim, i),
            error))
      return FALSE;
    if (!unet_slab_all_finite (unet_optimizer_get_buffer (optim, i),
            n_params)) {
      g_set_error (error, UNET_ERROR, UNET_ERROR_MODEL,
          "%s: optimiser state \"%s\" holds non-finite values (saved by a run "
          "that diverged); resume from an earlier checkpoint or start again",
          ck->path, name);
      return FALSE;
    }
  }
  if (!unet_slab_all_finite (params, n_params)) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_MODEL,
        "%s: the weights hold non-finite values (saved by a run that "
        "diverged); resume from an earlier checkpoint or start again",
        ck->path);
    return FALSE;
  }
  unet_optimizer_set_step (optim, ck->iteration);
  return TRUE;
}
