/* gst-unet engine — CPU backend on oneDNN 2.6 (C API).
 *
 * Owns: the oneDNN engine/stream, the layers (the caller's host weights, used in
 * place, plus the weights reordered once into each layout a primitive asked for),
 * activation
 * tensors, arenas, one shared scratchpad, and the ops (primitives created once per
 * shape by op_new and reused by every op_forward).
 *
 * Layouts. A tensor's layout is fixed when it is created: channel counts that are
 * a multiple of 16 use oneDNN's blocked nChw16c in fp32 (what its AVX-512
 * convolutions choose themselves; nChw8c for multiples of 8, its AVX2 kernels')
 * and nhwc in bf16 (AMX kernels), everything else
 * (the input, the head output, tiny nets) plain nchw. So activations stay blocked from layer to layer and only upload and
 * download reorder. A concat buffer is an ordinary tensor; its halves are
 * submemory views (channel offset, a multiple of the block in the blocked case), so the
 * transposed convolution writes straight into the second half and the crop of the
 * encoder output is one reorder from a spatial submemory into the first half.
 *
 * When a primitive does not accept the fixed layouts (or data type) of its tensors,
 * op_new recreates it with format "any" and adds reorders through op-private
 * buffers — slower but always correct; the classic nets never take that path.
 *
 * Precision: FP32, or BF16 (activations in bf16 where the layout is blocked,
 * weights bf16, biases and accumulation f32; faster than fp32 only with AMX, see
 * unet_cpu_precision_slower()).
 * Convolution algorithm: by default a rule on the shape (cpu_wino_rule: oneDNN's
 * Winograd F(4x4,3x3) for wide layers, checked thread-invariant, else its direct
 * kernel); $UNET_CPU_CONV_ALGO = rule (default) | direct | measure (timed per shape
 * at plan build, cpu_conv_choose) | winograd | auto; see the README.
 * $UNET_CPU_PROFILE=1 prints every op's mean time when its plan is freed.
 */
#include "config.h"

#include "cpu-private.h"

#include <math.h>
#include <string.h>
#if HAVE_OPENMP
#include <omp.h>
#endif



/* ---------------------------------------------------------------- layers -- */

static void
cpu_layer_clear (CpuLayer *l)
{
  if (l->w_user)
    dnnl_memory_destroy (l->w_user);
  if (l->bias)
    dnnl_memory_destroy (l->bias);
  if (l->prepared) {
    for (guint i = 0; i < l->prepared->len; i++)
      dnnl_memory_destroy (g_array_index (l->prepared, CpuPrepared, i).mem);
    g_array_unref (l->prepared);
  }
  free (l->wino8_u);
  memset (l, 0, sizeof *l);
}

static void
cpu_clear_layers (CpuCtx *ctx)
{
  for (gint i = 0; i < ctx->n_layers; i++)
    cpu_layer_clear (&ctx->layers[i]);
  g_free (ctx->layers);
  ctx->layers = NULL;
  ctx->n_layers = 0;
}

static gboolean
cpu_upload_layers (UnetBackend *be, const UnetLayerParams *layers, gint n_layers,
    GError **error)
{
  CpuCtx *ctx = be->priv;
  cpu_clear_layers (ctx);
  ctx->layers = g_new0 (CpuLayer, n_layers);
  ctx->n_layers = n_layers;
  for (gint i = 0; i < n_layers; i++) {
    const UnetLayerParams *p = &layers[i];
    CpuLayer *l = &ctx->layers[i];
    dnnl_memory_desc_t bmd;
    dnnl_dims_t wd = { p->cout, p->cin, p->k, p->k };
    dnnl_dims_t bd = { p->cout };

    l->kind = p->kind;
    l->cin = p->cin;
    l->cout = p->cout;
    l->k = p->k;
    l->prepared = g_array_new (FALSE, TRUE, sizeof (CpuPrepared));
    DNNL_TRY (dnnl_memory_desc_init_by_tag (&l->w_user_md, 4, wd, dnnl_f32,
            p->kind == UNET_LAYER_UPCONV ? dnnl_iohw : dnnl_oihw));
    DNNL_TRY (dnnl_memory_desc_init_by_tag (&bmd, 1, bd, dnnl_f32, dnnl_x));
    /* in place: the caller keeps the host arrays alive (backend.h); oneDNN
     * only reads them (reorders into the primitives' layouts, and bias) */
    DNNL_TRY (dnnl_memory_create (&l->w_user, &l->w_user_md, ctx->engine,
            (void *) p->weight));
    DNNL_TRY (dnnl_memory_create (&l->bias, &bmd, ctx->engine, (void *) p->bias));
  }
  return TRUE;

fail:
  cpu_clear_layers (ctx);
  return FALSE;
}

/* Runs a one-off reorder src -> dst now. */
static gboolean
cpu_reorder_now (CpuCtx *ctx, dnnl_memory_t src, dnnl_memory_t dst, GError **error)
{
  const dnnl_memory_desc_t *smd, *dmd;
  dnnl_primitive_desc_t pd = NULL;
  dnnl_primitive_t prim = NULL;
  gboolean ok = FALSE;

  DNNL_TRY (dnnl_memory_get_memory_desc (src, &smd));
  DNNL_TRY (dnnl_memory_get_memory_desc (dst, &dmd));
  DNNL_TRY (dnnl_reorder_primitive_desc_create (&pd, smd, ctx->engine, dmd,
          ctx->engine, NULL));
  DNNL_TRY (dnnl_primitive_create (&prim, pd));
  {
    dnnl_exec_arg_t args[2] = { {DNNL_ARG_FROM, src}, {DNNL_ARG_TO, dst} };
    DNNL_TRY (dnnl_primitive_execute (prim, ctx->stream, 2, args));
    DNNL_TRY (dnnl_stream_wait (ctx->stream));
  }
  ok = TRUE;
fail:
  if (prim)
    dnnl_primitive_destroy (prim);
  if (pd)
    dnnl_primitive_desc_destroy (pd);
  return ok;
}

/* The layer's weights in layout `md`, reordered once and shared by every op (of
 * every plan) that asks for the same layout. Returns a borrowed memory. */
static dnnl_memory_t
cpu_layer_weights (CpuCtx *ctx, CpuLayer *l, const dnnl_memory_desc_t *md, GError **error)
{
  CpuPrepared prep = { 0 };

  if (dnnl_memory_desc_equal (md, &l->w_user_md))
    return l->w_user;
  for (guint i = 0; i < l->prepared->len; i++) {
    CpuPrepared *p = &g_array_index (l->prepared, CpuPrepared, i);
    if (dnnl_memory_desc_equal (md, &p->md))
      return p->mem;
  }
  prep.md = *md;
  DNNL_TRY (dnnl_memory_create (&prep.mem, md, ctx->engine, DNNL_MEMORY_ALLOCATE));
  if (!cpu_reorder_now (ctx, l->w_user, prep.mem, error)) {
    dnnl_memory_destroy (prep.mem);
    return NULL;
  }
  g_array_append_val (l->prepared, prep);
  return prep.mem;
fail:
  return NULL;
}

/* --------------------------------------------------------------- tensors -- */

static dnnl_data_type_t
cpu_tensor_dt (CpuCtx *ctx, gint c)
{
  return (ctx->bf16 && c % 16 == 0) ? dnnl_bf16 : dnnl_f32;
}

/* fp32 on an AVX-512 CPU: channels in blocks of 16 (nChw16c, what its AVX-512
 * convolutions run fastest on), else of 8; on any other CPU in blocks of 8
 * (nChw8c, which oneDNN's AVX2 and SSE4.1 kernels read and write directly: they
 * have no nChw16c kernels, so 16-blocked tensors there fall to oneDNN's reference
 * convolutions and pooling, ~20x slower; and an 8-channel tensor padded to 16
 * would be reordered around every convolution). bf16: nhwc, the layout of
 * oneDNN's AMX (brgemm) bf16 convolutions (~10x the AVX512_BF16 nChw16c kernels
 * on a Sapphire Rapids core). Other channel counts: nchw. One policy for
 * inference and training. */
static gint
cpu_isa_block (void)
{
  const dnnl_cpu_isa_t isa = dnnl_get_effective_cpu_isa ();
  return (isa & dnnl_cpu_isa_avx512_core) == dnnl_cpu_isa_avx512_core ? 16 : 8;
}

static dnnl_format_tag_t
cpu_tensor_tag (CpuCtx *ctx, gint c)
{
  if (ctx->bf16)
    return c % 16 == 0 ? dnnl_acdb : dnnl_abcd;
  return c % 16 == 0 && ctx->block == 16 ? dnnl_aBcd16b
      : c % 8 == 0 ? dnnl_aBcd8b : dnnl_abcd;
}


static gboolean
cpu_is_nhwc (const UnetBackendTensor *t)
{
  const UnetBackendTensor *root = t->parent ? t->parent : t;
  const dnnl_dims_t *st = &root->md.format_desc.blocking.strides;
  return root->md.format_desc.blocking.inner_nblks == 0 && (*st)[1] == 1
      && root->dims.c > 1;
}

static UnetBackendTensor *
cpu_tensor_new (UnetBackend *be, const UnetDims *dims, GError **error)
{
  CpuCtx *ctx = be->priv;
  UnetBackendTensor *t;
  dnnl_dims_t d = { dims->n, dims->c, dims->h, dims->w };

  if (dims->n < 1 || dims->c < 1 || dims->h < 1 || dims->w < 1) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "invalid tensor dimensions %dx%dx%dx%d", dims->n, dims->c, dims->h, dims->w);
    return NULL;
  }
  t = g_new0 (UnetBackendTensor, 1);
  t->ctx = ctx;
  t->dims = *dims;
  DNNL_TRY (dnnl_memory_desc_init_by_tag (&t->md, 4, d, cpu_tensor_dt (ctx, dims->c),
          cpu_tensor_tag (ctx, dims->c)));
  t->bytes = (dnnl_memory_desc_get_size (&t->md) + ALIGN - 1) / ALIGN * ALIGN;
  return t;
fail:
  g_free (t);
  return NULL;
}

static UnetBackendTensor *
cpu_tensor_view (UnetBackend *be, UnetBackendTensor *parent, gint c_offset, gint c,
    GError **error)
{
  UnetBackendTensor *t = NULL;
  const UnetDims *pd = &parent->dims;
  dnnl_dims_t d = { pd->n, c, pd->h, pd->w };
  dnnl_dims_t off = { 0, c_offset, 0, 0 };

  if (parent->parent != NULL || c_offset < 0 || c < 1 || c_offset + c > pd->c) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "invalid channel view [%d, %d) of a %d-channel tensor", c_offset,
        c_offset + c, pd->c);
    return NULL;
  }
  if (cpu_tensor_block (parent) > 1
      && (c_offset % cpu_tensor_block (parent) != 0 || c % cpu_tensor_block (parent) != 0)) {
    /* a split inside a channel block: the parent takes blocks of 8 when the
     * split falls on them (f32: a 16-channel concat of two 8-channel halves, as
     * its halves' producers have), else plain nchw; neither needs more bytes than
     * the layout it was sized for */
    dnnl_dims_t pdims = { pd->n, pd->c, pd->h, pd->w };
    gboolean eight = parent->md.data_type == dnnl_f32 && pd->c % 8 == 0
        && c_offset % 8 == 0 && c % 8 == 0;
    DNNL_TRY (dnnl_memory_desc_init_by_tag (&parent->md, 4, pdims,
            parent->md.data_type, eight ? dnnl_aBcd8b : dnnl_abcd));
  }
  t = g_new0 (UnetBackendTensor, 1);
  t->ctx = parent->ctx;
  t->dims = *pd;
  t->dims.c = c;
  t->parent = parent;
  DNNL_TRY (dnnl_memory_desc_init_submemory (&t->md, &parent->md, d, off));
  return t;
fail:
  g_free (t);
  return NULL;
}

static void
cpu_tensor_free (UnetBackendTensor *t)
{
  g_free (t);
}

static gsize
cpu_tensor_bytes (UnetBackendTensor *t)
{
  return t->parent ? 0 : t->bytes;
}

static UnetBackendArena *
cpu_arena_new (UnetBackend *be, gsize bytes, GError **error)
{
  UnetBackendArena *a = g_new0 (UnetBackendArena, 1);
  a->bytes = bytes;
  a->data = cpu_alloc (bytes, error);
  if (a->data == NULL) {
    g_free (a);
    return NULL;
  }
  return a;
}

static void
cpu_arena_free (UnetBackendArena *a)
{
  if (a == NULL)
    return;
  free (a->data);
  g_free (a);
}

static void
cpu_tensor_bind (UnetBackendTensor *t, UnetBackendArena *arena, gsize offset)
{
  g_return_if_fail (t->parent == NULL && offset + t->bytes <= arena->bytes);
  t->data = (guint8 *) arena->data + offset;
}




