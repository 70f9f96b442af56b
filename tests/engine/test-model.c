/* Engine tests for model.c, safetensors.c and weights.c: geometry (known values
 * and properties), config JSON, model save/load round trips, F16/BF16 loading and
 * every validation error of the loader (UNET_ERROR_MODEL naming the tensor). */
#include "model-private.h"

#include <glib/gstdio.h>
#include <math.h>
#include <string.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static UnetConfig
small_config (gint depth, gint base, UnetPadding padding, gboolean bn)
{
  UnetConfig c;
  unet_config_init_classic (&c);
  c.depth = depth;
  c.base_filters = base;
  c.padding = padding;
  c.batch_norm = bn;
  return c;
}

/* ------------------------------------------------------------ geometry -- */

static void
test_geometry_classic (void)
{
  UnetConfig c;
  unet_config_init_classic (&c);
  g_assert_true (unet_config_validate (&c, NULL));
  /* network.md: D=4 legal 188, 204, ... step 16; 572 -> 388; border 92 */
  g_assert_cmpint (unet_config_output_size (&c, 572), ==, 388);
  g_assert_cmpint (unet_config_border (&c), ==, 92);
  g_assert_cmpint (unet_config_size_step (&c), ==, 16);
  g_assert_cmpint (unet_config_legal_input_at_least (&c, 1), ==, 188);
  g_assert_cmpint (unet_config_legal_input_at_least (&c, 188), ==, 188);
  g_assert_cmpint (unet_config_legal_input_at_least (&c, 189), ==, 204);
  g_assert_cmpint (unet_config_output_size (&c, 188), ==, 4);
  g_assert_cmpint (unet_config_output_size (&c, 204), ==, 20);
  g_assert_cmpint (unet_config_output_size (&c, 187), ==, -1);
  g_assert_cmpint (unet_config_output_size (&c, 190), ==, -1);
  g_assert_cmpint (unet_config_output_size (&c, 172), ==, -1);     /* too small */
  g_assert_cmpint (unet_config_output_size (&c, 0), ==, -1);
  g_assert_cmpint (unet_config_output_size (&c, -572), ==, -1);
  g_assert_cmpint (unet_config_input_for_output (&c, 388), ==, 572);
  g_assert_cmpint (unet_config_input_for_output (&c, 389), ==, 588);
  g_assert_cmpint (unet_config_input_for_output (&c, 1), ==, 188);
  /* 31,030,658 parameters: PyTorch's count for the classic net (test_geometry_torch.py
   * checks every config against PyTorch) */
  g_assert_cmpuint (unet_config_parameter_count (&c), ==, 31030658);
  /* ~301 GFLOP per 572 tile (DESIGN.md) */
  gdouble gf = unet_config_forward_flops (&c, 572, 572) / 1e9;
  g_assert_cmpfloat (fabs (gf - 300.857), <, 0.01);
  g_assert_cmpfloat (unet_config_forward_flops (&c, 572, 571), <, 0.0);

  /* near G_MAXINT: no overflow, -1 */
  g_assert_cmpint (unet_config_legal_input_at_least (&c, G_MAXINT), ==, -1);
  g_assert_cmpint (unet_config_input_for_output (&c, G_MAXINT - 10), ==, -1);
}

/* Brute-force the legality definition of network.md for a config and compare with
 * the engine on every size up to `max`. */
static gint
brute_output (const UnetConfig *c, gint s)
{
  gint shrink = c->padding == UNET_PADDING_VALID ? 4 : 0;
  for (gint i = 0; i < c->depth; i++) {
    s -= shrink;
    if (s <= 0 || s % 2)
      return -1;
    s /= 2;
  }
  s -= shrink;
  if (s < 1)
    return -1;
  for (gint i = 0; i < c->depth; i++) {
    s = 2 * s - shrink;
    if (s < 1)
      return -1;
  }
  return s;
}

static void
test_geometry_properties (void)
{
  for (gint depth = 1; depth <= 6; depth++) {
    for (gint pad = 0; pad <= 1; pad++) {
      UnetConfig c = small_config (depth, 8, pad, FALSE);
      gint step = unet_config_size_step (&c);
      gint border = unet_config_border (&c);
      gint first = -1, prev_out = -1;
      g_assert_cmpint (step, ==, 1 << depth);
      for (gint s = -3; s <= 2000; s++) {
        gint out = unet_config_output_size (&c, s);
        g_assert_cmpint (out, ==, brute_output (&c, s));
        if (out > 0) {
          if (first < 0)
            first = s;
          g_assert_cmpint ((s - first) % step, ==, 0);
          g_assert_cmpint (s - out, ==, 2 * border);
          g_assert_cmpint (out, >, prev_out);
          prev_out = out;
          /* the inverse functions land exactly on legal sizes */
          g_assert_cmpint (unet_config_input_for_output (&c, out), ==, s);
          g_assert_cmpint (unet_config_legal_input_at_least (&c, s), ==, s);
          g_assert_cmpfloat (unet_config_forward_flops (&c, s, s), >, 0.0);
        } else {
          gint next = unet_config_legal_input_at_least (&c, s);
          g_assert_cmpint (next, >, s);
          g_assert_cmpint (unet_config_output_size (&c, next), >, 0);
          for (gint t = MAX (s, 1); t < next; t++)
            g_assert_cmpint (unet_config_output_size (&c, t), <, 0);
        }
      }
      if (pad == UNET_PADDING_SAME) {
        g_assert_cmpint (border, ==, 0);
        g_assert_cmpint (first, ==, step);
      }
    }
  }
}

static void
test_config_validate (void)
{
  UnetConfig c;
  GError *err = NULL;
#define BAD(stmt, needle) do { \
    unet_config_init_classic (&c); stmt; \
    g_assert_false (unet_config_validate (&c, &err)); \
    g_assert_error (err, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT); \
    g_assert_nonnull (strstr (err->message, needle)); \
    g_clear_error (&err); } while (0)
  BAD (c.in_channels = 0, "in_channels");
  BAD (c.in_channels = UNET_MAX_IN_CHANNELS + 1, "in_channels");
  BAD (c.classes = 0, "classes");
  BAD (c.depth = 0, "depth");
  BAD (c.depth = 40, "depth");
  BAD (c.base_filters = 0, "base_filters");
  BAD (c.base_filters = 4096, "base_filters");  /* 4096 << 4 > limit */
  BAD (c.padding = 7, "padding");
  BAD (c.dropout = 1.0, "dropout");
  BAD (c.dropout = NAN, "dropout");
#undef BAD
  unet_config_init_classic (&c);
  c.classes = 1;
  c.in_channels = 3;
  c.dropout = 0.5;
  g_assert_true (unet_config_validate (&c, NULL));
}

