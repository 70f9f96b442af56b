/* gst-unet — raw video caps and frames shared by the gst-unet elements
 * SPDX-License-Identifier: LGPL-2.1-or-later
 */
#include "config.h"

#include "gstunetcaps.h"

#include <string.h>

static const struct
{
  const gchar *name;
  guint bpp;
} formats[] = {
  [GST_UNET_FORMAT_GRAY8] = {"GRAY8", 1},
  [GST_UNET_FORMAT_GRAY16_LE] = {"GRAY16_LE", 2},
  [GST_UNET_FORMAT_GRAY32F] = {"GRAY32F", 4},
  [GST_UNET_FORMAT_RGB] = {"RGB", 3},
  [GST_UNET_FORMAT_RGBA] = {"RGBA", 4},
  [GST_UNET_FORMAT_GRAY32_LE] = {"GRAY32_LE", 4},
};

G_STATIC_ASSERT (G_N_ELEMENTS (formats) == GST_UNET_FORMAT_UNKNOWN);

const gchar *
gst_unet_format_name (GstUnetFormat format)
{
  return format < GST_UNET_FORMAT_UNKNOWN ? formats[format].name : "unknown";
}

GstUnetFormat
gst_unet_format_from_name (const gchar * name)
{
  guint i;

  if (name)
    for (i = 0; i < G_N_ELEMENTS (formats); i++)
      if (!strcmp (name, formats[i].name))
        return (GstUnetFormat) i;
  return GST_UNET_FORMAT_UNKNOWN;
}

guint
gst_unet_format_bpp (GstUnetFormat format)
{
  return format < GST_UNET_FORMAT_UNKNOWN ? formats[format].bpp : 0;
}

guint64
gst_unet_default_stride (guint64 width, guint bpp)
{
  return GST_ROUND_UP_4 (width * bpp);
}

gboolean
gst_unet_layout_set (GstUnetLayout * layout, GstUnetFormat format,
    guint32 width, guint32 height)
{
  return gst_unet_layout_set_planes (layout, format, 1, width, height);
}

static gboolean
multi_channel_format (GstUnetFormat format)
{
  return format == GST_UNET_FORMAT_GRAY8 || format == GST_UNET_FORMAT_GRAY16_LE
      || format == GST_UNET_FORMAT_GRAY32F;
}

gboolean
gst_unet_layout_set_planes (GstUnetLayout * layout, GstUnetFormat format,
    guint channels, guint32 width, guint32 height)
{
  guint64 row, size;

  if (format >= GST_UNET_FORMAT_UNKNOWN || width == 0 || height == 0
      || width > G_MAXINT || height > G_MAXINT || channels < 1
      || channels > GST_UNET_MAX_CHANNELS
      || (channels > 1 && !multi_channel_format (format)))
    return FALSE;
  row = gst_unet_default_stride (width, formats[format].bpp);
  if (!g_uint64_checked_mul (&size, row, height)
      || !g_uint64_checked_mul (&size, size, channels) || size > G_MAXSSIZE)
    return FALSE;
  layout->channels = channels;
  layout->format = format;
  layout->width = width;
  layout->height = height;
  layout->bpp = formats[format].bpp;
  layout->stride = row;
  layout->size = size;
  if (layout->fps_d == 0) {
    layout->fps_n = 0;
    layout->fps_d = 1;
  }
  if (layout->par_n == 0 || layout->par_d == 0)
    layout->par_n = layout->par_d = 1;
  return TRUE;
}

gchar *
gst_unet_layout_format_name (const GstUnetLayout * layout)
{
  if (layout->channels > 1)
    return g_strdup_printf ("%s_C%u", gst_unet_format_name (layout->format),
        layout->channels);
  return g_strdup (gst_unet_format_name (layout->format));
}