static gboolean
cpu_tensor_memory (UnetBackendTensor *t, const dnnl_memory_desc_t *md,
    dnnl_memory_t *mem, GError **error)
{
  if (cpu_tensor_data (t) == NULL) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_FAILED,
        "CPU backend: tensor used before it was bound to an arena");
    return FALSE;
  }
  DNNL_TRY (dnnl_memory_create (mem, md ? md : &t->md, t->ctx->engine,
          cpu_tensor_data (t)));
  return TRUE;
fail:
  return FALSE;
}

/* ------------------------------------------------------------------- ops -- */

static void
cpu_reorder_clear (CpuReorder *r)
{
  if (r->prim)
    dnnl_primitive_destroy (r->prim);
  if (r->src)
    dnnl_memory_destroy (r->src);
  if (r->dst)
    dnnl_memory_destroy (r->dst);
  memset (r, 0, sizeof *r);
}

static gboolean
cpu_reorder_init (CpuCtx *ctx, CpuReorder *r, const dnnl_memory_desc_t *smd,
    void *sdata, const dnnl_memory_desc_t *dmd, void *ddata, GError **error)
{
  dnnl_primitive_desc_t pd = NULL;
  DNNL_TRY (dnnl_memory_create (&r->src, smd, ctx->engine, sdata));
  DNNL_TRY (dnnl_memory_create (&r->dst, dmd, ctx->engine, ddata));
  DNNL_TRY (dnnl_reorder_primitive_desc_create (&pd, smd, ctx->engine, dmd,
          ctx->engine, NULL));
  DNNL_TRY (dnnl_primitive_create (&r->prim, pd));
  dnnl_primitive_desc_destroy (pd);
  return TRUE;
fail:
  if (pd)
    dnnl_primitive_desc_destroy (pd);
  cpu_reorder_clear (r);
  return FALSE;
}

static gboolean
cpu_reorder_run (CpuCtx *ctx, CpuReorder *r, GError **error)
{
  dnnl_exec_arg_t args[2] = { {DNNL_ARG_FROM, r->src}, {DNNL_ARG_TO, r->dst} };
  DNNL_TRY (dnnl_primitive_execute (r->prim, ctx->stream, 2, args));
  return TRUE;
fail:
  return FALSE;
}

static void
cpu_op_free (UnetBackendOp *op)
{
  if (op == NULL)
    return;
  if (op->label != NULL && op->prof_calls > 0)
    g_printerr ("unet-cpu profile: %s: %.3f ms/call (%d calls)\n", op->label,
        op->prof_us / 1000.0 / op->prof_calls, op->prof_calls);
  g_free (op->label);
  cpu_train_op_free (op->train);
  cpu_wino8_free (op->wino8);
  if (op->prim)
    dnnl_primitive_destroy (op->prim);
  if (op->src)
    dnnl_memory_destroy (op->src);
  if (op->dst)
    dnnl_memory_destroy (op->dst);
  if (op->scratch)
    dnnl_memory_destroy (op->scratch);
  /* op->weights and op->bias are borrowed from the layer */
  cpu_reorder_clear (&op->pre);
  cpu_reorder_clear (&op->post);
  free (op->tmp_src);
  free (op->tmp_dst);
  g_free (op);
}

/* Builds the operation descriptor for `desc` with the given src/dst mds. */
typedef struct
{
  union
  {
    dnnl_convolution_desc_t conv;
    dnnl_deconvolution_desc_t deconv;
    dnnl_pooling_v2_desc_t pool;
    dnnl_softmax_v2_desc_t softmax;
    dnnl_eltwise_desc_t eltwise;
  } u;
} CpuOpDesc;

static dnnl_status_t
cpu_op_desc_init (CpuCtx *ctx, const UnetOpDesc *desc, const dnnl_memory_desc_t *smd,
    const dnnl_memory_desc_t *dmd, dnnl_alg_kind_t conv_alg, CpuOpDesc *od)
{
  dnnl_memory_desc_t wmd, bmd;
  dnnl_dims_t ones = { 1, 1 }, zero = { 0, 0 }, two = { 2, 2 };
  dnnl_status_t st;

  switch (desc->kind) {
    case UNET_OP_CONV:
    case UNET_OP_UPCONV2:{
      CpuLayer *l = &ctx->layers[desc->layer];
      dnnl_dims_t wd = { l->cout, l->cin, l->k, l->k };
      dnnl_dims_t bd = { l->cout };
      dnnl_dims_t pad = { desc->pad, desc->pad };
      st = dnnl_memory_desc_init_by_tag (&wmd, 4, wd,
          smd->data_type == dnnl_bf16 ? dnnl_bf16 : dnnl_f32, dnnl_format_tag_any);
      if (st == dnnl_success)
        st = dnnl_memory_desc_init_by_tag (&bmd, 1, bd, dnnl_f32, dnnl_x);
      if (st != dnnl_success)
        return st;
      if (desc->kind == UNET_OP_CONV)
        return dnnl_convolution_forward_desc_init (&od->u.conv, dnnl_forward_inference,
            conv_alg, smd, &wmd, &bmd, dmd, ones, pad, pad);
      return dnnl_deconvolution_forward_desc_init (&od->u.deconv,
          dnnl_forward_inference, dnnl_deconvolution_direct, smd, &wmd, &bmd, dmd,
          two, zero, zero);
    }
    case UNET_OP_MAXPOOL2:
      return dnnl_pooling_v2_forward_desc_init (&od->u.pool, dnnl_forward_inference,
          dnnl_pooling_max, smd, dmd, two, two, zero, zero, zero);
    case UNET_OP_SOFTMAX:
      return dnnl_softmax_v2_forward_desc_init (&od->u.softmax, dnnl_forward_inference,
          dnnl_softmax_accurate, smd, dmd, 1);
    case UNET_OP_SIGMOID:
      /* eltwise keeps src and dst in one layout; sigmoid is only used on the
       * 1-channel head output, which is plain nchw */
      return dnnl_eltwise_forward_desc_init (&od->u.eltwise, dnnl_forward_inference,
          dnnl_eltwise_logistic, smd, 0.f, 0.f);
    case UNET_OP_CROP_COPY:
    case UNET_OP_BATCHNORM:     /* training graphs only (cpu-train.c) */
    case UNET_OP_DROPOUT:
      break;
  }
  return dnnl_invalid_arguments;
}

static dnnl_alg_kind_t
cpu_conv_alg (const CpuCtx *ctx)
{
  switch (ctx->conv_mode) {
    case CPU_CONV_WINOGRAD:
      return dnnl_convolution_winograd;
    case CPU_CONV_AUTO:
      return dnnl_convolution_auto;
    case CPU_CONV_MEASURE:     /* cpu_conv_choose() ran first; this is the fallback */
    case CPU_CONV_RULE:        /* cpu_conv_wino () ran first; likewise */
    case CPU_CONV_DIRECT:
      break;
  }
  return dnnl_convolution_direct;
}

/* Tries to create the primitive descriptor for `desc` with src/dst mds. Unless
 * `allow_ref`, a descriptor whose best implementation is oneDNN's reference (slow,
 * scalar) code is refused, so the caller tries layouts a fast kernel takes. */
static dnnl_primitive_desc_t
cpu_try_pd (CpuCtx *ctx, const UnetOpDesc *desc, const dnnl_memory_desc_t *smd,
    const dnnl_memory_desc_t *dmd, dnnl_primitive_attr_t attr, gboolean allow_ref)
{
  CpuOpDesc od;
  dnnl_primitive_desc_t pd = NULL;
  dnnl_alg_kind_t algs[2] = { cpu_conv_alg (ctx), dnnl_convolution_direct };

  for (gint a = 0; a < (desc->kind == UNET_OP_CONV ? 2 : 1); a++) {
    const char *impl = NULL;
    if (a == 1 && algs[0] == dnnl_convolution_direct)
      break;
    if (cpu_op_desc_init (ctx, desc, smd, dmd, algs[a], &od) != dnnl_success)
      continue;
    if (dnnl_primitive_desc_create (&pd, &od, attr, ctx->engine, NULL) != dnnl_success)
      continue;
    if (allow_ref || (dnnl_primitive_desc_query (pd, dnnl_query_impl_info_str, 0,
                &impl) == dnnl_success && !g_str_has_prefix (impl, "ref")))
      return pd;
    dnnl_primitive_desc_destroy (pd);
  }
  return NULL;
}

/* ------------------------------------------ per-shape convolution choice -- */

/* $UNET_CPU_CONV_ALGO=measure, as cuDNN's "find": when a plan is
 * built, every fast oneDNN implementation of the convolution that takes the
 * tensors' own layouts (direct: jit/brgemm kernels; Winograd F(4x4,3x3) where the
 * ISA has one) is run on the op's own src/dst memory (the plan's arena, which
 * holds no data yet) with deterministic pseudo-random input, in alternating
 * rounds; the fastest whose output stays within CPU_CONV_REL_TOL of the first
 * direct implementation's is kept. The choice is cached per shape, layout, data
 * type, padding and ReLU for the life of the process, so other plans, nets and
 * element instances with the same shape do not measure again. It is measured with
 * the thread count and batch size of the first net that builds the shape and
 * reused for every other thread count and batch size, so an image's result is
 * bit-identical whatever the threads or what it is batched with (the candidates
 * are each invariant to both; the element and overlap-tile tests check it bit for
 * bit). */

#define CPU_CONV_MAX_CAND 8
/* Timed runs per candidate after the first (untimed, output check) run; the
 * minimum counts. Convolutions whose first run took over CPU_CONV_QUICK_MS get one
 * timed run: their differences are large next to the noise, and the whole
 * measurement then costs about two forwards per candidate at plan build. */
#define CPU_CONV_ROUNDS 3
#define CPU_CONV_QUICK_MS 5.0
/* Largest accepted max|y - y_direct| / max|y_direct| of one convolution in f32.
 * The conformance contract is 1e-4 on probabilities (tests/engine/
 * conformance_forward.py), i.e. ~1e-4 on logits; a depth-4 U-Net chains at most
 * 10 convolutions from input to output, and errors of that size add at most
 * linearly, so 1e-5 per layer keeps the chain within it. Direct implementations
 * differ only in summation order (~1e-7); oneDNN's fp32 Winograd measures
 * ~1e-6 on random data. In bf16 the output itself is rounded to 2^-8, so two
 * implementations may differ by one bf16 unit: 2^-7 relative. */
#define CPU_CONV_REL_TOL 1e-5
#define CPU_CONV_REL_TOL_BF16 (1.0 / 128)

typedef struct
{
  dnnl_primitive_desc_t pd;
  dnnl_alg_kind_t alg;
  const char *impl;             /* owned by pd */
  gdouble ms;                   /* best of the timed runs */
  gdouble dev;                  /* relative deviation from candidate 0 */
} CpuConvCand;

typedef struct
{
  dnnl_alg_kind_t alg;
  gchar *impl;
} CpuConvChoice;

static GMutex cpu_choice_lock;
static GHashTable *cpu_choice_cache;    /* key -> CpuConvChoice */

static void
cpu_choice_free (gpointer p)
{
  CpuConvChoice *c = p;
  g_free (c->impl);
  g_free (c);
}

static gchar *
cpu_conv_key (const CpuCtx *ctx, const UnetOpDesc *desc, const dnnl_memory_desc_t *smd,
    const dnnl_memory_desc_t *dmd)
{
  GString *k = g_string_new (NULL);
  const dnnl_memory_desc_t *mds[2] = { smd, dmd };

  g_string_append_printf (k, "k %d pad %d relu %d", ctx->layers[desc->layer].k,
      desc->pad, desc->relu ? 1 : 0);
  for (gint i = 0; i < 2; i++) {
    const dnnl_memory_desc_t *m = mds[i];
    const dnnl_blocking_desc_t *b = &m->format_desc.blocking;
    g_string_append_printf (k, " | dt %d off %" G_GINT64_FORMAT, m->data_type,
        (gint64) m->offset0);
    for (gint d = 1; d < m->ndims; d++)        /* not N: see above */
      g_string_append_printf (k, " %" G_GINT64_FORMAT "/%" G_GINT64_FORMAT,
          (gint64) m->dims[d], (gint64) b->strides[d]);
    for (gint d = 0; d < b->inner_nblks; d++)
      g_string_append_printf (k, " b%d:%" G_GINT64_FORMAT, (gint) b->inner_idxs[d],
          (gint64) b->inner_blks[d]);
  }
  return g_string_free (k, FALSE);
}

/* The candidates for the convolution on (smd, dmd): oneDNN's first (fastest by
 * its own ranking) non-reference direct implementation, which is what
 * UNET_CPU_CONV_ALGO=direct runs, then every Winograd implementation; returns how
 * many were stored in `cand`. Left out, because an image's result must not
 * depend on the thread count or on what it is batched with: other direct
 * implementations (gemm-based ones for plain layouts split their sums by thread),
 * and oneDNN 2.6's F(2x2,3x3) "jit_fp32_wino_2x3", whose output changed with the
 * thread count and the batch size in our checks (F(4x4,3x3) "jit_wino_4x3"
 * did not, nor did the direct kernel beyond what direct itself does). */
