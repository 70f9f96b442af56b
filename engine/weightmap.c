/* gst-unet engine — masks to labels, and the U-Net paper's weight map.
 *
 * w(x) = w_c(x) + w0·exp(-(d1(x) + d2(x))² / (2σ²))   (Ronneberger et al. 2015, eq. 2)
 *
 * Border term, fast and exact where it matters: each object gets one exact squared
 * Euclidean distance transform (Felzenszwalb & Huttenlocher's lower envelope of
 * parabolas, one pass over columns then rows) inside its bounding box grown by the
 * cutoff R = σ·sqrt(2 ln 1000). The two smallest distances per pixel are kept. An
 * object farther than R from a pixel cannot make the term reach 1e-3·w0 there (if
 * it is d1 or d2 then d1 + d2 >= its distance > R), and the term is dropped where
 * d1 + d2 > R, so every value that is kept is exact and every value dropped is
 * below 1e-3·w0. Work is the sum of the window areas, not pixels × objects.
 */
#include "training.h"

#include <math.h>
#include <string.h>

#define BIG_DIST 1e20

/* --------------------------------------------------------------- masks -- */

gint
unet_label_regions (const gint32 *key, gint width, gint height, gint32 *instances,
    gint *stack)
{
  gsize n_px = (gsize) width * height;
  gint n = 0;

  memset (instances, 0, n_px * sizeof (gint32));
  for (gsize start = 0; start < n_px; start++) {
    if (key[start] <= 0 || instances[start] != 0)
      continue;
    gint32 k = key[start];
    gsize top = 0;
    n++;
    instances[start] = n;
    stack[top++] = (gint) start;
    while (top > 0) {
      gint p = stack[--top];
      gint x = p % width, y = p / width;
      gint nb[4] = { x > 0 ? p - 1 : -1, x + 1 < width ? p + 1 : -1,
        y > 0 ? p - width : -1, y + 1 < height ? p + width : -1
      };
      for (gint j = 0; j < 4; j++) {
        gint q = nb[j];
        if (q >= 0 && key[q] == k && instances[q] == 0) {
          instances[q] = n;
          stack[top++] = q;
        }
      }
    }
  }
  return n;
}

gboolean
unet_mask_to_labels (UnetMaskMode mode, const gint32 *mask, gint width, gint height,
    gint classes, gint ignore_value, gint32 *class_map, gint32 *instance_map,
    gint *n_instances, GError **error)
{
  if (width <= 0 || height <= 0 || classes < 1 ||
      (gsize) width * height > G_MAXINT) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "mask of %dx%d with %d classes is not usable", width, height, classes);
    return FALSE;
  }
  gsize n_px = (gsize) width * height;
  gint max_class = MAX (classes, 2);

  /* Validate and fill the class map first. */
  for (gsize i = 0; i < n_px; i++) {
    gint32 v = mask[i];
    if (ignore_value >= 0 && v == ignore_value) {
      class_map[i] = UNET_LABEL_IGNORE;
      continue;
    }
    if (v < 0) {
      g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
          "mask value %d at (%d, %d) is negative", v, (gint) (i % width),
          (gint) (i / width));
      return FALSE;
    }
    if (mode == UNET_MASK_INDEXED) {
      if (v >= max_class) {
        g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
            "indexed mask value %d at (%d, %d) is not a class of a %d-class "
            "model (classes are 0..%d; set ignore-label for unlabelled pixels)",
            v, (gint) (i % width), (gint) (i / width), classes, max_class - 1);
        return FALSE;
      }
      class_map[i] = v;
    } else {
      class_map[i] = v != 0 ? 1 : 0;
    }
  }

  if (mode == UNET_MASK_INSTANCES) {
    /* Compact the ids to 1..n in order of first appearance. */
    g_autoptr (GHashTable) ids = g_hash_table_new (g_direct_hash, g_direct_equal);
    gint n = 0;
    gint32 last_id = 0, last_index = 0;
    for (gsize i = 0; i < n_px; i++) {
      gint32 v = mask[i];
      if (v == 0 || class_map[i] == UNET_LABEL_IGNORE) {
        instance_map[i] = 0;
        continue;
      }
      if (v != last_id) {
        gpointer idx;
        if (!g_hash_table_lookup_extended (ids, GINT_TO_POINTER (v), NULL, &idx)) {
          idx = GINT_TO_POINTER (++n);
          g_hash_table_insert (ids, GINT_TO_POINTER (v), idx);
        }
        last_id = v;
        last_index = GPOINTER_TO_INT (idx);
      }
      instance_map[i] = last_index;
    }
    *n_instances = n;
    return TRUE;
  }

  /* Binary / indexed: components of equal non-zero (non-ignored) class. */
  gint32 *key = g_new (gint32, n_px);
  gint *stack = g_new (gint, n_px);
  for (gsize i = 0; i < n_px; i++)
    key[i] = class_map[i] > 0 ? class_map[i] : 0;
  *n_instances = unet_label_regions (key, width, height, instance_map, stack);
  g_free (stack);
  g_free (key);
  return TRUE;
}

