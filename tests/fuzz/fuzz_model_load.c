/* libFuzzer target: any byte sequence into the model loader.
 *
 * The loader must never crash, hang or allocate without bound; when it accepts
 * an input, the model must survive a save/load round trip bit for bit (that
 * oracle catches a loader that accepts something it then misrepresents).
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

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput (const guint8 *data, size_t size);

int
LLVMFuzzerTestOneInput (const guint8 *data, size_t size)
{
  GError *err = NULL;
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
