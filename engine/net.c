/* gst-unet engine — the U-Net graph, written once for every backend.
 *
 * This file is the one place that knows the network's structure (network.md):
 * which layers exist, in which order ops run, the crop offsets, and which
 * activations are alive when. It owns UnetNet (unet.h): the layers (batch norm
 * folded into the convolutions for inference), the backend, and a small cache of
 * plans, one per input shape (batch, height, width).
 *
 * A plan is built in four steps: (1) a backend-independent graph of tensors and
 * nodes for the shape; (2) each tensor's lifetime [first node, last node]; (3) one
 * arena in which tensors whose lifetimes do not overlap share memory (greedy
 * first-fit, largest first), so peak memory is about the largest set of
 * simultaneously live activations, not their sum; (4) backend tensors, views and
 * ops (primitive creation) — all once. A forward then only uploads the input,
 * runs the ops in order and downloads the output.
 *
 * Crop+concat: the decoder input of level i is a 2F_i-channel tensor cat_i. The
 * center crop of the encoder output e_i is copied into its first half right after
 * e_i is pooled (so e_i dies early), and the transposed convolution writes its
 * output straight into the second half (a view) — no concat copy.
 */
#include "config.h"

#include "backend.h"
#include "model-private.h"
#include "net-private.h"
#include "unet.h"

#include <math.h>
#include <string.h>

#define NET_MAX_PLANS 2         /* shapes kept: full tiles + a last partial batch */
#define NET_ARENA_ALIGN 4096

/* ---------------------------------------------------------------- graph -- */

typedef struct
{
  UnetDims dims;
  gint parent;                  /* -1, or the tensor this is a channel view of */
  gint c_offset;
  gint first, last;             /* lifetime in node indices (roots only) */
  gsize bytes, offset;
} NetTensor;

typedef struct
{
  UnetOpKind kind;
  gint layer, pad;
  gboolean relu;
  gint crop_y, crop_x;
  gint src, dst;
} NetNode;

typedef struct
{
  GArray *tensors;              /* NetTensor */
  GArray *nodes;                /* NetNode */
  gint input, output;
  gint logits;                  /* the head's output, before the final softmax/sigmoid */
} NetGraph;

typedef struct
{
  gint batch, height, width;
  UnetBackend *be;
  UnetBackendTensor **tensors;  /* per graph tensor */
  gint n_tensors;
  UnetBackendOp **ops;
  gint n_ops;
  UnetBackendArena *arena;
  gsize arena_bytes;
  gint input, output, logits;
} NetPlan;

struct _UnetNet
{
  UnetConfig cfg;
  UnetDevice device;
  UnetNetOptions opts;          /* as given (device: the one asked for) */
  UnetBackend *be;
  GHashTable *layer_index;      /* layer name ("enc.0.conv1") -> index + 1 */
  GList *plans;                 /* NetPlan, most recently used first */
  GPtrArray *folded;            /* BN-folded layer weights the backend uses */
  /* Training (net-private.h, net-train.c): the host copy of the parameters the
   * layers were folded from, a flag to rebuild them, net-train.c's state. */
  UnetModel *host;
  gboolean host_dirty;
  gpointer train;
};

static gint
net_tensor_add (NetGraph *g, gint n, gint c, gint h, gint w)
{
  NetTensor t = { {n, c, h, w}, -1, 0, G_MAXINT, -1, 0, 0 };
  g_array_append_val (g->tensors, t);
  return (gint) g->tensors->len - 1;
}

static gint
net_view_add (NetGraph *g, gint parent, gint c_offset, gint c)
{
  NetTensor p = g_array_index (g->tensors, NetTensor, parent);
  gint id = net_tensor_add (g, p.dims.n, c, p.dims.h, p.dims.w);
  g_array_index (g->tensors, NetTensor, id).parent = parent;
  g_array_index (g->tensors, NetTensor, id).c_offset = c_offset;
  return id;
}

static NetTensor *
net_tensor (NetGraph *g, gint id)
{
  return &g_array_index (g->tensors, NetTensor, id);
}

static void
net_node_add (NetGraph *g, UnetOpKind kind, gint layer, gint src, gint dst)
{
  NetNode n = { kind, layer, 0, FALSE, 0, 0, src, dst };
  g_array_append_val (g->nodes, n);
}