static void
test_config_json (void)
{
  UnetConfig c = small_config (3, 16, UNET_PADDING_SAME, TRUE), d;
  c.classes = 3;
  c.in_channels = 3;
  c.dropout = 0.25;
  g_autofree gchar *json = unet_config_to_json (&c);
  g_assert_true (unet_config_from_json (json, &d, NULL));
  g_assert_true (memcmp (&c, &d, sizeof c) == 0);

  /* the contract's example, key order free, batch_norm/dropout optional */
  g_assert_true (unet_config_from_json ("{\"base_filters\":64,\"depth\":4,"
          "\"classes\":2,\"in_channels\":1,\"padding\":\"valid\"}", &d, NULL));
  unet_config_init_classic (&c);
  g_assert_true (memcmp (&c, &d, sizeof c) == 0);

  static const struct
  {
    const gchar *json;
    const gchar *needle;
  } bad[] = {
    {"", "JSON"},
    {"[1]", "object"},
    {"{\"in_channels\":1,\"classes\":2,\"depth\":4,\"base_filters\":64}", "padding"},
    {"{\"in_channels\":1,\"classes\":2,\"depth\":4,\"padding\":\"valid\"}",
        "base_filters"},
    {"{\"in_channels\":1.5,\"classes\":2,\"depth\":4,\"base_filters\":64,"
          "\"padding\":\"valid\"}", "in_channels"},
    {"{\"in_channels\":1,\"classes\":2,\"depth\":4,\"base_filters\":64,"
          "\"padding\":\"full\"}", "padding"},
    {"{\"in_channels\":1,\"classes\":2,\"depth\":4,\"base_filters\":64,"
          "\"padding\":\"valid\",\"batchnorm\":true}", "batchnorm"},
    {"{\"in_channels\":1,\"classes\":2,\"depth\":4,\"base_filters\":64,"
          "\"padding\":\"valid\",\"batch_norm\":1}", "batch_norm"},
    {"{\"in_channels\":1,\"classes\":2,\"depth\":99999999999,\"base_filters\":64,"
          "\"padding\":\"valid\"}", "depth"},
    {"{\"in_channels\":9,\"classes\":2,\"depth\":4,\"base_filters\":64,"
          "\"padding\":\"valid\"}", "in_channels"},
  };
  for (guint i = 0; i < G_N_ELEMENTS (bad); i++) {
    GError *err = NULL;
    g_assert_false (unet_config_from_json (bad[i].json, &d, &err));
    g_assert_error (err, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT);
    if (strstr (err->message, bad[i].needle) == NULL)
      g_error ("case %u: '%s' lacks '%s'", i, err->message, bad[i].needle);
    g_clear_error (&err);
  }
}

/* --------------------------------------------------------------- model -- */

static void
test_model_layout (void)
{
  UnetConfig c = small_config (2, 4, UNET_PADDING_VALID, TRUE);
  g_autoptr (UnetModel) m = unet_model_new (&c, NULL);
  const UnetLayout *l = unet_model_get_layout (m);
  /* per block: 2 convs x (w, b) + 2 bn x 4 = 12; 2 enc + bottom + 2 dec (+ up 2) */
  g_assert_cmpuint (l->n_tensors, ==, 5 * 12 + 2 * 2 + 2);
  g_assert_cmpstr (l->tensors[0].name, ==, "enc.0.conv1.weight");
  g_assert_cmpstr (unet_model_get_tensor_name (m, 2), ==, "enc.0.bn1.weight");
  g_assert_cmpstr (l->tensors[l->n_tensors - 1].name, ==, "head.bias");
  g_assert_cmpint (unet_layout_find (l, "dec.1.up.weight"), ==, 36);
  gsize end = 0;
  for (guint i = 0; i < l->n_tensors; i++) {
    g_assert_cmpuint (l->tensors[i].offset % UNET_TENSOR_ALIGN, ==, 0);
    g_assert_cmpuint (l->tensors[i].offset, >=, end);
    end = l->tensors[i].offset + l->tensors[i].numel;
  }
  g_assert_cmpuint (end, <=, l->slab_numel);
  g_assert_true (((guintptr) unet_model_get_slab (m)) % 64 == 0);

  gint shape[4], nd;
  const gfloat *w = unet_model_peek_tensor (m, "dec.1.up.weight", shape, &nd);
  g_assert_nonnull (w);
  g_assert_cmpint (nd, ==, 4);
  g_assert_cmpint (shape[0], ==, 16);   /* F_2 -> F_1 */
  g_assert_cmpint (shape[1], ==, 8);
  g_assert_cmpint (shape[2], ==, 2);
  g_assert_null (unet_model_peek_tensor (m, "dec.2.up.weight", NULL, NULL));
  const gfloat *var = unet_model_peek_tensor (m, "bottom.bn2.running_var", shape, &nd);
  g_assert_cmpint (nd, ==, 1);
  g_assert_cmpint (shape[0], ==, 16);
  g_assert_cmpfloat (var[15], ==, 1.0f);
  g_assert_cmpfloat (unet_model_peek_tensor (m, "enc.1.bn1.weight", NULL, NULL)[0],
      ==, 1.0f);
  g_assert_cmpfloat (unet_model_peek_tensor (m, "enc.1.bn1.bias", NULL, NULL)[0],
      ==, 0.0f);
}

