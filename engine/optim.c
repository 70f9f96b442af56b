/* gst-unet engine — optimisers on the flat parameter slab, PyTorch semantics.
 *
 * SGD   (torch.optim.SGD, dampening 0):  g += wd·p;  b = g (first step) or
 *       b = μ·b + g;  g = g + μ·b (Nesterov) or b;  p -= lr·g
 * Adam  (torch.optim.Adam):  g += wd·p;  m = β1 m + (1-β1) g;  v = β2 v + (1-β2) g²;
 *       p -= lr/(1-β1^t) · m / (sqrt(v)/sqrt(1-β2^t) + eps)
 * AdamW (torch.optim.AdamW): p *= 1 - lr·wd, then the Adam update without L2.
 * Schedules are the closed forms of CosineAnnealingLR(T_max = T, eta_min) and
 * PolynomialLR(total_iters = T, power), evaluated at the step index t (0-based).
 *
 * Arithmetic is double per element; parameters and state are float32, so a saved
 * state resumes bit-identically. tests/engine/train_torch_check.py runs several
 * steps against torch.optim in float64.
 */
#include "optim-elem.h"
#include "training.h"

#include <math.h>
#include <string.h>

struct _UnetOptimizer
{
  UnetOptimParams p;
  gsize n;
  UnetOptimRange *ranges;
  guint n_ranges;
  gint64 step;                  /* steps taken */
  guint n_buffers;
  const gchar *names[2];
  gfloat *buffers[2];           /* n floats each */
};

void
unet_optim_params_init (UnetOptimParams *params)
{
  memset (params, 0, sizeof (*params));
  params->kind = UNET_OPTIM_SGD;
  params->lr = 0.01;
  params->momentum = 0.99;
  params->nesterov = FALSE;
  params->beta1 = 0.9;
  params->beta2 = 0.999;
  params->eps = 1e-8;
  params->weight_decay = 0.0;
  params->schedule = UNET_LR_CONSTANT;
  params->total_steps = 1;
  params->poly_power = 0.9;
  params->lr_min = 0.0;
  params->warmup_steps = 0;
}

const gchar *
unet_optim_kind_name (UnetOptimKind kind)
{
  switch (kind) {
    case UNET_OPTIM_SGD:
      return "sgd";
    case UNET_OPTIM_ADAM:
      return "adam";
    case UNET_OPTIM_ADAMW:
      return "adamw";
  }
  return "unknown";
}

const gchar *
unet_lr_schedule_name (UnetLrSchedule schedule)
{
  switch (schedule) {
    case UNET_LR_CONSTANT:
      return "constant";
    case UNET_LR_COSINE:
      return "cosine";
    case UNET_LR_POLY:
      return "poly";
  }
  return "unknown";
}

static gboolean
params_valid (const UnetOptimParams *p, GError **error)
{
  const gchar *why = NULL;
  if (p->kind != UNET_OPTIM_SGD && p->kind != UNET_OPTIM_ADAM &&
      p->kind != UNET_OPTIM_ADAMW)
    why = "unknown optimiser";
  else if (!(p->lr >= 0.0) || !isfinite (p->lr))
    why = "learning rate must be finite and >= 0";
  else if (!(p->weight_decay >= 0.0) || !isfinite (p->weight_decay))
    why = "weight decay must be finite and >= 0";
  else if (p->kind == UNET_OPTIM_SGD && !(p->momentum >= 0.0 && p->momentum < 1.0))
    why = "momentum must be in [0, 1)";
  else if (p->kind == UNET_OPTIM_SGD && p->nesterov && p->momentum == 0.0)
    why = "Nesterov momentum needs momentum > 0";
  else if (p->kind != UNET_OPTIM_SGD && !(p->beta1 >= 0.0 && p->beta1 < 1.0 &&
          p->beta2 >= 0.0 && p->beta2 < 1.0))
    why = "Adam betas must be in [0, 1)";
  else if (p->kind != UNET_OPTIM_SGD && !(p->eps > 0.0))
    why = "Adam eps must be > 0";
  else if (p->schedule != UNET_LR_CONSTANT && p->total_steps < 1)
    why = "a cosine or poly schedule needs total steps >= 1";
  else if (p->schedule == UNET_LR_POLY && !(p->poly_power > 0.0))
    why = "poly power must be > 0";
  else if (p->schedule == UNET_LR_COSINE && !(p->lr_min >= 0.0 && p->lr_min <= p->lr))
    why = "cosine minimum learning rate must be in [0, lr]";
  else if (p->warmup_steps < 0)
    why = "warm-up steps must be >= 0";
  if (why) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "optimiser %s: %s", unet_optim_kind_name (p->kind), why);
    return FALSE;
  }
  return TRUE;
}

