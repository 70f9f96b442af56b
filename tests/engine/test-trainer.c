/* Trainer tests (suite 'trainer'): options and pair validation, the seeded
 * hold-out split and the dataset bound, atomic checkpoints that load as models,
 * bit-identical resume (N steps straight vs N/2 + checkpoint + resume + N/2),
 * prediction, preview and validation equal to the segmenter with unetsegment's
 * defaults on the exported model, and — with -m slow — a short training on synthetic
 * blobs that must reach Dice >= 0.9 on frames it never saw. */
#include "config.h"
#include "unet.h"
#include "model-private.h"
#include "training.h"

#include <glib/gstdio.h>
#include <json-glib/json-glib.h>
#include <math.h>
#include <string.h>
#if HAVE_OPENMP
#include <omp.h>
#endif

/* ------------------------------------------------------------ data -- */

/* Bright discs on a noisy background: GRAY8 image + binary mask (0/255). Discs
 * may touch, which gives the border weights something to do. */
static void
make_blobs (guint32 seed, gint w, gint h, guint8 *img, guint8 *mask)
{
  g_autoptr (GRand) r = g_rand_new_with_seed (seed);
  memset (mask, 0, (gsize) w * h);
  gint n = 3 + g_rand_int_range (r, 0, 4) + (w * h) / 3000;
  for (gint i = 0; i < n; i++) {
    gdouble cx = g_rand_double_range (r, 0, w);
    gdouble cy = g_rand_double_range (r, 0, h);
    gdouble rad = g_rand_double_range (r, 4, 10);
    for (gint y = 0; y < h; y++)
      for (gint x = 0; x < w; x++)
        if ((x - cx) * (x - cx) + (y - cy) * (y - cy) <= rad * rad)
          mask[(gsize) y * w + x] = 255;
  }
  for (gsize i = 0; i < (gsize) w * h; i++) {
    gdouble base = mask[i] ? 170.0 : 60.0;
    gdouble v = base + g_rand_double_range (r, -1, 1) * 45.0;
    img[i] = (guint8) CLAMP (v, 0, 255);
  }
}

static void
small_options (UnetTrainerOptions *o)
{
  unet_trainer_options_init (o);
  o->architecture.depth = 2;
  o->architecture.base_filters = 4;
  o->architecture.classes = 2;
  o->normalization.mode = UNET_NORM_RANGE;
  o->normalization.a = 0;
  o->normalization.b = 255;
  o->optimizer = UNET_TRAIN_ADAM;
  o->learning_rate = 1e-3;
  o->schedule = UNET_TRAIN_SCHEDULE_CONSTANT;
  o->warmup = 0;
  o->iterations = 100;
  o->seed = 42;
  /* One thread: oneDNN's results are bit-reproducible for a fixed thread count,
   * and the resume test compares bits. */
  o->net.device = UNET_DEVICE_CPU;
  o->net.threads = 1;
}

static gboolean
add_blob_pair (UnetTrainer *t, guint32 seed, gint w, gint h, GError **error)
{
  g_autofree guint8 *img = g_malloc ((gsize) w * h);
  g_autofree guint8 *mask = g_malloc ((gsize) w * h);
  make_blobs (seed, w, h, img, mask);
  return unet_trainer_add_pair (t, UNET_PIXEL_U8, img, w, UNET_PIXEL_U8, mask,
      w, w, h, error);
}

/* ----------------------------------------------------------- tests -- */

static void
test_bad_options (void)
{
  UnetTrainerOptions o;
  g_autoptr (GError) err = NULL;

  small_options (&o);
  o.momentum = 1.0;
  g_assert_null (unet_trainer_new (&o, NULL, &err));
  g_assert_error (err, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT);
  g_assert_nonnull (strstr (err->message, "momentum"));
  g_clear_error (&err);

  small_options (&o);
  o.batch_size = 0;
  g_assert_null (unet_trainer_new (&o, NULL, &err));
  g_assert_error (err, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT);
  g_clear_error (&err);

  small_options (&o);
  o.warmup = -1;
  g_assert_null (unet_trainer_new (&o, NULL, &err));
  g_assert_error (err, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT);
  g_assert_nonnull (strstr (err->message, "warm-up"));
  g_clear_error (&err);
  /* at most a quarter of the run warms up */
  o.warmup = 1000;
  o.iterations = 100;
  g_assert_cmpint (unet_trainer_warmup_steps (&o), ==, 25);
  o.iterations = 8000;
  g_assert_cmpint (unet_trainer_warmup_steps (&o), ==, 1000);

  small_options (&o);
  o.validation_fraction = 1.0;
  g_assert_null (unet_trainer_new (&o, NULL, &err));
  g_assert_error (err, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT);
  g_clear_error (&err);

  small_options (&o);
  o.architecture.depth = 0;
  g_assert_null (unet_trainer_new (&o, NULL, &err));
  g_assert_nonnull (err);
}

