/* A host "device" for the segmenter's on-device frame path (tests only); see
 * host-frames.h. The per-pixel work is the CUDA kernels' bodies (kernel-bodies.h),
 * looped over the same grids the kernels cover. */
#include "config.h"

#include "host-frames.h"

#include "kernel-bodies.h"

#include "backend.h"
#include "net-private.h"
#include "normalize-private.h"

#include <string.h>

#include <vector>

static HostFramesStats *stats;
static UnetBackendIface host_iface;
static const UnetBackendIface *cpu_iface;
/* tensor -> dims (the CPU backend's tensors are opaque; frame_extract and
 * frame_stitch need their shapes, as the CUDA backend reads its own) */
static GHashTable *tensor_dims;

static gboolean
fail (GError **error, UnetError code, const char *what)
{
  g_set_error (error, UNET_ERROR, code, "host frames: %s", what);
  return FALSE;
}

/* ---------------------------------------------------- tensor book-keeping -- */

static UnetBackendTensor *
hf_tensor_new (UnetBackend *be, const UnetDims *dims, GError **error)
{
  UnetBackendTensor *t = cpu_iface->tensor_new (be, dims, error);
  if (t != NULL)
    g_hash_table_insert (tensor_dims, t, g_memdup2 (dims, sizeof *dims));
  return t;
}

static UnetBackendTensor *
hf_tensor_view (UnetBackend *be, UnetBackendTensor *parent, gint c_offset, gint c,
    GError **error)
{
  /* views are never net inputs or logits; no dims needed */
  return cpu_iface->tensor_view (be, parent, c_offset, c, error);
}

static void
hf_tensor_free (UnetBackendTensor *t)
{
  g_hash_table_remove (tensor_dims, t);
  cpu_iface->tensor_free (t);
}

static const UnetDims *
dims_of (UnetBackendTensor *t)
{
  return (const UnetDims *) g_hash_table_lookup (tensor_dims, t);
}

/* ------------------------------------------------------------- the slots -- */

struct Slot
{
  int width = 0, height = 0, classes = 0, prob_class = -1;
  UnetPixelFormat format = UNET_PIXEL_U8;
  size_t row_bytes = 0;
  bool labels = false, blend = false, pending = false, begun = false;
  float params[2] = { 0.0f, 1.0f };     /* lo, scale */
  std::vector<uint8_t> in;
  std::vector<uint8_t> out_labels;
  std::vector<float> out_probs, acc, wsum;
  uint8_t *dst_labels = nullptr;
  float *dst_probs = nullptr;
  std::vector<uint8_t> staged_labels;   /* "pinned": what the download copied */
  std::vector<float> staged_probs;
  int extracted = 0;                    /* tiles extracted since begin */
};

struct _UnetBackendFrames
{
  std::vector<Slot> slots;
};

static void
log_call (char what, gint slot)
{
  if (stats->log != NULL)
    g_string_append_printf (stats->log, "%c%d ", what, slot);
}

static Slot *
slot_of (UnetBackendFrames *fr, gint slot, GError **error)
{
  if (slot < 0 || slot >= (gint) fr->slots.size ()) {
    fail (error, UNET_ERROR_INVALID_ARGUMENT, "no such slot");
    return NULL;
  }
  return &fr->slots[slot];
}

static UnetBackendFrames *
hf_frames_new (UnetBackend *be, gint depth, GError **error)
{
  (void) be;
  (void) error;
  UnetBackendFrames *fr = new UnetBackendFrames;
  fr->slots.resize (CLAMP (depth, 1, 8));
  return fr;
}

static void
hf_frames_free (UnetBackendFrames *fr)
{
  delete fr;
}

