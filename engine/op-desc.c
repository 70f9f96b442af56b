/* gst-unet engine — the shape rules of backend.h's op descriptions, shared by the
 * backends (a file of its own: backend.c chooses backends and so calls them). */
#include "config.h"

#include "backend.h"

static gboolean
same_dims (const UnetDims *a, const UnetDims *b)
{
  return a->n == b->n && a->c == b->c && a->h == b->h && a->w == b->w;
}

gboolean
unet_op_desc_check_shapes (const UnetOpDesc *d, const UnetDims *s, const UnetDims *t,
    const UnetDims *ds, const UnetDims *dt, GError **error)
{
  gboolean ok = FALSE;

  switch (d->kind) {
    case UNET_OP_CONV:
    case UNET_OP_UPCONV2:
      ok = s->n == t->n;        /* channels and kernel: the layer's (the backend) */
      break;
    case UNET_OP_MAXPOOL2:
      ok = s->n == t->n && s->c == t->c && t->h == s->h / 2 && t->w == s->w / 2 && s->h >= 2
          && s->w >= 2;
      break;
    case UNET_OP_CROP_COPY:
      ok = s->n == t->n && s->c == t->c && d->crop_y >= 0 && d->crop_x >= 0
          && d->crop_y + t->h <= s->h && d->crop_x + t->w <= s->w;
      break;
    case UNET_OP_SOFTMAX:
    case UNET_OP_SIGMOID:
    case UNET_OP_BATCHNORM:
    case UNET_OP_DROPOUT:
      ok = same_dims (s, t);
      break;
  }
  if (ok && d->training)
    ok = dt != NULL && same_dims (dt, t) && (ds == NULL || same_dims (ds, s));
  if (!ok)
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "op %d: shapes %dx%dx%dx%d -> %dx%dx%dx%d do not fit%s", d->kind, s->n, s->c,
        s->h, s->w, t->n, t->c, t->h, t->w,
        d->training ? " (or a gradient tensor is not shaped as its tensor)" : "");
  return ok;
}