static void
test_model_init (void)
{
  UnetConfig c = small_config (2, 16, UNET_PADDING_VALID, FALSE);
  g_autoptr (UnetModel) a = unet_model_new (&c, NULL);
  g_autoptr (UnetModel) b = unet_model_new (&c, NULL);
  unet_model_init_weights (a, 7);
  unet_model_init_weights (b, 7);
  const UnetLayout *l = unet_model_get_layout (a);
  g_assert_true (memcmp (unet_model_peek_slab (a), unet_model_peek_slab (b),
          l->slab_numel * 4) == 0);
  unet_model_init_weights (b, 8);
  g_assert_false (memcmp (unet_model_peek_slab (a), unet_model_peek_slab (b),
          l->slab_numel * 4) == 0);

  /* std sqrt(2 / fan_in): enc.1.conv2 has 32*32*9 = 9216 weights, fan_in 288.
   * The sample std of n Gaussians has relative standard error ~1/sqrt(2n) = 0.7%;
   * 5% is > 7 sigma. */
  gint shape[4];
  const gfloat *w = unet_model_peek_tensor (a, "enc.1.conv2.weight", shape, NULL);
  gsize n = 32 * 32 * 9;
  gdouble s = 0, ss = 0;
  for (gsize i = 0; i < n; i++) {
    s += w[i];
    ss += (gdouble) w[i] * w[i];
  }
  gdouble mean = s / n, sd = sqrt (ss / n - mean * mean);
  g_assert_cmpfloat (fabs (sd / sqrt (2.0 / 288) - 1.0), <, 0.05);
  /* mean's standard error is sd / sqrt(n) ~ 0.0008; 0.005 is > 6 sigma */
  g_assert_cmpfloat (fabs (mean), <, 0.005);
  /* up-conv fan-in is its in-channels (F_2 = 64 for dec.1) */
  w = unet_model_peek_tensor (a, "dec.1.up.weight", NULL, NULL);
  n = 64 * 32 * 4;
  s = ss = 0;
  for (gsize i = 0; i < n; i++) {
    s += w[i];
    ss += (gdouble) w[i] * w[i];
  }
  sd = sqrt (ss / n - (s / n) * (s / n));
  g_assert_cmpfloat (fabs (sd / sqrt (2.0 / 64) - 1.0), <, 0.05);
  const gfloat *bias = unet_model_peek_tensor (a, "enc.0.conv1.bias", NULL, NULL);
  for (gint i = 0; i < 16; i++)
    g_assert_cmpfloat (bias[i], ==, 0.0f);

  g_autoptr (UnetModel) cp = unet_model_copy (a, NULL);
  g_assert_true (memcmp (unet_model_peek_slab (a), unet_model_peek_slab (cp),
          l->slab_numel * 4) == 0);
  g_assert_cmpstr (unet_model_get_metadata (cp, "unet.config"), ==,
      unet_model_get_metadata (a, "unet.config"));
}

static void
test_metadata (void)
{
  UnetConfig c = small_config (1, 2, UNET_PADDING_SAME, FALSE);
  g_autoptr (UnetModel) m = unet_model_new (&c, NULL);
  UnetNormalization n;
  g_autofree gchar *cfgjson = unet_config_to_json (&c);
  g_assert_cmpstr (unet_model_get_metadata (m, "unet.config"), ==, cfgjson);
  unet_model_get_normalization (m, &n);
  g_assert_cmpint (n.mode, ==, UNET_NORM_PERCENTILE);
  g_assert_cmpfloat (n.a, ==, 1.0);
  g_assert_cmpfloat (n.b, ==, 99.8);
  unet_model_set_metadata (m, "unet.normalization", "{\"mode\":\"meanstd\",\"mean\":3,"
      "\"std\":2}");
  unet_model_get_normalization (m, &n);
  g_assert_cmpint (n.mode, ==, UNET_NORM_MEAN_STD);
  g_assert_cmpfloat (n.b, ==, 2.0);
  unet_model_set_metadata (m, "unet.normalization", NULL);
  g_assert_null (unet_model_get_metadata (m, "unet.normalization"));
}

static gchar *
tmp_path (const gchar *name)
{
  static gchar *dir = NULL;
  if (dir == NULL)
    dir = g_dir_make_tmp ("unet-model-XXXXXX", NULL);
  return g_build_filename (dir, name, NULL);
}

static void
assert_models_equal (UnetModel *a, UnetModel *b)
{
  g_assert_true (memcmp (unet_model_get_config (a), unet_model_get_config (b),
          sizeof (UnetConfig)) == 0);
  g_assert_cmpuint (unet_model_get_n_tensors (a), ==, unet_model_get_n_tensors (b));
  for (guint i = 0; i < unet_model_get_n_tensors (a); i++) {
    const gchar *name = unet_model_get_tensor_name (a, i);
    gint sa[4], sb[4], na, nb;
    const gfloat *x = unet_model_peek_tensor (a, name, sa, &na);
    const gfloat *y = unet_model_peek_tensor (b, name, sb, &nb);
    g_assert_nonnull (y);
    g_assert_cmpint (na, ==, nb);
    g_assert_true (memcmp (sa, sb, sizeof sa) == 0);
    g_assert_true (memcmp (x, y, sizeof (gfloat) * sa[0] * sa[1] * sa[2] * sa[3]) == 0);
  }
}

static void
test_save_load (void)
{
  for (gint bn = 0; bn <= 1; bn++) {
    UnetConfig c = small_config (3, 4, bn ? UNET_PADDING_SAME : UNET_PADDING_VALID, bn);
    c.classes = bn ? 1 : 3;
    c.in_channels = bn ? 3 : 1;
    g_autoptr (UnetModel) m = unet_model_new (&c, NULL);
    unet_model_init_weights (m, 1234 + bn);
    if (bn) {                   /* non-trivial running stats */
      gfloat *mean = unet_model_get_tensor (m, "dec.0.bn2.running_mean", NULL, NULL);
      gfloat *var = unet_model_get_tensor (m, "dec.0.bn2.running_var", NULL, NULL);
      mean[1] = -0.5f;
      var[2] = 3.0f;
    }
    unet_model_set_metadata (m, "unet.classes", "[\"bg\",\"cell\",\"edge\"]");
    unet_model_set_metadata (m, "unet.training", "{\"iterations\":10}");
    unet_model_set_metadata (m, "user.note", "hello \"quoted\" \xc3\xa9");
    g_autofree gchar *path = tmp_path ("m.safetensors");
    GError *err = NULL;
    g_assert_true (unet_model_save (m, path, &err));
    g_assert_no_error (err);
    g_autoptr (UnetModel) l = unet_model_load (path, &err);
    g_assert_no_error (err);
    assert_models_equal (m, l);
    g_assert_cmpstr (unet_model_get_metadata (l, "user.note"), ==,
        "hello \"quoted\" \xc3\xa9");
    g_assert_cmpstr (unet_model_get_metadata (l, "unet.classes"), ==,
        "[\"bg\",\"cell\",\"edge\"]");

    /* in-memory serialisation is the same bytes as the file */
    g_autoptr (GBytes) bytes = unet_model_serialize (m, NULL);
    gchar *contents;
    gsize len;
    g_assert_true (g_file_get_contents (path, &contents, &len, NULL));
    g_assert_cmpuint (len, ==, g_bytes_get_size (bytes));
    g_assert_true (memcmp (contents, g_bytes_get_data (bytes, NULL), len) == 0);
    g_free (contents);
    /* header length is a multiple of 8 (buffer alignment) */
    const guint8 *p = g_bytes_get_data (bytes, NULL);
    g_assert_cmpuint (p[0] % 8, ==, 0);

    /* no temporary file left next to it */
    g_autofree gchar *dir = g_path_get_dirname (path);
    GDir *d = g_dir_open (dir, 0, NULL);
    const gchar *entry;
    while ((entry = g_dir_read_name (d)) != NULL)
      g_assert_null (strstr (entry, ".tmp-"));
    g_dir_close (d);
    g_unlink (path);
  }
}

