/* gst-unet engine — how raw pixels become network input (`unet.normalization`).
 *
 * Owns the JSON form of UnetNormalization and unet_normalize_frame for U8, U16
 * (native endian) and F32 frames with a row stride.
 *
 * Definitions (chosen so a Python/NumPy pipeline can reproduce them exactly):
 * - percentile: lo/hi are numpy.percentile (x, p, method='linear') of the frame's
 *   pixels: sorted values a[0..n-1], position p/100 * (n-1), linear interpolation
 *   between the two neighbouring order statistics (NumPy's lerp formula). U8/U16
 *   use an exact histogram, F32 a selection on a copy. Output (x - lo) / (hi - lo);
 *   when hi == lo (a frame that is constant over the percentile range) the output
 *   is x - lo, so a blank frame becomes zeros instead of an error.
 * - frame-meanstd: mean and population standard deviation (ddof = 0, numpy.std's
 *   default), in double; std == 0 gives x - mean.
 * - range: (x - min) / (max - min); min == max is an error.
 * - meanstd: (x - mean) / std; std must be > 0.
 * - F32 frames: NaN and +-Inf pixels are "missing": they take no part in any
 *   statistic and come out as 0.0 (a NaN would otherwise spread through the whole
 *   receptive field of the network). A frame with no finite pixel gives zeros.
 */
#include "normalize-private.h"
#include "unet.h"
#include "safetensors.h"

#include <json-glib/json-glib.h>
#include <math.h>
#include <string.h>

void
unet_normalization_init_default (UnetNormalization *norm)
{
  norm->mode = UNET_NORM_PERCENTILE;
  norm->a = 1.0;
  norm->b = 99.8;
}

static const gchar *
mode_name (UnetNormMode mode)
{
  switch (mode) {
    case UNET_NORM_NONE:
      return "none";
    case UNET_NORM_RANGE:
      return "range";
    case UNET_NORM_PERCENTILE:
      return "percentile";
    case UNET_NORM_MEAN_STD:
      return "meanstd";
    case UNET_NORM_FRAME_MEAN_STD:
      return "frame-meanstd";
  }
  return NULL;
}

static gboolean
normalization_validate (const UnetNormalization *n, GError **error)
{
  switch (n->mode) {
    case UNET_NORM_NONE:
    case UNET_NORM_FRAME_MEAN_STD:
      return TRUE;
    case UNET_NORM_RANGE:
      if (!isfinite (n->a) || !isfinite (n->b) || n->a == n->b) {
        g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
            "range normalisation needs finite min != max (min %g, max %g)", n->a, n->b);
        return FALSE;
      }
      return TRUE;
    case UNET_NORM_PERCENTILE:
      if (!(n->a >= 0.0 && n->b <= 100.0 && n->a < n->b)) {
        g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
            "percentile normalisation needs 0 <= low < high <= 100 (low %g, high %g)",
            n->a, n->b);
        return FALSE;
      }
      return TRUE;
    case UNET_NORM_MEAN_STD:
      if (!isfinite (n->a) || !isfinite (n->b) || !(n->b > 0.0)) {
        g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
            "meanstd normalisation needs a finite mean and std > 0 (mean %g, std %g)",
            n->a, n->b);
        return FALSE;
      }
      return TRUE;
  }
  g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
      "unknown normalisation mode %d", (gint) n->mode);
  return FALSE;
}

gchar *
unet_normalization_to_json (const UnetNormalization *norm)
{
  g_autoptr (JsonBuilder) b = json_builder_new ();
  const gchar *ka = NULL, *kb = NULL;

  json_builder_begin_object (b);
  json_builder_set_member_name (b, "mode");
  json_builder_add_string_value (b, mode_name (norm->mode) ? mode_name (norm->mode)
      : "none");
  switch (norm->mode) {
    case UNET_NORM_RANGE:
      ka = "min";
      kb = "max";
      break;
    case UNET_NORM_PERCENTILE:
      ka = "low";
      kb = "high";
      break;
    case UNET_NORM_MEAN_STD:
      ka = "mean";
      kb = "std";
      break;
    case UNET_NORM_NONE:
    case UNET_NORM_FRAME_MEAN_STD:
      break;
  }
  if (ka != NULL) {
    json_builder_set_member_name (b, ka);
    json_builder_add_double_value (b, norm->a);
    json_builder_set_member_name (b, kb);
    json_builder_add_double_value (b, norm->b);
  }
  json_builder_end_object (b);

  g_autoptr (JsonNode) root = json_builder_get_root (b);
  g_autoptr (JsonGenerator) gen = json_generator_new ();
  json_generator_set_root (gen, root);
  return json_generator_to_data (gen, NULL);
}

