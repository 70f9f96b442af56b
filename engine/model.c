/* gst-unet engine — model config, geometry, parameter layout and the UnetModel.
 *
 * Owns: config validation and JSON, the overlap-tile geometry (legal input sizes,
 * output size, border) for any depth, parameter count and forward FLOPs, the
 * parameter slab layout (engine/model-private.h), and UnetModel itself (one slab,
 * named tensors, string metadata, the paper's weight initialisation).
 * safetensors load/save is in weights.c.
 *
 * Geometry (network.md). Valid padding: every 3x3 conv shrinks by 2, so a block
 * shrinks by 4; an input s is legal iff walking down every pre-pool size (s - 4,
 * then (s - 4) / 2 - 4, ...) is even and > 0 and every size on the way back up
 * (bottom - 4, then each level 2x - 4) stays >= 1. Legal sizes are therefore
 * s = 2^D * b + 4 * (2^D - 1) for b >= b_min, and output = input - 2 * border.
 * Same padding: legal iff s > 0 and s % 2^D == 0; output = input.
 */
#include "model-private.h"

#include <json-glib/json-glib.h>
#include <math.h>
#include <string.h>

/* Bounds that keep every size and count far from overflow and every allocation
 * finite; they are far above any network anyone trains. */
#define MAX_DEPTH 16
#define MAX_FILTERS 16384       /* F_depth = base_filters << depth */
#define MAX_CLASSES 4096

/* ------------------------------------------------------------- config -- */

void
unet_config_init_classic (UnetConfig *cfg)
{
  cfg->in_channels = 1;
  cfg->classes = 2;
  cfg->depth = 4;
  cfg->base_filters = 64;
  cfg->padding = UNET_PADDING_VALID;
  cfg->batch_norm = FALSE;
  cfg->dropout = 0.0;
}

gboolean
unet_config_validate (const UnetConfig *cfg, GError **error)
{
  if (cfg == NULL) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT, "no config given");
    return FALSE;
  }
  if (cfg->in_channels < 1 || cfg->in_channels > UNET_MAX_IN_CHANNELS) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "in_channels must be 1..%d (gray 1, RGB 3, or fluorescence channels), "
        "not %d", UNET_MAX_IN_CHANNELS, cfg->in_channels);
    return FALSE;
  }
  if (cfg->classes < 1 || cfg->classes > MAX_CLASSES) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "classes must be 1 (sigmoid) or 2..%d (softmax), not %d", MAX_CLASSES,
        cfg->classes);
    return FALSE;
  }
  if (cfg->depth < 1 || cfg->depth > MAX_DEPTH) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "depth must be 1..%d, not %d", MAX_DEPTH, cfg->depth);
    return FALSE;
  }
  if (cfg->base_filters < 1 || cfg->base_filters > MAX_FILTERS
      || ((gint64) cfg->base_filters << cfg->depth) > MAX_FILTERS) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "base_filters must be >= 1 with base_filters * 2^depth <= %d "
        "(base_filters %d, depth %d)", MAX_FILTERS, cfg->base_filters, cfg->depth);
    return FALSE;
  }
  if (cfg->padding != UNET_PADDING_VALID && cfg->padding != UNET_PADDING_SAME) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "padding must be valid or same (got %d)", (gint) cfg->padding);
    return FALSE;
  }
  if (!(cfg->dropout >= 0.0 && cfg->dropout < 1.0)) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "dropout must be in [0, 1), not %g", cfg->dropout);
    return FALSE;
  }
  return TRUE;
}

/* ----------------------------------------------------------- geometry -- */

static gboolean
config_ok (const UnetConfig *cfg)
{
  return unet_config_validate (cfg, NULL);
}

gint
unet_config_size_step (const UnetConfig *cfg)
{
  g_return_val_if_fail (config_ok (cfg), -1);
  return 1 << cfg->depth;
}

static gint
valid_output_size (gint depth, gint s)
{
  if (s <= 0)
    return -1;
  for (gint i = 0; i < depth; i++) {
    s -= 4;                     /* the level's block */
    if (s <= 0 || s % 2 != 0)
      return -1;
    s /= 2;                     /* max pool 2x2 */
  }
  s -= 4;                       /* bottom block */
  if (s < 1)
    return -1;
  for (gint i = 0; i < depth; i++) {
    s = 2 * s - 4;              /* up-conv doubles, the block shrinks by 4 */
    if (s < 1)
      return -1;
  }
  return s;
}