static gint
cpu_conv_candidates (CpuCtx *ctx, const UnetOpDesc *desc, const dnnl_memory_desc_t *smd,
    const dnnl_memory_desc_t *dmd, dnnl_primitive_attr_t attr, CpuConvCand *cand)
{
  const dnnl_alg_kind_t algs[2] = { dnnl_convolution_direct, dnnl_convolution_winograd };
  gint n = 0;

  for (gint a = 0; a < 2; a++) {
    CpuOpDesc od;
    dnnl_primitive_desc_iterator_t it = NULL;
    if (cpu_op_desc_init (ctx, desc, smd, dmd, algs[a], &od) != dnnl_success
        || dnnl_primitive_desc_iterator_create (&it, &od, attr, ctx->engine,
            NULL) != dnnl_success)
      continue;
    do {
      dnnl_primitive_desc_t pd = dnnl_primitive_desc_iterator_fetch (it);
      const char *impl = NULL;
      gboolean keep = pd != NULL && n < CPU_CONV_MAX_CAND
          && dnnl_primitive_desc_query (pd, dnnl_query_impl_info_str, 0,
          &impl) == dnnl_success && impl != NULL && !g_str_has_prefix (impl, "ref")
          && strstr (impl, "wino_2x3") == NULL;
      for (gint j = 0; keep && j < n; j++)
        keep = !(cand[j].alg == algs[a] && strcmp (cand[j].impl, impl) == 0)
            && !(cand[j].alg == dnnl_convolution_direct
            && algs[a] == dnnl_convolution_direct);
      if (keep)
        cand[n++] = (CpuConvCand) { pd, algs[a], impl, G_MAXDOUBLE, 0.0 };
      else if (pd != NULL)
        dnnl_primitive_desc_destroy (pd);
    } while (dnnl_primitive_desc_iterator_next (it) == dnnl_success);
    dnnl_primitive_desc_iterator_destroy (it);
  }
  return n;
}

static gfloat
cpu_elt (const guint8 *p, gsize i, gboolean bf16)
{
  if (bf16) {
    guint32 u = (guint32) ((const guint16 *) p)[i] << 16;
    gfloat f;
    memcpy (&f, &u, sizeof f);
    return f;
  }
  return ((const gfloat *) p)[i];
}

/* Times every candidate on src -> dst (one image, mds smd/dmd) and sets its ms and
 * dev. Overwrites src and dst. */
static gboolean
cpu_conv_measure (CpuCtx *ctx, CpuLayer *l, CpuConvCand *cand, gint n,
    const dnnl_memory_desc_t *smd, guint8 *src, const dnnl_memory_desc_t *dmd,
    guint8 *dst, GError **error)
{
  dnnl_primitive_t prim[CPU_CONV_MAX_CAND] = { 0 };
  dnnl_memory_t mem[CPU_CONV_MAX_CAND][4] = { {0} };    /* src, dst, weights, scratch */
  gpointer scratch[CPU_CONV_MAX_CAND] = { 0 };
  const gboolean sbf = smd->data_type == dnnl_bf16, dbf = dmd->data_type == dnnl_bf16;
  const gsize n_src = dnnl_memory_desc_get_size (smd) / (sbf ? 2 : 4);
  const gsize n_dst = dnnl_memory_desc_get_size (dmd) / (dbf ? 2 : 4);
  gfloat *ref = NULL;
  gdouble ref_max = 0.0;
  guint32 rng = 0x9e3779b9u;
  gboolean ok = FALSE;

  /* input in [-1, 1): no denormals or NaNs from an uninitialised arena */
  for (gsize i = 0; i < n_src; i++) {
    gfloat v;
    rng ^= rng << 13;
    rng ^= rng >> 17;
    rng ^= rng << 5;
    v = (gfloat) ((rng >> 8) * (2.0 / 16777216.0) - 1.0);
    if (sbf) {
      guint32 u;
      memcpy (&u, &v, sizeof u);
      ((guint16 *) src)[i] = (guint16) (u >> 16);
    } else {
      ((gfloat *) src)[i] = v;
    }
  }
  if ((ref = g_try_new (gfloat, n_dst)) == NULL) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_OUT_OF_MEMORY,
        "cannot allocate %" G_GSIZE_FORMAT " floats to compare convolutions", n_dst);
    goto fail;
  }
  for (gint c = 0; c < n; c++) {
    const dnnl_memory_desc_t *wmd =
        dnnl_primitive_desc_query_md (cand[c].pd, dnnl_query_weights_md, 0);
    const dnnl_memory_desc_t *scr =
        dnnl_primitive_desc_query_md (cand[c].pd, dnnl_query_scratchpad_md, 0);
    DNNL_TRY (dnnl_primitive_create (&prim[c], cand[c].pd));
    DNNL_TRY (dnnl_memory_create (&mem[c][0], smd, ctx->engine, src));
    DNNL_TRY (dnnl_memory_create (&mem[c][1], dmd, ctx->engine, dst));
    DNNL_TRY (dnnl_memory_create (&mem[c][2], wmd, ctx->engine, DNNL_MEMORY_ALLOCATE));
    if (!cpu_reorder_now (ctx, l->w_user, mem[c][2], error))
      goto fail;
    if ((scratch[c] = cpu_alloc (dnnl_memory_desc_get_size (scr), error)) == NULL)
      goto fail;
    /* fault the pages in now: the first run must not pay for them alone */
    memset (scratch[c], 0, dnnl_memory_desc_get_size (scr));
    DNNL_TRY (dnnl_memory_create (&mem[c][3], scr, ctx->engine, scratch[c]));
  }
  /* round 0: warm-up and the output check; then timed rounds, alternating */
  for (gint r = 0, rounds = CPU_CONV_ROUNDS; r <= rounds; r++) {
    for (gint c = 0; c < n; c++) {
      dnnl_exec_arg_t args[5] = {
        {DNNL_ARG_SRC, mem[c][0]}, {DNNL_ARG_DST, mem[c][1]},
        {DNNL_ARG_WEIGHTS, mem[c][2]}, {DNNL_ARG_BIAS, l->bias},
        {DNNL_ARG_SCRATCHPAD, mem[c][3]},
      };
      gint64 t0 = g_get_monotonic_time ();
      gdouble ms;
      DNNL_TRY (dnnl_primitive_execute (prim[c], ctx->stream, 5, args));
      DNNL_TRY (dnnl_stream_wait (ctx->stream));
      ms = (g_get_monotonic_time () - t0) / 1000.0;
      if (r > 0) {
        cand[c].ms = MIN (cand[c].ms, ms);
      } else if (c == 0) {
        if (ms > CPU_CONV_QUICK_MS)
          rounds = 1;
        for (gsize i = 0; i < n_dst; i++) {
          ref[i] = cpu_elt (dst, i, dbf);
          ref_max = MAX (ref_max, fabs (ref[i]));
        }
      } else {
        gdouble dev = 0.0;
        for (gsize i = 0; i < n_dst; i++) {
          gdouble d = fabs (cpu_elt (dst, i, dbf) - ref[i]);
          dev = (d > dev || isnan (d)) ? d : dev;
        }
        cand[c].dev = dev / MAX (ref_max, 1e-30);
      }
    }
  }
  ok = TRUE;
fail:
  for (gint c = 0; c < n; c++) {
    if (prim[c])
      dnnl_primitive_destroy (prim[c]);
    for (gint m = 0; m < 4; m++)
      if (mem[c][m])
        dnnl_memory_destroy (mem[c][m]);
    free (scratch[c]);
  }
  g_free (ref);
  return ok;
}

/* md covers exactly its own elements from its handle (no offset, no padding, no
 * strided view), so the measurement may fill and read it as one array. */
static gboolean
cpu_md_dense (const dnnl_memory_desc_t *md)
{
  gsize elems = 1;
  for (gint d = 0; d < md->ndims; d++)
    elems *= (gsize) md->dims[d];
  return md->offset0 == 0 && dnnl_memory_desc_get_size (md)
      == elems * (md->data_type == dnnl_bf16 ? 2 : 4);
}

/* The primitive descriptor of the convolution `desc` on (smd, dmd): measured, or
 * taken from the cache. *out NULL (and TRUE) when no fast implementation takes
 * these layouts: the caller falls back to cpu_try_pd(). */
static gboolean
cpu_conv_choose (CpuCtx *ctx, const UnetOpDesc *desc, const dnnl_memory_desc_t *smd,
    guint8 *src, const dnnl_memory_desc_t *dmd, guint8 *dst, dnnl_primitive_attr_t attr,
    dnnl_primitive_desc_t *out, GError **error)
{
  CpuConvCand cand[CPU_CONV_MAX_CAND];
  gint n, pick = -1;
  gchar *key = NULL;
  const gdouble tol = dmd->data_type == dnnl_bf16 ? CPU_CONV_REL_TOL_BF16
      : CPU_CONV_REL_TOL;

  *out = NULL;
  n = cpu_conv_candidates (ctx, desc, smd, dmd, attr, cand);
  if (n == 0)
    return TRUE;
  /* Only f32 is measured. bf16 (nhwc, possibly strided views of a concat
   * buffer) keeps oneDNN's first choice, as before: bf16 is only worth using with
   * AMX, where oneDNN's first choice is its AMX kernel. */
  if (n > 1 && smd->data_type == dnnl_f32 && dmd->data_type == dnnl_f32
      && cpu_md_dense (smd) && cpu_md_dense (dmd)) {
    key = cpu_conv_key (ctx, desc, smd, dmd);
    g_mutex_lock (&cpu_choice_lock);
    if (cpu_choice_cache != NULL) {
      CpuConvChoice *ch = g_hash_table_lookup (cpu_choice_cache, key);
      for (gint c = 0; ch != NULL && c < n; c++)
        if (cand[c].alg == ch->alg && strcmp (cand[c].impl, ch->impl) == 0)
          pick = c;
    }
    g_mutex_unlock (&cpu_choice_lock);
  }
  if (key != NULL && pick < 0) {
    CpuConvChoice *ch;
    if (!cpu_conv_measure (ctx, &ctx->layers[desc->layer], cand, n, smd, src, dmd,
            dst, error)) {
      for (gint c = 0; c < n; c++)
        dnnl_primitive_desc_destroy (cand[c].pd);
      g_free (key);
      return FALSE;
    }
    pick = 0;
    for (gint c = 1; c < n; c++)
      if (cand[c].dev <= tol && cand[c].ms < cand[pick].ms)
        pick = c;
    if (g_getenv ("UNET_CPU_VERBOSE"))
      for (gint c = 0; c < n; c++)
        g_printerr ("unet-cpu: conv layer %d %s %s: %.3f ms, rel. dev %.1e%s%s\n",
            desc->layer, cand[c].alg == dnnl_convolution_winograd ? "winograd" : "direct",
            cand[c].impl, cand[c].ms, cand[c].dev, cand[c].dev > tol ? " (rejected)" : "",
            c == pick ? " <- chosen" : "");
    ch = g_new (CpuConvChoice, 1);
    ch->alg = cand[pick].alg;
    ch->impl = g_strdup (cand[pick].impl);
    g_mutex_lock (&cpu_choice_lock);
    if (cpu_choice_cache == NULL)
      cpu_choice_cache = g_hash_table_new_full (g_str_hash, g_str_equal, g_free,
          cpu_choice_free);
    g_hash_table_replace (cpu_choice_cache, key, ch);
    g_mutex_unlock (&cpu_choice_lock);
    key = NULL;
  }
  g_free (key);
  if (pick < 0)
    pick = 0;
  for (gint c = 0; c < n; c++)
    if (c != pick)
      dnnl_primitive_desc_destroy (cand[c].pd);
  *out = cand[pick].pd;
  return TRUE;
}

/* ------------------------------ default: Winograd F(4x4,3x3) by rule -- */

