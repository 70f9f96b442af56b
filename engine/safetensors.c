/* gst-unet engine — strict safetensors reader and atomic writer.
 *
 * The reader never trusts a byte of the file: every length is bounded by the data
 * actually present before it is used, every count is checked for overflow, and
 * nothing is allocated in proportion to a number the file claims (only to the
 * header's actual length). See safetensors.h for the rules.
 */
#include "safetensors.h"
#include "unet.h"

#include <errno.h>
#include <fcntl.h>
#include <glib/gstdio.h>
#include <json-glib/json-glib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

struct _UnetSafetensors
{
  guint8 *owned;                /* the file's bytes (open), NULL for caller-owned */
  GPtrArray *tensors;           /* UnetStTensor*, sorted by data offset */
  GHashTable *by_name;          /* name -> UnetStTensor* */
  GHashTable *metadata;         /* gchar* -> gchar* */
};

const gchar *
unet_st_dtype_name (UnetStDtype dtype)
{
  switch (dtype) {
    case UNET_ST_F32:
      return "F32";
    case UNET_ST_F16:
      return "F16";
    case UNET_ST_BF16:
      return "BF16";
    case UNET_ST_I64:
      return "I64";
  }
  return "?";
}

gsize
unet_st_dtype_size (UnetStDtype dtype)
{
  switch (dtype) {
    case UNET_ST_F32:
      return 4;
    case UNET_ST_F16:
    case UNET_ST_BF16:
      return 2;
    case UNET_ST_I64:
      return 8;
  }
  return 0;
}

static void
tensor_free (gpointer p)
{
  UnetStTensor *t = p;
  g_free ((gchar *) t->name);
  g_free (t);
}

void
unet_safetensors_free (UnetSafetensors *st)
{
  if (st == NULL)
    return;
  g_hash_table_unref (st->by_name);
  g_ptr_array_unref (st->tensors);
  g_hash_table_unref (st->metadata);
  g_free (st->owned);
  g_free (st);
}

gboolean
unet_json_depth_ok (const gchar *text, gssize len)
{
  gsize n = len < 0 ? strlen (text) : (gsize) len;
  gint depth = 0;
  gboolean in_string = FALSE;

  for (gsize i = 0; i < n; i++) {
    gchar c = text[i];
    if (in_string) {
      if (c == '\\')
        i++;                    /* skip the escaped character */
      else if (c == '"')
        in_string = FALSE;
    } else if (c == '"') {
      in_string = TRUE;
    } else if (c == '[' || c == '{') {
      if (++depth > UNET_JSON_MAX_DEPTH)
        return FALSE;
    } else if (c == ']' || c == '}') {
      depth--;
    }
  }
  return TRUE;
}


/* ---------------------------------------------------------- strict JSON -- */

/* A recursive-descent check of RFC 8259 JSON, as strict as the reference
 * safetensors reader (serde_json): json-glib's scanner accepts hexadecimal
 * numbers, single-quoted strings, text after the value and duplicate keys (the
 * last wins), and cuts a string at an escaped NUL. Recursion is bounded by
 * UNET_JSON_MAX_DEPTH. */
typedef struct
{
  const gchar *start, *p, *end;
  gint depth;
  const gchar *why;             /* set on the first error */
} JsonCheck;

static gboolean
jc_fail (JsonCheck *j, const gchar *why)
{
  if (j->why == NULL)
    j->why = why;
  return FALSE;
}

static void
jc_ws (JsonCheck *j)
{
  while (j->p < j->end && (*j->p == ' ' || *j->p == '\t' || *j->p == '\n'
          || *j->p == '\r'))
    j->p++;
}

static gint
jc_hex4 (JsonCheck *j)
{
  gint v = 0;
  if (j->end - j->p < 4)
    return -1;
  for (gint i = 0; i < 4; i++) {
    gint d = g_ascii_xdigit_value (j->p[i]);
    if (d < 0)
      return -1;
    v = v * 16 + d;
  }
  j->p += 4;
  return v;
}

/* A string at j->p (the opening quote); its decoded text goes to `out` (may be
 * NULL). The text was checked to be UTF-8 as a whole. */
