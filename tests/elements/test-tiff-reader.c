/* Unit tests of the GStreamer-free TIFF reader (elements/tiffstack/tiff-reader.c).
 *
 * Every file is written here with libtiff: both byte orders, classic and
 * BigTIFF, strips and tiles, uncompressed and Deflate, 8/16-bit unsigned and
 * signed, 32-bit unsigned, 32/64-bit float, RGB contiguous and planar, three
 * pages each of an odd size (37 x 23: partial strips and tiles at the edges).
 * The expected pixels come from the pattern the writer used, converted by the
 * rules in tiff-reader.h (signed + 2^(bits-1), doubles rounded to float,
 * planar RGB interleaved), not from the reader's code. Then: the lazy page
 * index, random page order, an ImageJ and an OME hyperstack's page mapping,
 * and damaged files (truncated at every 7th byte, an IFD loop, corrupt
 * compressed data, random byte changes, unsupported layouts, a page above the
 * limit), which must give a TIFF_READER_ERROR with a message, never a crash
 * (the test also runs under valgrind and ASan). Last, stacks written by
 * tifffile (ImageJ hyperstack, big-endian OME BigTIFF, signed pages) read
 * plane by plane against tifffile's own reading.
 */
#include "tiff-reader.h"

#include <glib/gstdio.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <tiffio.h>

#define W 37
#define H 23
#define PAGES 3

typedef struct
{
  const gchar *name;
  guint16 bps, spp, sample_format, planar;
  TiffReaderFormat format;
  gint value_offset;
} Kind;

static const Kind kinds[] = {
  {"u8", 8, 1, SAMPLEFORMAT_UINT, PLANARCONFIG_CONTIG, TIFF_READER_FORMAT_U8, 0},
  {"s8", 8, 1, SAMPLEFORMAT_INT, PLANARCONFIG_CONTIG, TIFF_READER_FORMAT_U8,
      -128},
  {"u16", 16, 1, SAMPLEFORMAT_UINT, PLANARCONFIG_CONTIG,
      TIFF_READER_FORMAT_U16, 0},
  {"s16", 16, 1, SAMPLEFORMAT_INT, PLANARCONFIG_CONTIG,
      TIFF_READER_FORMAT_U16, -32768},
  {"u32", 32, 1, SAMPLEFORMAT_UINT, PLANARCONFIG_CONTIG,
      TIFF_READER_FORMAT_U32, 0},
  {"f32", 32, 1, SAMPLEFORMAT_IEEEFP, PLANARCONFIG_CONTIG,
      TIFF_READER_FORMAT_F32, 0},
  {"f64", 64, 1, SAMPLEFORMAT_IEEEFP, PLANARCONFIG_CONTIG,
      TIFF_READER_FORMAT_F32, 0},
  {"rgb", 8, 3, SAMPLEFORMAT_UINT, PLANARCONFIG_CONTIG,
      TIFF_READER_FORMAT_RGB8, 0},
  {"rgb-planar", 8, 3, SAMPLEFORMAT_UINT, PLANARCONFIG_SEPARATE,
      TIFF_READER_FORMAT_RGB8, 0},
};

static gchar *tmpdir;

/* g_file_set_contents() without its fsync (hundreds of small files here). */
static gboolean
set_contents (const gchar * path, const gchar * data, gssize len,
    GError ** error)
{
  FILE *f = fopen (path, "wb");
  gsize n = len < 0 ? strlen (data) : (gsize) len;
  gboolean ok;

  g_assert_null (error);
  if (f == NULL)
    return FALSE;
  ok = fwrite (data, 1, n, f) == n;
  return fclose (f) == 0 && ok;
}

/* The pattern: an integer per page, pixel and sample, spread over more than
 * 16 bits so that byte order and sign matter. */
static guint32
pattern (guint page, guint x, guint y, guint s)
{
  return page * 7919u + y * 1031u + x * 17u + s * 85u + (x * y) % 13u;
}

/* Sample @s of pixel (x, y) of @page as stored in the file (host order). */
static void
stored_sample (const Kind * k, guint page, guint x, guint y, guint s,
    guint8 * out)
{
  guint32 v = pattern (page, x, y, s);

  switch (k->bps) {
    case 8:{
      guint8 b = (guint8) v;    /* s8 stores the same bits, read as signed */
      *out = b;
      break;
    }
    case 16:{
      guint16 h = (guint16) v;
      memcpy (out, &h, 2);
      break;
    }
    case 32:
      if (k->sample_format == SAMPLEFORMAT_IEEEFP) {
        gfloat f = (gfloat) v * 0.25f - 1000.0f;
        memcpy (out, &f, 4);
      } else {
        guint32 u = v * 65537u;
        memcpy (out, &u, 4);
      }
      break;
    default:{
      gdouble d = v * 0.1 - 3.3;
      memcpy (out, &d, 8);
      break;
    }
  }
}

