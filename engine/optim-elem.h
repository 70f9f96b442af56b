/* gst-unet engine — one parameter's optimiser update, written once for the host
 * (optim.c) and the GPU (engine/cuda/optim.cu): PyTorch semantics, double
 * arithmetic per element, float32 parameters and state (a stored state value is
 * read back before use, as PyTorch keeps it in parameter precision, so a resumed
 * run continues bit for bit). Plain C that nvcc also compiles as device code. */
#pragma once

#include <math.h>

#ifdef __CUDACC__
#define UNET_OPTIM_HD __host__ __device__
#else
#define UNET_OPTIM_HD
#endif

/* torch.optim.SGD (dampening 0): g += wd·w; b = g (first step) or μ·b + g;
 * g = g + μ·b (Nesterov) or b; w -= lr·g. buf NULL: no momentum. */
static inline UNET_OPTIM_HD void
unet_optim_sgd_elem (float *w, double g, float *buf, double lr, double momentum,
    double wd, int nesterov, int first)
{
  g += wd * (double) *w;
  if (buf) {
    double b = first ? g : momentum * (double) *buf + g;
    *buf = (float) b;
    b = *buf;
    g = nesterov ? g + momentum * b : b;
  }
  *w = (float) ((double) *w - lr * g);
}

/* torch.optim.Adam (wd on the gradient) / AdamW (decoupled: w *= 1 - lr·wd):
 * m = β1 m + (1-β1) g; v = β2 v + (1-β2) g²;
 * w -= step_size · m / (sqrt(v) / bc2_sqrt + eps), step_size = lr / (1 - β1^t),
 * bc2_sqrt = sqrt(1 - β2^t). */
static inline UNET_OPTIM_HD void
unet_optim_adam_elem (float *w, double g, float *m, float *v, double lr, double beta1,
    double beta2, double eps, double wd, int decoupled, double step_size,
    double bc2_sqrt)
{
  double wi = *w;
  if (decoupled)
    wi *= 1.0 - lr * wd;
  else
    g += wd * wi;
  *m = (float) (beta1 * (double) *m + (1.0 - beta1) * g);
  *v = (float) (beta2 * (double) *v + (1.0 - beta2) * g * g);
  const double mi = *m, vi = *v;
  *w = (float) (wi - step_size * mi / (sqrt (vi) / bc2_sqrt + eps));
}
