#!/usr/bin/env bash
# pipelines/segment-cluster.sh: sharded segmentation, killed shards, reruns, assembly.
#
#   tests/samples/cluster-test.sh local | slurm
#
# Both cases segment one generated stack (samples/synth.py, 30 pages of 384x384) with the
# sample model in 3 page-range shards, kill one shard's pipeline with SIGKILL in the middle
# of the shard, and check that the assembled stack equals, page for page and byte for byte
# in pixel data (and in the whole file), one single-process run of segment-stack.sh over
# the whole stack, that the statistics CSV has one row per page in page order, and that
# no temporary or shard file is left behind.
#
#   local  --local --jobs 2 (no Slurm); then a run killed as a whole and run again, which
#          must run only the shards the first run did not finish; then two stacks, one
#          truncated: the good one is written, the run fails naming the bad one; then
#          probabilities (float) output, equal to a single run's bit for bit. Also
#          checks what UNET_DRY_RUN prints (one pipeline per GPU, the sbatch options).
#   slurm  starts its own single-node Slurm (munged, slurmctld, slurmd from Debian's
#          munge and slurm-wlm, with a generated slurm.conf and key in a temporary
#          directory, on free local ports; all stopped at the end in every case), submits
#          with --slurm --wait, kills one task's pipeline (kill -9) and cancels another
#          task (scancel) mid-shard: the assembling job must submit just those again.
#          Needs root (exit 77 without it, or without slurm-wlm/munge installed).
set -euo pipefail