UnetOptimizer *
unet_optimizer_new (const UnetOptimParams *params, gsize n,
    const UnetOptimRange *ranges, guint n_ranges, GError **error)
{
  if (!params_valid (params, error))
    return NULL;
  if (n == 0 || n > G_MAXSIZE / sizeof (gfloat) / 2) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "optimiser over %" G_GSIZE_FORMAT " parameters", n);
    return NULL;
  }
  for (guint r = 0; ranges && r < n_ranges; r++)
    if (ranges[r].offset > n || ranges[r].numel > n - ranges[r].offset) {
      g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
          "optimiser range %u (%" G_GSIZE_FORMAT " + %" G_GSIZE_FORMAT
          ") exceeds the slab of %" G_GSIZE_FORMAT, r, ranges[r].offset,
          ranges[r].numel, n);
      return NULL;
    }

  UnetOptimizer *opt = g_new0 (UnetOptimizer, 1);
  opt->p = *params;
  opt->n = n;
  if (ranges) {
    opt->ranges = g_memdup2 (ranges, sizeof (UnetOptimRange) * n_ranges);
    opt->n_ranges = n_ranges;
  } else {
    opt->ranges = g_new (UnetOptimRange, 1);
    opt->ranges[0] = (UnetOptimRange) {
    0, n, TRUE};
    opt->n_ranges = 1;
  }
  if (params->kind == UNET_OPTIM_SGD) {
    if (params->momentum > 0.0) {
      opt->names[opt->n_buffers++] = "optim.momentum_buffer";
    }
  } else {
    opt->names[opt->n_buffers++] = "optim.exp_avg";
    opt->names[opt->n_buffers++] = "optim.exp_avg_sq";
  }
  for (guint b = 0; b < opt->n_buffers; b++) {
    opt->buffers[b] = g_try_malloc0 (n * sizeof (gfloat));
    if (!opt->buffers[b]) {
      g_set_error (error, UNET_ERROR, UNET_ERROR_OUT_OF_MEMORY,
          "cannot allocate optimiser state of %" G_GSIZE_FORMAT " floats", n);
      unet_optimizer_free (opt);
      return NULL;
    }
  }
  return opt;
}

void
unet_optimizer_free (UnetOptimizer *opt)
{
  if (!opt)
    return;
  for (guint b = 0; b < opt->n_buffers; b++)
    g_free (opt->buffers[b]);
  g_free (opt->ranges);
  g_free (opt);
}

const UnetOptimParams *
unet_optimizer_get_params (const UnetOptimizer *opt)
{
  return &opt->p;
}

gint64
unet_optimizer_get_step (const UnetOptimizer *opt)
{
  return opt->step;
}

void
unet_optimizer_set_step (UnetOptimizer *opt, gint64 step)
{
  opt->step = MAX (step, 0);
}

/* The schedule at step t, without warm-up. */
static gdouble
scheduled_lr (const UnetOptimParams *p, gdouble t)
{
  gdouble T = (gdouble) p->total_steps;
  switch (p->schedule) {
    case UNET_LR_CONSTANT:
      break;
    case UNET_LR_COSINE:
      /* CosineAnnealingLR's closed form; it continues periodically past T as
       * PyTorch's does. */
      return p->lr_min + (p->lr - p->lr_min) * (1.0 + cos (G_PI * t / T)) / 2.0;
    case UNET_LR_POLY:
      return p->lr * pow (1.0 - MIN (t, T) / T, p->poly_power);
  }
  return p->lr;
}