static gboolean
jc_string (JsonCheck *j, GString *out)
{
  if (j->p >= j->end || *j->p != '"')
    return jc_fail (j, "a string (in double quotes) expected");
  j->p++;
  while (j->p < j->end) {
    guchar c = (guchar) * j->p;
    if (c == '"') {
      j->p++;
      return TRUE;
    }
    if (c < 0x20)
      return jc_fail (j, "control character in a string");
    if (c != '\\') {
      if (out)
        g_string_append_c (out, (gchar) c);
      j->p++;
      continue;
    }
    if (++j->p >= j->end)
      break;
    c = (guchar) * j->p++;
    gunichar u;
    switch (c) {
      case '"': case '\\': case '/':
        u = c;
        break;
      case 'b':
        u = '\b';
        break;
      case 'f':
        u = '\f';
        break;
      case 'n':
        u = '\n';
        break;
      case 'r':
        u = '\r';
        break;
      case 't':
        u = '\t';
        break;
      case 'u':{
        gint hi = jc_hex4 (j);
        if (hi < 0)
          return jc_fail (j, "bad \\u escape");
        if (hi == 0)
          return jc_fail (j, "escaped NUL (\\u0000) in a string");
        if (hi >= 0xdc00 && hi <= 0xdfff)
          return jc_fail (j, "lone UTF-16 surrogate in a \\u escape");
        if (hi >= 0xd800 && hi <= 0xdbff) {
          gint lo;
          if (j->end - j->p < 2 || j->p[0] != '\\' || j->p[1] != 'u')
            return jc_fail (j, "lone UTF-16 surrogate in a \\u escape");
          j->p += 2;
          lo = jc_hex4 (j);
          if (lo < 0xdc00 || lo > 0xdfff)
            return jc_fail (j, "lone UTF-16 surrogate in a \\u escape");
          u = 0x10000 + (((gunichar) hi - 0xd800) << 10) + ((gunichar) lo - 0xdc00);
        } else {
          u = (gunichar) hi;
        }
        break;
      }
      default:
        return jc_fail (j, "unknown escape in a string");
    }
    if (out)
      g_string_append_unichar (out, u);
  }
  return jc_fail (j, "unterminated string");
}

static gboolean
jc_digits (JsonCheck *j)
{
  const gchar *p0 = j->p;
  while (j->p < j->end && g_ascii_isdigit (*j->p))
    j->p++;
  return j->p > p0;
}

static gboolean
jc_number (JsonCheck *j)
{
  if (j->p < j->end && *j->p == '-')
    j->p++;
  if (j->p < j->end && *j->p == '0') {
    j->p++;
    if (j->p < j->end && (g_ascii_isdigit (*j->p) || *j->p == 'x' || *j->p == 'X'))
      return jc_fail (j, "number with a leading zero, or hexadecimal");
  } else if (!jc_digits (j)) {
    return jc_fail (j, "bad number");
  }
  if (j->p < j->end && *j->p == '.') {
    j->p++;
    if (!jc_digits (j))
      return jc_fail (j, "bad number (digits expected after '.')");
  }
  if (j->p < j->end && (*j->p == 'e' || *j->p == 'E')) {
    j->p++;
    if (j->p < j->end && (*j->p == '+' || *j->p == '-'))
      j->p++;
    if (!jc_digits (j))
      return jc_fail (j, "bad number (digits expected in the exponent)");
  }
  return TRUE;
}

static gboolean jc_value (JsonCheck *j);

static gboolean
jc_object (JsonCheck *j)
{
  g_autoptr (GHashTable) keys = g_hash_table_new_full (g_str_hash, g_str_equal,
      g_free, NULL);
  j->p++;                       /* '{' */
  jc_ws (j);
  if (j->p < j->end && *j->p == '}') {
    j->p++;
    return TRUE;
  }
  for (;;) {
    GString *key = g_string_new (NULL);
    if (!jc_string (j, key)) {
      g_string_free (key, TRUE);
      return FALSE;
    }
    if (!g_hash_table_add (keys, g_string_free (key, FALSE)))
      return jc_fail (j, "duplicate key in an object");
    jc_ws (j);
    if (j->p >= j->end || *j->p != ':')
      return jc_fail (j, "':' expected after a key");
    j->p++;
    if (!jc_value (j))
      return FALSE;
    jc_ws (j);
    if (j->p < j->end && *j->p == ',') {
      j->p++;
      jc_ws (j);
      continue;
    }
    if (j->p < j->end && *j->p == '}') {
      j->p++;
      return TRUE;
    }
    return jc_fail (j, "',' or '}' expected in an object");
  }
}

static gboolean
jc_array (JsonCheck *j)
{
  j->p++;                       /* '[' */
  jc_ws (j);
  if (j->p < j->end && *j->p == ']') {
    j->p++;
    return TRUE;
  }
  for (;;) {
    if (!jc_value (j))
      return FALSE;
    jc_ws (j);
    if (j->p < j->end && *j->p == ',') {
      j->p++;
      continue;
    }
    if (j->p < j->end && *j->p == ']') {
      j->p++;
      return TRUE;
    }
    return jc_fail (j, "',' or ']' expected in an array");
  }
}

static gboolean
jc_literal (JsonCheck *j, const gchar *word)
{
  gsize n = strlen (word);
  if ((gsize) (j->end - j->p) < n || memcmp (j->p, word, n) != 0)
    return jc_fail (j, "unexpected character (not a JSON value)");
  j->p += n;
  return TRUE;
}

static gboolean
jc_value (JsonCheck *j)
{
  gboolean ok;
  jc_ws (j);
  if (j->p >= j->end)
    return jc_fail (j, "unexpected end of text");
  switch (*j->p) {
    case '{':
    case '[':
      if (++j->depth > UNET_JSON_MAX_DEPTH)
        return jc_fail (j, "nested deeper than " G_STRINGIFY (UNET_JSON_MAX_DEPTH)
            " levels");
      ok = *j->p == '{' ? jc_object (j) : jc_array (j);
      j->depth--;
      return ok;
    case '"':
      return jc_string (j, NULL);
    case 't':
      return jc_literal (j, "true");
    case 'f':
      return jc_literal (j, "false");
    case 'n':
      return jc_literal (j, "null");
    default:
      if (*j->p == '-' || g_ascii_isdigit (*j->p))
        return jc_number (j);
      return jc_fail (j, "unexpected character (not a JSON value)");
  }
}