static gint
net_layer (UnetNet *net, const gchar *fmt, gint level)
{
  gchar name[64];
  g_snprintf (name, sizeof name, fmt, level);
  return GPOINTER_TO_INT (g_hash_table_lookup (net->layer_index, name)) - 1;
}

/* dst = relu(conv3x3(src)); returns dst */
static gint
net_conv3 (UnetNet *net, NetGraph *g, gint src, gint layer, gint cout)
{
  NetTensor s = *net_tensor (g, src);
  gint shrink = net->cfg.padding == UNET_PADDING_VALID ? 2 : 0;
  gint dst = net_tensor_add (g, s.dims.n, cout, s.dims.h - shrink, s.dims.w - shrink);
  net_node_add (g, UNET_OP_CONV, layer, src, dst);
  g_array_index (g->nodes, NetNode, g->nodes->len - 1).pad =
      net->cfg.padding == UNET_PADDING_SAME ? 1 : 0;
  g_array_index (g->nodes, NetNode, g->nodes->len - 1).relu = TRUE;
  return dst;
}

static gint
net_block (UnetNet *net, NetGraph *g, gint src, const gchar *prefix, gint level, gint f)
{
  gchar fmt[64];
  gint a;
  g_snprintf (fmt, sizeof fmt, "%s.conv1", prefix);
  a = net_conv3 (net, g, src, net_layer (net, fmt, level), f);
  g_snprintf (fmt, sizeof fmt, "%s.conv2", prefix);
  return net_conv3 (net, g, a, net_layer (net, fmt, level), f);
}

/* Per-dimension geometry: encoder output sizes e[i] and upsampled sizes u[i].
 * FALSE when `s` is not a legal input edge. */
static gboolean
net_walk (const UnetConfig *cfg, gint s, gint *e, gint *u)
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

static NetGraph *
net_graph_new (UnetNet *net, gint batch, gint height, gint width)
{
  const UnetConfig *cfg = &net->cfg;
  gint D = cfg->depth;
  gint eh[32], ew[32], uh[32], uw[32];
  gint enc[32], cat[32], x;
  NetGraph *g;

  if (!net_walk (cfg, height, eh, uh) || !net_walk (cfg, width, ew, uw))
    return NULL;
  g = g_new0 (NetGraph, 1);
  g->tensors = g_array_new (FALSE, TRUE, sizeof (NetTensor));
  g->nodes = g_array_new (FALSE, TRUE, sizeof (NetNode));

  g->input = x = net_tensor_add (g, batch, cfg->in_channels, height, width);
  for (gint i = 0; i < D; i++) {
    gint f = cfg->base_filters << i, pooled, first;
    enc[i] = net_block (net, g, x, "enc.%d", i, f);
    pooled = net_tensor_add (g, batch, f, eh[i] / 2, ew[i] / 2);
    net_node_add (g, UNET_OP_MAXPOOL2, -1, enc[i], pooled);
    /* first half of the decoder input, filled now so enc[i] dies here */
    cat[i] = net_tensor_add (g, batch, 2 * f, uh[i], uw[i]);
    first = net_view_add (g, cat[i], 0, f);
    net_node_add (g, UNET_OP_CROP_COPY, -1, enc[i], first);
    g_array_index (g->nodes, NetNode, g->nodes->len - 1).crop_y = (eh[i] - uh[i]) / 2;
    g_array_index (g->nodes, NetNode, g->nodes->len - 1).crop_x = (ew[i] - uw[i]) / 2;
    x = pooled;
  }
  x = net_block (net, g, x, "bottom%.0d", 0, cfg->base_filters << D);
  for (gint i = D - 1; i >= 0; i--) {
    gint f = cfg->base_filters << i;
    gint second = net_view_add (g, cat[i], f, f);
    net_node_add (g, UNET_OP_UPCONV2, net_layer (net, "dec.%d.up", i), x, second);
    x = net_block (net, g, cat[i], "dec.%d", i, f);
  }
  {
    NetTensor s = *net_tensor (g, x);
    gint logits = g->logits = net_tensor_add (g, batch, cfg->classes, s.dims.h, s.dims.w);
    net_node_add (g, UNET_OP_CONV, net_layer (net, "head%.0d", 0), x, logits);
    g->output = net_tensor_add (g, batch, cfg->classes, s.dims.h, s.dims.w);
    net_node_add (g, cfg->classes == 1 ? UNET_OP_SIGMOID : UNET_OP_SOFTMAX, -1,
        logits, g->output);
  }
  return g;
}

