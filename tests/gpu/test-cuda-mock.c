/* The CUDA backend (engine/cuda/cuda-backend.c) against a mock CUDA runtime and cuDNN,
 * on the CPU: the defects a GPU would only show as wrong results, hangs or silent
 * slowness, made visible as recorded calls. The test defines the runtime and cuDNN
 * functions the backend calls and the kernel launchers of cuda-kernels.h; the linker
 * takes these definitions before libcudart / libcudnn, and the archive members with
 * the real kernels are never pulled in. Device memory is host memory; kernels do not
 * run (a launcher records its stream and the device current on the calling thread,
 * and returns the runtime's last error, as launch_status() does).
 *
 * Checked (issue 16):
 *   1. a failed cudaMallocHost does not make the next, successful launch report
 *      out-of-memory (the sticky last error);
 *   2. uploads use cudaMemcpyAsync on the backend's stream, never a blocking
 *      cudaMemcpy on the legacy default stream;
 *   3. every call that touches the device runs with the backend's device (gpu-id 1)
 *      current, from a thread that never called cudaSetDevice itself;
 *   4. frame_begin allocates only the outputs asked for, and the blend weights once
 *      per pixel (not per class);
 *   5. an activation of 2^31 elements or more is refused with a clear error;
 *   6. no host synchronisation in the steady-state frame path (percentile and frame
 *      mean/std normalisation included);
 *   7. a bf16 / fp16 net whose first convolution has 1 input channel, for which the
 *      mock cuDNN (like cuDNN's legacy API may) offers no NHWC 16-bit algorithm, runs
 *      that convolution in f32: conversion kernels around an f32 convolution.
 *
 * Checked (issue 15), a training step of a CUDA net (unet_net_zero_gradients +
 * unet_net_train_forward + unet_net_train_backward: the graph executor over the
 * backend's training ops) of a U-Net with every training op (convolutions, batch
 * norm, pooling, transposed convolutions, crops into concat views, dropout):
 *   8. one execution context: every kernel, memset and cuDNN call of the step runs
 *      on the backend's compute stream with its one cuDNN handle, on its device
 *      (gpu-id 1, from a thread that is on device 0); the step creates no stream,
 *      handle or event and allocates nothing (no second workspace);
 *   9. no parameter or gradient crosses between host and device: the step's only
 *      copies are the input upload, the logits download and the dL/dlogits upload
 *      (the host loss path, which backends without a loss slot take and a caller
 *      handing logits / dL/dlogits in takes; 12. is the step on the device), each
 *      exactly the size of that tensor; fp16 adds one 4-byte read of
 *      the finite flag of its dynamic loss scaling, uploads dL/dlogits multiplied by
 *      the loss scale (65536) and folds the pass into the gradients divided by it;
 *      in 16 bit (fp16, bf16) the first convolution, 1 input channel, for which the
 *      mock has no 16-bit algorithm, runs in f32 forward and backward (as 7.);
 *  10. the ops of every kind are built and run forward and backward (the launch log
 *      has each op's kernels);
 *  11. the gradient paths a U-Net graph does not take, on hand-built ops: a diff_src
 *      accumulated by an op whose kernel cannot add (dropout: result, then add), a
 *      diff_src that is a channel view (written: result, then copied into the view;
 *      accumulated: the view read, added, written back), a crop's diff_src written
 *      whole (zeroed, then its window added), an fp16 convolution whose data
 *      gradient cuDNN refuses at run time (switches to f32 and adds only what is
 *      missing), upload/download of channel views, and descs the backend must
 *      refuse;
 *  12. a whole step on the device (issue 15 item 3: train_forward without logits,
 *      train_loss, zero_gradients, train_backward without dL/dlogits,
 *      optimizer_step; SGD fp32, Adam + soft Dice fp16, AdamW + soft Dice bf16): its
 *      only copies are the input upload, one upload of the batch's weights and labels
 *      (5 bytes a pixel), one read-back of the loss scalars (loss sums, Dice sums,
 *      16 x 16 confusion) and one of the optimiser's two flags (fp16: plus the
 *      fold's flag), all on the compute stream but the input's; no allocation; the
 *      uploaded labels/weights, the gradient scale (1 / sum of weights, times the
 *      fp16 loss scale), the loss and confusion matrix assembled from the scalars
 *      (the mock kernels write known values), the kernels in order; a non-finite
 *      gradient fails the step and changes nothing, a non-finite parameter is
 *      reported; fp16: a backward pass that overflows skips the update (GradScaler)
 *      and halves the scale of the next loss; optimiser state round trip
 *      (checkpoints only); bad labels/weights refused;
 *  13. the same step with the training samples resident on the device (issue 15 item
 *      3, augmentation on the device): unet_net_train_sample_add uploads a sample
 *      once (one copy of image, weights and u8 labels, checked; past the budget
 *      UNET_ERROR_OUT_OF_MEMORY), then a step (unet_net_train_forward_samples, the
 *      loss without labels, backward, optimiser) copies only the draws up (one copy
 *      of B UnetCudaAugSample records, 256-aligned, plus 2 G^2 floats of elastic grid
 *      per entry) and reads back only the loss scalars and the optimiser's flags
 *      (fp16: the fold's flag): no image, label or weight upload, no allocation; the
 *      records carry the draws (unet_augment_draw_local) and point at the resident
 *      sample, the loss reads the targets augment_batch wrote, dL/dlogits is written
 *      with the seed scale alone and normalised on the device by the kernel's own
 *      sum of weights; a loss without labels after a host batch is refused. The
 *      trainer takes that path on a CUDA net: a pair is uploaded when added, an
 *      evicted pair's sample released before the new one is uploaded (a budget of
 *      two samples holds a set of capacity two), a step's copies are the draws and
 *      the scalars, and a pair past the budget sends it back to the host path
 *      (augment_on_device FALSE, the input and targets uploaded per step). */
#include "config.h"

#include "backend.h"
#include "cuda-kernels.h"
#include "model-private.h"
#include "training.h"
#include "unet.h"

#include <cuda_runtime_api.h>
#include <cudnn.h>
#include <glib.h>
#include <string.h>

/* ---------------------------------------------------------- mock state -- */

static __thread int cur_dev = 0;
static __thread cudaError_t last_error = cudaSuccess;
static int expect_dev = -1;             /* >= 0: calls must run on this device */
static int wrong_device;                /* calls that did not */
static int launches, sync_copies, null_stream_copies, stream_syncs;
static int fail_next_malloc_host;
static gsize last_pinned_bytes;
static GArray *device_allocs;           /* gsize, every cudaMalloc */
static GArray *pinned_allocs;           /* gsize, every cudaMallocHost */
static GString *launch_log;             /* launcher names (and "memset"), space
                                           separated */
/* one execution context (issue 15): the handle and the stream it was set to */
static cudnnHandle_t the_handle;
static cudaStream_t the_stream;
static int n_handles, n_streams, n_events;
static int step_on;                     /* inside a training step: log and check */
static int step_wrong_stream, step_wrong_handle, step_mallocs;
static float last_scale_add;            /* scale of the last unet_cuda_scale_add_f32 */
static int data_not_supported;          /* > 0: BackwardData refuses that many calls */
/* the device step (loss, optimiser) */
static float last_xent_scale, last_dice_scale;
static const uint8_t *last_xent_labels;
static const float *last_xent_weights;
static const double *last_xent_out;
static const int *optim_skip;           /* the skip flag the last update kernel got */
static int flag_next_check;             /* > 0: the n-th next check_finite flags */
/* the batch augmented on the device: the last unet_cuda_augment_batch's arguments */
static struct
{
  const UnetCudaAugSample *samples;
  const float *grids;
  int n, channels, in_w, in_h, out_w, out_h, ignore_label;
  void *input;
  uint8_t *labels;
  float *weights;
} last_aug;
static const double *last_weight_sum;   /* of the last unet_cuda_scale_by_weight_sum */
typedef struct
{
  gsize bytes;
  enum cudaMemcpyKind kind;
  cudaStream_t stream;
  float first;                          /* first float of an H2D copy */
} Copy;
static GArray *step_copies;             /* Copy */

static void
on_device (const char *what)
{
  if (expect_dev >= 0 && cur_dev != expect_dev) {
    wrong_device++;
    g_printerr ("%s ran on device %d, not %d\n", what, cur_dev, expect_dev);
  }
}

static cudaError_t
fail_with (cudaError_t err)
{
  last_error = err;
  return err;
}

static void
on_stream (const char *what, cudaStream_t stream)
{
  if (step_on && stream != the_stream) {
    step_wrong_stream++;
    g_printerr ("%s ran on stream %p, not the backend's %p\n", what, (void *) stream,
        (void *) the_stream);
  }
}

static void
on_handle (const char *what, cudnnHandle_t h)
{
  on_device (what);
  if (step_on && h != the_handle) {
    step_wrong_handle++;
    g_printerr ("%s used cuDNN handle %p, not the backend's %p\n", what, (void *) h,
        (void *) the_handle);
  }
}

static int
mock_launch (const char *what, UnetCudaStream stream)
{
  on_device (what);
  on_stream (what, (cudaStream_t) stream);
  launches++;
  g_string_append_printf (launch_log, "%s ", what);
  (void) stream;
  /* launch_status (): the runtime's last error, which the launch itself clears */
  cudaError_t err = last_error;
  last_error = cudaSuccess;
  return (int) err;
}

/* ---------------------------------------------------- CUDA runtime mock -- */

cudaError_t
cudaGetDeviceCount (int *count)
{
  *count = 2;
  return cudaSuccess;
}

cudaError_t
cudaGetDeviceProperties (struct cudaDeviceProp *prop, int device)
{
  memset (prop, 0, sizeof *prop);
  g_snprintf (prop->name, sizeof prop->name, "mock GPU %d", device);
  prop->major = 9;
  prop->minor = 0;
  prop->totalGlobalMem = (size_t) 80 << 30;
  return cudaSuccess;
}

cudaError_t
cudaSetDevice (int device)
{
  if (device < 0 || device > 1)
    return fail_with (cudaErrorInvalidDevice);
  cur_dev = device;
  return cudaSuccess;
}

cudaError_t
cudaGetLastError (void)
{
  cudaError_t err = last_error;
  last_error = cudaSuccess;
  return err;
}

cudaError_t
cudaPeekAtLastError (void)
{
  return last_error;
}

const char *
cudaGetErrorString (cudaError_t err)
{
  return err == cudaErrorMemoryAllocation ? "out of memory" : "mock error";
}

const char *
cudaGetErrorName (cudaError_t err)
{
  return err == cudaErrorMemoryAllocation ? "cudaErrorMemoryAllocation" : "cudaErrorMock";
}

cudaError_t
cudaStreamCreateWithFlags (cudaStream_t *stream, unsigned int flags)
{
  on_device ("cudaStreamCreateWithFlags");
  n_streams++;
  *stream = (cudaStream_t) g_malloc0 (16);
  return cudaSuccess;
}

cudaError_t
cudaStreamDestroy (cudaStream_t stream)
{
  g_free (stream);
  return cudaSuccess;
}

cudaError_t
cudaStreamSynchronize (cudaStream_t stream)
{
  on_device ("cudaStreamSynchronize");
  stream_syncs++;
  return cudaSuccess;
}

cudaError_t
cudaStreamWaitEvent (cudaStream_t stream, cudaEvent_t event, unsigned int flags)
{
  on_device ("cudaStreamWaitEvent");
  return cudaSuccess;
}

cudaError_t
cudaEventCreateWithFlags (cudaEvent_t *event, unsigned int flags)
{
  on_device ("cudaEventCreateWithFlags");
  n_events++;
  *event = (cudaEvent_t) g_malloc0 (16);
  return cudaSuccess;
}

cudaError_t
cudaEventDestroy (cudaEvent_t event)
{
  g_free (event);
  return cudaSuccess;
}

cudaError_t
cudaEventRecord (cudaEvent_t event, cudaStream_t stream)
{
  on_device ("cudaEventRecord");
  return cudaSuccess;
}

cudaError_t
cudaEventSynchronize (cudaEvent_t event)
{
  return cudaSuccess;
}

cudaError_t
cudaMalloc (void **ptr, size_t bytes)
{
  on_device ("cudaMalloc");
  step_mallocs += step_on;
  *ptr = g_malloc0 (bytes);
  g_array_append_val (device_allocs, bytes);
  return cudaSuccess;
}

cudaError_t
cudaFree (void *ptr)
{
  g_free (ptr);
  return cudaSuccess;
}