/* Pixel (x, y) of @page as the reader must give it, by the rules in
 * tiff-reader.h. */
static void
expected_pixel (const Kind * k, guint page, guint x, guint y, guint8 * out)
{
  guint8 raw[8];

  for (guint s = 0; s < k->spp; s++) {
    stored_sample (k, page, x, y, s, raw);
    if (k->bps == 8 && k->sample_format == SAMPLEFORMAT_INT) {
      gint8 sv;
      memcpy (&sv, raw, 1);
      out[s] = (guint8) (sv + 128);
    } else if (k->bps == 16 && k->sample_format == SAMPLEFORMAT_INT) {
      gint16 sv;
      guint16 u;
      memcpy (&sv, raw, 2);
      u = (guint16) (sv + 32768);
      memcpy (out, &u, 2);
    } else if (k->bps == 64) {
      gdouble d;
      gfloat f;
      memcpy (&d, raw, 8);
      f = (gfloat) d;
      memcpy (out, &f, 4);
    } else {
      memcpy (out + s * (k->bps / 8), raw, k->bps / 8);
    }
  }
}

typedef struct
{
  const gchar *mode;            /* TIFFOpen mode: byte order, BigTIFF */
  gboolean tiled;
  guint16 compression;
} Container;

/* Writes PAGES pages of @k; @desc (or NULL) as page 0's ImageDescription. */
static gchar *
write_stack (const gchar * name, const Kind * k, const Container * c,
    guint pages, const gchar * desc)
{
  gchar *path = g_build_filename (tmpdir, name, NULL);
  TIFF *tif = TIFFOpen (path, c->mode);
  guint bytes = k->bps / 8;
  guint contig = k->planar == PLANARCONFIG_CONTIG ? k->spp : 1;

  g_assert_nonnull (tif);
  for (guint p = 0; p < pages; p++) {
    TIFFSetField (tif, TIFFTAG_IMAGEWIDTH, (guint32) W);
    TIFFSetField (tif, TIFFTAG_IMAGELENGTH, (guint32) H);
    TIFFSetField (tif, TIFFTAG_BITSPERSAMPLE, k->bps);
    TIFFSetField (tif, TIFFTAG_SAMPLESPERPIXEL, k->spp);
    TIFFSetField (tif, TIFFTAG_SAMPLEFORMAT, k->sample_format);
    TIFFSetField (tif, TIFFTAG_PLANARCONFIG, k->planar);
    TIFFSetField (tif, TIFFTAG_PHOTOMETRIC, k->spp == 3 ? PHOTOMETRIC_RGB :
        PHOTOMETRIC_MINISBLACK);
    TIFFSetField (tif, TIFFTAG_COMPRESSION, c->compression);
    if (p == 0 && desc)
      TIFFSetField (tif, TIFFTAG_IMAGEDESCRIPTION, desc);
    if (c->tiled) {
      const guint32 tw = 16, th = 16;
      g_autofree guint8 *tile = g_malloc0 (tw * th * contig * bytes);
      TIFFSetField (tif, TIFFTAG_TILEWIDTH, tw);
      TIFFSetField (tif, TIFFTAG_TILELENGTH, th);
      for (guint s = 0; s < k->spp / contig; s++)
        for (guint32 ty = 0; ty < H; ty += th)
          for (guint32 tx = 0; tx < W; tx += tw) {
            memset (tile, 0, tw * th * contig * bytes);
            for (guint32 y = ty; y < MIN (ty + th, H); y++)
              for (guint32 x = tx; x < MIN (tx + tw, W); x++)
                for (guint cs = 0; cs < contig; cs++)
                  stored_sample (k, p, x, y, s + cs, tile +
                      (((y - ty) * tw + (x - tx)) * contig + cs) * bytes);
            g_assert_cmpint (TIFFWriteTile (tif, tile, tx, ty, 0, s), >, 0);
          }
    } else {
      g_autofree guint8 *row = g_malloc (W * contig * bytes);
      TIFFSetField (tif, TIFFTAG_ROWSPERSTRIP, (guint32) 5);
      for (guint s = 0; s < k->spp / contig; s++)
        for (guint32 y = 0; y < H; y++) {
          for (guint32 x = 0; x < W; x++)
            for (guint cs = 0; cs < contig; cs++)
              stored_sample (k, p, x, y, s + cs, row + (x * contig + cs)
                  * bytes);
          g_assert_cmpint (TIFFWriteScanline (tif, row, y, s), ==, 1);
        }
    }
    g_assert_true (TIFFWriteDirectory (tif));
  }
  TIFFClose (tif);
  return path;
}