static gboolean
get_number (JsonObject *obj, const gchar *mode, const gchar *key, gdouble *out,
    GError **error)
{
  JsonNode *node = json_object_get_member (obj, key);
  GType t = node && JSON_NODE_HOLDS_VALUE (node) ? json_node_get_value_type (node) : 0;
  if (t != G_TYPE_DOUBLE && t != G_TYPE_INT64) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "normalisation mode \"%s\" needs a number \"%s\"", mode, key);
    return FALSE;
  }
  *out = json_node_get_double (node);
  return TRUE;
}

gboolean
unet_normalization_from_json (const gchar *json, UnetNormalization *norm,
    GError **error)
{
  g_autoptr (JsonParser) parser = json_parser_new ();
  g_autoptr (GError) err = NULL;
  UnetNormalization n = { UNET_NORM_NONE, 0.0, 0.0 };
  const gchar *ka = NULL, *kb = NULL;

  /* strict JSON, as the file's header (json-glib alone is lenient) */
  if (json != NULL && !unet_json_check (json, -1, &err)) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "normalisation is not valid JSON: %s", err->message);
    return FALSE;
  }
  if (json == NULL || !json_parser_load_from_data (parser, json, -1, &err)) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "normalisation is not valid JSON: %s", err ? err->message : "no text");
    return FALSE;
  }
  JsonNode *root = json_parser_get_root (parser);
  if (root == NULL || !JSON_NODE_HOLDS_OBJECT (root)) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "normalisation must be a JSON object");
    return FALSE;
  }
  JsonObject *obj = json_node_get_object (root);
  JsonNode *mnode = json_object_get_member (obj, "mode");
  const gchar *mode = mnode && JSON_NODE_HOLDS_VALUE (mnode)
      && json_node_get_value_type (mnode) == G_TYPE_STRING ?
      json_node_get_string (mnode) : NULL;
  if (g_strcmp0 (mode, "none") == 0)
    n.mode = UNET_NORM_NONE;
  else if (g_strcmp0 (mode, "range") == 0) {
    n.mode = UNET_NORM_RANGE;
    ka = "min";
    kb = "max";
  } else if (g_strcmp0 (mode, "percentile") == 0) {
    n.mode = UNET_NORM_PERCENTILE;
    ka = "low";
    kb = "high";
  } else if (g_strcmp0 (mode, "meanstd") == 0) {
    n.mode = UNET_NORM_MEAN_STD;
    ka = "mean";
    kb = "std";
  } else if (g_strcmp0 (mode, "frame-meanstd") == 0)
    n.mode = UNET_NORM_FRAME_MEAN_STD;
  else {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "normalisation \"mode\" must be one of none, range, percentile, meanstd, "
        "frame-meanstd");
    return FALSE;
  }

  JsonObjectIter iter;
  const gchar *key;
  JsonNode *node;
  json_object_iter_init (&iter, obj);
  while (json_object_iter_next (&iter, &key, &node)) {
    if (!g_str_equal (key, "mode") && g_strcmp0 (key, ka) != 0
        && g_strcmp0 (key, kb) != 0) {
      g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
          "unknown key \"%s\" for normalisation mode \"%s\"", key, mode);
      return FALSE;
    }
  }
  if (ka != NULL && (!get_number (obj, mode, ka, &n.a, error)
          || !get_number (obj, mode, kb, &n.b, error)))
    return FALSE;
  if (!normalization_validate (&n, error))
    return FALSE;
  *norm = n;
  return TRUE;
}

/* ---------------------------------------------------------- statistics -- */

/* NumPy's linear interpolation between order statistics a <= b at fraction t
 * (numpy/lib/function_base.py _lerp): exact at both ends and monotonic. */
static gdouble
np_lerp (gdouble a, gdouble b, gdouble t)
{
  gdouble d = b - a;
  return t >= 0.5 ? b - d * (1.0 - t) : a + d * t;
}

