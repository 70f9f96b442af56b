/* gst-unet engine — held-out segmentation scores: plain pixel error, adapted Rand
 * error of the foreground regions, foreground Dice, and per-class counts.
 *
 * The Rand error follows the ISBI 2012 challenge's foreground-restricted variant
 * (Arganda-Carreras et al. 2015): only pixels inside a ground-truth object count;
 * a predicted segment is a 4-connected region of one predicted non-zero class, and
 * every pixel predicted as background (class 0) inside a ground-truth object is a
 * segment of its own. With n_ij the pixels of ground-truth object i in predicted
 * segment j, t_i = Σ_j n_ij, s_j = Σ_i n_ij:
 *   Rand error = 1 - 2 Σ n_ij² / (Σ s_j² + Σ t_i²)
 * per frame, averaged over the frames that hold at least one object.
 * (skimage.metrics.adapted_rand_error computes the same F-score on the same
 * contingency table; tests/engine/test_scores.py checks against it.)
 */
#include "training.h"

#include <stdlib.h>
#include <string.h>

void
unet_seg_scores_init (UnetSegScores *s, gint classes)
{
  memset (s, 0, sizeof (*s));
  s->n_classes = CLAMP (MAX (classes, 2), 2, UNET_SCORES_MAX_CLASSES);
}

static int
cmp_u64 (const void *a, const void *b)
{
  guint64 x = *(const guint64 *) a, y = *(const guint64 *) b;
  return x < y ? -1 : x > y;
}

/* Rand error of one frame, or -1 when it holds no ground-truth object. */
static gboolean
frame_rand_error (const gint32 *pred, const gint32 *objects, gint width,
    gint height, gdouble *out, GError **error)
{
  gsize n = (gsize) width * height;
  g_autofree gint32 *key = g_try_new (gint32, n);
  g_autofree gint32 *regions = g_try_new (gint32, n);
  g_autofree gint *stack = g_try_new (gint, n);
  g_autofree guint64 *pairs = g_try_new (guint64, n);
  if (key == NULL || regions == NULL || stack == NULL || pairs == NULL) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_OUT_OF_MEMORY,
        "cannot allocate the Rand error of a %dx%d frame", width, height);
    return FALSE;
  }
  for (gsize i = 0; i < n; i++)
    key[i] = pred[i] > 0 ? pred[i] : 0;
  gint n_regions = unet_label_regions (key, width, height, regions, stack);

  /* Pairs (object, predicted region) of the counted pixels; background
   * predictions inside an object are singletons and are summed directly. */
  gsize m = 0;
  gint32 max_object = 0;
  gdouble singletons = 0.0;
  for (gsize i = 0; i < n; i++) {
    if (objects[i] <= 0)
      continue;
    max_object = MAX (max_object, objects[i]);
    if (regions[i] == 0)
      singletons += 1.0;
    pairs[m++] = ((guint64) objects[i] << 32) | (guint32) regions[i];
  }
  if (m == 0) {
    *out = -1.0;
    return TRUE;
  }
  g_autofree gdouble *t = g_try_new0 (gdouble, (gsize) max_object + 1);
  g_autofree gdouble *s = g_try_new0 (gdouble, (gsize) n_regions + 1);
  if (t == NULL || s == NULL) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_OUT_OF_MEMORY,
        "cannot allocate the Rand error of a %dx%d frame", width, height);
    return FALSE;
  }
  qsort (pairs, m, sizeof (guint64), cmp_u64);
  gdouble sum_n2 = singletons, sum_s2 = singletons, sum_t2 = 0.0;
  for (gsize a = 0; a < m;) {
    gsize b = a;
    while (b < m && pairs[b] == pairs[a])
      b++;
    guint32 obj = (guint32) (pairs[a] >> 32), reg = (guint32) pairs[a];
    gdouble c = (gdouble) (b - a);
    t[obj] += c;
    if (reg != 0) {
      sum_n2 += c * c;
      s[reg] += c;
    }
    a = b;
  }
  for (gint32 i = 1; i <= max_object; i++)
    sum_t2 += t[i] * t[i];
  for (gint j = 1; j <= n_regions; j++)
    sum_s2 += s[j] * s[j];
  *out = 1.0 - 2.0 * sum_n2 / (sum_s2 + sum_t2);
  return TRUE;
}

void
unet_seg_scores_add_confusion (UnetSegScores *s, const UnetConfusion *conf)
{
  g_return_if_fail (s->n_classes == conf->n_classes);
  for (gint y = 0; y < conf->n_classes; y++)
    for (gint p = 0; p < conf->n_classes; p++) {
      guint64 c = conf->n[y][p];
      s->labelled += c;
      s->wrong += p != y ? c : 0;
      s->pred[p] += c;
      s->label[y] += c;
      s->inter[p] += p == y ? c : 0;
      s->fg_pred += p != 0 ? c : 0;
      s->fg_label += y != 0 ? c : 0;
      s->fg_inter += p != 0 && y != 0 ? c : 0;
    }
  s->frames++;
}

gboolean
unet_seg_scores_add_frame (UnetSegScores *s, const gint32 *pred,
    const gint32 *labels, const gint32 *objects, gint width, gint height,
    GError **error)
{
  g_return_val_if_fail (s != NULL && pred != NULL && labels != NULL, FALSE);
  gsize n = (gsize) width * height;
  for (gsize i = 0; i < n; i++) {
    gint32 y = labels[i], p = pred[i];
    if (y == UNET_LABEL_IGNORE)
      continue;
    if (p < 0 || p >= s->n_classes || y < 0 || y >= s->n_classes) {
      g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
          "class %d (prediction) or %d (label) at pixel %" G_GSIZE_FORMAT
          " is outside 0..%d", p, y, i, s->n_classes - 1);
      return FALSE;
    }
    s->labelled++;
    s->wrong += p != y;
    s->pred[p]++;
    s->label[y]++;
    s->inter[p] += p == y;
    s->fg_pred += p != 0;
    s->fg_label += y != 0;
    s->fg_inter += p != 0 && y != 0;
  }
  if (objects != NULL) {
    gdouble re;
    if (!frame_rand_error (pred, objects, width, height, &re, error))
      return FALSE;
    if (re >= 0.0) {
      s->rand_error_sum += re;
      s->rand_frames++;
    }
  }
  s->frames++;
  return TRUE;
}

gdouble
unet_seg_scores_pixel_error (const UnetSegScores *s)
{
  return s->labelled ? (gdouble) s->wrong / (gdouble) s->labelled : -1.0;
}

gdouble
unet_seg_scores_rand_error (const UnetSegScores *s)
{
  return s->rand_frames ? s->rand_error_sum / s->rand_frames : -1.0;
}

gdouble
unet_seg_scores_dice (const UnetSegScores *s)
{
  guint64 d = s->fg_pred + s->fg_label;
  return d ? 2.0 * (gdouble) s->fg_inter / (gdouble) d : 1.0;
}

gint
unet_seg_scores_missing_class (const UnetSegScores *s, gdouble min_share)
{
  for (gint c = 0; c < s->n_classes; c++)
    if (s->pred[c] == 0 && s->labelled > 0
        && (gdouble) s->label[c] >= min_share * (gdouble) s->labelled)
      return c;
  return -1;
}
