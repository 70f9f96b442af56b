/* Driver for tests/engine/train_torch_check.py: runs the engine's loss and
 * optimiser code on inputs written by the script and writes the results back, so
 * the script can compare them with PyTorch autograd / torch.optim in float64.
 *
 * Usage: train-check-tool loss|optim|scores IN OUT
 * All values little-endian; layouts are documented in the script.
 */
#include "training.h"

#include <stdio.h>
#include <string.h>

typedef struct
{
  const guint8 *p, *end;
} Reader;

static gboolean
rd (Reader *r, gpointer out, gsize n)
{
  if ((gsize) (r->end - r->p) < n)
    return FALSE;
  memcpy (out, r->p, n);
  r->p += n;
  return TRUE;
}

static gint32
rd_i32 (Reader *r)
{
  gint32 v = 0;
  if (!rd (r, &v, 4))
    g_error ("input too short");
  return v;
}

static gdouble
rd_f64 (Reader *r)
{
  gdouble v = 0;
  if (!rd (r, &v, 8))
    g_error ("input too short");
  return v;
}

static gpointer
rd_array (Reader *r, gsize n_bytes)
{
  gpointer a = g_malloc (MAX (n_bytes, 1));
  if (!rd (r, a, n_bytes))
    g_error ("input too short");
  return a;
}

static void
run_loss (Reader *r, GByteArray *out)
{
  gint32 B = rd_i32 (r), K = rd_i32 (r), H = rd_i32 (r), W = rd_i32 (r);
  gint32 has_w = rd_i32 (r);
  gdouble dice_scale = rd_f64 (r);
  gsize n = (gsize) B * H * W;
  g_autofree gfloat *z = rd_array (r, n * K * sizeof (gfloat));
  g_autofree gint32 *y = rd_array (r, n * sizeof (gint32));
  g_autofree gfloat *w = has_w ? rd_array (r, n * sizeof (gfloat)) : NULL;
  g_autofree gfloat *grad = g_new (gfloat, n * K);
  g_autoptr (GError) error = NULL;
  gdouble ce, dice;

  if (!unet_loss_cross_entropy (z, y, w, B, K, H, W, &ce, grad, &error))
    g_error ("cross entropy: %s", error->message);
  g_byte_array_append (out, (guint8 *) & ce, 8);
  g_byte_array_append (out, (guint8 *) grad, n * K * sizeof (gfloat));

  memset (grad, 0, n * K * sizeof (gfloat));
  if (!unet_loss_soft_dice (z, y, B, K, H, W, dice_scale, &dice, grad, &error))
    g_error ("soft dice: %s", error->message);
  g_byte_array_append (out, (guint8 *) & dice, 8);
  g_byte_array_append (out, (guint8 *) grad, n * K * sizeof (gfloat));

  UnetDiceCounts counts;
  unet_dice_counts_init (&counts, K);
  /* Two calls over halves of the batch must equal one call (accumulation). */
  gint b0 = B / 2;
  if (b0 > 0 && !unet_dice_counts_add (&counts, z, y, b0, K, H, W, &error))
    g_error ("dice: %s", error->message);
  if (!unet_dice_counts_add (&counts, z + (gsize) b0 * K * H * W,
          y + (gsize) b0 * H * W, B - b0, K, H, W, &error))
    g_error ("dice: %s", error->message);
  for (gint c = 0; c < MAX (K, 2); c++) {
    gdouble d = unet_dice_counts_class (&counts, c);
    g_byte_array_append (out, (guint8 *) & d, 8);
  }
  gdouble fg = unet_dice_counts_foreground (&counts);
  g_byte_array_append (out, (guint8 *) & fg, 8);
}

