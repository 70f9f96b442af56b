/* Connected-component labelling of a class in a label image (4-connectivity),
 * for the `instances` output and the per-frame object statistics. */
#include "unet.h"

static guint32
uf_find (guint32 *parent, guint32 x)
{
  while (parent[x] != x) {
    parent[x] = parent[parent[x]];
    x = parent[x];
  }
  return x;
}

guint
unet_label_components (const guint8 *mask, guint8 value, gint width, gint height,
    guint32 *instances, guint64 *area)
{
  /* Two passes: provisional labels with union-find (the smaller root wins, so a
   * root is the first provisional label of its component in raster order), then
   * roots numbered in increasing order. */
  gsize n = (gsize) width * height, i;
  guint32 *lab = g_new (guint32, n);
  GArray *parent = g_array_new (FALSE, FALSE, sizeof (guint32));
  guint32 *par, *final, next = 1, zero = 0;
  guint count = 0;
  guint64 fg = 0;
  gint x, y;

  g_array_append_val (parent, zero);
  for (y = 0; y < height; y++) {
    for (x = 0; x < width; x++) {
      gsize p = (gsize) y * width + x;
      guint32 up, left;

      if (mask[p] != value) {
        lab[p] = 0;
        continue;
      }
      fg++;
      up = y > 0 ? lab[p - width] : 0;
      left = x > 0 ? lab[p - 1] : 0;
      if (!up && !left) {
        lab[p] = next;
        g_array_append_val (parent, next);
        next++;
      } else if (up && left) {
        guint32 *pa = (guint32 *) parent->data;
        guint32 ru = uf_find (pa, up), rl = uf_find (pa, left);
        lab[p] = MIN (ru, rl);
        pa[MAX (ru, rl)] = MIN (ru, rl);
      } else {
        lab[p] = up ? up : left;
      }
    }
  }
  par = (guint32 *) parent->data;
  final = g_new0 (guint32, parent->len);
  for (i = 1; i < parent->len; i++) {
    guint32 r = uf_find (par, (guint32) i);
    if (r == i)
      final[i] = ++count;
  }
  if (instances) {
    for (i = 0; i < n; i++) {
      instances[i] = lab[i] ? final[uf_find (par, lab[i])] : 0;
    }
  }
  g_free (final);
  g_array_free (parent, TRUE);
  g_free (lab);
  if (area)
    *area = fg;
  return count;
}