/* Reads the current page at a packed and at a padded stride and compares both
 * with the pattern; the padding must stay untouched. */
static void
check_page (TiffReader * r, const Kind * k, guint page)
{
  const TiffPageInfo *info = tiff_reader_get_page_info (r);
  guint bpp = tiff_reader_format_bytes (k->format);
  gsize packed = (gsize) W * bpp, padded = packed + 8;
  g_autofree guint8 *a = g_malloc (packed * H);
  g_autofree guint8 *b = g_malloc (padded * H);
  guint8 want[16];
  GError *err = NULL;

  g_assert_nonnull (info);
  g_assert_cmpuint (info->width, ==, W);
  g_assert_cmpuint (info->height, ==, H);
  g_assert_cmpint (info->format, ==, k->format);
  g_assert_cmpuint (info->bytes_per_pixel, ==, bpp);
  g_assert_cmpint (info->value_offset, ==, k->value_offset);
  g_assert_cmpuint (tiff_reader_get_current_page (r), ==, page);

  memset (b, 0xA5, padded * H);
  g_assert_true (tiff_reader_read_page (r, a, packed, &err));
  g_assert_no_error (err);
  g_assert_true (tiff_reader_read_page (r, b, padded, &err));
  g_assert_no_error (err);
  for (guint y = 0; y < H; y++) {
    for (guint x = 0; x < W; x++) {
      expected_pixel (k, page, x, y, want);
      if (memcmp (a + y * packed + x * bpp, want, bpp) != 0
          || memcmp (b + y * padded + x * bpp, want, bpp) != 0)
        g_error ("%s: page %u pixel (%u, %u) differs", k->name, page, x, y);
    }
    for (guint i = 0; i < 8; i++)
      g_assert_cmpuint (b[y * padded + packed + i], ==, 0xA5);
  }
}

/* Every kind in every container: page 0 after open, then pages 1, 2 in order,
 * then 0 and 2 again (jumps by IFD offset). */
static void
test_formats (void)
{
  static const Container containers[] = {
    {"wl", FALSE, COMPRESSION_NONE}, {"wb", FALSE, COMPRESSION_NONE},
    {"wl8", FALSE, COMPRESSION_NONE}, {"wb8", FALSE, COMPRESSION_NONE},
    {"wl", TRUE, COMPRESSION_NONE}, {"wb8", TRUE, COMPRESSION_NONE},
    {"wl", FALSE, COMPRESSION_ADOBE_DEFLATE},
    {"wb8", TRUE, COMPRESSION_ADOBE_DEFLATE},
    {"wl", FALSE, COMPRESSION_LZW},
  };
  static const guint order[] = { 0, 1, 2, 0, 2, 1 };

  for (guint ci = 0; ci < G_N_ELEMENTS (containers); ci++) {
    for (guint ki = 0; ki < G_N_ELEMENTS (kinds); ki++) {
      const Container *c = &containers[ci];
      const Kind *k = &kinds[ki];
      g_autofree gchar *name = g_strdup_printf ("%s-%s-%s-%u.tif", k->name,
          c->mode, c->tiled ? "tiles" : "strips", c->compression);
      g_autofree gchar *path = write_stack (name, k, c, PAGES, NULL);
      GError *err = NULL;
      g_autoptr (TiffReader) r = tiff_reader_open (path, 1 << 20, &err);

      g_test_message ("%s", name);
      g_assert_no_error (err);
      g_assert_nonnull (r);
      for (guint i = 0; i < G_N_ELEMENTS (order); i++) {
        g_assert_true (tiff_reader_select_page (r, order[i], &err));
        g_assert_no_error (err);
        check_page (r, k, order[i]);
      }
      g_assert_cmpuint (tiff_reader_count_pages (r), ==, PAGES);
      g_assert_null (tiff_reader_get_chain_error (r));
      g_unlink (path);
    }
  }
}

