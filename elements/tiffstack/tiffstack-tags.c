/* gst-unet — the stream tags of the tiffstack plugin
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * The custom tags that carry physical pixel size and stack axes between
 * tiffstacksrc and tiffstacksink (GStreamer has no standard tags for them), and
 * a stack's metadata as such tags.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include "tiffstack-tags.h"

void
gst_tiff_stack_register_tags (void)
{
  static gsize once = 0;

  if (!g_once_init_enter (&once))
    return;

  gst_tag_register (GST_TIFF_STACK_TAG_PIXEL_SIZE_X, GST_TAG_FLAG_META,
      G_TYPE_DOUBLE, "pixel size x",
      "Physical width of one pixel in micrometres", gst_tag_merge_use_first);
  gst_tag_register (GST_TIFF_STACK_TAG_PIXEL_SIZE_Y, GST_TAG_FLAG_META,
      G_TYPE_DOUBLE, "pixel size y",
      "Physical height of one pixel in micrometres", gst_tag_merge_use_first);
  gst_tag_register (GST_TIFF_STACK_TAG_PIXEL_SIZE_Z, GST_TAG_FLAG_META,
      G_TYPE_DOUBLE, "pixel size z",
      "Distance between consecutive slices in micrometres",
      gst_tag_merge_use_first);
  gst_tag_register (GST_TIFF_STACK_TAG_PIXEL_UNIT, GST_TAG_FLAG_META,
      G_TYPE_STRING, "pixel unit",
      "Length unit as written in the file (sizes are converted to micrometres)",
      gst_tag_merge_use_first);
  gst_tag_register (GST_TIFF_STACK_TAG_CHANNELS, GST_TAG_FLAG_META,
      G_TYPE_UINT, "channels", "Channels of the stream's frames (frames run "
      "over channels fastest, then z, then t, as in ImageJ)",
      gst_tag_merge_use_first);
  gst_tag_register (GST_TIFF_STACK_TAG_SLICES, GST_TAG_FLAG_META,
      G_TYPE_UINT, "slices", "Z slices of the stream's frames",
      gst_tag_merge_use_first);
  gst_tag_register (GST_TIFF_STACK_TAG_FRAMES, GST_TAG_FLAG_META,
      G_TYPE_UINT, "frames", "Time points of the stream's frames",
      gst_tag_merge_use_first);
  gst_tag_register (GST_TIFF_STACK_TAG_FRAME_INTERVAL, GST_TAG_FLAG_META,
      G_TYPE_DOUBLE, "frame interval",
      "Time between consecutive time points in seconds (ImageJ finterval, OME "
      "TimeIncrement)", gst_tag_merge_use_first);
  gst_tag_register (GST_TIFF_STACK_TAG_VALUE_OFFSET, GST_TAG_FLAG_META,
      G_TYPE_DOUBLE, "value offset",
      "Add to a pixel value to get the value stored in the file "
      "(signed samples are shifted into the unsigned range)",
      gst_tag_merge_use_first);

  g_once_init_leave (&once, 1);
}

GstTagList *
gst_tiff_stack_meta_to_tags (const TiffStackMeta * meta)
{
  GstTagList *tags = gst_tag_list_new_empty ();

  gst_tiff_stack_register_tags ();
  if (meta->size_x_um > 0.0)
    gst_tag_list_add (tags, GST_TAG_MERGE_REPLACE,
        GST_TIFF_STACK_TAG_PIXEL_SIZE_X, meta->size_x_um, NULL);
  if (meta->size_y_um > 0.0)
    gst_tag_list_add (tags, GST_TAG_MERGE_REPLACE,
        GST_TIFF_STACK_TAG_PIXEL_SIZE_Y, meta->size_y_um, NULL);
  if (meta->size_z_um > 0.0)
    gst_tag_list_add (tags, GST_TAG_MERGE_REPLACE,
        GST_TIFF_STACK_TAG_PIXEL_SIZE_Z, meta->size_z_um, NULL);
  if (meta->unit && g_utf8_validate (meta->unit, -1, NULL))
    gst_tag_list_add (tags, GST_TAG_MERGE_REPLACE,
        GST_TIFF_STACK_TAG_PIXEL_UNIT, meta->unit, NULL);
  if (meta->channels)
    gst_tag_list_add (tags, GST_TAG_MERGE_REPLACE,
        GST_TIFF_STACK_TAG_CHANNELS, meta->channels, NULL);
  if (meta->slices)
    gst_tag_list_add (tags, GST_TAG_MERGE_REPLACE,
        GST_TIFF_STACK_TAG_SLICES, meta->slices, NULL);
  if (meta->frames)
    gst_tag_list_add (tags, GST_TAG_MERGE_REPLACE,
        GST_TIFF_STACK_TAG_FRAMES, meta->frames, NULL);
  if (meta->frame_interval_s > 0.0)
    gst_tag_list_add (tags, GST_TAG_MERGE_REPLACE,
        GST_TIFF_STACK_TAG_FRAME_INTERVAL, meta->frame_interval_s, NULL);
  if (meta->description && meta->description[0])
    gst_tag_list_add (tags, GST_TAG_MERGE_REPLACE, GST_TAG_DESCRIPTION,
        meta->description, NULL);
  return tags;
}
