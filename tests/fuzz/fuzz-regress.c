/* Runs the fuzz target's entry point (fuzz_model_load.c) in every build, without
 * libFuzzer: over the checked-in corpus (files or directories on the command
 * line) and over deterministic mutations of small valid models made here —
 * every truncation, bytes of the header overwritten with JSON-significant and
 * random values, header-length fields from 0 to huge, random garbage. Any crash,
 * sanitizer report or abort() of the oracle fails the test. */
#include "model-private.h"

#include <stdio.h>
#include <string.h>

int LLVMFuzzerTestOneInput (const guint8 *data, size_t size);

static guint64 n_inputs;

static void
run (const guint8 *data, gsize size)
{
  /* a private copy, so an overread is caught by ASan at the exact size */
  guint8 *copy = g_memdup2 (data, size ? size : 1);
  LLVMFuzzerTestOneInput (copy, size);
  g_free (copy);
  n_inputs++;
}

static void
run_path (const gchar *path)
{
  if (g_file_test (path, G_FILE_TEST_IS_DIR)) {
    GDir *dir = g_dir_open (path, 0, NULL);
    const gchar *name;
    g_assert_nonnull (dir);
    while ((name = g_dir_read_name (dir)) != NULL) {
      g_autofree gchar *child = g_build_filename (path, name, NULL);
      run_path (child);
    }
    g_dir_close (dir);
    return;
  }
  gchar *contents;
  gsize len;
  g_assert_true (g_file_get_contents (path, &contents, &len, NULL));
  run ((const guint8 *) contents, len);
  g_free (contents);
}

static void
mutate (GBytes *valid, GRand *rng)
{
  gsize size;
  const guint8 *base = g_bytes_get_data (valid, &size);
  guint64 hlen = 0;
  for (gint i = 7; i >= 0; i--)
    hlen = (hlen << 8) | base[i];
  g_autofree guint8 *buf = g_malloc (size + 16);

  /* the valid file itself must load (checks the oracle too) */
  run (base, size);

  /* every truncation */
  for (gsize cut = 0; cut < size; cut++)
    run (base, cut);

  /* every header byte replaced by JSON-significant characters */
  static const guint8 subst[] = { 0, '"', '}', '-', '9', 0xff };
  for (gsize pos = 8; pos < 8 + hlen; pos++) {
    for (guint s = 0; s < G_N_ELEMENTS (subst); s++) {
      memcpy (buf, base, size);
      buf[pos] = subst[s];
      run (buf, size);
    }
  }

  /* header length field variants */
  static const guint64 lens[] = { 0, 1, 2, 7, 8, 100, G_MAXUINT32, G_MAXUINT64,
    100u * 1024u * 1024u, 100u * 1024u * 1024u + 1
  };
  for (guint i = 0; i < G_N_ELEMENTS (lens) + 4; i++) {
    guint64 l = i < G_N_ELEMENTS (lens) ? lens[i] : hlen + i - G_N_ELEMENTS (lens) - 2;
    memcpy (buf, base, size);
    for (gint b = 0; b < 8; b++)
      buf[b] = (guint8) (l >> (8 * b));
    run (buf, size);
  }

  /* random multi-byte mutations anywhere, random garbage */
  for (gint trial = 0; trial < 1500; trial++) {
    memcpy (buf, base, size);
    gint flips = g_rand_int_range (rng, 1, 6);
    for (gint f = 0; f < flips; f++)
      buf[g_rand_int_range (rng, 0, (gint32) size)] = (guint8) g_rand_int (rng);
    run (buf, g_rand_boolean (rng) ? size : (gsize) g_rand_int_range (rng, 0,
            (gint32) size + 1));
  }
  for (gint trial = 0; trial < 200; trial++) {
    gsize n = (gsize) g_rand_int_range (rng, 0, (gint32) size);
    for (gsize j = 0; j < n; j++)
      buf[j] = (guint8) g_rand_int (rng);
    run (buf, n);
  }
}

int
main (int argc, char **argv)
{
  for (gint i = 1; i < argc; i++)
    run_path (argv[i]);
  guint64 from_corpus = n_inputs;

  GRand *rng = g_rand_new_with_seed (20260101);
  for (gint bn = 0; bn <= 1; bn++) {
    UnetConfig c;
    unet_config_init_classic (&c);
    c.depth = 1;
    c.base_filters = 1;
    c.classes = bn ? 1 : 2;
    c.batch_norm = bn;
    c.padding = bn ? UNET_PADDING_SAME : UNET_PADDING_VALID;
    g_autoptr (UnetModel) m = unet_model_new (&c, NULL);
    unet_model_init_weights (m, 5);
    unet_model_set_metadata (m, "unet.normalization",
        "{\"mode\":\"percentile\",\"low\":1,\"high\":99}");
    unet_model_set_metadata (m, "unet.classes", "[\"a\"]");
    g_autoptr (GBytes) valid = unet_model_serialize (m, NULL);
    mutate (valid, rng);
  }
  g_rand_free (rng);
  printf ("%" G_GUINT64_FORMAT " inputs (%" G_GUINT64_FORMAT " from the corpus), "
      "no crash\n", n_inputs, from_corpus);
  return 0;
}
