/* Runs the TIFF fuzz target's entry point (fuzz_tiff_read.c) in every build,
 * without libFuzzer: over seed files (files or directories on the command line,
 * written by make_tiff_corpus.py) and deterministic mutations of each seed —
 * truncations, bytes of the header and first directory overwritten with 0, 0x80
 * and 0xff (counts, types, offsets, sizes), and random multi-byte
 * changes anywhere. Any crash, sanitizer report, hang or abort() of the oracle
 * fails the test. */
#include <glib.h>
#include <glib/gstdio.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerInitialize (int *argc, char ***argv);
int LLVMFuzzerTestOneInput (const guint8 *data, size_t size);

static guint64 n_inputs;

static void
run (const guint8 *data, gsize size)
{
  LLVMFuzzerTestOneInput (data, size);
  n_inputs++;
}

static void
mutate (const guint8 *base, gsize size, GRand *rng, gint trials)
{
  g_autofree guint8 *buf = g_malloc (size + 1);
  static const guint8 subst[] = { 0x00, 0x80, 0xff };
  gsize head = MIN (size, 256);

  run (base, size);
  /* truncations: every 8th byte of the header area, then every 97th */
  for (gsize cut = 0; cut < size; cut += cut < head ? 8 : 97)
    run (base, cut);
  /* the first bytes (header, first directory) with significant values */
  for (gsize pos = 0; pos < head; pos += 11) {
    for (guint s = 0; s < G_N_ELEMENTS (subst); s++) {
      memcpy (buf, base, size);
      buf[pos] = subst[s];
      run (buf, size);
    }
  }
  /* random multi-byte changes anywhere, mostly near the start and the end
   * (where writers put directories) */
  for (gint t = 0; t < trials; t++) {
    memcpy (buf, base, size);
    gint n = g_rand_int_range (rng, 1, 6);
    for (gint k = 0; k < n; k++) {
      gsize pos;
      switch (g_rand_int_range (rng, 0, 3)) {
        case 0:
          pos = (gsize) g_rand_int_range (rng, 0, (gint32) head);
          break;
        case 1:
          pos = size - 1 - (gsize) g_rand_int_range (rng, 0, (gint32) MIN (size, 512));
          break;
        default:
          pos = (gsize) g_rand_int_range (rng, 0, (gint32) size);
          break;
      }
      buf[pos] = (guint8) g_rand_int (rng);
    }
    run (buf, size);
  }
}

static gint
compare_names (gconstpointer a, gconstpointer b)
{
  return strcmp (*(const gchar * const *) a, *(const gchar * const *) b);
}

static void
run_path (const gchar *path, GRand *rng, gint trials)
{
  if (g_file_test (path, G_FILE_TEST_IS_DIR)) {
    GDir *dir = g_dir_open (path, 0, NULL);
    GPtrArray *names = g_ptr_array_new_with_free_func (g_free);
    const gchar *name;
    g_assert_nonnull (dir);
    while ((name = g_dir_read_name (dir)) != NULL)
      g_ptr_array_add (names, g_build_filename (path, name, NULL));
    g_dir_close (dir);
    /* sorted: the mutations depend on the order the generator is used in */
    g_ptr_array_sort (names, compare_names);
    for (guint i = 0; i < names->len; i++)
      run_path (g_ptr_array_index (names, i), rng, trials);
    g_ptr_array_unref (names);
    return;
  }
  gchar *contents;
  gsize len;
  g_assert_true (g_file_get_contents (path, &contents, &len, NULL));
  guint64 before = n_inputs;
  if (len > 0)
    mutate ((const guint8 *) contents, len, rng, trials);
  else
    run ((const guint8 *) contents, 0);
  printf ("%s: %" G_GUINT64_FORMAT " inputs\n", path, n_inputs - before);
  fflush (stdout);
  g_free (contents);
}

/* Writes the seeds with `python make_tiff_corpus.py DIR` into a new temporary
 * directory; NULL on failure. */
static gchar *
generate_seeds (const gchar *python, const gchar *script)
{
  g_autoptr (GError) err = NULL;
  gchar *dir = g_dir_make_tmp ("tiff-seeds-XXXXXX", &err);
  gint status = -1;

  if (dir == NULL) {
    fprintf (stderr, "cannot make a temporary directory: %s\n", err->message);
    return NULL;
  }
  const gchar *args[] = { python, script, dir, NULL };
  if (!g_spawn_sync (NULL, (gchar **) args, NULL, G_SPAWN_CHILD_INHERITS_STDIN,
          NULL, NULL, NULL, NULL, &status, &err)
      || !g_spawn_check_wait_status (status, &err)) {
    fprintf (stderr, "%s %s failed: %s\n", python, script, err->message);
    g_free (dir);
    return NULL;
  }
  return dir;
}

static void
remove_dir (const gchar *dir)
{
  GDir *d = g_dir_open (dir, 0, NULL);
  const gchar *name;
  while (d && (name = g_dir_read_name (d)) != NULL) {
    g_autofree gchar *f = g_build_filename (dir, name, NULL);
    g_unlink (f);
  }
  if (d)
    g_dir_close (d);
  g_rmdir (dir);
}

/* fuzz-tiff-regress FILE_OR_DIR...
 * fuzz-tiff-regress --generate PYTHON make_tiff_corpus.py (the test: seeds
 * written into a temporary directory, removed afterwards) */
int
main (int argc, char **argv)
{
  /* FUZZ_TRIALS: random mutations per seed (default 30) */
  const gchar *env = g_getenv ("FUZZ_TRIALS");
  gint trials = env ? atoi (env) : 30;
  GRand *rng = g_rand_new_with_seed (20261206);
  gchar *seeds = NULL;

  LLVMFuzzerInitialize (&argc, &argv);
  if (argc == 4 && g_str_equal (argv[1], "--generate")) {
    seeds = generate_seeds (argv[2], argv[3]);
    if (seeds == NULL)
      return 1;
    run_path (seeds, rng, trials);
    remove_dir (seeds);
    g_free (seeds);
  } else {
    for (gint i = 1; i < argc; i++)
      run_path (argv[i], rng, trials);
  }
  g_rand_free (rng);
  printf ("%" G_GUINT64_FORMAT " inputs, no crash, hang or bad frame\n", n_inputs);
  return n_inputs > 0 ? 0 : 1;
}
