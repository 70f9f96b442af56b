/* Training on the GPU against training on the CPU, through the public API
 * (unet_net_train_forward / _backward / _get_gradients / _parameters_changed): the
 * same model, input and dL/dlogits on a CPU net and a CUDA net, every precision;
 * logits, every gradient tensor, and the batch-norm running statistics compared.
 * Also: gradients accumulate over two forward + backward passes and are zeroed, and a host
 * parameter change reaches the GPU after unet_net_parameters_changed; and a whole
 * training step with the loss and the optimiser on the device (device_step_case,
 * tolerances there); and the trainer's batches augmented on the device against those
 * made on the host (trainer_paths_case). Dropout is 0:
 * the two executors draw their dropout masks from different generators by design.
 * Exits 77 without a CUDA device.
 *
 * Measure: relative L2 error ||gpu - cpu|| / ||cpu|| per tensor (a per-element
 * bound is meaningless for gradients, which have many near-zero entries).
 *   fp32: 1e-4. Both sides are true fp32 (cuDNN with CUDNN_FMA_MATH, no TF32); only
 *         the summation order differs: ~sqrt(N) * 6e-8 relative per reduction of N
 *         terms (N <= 1e4 here: 6e-6), over a chain of ~4D+3 convolutions backward;
 *         1e-4 leaves headroom and still catches any layout or indexing error
 *         (those give errors of order 1).
 *   tf32 / fp16: 2e-2. Operands rounded to 10 mantissa bits (2^-11 = 4.9e-4
 *         relative per rounding, random sign); fp16 also stores activations and
 *         gradients in 16 bit. Compounded over forward + backward of ~10-15 layers
 *         the relative L2 error stays around 5e-3; 2e-2 is 4x that.
 *   bf16: 8e-2. 7 mantissa bits (2^-8 = 3.9e-3 per rounding), the same compounding:
 *         ~2e-2 expected.
 * Batch-norm running statistics: fp32 1e-5 relative (the batch mean/variance are
 * f64 reductions on both sides), others as the gradients. */
#include "config.h"

#include "gpu-test.h"
#include "model-private.h"
#include "training.h"
#include "unet.h"

static int failures;

typedef struct
{
  const char *name;
  UnetConfig cfg;
  gint batch, out_size;
} Case;

static double
tolerance (UnetPrecision p)
{
  switch (p) {
    case UNET_PRECISION_FP32:
      return 1e-4;
    case UNET_PRECISION_TF32:
    case UNET_PRECISION_FP16:
      return 2e-2;
    case UNET_PRECISION_BF16:
    default:
      return 8e-2;
  }
}

static const char *
precision_name (UnetPrecision p)
{
  const char *names[] = { "fp32", "tf32", "bf16", "fp16" };
  return names[p];
}

static int
check_rel_l2 (const char *what, const float *got, const float *want, gsize n, double tol)
{
  double num = 0.0, den = 0.0;
  for (gsize i = 0; i < n; i++) {
    double d = (double) got[i] - want[i];
    if (!isfinite (got[i])) {
      fprintf (stderr, "FAIL %s: element %zu is %g\n", what, (size_t) i, got[i]);
      return 1;
    }
    num += d * d;
    den += (double) want[i] * want[i];
  }
  double rel = den > 0.0 ? sqrt (num / den) : sqrt (num);
  if (!(rel <= tol)) {
    fprintf (stderr, "FAIL %s: relative L2 error %.3g > %.3g\n", what, rel, tol);
    return 1;
  }
  return 0;
}

static UnetNet *
make_net (UnetModel *m, UnetDevice dev, UnetPrecision prec)
{
  UnetNetOptions o;
  GError *error = NULL;
  unet_net_options_init (&o);
  o.device = dev;
  o.precision = prec;
  UnetNet *net = unet_net_new (m, &o, &error);
  if (net == NULL) {
    fprintf (stderr, "FAIL net on %s: %s\n", unet_device_name (dev), error->message);
    exit (1);
  }
  return net;
}