/* The default (CPU_CONV_RULE). oneDNN's Winograd F(4x4,3x3) kernel
 * ("jit_wino_4x3", AVX-512, nChw16c, channels multiples of 16) runs a 3x3
 * convolution in fewer multiplications than the direct kernel, but its
 * transforms cost memory traffic in proportion to (cin + cout) per pixel, so it
 * only pays where the channels are wide. Measured on this project's U-Nets (base
 * 16 and 32, 572x572 tile, 2 threads, tests/bench/profile_forward.py, figures in
 * tests/bench/RESULTS.md): 1.6-2.9x faster than the direct kernel wherever
 * cin >= 64 or cin > cout (every level below the first, and the decoder's first
 * convolution of each level), 1.5-2x slower for the first level's convolutions
 * (cin <= 32, cin <= cout, 284-570 pixels wide). So the choice is a rule on the
 * shape, not a timing: it cannot change from run to run or between processes.
 *
 * Two properties the overlap-tile contract needs (an image's result must not
 * depend on the thread count, nor on what it is batched with) are then made
 * to hold:
 * - batch: the kernel's blocking depends on the number of tiles, i.e. on the
 *   batch, so a Winograd convolution runs image by image (N=1 descriptors);
 * - threads: oneDNN configures the kernel (its schedule and blocking) from the
 *   thread count at creation, and configurations round differently. The first
 *   time a shape is seen the kernel is configured for each of 1, 2, the
 *   backend's thread count, the machine's core count and CPU_WINO_MAX_THREADS,
 *   and each is run on the same pseudo-random input: Winograd is kept when all
 *   agree bit for bit. When they differ (at base 32 on a 572 tile, 2 of 16
 *   convolutions differed between 1 and 2 threads), the kernel configured once
 *   for CPU_WINO_MAX_THREADS threads is run with each of those counts (a
 *   primitive may run with fewer threads than it was made for) and kept,
 *   configured so for every net, when those runs agree; otherwise the shape runs
 *   direct. Either way the kept kernel stays within CPU_CONV_REL_TOL of the
 *   direct one. The verdict is a
 *   deterministic function of the shape and of the counts compared, cached for
 *   the process: any two nets whose thread counts are among 1, 2 and the core
 *   count compare the same set and get the same bits. */
#define CPU_WINO_MAX_THREADS 64

static GHashTable *cpu_wino_cache;      /* key -> GINT_TO_POINTER (1 yes, 2 no) */

static gboolean
cpu_wino_rule (const CpuLayer *l, const dnnl_memory_desc_t *smd,
    const dnnl_memory_desc_t *dmd)
{
  return l->k == 3 && l->cin % 16 == 0 && l->cout % 16 == 0
      && (l->cin >= 64 || l->cin > l->cout)
      && smd->data_type == dnnl_f32 && dmd->data_type == dnnl_f32
      && smd->format_desc.blocking.inner_nblks == 1
      && smd->format_desc.blocking.inner_blks[0] == 16
      && dmd->format_desc.blocking.inner_nblks == 1
      && dmd->format_desc.blocking.inner_blks[0] == 16;
}

/* The F(4x4,3x3) primitive descriptor for (smd, dmd) configured for the current
 * OpenMP thread count, or NULL. */
static dnnl_primitive_desc_t
cpu_wino_pd (CpuCtx *ctx, const UnetOpDesc *desc, const dnnl_memory_desc_t *smd,
    const dnnl_memory_desc_t *dmd, dnnl_primitive_attr_t attr)
{
  CpuOpDesc od;
  dnnl_primitive_desc_iterator_t it = NULL;
  dnnl_primitive_desc_t found = NULL;

  if (cpu_op_desc_init (ctx, desc, smd, dmd, dnnl_convolution_winograd, &od)
      != dnnl_success || dnnl_primitive_desc_iterator_create (&it, &od, attr,
          ctx->engine, NULL) != dnnl_success)
    return NULL;
  do {
    dnnl_primitive_desc_t pd = dnnl_primitive_desc_iterator_fetch (it);
    const char *impl = NULL;
    if (pd != NULL && found == NULL && dnnl_primitive_desc_query (pd,
            dnnl_query_impl_info_str, 0, &impl) == dnnl_success && impl != NULL
        && g_str_has_prefix (impl, "jit_wino_4x3"))
      found = pd;
    else if (pd != NULL)
      dnnl_primitive_desc_destroy (pd);
  } while (found == NULL && dnnl_primitive_desc_iterator_next (it) == dnnl_success);
  dnnl_primitive_desc_iterator_destroy (it);
  return found;
}

/* Runs `pd` (configured for `made_for` threads) once on src -> dst with `threads`
 * <= made_for OpenMP threads. The primitive is created with the thread count the
 * descriptor was made for: oneDNN's primitive cache keys primitives by the thread
 * count at creation, and a primitive configured for another count (its schedule,
 * its scratchpad) must not be handed to the plan's own ops. */
static gboolean
cpu_run_once (CpuCtx *ctx, CpuLayer *l, dnnl_primitive_desc_t pd, gint made_for,
    gint threads, void *src, void *dst, GError **error)
{
  const dnnl_memory_desc_t *smd = dnnl_primitive_desc_query_md (pd, dnnl_query_src_md, 0);
  const dnnl_memory_desc_t *dmd = dnnl_primitive_desc_query_md (pd, dnnl_query_dst_md, 0);
  const dnnl_memory_desc_t *wmd =
      dnnl_primitive_desc_query_md (pd, dnnl_query_weights_md, 0);
  const dnnl_memory_desc_t *scr =
      dnnl_primitive_desc_query_md (pd, dnnl_query_scratchpad_md, 0);
  dnnl_primitive_t prim = NULL;
  dnnl_memory_t mem[4] = { 0 };
  gpointer scratch = NULL;
  gboolean ok = FALSE;

#if HAVE_OPENMP
  omp_set_num_threads (made_for);
#endif
  DNNL_TRY (dnnl_primitive_create (&prim, pd));
  cpu_set_threads (ctx);
  DNNL_TRY (dnnl_memory_create (&mem[0], smd, ctx->engine, src));
  DNNL_TRY (dnnl_memory_create (&mem[1], dmd, ctx->engine, dst));
  DNNL_TRY (dnnl_memory_create (&mem[2], wmd, ctx->engine, DNNL_MEMORY_ALLOCATE));
  if (!cpu_reorder_now (ctx, l->w_user, mem[2], error))
    goto fail;
  if ((scratch = cpu_alloc (dnnl_memory_desc_get_size (scr), error)) == NULL)
    goto fail;
  DNNL_TRY (dnnl_memory_create (&mem[3], scr, ctx->engine, scratch));
  {
    dnnl_exec_arg_t args[5] = {
      {DNNL_ARG_SRC, mem[0]}, {DNNL_ARG_DST, mem[1]}, {DNNL_ARG_WEIGHTS, mem[2]},
      {DNNL_ARG_BIAS, l->bias}, {DNNL_ARG_SCRATCHPAD, mem[3]},
    };
#if HAVE_OPENMP
    omp_set_num_threads (threads);
#endif
    DNNL_TRY (dnnl_primitive_execute (prim, ctx->stream, 5, args));
    DNNL_TRY (dnnl_stream_wait (ctx->stream));
  }
  ok = TRUE;
fail:
  cpu_set_threads (ctx);
  if (prim)
    dnnl_primitive_destroy (prim);
  for (gint m = 0; m < 4; m++)
    if (mem[m])
      dnnl_memory_destroy (mem[m]);
  free (scratch);
  return ok;
}

/* The thread counts the check compares: 1, 2, the backend's, the machine's and
 * CPU_WINO_MAX_THREADS (sorted, without repeats); returns how many. */
static gint
cpu_wino_thread_counts (const CpuCtx *ctx, gint *t)
{
  gint cand[5] = { 1, 2, ctx->threads, (gint) g_get_num_processors (),
    CPU_WINO_MAX_THREADS }, n = 0;
  for (gint i = 0; i < 5; i++) {
    gint j = n;
    gboolean dup = FALSE;
    for (gint k = 0; k < n; k++)
      dup = dup || t[k] == cand[i];
    if (dup)
      continue;
    while (j > 0 && t[j - 1] > cand[i]) {
      t[j] = t[j - 1];
      j--;
    }
    t[j] = cand[i];
    n++;
  }
  return n;
}

/* The check described above, for one image's (smd, dmd). *made_for: 0 run
 * direct, -1 Winograd configured for the net's own count (every count's
 * configuration gives the same bits), else Winograd configured for that many
 * threads (the configurations differ, but that one gives the same bits run with
 * each count compared). */
static gboolean
cpu_wino_check (CpuCtx *ctx, const UnetOpDesc *desc, const dnnl_memory_desc_t *smd,
    const dnnl_memory_desc_t *dmd, dnnl_primitive_attr_t attr, gint *made_for,
    GError **error)
{
  CpuLayer *l = &ctx->layers[desc->layer];
  const gsize n_src = dnnl_memory_desc_get_size (smd) / 4;
  const gsize n_dst = dnnl_memory_desc_get_size (dmd) / 4;
  gint counts[5], n_counts = cpu_wino_thread_counts (ctx, counts), differ = 0;
  const gint many = MAX (CPU_WINO_MAX_THREADS, ctx->threads);
  const gint most = MAX (ctx->threads, (gint) g_get_num_processors ());
  dnnl_primitive_desc_t pd_dir = NULL, pd = NULL;
  gfloat *src = NULL, *ref = NULL, *y0 = NULL, *y = NULL;
  gdouble ref_max = 0.0, dev = 0.0;
  guint32 rng = 0x9e3779b9u;
  gboolean ok = FALSE;

  *made_for = 0;
  if ((pd_dir = cpu_try_pd (ctx, desc, smd, dmd, attr, FALSE)) == NULL)
    return TRUE;                /* no verdict needed: runs direct */
  if ((src = cpu_alloc (n_src * 4, error)) == NULL
      || (ref = cpu_alloc (n_dst * 4, error)) == NULL
      || (y0 = cpu_alloc (n_dst * 4, error)) == NULL
      || (y = cpu_alloc (n_dst * 4, error)) == NULL)
    goto done;
  /* input in [-1, 1) (nChw16c: padding channels included, harmless) */
  for (gsize i = 0; i < n_src; i++) {
    rng ^= rng << 13;
    rng ^= rng >> 17;
    rng ^= rng << 5;
    src[i] = (gfloat) ((rng >> 8) * (2.0 / 16777216.0) - 1.0);
  }
  if (!cpu_run_once (ctx, l, pd_dir, ctx->threads, ctx->threads, src, ref, error))
    goto done;
  /* the kernel configured for each count; run with MIN (count, ours) threads
   * (a primitive may run with fewer threads than it was made for) */
  for (gint i = 0; i < n_counts && differ == 0; i++) {
#if HAVE_OPENMP
    omp_set_num_threads (counts[i]);
#endif
    pd = cpu_wino_pd (ctx, desc, smd, dmd, attr);
    cpu_set_threads (ctx);
    if (pd == NULL) {
      ok = TRUE;                /* not offered for every count: runs direct */
      goto done;
    }
    if (!cpu_run_once (ctx, l, pd, counts[i], MIN (counts[i], ctx->threads), src,
            i == 0 ? y0 : y, error))
      goto done;
    dnnl_primitive_desc_destroy (pd);
    pd = NULL;
    if (i > 0 && memcmp (y0, y, n_dst * 4) != 0)
      differ = counts[i];
  }
  if (differ) {
    /* second chance: the kernel configured once, for `many` threads, and run
     * with each count a net here may use (a primitive may run with fewer threads
     * than it was made for); kept if every run gives the same bits */
    gboolean same = TRUE;
#if HAVE_OPENMP
    omp_set_num_threads (many);
#endif
    pd = cpu_wino_pd (ctx, desc, smd, dmd, attr);
    cpu_set_threads (ctx);
    for (gint i = 0, runs = 0; pd != NULL && i < n_counts && same; i++) {
      if (counts[i] > most)
        continue;
      if (!cpu_run_once (ctx, l, pd, many, counts[i], src, runs == 0 ? y0 : y, error))
        goto done;
      same = runs == 0 || memcmp (y0, y, n_dst * 4) == 0;
      runs++;
    }
    if (pd != NULL && same)
      differ = -1;
  }
  for (gsize i = 0; i < n_dst; i++) {
    ref_max = MAX (ref_max, fabs (ref[i]));
    dev = MAX (dev, fabs ((gdouble) y0[i] - ref[i]));
    if (isnan (y0[i]))
      dev = G_MAXDOUBLE;
  }
  dev /= MAX (ref_max, 1e-30);
  if (dev <= CPU_CONV_REL_TOL)
    *made_for = differ == 0 ? -1 : differ < 0 ? many : 0;
  if (g_getenv ("UNET_CPU_VERBOSE")) {
    if (differ > 0)
      g_printerr ("unet-cpu: conv layer %d %dx%d: winograd 4x3 for %d threads differs "
          "from 1 thread, also when made for %d: direct\n", desc->layer, l->cin,
          l->cout, differ, many);
    else
      g_printerr ("unet-cpu: conv layer %d %dx%d: winograd 4x3 %s, rel. dev. from "
          "direct %.1e: %s\n", desc->layer, l->cin, l->cout, differ == 0
          ? "configured for each thread count agrees"
          : "configured for many threads agrees for every count run", dev,
          *made_for ? "winograd" : "direct");
  }
  ok = TRUE;
done:
  if (pd_dir)
    dnnl_primitive_desc_destroy (pd_dir);
  if (pd)
    dnnl_primitive_desc_destroy (pd);
  free (src);
  free (ref);
  free (y0);
  free (y);
  return ok;
}