static void
test_bad_pairs (void)
{
  UnetTrainerOptions o;
  g_autoptr (GError) err = NULL;
  small_options (&o);
  o.mask_mode = UNET_TRAIN_MASK_INDEXED;
  g_autoptr (UnetTrainer) t = unet_trainer_new (&o, NULL, &err);
  g_assert_no_error (err);

  /* No pairs yet: a step is an error, not a crash. */
  UnetTrainStats s;
  g_assert_false (unet_trainer_step (t, &s, &err));
  g_assert_error (err, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT);
  g_clear_error (&err);

  guint8 img[16 * 16] = { 0 }, mask[16 * 16] = { 0 };
  /* Indexed mask with class 7 in a 2-class model. */
  mask[5 * 16 + 3] = 7;
  g_assert_false (unet_trainer_add_pair (t, UNET_PIXEL_U8, img, 16,
          UNET_PIXEL_U8, mask, 16, 16, 16, &err));
  g_assert_error (err, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT);
  g_assert_nonnull (strstr (err->message, "7"));
  g_clear_error (&err);

  /* Float masks are not labels. */
  gfloat fmask[16 * 16] = { 0 };
  g_assert_false (unet_trainer_add_pair (t, UNET_PIXEL_U8, img, 16,
          UNET_PIXEL_F32, fmask, 16 * 4, 16, 16, &err));
  g_assert_error (err, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT);
  g_clear_error (&err);

  /* A stride shorter than a row. */
  g_assert_false (unet_trainer_add_pair (t, UNET_PIXEL_U16, img, 16,
          UNET_PIXEL_U8, mask, 16, 16, 8, &err));
  g_assert_error (err, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT);
  g_clear_error (&err);

  g_assert_cmpuint (unet_trainer_get_n_pairs (t, NULL), ==, 0);
}

static void
test_split_and_capacity (void)
{
  UnetTrainerOptions o;
  g_autoptr (GError) err = NULL;
  small_options (&o);
  o.validation_fraction = 0.3;
  o.dataset_capacity = 1000;

  guint n_train[2], n_val[2];
  for (gint run = 0; run < 2; run++) {
    g_autoptr (UnetTrainer) t = unet_trainer_new (&o, NULL, &err);
    g_assert_no_error (err);
    for (gint i = 0; i < 40; i++)
      g_assert_true (add_blob_pair (t, i, 24, 24, &err));
    n_train[run] = unet_trainer_get_n_pairs (t, &n_val[run]);
  }
  /* Same split every time: whole frames, every 1/f-th by arrival, exactly
   * floor(40 · 0.3) = 12 of 40 held out. */
  g_assert_cmpuint (n_train[0], ==, n_train[1]);
  g_assert_cmpuint (n_val[0], ==, n_val[1]);
  g_assert_cmpuint (n_train[0] + n_val[0], ==, 40);
  g_assert_cmpuint (n_val[0], ==, 12);
  /* f = 0.1 over 20 frames (ISBI's 20 training slices): frames 9 and 19. */
  {
    UnetTrainerOptions o10 = o;
    o10.validation_fraction = 0.1;
    g_autoptr (UnetTrainer) t10 = unet_trainer_new (&o10, NULL, &err);
    guint nv = 0;
    for (gint i = 0; i < 20; i++) {
      g_assert_true (add_blob_pair (t10, i, 24, 24, &err));
      unet_trainer_get_n_pairs (t10, &nv);
      g_assert_cmpuint (nv, ==, (guint) (i >= 19 ? 2 : i >= 9 ? 1 : 0));
    }
  }

  /* Capacity: the training set never holds more than dataset_capacity pairs,
   * the validation set max (1, capacity * fraction). */
  o.dataset_capacity = 5;
  g_autoptr (UnetTrainer) t = unet_trainer_new (&o, NULL, &err);
  g_assert_no_error (err);
  for (gint i = 0; i < 40; i++)
    g_assert_true (add_blob_pair (t, i, 24, 24, &err));
  guint nv = 0;
  g_assert_cmpuint (unet_trainer_get_n_pairs (t, &nv), ==, 5);
  g_assert_cmpuint (nv, ==, 1);
}

static gchar *
make_tmpdir (void)
{
  g_autoptr (GError) err = NULL;
  gchar *dir = g_dir_make_tmp ("unet-trainer-XXXXXX", &err);
  g_assert_no_error (err);
  return dir;
}

static void
remove_tmpdir (const gchar *dir)
{
  GDir *d = g_dir_open (dir, 0, NULL);
  const gchar *name;
  while (d && (name = g_dir_read_name (d)) != NULL) {
    g_autofree gchar *p = g_build_filename (dir, name, NULL);
    g_unlink (p);
  }
  if (d)
    g_dir_close (d);
  g_rmdir (dir);
}

static guint
count_files (const gchar *dir)
{
  GDir *d = g_dir_open (dir, 0, NULL);
  guint n = 0;
  while (d && g_dir_read_name (d) != NULL)
    n++;
  if (d)
    g_dir_close (d);
  return n;
}

