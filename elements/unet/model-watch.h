/* gst-unet — watching a model file for new versions (watch-model)
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * A thread with its own main context runs a GFileMonitor on one file, so the
 * watch works without an application main loop. It calls back once per new
 * complete version of the file: a rename onto the path (a checkpoint written to
 * a temporary name, as unettrain does) or the end of a write (the file closed
 * after writing); the several events of one write, and plain "changed" events
 * while a writer is still busy, do not call back. No GStreamer: the caller
 * decides what a new version means (unetsegment loads it).
 */
#ifndef __GST_UNET_MODEL_WATCH_H__
#define __GST_UNET_MODEL_WATCH_H__

#include <gio/gio.h>

G_BEGIN_DECLS

typedef struct _GstUnetModelWatch GstUnetModelWatch;

/* What identifies one version of a file (inode, size, modification time):
 * NULL if the file cannot be read. Take it before loading the file, and hand
 * it to gst_unet_model_watch_start(): a version written during the load is
 * then seen as new. */
typedef struct _GstUnetFileVersion GstUnetFileVersion;
GstUnetFileVersion *gst_unet_file_version_of (const gchar * path);
void gst_unet_file_version_free (GstUnetFileVersion * version);

typedef struct
{
  /* Watcher thread: a new complete version of @path is there. May call
   * gst_unet_model_watch_follow(). */
  void (*replaced) (const gchar * path, gpointer user_data);
  /* @path cannot be watched (in the thread of start() or follow's target
   * change, i.e. the watcher thread): new versions will not be seen. */
  void (*cannot_watch) (const gchar * path, const GError * error,
      gpointer user_data);
} GstUnetModelWatchCallbacks;

/* Starts watching @path, whose version @loaded (taken; may be NULL) is the one
 * in use. The monitor exists when this returns, so no replacement after it is
 * missed. @callbacks must outlive the watch. */
GstUnetModelWatch *gst_unet_model_watch_start (const gchar * path,
    GstUnetFileVersion * loaded, const GstUnetModelWatchCallbacks * callbacks,
    gpointer user_data);
/* Watches @path from now on instead (the model was switched to another file);
 * the version there now counts as loaded. Any thread, including the
 * replaced() callback; takes effect in the watcher thread. */
void gst_unet_model_watch_follow (GstUnetModelWatch * watch,
    const gchar * path);
/* Stops the thread, waiting for a replaced() callback in progress; NULL is a
 * no-op. */
void gst_unet_model_watch_stop (GstUnetModelWatch * watch);

G_END_DECLS

#endif
