/* gst-unet engine — losses and metrics on host float arrays.
 *
 * Weighted softmax cross-entropy (K >= 2) / sigmoid BCE (K == 1) with an ignore
 * label, normalised by the sum of weights; a soft-Dice term; hard Dice counts.
 * Values and gradients w.r.t. the logits are computed in double per pixel and
 * stored as float; tests/engine/train_torch_check.py compares them with PyTorch
 * autograd in float64.
 *
 * Shapes: logits (B,K,H,W), labels (B,H,W), weights (B,H,W).
 */
#include "training.h"

#include <math.h>
#include <string.h>

static gboolean
check_shape (gint batch, gint classes, gint height, gint width, GError **error)
{
  if (batch < 1 || classes < 1 || height < 1 || width < 1 ||
      (guint64) batch * classes * height * width > G_MAXSIZE / sizeof (gfloat)) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "loss over a batch of %d x %d classes x %dx%d is not usable", batch,
        classes, width, height);
    return FALSE;
  }
  return TRUE;
}

static gboolean
label_error (gint32 label, gint classes, gsize index, gint width, gint height,
    GError **error)
{
  gsize hw = (gsize) width * height;
  g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
      "label %d at (%d, %d) of sample %d is not a class of a %d-class model",
      label, (gint) (index % hw % width), (gint) (index % hw / width),
      (gint) (index / hw), classes);
  return FALSE;
}

/* Softmax of the K logits of one pixel (stride hw) into p (double). */
static inline void
softmax_pixel (const gfloat *z, gsize hw, gint classes, gdouble *p, gdouble *lse)
{
  gdouble m = z[0];
  for (gint k = 1; k < classes; k++)
    m = MAX (m, (gdouble) z[k * hw]);
  gdouble s = 0.0;
  for (gint k = 0; k < classes; k++) {
    p[k] = exp ((gdouble) z[k * hw] - m);
    s += p[k];
  }
  for (gint k = 0; k < classes; k++)
    p[k] /= s;
  if (lse)
    *lse = m + log (s);
}

static inline gdouble
sigmoid (gdouble z)
{
  return z >= 0 ? 1.0 / (1.0 + exp (-z)) : exp (z) / (1.0 + exp (z));
}

gboolean
unet_loss_cross_entropy (const gfloat *logits, const gint32 *labels,
    const gfloat *weights, gint batch, gint classes, gint height, gint width,
    gdouble *loss, gfloat *grad_logits, GError **error)
{
  if (!check_shape (batch, classes, height, width, error))
    return FALSE;
  const gsize hw = (gsize) width * height;
  const gsize n = (gsize) batch * hw;
  const gint n_labels = MAX (classes, 2);

  /* Pass 1: validate, sum of weights over labelled pixels. */
  gdouble sum_w = 0.0;
  for (gsize i = 0; i < n; i++) {
    gint32 l = labels[i];
    if (l == UNET_LABEL_IGNORE)
      continue;
    if (l < 0 || l >= n_labels)
      return label_error (l, classes, i, width, height, error);
    gdouble w = weights ? weights[i] : 1.0;
    if (!(w >= 0.0) || !isfinite (w)) {
      g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
          "pixel weight %g at index %" G_GSIZE_FORMAT " is not a finite value >= 0",
          w, i);
      return FALSE;
    }
    sum_w += w;
  }

  if (grad_logits)
    memset (grad_logits, 0, sizeof (gfloat) * n * classes);
  *loss = 0.0;
  if (sum_w == 0.0)
    return TRUE;

  const gdouble inv = 1.0 / sum_w;
  gdouble total = 0.0;
  g_autofree gdouble *p = g_new (gdouble, classes);
  for (gint b = 0; b < batch; b++) {
    const gfloat *zb = logits + (gsize) b * classes * hw;
    gfloat *gb = grad_logits ? grad_logits + (gsize) b * classes * hw : NULL;
    for (gsize i = 0; i < hw; i++) {
      gsize li = (gsize) b * hw + i;
      gint32 l = labels[li];
      if (l == UNET_LABEL_IGNORE)
        continue;
      gdouble w = weights ? weights[li] : 1.0;
      if (classes == 1) {
        /* BCEWithLogits: max(z,0) - z y + log(1 + exp(-|z|)). */
        gdouble z = zb[i], y = l;
        total += w * (MAX (z, 0.0) - z * y + log1p (exp (-fabs (z))));
        if (gb)
          gb[i] = (gfloat) (w * inv * (sigmoid (z) - y));
        continue;
      }
      gdouble lse;
      softmax_pixel (zb + i, hw, classes, p, &lse);
      total += w * (lse - zb[(gsize) l * hw + i]);
      if (gb) {
        gdouble s = w * inv;
        for (gint k = 0; k < classes; k++)
          gb[(gsize) k * hw + i] = (gfloat) (s * (p[k] - (k == l ? 1.0 : 0.0)));
      }
    }
  }
  *loss = total * inv;
  return TRUE;
}