/* Pages are indexed as they are asked for, not at open. */
static void
test_lazy_index (void)
{
  const Container c = { "wl", FALSE, COMPRESSION_NONE };
  g_autofree gchar *path = write_stack ("lazy.tif", &kinds[0], &c, 40, NULL);
  GError *err = NULL;
  g_autoptr (TiffReader) r = tiff_reader_open (path, 1 << 20, &err);
  guint n = 99;

  g_assert_no_error (err);
  g_assert_cmpuint (tiff_reader_get_pages_indexed (r), ==, 1);
  g_assert_false (tiff_reader_get_page_count (r, &n));
  g_assert_true (tiff_reader_has_page (r, 9));
  g_assert_cmpuint (tiff_reader_get_pages_indexed (r), ==, 10);
  /* a jump ahead indexes up to the page */
  g_assert_true (tiff_reader_select_page (r, 20, &err));
  g_assert_cmpuint (tiff_reader_get_pages_indexed (r), ==, 21);
  check_page (r, &kinds[0], 20);
  g_assert_false (tiff_reader_has_page (r, 40));
  g_assert_true (tiff_reader_get_page_count (r, &n));
  g_assert_cmpuint (n, ==, 40);
  g_assert_null (tiff_reader_get_chain_error (r));
  g_assert_false (tiff_reader_select_page (r, 40, &err));
  g_assert_error (err, TIFF_READER_ERROR, TIFF_READER_ERROR_NO_PAGE);
  g_assert_nonnull (strstr (err->message, "page 40"));
  g_assert_nonnull (strstr (err->message, "fewer pages"));
  g_clear_error (&err);
  g_unlink (path);
}

/* ImageJ hyperstacks run channels fastest (XYCZT); OME gives its order. Page k
 * holds the value k, so the mapping is checked by reading. */
static void
check_hyperstack (const gchar * desc, guint C, guint Z, guint T,
    guint64 (*page_of) (guint c, guint z, guint t, guint C, guint Z))
{
  const Container cont = { "wl", FALSE, COMPRESSION_NONE };
  g_autofree gchar *path = write_stack ("hyper.tif", &kinds[0], &cont,
      C * Z * T, desc);
  GError *err = NULL;
  g_autoptr (TiffReader) r = tiff_reader_open (path, 1 << 20, &err);
  const TiffStackMeta *m;

  g_assert_no_error (err);
  m = tiff_reader_get_meta (r);
  g_assert_cmpuint (m->channels, ==, C);
  g_assert_cmpuint (m->slices, ==, Z);
  g_assert_cmpuint (m->frames, ==, T);
  for (guint t = 0; t < T; t++)
    for (guint z = 0; z < Z; z++)
      for (guint c = 0; c < C; c++) {
        guint64 page = tiff_reader_hyperstack_page (r, c, z, t);
        g_assert_cmpuint (page, ==, page_of (c, z, t, C, Z));
        g_assert_true (tiff_reader_select_page (r, page, &err));
        check_page (r, &kinds[0], (guint) page);
      }
  g_unlink (path);
}

static guint64
czt (guint c, guint z, guint t, guint C, guint Z)
{
  return c + (guint64) C * (z + (guint64) Z * t);
}

static guint64
zct (guint c, guint z, guint t, guint C, guint Z)
{
  return z + (guint64) Z * (c + (guint64) C * t);
}

static void
test_hyperstack (void)
{
  check_hyperstack ("ImageJ=1.54f\nimages=12\nchannels=2\nslices=3\n"
      "frames=2\nhyperstack=true\nunit=micron\nspacing=0.5\n", 2, 3, 2, czt);
  check_hyperstack ("<?xml version=\"1.0\"?><OME xmlns=\"http://www.openmicroscopy."
      "org/Schemas/OME/2016-06\"><Image ID=\"Image:0\"><Pixels ID=\"Pixels:0\" "
      "DimensionOrder=\"XYZCT\" Type=\"uint8\" SizeX=\"37\" SizeY=\"23\" "
      "SizeC=\"3\" SizeZ=\"2\" SizeT=\"1\" PhysicalSizeX=\"0.2\"/></Image></OME>",
      3, 2, 1, zct);
}

/* Classic little-endian IFD offsets of @data (the test files' layout). */
static GArray *
ifd_offsets (const guint8 * data, gsize size)
{
  GArray *a = g_array_new (FALSE, FALSE, sizeof (guint32));
  guint32 off;

  memcpy (&off, data + 4, 4);
  while (off && off + 2 <= size && a->len < 100) {
    guint16 n;
    g_array_append_val (a, off);
    memcpy (&n, data + off, 2);
    memcpy (&off, data + off + 2 + 12 * n, 4);
  }
  return a;
}