/* Order statistic k (0-based) of a histogram of `bins` integer values. */
static gdouble
hist_kth (const gsize *hist, guint bins, gsize k)
{
  gsize acc = 0;
  for (guint v = 0; v < bins; v++) {
    acc += hist[v];
    if (acc > k)
      return v;
  }
  return bins - 1;
}

static gdouble
hist_percentile (const gsize *hist, guint bins, gsize n, gdouble p)
{
  gdouble pos = p / 100.0 * (gdouble) (n - 1);
  gsize i = (gsize) floor (pos);
  if (i >= n - 1)
    return hist_kth (hist, bins, n - 1);
  return np_lerp (hist_kth (hist, bins, i), hist_kth (hist, bins, i + 1), pos - i);
}

/* Rearranges a[0..n-1] so that a[k] is the k-th smallest, everything before it
 * <= a[k] and everything after >= a[k] (Hoare-partition quickselect; the pivot is
 * the median of three pseudo-randomly placed samples, so sorted or constant input
 * costs no more than random input). */
static void
select_kth (gfloat *a, gsize n, gsize k)
{
  gssize lo = 0, hi = (gssize) n - 1, kk = (gssize) k;
  guint64 rng = 0x2545f4914f6cdd1dULL;
  while (hi > lo) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    guint64 span = (guint64) (hi - lo + 1);
    gfloat x = a[lo + rng % span], y = a[lo + (rng >> 21) % span],
        z = a[lo + (rng >> 42) % span];
    gfloat pivot = MAX (MIN (x, y), MIN (MAX (x, y), z));
    gssize i = lo, j = hi;
    while (i <= j) {
      while (a[i] < pivot)
        i++;
      while (a[j] > pivot)
        j--;
      if (i <= j) {
        gfloat t = a[i];
        a[i] = a[j];
        a[j] = t;
        i++;
        j--;
      }
    }
    /* a[lo..j] <= pivot <= a[i..hi]; a[j+1..i-1] == pivot */
    if (kk <= j)
      hi = j;
    else if (kk >= i)
      lo = i;
    else
      return;
  }
}

static gdouble
select_percentile (gfloat *a, gsize n, gdouble p)
{
  gdouble pos = p / 100.0 * (gdouble) (n - 1);
  gsize i = (gsize) floor (pos);
  if (i >= n - 1) {
    select_kth (a, n, n - 1);
    return a[n - 1];
  }
  select_kth (a, n, i);
  gfloat next = a[i + 1];
  for (gsize j = i + 2; j < n; j++)
    next = MIN (next, a[j]);
  return np_lerp (a[i], next, pos - i);
}

static inline gdouble
pixel_at (UnetPixelFormat format, const guint8 *row, gint x)
{
  switch (format) {
    case UNET_PIXEL_U8:
      return row[x];
    case UNET_PIXEL_U16:{
      guint16 v;
      memcpy (&v, row + 2 * (gsize) x, 2);
      return v;
    }
    case UNET_PIXEL_F32:{
      gfloat v;
      memcpy (&v, row + 4 * (gsize) x, 4);
      return v;
    }
    default:                   /* multi-channel formats are split first */
      break;
  }
  return 0.0;
}

/* lo/scale for the frame-dependent modes; *ok = FALSE when no pixel is usable
 * (every F32 pixel non-finite): then the output is all zeros. */