/* Probabilities of pixel i for the foreground classes into pf[0..n_fg-1] and all
 * classes into p (softmax) — for K == 1, pf[0] = sigmoid. */
static inline void
fg_probs (const gfloat *zb, gsize hw, gsize i, gint classes, gdouble *p)
{
  if (classes == 1)
    p[0] = sigmoid (zb[i]);
  else
    softmax_pixel (zb + i, hw, classes, p, NULL);
}

gboolean
unet_loss_soft_dice (const gfloat *logits, const gint32 *labels, gint batch,
    gint classes, gint height, gint width, gdouble scale, gdouble *loss,
    gfloat *grad_logits, GError **error)
{
  if (!check_shape (batch, classes, height, width, error))
    return FALSE;
  const gsize hw = (gsize) width * height;
  const gint n_labels = MAX (classes, 2);
  const gint n_fg = n_labels - 1;
  /* Foreground class c (1..n_labels-1) sits at p[c] for softmax, p[0] for sigmoid. */
  const gint off = classes == 1 ? 1 : 0;
  const gdouble eps = 1.0;
  g_autofree gdouble *inter = g_new0 (gdouble, n_labels);
  g_autofree gdouble *psum = g_new0 (gdouble, n_labels);
  g_autofree gdouble *gsum = g_new0 (gdouble, n_labels);
  g_autofree gdouble *p = g_new (gdouble, classes);
  g_autofree gdouble *dp = g_new (gdouble, classes);

  for (gint b = 0; b < batch; b++) {
    const gfloat *zb = logits + (gsize) b * classes * hw;
    for (gsize i = 0; i < hw; i++) {
      gint32 l = labels[(gsize) b * hw + i];
      if (l == UNET_LABEL_IGNORE)
        continue;
      if (l < 0 || l >= n_labels)
        return label_error (l, classes, (gsize) b * hw + i, width, height, error);
      fg_probs (zb, hw, i, classes, p);
      for (gint c = 1; c < n_labels; c++) {
        gdouble pc = p[c - off];
        psum[c] += pc;
        if (l == c) {
          inter[c] += pc;
          gsum[c] += 1.0;
        }
      }
    }
  }

  gdouble mean = 0.0;
  for (gint c = 1; c < n_labels; c++)
    mean += (2.0 * inter[c] + eps) / (psum[c] + gsum[c] + eps);
  mean /= n_fg;
  *loss = 1.0 - mean;
  if (!grad_logits || scale == 0.0)
    return TRUE;

  for (gint b = 0; b < batch; b++) {
    const gfloat *zb = logits + (gsize) b * classes * hw;
    gfloat *gb = grad_logits + (gsize) b * classes * hw;
    for (gsize i = 0; i < hw; i++) {
      gint32 l = labels[(gsize) b * hw + i];
      if (l == UNET_LABEL_IGNORE)
        continue;
      fg_probs (zb, hw, i, classes, p);
      /* dL/dp_c = -(1/n_fg) (2 g_c U_c - (2 I_c + eps)) / U_c², U_c = P_c + G_c + eps */
      memset (dp, 0, sizeof (gdouble) * classes);
      for (gint c = 1; c < n_labels; c++) {
        gdouble u = psum[c] + gsum[c] + eps;
        gdouble g = l == c ? 1.0 : 0.0;
        dp[c - off] = -(2.0 * g * u - (2.0 * inter[c] + eps)) / (u * u * n_fg);
      }
      if (classes == 1) {
        gb[i] += (gfloat) (scale * dp[0] * p[0] * (1.0 - p[0]));
        continue;
      }
      gdouble dot = 0.0;
      for (gint k = 0; k < classes; k++)
        dot += p[k] * dp[k];
      for (gint k = 0; k < classes; k++)
        gb[(gsize) k * hw + i] += (gfloat) (scale * p[k] * (dp[k] - dot));
    }
  }
  return TRUE;
}

void
unet_dice_counts_init (UnetDiceCounts *counts, gint classes)
{
  memset (counts, 0, sizeof (*counts));
  counts->n_classes = CLAMP (MAX (classes, 2), 2, 16);
}

void
unet_confusion_init (UnetConfusion *conf, gint classes)
{
  memset (conf, 0, sizeof (*conf));
  conf->n_classes = CLAMP (MAX (classes, 2), 2, 16);
}