gint
unet_config_output_size (const UnetConfig *cfg, gint input_size)
{
  g_return_val_if_fail (config_ok (cfg), -1);
  if (cfg->padding == UNET_PADDING_SAME) {
    if (input_size <= 0 || input_size % (1 << cfg->depth) != 0)
      return -1;
    return input_size;
  }
  return valid_output_size (cfg->depth, input_size);
}

/* Smallest legal input of a valid-padded net: s = 2^D b + 4 (2^D - 1) with the
 * smallest bottom input b whose way back up stays >= 1. b_min is at most 8 for any
 * depth (b = 8 gives bottom output 4 and 2 * 4 - 4 = 4 at every level). */
static gint
valid_min_input (gint depth)
{
  gint step = 1 << depth;
  for (gint b = 1; b <= 8; b++) {
    gint s = step * b + 4 * (step - 1);
    if (valid_output_size (depth, s) > 0)
      return s;
  }
  g_assert_not_reached ();
  return -1;
}

gint
unet_config_legal_input_at_least (const UnetConfig *cfg, gint min_input)
{
  g_return_val_if_fail (config_ok (cfg), -1);
  gint64 step = 1 << cfg->depth;
  gint64 s;

  if (cfg->padding == UNET_PADDING_SAME) {
    gint64 m = MAX (min_input, 1);
    s = (m + step - 1) / step * step;
  } else {
    gint64 s0 = valid_min_input (cfg->depth);
    if (min_input <= s0)
      s = s0;
    else
      s = s0 + (((gint64) min_input - s0 + step - 1) / step) * step;
  }
  return s > G_MAXINT ? -1 : (gint) s;
}

gint
unet_config_border (const UnetConfig *cfg)
{
  g_return_val_if_fail (config_ok (cfg), -1);
  if (cfg->padding == UNET_PADDING_SAME)
    return 0;
  gint s0 = valid_min_input (cfg->depth);
  return (s0 - valid_output_size (cfg->depth, s0)) / 2;
}

gint
unet_config_input_for_output (const UnetConfig *cfg, gint min_output)
{
  g_return_val_if_fail (config_ok (cfg), -1);
  gint64 want = (gint64) MAX (min_output, 1) + 2 * (gint64) unet_config_border (cfg);
  if (want > G_MAXINT)
    return -1;
  return unet_config_legal_input_at_least (cfg, (gint) want);
}

static gdouble
conv_flops (gint cin, gint cout, gint k, gint64 oh, gint64 ow)
{
  return 2.0 * cin * cout * k * k * (gdouble) oh * (gdouble) ow;
}

gdouble
unet_config_forward_flops (const UnetConfig *cfg, gint in_h, gint in_w)
{
  g_return_val_if_fail (config_ok (cfg), -1.0);
  if (unet_config_output_size (cfg, in_h) < 0
      || unet_config_output_size (cfg, in_w) < 0)
    return -1.0;

  gint shrink = cfg->padding == UNET_PADDING_VALID ? 2 : 0;
  gint64 h = in_h, w = in_w;
  gint cin = cfg->in_channels;
  gdouble total = 0.0;

  for (gint i = 0; i <= cfg->depth; i++) {      /* encoder levels + bottom */
    gint f = cfg->base_filters << i;
    h -= shrink;
    w -= shrink;
    total += conv_flops (cin, f, 3, h, w);
    h -= shrink;
    w -= shrink;
    total += conv_flops (f, f, 3, h, w);
    cin = f;
    if (i < cfg->depth) {
      h /= 2;
      w /= 2;
    }
  }
  for (gint i = cfg->depth - 1; i >= 0; i--) {
    gint f = cfg->base_filters << i;
    /* ConvTranspose2d 2x2 stride 2: one tap per output pixel and input channel */
    h *= 2;
    w *= 2;
    total += 2.0 * cin * f * (gdouble) h * (gdouble) w;
    h -= shrink;
    w -= shrink;
    total += conv_flops (2 * f, f, 3, h, w);
    h -= shrink;
    w -= shrink;
    total += conv_flops (f, f, 3, h, w);
    cin = f;
  }
  total += conv_flops (cfg->base_filters, cfg->classes, 1, h, w);
  return total;
}

/* --------------------------------------------------------- config JSON -- */