gdouble
unet_optimizer_get_lr (const UnetOptimizer *opt)
{
  const UnetOptimParams *p = &opt->p;
  gdouble lr = scheduled_lr (p, (gdouble) opt->step);
  /* Linear warm-up: step t (0-based) uses (t + 1) / W of the scheduled rate
   * for t < W (PyTorch's LinearLR(start_factor=1/W, total_iters=W-1) chained
   * with the schedule). */
  if (opt->step < p->warmup_steps)
    lr *= (gdouble) (opt->step + 1) / (gdouble) p->warmup_steps;
  return lr;
}

guint
unet_optimizer_get_n_buffers (const UnetOptimizer *opt)
{
  return opt->n_buffers;
}

const gchar *
unet_optimizer_get_buffer_name (const UnetOptimizer *opt, guint index)
{
  return index < opt->n_buffers ? opt->names[index] : NULL;
}

gfloat *
unet_optimizer_get_buffer (UnetOptimizer *opt, guint index)
{
  return index < opt->n_buffers ? opt->buffers[index] : NULL;
}

void
unet_optimizer_next_update (const UnetOptimizer *opt, UnetOptimUpdate *u)
{
  const UnetOptimParams *p = &opt->p;
  *u = (UnetOptimUpdate) {
    .kind = p->kind, .lr = unet_optimizer_get_lr (opt), .momentum = p->momentum,
    .beta1 = p->beta1, .beta2 = p->beta2, .eps = p->eps,
    .weight_decay = p->weight_decay, .nesterov = p->nesterov, .t = opt->step + 1,
    .ranges = opt->ranges, .n_ranges = opt->n_ranges, .n_buffers = opt->n_buffers,
    .n = opt->n,
  };
}

void
unet_optimizer_advance (UnetOptimizer *opt)
{
  opt->step++;
}

gboolean
unet_optim_update_host (const UnetOptimUpdate *u, gfloat *params, const gfloat *grads,
    gfloat *const *buffers, GError **error)
{
  for (guint r = 0; r < u->n_ranges; r++) {
    const gfloat *g = grads + u->ranges[r].offset;
    for (gsize i = 0; i < u->ranges[r].numel; i++)
      if (!isfinite (g[i])) {
        g_set_error (error, UNET_ERROR, UNET_ERROR_FAILED,
            "non-finite gradient at parameter %" G_GSIZE_FORMAT
            " in step %" G_GINT64_FORMAT " (lower the learning rate?)",
            u->ranges[r].offset + i, u->t);
        return FALSE;
      }
  }

  const gdouble lr = u->lr;
  const gint64 t = u->t;
  const gboolean first = t == 1;

  for (guint r = 0; r < u->n_ranges; r++) {
    const gsize off = u->ranges[r].offset, len = u->ranges[r].numel;
    const gdouble wd = u->ranges[r].decay ? u->weight_decay : 0.0;
    gfloat *w = params + off;
    const gfloat *g = grads + off;

    if (u->kind == UNET_OPTIM_SGD) {
      const gdouble mu = u->momentum;
      const gboolean nesterov = u->nesterov;
      gfloat *buf = u->n_buffers ? buffers[0] + off : NULL;
#pragma omp parallel for if (len > 65536) schedule(static)
      for (gsize i = 0; i < len; i++)
        unet_optim_sgd_elem (w + i, g[i], buf ? buf + i : NULL, lr, mu, wd, nesterov,
            first);
    } else {
      const gdouble b1 = u->beta1, b2 = u->beta2, eps = u->eps;
      const gdouble step_size = lr / (1.0 - pow (b1, (gdouble) t));
      const gdouble bc2_sqrt = sqrt (1.0 - pow (b2, (gdouble) t));
      const gboolean decoupled = u->kind == UNET_OPTIM_ADAMW;
      gfloat *m = buffers[0] + off, *v = buffers[1] + off;
#pragma omp parallel for if (len > 65536) schedule(static)
      for (gsize i = 0; i < len; i++)
        unet_optim_adam_elem (w + i, g[i], m + i, v + i, lr, b1, b2, eps, wd, decoupled,
            step_size, bc2_sqrt);
    }
  }
  return TRUE;
}

gboolean
unet_optimizer_step (UnetOptimizer *opt, gfloat *params, const gfloat *grads,
    GError **error)
{
  UnetOptimUpdate u;
  unet_optimizer_next_update (opt, &u);
  if (!unet_optim_update_host (&u, params, grads, opt->buffers, error))
    return FALSE;
  opt->step++;
  return TRUE;
}