static gboolean
step (UnetNet *net, const gfloat *in, const Case *c, gint size, const gfloat *dlogits,
    gfloat *logits)
{
  GError *error = NULL;
  g_assert_true (unet_net_zero_gradients (net, NULL));
  if (!unet_net_train_forward (net, in, c->batch, size, size, 7, logits, &error)
      || !unet_net_train_backward (net, dlogits, &error)) {
    fprintf (stderr, "FAIL %s on %s: %s\n", c->name,
        unet_device_name (unet_net_get_device (net)), error->message);
    g_error_free (error);
    failures++;
    return FALSE;
  }
  return TRUE;
}

/* Per-tensor comparison of two slabs of the model's layout: the trainable tensors,
 * or the batch-norm running statistics. */
static void
compare_slabs (const char *what, const UnetModel *m, const gfloat *got, const gfloat *want,
    double tol, gboolean running_stats)
{
  const UnetLayout *L = unet_model_get_layout (m);
  for (guint i = 0; i < L->n_tensors; i++) {
    const UnetTensorInfo *t = &L->tensors[i];
    if (t->trainable == running_stats)
      continue;
    gchar *label = g_strdup_printf ("%s %s", what, t->name);
    failures += check_rel_l2 (label, got + t->offset, want + t->offset, t->numel, tol);
    g_free (label);
  }
}

static void
run_case (const Case *c, UnetPrecision prec)
{
  g_autoptr (UnetModel) m = NULL;
  GError *error = NULL;
  gint size = unet_config_input_for_output (&c->cfg, c->out_size);
  gint out = unet_config_output_size (&c->cfg, size);
  gsize n_in = (gsize) c->batch * c->cfg.in_channels * size * size;
  gsize n_out = (gsize) c->batch * c->cfg.classes * out * out;
  guint64 s = 1234;
  gsize n_cpu, n_gpu;
  double tol = tolerance (prec);
  gchar *what = g_strdup_printf ("%s/%s", c->name, precision_name (prec));
  int failures_before = failures;

  m = unet_model_new (&c->cfg, &error);
  g_assert_no_error (error);
  unet_model_init_weights (m, 42);
  gfloat *in = g_new (gfloat, n_in), *dl = g_new (gfloat, n_out);
  gfloat *lc = g_new (gfloat, n_out), *lg = g_new (gfloat, n_out);
  for (gsize i = 0; i < n_in; i++)
    in[i] = rand_uniform (&s, -1.0f, 1.0f);
  /* a mean-reduced loss's gradient: O(1 / pixels) per element */
  for (gsize i = 0; i < n_out; i++)
    dl[i] = rand_uniform (&s, -1.0f, 1.0f) / (gfloat) n_out;

  UnetNet *cpu = make_net (m, UNET_DEVICE_CPU, UNET_PRECISION_FP32);
  UnetNet *gpu = make_net (m, UNET_DEVICE_CUDA, prec);
  if (step (cpu, in, c, size, dl, lc) && step (gpu, in, c, size, dl, lg)) {
    gchar *l = g_strdup_printf ("%s logits", what);
    failures += check_rel_l2 (l, lg, lc, n_out, tol);
    g_free (l);
    const gfloat *gc = unet_net_get_gradients (cpu, &n_cpu, NULL);
    const gfloat *gg = unet_net_get_gradients (gpu, &n_gpu, NULL);
    g_assert (gg != NULL && n_cpu == n_gpu);
    gfloat *gc_copy = g_memdup2 (gc, n_cpu * sizeof (gfloat));
    gfloat *gg_copy = g_memdup2 (gg, n_gpu * sizeof (gfloat));
    compare_slabs (what, m, gg_copy, gc_copy, tol, FALSE);
    if (c->cfg.batch_norm) {
      gsize np;
      gfloat *pc = unet_net_get_parameters (cpu, &np, NULL);
      gfloat *pg = unet_net_get_parameters (gpu, &np, NULL);
      compare_slabs (what, m, pg, pc, prec == UNET_PRECISION_FP32 ? 1e-5 : tol, TRUE);
    }

    /* accumulation: a second forward + backward of the same batch without zeroing
     * doubles the gradients (dropout is 0; batch norm normalises with the batch's
     * statistics, so the running statistics the first forward moved do not matter).
     * A second backward alone would not do: the arena lets gradients reuse the memory
     * of activations whose backward is done. */
    if (prec == UNET_PRECISION_FP32) {
      if (!unet_net_train_forward (gpu, in, c->batch, size, size, 7, lg, &error)
          || !unet_net_train_backward (gpu, dl, &error)) {
        fprintf (stderr, "FAIL %s second forward + backward: %s\n", what, error->message);
        g_clear_error (&error);
        failures++;
      } else {
        const gfloat *g2 = unet_net_get_gradients (gpu, &n_gpu, NULL);
        for (gsize i = 0; i < n_gpu; i++)
          gc_copy[i] = 2.0f * gg_copy[i];
        /* the same passes again (the same algorithms, deterministic ones preferred
         * backward): only the final addition rounds differently */
        failures += check_rel_l2 ("accumulated gradients", g2, gc_copy, n_gpu, 1e-6);
      }
      g_assert_true (unet_net_zero_gradients (gpu, NULL));
      const gfloat *gz = unet_net_get_gradients (gpu, &n_gpu, NULL);
      for (gsize i = 0; i < n_gpu; i++)
        if (gz[i] != 0.0f) {
          fprintf (stderr, "FAIL %s: gradient %zu not zeroed\n", what, (size_t) i);
          failures++;
          break;
        }

      /* a host-side parameter change reaches the GPU executor */
      gsize np;
      gfloat *pc = unet_net_get_parameters (cpu, &np, NULL);
      gfloat *pg = unet_net_get_parameters (gpu, &np, NULL);
      for (gsize i = 0; i < np; i++) {
        pc[i] *= 0.5f;
        pg[i] = pc[i];
      }
      if (!unet_net_parameters_changed (cpu, &error)
          || !unet_net_parameters_changed (gpu, &error)) {
        fprintf (stderr, "FAIL parameters_changed: %s\n", error->message);
        exit (1);
      }
      if (step (cpu, in, c, size, dl, lc) && step (gpu, in, c, size, dl, lg)) {
        gchar *l2 = g_strdup_printf ("%s logits after a parameter change", what);
        failures += check_rel_l2 (l2, lg, lc, n_out, tol);
        g_free (l2);
      }
    }
    g_free (gc_copy);
    g_free (gg_copy);
  }
  printf ("%s %s (%dx%d, batch %d)\n", failures > failures_before ? "FAILED" : "ok", what,
      size, size, c->batch);
  unet_net_free (cpu);
  unet_net_free (gpu);
  g_free (in);
  g_free (dl);
  g_free (lc);
  g_free (lg);
  g_free (what);
}