gchar *
unet_config_to_json (const UnetConfig *cfg)
{
  g_autoptr (JsonBuilder) b = json_builder_new ();
  json_builder_begin_object (b);
  json_builder_set_member_name (b, "in_channels");
  json_builder_add_int_value (b, cfg->in_channels);
  json_builder_set_member_name (b, "classes");
  json_builder_add_int_value (b, cfg->classes);
  json_builder_set_member_name (b, "depth");
  json_builder_add_int_value (b, cfg->depth);
  json_builder_set_member_name (b, "base_filters");
  json_builder_add_int_value (b, cfg->base_filters);
  json_builder_set_member_name (b, "padding");
  json_builder_add_string_value (b,
      cfg->padding == UNET_PADDING_SAME ? "same" : "valid");
  json_builder_set_member_name (b, "batch_norm");
  json_builder_add_boolean_value (b, cfg->batch_norm);
  json_builder_set_member_name (b, "dropout");
  json_builder_add_double_value (b, cfg->dropout);
  json_builder_end_object (b);

  g_autoptr (JsonNode) root = json_builder_get_root (b);
  g_autoptr (JsonGenerator) gen = json_generator_new ();
  json_generator_set_root (gen, root);
  return json_generator_to_data (gen, NULL);
}

static gboolean
json_get_int (JsonNode *node, const gchar *key, gint min, gint max, gint *out,
    GError **error)
{
  if (!JSON_NODE_HOLDS_VALUE (node) || json_node_get_value_type (node) != G_TYPE_INT64) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "\"%s\" must be an integer", key);
    return FALSE;
  }
  gint64 v = json_node_get_int (node);
  if (v < min || v > max) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "\"%s\" = %" G_GINT64_FORMAT " is out of range %d..%d", key, v, min, max);
    return FALSE;
  }
  *out = (gint) v;
  return TRUE;
}

gboolean
unet_config_from_json (const gchar *json, UnetConfig *cfg, GError **error)
{
  g_autoptr (JsonParser) parser = json_parser_new ();
  g_autoptr (GError) err = NULL;
  enum
  { HAVE_IN = 1, HAVE_CLASSES = 2, HAVE_DEPTH = 4, HAVE_BASE = 8, HAVE_PAD = 16 };
  guint have = 0;
  UnetConfig c;

  /* strict JSON, as the file's header (json-glib alone is lenient) */
  if (json != NULL && !unet_json_check (json, -1, &err)) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "config is not valid JSON: %s", err->message);
    return FALSE;
  }
  if (json == NULL || !json_parser_load_from_data (parser, json, -1, &err)) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "config is not valid JSON: %s", err ? err->message : "no text");
    return FALSE;
  }
  JsonNode *root = json_parser_get_root (parser);
  if (root == NULL || !JSON_NODE_HOLDS_OBJECT (root)) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "config must be a JSON object");
    return FALSE;
  }

  c.batch_norm = FALSE;
  c.dropout = 0.0;
  c.in_channels = c.classes = c.depth = c.base_filters = 0;
  c.padding = UNET_PADDING_VALID;

  JsonObject *obj = json_node_get_object (root);
  JsonObjectIter iter;
  const gchar *key;
  JsonNode *node;
  json_object_iter_init (&iter, obj);
  while (json_object_iter_next (&iter, &key, &node)) {
    if (g_str_equal (key, "in_channels")) {
      if (!json_get_int (node, key, G_MININT, G_MAXINT, &c.in_channels, error))
        return FALSE;
      have |= HAVE_IN;
    } else if (g_str_equal (key, "classes")) {
      if (!json_get_int (node, key, G_MININT, G_MAXINT, &c.classes, error))
        return FALSE;
      have |= HAVE_CLASSES;
    } else if (g_str_equal (key, "depth")) {
      if (!json_get_int (node, key, G_MININT, G_MAXINT, &c.depth, error))
        return FALSE;
      have |= HAVE_DEPTH;
    } else if (g_str_equal (key, "base_filters")) {
      if (!json_get_int (node, key, G_MININT, G_MAXINT, &c.base_filters, error))
        return FALSE;
      have |= HAVE_BASE;
    } else if (g_str_equal (key, "padding")) {
      const gchar *s = JSON_NODE_HOLDS_VALUE (node)
          && json_node_get_value_type (node) == G_TYPE_STRING ?
          json_node_get_string (node) : NULL;
      if (g_strcmp0 (s, "valid") == 0)
        c.padding = UNET_PADDING_VALID;
      else if (g_strcmp0 (s, "same") == 0)
        c.padding = UNET_PADDING_SAME;
      else {
        g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
            "\"padding\" must be \"valid\" or \"same\"");
        return FALSE;
      }
      have |= HAVE_PAD;
    } else if (g_str_equal (key, "batch_norm")) {
      if (!JSON_NODE_HOLDS_VALUE (node)
          || json_node_get_value_type (node) != G_TYPE_BOOLEAN) {
        g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
            "\"batch_norm\" must be true or false");
        return FALSE;
      }
      c.batch_norm = json_node_get_boolean (node);
    } else if (g_str_equal (key, "dropout")) {
      GType t = JSON_NODE_HOLDS_VALUE (node) ? json_node_get_value_type (node) : 0;
      if (t != G_TYPE_DOUBLE && t != G_TYPE_INT64) {
        g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
            "\"dropout\" must be a number");
        return FALSE;
      }
      c.dropout = json_node_get_double (node);
    } else {
      /* A misspelt key would otherwise silently fall back to a default and
       * surface later as a confusing shape error. */
      g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
          "unknown config key \"%s\" (known: in_channels, classes, depth, "
          "base_filters, padding, batch_norm, dropout)", key);
      return FALSE;
    }
  }

  static const struct
  {
    guint bit;
    const gchar *name;
  } required[] = {
    {HAVE_IN, "in_channels"}, {HAVE_CLASSES, "classes"}, {HAVE_DEPTH, "depth"},
    {HAVE_BASE, "base_filters"}, {HAVE_PAD, "padding"},
  };
  for (guint i = 0; i < G_N_ELEMENTS (required); i++) {
    if (!(have & required[i].bit)) {
      g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
          "config lacks \"%s\"", required[i].name);
      return FALSE;
    }
  }
  if (!unet_config_validate (&c, error))
    return FALSE;
  *cfg = c;
  return TRUE;
}