static void
run_optim (Reader *r, GByteArray *out)
{
  UnetOptimParams p;
  unet_optim_params_init (&p);
  p.kind = rd_i32 (r);
  p.schedule = rd_i32 (r);
  p.nesterov = rd_i32 (r);
  gint32 n = rd_i32 (r), steps = rd_i32 (r), n_ranges = rd_i32 (r);
  p.lr = rd_f64 (r);
  p.momentum = rd_f64 (r);
  p.beta1 = rd_f64 (r);
  p.beta2 = rd_f64 (r);
  p.eps = rd_f64 (r);
  p.weight_decay = rd_f64 (r);
  p.total_steps = (gint64) rd_f64 (r);
  p.poly_power = rd_f64 (r);
  p.lr_min = rd_f64 (r);
  p.warmup_steps = (gint64) rd_f64 (r);
  g_autofree UnetOptimRange *ranges = g_new0 (UnetOptimRange, MAX (n_ranges, 1));
  for (gint i = 0; i < n_ranges; i++) {
    ranges[i].offset = rd_i32 (r);
    ranges[i].numel = rd_i32 (r);
    ranges[i].decay = rd_i32 (r);
  }
  g_autofree gfloat *w = rd_array (r, n * sizeof (gfloat));
  g_autoptr (GError) error = NULL;
  g_autoptr (UnetOptimizer) opt = unet_optimizer_new (&p, n,
      n_ranges ? ranges : NULL, n_ranges, &error);
  if (!opt)
    g_error ("optimizer: %s", error->message);
  for (gint s = 0; s < steps; s++) {
    g_autofree gfloat *g = rd_array (r, n * sizeof (gfloat));
    gdouble lr = unet_optimizer_get_lr (opt);
    if (!unet_optimizer_step (opt, w, g, &error))
      g_error ("step: %s", error->message);
    g_byte_array_append (out, (guint8 *) & lr, 8);
    g_byte_array_append (out, (guint8 *) w, n * sizeof (gfloat));
    for (guint b = 0; b < unet_optimizer_get_n_buffers (opt); b++)
      g_byte_array_append (out, (guint8 *) unet_optimizer_get_buffer (opt, b),
          n * sizeof (gfloat));
  }
}

/* scores: n_frames, classes, H, W, then per frame pred, labels, objects (H·W int32
 * each); out: pixel error, Rand error, Dice, missing class (1 %) as 4 float64. */
static void
run_scores (Reader *r, GByteArray *out)
{
  gint32 F = rd_i32 (r), K = rd_i32 (r), H = rd_i32 (r), W = rd_i32 (r);
  gsize n = (gsize) H * W * sizeof (gint32);
  UnetSegScores s;
  unet_seg_scores_init (&s, K);
  for (gint f = 0; f < F; f++) {
    g_autofree gint32 *pred = rd_array (r, n);
    g_autofree gint32 *labels = rd_array (r, n);
    g_autofree gint32 *objects = rd_array (r, n);
    g_autoptr (GError) error = NULL;
    if (!unet_seg_scores_add_frame (&s, pred, labels, objects, W, H, &error))
      g_error ("scores: %s", error->message);
  }
  gdouble v[4] = { unet_seg_scores_pixel_error (&s),
    unet_seg_scores_rand_error (&s), unet_seg_scores_dice (&s),
    unet_seg_scores_missing_class (&s, 0.01)
  };
  g_byte_array_append (out, (guint8 *) v, sizeof (v));
}

int
main (int argc, char **argv)
{
  if (argc != 4) {
    fprintf (stderr, "usage: %s loss|optim|scores IN OUT\n", argv[0]);
    return 2;
  }
  g_autofree gchar *data = NULL;
  gsize len = 0;
  g_autoptr (GError) error = NULL;
  if (!g_file_get_contents (argv[2], &data, &len, &error))
    g_error ("%s", error->message);
  Reader r = { (const guint8 *) data, (const guint8 *) data + len };
  g_autoptr (GByteArray) out = g_byte_array_new ();
  if (strcmp (argv[1], "loss") == 0)
    run_loss (&r, out);
  else if (strcmp (argv[1], "optim") == 0)
    run_optim (&r, out);
  else if (strcmp (argv[1], "scores") == 0)
    run_scores (&r, out);
  else
    g_error ("unknown mode %s", argv[1]);
  if (!g_file_set_contents (argv[3], (const gchar *) out->data, out->len, &error))
    g_error ("%s", error->message);
  return 0;
}