gboolean
unet_json_check (const gchar *text, gssize len, GError **error)
{
  gsize n = len < 0 ? strlen (text) : (gsize) len;
  JsonCheck j = { text, text, text + n, 0, NULL };

  if (memchr (text, '\0', n) != NULL) {
    g_set_error_literal (error, UNET_ERROR, UNET_ERROR_MODEL,
        "NUL byte in JSON text");
    return FALSE;
  }
  if (!g_utf8_validate_len (text, n, NULL)) {
    g_set_error_literal (error, UNET_ERROR, UNET_ERROR_MODEL,
        "JSON text is not valid UTF-8");
    return FALSE;
  }
  if (jc_value (&j)) {
    jc_ws (&j);
    if (j.p == j.end)
      return TRUE;
    jc_fail (&j, "text after the JSON value");
  }
  g_set_error (error, UNET_ERROR, UNET_ERROR_MODEL, "%s at byte %" G_GSIZE_FORMAT,
      j.why, (gsize) (j.p - j.start));
  return FALSE;
}

static gboolean
model_error (GError **error, const gchar *fmt, ...) G_GNUC_PRINTF (2, 3);

static gboolean
model_error (GError **error, const gchar *fmt, ...)
{
  va_list ap;
  va_start (ap, fmt);
  gchar *msg = g_strdup_vprintf (fmt, ap);
  va_end (ap);
  g_set_error_literal (error, UNET_ERROR, UNET_ERROR_MODEL, msg);
  g_free (msg);
  return FALSE;
}

/* A non-negative JSON integer. */
static gboolean
json_uint (JsonNode *node, guint64 *out)
{
  if (node == NULL || !JSON_NODE_HOLDS_VALUE (node)
      || json_node_get_value_type (node) != G_TYPE_INT64)
    return FALSE;
  gint64 v = json_node_get_int (node);
  if (v < 0)
    return FALSE;
  *out = (guint64) v;
  return TRUE;
}

static gboolean
parse_metadata (UnetSafetensors *st, JsonNode *node, GError **error)
{
  if (!JSON_NODE_HOLDS_OBJECT (node))
    return model_error (error, "\"__metadata__\" is not a JSON object");
  JsonObjectIter iter;
  const gchar *key;
  JsonNode *value;
  json_object_iter_init (&iter, json_node_get_object (node));
  while (json_object_iter_next (&iter, &key, &value)) {
    if (!JSON_NODE_HOLDS_VALUE (value)
        || json_node_get_value_type (value) != G_TYPE_STRING)
      return model_error (error, "metadata entry \"%s\" is not a string", key);
    g_hash_table_replace (st->metadata, g_strdup (key),
        g_strdup (json_node_get_string (value)));
  }
  return TRUE;
}

