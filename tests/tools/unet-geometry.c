/* unet-geometry — prints the engine's geometry of a config as JSON.
 *
 *   unet-geometry CONFIG_JSON [MAX_SIZE]
 *
 * CONFIG_JSON is a `unet.config` object. Output (one JSON object on stdout):
 *   step, border, min_input, parameter_count,
 *   sizes: [[input, output], ...] for every input 1..MAX_SIZE (default 600),
 *          output -1 where the input is not legal,
 *   input_for_output: [[min_output, input], ...] for min_output 1..MAX_SIZE/2,
 *   flops: forward FLOPs of the smallest legal square input,
 *   tensors: [{"name": ..., "shape": [...]}, ...] in canonical order.
 * tests/engine/test_geometry_torch.py compares all of it with PyTorch.
 */
#include <json-glib/json-glib.h>
#include <stdio.h>
#include <stdlib.h>

#include "model-private.h"

int
main (int argc, char **argv)
{
  UnetConfig cfg;
  GError *err = NULL;

  if (argc < 2 || argc > 3) {
    fprintf (stderr, "usage: %s CONFIG_JSON [MAX_SIZE]\n", argv[0]);
    return 2;
  }
  if (!unet_config_from_json (argv[1], &cfg, &err)) {
    fprintf (stderr, "unet-geometry: %s\n", err->message);
    g_error_free (err);
    return 1;
  }
  gint max_size = argc == 3 ? atoi (argv[2]) : 600;
  if (max_size < 1 || max_size > 1000000) {
    fprintf (stderr, "unet-geometry: MAX_SIZE must be 1..1000000\n");
    return 2;
  }

  g_autoptr (JsonBuilder) b = json_builder_new ();
  json_builder_begin_object (b);
  json_builder_set_member_name (b, "step");
  json_builder_add_int_value (b, unet_config_size_step (&cfg));
  json_builder_set_member_name (b, "border");
  json_builder_add_int_value (b, unet_config_border (&cfg));
  gint min_in = unet_config_legal_input_at_least (&cfg, 1);
  json_builder_set_member_name (b, "min_input");
  json_builder_add_int_value (b, min_in);
  json_builder_set_member_name (b, "parameter_count");
  json_builder_add_int_value (b, (gint64) unet_config_parameter_count (&cfg));
  json_builder_set_member_name (b, "flops");
  json_builder_add_double_value (b, unet_config_forward_flops (&cfg, min_in, min_in));

  json_builder_set_member_name (b, "sizes");
  json_builder_begin_array (b);
  for (gint s = 1; s <= max_size; s++) {
    json_builder_begin_array (b);
    json_builder_add_int_value (b, s);
    json_builder_add_int_value (b, unet_config_output_size (&cfg, s));
    json_builder_end_array (b);
  }
  json_builder_end_array (b);

  json_builder_set_member_name (b, "input_for_output");
  json_builder_begin_array (b);
  for (gint o = 1; o <= max_size / 2; o++) {
    json_builder_begin_array (b);
    json_builder_add_int_value (b, o);
    json_builder_add_int_value (b, unet_config_input_for_output (&cfg, o));
    json_builder_end_array (b);
  }
  json_builder_end_array (b);

  g_autoptr (UnetLayout) layout = unet_layout_new (&cfg, NULL);
  json_builder_set_member_name (b, "tensors");
  json_builder_begin_array (b);
  for (guint i = 0; i < layout->n_tensors; i++) {
    const UnetTensorInfo *t = &layout->tensors[i];
    json_builder_begin_object (b);
    json_builder_set_member_name (b, "name");
    json_builder_add_string_value (b, t->name);
    json_builder_set_member_name (b, "shape");
    json_builder_begin_array (b);
    for (gint d = 0; d < t->n_dims; d++)
      json_builder_add_int_value (b, t->shape[d]);
    json_builder_end_array (b);
    json_builder_end_object (b);
  }
  json_builder_end_array (b);
  json_builder_end_object (b);

  g_autoptr (JsonNode) root = json_builder_get_root (b);
  g_autoptr (JsonGenerator) gen = json_generator_new ();
  json_generator_set_root (gen, root);
  g_autofree gchar *text = json_generator_to_data (gen, NULL);
  puts (text);
  return 0;
}