static void
test_checkpoint_atomic (void)
{
  UnetTrainerOptions o;
  g_autoptr (GError) err = NULL;
  g_autofree gchar *dir = make_tmpdir ();
  g_autofree gchar *path = g_build_filename (dir, "model.safetensors", NULL);
  small_options (&o);
  o.optimizer = UNET_TRAIN_SGD;
  o.learning_rate = 0.01;
  g_autoptr (UnetTrainer) t = unet_trainer_new (&o, NULL, &err);
  g_assert_no_error (err);
  g_assert_true (add_blob_pair (t, 1, 40, 40, &err));
  UnetTrainStats s;
  g_assert_true (unet_trainer_step (t, &s, &err));
  g_assert_no_error (err);
  g_assert_cmpint (s.iteration, ==, 1);
  g_assert_true (isfinite (s.loss) && s.loss > 0.0);

  g_assert_true (unet_trainer_save_checkpoint (t, path, &err));
  g_assert_no_error (err);
  g_assert_true (unet_trainer_step (t, &s, &err));
  g_assert_true (unet_trainer_save_checkpoint (t, path, &err));
  g_assert_no_error (err);
  /* Overwritten in place: no temporary file is left beside it. */
  g_assert_cmpuint (count_files (dir), ==, 1);

  /* The checkpoint is a model unetsegment can load (optim.* ignored), with the
   * training normalisation and the training metadata. */
  g_autoptr (UnetModel) m = unet_model_load (path, &err);
  g_assert_no_error (err);
  UnetNormalization n;
  unet_model_get_normalization (m, &n);
  g_assert_cmpint (n.mode, ==, UNET_NORM_RANGE);
  g_assert_cmpfloat (n.b, ==, 255.0);
  const gchar *tj = unet_model_get_metadata (m, "unet.training");
  g_assert_nonnull (tj);
  g_assert_nonnull (strstr (tj, "\"iteration\":2"));

  /* A failing save (no such directory) leaves nothing behind and reports IO. */
  g_autofree gchar *bad = g_build_filename (dir, "missing", "m.safetensors",
      NULL);
  g_assert_false (unet_trainer_save_checkpoint (t, bad, &err));
  g_assert_nonnull (err);
  g_clear_error (&err);
  g_assert_cmpuint (count_files (dir), ==, 1);

  /* A file that is not a checkpoint cannot be resumed from. */
  g_autofree gchar *plain = g_build_filename (dir, "plain.safetensors", NULL);
  g_autoptr (UnetModel) fresh = unet_model_new (unet_trainer_get_config (t),
      &err);
  g_assert_true (unet_model_save (fresh, plain, &err));
  g_assert_null (unet_trainer_new_from_checkpoint (&o, plain, &err));
  g_assert_error (err, UNET_ERROR, UNET_ERROR_MODEL);
  g_clear_error (&err);
  remove_tmpdir (dir);
}

static void
run_steps (UnetTrainer *t, gint n, gdouble *losses)
{
  g_autoptr (GError) err = NULL;
  for (gint i = 0; i < n; i++) {
    UnetTrainStats s;
    g_assert_true (unet_trainer_step (t, &s, &err));
    g_assert_no_error (err);
    losses[i] = s.loss;
  }
}

static void
check_resume (UnetTrainOptimizer optimizer, gboolean batch_norm)
{
  const gint N = 6;
  UnetTrainerOptions o;
  g_autoptr (GError) err = NULL;
  g_autofree gchar *dir = make_tmpdir ();
  g_autofree gchar *path = g_build_filename (dir, "ckpt.safetensors", NULL);
  small_options (&o);
  o.optimizer = optimizer;
  o.learning_rate = optimizer == UNET_TRAIN_SGD ? 0.01 : 1e-3;
  o.architecture.batch_norm = batch_norm;
  o.architecture.dropout = batch_norm ? 0.2 : 0.0;
  o.batch_size = 2;
  o.schedule = UNET_TRAIN_SCHEDULE_COSINE;
  o.iterations = N;

  gdouble straight[6], resumed[6];
  g_autoptr (UnetTrainer) a = unet_trainer_new (&o, NULL, &err);
  g_assert_no_error (err);
  for (gint i = 0; i < 3; i++)
    g_assert_true (add_blob_pair (a, 10 + i, 44, 40, &err));
  run_steps (a, N, straight);
  g_autoptr (UnetModel) ma = unet_trainer_export_model (a, &err);
  g_assert_no_error (err);

  g_autoptr (UnetTrainer) b = unet_trainer_new (&o, NULL, &err);
  for (gint i = 0; i < 3; i++)
    g_assert_true (add_blob_pair (b, 10 + i, 44, 40, &err));
  run_steps (b, N / 2, resumed);
  g_assert_true (unet_trainer_save_checkpoint (b, path, &err));
  g_assert_no_error (err);
  g_clear_pointer (&b, unet_trainer_free);

  /* A different seed in the options must not matter: the file's wins. */
  o.seed = 7;
  g_autoptr (UnetTrainer) c = unet_trainer_new_from_checkpoint (&o, path, &err);
  g_assert_no_error (err);
  g_assert_cmpint (unet_trainer_get_iteration (c), ==, N / 2);
  for (gint i = 0; i < 3; i++)
    g_assert_true (add_blob_pair (c, 10 + i, 44, 40, &err));
  run_steps (c, N - N / 2, resumed + N / 2);
  g_autoptr (UnetModel) mc = unet_trainer_export_model (c, &err);
  g_assert_no_error (err);

  /* Bit-identical: the same losses and the same parameters, exactly. */
  for (gint i = 0; i < N; i++) {
    if (memcmp (&straight[i], &resumed[i], sizeof (gdouble)) != 0)
      g_error ("step %d: loss %.17g straight vs %.17g resumed", i + 1,
          straight[i], resumed[i]);
  }
  const UnetLayout *la = unet_model_get_layout (ma);
  g_assert_cmpint (memcmp (unet_model_peek_slab (ma), unet_model_peek_slab (mc),
          la->slab_numel * sizeof (gfloat)), ==, 0);
  /* And training did something. */
  g_assert_true (straight[0] != straight[N - 1]);
  remove_tmpdir (dir);
}

