/* Segmenter: raw frames in, full-size segmentations out.
 *
 * push():  normalise the frame -> plan its tiles (cached per frame size) -> extract
 *          each tile into the next slot of the batch buffer; a full batch runs the
 *          forward pass and stitches every tile into its frame's probability planes.
 * A frame whose last tile is stitched is finished: blend weights divided out (same
 * padding), then labels / probability planes / instances / statistics derived.
 * pop():   finished frames in push order.
 *
 * Memory per queued frame: its normalised plane until its last tile is extracted,
 * and its (K,H,W) probability planes until popped. The batch buffers hold
 * batch_size tiles; nothing else grows with the stream.
 *
 * On-device path (backends with the optional frame slots of backend.h, i.e. CUDA):
 * an 8/16-bit frame crosses the bus once each way. push() uploads the raw frame into
 * one of DEVICE_DEPTH slots (pinned staging, copy stream), takes the normalisation's
 * statistics on the device (histogram / moments), extracts the mirror-extended,
 * normalised tiles straight into the net's input tensor, runs the forward pass up to
 * the logits and stitches softmax/argmax (or the Gaussian blend) into the slot's
 * output frame, then starts the download of labels / probability (download stream)
 * and returns. With batch_frames set the frame finishes when its slot is needed again
 * or at flush, so the upload of frame n+1, the compute of frame n and the download of
 * frame n-1 overlap; without it push() waits for its own frame (the contract: every
 * push finishes its frame). Float frames, K-plane probability output and multi-
 * channel models take the host path. $UNET_HOST_TILING=1 forces the host path. */
#include "net-private.h"
#include "segmenter-private.h"
#include "unet.h"
#include "tiling.h"

#include <math.h>
#include <string.h>

#define DEFAULT_MEMORY_BUDGET (G_GUINT64_CONSTANT (1) << 30)
/* frames in flight on the device: upload n+1, compute n, download n-1 */
#define DEVICE_DEPTH 3

typedef struct
{
  UnetSegmentResult *result;
  UnetTilePlan plan;
  gfloat *norm;                 /* (H,W) normalised input; freed once extracted */
  gfloat *acc;                  /* (K,H,W) probabilities (blend: weighted sums) */
  gfloat *wsum;                 /* (H,W) blend weight sums, or NULL */
  gint n_extracted, n_stitched;
  gboolean finished;
  gint dev_slot;                /* on-device frame waiting for its download, or -1 */
  gdouble dev_t0;               /* when its push started */
} Frame;

typedef struct
{
  Frame *frame;
  gint tile;
} Slot;

struct _UnetSegmenter
{
  UnetNet *net;
  gboolean owns_net;            /* FALSE: borrowed (unet_segmenter_new_for_net) */
  UnetConfig cfg;
  UnetSegmenterOptions opts;
  UnetNormalization norm;
  gint n_labels;                /* max (classes, 2): label values 0 .. n_labels-1 */

  GQueue frames;                /* Frame*, push order */
  guint64 n_pushed;

  gint cache_h, cache_w;        /* plan cache: frame size -> plan */
  UnetTilePlan cache_plan;

  /* Pending batch: batch_n tiles of batch_th x batch_tw extracted into in_buf. */
  Slot *slots;
  gint batch_n, batch_th, batch_tw, batch_to_h, batch_to_w;
  gfloat *in_buf, *out_buf;
  gsize in_cap, out_cap;        /* floats */
  gfloat *wy, *wx;              /* Gaussian windows of the pending tile shape */

  /* Tiles per forward pass actually used: batch_size, halved for good after the
   * device ran out of memory (warned about once). */
  gint max_batch;
  gint batch_reduced;           /* out of memory: the batch was halved to this; reported
                                 * in the next result's stats, then 0 */

  /* On-device path (NULL frames: host path only). */
  UnetBackend *be;
  UnetBackendFrames *dev;
  Frame *dev_pending[DEVICE_DEPTH];
  guint64 dev_next;
  gint *dev_ox, *dev_oy, *dev_blocks;   /* per tile of one pass: origin, 6-int block */
};

void
unet_segmenter_options_init (UnetSegmenterOptions *opts)
{
  memset (opts, 0, sizeof (*opts));
  unet_net_options_init (&opts->net);
  opts->batch_size = 1;
  opts->memory_budget = 0;
  opts->batch_frames = FALSE;
  opts->override_normalization = FALSE;
  unet_normalization_init_default (&opts->normalization);
  opts->outputs = UNET_SEGMENT_LABELS;
  opts->probability_class = 1;
  opts->foreground_class = 1;
}