/* ------------------------------------------------------------- layout -- */

typedef struct
{
  GArray *tensors;              /* UnetTensorInfo */
  gsize offset;
} LayoutBuilder;

static void
layout_add (LayoutBuilder *lb, UnetTensorKind kind, gint n_dims, const gint *shape,
    gint fan_in, const gchar *fmt, ...) G_GNUC_PRINTF (6, 7);

static void
layout_add (LayoutBuilder *lb, UnetTensorKind kind, gint n_dims, const gint *shape,
    gint fan_in, const gchar *fmt, ...)
{
  UnetTensorInfo t = { 0 };
  va_list ap;

  va_start (ap, fmt);
  t.name = g_strdup_vprintf (fmt, ap);
  va_end (ap);
  t.kind = kind;
  t.trainable = kind != UNET_TENSOR_BN_MEAN && kind != UNET_TENSOR_BN_VAR;
  t.n_dims = n_dims;
  t.numel = 1;
  for (gint d = 0; d < 4; d++) {
    t.shape[d] = d < n_dims ? shape[d] : 1;
    t.numel *= (gsize) t.shape[d];
  }
  t.fan_in = fan_in;
  t.offset = lb->offset;
  lb->offset += (t.numel + UNET_TENSOR_ALIGN - 1) / UNET_TENSOR_ALIGN * UNET_TENSOR_ALIGN;
  g_array_append_val (lb->tensors, t);
}

/* conv1 (+bn1), conv2 (+bn2) of the block called `prefix`. */
static void
layout_block (LayoutBuilder *lb, const UnetConfig *cfg, const gchar *prefix,
    gint cin, gint cout)
{
  for (gint c = 1; c <= 2; c++) {
    gint in = c == 1 ? cin : cout;
    gint wshape[4] = { cout, in, 3, 3 };
    layout_add (lb, UNET_TENSOR_CONV_WEIGHT, 4, wshape, in * 9, "%s.conv%d.weight",
        prefix, c);
    layout_add (lb, UNET_TENSOR_CONV_BIAS, 1, &cout, 0, "%s.conv%d.bias", prefix, c);
    if (cfg->batch_norm) {
      layout_add (lb, UNET_TENSOR_BN_WEIGHT, 1, &cout, 0, "%s.bn%d.weight", prefix, c);
      layout_add (lb, UNET_TENSOR_BN_BIAS, 1, &cout, 0, "%s.bn%d.bias", prefix, c);
      layout_add (lb, UNET_TENSOR_BN_MEAN, 1, &cout, 0, "%s.bn%d.running_mean",
          prefix, c);
      layout_add (lb, UNET_TENSOR_BN_VAR, 1, &cout, 0, "%s.bn%d.running_var",
          prefix, c);
    }
  }
}

