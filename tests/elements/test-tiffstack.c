/* gst-unet — GstCheck/GstHarness tests of tiffstacksrc and tiffstacksink
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Files are written and read back with libtiff directly, so each element is
 * checked against libtiff, not against the other element. Loops run over byte
 * orders, classic/BigTIFF and every output format.
 */
#include <math.h>
#include <string.h>

#include <glib/gstdio.h>
#include <gst/check/gstcheck.h>
#include <gst/check/gstharness.h>
#include <gst/video/video.h>
#include <tiffio.h>

static gchar *tmpdir;

static void
setup (void)
{
  tmpdir = g_dir_make_tmp ("tiffstack-XXXXXX", NULL);
  fail_unless (tmpdir != NULL);
}

static void
teardown (void)
{
  GDir *dir = g_dir_open (tmpdir, 0, NULL);
  const gchar *name;

  while (dir && (name = g_dir_read_name (dir))) {
    gchar *p = g_build_filename (tmpdir, name, NULL);
    g_unlink (p);
    g_free (p);
  }
  if (dir)
    g_dir_close (dir);
  g_rmdir (tmpdir);
  g_clear_pointer (&tmpdir, g_free);
}

typedef struct
{
  const gchar *name;
  guint bps, spp, sample_format;
} Fmt;

static const Fmt fmts[] = {
  {"GRAY8", 8, 1, SAMPLEFORMAT_UINT},
  {"GRAY16_LE", 16, 1, SAMPLEFORMAT_UINT},
  {"GRAY32F", 32, 1, SAMPLEFORMAT_IEEEFP},
  {"RGB", 8, 3, SAMPLEFORMAT_UINT},
};

#define W 13                    /* odd: rows of GRAY8/RGB need padding */
#define H 7

/* Deterministic pixel bytes of page @p (row-packed, host order). */
static void
fill_page (const Fmt * f, guint p, guint8 * out)
{
  gsize px = (gsize) W * H * f->spp, i;

  for (i = 0; i < px; i++) {
    switch (f->bps) {
      case 8:
        out[i] = (guint8) (i * 7 + p * 31);
        break;
      case 16:{
        guint16 v = (guint16) (i * 1031 + p * 4099);
        memcpy (out + 2 * i, &v, 2);
        break;
      }
      default:{
        gfloat v = (gfloat) i * 0.25f - (gfloat) p * 3.5f;
        memcpy (out + 4 * i, &v, 4);
        break;
      }
    }
  }
}

static gsize
row_bytes (const Fmt * f)
{
  return (gsize) W * f->spp * f->bps / 8;
}

/* ---- tiffstacksink ------------------------------------------------------ */

static GstBuffer *
make_buffer (const Fmt * f, guint p, gsize stride, gboolean meta)
{
  gsize row = row_bytes (f);
  GstBuffer *buf = gst_buffer_new_and_alloc (stride * H);
  guint8 *packed = g_malloc (row * H);
  GstMapInfo map;
  guint r;

  fill_page (f, p, packed);
  gst_buffer_map (buf, &map, GST_MAP_WRITE);
  memset (map.data, 0xAB, map.size);
  for (r = 0; r < H; r++)
    memcpy (map.data + r * stride, packed + r * row, row);
  gst_buffer_unmap (buf, &map);
  g_free (packed);
  if (meta) {
    gsize offset[4] = { 0, };
    gint strides[4] = { (gint) stride, };
    /* The meta's format is informational here; the sink reads the stride. */
    gst_buffer_add_video_meta_full (buf, GST_VIDEO_FRAME_FLAG_NONE,
        GST_VIDEO_FORMAT_GRAY8, W, H, 1, offset, strides);
  }
  GST_BUFFER_PTS (buf) = p * GST_SECOND;
  GST_BUFFER_DURATION (buf) = GST_SECOND;
  return buf;
}