static void
test_save_extra (void)
{
  UnetConfig c = small_config (1, 2, UNET_PADDING_VALID, FALSE);
  g_autoptr (UnetModel) m = unet_model_new (&c, NULL);
  unet_model_init_weights (m, 3);
  gfloat mom[5] = { 1, 2, 3, 4, 5 };
  UnetStTensorData extra[] = {
    {"optim.step", 0, {0}, mom},
    {"optim.momentum", 2, {1, 5}, mom},
  };
  g_autoptr (GHashTable) md = g_hash_table_new (g_str_hash, g_str_equal);
  g_hash_table_insert (md, "unet.training", "{\"step\":5}");
  g_hash_table_insert (md, "unet.config", "{\"broken\":1}");   /* ignored */
  g_autofree gchar *path = tmp_path ("ckpt.safetensors");
  GError *err = NULL;
  g_assert_true (unet_model_save_with_extra (m, path, extra, 2, md, &err));
  g_assert_no_error (err);

  g_autoptr (UnetSafetensors) st = unet_safetensors_open (path, &err);
  g_assert_no_error (err);
  const UnetStTensor *t = unet_safetensors_lookup (st, "optim.momentum");
  g_assert_nonnull (t);
  g_assert_cmpint (t->n_dims, ==, 2);
  g_assert_cmpint (t->shape[1], ==, 5);
  gfloat back[5];
  g_assert_true (unet_safetensors_read_f32 (t, back, NULL));
  g_assert_true (memcmp (back, mom, sizeof mom) == 0);
  t = unet_safetensors_lookup (st, "optim.step");
  g_assert_cmpint (t->n_dims, ==, 0);
  g_assert_cmpuint (t->numel, ==, 1);
  g_autoptr (UnetModel) l = unet_model_load_from_safetensors (st, &err);
  g_assert_no_error (err);
  assert_models_equal (m, l);
  g_assert_cmpstr (unet_model_get_metadata (l, "unet.training"), ==, "{\"step\":5}");

  /* a colliding extra name is refused and the file is untouched */
  UnetStTensorData clash = { "head.bias", 1, {2}, mom };
  g_assert_false (unet_model_save_with_extra (m, path, &clash, 1, NULL, &err));
  g_assert_error (err, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT);
  g_clear_error (&err);
  /* an unwritable place is an I/O error */
  g_assert_false (unet_model_save (m, "/nonexistent-dir/x.safetensors", &err));
  g_assert_error (err, UNET_ERROR, UNET_ERROR_IO);
  g_clear_error (&err);
  g_assert_null (unet_model_load ("/nonexistent-dir/x.safetensors", &err));
  g_assert_error (err, UNET_ERROR, UNET_ERROR_IO);
  g_clear_error (&err);
  g_unlink (path);
  /* a directory and a FIFO are refused at once: opening a FIFO used to wait
   * for a writer forever (the test would hang, meson's timeout fails it) */
  g_autofree gchar *dir = g_dir_make_tmp ("unet-model-XXXXXX", NULL);
  g_assert_nonnull (dir);
  g_assert_null (unet_model_load (dir, &err));
  g_assert_error (err, UNET_ERROR, UNET_ERROR_IO);
  g_assert_nonnull (strstr (err->message, "directory"));
  g_clear_error (&err);
  g_autofree gchar *fifo = g_build_filename (dir, "fifo.safetensors", NULL);
  g_assert_cmpint (mkfifo (fifo, 0600), ==, 0);
  g_assert_null (unet_model_load (fifo, &err));
  g_assert_error (err, UNET_ERROR, UNET_ERROR_IO);
  g_assert_nonnull (strstr (err->message, "not a regular file"));
  g_clear_error (&err);
  g_unlink (fifo);
  g_rmdir (dir);
}

/* ------------------------------------------- hand-built files (loader) -- */

/* Assembles a safetensors file: header text given verbatim, then `data`. */
static GBytes *
make_file (const gchar *header, const guint8 *data, gsize data_len)
{
  gsize hlen = strlen (header);
  GByteArray *a = g_byte_array_new ();
  guint8 len_le[8];
  for (gint i = 0; i < 8; i++)
    len_le[i] = (guint8) ((guint64) hlen >> (8 * i));
  g_byte_array_append (a, len_le, 8);
  g_byte_array_append (a, (const guint8 *) header, (guint) hlen);
  if (data_len)
    g_byte_array_append (a, data, (guint) data_len);
  return g_byte_array_free_to_bytes (a);
}

/* A complete valid header for the smallest model (depth 1, base 1, 1 class) in
 * the given dtype, tensors contiguous in canonical order; `dtype_bytes` per
 * element. Returns the header and sets *data_len. */
#define TINY_CFG "{\\\"in_channels\\\":1,\\\"classes\\\":1,\\\"depth\\\":1," \
    "\\\"base_filters\\\":1,\\\"padding\\\":\\\"same\\\",\\\"batch_norm\\\":false," \
    "\\\"dropout\\\":0.0}"

static gchar *
tiny_header (const gchar *dtype, gsize esize, const gchar *extra_members,
    gsize *data_len)
{
  UnetConfig c = small_config (1, 1, UNET_PADDING_SAME, FALSE);
  c.classes = 1;
  g_autoptr (UnetLayout) l = unet_layout_new (&c, NULL);
  GString *h = g_string_new ("{\"__metadata__\":{\"unet.config\":\"" TINY_CFG "\"}");
  gsize off = 0;
  for (guint i = 0; i < l->n_tensors; i++) {
    const UnetTensorInfo *t = &l->tensors[i];
    g_string_append_printf (h, ",\"%s\":{\"dtype\":\"%s\",\"shape\":[", t->name, dtype);
    for (gint d = 0; d < t->n_dims; d++)
      g_string_append_printf (h, "%s%d", d ? "," : "", t->shape[d]);
    g_string_append_printf (h, "],\"data_offsets\":[%" G_GSIZE_FORMAT ",%"
        G_GSIZE_FORMAT "]}", off, off + t->numel * esize);
    off += t->numel * esize;
  }
  if (extra_members)
    g_string_append (h, extra_members);
  g_string_append_c (h, '}');
  *data_len = off;
  return g_string_free (h, FALSE);
}