UnetLayout *
unet_layout_new (const UnetConfig *cfg, GError **error)
{
  if (!unet_config_validate (cfg, error))
    return NULL;

  LayoutBuilder lb = { g_array_new (FALSE, TRUE, sizeof (UnetTensorInfo)), 0 };
  gint cin = cfg->in_channels;
  for (gint i = 0; i < cfg->depth; i++) {
    gchar prefix[32];
    g_snprintf (prefix, sizeof prefix, "enc.%d", i);
    layout_block (&lb, cfg, prefix, cin, cfg->base_filters << i);
    cin = cfg->base_filters << i;
  }
  layout_block (&lb, cfg, "bottom", cin, cfg->base_filters << cfg->depth);
  for (gint i = cfg->depth - 1; i >= 0; i--) {
    gint f = cfg->base_filters << i, fu = cfg->base_filters << (i + 1);
    gint ushape[4] = { fu, f, 2, 2 };
    gchar prefix[32];
    /* Each output pixel of a 2x2 stride-2 transposed conv sees exactly one tap per
     * input channel: fan-in = in-channels (the paper's "incoming nodes"). */
    layout_add (&lb, UNET_TENSOR_UP_WEIGHT, 4, ushape, fu, "dec.%d.up.weight", i);
    layout_add (&lb, UNET_TENSOR_UP_BIAS, 1, &f, 0, "dec.%d.up.bias", i);
    g_snprintf (prefix, sizeof prefix, "dec.%d", i);
    layout_block (&lb, cfg, prefix, 2 * f, f);
  }
  gint hshape[4] = { cfg->classes, cfg->base_filters, 1, 1 };
  layout_add (&lb, UNET_TENSOR_CONV_WEIGHT, 4, hshape, cfg->base_filters, "head.weight");
  layout_add (&lb, UNET_TENSOR_CONV_BIAS, 1, &cfg->classes, 0, "head.bias");

  UnetLayout *layout = g_new0 (UnetLayout, 1);
  layout->n_tensors = lb.tensors->len;
  layout->slab_numel = lb.offset;
  layout->tensors = (UnetTensorInfo *) g_array_free (lb.tensors, FALSE);
  return layout;
}

void
unet_layout_free (UnetLayout *layout)
{
  if (layout == NULL)
    return;
  for (guint i = 0; i < layout->n_tensors; i++)
    g_free ((gchar *) layout->tensors[i].name);
  g_free (layout->tensors);
  g_free (layout);
}

gint
unet_layout_find (const UnetLayout *layout, const gchar *name)
{
  for (guint i = 0; i < layout->n_tensors; i++)
    if (g_str_equal (layout->tensors[i].name, name))
      return (gint) i;
  return -1;
}

guint64
unet_config_parameter_count (const UnetConfig *cfg)
{
  g_autoptr (UnetLayout) layout = unet_layout_new (cfg, NULL);
  guint64 n = 0;
  g_return_val_if_fail (layout != NULL, 0);
  for (guint i = 0; i < layout->n_tensors; i++)
    if (layout->tensors[i].trainable)
      n += layout->tensors[i].numel;
  return n;
}

/* --------------------------------------------------------------- slab -- */

gfloat *
unet_slab_alloc0 (gsize numel, GError **error)
{
  gpointer p = NULL;
  gsize bytes = MAX (numel, 1) * sizeof (gfloat);

  if (numel > G_MAXSIZE / sizeof (gfloat) || posix_memalign (&p, 64, bytes) != 0) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_OUT_OF_MEMORY,
        "cannot allocate %" G_GSIZE_FORMAT " parameters (%.1f MiB)", numel,
        numel * 4.0 / (1024.0 * 1024.0));
    return NULL;
  }
  memset (p, 0, bytes);
  return p;
}

void
unet_slab_free (gfloat *slab)
{
  free (slab);
}

/* -------------------------------------------------------------- model -- */

struct _UnetModel
{
  UnetConfig config;
  UnetLayout *layout;
  gfloat *slab;
  GHashTable *index;            /* name -> GUINT_TO_POINTER (index + 1) */
  GHashTable *metadata;         /* gchar* -> gchar* */
};

