/* unettrain: trains or fine-tunes a U-Net from paired image/mask streams. */
#pragma once

#include <gst/gst.h>
#include <gst/base/gstaggregator.h>

G_BEGIN_DECLS

#define GST_TYPE_UNET_TRAIN (gst_unet_train_get_type ())
G_DECLARE_FINAL_TYPE (GstUnetTrain, gst_unet_train, GST, UNET_TRAIN, GstAggregator)

GST_ELEMENT_REGISTER_DECLARE (unettrain);

G_END_DECLS