cudaError_t
cudaMallocHost (void **ptr, size_t bytes)
{
  on_device ("cudaMallocHost");
  if (fail_next_malloc_host) {
    fail_next_malloc_host = 0;
    *ptr = NULL;
    return fail_with (cudaErrorMemoryAllocation);
  }
  *ptr = g_malloc0 (bytes);
  last_pinned_bytes = bytes;
  g_array_append_val (pinned_allocs, bytes);
  return cudaSuccess;
}

cudaError_t
cudaFreeHost (void *ptr)
{
  g_free (ptr);
  return cudaSuccess;
}

cudaError_t
cudaMemcpy (void *dst, const void *src, size_t bytes, enum cudaMemcpyKind kind)
{
  on_device ("cudaMemcpy");
  sync_copies++;
  memcpy (dst, src, bytes);
  return cudaSuccess;
}

cudaError_t
cudaMemcpyAsync (void *dst, const void *src, size_t bytes, enum cudaMemcpyKind kind,
    cudaStream_t stream)
{
  on_device ("cudaMemcpyAsync");
  if (stream == NULL)
    null_stream_copies++;
  memcpy (dst, src, bytes);
  if (step_on) {
    Copy c = { bytes, kind, stream, 0.0f };
    if (kind == cudaMemcpyHostToDevice && bytes >= sizeof (float))
      memcpy (&c.first, dst, sizeof (float));
    g_array_append_val (step_copies, c);
  }
  return cudaSuccess;
}

cudaError_t
cudaMemsetAsync (void *ptr, int value, size_t bytes, cudaStream_t stream)
{
  on_device ("cudaMemsetAsync");
  on_stream ("cudaMemsetAsync", stream);
  g_string_append (launch_log, "memset ");
  memset (ptr, value, bytes);
  return cudaSuccess;
}

cudaError_t
cudaMemGetInfo (size_t *free_b, size_t *total_b)
{
  on_device ("cudaMemGetInfo");
  *free_b = (size_t) 64 << 30;
  *total_b = (size_t) 80 << 30;
  return cudaSuccess;
}

/* -------------------------------------------------------------- cuDNN mock -- */

#define MOCK_CREATE(fn, type)                                                     \
  cudnnStatus_t fn (type *d) { *d = (type) g_malloc0 (16); return CUDNN_STATUS_SUCCESS; }
#define MOCK_DESTROY(fn, type)                                                    \
  cudnnStatus_t fn (type d) { g_free (d); return CUDNN_STATUS_SUCCESS; }

/* descriptors remember (data type, channels): the algorithm mock needs them */
typedef struct
{
  int dtype, c;
} MockDesc;

MOCK_CREATE (cudnnCreateTensorDescriptor, cudnnTensorDescriptor_t)
MOCK_DESTROY (cudnnDestroyTensorDescriptor, cudnnTensorDescriptor_t)
MOCK_CREATE (cudnnCreateFilterDescriptor, cudnnFilterDescriptor_t)
MOCK_DESTROY (cudnnDestroyFilterDescriptor, cudnnFilterDescriptor_t)
MOCK_CREATE (cudnnCreateConvolutionDescriptor, cudnnConvolutionDescriptor_t)
MOCK_DESTROY (cudnnDestroyConvolutionDescriptor, cudnnConvolutionDescriptor_t)
MOCK_CREATE (cudnnCreateActivationDescriptor, cudnnActivationDescriptor_t)
MOCK_DESTROY (cudnnDestroyActivationDescriptor, cudnnActivationDescriptor_t)

