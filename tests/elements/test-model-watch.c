/* Unit test of the model-file watcher (elements/unet/model-watch.c), without
 * GStreamer: one callback per new complete version of the file — a rename onto
 * it (how unettrain writes checkpoints) or a rewrite in place once closed —
 * none for the version loaded at start, none for a file no longer followed,
 * and stop() returns promptly, also right after start(). The watcher's events
 * come from inotify through GIO: waits are bounded (10 s) and the "no more
 * callbacks" checks give late events 1 s to show up. */
#include "model-watch.h"

#include <glib/gstdio.h>
#include <string.h>

typedef struct
{
  GMutex lock;
  GCond cond;
  guint replaced;
  gchar *last_path;
  guint cannot_watch;
} Events;

static void
on_replaced (const gchar * path, gpointer user_data)
{
  Events *e = user_data;

  g_mutex_lock (&e->lock);
  e->replaced++;
  g_free (e->last_path);
  e->last_path = g_strdup (path);
  g_cond_broadcast (&e->cond);
  g_mutex_unlock (&e->lock);
}

static void
on_cannot_watch (const gchar * path, const GError * error, gpointer user_data)
{
  Events *e = user_data;

  g_mutex_lock (&e->lock);
  e->cannot_watch++;
  g_mutex_unlock (&e->lock);
}

static const GstUnetModelWatchCallbacks callbacks = { on_replaced,
  on_cannot_watch
};

/* Waits until @n callbacks have come (FALSE after 10 s). */
static gboolean
wait_for (Events * e, guint n)
{
  gint64 end = g_get_monotonic_time () + 10 * G_TIME_SPAN_SECOND;
  gboolean ok = TRUE;

  g_mutex_lock (&e->lock);
  while (e->replaced < n && ok)
    ok = g_cond_wait_until (&e->cond, &e->lock, end);
  ok = e->replaced >= n;
  g_mutex_unlock (&e->lock);
  return ok;
}

/* The count once late events had 1 s to arrive. */
static guint
settled_count (Events * e)
{
  guint n;

  g_usleep (G_USEC_PER_SEC);
  g_mutex_lock (&e->lock);
  n = e->replaced;
  g_mutex_unlock (&e->lock);
  return n;
}

/* Writes @text to @path through a temporary name and a rename. */
static void
replace_file (const gchar * path, const gchar * text)
{
  g_autofree gchar *tmp = g_strconcat (path, ".tmp", NULL);
  g_assert_true (g_file_set_contents (tmp, text, -1, NULL));
  g_assert_cmpint (g_rename (tmp, path), ==, 0);
}

static void
test_versions (void)
{
  g_autofree gchar *dir = g_dir_make_tmp ("model-watch-XXXXXX", NULL);
  g_autofree gchar *model = g_build_filename (dir, "model.safetensors", NULL);
  g_autofree gchar *other = g_build_filename (dir, "other.safetensors", NULL);
  Events e = { 0 };
  GstUnetModelWatch *w;
  FILE *f;
  guint n;

  g_mutex_init (&e.lock);
  g_cond_init (&e.cond);
  replace_file (model, "version 1");
  replace_file (other, "other 1");
  w = gst_unet_model_watch_start (model, gst_unet_file_version_of (model),
      &callbacks, &e);

  /* the version loaded at start is not new */
  g_assert_cmpuint (settled_count (&e), ==, 0);

  /* a rename onto the file: one callback, naming the file */
  replace_file (model, "version 2");
  g_assert_true (wait_for (&e, 1));
  g_assert_cmpstr (e.last_path, ==, model);
  g_assert_cmpuint (settled_count (&e), ==, 1);

  /* rewritten in place: one callback once the writer closes it (the several
   * events of one write are one version) */
  f = fopen (model, "w");
  g_assert_nonnull (f);
  fputs ("version 3, ", f);
  fflush (f);
  fputs ("written in two parts", f);
  fclose (f);
  g_assert_true (wait_for (&e, 2));
  g_assert_cmpuint (settled_count (&e), ==, 2);

  /* deleted and written anew: seen once the writer closes it; the "created"
   * event may come before the write and show the empty file as a version of
   * its own (the element then only warns that it does not load) */
  g_assert_cmpint (g_unlink (model), ==, 0);
  f = fopen (model, "w");
  g_assert_nonnull (f);
  fputs ("version 4", f);
  fclose (f);
  g_assert_true (wait_for (&e, 3));
  n = settled_count (&e);
  g_assert_cmpuint (n, >=, 3);
  g_assert_cmpuint (n, <=, 4);

  /* following another file: its versions count, the old file's do not */
  gst_unet_model_watch_follow (w, other);
  g_usleep (G_USEC_PER_SEC / 2);        /* the follow takes effect in the thread */
  replace_file (model, "version 5");
  replace_file (other, "other 2");
  g_assert_true (wait_for (&e, n + 1));
  g_assert_cmpstr (e.last_path, ==, other);
  g_assert_cmpuint (settled_count (&e), ==, n + 1);
  g_assert_cmpuint (e.cannot_watch, ==, 0);

  gst_unet_model_watch_stop (w);
  /* after stop: nothing more */
  replace_file (other, "other 3");
  g_assert_cmpuint (settled_count (&e), ==, n + 1);

  g_free (e.last_path);
  g_mutex_clear (&e.lock);
  g_cond_clear (&e.cond);
  g_unlink (model);
  g_unlink (other);
  g_rmdir (dir);
}

/* stop() right after start() (the thread may not run its loop yet) and
 * stop(NULL) return; a missing file has no version. */
static void
test_start_stop (void)
{
  g_autofree gchar *dir = g_dir_make_tmp ("model-watch-XXXXXX", NULL);
  g_autofree gchar *model = g_build_filename (dir, "m.safetensors", NULL);
  Events e = { 0 };

  g_mutex_init (&e.lock);
  g_cond_init (&e.cond);
  g_assert_null (gst_unet_file_version_of (model));
  replace_file (model, "x");
  for (guint i = 0; i < 50; i++)
    gst_unet_model_watch_stop (gst_unet_model_watch_start (model,
            gst_unet_file_version_of (model), &callbacks, &e));
  gst_unet_model_watch_stop (NULL);
  g_assert_cmpuint (e.replaced, ==, 0);
  g_mutex_clear (&e.lock);
  g_cond_clear (&e.cond);
  g_unlink (model);
  g_rmdir (dir);
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  g_test_add_func ("/model-watch/versions", test_versions);
  g_test_add_func ("/model-watch/start-stop", test_start_stop);
  return g_test_run ();
}