static gboolean
parse_tensor (const gchar *name, JsonNode *node, gsize buffer_size,
    const guint8 *buffer, UnetStTensor **out, GError **error)
{
  if (*name == '\0')
    return model_error (error, "a tensor has an empty name");
  if (!JSON_NODE_HOLDS_OBJECT (node))
    return model_error (error, "tensor '%s': entry is not a JSON object", name);

  JsonObject *obj = json_node_get_object (node);
  JsonObjectIter iter;
  const gchar *key;
  JsonNode *member;
  json_object_iter_init (&iter, obj);
  while (json_object_iter_next (&iter, &key, &member)) {
    if (!g_str_equal (key, "dtype") && !g_str_equal (key, "shape")
        && !g_str_equal (key, "data_offsets"))
      return model_error (error, "tensor '%s': unknown field \"%s\"", name, key);
  }

  /* dtype */
  JsonNode *dn = json_object_get_member (obj, "dtype");
  if (dn == NULL || !JSON_NODE_HOLDS_VALUE (dn)
      || json_node_get_value_type (dn) != G_TYPE_STRING)
    return model_error (error, "tensor '%s': missing or non-string \"dtype\"", name);
  const gchar *ds = json_node_get_string (dn);
  UnetStDtype dtype;
  if (g_str_equal (ds, "F32"))
    dtype = UNET_ST_F32;
  else if (g_str_equal (ds, "F16"))
    dtype = UNET_ST_F16;
  else if (g_str_equal (ds, "BF16"))
    dtype = UNET_ST_BF16;
  else if (g_str_equal (ds, "I64") && g_str_has_suffix (name, ".num_batches_tracked"))
    dtype = UNET_ST_I64;
  else
    return model_error (error, "tensor '%s': unsupported dtype \"%s\" (F32, F16 or "
        "BF16 expected)", name, ds);

  /* shape */
  JsonNode *sn = json_object_get_member (obj, "shape");
  if (sn == NULL || !JSON_NODE_HOLDS_ARRAY (sn))
    return model_error (error, "tensor '%s': missing or non-array \"shape\"", name);
  JsonArray *sa = json_node_get_array (sn);
  guint rank = json_array_get_length (sa);
  if (rank > UNET_SAFETENSORS_MAX_DIMS)
    return model_error (error, "tensor '%s': rank %u > %d", name, rank,
        UNET_SAFETENSORS_MAX_DIMS);
  UnetStTensor t = { 0 };
  t.dtype = dtype;
  t.n_dims = (gint) rank;
  t.numel = 1;
  for (guint d = 0; d < rank; d++) {
    guint64 dim;
    if (!json_uint (json_array_get_element (sa, d), &dim) || dim == 0
        || dim > G_MAXINT)
      return model_error (error, "tensor '%s': shape entry %u is not an integer in "
          "1..%d", name, d, G_MAXINT);
    if (t.numel > G_MAXUINT64 / dim)
      return model_error (error, "tensor '%s': element count overflows", name);
    t.numel *= dim;
    t.shape[d] = (gint64) dim;
  }
  for (guint d = rank; d < UNET_SAFETENSORS_MAX_DIMS; d++)
    t.shape[d] = 1;
  gsize esize = unet_st_dtype_size (dtype);
  if (t.numel > G_MAXSIZE / esize)
    return model_error (error, "tensor '%s': byte size overflows", name);

  /* data_offsets */
  JsonNode *on = json_object_get_member (obj, "data_offsets");
  JsonArray *oa = on != NULL && JSON_NODE_HOLDS_ARRAY (on) ?
      json_node_get_array (on) : NULL;
  guint64 begin, end;
  if (oa == NULL || json_array_get_length (oa) != 2
      || !json_uint (json_array_get_element (oa, 0), &begin)
      || !json_uint (json_array_get_element (oa, 1), &end))
    return model_error (error, "tensor '%s': \"data_offsets\" must be two "
        "non-negative integers", name);
  if (begin > end || end > buffer_size)
    return model_error (error, "tensor '%s': data_offsets [%" G_GUINT64_FORMAT ", %"
        G_GUINT64_FORMAT "] out of range (data is %" G_GSIZE_FORMAT " bytes)", name,
        begin, end, buffer_size);
  if (end - begin != t.numel * esize)
    return model_error (error, "tensor '%s': data_offsets span %" G_GUINT64_FORMAT
        " bytes but %s x %" G_GUINT64_FORMAT " elements needs %" G_GUINT64_FORMAT,
        name, end - begin, ds, t.numel, t.numel * esize);

  t.data = buffer + begin;
  t.n_bytes = end - begin;
  t.name = g_strdup (name);
  *out = g_memdup2 (&t, sizeof t);
  return TRUE;
}

static gint
compare_offset (gconstpointer a, gconstpointer b)
{
  const UnetStTensor *x = *(UnetStTensor * const *) a;
  const UnetStTensor *y = *(UnetStTensor * const *) b;
  return x->data < y->data ? -1 : x->data > y->data ? 1 : 0;
}

