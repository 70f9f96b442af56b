/* gst-unet engine — the U-Net graph (graph.h). */
#include "config.h"

#include "graph.h"

#include <string.h>

/* ---------------------------------------------------------------- layers -- */

/* A layer's channel counts: the model's (cin, cout), the graph's (pcin, pcout) */
static UnetGraphLayer *
layer_add (UnetGraphLayer *layers, gint *n, UnetLayerKind kind, gint cin, gint cout,
    gint pcin, gint pcout, gint cin_parts, gint k, const gchar *name, const gchar *bn)
{
  UnetGraphLayer *l = layers != NULL ? &layers[*n] : NULL;
  if (l != NULL) {
    l->kind = kind;
    l->cin = pcin;
    l->cout = pcout;
    l->cin_model = cin;
    l->cout_model = cout;
    l->cin_parts = cin_parts;
    l->k = k;
    g_strlcpy (l->name, name, sizeof l->name);
    g_strlcpy (l->bn, bn != NULL ? bn : "", sizeof l->bn);
  }
  (*n)++;
  return l;
}

gint
unet_graph_width (const UnetConfig *cfg, gint channel_align, gint level)
{
  const gint f = cfg->base_filters << level;
  if (channel_align <= 1)
    return f;
  return (f + channel_align - 1) / channel_align * channel_align;
}

/* The two 3x3 convolutions of a block "prefix" (enc.0, bottom, dec.1) of width
 * f (graph: pf) reading cin (graph: pcin, in cin_parts parts) channels. */
static void
block_layers (const UnetConfig *cfg, UnetGraphLayer *layers, gint *n,
    const gchar *prefix, gint cin, gint pcin, gint cin_parts, gint f, gint pf)
{
  for (gint j = 1; j <= 2; j++) {
    gchar name[32], bn[32];
    g_snprintf (name, sizeof name, "%s.conv%d", prefix, j);
    g_snprintf (bn, sizeof bn, "%s.bn%d", prefix, j);
    layer_add (layers, n, UNET_LAYER_CONV, j == 1 ? cin : f, f, j == 1 ? pcin : pf, pf,
        j == 1 ? cin_parts : 1, 3, name, cfg->batch_norm ? bn : NULL);
  }
}

gint
unet_graph_layers (const UnetConfig *cfg, gint channel_align, UnetGraphLayer *layers)
{
  const gint D = cfg->depth;
  gint n = 0, cin = cfg->in_channels, pcin = cfg->in_channels;
  gchar prefix[32];

  for (gint i = 0; i <= D; i++) {
    gint f = cfg->base_filters << i, pf = unet_graph_width (cfg, channel_align, i);
    if (i < D)
      g_snprintf (prefix, sizeof prefix, "enc.%d", i);
    block_layers (cfg, layers, &n, i < D ? prefix : "bottom", cin, pcin, 1, f, pf);
    cin = f;
    pcin = pf;
  }
  for (gint i = D - 1; i >= 0; i--) {
    gint f = cfg->base_filters << i, pf = unet_graph_width (cfg, channel_align, i);
    g_snprintf (prefix, sizeof prefix, "dec.%d.up", i);
    layer_add (layers, &n, UNET_LAYER_UPCONV, cin, f, pcin, pf, 1, 2, prefix, NULL);
    g_snprintf (prefix, sizeof prefix, "dec.%d", i);
    block_layers (cfg, layers, &n, prefix, 2 * f, 2 * pf, 2, f, pf);
    cin = f;
    pcin = pf;
  }
  layer_add (layers, &n, UNET_LAYER_CONV, cin, cfg->classes, pcin, cfg->classes, 1, 1,
      "head", NULL);
  return n;
}

/* ---------------------------------------------------------------- build -- */

typedef struct
{
  UnetGraph *g;
  const UnetLayout *layout;     /* training graphs */
  UnetGraphLayer *layers;
  gint next_layer;              /* layers are consumed in unet_graph_layers order */
  GError **error;
  gboolean failed;
} Builder;

static gint
tensor_add (UnetGraph *g, gint n, gint c, gint h, gint w)
{
  UnetGraphTensor t = { {n, c, h, w}, -1, 0, FALSE, G_MAXINT, -1, 0, 0 };
  g_array_append_val (g->tensors, t);
  return (gint) g->tensors->len - 1;
}