static gdouble
now_s (void)
{
  return g_get_monotonic_time () / 1e6;
}

static gpointer
try_alloc (gsize n_elems, gsize elem_size, gboolean zero, GError **error)
{
  gpointer p;

  if (n_elems != 0 && elem_size > G_MAXSIZE / n_elems)
    p = NULL;
  else if (zero)
    p = g_try_malloc0 (MAX (n_elems * elem_size, 1));
  else
    p = g_try_malloc (MAX (n_elems * elem_size, 1));
  if (!p)
    g_set_error (error, UNET_ERROR, UNET_ERROR_OUT_OF_MEMORY,
        "could not allocate %" G_GSIZE_FORMAT " x %" G_GSIZE_FORMAT " bytes",
        n_elems, elem_size);
  return p;
}

/* The checks of unet_segmenter_new's options against a config. */
static gboolean
check_options (const UnetConfig *cfg, const UnetSegmenterOptions *opts, GError **error)
{
  gint n_labels = MAX (cfg->classes, 2);

  if (opts->batch_size < 1 || opts->batch_size > 4096) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "batch size %d is not in 1..4096", opts->batch_size);
    return FALSE;
  }
  if (opts->tile_height < 0 || opts->tile_width < 0) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "tile size %dx%d is negative", opts->tile_width, opts->tile_height);
    return FALSE;
  }
  if ((opts->outputs & UNET_SEGMENT_PROBABILITY)
      && (opts->probability_class < 0 || opts->probability_class >= n_labels)) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "probability class %d does not exist: the model has classes 0..%d",
        opts->probability_class, n_labels - 1);
    return FALSE;
  }
  /* Class-index labels are 8-bit: a larger class index cannot be written (it
   * would wrap to another class). Instances and statistics need only "is the
   * foreground class", which process_host computes without the cast. */
  if ((opts->outputs & UNET_SEGMENT_LABELS) && n_labels > UNET_MAX_LABEL_CLASSES) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "the model has %d classes but class-index labels are 8-bit (at most %d "
        "classes): ask for the probability of one class, or instances of one "
        "class, instead", cfg->classes, UNET_MAX_LABEL_CLASSES);
    return FALSE;
  }
  if ((opts->outputs & (UNET_SEGMENT_INSTANCES | UNET_SEGMENT_STATS))
      && (opts->foreground_class < 0 || opts->foreground_class >= n_labels)) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "foreground class %d does not exist: the model has classes 0..%d",
        opts->foreground_class, n_labels - 1);
    return FALSE;
  }
  return TRUE;
}

/* A segmenter on `net` (taken over when owns_net, else borrowed) with the
 * normalisation `norm`; the options are checked. */
static UnetSegmenter *
segmenter_new (UnetNet *net, gboolean owns_net, const UnetNormalization *norm,
    const UnetSegmenterOptions *opts, GError **error)
{
  UnetSegmenter *seg;
  const UnetConfig *cfg = unet_net_get_config (net);

  seg = g_new0 (UnetSegmenter, 1);
  seg->cfg = *cfg;
  seg->opts = *opts;
  seg->n_labels = MAX (cfg->classes, 2);
  seg->norm = *norm;
  g_queue_init (&seg->frames);
  seg->slots = g_new0 (Slot, opts->batch_size);
  seg->max_batch = opts->batch_size;
  seg->net = net;
  seg->owns_net = owns_net;
  seg->be = unet_net_get_backend (seg->net);
  if (unet_backend_can_tile (seg->be) && cfg->in_channels == 1 && cfg->classes <= 255
      && !(opts->outputs & UNET_SEGMENT_PROBABILITIES)
      && g_strcmp0 (g_getenv ("UNET_HOST_TILING"), "1") != 0) {
    seg->dev = seg->be->iface->frames_new (seg->be, DEVICE_DEPTH, error);
    if (seg->dev == NULL) {
      unet_segmenter_free (seg);
      return NULL;
    }
    seg->dev_ox = g_new (gint, opts->batch_size);
    seg->dev_oy = g_new (gint, opts->batch_size);
    seg->dev_blocks = g_new (gint, 6 * opts->batch_size);
  }
  return seg;
}

