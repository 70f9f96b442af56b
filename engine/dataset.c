/* gst-unet engine — the trainer's dataset: raw image/mask pairs -> stored pairs
 * (normalised image, class map, weight map, object ids), the hold-out split and
 * the bounded sets. See dataset.h.
 */
#include "dataset.h"

#include <math.h>
#include <string.h>

#define MAX_FRAME_EDGE 65536
#define MAX_FRAME_PIXELS (G_GINT64_CONSTANT (1) << 28)

gboolean
unet_dataset_check_frame (gint width, gint height, gsize stride, gsize bpp,
    const gchar *what, GError **error)
{
  if (width < 1 || height < 1 || width > MAX_FRAME_EDGE
      || height > MAX_FRAME_EDGE
      || (gint64) width * height > MAX_FRAME_PIXELS) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "%s of %dx%d: frames must be 1..%d pixels per side and at most %"
        G_GINT64_FORMAT " pixels", what, width, height, MAX_FRAME_EDGE,
        MAX_FRAME_PIXELS);
    return FALSE;
  }
  if (stride < (gsize) width * bpp) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "%s stride %" G_GSIZE_FORMAT " is smaller than a row (%" G_GSIZE_FORMAT
        " bytes)", what, stride, (gsize) width * bpp);
    return FALSE;
  }
  return TRUE;
}

void
unet_pair_free (gpointer data)
{
  UnetPair *p = data;
  if (p == NULL)
    return;
  g_free (p->image);
  g_free (p->classes);
  g_free (p->weights);
  g_free (p->objects);
  g_free (p->raw);
  g_free (p);
}

/* The sample format and channel layout of `format`, which must have the model's
 * channels: a gray frame is not copied into a colour model's. */
static gboolean
image_channels (const UnetPairOptions *o, UnetPixelFormat format,
    UnetPixelFormat *sample, UnetChannelLayout *layout, GError **error)
{
  gint c = o->in_channels;
  layout->channels = 0;
  if (!unet_pixel_format_channels (format, sample, layout)
      || layout->channels != c) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "the model takes %d input channel%s but the image has %d", c,
        c == 1 ? "" : "s", layout->channels);
    return FALSE;
  }
  return TRUE;
}

/* Raw frame -> normalised (C,H,W), each channel on its own. */
static gfloat *
normalize_image (const UnetPairOptions *o, UnetPixelFormat format,
    gconstpointer data, gsize stride, gint width, gint height, GError **error)
{
  UnetPixelFormat sample;
  UnetChannelLayout layout;
  if (!image_channels (o, format, &sample, &layout, error))
    return NULL;
  g_autofree gfloat *img = g_try_new (gfloat, (gsize) width * height
      * o->in_channels);
  if (img == NULL) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_OUT_OF_MEMORY,
        "cannot allocate a %dx%d frame", width, height);
    return NULL;
  }
  if (!unet_normalize_channels (&o->normalization, sample, data, width,
          height, stride, &layout, img, error))
    return NULL;
  return g_steal_pointer (&img);
}

/* Raw frame -> a dense copy (rows of width·bpp bytes), for the segmenter. */
static gboolean
copy_raw (const UnetPairOptions *o, UnetPair *p, UnetPixelFormat format,
    gconstpointer data, gsize stride, GError **error)
{
  UnetPixelFormat sample;
  UnetChannelLayout layout;
  if (!image_channels (o, format, &sample, &layout, error))
    return FALSE;
  gsize row = (gsize) p->width * unet_pixel_format_bytes (format);
  p->raw = g_try_malloc (row * p->height);
  if (p->raw == NULL) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_OUT_OF_MEMORY,
        "cannot allocate a %dx%d frame", p->width, p->height);
    return FALSE;
  }
  for (gint y = 0; y < p->height; y++)
    memcpy (p->raw + (gsize) y * row, (const guint8 *) data + (gsize) y * stride,
        row);
  p->raw_format = format;
  p->raw_stride = row;
  return TRUE;
}

UnetPair *
unet_pair_new (const UnetPairOptions *o, gboolean held_out,
    UnetPixelFormat image_format, gconstpointer image, gsize image_stride,
    UnetPixelFormat mask_format, gconstpointer mask, gsize mask_stride,
    gint width, gint height, GError **error)
{
  if (mask_format != UNET_PIXEL_U8 && mask_format != UNET_PIXEL_U16) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "masks must be integer labels (8 or 16 bit gray)");
    return NULL;
  }
  if (!unet_dataset_check_frame (width, height, image_stride,
          unet_pixel_format_bytes (image_format), "image", error)
      || !unet_dataset_check_frame (width, height, mask_stride,
          unet_pixel_format_bytes (mask_format), "mask", error))
    return NULL;

  gsize plane = (gsize) width * height;
  UnetPair *p = g_new0 (UnetPair, 1);
  p->width = width;
  p->height = height;
  g_autofree gint32 *raw = g_try_new (gint32, plane);
  g_autofree gint32 *instances = g_try_new (gint32, plane);
  p->classes = g_try_new (gint32, plane);
  if (!held_out)
    p->weights = g_try_new (gfloat, plane);
  if (raw == NULL || instances == NULL || p->classes == NULL
      || (!held_out && p->weights == NULL)) {
    unet_pair_free (p);
    g_set_error (error, UNET_ERROR, UNET_ERROR_OUT_OF_MEMORY,
        "cannot allocate the labels of a %dx%d pair", width, height);
    return NULL;
  }
  for (gint y = 0; y < height; y++) {
    const guint8 *row = (const guint8 *) mask + (gsize) y * mask_stride;
    gint32 *dst = raw + (gsize) y * width;
    if (mask_format == UNET_PIXEL_U8) {
      for (gint x = 0; x < width; x++)
        dst[x] = row[x];
    } else {
      for (gint x = 0; x < width; x++) {
        guint16 v;
        memcpy (&v, row + 2 * x, 2);
        dst[x] = GUINT16_FROM_LE (v);
      }
    }
  }

  gint n_instances = 0;
  if (!unet_mask_to_labels (o->mask_mode, raw, width, height, o->classes,
          o->ignore_label, p->classes, instances, &n_instances, error))
    goto fail;
  if (held_out) {
    if (!copy_raw (o, p, image_format, image, image_stride, error))
      goto fail;
    p->objects = g_steal_pointer (&instances);
    return p;
  }
  if (!unet_weight_map_compute (&o->weight_map, p->classes, instances,
          n_instances, o->classes, width, height, p->weights, error))
    goto fail;
  p->image = normalize_image (o, image_format, image, image_stride, width,
      height, error);
  if (p->image == NULL)
    goto fail;
  return p;

fail:
  unet_pair_free (p);
  return NULL;
}

gboolean
unet_dataset_holds_out (guint64 index, gdouble fraction, guint n_training)
{
  /* 1e-9 absorbs the rounding of (i + 1)·f at exact multiples. */
  gdouble i = (gdouble) index;
  return n_training > 0
      && floor ((i + 1.0) * fraction + 1e-9) > floor (i * fraction + 1e-9);
}

void
unet_dataset_push (GQueue *set, guint capacity, UnetPair *pair, GFunc evict,
    gpointer user)
{
  while (set->length >= MAX (capacity, 1)) {
    UnetPair *old = g_queue_pop_head (set);
    if (evict != NULL)
      evict (old, user);
    unet_pair_free (old);
  }
  g_queue_push_tail (set, pair);
}