static gint
view_add (UnetGraph *g, gint parent, gint c_offset, gint c)
{
  UnetGraphTensor p = *unet_graph_tensor (g, parent);
  gint id = tensor_add (g, p.dims.n, c, p.dims.h, p.dims.w);
  unet_graph_tensor (g, id)->parent = parent;
  unet_graph_tensor (g, id)->c_offset = c_offset;
  return id;
}

static UnetGraphNode *
node_add (UnetGraph *g, UnetOpKind kind, gint src, gint dst)
{
  UnetGraphNode n = {
    .kind = kind, .layer = -1, .src = src, .dst = dst,
    .weight = -1, .bias = -1, .bn = {-1, -1, -1, -1},
    .diff_src = -1, .diff_dst = -1,
  };
  g_array_append_val (g->nodes, n);
  return unet_graph_node (g, (gint) g->nodes->len - 1);
}

static gint
slab_offset (Builder *b, const gchar *name)
{
  gint i = unet_layout_find (b->layout, name);
  if (i < 0) {
    if (!b->failed)
      g_set_error (b->error, UNET_ERROR, UNET_ERROR_MODEL,
          "the model's parameters have no tensor %s", name);
    b->failed = TRUE;
    return -1;
  }
  return (gint) b->layout->tensors[i].offset;
}

/* The next layer's op (CONV or UPCONV2) from src; returns its output. A training
 * graph with batch norm gets conv -> BATCHNORM [relu]; otherwise the ReLU is fused
 * into the convolution. */
static gint
layer_node (Builder *b, gint src, gint dst, gboolean relu)
{
  UnetGraph *g = b->g;
  const UnetGraphLayer *l = &b->layers[b->next_layer];
  const gboolean training = g->mode == UNET_GRAPH_TRAINING;
  const gboolean bn = training && l->bn[0] != '\0';
  UnetDims s = unet_graph_tensor (g, src)->dims;
  gint pad = l->k == 3 && g->cfg.padding == UNET_PADDING_SAME ? 1 : 0;
  gint conv_out = dst;
  UnetGraphNode *n;

  if (dst < 0 || bn) {
    gint oh = l->kind == UNET_LAYER_UPCONV ? 2 * s.h : s.h + 2 * pad - l->k + 1;
    gint ow = l->kind == UNET_LAYER_UPCONV ? 2 * s.w : s.w + 2 * pad - l->k + 1;
    conv_out = tensor_add (g, s.n, l->cout, oh, ow);
  }
  n = node_add (g, l->kind == UNET_LAYER_UPCONV ? UNET_OP_UPCONV2 : UNET_OP_CONV, src,
      conv_out);
  n->layer = b->next_layer++;
  n->k = l->k;
  n->pad = pad;
  n->relu = relu && !bn;
  if (training) {
    gchar name[48];
    g_snprintf (name, sizeof name, "%s.weight", l->name);
    n->weight = slab_offset (b, name);
    g_snprintf (name, sizeof name, "%s.bias", l->name);
    n->bias = slab_offset (b, name);
  }
  if (!bn)
    return conv_out;

  UnetDims c = unet_graph_tensor (g, conv_out)->dims;
  gint out = dst >= 0 ? dst : tensor_add (g, c.n, c.c, c.h, c.w);
  const gchar *parts[4] = { "weight", "bias", "running_mean", "running_var" };
  gint off[4];
  for (gint q = 0; q < 4; q++) {
    gchar name[48];
    g_snprintf (name, sizeof name, "%s.%s", l->bn, parts[q]);
    off[q] = slab_offset (b, name);
  }
  n = node_add (g, UNET_OP_BATCHNORM, conv_out, out);
  n->relu = relu;
  memcpy (n->bn, off, sizeof off);
  return out;
}

static gint
block (Builder *b, gint src)
{
  gint a = layer_node (b, src, -1, TRUE);
  return layer_node (b, a, -1, TRUE);
}

/* Per-dimension geometry: encoder output sizes e[i] and upsampled sizes u[i].
 * FALSE when `s` is not a legal input edge. */
static gboolean
walk (const UnetConfig *cfg, gint s, gint *e, gint *u)
{
  gint shrink = cfg->padding == UNET_PADDING_VALID ? 4 : 0;
  for (gint i = 0; i < cfg->depth; i++) {
    e[i] = s - shrink;
    if (e[i] <= 0 || e[i] % 2 != 0)
      return FALSE;
    s = e[i] / 2;
  }
  s -= shrink;
  if (s < 1)
    return FALSE;
  for (gint i = cfg->depth - 1; i >= 0; i--) {
    u[i] = 2 * s;
    if (u[i] > e[i])
      return FALSE;
    s = u[i] - shrink;
    if (s < 1)
      return FALSE;
  }
  return TRUE;
}

