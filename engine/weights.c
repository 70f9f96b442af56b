/* gst-unet engine — UnetModel <-> safetensors (the model file contract).
 *
 * Loading: the `unet.config` metadata entry is authoritative; from it the engine
 * derives every contract tensor and its shape (model.c's layout). The file must
 * hold exactly those tensors (F32/F16/BF16, converted to float32), plus optionally
 * "*.num_batches_tracked" (ignored) and "optim.*" (optimiser state; the trainer
 * reads those itself). Anything else, a missing tensor, a wrong shape, a
 * non-finite weight or a negative running variance is UNET_ERROR_MODEL naming the
 * tensor. The optional metadata entries are checked too: `unet.normalization`
 * must parse, `unet.classes` must be a JSON array of strings, `unet.training` a
 * JSON object. Nothing is allocated before every shape has been checked against
 * the bytes actually present, so a file claiming a huge config cannot make the
 * loader allocate more than about twice its own size.
 */
#include "model-private.h"

#include <json-glib/json-glib.h>
#include <math.h>
#include <string.h>

static gchar *
shape_string (gint n_dims, const gint64 *shape64, const gint *shape32)
{
  GString *s = g_string_new ("[");
  for (gint d = 0; d < n_dims; d++)
    g_string_append_printf (s, "%s%" G_GINT64_FORMAT, d ? ", " : "",
        shape64 ? shape64[d] : (gint64) shape32[d]);
  g_string_append_c (s, ']');
  return g_string_free (s, FALSE);
}

static gboolean
check_json_kind (const gchar *key, const gchar *json, gboolean want_string_array,
    GError **error)
{
  g_autoptr (JsonParser) parser = json_parser_new ();
  g_autoptr (GError) err = NULL;
  if (!unet_json_check (json, -1, &err) || !json_parser_load_from_data (parser,
          json, -1, &err)) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_MODEL,
        "metadata \"%s\" is not valid JSON%s%s", key, err ? ": " : "",
        err ? err->message : "");
    return FALSE;
  }
  JsonNode *root = json_parser_get_root (parser);
  if (want_string_array) {
    gboolean ok = root != NULL && JSON_NODE_HOLDS_ARRAY (root);
    if (ok) {
      JsonArray *a = json_node_get_array (root);
      for (guint i = 0; ok && i < json_array_get_length (a); i++) {
        JsonNode *e = json_array_get_element (a, i);
        ok = JSON_NODE_HOLDS_VALUE (e) && json_node_get_value_type (e) == G_TYPE_STRING;
      }
    }
    if (!ok) {
      g_set_error (error, UNET_ERROR, UNET_ERROR_MODEL,
          "metadata \"%s\" must be a JSON array of class names", key);
      return FALSE;
    }
  } else if (root == NULL || !JSON_NODE_HOLDS_OBJECT (root)) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_MODEL,
        "metadata \"%s\" must be a JSON object", key);
    return FALSE;
  }
  return TRUE;
}

static gboolean
ignored_tensor (const gchar *name)
{
  return g_str_has_suffix (name, ".num_batches_tracked")
      || g_str_has_prefix (name, "optim.");
}