static void
check_written (const gchar * path, const Fmt * f, guint pages,
    gboolean expect_big, gdouble px_um)
{
  TIFF *tif = TIFFOpen (path, "r");
  guint8 *want = g_malloc (row_bytes (f) * H);
  guint8 *line;
  const char *desc = NULL;
  guint p, r;

  fail_unless (tif != NULL, "libtiff cannot open %s", path);
  fail_unless_equals_int (TIFFNumberOfDirectories (tif), pages);
  fail_unless_equals_int (TIFFIsBigTIFF (tif) ? 1 : 0, expect_big ? 1 : 0);
  fail_unless (TIFFGetField (tif, TIFFTAG_IMAGEDESCRIPTION, &desc));
  fail_unless (g_str_has_prefix (desc, "ImageJ=\n"), "%s", desc);
  {
    gchar *images = g_strdup_printf ("images=%u\n", pages);
    fail_unless (strstr (desc, images) != NULL, "%s", desc);
    g_free (images);
  }
  line = g_malloc (TIFFScanlineSize64 (tif));
  for (p = 0; p < pages; p++) {
    guint32 w = 0, h = 0;
    guint16 bps = 0, spp = 0, sf = 0;
    fail_unless (TIFFSetDirectory (tif, p));
    TIFFGetField (tif, TIFFTAG_IMAGEWIDTH, &w);
    TIFFGetField (tif, TIFFTAG_IMAGELENGTH, &h);
    TIFFGetFieldDefaulted (tif, TIFFTAG_BITSPERSAMPLE, &bps);
    TIFFGetFieldDefaulted (tif, TIFFTAG_SAMPLESPERPIXEL, &spp);
    TIFFGetFieldDefaulted (tif, TIFFTAG_SAMPLEFORMAT, &sf);
    fail_unless_equals_int (w, W);
    fail_unless_equals_int (h, H);
    fail_unless_equals_int (bps, f->bps);
    fail_unless_equals_int (spp, f->spp);
    fail_unless_equals_int (sf, f->sample_format);
    if (px_um > 0.0) {
      float xres = 0;
      fail_unless (TIFFGetField (tif, TIFFTAG_XRESOLUTION, &xres));
      /* XResolution is stored as a 32-bit rational of 1/px: float accuracy. */
      fail_unless (fabs (1.0 / xres - px_um) < 1e-6 * px_um, "%g", 1.0 / xres);
    }
    fill_page (f, p, want);
    for (r = 0; r < H; r++) {
      fail_unless (TIFFReadScanline (tif, line, r, 0) == 1);
      fail_unless (memcmp (line, want + r * row_bytes (f), row_bytes (f)) == 0,
          "page %u row %u differs (%s)", p, r, f->name);
    }
  }
  g_free (line);
  g_free (want);
  TIFFClose (tif);
}

/* The location must be set before the harness starts the sink; async=false
 * lets the harness play it without waiting for preroll. */
static GstHarness *
new_sink_harness (const gchar * path)
{
  GstElement *sink = gst_element_factory_make ("tiffstacksink", NULL);

  fail_unless (sink != NULL);
  g_object_set (sink, "async", FALSE, "location", path, NULL);
  return gst_harness_new_with_element (sink, "sink", NULL);
}

GST_START_TEST (test_sink_formats)
{
  static const gchar *comps[] = { "none", "lzw", "deflate", "zstd" };
  guint fi, ci;

  for (fi = 0; fi < G_N_ELEMENTS (fmts); fi++) {
    for (ci = 0; ci < G_N_ELEMENTS (comps); ci++) {
      const Fmt *f = &fmts[fi];
      gchar *path = g_strdup_printf ("%s/sink-%s-%s.tif", tmpdir, f->name,
          comps[ci]);
      gchar *caps = g_strdup_printf ("video/x-raw,format=%s,width=%d,height=%d,"
          "framerate=1/1", f->name, W, H);
      GstHarness *h;
      GstTagList *tags;
      gsize packed = GST_ROUND_UP_4 (row_bytes (f));
      guint p;

      h = new_sink_harness (path);
      /* The plugin, now loaded, has registered its tags. */
      tags = gst_tag_list_new ("tiff-pixel-size-x", 0.325,
          "tiff-pixel-size-y", 0.325, "tiff-pixel-size-z", 2.0, NULL);
      /* Properties are read at start: restart the sink with them. */
      gst_element_set_state (h->element, GST_STATE_NULL);
      gst_util_set_object_arg (G_OBJECT (h->element), "compression",
          comps[ci]);
      gst_util_set_object_arg (G_OBJECT (h->element), "bigtiff", "never");
      gst_element_set_state (h->element, GST_STATE_PLAYING);
      gst_harness_set_src_caps_str (h, caps);
      fail_unless (gst_harness_push_event (h, gst_event_new_tag (tags)));
      /* Default stride, then a padded stride announced by a video meta. */
      for (p = 0; p < 3; p++)
        fail_unless_equals_int (gst_harness_push (h,
                make_buffer (f, p, p == 1 ? packed + 12 : packed, p == 1)),
            GST_FLOW_OK);
      fail_unless (gst_harness_push_event (h, gst_event_new_eos ()));
      gst_harness_teardown (h);
      check_written (path, f, 3, FALSE, 0.325);
      g_free (caps);
      g_free (path);
    }
  }
}