static gboolean
frame_statistics (const UnetNormalization *norm, UnetPixelFormat format,
    const guint8 *data, gint width, gint height, gsize stride, gdouble *lo,
    gdouble *scale, gboolean *ok, GError **error)
{
  gsize npix = (gsize) width * (gsize) height;
  *ok = TRUE;

  if (norm->mode == UNET_NORM_FRAME_MEAN_STD) {
    gdouble sum = 0.0, ss = 0.0;
    gsize n = 0;
    for (gint y = 0; y < height; y++) {
      const guint8 *row = data + (gsize) y * stride;
      for (gint x = 0; x < width; x++) {
        gdouble v = pixel_at (format, row, x);
        if (isfinite (v)) {
          sum += v;
          n++;
        }
      }
    }
    if (n == 0) {
      *ok = FALSE;
      return TRUE;
    }
    gdouble mean = sum / n;
    for (gint y = 0; y < height; y++) {
      const guint8 *row = data + (gsize) y * stride;
      for (gint x = 0; x < width; x++) {
        gdouble v = pixel_at (format, row, x);
        if (isfinite (v))
          ss += (v - mean) * (v - mean);
      }
    }
    gdouble sd = sqrt (ss / n);
    *lo = mean;
    *scale = sd > 0.0 ? 1.0 / sd : 1.0;
    return TRUE;
  }

  /* percentile */
  gdouble plo, phi;
  if (format == UNET_PIXEL_F32) {
    gfloat *copy = g_try_new (gfloat, npix);
    if (copy == NULL) {
      g_set_error (error, UNET_ERROR, UNET_ERROR_OUT_OF_MEMORY,
          "cannot allocate %" G_GSIZE_FORMAT " floats for percentiles", npix);
      return FALSE;
    }
    gsize n = 0;
    for (gint y = 0; y < height; y++) {
      const guint8 *row = data + (gsize) y * stride;
      for (gint x = 0; x < width; x++) {
        gfloat v;
        memcpy (&v, row + 4 * (gsize) x, 4);
        if (isfinite (v))
          copy[n++] = v;
      }
    }
    if (n == 0) {
      g_free (copy);
      *ok = FALSE;
      return TRUE;
    }
    plo = select_percentile (copy, n, norm->a);
    phi = select_percentile (copy, n, norm->b);
    g_free (copy);
  } else {
    guint bins = format == UNET_PIXEL_U8 ? 256 : 65536;
    gsize *hist = g_new0 (gsize, bins);
    for (gint y = 0; y < height; y++) {
      const guint8 *row = data + (gsize) y * stride;
      if (format == UNET_PIXEL_U8) {
        for (gint x = 0; x < width; x++)
          hist[row[x]]++;
      } else {
        for (gint x = 0; x < width; x++) {
          guint16 v;
          memcpy (&v, row + 2 * (gsize) x, 2);
          hist[v]++;
        }
      }
    }
    plo = hist_percentile (hist, bins, npix, norm->a);
    phi = hist_percentile (hist, bins, npix, norm->b);
    g_free (hist);
  }
  *lo = plo;
  *scale = phi > plo ? 1.0 / (phi - plo) : 1.0;
  return TRUE;
}

gboolean
unet_normalization_fixed_params (const UnetNormalization *norm, gdouble *lo,
    gdouble *scale)
{
  *lo = 0.0;
  *scale = 1.0;
  switch (norm->mode) {
    case UNET_NORM_NONE:
      return TRUE;
    case UNET_NORM_RANGE:
      *lo = norm->a;
      *scale = 1.0 / (norm->b - norm->a);
      return TRUE;
    case UNET_NORM_MEAN_STD:
      *lo = norm->a;
      *scale = 1.0 / norm->b;
      return TRUE;
    case UNET_NORM_PERCENTILE:
    case UNET_NORM_FRAME_MEAN_STD:
      break;
  }
  return FALSE;
}

void
unet_normalization_histogram_params (const UnetNormalization *norm, const gsize *hist,
    guint bins, gsize n, gdouble *lo, gdouble *scale)
{
  gdouble plo = hist_percentile (hist, bins, n, norm->a);
  gdouble phi = hist_percentile (hist, bins, n, norm->b);
  *lo = plo;
  *scale = phi > plo ? 1.0 / (phi - plo) : 1.0;
}