UnetSafetensors *
unet_safetensors_parse (const guint8 *data, gsize size, GError **error)
{
  if (data == NULL || size < 8) {
    model_error (error, "file too short (%" G_GSIZE_FORMAT " bytes) for a "
        "safetensors header", data ? size : 0);
    return NULL;
  }
  guint64 hlen = 0;
  for (gint i = 7; i >= 0; i--)
    hlen = (hlen << 8) | data[i];
  if (hlen > UNET_SAFETENSORS_MAX_HEADER) {
    model_error (error, "header length %" G_GUINT64_FORMAT " exceeds the %u byte "
        "limit (not a safetensors file?)", hlen, UNET_SAFETENSORS_MAX_HEADER);
    return NULL;
  }
  if (hlen > size - 8) {
    model_error (error, "header length %" G_GUINT64_FORMAT " exceeds the file "
        "(%" G_GSIZE_FORMAT " bytes): truncated file?", hlen, size);
    return NULL;
  }
  if (hlen < 2 || data[8] != '{') {
    model_error (error, "header is not a JSON object");
    return NULL;
  }
  if (memchr (data + 8, '\0', hlen) != NULL) {
    model_error (error, "header contains a NUL byte");
    return NULL;
  }

  /* Strict JSON first (json-glib is lenient, see unet_json_check); the header
   * may be padded with whitespace, as writers do to align the data. */
  g_autoptr (GError) serr = NULL;
  if (!unet_json_check ((const gchar *) data + 8, (gssize) hlen, &serr)) {
    model_error (error, "header is not valid JSON: %s", serr->message);
    return NULL;
  }

  g_autoptr (JsonParser) parser = json_parser_new_immutable ();
  g_autoptr (GError) jerr = NULL;
  if (!json_parser_load_from_data (parser, (const gchar *) data + 8, (gssize) hlen,
          &jerr)) {
    model_error (error, "header is not valid JSON: %s", jerr->message);
    return NULL;
  }
  JsonNode *root = json_parser_get_root (parser);
  if (root == NULL || !JSON_NODE_HOLDS_OBJECT (root)) {
    model_error (error, "header is not a JSON object");
    return NULL;
  }

  const guint8 *buffer = data + 8 + hlen;
  gsize buffer_size = size - 8 - hlen;
  UnetSafetensors *st = g_new0 (UnetSafetensors, 1);
  st->tensors = g_ptr_array_new_with_free_func (tensor_free);
  st->by_name = g_hash_table_new (g_str_hash, g_str_equal);
  st->metadata = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, g_free);

  JsonObjectIter iter;
  const gchar *name;
  JsonNode *node;
  json_object_iter_init (&iter, json_node_get_object (root));
  while (json_object_iter_next (&iter, &name, &node)) {
    if (g_str_equal (name, "__metadata__")) {
      if (!parse_metadata (st, node, error))
        goto fail;
      continue;
    }
    UnetStTensor *t = NULL;
    if (!parse_tensor (name, node, buffer_size, buffer, &t, error))
      goto fail;
    g_ptr_array_add (st->tensors, t);
    g_hash_table_replace (st->by_name, (gpointer) t->name, t);
  }

  /* As the reference reader: the tensors tile the data section exactly, in
   * offset order from 0 to its end — no overlap, no gap, no trailing bytes. */
  g_ptr_array_sort (st->tensors, compare_offset);
  const guint8 *expect = buffer;
  const UnetStTensor *prev = NULL;
  for (guint i = 0; i < st->tensors->len; i++) {
    const UnetStTensor *cur = st->tensors->pdata[i];
    if (cur->data < expect) {
      model_error (error, "tensor '%s': data overlaps tensor '%s'", cur->name,
          prev->name);
      goto fail;
    }
    if (cur->data > expect) {
      model_error (error, "tensor '%s': %" G_GSIZE_FORMAT " unused bytes before "
          "its data (data_offsets must be contiguous from 0)", cur->name,
          (gsize) (cur->data - expect));
      goto fail;
    }
    expect = cur->data + cur->n_bytes;
    prev = cur;
  }
  if (expect != buffer + buffer_size) {
    model_error (error, "%" G_GSIZE_FORMAT " bytes after the data of the last "
        "tensor%s%s%s (the data section must end with it)",
        (gsize) (buffer + buffer_size - expect), prev ? " '" : "",
        prev ? prev->name : "", prev ? "'" : "");
    goto fail;
  }
  return st;

fail:
  unet_safetensors_free (st);
  return NULL;
}

/* The identity of an open file's contents as far as the kernel tells it. */
typedef struct
{
  dev_t dev;
  ino_t ino;
  off_t size;
  struct timespec mtime, ctime;
} FileStamp;

static gboolean
file_stamp (int fd, FileStamp *out)
{
  struct stat sb;
  if (fstat (fd, &sb) != 0)
    return FALSE;
  memset (out, 0, sizeof *out);
  out->dev = sb.st_dev;
  out->ino = sb.st_ino;
  out->size = sb.st_size;
  out->mtime = sb.st_mtim;
  out->ctime = sb.st_ctim;
  return TRUE;
}

static gboolean
file_stamp_equal (const FileStamp *a, const FileStamp *b)
{
  return a->dev == b->dev && a->ino == b->ino && a->size == b->size
      && a->mtime.tv_sec == b->mtime.tv_sec && a->mtime.tv_nsec == b->mtime.tv_nsec
      && a->ctime.tv_sec == b->ctime.tv_sec && a->ctime.tv_nsec == b->ctime.tv_nsec;
}

/* pread until `len` bytes or end of file; the count read, or -1 (errno set). */
static gssize
pread_full (int fd, guint8 *buf, gsize len, off_t offset)
{
  gsize done = 0;
  while (done < len) {
    gssize n = pread (fd, buf + done, MIN (len - done, (gsize) 1 << 30),
        offset + (off_t) done);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0)
      return -1;
    if (n == 0)
      break;
    done += (gsize) n;
  }
  return (gssize) done;
}

#define CHANGED_MSG "the model file changed while it was read (rewritten in " \
  "place?); write models to a temporary name and rename them over the file"

/* Reads the whole file into memory, and makes sure it did not change meanwhile:
 * the file is NOT memory-mapped, because a file truncated under a mapping kills
 * the process with SIGBUS on the next access (a model rewritten in place while a
 * pipeline reloads it). A change during the read is an UNET_ERROR_IO (the caller
 * retries on the next change): the size, inode and time stamps must be the same
 * before and after, and a second read must give the same bytes — time stamps
 * tick only every few milliseconds, in which a small file can be rewritten. */