/* ---- a whole training step on the device (issue 15 item 3) against the CPU's ----
 * Both nets run two steps of unet_net_train_forward (no logits) -> unet_net_train_loss
 * -> zero -> unet_net_train_backward (no dL/dlogits) -> unet_net_optimizer_step from
 * the same model, batch, labels (some ignored) and weights: the CUDA net through its
 * loss / optimizer slots (cuda-step.c), the CPU net through the CPU backend's.
 * Compared:
 *   loss: |gpu - cpu| <= 2 tol rms(z) + 1e-6: the cross-entropy (and soft Dice) move
 *     by at most sum_k |dL/dz_k| <= 2 (times the weight, normalised) per unit logit
 *     change, and the logits agree to tol in relative L2 (run_case);
 *   confusion: label counts (row sums) exactly — the labels are the same bytes;
 *     predictions may flip where the two largest logits are closer than the logits'
 *     error: at most 1% of the labelled pixels in fp32, 5% in 16 bit;
 *   the update of every trainable tensor (parameters after minus before), relative
 *     L2: SGD (Nesterov, weight decay on half the slab) is linear in the gradients,
 *     so the gradient tolerance applies; Adam (fp32 only) divides each gradient by
 *     its own running magnitude, so an element's relative error enters at full
 *     weight however small the gradient: 10x the fp32 tolerance;
 *   batch-norm running statistics as run_case. */
static int
device_step (UnetNet *net, UnetOptimizer *opt, const gfloat *in, const Case *c, gint size,
    const gint32 *labels, const gfloat *weights, gdouble dice, gdouble *loss,
    UnetConfusion *conf)
{
  GError *error = NULL;
  gboolean finite = FALSE;
  if (!unet_net_train_forward (net, in, c->batch, size, size, 7, NULL, &error)
      || !unet_net_train_loss (net, labels, weights, dice, loss, conf, &error)
      || !unet_net_zero_gradients (net, &error)
      || !unet_net_train_backward (net, NULL, &error)
      || !unet_net_optimizer_step (net, opt, &finite, &error)) {
    fprintf (stderr, "FAIL %s device step on %s: %s\n", c->name,
        unet_device_name (unet_net_get_device (net)), error->message);
    g_error_free (error);
    failures++;
    return 0;
  }
  if (!finite) {
    fprintf (stderr, "FAIL %s: non-finite parameters\n", c->name);
    failures++;
    return 0;
  }
  return 1;
}