/* The net's `threads` option sets the OpenMP team of the CPU training executor
 * (forward, backward, optimiser), whatever the calling thread had before; its
 * kernels are configured for that count too, so the same run gives the same bits
 * whatever count the caller had set when the trainer was made (oneDNN's
 * backward-weights kernels split their sums by the count at creation: a trainer
 * made under 2 threads differed from one made under 1 from step 2 on, by ~2e-10;
 * batch 2 and three 61x53 pairs: smaller shapes did not show it). */
static void
test_threads (void)
{
#if HAVE_OPENMP
  UnetTrainerOptions o;
  gdouble loss[2][4];
  small_options (&o);
  o.iterations = 4;
  o.batch_size = 2;
  for (gint k = 0; k < 2; k++) {
    g_autoptr (GError) err = NULL;
    omp_set_num_threads (k == 0 ? 2 : 1);
    g_autoptr (UnetTrainer) t = unet_trainer_new (&o, NULL, &err);
    g_assert_no_error (err);
    for (guint32 seed = 5; seed < 8; seed++)
      g_assert_true (add_blob_pair (t, seed, 61, 53, &err));
    run_steps (t, 4, loss[k]);
    g_assert_cmpint (omp_get_max_threads (), ==, o.net.threads);
  }
  for (gint i = 0; i < 4; i++)
    if (memcmp (&loss[0][i], &loss[1][i], sizeof (gdouble)) != 0)
      g_error ("step %d: loss %.17g (made under 2 threads) vs %.17g (under 1)", i + 1,
          loss[0][i], loss[1][i]);
#else
  g_test_skip ("built without OpenMP");
#endif
}

static void
test_resume_sgd (void)
{
  check_resume (UNET_TRAIN_SGD, FALSE);
}

static void
test_resume_adam_bn (void)
{
  check_resume (UNET_TRAIN_ADAMW, TRUE);
}

static void
test_predict_and_validate (void)
{
  UnetTrainerOptions o;
  g_autoptr (GError) err = NULL;
  small_options (&o);
  o.validation_fraction = 0.5;
  g_autoptr (UnetTrainer) t = unet_trainer_new (&o, NULL, &err);
  g_assert_no_error (err);
  for (gint i = 0; i < 6; i++)
    g_assert_true (add_blob_pair (t, 100 + i, 37, 29, &err));
  guint nv = 0;
  unet_trainer_get_n_pairs (t, &nv);
  g_assert_cmpuint (nv, >, 0);
  UnetTrainStats s;
  g_assert_true (unet_trainer_step (t, &s, &err));
  UnetTrainValidation v;
  gboolean ok = unet_trainer_validate (t, &v, &err);
  g_assert_no_error (err);
  g_assert_true (ok);
  g_assert_cmpuint (v.frames, ==, nv);
  g_assert_cmpfloat (v.dice, >=, 0.0);
  g_assert_cmpfloat (v.dice, <=, 1.0);
  g_assert_cmpfloat (v.pixel_error, >=, 0.0);
  g_assert_cmpfloat (v.pixel_error, <=, 1.0);
  /* blobs are objects: the Rand error is defined */
  g_assert_cmpfloat (v.rand_error, >=, 0.0);
  g_assert_cmpfloat (v.rand_error, <=, 1.0);

  /* Odd frame size, padded stride: labels are 0/1, the padding untouched. */
  guint8 img[29 * 40], labels[29 * 41];
  memset (img, 90, sizeof (img));
  memset (labels, 0xee, sizeof (labels));
  ok = unet_trainer_predict (t, UNET_PIXEL_U8, img, 40, 37, 29, labels, 41,
      &err);
  g_assert_no_error (err);
  g_assert_true (ok);
  for (gint y = 0; y < 29; y++) {
    for (gint x = 0; x < 37; x++)
      g_assert_cmpuint (labels[y * 41 + x], <=, 1);
    for (gint x = 37; x < 41; x++)
      g_assert_cmpuint (labels[y * 41 + x], ==, 0xee);
  }
}

/* What unetsegment runs with its default properties (tile-size 0, batch-size 4,
 * memory-budget 1024 MiB, tiles of consecutive frames batched; see
 * options_from_properties in elements/unet/gstunetsegment.c), on the trainer's
 * device and thread count. */
static UnetSegmenter *
unetsegment_default (const UnetModel *m, const UnetTrainerOptions *o)
{
  g_autoptr (GError) err = NULL;
  UnetSegmenterOptions so;
  unet_segmenter_options_init (&so);
  so.net = o->net;
  so.tile_height = so.tile_width = 0;
  so.batch_size = 4;
  so.memory_budget = (guint64) 1024 << 20;
  so.batch_frames = TRUE;
  so.outputs = UNET_SEGMENT_LABELS;
  UnetSegmenter *seg = unet_segmenter_new (m, &so, &err);
  g_assert_no_error (err);
  return seg;
}

