/* libFuzzer target: any byte sequence, as a file, into the TIFF reader under
 * tiffstacksrc (elements/tiffstack/tiff-reader.c: libtiff behind the page
 * index, page layouts, strip/tile reading and conversion, page-0 metadata),
 * without GStreamer — many more inputs per second than the element target.
 *
 * Contract checked: every call returns, every failure is a TIFF_READER_ERROR
 * with a message naming the file, a page that is read fills exactly the frame
 * its info gives (the buffer is allocated at that size, so ASan catches any
 * write past it), and the index never counts more pages than it reaches.
 *
 *   CC=clang meson setup build-fuzz -Dfuzzing=true -Db_sanitize=address \
 *       -Db_lundef=false -Dcuda=disabled
 *   ninja -C build-fuzz tests/fuzz/fuzz-tiff-reader
 *   /usr/bin/python3 tests/fuzz/make_tiff_corpus.py SEEDS
 *   build-fuzz/tests/fuzz/fuzz-tiff-reader -max_len=65536 -rss_limit_mb=2048 \
 *       CORPUS_DIR SEEDS
 *
 * fuzz_tiff_read.c (the element target, and so fuzz-tiff-regress in every
 * build) runs fuzz_tiff_reader_check() on each of its inputs too.
 */
#include "fuzz_tiff_reader.h"
#include "tiff-reader.h"

#include <glib/gstdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Pages read per input; a page is at most this large (as the element target). */
#define MAX_PAGES 64
#define MAX_PAGE_BYTES (64u << 20)

static void
check_error (GError * err, const gchar * path)
{
  if (err == NULL || err->domain != TIFF_READER_ERROR || err->message == NULL
      || strstr (err->message, path) == NULL)
    abort ();
  g_error_free (err);
}

void
fuzz_tiff_reader_check (const gchar * path)
{
  GError *err = NULL;
  TiffReader *r = tiff_reader_open (path, MAX_PAGE_BYTES, &err);
  guint64 p, read = 0;

  if (r == NULL) {
    check_error (err, path);
    return;
  }
  /* the hyperstack mapping of metadata from the file: any value, no crash */
  (void) tiff_reader_hyperstack_page (r, 1, 2, 3);
  for (p = 0; p < MAX_PAGES; p++) {
    const TiffPageInfo *info;
    guint8 *frame;
    gsize row;

    /* out of order after the first few: jumps by IFD offset too */
    guint64 page = p < 4 ? p : (p * 7) % MAX_PAGES;
    if (!tiff_reader_select_page (r, page, &err)) {
      check_error (err, path);
      err = NULL;
      continue;
    }
    info = tiff_reader_get_page_info (r);
    if (info == NULL || info->width == 0 || info->height == 0
        || info->bytes_per_pixel != tiff_reader_format_bytes (info->format))
      abort ();
    row = (gsize) info->width * info->bytes_per_pixel;
    if ((guint64) row * info->height > MAX_PAGE_BYTES)
      abort ();                 /* the limit was not applied */
    frame = malloc (row * info->height);
    if (frame == NULL)
      abort ();
    if (tiff_reader_read_page (r, frame, row, &err))
      read++;
    else {
      check_error (err, path);
      err = NULL;
    }
    free (frame);
  }
  {
    guint n = tiff_reader_count_pages (r), known;
    if (!tiff_reader_get_page_count (r, &known) || known != n
        || (read > 0 && n == 0))
      abort ();
  }
  tiff_reader_free (r);
}

#ifdef FUZZ_TIFF_READER_TARGET
int LLVMFuzzerTestOneInput (const guint8 *data, size_t size);

static gchar *input_path;

int
LLVMFuzzerTestOneInput (const guint8 *data, size_t size)
{
  if (input_path == NULL) {
    gint fd = g_file_open_tmp ("fuzz-tiff-reader-XXXXXX.tif", &input_path,
        NULL);
    if (fd < 0)
      abort ();
    close (fd);
  }
  if (!g_file_set_contents (input_path, (const gchar *) data, (gssize) size,
          NULL))
    abort ();
  fuzz_tiff_reader_check (input_path);
  return 0;
}
#endif
