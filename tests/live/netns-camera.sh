#!/usr/bin/env bash
# Runs a command next to a simulated GigE Vision camera, in a private network namespace.
#
#   tests/live/netns-camera.sh [-s SERIAL] [--] COMMAND [ARGS...]
#
# Creates a network namespace that has nothing but loopback, starts Aravis's GigE Vision
# simulator (arv-fake-gv-camera-0.8, Debian package aravis-tools) there bound to
# 127.0.0.1, waits until it answers on the GVCP port (UDP 3956), runs COMMAND in the same
# namespace -- where `aravissrc camera-name=Aravis-Fake-<SERIAL>` (default
# Aravis-Fake-GV01) finds it by discovery -- and removes everything again, also when the
# command fails or the script is interrupted.  Exits with COMMAND's status.
#
# Nothing can leave the namespace: its only interface is lo, so discovery broadcasts and
# the camera's stream reach 127.0.0.1 and nothing else.
#
# Exit 77 (the test-suite "skip" status) when namespaces cannot be made here (not root,
# no CAP_SYS_ADMIN, a container without netns support) or the simulator is not installed.
set -uo pipefail

serial=GV01
while [ $# -gt 0 ]; do
  case "$1" in
    -s|--serial) serial=${2:?missing serial}; shift 2 ;;
    -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    --) shift; break ;;
    *) break ;;
  esac
done
if [ $# -eq 0 ]; then
  echo "usage: $0 [-s SERIAL] [--] COMMAND [ARGS...]" >&2
  exit 2
fi

skip() { echo "netns-camera: SKIP: $*" >&2; exit 77; }

command -v ip >/dev/null || skip "iproute2 (ip) is not installed"
fake=$(command -v arv-fake-gv-camera-0.8) || skip "arv-fake-gv-camera-0.8 not found (apt-get install aravis-tools)"

ns="gstunet-$$"
cam_pid=""
cmd_pid=""
cleanup() {
  if [ -n "$cmd_pid" ] && kill -0 "$cmd_pid" 2>/dev/null; then
    kill "$cmd_pid" 2>/dev/null
    wait "$cmd_pid" 2>/dev/null
  fi
  if [ -n "$cam_pid" ]; then
    kill "$cam_pid" 2>/dev/null
    wait "$cam_pid" 2>/dev/null
  fi
  ip netns delete "$ns" 2>/dev/null
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

ip netns add "$ns" 2>/dev/null || skip "cannot create a network namespace (needs root / CAP_SYS_ADMIN)"
ip netns exec "$ns" ip link set lo up || skip "cannot bring up loopback in the namespace"

# `ip netns exec` execs the simulator, so $! is the simulator itself
ip netns exec "$ns" "$fake" -i 127.0.0.1 -s "$serial" >/dev/null 2>&1 &
cam_pid=$!

ready=0
for _ in $(seq 1 100); do
  if ! kill -0 "$cam_pid" 2>/dev/null; then
    echo "netns-camera: the camera simulator exited at start" >&2
    exit 1
  fi
  if ip netns exec "$ns" ss -Hlun 'sport = :3956' 2>/dev/null | grep -q 127.0.0.1; then
    ready=1
    break
  fi
  sleep 0.05
done
if [ "$ready" -ne 1 ]; then
  echo "netns-camera: the camera simulator did not listen on 127.0.0.1:3956 within 5 s" >&2
  exit 1
fi

# in the background so that an interrupt reaches the trap, which stops it too
ip netns exec "$ns" "$@" &
cmd_pid=$!
wait "$cmd_pid"
exit $?