/* (H,W) labels of a GRAY8 frame by the exported model, as unetsegment makes them. */
static guint8 *
segment_exported (UnetTrainer *t, const UnetTrainerOptions *o,
    const guint8 *img, gint w, gint h)
{
  g_autoptr (GError) err = NULL;
  g_autoptr (UnetModel) m = unet_trainer_export_model (t, &err);
  g_assert_no_error (err);
  g_autoptr (UnetSegmenter) seg = unetsegment_default (m, o);
  g_autoptr (UnetSegmentResult) r = unet_segmenter_process (seg, UNET_PIXEL_U8,
      img, w, h, w, &err);
  g_assert_no_error (err);
  return g_memdup2 (r->labels, (gsize) w * h);
}

static gboolean
has_both_classes (const guint8 *lab, gsize n)
{
  gsize fg = 0;
  for (gsize i = 0; i < n; i++)
    fg += lab[i] != 0;
  return fg > 0 && fg < n;
}

/* Preview and validation go through the segmenter: the trainer's labels of a
 * frame are byte for byte what unetsegment's defaults give with the model the
 * trainer exports at that step, and the validation scores are those of the
 * exported model's labels of the held-out frames. Checked at two steps whose
 * labels differ, so a preview made with the weights of an earlier step fails;
 * with same padding too, where tiles are blended, so a preview tiled otherwise
 * than unetsegment (e.g. with the training tile) fails. */
static void
test_preview_equals_segmenter (gconstpointer data)
{
  UnetTrainerOptions o;
  g_autoptr (GError) err = NULL;
  const gint W = 61, H = 53;    /* odd sizes: the tile is mirror-extended */
  small_options (&o);
  o.architecture.padding = GPOINTER_TO_INT (data);
  o.learning_rate = 3e-3;
  o.validation_fraction = 0.5;
  g_autoptr (UnetTrainer) t = unet_trainer_new (&o, NULL, &err);
  g_assert_no_error (err);
  /* pairs 1, 3, 5 are held out (every second one, the first trains) */
  for (gint i = 0; i < 6; i++)
    g_assert_true (add_blob_pair (t, 200 + i, W, H, &err));
  guint nv = 0;
  unet_trainer_get_n_pairs (t, &nv);
  g_assert_cmpuint (nv, ==, 3);

  guint8 img[53 * 61], mask[53 * 61], first[53 * 61];
  make_blobs (999, W, H, img, mask);
  gdouble losses[10];
  for (gint round = 0; round < 2; round++) {
    run_steps (t, 10, losses);
    guint8 preview[53 * 61];
    g_assert_true (unet_trainer_predict (t, UNET_PIXEL_U8, img, W, W, H,
            preview, W, &err));
    g_assert_no_error (err);
    g_autofree guint8 *want = segment_exported (t, &o, img, W, H);
    g_assert_cmpmem (preview, sizeof (preview), want, (gsize) W * H);
    /* labels that say something, and that changed between the two checks */
    g_assert_true (has_both_classes (preview, sizeof (preview)));
    if (round == 0)
      memcpy (first, preview, sizeof (first));
    else
      g_assert_true (memcmp (first, preview, sizeof (first)) != 0);

    /* The held-out scores from the exported model's labels. */
    UnetSegScores want_scores;
    unet_seg_scores_init (&want_scores, 2);
    for (gint i = 1; i < 6; i += 2) {
      guint8 vi[53 * 61], vm[53 * 61];
      gint32 raw[53 * 61], classes[53 * 61], objects[53 * 61], pred[53 * 61];
      gint n_obj = 0;
      make_blobs (200 + i, W, H, vi, vm);
      for (gint k = 0; k < W * H; k++)
        raw[k] = vm[k];
      g_assert_true (unet_mask_to_labels (UNET_MASK_BINARY, raw, W, H, 2, -1,
              classes, objects, &n_obj, &err));
      g_autofree guint8 *lab = segment_exported (t, &o, vi, W, H);
      for (gint k = 0; k < W * H; k++)
        pred[k] = lab[k];
      g_assert_true (unet_seg_scores_add_frame (&want_scores, pred, classes,
              objects, W, H, &err));
    }
    UnetTrainValidation v;
    g_assert_true (unet_trainer_validate (t, &v, &err));
    g_assert_no_error (err);
    g_assert_cmpuint (v.frames, ==, 3);
    /* the same labels through the same arithmetic: equal, not close */
    g_assert_cmpfloat (v.pixel_error, ==,
        unet_seg_scores_pixel_error (&want_scores));
    g_assert_cmpfloat (v.rand_error, ==,
        unet_seg_scores_rand_error (&want_scores));
    g_assert_cmpfloat (v.dice, ==, unet_seg_scores_dice (&want_scores));
    g_test_message ("step %" G_GINT64_FORMAT ": validation pixel error %.4f, "
        "Rand error %.4f, Dice %.4f", unet_trainer_get_iteration (t),
        v.pixel_error, v.rand_error, v.dice);
  }
}

/* The end-to-end check: depth 2, 8 filters, Adam, the paper's augmentation,
 * 96x96 blob frames; Dice on 4 frames never trained on must reach 0.9. */
