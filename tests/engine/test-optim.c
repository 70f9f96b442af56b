/* Optimiser edge cases (the arithmetic is checked against torch.optim in
 * train_torch_check.py): invalid settings, non-finite gradients leave everything
 * untouched, state buffers and their names, and a restored state continues
 * bit-identically. */
#include "training.h"

#include <math.h>
#include <string.h>

static void
test_invalid (void)
{
  UnetOptimParams p;
  g_autoptr (GError) error = NULL;
  unet_optim_params_init (&p);
  p.momentum = 1.0;
  g_assert_null (unet_optimizer_new (&p, 10, NULL, 0, &error));
  g_assert_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT);
  g_clear_error (&error);
  unet_optim_params_init (&p);
  p.momentum = 0.0;
  p.nesterov = TRUE;
  g_assert_null (unet_optimizer_new (&p, 10, NULL, 0, &error));
  g_clear_error (&error);
  unet_optim_params_init (&p);
  p.lr = NAN;
  g_assert_null (unet_optimizer_new (&p, 10, NULL, 0, &error));
  g_clear_error (&error);
  unet_optim_params_init (&p);
  UnetOptimRange r = { 8, 5, TRUE };
  g_assert_null (unet_optimizer_new (&p, 10, &r, 1, &error));
  g_assert_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT);
}

static void
test_non_finite (void)
{
  UnetOptimParams p;
  g_autoptr (GError) error = NULL;
  unet_optim_params_init (&p);
  p.kind = UNET_OPTIM_ADAM;
  g_autoptr (UnetOptimizer) o = unet_optimizer_new (&p, 4, NULL, 0, &error);
  g_assert_cmpint (unet_optimizer_get_n_buffers (o), ==, 2);
  g_assert_cmpstr (unet_optimizer_get_buffer_name (o, 0), ==, "optim.exp_avg");
  g_assert_cmpstr (unet_optimizer_get_buffer_name (o, 1), ==, "optim.exp_avg_sq");
  gfloat w[4] = { 1, 2, 3, 4 }, g[4] = { 0.1f, INFINITY, 0.2f, 0.3f };
  g_assert_false (unet_optimizer_step (o, w, g, &error));
  g_assert_error (error, UNET_ERROR, UNET_ERROR_FAILED);
  g_assert_cmpfloat (w[0], ==, 1.0f);
  g_assert_cmpint (unet_optimizer_get_step (o), ==, 0);
  g_assert_cmpfloat (unet_optimizer_get_buffer (o, 0)[0], ==, 0.0f);
}

static void
test_resume (void)
{
  /* 6 steps straight vs 3 steps, state copied into a new optimiser, 3 steps. */
  UnetOptimParams p;
  unet_optim_params_init (&p);
  p.nesterov = TRUE;
  p.schedule = UNET_LR_COSINE;
  p.total_steps = 6;
  p.weight_decay = 1e-3;
  const gsize n = 33;
  g_autoptr (GRand) r = g_rand_new_with_seed (3);
  gfloat w0[33], ga[33], gb[33], grads[6][33];
  for (gsize i = 0; i < n; i++)
    w0[i] = (gfloat) g_rand_double_range (r, -1, 1);
  for (gint s = 0; s < 6; s++)
    for (gsize i = 0; i < n; i++)
      grads[s][i] = (gfloat) g_rand_double_range (r, -1, 1);

  g_autoptr (UnetOptimizer) a = unet_optimizer_new (&p, n, NULL, 0, NULL);
  memcpy (ga, w0, sizeof ga);
  for (gint s = 0; s < 6; s++)
    g_assert_true (unet_optimizer_step (a, ga, grads[s], NULL));

  g_autoptr (UnetOptimizer) b1 = unet_optimizer_new (&p, n, NULL, 0, NULL);
  memcpy (gb, w0, sizeof gb);
  for (gint s = 0; s < 3; s++)
    g_assert_true (unet_optimizer_step (b1, gb, grads[s], NULL));
  g_autoptr (UnetOptimizer) b2 = unet_optimizer_new (&p, n, NULL, 0, NULL);
  memcpy (unet_optimizer_get_buffer (b2, 0), unet_optimizer_get_buffer (b1, 0),
      n * sizeof (gfloat));
  unet_optimizer_set_step (b2, unet_optimizer_get_step (b1));
  g_assert_cmpfloat (unet_optimizer_get_lr (b2), ==, unet_optimizer_get_lr (b1));
  for (gint s = 3; s < 6; s++)
    g_assert_true (unet_optimizer_step (b2, gb, grads[s], NULL));
  g_assert_cmpmem (ga, sizeof ga, gb, sizeof gb);
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  g_test_add_func ("/optim/invalid", test_invalid);
  g_test_add_func ("/optim/non-finite", test_non_finite);
  g_test_add_func ("/optim/resume", test_resume);
  return g_test_run ();
}