static guint8 *
read_stable (int fd, gsize *size_out, GError **error)
{
  FileStamp before, after;
  if (!file_stamp (fd, &before)) {
    int e = errno;
    g_set_error (error, UNET_ERROR, UNET_ERROR_IO, "cannot read model file: %s",
        g_strerror (e));
    return NULL;
  }
  if (before.size < 0 || (guint64) before.size > G_MAXSIZE - 1) {
    g_set_error_literal (error, UNET_ERROR, UNET_ERROR_IO,
        "model file too large for the address space");
    return NULL;
  }
  gsize size = (gsize) before.size;
  guint8 *buf = g_try_malloc (size + 1);
  if (buf == NULL) {
    g_set_error (error, UNET_ERROR, UNET_ERROR_OUT_OF_MEMORY,
        "cannot hold the model file (%" G_GSIZE_FORMAT " bytes) in memory", size);
    return NULL;
  }
  /* one byte more than the size: a file that grew is seen at once */
  gssize n = pread_full (fd, buf, size + 1, 0);
  if (n < 0) {
    int e = errno;
    g_set_error (error, UNET_ERROR, UNET_ERROR_IO, "cannot read model file: %s",
        g_strerror (e));
    g_free (buf);
    return NULL;
  }
  gboolean same = (gsize) n == size;
  if (same) {
    guint8 chunk[65536];
    for (gsize off = 0; same && off <= size; off += sizeof chunk) {
      gsize want = MIN (sizeof chunk, size + 1 - off);
      gssize m = pread_full (fd, chunk, want, (off_t) off);
      gsize expect = off + want > size ? size - off : want;
      same = m == (gssize) expect && memcmp (chunk, buf + off, expect) == 0;
    }
  }
  if (same)
    same = file_stamp (fd, &after) && file_stamp_equal (&before, &after);
  if (!same) {
    g_set_error_literal (error, UNET_ERROR, UNET_ERROR_IO, CHANGED_MSG);
    g_free (buf);
    return NULL;
  }
  *size_out = size;
  return buf;
}

UnetSafetensors *
unet_safetensors_open (const gchar *path, GError **error)
{
  GStatBuf st_buf;
  /* O_NONBLOCK: opening a FIFO (or a device) must not wait for a writer; a
   * model is a regular file, anything else is refused before reading. */
  int fd = g_open (path, O_RDONLY | O_NONBLOCK | O_CLOEXEC, 0);
  if (fd < 0) {
    int saved = errno;
    g_set_error (error, UNET_ERROR, UNET_ERROR_IO,
        "cannot open model file: %s", g_strerror (saved));
    return NULL;
  }
  if (fstat (fd, &st_buf) != 0)
    st_buf.st_mode = 0;
  if (!S_ISREG (st_buf.st_mode)) {
    gboolean dir = S_ISDIR (st_buf.st_mode);
    close (fd);
    g_set_error_literal (error, UNET_ERROR, UNET_ERROR_IO, dir ?
        "is a directory, not a model file" : "is not a regular file");
    return NULL;
  }
  gsize size = 0;
  guint8 *bytes = read_stable (fd, &size, error);
  close (fd);
  if (bytes == NULL)
    return NULL;
  UnetSafetensors *st = unet_safetensors_parse (bytes, size, error);
  if (st == NULL) {
    g_free (bytes);
    return NULL;
  }
  st->owned = bytes;
  return st;
}

guint
unet_safetensors_get_n_tensors (const UnetSafetensors *st)
{
  return st->tensors->len;
}

const UnetStTensor *
unet_safetensors_get_tensor (const UnetSafetensors *st, guint index)
{
  g_return_val_if_fail (index < st->tensors->len, NULL);
  return st->tensors->pdata[index];
}

const UnetStTensor *
unet_safetensors_lookup (const UnetSafetensors *st, const gchar *name)
{
  return g_hash_table_lookup (st->by_name, name);
}

GHashTable *
unet_safetensors_get_metadata (const UnetSafetensors *st)
{
  return st->metadata;
}

const gchar *
unet_safetensors_get_metadata_value (const UnetSafetensors *st, const gchar *key)
{
  return g_hash_table_lookup (st->metadata, key);
}

/* IEEE 754 binary16 -> binary32, exact for every value (subnormals, Inf, NaN). */
static gfloat
half_to_float (guint16 h)
{
  guint32 sign = (guint32) (h & 0x8000u) << 16;
  guint32 exp = (h >> 10) & 0x1fu;
  guint32 mant = h & 0x3ffu;
  guint32 bits;
  gfloat f;

  if (exp == 0) {
    f = (gfloat) mant * (1.0f / 16777216.0f);   /* mant * 2^-24 */
    return sign ? -f : f;
  }
  if (exp == 31)
    bits = sign | 0x7f800000u | (mant << 13);
  else
    bits = sign | ((exp + 112u) << 23) | (mant << 13);
  memcpy (&f, &bits, 4);
  return f;
}