static void
test_train_blobs (void)
{
  UnetTrainerOptions o;
  g_autoptr (GError) err = NULL;
  small_options (&o);
  o.architecture.base_filters = 8;
  o.learning_rate = 3e-3;
  o.iterations = 150;
  o.net.threads = 0;
  o.rotation = 180;
  o.elastic_sigma = 4;
  o.intensity_jitter = 0.5;
  g_autoptr (UnetTrainer) t = unet_trainer_new (&o, NULL, &err);
  g_assert_no_error (err);
  for (gint i = 0; i < 8; i++)
    g_assert_true (add_blob_pair (t, 1000 + i, 96, 96, &err));

  gint64 t0 = g_get_monotonic_time ();
  UnetTrainStats s = { 0 };
  for (gint i = 0; i < o.iterations; i++) {
    g_assert_true (unet_trainer_step (t, &s, &err));
    g_assert_no_error (err);
    if (s.iteration % 25 == 0)
      g_test_message ("iteration %" G_GINT64_FORMAT ": loss %.4f dice %.3f "
          "%.1f samples/s", s.iteration, s.loss, s.dice, s.samples_per_second);
  }
  gdouble secs = (g_get_monotonic_time () - t0) / 1e6;

  /* Unseen frames: count Dice of the foreground by hand. */
  guint64 inter = 0, sp = 0, sl = 0;
  for (gint f = 0; f < 4; f++) {
    guint8 img[96 * 96], mask[96 * 96], lab[96 * 96];
    make_blobs (5000 + f, 96, 96, img, mask);
    gboolean ok = unet_trainer_predict (t, UNET_PIXEL_U8, img, 96, 96, 96,
        lab, 96, &err);
    g_assert_no_error (err);
    g_assert_true (ok);
    for (gint i = 0; i < 96 * 96; i++) {
      inter += lab[i] && mask[i];
      sp += lab[i] != 0;
      sl += mask[i] != 0;
    }
  }
  gdouble dice = 2.0 * inter / MAX (sp + sl, 1);
  g_test_message ("held-out Dice %.4f after %d steps in %.1f s", dice,
      (gint) o.iterations, secs);
  g_printerr ("held-out Dice %.4f after %d steps in %.1f s\n", dice,
      (gint) o.iterations, secs);
  /* The bar: a meaningful Dice (>= 0.9) in under 3 minutes. */
  g_assert_cmpfloat (dice, >=, 0.9);
  g_assert_cmpfloat (secs, <, 180.0);
}

/* A constant image teaches nothing: the network can only output one value for
 * every pixel. With class balance on a half/half mask the best constant is p = 0.5,
 * whose loss is ln 2: the guard must say "uniform prediction". */
static void
test_guard_uniform (void)
{
  UnetTrainerOptions o;
  g_autoptr (GError) err = NULL;
  small_options (&o);
  o.architecture.depth = 1;
  o.learning_rate = 1e-2;
  o.iterations = 400;
  o.warmup = 20;
  o.border_weight = 0.0;
  o.elastic = FALSE;
  g_autoptr (UnetTrainer) t = unet_trainer_new (&o, NULL, &err);
  g_assert_no_error (err);
  guint8 img[32 * 32], mask[32 * 32];
  memset (img, 128, sizeof (img));
  for (gint i = 0; i < 32 * 32; i++)
    mask[i] = (i % 32) < 16 ? 0 : 255;
  g_assert_true (unet_trainer_add_pair (t, UNET_PIXEL_U8, img, 32,
          UNET_PIXEL_U8, mask, 32, 32, 32, &err));
  gint raised = 0;
  gint64 at = -1;
  for (gint i = 0; i < o.iterations; i++) {
    UnetTrainStats s;
    g_assert_true (unet_trainer_step (t, &s, &err));
    g_assert_no_error (err);
    if (s.alert != UNET_TRAIN_ALERT_NONE) {
      g_assert_cmpint (s.alert, ==, UNET_TRAIN_ALERT_UNIFORM);
      g_assert_nonnull (strstr (s.alert_message, "uniform"));
      g_assert_nonnull (strstr (s.alert_message, "learning-rate"));
      raised++;
      at = s.iteration;
    }
  }
  /* Once (it does not repeat while it lasts), and not before the guard judges:
   * the second full window after warm-up. */
  g_assert_cmpint (raised, ==, 1);
  g_assert_cmpint (at, >=, o.warmup + 200);
}

/* Same constant image with a 10 % foreground and no class balance: the best
 * constant predicts background everywhere (loss H(0.1) = 0.33, not ln 2); the
 * guard names class 1 as never predicted. */
