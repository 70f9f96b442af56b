/* gst-unet engine — small reproducible PRNG (internal).
 *
 * xoshiro256** (Blackman & Vigna) seeded through splitmix64, with uniform doubles
 * in [0, 1) from the top 53 bits and standard normals by Box–Muller (both values of
 * a pair are used; the spare is kept in the state so a saved state resumes the same
 * sequence). Independent of g_random and of the C library, so training runs are
 * reproducible across machines for a seed. Header-only: every function is tiny.
 */
#pragma once

#include <glib.h>
#include <math.h>

G_BEGIN_DECLS

typedef struct
{
  guint64 s[4];
  gdouble spare;                /* second Box–Muller value, valid if has_spare */
  gboolean has_spare;
} UnetRng;

static inline guint64
unet_rng_splitmix64 (guint64 *x)
{
  guint64 z = (*x += G_GUINT64_CONSTANT (0x9e3779b97f4a7c15));
  z = (z ^ (z >> 30)) * G_GUINT64_CONSTANT (0xbf58476d1ce4e5b9);
  z = (z ^ (z >> 27)) * G_GUINT64_CONSTANT (0x94d049bb133111eb);
  return z ^ (z >> 31);
}

static inline void
unet_rng_init (UnetRng *rng, guint64 seed)
{
  guint64 x = seed;
  for (gint i = 0; i < 4; i++)
    rng->s[i] = unet_rng_splitmix64 (&x);
  rng->spare = 0.0;
  rng->has_spare = FALSE;
}

static inline guint64
unet_rng_rotl (guint64 x, gint k)
{
  return (x << k) | (x >> (64 - k));
}

static inline guint64
unet_rng_next (UnetRng *rng)
{
  guint64 *s = rng->s;
  const guint64 result = unet_rng_rotl (s[1] * 5, 7) * 9;
  const guint64 t = s[1] << 17;
  s[2] ^= s[0];
  s[3] ^= s[1];
  s[1] ^= s[2];
  s[0] ^= s[3];
  s[2] ^= t;
  s[3] = unet_rng_rotl (s[3], 45);
  return result;
}

/* Uniform in [0, 1). */
static inline gdouble
unet_rng_uniform (UnetRng *rng)
{
  return (gdouble) (unet_rng_next (rng) >> 11) * (1.0 / 9007199254740992.0);
}

/* Uniform in [lo, hi). */
static inline gdouble
unet_rng_uniform_range (UnetRng *rng, gdouble lo, gdouble hi)
{
  return lo + (hi - lo) * unet_rng_uniform (rng);
}

/* Uniform integer in [0, n), n >= 1 (multiply-shift; bias < n / 2^64). */
static inline guint64
unet_rng_below (UnetRng *rng, guint64 n)
{
  return (guint64) (((unsigned __int128) unet_rng_next (rng) * n) >> 64);
}

/* Standard normal N(0, 1). */
static inline gdouble
unet_rng_normal (UnetRng *rng)
{
  if (rng->has_spare) {
    rng->has_spare = FALSE;
    return rng->spare;
  }
  /* u1 in (0, 1] so log() is finite. */
  gdouble u1 = 1.0 - unet_rng_uniform (rng);
  gdouble u2 = unet_rng_uniform (rng);
  gdouble r = sqrt (-2.0 * log (u1));
  rng->spare = r * sin (2.0 * G_PI * u2);
  rng->has_spare = TRUE;
  return r * cos (2.0 * G_PI * u2);
}

G_END_DECLS