static void
test_f16_bf16 (void)
{
  /* F16 1.0 = 0x3c00, -2.0 = 0xc000, 2^-24 = 0x0001 (subnormal), 65504 = 0x7bff;
   * BF16 1.0 = 0x3f80, -2.0 = 0xc000, 3.140625 = 0x4049 */
  static const guint16 f16[] = { 0x3c00, 0xc000, 0x0001, 0x7bff, 0x3555 };
  static const gfloat f16v[] = { 1.0f, -2.0f, 5.9604644775390625e-08f, 65504.0f,
    0.333251953125f
  };
  static const guint16 bf16[] = { 0x3f80, 0xc000, 0x4049, 0x0000, 0x3eab };
  static const gfloat bf16v[] = { 1.0f, -2.0f, 3.140625f, 0.0f, 0.333984375f };

  for (gint kind = 0; kind < 2; kind++) {
    gsize len;
    g_autofree gchar *h = tiny_header (kind ? "BF16" : "F16", 2, NULL, &len);
    g_autofree guint8 *data = g_malloc (len);
    const guint16 *src = kind ? bf16 : f16;
    for (gsize i = 0; i < len / 2; i++) {
      data[2 * i] = src[i % 5] & 0xff;
      data[2 * i + 1] = src[i % 5] >> 8;
    }
    g_autoptr (GBytes) file = make_file (h, data, len);
    GError *err = NULL;
    g_autoptr (UnetModel) m = unet_model_load_from_data (g_bytes_get_data (file, NULL),
        g_bytes_get_size (file), &err);
    g_assert_no_error (err);
    /* element k of the concatenated data is src[k % 5] */
    gsize k = 0;
    const UnetLayout *l = unet_model_get_layout (m);
    for (guint i = 0; i < l->n_tensors; i++) {
      const gfloat *x = unet_model_peek_slab (m) + l->tensors[i].offset;
      for (gsize j = 0; j < l->tensors[i].numel; j++, k++)
        g_assert_cmpfloat (x[j], ==, (kind ? bf16v : f16v)[k % 5]);
    }
  }
}

static void
expect_model_error (const gchar *what, GBytes *file, const gchar *needle)
{
  GError *err = NULL;
  UnetModel *m = unet_model_load_from_data (g_bytes_get_data (file, NULL),
      g_bytes_get_size (file), &err);
  if (m != NULL)
    g_error ("%s: loaded", what);
  g_assert_error (err, UNET_ERROR, UNET_ERROR_MODEL);
  if (strstr (err->message, needle) == NULL)
    g_error ("%s: message '%s' lacks '%s'", what, err->message, needle);
  g_test_message ("%s: %s", what, err->message);
  g_clear_error (&err);
}

static GBytes *
tiny_file (const gchar *header)
{
  gsize len;
  g_autofree gchar *h = tiny_header ("F32", 4, NULL, &len);
  g_autofree guint8 *zeros = g_malloc0 (len + 64);
  return make_file (header ? header : h, zeros, len);
}

static GBytes *
replace_in_header (const gchar *from, const gchar *to, gssize extra_data)
{
  gsize len;
  g_autofree gchar *h = tiny_header ("F32", 4, NULL, &len);
  g_assert_nonnull (strstr (h, from));
  g_auto (GStrv) parts = g_strsplit (h, from, 2);
  g_autofree gchar *h2 = g_strconcat (parts[0], to, parts[1], NULL);
  g_autofree guint8 *zeros = g_malloc0 (len + 64);
  return make_file (h2, zeros, (gsize) ((gssize) len + extra_data));
}