static void
net_graph_free (NetGraph *g)
{
  if (g == NULL)
    return;
  g_array_unref (g->tensors);
  g_array_unref (g->nodes);
  g_free (g);
}

/* Lifetimes (on root tensors) and arena offsets; returns the arena size. */
static gsize
net_graph_pack (NetGraph *g)
{
  gint nt = (gint) g->tensors->len, nn = (gint) g->nodes->len;
  gint *order = g_new (gint, nt);
  gint n_placed = 0;
  gsize total = 0;

  for (gint k = 0; k < nn; k++) {
    NetNode *n = &g_array_index (g->nodes, NetNode, k);
    gint ids[2] = { n->src, n->dst };
    for (gint j = 0; j < 2; j++) {
      NetTensor *t = net_tensor (g, ids[j]);
      if (t->parent >= 0)
        t = net_tensor (g, t->parent);
      t->first = MIN (t->first, k);
      t->last = MAX (t->last, k);
    }
  }
  net_tensor (g, g->input)->first = -1;
  net_tensor (g, g->output)->last = nn;

  /* largest first, each at the lowest aligned offset that does not collide with
   * an already placed tensor alive at the same time */
  for (gint i = 0; i < nt; i++) {
    NetTensor *t = net_tensor (g, i);
    gint j;
    if (t->parent >= 0 || t->last < t->first)
      continue;
    for (j = n_placed; j > 0 && net_tensor (g, order[j - 1])->bytes < t->bytes; j--)
      order[j] = order[j - 1];
    order[j] = i;
    n_placed++;
  }
  for (gint i = 0; i < n_placed; i++) {
    NetTensor *t = net_tensor (g, order[i]);
    gsize off = 0;
    gboolean moved = TRUE;
    while (moved) {
      moved = FALSE;
      for (gint j = 0; j < i; j++) {
        NetTensor *o = net_tensor (g, order[j]);
        if (o->last < t->first || t->last < o->first)
          continue;
        if (off < o->offset + o->bytes && o->offset < off + t->bytes) {
          off = (o->offset + o->bytes + NET_ARENA_ALIGN - 1) / NET_ARENA_ALIGN
              * NET_ARENA_ALIGN;
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

/* ----------------------------------------------------------------- plans -- */

static void
net_plan_free (NetPlan *p)
{
  if (p == NULL)
    return;
  for (gint i = 0; i < p->n_ops; i++)
    if (p->ops[i])
      p->be->iface->op_free (p->ops[i]);
  /* views before their parents */
  for (gint i = p->n_tensors - 1; i >= 0; i--)
    if (p->tensors[i])
      p->be->iface->tensor_free (p->tensors[i]);
  if (p->arena)
    p->be->iface->arena_free (p->arena);
  g_free (p->ops);
  g_free (p->tensors);
  g_free (p);
}

static NetPlan *
net_plan_new (UnetNet *net, gint batch, gint height, gint width, GError **error)
{
  const UnetBackendIface *be = net->be->iface;
  NetGraph *g = net_graph_new (net, batch, height, width);
  NetPlan *p;

  if (g == NULL) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "input %dx%d is not a legal size for this network", width, height);
    return NULL;
  }
  p = g_new0 (NetPlan, 1);
  p->be = net->be;
  p->batch = batch;
  p->height = height;
  p->width = width;
  p->n_tensors = (gint) g->tensors->len;
  p->tensors = g_new0 (UnetBackendTensor *, p->n_tensors);
  p->n_ops = (gint) g->nodes->len;
  p->ops = g_new0 (UnetBackendOp *, p->n_ops);
  p->input = g->input;
  p->output = g->output;
  p->logits = g->logits;

  for (gint i = 0; i < p->n_tensors; i++) {
    NetTensor *t = net_tensor (g, i);
    if (t->parent >= 0)
      continue;
    if ((p->tensors[i] = be->tensor_new (net->be, &t->dims, error)) == NULL)
      goto fail;
    t->bytes = (be->tensor_bytes (p->tensors[i]) + NET_ARENA_ALIGN - 1)
        / NET_ARENA_ALIGN * NET_ARENA_ALIGN;
  }
  p->arena_bytes = net_graph_pack (g);
  if ((p->arena = be->arena_new (net->be, p->arena_bytes, error)) == NULL)
    goto fail;
  for (gint i = 0; i < p->n_tensors; i++) {
    NetTensor *t = net_tensor (g, i);
    if (t->parent >= 0) {
      p->tensors[i] = be->tensor_view (net->be, p->tensors[t->parent], t->c_offset,
          t->dims.c, error);
      if (p->tensors[i] == NULL)
        goto fail;
    } else {
      be->tensor_bind (p->tensors[i], p->arena, t->offset);
    }
  }
  for (gint k = 0; k < p->n_ops; k++) {
    NetNode *n = &g_array_index (g->nodes, NetNode, k);
    UnetOpDesc d = {
      .kind = n->kind, .layer = n->layer, .pad = n->pad, .relu = n->relu,
      .crop_y = n->crop_y, .crop_x = n->crop_x,
      .src = p->tensors[n->src], .dst = p->tensors[n->dst],
    };
    if ((p->ops[k] = be->op_new (net->be, &d, error)) == NULL)
      goto fail;
  }
  net_graph_free (g);
  return p;

fail:
  net_graph_free (g);
  net_plan_free (p);
  return NULL;
}

static NetPlan *
net_get_plan (UnetNet *net, gint batch, gint height, gint width, GError **error)
{
  NetPlan *p;
  for (GList *l = net->plans; l != NULL; l = l->next) {
    p = l->data;
    if (p->batch == batch && p->height == height && p->width == width) {
      net->plans = g_list_remove_link (net->plans, l);
      net->plans = g_list_concat (l, net->plans);
      return p;
    }
  }
  /* drop the least recently used plan first, so two arenas never coexist
   * needlessly with a third */
  if (g_list_length (net->plans) >= NET_MAX_PLANS) {
    GList *last = g_list_last (net->plans);
    net_plan_free (last->data);
    net->plans = g_list_delete_link (net->plans, last);
  }
  p = net_plan_new (net, batch, height, width, error);
  if (p != NULL)
    net->plans = g_list_prepend (net->plans, p);
  return p;
}

/* ---------------------------------------------------------------- layers -- */

/* Collects the layers in graph order, folding inference batch norm:
 *   w' = w * g / sqrt(v + eps),  b' = (b - m) * g / sqrt(v + eps) + beta
 * (computed in double; exact up to float rounding). */
static gboolean
net_upload_layers (UnetNet *net, const UnetModel *model, GError **error)
{
  const UnetConfig *cfg = &net->cfg;
  GArray *layers = g_array_new (FALSE, TRUE, sizeof (UnetLayerParams));
  GPtrArray *names = g_ptr_array_new_with_free_func (g_free);
  /* folded batch-norm weights: the backend references them (backend.h) */
  GPtrArray *storage = g_ptr_array_new_with_free_func (g_free);
  gboolean ok = FALSE;
  gint D = cfg->depth;

  for (gint i = 0; i <= 2 * D + 1; i++) {
    /* levels: enc.0..enc.D-1, bottom, dec.D-1..dec.0, head */
    gchar *prefix;
    gint nconv = 2;
    gboolean up = FALSE;
    if (i < D)
      prefix = g_strdup_printf ("enc.%d", i);
    else if (i == D)
      prefix = g_strdup ("bottom");
    else if (i <= 2 * D) {
      prefix = g_strdup_printf ("dec.%d", 2 * D - i);
      up = TRUE;
    } else {
      prefix = g_strdup ("head");
      nconv = 1;
    }
    for (gint j = up ? -1 : 0; j < nconv; j++) {
      UnetLayerParams lp = { 0 };
      gint ws[4], bs[4], nd;
      gchar *lname = j < 0 ? g_strdup_printf ("%s.up", prefix)
          : nconv == 1 ? g_strdup (prefix) : g_strdup_printf ("%s.conv%d", prefix, j + 1);
      gchar *wn = g_strdup_printf ("%s.weight", lname);
      gchar *bn = g_strdup_printf ("%s.bias", lname);
      const gfloat *w = unet_model_peek_tensor (model, wn, ws, &nd);
      const gfloat *b = unet_model_peek_tensor (model, bn, bs, NULL);
      g_free (wn);
      g_free (bn);
      g_ptr_array_add (names, lname);
      if (w == NULL || b == NULL || nd != 4) {
        g_set_error (error, UNET_ERROR, UNET_ERROR_MODEL,
            "model has no tensor %s.weight/.bias", lname);
        g_free (prefix);
        goto out;
      }
      lp.kind = j < 0 ? UNET_LAYER_UPCONV : UNET_LAYER_CONV;
      lp.cout = j < 0 ? ws[1] : ws[0];
      lp.cin = j < 0 ? ws[0] : ws[1];
      lp.k = ws[2];
      lp.weight = w;
      lp.bias = b;
      if (cfg->batch_norm && j >= 0 && nconv == 2) {
        const gfloat *bnp[4];
        const gchar *parts[4] = { "weight", "bias", "running_mean", "running_var" };
        gsize per = (gsize) lp.cin * lp.k * lp.k;
        gfloat *fw = g_new (gfloat, per * lp.cout), *fb = g_new (gfloat, lp.cout);
        g_ptr_array_add (storage, fw);
        g_ptr_array_add (storage, fb);
        for (gint q = 0; q < 4; q++) {
          gchar *n = g_strdup_printf ("%s.bn%d.%s", prefix, j + 1, parts[q]);
          bnp[q] = unet_model_peek_tensor (model, n, NULL, NULL);
          if (bnp[q] == NULL) {
            g_set_error (error, UNET_ERROR, UNET_ERROR_MODEL, "model has no tensor %s", n);
            g_free (n);
            g_free (prefix);
            goto out;
          }
          g_free (n);
        }
        for (gint o = 0; o < lp.cout; o++) {
          gdouble s = bnp[0][o] / sqrt ((gdouble) bnp[3][o] + 1e-5);
          for (gsize q = 0; q < per; q++)
            fw[o * per + q] = (gfloat) (w[o * per + q] * s);
          fb[o] = (gfloat) (((gdouble) b[o] - bnp[2][o]) * s + bnp[1][o]);
        }
        lp.weight = fw;
        lp.bias = fb;
      }
      g_array_append_val (layers, lp);
    }
    g_free (prefix);
  }
  for (guint i = 0; i < names->len; i++)
    g_hash_table_insert (net->layer_index, g_strdup (names->pdata[i]),
        GINT_TO_POINTER (i + 1));
  ok = net->be->iface->upload_layers (net->be, (UnetLayerParams *) layers->data,
      (gint) layers->len, error);
out:
  g_array_unref (layers);
  g_ptr_array_unref (names);
  if (ok) {
    g_clear_pointer (&net->folded, g_ptr_array_unref);
    net->folded = storage;
  } else {
    g_ptr_array_unref (storage);
  }
  return ok;
}

/* ------------------------------------------------------------------- API -- */

static UnetBackendHook backend_hook;
static gpointer backend_hook_user;

void
unet_net_set_backend_hook (UnetBackendHook hook, gpointer user)
{
  backend_hook = hook;
  backend_hook_user = user;
}

UnetNet *
unet_net_new (const UnetModel *model, const UnetNetOptions *opts, GError **error)
{
  UnetNetOptions defaults;
  UnetNet *net;

  g_return_val_if_fail (model != NULL, NULL);
  if (opts == NULL) {
    unet_net_options_init (&defaults);
    opts = &defaults;
  }
  net = g_new0 (UnetNet, 1);
  net->cfg = *unet_model_get_config (model);
  net->opts = *opts;
  net->host = unet_model_copy (model);
  net->layer_index = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, NULL);
  if (!unet_config_validate (&net->cfg, error) || net->cfg.depth > 30)
    goto fail_cfg;

  switch (opts->device) {
    case UNET_DEVICE_CUDA:
#if HAVE_CUDA_BACKEND
      net->be = unet_backend_cuda_new (opts, error);
      net->device = UNET_DEVICE_CUDA;
      break;
#else
      g_set_error (error, UNET_ERROR, UNET_ERROR_NO_DEVICE,
          "device cuda requested but gst-unet was built without CUDA; use device cpu");
      goto fail;
#endif
    case UNET_DEVICE_AUTO:
#if HAVE_CUDA_BACKEND
      net->be = unet_backend_cuda_new (opts, NULL);
      net->device = UNET_DEVICE_CUDA;
      if (net->be != NULL)
        break;
#endif
      /* fall through */
    case UNET_DEVICE_CPU:
    default:
      net->be = unet_backend_cpu_new (opts, error);
      net->device = UNET_DEVICE_CPU;
      break;
  }
  if (net->be != NULL && backend_hook != NULL)
    backend_hook (net->be, backend_hook_user);
  if (net->be == NULL || net->host == NULL
      || !net_upload_layers (net, net->host, error))
    goto fail;
  return net;

fail_cfg:
  if (error != NULL && *error == NULL)
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "depth %d is too large", net->cfg.depth);
fail:
  unet_net_free (net);
  return NULL;
}

void
unet_net_free (UnetNet *net)
{
  if (net == NULL)
    return;
  g_list_free_full (net->plans, (GDestroyNotify) net_plan_free);
  unet_net_train_state_free (net->train);
  unet_model_free (net->host);
  unet_backend_free (net->be);
  g_clear_pointer (&net->folded, g_ptr_array_unref);
  g_hash_table_unref (net->layer_index);
  g_free (net);
}

UnetDevice
unet_net_get_device (const UnetNet *net)
{
  return net->device;
}

const UnetConfig *
unet_net_get_config (const UnetNet *net)
{
  return &net->cfg;
}

/* ---------------------------------------------------------------- training hooks -- */

/* Parameters changed on the host (training): drop the plans (their primitives hold
 * weights reordered from the old layers) and fold/upload the layers again. */
static gboolean
net_reload_layers (UnetNet *net, GError **error)
{
  g_list_free_full (net->plans, (GDestroyNotify) net_plan_free);
  net->plans = NULL;
  g_hash_table_remove_all (net->layer_index);
  if (!net_upload_layers (net, net->host, error))
    return FALSE;
  net->host_dirty = FALSE;
  return TRUE;
}

UnetModel *
unet_net_get_host_model (UnetNet *net)
{
  return net->host;
}

void
unet_net_mark_parameters_dirty (UnetNet *net)
{
  net->host_dirty = TRUE;
}

const UnetNetOptions *
unet_net_get_options (const UnetNet *net)
{
  return &net->opts;
}

gpointer *
unet_net_get_train_slot (UnetNet *net)
{
  return &net->train;
}

/* Checks shared by the forward entry points. */
static gboolean
net_check_shape (UnetNet *net, gint batch, gint height, gint width, GError **error)
{
  gint oh = unet_config_output_size (&net->cfg, height);
  gint ow = unet_config_output_size (&net->cfg, width);
  if (oh < 1 || ow < 1) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "input %dx%d is not a legal tile size for this network (depth %d, %s "
        "padding): try %dx%d", width, height, net->cfg.depth,
        net->cfg.padding == UNET_PADDING_VALID ? "valid" : "same",
        unet_config_legal_input_at_least (&net->cfg, width),
        unet_config_legal_input_at_least (&net->cfg, height));
    return FALSE;
  }
  if (batch < 1 || batch > 65536) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "batch size must be in 1..65536, not %d", batch);
    return FALSE;
  }
  return TRUE;
}