UnetSegmenter *
unet_segmenter_new (const UnetModel *model, const UnetSegmenterOptions *opts,
    GError **error)
{
  UnetNormalization norm;
  UnetNet *net;

  if (!check_options (unet_model_get_config (model), opts, error))
    return NULL;
  if (opts->override_normalization)
    norm = opts->normalization;
  else
    unet_model_get_normalization (model, &norm);
  net = unet_net_new (model, &opts->net, error);
  if (!net)
    return NULL;
  return segmenter_new (net, TRUE, &norm, opts, error);
}

UnetSegmenter *
unet_segmenter_new_for_net (UnetNet *net, const UnetNormalization *norm,
    const UnetSegmenterOptions *opts, GError **error)
{
  g_return_val_if_fail (net != NULL && norm != NULL && opts != NULL, NULL);
  if (!check_options (unet_net_get_config (net), opts, error))
    return NULL;
  return segmenter_new (net, FALSE, norm, opts, error);
}

static void
frame_free (Frame *f)
{
  if (!f)
    return;
  unet_segment_result_free (f->result);
  g_free (f->norm);
  g_free (f->acc);
  g_free (f->wsum);
  g_free (f);
}

void
unet_segmenter_free (UnetSegmenter *seg)
{
  if (!seg)
    return;
  /* waits for every transfer in flight before the frames' buffers go */
  if (seg->dev != NULL)
    seg->be->iface->frames_free (seg->dev);
  g_queue_clear_full (&seg->frames, (GDestroyNotify) frame_free);
  if (seg->owns_net)
    unet_net_free (seg->net);
  g_free (seg->dev_ox);
  g_free (seg->dev_oy);
  g_free (seg->dev_blocks);
  g_free (seg->slots);
  g_free (seg->in_buf);
  g_free (seg->out_buf);
  g_free (seg->wy);
  g_free (seg->wx);
  g_free (seg);
}

const UnetConfig *
unet_segmenter_get_config (const UnetSegmenter *seg)
{
  return &seg->cfg;
}

UnetDevice
unet_segmenter_get_device (const UnetSegmenter *seg)
{
  return unet_net_get_device (seg->net);
}

void
unet_segmenter_get_normalization (const UnetSegmenter *seg, UnetNormalization *norm)
{
  *norm = seg->norm;
}

guint
unet_segmenter_get_queued (const UnetSegmenter *seg)
{
  return g_queue_get_length ((GQueue *) & seg->frames);
}

void
unet_segment_result_free (UnetSegmentResult *r)
{
  if (!r)
    return;
  g_free (r->labels);
  g_free (r->probability);
  g_free (r->probabilities);
  g_free (r->instances);
  g_free (r);
}

/* ---------------------------------------------------------------- frames -- */