/* Opens @path and reads every page it can: each failure a TIFF_READER_ERROR
 * with a message naming the file. Returns the pages read. */
static guint
read_all (const gchar * path, guint64 limit)
{
  GError *err = NULL;
  TiffReader *r = tiff_reader_open (path, limit, &err);
  guint ok = 0;

  if (r == NULL) {
    g_assert_nonnull (err);
    g_assert_true (err->domain == TIFF_READER_ERROR);
    g_assert_nonnull (strstr (err->message, path));
    g_clear_error (&err);
    return 0;
  }
  for (guint64 p = 0; p < 8; p++) {
    const TiffPageInfo *info;
    g_autofree guint8 *buf = NULL;

    if (!tiff_reader_select_page (r, p, &err)) {
      g_assert_true (err->domain == TIFF_READER_ERROR);
      g_assert_nonnull (strstr (err->message, path));
      g_clear_error (&err);
      continue;
    }
    info = tiff_reader_get_page_info (r);
    buf = g_malloc ((gsize) info->width * info->bytes_per_pixel *
        info->height);
    if (tiff_reader_read_page (r, buf, (gsize) info->width *
            info->bytes_per_pixel, &err))
      ok++;
    else {
      g_assert_true (err->domain == TIFF_READER_ERROR);
      g_assert_nonnull (strstr (err->message, path));
      g_clear_error (&err);
    }
  }
  tiff_reader_free (r);
  return ok;
}

static void
test_truncated (void)
{
  const Container c = { "wl", FALSE, COMPRESSION_ADOBE_DEFLATE };
  g_autofree gchar *path = write_stack ("cut-src.tif", &kinds[2], &c, PAGES,
      NULL);
  g_autofree gchar *cut = g_build_filename (tmpdir, "cut.tif", NULL);
  g_autofree gchar *data = NULL;
  gsize size;
  GError *err = NULL;

  g_assert_true (g_file_get_contents (path, &data, &size, NULL));
  /* every 7th length, and the whole file less one byte */
  for (gsize len = 0; len < size; len += len + 7 < size ? 7 : MAX (size - 1
          - len, 1)) {
    g_assert_true (set_contents (cut, data, (gssize) len, NULL));
    g_assert_cmpuint (read_all (cut, 1 << 20), <=, PAGES);
  }
  /* Cut before the last IFD: pages 0 and 1 read, page 2 names the break. */
  {
    g_autoptr (GArray) ifds = ifd_offsets ((const guint8 *) data, size);
    g_autoptr (TiffReader) r = NULL;
    g_assert_cmpuint (ifds->len, ==, PAGES);
    g_assert_true (set_contents (cut, data,
            g_array_index (ifds, guint32, 2) + 1, NULL));
    r = tiff_reader_open (cut, 1 << 20, &err);
    g_assert_no_error (err);
    g_assert_cmpuint (tiff_reader_count_pages (r), ==, 2);
    g_assert_nonnull (strstr (tiff_reader_get_chain_error (r),
            "breaks after page 1"));
    g_assert_true (tiff_reader_select_page (r, 1, &err));
    check_page (r, &kinds[2], 1);
    g_assert_false (tiff_reader_select_page (r, 2, &err));
    g_assert_error (err, TIFF_READER_ERROR, TIFF_READER_ERROR_NO_PAGE);
    g_assert_nonnull (strstr (err->message, "breaks after page 1"));
    g_clear_error (&err);
  }
  g_unlink (cut);
  g_unlink (path);
}

/* The last IFD pointing back at the first: three pages, then "IFD loop". */
static void
test_ifd_loop (void)
{
  const Container c = { "wl", FALSE, COMPRESSION_NONE };
  g_autofree gchar *path = write_stack ("loop.tif", &kinds[0], &c, PAGES,
      NULL);
  g_autofree gchar *data = NULL;
  gsize size;
  GError *err = NULL;
  g_autoptr (GArray) ifds = NULL;
  guint32 last, first;
  guint16 n;

  g_assert_true (g_file_get_contents (path, &data, &size, NULL));
  ifds = ifd_offsets ((const guint8 *) data, size);
  first = g_array_index (ifds, guint32, 0);
  last = g_array_index (ifds, guint32, PAGES - 1);
  memcpy (&n, data + last, 2);
  memcpy (data + last + 2 + 12 * n, &first, 4);
  g_assert_true (set_contents (path, data, (gssize) size, NULL));
  {
    g_autoptr (TiffReader) r = tiff_reader_open (path, 1 << 20, &err);
    g_assert_no_error (err);
    g_assert_cmpuint (tiff_reader_count_pages (r), ==, PAGES);
    g_assert_nonnull (strstr (tiff_reader_get_chain_error (r), "IFD loop"));
    g_assert_true (tiff_reader_select_page (r, 2, &err));
    check_page (r, &kinds[0], 2);
  }
  g_unlink (path);
}