/* ---------------------------------------------------------- weight map -- */

void
unet_weight_map_params_init (UnetWeightMapParams *params)
{
  params->class_balance = TRUE;
  params->border_weight = 10.0;
  params->border_sigma = 5.0;
}

gdouble
unet_weight_map_cutoff (const UnetWeightMapParams *params)
{
  return params->border_sigma * sqrt (2.0 * log (1000.0));
}

/* Squared distance transform of one line (Felzenszwalb & Huttenlocher 2012):
 * d[q] = min_p ((q - p)² + f[p * stride]) for q in 0..n-1; d is dense.
 * v (n ints) and z (n + 1 doubles) are scratch. */
static void
edt_1d (const gdouble *f, gint stride, gint n, gdouble *d, gint *v, gdouble *z)
{
  gint k = 0;
  v[0] = 0;
  z[0] = -G_MAXDOUBLE;
  z[1] = G_MAXDOUBLE;
  for (gint q = 1; q < n; q++) {
    gdouble fq = f[q * stride] + (gdouble) q * q;
    gdouble s;
    /* Pop the parabolas the new one hides. z[0] = -inf stops the loop at k = 0:
     * s is always finite because f holds finite values (BIG_DIST, not inf). */
    for (;;) {
      gint p = v[k];
      s = (fq - (f[p * stride] + (gdouble) p * p)) / (2.0 * (q - p));
      if (k == 0 || s > z[k])
        break;
      k--;
    }
    k++;
    v[k] = q;
    z[k] = s;
    z[k + 1] = G_MAXDOUBLE;
  }
  k = 0;
  for (gint q = 0; q < n; q++) {
    while (z[k + 1] < q)
      k++;
    gdouble dq = q - v[k];
    d[q] = dq * dq + f[v[k] * stride];
  }
}

typedef struct
{
  gint x0, y0, x1, y1;          /* inclusive bounding box; x0 > x1 = empty */
} BBox;