static gboolean
frame_finish (UnetSegmenter *seg, Frame *f, GError **error)
{
  UnetSegmentResult *r = f->result;
  gsize n = (gsize) r->width * r->height, i;
  gint k, classes = seg->cfg.classes;
  guint outs = seg->opts.outputs;
  gboolean need_labels =
      (outs & (UNET_SEGMENT_LABELS | UNET_SEGMENT_INSTANCES | UNET_SEGMENT_STATS)) != 0;
  guint8 *labels = NULL;
  /* the foreground's value in `labels` (below UNET_MAX_LABEL_CLASSES classes
   * the class index itself) */
  guint8 fg_label = classes > UNET_MAX_LABEL_CLASSES ? 1 :
      (guint8) seg->opts.foreground_class;
  gdouble t0 = now_s (), t1;

  if (f->wsum) {
    unet_tile_blend_finish (classes, n, f->acc, f->wsum);
    g_clear_pointer (&f->wsum, g_free);
  }
  t1 = now_s ();
  r->stats.time_stitch += t1 - t0;

  if (need_labels) {
    labels = try_alloc (n, 1, FALSE, error);
    if (!labels)
      return FALSE;
    if (classes == 1) {
      for (i = 0; i < n; i++)
        labels[i] = f->acc[i] >= 0.5f;
    } else {
      /* More than 256 classes (then only instances/statistics are asked for,
       * see unet_segmenter_new): the map holds "is the foreground class" as
       * fg_label, so no class index is truncated. */
      gboolean wide = classes > UNET_MAX_LABEL_CLASSES;
      for (i = 0; i < n; i++) {
        gfloat best = f->acc[i];
        gint arg = 0;
        for (k = 1; k < classes; k++) {
          gfloat v = f->acc[(gsize) k * n + i];
          if (v > best) {
            best = v;
            arg = k;
          }
        }
        labels[i] = wide ? (arg == seg->opts.foreground_class ? fg_label : 0) :
            (guint8) arg;
      }
    }
  }
  if (outs & (UNET_SEGMENT_INSTANCES | UNET_SEGMENT_STATS)) {
    guint64 area = 0;
    if (outs & UNET_SEGMENT_INSTANCES) {
      r->instances = try_alloc (n, sizeof (guint32), FALSE, error);
      if (!r->instances) {
        g_free (labels);
        return FALSE;
      }
    }
    r->stats.object_count = unet_label_components (labels, fg_label, r->width, r->height, r->instances, &area);
    r->stats.foreground_fraction = (gdouble) area / n;
    r->stats.mean_object_area =
        r->stats.object_count ? (gdouble) area / r->stats.object_count : 0.0;
  }
  if (outs & UNET_SEGMENT_LABELS)
    r->labels = labels;
  else
    g_free (labels);

  if (outs & UNET_SEGMENT_PROBABILITY) {
    gint c = seg->opts.probability_class;
    r->probability = try_alloc (n, sizeof (gfloat), FALSE, error);
    if (!r->probability)
      return FALSE;
    if (classes == 1 && c == 0) {
      for (i = 0; i < n; i++)
        r->probability[i] = 1.0f - f->acc[i];
    } else {
      memcpy (r->probability, f->acc + (gsize) (classes == 1 ? 0 : c) * n,
          n * sizeof (gfloat));
    }
  }
  if (outs & UNET_SEGMENT_PROBABILITIES)
    r->probabilities = g_steal_pointer (&f->acc);
  g_clear_pointer (&f->acc, g_free);

  r->stats.time_post += now_s () - t1;
  r->stats.time_total = r->stats.time_normalize + r->stats.time_extract
      + r->stats.time_forward + r->stats.time_stitch + r->stats.time_post;
  r->stats.batch_reduced = seg->batch_reduced;
  seg->batch_reduced = 0;
  f->finished = TRUE;
  return TRUE;
}

static gboolean
ensure_capacity (gfloat **buf, gsize *cap, gsize need, GError **error)
{
  gfloat *p;

  if (*cap >= need)
    return TRUE;
  p = try_alloc (need, sizeof (gfloat), FALSE, error);
  if (!p)
    return FALSE;
  g_free (*buf);
  *buf = p;
  *cap = need;
  return TRUE;
}

/* The forward pass of n extracted tiles, in chunks of at most max_batch. This is
 * the one place that handles running out of device memory: a chunk of more than one
 * tile that fails with UNET_ERROR_OUT_OF_MEMORY is retried as two halves, and
 * max_batch stays halved for the rest of the stream (one warning). The result is the
 * same either way: tiles are independent. */
static gboolean
forward_tiles (UnetSegmenter *seg, gint n, GError **error)
{
  gsize in_tile = (gsize) seg->cfg.in_channels * seg->batch_th * seg->batch_tw;
  gsize out_tile = (gsize) seg->cfg.classes * seg->batch_to_h * seg->batch_to_w;
  gint b0 = 0;

  while (b0 < n) {
    gint chunk = MIN (seg->max_batch, n - b0);
    GError *local = NULL;
    if (unet_net_forward (seg->net, seg->in_buf + b0 * in_tile, chunk, seg->batch_th,
            seg->batch_tw, seg->out_buf + b0 * out_tile, &local)) {
      b0 += chunk;
      continue;
    }
    if (chunk > 1 && g_error_matches (local, UNET_ERROR, UNET_ERROR_OUT_OF_MEMORY)) {
      seg->max_batch = chunk / 2;
      seg->batch_reduced = seg->max_batch;
      g_error_free (local);
      continue;
    }
    g_propagate_error (error, local);
    return FALSE;
  }
  return TRUE;
}