static void
test_guard_class_never_predicted (void)
{
  UnetTrainerOptions o;
  g_autoptr (GError) err = NULL;
  small_options (&o);
  o.architecture.depth = 1;
  o.learning_rate = 1e-2;
  o.iterations = 400;
  o.border_weight = 0.0;
  o.class_balance = FALSE;
  o.elastic = FALSE;
  o.validation_fraction = 0.5;
  g_autoptr (UnetTrainer) t = unet_trainer_new (&o, NULL, &err);
  g_assert_no_error (err);
  guint8 img[32 * 32], mask[32 * 32];
  memset (img, 128, sizeof (img));
  for (gint i = 0; i < 32 * 32; i++)
    mask[i] = (i % 10) == 0 ? 255 : 0;
  for (gint k = 0; k < 2; k++)
    g_assert_true (unet_trainer_add_pair (t, UNET_PIXEL_U8, img, 32,
            UNET_PIXEL_U8, mask, 32, 32, 32, &err));
  guint nv = 0;
  unet_trainer_get_n_pairs (t, &nv);
  g_assert_cmpuint (nv, ==, 1);
  gint raised = 0;
  for (gint i = 0; i < o.iterations; i++) {
    UnetTrainStats s;
    g_assert_true (unet_trainer_step (t, &s, &err));
    if (s.alert != UNET_TRAIN_ALERT_NONE) {
      g_assert_cmpint (s.alert, ==, UNET_TRAIN_ALERT_CLASS_NEVER_PREDICTED);
      g_assert_nonnull (strstr (s.alert_message, "class 1"));
      raised++;
    }
  }
  g_assert_cmpint (raised, ==, 1);
  UnetTrainValidation v;
  g_assert_true (unet_trainer_validate (t, &v, &err));
  g_assert_no_error (err);
  g_assert_cmpint (v.alert, ==, UNET_TRAIN_ALERT_VALIDATION_CLASS_NEVER_PREDICTED);
  g_assert_nonnull (strstr (v.alert_message, "held-out"));
  /* everything predicted background: the pixel error is the foreground share */
  g_assert_cmpfloat (fabs (v.pixel_error - 0.1 * 32 / 32.0), <, 0.01);
  g_assert_cmpfloat (v.dice, ==, 0.0);
  /* reported once */
  g_assert_true (unet_trainer_validate (t, &v, &err));
  g_assert_cmpint (v.alert, ==, UNET_TRAIN_ALERT_NONE);
}

/* Overwrites the first value of tensor `name` in a safetensors file with NaN. */
static void
poison_tensor (const gchar *path, const gchar *name)
{
  g_autofree gchar *data = NULL;
  gsize len = 0;
  g_assert_true (g_file_get_contents (path, &data, &len, NULL));
  guint64 hlen = 0;
  memcpy (&hlen, data, 8);
  hlen = GUINT64_FROM_LE (hlen);
  g_autoptr (JsonParser) p = json_parser_new ();
  g_assert_true (json_parser_load_from_data (p, data + 8, (gssize) hlen, NULL));
  JsonObject *root = json_node_get_object (json_parser_get_root (p));
  JsonObject *t = json_object_get_object_member (root, name);
  g_assert_nonnull (t);
  JsonArray *off = json_object_get_array_member (t, "data_offsets");
  gsize at = 8 + hlen + (gsize) json_array_get_int_element (off, 0);
  gfloat nan = NAN;
  memcpy (data + at, &nan, 4);
  g_assert_true (g_file_set_contents (path, data, (gssize) len, NULL));
}

static void
test_checkpoint_non_finite (void)
{
  UnetTrainerOptions o;
  g_autoptr (GError) err = NULL;
  g_autofree gchar *dir = make_tmpdir ();
  g_autofree gchar *path = g_build_filename (dir, "ck.safetensors", NULL);
  small_options (&o);
  g_autoptr (UnetTrainer) t = unet_trainer_new (&o, NULL, &err);
  g_assert_true (add_blob_pair (t, 1, 40, 40, &err));
  UnetTrainStats s;
  g_assert_true (unet_trainer_step (t, &s, &err));
  g_assert_true (unet_trainer_save_checkpoint (t, path, &err));
  g_autofree gchar *good = NULL;
  gsize good_len = 0;
  g_assert_true (g_file_get_contents (path, &good, &good_len, NULL));

  /* A checkpoint whose optimiser state is not finite does not resume. */
  g_autofree gchar *bad = g_build_filename (dir, "bad.safetensors", NULL);
  g_assert_true (g_file_set_contents (bad, good, (gssize) good_len, NULL));
  poison_tensor (bad, "optim.exp_avg_sq");
  g_assert_null (unet_trainer_new_from_checkpoint (&o, bad, &err));
  g_assert_error (err, UNET_ERROR, UNET_ERROR_MODEL);
  g_assert_nonnull (strstr (err->message, "optim.exp_avg_sq"));
  g_assert_nonnull (strstr (err->message, "non-finite"));
  g_clear_error (&err);
  /* Nor one with a non-finite weight. */
  g_assert_true (g_file_set_contents (bad, good, (gssize) good_len, NULL));
  poison_tensor (bad, "head.weight");
  UnetTrainer *r = unet_trainer_new_from_checkpoint (&o, bad, &err);
  g_assert_null (r);
  g_assert_nonnull (err);
  g_assert_nonnull (strstr (err->message, "non-finite"));
  g_clear_error (&err);

  /* A trainer whose weights are not finite never replaces the good file. */
  g_autoptr (UnetModel) m = unet_model_new (&o.architecture, &err);
  unet_model_init_weights (m, 1);
  unet_model_get_slab (m)[0] = NAN;
  g_autoptr (UnetTrainer) tn = unet_trainer_new (&o, m, &err);
  g_assert_no_error (err);
  g_assert_false (unet_trainer_save_checkpoint (tn, path, &err));
  g_assert_error (err, UNET_ERROR, UNET_ERROR_FAILED);
  g_assert_nonnull (strstr (err->message, "not finite"));
  g_clear_error (&err);
  g_autofree gchar *after = NULL;
  gsize after_len = 0;
  g_assert_true (g_file_get_contents (path, &after, &after_len, NULL));
  g_assert_cmpmem (after, after_len, good, good_len);
  g_assert_cmpuint (count_files (dir), ==, 2);  /* no temporary left either */
}

