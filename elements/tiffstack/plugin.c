/* gst-unet — plugin "tiffstack": registers tiffstacksrc and tiffstacksink
 * SPDX-License-Identifier: LGPL-2.1-or-later
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <gst/gst.h>

#include "gsttiffstacksrc.h"
#include "gsttiffstacksink.h"
#include "tiffstack-tags.h"

static gboolean
plugin_init (GstPlugin * plugin)
{
  gboolean ret = FALSE;

  gst_tiff_stack_register_tags ();
  ret |= GST_ELEMENT_REGISTER (tiffstacksrc, plugin);
  ret |= GST_ELEMENT_REGISTER (tiffstacksink, plugin);
  return ret;
}

GST_PLUGIN_DEFINE (GST_VERSION_MAJOR, GST_VERSION_MINOR, tiffstack,
    "Multi-page (Big)TIFF stacks streamed page by page (libtiff)",
    plugin_init, VERSION, GST_LICENSE, GST_PACKAGE_NAME, GST_PACKAGE_ORIGIN)