/* Forward the pending batch and stitch every tile into its frame. */
static gboolean
run_batch (UnetSegmenter *seg, GError **error)
{
  gint b, n = seg->batch_n, classes = seg->cfg.classes;
  gsize out_tile = (gsize) classes * seg->batch_to_h * seg->batch_to_w;
  gdouble t0, t1, share;
  gboolean ok;

  if (n == 0)
    return TRUE;
  seg->batch_n = 0;
  t0 = now_s ();
  ok = forward_tiles (seg, n, error);
  t1 = now_s ();
  share = (t1 - t0) / n;
  for (b = 0; b < n; b++) {
    Frame *f = seg->slots[b].frame;
    UnetTile t;
    gdouble ts = now_s ();

    f->result->stats.time_forward += share;
    if (!ok)
      continue;
    unet_tile_plan_get_tile (&f->plan, seg->slots[b].tile, &t);
    if (f->wsum)
      unet_tile_stitch_blend (&f->plan, &t, classes, seg->out_buf + b * out_tile,
          seg->wy, seg->wx, f->acc, f->wsum);
    else
      unet_tile_stitch_copy (&f->plan, &t, classes, seg->out_buf + b * out_tile,
          f->acc);
    f->n_stitched++;
    f->result->stats.time_stitch += now_s () - ts;
    if (f->n_stitched == f->plan.n_tiles && !frame_finish (seg, f, error))
      ok = FALSE;
  }
  return ok;
}

static gboolean
get_plan (UnetSegmenter *seg, gint h, gint w, UnetTilePlan *plan, GError **error)
{
  if (seg->cache_h == h && seg->cache_w == w) {
    *plan = seg->cache_plan;
    return TRUE;
  }
  if (seg->opts.tile_height == 0 && seg->opts.tile_width == 0) {
    guint64 budget = seg->opts.memory_budget ? seg->opts.memory_budget
        : DEFAULT_MEMORY_BUDGET;
    if (!unet_tile_plan_auto (plan, &seg->cfg, seg->be->channel_align, h, w, budget,
            seg->opts.batch_size, error))
      return FALSE;
  } else if (!unet_tile_plan_init (plan, &seg->cfg, h, w, seg->opts.tile_height,
          seg->opts.tile_width, error)) {
    return FALSE;
  }
  seg->cache_h = h;
  seg->cache_w = w;
  seg->cache_plan = *plan;
  return TRUE;
}

/* The activations of a batch of the plan's tiles, and whether an automatic
 * plan had to exceed the memory budget (no legal tile is smaller). */
static void
plan_budget (const UnetSegmenter *seg, const UnetTilePlan *plan,
    UnetSegmentStats *stats)
{
  guint64 one = unet_tile_activation_bytes (&seg->cfg, seg->be->channel_align,
      plan->y.tile_in, plan->x.tile_in);
  guint64 budget = seg->opts.memory_budget ? seg->opts.memory_budget
      : DEFAULT_MEMORY_BUDGET;
  gint batch = MAX (seg->opts.batch_size, 1);

  stats->activation_bytes = one > G_MAXUINT64 / (guint64) batch ? G_MAXUINT64 :
      one * (guint64) batch;
  stats->over_budget = seg->opts.tile_height == 0 && seg->opts.tile_width == 0
      && stats->activation_bytes > budget;
}

/* Make the pending batch take tiles of the plan's shape. */
static gboolean
prepare_batch_shape (UnetSegmenter *seg, const UnetTilePlan *plan, GError **error)
{
  gint th = plan->y.tile_in, tw = plan->x.tile_in;
  gsize bs = (gsize) seg->opts.batch_size;

  if (seg->batch_th == th && seg->batch_tw == tw && seg->in_buf)
    return TRUE;
  if (!run_batch (seg, error))
    return FALSE;
  if (!ensure_capacity (&seg->in_buf, &seg->in_cap,
          bs * seg->cfg.in_channels * th * tw, error)
      || !ensure_capacity (&seg->out_buf, &seg->out_cap,
          bs * seg->cfg.classes * plan->y.tile_out * plan->x.tile_out, error))
    return FALSE;
  seg->batch_th = th;
  seg->batch_tw = tw;
  seg->batch_to_h = plan->y.tile_out;
  seg->batch_to_w = plan->x.tile_out;
  g_free (seg->wy);
  g_free (seg->wx);
  seg->wy = g_new (gfloat, plan->y.tile_out);
  seg->wx = g_new (gfloat, plan->x.tile_out);
  unet_tile_gaussian_window (plan->y.tile_out, seg->wy);
  unet_tile_gaussian_window (plan->x.tile_out, seg->wx);
  return TRUE;
}

static gboolean device_finish (UnetSegmenter *seg, Frame *f, GError **error);

/* After a failure: frames that can no longer finish leave the queue (finished
 * ones stay poppable), and the pending batch is dropped. */
