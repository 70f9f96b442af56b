/* The trainer's resident-sample path (trainer.c, net.c's sample API) on the host
 * "device" of host-samples.cc (the CUDA kernels' bodies on the CPU): the same pairs
 * and seed give the host path's losses (within float rounding), the pairs and their
 * samples stay in step through eviction, and a set past the budget falls back to the
 * host path for good. */
#include "config.h"

#include "host-samples.h"

#include "unet.h"

#include <math.h>

static const gint sizes[3][2] = { { 61, 53 }, { 70, 64 }, { 58, 66 } };

static UnetTrainer *
make_trainer (void)
{
  UnetTrainerOptions o;
  GError *error = NULL;
  unet_trainer_options_init (&o);
  o.architecture.depth = 2;
  o.architecture.base_filters = 4;
  o.iterations = 20;
  o.batch_size = 2;
  o.dataset_capacity = 2;
  o.seed = 7;
  o.net.device = UNET_DEVICE_CPU;
  o.net.threads = 1;
  UnetTrainer *t = unet_trainer_new (&o, NULL, &error);
  g_assert_no_error (error);
  return t;
}

static void
add_pairs (UnetTrainer *t)
{
  GError *error = NULL;
  for (gint p = 0; p < 3; p++) {
    const gint w = sizes[p][0], h = sizes[p][1];
    guint8 *img = g_new (guint8, (gsize) w * h), *mask = g_new (guint8, (gsize) w * h);
    for (gint i = 0; i < w * h; i++) {
      img[i] = (guint8) ((i * 7 + 31 * p) % 251);
      mask[i] = ((i % w) / 9 + (i / w) / 7 + p) % 2 ? 255 : 0;
    }
    g_assert_true (unet_trainer_add_pair (t, UNET_PIXEL_U8, img, w, UNET_PIXEL_U8, mask, w,
            w, h, &error));
    g_assert_no_error (error);
    g_free (img);
    g_free (mask);
  }
}

static void
steps (UnetTrainer *t, gint n, gdouble *loss, gboolean on_device)
{
  GError *error = NULL;
  for (gint s = 0; s < n; s++) {
    UnetTrainStats st;
    g_assert_true (unet_trainer_step (t, &st, &error));
    g_assert_no_error (error);
    g_assert_cmpint (st.augment_on_device, ==, on_device);
    loss[s] = st.loss;
  }
}

#define STEPS 8

static void
test_trainer_device_path (void)
{
  gdouble host[STEPS], dev[STEPS], fell[STEPS];
  HostSamplesStats hs = { 0, 0, 0, 0, 0 };

  /* the host path: a plain CPU net */
  UnetTrainer *a = make_trainer ();
  add_pairs (a);
  steps (a, STEPS, host, FALSE);
  unet_trainer_free (a);

  /* the device path: three pairs, capacity two: the first one's sample released */
  host_samples_install (&hs);
  UnetTrainer *b = make_trainer ();
  add_pairs (b);
  g_assert_cmpint (hs.uploads, ==, 3);
  g_assert_cmpint (hs.live_samples, ==, 2);
  steps (b, STEPS, dev, TRUE);
  g_assert_cmpint (hs.batches, ==, STEPS);
  g_assert_cmpint (hs.device_losses, ==, STEPS);
  unet_trainer_free (b);
  g_assert_cmpint (hs.live_samples, ==, 0);
  /* Same draws, sampled in float instead of double: the batch differs by ~1e-5 of
   * its values (test-cuda-bodies' augment-batch), a label only where a position lies
   * within float rounding of a half pixel, so the first loss (same parameters) by
   * about 1e-5 relative at most (measured: 5e-9). Later steps add the parameters'
   * drift: Adam moves every weight by about lr whatever its gradient's size, so a
   * component near 0 can step the other way; measured 7e-6 relative by step 8, 1e-4
   * allowed. */
  g_assert_cmpfloat (fabs (dev[0] - host[0]), <=, 1e-5 * host[0]);
  for (gint s = 0; s < STEPS; s++) {
    g_test_message ("step %d: host %.9f device %.9f", s, host[s], dev[s]);
    g_assert_cmpfloat (fabs (dev[s] - host[s]), <=, 1e-4 * host[s]);
  }

  /* a budget of one sample: the second pair sends the trainer to the host path for
   * good (every sample released): the host path's losses. Not bit for bit: two CPU
   * trainers in one process already differ from the second step on by ~1e-9
   * relative (the parameters after the first update; the augmented batches are
   * bit-identical), so 1e-7 relative, far below the device path's own 1e-5. */
  memset (&hs, 0, sizeof hs);
  hs.max_samples = 1;
  UnetTrainer *c = make_trainer ();
  add_pairs (c);
  g_assert_cmpint (hs.uploads, ==, 1);
  g_assert_cmpint (hs.live_samples, ==, 0);
  steps (c, STEPS, fell, FALSE);
  g_assert_cmpint (hs.batches, ==, 0);
  for (gint s = 0; s < STEPS; s++)
    g_assert_cmpfloat (fabs (fell[s] - host[s]), <=, 1e-7 * host[s]);
  unet_trainer_free (c);
  host_samples_install (NULL);
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  g_test_add_func ("/host-samples/trainer-device-path", test_trainer_device_path);
  return g_test_run ();
}
