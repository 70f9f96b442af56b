/* libFuzzer target: any byte sequence, as a file, into tiffstacksrc — the
 * element (range and channel selection, caps, tags, the buffer pool) over the
 * TIFF reader (libtiff behind our page index, layout checks, strip/tile
 * reading and conversion, metadata parsing).
 *
 * The element must never crash, hang or allocate without bound: every input
 * ends in EOS or in an ERROR message with a text, within a few seconds, and
 * every frame it sends has the size its caps say. The element's and the
 * reader's sources are compiled into the target (the element registered
 * statically), so libFuzzer sees their coverage; fakesink comes from the
 * installed GStreamer.
 *
 *   CC=clang meson setup build-fuzz -Dfuzzing=true -Db_sanitize=address \
 *       -Db_lundef=false -Dcuda=disabled
 *   ninja -C build-fuzz tests/fuzz/fuzz-tiff-read
 *   /usr/bin/python3 tests/fuzz/make_tiff_corpus.py SEEDS
 *   build-fuzz/tests/fuzz/fuzz-tiff-read -max_len=65536 -rss_limit_mb=2048 \
 *       -dict=tests/fuzz/tiff.dict CORPUS_DIR SEEDS
 *
 * Each input also goes through the reader alone first (fuzz_tiff_reader.c,
 * whose own target fuzz-tiff-reader is faster for the reader's code).
 *
 * tests/fuzz/fuzz-tiff-regress.c runs the same entry point in every build, over
 * the seeds make_tiff_corpus.py writes and deterministic mutations of them.
 */
#include "fuzz_tiff_reader.h"
#include "gsttiffstacksrc.h"
#include "gstunetcaps.h"

#include <glib/gstdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerInitialize (int *argc, char ***argv);
int LLVMFuzzerTestOneInput (const guint8 *data, size_t size);

/* Frames per input: enough to reach every page of a small file twice over. */
#define MAX_FRAMES 64
/* A page is at most this large (bounded memory per input, as -rss_limit_mb). */
#define MAX_PAGE_BYTES (64u << 20)
/* Longer than this is a hang (a valid seed takes milliseconds). */
#define TIMEOUT_S 20

static gchar *input_path;

static void
check_frame (GstElement * sink, GstBuffer * buf, GstPad * pad, gpointer user)
{
  GstCaps *caps = gst_pad_get_current_caps (pad);
  GstUnetLayout layout;

  (void) sink;
  (void) user;
  /* every frame fills the frame size of its caps */
  if (caps == NULL || !gst_unet_layout_from_caps (&layout, caps)
      || gst_buffer_get_size (buf) != layout.size)
    abort ();
  gst_caps_unref (caps);
}

int
LLVMFuzzerInitialize (int *argc, char ***argv)
{
  gint fd;

  gst_init (argc, argv);
  if (!GST_ELEMENT_REGISTER (tiffstacksrc, NULL))
    abort ();
  fd = g_file_open_tmp ("fuzz-tiff-XXXXXX.tif", &input_path, NULL);
  if (fd < 0)
    abort ();
  close (fd);
  return 0;
}

int
LLVMFuzzerTestOneInput (const guint8 *data, size_t size)
{
  GstElement *pipe, *src, *sink;
  GstBus *bus;
  GstMessage *msg;

  if (input_path == NULL)
    LLVMFuzzerInitialize (NULL, NULL);
  if (!g_file_set_contents (input_path, (const gchar *) data, (gssize) size,
          NULL))
    abort ();
  fuzz_tiff_reader_check (input_path);

  pipe = gst_pipeline_new (NULL);
  src = gst_element_factory_make ("tiffstacksrc", NULL);
  sink = gst_element_factory_make ("fakesink", NULL);
  if (src == NULL || sink == NULL)
    abort ();
  g_object_set (src, "location", input_path, "num-buffers", MAX_FRAMES,
      "max-page-size", (guint64) MAX_PAGE_BYTES, NULL);
  g_object_set (sink, "sync", FALSE, "signal-handoffs", TRUE, NULL);
  g_signal_connect (sink, "handoff", G_CALLBACK (check_frame), NULL);
  gst_bin_add_many (GST_BIN (pipe), src, sink, NULL);
  if (!gst_element_link (src, sink))
    abort ();

  bus = gst_element_get_bus (pipe);
  gst_element_set_state (pipe, GST_STATE_PLAYING);
  msg = gst_bus_timed_pop_filtered (bus, TIMEOUT_S * GST_SECOND,
      GST_MESSAGE_EOS | GST_MESSAGE_ERROR);
  if (msg == NULL)
    abort ();                   /* neither EOS nor an error: a hang */
  if (GST_MESSAGE_TYPE (msg) == GST_MESSAGE_ERROR) {
    GError *err = NULL;
    gst_message_parse_error (msg, &err, NULL);
    /* an error a user can act on: a text (naming the file, or the caps) */
    if (err == NULL || err->message == NULL || err->message[0] == '\0')
      abort ();
    g_error_free (err);
  }
  gst_message_unref (msg);
  gst_element_set_state (pipe, GST_STATE_NULL);
  gst_object_unref (bus);
  gst_object_unref (pipe);
  return 0;
}