static gboolean
hf_frame_upload (UnetBackendFrames *fr, gint slot, UnetPixelFormat format,
    gconstpointer data, gint width, gint height, gsize stride, GError **error)
{
  Slot *s = slot_of (fr, slot, error);
  const size_t bpp = format == UNET_PIXEL_U8 ? 1 : format == UNET_PIXEL_U16 ? 2 : 4;
  if (s == NULL)
    return FALSE;
  log_call ('U', slot);
  if (s->pending)
    return fail (error, UNET_ERROR_FAILED, "slot reused before its download was waited for");
  s->width = width;
  s->height = height;
  s->format = format;
  s->row_bytes = (size_t) width * bpp;
  s->in.resize (s->row_bytes * height);
  for (gint y = 0; y < height; y++)
    memcpy (&s->in[(size_t) y * s->row_bytes], (const guint8 *) data + (size_t) y * stride,
        s->row_bytes);
  s->params[0] = 0.0f;
  s->params[1] = 1.0f;
  s->begun = false;
  stats->frames_uploaded++;
  return TRUE;
}

static gboolean
hf_frame_normalize (UnetBackendFrames *fr, gint slot, const UnetNormalization *norm,
    GError **error)
{
  Slot *s = slot_of (fr, slot, error);
  gdouble lo, scale;
  if (s == NULL)
    return FALSE;
  log_call ('N', slot);
  if (unet_normalization_fixed_params (norm, &lo, &scale)) {
    s->params[0] = (float) lo;
    s->params[1] = (float) scale;
    return TRUE;
  }
  if (s->format == UNET_PIXEL_F32)
    return fail (error, UNET_ERROR_INVALID_ARGUMENT, "statistics of a float frame");
  const size_t npix = (size_t) s->width * s->height;
  const UnetCudaPixel fmt = (UnetCudaPixel) s->format;
  if (norm->mode == UNET_NORM_PERCENTILE) {
    /* the histogram kernel's bins, then the one-block parameter kernel */
    const int bins = s->format == UNET_PIXEL_U8 ? 256 : 65536, chunks = 256;
    std::vector<uint32_t> hist (bins, 0);
    std::vector<uint64_t> chunk_sum (chunks, 0);
    for (size_t i = 0; i < npix; i++)
      hist[kb_hist_bin (s->in.data (), fmt, s->width, s->row_bytes, 1, i)]++;
    for (int v = 0; v < bins; v++)
      chunk_sum[v / (bins / chunks)] += hist[v];
    kb_percentile_params (hist.data (), chunk_sum.data (), chunks, bins / chunks, npix,
        norm->a, norm->b, s->params);
  } else {
    double sums[2] = { 0.0, 0.0 };
    for (size_t i = 0; i < npix; i++) {
      const int x = (int) (i % s->width), y = (int) (i / s->width);
      const double v = kb_load_pixel (&s->in[(size_t) y * s->row_bytes], fmt, x);
      sums[0] += v;
      sums[1] += v * v;
    }
    kb_moments_params (sums, npix, s->params);
  }
  return TRUE;
}

static gboolean
hf_frame_begin (UnetBackendFrames *fr, gint slot, gint classes, gboolean labels,
    gint prob_class, gboolean blend, GError **error)
{
  Slot *s = slot_of (fr, slot, error);
  if (s == NULL)
    return FALSE;
  log_call ('B', slot);
  if (classes < 1 || classes > 255 || prob_class < -1 || prob_class >= classes)
    return fail (error, UNET_ERROR_INVALID_ARGUMENT, "bad classes / probability class");
  const size_t n = (size_t) s->width * s->height;
  s->classes = classes;
  s->labels = labels;
  s->prob_class = prob_class;
  s->blend = blend;
  s->begun = true;
  s->extracted = 0;
  /* only what was asked for, as the CUDA backend allocates */
  s->out_labels.assign (labels ? n : 0, 0);
  s->out_probs.assign (prob_class >= 0 ? n : 0, 0.0f);
  s->acc.assign (blend ? n * classes : 0, 0.0f);
  s->wsum.assign (blend ? n : 0, 0.0f);
  stats->labels_bytes = MAX (stats->labels_bytes, s->out_labels.size ());
  stats->probs_bytes = MAX (stats->probs_bytes, s->out_probs.size () * sizeof (float));
  stats->acc_bytes = MAX (stats->acc_bytes, s->acc.size () * sizeof (float));
  stats->wsum_bytes = MAX (stats->wsum_bytes, s->wsum.size () * sizeof (float));
  return TRUE;
}

