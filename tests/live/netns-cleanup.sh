#!/usr/bin/env bash
# The camera harness leaves nothing behind: after a failing command and after an
# interrupted one, its namespace and its simulator are gone, and the command's exit
# status comes back.  Skips (77) where namespaces cannot be made, like the harness.
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

"$here/netns-camera.sh" sh -c 'exit 3'
rc=$?
[ $rc -eq 77 ] && exit 77
[ $rc -eq 3 ] || { echo "FAIL: status $rc, expected the command's 3" >&2; exit 1; }

"$here/netns-camera.sh" sleep 60 &
pid=$!
# wait until the harness runs the command (its namespace exists), then interrupt it
for _ in $(seq 1 100); do
  ip netns list 2>/dev/null | grep -qw "gstunet-$pid" && break
  sleep 0.05
done
ip netns list 2>/dev/null | grep -qw "gstunet-$pid" || { echo "FAIL: namespace gstunet-$pid never appeared" >&2; exit 1; }
sleep 0.3
kill -TERM "$pid"
wait "$pid"
rc=$?
[ $rc -eq 143 ] || { echo "FAIL: interrupted harness returned $rc, expected 143" >&2; exit 1; }
if ip netns list 2>/dev/null | grep -qw "gstunet-$pid"; then
  echo "FAIL: namespace gstunet-$pid left behind" >&2
  exit 1
fi
if ip netns pids "gstunet-$pid" >/dev/null 2>&1; then
  echo "FAIL: processes left in gstunet-$pid" >&2
  exit 1
fi
echo "cleanup after failure and after SIGTERM: ok"