static void
device_step_case (const Case *c, UnetPrecision prec, UnetOptimKind kind, gdouble dice)
{
  g_autoptr (UnetModel) m = NULL;
  GError *error = NULL;
  gint size = unet_config_input_for_output (&c->cfg, c->out_size);
  gint out = unet_config_output_size (&c->cfg, size);
  gsize n_in = (gsize) c->batch * c->cfg.in_channels * size * size;
  gsize n_pix = (gsize) c->batch * out * out;
  gsize n_out = n_pix * c->cfg.classes, np;
  guint64 s = 4321;
  double tol = kind == UNET_OPTIM_SGD ? tolerance (prec) : 10.0 * tolerance (prec);
  gchar *what = g_strdup_printf ("%s/%s/%s%s", c->name, precision_name (prec),
      unet_optim_kind_name (kind), dice > 0.0 ? "+dice" : "");
  int failures_before = failures;
  UnetOptimParams op;
  UnetOptimizer *opt[2];
  UnetConfusion cc, cg;
  gdouble loss_c = 0.0, loss_g = 0.0;

  m = unet_model_new (&c->cfg, &error);
  g_assert_no_error (error);
  unet_model_init_weights (m, 43);
  const UnetLayout *L = unet_model_get_layout (m);
  gfloat *in = g_new (gfloat, n_in), *w = g_new (gfloat, n_pix), *z = g_new (gfloat, n_out);
  gint32 *lab = g_new (gint32, n_pix);
  for (gsize i = 0; i < n_in; i++)
    in[i] = rand_uniform (&s, -1.0f, 1.0f);
  for (gsize i = 0; i < n_pix; i++) {
    gint k = (gint) rand_uniform (&s, 0.0f, MAX (c->cfg.classes, 2) - 0.001f);
    lab[i] = i % 13 == 5 ? UNET_LABEL_IGNORE : k;
    w[i] = rand_uniform (&s, 0.2f, 3.0f);
  }
  /* weight decay on the first half of the slab only: two ranges */
  const UnetOptimRange ranges[] = { { 0, L->slab_numel / 2, TRUE },
    { L->slab_numel / 2, L->slab_numel - L->slab_numel / 2, FALSE } };
  unet_optim_params_init (&op);
  op.kind = kind;
  op.lr = kind == UNET_OPTIM_SGD ? 0.05 : 1e-3;
  op.momentum = 0.9;
  op.nesterov = TRUE;
  op.weight_decay = 1e-3;
  for (int i = 0; i < 2; i++) {
    opt[i] = unet_optimizer_new (&op, L->slab_numel, ranges, 2, &error);
    g_assert_no_error (error);
  }

  UnetNet *cpu = make_net (m, UNET_DEVICE_CPU, UNET_PRECISION_FP32);
  UnetNet *gpu = make_net (m, UNET_DEVICE_CUDA, prec);
  const gfloat *p_init = unet_net_get_parameters (cpu, &np, NULL);
  gfloat *p0 = g_memdup2 (p_init, np * sizeof (gfloat));
  /* the logits of the first step, for the loss bound (a third net: a training
   * forward moves the batch-norm running statistics) */
  UnetNet *ref = make_net (m, UNET_DEVICE_CPU, UNET_PRECISION_FP32);
  if (!unet_net_train_forward (ref, in, c->batch, size, size, 7, z, &error))
    g_error ("%s", error->message);
  unet_net_free (ref);
  double zz = 0.0;
  for (gsize i = 0; i < n_out; i++)
    zz += (double) z[i] * z[i];
  const double loss_tol = 2.0 * tolerance (prec) * sqrt (zz / n_out) * (1.0 + dice) + 1e-6;

  for (int step = 0; step < 2; step++) {
    if (!device_step (cpu, opt[0], in, c, size, lab, w, dice, &loss_c, &cc)
        || !device_step (gpu, opt[1], in, c, size, lab, w, dice, &loss_g, &cg))
      break;
    if (!(fabs (loss_g - loss_c) <= loss_tol)) {
      fprintf (stderr, "FAIL %s step %d: loss %.9g, CPU %.9g (tolerance %.3g)\n", what, step,
          loss_g, loss_c, loss_tol);
      failures++;
    }
    guint64 flips = 0, labelled = 0;
    for (gint l = 0; l < cc.n_classes; l++) {
      guint64 rc = 0, rg = 0;
      for (gint p = 0; p < cc.n_classes; p++) {
        rc += cc.n[l][p];
        rg += cg.n[l][p];
        flips += cc.n[l][p] > cg.n[l][p] ? cc.n[l][p] - cg.n[l][p] : 0;
      }
      labelled += rc;
      if (rc != rg || cg.n_classes != cc.n_classes) {
        fprintf (stderr, "FAIL %s: label %d counted %" G_GUINT64_FORMAT " times, CPU %"
            G_GUINT64_FORMAT "\n", what, l, rg, rc);
        failures++;
      }
    }
    if (flips > labelled * (prec == UNET_PRECISION_FP32 ? 0.01 : 0.05)) {
      fprintf (stderr, "FAIL %s: %" G_GUINT64_FORMAT " of %" G_GUINT64_FORMAT
          " predictions differ\n", what, flips, labelled);
      failures++;
    }
  }
  if (failures == failures_before) {
    const gfloat *p_cpu = unet_net_get_parameters (cpu, &np, NULL);
    gfloat *pc = g_memdup2 (p_cpu, np * sizeof (gfloat));
    gfloat *pg = unet_net_get_parameters (gpu, &np, NULL);
    /* updates: after minus before (running statistics: their values) */
    for (guint t = 0; t < L->n_tensors; t++) {
      const UnetTensorInfo *ti = &L->tensors[t];
      if (!ti->trainable)
        continue;
      for (gsize i = ti->offset; i < ti->offset + ti->numel; i++) {
        pc[i] -= p0[i];
        pg[i] -= p0[i];
      }
    }
    compare_slabs (what, m, pg, pc, tol, FALSE);
    if (c->cfg.batch_norm)
      compare_slabs (what, m, pg, pc, prec == UNET_PRECISION_FP32 ? 1e-5 : tolerance (prec),
          TRUE);
    g_free (pc);
  }
  printf ("%s device step %s (%dx%d, batch %d)\n", failures > failures_before ? "FAILED"
      : "ok", what, size, size, c->batch);
  unet_net_free (cpu);
  unet_net_free (gpu);
  unet_optimizer_free (opt[0]);
  unet_optimizer_free (opt[1]);
  g_free (p0);
  g_free (in);
  g_free (w);
  g_free (z);
  g_free (lab);
  g_free (what);
}