GST_END_TEST;

static gboolean
answer_duration (GstPad * pad, GstObject * parent, GstQuery * query)
{
  GstFormat fmt;

  if (GST_QUERY_TYPE (query) == GST_QUERY_DURATION) {
    gst_query_parse_duration (query, &fmt, NULL);
    if (fmt == GST_FORMAT_DEFAULT) {
      gst_query_set_duration (query, fmt, GPOINTER_TO_INT (g_object_get_data
              (G_OBJECT (pad), "pages")));
      return TRUE;
    }
  }
  return gst_pad_query_default (pad, parent, query);
}

/* bigtiff=auto: classic TIFF whatever upstream's length says (an 8 GB stack
 * continues in numbered files once the first reaches 4 GiB), so that plain
 * ImageJ, which has no BigTIFF reader, opens every file. */
GST_START_TEST (test_sink_bigtiff_auto)
{
  guint i;
  const gint pages[] = { 10, 1000 };    /* 8 MB pages: 80 MB, 8 GB */

  for (i = 0; i < G_N_ELEMENTS (pages); i++) {
    gchar *path = g_strdup_printf ("%s/auto-%d.tif", tmpdir, pages[i]);
    GstHarness *h = new_sink_harness (path);
    GstBuffer *buf;
    TIFF *tif;

    g_object_set_data (G_OBJECT (h->srcpad), "pages",
        GINT_TO_POINTER (pages[i]));
    gst_pad_set_query_function (h->srcpad, answer_duration);
    gst_harness_set_src_caps_str (h, "video/x-raw,format=GRAY16_LE,"
        "width=2048,height=2048,framerate=1/1");
    buf = gst_buffer_new_and_alloc (2048 * 2048 * 2);
    gst_buffer_memset (buf, 0, 0x11, 2048 * 2048 * 2);
    fail_unless_equals_int (gst_harness_push (h, buf), GST_FLOW_OK);
    fail_unless (gst_harness_push_event (h, gst_event_new_eos ()));
    gst_harness_teardown (h);
    tif = TIFFOpen (path, "r");
    fail_unless (tif != NULL);
    fail_unless_equals_int (TIFFIsBigTIFF (tif) ? 1 : 0, 0);
    TIFFClose (tif);
    g_unlink (path);
    g_free (path);
  }
}

GST_END_TEST;

GST_START_TEST (test_sink_unwritable)
{
  GstElement *sink = gst_element_factory_make ("tiffstacksink", NULL);
  gchar *good = g_strdup_printf ("%s/good.tif", tmpdir);

  g_object_set (sink, "location", "/nonexistent-dir/x.tif", NULL);
  fail_unless_equals_int (gst_element_set_state (sink, GST_STATE_PAUSED),
      GST_STATE_CHANGE_FAILURE);
  gst_element_set_state (sink, GST_STATE_NULL);
  /* Reusable after the failure. */
  g_object_set (sink, "location", good, NULL);
  fail_unless (gst_element_set_state (sink, GST_STATE_READY)
      == GST_STATE_CHANGE_SUCCESS);
  gst_element_set_state (sink, GST_STATE_NULL);
  gst_object_unref (sink);
  g_free (good);
}

GST_END_TEST;

/* ---- tiffstacksrc ------------------------------------------------------- */