UnetModel *
unet_model_load_from_safetensors (const UnetSafetensors *st, GError **error)
{
  g_autoptr (GError) err = NULL;
  const gchar *cfg_json = unet_safetensors_get_metadata_value (st, "unet.config");
  UnetConfig cfg;

  if (cfg_json == NULL) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_MODEL,
        "the file has no \"unet.config\" metadata entry (not a gst-unet model?)");
    return NULL;
  }
  if (!unet_config_from_json (cfg_json, &cfg, &err)) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_MODEL, "metadata \"unet.config\": %s",
        err->message);
    return NULL;
  }
  g_autoptr (UnetLayout) layout = unet_layout_new (&cfg, error);
  if (layout == NULL)
    return NULL;

  /* 1. names and shapes, before any allocation proportional to the config */
  guint n_file = unet_safetensors_get_n_tensors (st);
  g_autofree gint *file_of = g_new (gint, layout->n_tensors);   /* layout -> file */
  for (guint i = 0; i < layout->n_tensors; i++)
    file_of[i] = -1;
  for (guint f = 0; f < n_file; f++) {
    const UnetStTensor *t = unet_safetensors_get_tensor (st, f);
    if (ignored_tensor (t->name))
      continue;
    gint idx = unet_layout_find (layout, t->name);
    if (idx < 0) {
      g_set_error (error, UNET_ERROR, UNET_ERROR_MODEL,
          "unknown tensor '%s' (not part of the network that \"unet.config\" "
          "describes)", t->name);
      return NULL;
    }
    const UnetTensorInfo *info = &layout->tensors[idx];
    gboolean same = t->n_dims == info->n_dims;
    for (gint d = 0; same && d < info->n_dims; d++)
      same = t->shape[d] == info->shape[d];
    if (!same) {
      g_autofree gchar *have = shape_string (t->n_dims, t->shape, NULL);
      g_autofree gchar *want = shape_string (info->n_dims, NULL, info->shape);
      g_set_error (error, UNET_ERROR, UNET_ERROR_MODEL,
          "tensor '%s' has shape %s but the config implies %s", t->name, have, want);
      return NULL;
    }
    if (t->dtype == UNET_ST_I64) {
      g_set_error (error, UNET_ERROR, UNET_ERROR_MODEL,
          "tensor '%s' has dtype I64 (F32, F16 or BF16 expected)", t->name);
      return NULL;
    }
    file_of[idx] = (gint) f;
  }
  for (guint i = 0; i < layout->n_tensors; i++) {
    if (file_of[i] < 0) {
      g_set_error (error, UNET_ERROR, UNET_ERROR_MODEL,
          "missing tensor '%s' (shape implied by \"unet.config\")",
          layout->tensors[i].name);
      return NULL;
    }
  }

  /* 2. metadata */
  GHashTable *md = unet_safetensors_get_metadata (st);
  const gchar *norm_json = g_hash_table_lookup (md, "unet.normalization");
  if (norm_json != NULL) {
    UnetNormalization norm;
    g_clear_error (&err);
    if (!unet_normalization_from_json (norm_json, &norm, &err)) {
      g_set_error (error, UNET_ERROR, UNET_ERROR_MODEL,
          "metadata \"unet.normalization\": %s", err->message);
      return NULL;
    }
  }
  const gchar *classes_json = g_hash_table_lookup (md, "unet.classes");
  if (classes_json != NULL && !check_json_kind ("unet.classes", classes_json, TRUE,
          error))
    return NULL;
  const gchar *training_json = g_hash_table_lookup (md, "unet.training");
  if (training_json != NULL && !check_json_kind ("unet.training", training_json,
          FALSE, error))
    return NULL;

  /* 3. data: every tensor's bytes are present, so this allocation is bounded */
  UnetModel *model = unet_model_new (&cfg, error);
  if (model == NULL)
    return NULL;
  for (guint i = 0; i < layout->n_tensors; i++) {
    const UnetStTensor *t = unet_safetensors_get_tensor (st, (guint) file_of[i]);
    const UnetTensorInfo *info = &layout->tensors[i];
    gfloat *dst = unet_model_tensor_data (model, i);
    if (!unet_safetensors_read_f32 (t, dst, error))
      goto fail;
    for (gsize j = 0; j < info->numel; j++) {
      if (!isfinite (dst[j])) {
        g_set_error (error, UNET_ERROR, UNET_ERROR_MODEL,
            "tensor '%s' holds a non-finite value (%g) at element %" G_GSIZE_FORMAT,
            t->name, dst[j], j);
        goto fail;
      }
      if (info->kind == UNET_TENSOR_BN_VAR && dst[j] < 0.0f) {
        g_set_error (error, UNET_ERROR, UNET_ERROR_MODEL,
            "tensor '%s' holds a negative variance (%g) at element %" G_GSIZE_FORMAT,
            t->name, dst[j], j);
        goto fail;
      }
    }
  }

  GHashTableIter it;
  gpointer k, v;
  g_hash_table_iter_init (&it, md);
  while (g_hash_table_iter_next (&it, &k, &v))
    if (!g_str_equal (k, "unet.config"))
      unet_model_set_metadata (model, k, v);
  return model;