gboolean
unet_safetensors_read_f32 (const UnetStTensor *t, gfloat *out, GError **error)
{
  const guint8 *p = t->data;
  switch (t->dtype) {
    case UNET_ST_F32:
#if G_BYTE_ORDER == G_LITTLE_ENDIAN
      memcpy (out, p, t->numel * 4);
#else
      for (guint64 i = 0; i < t->numel; i++) {
        guint32 v;
        memcpy (&v, p + 4 * i, 4);
        v = GUINT32_FROM_LE (v);
        memcpy (out + i, &v, 4);
      }
#endif
      return TRUE;
    case UNET_ST_F16:
      for (guint64 i = 0; i < t->numel; i++)
        out[i] = half_to_float ((guint16) (p[2 * i] | (p[2 * i + 1] << 8)));
      return TRUE;
    case UNET_ST_BF16:
      for (guint64 i = 0; i < t->numel; i++) {
        guint32 v = (guint32) (p[2 * i] | (p[2 * i + 1] << 8)) << 16;
        memcpy (out + i, &v, 4);
      }
      return TRUE;
    case UNET_ST_I64:
      break;
  }
  return model_error (error, "tensor '%s': dtype %s cannot be read as float32",
      t->name, unet_st_dtype_name (t->dtype));
}

/* ------------------------------------------------------------- writer -- */

typedef struct
{
  gint fd;                      /* -1: write to mem */
  GByteArray *mem;
  const gchar *path;            /* for messages */
} Sink;

static gboolean
sink_write (Sink *s, gconstpointer data, gsize len, GError **error)
{
  if (s->fd < 0) {
    g_byte_array_append (s->mem, data, (guint) len);
    return TRUE;
  }
  const guint8 *p = data;
  while (len > 0) {
    gssize n = write (s->fd, p, MIN (len, (gsize) 1 << 30));
    if (n < 0) {
      if (errno == EINTR)
        continue;
      int e = errno;
      g_set_error (error, UNET_ERROR, UNET_ERROR_IO, "cannot write %s: %s", s->path,
          g_strerror (e));
      return FALSE;
    }
    p += n;
    len -= (gsize) n;
  }
  return TRUE;
}

static gboolean
sink_write_f32_le (Sink *s, const gfloat *data, gsize n, GError **error)
{
#if G_BYTE_ORDER == G_LITTLE_ENDIAN
  return sink_write (s, data, n * sizeof (gfloat), error);
#else
  guint32 chunk[4096];
  for (gsize i = 0; i < n; i += G_N_ELEMENTS (chunk)) {
    gsize m = MIN (n - i, G_N_ELEMENTS (chunk));
    memcpy (chunk, data + i, m * 4);
    for (gsize j = 0; j < m; j++)
      chunk[j] = GUINT32_TO_LE (chunk[j]);
    if (!sink_write (s, chunk, m * 4, error))
      return FALSE;
  }
  return TRUE;
#endif
}

static gint
compare_str (gconstpointer a, gconstpointer b)
{
  return strcmp (*(const gchar * const *) a, *(const gchar * const *) b);
}

/* The padded JSON header, or NULL on bad input. */
static gchar *
build_header (GHashTable *metadata, const UnetStTensorData *tensors, guint n,
    gsize *header_len, GError **error)
{
  g_autoptr (GHashTable) seen = g_hash_table_new (g_str_hash, g_str_equal);
  g_autoptr (JsonBuilder) b = json_builder_new ();
  guint64 offset = 0;

  json_builder_begin_object (b);
  if (metadata != NULL && g_hash_table_size (metadata) > 0) {
    guint nkeys;
    g_autofree gpointer *keys = g_hash_table_get_keys_as_array (metadata, &nkeys);
    qsort (keys, nkeys, sizeof (gpointer), compare_str);
    json_builder_set_member_name (b, "__metadata__");
    json_builder_begin_object (b);
    for (guint i = 0; i < nkeys; i++) {
      json_builder_set_member_name (b, keys[i]);
      json_builder_add_string_value (b, g_hash_table_lookup (metadata, keys[i]));
    }
    json_builder_end_object (b);
  }
  for (guint i = 0; i < n; i++) {
    const UnetStTensorData *t = &tensors[i];
    if (t->name == NULL || *t->name == '\0' || g_str_equal (t->name, "__metadata__")
        || t->n_dims < 0 || t->n_dims > UNET_SAFETENSORS_MAX_DIMS
        || t->data == NULL) {
      g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
          "cannot write tensor %u ('%s'): bad name, rank or data", i,
          t->name ? t->name : "(null)");
      return NULL;
    }
    if (!g_hash_table_add (seen, (gpointer) t->name)) {
      g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
          "cannot write tensor '%s' twice", t->name);
      return NULL;
    }
    guint64 numel = 1;
    json_builder_set_member_name (b, t->name);
    json_builder_begin_object (b);
    json_builder_set_member_name (b, "dtype");
    json_builder_add_string_value (b, "F32");
    json_builder_set_member_name (b, "shape");
    json_builder_begin_array (b);
    for (gint d = 0; d < t->n_dims; d++) {
      if (t->shape[d] < 1) {
        g_set_error (error, UNET_ERROR, UNET_ERROR_INVALID_ARGUMENT,
            "cannot write tensor '%s': dimension %d is %d", t->name, d, t->shape[d]);
        return NULL;
      }
      json_builder_add_int_value (b, t->shape[d]);
      numel *= (guint64) t->shape[d];
    }
    json_builder_end_array (b);
    json_builder_set_member_name (b, "data_offsets");
    json_builder_begin_array (b);
    json_builder_add_int_value (b, (gint64) offset);
    offset += numel * 4;
    json_builder_add_int_value (b, (gint64) offset);
    json_builder_end_array (b);
    json_builder_end_object (b);
  }
  json_builder_end_object (b);

  g_autoptr (JsonNode) root = json_builder_get_root (b);
  g_autoptr (JsonGenerator) gen = json_generator_new ();
  json_generator_set_root (gen, root);
  gsize len;
  gchar *text = json_generator_to_data (gen, &len);
  /* pad with spaces so the data buffer starts 8-byte aligned */
  gsize padded = (len + 7) / 8 * 8;
  text = g_realloc (text, padded + 1);
  memset (text + len, ' ', padded - len);
  text[padded] = '\0';
  *header_len = padded;
  return text;
}