/* CPU_CONV_RULE: the Winograd descriptor for one image's (smd, dmd) when the rule
 * and the check say so (*out NULL otherwise: the caller runs direct), and in
 * *made_for the thread count its primitive must be created with. */
static gboolean
cpu_conv_wino (CpuCtx *ctx, const UnetOpDesc *desc, const dnnl_memory_desc_t *smd,
    const dnnl_memory_desc_t *dmd, dnnl_primitive_attr_t attr,
    dnnl_primitive_desc_t *out, gint *made_for, GError **error)
{
  gchar *key;
  /* 0 unknown; 1 direct; 2 Winograd configured for our own thread count (all
   * counts' configurations agree); else Winograd configured for that many threads */
  gint verdict;

  *out = NULL;
  *made_for = ctx->threads;
  if (!cpu_wino_rule (&ctx->layers[desc->layer], smd, dmd))
    return TRUE;
  key = cpu_conv_key (ctx, desc, smd, dmd);
  {
    /* the verdict holds for the thread counts it compared */
    gint counts[5], n = cpu_wino_thread_counts (ctx, counts);
    gchar *k = key;
    for (gint i = 0; i < n; i++) {
      key = g_strdup_printf ("%s t%d", k, counts[i]);
      g_free (k);
      k = key;
    }
  }
  g_mutex_lock (&cpu_choice_lock);
  verdict = cpu_wino_cache ? GPOINTER_TO_INT (g_hash_table_lookup (cpu_wino_cache,
          key)) : 0;
  /* a verdict an earlier process on this machine reached (cpu-conv-cache.c) */
  if (verdict == 0 && (verdict = cpu_conv_cache_lookup (key)) != 0) {
    if (cpu_wino_cache == NULL)
      cpu_wino_cache = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, NULL);
    g_hash_table_replace (cpu_wino_cache, g_strdup (key), GINT_TO_POINTER (verdict));
  }
  g_mutex_unlock (&cpu_choice_lock);
  if (verdict == 0) {
    gint m;
    if (!cpu_wino_check (ctx, desc, smd, dmd, attr, &m, error)) {
      g_free (key);
      return FALSE;
    }
    verdict = m < 0 ? 2 : m > 0 ? m : 1;
    g_mutex_lock (&cpu_choice_lock);
    if (cpu_wino_cache == NULL)
      cpu_wino_cache = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, NULL);
    g_hash_table_replace (cpu_wino_cache, g_strdup (key), GINT_TO_POINTER (verdict));
    cpu_conv_cache_store (key, verdict);
    g_mutex_unlock (&cpu_choice_lock);
  }
  g_free (key);
  if (verdict > 1) {
    *made_for = verdict == 2 ? ctx->threads : verdict;
#if HAVE_OPENMP
    omp_set_num_threads (*made_for);
#endif
    *out = cpu_wino_pd (ctx, desc, smd, dmd, attr);
    cpu_set_threads (ctx);
  }
  return TRUE;
}

static void
cpu_any_md (const dnnl_memory_desc_t *like, dnnl_data_type_t dt, dnnl_memory_desc_t *md)
{
  dnnl_memory_desc_init_by_tag (md, 4, like->dims, dt, dnnl_format_tag_any);
}

static gboolean
cpu_is_plain_f32 (const UnetBackendTensor *t)
{
  dnnl_memory_desc_t plain;
  dnnl_dims_t d = { t->dims.n, t->dims.c, t->dims.h, t->dims.w };
  return t->parent == NULL
      && dnnl_memory_desc_init_by_tag (&plain, 4, d, dnnl_f32, dnnl_abcd) == dnnl_success
      && dnnl_memory_desc_equal (&plain, &t->md);
}

/* Softmax over channels / sigmoid on the (few-channel) head output in plain nchw
 * f32: a per-pixel loop is faster than oneDNN's reference code for a strided
 * channel axis, and these are the last op of a forward. */
static UnetBackendOp *
cpu_op_new_plain (CpuCtx *ctx, const UnetOpDesc *desc, GError **error)
{
  UnetBackendOp *op;
  if (desc->src->dims.n != desc->dst->dims.n || desc->src->dims.c != desc->dst->dims.c
      || desc->src->dims.h != desc->dst->dims.h || desc->src->dims.w != desc->dst->dims.w) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "softmax/sigmoid: src and dst dimensions differ");
    return NULL;
  }
  if (desc->src->data == NULL || desc->dst->data == NULL) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_FAILED,
        "CPU backend: tensor used before it was bound to an arena");
    return NULL;
  }
  op = g_new0 (UnetBackendOp, 1);
  op->ctx = ctx;
  op->kind = desc->kind;
  op->src_base = desc->src->data;
  op->dst_base = desc->dst->data;
  op->dims = desc->src->dims;
  return op;
}

/* src, dst (n,c,h,w) plain f32 */
static void
cpu_plain_forward (UnetBackendOp *op)
{
  const gfloat *src = (const gfloat *) op->src_base;
  gfloat *dst = (gfloat *) op->dst_base;
  const gint64 c = op->dims.c, hw = (gint64) op->dims.h * op->dims.w;
  const gint64 total = op->dims.n * hw;
  const gboolean softmax = op->kind == UNET_OP_SOFTMAX;

#pragma omp parallel for schedule(static)
  for (gint64 i = 0; i < total; i++) {
    const gint64 base = (i / hw) * c * hw + i % hw;
    if (softmax) {
      gfloat mx = src[base], sum = 0.f;
      for (gint64 k = 1; k < c; k++)
        mx = MAX (mx, src[base + k * hw]);
      for (gint64 k = 0; k < c; k++) {
        gfloat e = expf (src[base + k * hw] - mx);
        dst[base + k * hw] = e;
        sum += e;
      }
      for (gint64 k = 0; k < c; k++)
        dst[base + k * hw] /= sum;
    } else {
      for (gint64 k = 0; k < c; k++)
        dst[base + k * hw] = 1.f / (1.f + expf (-src[base + k * hw]));
    }
  }
}

static UnetBackendOp *
cpu_op_new_crop (CpuCtx *ctx, const UnetOpDesc *desc, GError **error)
{
  UnetBackendOp *op = g_new0 (UnetBackendOp, 1);
  dnnl_memory_desc_t win;
  const UnetDims *sd = &desc->src->dims, *dd = &desc->dst->dims;
  dnnl_dims_t d = { dd->n, dd->c, dd->h, dd->w };
  dnnl_dims_t off = { 0, 0, desc->crop_y, desc->crop_x };

  op->ctx = ctx;
  op->kind = desc->kind;
  if (sd->n != dd->n || sd->c != dd->c || desc->crop_y < 0 || desc->crop_x < 0
      || desc->crop_y + dd->h > sd->h || desc->crop_x + dd->w > sd->w) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "crop window (%d,%d)+%dx%d outside a %dx%d tensor", desc->crop_y,
        desc->crop_x, dd->h, dd->w, sd->h, sd->w);
    goto fail;
  }
  /* The window of src is a spatial submemory; oneDNN reorders between arbitrary
   * strided descriptors, so this is the single copy of a crop+concat. */
  DNNL_TRY (dnnl_memory_desc_init_submemory (&win, &desc->src->md, d, off));
  if (cpu_tensor_data (desc->src) == NULL || cpu_tensor_data (desc->dst) == NULL) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_FAILED,
        "CPU backend: tensor used before it was bound to an arena");
    goto fail;
  }
  if (!cpu_reorder_init (ctx, &op->pre, &win, cpu_tensor_data (desc->src),
          &desc->dst->md, cpu_tensor_data (desc->dst), error))
    goto fail;
  return op;
fail:
  cpu_op_free (op);
  return NULL;
}

/* ----------------------- transposed 2x2 convolution as 1x1 + shuffle -- */

/* A 2x2 stride-2 transposed convolution writes each input pixel's
 * cout x 2 x 2 outputs from one matrix product, with no overlap: it is a 1x1
 * convolution to 4*cout channels (output channel (2i+j)*cout + co = output
 * pixel (2y+i, 2x+j), channel co) followed by a copy that interleaves the four
 * quarters. oneDNN 2.6's deconvolution kernel ran it 3-10x slower than its 1x1
 * convolution does the same multiplications (tests/bench/profile_forward.py:
 * the decoder's last upconv took as long as a 3x3 convolution ten times its
 * size), so in blocked f32 (channels multiples of the block) the backend runs the
 * 1x1 convolution into an op-private buffer and the interleaving as one oneDNN
 * reorder between two 6-D strided views (channel blocks move as a whole),
 * straight into the destination (usually half of a concat buffer), image by
 * image. Same sums as the transposed convolution (each output is one
 * dot product over cin plus the bias), summed in the 1x1 kernel's order. */

/* The layer's weights as a (4*cout, cin, 1, 1) convolution in layout `md`
 * (shared by every op of the layer, like cpu_layer_weights), or its bias
 * repeated four times when `md` is one-dimensional. */
static dnnl_memory_t
cpu_upconv_params (CpuCtx *ctx, CpuLayer *l, const dnnl_memory_desc_t *md,
    GError **error)
{
  CpuPrepared prep = { 0 };
  const gint cin = l->cin, cout = l->cout;
  gfloat *buf = NULL;
  const gfloat *w = NULL;
  dnnl_memory_desc_t bmd;
  dnnl_memory_t tmp = NULL;

  for (guint i = 0; i < l->prepared->len; i++) {
    CpuPrepared *p = &g_array_index (l->prepared, CpuPrepared, i);
    if (dnnl_memory_desc_equal (md, &p->md))
      return p->mem;
  }
  prep.md = *md;
  DNNL_TRY (dnnl_memory_create (&prep.mem, md, ctx->engine, DNNL_MEMORY_ALLOCATE));
  if (md->ndims == 1) {
    gfloat *b4 = NULL;
    DNNL_TRY (dnnl_memory_get_data_handle (l->bias, (void **) &w));
    DNNL_TRY (dnnl_memory_get_data_handle (prep.mem, (void **) &b4));
    for (gint q = 0; q < 4; q++)
      memcpy (b4 + (gsize) q * cout, w, sizeof (gfloat) * cout);
  } else {
    dnnl_dims_t d = { 4 * cout, cin, 1, 1 };
    /* user layout iohw: element (ci, co, i, j) at ((ci * cout + co) * 2 + i) * 2 + j */
    DNNL_TRY (dnnl_memory_get_data_handle (l->w_user, (void **) &w));
    buf = g_new (gfloat, (gsize) 4 * cout * cin);
    for (gint q = 0; q < 4; q++)
      for (gint co = 0; co < cout; co++)
        for (gint ci = 0; ci < cin; ci++)
          buf[((gsize) q * cout + co) * cin + ci] = w[((gsize) ci * cout + co) * 4 + q];
    DNNL_TRY (dnnl_memory_desc_init_by_tag (&bmd, 4, d, dnnl_f32, dnnl_oihw));
    DNNL_TRY (dnnl_memory_create (&tmp, &bmd, ctx->engine, buf));
    if (!cpu_reorder_now (ctx, tmp, prep.mem, error))
      goto fail;
    dnnl_memory_destroy (tmp);
    g_free (buf);
  }
  g_array_append_val (l->prepared, prep);
  return prep.mem;
fail:
  if (tmp)
    dnnl_memory_destroy (tmp);
  if (prep.mem)
    dnnl_memory_destroy (prep.mem);
  g_free (buf);
  return NULL;
}

static gboolean
cpu_upconv_as_1x1 (CpuCtx *ctx, const UnetOpDesc *desc)
{
  const CpuLayer *l = &ctx->layers[desc->layer];
  /* the tensors' block: ctx->block, or 8 on an AVX-512 CPU for widths that are
   * no multiple of 16 */
  const gint blk = cpu_tensor_block (desc->src);
  return ctx->conv_mode == CPU_CONV_RULE && !ctx->bf16 && l->k == 2
      && (blk == 8 || blk == 16) && l->cin % blk == 0 && l->cout % blk == 0
      && cpu_tensor_block (desc->dst) == blk
      && desc->src->md.data_type == dnnl_f32 && desc->dst->md.data_type == dnnl_f32
      && desc->dst->dims.h == 2 * desc->src->dims.h
      && desc->dst->dims.w == 2 * desc->src->dims.w;
}

/* Releases what building an op's primitive took (any may be NULL). */
static void
cpu_op_build_end (dnnl_primitive_desc_t pd, dnnl_primitive_attr_t attr, dnnl_post_ops_t po)
{
  if (pd)
    dnnl_primitive_desc_destroy (pd);
  if (attr)
    dnnl_primitive_attr_destroy (attr);
  if (po)
    dnnl_post_ops_destroy (po);
}

/* The op's scratchpad memory (pointed at the shared scratchpad, grown to fit it,
 * at every run). */