gboolean
unet_normalize_frame (const UnetNormalization *norm, UnetPixelFormat format,
    gconstpointer data, gint width, gint height, gsize stride, gfloat *out,
    GError **error)
{
  gsize bpp;

  switch (format) {
    case UNET_PIXEL_U8:
      bpp = 1;
      break;
    case UNET_PIXEL_U16:
      bpp = 2;
      break;
    case UNET_PIXEL_F32:
      bpp = 4;
      break;
    default:
      g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
          "unknown pixel format %d", (gint) format);
      return FALSE;
  }
  if (norm == NULL || data == NULL || out == NULL || width <= 0 || height <= 0
      || stride < (gsize) width * bpp) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "bad frame: %dx%d, stride %" G_GSIZE_FORMAT " bytes (%" G_GSIZE_FORMAT
        " bytes per pixel)", width, height, stride, bpp);
    return FALSE;
  }
  if (!normalization_validate (norm, error))
    return FALSE;

  gdouble lo = 0.0, scale = 1.0;
  gboolean ok = TRUE;
  switch (norm->mode) {
    case UNET_NORM_NONE:
      break;
    case UNET_NORM_RANGE:
      lo = norm->a;
      scale = 1.0 / (norm->b - norm->a);
      break;
    case UNET_NORM_MEAN_STD:
      lo = norm->a;
      scale = 1.0 / norm->b;
      break;
    case UNET_NORM_PERCENTILE:
    case UNET_NORM_FRAME_MEAN_STD:
      if (!frame_statistics (norm, format, data, width, height, stride, &lo, &scale,
              &ok, error))
        return FALSE;
      break;
  }

  const guint8 *bytes = data;
  if (!ok) {
    memset (out, 0, (gsize) width * height * sizeof (gfloat));
    return TRUE;
  }
  for (gint y = 0; y < height; y++) {
    const guint8 *row = bytes + (gsize) y * stride;
    gfloat *o = out + (gsize) y * width;
    for (gint x = 0; x < width; x++) {
      gdouble v = pixel_at (format, row, x);
      o[x] = isfinite (v) ? (gfloat) ((v - lo) * scale) : 0.0f;
    }
  }
  return TRUE;
}

gsize
unet_pixel_format_bytes (UnetPixelFormat format)
{
  switch (format) {
    case UNET_PIXEL_U8:
      return 1;
    case UNET_PIXEL_U16:
      return 2;
    case UNET_PIXEL_F32:
      return 4;
    case UNET_PIXEL_RGB8:
      return 3;
    case UNET_PIXEL_RGBA8:
      return 4;
  }
  return 0;
}

gboolean
unet_pixel_format_channels (UnetPixelFormat format, UnetPixelFormat *sample,
    UnetChannelLayout *layout)
{
  switch (format) {
    case UNET_PIXEL_U8:
    case UNET_PIXEL_U16:
    case UNET_PIXEL_F32:
      *sample = format;
      layout->channels = 1;
      layout->pixel_step = unet_pixel_format_bytes (format);
      layout->channel_step = 0;
      return TRUE;
    case UNET_PIXEL_RGB8:
    case UNET_PIXEL_RGBA8:
      *sample = UNET_PIXEL_U8;
      layout->channels = 3;
      layout->pixel_step = unet_pixel_format_bytes (format);
      layout->channel_step = 1;
      return TRUE;
  }
  return FALSE;
}

gboolean
unet_normalize_channels (const UnetNormalization *norm, UnetPixelFormat format,
    gconstpointer data, gint width, gint height, gsize stride,
    const UnetChannelLayout *layout, gfloat *out, GError **error)
{
  gsize bpp = format <= UNET_PIXEL_F32 ? unet_pixel_format_bytes (format) : 0;
  gsize plane = (gsize) width * height, row = (gsize) width * bpp;
  const guint8 *bytes = data;
  g_autofree guint8 *dense = NULL;

  if (layout == NULL || layout->channels < 1 || bpp == 0
      || layout->pixel_step < bpp || width <= 0 || height <= 0 || data == NULL
      || (layout->channels > 1 && layout->channel_step < bpp)) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "bad multi-channel frame layout");
    return FALSE;
  }
  if (layout->channels == 1 && layout->pixel_step == bpp)
    return unet_normalize_frame (norm, format, data, width, height, stride, out,
        error);
  /* Gather each channel into a dense plane, then normalise it like a gray
   * frame: one code path for every normalisation mode. */
  dense = g_try_malloc (plane * bpp);
  if (dense == NULL) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_OUT_OF_MEMORY,
        "cannot allocate a %dx%d channel plane", width, height);
    return FALSE;
  }
  for (gint c = 0; c < layout->channels; c++) {
    for (gint y = 0; y < height; y++) {
      const guint8 *src = bytes + (gsize) y * stride + c * layout->channel_step;
      guint8 *dst = dense + (gsize) y * row;
      if (layout->pixel_step == bpp)
        memcpy (dst, src, row);
      else
        for (gint x = 0; x < width; x++)
          memcpy (dst + (gsize) x * bpp, src + (gsize) x * layout->pixel_step, bpp);
    }
    if (!unet_normalize_frame (norm, format, dense, width, height, row,
            out + (gsize) c * plane, error))
      return FALSE;
  }
  return TRUE;
}