static void
test_load_errors (void)
{
  gsize len;
  g_autofree gchar *good = tiny_header ("F32", 4, NULL, &len);
  g_autoptr (GBytes) ok = tiny_file (NULL);
  const guint8 *okp = g_bytes_get_data (ok, NULL);
  gsize oks = g_bytes_get_size (ok);
  GError *err = NULL;

  /* sanity: the unmodified tiny file loads, with extras that are ignored */
  g_autoptr (UnetModel) m = unet_model_load_from_data (okp, oks, &err);
  g_assert_no_error (err);
  g_assert_nonnull (m);
  {
    gsize l2;
    g_autofree gchar *h = tiny_header ("F32", 4,
        ",\"enc.0.bn1.num_batches_tracked\":{\"dtype\":\"I64\",\"shape\":[],"
        "\"data_offsets\":[DATA_END,DATA_END8]},\"optim.x\":{\"dtype\":\"F32\","
        "\"shape\":[1],\"data_offsets\":[DATA_END8,DATA_END12]}", &l2);
    g_autofree gchar *e0 = g_strdup_printf ("%" G_GSIZE_FORMAT, l2);
    g_autofree gchar *e8 = g_strdup_printf ("%" G_GSIZE_FORMAT, l2 + 8);
    g_autofree gchar *e12 = g_strdup_printf ("%" G_GSIZE_FORMAT, l2 + 12);
    GString *s = g_string_new (h);
    g_string_replace (s, "DATA_END12", e12, 0);
    g_string_replace (s, "DATA_END8", e8, 0);
    g_string_replace (s, "DATA_END", e0, 0);
    g_autofree guint8 *zeros = g_malloc0 (l2 + 12);
    g_autoptr (GBytes) f = make_file (s->str, zeros, l2 + 12);
    g_string_free (s, TRUE);
    g_autoptr (UnetModel) m2 = unet_model_load_from_data (g_bytes_get_data (f, NULL),
        g_bytes_get_size (f), &err);
    g_assert_no_error (err);
    g_assert_nonnull (m2);
  }

  /* truncated: every prefix of a valid file is rejected, never crashes */
  for (gsize cut = 0; cut < oks; cut += (cut < 64 ? 1 : 7)) {
    UnetModel *t = unet_model_load_from_data (okp, cut, &err);
    g_assert_null (t);
    g_assert_error (err, UNET_ERROR, UNET_ERROR_MODEL);
    g_clear_error (&err);
  }
  {
    g_autoptr (GBytes) trunc = g_bytes_new (okp, oks - 4);
    expect_model_error ("truncated data", trunc, "head.bias");
  }
  {
    guint8 huge[16] = { 0, 0, 0, 0x10, 0, 0, 0, 0, '{', '}' };  /* 256 MiB */
    g_autoptr (GBytes) f = g_bytes_new (huge, sizeof huge);
    expect_model_error ("header too long", f, "exceeds");
    huge[3] = 0;
    huge[0] = 100;              /* 100 bytes, beyond the file */
    g_autoptr (GBytes) f2 = g_bytes_new (huge, sizeof huge);
    expect_model_error ("header beyond file", f2, "exceeds the file");
  }
  {
    g_autoptr (GBytes) f = make_file ("{\"a\":", NULL, 0);
    expect_model_error ("bad JSON", f, "JSON");
    g_autoptr (GBytes) f2 = make_file ("[1,2]   ", NULL, 0);
    expect_model_error ("not an object", f2, "object");
    GString *deep = g_string_new ("{\"x\":");
    for (gint i = 0; i < 100000; i++)
      g_string_append_c (deep, '[');
    g_autoptr (GBytes) f3 = make_file (deep->str, NULL, 0);
    g_string_free (deep, TRUE);
    expect_model_error ("deep nesting", f3, "deeper");
  }

  /* per-tensor violations, each named */
  struct
  {
    const gchar *what, *from, *to;
    gssize extra;
    const gchar *needle;
  } cases[] = {
    {"overlapping offsets", "\"data_offsets\":[468,472]",
        "\"data_offsets\":[0,4]", 0, "head.bias"},
    {"out-of-range offsets", "\"enc.0.conv1.bias\":{\"dtype\":\"F32\",\"shape\":[1],"
          "\"data_offsets\":[36,40]", "\"enc.0.conv1.bias\":{\"dtype\":\"F32\","
          "\"shape\":[1],\"data_offsets\":[999996,1000000]", 0, "enc.0.conv1.bias"},
    {"size mismatch", "\"enc.0.conv1.bias\":{\"dtype\":\"F32\",\"shape\":[1],"
          "\"data_offsets\":[36,40]", "\"enc.0.conv1.bias\":{\"dtype\":\"F32\","
          "\"shape\":[1],\"data_offsets\":[36,44]", 0, "enc.0.conv1.bias"},
    {"wrong shape", "\"enc.0.conv1.weight\":{\"dtype\":\"F32\",\"shape\":[1,1,3,3]",
          "\"enc.0.conv1.weight\":{\"dtype\":\"F32\",\"shape\":[1,1,9,1]", 0,
        "enc.0.conv1.weight"},
    {"wrong rank", "\"head.bias\":{\"dtype\":\"F32\",\"shape\":[1]",
          "\"head.bias\":{\"dtype\":\"F32\",\"shape\":[1,1]", 0, "head.bias"},
    {"rank 5", "\"head.bias\":{\"dtype\":\"F32\",\"shape\":[1]",
          "\"head.bias\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1]", 0, "head.bias"},
    {"zero dim", "\"head.bias\":{\"dtype\":\"F32\",\"shape\":[1]",
          "\"head.bias\":{\"dtype\":\"F32\",\"shape\":[0]", 0, "head.bias"},
    {"negative dim", "\"head.bias\":{\"dtype\":\"F32\",\"shape\":[1]",
          "\"head.bias\":{\"dtype\":\"F32\",\"shape\":[-1]", 0, "head.bias"},
    {"overflowing shape", "\"head.bias\":{\"dtype\":\"F32\",\"shape\":[1]",
          "\"head.bias\":{\"dtype\":\"F32\",\"shape\":[2147483647,2147483647,"
          "2147483647,2147483647]", 0, "head.bias"},
    {"unknown dtype", "\"head.bias\":{\"dtype\":\"F32\"",
          "\"head.bias\":{\"dtype\":\"F64\"", 0, "head.bias"},
    {"I64 weight", "\"head.bias\":{\"dtype\":\"F32\"",
          "\"head.bias\":{\"dtype\":\"I64\"", 0, "head.bias"},
    {"non-string dtype", "\"head.bias\":{\"dtype\":\"F32\"",
          "\"head.bias\":{\"dtype\":32", 0, "head.bias"},
    {"unknown field", "\"head.bias\":{\"dtype\":\"F32\"",
          "\"head.bias\":{\"offset\":1,\"dtype\":\"F32\"", 0, "head.bias"},
    {"missing tensor", "\"head.bias\":", "\"optim.head.bias\":", 0,
        "'head.bias'"},
    {"renamed tensor", "\"head.bias\":", "\"head.biases\":", 0, "head.biases"},
    {"unknown tensor", "\"__metadata__\"", "\"enc.7.conv1.weight\":{\"dtype\":\"F32\","
          "\"shape\":[1],\"data_offsets\":[SIZE,SIZE4]},\"__metadata__\"", 4,
        "enc.7.conv1.weight"},
    {"no config", "\"unet.config\"", "\"unet.konfig\"", 0, "unet.config"},
    {"bad config", "\\\"depth\\\":1", "\\\"depth\\\":0", 0, "unet.config"},
    {"config not JSON", "\"unet.config\":\"{", "\"unet.config\":\"{{", 0,
        "unet.config"},
    {"metadata not string", "{\"__metadata__\":{", "{\"__metadata__\":{\"n\":1,", 0,
        "\"n\""},
    {"bad normalization", "{\"__metadata__\":{",
          "{\"__metadata__\":{\"unet.normalization\":\"{\\\"mode\\\":\\\"range\\\","
          "\\\"min\\\":1,\\\"max\\\":1}\",", 0, "unet.normalization"},
    {"bad classes", "{\"__metadata__\":{",
          "{\"__metadata__\":{\"unet.classes\":\"[1,2]\",", 0, "unet.classes"},
    {"bad training", "{\"__metadata__\":{",
          "{\"__metadata__\":{\"unet.training\":\"[]\",", 0, "unet.training"},
    /* what the reference reader (strict JSON, contiguous data) refuses and
     * json-glib alone accepted */
    {"hexadecimal number", "\"data_offsets\":[0,36]", "\"data_offsets\":[0x0,36]",
        0, "hexadecimal"},
    {"leading zero", "\"data_offsets\":[0,36]", "\"data_offsets\":[00,36]", 0,
        "leading zero"},
    {"plus sign", "\"data_offsets\":[0,36]", "\"data_offsets\":[0,+36]", 0,
        "not a JSON value"},
    {"single-quoted key", "\"head.bias\":", "'head.bias':", 0, "string"},
    {"comment", "\"head.bias\":", "/**/\"head.bias\":", 0, "string"},
    {"duplicate tensor", "\"head.bias\":{\"dtype\":\"F32\",\"shape\":[1],"
          "\"data_offsets\":[468,472]}", "\"head.bias\":{\"dtype\":\"F32\","
          "\"shape\":[1],\"data_offsets\":[468,472]},\"head.bias\":{\"dtype\":"
          "\"F32\",\"shape\":[1],\"data_offsets\":[468,472]}", 0, "duplicate"},
    {"duplicate by escape", "\"head.bias\":{\"dtype\":\"F32\",\"shape\":[1],"
          "\"data_offsets\":[468,472]}", "\"head.bias\":{\"dtype\":\"F32\","
          "\"shape\":[1],\"data_offsets\":[468,472]},\"head.bi\\u0061s\":{"
          "\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[472,476]}", 4,
        "duplicate"},
    {"duplicate field", "\"head.bias\":{\"dtype\":\"F32\"",
          "\"head.bias\":{\"dtype\":\"F16\",\"dtype\":\"F32\"", 0, "duplicate"},
    {"duplicate metadata", "{\"__metadata__\":{",
          "{\"__metadata__\":{\"unet.config\":\"{}\",", 0, "duplicate"},
    {"escaped NUL in a name", "\"head.bias\":", "\"head.bias\\u0000x\":", 0,
        "NUL"},
    {"lone surrogate", "\"head.bias\":", "\"head.bias\\ud800\":", 0, "surrogate"},
    {"control character", "\"head.bias\":", "\"head.\tbias\":", 0, "control"},
    {"NaN literal", "\"data_offsets\":[0,36]", "\"data_offsets\":[NaN,36]", 0,
        "not a JSON value"},
    {"gap before a tensor", "\"data_offsets\":[468,472]", "\"data_offsets\":[472,476]",
        4, "head.bias"},
    {"trailing data", "\"data_offsets\":[468,472]", "\"data_offsets\":[468,472]", 4,
        "after the data of the last tensor"},
    {"data not from 0", "\"data_offsets\":[0,36]", "\"data_offsets\":[4,40]", 4,
        "enc.0.conv1.weight"},
  };
  /* text after the header object (a second object), and a trailing comma */
  {
    g_autofree gchar *h2 = g_strconcat (good, "{}", NULL);
    g_autofree guint8 *zeros = g_malloc0 (len);
    g_autoptr (GBytes) f = make_file (h2, zeros, len);
    expect_model_error ("object after the header", f, "text after");
    g_autofree gchar *h3 = g_strdup (good);
    h3[strlen (h3) - 1] = ',';
    g_autofree gchar *h4 = g_strconcat (h3, "}", NULL);
    g_autoptr (GBytes) f2 = make_file (h4, zeros, len);
    expect_model_error ("trailing comma", f2, "string");
    /* whitespace padding (what writers add for alignment) is fine */
    g_autofree gchar *h5 = g_strconcat (good, " \n\t\r   ", NULL);
    g_autoptr (GBytes) f3 = make_file (h5, zeros, len);
    g_autoptr (UnetModel) padded = unet_model_load_from_data (g_bytes_get_data (f3,
            NULL), g_bytes_get_size (f3), &err);
    g_assert_no_error (err);
  }
  for (guint i = 0; i < G_N_ELEMENTS (cases); i++) {
    g_autofree gchar *to = NULL;
    GString *t = g_string_new (cases[i].to);
    g_autofree gchar *sz = g_strdup_printf ("%" G_GSIZE_FORMAT, len);
    g_autofree gchar *sz4 = g_strdup_printf ("%" G_GSIZE_FORMAT, len + 4);
    g_string_replace (t, "SIZE4", sz4, 0);
    g_string_replace (t, "SIZE", sz, 0);
    to = g_string_free (t, FALSE);
    g_autoptr (GBytes) f = replace_in_header (cases[i].from, to, cases[i].extra);
    expect_model_error (cases[i].what, f, cases[i].needle);
  }

  /* non-finite weight and negative running variance */
  {
    gsize l2;
    g_autofree gchar *h = tiny_header ("F32", 4, NULL, &l2);
    g_autofree gfloat *data = g_new0 (gfloat, l2 / 4);
    data[3] = NAN;
    g_autoptr (GBytes) f = make_file (h, (guint8 *) data, l2);
    expect_model_error ("NaN weight", f, "enc.0.conv1.weight");
  }
  {
    UnetConfig c = small_config (1, 1, UNET_PADDING_SAME, TRUE);
    g_autoptr (UnetModel) bm = unet_model_new (&c, NULL);
    unet_model_get_tensor (bm, "bottom.bn2.running_var", NULL, NULL)[1] = -1.0f;
    g_autoptr (GBytes) f = unet_model_serialize (bm, NULL);
    expect_model_error ("negative variance", f, "bottom.bn2.running_var");
  }
  (void) good;
}