static void
drop_unfinished (UnetSegmenter *seg)
{
  GList *l = seg->frames.head;

  seg->batch_n = 0;
  while (l) {
    GList *next = l->next;
    Frame *f = l->data;
    /* an on-device frame whose download was started before the failure: let it land;
     * when it does, the frame is finished and stays poppable (device_finish releases
     * the slot either way) */
    if (f->dev_slot >= 0)
      (void) device_finish (seg, f, NULL);
    if (!f->finished) {
      g_queue_delete_link (&seg->frames, l);
      frame_free (f);
    }
    l = next;
  }
}

/* ------------------------------------------------------ on-device path -- */

/* Waits for an on-device frame's download and derives what the host computes
 * from the labels (instances, statistics; 1 - p for class 0 of a sigmoid model). */
static gboolean
device_finish (UnetSegmenter *seg, Frame *f, GError **error)
{
  UnetSegmentResult *r = f->result;
  const UnetBackendIface *be = seg->be->iface;
  gsize n = (gsize) r->width * r->height;
  guint outs = seg->opts.outputs;
  gint slot = f->dev_slot;
  gdouble t0 = now_s ();

  seg->dev_pending[slot] = NULL;
  f->dev_slot = -1;
  if (!be->frame_wait (seg->dev, slot, error))
    return FALSE;
  r->stats.time_stitch += now_s () - t0;
  t0 = now_s ();
  if (r->probability && seg->cfg.classes == 1 && seg->opts.probability_class == 0)
    for (gsize i = 0; i < n; i++)
      r->probability[i] = 1.0f - r->probability[i];
  if (outs & (UNET_SEGMENT_INSTANCES | UNET_SEGMENT_STATS)) {
    guint64 area = 0;
    if (outs & UNET_SEGMENT_INSTANCES) {
      r->instances = try_alloc (n, sizeof (guint32), FALSE, error);
      if (!r->instances)
        return FALSE;
    }
    r->stats.object_count = unet_label_components (r->labels,
        (guint8) seg->opts.foreground_class, r->width, r->height, r->instances, &area);
    r->stats.foreground_fraction = (gdouble) area / n;
    r->stats.mean_object_area =
        r->stats.object_count ? (gdouble) area / r->stats.object_count : 0.0;
  }
  if (!(outs & UNET_SEGMENT_LABELS))
    g_clear_pointer (&r->labels, g_free);
  r->stats.time_post += now_s () - t0;
  /* push to result, waits for other frames included: the pipeline's latency */
  r->stats.time_total = now_s () - f->dev_t0;
  r->stats.batch_reduced = seg->batch_reduced;
  seg->batch_reduced = 0;
  f->finished = TRUE;
  return TRUE;
}

/* Every on-device frame still in flight, in push order. */
static gboolean
device_finish_all (UnetSegmenter *seg, GError **error)
{
  for (GList *l = seg->frames.head; l != NULL; l = l->next) {
    Frame *f = l->data;
    if (f->dev_slot >= 0 && !device_finish (seg, f, error))
      return FALSE;
  }
  return TRUE;
}

typedef struct
{
  UnetSegmenter *seg;
  gint slot, n;
  gboolean blend;
} DevicePass;

static gboolean
device_fill (UnetBackendTensor *input, gpointer user, GError **error)
{
  DevicePass *d = user;
  UnetSegmenter *seg = d->seg;
  return seg->be->iface->frame_extract (seg->dev, d->slot, seg->dev_ox, seg->dev_oy, d->n, 0,
      input, error);
}

static gboolean
device_use (UnetBackendTensor *logits, gpointer user, GError **error)
{
  DevicePass *d = user;
  UnetSegmenter *seg = d->seg;
  return seg->be->iface->frame_stitch (seg->dev, d->slot, logits, 0, d->n, seg->dev_blocks,
      d->blend, error);
}