/* Writes @pages pages with libtiff in byte order @order ('l'/'b'). */
static gchar *
write_stack (const Fmt * f, guint pages, gchar order, gboolean big,
    gboolean tiled)
{
  gchar *path = g_strdup_printf ("%s/src-%s-%c-%d-%d.tif", tmpdir, f->name,
      order, big, tiled);
  gchar mode[4] = { 'w', order, big ? '8' : '\0', '\0' };
  TIFF *tif = TIFFOpen (path, mode);
  guint8 *page = g_malloc (row_bytes (f) * H);
  guint p, r;

  fail_unless (tif != NULL);
  for (p = 0; p < pages; p++) {
    TIFFSetField (tif, TIFFTAG_IMAGEWIDTH, W);
    TIFFSetField (tif, TIFFTAG_IMAGELENGTH, H);
    TIFFSetField (tif, TIFFTAG_BITSPERSAMPLE, f->bps);
    TIFFSetField (tif, TIFFTAG_SAMPLESPERPIXEL, f->spp);
    TIFFSetField (tif, TIFFTAG_SAMPLEFORMAT, f->sample_format);
    TIFFSetField (tif, TIFFTAG_PHOTOMETRIC, f->spp == 3 ? PHOTOMETRIC_RGB :
        PHOTOMETRIC_MINISBLACK);
    TIFFSetField (tif, TIFFTAG_PLANARCONFIG, PLANARCONFIG_CONTIG);
    TIFFSetField (tif, TIFFTAG_COMPRESSION, COMPRESSION_ADOBE_DEFLATE);
    fill_page (f, p, page);
    if (tiled) {
      /* One 16x16 tile covers the whole 13x7 page. */
      guint8 *tile = g_malloc0 (16 * 16 * f->spp * f->bps / 8);
      TIFFSetField (tif, TIFFTAG_TILEWIDTH, 16);
      TIFFSetField (tif, TIFFTAG_TILELENGTH, 16);
      for (r = 0; r < H; r++)
        memcpy (tile + r * 16 * f->spp * f->bps / 8, page + r * row_bytes (f),
            row_bytes (f));
      fail_unless (TIFFWriteTile (tif, tile, 0, 0, 0, 0) > 0);
      g_free (tile);
    } else {
      TIFFSetField (tif, TIFFTAG_ROWSPERSTRIP, 3);
      for (r = 0; r < H; r++)
        fail_unless (TIFFWriteScanline (tif, page + r * row_bytes (f), r,
                0) == 1);
    }
    fail_unless (TIFFWriteDirectory (tif));
  }
  TIFFClose (tif);
  g_free (page);
  return path;
}

static void
check_frame (GstBuffer * buf, const Fmt * f, guint p)
{
  gsize row = row_bytes (f), stride = GST_ROUND_UP_4 (row);
  guint8 *want = g_malloc (row * H);
  GstMapInfo map;
  guint r;

  fill_page (f, p, want);
  fail_unless (gst_buffer_map (buf, &map, GST_MAP_READ));
  fail_unless (map.size >= stride * H);
  for (r = 0; r < H; r++)
    fail_unless (memcmp (map.data + r * stride, want + r * row, row) == 0,
        "frame %u row %u (%s)", p, r, f->name);
  gst_buffer_unmap (buf, &map);
  g_free (want);
}

