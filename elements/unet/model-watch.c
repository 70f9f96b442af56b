/* gst-unet — watching a model file for new versions (watch-model)
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * The watcher thread, its GFileMonitor and the file versions it compares (see
 * model-watch.h). Everything below except start/follow/stop runs in the
 * watcher thread.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include "model-watch.h"

struct _GstUnetFileVersion
{
  guint64 inode, size, mtime;
  guint32 mtime_nsec;
};

struct _GstUnetModelWatch
{
  const GstUnetModelWatchCallbacks *callbacks;
  gpointer user_data;
  GThread *thread;
  GMainContext *ctx;
  GMainLoop *loop;
  /* watcher thread only (and start/stop, before and after it runs) */
  GFileMonitor *monitor;
  gchar *path;
  GstUnetFileVersion *loaded;   /* version last (tried to be) loaded */
};

#define VERSION_ATTRIBUTES G_FILE_ATTRIBUTE_UNIX_INODE "," \
    G_FILE_ATTRIBUTE_STANDARD_SIZE "," G_FILE_ATTRIBUTE_TIME_MODIFIED "," \
    G_FILE_ATTRIBUTE_TIME_MODIFIED_NSEC

/* A rename onto the path or a rewrite changes inode, size or modification time;
 * the several events one write produces do not, so each version is loaded once. */
GstUnetFileVersion *
gst_unet_file_version_of (const gchar * path)
{
  GFile *f = g_file_new_for_path (path);
  GFileInfo *info = g_file_query_info (f, VERSION_ATTRIBUTES,
      G_FILE_QUERY_INFO_NONE, NULL, NULL);
  GstUnetFileVersion *v = NULL;

  g_object_unref (f);
  if (info) {
    v = g_new (GstUnetFileVersion, 1);
    v->inode = g_file_info_get_attribute_uint64 (info,
        G_FILE_ATTRIBUTE_UNIX_INODE);
    v->size = g_file_info_get_attribute_uint64 (info,
        G_FILE_ATTRIBUTE_STANDARD_SIZE);
    v->mtime = g_file_info_get_attribute_uint64 (info,
        G_FILE_ATTRIBUTE_TIME_MODIFIED);
    v->mtime_nsec = g_file_info_get_attribute_uint32 (info,
        G_FILE_ATTRIBUTE_TIME_MODIFIED_NSEC);
    g_object_unref (info);
  }
  return v;
}

void
gst_unet_file_version_free (GstUnetFileVersion * version)
{
  g_free (version);
}

static gboolean
same_version (const GstUnetFileVersion * a, const GstUnetFileVersion * b)
{
  return a && b && a->inode == b->inode && a->size == b->size
      && a->mtime == b->mtime && a->mtime_nsec == b->mtime_nsec;
}

/* A complete new version shows up as a rename onto the file (created /
 * renamed / moved-in) or as the end of a write (changes-done, i.e. closed after
 * writing); plain "changed" events come while a writer is still busy. */
static void
on_file_changed (GFileMonitor * monitor, GFile * file, GFile * other,
    GFileMonitorEvent event, gpointer user_data)
{
  GstUnetModelWatch *w = user_data;
  GstUnetFileVersion *v;

  switch (event) {
    case G_FILE_MONITOR_EVENT_CHANGES_DONE_HINT:
    case G_FILE_MONITOR_EVENT_CREATED:
    case G_FILE_MONITOR_EVENT_RENAMED:
    case G_FILE_MONITOR_EVENT_MOVED_IN:
      break;
    default:
      return;
  }
  v = gst_unet_file_version_of (w->path);
  if (!v || same_version (v, w->loaded)) {
    gst_unet_file_version_free (v);
    return;
  }
  gst_unet_file_version_free (w->loaded);
  w->loaded = v;
  w->callbacks->replaced (w->path, w->user_data);
}