/* A save that runs out of space (RLIMIT_FSIZE stands in for a full disk: the
 * write fails with EFBIG as it would with ENOSPC) is an I/O error, leaves the
 * previous file as it was and no temporary file beside it. */
static void
test_save_disk_full (void)
{
  UnetConfig c = small_config (2, 8, UNET_PADDING_VALID, FALSE);
  g_autoptr (UnetModel) m = unet_model_new (&c, NULL);
  g_autofree gchar *dir = g_dir_make_tmp ("unet-full-XXXXXX", NULL);
  g_autofree gchar *path = g_build_filename (dir, "m.safetensors", NULL);
  const gchar *old = "previous contents";
  struct rlimit saved, small = { 4096, 4096 };
  GError *err = NULL;

  unet_model_init_weights (m, 1);
  g_assert_true (g_file_set_contents (path, old, -1, NULL));
  signal (SIGXFSZ, SIG_IGN);
  g_assert_cmpint (getrlimit (RLIMIT_FSIZE, &saved), ==, 0);
  small.rlim_max = saved.rlim_max;
  g_assert_cmpint (setrlimit (RLIMIT_FSIZE, &small), ==, 0);
  gboolean ok = unet_model_save (m, path, &err);
  g_assert_cmpint (setrlimit (RLIMIT_FSIZE, &saved), ==, 0);
  g_assert_false (ok);
  g_assert_error (err, UNET_ERROR, UNET_ERROR_IO);
  g_test_message ("%s", err->message);
  g_clear_error (&err);

  gchar *contents = NULL;
  g_assert_true (g_file_get_contents (path, &contents, NULL, NULL));
  g_assert_cmpstr (contents, ==, old);
  g_free (contents);
  GDir *d = g_dir_open (dir, 0, NULL);
  const gchar *name;
  guint n = 0;
  while ((name = g_dir_read_name (d)) != NULL)
    n++;
  g_dir_close (d);
  g_assert_cmpuint (n, ==, 1);
  g_unlink (path);
  g_rmdir (dir);
}

/* SIGKILL during saves: the model file is always the previous version or the
 * new one, complete (temporary name, fsync, rename). The temporaries of killed
 * saves are left (named NAME.tmp-XXXXXX); they are removed here. */