GST_START_TEST (test_src_formats)
{
  guint fi, oi, big, tiled, p;

  for (fi = 0; fi < G_N_ELEMENTS (fmts); fi++)
    for (oi = 0; oi < 2; oi++)
      for (big = 0; big < 2; big++)
        for (tiled = 0; tiled < 2; tiled++) {
          const Fmt *f = &fmts[fi];
          gchar *path = write_stack (f, 3, oi ? 'b' : 'l', big, tiled);
          GstHarness *h = gst_harness_new ("tiffstacksrc");
          GstCaps *caps;
          GstStructure *s;
          GstEvent *ev;
          gint w = 0, hh = 0;

          g_object_set (h->element, "location", path, NULL);
          gst_harness_play (h);
          for (p = 0; p < 3; p++) {
            GstBuffer *buf = gst_harness_pull (h);
            fail_unless (buf != NULL);
            fail_unless_equals_uint64 (GST_BUFFER_PTS (buf), p * GST_SECOND);
            fail_unless_equals_uint64 (GST_BUFFER_DURATION (buf), GST_SECOND);
            fail_unless_equals_uint64 (GST_BUFFER_OFFSET (buf), p);
            check_frame (buf, f, p);
            gst_buffer_unref (buf);
          }
          caps = gst_pad_get_current_caps (h->sinkpad);
          s = gst_caps_get_structure (caps, 0);
          fail_unless_equals_string (gst_structure_get_string (s, "format"),
              f->name);
          gst_structure_get_int (s, "width", &w);
          gst_structure_get_int (s, "height", &hh);
          fail_unless_equals_int (w, W);
          fail_unless_equals_int (hh, H);
          gst_caps_unref (caps);
          /* Event order: stream-start, caps, segment, tag, ..., eos. */
          ev = gst_harness_pull_event (h);
          fail_unless_equals_int (GST_EVENT_TYPE (ev), GST_EVENT_STREAM_START);
          gst_event_unref (ev);
          ev = gst_harness_pull_event (h);
          fail_unless_equals_int (GST_EVENT_TYPE (ev), GST_EVENT_CAPS);
          gst_event_unref (ev);
          ev = gst_harness_pull_event (h);
          fail_unless_equals_int (GST_EVENT_TYPE (ev), GST_EVENT_SEGMENT);
          gst_event_unref (ev);
          ev = gst_harness_pull_event (h);
          fail_unless_equals_int (GST_EVENT_TYPE (ev), GST_EVENT_TAG);
          gst_event_unref (ev);
          ev = gst_harness_pull_event (h);
          fail_unless_equals_int (GST_EVENT_TYPE (ev), GST_EVENT_EOS);
          gst_event_unref (ev);
          gst_harness_teardown (h);
          g_free (path);
        }
}

GST_END_TEST;

/* Duration and position in frames and time; flushing seeks in both. */
GST_START_TEST (test_src_queries_and_seeks)
{
  const Fmt *f = &fmts[1];
  gchar *path = write_stack (f, 6, 'l', FALSE, FALSE);
  GstHarness *h = gst_harness_new ("tiffstacksrc");
  GstBuffer *buf;
  gint64 v;
  guint p;

  g_object_set (h->element, "location", path, NULL);
  {
    GValue fr = G_VALUE_INIT;
    g_value_init (&fr, GST_TYPE_FRACTION);
    gst_value_set_fraction (&fr, 2, 1);
    g_object_set_property (G_OBJECT (h->element), "framerate", &fr);
    g_value_unset (&fr);
  }
  gst_harness_play (h);
  for (p = 0; p < 6; p++) {
    buf = gst_harness_pull (h);
    fail_unless_equals_uint64 (GST_BUFFER_PTS (buf), p * GST_SECOND / 2);
    gst_buffer_unref (buf);
  }
  fail_unless (gst_element_query_duration (h->element, GST_FORMAT_DEFAULT,
          &v));
  fail_unless_equals_int64 (v, 6);
  fail_unless (gst_element_query_duration (h->element, GST_FORMAT_TIME, &v));
  fail_unless_equals_int64 (v, 3 * GST_SECOND);
  /* progressreport format=buffers asks in BUFFERS. */
  fail_unless (gst_element_query_duration (h->element, GST_FORMAT_BUFFERS,
          &v));
  fail_unless_equals_int64 (v, 6);
  fail_unless (gst_element_query_position (h->element, GST_FORMAT_DEFAULT,
          &v));
  fail_unless_equals_int64 (v, 6);
  fail_unless (gst_element_query_position (h->element, GST_FORMAT_TIME, &v));
  fail_unless_equals_int64 (v, 3 * GST_SECOND);
  fail_unless (gst_element_query_convert (h->element, GST_FORMAT_DEFAULT, 4,
          GST_FORMAT_TIME, &v));
  fail_unless_equals_int64 (v, 2 * GST_SECOND);

  /* Seek to frame 3 in frames. */
  fail_unless (gst_harness_push_upstream_event (h,
          gst_event_new_seek (1.0, GST_FORMAT_DEFAULT, GST_SEEK_FLAG_FLUSH,
              GST_SEEK_TYPE_SET, 3, GST_SEEK_TYPE_NONE, -1)));
  buf = gst_harness_pull (h);
  fail_unless_equals_uint64 (GST_BUFFER_OFFSET (buf), 3);
  fail_unless_equals_uint64 (GST_BUFFER_PTS (buf), 3 * GST_SECOND / 2);
  check_frame (buf, f, 3);
  gst_buffer_unref (buf);

  /* Seek to 1.2 s = frame 2.4 in time: the frame showing then is frame 2. */
  fail_unless (gst_harness_push_upstream_event (h,
          gst_event_new_seek (1.0, GST_FORMAT_TIME, GST_SEEK_FLAG_FLUSH,
              GST_SEEK_TYPE_SET, 1200 * GST_MSECOND, GST_SEEK_TYPE_NONE, -1)));
  do {
    buf = gst_harness_pull (h);
    if (GST_BUFFER_OFFSET (buf) == 2)
      break;
    /* Frames pushed before the flush reached the harness may still queue. */
    fail_unless (GST_BUFFER_OFFSET (buf) > 3);
    gst_buffer_unref (buf);
  } while (TRUE);
  check_frame (buf, f, 2);
  gst_buffer_unref (buf);

  gst_harness_teardown (h);
  g_free (path);
}