gboolean
unet_confusion_add (UnetConfusion *conf, const gfloat *logits, const gint32 *labels,
    gint batch, gint classes, gint height, gint width, GError **error)
{
  if (!check_shape (batch, classes, height, width, error))
    return FALSE;
  if (MAX (classes, 2) != conf->n_classes || classes > 16) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "a confusion matrix of %d classes cannot take %d-class logits (at most 16)",
        conf->n_classes, classes);
    return FALSE;
  }
  const gsize hw = (gsize) width * height;
  for (gint b = 0; b < batch; b++) {
    const gfloat *zb = logits + (gsize) b * classes * hw;
    for (gsize i = 0; i < hw; i++) {
      gint32 l = labels[(gsize) b * hw + i];
      if (l == UNET_LABEL_IGNORE)
        continue;
      if (l < 0 || l >= conf->n_classes)
        return label_error (l, classes, (gsize) b * hw + i, width, height, error);
      gint pred;
      if (classes == 1) {
        pred = zb[i] > 0.0f ? 1 : 0;
      } else {
        pred = 0;
        for (gint k = 1; k < classes; k++)
          if (zb[(gsize) k * hw + i] > zb[(gsize) pred * hw + i])
            pred = k;
      }
      conf->n[l][pred]++;
    }
  }
  return TRUE;
}

void
unet_dice_counts_add_confusion (UnetDiceCounts *counts, const UnetConfusion *conf)
{
  g_return_if_fail (counts->n_classes == conf->n_classes);
  for (gint l = 0; l < conf->n_classes; l++)
    for (gint p = 0; p < conf->n_classes; p++) {
      guint64 c = conf->n[l][p];
      counts->pred[p] += c;
      counts->label[l] += c;
      if (p == l)
        counts->inter[l] += c;
      counts->fg_pred += p != 0 ? c : 0;
      counts->fg_label += l != 0 ? c : 0;
      counts->fg_inter += p != 0 && l != 0 ? c : 0;
    }
}

gboolean
unet_dice_counts_add (UnetDiceCounts *counts, const gfloat *logits,
    const gint32 *labels, gint batch, gint classes, gint height, gint width,
    GError **error)
{
  UnetConfusion conf;
  if (MAX (classes, 2) != counts->n_classes || classes > 16) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "Dice counts for %d classes cannot take %d-class logits (at most 16)",
        counts->n_classes, classes);
    return FALSE;
  }
  unet_confusion_init (&conf, classes);
  if (!unet_confusion_add (&conf, logits, labels, batch, classes, height, width, error))
    return FALSE;
  unet_dice_counts_add_confusion (counts, &conf);
  return TRUE;
}

static gdouble
dice_of (guint64 inter, guint64 pred, guint64 label)
{
  if (pred + label == 0)
    return 1.0;
  return 2.0 * (gdouble) inter / (gdouble) (pred + label);
}

gdouble
unet_dice_counts_class (const UnetDiceCounts *counts, gint cls)
{
  if (cls < 0 || cls >= counts->n_classes)
    return -1.0;
  return dice_of (counts->inter[cls], counts->pred[cls], counts->label[cls]);
}

gdouble
unet_dice_counts_foreground (const UnetDiceCounts *counts)
{
  return dice_of (counts->fg_inter, counts->fg_pred, counts->fg_label);
}

gboolean
unet_loss_batch (const gfloat *logits, const gint32 *labels, const gfloat *weights,
    gint batch, gint classes, gint height, gint width, gdouble dice_weight,
    gdouble *loss, gfloat *grad_logits, UnetConfusion *confusion, GError **error)
{
  gdouble dl = 0.0;
  if (!unet_loss_cross_entropy (logits, labels, weights, batch, classes, height, width,
          loss, grad_logits, error))
    return FALSE;
  if (dice_weight > 0.0) {
    if (!unet_loss_soft_dice (logits, labels, batch, classes, height, width,
            dice_weight, &dl, grad_logits, error))
      return FALSE;
    *loss += dice_weight * dl;
  }
  unet_confusion_init (confusion, classes);
  return unet_confusion_add (confusion, logits, labels, batch, classes, height, width,
      error);
}

gboolean
unet_loss_buffers (gfloat **logits, gfloat **grad, gsize *have, gsize n, GError **error)
{
  if (n <= *have)
    return TRUE;
  g_free (*logits);
  g_free (*grad);
  *logits = g_try_new (gfloat, n);
  *grad = g_try_new (gfloat, n);
  *have = *logits != NULL && *grad != NULL ? n : 0;
  if (*have == 0) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_OUT_OF_MEMORY,
        "cannot allocate the loss buffers of %" G_GSIZE_FORMAT " logits", n);
    return FALSE;
  }
  return TRUE;
}