gboolean
unet_weight_map_compute (const UnetWeightMapParams *params, const gint32 *class_map,
    const gint32 *instance_map, gint n_instances, gint classes, gint width,
    gint height, gfloat *weights, GError **error)
{
  if (width <= 0 || height <= 0 || classes < 1 || n_instances < 0 ||
      (gsize) width * height > G_MAXINT) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "weight map of %dx%d with %d classes is not usable", width, height,
        classes);
    return FALSE;
  }
  if (!(params->border_weight >= 0.0) || !(params->border_sigma > 0.0) ||
      !isfinite (params->border_weight) || !isfinite (params->border_sigma)) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "border weight %g must be >= 0 and border sigma %g > 0",
        params->border_weight, params->border_sigma);
    return FALSE;
  }
  gsize n_px = (gsize) width * height;
  gint n_cls = MAX (classes, 2);

  /* Class balance over the labelled pixels. */
  g_autofree guint64 *counts = g_new0 (guint64, n_cls);
  guint64 n_labelled = 0;
  for (gsize i = 0; i < n_px; i++) {
    gint32 c = class_map[i];
    if (c == UNET_LABEL_IGNORE)
      continue;
    if (c < 0 || c >= n_cls) {
      g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
          "class %d at (%d, %d) is out of range", c, (gint) (i % width),
          (gint) (i / width));
      return FALSE;
    }
    counts[c]++;
    n_labelled++;
  }
  g_autofree gfloat *wc = g_new (gfloat, n_cls);
  gint n_present = 0;
  for (gint c = 0; c < n_cls; c++)
    n_present += counts[c] > 0;
  for (gint c = 0; c < n_cls; c++)
    wc[c] = (params->class_balance && counts[c] > 0)
        ? (gfloat) ((gdouble) n_labelled / ((gdouble) n_present * counts[c]))
        : 1.0f;
  for (gsize i = 0; i < n_px; i++) {
    gint32 c = class_map[i];
    weights[i] = c == UNET_LABEL_IGNORE ? 0.0f : wc[c];
  }

  if (params->border_weight == 0.0 || n_instances < 2)
    return TRUE;

  /* Bounding boxes. */
  g_autofree BBox *boxes = g_new (BBox, n_instances + 1);
  for (gint j = 0; j <= n_instances; j++)
    boxes[j] = (BBox) {
    width, height, -1, -1};
  for (gint y = 0; y < height; y++)
    for (gint x = 0; x < width; x++) {
      gint32 id = instance_map[(gsize) y * width + x];
      if (id == 0)
        continue;
      if (id < 0 || id > n_instances) {
        g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
            "instance %d at (%d, %d) is out of range 0..%d", id, x, y,
            n_instances);
        return FALSE;
      }
      BBox *b = &boxes[id];
      b->x0 = MIN (b->x0, x);
      b->y0 = MIN (b->y0, y);
      b->x1 = MAX (b->x1, x);
      b->y1 = MAX (b->y1, y);
    }

  const gdouble cutoff = unet_weight_map_cutoff (params);
  const gint margin = (gint) ceil (cutoff);
  const gdouble cutoff_sq = cutoff * cutoff;
  /* Two smallest squared distances per pixel. */
  g_autofree gfloat *d1 = g_new (gfloat, n_px);
  g_autofree gfloat *d2 = g_new (gfloat, n_px);
  for (gsize i = 0; i < n_px; i++)
    d1[i] = d2[i] = G_MAXFLOAT;

  gsize scratch_px = 0;
  g_autofree gdouble *f = NULL;
  gint longest = MAX (width, height);
  g_autofree gint *v = g_new (gint, longest);
  g_autofree gdouble *z = g_new (gdouble, longest + 1);
  g_autofree gdouble *line = g_new (gdouble, longest);

  for (gint j = 1; j <= n_instances; j++) {
    const BBox *b = &boxes[j];
    if (b->x1 < 0)
      continue;
    gint wx0 = MAX (b->x0 - margin, 0), wy0 = MAX (b->y0 - margin, 0);
    gint wx1 = MIN (b->x1 + margin, width - 1);
    gint wy1 = MIN (b->y1 + margin, height - 1);
    gint ww = wx1 - wx0 + 1, wh = wy1 - wy0 + 1;
    gsize need = (gsize) ww * wh;
    if (need > scratch_px) {
      g_free (f);
      f = g_new (gdouble, need);
      scratch_px = need;
    }
    for (gint y = 0; y < wh; y++) {
      const gint32 *row = instance_map + (gsize) (wy0 + y) * width + wx0;
      for (gint x = 0; x < ww; x++)
        f[(gsize) y * ww + x] = row[x] == j ? 0.0 : BIG_DIST;
    }
    /* Columns: only those crossing the object's box hold a zero. Columns without
     * one stay BIG_DIST and are fixed by the row pass. */
    for (gint x = b->x0 - wx0; x <= b->x1 - wx0; x++) {
      edt_1d (f + x, ww, wh, line, v, z);
      for (gint y = 0; y < wh; y++)
        f[(gsize) y * ww + x] = line[y];
    }
    for (gint y = 0; y < wh; y++) {
      gdouble *r = f + (gsize) y * ww;
      edt_1d (r, 1, ww, line, v, z);
      gsize base = (gsize) (wy0 + y) * width + wx0;
      for (gint x = 0; x < ww; x++) {
        gdouble dsq = line[x];
        if (dsq > cutoff_sq)
          continue;
        gfloat d = (gfloat) dsq;
        gsize i = base + x;
        if (d < d1[i]) {
          d2[i] = d1[i];
          d1[i] = d;
        } else if (d < d2[i]) {
          d2[i] = d;
        }
      }
    }
  }

  const gdouble w0 = params->border_weight;
  const gdouble two_sigma_sq = 2.0 * params->border_sigma * params->border_sigma;
  for (gsize i = 0; i < n_px; i++) {
    if (class_map[i] == UNET_LABEL_IGNORE || d2[i] == G_MAXFLOAT)
      continue;
    gdouble s = sqrt ((gdouble) d1[i]) + sqrt ((gdouble) d2[i]);
    if (s > cutoff)
      continue;
    weights[i] += (gfloat) (w0 * exp (-s * s / two_sigma_sq));
  }
  return TRUE;
}