GST_END_TEST;

GST_START_TEST (test_src_range_and_loop)
{
  const Fmt *f = &fmts[0];
  gchar *path = write_stack (f, 5, 'b', TRUE, FALSE);
  GstHarness *h = gst_harness_new ("tiffstacksrc");
  const guint want[] = { 1, 2, 3, 1, 2, 3, 1 };
  gint64 v;
  guint i;

  g_object_set (h->element, "location", path, "start-index", 1,
      "stop-index", 3, "loop", TRUE, NULL);
  gst_harness_play (h);
  for (i = 0; i < G_N_ELEMENTS (want); i++) {
    GstBuffer *buf = gst_harness_pull (h);
    fail_unless_equals_uint64 (GST_BUFFER_PTS (buf), i * GST_SECOND);
    check_frame (buf, f, want[i]);
    gst_buffer_unref (buf);
  }
  /* Looping: unknown duration. */
  fail_unless (!gst_element_query_duration (h->element, GST_FORMAT_DEFAULT,
          &v) || v == -1);
  gst_harness_teardown (h);
  g_free (path);
}

GST_END_TEST;

GST_START_TEST (test_src_missing_file)
{
  GstElement *src = gst_element_factory_make ("tiffstacksrc", NULL);
  gchar *path = write_stack (&fmts[0], 2, 'l', FALSE, FALSE);

  g_object_set (src, "location", "/nonexistent/stack.tif", NULL);
  fail_unless_equals_int (gst_element_set_state (src, GST_STATE_PAUSED),
      GST_STATE_CHANGE_FAILURE);
  gst_element_set_state (src, GST_STATE_NULL);
  /* Reusable after the failure. */
  g_object_set (src, "location", path, NULL);
  fail_unless (gst_element_set_state (src, GST_STATE_PAUSED)
      != GST_STATE_CHANGE_FAILURE);
  gst_element_set_state (src, GST_STATE_NULL);
  gst_object_unref (src);
  g_free (path);
}

GST_END_TEST;

/* Caps downstream refuses fail the state change to PAUSED itself, with a
 * negotiation error naming the file: an error from the streaming thread
 * while the application is still in set_state() can be lost (gst-launch-1.0
 * 1.22 then hung). The element is reusable afterwards. */
static GstFlowReturn
drop_chain (GstPad * pad, GstObject * parent, GstBuffer * buf)
{
  gst_buffer_unref (buf);
  return GST_FLOW_OK;
}

/* A sink pad standing for a downstream element that takes @caps. The default
 * caps query answers with its template (the test registry holds only our
 * plugin, so no capsfilter). */
static GstPad *
downstream_pad (const gchar * caps_str)
{
  GstCaps *caps = gst_caps_from_string (caps_str);
  GstPadTemplate *templ = gst_pad_template_new ("sink", GST_PAD_SINK,
      GST_PAD_ALWAYS, caps);
  GstPad *pad = gst_pad_new_from_template (templ, "sink");

  gst_pad_set_chain_function (pad, drop_chain);
  gst_caps_unref (caps);
  gst_object_unref (templ);
  return pad;
}