static gboolean
hf_frame_extract (UnetBackendFrames *fr, gint slot, const gint *origin_x,
    const gint *origin_y, gint n, gint b0, UnetBackendTensor *input, GError **error)
{
  Slot *s = slot_of (fr, slot, error);
  const UnetDims *d = dims_of (input);
  if (s == NULL)
    return FALSE;
  log_call ('E', slot);
  stats->extract_calls++;
  if (stats->fail_extract_call > 0 && stats->extract_calls == stats->fail_extract_call)
    return fail (error, UNET_ERROR_BACKEND, "injected failure");
  if (stats->oom_above > 0 && n > stats->oom_above)
    return fail (error, UNET_ERROR_OUT_OF_MEMORY, "injected out of memory");
  if (!s->begun || d == NULL || d->c != 1 || b0 < 0 || n < 1 || b0 + n > d->n)
    return fail (error, UNET_ERROR_FAILED, "extract does not fit the input tensor");
  const size_t per_tile = (size_t) d->h * d->w;
  std::vector<float> buf ((size_t) d->n * per_tile);
  if (!cpu_iface->download (input, buf.data (), error))
    return FALSE;
  /* one channel: (n, 1, h, w) NCHW is the kernel's (n, h, w, 1) */
  const size_t total = (size_t) n * per_tile;
  for (size_t i = 0; i < total; i++)
    kb_extract_elem (s->in.data (), (UnetCudaPixel) s->format, s->width, s->height,
        s->row_bytes, 1, origin_x, origin_y, d->w, d->h, s->params[0], s->params[1],
        &buf[(size_t) b0 * per_tile], i);
  s->extracted += n;
  stats->max_extract_n = MAX (stats->max_extract_n, n);
  return cpu_iface->upload (input, buf.data (), error);
}

static gboolean
hf_frame_stitch (UnetBackendFrames *fr, gint slot, UnetBackendTensor *logits, gint b0,
    gint n, const gint *blocks, gboolean blend, GError **error)
{
  Slot *s = slot_of (fr, slot, error);
  const UnetDims *d = dims_of (logits);
  if (s == NULL)
    return FALSE;
  log_call ('S', slot);
  if (!s->begun || d == NULL || d->c != s->classes || b0 < 0 || n < 1 || b0 + n > d->n
      || blend != s->blend)
    return fail (error, UNET_ERROR_FAILED, "stitch does not fit the logits tensor");
  if (s->extracted < n)
    return fail (error, UNET_ERROR_FAILED, "stitch of tiles that were not extracted");
  const int K = d->c, oh = d->h, ow = d->w;
  const size_t per_tile = (size_t) K * oh * ow;
  std::vector<float> nchw ((size_t) d->n * per_tile), nhwc (nchw.size ());
  if (!cpu_iface->download (logits, nchw.data (), error))
    return FALSE;
  for (int b = 0; b < d->n; b++)        /* the GPU holds NHWC */
    for (int k = 0; k < K; k++)
      for (int p = 0; p < oh * ow; p++)
        nhwc[b * per_tile + (size_t) p * K + k] = nchw[b * per_tile + (size_t) k * oh * ow + p];
  const float *z = &nhwc[(size_t) b0 * per_tile];
  uint8_t *lab = s->labels ? s->out_labels.data () : nullptr;
  float *prob = s->prob_class >= 0 ? s->out_probs.data () : nullptr;
  for (int t = 0; t < n; t++) {
    const gint *bb = blocks + 6 * t;
    const UnetCudaBlock b = { bb[0], bb[1], bb[2], bb[3], bb[4], bb[5] };
    if (b.src_x < 0 || b.src_y < 0 || b.w < 0 || b.h < 0 || b.src_x + b.w > ow
        || b.src_y + b.h > oh || b.dst_x < 0 || b.dst_y < 0 || b.dst_x + b.w > s->width
        || b.dst_y + b.h > s->height)
      return fail (error, UNET_ERROR_FAILED, "block outside the tile or the frame");
    const size_t total = (size_t) b.w * b.h;
    for (size_t i = 0; i < total; i++) {
      if (blend)
        kb_accumulate_elem (z + (size_t) t * per_tile, oh, ow, K, b, 0.125f * ow, 0.125f * oh,
            s->acc.data (), s->wsum.data (), s->width, s->height, i);
      else
        kb_stitch_elem (z, oh, ow, K, b, t, lab, (size_t) s->width, prob,
            (size_t) s->width * sizeof (float), MAX (s->prob_class, 0), i);
    }
  }
  s->extracted -= n;
  return TRUE;
}