static void
model_set_unit_bn (UnetModel *m)
{
  for (guint i = 0; i < m->layout->n_tensors; i++) {
    const UnetTensorInfo *t = &m->layout->tensors[i];
    if (t->kind == UNET_TENSOR_BN_WEIGHT || t->kind == UNET_TENSOR_BN_VAR) {
      gfloat *d = m->slab + t->offset;
      for (gsize j = 0; j < t->numel; j++)
        d[j] = 1.0f;
    }
  }
}

static UnetModel *
model_alloc (const UnetConfig *cfg, GError **error)
{
  g_autoptr (UnetLayout) layout = unet_layout_new (cfg, error);
  if (layout == NULL)
    return NULL;
  gfloat *slab = unet_slab_alloc0 (layout->slab_numel, error);
  if (slab == NULL)
    return NULL;

  UnetModel *m = g_new0 (UnetModel, 1);
  m->config = *cfg;
  m->layout = g_steal_pointer (&layout);
  m->slab = slab;
  m->index = g_hash_table_new (g_str_hash, g_str_equal);
  for (guint i = 0; i < m->layout->n_tensors; i++)
    g_hash_table_insert (m->index, (gpointer) m->layout->tensors[i].name,
        GUINT_TO_POINTER (i + 1));
  m->metadata = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, g_free);
  g_hash_table_insert (m->metadata, g_strdup ("unet.config"),
      unet_config_to_json (cfg));
  return m;
}

UnetModel *
unet_model_new (const UnetConfig *cfg, GError **error)
{
  UnetModel *m = model_alloc (cfg, error);
  if (m != NULL)
    model_set_unit_bn (m);
  return m;
}

UnetModel *
unet_model_copy (const UnetModel *model, GError **error)
{
  g_return_val_if_fail (model != NULL, NULL);
  UnetModel *m = model_alloc (&model->config, error);
  if (m == NULL)
    return NULL;
  memcpy (m->slab, model->slab, model->layout->slab_numel * sizeof (gfloat));
  GHashTableIter it;
  gpointer k, v;
  g_hash_table_iter_init (&it, model->metadata);
  while (g_hash_table_iter_next (&it, &k, &v))
    g_hash_table_replace (m->metadata, g_strdup (k), g_strdup (v));
  return m;
}

void
unet_model_free (UnetModel *model)
{
  if (model == NULL)
    return;
  g_hash_table_unref (model->index);
  g_hash_table_unref (model->metadata);
  unet_slab_free (model->slab);
  unet_layout_free (model->layout);
  g_free (model);
}

/* Weight initialisation uses its own generator so a seed gives the same weights
 * whatever the GLib version: splitmix64 (Steele, Lea, Flood 2014) as the uniform
 * source, Box-Muller for Gaussians (computed in double, rounded to float). Each
 * tensor draws from its own stream, seeded from the seed and the FNV-1a hash of
 * its name, so e.g. a 2-class and a 3-class model with the same seed share their
 * encoder weights. */