/* The on-device push of frame f (queued already, its plan made). */
static gboolean
device_push (UnetSegmenter *seg, Frame *f, UnetPixelFormat format, gconstpointer data,
    gsize stride, GError **error)
{
  const UnetBackendIface *be = seg->be->iface;
  UnetSegmentResult *r = f->result;
  const UnetTilePlan *plan = &f->plan;
  gint slot = (gint) (seg->dev_next % DEVICE_DEPTH);
  gint classes = seg->cfg.classes, th = plan->y.tile_in, tw = plan->x.tile_in;
  guint outs = seg->opts.outputs;
  gint prob_class = classes == 1 ? 0 : seg->opts.probability_class;
  gboolean want_labels = (outs & (UNET_SEGMENT_LABELS | UNET_SEGMENT_INSTANCES
          | UNET_SEGMENT_STATS)) != 0;
  gsize npix = (gsize) r->width * r->height;
  gdouble t0 = now_s ();

  if (!(outs & UNET_SEGMENT_PROBABILITY))
    prob_class = -1;
  /* the slot's previous frame must be home before its buffers are reused */
  if (seg->dev_pending[slot] != NULL && !device_finish (seg, seg->dev_pending[slot], error))
    return FALSE;
  if (!be->frame_upload (seg->dev, slot, format, data, r->width, r->height, stride, error)
      /* the statistics stay on the device: nothing here waits for the GPU */
      || !be->frame_normalize (seg->dev, slot, &seg->norm, error)
      || !be->frame_begin (seg->dev, slot, classes, want_labels, prob_class, plan->blend,
          error))
    return FALSE;
  r->stats.time_normalize = now_s () - t0;

  for (gint t0_tile = 0; t0_tile < plan->n_tiles;) {
    gint chunk = MIN (seg->max_batch, plan->n_tiles - t0_tile);
    DevicePass pass = { seg, slot, chunk, plan->blend };
    GError *local = NULL;
    gdouble tf = now_s ();
    for (gint i = 0; i < chunk; i++) {
      UnetTile t;
      gint *b = seg->dev_blocks + 6 * i;
      unet_tile_plan_get_tile (plan, t0_tile + i, &t);
      seg->dev_ox[i] = t.in_x;
      seg->dev_oy[i] = t.in_y;
      b[0] = t.x0 - t.out_x;
      b[1] = t.y0 - t.out_y;
      b[2] = t.x0;
      b[3] = t.y0;
      b[4] = t.x1 - t.x0;
      b[5] = t.y1 - t.y0;
    }
    if (unet_net_forward_tensors (seg->net, chunk, th, tw, device_fill, device_use, &pass,
            &local)) {
      r->stats.time_forward += now_s () - tf;
      t0_tile += chunk;
      continue;
    }
    if (chunk > 1 && g_error_matches (local, UNET_ERROR, UNET_ERROR_OUT_OF_MEMORY)) {
      seg->max_batch = chunk / 2;
      seg->batch_reduced = seg->max_batch;
      g_error_free (local);
      continue;
    }
    g_propagate_error (error, local);
    return FALSE;
  }
  f->n_extracted = f->n_stitched = plan->n_tiles;
  if (want_labels) {
    r->labels = try_alloc (npix, 1, FALSE, error);
    if (!r->labels)
      return FALSE;
  }
  if (outs & UNET_SEGMENT_PROBABILITY) {
    r->probability = try_alloc (npix, sizeof (gfloat), FALSE, error);
    if (!r->probability)
      return FALSE;
  }
  if (!be->frame_download (seg->dev, slot, r->labels, r->probability, error))
    return FALSE;
  f->dev_slot = slot;
  seg->dev_pending[slot] = f;
  seg->dev_next++;
  return seg->opts.batch_frames || device_finish (seg, f, error);
}

gboolean
unet_segmenter_push (UnetSegmenter *seg, UnetPixelFormat format, gconstpointer data,
    gint width, gint height, gsize stride, gpointer user_data, GError **error)
{
  UnetChannelLayout layout;
  UnetPixelFormat sample;

  if (!unet_pixel_format_channels (format, &sample, &layout)) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "unknown pixel format %d", (gint) format);
    return FALSE;
  }
  return unet_segmenter_push_channels (seg, sample, data, width, height, stride,
      &layout, user_data, error);
}