/* "iteration" of another type than an integer is a damaged checkpoint. */
static void
test_checkpoint_metadata_types (void)
{
  UnetTrainerOptions o;
  g_autoptr (GError) err = NULL;
  g_autofree gchar *dir = make_tmpdir ();
  g_autofree gchar *path = g_build_filename (dir, "ck.safetensors", NULL);
  small_options (&o);
  const gchar *bad[] = {
    "{\"iteration\":\"5\",\"seed\":\"1\",\"optimizer\":\"adam\"}",
    "{\"iteration\":{},\"seed\":\"1\",\"optimizer\":\"adam\"}",
    "{\"iteration\":2.5,\"seed\":\"1\",\"optimizer\":\"adam\"}",
    "{\"iteration\":-3,\"seed\":\"1\",\"optimizer\":\"adam\"}",
    "{\"iteration\":5,\"seed\":1,\"optimizer\":\"adam\"}",
    "{\"iteration\":5,\"seed\":\"1\",\"optimizer\":[]}",
    "[5]",
  };
  for (guint i = 0; i < G_N_ELEMENTS (bad); i++) {
    g_autoptr (UnetModel) m = unet_model_new (&o.architecture, &err);
    unet_model_init_weights (m, 1);
    unet_model_set_metadata (m, "unet.training", bad[i]);
    g_assert_true (unet_model_save (m, path, &err));
    g_assert_null (unet_trainer_new_from_checkpoint (&o, path, &err));
    g_assert_error (err, UNET_ERROR, UNET_ERROR_MODEL);
    g_assert_nonnull (strstr (err->message, "iteration"));
    g_clear_error (&err);
  }
}

/* Temporaries of a killed writer go; nothing else does. */
static void
test_stale_temporaries (void)
{
  g_autofree gchar *dir = make_tmpdir ();
  g_autofree gchar *path = g_build_filename (dir, "m.safetensors", NULL);
  const gchar *names[] = { "m.safetensors.tmp-Ab12Cd", "m.safetensors.tmp-Ab12C",
    "m.safetensors.tmp-Ab12Cd.keep", "n.safetensors.tmp-Ab12Cd", "m.safetensors",
  };
  for (guint i = 0; i < G_N_ELEMENTS (names); i++) {
    g_autofree gchar *f = g_build_filename (dir, names[i], NULL);
    g_assert_true (g_file_set_contents (f, "x", 1, NULL));
  }
  g_autofree gchar *sub = g_build_filename (dir, "m.safetensors.tmp-Dir123", NULL);
  g_assert_cmpint (g_mkdir (sub, 0755), ==, 0);
  g_assert_cmpuint (unet_model_remove_stale_temporaries (path), ==, 1);
  g_assert_cmpuint (count_files (dir), ==, G_N_ELEMENTS (names) - 1 + 1);
  g_autofree gchar *gone = g_build_filename (dir, names[0], NULL);
  g_assert_false (g_file_test (gone, G_FILE_TEST_EXISTS));
  g_rmdir (sub);
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  /* "-m slow" runs only the end-to-end training (its own meson test, suite
   * 'slow'), so the quick tests stay quick. */
  if (g_test_slow ()) {
    g_test_add_func ("/trainer/train-blobs", test_train_blobs);
    return g_test_run ();
  }
  g_test_add_func ("/trainer/bad-options", test_bad_options);
  g_test_add_func ("/trainer/bad-pairs", test_bad_pairs);
  g_test_add_func ("/trainer/split-and-capacity", test_split_and_capacity);
  g_test_add_func ("/trainer/checkpoint-atomic", test_checkpoint_atomic);
  g_test_add_func ("/trainer/threads", test_threads);
  g_test_add_func ("/trainer/resume-sgd", test_resume_sgd);
  g_test_add_func ("/trainer/resume-adamw-bn-dropout", test_resume_adam_bn);
  g_test_add_func ("/trainer/predict-validate", test_predict_and_validate);
  g_test_add_data_func ("/trainer/preview-equals-segmenter/valid",
      GINT_TO_POINTER (UNET_PADDING_VALID), test_preview_equals_segmenter);
  g_test_add_data_func ("/trainer/preview-equals-segmenter/same",
      GINT_TO_POINTER (UNET_PADDING_SAME), test_preview_equals_segmenter);
  g_test_add_func ("/trainer/guard-uniform", test_guard_uniform);
  g_test_add_func ("/trainer/guard-class-never-predicted",
      test_guard_class_never_predicted);
  g_test_add_func ("/trainer/checkpoint-non-finite", test_checkpoint_non_finite);
  g_test_add_func ("/trainer/checkpoint-metadata-types",
      test_checkpoint_metadata_types);
  g_test_add_func ("/trainer/stale-temporaries", test_stale_temporaries);
  return g_test_run ();
}