fail:
  unet_model_free (model);
  return NULL;
}

UnetModel *
unet_model_load_from_data (const guint8 *data, gsize size, GError **error)
{
  g_autoptr (UnetSafetensors) st = unet_safetensors_parse (data, size, error);
  if (st == NULL)
    return NULL;
  return unet_model_load_from_safetensors (st, error);
}

UnetModel *
unet_model_load (const gchar *path, GError **error)
{
  g_return_val_if_fail (path != NULL, NULL);
  g_autoptr (UnetSafetensors) st = unet_safetensors_open (path, error);
  UnetModel *model = st ? unet_model_load_from_safetensors (st, error) : NULL;
  if (model == NULL)
    g_prefix_error (error, "%s: ", path);
  return model;
}

/* The tensors and metadata to write: contract tensors in canonical order, then
 * `extra`. */
static GArray *
collect_tensors (const UnetModel *model, const UnetStTensorData *extra,
    guint n_extra, GError **error)
{
  const UnetLayout *layout = unet_model_get_layout (model);
  const gfloat *slab = unet_model_peek_slab (model);
  GArray *arr = g_array_sized_new (FALSE, TRUE, sizeof (UnetStTensorData),
      layout->n_tensors + n_extra);
  for (guint i = 0; i < layout->n_tensors; i++) {
    const UnetTensorInfo *info = &layout->tensors[i];
    UnetStTensorData t = { info->name, info->n_dims, { 0 }, slab + info->offset };
    memcpy (t.shape, info->shape, sizeof t.shape);
    g_array_append_val (arr, t);
  }
  for (guint i = 0; i < n_extra; i++) {
    if (extra[i].name != NULL && unet_layout_find (layout, extra[i].name) >= 0) {
      g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
          "extra tensor '%s' collides with a model tensor", extra[i].name);
      g_array_unref (arr);
      return NULL;
    }
    g_array_append_val (arr, extra[i]);
  }
  return arr;
}

static GHashTable *
collect_metadata (const UnetModel *model, GHashTable *extra_metadata)
{
  GHashTable *md = g_hash_table_new (g_str_hash, g_str_equal);
  GHashTableIter it;
  gpointer k, v;
  g_hash_table_iter_init (&it, unet_model_get_metadata_table (model));
  while (g_hash_table_iter_next (&it, &k, &v))
    g_hash_table_replace (md, k, v);
  if (extra_metadata != NULL) {
    g_hash_table_iter_init (&it, extra_metadata);
    while (g_hash_table_iter_next (&it, &k, &v))
      if (!g_str_equal (k, "unet.config"))
        g_hash_table_replace (md, k, v);
  }
  return md;
}

gboolean
unet_model_save_with_extra (const UnetModel *model, const gchar *path,
    const UnetStTensorData *extra, guint n_extra, GHashTable *extra_metadata,
    GError **error)
{
  g_return_val_if_fail (model != NULL && path != NULL, FALSE);
  g_autoptr (GArray) tensors = collect_tensors (model, extra, n_extra, error);
  if (tensors == NULL)
    return FALSE;
  g_autoptr (GHashTable) md = collect_metadata (model, extra_metadata);
  return unet_safetensors_write (path, md, (const UnetStTensorData *) tensors->data,
      tensors->len, error);
}

gboolean
unet_model_save (const UnetModel *model, const gchar *path, GError **error)
{
  return unet_model_save_with_extra (model, path, NULL, 0, NULL, error);
}

GBytes *
unet_model_serialize (const UnetModel *model, GError **error)
{
  g_return_val_if_fail (model != NULL, NULL);
  g_autoptr (GArray) tensors = collect_tensors (model, NULL, 0, error);
  if (tensors == NULL)
    return NULL;
  g_autoptr (GHashTable) md = collect_metadata (model, NULL);
  return unet_safetensors_serialize (md, (const UnetStTensorData *) tensors->data,
      tensors->len, error);
}