static gboolean
hf_frame_download (UnetBackendFrames *fr, gint slot, guint8 *labels, gfloat *probability,
    GError **error)
{
  Slot *s = slot_of (fr, slot, error);
  if (s == NULL)
    return FALSE;
  log_call ('D', slot);
  if ((labels != NULL && !s->labels) || (probability != NULL && s->prob_class < 0))
    return fail (error, UNET_ERROR_FAILED, "download of an output frame_begin did not ask for");
  const size_t n = (size_t) s->width * s->height;
  if (s->blend)
    for (size_t i = 0; i < n; i++)
      kb_finalize_elem (s->acc.data (), s->wsum.data (), s->width, s->height, s->classes,
          s->labels ? s->out_labels.data () : nullptr, (size_t) s->width,
          s->prob_class >= 0 ? s->out_probs.data () : nullptr,
          (size_t) s->width * sizeof (float), MAX (s->prob_class, 0), i);
  /* the asynchronous copy: staged now, in the caller's buffers at frame_wait */
  s->staged_labels = s->out_labels;
  s->staged_probs = s->out_probs;
  s->dst_labels = labels;
  s->dst_probs = probability;
  s->pending = true;
  s->begun = false;
  return TRUE;
}

static gboolean
hf_frame_wait (UnetBackendFrames *fr, gint slot, GError **error)
{
  Slot *s = slot_of (fr, slot, error);
  if (s == NULL)
    return FALSE;
  log_call ('W', slot);
  if (!s->pending)
    return TRUE;
  if (s->dst_labels != NULL)
    memcpy (s->dst_labels, s->staged_labels.data (), s->staged_labels.size ());
  if (s->dst_probs != NULL)
    memcpy (s->dst_probs, s->staged_probs.data (), s->staged_probs.size () * sizeof (float));
  s->pending = false;
  s->dst_labels = nullptr;
  s->dst_probs = nullptr;
  stats->frames_waited++;
  return TRUE;
}

static void
hook (UnetBackend *be, gpointer user)
{
  (void) user;
  if (g_strcmp0 (be->iface->name, "cpu") != 0)
    return;
  cpu_iface = be->iface;
  host_iface = *cpu_iface;
  host_iface.name = "host-frames";
  host_iface.tensor_new = hf_tensor_new;
  host_iface.tensor_view = hf_tensor_view;
  host_iface.tensor_free = hf_tensor_free;
  host_iface.frames_new = hf_frames_new;
  host_iface.frames_free = hf_frames_free;
  host_iface.frame_upload = hf_frame_upload;
  host_iface.frame_normalize = hf_frame_normalize;
  host_iface.frame_begin = hf_frame_begin;
  host_iface.frame_extract = hf_frame_extract;
  host_iface.frame_stitch = hf_frame_stitch;
  host_iface.frame_download = hf_frame_download;
  host_iface.frame_wait = hf_frame_wait;
  be->iface = &host_iface;
}

void
host_frames_install (HostFramesStats *s)
{
  /* nets created earlier keep reporting into the last stats given */
  if (s != NULL)
    stats = s;
  if (tensor_dims == NULL)
    tensor_dims = g_hash_table_new_full (g_direct_hash, g_direct_equal, NULL, g_free);
  unet_net_set_backend_hook (s != NULL ? hook : NULL, NULL);
}