static gboolean
write_all (Sink *s, GHashTable *metadata, const UnetStTensorData *tensors, guint n,
    GError **error)
{
  gsize hlen;
  g_autofree gchar *header = build_header (metadata, tensors, n, &hlen, error);
  if (header == NULL)
    return FALSE;
  guint8 len_le[8];
  for (gint i = 0; i < 8; i++)
    len_le[i] = (guint8) ((guint64) hlen >> (8 * i));
  if (!sink_write (s, len_le, 8, error) || !sink_write (s, header, hlen, error))
    return FALSE;
  for (guint i = 0; i < n; i++) {
    gsize numel = 1;
    for (gint d = 0; d < tensors[i].n_dims; d++)
      numel *= (gsize) tensors[i].shape[d];
    if (!sink_write_f32_le (s, tensors[i].data, numel, error))
      return FALSE;
  }
  return TRUE;
}

GBytes *
unet_safetensors_serialize (GHashTable *metadata, const UnetStTensorData *tensors,
    guint n_tensors, GError **error)
{
  Sink s = { -1, g_byte_array_new (), "memory" };
  if (!write_all (&s, metadata, tensors, n_tensors, error)) {
    g_byte_array_unref (s.mem);
    return NULL;
  }
  return g_byte_array_free_to_bytes (s.mem);
}

gboolean
unet_safetensors_write (const gchar *path, GHashTable *metadata,
    const UnetStTensorData *tensors, guint n_tensors, GError **error)
{
  g_autofree gchar *tmp = g_strdup_printf ("%s.tmp-XXXXXX", path);
  gint fd = g_mkstemp_full (tmp, O_WRONLY | O_CLOEXEC, 0644);
  if (fd < 0) {
    int e = errno;
    g_set_error (error, UNET_ERROR, UNET_ERROR_IO,
        "cannot create a temporary file next to %s: %s", path, g_strerror (e));
    return FALSE;
  }
  Sink s = { fd, NULL, path };
  gboolean ok = write_all (&s, metadata, tensors, n_tensors, error);
  if (ok && fsync (fd) != 0) {
    int e = errno;
    g_set_error (error, UNET_ERROR, UNET_ERROR_IO, "cannot sync %s: %s", tmp,
        g_strerror (e));
    ok = FALSE;
  }
  if (close (fd) != 0 && ok) {
    int e = errno;
    g_set_error (error, UNET_ERROR, UNET_ERROR_IO, "cannot close %s: %s", tmp,
        g_strerror (e));
    ok = FALSE;
  }
  if (ok && g_rename (tmp, path) != 0) {
    int e = errno;
    g_set_error (error, UNET_ERROR, UNET_ERROR_IO, "cannot rename %s to %s: %s", tmp,
        path, g_strerror (e));
    ok = FALSE;
  }
  if (!ok) {
    g_unlink (tmp);
    return FALSE;
  }
  /* make the rename itself durable; a failure here leaves a complete file */
  g_autofree gchar *dir = g_path_get_dirname (path);
  gint dfd = open (dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    fsync (dfd);
    close (dfd);
  }
  return TRUE;
}

guint
unet_model_remove_stale_temporaries (const gchar *path)
{
  g_autofree gchar *dir = g_path_get_dirname (path);
  g_autofree gchar *base = g_path_get_basename (path);
  g_autofree gchar *prefix = g_strconcat (base, ".tmp-", NULL);
  gsize plen = strlen (prefix);
  g_autoptr (GDir) d = g_dir_open (dir, 0, NULL);
  guint removed = 0;
  if (d == NULL)
    return 0;
  const gchar *name;
  while ((name = g_dir_read_name (d)) != NULL) {
    /* Exactly the writer's pattern: PATH.tmp- and the 6 characters mkstemp
     * substitutes, a regular file (not followed through a symlink). */
    if (strlen (name) != plen + 6 || strncmp (name, prefix, plen) != 0)
      continue;
    gboolean ok = TRUE;
    for (gsize i = plen; i < plen + 6; i++)
      ok = ok && g_ascii_isalnum (name[i]);
    g_autofree gchar *full = g_build_filename (dir, name, NULL);
    GStatBuf st;
    if (ok && g_lstat (full, &st) == 0 && S_ISREG (st.st_mode)
        && g_unlink (full) == 0)
      removed++;
  }
  return removed;
}
