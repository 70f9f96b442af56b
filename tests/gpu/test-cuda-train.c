/* Training on the GPU against training on the CPU, through the public API
 * (unet_net_train_forward / _backward / _get_gradients / _parameters_changed): the
 * same model, input and dL/dlogits on a CPU net and a CUDA net, every precision;
 * logits, every gradient tensor, and the batch-norm running statistics compared.
 * Also: gradients accumulate over two forward + backward passes and are zeroed, and a host
 * parameter change reaches the GPU after unet_net_parameters_changed. Dropout is 0:
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
  if (failures) {
    fprintf (stderr, "%d failures\n", failures);
    return 1;
  }
  printf ("all GPU training checks passed\n");
  return 0;
}