static gboolean
cpu_op_scratch (UnetBackendOp *op, CpuCtx *ctx, const dnnl_memory_desc_t *pscr,
    GError **error)
{
  op->scratch_bytes = dnnl_memory_desc_get_size (pscr);
  if (op->scratch_bytes > ctx->scratch_bytes) {
    free (ctx->scratch);
    ctx->scratch_bytes = 0;
    if ((ctx->scratch = cpu_alloc (op->scratch_bytes, error)) == NULL)
      return FALSE;
    ctx->scratch_bytes = op->scratch_bytes;
  }
  DNNL_TRY (dnnl_memory_create (&op->scratch, pscr, ctx->engine, DNNL_MEMORY_NONE));
  return TRUE;
fail:
  return FALSE;
}

/* An op run image by image on dense N=1 descriptors (*smd, *dmd) of its src and
 * dst (see cpu_image). */
static gboolean
cpu_op_images (UnetBackendOp *op, CpuCtx *ctx, const UnetOpDesc *desc,
    dnnl_memory_desc_t *smd, dnnl_memory_desc_t *dmd, GError **error)
{
  op->ctx = ctx;
  op->kind = desc->kind;
  op->n_images = desc->src->dims.n;
  return cpu_image (desc->src, smd, &op->src_base, &op->src_stride, error)
      && cpu_image (desc->dst, dmd, &op->dst_base, &op->dst_stride, error);
}

/* NULL without an error when oneDNN has no 1x1 kernel for the layouts (the
 * caller then builds the deconvolution). */
static UnetBackendOp *
cpu_op_new_upconv (CpuCtx *ctx, const UnetOpDesc *desc, GError **error)
{
  CpuLayer *l = &ctx->layers[desc->layer];
  UnetBackendOp *op = g_new0 (UnetBackendOp, 1);
  const gint64 cin = l->cin, cout = l->cout, B = cpu_tensor_block (desc->src),
      nb = cout / B;
  const gint64 H = desc->src->dims.h, W = desc->src->dims.w;
  dnnl_memory_desc_t smd, dmd, tmd, wmd, bmd, vsrc, vdst;
  dnnl_convolution_desc_t cd;
  dnnl_primitive_attr_t attr = NULL;
  dnnl_post_ops_t po = NULL;
  dnnl_primitive_desc_t pd = NULL;
  const dnnl_memory_desc_t *pscr;
  dnnl_dims_t td = { 1, 4 * cout, H, W }, wd = { 4 * cout, cin, 1, 1 },
      bd = { 4 * cout }, ones = { 1, 1 }, zero = { 0, 0 };
  /* (block, y, i, x, j, B): the quarter (i, j) of the 1x1 output, and the
   * destination pixel (2y + i, 2x + j); B = 16 (nChw16c) or 8 (nChw8c) */
  dnnl_dims_t vd = { nb, H, 2, W, 2, B };
  dnnl_dims_t vs_src = { H * W * B, W * B, 2 * nb * H * W * B, B, nb * H * W * B, 1 };
  dnnl_dims_t vs_dst = { 4 * H * W * B, 4 * W * B, 2 * W * B, 2 * B, B, 1 };
  const char *impl = NULL;
  dnnl_status_t pst;

  if (!cpu_op_images (op, ctx, desc, &smd, &dmd, error))
    goto fail;
  DNNL_TRY (dnnl_memory_desc_init_by_tag (&tmd, 4, td, dnnl_f32,
          B == 16 ? dnnl_aBcd16b : dnnl_aBcd8b));
  DNNL_TRY (dnnl_memory_desc_init_by_tag (&wmd, 4, wd, dnnl_f32, dnnl_format_tag_any));
  DNNL_TRY (dnnl_memory_desc_init_by_tag (&bmd, 1, bd, dnnl_f32, dnnl_x));
  DNNL_TRY (dnnl_convolution_forward_desc_init (&cd, dnnl_forward_inference,
          dnnl_convolution_direct, &smd, &wmd, &bmd, &tmd, ones, zero, zero));
  DNNL_TRY (dnnl_primitive_attr_create (&attr));
  DNNL_TRY (dnnl_primitive_attr_set_scratchpad_mode (attr, dnnl_scratchpad_mode_user));
  if (desc->relu) {
    DNNL_TRY (dnnl_post_ops_create (&po));
    DNNL_TRY (dnnl_post_ops_append_eltwise (po, 1.f, dnnl_eltwise_relu, 0.f, 0.f));
    DNNL_TRY (dnnl_primitive_attr_set_post_ops (attr, po));
  }
  /* no 1x1 kernel for these layouts (none known: oneDNN's AVX2 kernels take
   * nChw8c, its AVX-512 ones nChw16c): NULL without an error, the caller builds
   * the deconvolution */
  pst = dnnl_primitive_desc_create (&pd, &cd, attr, ctx->engine, NULL);
  if (pst == dnnl_unimplemented) {
    cpu_op_build_end (NULL, attr, po);
    cpu_op_free (op);
    return NULL;
  }
  DNNL_TRY (pst);
  DNNL_TRY (dnnl_primitive_desc_query (pd, dnnl_query_impl_info_str, 0, &impl));
  if ((op->weights = cpu_upconv_params (ctx, l,
              dnnl_primitive_desc_query_md (pd, dnnl_query_weights_md, 0),
              error)) == NULL || (op->bias = cpu_upconv_params (ctx, l, &bmd,
              error)) == NULL)
    goto fail;
  if ((op->tmp_dst = cpu_alloc (dnnl_memory_desc_get_size (&tmd), error)) == NULL)
    goto fail;
  DNNL_TRY (dnnl_memory_create (&op->src, &smd, ctx->engine, DNNL_MEMORY_NONE));
  DNNL_TRY (dnnl_memory_create (&op->dst, &tmd, ctx->engine, op->tmp_dst));
  DNNL_TRY (dnnl_memory_desc_init_by_strides (&vsrc, 6, vd, dnnl_f32, vs_src));
  DNNL_TRY (dnnl_memory_desc_init_by_strides (&vdst, 6, vd, dnnl_f32, vs_dst));
  if (!cpu_reorder_init (ctx, &op->post, &vsrc, op->tmp_dst, &vdst, DNNL_MEMORY_NONE,
          error))
    goto fail;
  pscr = dnnl_primitive_desc_query_md (pd, dnnl_query_scratchpad_md, 0);
  if (!cpu_op_scratch (op, ctx, pscr, error))
    goto fail;
  DNNL_TRY (dnnl_primitive_create (&op->prim, pd));
  if (ctx->profile)
    op->label = g_strdup_printf ("%s+shuffle", impl);
  if (g_getenv ("UNET_CPU_VERBOSE"))
    g_printerr ("unet-cpu: upconv layer %d as 1x1 convolution %s + shuffle\n",
        desc->layer, impl);
  cpu_op_build_end (pd, attr, po);
  return op;
fail:
  cpu_op_build_end (pd, attr, po);
  cpu_op_free (op);
  return NULL;
}

/* 3x3 convolutions between nChw8c tensors (every multiple of 8 on CPUs without
 * AVX-512, ctx->block 8; on AVX-512 CPUs the multiples of 8 that are no multiple
 * of 16, e.g. a base-20 net padded to 24) run cpu-wino8.c's Winograd F(4x4,3x3)
 * (UNET_CPU_CONV_ALGO=rule, the default, and =winograd). Measured on a 2-core AMD
 * EPYC (AVX2), 2 threads, U-Nets on a 572 tile (tests/bench/profile_forward.py):
 * 1.3x the direct kernel's speed on 8-channel layers (base 8: 4.46 -> 3.36 ms for
 * 8 -> 8 at 570x570), 1.1-1.4x on the first level's 16/32-channel layers, 1.7-3x
 * from 64 channels up. No check is needed: cpu-wino8.c gives the same bits for
 * any thread count and batch by construction. */

static gboolean
cpu_wino8_wanted (CpuCtx *ctx, const UnetOpDesc *desc)
{
  const CpuLayer *l;
  if (desc->kind != UNET_OP_CONV || ctx->bf16
      || cpu_tensor_block (desc->src) != 8 || cpu_tensor_block (desc->dst) != 8
      || (ctx->conv_mode != CPU_CONV_RULE && ctx->conv_mode != CPU_CONV_WINOGRAD)
      || desc->src->dims.c % 8 || desc->dst->dims.c % 8 || !cpu_wino8_available ())
    return FALSE;
  l = &ctx->layers[desc->layer];
  return l->kind == UNET_LAYER_CONV
      && cpu_wino8_shape_ok (l->cin, l->cout, l->k, desc->pad, desc->src->dims.h,
          desc->src->dims.w);
}

/* The convolution on cpu-wino8.c, image by image; NULL without an error when
 * the tensors are not dense nChw8c f32 images (the caller builds a oneDNN op). */
static UnetBackendOp *
cpu_op_new_wino8 (CpuCtx *ctx, const UnetOpDesc *desc, GError **error)
{
  CpuLayer *l = &ctx->layers[desc->layer];
  UnetBackendOp *op = g_new0 (UnetBackendOp, 1);
  dnnl_memory_desc_t smd, dmd, want;
  void *w = NULL, *b = NULL;
  const gint H = desc->src->dims.h, W = desc->src->dims.w;

  if (!cpu_op_images (op, ctx, desc, &smd, &dmd, error))
    goto fail;
  {
    dnnl_dims_t sd = { 1, l->cin, H, W };
    dnnl_dims_t dd = { 1, l->cout, desc->dst->dims.h, desc->dst->dims.w };
    DNNL_TRY (dnnl_memory_desc_init_by_tag (&want, 4, sd, dnnl_f32, dnnl_aBcd8b));
    if (!dnnl_memory_desc_equal (&want, &smd))
      goto not_here;
    DNNL_TRY (dnnl_memory_desc_init_by_tag (&want, 4, dd, dnnl_f32, dnnl_aBcd8b));
    if (!dnnl_memory_desc_equal (&want, &dmd))
      goto not_here;
  }
  DNNL_TRY (dnnl_memory_get_data_handle (l->w_user, &w));
  DNNL_TRY (dnnl_memory_get_data_handle (l->bias, &b));
  if (l->wino8_u == NULL
      && (l->wino8_u = cpu_wino8_weights (w, l->cin, l->cout, error)) == NULL)
    goto fail;
  if ((op->wino8 = cpu_wino8_new (l->wino8_u, b, l->cin, l->cout, H, W, desc->pad,
              desc->relu, ctx->threads, error)) == NULL)
    goto fail;
  if (ctx->profile)
    op->label = g_strdup ("wino8:avx2");
  if (g_getenv ("UNET_CPU_VERBOSE"))
    g_printerr ("unet-cpu: conv layer %d %dx%dx%dx%d -> %dx%dx%dx%d: winograd 4x3 "
        "(cpu-wino8, avx2)\n", desc->layer, desc->src->dims.n, l->cin, H, W,
        desc->dst->dims.n, l->cout, desc->dst->dims.h, desc->dst->dims.w);
  return op;
not_here:
  cpu_op_free (op);
  return NULL;
fail:
  cpu_op_free (op);
  if (error != NULL && *error == NULL)
    g_set_error (error, UNET_ERROR, UNET_ERROR_BACKEND,
        "CPU backend: cannot build the Winograd convolution of layer %d", desc->layer);
  return NULL;
}

/* 1: the tensors' own layouts; 2: layouts of the primitive's choosing in the
 * tensors' data types (+ reorders); 3: the same in f32 (e.g. an op without bf16
 * support) -- each only with a fast implementation; 4: the tensors' own layouts
 * with whatever oneDNN has (its reference code is slow but always exists).
 * *fallback: the primitive's layouts differ from the tensors' (steps 2, 3). */
static dnnl_primitive_desc_t
cpu_pd_chain (CpuCtx *ctx, const UnetOpDesc *desc, const dnnl_memory_desc_t *smd,
    const dnnl_memory_desc_t *dmd, dnnl_primitive_attr_t attr, gboolean *fallback)
{
  dnnl_memory_desc_t sany, dany;
  dnnl_primitive_desc_t pd = NULL;

  /* Without AVX-512, a convolution reading or writing a plain (nchw) tensor of 9+
   * channels (layers whose channel count is no multiple of 8, e.g. base 12 or 20)
   * gets oneDNN's gemm kernel in those layouts, which must run on one thread
   * (cpu_op_new_impl); the blocked direct kernel plus reorders of its input and
   * output is 2-3x faster there, so step 1 is skipped. */
  if (!(desc->kind == UNET_OP_CONV && ctx->block == 8 && !ctx->bf16
          && ((cpu_tensor_block (desc->src) == 1 && desc->src->dims.c >= 9)
              || (cpu_tensor_block (desc->dst) == 1 && desc->dst->dims.c >= 9))))
    pd = cpu_try_pd (ctx, desc, smd, dmd, attr, FALSE);
  *fallback = FALSE;
  for (gint step = 2; pd == NULL && step <= 3; step++) {
    *fallback = TRUE;
    cpu_any_md (smd, step == 2 ? smd->data_type : dnnl_f32, &sany);
    cpu_any_md (dmd, step == 2 ? dmd->data_type : dnnl_f32, &dany);
    pd = cpu_try_pd (ctx, desc, &sany, desc->kind == UNET_OP_SIGMOID ? &sany : &dany,
        attr, FALSE);
  }
  if (pd == NULL) {
    *fallback = FALSE;
    pd = cpu_try_pd (ctx, desc, smd, dmd, attr, TRUE);
  }
  return pd;
}