cudnnStatus_t
cudnnCreate (cudnnHandle_t *h)
{
  on_device ("cudnnCreate");
  n_handles++;
  *h = (cudnnHandle_t) g_malloc0 (16);
  the_handle = *h;
  return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t
cudnnDestroy (cudnnHandle_t h)
{
  g_free (h);
  return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t
cudnnSetStream (cudnnHandle_t h, cudaStream_t s)
{
  the_stream = s;
  return CUDNN_STATUS_SUCCESS;
}

size_t
cudnnGetVersion (void)
{
  return 90000;
}

const char *
cudnnGetErrorString (cudnnStatus_t st)
{
  return "mock cuDNN error";
}

cudnnStatus_t
cudnnSetTensor4dDescriptorEx (cudnnTensorDescriptor_t d, cudnnDataType_t t, int n, int c,
    int h, int w, int ns, int cs, int hs, int ws)
{
  ((MockDesc *) d)->dtype = t;
  ((MockDesc *) d)->c = c;
  return n > 0 && c > 0 && h > 0 && w > 0 && ns > 0 && hs > 0 ? CUDNN_STATUS_SUCCESS
      : CUDNN_STATUS_BAD_PARAM;
}

cudnnStatus_t
cudnnSetTensor4dDescriptor (cudnnTensorDescriptor_t d, cudnnTensorFormat_t f,
    cudnnDataType_t t, int n, int c, int h, int w)
{
  return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t
cudnnSetFilter4dDescriptor (cudnnFilterDescriptor_t d, cudnnDataType_t t,
    cudnnTensorFormat_t f, int k, int c, int h, int w)
{
  return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t
cudnnSetConvolution2dDescriptor (cudnnConvolutionDescriptor_t d, int ph, int pw, int sh,
    int sw, int dh, int dw, cudnnConvolutionMode_t m, cudnnDataType_t t)
{
  return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t
cudnnSetConvolutionMathType (cudnnConvolutionDescriptor_t d, cudnnMathType_t m)
{
  return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t
cudnnSetActivationDescriptor (cudnnActivationDescriptor_t d, cudnnActivationMode_t m,
    cudnnNanPropagation_t n, double coef)
{
  return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t
cudnnFindConvolutionForwardAlgorithmEx (cudnnHandle_t h, const cudnnTensorDescriptor_t x,
    const void *xp, const cudnnFilterDescriptor_t w, const void *wp,
    const cudnnConvolutionDescriptor_t c, const cudnnTensorDescriptor_t y, void *yp,
    const int req, int *got, cudnnConvolutionFwdAlgoPerf_t *perf, void *ws, size_t wsb)
{
  return CUDNN_STATUS_NOT_SUPPORTED;    /* the heuristics path below */
}

cudnnStatus_t
cudnnGetConvolutionForwardAlgorithm_v7 (cudnnHandle_t h, const cudnnTensorDescriptor_t x,
    const cudnnFilterDescriptor_t w, const cudnnConvolutionDescriptor_t c,
    const cudnnTensorDescriptor_t y, const int req, int *got,
    cudnnConvolutionFwdAlgoPerf_t *perf)
{
  const MockDesc *xd = (const MockDesc *) x;
  memset (perf, 0, sizeof *perf);
  /* no NHWC algorithm for 16-bit data with a channel count that is no multiple of 8 */
  perf[0].status = xd->dtype != CUDNN_DATA_FLOAT && xd->c % 8 != 0 ?
      CUDNN_STATUS_NOT_SUPPORTED : CUDNN_STATUS_SUCCESS;
  *got = 1;
  return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t
cudnnConvolutionBiasActivationForward (cudnnHandle_t h, const void *a1,
    const cudnnTensorDescriptor_t x, const void *xp, const cudnnFilterDescriptor_t w,
    const void *wp, const cudnnConvolutionDescriptor_t c, cudnnConvolutionFwdAlgo_t algo,
    void *ws, size_t wsb, const void *a2, const cudnnTensorDescriptor_t z, const void *zp,
    const cudnnTensorDescriptor_t b, const void *bp, const cudnnActivationDescriptor_t act,
    const cudnnTensorDescriptor_t y, void *yp)
{
  on_handle ("cudnnConvolutionBiasActivationForward", h);
  return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t
cudnnConvolutionForward (cudnnHandle_t h, const void *a1, const cudnnTensorDescriptor_t x,
    const void *xp, const cudnnFilterDescriptor_t w, const void *wp,
    const cudnnConvolutionDescriptor_t c, cudnnConvolutionFwdAlgo_t algo, void *ws,
    size_t wsb, const void *a2, const cudnnTensorDescriptor_t y, void *yp)
{
  on_handle ("cudnnConvolutionForward", h);
  return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t
cudnnConvolutionBackwardData (cudnnHandle_t h, const void *alpha,
    const cudnnFilterDescriptor_t w, const void *wp, const cudnnTensorDescriptor_t dy,
    const void *dyp, const cudnnConvolutionDescriptor_t c, cudnnConvolutionBwdDataAlgo_t algo,
    void *ws, size_t wsb, const void *beta, const cudnnTensorDescriptor_t dx, void *dxp)
{
  on_handle ("cudnnConvolutionBackwardData", h);
  if (data_not_supported > 0) {
    data_not_supported--;
    return CUDNN_STATUS_NOT_SUPPORTED;
  }
  return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t
cudnnConvolutionBackwardFilter (cudnnHandle_t h, const void *alpha,
    const cudnnTensorDescriptor_t x, const void *xp, const cudnnTensorDescriptor_t dy,
    const void *dyp, const cudnnConvolutionDescriptor_t c,
    cudnnConvolutionBwdFilterAlgo_t algo, void *ws, size_t wsb, const void *beta,
    const cudnnFilterDescriptor_t dw, void *dwp)
{
  on_handle ("cudnnConvolutionBackwardFilter", h);
  return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t
cudnnFindConvolutionBackwardDataAlgorithmEx (cudnnHandle_t h,
    const cudnnFilterDescriptor_t w, const void *wp, const cudnnTensorDescriptor_t dy,
    const void *dyp, const cudnnConvolutionDescriptor_t c, const cudnnTensorDescriptor_t dx,
    void *dxp, const int req, int *got, cudnnConvolutionBwdDataAlgoPerf_t *perf, void *ws,
    size_t wsb)
{
  return CUDNN_STATUS_NOT_SUPPORTED;    /* the heuristics path below */
}

cudnnStatus_t
cudnnFindConvolutionBackwardFilterAlgorithmEx (cudnnHandle_t h,
    const cudnnTensorDescriptor_t x, const void *xp, const cudnnTensorDescriptor_t dy,
    const void *dyp, const cudnnConvolutionDescriptor_t c, const cudnnFilterDescriptor_t dw,
    void *dwp, const int req, int *got, cudnnConvolutionBwdFilterAlgoPerf_t *perf, void *ws,
    size_t wsb)
{
  return CUDNN_STATUS_NOT_SUPPORTED;
}

cudnnStatus_t
cudnnGetConvolutionBackwardDataAlgorithm_v7 (cudnnHandle_t h,
    const cudnnFilterDescriptor_t w, const cudnnTensorDescriptor_t dy,
    const cudnnConvolutionDescriptor_t c, const cudnnTensorDescriptor_t dx, const int req,
    int *got, cudnnConvolutionBwdDataAlgoPerf_t *perf)
{
  memset (perf, 0, sizeof *perf);
  perf[0].status = CUDNN_STATUS_SUCCESS;
  perf[0].determinism = CUDNN_DETERMINISTIC;
  *got = 1;
  return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t
cudnnGetConvolutionBackwardFilterAlgorithm_v7 (cudnnHandle_t h,
    const cudnnTensorDescriptor_t x, const cudnnTensorDescriptor_t dy,
    const cudnnConvolutionDescriptor_t c, const cudnnFilterDescriptor_t dw, const int req,
    int *got, cudnnConvolutionBwdFilterAlgoPerf_t *perf)
{
  memset (perf, 0, sizeof *perf);
  perf[0].status = CUDNN_STATUS_SUCCESS;
  perf[0].determinism = CUDNN_DETERMINISTIC;
  *got = 1;
  return CUDNN_STATUS_SUCCESS;
}

/* ------------------------------------------------- kernel launcher mocks -- */

size_t
unet_cuda_dtype_size (UnetCudaDType dtype)
{
  return dtype == UNET_CUDA_F32 ? 4 : 2;
}

int
unet_cuda_mirror_index (int i, int n)
{
  (void) i;
  (void) n;
  return 0;
}

int
unet_cuda_extract_tiles (const void *frame, UnetCudaPixel format, int width, int height,
    size_t stride, int channels, const int *origin_x, const int *origin_y, int n_tiles,
    int tile_w, int tile_h, float offset, float scale, void *out, UnetCudaDType dtype,
    UnetCudaStream stream)
{
  return mock_launch ("extract_tiles", stream);
}

int
unet_cuda_extract_tiles_params (const void *frame, UnetCudaPixel format, int width,
    int height, size_t stride, int channels, const int *origin_x, const int *origin_y,
    int n_tiles, int tile_w, int tile_h, float offset, float scale, const float *params,
    void *out, UnetCudaDType dtype, UnetCudaStream stream)
{
  return mock_launch ("extract_tiles_params", stream);
}

int
unet_cuda_stitch_blocks (const void *logits, UnetCudaDType dtype, int n_tiles, int out_h,
    int out_w, int classes, const UnetCudaBlock *blocks, uint8_t *labels,
    size_t labels_stride, float *probs, size_t probs_stride, int prob_class,
    UnetCudaStream stream)
{
  return mock_launch ("stitch_blocks", stream);
}

int
unet_cuda_accumulate_blocks (const void *logits, UnetCudaDType dtype, int n_tiles,
    int out_h, int out_w, int classes, const UnetCudaBlock *blocks, float sigma_frac,
    float *acc, float *wsum, int frame_w, int frame_h, UnetCudaStream stream)
{
  return mock_launch ("accumulate_blocks", stream);
}

int
unet_cuda_finalize_blend (const float *acc, const float *wsum, int frame_w, int frame_h,
    int classes, uint8_t *labels, size_t labels_stride, float *probs, size_t probs_stride,
    int prob_class, UnetCudaStream stream)
{
  return mock_launch ("finalize_blend", stream);
}

int
unet_cuda_histogram (const void *frame, UnetCudaPixel format, int width, int height,
    size_t stride, int channels, uint32_t *hist, UnetCudaStream stream)
{
  return mock_launch ("histogram", stream);
}

int
unet_cuda_frame_moments (const void *frame, UnetCudaPixel format, int width, int height,
    size_t stride, int channels, double *partials, double *sums, UnetCudaStream stream)
{
  return mock_launch ("frame_moments", stream);
}

int
unet_cuda_percentile_params (const uint32_t *hist, int bins, uint64_t n, double p_lo,
    double p_hi, float *params, UnetCudaStream stream)
{
  return mock_launch ("percentile_params", stream);
}

int
unet_cuda_moments_params (const double *sums, uint64_t n, float *params,
    UnetCudaStream stream)
{
  return mock_launch ("moments_params", stream);
}

int
unet_cuda_nchw_to_nhwc (const float *src, void *dst, UnetCudaDType dtype, int n, int c,
    int h, int w, UnetCudaStream stream)
{
  return mock_launch ("nchw_to_nhwc", stream);
}

int
unet_cuda_nhwc_to_nchw (const void *src, UnetCudaDType dtype, float *dst, int n, int c,
    int h, int w, UnetCudaStream stream)
{
  return mock_launch ("nhwc_to_nchw", stream);
}

int
unet_cuda_cast_from_f32 (const float *src, void *dst, UnetCudaDType dtype, size_t count,
    UnetCudaStream stream)
{
  return mock_launch ("cast_from_f32", stream);
}

int
unet_cuda_cast_to_f32 (const void *src, UnetCudaDType dtype, float *dst, size_t count,
    UnetCudaStream stream)
{
  return mock_launch ("cast_to_f32", stream);
}

int
unet_cuda_bias_act (const void *x, void *y, UnetCudaDType dtype, const float *bias,
    size_t count, int channels, int relu, UnetCudaStream stream)
{
  return mock_launch ("bias_act", stream);
}

int
unet_cuda_relu_backward (const void *y, const void *dy, void *dx, UnetCudaDType dtype,
    size_t count, UnetCudaStream stream)
{
  return mock_launch ("relu_backward", stream);
}

int
unet_cuda_bias_grad (const void *dy, UnetCudaDType dtype, size_t rows, int channels,
    float *db, int accumulate, double *partials, UnetCudaStream stream)
{
  return mock_launch ("bias_grad", stream);
}

int
unet_cuda_channel_affine (const void *x, void *y, UnetCudaDType dtype, const float *scale,
    const float *shift, size_t count, int channels, int relu, UnetCudaStream stream)
{
  return mock_launch ("channel_affine", stream);
}

int
unet_cuda_batchnorm_forward_train (const void *x, void *y, UnetCudaDType dtype, size_t rows,
    int channels, const float *gamma, const float *beta, float eps, float momentum,
    float *running_mean, float *running_var, float *save_mean, float *save_invstd,
    double *partials, UnetCudaStream stream)
{
  return mock_launch ("batchnorm_forward_train", stream);
}

int
unet_cuda_batchnorm_backward (const void *x, const void *dy, void *dx, UnetCudaDType dtype,
    size_t rows, int channels, const float *gamma, const float *save_mean,
    const float *save_invstd, float *dgamma, float *dbeta, double *partials,
    UnetCudaStream stream)
{
  return mock_launch ("batchnorm_backward", stream);
}

int
unet_cuda_dropout (const void *x, void *y, UnetCudaDType dtype, size_t count, float p,
    uint64_t seed, UnetCudaStream stream)
{
  return mock_launch ("dropout", stream);
}

int
unet_cuda_maxpool_forward (const void *x, void *y, uint8_t *argmax, UnetCudaDType dtype,
    int n, int h, int w, int c, UnetCudaStream stream)
{
  return mock_launch ("maxpool_forward", stream);
}

int
unet_cuda_maxpool_backward (const void *dy, const uint8_t *argmax, void *dx,
    UnetCudaDType dtype, int n, int h, int w, int c, int accumulate, UnetCudaStream stream)
{
  return mock_launch ("maxpool_backward", stream);
}

int
unet_cuda_crop_concat (const void *a, int ha, int wa, int ca, int off_y, int off_x,
    const void *b, int cb, void *out, UnetCudaDType dtype, int n, int h, int w,
    UnetCudaStream stream)
{
  return mock_launch ("crop_concat", stream);
}

int
unet_cuda_crop_concat_backward (const void *dout, void *da, int ha, int wa, int ca,
    int off_y, int off_x, void *db, int cb, UnetCudaDType dtype, int n, int h, int w,
    UnetCudaStream stream)
{
  return mock_launch ("crop_concat_backward", stream);
}

int
unet_cuda_copy_window (const void *src, int src_h, int src_w, int src_stride, int src_off,
    int y0, int x0, void *dst, int dst_stride, int dst_off, int n, int h, int w, int c,
    const float *bias, UnetCudaDType dtype, UnetCudaStream stream)
{
  return mock_launch ("copy_window", stream);
}

int
unet_cuda_window_add (const void *src, int src_stride, int src_off, void *dst, int dst_h,
    int dst_w, int dst_stride, int dst_off, int y0, int x0, int n, int h, int w, int c,
    UnetCudaDType dtype, UnetCudaStream stream)
{
  return mock_launch ("window_add", stream);
}

int
unet_cuda_softmax (const void *x, void *y, UnetCudaDType dtype, size_t pixels, int classes,
    UnetCudaStream stream)
{
  return mock_launch ("softmax", stream);
}

int
unet_cuda_add (const void *x, void *y, UnetCudaDType dtype, size_t count,
    UnetCudaStream stream)
{
  return mock_launch ("add", stream);
}

int
unet_cuda_weighted_xent (const void *logits, UnetCudaDType dtype, const uint8_t *labels,
    const float *weights, size_t n_pix, int classes, int ignore_label, float grad_scale,
    float *grad, double *partials, double *out, UnetCudaStream stream)
{
  /* what the host reads back: a loss sum of 3 (and the kernel's weight sum) */
  out[0] = 3.0;
  out[1] = 1e9;
  last_xent_scale = grad_scale;
  last_xent_out = out;
  last_xent_labels = labels;
  last_xent_weights = weights;
  return mock_launch ("weighted_xent", stream);
}

int
unet_cuda_optim_sgd (float *params, const float *grads, float *momentum_buf, size_t count,
    double lr, double momentum, double weight_decay, int nesterov, int first,
    const int *skip, UnetCudaStream stream)
{
  optim_skip = skip;
  return mock_launch ("optim_sgd", stream);
}

int
unet_cuda_optim_adam (float *params, const float *grads, float *m, float *v, size_t count,
    double lr, double beta1, double beta2, double eps, double weight_decay, int decoupled,
    double step_size, double bc2_sqrt, const int *skip, UnetCudaStream stream)
{
  optim_skip = skip;
  return mock_launch ("optim_adam", stream);
}

int
unet_cuda_confusion (const void *logits, UnetCudaDType dtype, const uint8_t *labels,
    size_t n_pix, int classes, int ignore_label, unsigned long long *confusion,
    UnetCudaStream stream)
{
  /* a recognisable matrix for the read-back: cell [l][p] = 100 l + p + 1 */
  for (int l = 0; l < 16; l++)
    for (int p = 0; p < 16; p++)
      confusion[l * 16 + p] = (unsigned long long) (100 * l + p + 1);
  return mock_launch ("confusion", stream);
}

int
unet_cuda_dice_sums (const void *logits, UnetCudaDType dtype, const uint8_t *labels,
    size_t n_pix, int classes, int ignore_label, double *partials, double *sums,
    UnetCudaStream stream)
{
  /* intersection 1, probability sum 2, label count 3 for every class */
  for (int c = 0; c < 16; c++) {
    sums[c] = 1.0;
    sums[16 + c] = 2.0;
    sums[32 + c] = 3.0;
  }
  return mock_launch ("dice_sums", stream);
}

int
unet_cuda_dice_grad (const void *logits, UnetCudaDType dtype, const uint8_t *labels,
    size_t n_pix, int classes, int ignore_label, const double *sums, float scale,
    float *grad, UnetCudaStream stream)
{
  last_dice_scale = scale;
  return mock_launch ("dice_grad", stream);
}

int
unet_cuda_check_finite (const void *x, UnetCudaDType dtype, size_t count, int *flag,
    UnetCudaStream stream)
{
  if (flag_next_check > 0 && --flag_next_check == 0)
    *flag = 1;
  return mock_launch ("check_finite", stream);
}

int
unet_cuda_warp_sample (const float *image, int channels, const uint8_t *labels,
    const float *weights, int src_w, int src_h, const UnetCudaWarp *warp, float *out_image,
    uint8_t *out_labels, float *out_weights, int out_w, int out_h, UnetCudaStream stream)
{
  return mock_launch ("warp_sample", stream);
}

int
unet_cuda_augment_batch (const UnetCudaAugSample *samples, const float *grids, int n,
    int channels, int in_w, int in_h, int out_w, int out_h, int ignore_label, float *tile,
    double *stats, void *input, UnetCudaDType dtype, uint8_t *labels, float *weights,
    UnetCudaStream stream)
{
  last_aug.samples = samples;
  last_aug.grids = grids;
  last_aug.n = n;
  last_aug.channels = channels;
  last_aug.in_w = in_w;
  last_aug.in_h = in_h;
  last_aug.out_w = out_w;
  last_aug.out_h = out_h;
  last_aug.ignore_label = ignore_label;
  last_aug.input = input;
  last_aug.labels = labels;
  last_aug.weights = weights;
  return mock_launch ("augment_batch", stream);
}

int
unet_cuda_scale_by_weight_sum (float *x, size_t count, const double *sum,
    UnetCudaStream stream)
{
  last_weight_sum = sum;
  return mock_launch ("scale_by_weight_sum", stream);
}

int
unet_cuda_filter_grad_accumulate (const void *src, UnetCudaDType dtype, float *dst, int a,
    int b, int kk, float scale, UnetCudaStream stream)
{
  return mock_launch ("filter_grad_accumulate", stream);
}

int
unet_cuda_scale_add_f32 (const float *x, float *y, size_t count, float scale,
    UnetCudaStream stream)
{
  last_scale_add = scale;
  return mock_launch ("scale_add_f32", stream);
}

/* ------------------------------------------------------------------ tests -- */

/* Every backend call below goes through ON_OTHER_DEVICE: another element of the
 * pipeline (gpu-id 0) ran on this thread just before, so the backend cannot rely on
 * the device it selected in an earlier call. */
#define ON_OTHER_DEVICE(call) (cudaSetDevice (0), (call))

typedef struct
{
  UnetBackend *be;
  UnetBackendTensor *input, *logits;
  UnetBackendArena *arena;
} Fixture;

static UnetBackendTensor *
bound_tensor (Fixture *fx, gint n, gint c, gint h, gint w, gsize offset)
{
  GError *error = NULL;
  UnetDims d = { n, c, h, w };
  UnetBackendTensor *t = fx->be->iface->tensor_new (fx->be, &d, &error);
  g_assert_no_error (error);
  fx->be->iface->tensor_bind (t, fx->arena, offset);
  return t;
}

static gboolean
frame_pass (Fixture *fx, UnetBackendFrames *fr, gint slot, const guint16 *frame, gint w,
    gint h, const UnetNormalization *norm, gboolean blend, guint8 *labels, GError **error)
{
  const UnetBackendIface *be = fx->be->iface;
  const gint ox[2] = { -3, 5 }, oy[2] = { -3, 4 };
  const gint blocks[12] = { 0, 0, 0, 0, 4, 4, 0, 0, 4, 4, 4, 4 };
  return ON_OTHER_DEVICE (be->frame_upload (fr, slot, UNET_PIXEL_U16, frame, w, h,
          (gsize) w * 2, error))
      && ON_OTHER_DEVICE (be->frame_normalize (fr, slot, norm, error))
      && ON_OTHER_DEVICE (be->frame_begin (fr, slot, 2, TRUE, -1, blend, error))
      && ON_OTHER_DEVICE (be->frame_extract (fr, slot, ox, oy, 2, 0, fx->input, error))
      && ON_OTHER_DEVICE (be->frame_stitch (fr, slot, fx->logits, 0, 2, blocks, blend, error))
      && ON_OTHER_DEVICE (be->frame_download (fr, slot, labels, NULL, error));
}

static gpointer
run_backend (gpointer data)
{
  Fixture *fx = data;
  const UnetBackendIface *be = fx->be->iface;
  GError *error = NULL;
  const gint w = 16, h = 12;
  guint16 frame[16 * 12];
  guint8 labels[16 * 12];
  UnetNormalization pct = { UNET_NORM_PERCENTILE, 1.0, 99.8 };
  UnetNormalization fms = { UNET_NORM_FRAME_MEAN_STD, 0.0, 0.0 };

  for (gint i = 0; i < w * h; i++)
    frame[i] = (guint16) (i * 37 % 4096);
  /* this thread never selected a device: the backend must, on every entry point */
  g_assert_cmpint (cur_dev, ==, 0);

  /* 2. weights: asynchronous copies on the backend's stream */
  const gfloat weight[2 * 1 * 3 * 3] = { 0 }, bias[2] = { 0.5f, -0.5f };
  UnetLayerParams layer = { UNET_LAYER_CONV, 1, 2, 3, weight, bias };
  g_assert_true (ON_OTHER_DEVICE (be->upload_layers (fx->be, &layer, 1, &error)));
  g_assert_no_error (error);
  g_assert_cmpint (sync_copies, ==, 0);
  g_assert_cmpint (null_stream_copies, ==, 0);

  /* a convolution and the frame path (tiles 8x8 -> logits 4x4, 2 classes) */
  fx->arena = ON_OTHER_DEVICE (be->arena_new (fx->be, 1 << 20, &error));
  g_assert_no_error (error);
  fx->input = bound_tensor (fx, 2, 1, 8, 8, 0);
  fx->logits = bound_tensor (fx, 2, 2, 6, 6, 65536);
  UnetOpDesc conv = { .kind = UNET_OP_CONV, .layer = 0, .pad = 0, .relu = TRUE,
    .src = fx->input, .dst = fx->logits };
  UnetBackendOp *op = ON_OTHER_DEVICE (be->op_new (fx->be, &conv, &error));
  g_assert_no_error (error);
  g_assert_true (ON_OTHER_DEVICE (be->op_forward (op, &error)));
  g_assert_true (ON_OTHER_DEVICE (be->synchronize (fx->be, &error)));
  g_assert_no_error (error);

  UnetBackendFrames *fr = ON_OTHER_DEVICE (be->frames_new (fx->be, 3, &error));
  g_assert_no_error (error);

  /* 4. labels only: pinned and device outputs of n bytes, no probability buffers */
  g_array_set_size (pinned_allocs, 0);
  g_array_set_size (device_allocs, 0);
  g_assert_true (frame_pass (fx, fr, 0, frame, w, h, &pct, FALSE, labels, &error));
  g_assert_no_error (error);
  g_assert_true (ON_OTHER_DEVICE (be->frame_wait (fr, 0, &error)));
  for (guint i = 0; i < pinned_allocs->len; i++) {
    gsize b = g_array_index (pinned_allocs, gsize, i);
    g_assert_true (b == (gsize) w * h * 2 /* the raw frame */ || b == (gsize) w * h);
  }
  for (guint i = 0; i < device_allocs->len; i++)
    g_assert_cmpuint (g_array_index (device_allocs, gsize, i), <=, (gsize) w * h * 2);
  /* blending: acc of classes x n floats, weights of n floats */
  g_array_set_size (device_allocs, 0);
  g_assert_true (frame_pass (fx, fr, 1, frame, w, h, &fms, TRUE, labels, &error));
  g_assert_no_error (error);
  gboolean acc_seen = FALSE;
  for (guint i = 0; i < device_allocs->len; i++) {
    gsize b = g_array_index (device_allocs, gsize, i);
    acc_seen |= b == (gsize) 2 * w * h * sizeof (float);
    g_assert_cmpuint (b, <=, (gsize) 2 * w * h * sizeof (float));
  }
  g_assert_true (acc_seen);
  g_assert_cmpuint (g_array_index (device_allocs, gsize, device_allocs->len - 1), ==,
      (gsize) w * h * sizeof (float));
  g_assert_true (ON_OTHER_DEVICE (be->frame_wait (fr, 1, &error)));

  /* 6. steady state: a frame in a slot already sized, percentile and frame mean/std,
   * stitched and blended: not one host synchronisation */
  for (gint k = 0; k < 4; k++) {
    gint slot = k % 2;
    stream_syncs = 0;
    g_assert_true (frame_pass (fx, fr, slot, frame, w, h, k < 2 ? &pct : &fms, slot == 1,
            labels, &error));
    g_assert_no_error (error);
    g_assert_cmpint (stream_syncs, ==, 0);
    g_assert_true (ON_OTHER_DEVICE (be->frame_wait (fr, slot, &error)));
  }

  /* 1. a failed cudaMallocHost (a larger frame needs a larger pinned buffer) ... */
  guint16 *big = g_new0 (guint16, 64 * 64);
  fail_next_malloc_host = 1;
  g_assert_false (ON_OTHER_DEVICE (be->frame_upload (fr, 2, UNET_PIXEL_U16, big, 64, 64, 128,
              &error)));
  g_assert_error (error, UNET_ERROR, UNET_ERROR_OUT_OF_MEMORY);
  g_clear_error (&error);
  g_free (big);
  /* ... leaves no error behind for the next launch */
  g_assert_true (ON_OTHER_DEVICE (be->op_forward (op, &error)));
  g_assert_no_error (error);
  g_assert_true (frame_pass (fx, fr, 0, frame, w, h, &pct, FALSE, labels, &error));
  g_assert_no_error (error);
  g_assert_true (ON_OTHER_DEVICE (be->frame_wait (fr, 0, &error)));

  /* 5. 2^31 elements or more: a clear error, not a cuDNN failure */
  UnetDims huge = { 2, 64, 4096, 4096 };
  g_assert_null (ON_OTHER_DEVICE (be->tensor_new (fx->be, &huge, &error)));
  g_assert_error (error, UNET_ERROR, UNET_ERROR_OUT_OF_MEMORY);
  g_assert_nonnull (strstr (error->message, "2^31"));
  g_clear_error (&error);
  UnetDims fits = { 2, 64, 4096, 4095 };
  UnetBackendTensor *t = ON_OTHER_DEVICE (be->tensor_new (fx->be, &fits, &error));
  g_assert_no_error (error);
  be->tensor_free (t);

  be->frames_free (fr);
  be->op_free (op);
  be->tensor_free (fx->input);
  be->tensor_free (fx->logits);
  be->arena_free (fx->arena);
  return NULL;
}

static void
test_backend (void)
{
  UnetNetOptions opts;
  GError *error = NULL;
  Fixture fx = { 0 };

  unet_net_options_init (&opts);
  opts.device = UNET_DEVICE_CUDA;
  opts.gpu_id = 1;
  g_setenv ("UNET_CUDNN_FIND", "0", TRUE);
  fx.be = unet_backend_cuda_new (&opts, &error);
  g_assert_no_error (error);
  g_assert_nonnull (fx.be);
  /* 3. from here on every device call must run on device 1, from any thread */
  expect_dev = 1;
  GThread *th = g_thread_new ("streaming", run_backend, &fx);
  g_thread_join (th);
  g_assert_cmpint (launches, >, 0);
  g_assert_cmpint (wrong_device, ==, 0);
  expect_dev = -1;
  unet_backend_free (fx.be);
}

/* 7. bf16, 1 input channel: no 16-bit algorithm, so the convolution runs in f32. */
static void
test_bf16_one_channel (void)
{
  UnetNetOptions opts;
  GError *error = NULL;
  unet_net_options_init (&opts);
  opts.device = UNET_DEVICE_CUDA;
  opts.precision = UNET_PRECISION_BF16;
  g_setenv ("UNET_CUDNN_FIND", "0", TRUE);
  UnetBackend *be = unet_backend_cuda_new (&opts, &error);
  g_assert_no_error (error);
  const UnetBackendIface *bi = be->iface;
  const gfloat weight[8 * 1 * 3 * 3] = { 0 }, bias[8] = { 0 };
  UnetLayerParams layer = { UNET_LAYER_CONV, 1, 8, 3, weight, bias };
  g_assert_true (bi->upload_layers (be, &layer, 1, &error));
  g_assert_no_error (error);
  UnetBackendArena *arena = bi->arena_new (be, 1 << 20, &error);
  UnetDims xd = { 2, 1, 9, 9 }, yd = { 2, 8, 7, 7 };
  UnetBackendTensor *x = bi->tensor_new (be, &xd, &error), *y = bi->tensor_new (be, &yd, &error);
  g_assert_no_error (error);
  bi->tensor_bind (x, arena, 0);
  bi->tensor_bind (y, arena, 65536);
  UnetOpDesc conv = { .kind = UNET_OP_CONV, .layer = 0, .pad = 0, .relu = TRUE, .src = x,
    .dst = y };
  UnetBackendOp *op = bi->op_new (be, &conv, &error);
  g_assert_no_error (error);
  g_assert_nonnull (op);
  g_string_truncate (launch_log, 0);
  g_assert_true (bi->op_forward (op, &error));
  g_assert_no_error (error);
  g_assert_nonnull (strstr (launch_log->str, "cast_to_f32 bias_act cast_from_f32"));
  bi->op_free (op);
  bi->tensor_free (x);
  bi->tensor_free (y);
  bi->arena_free (arena);
  unet_backend_free (be);
}

/* 8-10. A training step of a CUDA net through the graph executor. */
static gboolean
train_step (UnetNet *net, const gfloat *in, gint batch, gint size, gfloat *logits,
    const gfloat *dlogits, GError **error)
{
  return ON_OTHER_DEVICE (unet_net_zero_gradients (net, error))
      && ON_OTHER_DEVICE (unet_net_train_forward (net, in, batch, size, size, 5, logits,
          error))
      && ON_OTHER_DEVICE (unet_net_train_backward (net, dlogits, error));
}

static void
train_case (UnetPrecision precision, gint in_channels)
{
  /* every training op: conv (+bias), batch norm + ReLU, pooling, transposed conv into
   * a concat view, crop into the other half, dropout at the bottom */
  UnetConfig cfg = { in_channels, 2, 2, 8, UNET_PADDING_VALID, TRUE, 0.25 };
  UnetNetOptions opts;
  GError *error = NULL;
  const gint batch = 2;
  const gboolean fp16 = precision == UNET_PRECISION_FP16;
  gint size, out, handles0 = n_handles, streams0 = n_streams, events0;
  gsize n_in, n_out, n_params = 0;

  UnetModel *model = unet_model_new (&cfg, &error);
  g_assert_no_error (error);
  unet_model_init_weights (model, 1);
  size = unet_config_input_for_output (&cfg, 4);
  out = unet_config_output_size (&cfg, size);
  n_in = (gsize) batch * in_channels * size * size;
  n_out = (gsize) batch * cfg.classes * out * out;
  gfloat *in = g_new (gfloat, n_in), *logits = g_new (gfloat, n_out);
  gfloat *dlogits = g_new (gfloat, n_out);
  for (gsize i = 0; i < n_in; i++)
    in[i] = 0.25f + (gfloat) (i % 7) * 0.125f;
  for (gsize i = 0; i < n_out; i++)
    dlogits[i] = 1e-3f;

  unet_net_options_init (&opts);
  opts.device = UNET_DEVICE_CUDA;
  opts.gpu_id = 1;
  opts.precision = precision;
  g_setenv ("UNET_CUDNN_FIND", "0", TRUE);
  UnetNet *net = unet_net_new (model, &opts, &error);
  g_assert_no_error (error);
  expect_dev = 1;
  wrong_device = 0;

  /* the first step builds the training graph and uploads the parameters */
  g_assert_true (train_step (net, in, batch, size, logits, dlogits, &error));
  g_assert_no_error (error);

  /* the measured step */
  events0 = n_events;
  g_array_set_size (step_copies, 0);
  g_string_truncate (launch_log, 0);
  step_wrong_stream = step_wrong_handle = step_mallocs = 0;
  last_scale_add = 0.0f;
  step_on = 1;
  g_assert_true (train_step (net, in, batch, size, logits, dlogits, &error));
  step_on = 0;
  g_assert_no_error (error);

  /* 8. one device, one stream, one handle; nothing created or allocated */
  g_assert_cmpint (wrong_device, ==, 0);
  g_assert_cmpint (step_wrong_stream, ==, 0);
  g_assert_cmpint (step_wrong_handle, ==, 0);
  g_assert_cmpint (n_handles - handles0, ==, 1);
  g_assert_cmpint (n_streams - streams0, ==, 2);        /* compute + upload */
  g_assert_cmpint (n_events, ==, events0);
  g_assert_cmpint (step_mallocs, ==, 0);

  /* 9. the copies of the step, in order */
  guint k = 0;
  if (fp16) {
    /* the fold of the previous pass reads its finite flag (grads_zero) */
    Copy *c = &g_array_index (step_copies, Copy, k++);
    g_assert_cmpuint (c->bytes, ==, sizeof (int));
    g_assert_cmpint (c->kind, ==, cudaMemcpyDeviceToHost);
    /* and adds the pass divided by the scale */
    g_assert_cmpfloat (last_scale_add, ==, 1.0f / 65536.0f);
  }
  g_assert_cmpuint (step_copies->len, ==, k + 3);
  Copy *up = &g_array_index (step_copies, Copy, k);
  Copy *down = &g_array_index (step_copies, Copy, k + 1);
  Copy *dl = &g_array_index (step_copies, Copy, k + 2);
  g_assert_cmpuint (up->bytes, ==, n_in * sizeof (gfloat));
  g_assert_cmpint (up->kind, ==, cudaMemcpyHostToDevice);
  g_assert_cmpfloat (up->first, ==, in[0]);             /* the input is not scaled */
  g_assert_cmpuint (down->bytes, ==, n_out * sizeof (gfloat));
  g_assert_cmpint (down->kind, ==, cudaMemcpyDeviceToHost);
  g_assert_cmpuint (dl->bytes, ==, n_out * sizeof (gfloat));
  g_assert_cmpint (dl->kind, ==, cudaMemcpyHostToDevice);
  g_assert_cmpfloat (dl->first, ==, fp16 ? 1e-3f * 65536.0f : 1e-3f);
  for (guint i = 0; i < step_copies->len; i++)
    g_assert_true (g_array_index (step_copies, Copy, i).stream != NULL);

  /* 10. every op kind ran forward and backward on the device */
  const gchar *kernels[] = { "bias_act", "batchnorm_forward_train", "maxpool_forward",
    "dropout", "copy_window", "relu_backward", "batchnorm_backward", "bias_grad",
    "filter_grad_accumulate", "maxpool_backward", "window_add" };
  for (guint i = 0; i < G_N_ELEMENTS (kernels); i++)
    if (strstr (launch_log->str, kernels[i]) == NULL)
      g_error ("the training step launched no %s: %s", kernels[i], launch_log->str);
  /* 16 bit: the first convolution (1 input channel, no 16-bit algorithm in the mock)
   * runs in f32, forward (src cast up, result cast down) and backward (diff_dst and
   * src cast up for the filter gradient) */
  if (precision != UNET_PRECISION_FP32) {
    const gchar *f32 = strstr (launch_log->str, "cast_to_f32 bias_act cast_from_f32");
    g_assert_nonnull (f32);
    g_assert_nonnull (strstr (launch_log->str, "cast_to_f32 cast_to_f32 "
            "filter_grad_accumulate"));
  } else {
    g_assert_null (strstr (launch_log->str, "cast_"));
  }

  /* the slabs reach the host only when asked for */
  const gfloat *grads = unet_net_get_gradients (net, &n_params, &error);
  g_assert_no_error (error);
  g_assert_nonnull (grads);
  g_assert_cmpuint (n_params, ==, unet_model_get_layout (model)->slab_numel);
  expect_dev = -1;
  unet_net_free (net);
  unet_model_free (model);
  g_free (in);
  g_free (logits);
  g_free (dlogits);
}

static void
test_train_step_fp32 (void)
{
  train_case (UNET_PRECISION_FP32, 1);
}

static void
test_train_step_fp16 (void)
{
  train_case (UNET_PRECISION_FP16, 1);
}

static void
test_train_step_bf16 (void)
{
  train_case (UNET_PRECISION_BF16, 1);
}

/* 12. A whole training step on the device: forward (no logits download), the loss
 * slot, zero gradients, backward (no dL/dlogits upload) and the optimiser slot. */
static gboolean
device_step (UnetNet *net, UnetOptimizer *opt, const gfloat *in, const gint32 *labels,
    const gfloat *weights, gint batch, gint size, gdouble dice, gdouble *loss,
    UnetConfusion *conf, gboolean *finite, GError **error)
{
  return ON_OTHER_DEVICE (unet_net_train_forward (net, in, batch, size, size, 5, NULL,
          error))
      && ON_OTHER_DEVICE (unet_net_train_loss (net, labels, weights, dice, loss, conf, error))
      && ON_OTHER_DEVICE (unet_net_zero_gradients (net, error))
      && ON_OTHER_DEVICE (unet_net_train_backward (net, NULL, error))
      && ON_OTHER_DEVICE (unet_net_optimizer_step (net, opt, finite, error));
}

static guint
count_in_log (const gchar *word)
{
  guint n = 0;
  for (const gchar *p = launch_log->str; (p = strstr (p, word)) != NULL; p += strlen (word))
    n++;
  return n;
}

static void
device_step_case (UnetPrecision precision, UnetOptimKind kind, gdouble dice)
{
  UnetConfig cfg = { 1, 2, 2, 8, UNET_PADDING_VALID, TRUE, 0.25 };
  UnetNetOptions opts;
  UnetOptimParams op;
  UnetConfusion conf;
  GError *error = NULL;
  const gint batch = 2;
  const gboolean fp16 = precision == UNET_PRECISION_FP16;
  const gdouble seed_scale = fp16 ? 65536.0 : 1.0;
  gint size, out;
  gsize n_in, n_pix, n_params;
  gdouble loss = -1.0, sum_w = 0.0;
  gboolean finite = FALSE;
  gint events0;
  guint pinned0;

  UnetModel *model = unet_model_new (&cfg, &error);
  g_assert_no_error (error);
  unet_model_init_weights (model, 1);
  n_params = unet_model_get_layout (model)->slab_numel;
  size = unet_config_input_for_output (&cfg, 4);
  out = unet_config_output_size (&cfg, size);
  n_in = (gsize) batch * size * size;
  n_pix = (gsize) batch * out * out;
  gfloat *in = g_new (gfloat, n_in), *weights = g_new (gfloat, n_pix);
  gint32 *labels = g_new (gint32, n_pix);
  for (gsize i = 0; i < n_in; i++)
    in[i] = 0.25f + (gfloat) (i % 7) * 0.125f;
  for (gsize i = 0; i < n_pix; i++) {
    labels[i] = i % 5 == 3 ? UNET_LABEL_IGNORE : (gint32) (i % 2);
    weights[i] = 0.5f + (gfloat) (i % 3);
    if (labels[i] != UNET_LABEL_IGNORE)
      sum_w += weights[i];
  }

  /* two ranges, weight decay on the first only (one launch each) */
  const UnetOptimRange ranges[] = { { 0, n_params / 2, TRUE },
    { n_params / 2, n_params - n_params / 2, FALSE } };
  unet_optim_params_init (&op);
  op.kind = kind;
  op.weight_decay = 1e-4;
  UnetOptimizer *opt = unet_optimizer_new (&op, n_params, ranges, 2, &error);
  g_assert_no_error (error);

  unet_net_options_init (&opts);
  opts.device = UNET_DEVICE_CUDA;
  opts.gpu_id = 1;
  opts.precision = precision;
  g_setenv ("UNET_CUDNN_FIND", "0", TRUE);
  UnetNet *net = unet_net_new (model, &opts, &error);
  g_assert_no_error (error);
  expect_dev = 1;
  wrong_device = 0;

  /* the first step builds the graph, uploads the parameters, allocates the staging
   * and the optimiser state */
  g_assert_true (device_step (net, opt, in, labels, weights, batch, size, dice, &loss, &conf,
          &finite, &error));
  g_assert_no_error (error);

  /* the measured step */
  events0 = n_events;
  pinned0 = pinned_allocs->len;
  g_array_set_size (step_copies, 0);
  g_string_truncate (launch_log, 0);
  step_wrong_stream = step_wrong_handle = step_mallocs = 0;
  last_xent_scale = last_dice_scale = 0.0f;
  optim_skip = NULL;
  step_on = 1;
  g_assert_true (device_step (net, opt, in, labels, weights, batch, size, dice, &loss, &conf,
          &finite, &error));
  step_on = 0;
  g_assert_no_error (error);
  g_assert_true (finite);
  g_assert_cmpint (unet_optimizer_get_step (opt), ==, 2);

  /* one device, one stream, one handle; nothing created or allocated */
  g_assert_cmpint (wrong_device, ==, 0);
  g_assert_cmpint (step_wrong_stream, ==, 0);
  g_assert_cmpint (step_wrong_handle, ==, 0);
  g_assert_cmpint (n_events, ==, events0);
  g_assert_cmpint (step_mallocs, ==, 0);
  g_assert_cmpuint (pinned_allocs->len, ==, pinned0);   /* the staging is reused */

  /* the copies of the whole step, in order: no parameter, gradient, logits or
   * dL/dlogits crosses */
  guint k = 0;
  g_assert_cmpuint (step_copies->len, ==, fp16 ? 5 : 4);
  /* the input tile (copy stream, then the compute stream waits for it) */
  Copy *c = &g_array_index (step_copies, Copy, k++);
  g_assert_cmpuint (c->bytes, ==, n_in * sizeof (gfloat));
  g_assert_cmpint (c->kind, ==, cudaMemcpyHostToDevice);
  g_assert_true (c->stream != NULL && c->stream != the_stream);
  /* the batch's pixel weights (f32) and labels (u8) in one copy */
  c = &g_array_index (step_copies, Copy, k++);
  g_assert_cmpuint (c->bytes, ==, n_pix * (sizeof (gfloat) + 1));
  g_assert_cmpint (c->kind, ==, cudaMemcpyHostToDevice);
  g_assert_true (c->stream == the_stream);
  g_assert_cmpfloat (c->first, ==, weights[0]);
  /* the loss scalars: 2 loss sums, 3 x 16 soft-Dice sums, the 16 x 16 u64 confusion */
  c = &g_array_index (step_copies, Copy, k++);
  g_assert_cmpuint (c->bytes, ==, (2 + 48) * sizeof (double) + 256 * sizeof (guint64));
  g_assert_cmpint (c->kind, ==, cudaMemcpyDeviceToHost);
  g_assert_true (c->stream == the_stream);
  if (fp16) {
    /* the fold of the backward pass (its finite flag) before the optimiser reads the
     * gradients */
    c = &g_array_index (step_copies, Copy, k++);
    g_assert_cmpuint (c->bytes, ==, sizeof (int));
    g_assert_cmpint (c->kind, ==, cudaMemcpyDeviceToHost);
  }
  /* the optimiser's two flags: a non-finite gradient, a non-finite parameter */
  c = &g_array_index (step_copies, Copy, k++);
  g_assert_cmpuint (c->bytes, ==, 2 * sizeof (int));
  g_assert_cmpint (c->kind, ==, cudaMemcpyDeviceToHost);
  g_assert_true (c->stream == the_stream);

  /* the uploaded batch as the kernels read it: weights, then labels (255: ignore) */
  g_assert_nonnull (last_xent_weights);
  g_assert_true ((const guint8 *) last_xent_labels
      == (const guint8 *) last_xent_weights + n_pix * sizeof (gfloat));
  for (gsize i = 0; i < n_pix; i++) {
    g_assert_cmpfloat (last_xent_weights[i], ==, weights[i]);
    g_assert_cmpint (last_xent_labels[i], ==, labels[i] == UNET_LABEL_IGNORE ? 255 : labels[i]);
  }
  /* dL/dlogits normalised by the host's sum of weights, times the fp16 loss scale */
  g_assert_cmpfloat_with_epsilon (last_xent_scale, seed_scale / sum_w, 1e-6 * seed_scale / sum_w);
  /* the values read back, combined as unet_loss_batch: the mock's loss sum 3 over the
   * sum of weights; soft Dice from the mock's sums (2 * 1 + 1) / (2 + 3 + 1) = 0.5 */
  g_assert_cmpfloat_with_epsilon (loss, 3.0 / sum_w + dice * 0.5, 1e-12);
  g_assert_cmpint (conf.n_classes, ==, 2);
  for (gint l = 0; l < 2; l++)
    for (gint p = 0; p < 2; p++)
      g_assert_cmpuint (conf.n[l][p], ==, (guint64) (100 * l + p + 1));

  /* the kernels, in order: working weights re-derived after the last update, the loss
   * (16 bit: an f32 gradient cast down), the optimiser with its checks */
  /* (one nchw_to_nhwc is the input upload's) */
  g_assert_cmpuint (count_in_log ("nchw_to_nhwc"), >, 1);
  const gchar *loss_seq = dice > 0.0
      ? (precision == UNET_PRECISION_FP32 ? "weighted_xent dice_sums dice_grad confusion"
      : "weighted_xent dice_sums dice_grad cast_from_f32 confusion")
      : (precision == UNET_PRECISION_FP32 ? "weighted_xent confusion"
      : "weighted_xent cast_from_f32 confusion");
  if (strstr (launch_log->str, loss_seq) == NULL)
    g_error ("the loss launched no \"%s\": %s", loss_seq, launch_log->str);
  if (dice > 0.0)
    g_assert_cmpfloat_with_epsilon (last_dice_scale, dice * seed_scale, 1e-6 * seed_scale);
  const gchar *opt_seq = kind == UNET_OPTIM_SGD
      ? "memset check_finite optim_sgd optim_sgd check_finite "
      : "memset check_finite optim_adam optim_adam check_finite ";
  if (!g_str_has_suffix (launch_log->str, opt_seq))
    g_error ("the optimiser step did not end in \"%s\": %s", opt_seq, launch_log->str);
  g_assert_nonnull (optim_skip);

  if (!fp16) {
    /* a non-finite gradient: FAILED, the step not counted, the parameters unchanged
     * (the next forward re-derives no working weight) */
    flag_next_check = 1;
    g_assert_false (device_step (net, opt, in, labels, weights, batch, size, dice, &loss,
            &conf, &finite, &error));
    g_assert_error (error, UNET_ERROR, UNET_ERROR_FAILED);
    g_clear_error (&error);
    g_assert_cmpint (unet_optimizer_get_step (opt), ==, 2);
    g_string_truncate (launch_log, 0);
    g_assert_true (ON_OTHER_DEVICE (unet_net_train_forward (net, in, batch, size, size, 5,
                NULL, &error)));
    g_assert_no_error (error);
    g_assert_cmpuint (count_in_log ("nchw_to_nhwc"), ==, 1);   /* the input's only */
    /* a non-finite parameter after the update: reported, not an error */
    flag_next_check = 2;
    g_assert_true (device_step (net, opt, in, labels, weights, batch, size, dice, &loss, &conf,
            &finite, &error));
    g_assert_no_error (error);
    g_assert_false (finite);
    g_assert_cmpint (flag_next_check, ==, 0);
  }

  if (fp16) {
    /* the backward pass overflows at loss scale 65536: the fold drops it (its flag is
     * the first check of the optimiser step), the update is skipped (GradScaler), the
     * scale halves for the next loss */
    flag_next_check = 1;
    g_string_truncate (launch_log, 0);
    g_assert_true (device_step (net, opt, in, labels, weights, batch, size, dice, &loss,
            &conf, &finite, &error));
    g_assert_no_error (error);
    g_assert_true (finite);
    g_assert_cmpint (flag_next_check, ==, 0);
    g_assert_cmpuint (count_in_log ("optim_"), ==, 0);
    g_assert_true (ON_OTHER_DEVICE (unet_net_train_forward (net, in, batch, size, size, 5,
                NULL, &error))
        && ON_OTHER_DEVICE (unet_net_train_loss (net, labels, weights, dice, &loss, &conf,
                &error)));
    g_assert_no_error (error);
    g_assert_cmpfloat_with_epsilon (last_xent_scale, 32768.0 / sum_w, 1e-6 * 32768.0 / sum_w);
    /* the next pass folds and updates again */
    g_string_truncate (launch_log, 0);
    g_assert_true (ON_OTHER_DEVICE (unet_net_zero_gradients (net, &error))
        && ON_OTHER_DEVICE (unet_net_train_backward (net, NULL, &error))
        && ON_OTHER_DEVICE (unet_net_optimizer_step (net, opt, &finite, &error)));
    g_assert_no_error (error);
    g_assert_cmpuint (count_in_log ("optim_adam"), ==, 2);
  }

  /* the state slabs cross only for checkpoints: host -> device -> host round trip */
  for (guint b = 0; b < unet_optimizer_get_n_buffers (opt); b++)
    for (gsize i = 0; i < n_params; i++)
      unet_optimizer_get_buffer (opt, b)[i] = (gfloat) (i % 13) + b;
  g_array_set_size (step_copies, 0);
  step_on = 1;
  g_assert_true (ON_OTHER_DEVICE (unet_net_optimizer_state (net, opt, TRUE, &error)));
  for (guint b = 0; b < unet_optimizer_get_n_buffers (opt); b++)
    memset (unet_optimizer_get_buffer (opt, b), 0, n_params * sizeof (gfloat));
  g_assert_true (ON_OTHER_DEVICE (unet_net_optimizer_state (net, opt, FALSE, &error)));
  step_on = 0;
  g_assert_no_error (error);
  g_assert_cmpuint (step_copies->len, ==, 2 * unet_optimizer_get_n_buffers (opt));
  for (guint i = 0; i < step_copies->len; i++)
    g_assert_cmpuint (g_array_index (step_copies, Copy, i).bytes, ==, n_params * sizeof (gfloat));
  for (guint b = 0; b < unet_optimizer_get_n_buffers (opt); b++)
    for (gsize i = 0; i < n_params; i++)
      g_assert_cmpfloat (unet_optimizer_get_buffer (opt, b)[i], ==, (gfloat) (i % 13) + b);

  /* bad input: a label outside the classes, a negative weight */
  labels[1] = 2;
  g_assert_false (ON_OTHER_DEVICE (unet_net_train_loss (net, labels, weights, dice, &loss,
              &conf, &error)));
  g_assert_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT);
  g_clear_error (&error);
  labels[1] = 1;
  weights[0] = -1.0f;
  g_assert_false (ON_OTHER_DEVICE (unet_net_train_loss (net, labels, weights, dice, &loss,
              &conf, &error)));
  g_assert_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT);
  g_clear_error (&error);

  expect_dev = -1;
  unet_net_free (net);
  unet_optimizer_free (opt);
  unet_model_free (model);
  g_free (in);
  g_free (weights);
  g_free (labels);
}

static void
test_device_step_fp32 (void)
{
  device_step_case (UNET_PRECISION_FP32, UNET_OPTIM_SGD, 0.0);
}

static void
test_device_step_fp16 (void)
{
  device_step_case (UNET_PRECISION_FP16, UNET_OPTIM_ADAM, 0.5);
}

static void
test_device_step_bf16 (void)
{
  device_step_case (UNET_PRECISION_BF16, UNET_OPTIM_ADAMW, 1.0);
}

/* 13. A step on samples resident on the device. */
static gboolean
resident_step (UnetNet *net, UnetOptimizer *opt, UnetNetSample *const *samples,
    const UnetAugmentDraw *draws, gint batch, gdouble dice, gdouble *loss,
    UnetConfusion *conf, gboolean *finite, GError **error)
{
  return ON_OTHER_DEVICE (unet_net_train_forward_samples (net, samples, draws, batch, 5,
          error))
      && ON_OTHER_DEVICE (unet_net_train_loss (net, NULL, NULL, dice, loss, conf, error))
      && ON_OTHER_DEVICE (unet_net_zero_gradients (net, error))
      && ON_OTHER_DEVICE (unet_net_train_backward (net, NULL, error))
      && ON_OTHER_DEVICE (unet_net_optimizer_step (net, opt, finite, error));
}

#define SAMPLE_ALIGN(n) (((n) + 255) / 256 * 256)

static void
resident_step_case (UnetPrecision precision, UnetOptimKind kind, gdouble dice)
{
  UnetConfig cfg = { 1, 2, 2, 8, UNET_PADDING_VALID, TRUE, 0.25 };
  UnetNetOptions opts;
  UnetOptimParams op;
  UnetAugmentParams ap;
  UnetConfusion conf;
  UnetRng rng;
  GError *error = NULL;
  const gint batch = 2, fw[2] = { 23, 30 }, fh[2] = { 19, 27 };
  const gboolean fp16 = precision == UNET_PRECISION_FP16;
  const gdouble seed_scale = fp16 ? 65536.0 : 1.0;
  gfloat *image[2], *weights[2];
  gint32 *classes[2];
  UnetNetSample *samples[2];
  UnetAugmentDraw draws[2] = { { 0 }, { 0 } };
  gdouble loss = -1.0;
  gboolean finite = FALSE;
  gint size, out, events0;
  gsize n_params, n_pix;
  guint pinned0;

  UnetModel *model = unet_model_new (&cfg, &error);
  g_assert_no_error (error);
  unet_model_init_weights (model, 1);
  n_params = unet_model_get_layout (model)->slab_numel;
  size = unet_config_input_for_output (&cfg, 4);
  out = unet_config_output_size (&cfg, size);
  n_pix = (gsize) batch * out * out;
  unet_optim_params_init (&op);
  op.kind = kind;
  UnetOptimRange range = { 0, n_params, TRUE };
  UnetOptimizer *opt = unet_optimizer_new (&op, n_params, &range, 1, &error);
  g_assert_no_error (error);
  unet_net_options_init (&opts);
  opts.device = UNET_DEVICE_CUDA;
  opts.gpu_id = 1;
  opts.precision = precision;
  g_setenv ("UNET_CUDNN_FIND", "0", TRUE);
  UnetNet *net = unet_net_new (model, &opts, &error);
  g_assert_no_error (error);
  g_assert_true (unet_net_train_samples_supported (net));
  expect_dev = 1;
  wrong_device = 0;

  /* the samples: uploaded once each, one copy, checked */
  for (gint f = 0; f < 2; f++) {
    const gsize plane = (gsize) fw[f] * fh[f];
    image[f] = g_new (gfloat, plane);
    weights[f] = g_new (gfloat, plane);
    classes[f] = g_new (gint32, plane);
    for (gsize i = 0; i < plane; i++) {
      image[f][i] = (gfloat) (i % 11) * 0.1f;
      classes[f][i] = i % 7 == 3 ? UNET_LABEL_IGNORE : (gint32) (i % 2);
      weights[f][i] = classes[f][i] == UNET_LABEL_IGNORE ? 0.0f : 1.0f + (gfloat) (i % 5);
    }
    g_array_set_size (step_copies, 0);
    step_on = 1;
    samples[f] = ON_OTHER_DEVICE (unet_net_train_sample_add (net, image[f], classes[f],
            weights[f], fw[f], fh[f], &error));
    step_on = 0;
    g_assert_no_error (error);
    g_assert_nonnull (samples[f]);
    g_assert_cmpuint (step_copies->len, ==, 1);
    Copy *c = &g_array_index (step_copies, Copy, 0);
    g_assert_cmpint (c->kind, ==, cudaMemcpyHostToDevice);
    g_assert_cmpuint (c->bytes, ==, 2 * SAMPLE_ALIGN (plane * sizeof (gfloat)) + plane);
    g_assert_cmpfloat (c->first, ==, image[f][0]);
  }
  /* refused: a label outside the classes, a negative weight */
  classes[0][5] = 2;
  g_assert_null (ON_OTHER_DEVICE (unet_net_train_sample_add (net, image[0], classes[0],
              weights[0], fw[0], fh[0], &error)));
  g_assert_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT);
  g_clear_error (&error);
  classes[0][5] = 1;
  const gfloat w6 = weights[0][6];
  weights[0][6] = -1.0f;
  g_assert_null (ON_OTHER_DEVICE (unet_net_train_sample_add (net, image[0], classes[0],
              weights[0], fw[0], fh[0], &error)));
  g_assert_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT);
  g_clear_error (&error);
  weights[0][6] = w6;

  /* the draws (paper defaults: elastic G = 3, rotation, flips, gray values) */
  unet_augment_params_init (&ap);
  unet_rng_init (&rng, 3);
  for (gint b = 0; b < batch; b++)
    g_assert_true (unet_augment_draw (&ap, &rng, 1, fw[b], fh[b], size, size, out, out,
            &draws[b], &error));
  g_assert_no_error (error);

  /* the first step builds the graph, the batch buffers and the optimiser state */
  g_assert_true (resident_step (net, opt, samples, draws, batch, dice, &loss, &conf, &finite,
          &error));
  g_assert_no_error (error);

  /* the measured step */
  events0 = n_events;
  pinned0 = pinned_allocs->len;
  g_array_set_size (step_copies, 0);
  g_string_truncate (launch_log, 0);
  step_wrong_stream = step_wrong_handle = step_mallocs = 0;
  last_xent_scale = 0.0f;
  last_weight_sum = NULL;
  memset (&last_aug, 0, sizeof last_aug);
  step_on = 1;
  g_assert_true (resident_step (net, opt, samples, draws, batch, dice, &loss, &conf, &finite,
          &error));
  step_on = 0;
  g_assert_no_error (error);
  g_assert_true (finite);
  g_assert_cmpint (wrong_device, ==, 0);
  g_assert_cmpint (step_wrong_stream, ==, 0);
  g_assert_cmpint (step_wrong_handle, ==, 0);
  g_assert_cmpint (n_events, ==, events0);
  g_assert_cmpint (step_mallocs, ==, 0);
  g_assert_cmpuint (pinned_allocs->len, ==, pinned0);

  /* the copies: the draws up, the scalars and flags down, nothing else */
  const gsize draw_bytes = SAMPLE_ALIGN (batch * sizeof (UnetCudaAugSample))
      + batch * 2 * 3 * 3 * sizeof (float);
  guint k = 0;
  g_assert_cmpuint (step_copies->len, ==, fp16 ? 4 : 3);
  Copy *c = &g_array_index (step_copies, Copy, k++);
  g_assert_cmpint (c->kind, ==, cudaMemcpyHostToDevice);
  g_assert_cmpuint (c->bytes, ==, draw_bytes);
  g_assert_true (c->stream == the_stream);
  c = &g_array_index (step_copies, Copy, k++);
  g_assert_cmpint (c->kind, ==, cudaMemcpyDeviceToHost);
  g_assert_cmpuint (c->bytes, ==, (2 + 48) * sizeof (double) + 256 * sizeof (guint64));
  if (fp16) {
    c = &g_array_index (step_copies, Copy, k++);
    g_assert_cmpint (c->kind, ==, cudaMemcpyDeviceToHost);
    g_assert_cmpuint (c->bytes, ==, sizeof (int));
  }
  c = &g_array_index (step_copies, Copy, k++);
  g_assert_cmpint (c->kind, ==, cudaMemcpyDeviceToHost);
  g_assert_cmpuint (c->bytes, ==, 2 * sizeof (int));
  for (guint i = 0; i < step_copies->len; i++)
    g_assert_cmpuint (g_array_index (step_copies, Copy, i).bytes, <, 4096);

  /* the batch as augment_batch got it: shapes, the records of the draws pointing at
   * the resident samples (their u8 labels, weights and image as uploaded), the
   * targets where the loss reads them */
  g_assert_cmpint (last_aug.n, ==, batch);
  g_assert_cmpint (last_aug.channels, ==, 1);
  g_assert_cmpint (last_aug.in_w, ==, size);
  g_assert_cmpint (last_aug.in_h, ==, size);
  g_assert_cmpint (last_aug.out_w, ==, out);
  g_assert_cmpint (last_aug.out_h, ==, out);
  g_assert_cmpint (last_aug.ignore_label, ==, 255);
  g_assert_nonnull (last_aug.input);
  g_assert_true (last_aug.weights == last_xent_weights);
  g_assert_true (last_aug.labels == last_xent_labels);
  g_assert_true ((const guint8 *) last_aug.labels
      == (const guint8 *) last_aug.weights + n_pix * sizeof (gfloat));
  for (gint b = 0; b < batch; b++) {
    const UnetCudaAugSample *r = &last_aug.samples[b];
    const gsize plane = (gsize) fw[b] * fh[b];
    gint origin[2];
    gfloat affine[6], grid[18];
    unet_augment_draw_local (&draws[b], origin, affine, grid);
    g_assert_cmpint (r->src_w, ==, fw[b]);
    g_assert_cmpint (r->src_h, ==, fh[b]);
    g_assert_cmpint (r->origin_x, ==, origin[0]);
    g_assert_cmpint (r->origin_y, ==, origin[1]);
    g_assert_cmpmem (r->affine, sizeof affine, affine, sizeof affine);
    g_assert_cmpint (r->grid, ==, 3);
    g_assert_cmpmem (last_aug.grids + r->grid_offset, sizeof grid, grid, sizeof grid);
    g_assert_cmpint (r->bilinear, ==, 0);
    g_assert_cmpint (r->intensity, ==, 1);
    g_assert_cmpfloat (r->gamma, ==, (gfloat) draws[b].gamma);
    g_assert_cmpfloat (r->contrast, ==, (gfloat) draws[b].contrast);
    g_assert_cmpfloat (r->brightness, ==, (gfloat) draws[b].brightness);
    for (gsize i = 0; i < plane; i++) {
      g_assert_cmpfloat (r->image[i], ==, image[b][i]);
      g_assert_cmpfloat (r->weights[i], ==, weights[b][i]);
      g_assert_cmpint (r->labels[i], ==,
          classes[b][i] == UNET_LABEL_IGNORE ? 255 : classes[b][i]);
    }
  }

  /* the loss: augment first, the gradient with the seed scale alone, normalised by
   * the kernel's own weight sum on the device; the loss from the sums read back
   * (the mock's: 3 over a weight sum of 1e9) */
  const gchar *seq = dice > 0.0
      ? (precision == UNET_PRECISION_FP32
      ? "weighted_xent scale_by_weight_sum dice_sums dice_grad confusion"
      : "weighted_xent scale_by_weight_sum dice_sums dice_grad cast_from_f32 confusion")
      : (precision == UNET_PRECISION_FP32 ? "weighted_xent scale_by_weight_sum confusion"
      : "weighted_xent scale_by_weight_sum cast_from_f32 confusion");
  if (strstr (launch_log->str, seq) == NULL)
    g_error ("the loss launched no \"%s\": %s", seq, launch_log->str);
  g_assert_true (g_str_has_prefix (launch_log->str, "augment_batch "));
  g_assert_cmpuint (count_in_log ("augment_batch"), ==, 1);
  g_assert_cmpfloat (last_xent_scale, ==, (gfloat) seed_scale);
  g_assert_true (last_weight_sum == last_xent_out);
  g_assert_cmpfloat_with_epsilon (loss, 3.0 / 1e9 + dice * 0.5, 1e-12);
  g_assert_cmpuint (conf.n[1][0], ==, 101);

  /* a batch from the host replaces the device's targets: a loss without labels is
   * refused until the next batch made on the device */
  gfloat *in = g_new0 (gfloat, (gsize) batch * size * size);
  g_assert_true (ON_OTHER_DEVICE (unet_net_train_forward (net, in, batch, size, size, 5, NULL,
              &error)));
  g_assert_no_error (error);
  g_assert_false (ON_OTHER_DEVICE (unet_net_train_loss (net, NULL, NULL, dice, &loss, &conf,
              &error)));
  g_assert_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT);
  g_clear_error (&error);
  g_free (in);

  /* removal releases the sample's memory; the one left goes with the net */
  ON_OTHER_DEVICE (unet_net_train_sample_remove (net, samples[0]));
  expect_dev = -1;
  unet_net_free (net);

  /* a budget the first sample does not fit: out of memory, nothing kept */
  g_setenv ("UNET_CUDA_SAMPLE_MIB", "0", TRUE);
  net = unet_net_new (model, &opts, &error);
  g_assert_no_error (error);
  g_assert_null (unet_net_train_sample_add (net, image[0], classes[0], weights[0], fw[0],
          fh[0], &error));
  g_assert_error (error, UNET_ERROR, UNET_ERROR_OUT_OF_MEMORY);
  g_clear_error (&error);
  g_unsetenv ("UNET_CUDA_SAMPLE_MIB");
  unet_net_free (net);

  for (gint f = 0; f < 2; f++) {
    g_free (image[f]);
    g_free (weights[f]);
    g_free (classes[f]);
    unet_augment_draw_clear (&draws[f]);
  }
  unet_optimizer_free (opt);
  unet_model_free (model);
}

static void
test_resident_step_fp32 (void)
{
  resident_step_case (UNET_PRECISION_FP32, UNET_OPTIM_SGD, 0.0);
}

static void
test_resident_step_fp16 (void)
{
  resident_step_case (UNET_PRECISION_FP16, UNET_OPTIM_ADAM, 0.5);
}

static void
test_resident_step_bf16 (void)
{
  resident_step_case (UNET_PRECISION_BF16, UNET_OPTIM_ADAMW, 1.0);
}

/* 13. The trainer on a CUDA net: samples resident while they fit. */
static void
trainer_pair (UnetTrainer *t, gint w, gint h, guint seed, GError **error)
{
  guint8 *img = g_new (guint8, (gsize) w * h), *mask = g_new (guint8, (gsize) w * h);
  for (gint i = 0; i < w * h; i++) {
    img[i] = (guint8) ((i * 7 + seed) % 251);
    mask[i] = ((i % w) / 9 + (i / w) / 7 + seed) % 2 ? 255 : 0;
  }
  g_assert_true (ON_OTHER_DEVICE (unet_trainer_add_pair (t, UNET_PIXEL_U8, img, w,
              UNET_PIXEL_U8, mask, w, w, h, error)));
  g_free (img);
  g_free (mask);
}

static void
test_trainer_resident (void)
{
  UnetTrainerOptions o;
  UnetTrainStats st;
  GError *error = NULL;
  /* 216 x 216: 2 x 182.25 KiB (image, weights) + 45.6 KiB (labels) = 410 KiB a
   * sample, two in the 1 MiB budget, not three */
  const gint edge = 216;

  g_setenv ("UNET_CUDNN_FIND", "0", TRUE);
  g_setenv ("UNET_CUDA_SAMPLE_MIB", "1", TRUE);
  unet_trainer_options_init (&o);
  o.architecture.depth = 2;
  o.architecture.base_filters = 8;
  o.architecture.batch_norm = FALSE;
  o.batch_size = 2;
  o.dataset_capacity = 2;
  o.net.device = UNET_DEVICE_CUDA;
  o.net.gpu_id = 1;
  UnetTrainer *t = ON_OTHER_DEVICE (unet_trainer_new (&o, NULL, &error));
  g_assert_no_error (error);
  expect_dev = 1;
  wrong_device = 0;

  for (guint p = 0; p < 3; p++) {
    g_array_set_size (step_copies, 0);
    step_on = 1;
    trainer_pair (t, edge, edge, p, &error);
    step_on = 0;
    g_assert_no_error (error);
    /* one upload per pair (the third fits: the first was released when evicted) */
    g_assert_cmpuint (step_copies->len, ==, 1);
    g_assert_cmpuint (g_array_index (step_copies, Copy, 0).bytes, ==,
        2 * SAMPLE_ALIGN ((gsize) edge * edge * sizeof (gfloat)) + (gsize) edge * edge);
  }
  g_assert_cmpuint (unet_trainer_get_n_pairs (t, NULL), ==, 2);

  for (gint s = 0; s < 2; s++) {
    g_array_set_size (step_copies, 0);
    g_string_truncate (launch_log, 0);
    step_on = s;
    g_assert_true (ON_OTHER_DEVICE (unet_trainer_step (t, &st, &error)));
    step_on = 0;
    g_assert_no_error (error);
    g_assert_true (st.augment_on_device);
  }
  /* the steady step: the draws up, the loss scalars and the optimiser's flags down */
  g_assert_cmpuint (step_copies->len, ==, 3);
  g_assert_cmpint (g_array_index (step_copies, Copy, 0).kind, ==, cudaMemcpyHostToDevice);
  g_assert_cmpuint (g_array_index (step_copies, Copy, 0).bytes, ==,
      SAMPLE_ALIGN (2 * sizeof (UnetCudaAugSample)) + 2 * 2 * 3 * 3 * sizeof (float));
  g_assert_cmpint (g_array_index (step_copies, Copy, 1).kind, ==, cudaMemcpyDeviceToHost);
  g_assert_cmpint (g_array_index (step_copies, Copy, 2).kind, ==, cudaMemcpyDeviceToHost);
  g_assert_cmpuint (count_in_log ("augment_batch"), ==, 1);

  /* a pair past the budget (the evicted one's memory back, still too large): the
   * host path from now on, every batch and its targets uploaded */
  trainer_pair (t, 2 * edge, edge, 7, &error);
  g_assert_no_error (error);
  g_array_set_size (step_copies, 0);
  g_string_truncate (launch_log, 0);
  step_on = 1;
  g_assert_true (ON_OTHER_DEVICE (unet_trainer_step (t, &st, &error)));
  step_on = 0;
  g_assert_no_error (error);
  g_assert_false (st.augment_on_device);
  g_assert_cmpuint (count_in_log ("augment_batch"), ==, 0);
  g_assert_cmpuint (step_copies->len, ==, 4);   /* input, targets, scalars, flags */
  g_assert_cmpint (g_array_index (step_copies, Copy, 0).kind, ==, cudaMemcpyHostToDevice);
  g_assert_cmpint (g_array_index (step_copies, Copy, 1).kind, ==, cudaMemcpyHostToDevice);
  g_assert_cmpint (wrong_device, ==, 0);
  expect_dev = -1;
  g_unsetenv ("UNET_CUDA_SAMPLE_MIB");
  unet_trainer_free (t);
}

/* 11. Hand-built training ops on one arena: the launches each backward makes. */
static void
test_train_gradient_paths (void)
{
  UnetNetOptions opts;
  GError *error = NULL;
  unet_net_options_init (&opts);
  opts.device = UNET_DEVICE_CUDA;
  g_setenv ("UNET_CUDNN_FIND", "0", TRUE);
  UnetBackend *be = unet_backend_cuda_new (&opts, &error);
  g_assert_no_error (error);
  const UnetBackendIface *bi = be->iface;
  gfloat *slab = g_new0 (gfloat, 1024);
  g_assert_true (bi->params_set (be, slab, 1024, &error));
  g_assert_no_error (error);
  UnetBackendArena *arena = bi->arena_new (be, 1 << 20, &error);
  g_assert_no_error (error);
  /* x (2,4,6,6) -> y: dropout, and a crop of x's centre (2,4,4,4) into channels [4, 8) of
   * an 8-channel cat; gradients dx, dy, dcat (+ its view) */
  UnetDims xd = { 2, 4, 6, 6 }, cd = { 2, 8, 4, 4 }, sd = { 2, 8, 6, 6 };
  UnetBackendTensor *x = bi->tensor_new (be, &xd, &error), *y = bi->tensor_new (be, &xd, &error);
  UnetBackendTensor *dx = bi->tensor_new (be, &xd, &error), *dy = bi->tensor_new (be, &xd, &error);
  UnetBackendTensor *cat = bi->tensor_new (be, &cd, &error);
  UnetBackendTensor *dcat = bi->tensor_new (be, &cd, &error);
  UnetBackendTensor *big = bi->tensor_new (be, &sd, &error);
  UnetBackendTensor *dbig = bi->tensor_new (be, &sd, &error);
  g_assert_no_error (error);
  UnetBackendTensor *half = bi->tensor_view (be, cat, 4, 4, &error);
  UnetBackendTensor *dhalf = bi->tensor_view (be, dcat, 4, 4, &error);
  UnetBackendTensor *dbig_view = bi->tensor_view (be, dbig, 2, 4, &error);
  g_assert_no_error (error);
  UnetBackendTensor *all[] = { x, y, dx, dy, cat, dcat, big, dbig };
  for (guint i = 0; i < G_N_ELEMENTS (all); i++)
    bi->tensor_bind (all[i], arena, i * 65536);

  /* dropout accumulating into dense dx: its kernel writes, so result then add */
  UnetOpDesc drop = { .kind = UNET_OP_DROPOUT, .src = x, .dst = y, .training = TRUE,
    .weight = -1, .bias = -1, .dropout = 0.5, .diff_dst = dy, .diff_src = dx,
    .accumulate = TRUE };
  UnetBackendOp *op = bi->op_new (be, &drop, &error);
  g_assert_no_error (error);
  g_assert_false (bi->op_backward (op, &error));      /* no forward yet */
  g_assert_error (error, UNET_ERROR, UNET_ERROR_FAILED);
  g_clear_error (&error);
  g_assert_false (bi->op_forward (op, &error));       /* a training op */
  g_assert_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT);
  g_clear_error (&error);
  g_assert_true (bi->op_forward_training (op, 3, &error));
  g_string_truncate (launch_log, 0);
  g_assert_true (bi->op_backward (op, &error));
  g_assert_no_error (error);
  g_assert_cmpstr (launch_log->str, ==, "dropout add ");
  bi->op_free (op);

  /* the same into a channel view of an 8-channel gradient: written, then accumulated */
  UnetBackendTensor *big_view = bi->tensor_view (be, big, 2, 4, &error);
  g_assert_no_error (error);
  drop.src = big_view;
  drop.diff_src = dbig_view;
  for (gint acc = 0; acc < 2; acc++) {
    drop.accumulate = acc;
    op = bi->op_new (be, &drop, &error);
    g_assert_no_error (error);
    g_string_truncate (launch_log, 0);
    g_assert_true (bi->op_forward_training (op, 3, &error));
    /* the view is read through a dense copy */
    g_assert_cmpstr (launch_log->str, ==, "copy_window dropout ");
    g_string_truncate (launch_log, 0);
    g_assert_true (bi->op_backward (op, &error));
    g_assert_no_error (error);
    g_assert_cmpstr (launch_log->str, ==,
        acc ? "dropout copy_window add copy_window " : "dropout copy_window ");
    bi->op_free (op);
  }

  /* a crop into the second half of cat; its gradient comes from dcat's half and is
   * written whole into dx (zeroed first: the memset), or added */
  UnetOpDesc crop = { .kind = UNET_OP_CROP_COPY, .crop_y = 1, .crop_x = 1, .src = x,
    .dst = half, .training = TRUE, .weight = -1, .bias = -1, .diff_dst = dhalf,
    .diff_src = dx };
  for (gint acc = 0; acc < 2; acc++) {
    crop.accumulate = acc;
    op = bi->op_new (be, &crop, &error);
    g_assert_no_error (error);
    g_assert_true (bi->op_forward_training (op, 0, &error));
    g_string_truncate (launch_log, 0);
    g_assert_true (bi->op_backward (op, &error));
    g_assert_no_error (error);
    g_assert_cmpstr (launch_log->str, ==, acc ? "window_add " : "memset window_add ");
    bi->op_free (op);
  }

  /* upload into and download from a channel view (backend.h: host NCHW of the view's
   * dims), through a dense copy */
  gfloat *hv = g_new0 (gfloat, 2 * 4 * 4 * 4);
  g_string_truncate (launch_log, 0);
  g_assert_true (bi->upload (dhalf, hv, &error));
  g_assert_true (bi->download (half, hv, &error));
  g_assert_no_error (error);
  g_assert_cmpstr (launch_log->str, ==, "nchw_to_nhwc copy_window copy_window nhwc_to_nchw ");
  g_free (hv);

  /* refused: a training softmax, a window outside src, a gradient of the wrong shape */
  UnetOpDesc bad = crop;
  bad.kind = UNET_OP_SOFTMAX;
  g_assert_null (bi->op_new (be, &bad, &error));
  g_assert_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT);
  g_clear_error (&error);
  bad = crop;
  bad.crop_y = 3;
  g_assert_null (bi->op_new (be, &bad, &error));
  g_assert_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT);
  g_clear_error (&error);
  bad = crop;
  bad.diff_src = dcat;
  g_assert_null (bi->op_new (be, &bad, &error));
  g_assert_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT);
  g_clear_error (&error);
  /* a slab of another size */
  g_assert_false (bi->params_set (be, slab, 512, &error));
  g_assert_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT);
  g_clear_error (&error);

  /* fp16: a convolution cuDNN accepted at algorithm choice refuses its data gradient
   * at run time: the op switches to f32 and computes only what is still missing (the
   * bias and filter gradients were added already), adding into dx */
  UnetNetOptions o16 = opts;
  o16.precision = UNET_PRECISION_FP16;
  UnetBackend *be16 = unet_backend_cuda_new (&o16, &error);
  g_assert_no_error (error);
  const UnetBackendIface *b16 = be16->iface;
  UnetDims c8 = { 2, 8, 6, 6 }, c8o = { 2, 8, 4, 4 };
  UnetBackendArena *a16 = b16->arena_new (be16, 1 << 20, &error);
  UnetBackendTensor *cx = b16->tensor_new (be16, &c8, &error);
  UnetBackendTensor *cdx = b16->tensor_new (be16, &c8, &error);
  UnetBackendTensor *cy = b16->tensor_new (be16, &c8o, &error);
  UnetBackendTensor *cdy = b16->tensor_new (be16, &c8o, &error);
  g_assert_no_error (error);
  b16->tensor_bind (cx, a16, 0);
  b16->tensor_bind (cdx, a16, 65536);
  b16->tensor_bind (cy, a16, 131072);
  b16->tensor_bind (cdy, a16, 196608);
  g_assert_true (b16->params_set (be16, slab, 1024, &error));
  UnetOpDesc conv = { .kind = UNET_OP_CONV, .k = 3, .pad = 0, .src = cx, .dst = cy,
    .training = TRUE, .weight = 0, .bias = 640, .diff_dst = cdy, .diff_src = cdx,
    .accumulate = TRUE };
  op = b16->op_new (be16, &conv, &error);
  g_assert_no_error (error);
  g_assert_true (b16->op_forward_training (op, 0, &error));
  g_string_truncate (launch_log, 0);
  data_not_supported = 1;
  g_assert_true (b16->op_backward (op, &error));
  g_assert_no_error (error);
  g_assert_cmpint (data_not_supported, ==, 0);
  g_assert_cmpstr (launch_log->str, ==, "bias_grad filter_grad_accumulate nchw_to_nhwc "
      "cast_to_f32 cast_to_f32 cast_from_f32 add ");
  /* from now on in f32; the next forward first folds the fp16 pass (flag cleared,
   * checked, the pass added unscaled, the pass slab cleared) */
  g_string_truncate (launch_log, 0);
  g_assert_true (b16->op_forward_training (op, 0, &error));
  g_assert_cmpstr (launch_log->str, ==, "memset check_finite scale_add_f32 memset "
      "cast_to_f32 bias_act cast_from_f32 ");
  b16->op_free (op);
  UnetBackendTensor *t16[] = { cx, cdx, cy, cdy };
  for (guint i = 0; i < G_N_ELEMENTS (t16); i++)
    b16->tensor_free (t16[i]);
  b16->arena_free (a16);
  unet_backend_free (be16);

  bi->tensor_free (half);
  bi->tensor_free (dhalf);
  bi->tensor_free (big_view);
  bi->tensor_free (dbig_view);
  for (guint i = 0; i < G_N_ELEMENTS (all); i++)
    bi->tensor_free (all[i]);
  bi->arena_free (arena);
  g_free (slab);
  unet_backend_free (be);
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  device_allocs = g_array_new (FALSE, FALSE, sizeof (gsize));
  pinned_allocs = g_array_new (FALSE, FALSE, sizeof (gsize));
  launch_log = g_string_new (NULL);
  step_copies = g_array_new (FALSE, FALSE, sizeof (Copy));
  g_test_add_func ("/cuda-mock/backend", test_backend);
  g_test_add_func ("/cuda-mock/bf16-one-channel", test_bf16_one_channel);
  g_test_add_func ("/cuda-mock/train-step-fp32", test_train_step_fp32);
  g_test_add_func ("/cuda-mock/train-step-fp16", test_train_step_fp16);
  g_test_add_func ("/cuda-mock/train-step-bf16", test_train_step_bf16);
  g_test_add_func ("/cuda-mock/train-gradient-paths", test_train_gradient_paths);
  g_test_add_func ("/cuda-mock/device-step-fp32", test_device_step_fp32);
  g_test_add_func ("/cuda-mock/device-step-fp16", test_device_step_fp16);
  g_test_add_func ("/cuda-mock/device-step-bf16", test_device_step_bf16);
  g_test_add_func ("/cuda-mock/resident-step-fp32", test_resident_step_fp32);
  g_test_add_func ("/cuda-mock/resident-step-fp16", test_resident_step_fp16);
  g_test_add_func ("/cuda-mock/resident-step-bf16", test_resident_step_bf16);
  g_test_add_func ("/cuda-mock/trainer-resident", test_trainer_resident);
  int rc = g_test_run ();
  g_array_free (device_allocs, TRUE);
  g_array_free (pinned_allocs, TRUE);
  g_string_free (launch_log, TRUE);
  g_array_free (step_copies, TRUE);
  return rc;
}