/* The trainer's two ways to make a batch on a CUDA net: augmented on the device from
 * the resident pairs, and on the host (UNET_CUDA_SAMPLE_MIB=0: no sample fits, so
 * the trainer falls back at the first pair). Same seed, same pairs, same draws: the
 * batches differ by the float arithmetic of the device warp (~1e-5 of the values,
 * tests/engine/test-cuda-bodies' augment-batch), so the first loss agrees to 1e-4
 * relative (cuDNN fp32 with the heuristic algorithms on both nets); later steps add
 * the parameters' drift (Adam moves every weight by ~lr whatever the gradient's
 * size; 7e-6 by step 8 on the CPU, tests/engine/test-host-samples): 1e-3. */
static void
trainer_paths_case (void)
{
  UnetTrainerOptions o;
  GError *error = NULL;
  gdouble loss[2][8];
  const gint w = 97, h = 83;
  guint8 *img = g_new (guint8, (gsize) w * h), *mask = g_new (guint8, (gsize) w * h);

  gpu_deterministic_algorithms ();
  unet_trainer_options_init (&o);
  o.architecture.depth = 2;
  o.architecture.base_filters = 8;
  o.batch_size = 2;
  o.seed = 11;
  o.net.device = UNET_DEVICE_CUDA;
  for (gint path = 0; path < 2; path++) {
    if (path == 1)
      g_setenv ("UNET_CUDA_SAMPLE_MIB", "0", TRUE);
    UnetTrainer *t = unet_trainer_new (&o, NULL, &error);
    if (t == NULL) {
      fprintf (stderr, "FAIL trainer paths: %s\n", error->message);
      failures++;
      g_clear_error (&error);
      break;
    }
    for (gint p = 0; p < 3; p++) {
      for (gint i = 0; i < w * h; i++) {
        img[i] = (guint8) ((i * 7 + 31 * p) % 251);
        mask[i] = ((i % w) / 9 + (i / w) / 7 + p) % 2 ? 255 : 0;
      }
      if (!unet_trainer_add_pair (t, UNET_PIXEL_U8, img, w, UNET_PIXEL_U8, mask, w, w, h,
              &error))
        break;
    }
    for (gint s = 0; error == NULL && s < 8; s++) {
      UnetTrainStats st;
      if (!unet_trainer_step (t, &st, &error))
        break;
      if (st.augment_on_device != (path == 0)) {
        fprintf (stderr, "FAIL trainer paths: step %d augmented on the %s\n", s,
            st.augment_on_device ? "device" : "host");
        failures++;
      }
      loss[path][s] = st.loss;
    }
    if (error != NULL) {
      fprintf (stderr, "FAIL trainer paths: %s\n", error->message);
      failures++;
      g_clear_error (&error);
    }
    unet_trainer_free (t);
    g_unsetenv ("UNET_CUDA_SAMPLE_MIB");
  }
  for (gint s = 0; s < 8 && failures == 0; s++) {
    const gdouble rel = fabs (loss[0][s] - loss[1][s]) / loss[1][s];
    if (!(rel <= (s == 0 ? 1e-4 : 1e-3))) {
      fprintf (stderr, "FAIL trainer paths: step %d loss %.9f (device) vs %.9f (host)\n", s,
          loss[0][s], loss[1][s]);
      failures++;
    }
  }
  printf ("trainer paths: losses %.9f / %.9f (first), %.9f / %.9f (last)\n", loss[0][0],
      loss[1][0], loss[0][7], loss[1][7]);
  g_free (img);
  g_free (mask);
}