/* Gradient tensors: one per forward tensor that a backward pass writes, views
 * mirroring views; then each node's diff_src/diff_dst and, per tensor, which
 * backward writes first (the last forward reader) and which accumulate. */
static void
add_gradients (UnetGraph *g)
{
  const gint nt = (gint) g->tensors->len, nn = unet_graph_n_nodes (g);
  gint *diff = g_new (gint, nt);
  gboolean *written = g_new0 (gboolean, nt);

  for (gint i = 0; i < nt; i++)
    diff[i] = -1;
  /* roots first, so a view's parent gradient exists when the view is made */
  for (gint pass = 0; pass < 2; pass++)
    for (gint i = 0; i < nt; i++) {
      UnetGraphTensor t = *unet_graph_tensor (g, i);
      if (i == g->input || (pass == 0) != (t.parent < 0))
        continue;
      if (t.parent < 0)
        diff[i] = tensor_add (g, t.dims.n, t.dims.c, t.dims.h, t.dims.w);
      else
        diff[i] = view_add (g, diff[t.parent], t.c_offset, t.dims.c);
      unet_graph_tensor (g, diff[i])->gradient = TRUE;
    }
  /* backward runs in reverse: the first reader met writes, later ones add */
  for (gint k = nn - 1; k >= 0; k--) {
    UnetGraphNode *n = unet_graph_node (g, k);
    n->diff_dst = diff[n->dst];
    n->diff_src = diff[n->src];
    n->accumulate = n->diff_src >= 0 && written[n->src];
    if (n->diff_src >= 0)
      written[n->src] = TRUE;
  }
  g->diff_logits = diff[g->logits];
  g_free (written);
  g_free (diff);
}

UnetGraph *
unet_graph_new (const UnetConfig *cfg, const UnetLayout *layout, UnetGraphMode mode,
    gint channel_align, gint batch, gint height, gint width, GError **error)
{
  const gint D = cfg->depth;
  gint eh[32], ew[32], uh[32], uw[32], enc[32], cat[32], x;
  Builder b = { 0 };
  UnetGraph *g;

  g_return_val_if_fail (mode == UNET_GRAPH_INFERENCE || layout != NULL, NULL);
  g_return_val_if_fail (mode == UNET_GRAPH_INFERENCE || channel_align <= 1, NULL);
  if (D < 1 || D > 30 || batch < 1 || !walk (cfg, height, eh, uh)
      || !walk (cfg, width, ew, uw)) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "input %dx%d is not a legal size for this network", width, height);
    return NULL;
  }
  g = g_new0 (UnetGraph, 1);
  g->cfg = *cfg;
  g->mode = mode;
  g->batch = batch;
  g->height = height;
  g->width = width;
  g->channel_align = MAX (channel_align, 1);
  g->tensors = g_array_new (FALSE, TRUE, sizeof (UnetGraphTensor));
  g->nodes = g_array_new (FALSE, TRUE, sizeof (UnetGraphNode));
  g->output = g->diff_logits = -1;
  b.g = g;
  b.layout = layout;
  b.error = error;
  b.layers = g_new0 (UnetGraphLayer, unet_graph_layers (cfg, g->channel_align, NULL));
  unet_graph_layers (cfg, g->channel_align, b.layers);

  g->input = x = tensor_add (g, batch, cfg->in_channels, height, width);
  for (gint i = 0; i < D; i++) {
    gint f = unet_graph_width (cfg, g->channel_align, i);
    UnetGraphNode *n;
    enc[i] = block (&b, x);
    x = tensor_add (g, batch, f, eh[i] / 2, ew[i] / 2);
    node_add (g, UNET_OP_MAXPOOL2, enc[i], x);
    /* first half of the decoder input, filled now so enc[i] dies here */
    cat[i] = tensor_add (g, batch, 2 * f, uh[i], uw[i]);
    n = node_add (g, UNET_OP_CROP_COPY, enc[i], view_add (g, cat[i], 0, f));
    n->crop_y = (eh[i] - uh[i]) / 2;
    n->crop_x = (ew[i] - uw[i]) / 2;
  }
  x = block (&b, x);
  if (mode == UNET_GRAPH_TRAINING && cfg->dropout > 0.0) {
    UnetDims d = unet_graph_tensor (g, x)->dims;
    gint y = tensor_add (g, d.n, d.c, d.h, d.w);
    node_add (g, UNET_OP_DROPOUT, x, y)->dropout = cfg->dropout;
    x = y;
  }
  for (gint i = D - 1; i >= 0; i--) {
    gint f = unet_graph_width (cfg, g->channel_align, i);
    layer_node (&b, x, view_add (g, cat[i], f, f), FALSE);
    x = block (&b, cat[i]);
  }
  g->logits = layer_node (&b, x, -1, FALSE);
  if (mode == UNET_GRAPH_INFERENCE) {
    UnetDims d = unet_graph_tensor (g, g->logits)->dims;
    g->output = tensor_add (g, d.n, d.c, d.h, d.w);
    node_add (g, cfg->classes == 1 ? UNET_OP_SIGMOID : UNET_OP_SOFTMAX, g->logits,
        g->output);
  } else {
    add_gradients (g);
  }
  g_free (b.layers);
  if (b.failed) {
    unet_graph_free (g);
    return NULL;
  }
  return g;
}