/* Garbage in the first strip / tile of Deflate data: DAMAGED, naming it. */
static void
test_corrupt_data (void)
{
  for (guint tiled = 0; tiled <= 1; tiled++) {
    const Container c = { "wl", tiled, COMPRESSION_ADOBE_DEFLATE };
    g_autofree gchar *path = write_stack ("corrupt.tif", &kinds[2], &c, 1,
        NULL);
    g_autofree gchar *data = NULL;
    gsize size;
    GError *err = NULL;
    g_autoptr (TiffReader) r = NULL;
    g_autofree guint8 *buf = g_malloc (W * 2 * H);

    g_assert_true (g_file_get_contents (path, &data, &size, NULL));
    /* libtiff writes the first strip / tile right after the 8-byte header */
    memset (data + 8, 0xFF, 16);
    g_assert_true (set_contents (path, data, (gssize) size, NULL));
    r = tiff_reader_open (path, 1 << 20, &err);
    g_assert_no_error (err);
    g_assert_false (tiff_reader_read_page (r, buf, W * 2, &err));
    g_assert_error (err, TIFF_READER_ERROR, TIFF_READER_ERROR_DAMAGED);
    g_assert_nonnull (strstr (err->message, tiled ? "tile 0 is damaged" :
            "strip 0 is damaged"));
    g_test_message ("%s (libtiff: %s)", err->message,
        tiff_reader_get_libtiff_message (r, "-"));
    g_clear_error (&err);
    g_unlink (path);
  }
}

/* Random changes of 1 to 5 bytes anywhere, 300 times per file. */
static void
test_random_damage (void)
{
  const Container cs[] = { {"wl", FALSE, COMPRESSION_ADOBE_DEFLATE},
  {"wb8", TRUE, COMPRESSION_NONE}
  };
  g_autofree gchar *bad = g_build_filename (tmpdir, "bad.tif", NULL);
  GRand *rng = g_rand_new_with_seed (15);

  for (guint ci = 0; ci < G_N_ELEMENTS (cs); ci++) {
    g_autofree gchar *path = write_stack ("rnd.tif", &kinds[ci ? 8 : 3],
        &cs[ci], PAGES, NULL);
    g_autofree gchar *data = NULL;
    gsize size;

    g_assert_true (g_file_get_contents (path, &data, &size, NULL));
    for (guint trial = 0; trial < 300; trial++) {
      g_autofree gchar *d = g_memdup2 (data, size);
      guint n = g_rand_int_range (rng, 1, 6);
      for (guint i = 0; i < n; i++)
        d[g_rand_int_range (rng, 0, (gint32) size)] = (gchar) g_rand_int (rng);
      g_assert_true (set_contents (bad, d, (gssize) size, NULL));
      read_all (bad, 1 << 20);
    }
    g_unlink (path);
  }
  g_rand_free (rng);
  g_unlink (bad);
}