UnetBackend *
unet_net_get_backend (UnetNet *net)
{
  return net->be;
}

gboolean
unet_net_forward_tensors (UnetNet *net, gint batch, gint height, gint width,
    UnetNetTensorFunc fill, UnetNetTensorFunc use, gpointer user, GError **error)
{
  const UnetBackendIface *be = net->be->iface;
  NetPlan *p;

  if (!net_check_shape (net, batch, height, width, error))
    return FALSE;
  if (net->host_dirty && !net_reload_layers (net, error))
    return FALSE;
  if ((p = net_get_plan (net, batch, height, width, error)) == NULL
      || !fill (p->tensors[p->input], user, error))
    return FALSE;
  /* every op but the final softmax/sigmoid: the caller reads the logits */
  for (gint k = 0; k < p->n_ops - 1; k++)
    if (!be->op_forward (p->ops[k], error))
      return FALSE;
  return use (p->tensors[p->logits], user, error);
}

gboolean
unet_net_forward (UnetNet *net, const gfloat *input, gint batch, gint height,
    gint width, gfloat *output, GError **error)
{
  const UnetBackendIface *be;
  NetPlan *p;

  g_return_val_if_fail (net != NULL && input != NULL && output != NULL, FALSE);
  be = net->be->iface;
  if (!net_check_shape (net, batch, height, width, error))
    return FALSE;
  if (net->host_dirty && !net_reload_layers (net, error))
    return FALSE;
  if ((p = net_get_plan (net, batch, height, width, error)) == NULL)
    return FALSE;
  if (!be->upload (p->tensors[p->input], input, error))
    return FALSE;
  for (gint k = 0; k < p->n_ops; k++)
    if (!be->op_forward (p->ops[k], error))
      return FALSE;
  return be->download (p->tensors[p->output], output, error)
      && unet_backend_synchronize (net->be, error);
}