gboolean
unet_segmenter_push_channels (UnetSegmenter *seg, UnetPixelFormat format,
    gconstpointer data, gint width, gint height, gsize stride,
    const UnetChannelLayout *layout, gpointer user_data, GError **error)
{
  Frame *f;
  UnetSegmentResult *r;
  gsize n;
  gint i, c = seg->cfg.in_channels;
  gsize tile_elems;
  gdouble t0, t1;

  if (width < 1 || height < 1 || !data) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "frame %dx%d is empty", width, height);
    return FALSE;
  }
  if (layout == NULL || layout->channels != c) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "the model takes %d input channel%s but the frame has %d", c,
        c == 1 ? "" : "s", layout ? layout->channels : 0);
    return FALSE;
  }
  n = (gsize) width * height;
  f = g_new0 (Frame, 1);
  f->dev_slot = -1;
  f->result = r = g_new0 (UnetSegmentResult, 1);
  r->user_data = user_data;
  r->width = width;
  r->height = height;
  r->classes = seg->cfg.classes;
  r->stats.frame_number = seg->n_pushed;
  r->stats.width = width;
  r->stats.height = height;

  t0 = now_s ();
  if (!get_plan (seg, height, width, &f->plan, error))
    goto failed;
  plan_budget (seg, &f->plan, &r->stats);
  if (seg->dev != NULL && format != UNET_PIXEL_F32
      && layout->pixel_step == unet_pixel_format_bytes (format)) {
    /* host tiles of earlier frames first: frames finish in push order */
    if (!run_batch (seg, error)) {
      frame_free (f);
      goto failed_queued;
    }
    r->stats.n_tiles = f->plan.n_tiles;
    r->stats.tile_height = f->plan.y.tile_in;
    r->stats.tile_width = f->plan.x.tile_in;
    f->dev_t0 = t0;
    seg->n_pushed++;
    g_queue_push_tail (&seg->frames, f);
    if (!device_push (seg, f, format, data, stride, error))
      goto failed_queued;
    return TRUE;
  }
  f->norm = try_alloc ((gsize) c * n, sizeof (gfloat), FALSE, error);
  if (!f->norm)
    goto failed;
  f->acc = try_alloc ((gsize) seg->cfg.classes * n, sizeof (gfloat), f->plan.blend,
      error);
  if (!f->acc)
    goto failed;
  if (f->plan.blend) {
    f->wsum = try_alloc (n, sizeof (gfloat), TRUE, error);
    if (!f->wsum)
      goto failed;
  }
  if (!unet_normalize_channels (&seg->norm, format, data, width, height, stride,
          layout, f->norm, error))
    goto failed;
  if (!prepare_batch_shape (seg, &f->plan, error)) {
    frame_free (f);
    goto failed_queued;
  }
  r->stats.n_tiles = f->plan.n_tiles;
  r->stats.tile_height = f->plan.y.tile_in;
  r->stats.tile_width = f->plan.x.tile_in;
  t1 = now_s ();
  r->stats.time_normalize = t1 - t0;
  seg->n_pushed++;
  g_queue_push_tail (&seg->frames, f);

  tile_elems = (gsize) c * seg->batch_th * seg->batch_tw;
  for (i = 0; i < f->plan.n_tiles; i++) {
    UnetTile t;
    gdouble te = now_s ();

    unet_tile_plan_get_tile (&f->plan, i, &t);
    for (gint k = 0; k < c; k++)
      unet_tile_extract (f->norm + (gsize) k * n, height, width, t.in_y, t.in_x,
          seg->batch_th, seg->batch_tw, 1,
          seg->in_buf + seg->batch_n * tile_elems + (gsize) k * seg->batch_th
          * seg->batch_tw);
    seg->slots[seg->batch_n].frame = f;
    seg->slots[seg->batch_n].tile = i;
    seg->batch_n++;
    f->n_extracted++;
    if (f->n_extracted == f->plan.n_tiles)
      g_clear_pointer (&f->norm, g_free);
    r->stats.time_extract += now_s () - te;
    if (seg->batch_n == seg->opts.batch_size && !run_batch (seg, error))
      goto failed_queued;
  }
  if (!seg->opts.batch_frames && !run_batch (seg, error))
    goto failed_queued;
  return TRUE;

failed:
  frame_free (f);
  return FALSE;
failed_queued:
  drop_unfinished (seg);
  return FALSE;
}

gboolean
unet_segmenter_flush (UnetSegmenter *seg, GError **error)
{
  if (run_batch (seg, error) && device_finish_all (seg, error))
    return TRUE;
  drop_unfinished (seg);
  return FALSE;
}

UnetSegmentResult *
unet_segmenter_pop (UnetSegmenter *seg)
{
  Frame *f = g_queue_peek_head (&seg->frames);
  UnetSegmentResult *r;

  if (!f || !f->finished)
    return NULL;
  g_queue_pop_head (&seg->frames);
  r = g_steal_pointer (&f->result);
  frame_free (f);
  return r;
}

UnetSegmentResult *
unet_segmenter_process (UnetSegmenter *seg, UnetPixelFormat format,
    gconstpointer data, gint width, gint height, gsize stride, GError **error)
{
  if (!unet_segmenter_push (seg, format, data, width, height, stride, NULL, error)
      || !unet_segmenter_flush (seg, error))
    return NULL;
  return unet_segmenter_pop (seg);
}
