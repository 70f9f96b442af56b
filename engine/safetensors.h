/* gst-unet engine — strict safetensors reader and atomic writer (internal).
 *
 * File format: 8-byte little-endian header length N, N bytes of UTF-8 JSON
 * {"__metadata__": {string: string}, "<name>": {"dtype": "F32", "shape": [..],
 * "data_offsets": [begin, end]}, ...}, then the byte buffer; offsets are relative
 * to the start of the buffer.
 *
 * The reader rejects (UNET_ERROR_MODEL, the message naming the tensor): a header
 * length > UNET_SAFETENSORS_MAX_HEADER or beyond the data, invalid JSON, a non-object
 * header, dtypes other than F32/F16/BF16 (I64 is accepted only for tensors named
 * "*.num_batches_tracked"), rank > 4, non-positive dims, element counts that
 * overflow, offsets out of range, byte sizes that differ from dtype size x numel,
 * and tensors whose byte ranges overlap, leave gaps or leave bytes after the last
 * one (the data section is exactly the tensors, as in the reference reader); the
 * header must be strict JSON (unet_json_check: no duplicate keys, no text after
 * the object, ...). Zero-sized tensors are not allowed (every dim must be >= 1).
 */
#pragma once

#include <glib.h>

G_BEGIN_DECLS

#define UNET_SAFETENSORS_MAX_HEADER (100u * 1024u * 1024u)
#define UNET_SAFETENSORS_MAX_DIMS 4

typedef enum
{
  UNET_ST_F32,
  UNET_ST_F16,
  UNET_ST_BF16,
  UNET_ST_I64,
} UnetStDtype;

/* One tensor as found in a parsed file. `data` points into the file's bytes
 * (little-endian, possibly unaligned). */
typedef struct
{
  const gchar *name;
  UnetStDtype dtype;
  gint n_dims;                  /* 0..4; a rank-0 tensor has numel 1 */
  gint64 shape[UNET_SAFETENSORS_MAX_DIMS];
  guint64 numel;
  const guint8 *data;
  gsize n_bytes;
} UnetStTensor;

typedef struct _UnetSafetensors UnetSafetensors;

/* Parses `size` bytes at `data`. The bytes are NOT copied: they must outlive the
 * result. */
UnetSafetensors *unet_safetensors_parse        (const guint8 *data, gsize size,
                                                GError **error);
/* Reads `path` into memory (never a mapping: a file truncated under a mapping
 * raises SIGBUS) and parses it; the bytes live as long as the result. I/O
 * failures, and a file that changes while it is read, are UNET_ERROR_IO. */
UnetSafetensors *unet_safetensors_open         (const gchar *path, GError **error);
void             unet_safetensors_free         (UnetSafetensors *st);

/* Tensors in file order of their data offsets. */
guint            unet_safetensors_get_n_tensors (const UnetSafetensors *st);
const UnetStTensor *unet_safetensors_get_tensor (const UnetSafetensors *st, guint index);
const UnetStTensor *unet_safetensors_lookup    (const UnetSafetensors *st,
                                                const gchar *name);
/* __metadata__ (string -> string, never NULL, owned by `st`). */
GHashTable      *unet_safetensors_get_metadata (const UnetSafetensors *st);
const gchar     *unet_safetensors_get_metadata_value (const UnetSafetensors *st,
                                                const gchar *key);

/* Converts a F32/F16/BF16 tensor to float32; `out` holds t->numel floats.
 * I64 tensors are an UNET_ERROR_MODEL. */
gboolean         unet_safetensors_read_f32     (const UnetStTensor *t, gfloat *out,
                                                GError **error);

const gchar     *unet_st_dtype_name            (UnetStDtype dtype);
gsize            unet_st_dtype_size            (UnetStDtype dtype);

/* json-glib's parser recurses once per nesting level, so a few megabytes of "["
 * overflow the stack. Every JSON text from a file goes through this first: TRUE
 * when `len` bytes of `text` (-1: NUL-terminated) nest arrays/objects at most
 * UNET_JSON_MAX_DEPTH deep (strings and escapes are skipped correctly). */
#define UNET_JSON_MAX_DEPTH 32
gboolean         unet_json_depth_ok            (const gchar *text, gssize len);
/* TRUE when `len` bytes of `text` (-1: NUL-terminated) are one strict RFC 8259
 * JSON value, as the reference safetensors reader (serde_json) requires: UTF-8,
 * no NUL, double-quoted strings with valid escapes (no escaped NUL, no lone
 * surrogate), decimal numbers only, no duplicate key in an object, nothing but
 * whitespace after the value, nesting at most UNET_JSON_MAX_DEPTH. Otherwise
 * an UNET_ERROR_MODEL saying what and at which byte. */
gboolean         unet_json_check               (const gchar *text, gssize len,
                                                GError **error);

/* ---- writer ---- */

/* A float32 tensor to write. */
typedef struct
{
  const gchar *name;
  gint n_dims;                  /* 0..4 */
  gint shape[UNET_SAFETENSORS_MAX_DIMS];
  const gfloat *data;           /* product(shape) floats */
} UnetStTensorData;

/* Writes `tensors` (F32, in the given order, contiguous) and `metadata` (string ->
 * string, may be NULL) to "<path>.tmp-XXXXXX" in the same directory, fsyncs it,
 * renames it to `path` and fsyncs the directory. On failure nothing is left
 * behind and `path` is untouched. Duplicate names are UNET_ERROR_INVALID_ARGUMENT. */
gboolean         unet_safetensors_write        (const gchar *path, GHashTable *metadata,
                                                const UnetStTensorData *tensors,
                                                guint n_tensors, GError **error);
/* The same file contents in memory. */
GBytes          *unet_safetensors_serialize    (GHashTable *metadata,
                                                const UnetStTensorData *tensors,
                                                guint n_tensors, GError **error);

G_DEFINE_AUTOPTR_CLEANUP_FUNC (UnetSafetensors, unet_safetensors_free)

G_END_DECLS