void
unet_graph_free (UnetGraph *g)
{
  if (g == NULL)
    return;
  g_array_unref (g->tensors);
  g_array_unref (g->nodes);
  g_free (g);
}

/* ----------------------------------------------------------------- pack -- */

static void
touch (UnetGraph *g, gint id, gint step)
{
  UnetGraphTensor *t;
  if (id < 0)
    return;
  t = unet_graph_tensor (g, id);
  if (t->parent >= 0)
    t = unet_graph_tensor (g, t->parent);
  t->first = MIN (t->first, step);
  t->last = MAX (t->last, step);
}

/* What a node's backward reads besides diff_dst: the forward input of ops with
 * parameters or batch statistics, and the output of a fused ReLU (its mask). */
static void
touch_backward (UnetGraph *g, const UnetGraphNode *n, gint step)
{
  touch (g, n->diff_dst, step);
  touch (g, n->diff_src, step);
  if (n->kind == UNET_OP_CONV || n->kind == UNET_OP_UPCONV2
      || n->kind == UNET_OP_BATCHNORM)
    touch (g, n->src, step);
  if (n->relu)
    touch (g, n->dst, step);
}

gsize
unet_graph_pack (UnetGraph *g, gsize align)
{
  const gint nt = (gint) g->tensors->len, nn = unet_graph_n_nodes (g);
  const gboolean training = g->mode == UNET_GRAPH_TRAINING;
  gint *order = g_new (gint, nt);
  gint n_placed = 0;
  gsize total = 0;

  for (gint i = 0; i < nt; i++) {
    unet_graph_tensor (g, i)->first = G_MAXINT;
    unet_graph_tensor (g, i)->last = -1;
  }
  for (gint k = 0; k < nn; k++) {
    const UnetGraphNode *n = unet_graph_node (g, k);
    touch (g, n->src, k);
    touch (g, n->dst, k);
    if (training)
      touch_backward (g, n, 2 * nn - 1 - k);
  }
  /* the caller writes the input before the first step and reads the output
   * (inference) or the logits (training: before the backward pass, which then
   * needs d logits written by the caller) after the last forward step */
  touch (g, g->input, -1);
  if (training) {
    touch (g, g->logits, nn);
    touch (g, g->diff_logits, nn);
  } else {
    touch (g, g->output, nn);
  }

  /* largest first, each at the lowest aligned offset that does not collide with
   * an already placed tensor alive at the same time */
  for (gint i = 0; i < nt; i++) {
    UnetGraphTensor *t = unet_graph_tensor (g, i);
    gint j;
    if (t->parent >= 0 || t->last < t->first)
      continue;
    for (j = n_placed; j > 0 && unet_graph_tensor (g, order[j - 1])->bytes < t->bytes;
        j--)
      order[j] = order[j - 1];
    order[j] = i;
    n_placed++;
  }
  for (gint i = 0; i < n_placed; i++) {
    UnetGraphTensor *t = unet_graph_tensor (g, order[i]);
    gsize off = 0;
    gboolean moved = TRUE;
    while (moved) {
      moved = FALSE;
      for (gint j = 0; j < i; j++) {
        UnetGraphTensor *o = unet_graph_tensor (g, order[j]);
        if (o->last < t->first || t->last < o->first)
          continue;
        if (off < o->offset + o->bytes && o->offset < off + t->bytes) {
          off = (o->offset + o->bytes + align - 1) / align * align;
          moved = TRUE;
        }
      }
    }
    t->offset = off;
    total = MAX (total, off + t->bytes);
  }
  g_free (order);
  return total;
}