static void
drop_monitor (GstUnetModelWatch * w)
{
  if (w->monitor) {
    g_signal_handlers_disconnect_by_data (w->monitor, w);
    g_file_monitor_cancel (w->monitor);
    g_clear_object (&w->monitor);
  }
}

/* (Re)creates the monitor for @path (taken); its events are dispatched in the
 * thread-default main context, which must be w->ctx. */
static void
monitor_path (GstUnetModelWatch * w, gchar * path)
{
  GFile *file;
  GError *err = NULL;

  drop_monitor (w);
  g_free (w->path);
  w->path = path;
  file = g_file_new_for_path (path);
  w->monitor = g_file_monitor_file (file, G_FILE_MONITOR_WATCH_MOVES, NULL,
      &err);
  g_object_unref (file);
  if (!w->monitor) {
    w->callbacks->cannot_watch (path, err, w->user_data);
    g_error_free (err);
    return;
  }
  g_signal_connect (w->monitor, "changed", G_CALLBACK (on_file_changed), w);
}

typedef struct
{
  GstUnetModelWatch *watch;
  gchar *path;
} Follow;

static void
follow_free (gpointer data)
{
  Follow *f = data;
  g_free (f->path);
  g_free (f);
}

static gboolean
follow_in_thread (gpointer data)
{
  Follow *f = data;
  GstUnetModelWatch *w = f->watch;

  if (g_strcmp0 (f->path, w->path) != 0) {
    gst_unet_file_version_free (w->loaded);
    w->loaded = gst_unet_file_version_of (f->path);
    monitor_path (w, g_steal_pointer (&f->path));
  }
  return G_SOURCE_REMOVE;
}

void
gst_unet_model_watch_follow (GstUnetModelWatch * watch, const gchar * path)
{
  Follow *f = g_new (Follow, 1);
  GSource *src = g_idle_source_new ();

  f->watch = watch;
  f->path = g_strdup (path);
  /* Always deferred: this may run inside the monitor's own callback. */
  g_source_set_callback (src, follow_in_thread, f, follow_free);
  g_source_attach (src, watch->ctx);
  g_source_unref (src);
}

static gpointer
watch_thread (gpointer data)
{
  GstUnetModelWatch *w = data;

  g_main_context_push_thread_default (w->ctx);
  g_main_loop_run (w->loop);
  g_main_context_pop_thread_default (w->ctx);
  return NULL;
}

GstUnetModelWatch *
gst_unet_model_watch_start (const gchar * path, GstUnetFileVersion * loaded,
    const GstUnetModelWatchCallbacks * callbacks, gpointer user_data)
{
  GstUnetModelWatch *w = g_new0 (GstUnetModelWatch, 1);

  w->callbacks = callbacks;
  w->user_data = user_data;
  w->loaded = loaded;
  w->ctx = g_main_context_new ();
  w->loop = g_main_loop_new (w->ctx, FALSE);
  /* Created here, with the watcher's context as thread default, so that no
   * replacement after this returns can be missed. */
  g_main_context_push_thread_default (w->ctx);
  monitor_path (w, g_strdup (path));
  g_main_context_pop_thread_default (w->ctx);
  w->thread = g_thread_new ("unetsegment-watch", watch_thread, w);
  return w;
}

static gboolean
quit_loop (gpointer loop)
{
  g_main_loop_quit (loop);
  return G_SOURCE_REMOVE;
}

void
gst_unet_model_watch_stop (GstUnetModelWatch * watch)
{
  GSource *src;

  if (!watch)
    return;
  /* A source rather than g_main_loop_quit(), which is lost if the thread has
   * not entered g_main_loop_run() yet. */
  src = g_idle_source_new ();
  g_source_set_callback (src, quit_loop, watch->loop, NULL);
  g_source_attach (src, watch->ctx);
  g_source_unref (src);
  g_thread_join (watch->thread);
  drop_monitor (watch);
  g_free (watch->path);
  gst_unet_file_version_free (watch->loaded);
  g_main_loop_unref (watch->loop);
  g_main_context_unref (watch->ctx);
  g_free (watch);
}