/* "GRAY16_LE_C2" -> GRAY16_LE, 2; "GRAY16_LE" -> GRAY16_LE, 1. */
static GstUnetFormat
format_and_channels (const gchar * name, guint * channels)
{
  const gchar *suffix = name ? strrchr (name, '_') : NULL;
  GstUnetFormat f;

  *channels = 1;
  if (suffix && suffix[1] == 'C' && g_ascii_isdigit (suffix[2])
      && suffix[3] == '\0' && suffix[2] >= '2'
      && suffix[2] <= '0' + GST_UNET_MAX_CHANNELS) {
    gchar *base = g_strndup (name, suffix - name);
    f = gst_unet_format_from_name (base);
    g_free (base);
    if (f == GST_UNET_FORMAT_UNKNOWN || !multi_channel_format (f))
      return GST_UNET_FORMAT_UNKNOWN;
    *channels = suffix[2] - '0';
    return f;
  }
  return gst_unet_format_from_name (name);
}

gboolean
gst_unet_layout_from_caps (GstUnetLayout * layout, const GstCaps * caps)
{
  const GstStructure *s;
  gint w, h;
  guint channels;
  GstUnetFormat f;

  memset (layout, 0, sizeof (*layout));
  if (!gst_caps_is_fixed (caps))
    return FALSE;
  s = gst_caps_get_structure (caps, 0);
  if (!gst_structure_get_int (s, "width", &w)
      || !gst_structure_get_int (s, "height", &h) || w < 1 || h < 1)
    return FALSE;
  if (!gst_structure_get_fraction (s, "framerate", &layout->fps_n,
          &layout->fps_d))
    layout->fps_d = 1;
  if (!gst_structure_get_fraction (s, "pixel-aspect-ratio", &layout->par_n,
          &layout->par_d))
    layout->par_n = layout->par_d = 1;
  f = format_and_channels (gst_structure_get_string (s, "format"), &channels);
  return gst_unet_layout_set_planes (layout, f, channels, w, h);
}

GstCaps *
gst_unet_layout_to_caps (const GstUnetLayout * layout)
{
  g_autofree gchar *name = gst_unet_layout_format_name (layout);

  return gst_caps_new_simple ("video/x-raw",
      "format", G_TYPE_STRING, name,
      "width", G_TYPE_INT, (gint) layout->width,
      "height", G_TYPE_INT, (gint) layout->height,
      "framerate", GST_TYPE_FRACTION, layout->fps_n, layout->fps_d,
      "pixel-aspect-ratio", GST_TYPE_FRACTION, layout->par_n, layout->par_d,
      "interlace-mode", G_TYPE_STRING, "progressive", NULL);
}

gboolean
gst_unet_layout_equal (const GstUnetLayout * a, const GstUnetLayout * b)
{
  return a->format == b->format && a->channels == b->channels
      && a->width == b->width
      && a->height == b->height && a->fps_n == b->fps_n
      && a->fps_d == b->fps_d && a->par_n == b->par_n && a->par_d == b->par_d;
}

gboolean
gst_unet_frame_map (GstUnetFrame * frame, const GstUnetLayout * layout,
    GstBuffer * buf, GstMapFlags flags)
{
  GstVideoMeta *meta = gst_buffer_get_video_meta (buf);
  gsize offset = 0, row = (gsize) layout->width * layout->bpp;

  frame->stride = layout->stride;
  if (meta && meta->n_planes >= 1) {
    offset = meta->offset[0];
    frame->stride = meta->stride[0];
  }
  if (frame->stride < row || !gst_buffer_map (buf, &frame->map, flags))
    return FALSE;
  /* Every plane: (channels × height − 1) full strides and one row. */
  if (offset > frame->map.size || frame->map.size - offset < row
      || (frame->map.size - offset - row) / frame->stride <
      (gsize) layout->height * MAX (layout->channels, 1) - 1) {
    gst_buffer_unmap (buf, &frame->map);
    return FALSE;
  }
  frame->buf = buf;
  frame->data = frame->map.data + offset;
  return TRUE;
}

void
gst_unet_frame_unmap (GstUnetFrame * frame)
{
  gst_buffer_unmap (frame->buf, &frame->map);
}
