/* A host "device" for the trainer's resident-sample path (tests only); see
 * host-samples.h. */
#include "config.h"

#include "host-samples.h"

#include "backend.h"
#include "net-private.h"

#include <string.h>

static HostSamplesStats *stats;
static UnetBackendIface host_iface;
static const UnetBackendIface *cpu_iface;
/* the targets of the last batch, as the host loss reads them */
static std::vector<gint32> target_labels;
static std::vector<float> target_weights;

struct _UnetBackendSample
{
  int w, h, channels;
  std::vector<float> image, weights;
  std::vector<guint8> labels;
  bool has_weights;
};

UnetCudaAugSample
host_samples_record (const UnetAugmentDraw *draw, const float *image, const guint8 *labels8,
    const float *weights, std::vector<float> &grids)
{
  UnetCudaAugSample r;
  gint origin[2];
  const int G = draw->grid;
  memset (&r, 0, sizeof r);
  r.image = image;
  r.labels = labels8;
  r.weights = weights;
  r.src_w = draw->width;
  r.src_h = draw->height;
  r.grid_offset = (int) grids.size ();
  grids.resize (grids.size () + 2 * G * G);
  unet_augment_draw_local (draw, origin, r.affine, grids.data () + r.grid_offset);
  r.origin_x = origin[0];
  r.origin_y = origin[1];
  r.grid = draw->elastic ? G : 0;
  r.bilinear = draw->image_interp == UNET_INTERP_BILINEAR;
  r.intensity = draw->intensity;
  r.gamma = (float) draw->gamma;
  r.contrast = (float) draw->contrast;
  r.brightness = (float) draw->brightness;
  return r;
}

void
host_samples_augment (const std::vector<UnetCudaAugSample> &recs,
    const std::vector<float> &grids, int channels, int in, int out, std::vector<float> &tile,
    std::vector<float> &input, std::vector<guint8> &labels8, std::vector<float> &weights,
    bool warp)
{
  const int n = (int) recs.size ();
  const size_t plane = (size_t) in * in, count = channels * plane;
  if (warp) {
    tile.assign (n * count, NAN);
    labels8.assign ((size_t) n * out * out, 77);
    weights.assign ((size_t) n * out * out, NAN);
    for (size_t i = 0; i < n * plane; i++)
      kb_augment_pixel (recs.data (), grids.data (), channels, in, in, out, out, 255,
          tile.data (), labels8.data (), weights.data (), i);
  }
  std::vector<double> st (3 * n);
  for (int b = 0; b < n; b++) {
    const float *x = tile.data () + b * count;
    float lo = x[0], hi = x[0];
    for (size_t i = 0; i < count; i++) {
      lo = fminf (lo, x[i]);
      hi = fmaxf (hi, x[i]);
    }
    double sum = 0.0;
    for (size_t i = 0; i < count; i++)
      sum += kb_intensity_gamma (x[i], lo, (float) ((double) hi - lo), recs[b].gamma);
    st[3 * b] = lo;
    st[3 * b + 1] = hi;
    st[3 * b + 2] = sum / count;
  }
  input.assign (n * count, NAN);
  for (size_t i = 0; i < n * count; i++)
    kb_augment_finish_elem (tile.data (), recs.data (), st.data (), channels, plane,
        input.data (), i);
}

/* ---------------------------------------------------------------- slots -- */

static UnetBackendSample *
hs_sample_new (UnetBackend *be, const gfloat *image, gint channels, const gint32 *class_map,
    const gfloat *weights, gint width, gint height, gint classes, GError **error)
{
  (void) be;
  if (stats->max_samples > 0 && stats->live_samples >= stats->max_samples) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_OUT_OF_MEMORY, "host samples: budget of %d",
        stats->max_samples);
    return NULL;
  }
  UnetBackendSample *s = new UnetBackendSample;
  const size_t plane = (size_t) width * height;
  s->w = width;
  s->h = height;
  s->channels = channels;
  s->image.assign (image, image + plane * channels);
  s->has_weights = weights != NULL;
  if (weights != NULL)
    s->weights.assign (weights, weights + plane);
  for (size_t i = 0; i < plane; i++) {
    const gint32 l = class_map[i];
    if (l != UNET_LABEL_IGNORE && (l < 0 || l >= MAX (classes, 2))) {
      delete s;
      g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT, "host samples: label %d",
          l);
      return NULL;
    }
    s->labels.push_back (l == UNET_LABEL_IGNORE ? 255 : (guint8) l);
  }
  stats->live_samples++;
  stats->uploads++;
  return s;
}

static void
hs_sample_free (UnetBackendSample *s)
{
  if (s == NULL)
    return;
  stats->live_samples--;
  delete s;
}

static gboolean
hs_batch_augment (UnetBackend *be, UnetBackendSample *const *samples,
    const UnetAugmentDraw *draws, gint n, UnetBackendTensor *input, GError **error)
{
  (void) be;
  const int C = samples[0]->channels, in = draws[0].in_w, out = draws[0].out_w;
  const size_t plane = (size_t) in * in;
  std::vector<UnetCudaAugSample> recs;
  std::vector<float> grids, tile, nhwc, nchw (n * C * plane), w;
  std::vector<guint8> lab;
  for (int b = 0; b < n; b++)
    recs.push_back (host_samples_record (&draws[b], samples[b]->image.data (),
            samples[b]->labels.data (),
            samples[b]->has_weights ? samples[b]->weights.data () : NULL, grids));
  host_samples_augment (recs, grids, C, in, out, tile, nhwc, lab, w, true);
  for (int b = 0; b < n; b++)
    for (size_t t = 0; t < plane; t++)
      for (int c = 0; c < C; c++)
        nchw[(b * C + c) * plane + t] = nhwc[(b * plane + t) * C + c];
  target_labels.assign (lab.size (), 0);
  for (size_t i = 0; i < lab.size (); i++)
    target_labels[i] = lab[i] == 255 ? UNET_LABEL_IGNORE : lab[i];
  target_weights = w;
  stats->batches++;
  return cpu_iface->upload (input, nchw.data (), error);
}

static gboolean
hs_loss (UnetBackend *be, UnetBackendTensor *logits, const gint32 *labels,
    const gfloat *weights, gdouble dice_weight, UnetBackendTensor *diff_logits,
    gdouble *loss, UnetConfusion *confusion, GError **error)
{
  if (labels == NULL) {
    stats->device_losses++;
    labels = target_labels.data ();
    weights = target_weights.data ();
  }
  return cpu_iface->loss (be, logits, labels, weights, dice_weight, diff_logits, loss,
      confusion, error);
}

static void
hook (UnetBackend *be, gpointer user)
{
  (void) user;
  if (g_strcmp0 (be->iface->name, "cpu") != 0)
    return;
  cpu_iface = be->iface;
  host_iface = *cpu_iface;
  host_iface.name = "host-samples";
  host_iface.sample_new = hs_sample_new;
  host_iface.sample_free = hs_sample_free;
  host_iface.batch_augment = hs_batch_augment;
  host_iface.loss = hs_loss;
  be->iface = &host_iface;
}

void
host_samples_install (HostSamplesStats *s)
{
  if (s != NULL)
    stats = s;
  unet_net_set_backend_hook (s != NULL ? hook : NULL, NULL);
}