static guint64
splitmix64 (guint64 *state)
{
  guint64 z = (*state += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

static guint64
fnv1a64 (const gchar *s)
{
  guint64 h = 0xcbf29ce484222325ULL;
  for (; *s; s++) {
    h ^= (guchar) * s;
    h *= 0x100000001b3ULL;
  }
  return h;
}

static void
fill_gaussian (gfloat *d, gsize n, gdouble std, guint64 stream_seed)
{
  guint64 state = stream_seed;
  for (gsize j = 0; j < n; j += 2) {
    /* u1 in (0, 1] so log (u1) is finite; u2 in [0, 1) */
    gdouble u1 = ((splitmix64 (&state) >> 11) + 1) * (1.0 / 9007199254740992.0);
    gdouble u2 = (splitmix64 (&state) >> 11) * (1.0 / 9007199254740992.0);
    gdouble r = sqrt (-2.0 * log (u1)) * std;
    d[j] = (gfloat) (r * cos (2.0 * G_PI * u2));
    if (j + 1 < n)
      d[j + 1] = (gfloat) (r * sin (2.0 * G_PI * u2));
  }
}

void
unet_model_init_weights (UnetModel *model, guint64 seed)
{
  g_return_if_fail (model != NULL);
  for (guint i = 0; i < model->layout->n_tensors; i++) {
    const UnetTensorInfo *t = &model->layout->tensors[i];
    gfloat *d = model->slab + t->offset;
    switch (t->kind) {
      case UNET_TENSOR_CONV_WEIGHT:
      case UNET_TENSOR_UP_WEIGHT:{
        guint64 s = seed ^ fnv1a64 (t->name);
        fill_gaussian (d, t->numel, sqrt (2.0 / t->fan_in), splitmix64 (&s));
        break;
      }
      case UNET_TENSOR_BN_WEIGHT:
      case UNET_TENSOR_BN_VAR:
        for (gsize j = 0; j < t->numel; j++)
          d[j] = 1.0f;
        break;
      case UNET_TENSOR_CONV_BIAS:
      case UNET_TENSOR_UP_BIAS:
      case UNET_TENSOR_BN_BIAS:
      case UNET_TENSOR_BN_MEAN:
        memset (d, 0, t->numel * sizeof (gfloat));
        break;
    }
  }
}

const UnetConfig *
unet_model_get_config (const UnetModel *model)
{
  g_return_val_if_fail (model != NULL, NULL);
  return &model->config;
}

guint
unet_model_get_n_tensors (const UnetModel *model)
{
  g_return_val_if_fail (model != NULL, 0);
  return model->layout->n_tensors;
}

const gchar *
unet_model_get_tensor_name (const UnetModel *model, guint index)
{
  g_return_val_if_fail (model != NULL, NULL);
  g_return_val_if_fail (index < model->layout->n_tensors, NULL);
  return model->layout->tensors[index].name;
}

const gfloat *
unet_model_peek_tensor (const UnetModel *model, const gchar *name, gint shape[4],
    gint *n_dims)
{
  g_return_val_if_fail (model != NULL && name != NULL, NULL);
  guint idx = GPOINTER_TO_UINT (g_hash_table_lookup (model->index, name));
  if (idx == 0)
    return NULL;
  const UnetTensorInfo *t = &model->layout->tensors[idx - 1];
  if (shape != NULL)
    memcpy (shape, t->shape, sizeof t->shape);
  if (n_dims != NULL)
    *n_dims = t->n_dims;
  return model->slab + t->offset;
}

gfloat *
unet_model_get_tensor (UnetModel *model, const gchar *name, gint shape[4],
    gint *n_dims)
{
  return (gfloat *) unet_model_peek_tensor (model, name, shape, n_dims);
}

const gchar *
unet_model_get_metadata (const UnetModel *model, const gchar *key)
{
  g_return_val_if_fail (model != NULL && key != NULL, NULL);
  return g_hash_table_lookup (model->metadata, key);
}

void
unet_model_set_metadata (UnetModel *model, const gchar *key, const gchar *value)
{
  g_return_if_fail (model != NULL && key != NULL);
  /* the config entry is derived from the config; shapes depend on it */
  g_return_if_fail (!g_str_equal (key, "unet.config"));
  if (value == NULL)
    g_hash_table_remove (model->metadata, key);
  else
    g_hash_table_replace (model->metadata, g_strdup (key), g_strdup (value));
}

void
unet_model_get_normalization (const UnetModel *model, UnetNormalization *norm)
{
  g_return_if_fail (model != NULL && norm != NULL);
  const gchar *json = g_hash_table_lookup (model->metadata, "unet.normalization");
  if (json == NULL || !unet_normalization_from_json (json, norm, NULL))
    unet_normalization_init_default (norm);
}

/* ----------------------------------------------------- private access -- */

const UnetLayout *
unet_model_get_layout (const UnetModel *model)
{
  return model->layout;
}

gfloat *
unet_model_get_slab (UnetModel *model)
{
  return model->slab;
}

const gfloat *
unet_model_peek_slab (const UnetModel *model)
{
  return model->slab;
}

gfloat *
unet_model_tensor_data (UnetModel *model, guint index)
{
  g_return_val_if_fail (index < model->layout->n_tensors, NULL);
  return model->slab + model->layout->tensors[index].offset;
}

GHashTable *
unet_model_get_metadata_table (const UnetModel *model)
{
  return model->metadata;
}

gboolean
unet_slab_all_finite (const gfloat *v, gsize n)
{
  /* x - x is 0 for finite x, NaN otherwise */
  gfloat acc = 0.0f;
  for (gsize i = 0; i < n; i++)
    acc += v[i] - v[i];
  return acc == 0.0f;
}