/* Files that are not TIFFs, missing, not regular; pages the reader refuses. */
static void
test_refused (void)
{
  g_autofree gchar *text = g_build_filename (tmpdir, "text.tif", NULL);
  g_autofree gchar *empty = g_build_filename (tmpdir, "empty.tif", NULL);
  g_autofree gchar *missing = g_build_filename (tmpdir, "missing.tif", NULL);
  GError *err = NULL;

  g_assert_true (set_contents (text, "not a TIFF file\n", -1, NULL));
  g_assert_null (tiff_reader_open (text, 1 << 20, &err));
  g_assert_error (err, TIFF_READER_ERROR, TIFF_READER_ERROR_NOT_TIFF);
  g_clear_error (&err);
  g_assert_true (set_contents (empty, "", 0, NULL));
  g_assert_null (tiff_reader_open (empty, 1 << 20, &err));
  g_assert_error (err, TIFF_READER_ERROR, TIFF_READER_ERROR_NOT_TIFF);
  g_clear_error (&err);
  g_assert_null (tiff_reader_open (missing, 1 << 20, &err));
  g_assert_error (err, TIFF_READER_ERROR, TIFF_READER_ERROR_NOT_FOUND);
  g_assert_nonnull (strstr (err->message, "does not exist"));
  g_clear_error (&err);
  g_assert_null (tiff_reader_open (tmpdir, 1 << 20, &err));
  g_assert_error (err, TIFF_READER_ERROR, TIFF_READER_ERROR_OPEN);
  g_assert_nonnull (strstr (err->message, "not a regular file"));
  g_clear_error (&err);

  /* a page above the limit: 37 x 23 x 2 bytes > 1600 (a limit libtiff's own
   * allocations at open stay under) */
  {
    const Container c = { "wl", FALSE, COMPRESSION_NONE };
    g_autofree gchar *path = write_stack ("big.tif", &kinds[2], &c, 1, NULL);
    g_assert_null (tiff_reader_open (path, 1600, &err));
    g_assert_error (err, TIFF_READER_ERROR, TIFF_READER_ERROR_TOO_LARGE);
    g_assert_nonnull (strstr (err->message, "limit of 1600 bytes"));
    g_clear_error (&err);
    g_unlink (path);
  }
  /* 32-bit signed and 1-bit samples are not converted */
  {
    const Kind s32 = { "s32", 32, 1, SAMPLEFORMAT_INT, PLANARCONFIG_CONTIG,
      TIFF_READER_FORMAT_U32, 0
    };
    const Container c = { "wl", FALSE, COMPRESSION_NONE };
    g_autofree gchar *path = write_stack ("s32.tif", &s32, &c, 1, NULL);
    g_assert_null (tiff_reader_open (path, 1 << 20, &err));
    g_assert_error (err, TIFF_READER_ERROR, TIFF_READER_ERROR_UNSUPPORTED);
    g_assert_nonnull (strstr (err->message, "32-bit signed samples"));
    g_clear_error (&err);
    g_unlink (path);
  }
  {
    g_autofree gchar *path = g_build_filename (tmpdir, "bits.tif", NULL);
    TIFF *tif = TIFFOpen (path, "w");
    guint8 row[5] = { 0 };
    TIFFSetField (tif, TIFFTAG_IMAGEWIDTH, (guint32) W);
    TIFFSetField (tif, TIFFTAG_IMAGELENGTH, (guint32) 2);
    TIFFSetField (tif, TIFFTAG_BITSPERSAMPLE, 1);
    TIFFSetField (tif, TIFFTAG_SAMPLESPERPIXEL, 1);
    TIFFSetField (tif, TIFFTAG_PHOTOMETRIC, PHOTOMETRIC_MINISBLACK);
    TIFFWriteScanline (tif, row, 0, 0);
    TIFFWriteScanline (tif, row, 1, 0);
    TIFFClose (tif);
    g_assert_null (tiff_reader_open (path, 1 << 20, &err));
    g_assert_error (err, TIFF_READER_ERROR, TIFF_READER_ERROR_UNSUPPORTED);
    g_assert_nonnull (strstr (err->message, "1-bit unsigned samples"));
    g_clear_error (&err);
    g_unlink (path);
  }
  g_unlink (text);
  g_unlink (empty);
}

/* Stacks written by tifffile (tiff_reader_tifffile.py): an ImageJ hyperstack, a
 * big-endian BigTIFF OME-TIFF in XYZCT order, big-endian int16 pages; every
 * plane, found through tiff_reader_hyperstack_page(), must equal tifffile's
 * own reading of it. Skipped without /usr/bin/python3 + tifffile (the script
 * is given as arguments: --tifffile PYTHON SCRIPT). */
static const gchar *tifffile_python, *tifffile_script;