ROOT=${UNET_SOURCE_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
. "$ROOT/pipelines/lib.sh"
P="$ROOT/pipelines"
CASE=${1:?usage: cluster-test.sh local|slurm}
export UNET_TIMEOUT=${UNET_TIMEOUT:-120}
# In the sanitizer build the test environment preloads the ASan/UBSan runtimes into every
# process; here they go only where our instrumented plugins are loaded (lib.sh's
# unet_with_runtime, which the scripts use): pgrep (procps) hangs with them preloaded,
# and Slurm's daemons and commands are not ours to instrument.
unset LD_PRELOAD

skip() { echo "SKIP: $*"; exit 77; }
fail() { echo "FAIL: $*" >&2; exit 1; }

if [ "$CASE" = slurm ]; then
  [ "$(id -u)" -eq 0 ] || skip "starting a private Slurm needs root"
  for c in munged slurmctld slurmd sbatch squeue scancel sinfo; do
    command -v "$c" >/dev/null || skip "$c not found (apt-get install slurm-wlm munge; scripts/bootstrap.sh does)"
  done
fi

tmp=$(mktemp -d)
chmod 755 "$tmp"
bg_pid=""
daemons=()
cleanup() {
  local p
  if [ -n "$bg_pid" ] && kill -0 "$bg_pid" 2>/dev/null; then
    kill -- "-$bg_pid" 2>/dev/null || kill "$bg_pid" 2>/dev/null
    wait "$bg_pid" 2>/dev/null
  fi
  if [ ${#daemons[@]} -gt 0 ]; then
    # jobs first (their slurmstepd outlive slurmd), then slurmd, slurmctld, munged
    scancel --user="$(id -un)" 2>/dev/null || true
    for _ in $(seq 1 50); do
      [ -z "$(squeue -h 2>/dev/null)" ] && break
      sleep 0.2
    done
    for ((i = ${#daemons[@]} - 1; i >= 0; i--)); do
      p=${daemons[$i]}
      kill "$p" 2>/dev/null || continue
      for _ in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$p" 2>/dev/null || true
      wait "$p" 2>/dev/null || true
    done
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

free_port() {
  "$UNET_PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# ---- the stack and the single-process reference ----------------------------------------
# CLUSTER_TEST_FRAMES/_SIZE/_SHARDS scale it up (e.g. 300 pages in 8 shards)
# (30 pages: 10 per shard, so the kill that lands after a shard's first page still finds
# the pipeline running on a fast machine; with 6 per shard it once found it gone)
FRAMES=${CLUSTER_TEST_FRAMES:-30}
SIZE=${CLUSTER_TEST_SIZE:-384}
NS=${CLUSTER_TEST_SHARDS:-3}
# a small MaxArraySize makes the script split the shards over several array jobs, as it
# must on a real cluster when there are more shards than MaxArraySize (1001 by default)
MAXARRAY=${CLUSTER_TEST_MAXARRAY:-2}
# make_stack FILE FRAMES WxH SEED: synthetic nuclei, calibrated (0.65 um pixels, 2 um z
# spacing: the metadata must survive sharding)
make_stack() {
  "$UNET_PYTHON" "$ROOT/samples/synth.py" --kind nuclei --frames "$2" --size "$3" --seed "$4" \
    --out-image "$1" --out-mask "$tmp/masks.tif" >/dev/null
  "$UNET_PYTHON" - "$1" <<'PY'
import sys, tifffile
a = tifffile.imread(sys.argv[1])
tifffile.imwrite(sys.argv[1], a, imagej=True, resolution=(1 / 0.65, 1 / 0.65),
                 metadata={"axes": "ZYX", "spacing": 2.0, "unit": "micron"})
PY
}
make_stack "$tmp/stack.tif" "$FRAMES" "${SIZE}x${SIZE}" 21
"$P/segment-stack.sh" -q -d cpu "$tmp/stack.tif" "$tmp/direct.tif" 2>/dev/null ||
  fail "the single-process run failed"

# compare RESULT: pixel data page by page (tifffile) and the whole file against direct.tif
compare() {  # compare RESULT [REFERENCE]
  "$UNET_PYTHON" - "${2:-$tmp/direct.tif}" "$1" <<'PY' || fail "$1 differs from the single-process run"
import sys, numpy as np, tifffile
ref, got = sys.argv[1], sys.argv[2]
with tifffile.TiffFile(ref) as a, tifffile.TiffFile(got) as b:
    assert len(a.pages) == len(b.pages), f"{len(b.pages)} pages, expected {len(a.pages)}"
    for k, (pa, pb) in enumerate(zip(a.pages, b.pages)):
        x, y = pa.asarray(), pb.asarray()
        assert x.dtype == y.dtype and x.shape == y.shape, f"page {k}: {y.dtype}{y.shape} vs {x.dtype}{x.shape}"
        assert x.tobytes() == y.tobytes(), f"page {k}: {np.count_nonzero(x != y)} pixels differ"
    assert a.pages[0].description == b.pages[0].description, "ImageJ description differs"
    assert "spacing=2" in a.pages[0].description, a.pages[0].description
    for tag in ("XResolution", "YResolution", "ResolutionUnit"):
        assert a.pages[0].tags[tag].value == b.pages[0].tags[tag].value, f"{tag} differs"
    assert a.is_bigtiff == b.is_bigtiff, "classic TIFF / BigTIFF choice differs"
    n = len(a.pages)
    labels = a.asarray(key=range(n))
assert labels.max() > labels.min(), "the reference is constant (no objects): the test would prove nothing"
assert open(ref, "rb").read() == open(got, "rb").read(), "same pixels, but the files differ"
print(f"{got}: {n} pages equal the single-process run")
PY
}

check_stats() {  # check_stats CSV: one row per page, pages in order, one stack
  "$UNET_PYTHON" - "$1" "$FRAMES" "$NS" <<'PY' || fail "statistics $1"
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
n = int(sys.argv[2])
assert [int(r["frame-number"]) for r in rows] == list(range(n)), [r["frame-number"] for r in rows]
assert len({r["stack"] for r in rows}) == 1
assert {r["shard"] for r in rows} == {str(k) for k in range(int(sys.argv[3]))}
assert all(int(r["object-count"]) >= 0 and int(r["tiles"]) >= 1 for r in rows)
print(f"{sys.argv[1]}: {len(rows)} rows")
PY
}

check_clean() {  # no temporary file in the output or work directory, no shard left
  local left
  left=$(find "$tmp" \( -name '*.part-*' -o -name 'shard-*.tif' \) -print)
  [ -z "$left" ] || fail "left behind: $left"
}

# wait_page FILEGLOB: until a shard's temporary file holds at least one page (it then has
# pages still to write: the kill lands in the middle of the shard); prints its name
wait_page() {
  local f
  for _ in $(seq 1 3000); do
    for f in $1; do
      if [ -f "$f" ] && [ "$(stat -c %s "$f" 2>/dev/null || echo 0)" -gt $((SIZE * SIZE + 1024)) ]; then
        echo "$f"
        return 0
      fi
    done
    sleep 0.02
  done
  fail "no shard file $1 with a page after 60 s"
}

# kill_pipeline PARTFILE: SIGKILL to the gst-launch-1.0 writing it (found by its unique path)
kill_pipeline() {
  local p pid=""
  for p in $(pgrep -f -- "location=$1"); do
    # not the timeout(1) or shell around it: the pipeline process itself
    [ "$(cat "/proc/$p/comm" 2>/dev/null)" = gst-launch-1.0 ] && pid=$p
  done
  [ -n "$pid" ] || fail "no pipeline writes $1"
  kill -9 "$pid"
  echo "killed pipeline $pid writing $(basename "$1") ($(stat -c %s "$1" 2>/dev/null || echo gone) bytes)"
}

W="$tmp/work"
OUT="$tmp/out/labels.tif"
mkdir -p "$tmp/out"
common=(-d cpu -n "$NS" -w "$W" -O "$OUT" "$tmp/stack.tif")

case "$CASE" in
  local)
    # 0. what would run (UNET_DRY_RUN): one pipeline per GPU, and the Slurm submission
    UNET_DRY_RUN=1 "$P/segment-cluster.sh" --local --gpus 0,1 -n 3 -w "$tmp/dry" "$tmp/stack.tif" \
      > "$tmp/dry.txt" 2>/dev/null || fail "dry run --local --gpus"
    for k in 0 1 2; do
      stop=$(((k + 1) * FRAMES / 3 - 1))
      [ $k -eq 2 ] && stop=-1   # the last shard reads to the end, as a single run does
      grep -q "^shard $k: .*start-index=$((k * FRAMES / 3)) stop-index=$stop .*device=cuda .*gpu-id=$((k % 2)) " "$tmp/dry.txt" ||
        { cat "$tmp/dry.txt"; fail "shard $k: wrong range or GPU"; }
    done
    rm -rf "$tmp/dry"
    UNET_DRY_RUN=1 "$P/segment-cluster.sh" --slurm --gpu --cpus 4 --time 0:30:00 --partition gpu \
      --max-running 2 -n 3 -w "$tmp/dry" "$tmp/stack.tif" > "$tmp/dry.txt" 2>/dev/null || fail "dry run --slurm"
    grep -q -- "^sbatch .*--partition=gpu --array=0-2%2 .*--time=0:30:00 --requeue .*--gres=gpu:1 --cpus-per-task=4 .*--run-shard" \
      "$tmp/dry.txt" || { cat "$tmp/dry.txt"; fail "shard array submission"; }
    grep -q -- "^sbatch .*--dependency=afterany:ARRAY_JOB_ID .*--finish" "$tmp/dry.txt" ||
      { cat "$tmp/dry.txt"; fail "dependent job submission"; }
    rm -rf "$tmp/dry"
    # without --work-dir: one beside the output, named after the plan (same command, same
    # directory; other shards, another one)
    wd() { UNET_DRY_RUN=1 "$P/segment-cluster.sh" --local "$@" -O "$tmp/dry/x.tif" "$tmp/stack.tif" 2>&1 |
             sed -n 's/.*work directory //p'; }
    a=$(wd -n 3); b=$(wd -n 3); c=$(wd -n 2)
    [[ "$a" == "$tmp/dry/segment-cluster-"* ]] && [ "$a" = "$b" ] && [ "$a" != "$c" ] ||
      fail "default work directories: '$a' '$b' '$c'"
    rm -rf "$tmp/dry"

    # 1. one shard killed mid-shard: the run itself runs it again
    setsid "$P/segment-cluster.sh" --local --jobs 2 --retries 1 "${common[@]}" > "$tmp/run1.log" 2>&1 &
    bg_pid=$!
    part=$(wait_page "$W/shards/stack-00000/shard-00001.tif.part-*")
    kill_pipeline "$part"
    wait "$bg_pid" || { cat "$tmp/run1.log"; fail "the run did not recover from the killed shard"; }
    bg_pid=""
    grep -q "round 2: 1 shard" "$tmp/run1.log" || { cat "$tmp/run1.log"; fail "the killed shard was not run again"; }
    compare "$OUT"
    check_stats "$W/stats.csv"
    check_clean

    # 2. the same command again: nothing to run, output untouched
    before=$(stat -c %Y.%i "$OUT")
    "$P/segment-cluster.sh" --local --jobs 2 "${common[@]}" > "$tmp/run2.log" 2>&1 ||
      { cat "$tmp/run2.log"; fail "rerun failed"; }
    grep -q "$NS shard(s), 0 to run" "$tmp/run2.log" || { cat "$tmp/run2.log"; fail "rerun ran shards again"; }
    [ "$(stat -c %Y.%i "$OUT")" = "$before" ] || fail "rerun rewrote the output"
    # a second front end on a work directory in use is refused (the lock held here)
    exec 8> "$W/.lock"
    flock -n 8 || fail "cannot take the work directory's lock"
    if "$P/segment-cluster.sh" --local --jobs 2 "${common[@]}" > "$tmp/second.log" 2>&1; then
      fail "a second run on a busy work directory was accepted"
    fi
    grep -q "another segment-cluster.sh is running on" "$tmp/second.log" || { cat "$tmp/second.log"; fail "no message"; }
    exec 8>&-
    # other shards or settings in the same work directory are refused, not mixed
    if "$P/segment-cluster.sh" --local -d cpu -n $((NS + 1)) -w "$W" -O "$OUT" "$tmp/stack.tif" 2> "$tmp/err"; then
      fail "a work directory planned with $NS shards accepted $((NS + 1))"
    fi
    grep -q "holds a run with other inputs, shards or settings" "$tmp/err" || { cat "$tmp/err"; fail "no message"; }

    # 3. the whole run killed (script and pipelines) while shards run, then run again:
    #    complete shards are kept, the rest run, the result is the same
    rm -rf "$W" "$OUT"
    setsid "$P/segment-cluster.sh" --local --jobs 1 "${common[@]}" > "$tmp/run3.log" 2>&1 &
    bg_pid=$!
    wait_page "$W/shards/stack-00000/shard-00001.tif.part-*" >/dev/null
    kill -9 -- "-$bg_pid"
    wait "$bg_pid" 2>/dev/null || true
    bg_pid=""
    [ ! -e "$OUT" ] || fail "a killed run left an output"
    "$P/segment-cluster.sh" --status "$W" | tee "$tmp/status.txt"
    grep -q "shards: 1/$NS done" "$tmp/status.txt" || fail "status after the kill"
    "$P/segment-cluster.sh" --local --jobs 1 "${common[@]}" > "$tmp/run4.log" 2>&1 ||
      { cat "$tmp/run4.log"; fail "run after the kill failed"; }
    grep -q "$NS shard(s), $((NS - 1)) to run" "$tmp/run4.log" || { cat "$tmp/run4.log"; fail "the complete shard ran again"; }
    compare "$OUT"
    check_stats "$W/stats.csv"
    check_clean

    # 4. two stacks, one of them truncated (its page chain breaks before the end): the
    #    good one is written, the bad one is not, the run fails naming it (a smaller stack
    #    from here on: no kill to time)
    make_stack "$tmp/small.tif" 12 200x152 22
    "$P/segment-stack.sh" -q -d cpu "$tmp/small.tif" "$tmp/small-direct.tif" 2>/dev/null ||
      fail "the single-process run of small.tif failed"
    head -c $(( $(stat -c %s "$tmp/small-direct.tif") - 100 )) "$tmp/small-direct.tif" > "$tmp/bad.tif"
    if "$P/segment-cluster.sh" --local --jobs 2 --retries 0 -d cpu -n 2 -w "$tmp/work2" -D "$tmp/out2" \
        "$tmp/small.tif" "$tmp/bad.tif" > "$tmp/run5.log" 2>&1; then
      cat "$tmp/run5.log"; fail "a run with a truncated stack succeeded"
    fi
    grep -q "1 of 2 stack(s) written; 1 still lack shards .*bad.tif" "$tmp/run5.log" ||
      { cat "$tmp/run5.log"; fail "no message naming the truncated stack"; }
    # tiffstacksrc's own error for the damaged last page (tiffstacksink writes each
    # page's directory before its pixels, so the cut lands in the pixels)
    grep -Eq "Could not read page [0-9]+ of .*bad.tif|chain of pages breaks" "$tmp/run5.log" ||
      { cat "$tmp/run5.log"; fail "tiffstacksrc's error not shown"; }
    [ ! -e "$tmp/out2/bad-labels.tif" ] || fail "an output was written for the truncated stack"
    compare "$tmp/out2/small-labels.tif" "$tmp/small-direct.tif"
    [ -f "$tmp/work2/FAILED" ] && [ ! -f "$tmp/work2/DONE" ] || fail "work directory state after a failed run"
    # the bad stack's complete shard stays for a rerun; nothing half-written stays
    left=$(find "$tmp" -name '*.part-*' -print)
    [ -z "$left" ] || fail "left behind: $left"

    # 5. float output (probabilities), where any change in how tiles are batched or summed
    #    would show: shards with 1 thread each == one run with all threads; small tiles,
    #    so that every frame has several and batches mix tiles of neighbouring frames
    "$P/segment-stack.sh" -q -d cpu -t 188 -o probabilities "$tmp/small.tif" "$tmp/direct-prob.tif" 2>/dev/null ||
      fail "the single-process probabilities run failed"
    "$P/segment-cluster.sh" --local --jobs 2 -d cpu -t 188 -o probabilities -n 3 -w "$tmp/work3" \
      -O "$tmp/out3/prob.tif" "$tmp/small.tif" > "$tmp/run6.log" 2>&1 || { cat "$tmp/run6.log"; fail "probabilities run"; }
    "$UNET_PYTHON" -c 'import csv, sys; t = {int(r["tiles"]) for r in csv.DictReader(open(sys.argv[1]))}; assert min(t) > 1, t' \
      "$tmp/work3/stats.csv" || fail "frames were not split into several tiles"
    compare "$tmp/out3/prob.tif" "$tmp/direct-prob.tif"
    ;;

  slurm)
    S="$tmp/slurm"
    mkdir -p "$S/state" "$S/spool" "$S/munge" "$S/logs"
    chmod 700 "$S/munge"
    head -c 1024 /dev/urandom > "$S/munge/munge.key"
    chmod 400 "$S/munge/munge.key"
    munged --foreground --force --key-file="$S/munge/munge.key" \
      --socket="$S/munge/munge.sock" --pid-file="$S/munge/munged.pid" \
      --log-file="$S/munge/munged.log" --seed-file="$S/munge/munged.seed" > "$S/logs/munged.out" 2>&1 &
    daemons+=($!)
    host=$(hostname -s 2>/dev/null || hostname)
    node=$(slurmd -C | head -n 1 | sed -e 's/ RealMemory=[0-9]*//' -e "s/^NodeName=[^ ]*/NodeName=$host/")
    [[ "$node" == NodeName=*CPUs=* ]] || fail "slurmd -C: '$node'"
    cat > "$S/slurm.conf" <<EOF
ClusterName=unettest
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$(free_port)
SlurmdPort=$(free_port)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$S/munge/munge.sock
StateSaveLocation=$S/state
SlurmdSpoolDir=$S/spool
SlurmctldPidFile=$S/slurmctld.pid
SlurmdPidFile=$S/slurmd.pid
SlurmctldLogFile=$S/logs/slurmctld.log
SlurmdLogFile=$S/logs/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/builtin
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=30
MaxArraySize=$MAXARRAY
KillWait=2
$node NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=test Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
    export SLURM_CONF="$S/slurm.conf"
    for _ in $(seq 1 100); do [ -S "$S/munge/munge.sock" ] && break; sleep 0.1; done
    [ -S "$S/munge/munge.sock" ] || { cat "$S/munge/munged.log" >&2; fail "munged did not start"; }
    slurmctld -D -i > "$S/logs/slurmctld.out" 2>&1 &
    daemons+=($!)
    slurmd -D -N "$host" > "$S/logs/slurmd.out" 2>&1 &
    daemons+=($!)
    up=0
    for _ in $(seq 1 150); do
      if [ "$(sinfo -h -o %t 2>/dev/null)" = idle ]; then up=1; break; fi
      sleep 0.2
    done
    if [ $up -eq 0 ]; then
      tail -n 20 "$S/logs/"* >&2
      fail "the single-node Slurm did not come up"
    fi
    echo "Slurm up: $(sinfo -h -o '%P %D %c %t')"

    # one CPU per task: two tasks run at a time on a 2-core node, the third waits
    setsid "$P/segment-cluster.sh" --slurm --wait --cpus 1 --time 5:00 --assemble-time 5:00 \
      --retries 2 "${common[@]}" > "$tmp/run1.log" 2>&1 &
    bg_pid=$!
    part=$(wait_page "$W/shards/stack-00000/shard-00001.tif.part-*")
    kill_pipeline "$part"
    wait_page "$W/shards/stack-00000/shard-00002.tif.part-*" >/dev/null
    # the array holding shard 2 (arrays are split at MaxArraySize: shard = offset + index)
    task=$(awk -F'\t' '$2 == "shards" && $4 <= 2 { t = $3 "_" (2 - $4) } END { print t }' "$W/jobs")
    scancel "$task"
    echo "cancelled task $task (shard 2)"
    "$P/segment-cluster.sh" --status "$W" || true
    wait "$bg_pid" || { cat "$tmp/run1.log"; tail -n 30 "$W"/logs/*.log; fail "the Slurm run did not finish"; }
    bg_pid=""
    cat "$tmp/run1.log"
    [ "$(grep -c assemble "$W/jobs")" -eq 2 ] || { cat "$W/jobs"; fail "expected exactly one resubmission round"; }
    [ "$(awk -F'\t' '$1 == 1 && $2 == "shards"' "$W/jobs" | wc -l)" -eq $(( (NS + MAXARRAY - 1) / MAXARRAY )) ] ||
      { cat "$W/jobs"; fail "shards not split into arrays of MaxArraySize=$MAXARRAY"; }
    # the second round ran just the killed and the cancelled shard
    grep -q "2 shard(s) missing after round 1: 1 2" "$W"/logs/assemble-round1-*.log ||
      { cat "$W"/logs/assemble-round1-*.log; fail "round 2 did not resubmit shards 1 and 2"; }
    compare "$OUT"
    check_stats "$W/stats.csv"
    check_clean
    "$P/segment-cluster.sh" --status "$W" | tee "$tmp/status.txt"
    grep -q "shards: $NS/$NS done" "$tmp/status.txt" || fail "status"

    # a rerun submits nothing and leaves the output alone
    before=$(stat -c %Y.%i "$OUT")
    "$P/segment-cluster.sh" --slurm --wait "${common[@]}" > "$tmp/run2.log" 2>&1 ||
      { cat "$tmp/run2.log"; fail "rerun failed"; }
    grep -q "0 to run" "$tmp/run2.log" || fail "rerun submitted shards"
    [ "$(grep -c assemble "$W/jobs")" -eq 2 ] || fail "rerun submitted jobs"
    [ "$(stat -c %Y.%i "$OUT")" = "$before" ] || fail "rerun rewrote the output"
    ;;
  *) fail "unknown case $CASE" ;;
esac
echo "PASS: $CASE"