static UnetBackendOp *
cpu_op_new_impl (UnetBackend *be, const UnetOpDesc *desc, GError **error)
{
  CpuCtx *ctx = be->priv;
  UnetBackendOp *op;
  dnnl_primitive_attr_t attr = NULL;
  dnnl_post_ops_t po = NULL;
  dnnl_primitive_desc_t pd = NULL;
  const dnnl_memory_desc_t *psrc, *pdst, *pscr;
  dnnl_memory_desc_t smd, dmd;
  gboolean fallback = FALSE;
  gint prim_threads = 0;        /* the count a Winograd primitive is made for */
  dnnl_status_t pst;

  if (desc->training) {
    op = g_new0 (UnetBackendOp, 1);
    op->ctx = ctx;
    op->kind = desc->kind;
    if ((op->train = cpu_train_op_new (ctx, desc, error)) == NULL) {
      g_free (op);
      return NULL;
    }
    return op;
  }
  if ((desc->kind == UNET_OP_CONV || desc->kind == UNET_OP_UPCONV2)
      && (desc->layer < 0 || desc->layer >= ctx->n_layers)) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "op refers to layer %d of %d", desc->layer, ctx->n_layers);
    return NULL;
  }
  cpu_set_threads (ctx);
  if (desc->kind == UNET_OP_CROP_COPY)
    return cpu_op_new_crop (ctx, desc, error);
  if ((desc->kind == UNET_OP_SOFTMAX || desc->kind == UNET_OP_SIGMOID)
      && cpu_is_plain_f32 (desc->src) && cpu_is_plain_f32 (desc->dst))
    return cpu_op_new_plain (ctx, desc, error);
  /* the backend's own kernels for some shapes; NULL without an error: not for
   * these tensors after all, oneDNN's op below is built instead */
  {
    GError *own = NULL;
    op = NULL;
    if (desc->kind == UNET_OP_UPCONV2 && cpu_upconv_as_1x1 (ctx, desc))
      op = cpu_op_new_upconv (ctx, desc, &own);
    else if (cpu_wino8_wanted (ctx, desc))
      op = cpu_op_new_wino8 (ctx, desc, &own);
    if (own != NULL)
      g_propagate_error (error, own);
    if (op != NULL || own != NULL)
      return op;
  }

  op = g_new0 (UnetBackendOp, 1);
  op->ctx = ctx;
  op->kind = desc->kind;

  DNNL_TRY (dnnl_primitive_attr_create (&attr));
  DNNL_TRY (dnnl_primitive_attr_set_scratchpad_mode (attr, dnnl_scratchpad_mode_user));
  if (desc->kind == UNET_OP_CONV && desc->relu) {
    DNNL_TRY (dnnl_post_ops_create (&po));
    DNNL_TRY (dnnl_post_ops_append_eltwise (po, 1.f, dnnl_eltwise_relu, 0.f, 0.f));
    DNNL_TRY (dnnl_primitive_attr_set_post_ops (attr, po));
  }

  /* Tensor mds: whole tensors, or one image when a view is involved. */
  op->n_images = 1;
  smd = desc->src->md;
  dmd = desc->dst->md;
  op->src_base = cpu_tensor_data (desc->src);
  op->dst_base = cpu_tensor_data (desc->dst);
  if (op->src_base == NULL || op->dst_base == NULL) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_FAILED,
        "CPU backend: tensor used before it was bound to an arena");
    goto fail;
  }
  if ((desc->src->parent != NULL || desc->dst->parent != NULL)
      && !cpu_is_nhwc (desc->src) && !cpu_is_nhwc (desc->dst)) {
    if (!cpu_image (desc->src, &smd, &op->src_base, &op->src_stride, error)
        || !cpu_image (desc->dst, &dmd, &op->dst_base, &op->dst_stride, error))
      goto fail;
    op->n_images = desc->src->dims.n;
  }

  /* the convolution's kernel: measured, by the rule, else cpu_pd_chain */
  if (desc->kind == UNET_OP_CONV && ctx->conv_mode == CPU_CONV_MEASURE
      && !cpu_conv_choose (ctx, desc, &smd, op->src_base, &dmd, op->dst_base, attr,
          &pd, error))
    goto fail;
  if (desc->kind == UNET_OP_CONV && ctx->conv_mode == CPU_CONV_RULE
      && !cpu_is_nhwc (desc->src) && !cpu_is_nhwc (desc->dst)) {
    /* one image at a time (see cpu_wino_rule) */
    dnnl_memory_desc_t smd1, dmd1;
    guint8 *sb, *db;
    gsize ss, ds;
    if (!cpu_image (desc->src, &smd1, &sb, &ss, error)
        || !cpu_image (desc->dst, &dmd1, &db, &ds, error)
        || !cpu_conv_wino (ctx, desc, &smd1, &dmd1, attr, &pd, &prim_threads, error))
      goto fail;
    if (pd != NULL) {
      smd = smd1;
      dmd = dmd1;
      op->src_base = sb;
      op->dst_base = db;
      op->src_stride = ss;
      op->dst_stride = ds;
      op->n_images = desc->src->dims.n;
    }
  }
  if (pd == NULL)
    pd = cpu_pd_chain (ctx, desc, &smd, &dmd, attr, &fallback);
  /* oneDNN's gemm-based convolutions (its path for plain layouts, layers whose
   * channel counts are no multiple of 8) split their sums by the thread count
   * they are configured for (on AVX2, 1 and 2 threads differed by ~1e-6), and
   * every result must be the same bits whatever the thread count (README): they
   * are configured for and run with one thread (small layers: tiny nets only) */
  if (pd != NULL && desc->kind == UNET_OP_CONV) {
    const char *impl = NULL;
    if (dnnl_primitive_desc_query (pd, dnnl_query_impl_info_str, 0, &impl)
        == dnnl_success && impl != NULL && strstr (impl, "gemm") != NULL) {
      dnnl_primitive_desc_destroy (pd);
#if HAVE_OPENMP
      omp_set_num_threads (1);
#endif
      pd = cpu_pd_chain (ctx, desc, &smd, &dmd, attr, &fallback);
      cpu_set_threads (ctx);
      op->serial = 1;
      prim_threads = 1;
    }
  }
  if (pd == NULL) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_BACKEND,
        "oneDNN has no implementation for op %d on %dx%dx%dx%d -> %dx%dx%dx%d",
        desc->kind, desc->src->dims.n, desc->src->dims.c, desc->src->dims.h,
        desc->src->dims.w, desc->dst->dims.n, desc->dst->dims.c, desc->dst->dims.h,
        desc->dst->dims.w);
    goto fail;
  }

  psrc = dnnl_primitive_desc_query_md (pd, dnnl_query_src_md, 0);
  pdst = dnnl_primitive_desc_query_md (pd, dnnl_query_dst_md, 0);
  pscr = dnnl_primitive_desc_query_md (pd, dnnl_query_scratchpad_md, 0);

  /* memories are created without data; cpu_op_forward points them at each image */
  if (fallback && !dnnl_memory_desc_equal (psrc, &smd)) {
    if ((op->tmp_src = cpu_alloc (dnnl_memory_desc_get_size (psrc), error)) == NULL)
      goto fail;
    if (!cpu_reorder_init (ctx, &op->pre, &smd, DNNL_MEMORY_NONE, psrc, op->tmp_src,
            error))
      goto fail;
    DNNL_TRY (dnnl_memory_create (&op->src, psrc, ctx->engine, op->tmp_src));
  } else {
    DNNL_TRY (dnnl_memory_create (&op->src, &smd, ctx->engine, DNNL_MEMORY_NONE));
  }
  if (fallback && !dnnl_memory_desc_equal (pdst, &dmd)) {
    if ((op->tmp_dst = cpu_alloc (dnnl_memory_desc_get_size (pdst), error)) == NULL)
      goto fail;
    if (!cpu_reorder_init (ctx, &op->post, pdst, op->tmp_dst, &dmd, DNNL_MEMORY_NONE,
            error))
      goto fail;
    DNNL_TRY (dnnl_memory_create (&op->dst, pdst, ctx->engine, op->tmp_dst));
  } else {
    DNNL_TRY (dnnl_memory_create (&op->dst, &dmd, ctx->engine, DNNL_MEMORY_NONE));
  }

  if (desc->kind == UNET_OP_CONV || desc->kind == UNET_OP_UPCONV2) {
    CpuLayer *l = &ctx->layers[desc->layer];
    op->weights = cpu_layer_weights (ctx, l,
        dnnl_primitive_desc_query_md (pd, dnnl_query_weights_md, 0), error);
    if (op->weights == NULL)
      goto fail;
    op->bias = l->bias;
  }

  if (!cpu_op_scratch (op, ctx, pscr, error))
    goto fail;
  /* oneDNN's primitive cache keys by the thread count at creation: a Winograd
   * kernel configured for another count must be created under that count */
#if HAVE_OPENMP
  if (prim_threads > 0)
    omp_set_num_threads (prim_threads);
#endif
  pst = dnnl_primitive_create (&op->prim, pd);
  cpu_set_threads (ctx);
  DNNL_TRY (pst);

  if (ctx->profile) {
    const char *impl = NULL;
    dnnl_primitive_desc_query (pd, dnnl_query_impl_info_str, 0, &impl);
    op->label = g_strdup_printf ("%s", impl != NULL ? impl : "?");
  }
  if (g_getenv ("UNET_CPU_VERBOSE")) {
    const char *impl = NULL;
    dnnl_primitive_desc_query (pd, dnnl_query_impl_info_str, 0, &impl);
    g_printerr ("unet-cpu: op %d layer %d %dx%dx%dx%d -> %dx%dx%dx%d: %s%s scratch %zu\n",
        desc->kind, desc->layer, desc->src->dims.n, desc->src->dims.c,
        desc->src->dims.h, desc->src->dims.w, desc->dst->dims.n, desc->dst->dims.c,
        desc->dst->dims.h, desc->dst->dims.w, impl, fallback ? " (reorders)" : "", op->scratch_bytes);
  }

  cpu_op_build_end (pd, attr, po);
  return op;

fail:
  cpu_op_build_end (pd, attr, po);
  cpu_op_free (op);
  return NULL;
}

static const gchar *const cpu_op_names[] = {
  [UNET_OP_CONV] = "conv", [UNET_OP_MAXPOOL2] = "maxpool", [UNET_OP_UPCONV2] = "upconv",
  [UNET_OP_CROP_COPY] = "crop", [UNET_OP_SOFTMAX] = "softmax",
  [UNET_OP_SIGMOID] = "sigmoid", [UNET_OP_BATCHNORM] = "bnorm",
  [UNET_OP_DROPOUT] = "dropout",
};

static UnetBackendOp *
cpu_op_new (UnetBackend *be, const UnetOpDesc *desc, GError **error)
{
  CpuCtx *ctx = be->priv;
  UnetBackendOp *op = cpu_op_new_impl (be, desc, error);

  if (op != NULL && ctx->profile) {
    /* "<kind> [layer L] NxCxHxW -> NxCxHxW <implementation>" */
    gchar *impl = op->label;
    const UnetDims *s = &desc->src->dims, *d = &desc->dst->dims;
    gchar *layer = desc->kind == UNET_OP_CONV || desc->kind == UNET_OP_UPCONV2
        ? g_strdup_printf (" layer %2d", desc->layer) : g_strdup ("         ");
    op->prof_calls = -1;
    op->label = g_strdup_printf ("%-7s%s %dx%dx%dx%d -> %dx%dx%dx%d %s", cpu_op_names[desc->kind],
        layer, s->n, s->c, s->h, s->w, d->n, d->c, d->h, d->w,
        impl != NULL ? impl : op->prim == NULL && op->pre.prim != NULL ? "reorder"
        : "plain C");
    g_free (layer);
    g_free (impl);
  }
  return op;
}

static gboolean
cpu_op_forward_impl (UnetBackendOp *op, GError **error);

static gboolean
cpu_op_forward_training (UnetBackendOp *op, guint64 seed, GError **error)
{
  if (op->train == NULL) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "CPU backend: op_forward_training on an op built for inference");
    return FALSE;
  }
  return cpu_train_op_forward (op->train, seed, error);
}

static gboolean
cpu_op_backward (UnetBackendOp *op, GError **error)
{
  if (op->train == NULL) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "CPU backend: op_backward on an op built for inference");
    return FALSE;
  }
  return cpu_train_op_backward (op->train, error);
}