static void
test_tifffile (void)
{
  g_autofree gchar *dir = g_build_filename (tmpdir, "tifffile", NULL);
  g_autofree gchar *manifest_path = g_build_filename (dir, "manifest.txt",
      NULL);
  g_autofree gchar *manifest = NULL;
  g_auto (GStrv) lines = NULL;
  const gchar *argv[] = { tifffile_python, tifffile_script, dir, NULL };
  GError *err = NULL;
  gint status = -1;
  guint files = 0;

  if (tifffile_python == NULL
      || !g_file_test (tifffile_python, G_FILE_TEST_IS_EXECUTABLE)) {
    g_test_skip ("no --tifffile PYTHON SCRIPT (or no such python)");
    return;
  }
  g_assert_cmpint (g_mkdir (dir, 0700), ==, 0);
  g_assert_true (g_spawn_sync (NULL, (gchar **) argv, NULL,
          G_SPAWN_DEFAULT, NULL, NULL, NULL, NULL, &status, &err));
  g_assert_no_error (err);
  g_assert_true (g_spawn_check_wait_status (status, &err));
  g_assert_no_error (err);
  g_assert_true (g_file_get_contents (manifest_path, &manifest, NULL, NULL));
  lines = g_strsplit (manifest, "\n", -1);
  for (guint i = 0; lines[i] && lines[i][0]; i++) {
    gchar name[64];
    guint C, Z, T, bpp;
    g_autofree gchar *path = NULL;
    g_autoptr (TiffReader) r = NULL;
    const TiffStackMeta *m;

    g_assert_cmpint (sscanf (lines[i], "%63s %u %u %u %u", name, &C, &Z, &T,
            &bpp), ==, 5);
    path = g_build_filename (dir, name, NULL);
    r = tiff_reader_open (path, 1 << 20, &err);
    g_assert_no_error (err);
    m = tiff_reader_get_meta (r);
    if (C * T > 1) {
      g_assert_cmpuint (m->channels, ==, C);
      g_assert_cmpuint (m->slices, ==, Z);
      g_assert_cmpuint (MAX (m->frames, 1), ==, T);
    }
    for (guint t = 0; t < T; t++)
      for (guint z = 0; z < Z; z++)
        for (guint c = 0; c < C; c++) {
          g_autofree gchar *raw_name = g_strdup_printf ("%s-c%u-z%u-t%u.raw",
              name, c, z, t);
          g_autofree gchar *raw_path = g_build_filename (dir, raw_name, NULL);
          g_autofree gchar *want = NULL;
          gsize want_size;
          g_autofree guint8 *got = NULL;
          const TiffPageInfo *info;

          g_assert_true (g_file_get_contents (raw_path, &want, &want_size,
                  NULL));
          g_assert_true (tiff_reader_select_page (r,
                  tiff_reader_hyperstack_page (r, c, z, t), &err));
          g_assert_no_error (err);
          info = tiff_reader_get_page_info (r);
          g_assert_cmpuint (info->bytes_per_pixel, ==, bpp);
          g_assert_cmpuint ((gsize) info->width * info->height * bpp, ==,
              want_size);
          got = g_malloc (want_size);
          g_assert_true (tiff_reader_read_page (r, got,
                  (gsize) info->width * bpp, &err));
          g_assert_no_error (err);
          if (memcmp (got, want, want_size) != 0)
            g_error ("%s: channel %u, slice %u, time %u differs from tifffile",
                name, c, z, t);
          g_unlink (raw_path);
        }
    g_unlink (path);
    files++;
  }
  g_assert_cmpuint (files, ==, 3);
  g_unlink (manifest_path);
  g_rmdir (dir);
}

int
main (int argc, char **argv)
{
  int ret;

  if (argc >= 4 && g_str_equal (argv[1], "--tifffile")) {
    tifffile_python = argv[2];
    tifffile_script = argv[3];
    argv[3] = argv[0];
    argv += 3;
    argc -= 3;
  }
  g_test_init (&argc, &argv, NULL);
  /* libtiff's global handlers print to stderr; the reader installs its own
   * per file, the writer here needs none */
  TIFFSetWarningHandler (NULL);
  tmpdir = g_dir_make_tmp ("tiff-reader-XXXXXX", NULL);
  g_assert_nonnull (tmpdir);
  g_test_add_func ("/tiff-reader/formats", test_formats);
  g_test_add_func ("/tiff-reader/lazy-index", test_lazy_index);
  g_test_add_func ("/tiff-reader/hyperstack", test_hyperstack);
  g_test_add_func ("/tiff-reader/truncated", test_truncated);
  g_test_add_func ("/tiff-reader/ifd-loop", test_ifd_loop);
  g_test_add_func ("/tiff-reader/corrupt-data", test_corrupt_data);
  g_test_add_func ("/tiff-reader/random-damage", test_random_damage);
  g_test_add_func ("/tiff-reader/refused", test_refused);
  g_test_add_func ("/tiff-reader/tifffile", test_tifffile);
  ret = g_test_run ();
  g_rmdir (tmpdir);
  g_free (tmpdir);
  return ret;
}
