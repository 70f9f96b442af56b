#!/bin/sh
# GStreamer's plugin scanner for the sanitizer test run (GST_PLUGIN_SCANNER_1_0,
# tests/meson.build): the real one, without leak checking and with the fast
# unwinder. It loads every system plugin to build the registry; their one-time
# allocations are not ours, and full unwinding on each of them made a registry
# scan take most of a minute. Our plugins are leak checked where they run.
ASAN_OPTIONS=detect_leaks=0:abort_on_error=1
export ASAN_OPTIONS
exec "$UNET_PLUGIN_SCANNER" "$@"
