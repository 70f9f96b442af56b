/* gst-unet engine — the CPU backend's per-machine cache of convolution verdicts.
 *
 * The default algorithm choice (cpu-backend.c, cpu_conv_wino) runs a check the
 * first time a convolution shape is seen: oneDNN's Winograd kernel configured for
 * several thread counts, compared bit for bit with each other and with the direct
 * kernel. The verdict is a function of the shape, the oneDNN build and the CPU, so
 * it is kept on disk and later processes on the machine skip the check (seconds
 * for a large tile): $UNET_CACHE_DIR (default: the user's cache directory, e.g.
 * ~/.cache/gst-unet) / cpu-conv-verdicts.txt.
 *
 * The file's first line names what its verdicts hold for (the check's format
 * version, oneDNN's version and ISA, the CPU model and core count); a file naming
 * anything else is ignored and replaced. Then one line per shape: verdict, tab,
 * key. It is rewritten whole through a temporary file and a rename, so a reader
 * never sees half a file; two processes writing at once lose at most each other's
 * new lines (a cache: they are computed again). Any error reading or writing it
 * only costs the check again (logged with g_debug). $UNET_CPU_CONV_CACHE=0 turns
 * it off. Callers hold cpu_choice_lock.
 */
#include "config.h"

#include "cpu-private.h"

#include <errno.h>
#include <glib/gstdio.h>
#include <string.h>

/* Bump when the check or the meaning of a verdict changes. */
#define CONV_CACHE_FORMAT 1
#define CONV_CACHE_FILE "cpu-conv-verdicts.txt"

static gboolean loaded;
static GHashTable *verdicts;            /* key -> GINT_TO_POINTER (verdict) */
static gchar *scope;

static gboolean
cache_enabled (void)
{
  return g_strcmp0 (g_getenv ("UNET_CPU_CONV_CACHE"), "0") != 0;
}

static gchar *
cache_dir (void)
{
  const gchar *dir = g_getenv ("UNET_CACHE_DIR");
  if (dir != NULL && dir[0] != '\0')
    return g_strdup (dir);
  return g_build_filename (g_get_user_cache_dir (), "gst-unet", NULL);
}

/* The CPU's model name (/proc/cpuinfo on Linux), or "unknown". */
static gchar *
cpu_model (void)
{
  g_autofree gchar *info = NULL;
  if (g_file_get_contents ("/proc/cpuinfo", &info, NULL, NULL)) {
    gchar *line = strstr (info, "model name");
    gchar *colon = line ? strchr (line, ':') : NULL;
    if (colon != NULL) {
      gchar *end = strchr (colon, '\n');
      return g_strstrip (g_strndup (colon + 1, end ? (gsize) (end - colon - 1)
              : strlen (colon + 1)));
    }
  }
  return g_strdup ("unknown");
}

static void
cache_load (void)
{
  g_autofree gchar *dir = NULL, *path = NULL, *text = NULL, *model = NULL;
  const dnnl_version_t *v = dnnl_version ();
  gchar **lines;

  loaded = TRUE;
  verdicts = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, NULL);
  model = cpu_model ();
  scope = g_strdup_printf ("gst-unet cpu-conv-verdicts %d; oneDNN %d.%d.%d %s; %s; "
      "%u cores", CONV_CACHE_FORMAT, v->major, v->minor, v->patch,
      dnnl_cpu_isa2str (dnnl_get_effective_cpu_isa ()), model,
      g_get_num_processors ());
  if (!cache_enabled ())
    return;
  dir = cache_dir ();
  path = g_build_filename (dir, CONV_CACHE_FILE, NULL);
  if (!g_file_get_contents (path, &text, NULL, NULL))
    return;
  lines = g_strsplit (text, "\n", -1);
  if (lines[0] != NULL && g_strcmp0 (lines[0], scope) == 0) {
    for (gint i = 1; lines[i] != NULL; i++) {
      gchar *tab = strchr (lines[i], '\t');
      gchar *end = NULL;
      gint64 verdict;
      if (tab == NULL)
        continue;
      verdict = g_ascii_strtoll (lines[i], &end, 10);
      if (end != tab || verdict < 1 || verdict > 4096)
        continue;
      g_hash_table_replace (verdicts, g_strdup (tab + 1),
          GINT_TO_POINTER ((gint) verdict));
    }
  } else {
    g_debug ("%s is for another machine or build: ignored", path);
  }
  g_strfreev (lines);
}

gint
cpu_conv_cache_lookup (const gchar *key)
{
  if (!loaded)
    cache_load ();
  return GPOINTER_TO_INT (g_hash_table_lookup (verdicts, key));
}

void
cpu_conv_cache_store (const gchar *key, gint verdict)
{
  g_autofree gchar *dir = NULL, *path = NULL, *tmp = NULL;
  GString *out;
  GHashTableIter it;
  gpointer k, v;
  gint fd;

  if (!loaded)
    cache_load ();
  g_hash_table_replace (verdicts, g_strdup (key), GINT_TO_POINTER (verdict));
  if (!cache_enabled ())
    return;
  dir = cache_dir ();
  path = g_build_filename (dir, CONV_CACHE_FILE, NULL);
  tmp = g_strconcat (path, ".tmp-XXXXXX", NULL);
  if (g_mkdir_with_parents (dir, 0700) != 0 || (fd = g_mkstemp (tmp)) < 0) {
    g_debug ("cannot write the convolution cache in %s: %s", dir, g_strerror (errno));
    return;
  }
  out = g_string_new (scope);
  g_string_append_c (out, '\n');
  g_hash_table_iter_init (&it, verdicts);
  while (g_hash_table_iter_next (&it, &k, &v))
    g_string_append_printf (out, "%d\t%s\n", GPOINTER_TO_INT (v), (const gchar *) k);
  if (write (fd, out->str, out->len) != (gssize) out->len || close (fd) != 0
      || g_rename (tmp, path) != 0) {
    g_debug ("cannot write the convolution cache %s: %s", path, g_strerror (errno));
    g_unlink (tmp);
  }
  g_string_free (out, TRUE);
}
