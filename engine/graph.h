/* gst-unet engine — the U-Net graph, written once (internal).
 *
 * This is the one place that knows the network's structure (network.md): which
 * layers exist and in which order they run, every tensor's shape, the crop offsets
 * of the skip connections, the backward pass (derived from the forward one), which
 * tensors the backward pass needs kept, and every tensor's lifetime. Inference
 * (net.c) and training (net-train.c) both build a UnetGraph for their input shape
 * and drive the backend (backend.h) through its nodes; no backend knows it is
 * running a U-Net.
 *
 * Nodes are backend ops (UnetOpKind). An inference graph folds batch norm into
 * the convolutions (net.c uploads folded layers) and ends in softmax/sigmoid; a
 * training graph has separate BATCHNORM nodes, a DROPOUT node after the bottom
 * block when the model has dropout, ends at the logits, and every node carries
 * its gradient tensors.
 *
 * Schedule and lifetimes. Node k of n runs at step k (forward); in a training
 * graph its backward runs at step 2n - 1 - k. A tensor lives from its first to its
 * last step — for a training graph that includes the backward steps that read it
 * (the input of a convolution, the output of a fused ReLU) — and
 * unet_graph_pack() places tensors whose lifetimes do not overlap at the same
 * offset of one arena.
 *
 * Crop+concat: the decoder input of level i is a 2F_i-channel tensor cat_i. The
 * centre crop of the encoder output e_i is copied into its first half right after
 * e_i is pooled, and the transposed convolution writes its output straight into
 * the second half (a view) — no concat copy. Their gradients are views of d cat_i.
 *
 * Channel padding (inference graphs only). A backend whose kernels want channel
 * counts in blocks (UnetBackend.channel_align: the CPU backend's 8-channel blocks)
 * gets every inner width F_i rounded up to a multiple of it; the input and the
 * head's output keep theirs. The padded channels' weights and biases are zero
 * (net.c uploads the layers so), so they hold exact zeros from layer to layer and
 * add exact zeros to every sum: the real channels get the values of the unpadded
 * network. cat_i is then [crop of e_i, 0.., upconv, 0..], its halves block-aligned.
 */
#pragma once

#include "backend.h"
#include "model-private.h"

G_BEGIN_DECLS

typedef enum
{
  UNET_GRAPH_INFERENCE,
  UNET_GRAPH_TRAINING,
} UnetGraphMode;

typedef struct
{
  UnetDims dims;
  gint parent;                  /* -1, or the tensor this is a channel view of */
  gint c_offset;
  gboolean gradient;            /* a dL/d tensor of the backward pass */
  gint first, last;             /* lifetime in schedule steps (roots only) */
  gsize bytes;                  /* set by the caller before unet_graph_pack */
  gsize offset;                 /* set by unet_graph_pack */
} UnetGraphTensor;

typedef struct
{
  UnetOpKind kind;
  gint layer;                   /* CONV, UPCONV2: index into unet_graph_layers() */
  gint k, pad;
  gboolean relu;
  gint crop_y, crop_x;
  gint src, dst;                /* tensor ids */
  /* training graphs */
  gint weight, bias;            /* CONV, UPCONV2: parameter slab offsets */
  gint bn[4];                   /* BATCHNORM: gamma, beta, running_mean, running_var */
  gdouble dropout;              /* DROPOUT */
  gint diff_src, diff_dst;      /* gradient tensor ids; diff_src -1: not needed */
  gboolean accumulate;          /* see UnetOpDesc */
} UnetGraphNode;

/* A parameterised layer (CONV or UPCONV2) of the network, in graph order. */
typedef struct
{
  gchar name[32];               /* "enc.0.conv1", "dec.2.up", "head", ... */
  UnetLayerKind kind;
  gint cin, cout, k;            /* the graph's channel counts (padded) */
  gint cin_model, cout_model;   /* the model's */
  gint cin_parts;               /* the input is this many equal parts, each padded
                                   on its own: 2 for dec.i.conv1 (crop | upconv) */
  gchar bn[32];                 /* its batch norm ("enc.0.bn1"), "" when none */
} UnetGraphLayer;

typedef struct
{
  UnetConfig cfg;
  UnetGraphMode mode;
  gint batch, height, width;
  gint channel_align;           /* inner widths padded to a multiple (1: none) */
  GArray *tensors;              /* UnetGraphTensor */
  GArray *nodes;                /* UnetGraphNode, forward order */
  gint input;                   /* (batch, in_channels, height, width) */
  gint logits;                  /* the head's output, before softmax/sigmoid */
  gint output;                  /* inference: probabilities; training: -1 */
  gint diff_logits;             /* training: dL/d logits; inference: -1 */
} UnetGraph;

/* The parameterised layers of `cfg`, in the order inference graphs index them
 * (UnetGraphNode.layer): enc.0.conv1, enc.0.conv2, ..., bottom.conv1/2, then per
 * decoder level dec.i.up, dec.i.conv1, dec.i.conv2, then head. Returns how many
 * (4 * depth + 3 + depth); `layers` (that many entries, or NULL) is filled, with
 * the channel counts of a graph padded to `channel_align` (<= 1: none). */
gint         unet_graph_layers        (const UnetConfig *cfg, gint channel_align,
                                       UnetGraphLayer *layers);

/* The width of level `level` (0 .. depth) in a graph padded to `channel_align`:
 * base_filters << level, rounded up to a multiple of the alignment. */
gint         unet_graph_width         (const UnetConfig *cfg, gint channel_align,
                                       gint level);

/* The graph of `cfg` for input (batch, in_channels, height, width). `layout` (the
 * parameter slab's, model-private.h) is needed for training graphs only; inner
 * widths are padded to `channel_align` (inference only; <= 1: none). Fails
 * with UNET_ERROR_INVALID_ARGUMENT when the size is not legal for the network. */
UnetGraph   *unet_graph_new           (const UnetConfig *cfg, const UnetLayout *layout,
                                       UnetGraphMode mode, gint channel_align,
                                       gint batch, gint height, gint width,
                                       GError **error);
void         unet_graph_free          (UnetGraph *g);

static inline UnetGraphTensor *
unet_graph_tensor (const UnetGraph *g, gint id)
{
  return &g_array_index (g->tensors, UnetGraphTensor, id);
}

static inline UnetGraphNode *
unet_graph_node (const UnetGraph *g, gint k)
{
  return &g_array_index (g->nodes, UnetGraphNode, k);
}

static inline gint
unet_graph_n_nodes (const UnetGraph *g)
{
  return (gint) g->nodes->len;
}

/* Lifetimes, then arena offsets of the root tensors (their `bytes` set by the
 * caller, each a multiple of `align`): tensors whose lifetimes do not overlap share
 * memory (greedy first-fit, largest first). Returns the arena size. */
gsize        unet_graph_pack          (UnetGraph *g, gsize align);

G_DEFINE_AUTOPTR_CLEANUP_FUNC (UnetGraph, unet_graph_free)

G_END_DECLS