/* $UNET_CPU_PROFILE=1: the wall time of every op (oneDNN's CPU stream runs the
 * primitive before execute returns) from its second call on, printed per op when
 * the plan is freed. */
static gboolean
cpu_op_forward (UnetBackendOp *op, GError **error)
{
  gint64 t0;
  gboolean ok;

  if (op->label == NULL)
    return cpu_op_forward_impl (op, error);
  t0 = g_get_monotonic_time ();
  ok = cpu_op_forward_impl (op, error);
  if (op->prof_calls < 0) {
    /* the first call pays for page faults in fresh arenas: not counted */
    op->prof_calls = 0;
    return ok;
  }
  op->prof_us += g_get_monotonic_time () - t0;
  op->prof_calls++;
  return ok;
}

static gboolean
cpu_op_forward_impl (UnetBackendOp *op, GError **error)
{
  CpuCtx *ctx = op->ctx;
  dnnl_exec_arg_t args[5];
  int n = 0;

  cpu_set_threads (ctx);
  if (op->train != NULL)
    return cpu_train_op_forward (op->train, 0, error);
  if (op->wino8 != NULL) {
    for (gint b = 0; b < op->n_images; b++)
      cpu_wino8_run (op->wino8, (const gfloat *) (op->src_base + b * op->src_stride),
          (gfloat *) (op->dst_base + b * op->dst_stride));
    return TRUE;
  }
  if (op->prim == NULL && op->pre.prim != NULL)  /* CROP_COPY: one reorder */
    return cpu_reorder_run (ctx, &op->pre, error);
  if (op->prim == NULL) {
    cpu_plain_forward (op);
    return TRUE;
  }

  /* the shared scratchpad may have grown (and moved) since op_new */
  DNNL_TRY (dnnl_memory_set_data_handle (op->scratch, ctx->scratch));
  args[n++] = (dnnl_exec_arg_t) { DNNL_ARG_SRC, op->src };
  args[n++] = (dnnl_exec_arg_t) { DNNL_ARG_DST, op->dst };
  args[n++] = (dnnl_exec_arg_t) { DNNL_ARG_SCRATCHPAD, op->scratch };
  if (op->weights) {
    args[n++] = (dnnl_exec_arg_t) { DNNL_ARG_WEIGHTS, op->weights };
    args[n++] = (dnnl_exec_arg_t) { DNNL_ARG_BIAS, op->bias };
  }
  for (gint b = 0; b < op->n_images; b++) {
    guint8 *s = op->src_base + b * op->src_stride;
    guint8 *d = op->dst_base + b * op->dst_stride;
    dnnl_status_t st;
    DNNL_TRY (dnnl_memory_set_data_handle (op->pre.prim ? op->pre.src : op->src, s));
    DNNL_TRY (dnnl_memory_set_data_handle (op->post.prim ? op->post.dst : op->dst, d));
    if (op->pre.prim && !cpu_reorder_run (ctx, &op->pre, error))
      return FALSE;
#if HAVE_OPENMP
    if (op->serial)
      omp_set_num_threads (1);
#endif
    st = dnnl_primitive_execute (op->prim, ctx->stream, n, args);
    cpu_set_threads (ctx);
    DNNL_TRY (st);
    if (op->post.prim && !cpu_reorder_run (ctx, &op->post, error))
      return FALSE;
  }
  return TRUE;
fail:
  return FALSE;
}

/* ------------------------------------------------------------- transfers -- */

static gboolean
cpu_transfer (UnetBackendTensor *t, gfloat *host, gboolean to_host, GError **error)
{
  CpuCtx *ctx = t->ctx;
  dnnl_memory_desc_t hmd;
  dnnl_memory_t hmem = NULL, tmem = NULL;
  dnnl_dims_t d = { t->dims.n, t->dims.c, t->dims.h, t->dims.w };
  gboolean ok = FALSE;

  cpu_set_threads (ctx);
  DNNL_TRY (dnnl_memory_desc_init_by_tag (&hmd, 4, d, dnnl_f32, dnnl_abcd));
  if (t->parent == NULL && dnnl_memory_desc_equal (&hmd, &t->md)) {
    gsize bytes = dnnl_memory_desc_get_size (&hmd);
    if (cpu_tensor_data (t) == NULL) {
      g_set_error (error, UNET_ERROR, UNET_ERROR_FAILED,
          "CPU backend: tensor used before it was bound to an arena");
      return FALSE;
    }
    if (to_host)
      memcpy (host, t->data, bytes);
    else
      memcpy (t->data, host, bytes);
    return TRUE;
  }
  DNNL_TRY (dnnl_memory_create (&hmem, &hmd, ctx->engine, host));
  if (!cpu_tensor_memory (t, NULL, &tmem, error))
    goto fail;
  ok = to_host ? cpu_reorder_now (ctx, tmem, hmem, error)
      : cpu_reorder_now (ctx, hmem, tmem, error);
fail:
  if (hmem)
    dnnl_memory_destroy (hmem);
  if (tmem)
    dnnl_memory_destroy (tmem);
  return ok;
}

static gboolean
cpu_upload (UnetBackendTensor *t, const gfloat *host, GError **error)
{
  return cpu_transfer (t, (gfloat *) host, FALSE, error);
}

static gboolean
cpu_download (UnetBackendTensor *t, gfloat *host, GError **error)
{
  return cpu_transfer (t, host, TRUE, error);
}

static gboolean
cpu_synchronize (UnetBackend *be, GError **error)
{
  CpuCtx *ctx = be->priv;
  DNNL_TRY (dnnl_stream_wait (ctx->stream));
  return TRUE;
fail:
  return FALSE;
}

/* --------------------------------------------------------------- backend -- */

static void
cpu_free (UnetBackend *be)
{
  CpuCtx *ctx = be->priv;
  cpu_clear_layers (ctx);
  free (ctx->scratch);
  free (ctx->params);
  free (ctx->grads);
  free (ctx->opt_state[0]);
  free (ctx->opt_state[1]);
  g_free (ctx->loss_z);
  g_free (ctx->loss_g);
  if (ctx->stream)
    dnnl_stream_destroy (ctx->stream);
  if (ctx->engine)
    dnnl_engine_destroy (ctx->engine);
  g_free (ctx);
  g_free (be);
}

static const UnetBackendIface cpu_iface = {
  .name = "cpu",
  .free = cpu_free,
  .upload_layers = cpu_upload_layers,
  .tensor_new = cpu_tensor_new,
  .tensor_view = cpu_tensor_view,
  .tensor_free = cpu_tensor_free,
  .tensor_bytes = cpu_tensor_bytes,
  .arena_new = cpu_arena_new,
  .arena_free = cpu_arena_free,
  .tensor_bind = cpu_tensor_bind,
  .op_new = cpu_op_new,
  .op_free = cpu_op_free,
  .op_forward = cpu_op_forward,
  .upload = cpu_upload,
  .download = cpu_download,
  .synchronize = cpu_synchronize,
  .params_set = cpu_params_set,
  .params_get = cpu_params_get,
  .grads_zero = cpu_grads_zero,
  .grads_get = cpu_grads_get,
  .params_host = cpu_params_host,
  .op_forward_training = cpu_op_forward_training,
  .op_backward = cpu_op_backward,
  .loss = cpu_loss,
  .optimizer_update = cpu_optimizer_update,
  .optimizer_state = cpu_optimizer_state,
};

static gint
cpu_default_threads (void)
{
  const gchar *env = g_getenv ("UNET_NUM_THREADS");
  if (env != NULL) {
    gint64 v = g_ascii_strtoll (env, NULL, 10);
    if (v > 0 && v <= 4096)
      return (gint) v;
  }
  return (gint) g_get_num_processors ();
}

/* bf16 without AMX: oneDNN 2.6 then runs bf16 convolutions on its AVX512_BF16
 * (jit_bf16 / brgconv) or plain AVX-512 kernels, and on a Xeon with AVX512_BF16 but
 * AMX not exposed they measured ~2x slower than fp32 (base-32 U-Net, 572x572 tile,
 * 2 threads: 1649 ms nhwc and 2883 ms nChw16c vs 868 ms fp32; tests/bench/
 * RESULTS.md), so fp32 is faster in every layout this backend could pick. */
gchar *
unet_cpu_precision_slower (UnetPrecision precision)
{
  const dnnl_cpu_isa_t isa = dnnl_get_effective_cpu_isa ();
  /* the ISA values are bit sets: each includes the bits of the ISAs it extends */
  const gboolean amx =
      (isa & dnnl_cpu_isa_avx512_core_amx) == dnnl_cpu_isa_avx512_core_amx;

  if (precision != UNET_PRECISION_BF16 || amx)
    return NULL;
  if (cpu_isa_block () != 16)
    return g_strdup_printf ("precision=bf16 is not available on this CPU: oneDNN "
        "uses %s, and its bf16 kernels need AVX-512, so the CPU backend computes in "
        "fp32 (same results within the bf16 tolerance, and faster); set "
        "precision=fp32 to silence this.", dnnl_cpu_isa2str (isa));
  return g_strdup_printf ("precision=bf16 is slower than fp32 on this CPU: it has no "
      "AMX (oneDNN uses %s), and oneDNN's bf16 convolutions without AMX tiles run "
      "about 2x slower than its fp32 ones (measured on AVX512_BF16). bf16 only pays "
      "off on CPUs with AMX (Xeon Sapphire Rapids and later); use precision=fp32.",
      dnnl_cpu_isa2str (isa));
}

UnetBackend *
unet_backend_cpu_new (const UnetNetOptions *opts, GError **error)
{
  UnetBackend *be;
  CpuCtx *ctx;
  const gchar *alg = g_getenv ("UNET_CPU_CONV_ALGO");

  if (opts->precision != UNET_PRECISION_FP32 && opts->precision != UNET_PRECISION_BF16) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "the CPU backend computes in fp32 or bf16 (tf32 and fp16 are CUDA modes)");
    return NULL;
  }
  if (opts->threads < 0) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "thread count must be >= 0 (0 = $UNET_NUM_THREADS or all cores), not %d",
        opts->threads);
    return NULL;
  }
  ctx = g_new0 (CpuCtx, 1);
  be = g_new0 (UnetBackend, 1);
  be->iface = &cpu_iface;
  be->priv = ctx;
  ctx->threads = opts->threads > 0 ? opts->threads : cpu_default_threads ();
  ctx->block = cpu_isa_block ();
  /* bf16 where oneDNN has bf16 kernels (AVX-512 and up); elsewhere fp32, which
   * unet_cpu_precision_slower() tells the user */
  ctx->bf16 = opts->precision == UNET_PRECISION_BF16 && ctx->block == 16;
  ctx->profile = g_strcmp0 (g_getenv ("UNET_CPU_PROFILE"), "1") == 0;
  /* fp32 inference graphs pad every inner channel count to a multiple of 8
   * (graph.h: zero weights, exact zeros): a base-20 net then runs on nChw8c
   * tensors of 24 channels, with the blocked direct and Winograd kernels, where
   * its 20-channel tensors would be plain nchw with slower kernels (oneDNN's gemm
   * convolution on one thread, its reference pooling). 2-core AVX2 EPYC, 572
   * tile, sum of op times: base 20 218 -> 131 ms, base 12 109 -> 55, base 4
   * 66 -> 22 (twice the multiply-adds on its first level, at a third of the
   * time); tests/bench/RESULTS.md. UNET_CPU_PAD_CHANNELS=0 turns it off. */
  be->channel_align = ctx->bf16 || g_strcmp0 (g_getenv ("UNET_CPU_PAD_CHANNELS"), "0") == 0
      ? 1 : 8;
  /* the default is a rule on the shape (cpu_wino_rule): a measured choice could
   * differ between runs and thread counts, which the element tests and the
   * cluster's shards compare bit for bit */
  ctx->conv_mode = CPU_CONV_RULE;
  if (alg == NULL || g_strcmp0 (alg, "") == 0 || g_strcmp0 (alg, "rule") == 0)
    ctx->conv_mode = CPU_CONV_RULE;
  else if (g_strcmp0 (alg, "direct") == 0)
    ctx->conv_mode = CPU_CONV_DIRECT;
  else if (g_strcmp0 (alg, "measure") == 0)
    ctx->conv_mode = CPU_CONV_MEASURE;
  else if (g_strcmp0 (alg, "winograd") == 0)
    ctx->conv_mode = CPU_CONV_WINOGRAD;
  else if (g_strcmp0 (alg, "auto") == 0)
    ctx->conv_mode = CPU_CONV_AUTO;
  else {
    g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
        "UNET_CPU_CONV_ALGO must be rule (default), direct, measure, winograd or auto, "
        "not \"%s\"", alg);
    goto fail;
  }
  DNNL_TRY (dnnl_engine_create (&ctx->engine, dnnl_cpu, 0));
  DNNL_TRY (dnnl_stream_create (&ctx->stream, ctx->engine, dnnl_stream_default_flags));
  return be;
fail:
  cpu_free (be);
  return NULL;
}