static void
test_save_killed (void)
{
  UnetConfig c = small_config (3, 16, UNET_PADDING_VALID, FALSE);
  g_autoptr (UnetModel) a = unet_model_new (&c, NULL);
  g_autoptr (UnetModel) b = unet_model_new (&c, NULL);
  g_autofree gchar *dir = g_dir_make_tmp ("unet-kill-XXXXXX", NULL);
  g_autofree gchar *path = g_build_filename (dir, "m.safetensors", NULL);
  GRand *rng = g_rand_new_with_seed (14);

  unet_model_init_weights (a, 1);
  unet_model_init_weights (b, 2);
  g_autoptr (GBytes) va = unet_model_serialize (a, NULL);
  g_autoptr (GBytes) vb = unet_model_serialize (b, NULL);
  g_assert_true (unet_model_save (a, path, NULL));
  for (gint round = 0; round < 6; round++) {
    pid_t pid = fork ();
    g_assert_cmpint (pid, >=, 0);
    if (pid == 0) {
      for (guint i = 0;; i++)
        unet_model_save (i % 2 ? a : b, path, NULL);
    }
    g_usleep (g_rand_int_range (rng, 2000, 60000));
    kill (pid, SIGKILL);
    waitpid (pid, NULL, 0);
    GError *err = NULL;
    g_autoptr (UnetModel) m = unet_model_load (path, &err);
    g_assert_no_error (err);
    g_autoptr (GBytes) got = unet_model_serialize (m, NULL);
    g_assert_true (g_bytes_equal (got, va) || g_bytes_equal (got, vb));
  }
  g_rand_free (rng);
  GDir *d = g_dir_open (dir, 0, NULL);
  const gchar *name;
  while ((name = g_dir_read_name (d)) != NULL) {
    g_autofree gchar *f = g_build_filename (dir, name, NULL);
    g_unlink (f);
  }
  g_dir_close (d);
  g_rmdir (dir);
}

/* ------------------------------------------- rewritten while loading -- */

/* Another process rewrites the model file in place (open with O_TRUNC, write,
 * close: what `cp` does) while it is being loaded. The loader used to map the
 * file: when it shrank under the mapping, the next access was a SIGBUS that
 * killed the process. Every load must now give the old file, the new one or an
 * error — never a signal, never a mixture. */
typedef struct
{
  gchar *path;
  GBytes *versions[2];
  gint stop;
  guint rewrites;
} Rewriter;

static gpointer
rewriter_thread (gpointer data)
{
  Rewriter *rw = data;
  for (guint i = 0; !g_atomic_int_get (&rw->stop); i++) {
    gsize size;
    const guint8 *p = g_bytes_get_data (rw->versions[i % 2], &size);
    int fd = g_open (rw->path, O_WRONLY | O_TRUNC | O_CLOEXEC, 0);
    g_assert_cmpint (fd, >=, 0);
    /* every third rewrite stops half-way, as a killed writer would */
    gsize end = i % 3 == 2 ? size / 2 : size;
    for (gsize off = 0; off < end;) {
      gssize n = write (fd, p + off, MIN (end - off, 65536));
      g_assert_cmpint (n, >, 0);
      off += (gsize) n;
    }
    close (fd);
    rw->rewrites++;
    g_usleep (500);             /* let some loads finish between rewrites */
  }
  return NULL;
}

static void
test_load_while_rewritten (void)
{
  /* ~1.9 MB and ~1.1 MB: a load takes long enough to be overtaken */
  UnetConfig ca = small_config (3, 16, UNET_PADDING_VALID, FALSE);
  UnetConfig cb = small_config (3, 12, UNET_PADDING_VALID, FALSE);
  g_autoptr (UnetModel) a = unet_model_new (&ca, NULL);
  g_autoptr (UnetModel) b = unet_model_new (&cb, NULL);
  unet_model_init_weights (a, 1);
  unet_model_init_weights (b, 2);
  Rewriter rw = { tmp_path ("rewritten.safetensors"),
    { unet_model_serialize (a, NULL), unet_model_serialize (b, NULL) }, 0, 0 };
  g_assert_true (g_file_set_contents (rw.path,
          g_bytes_get_data (rw.versions[0], NULL),
          (gssize) g_bytes_get_size (rw.versions[0]), NULL));
  GThread *t = g_thread_new ("rewriter", rewriter_thread, &rw);
  guint loaded = 0, failed = 0;
  gint64 end = g_get_monotonic_time () + 2 * G_USEC_PER_SEC;

  while (g_get_monotonic_time () < end) {
    GError *err = NULL;
    g_autoptr (UnetModel) m = unet_model_load (rw.path, &err);
    if (m == NULL) {
      g_assert_true (g_error_matches (err, UNET_ERROR, UNET_ERROR_IO)
          || g_error_matches (err, UNET_ERROR, UNET_ERROR_MODEL));
      g_clear_error (&err);
      failed++;
      continue;
    }
    g_autoptr (GBytes) again = unet_model_serialize (m, NULL);
    g_assert_true (g_bytes_equal (again, rw.versions[0])
        || g_bytes_equal (again, rw.versions[1]));
    loaded++;
  }
  g_atomic_int_set (&rw.stop, 1);
  g_thread_join (t);
  g_test_message ("%u rewrites, %u loads, %u load errors", rw.rewrites, loaded,
      failed);
  g_assert_cmpuint (rw.rewrites, >, 10);
  g_assert_cmpuint (loaded + failed, >, 10);
  /* the writer gone, the last complete version loads */
  g_assert_true (g_file_set_contents (rw.path,
          g_bytes_get_data (rw.versions[1], NULL),
          (gssize) g_bytes_get_size (rw.versions[1]), NULL));
  GError *err = NULL;
  g_autoptr (UnetModel) last = unet_model_load (rw.path, &err);
  g_assert_no_error (err);
  g_autoptr (GBytes) last_bytes = unet_model_serialize (last, NULL);
  g_assert_true (g_bytes_equal (last_bytes, rw.versions[1]));
  g_unlink (rw.path);
  g_free (rw.path);
  g_bytes_unref (rw.versions[0]);
  g_bytes_unref (rw.versions[1]);
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  g_test_add_func ("/model/geometry/classic", test_geometry_classic);
  g_test_add_func ("/model/geometry/properties", test_geometry_properties);
  g_test_add_func ("/model/config/validate", test_config_validate);
  g_test_add_func ("/model/config/json", test_config_json);
  g_test_add_func ("/model/layout", test_model_layout);
  g_test_add_func ("/model/init", test_model_init);
  g_test_add_func ("/model/metadata", test_metadata);
  g_test_add_func ("/model/save-load", test_save_load);
  g_test_add_func ("/model/save-extra", test_save_extra);
  g_test_add_func ("/model/f16-bf16", test_f16_bf16);
  g_test_add_func ("/model/load-errors", test_load_errors);
  g_test_add_func ("/model/load-while-rewritten", test_load_while_rewritten);
  g_test_add_func ("/model/save-disk-full", test_save_disk_full);
  g_test_add_func ("/model/save-killed", test_save_killed);
  return g_test_run ();
}