int
main (void)
{
  gpu_require_device ();

  Case cases[3];
  memset (cases, 0, sizeof cases);
  /* the paper's net, small: valid padding, softmax, odd-free pooling chain */
  cases[0].name = "valid-d2-b4";
  cases[0].cfg = (UnetConfig) { 1, 2, 2, 4, UNET_PADDING_VALID, FALSE, 0.0 };
  cases[0].batch = 2;
  cases[0].out_size = 12;
  /* batch norm, same padding, 3 channels in, 3 classes, a non-multiple-of-8 width */
  cases[1].name = "same-bn-d2-b6";
  cases[1].cfg = (UnetConfig) { 3, 3, 2, 6, UNET_PADDING_SAME, TRUE, 0.0 };
  cases[1].batch = 2;
  cases[1].out_size = 20;
  /* sigmoid head, depth 1, batch 1 */
  cases[2].name = "valid-d1-k1";
  cases[2].cfg = (UnetConfig) { 1, 1, 1, 8, UNET_PADDING_VALID, FALSE, 0.0 };
  cases[2].batch = 1;
  cases[2].out_size = 10;

  for (gint p = UNET_PRECISION_FP32; p <= UNET_PRECISION_FP16; p++)
    for (guint i = 0; i < G_N_ELEMENTS (cases); i++)
      run_case (&cases[i], (UnetPrecision) p);
  /* the device step: SGD in every precision, soft Dice with 3 classes and with the
   * sigmoid head; Adam and AdamW in fp32 */
  for (gint p = UNET_PRECISION_FP32; p <= UNET_PRECISION_FP16; p++)
    for (guint i = 0; i < G_N_ELEMENTS (cases); i++)
      device_step_case (&cases[i], (UnetPrecision) p, UNET_OPTIM_SGD, i == 0 ? 0.0 : 0.5);
  device_step_case (&cases[0], UNET_PRECISION_FP32, UNET_OPTIM_ADAM, 0.0);
  device_step_case (&cases[1], UNET_PRECISION_FP32, UNET_OPTIM_ADAMW, 0.5);
  trainer_paths_case ();
  if (failures) {
    fprintf (stderr, "%d failures\n", failures);
    return 1;
  }
  printf ("all GPU training checks passed\n");
  return 0;
}
