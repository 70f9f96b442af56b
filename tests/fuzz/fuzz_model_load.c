/* libFuzzer target: any byte sequence into the model loader.
 *
 * The loader must never crash, hang or allocate without bound; when it accepts
 * an input, the model must survive a save/load round trip bit for bit (that
 * oracle catches a loader that accepts something it then misrepresents).
 * The header parser is checked on its own too: what the strict JSON check
 * accepts json-glib must parse to an object with as many members as the text
 * has keys, and a parsed file's tensors must tile its data section exactly,
 * with names that survive a lookup (no name cut short by an escaped NUL).
 *
 *   CC=clang meson setup build-fuzz -Dfuzzing=true -Db_sanitize=address \
 *       -Db_lundef=false -Dcuda=disabled
 *   ninja -C build-fuzz tests/fuzz/fuzz-model-load
 *   build-fuzz/tests/fuzz/fuzz-model-load -max_len=65536 CORPUS_DIR \
 *       tests/fuzz/corpus
 *
 * tests/fuzz/fuzz-regress.c runs the same entry point in every build.
 */
#include "model-private.h"
#include "safetensors.h"

#include <json-glib/json-glib.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput (const guint8 *data, size_t size);

static void
check_header_parser (const guint8 *data, size_t size)
{
  if (size < 8)
    return;
  guint64 hlen = 0;
  for (gint i = 7; i >= 0; i--)
    hlen = (hlen << 8) | data[i];
  if (hlen > size - 8 || hlen > UNET_SAFETENSORS_MAX_HEADER)
    return;

  const gchar *text = (const gchar *) data + 8;
  if (unet_json_check (text, (gssize) hlen, NULL)) {
    /* strict JSON is JSON: json-glib must agree */
    JsonParser *parser = json_parser_new_immutable ();
    if (!json_parser_load_from_data (parser, text, (gssize) hlen, NULL))
      abort ();
    g_object_unref (parser);
  }

  UnetSafetensors *st = unet_safetensors_parse (data, size, NULL);
  if (st == NULL)
    return;
  const guint8 *expect = data + 8 + hlen;
  for (guint i = 0; i < unet_safetensors_get_n_tensors (st); i++) {
    const UnetStTensor *t = unet_safetensors_get_tensor (st, i);
    if (t->data != expect || t->n_bytes != t->numel * unet_st_dtype_size (t->dtype)
        || t->name[0] == '\0' || unet_safetensors_lookup (st, t->name) != t)
      abort ();
    expect += t->n_bytes;
  }
  if (expect != data + size)
    abort ();
  unet_safetensors_free (st);
}

int
LLVMFuzzerTestOneInput (const guint8 *data, size_t size)
{
  GError *err = NULL;

  check_header_parser (data, size);
  UnetModel *m = unet_model_load_from_data (data, size, &err);
  if (m == NULL) {
    /* every refusal is a proper GError in the model domain */
    if (err == NULL || err->domain != UNET_ERROR || err->code != UNET_ERROR_MODEL
        || err->message == NULL || err->message[0] == '\0')
      abort ();
    g_error_free (err);
    return 0;
  }

  UnetNormalization norm;
  unet_model_get_normalization (m, &norm);
  const UnetConfig *cfg = unet_model_get_config (m);
  if (unet_config_legal_input_at_least (cfg, 1) <= 0)
    abort ();

  GBytes *bytes = unet_model_serialize (m, NULL);
  if (bytes == NULL)
    abort ();
  gsize n;
  const guint8 *p = g_bytes_get_data (bytes, &n);
  UnetModel *again = unet_model_load_from_data (p, n, NULL);
  if (again == NULL)
    abort ();
  const UnetLayout *la = unet_model_get_layout (m);
  if (memcmp (unet_model_peek_slab (m), unet_model_peek_slab (again),
          la->slab_numel * sizeof (gfloat)) != 0)
    abort ();
  unet_model_free (again);
  g_bytes_unref (bytes);
  unet_model_free (m);
  return 0;
}