GST_START_TEST (test_src_not_negotiated)
{
  const struct
  {
    guint fmt;
    const gchar *caps;
  } cases[] = {
    {1, "video/x-raw,format=GRAY8"},    /* 16-bit file, 8-bit downstream */
    {3, "video/x-raw,format={GRAY8,GRAY16_LE,GRAY32F}"},  /* RGB, gray only */
    {0, "video/x-raw,width=14"},        /* size mismatch */
  };
  guint c;

  for (c = 0; c < G_N_ELEMENTS (cases); c++) {
    gchar *path = write_stack (&fmts[cases[c].fmt], 2, 'l', FALSE, FALSE);
    GstElement *src = gst_element_factory_make ("tiffstacksrc", NULL);
    GstPad *srcpad = gst_element_get_static_pad (src, "src");
    GstPad *refuse = downstream_pad (cases[c].caps);
    GstPad *accept = downstream_pad ("video/x-raw");
    GstBus *bus = gst_bus_new ();
    GstMessage *msg;
    GError *err = NULL;

    gst_element_set_bus (src, bus);
    g_object_set (src, "location", path, NULL);
    fail_unless_equals_int (gst_pad_link (srcpad, refuse), GST_PAD_LINK_OK);
    gst_pad_set_active (refuse, TRUE);
    fail_unless_equals_int (gst_element_set_state (src, GST_STATE_PAUSED),
        GST_STATE_CHANGE_FAILURE);
    msg = gst_bus_pop_filtered (bus, GST_MESSAGE_ERROR);
    fail_unless (msg != NULL, "no error message for %s", cases[c].caps);
    gst_message_parse_error (msg, &err, NULL);
    fail_unless (g_error_matches (err, GST_CORE_ERROR,
            GST_CORE_ERROR_NEGOTIATION), "%s", err->message);
    fail_unless (strstr (err->message, path) != NULL, "%s", err->message);
    g_clear_error (&err);
    gst_message_unref (msg);
    gst_element_set_state (src, GST_STATE_NULL);

    /* Reusable: linked to a pad that takes its caps, it starts. */
    gst_pad_unlink (srcpad, refuse);
    fail_unless_equals_int (gst_pad_link (srcpad, accept), GST_PAD_LINK_OK);
    gst_pad_set_active (accept, TRUE);
    fail_unless (gst_element_set_state (src, GST_STATE_PAUSED)
        != GST_STATE_CHANGE_FAILURE);
    gst_element_set_state (src, GST_STATE_NULL);

    gst_pad_set_active (refuse, FALSE);
    gst_pad_set_active (accept, FALSE);
    gst_element_set_bus (src, NULL);
    gst_object_unref (bus);
    gst_object_unref (refuse);
    gst_object_unref (accept);
    gst_object_unref (srcpad);
    gst_object_unref (src);
    g_free (path);
  }
}

GST_END_TEST;

static Suite *
tiffstack_suite (void)
{
  Suite *s = suite_create ("tiffstack");
  TCase *tc = tcase_create ("general");

  suite_add_tcase (s, tc);
  tcase_add_checked_fixture (tc, setup, teardown);
  tcase_set_timeout (tc, 60);
  tcase_add_test (tc, test_sink_formats);
  tcase_add_test (tc, test_sink_bigtiff_auto);
  tcase_add_test (tc, test_sink_unwritable);
  tcase_add_test (tc, test_src_formats);
  tcase_add_test (tc, test_src_queries_and_seeks);
  tcase_add_test (tc, test_src_range_and_loop);
  tcase_add_test (tc, test_src_missing_file);
  tcase_add_test (tc, test_src_not_negotiated);
  return s;
}

int
main (int argc, char **argv)
{
  const gchar *build = g_getenv ("UNET_BUILD_ROOT");

  /* Scan only our plugin, in this process, into a private registry: in the
   * sanitizer build the (uninstrumented) gst-plugin-scanner helper cannot load
   * an instrumented plugin, this test binary can. */
  g_setenv ("GST_REGISTRY_FORK", "no", TRUE);
  if (build) {
    gchar *plugins = g_build_filename (build, "elements", "tiffstack", NULL);
    gchar *registry = g_build_filename (build, "tests",
        "registry-tiffstack.bin", NULL);
    g_setenv ("GST_PLUGIN_PATH_1_0", plugins, TRUE);
    g_setenv ("GST_REGISTRY_1_0", registry, TRUE);
    g_free (plugins);
    g_free (registry);
  }
  gst_check_init (&argc, &argv);
  return gst_check_run_suite (tiffstack_suite (), "tiffstack", __FILE__);
}
