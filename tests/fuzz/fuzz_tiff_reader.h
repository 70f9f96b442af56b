/* The TIFF reader's fuzz oracle (fuzz_tiff_reader.c): reads every page of the
 * file at @path through the reader and abort()s when its contract breaks. */
#ifndef __FUZZ_TIFF_READER_H__
#define __FUZZ_TIFF_READER_H__

#include <glib.h>

void fuzz_tiff_reader_check (const gchar * path);

#endif
