#!/usr/bin/env bash
# Segments many stacks, or one huge stack split into page ranges, as shards: a Slurm array
# job (one task per shard) followed by a job that assembles the shards, or one pipeline
# per GPU / per CPU worker on this machine.
#
#   pipelines/segment-cluster.sh [options] INPUT.tif...
#   pipelines/segment-cluster.sh --status WORKDIR
#
# Every shard is `tiffstacksrc start-index=A stop-index=B ! unetsegment ! tiffstacksink`
# (the pipeline of segment-stack.sh over pages A..B). A shard is written under a temporary
# name and renamed when complete, with its per-frame statistics beside it; a shard killed
# at any moment leaves no result, only a temporary file that its next attempt removes.
# When every shard is complete, the shards of each stack are streamed in page order
# through concat into the final stack (tiffstacksink, same choices as a single run over
# the whole stack: pages, pixel data, pixel size, classic TIFF or BigTIFF), which is
# checked for its page count and renamed into place; the statistics of all stacks are
# joined into one CSV. Running the command again with the same work directory runs only
# what is missing: complete stacks and shards are skipped.
#
# Slurm (--slurm, the default when sbatch is found): submits an array job, one task per
# missing shard, and a job that depends on it (afterany). That job checks the shards:
# missing ones (failed, killed, cancelled, timed out) are submitted again as a new array
# of just those shards, up to --retries times, with a new dependent job; when none is
# missing it assembles. Tasks are also submitted with --requeue (requeued on node
# failure). Logs are in WORKDIR/logs. Progress: --status WORKDIR (shards done, and the
# jobs' states from squeue and sacct), or --wait.
#
# This machine (--local): the same shards, run by --gpus LIST (one pipeline per GPU,
# unetsegment device=cuda gpu-id=N) or --jobs N CPU workers; failed shards are run again
# (--retries), then assembled.
#
# Options:
# Input and output:
#   -O, --out FILE          output of the single INPUT (default INPUT-MODE.tif beside it)
#   -D, --output-dir DIR    outputs of several inputs: DIR/NAME-MODE.tif
#   -L, --list FILE         inputs, one path per line (in addition to the arguments)
#   -w, --work-dir DIR      shards, statistics, logs, state; on a file system all nodes share
#                           (default: segment-cluster-HASH beside the first output, HASH
#                           from the inputs, page ranges, model and settings, so the same
#                           command finds it again)
#   -s, --stats FILE.csv    per-frame statistics of the whole run (default WORKDIR/stats.csv):
#                           stack, frame-number (page), shard, then unetsegment-stats fields
#   -n, --shards N          split each stack into N page ranges (default 1: whole stacks)
#   -P, --pages-per-shard N split each stack into ranges of N pages
#       --keep-shards       keep the shard files after assembling
# Segmentation (as segment-stack.sh):
#   -m, --model FILE        model (default samples/nuclei-model.safetensors)
#   -o, --output-mode MODE  labels | probabilities | instances  (default labels)
#   -d, --device DEV        auto | cpu | cuda  (default auto; cuda with --gpu / --gpus)
#   -t, --tile-size N       input tile size, 0 = automatic (default 0)
#   -b, --batch-size N      tiles per forward pass (default unetsegment's)
#   -c, --compression C     none | lzw | deflate | zstd for the outputs (default none)
#   -p, --property P=V      any other unetsegment property (repeatable)
# Slurm:
#       --slurm | --local   where to run (default: --slurm when sbatch is on PATH)
#       --time T            time limit per shard task (default 1:00:00)
#       --gpu               one GPU per task (--gres=gpu:1, device cuda)
#       --gres SPEC         other generic resources per task (e.g. gpu:a100:1)
#       --cpus N            CPUs per task (--cpus-per-task; unetsegment uses that many threads)
#       --mem SIZE          memory per task (e.g. 8G)
#       --partition P, --account A, --qos Q
#       --max-running N     at most N tasks at once (array throttle)
#       --assemble-time T   time limit of the assembling job (default 1:00:00)
#       --sbatch-arg ARG    any other sbatch option, for every job (repeatable)
#       --retries N         submissions of missing shards after the first (default 2)
#       --wait              stay until the run ends, printing progress; exit status 0 only
#                           when every output was written
# This machine:
#       --gpus LIST         one pipeline per GPU, e.g. 0,1,2,3 (device cuda, gpu-id)
#       --jobs N            N CPU pipelines (default 1), each with cores/N threads
#   -h, --help              this text
# UNET_DRY_RUN=1 plans the work directory and prints each shard's pipeline (--local) or
# the sbatch commands (--slurm) instead of running or submitting them.
#
# Examples:
#   pipelines/segment-cluster.sh -m model.safetensors --gpu --time 2:00:00 -n 16 \
#       -w /scratch/$USER/run1 -O /data/big-labels.tif /data/big.tif
#   pipelines/segment-cluster.sh -m model.safetensors --cpus 8 -L stacks.txt -D /data/labels
#   pipelines/segment-cluster.sh --status /scratch/$USER/run1
#   pipelines/segment-cluster.sh --local --gpus 0,1,2,3 -n 4 big.tif
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SELF="$UNET_ROOT/pipelines/segment-cluster.sh"
SHARDS_PY="$UNET_ROOT/pipelines/shards.py"

# ---- work directory state ---------------------------------------------------------
# WORKDIR/plan.tsv    one line per shard: index stack input start stop frames shardfile
# WORKDIR/stacks.tsv  one line per stack: stack input output frames first-shard shards
# WORKDIR/job.conf    settings that decide the shards' content (a rerun must match)
# WORKDIR/sched.conf  scheduling settings of the latest submission
# WORKDIR/jobs        Slurm jobs, one line each: round, "shards" or "assemble", job id,
#                     offset (shard = offset + array index)
# WORKDIR/.lock       held by the front end (flock)
# WORKDIR/stats/      per-shard statistics; WORKDIR/shards/ shard stacks; WORKDIR/logs/
# WORKDIR/DONE, WORKDIR/FAILED   written when the run has ended

load_workdir() {
  W=$1
  [ -f "$W/job.conf" ] && [ -f "$W/plan.tsv" ] && [ -f "$W/stacks.tsv" ] ||
    unet_die "'$W' is not a work directory of this script (no job.conf/plan.tsv)"
  # shellcheck disable=SC1091
  . "$W/job.conf"
  if [ -f "$W/sched.conf" ]; then
    # shellcheck disable=SC1091
    . "$W/sched.conf"
    TIME=$TIME_LIMIT
    KEEP_SHARDS=$KEEP
  fi
  mapfile -t PLAN < "$W/plan.tsv"
  mapfile -t STACKS < "$W/stacks.tsv"
}

# shard_fields LINE / stack_fields LINE: a plan.tsv / stacks.tsv line into s_* / k_*
shard_fields() {
  IFS=$'\t' read -r _ s_stack s_input s_start s_stop s_frames s_file <<< "$1"
}
stack_fields() {
  IFS=$'\t' read -r k_idx k_input k_output k_frames k_first k_count <<< "$1"
}

stats_file() { printf '%s/stats/shard-%05d.csv' "$W" "$1"; }

stack_done() { [ -f "$k_output" ] && [ -f "$W/stats/stack-$k_idx.ok" ]; }

# shard_done IDX: its stack is assembled, or its file and statistics are complete
shard_done() {
  shard_fields "${PLAN[$1]}"
  stack_fields "${STACKS[$s_stack]}"
  stack_done && return 0
  [ -f "$s_file" ] && [ -f "$(stats_file "$1")" ]
}

missing_shards() {
  local i
  MISSING=()
  for i in "${!PLAN[@]}"; do
    shard_done "$i" || MISSING+=("$i")
  done
}

# ---- one shard ------------------------------------------------------------------------

run_shard() {
  local i=$1 gpu=${2:-} tmp stmp csv rows got seg status log stop
  [[ "$i" =~ ^[0-9]+$ ]] && [ "$i" -lt "${#PLAN[@]}" ] || unet_die "no shard $i in $W"
  if shard_done "$i"; then
    echo "$UNET_SCRIPT: shard $i is already complete" >&2
    return 0
  fi
  shard_fields "${PLAN[$i]}"
  stack_fields "${STACKS[$s_stack]}"
  # the last shard reads to the end, as a single run does: a stack whose chain of pages
  # breaks after its last readable page then fails here as it fails there
  stop=$s_stop
  [ $((s_stop + 1)) -eq "$k_frames" ] && stop=-1
  csv=$(stats_file "$i")
  tmp="$s_file.part-$(hostname -s)-$$"
  stmp="$csv.part-$(hostname -s)-$$"
  seg=(unetsegment name=seg "model=$MODEL" "device=$DEVICE" "output=$MODE" "tile-size=$TILE"
       post-messages=true)
  [ -n "$BATCH" ] && seg+=("batch-size=$BATCH")
  [ -n "$gpu" ] && seg+=("gpu-id=$gpu")
  seg+=("${PROPS[@]}")
  if [ -n "${UNET_DRY_RUN:-}" ]; then
    echo "shard $i: gst-launch-1.0 tiffstacksrc location=$s_input start-index=$s_start stop-index=$stop ! ${seg[*]} ! tiffstacksink location=$tmp compression=$COMPRESSION"
    return 0
  fi
  # what an earlier attempt of this shard left half-written
  rm -f -- "$s_file".part-* "$csv".part-*
  # threads: the CPUs Slurm gave the task, or this machine's share of a --jobs worker
  if [ -z "${UNET_NUM_THREADS:-}" ] && [ -n "${SLURM_CPUS_PER_TASK:-${SLURM_CPUS_ON_NODE:-}}" ]; then
    export UNET_NUM_THREADS=${SLURM_CPUS_PER_TASK:-$SLURM_CPUS_ON_NODE}
  fi
  echo "$UNET_SCRIPT: shard $i: $s_input pages $s_start-$s_stop${gpu:+ on GPU $gpu} on $(hostname -s)" >&2
  log="$W/logs/shard-$i.gst.log"
  : > "$log"
  set +e
  # gst-launch's own lines (errors) straight into the log, not through the -m stream:
  # merged into one pipe, its unbuffered stderr could land inside a half-written
  # stdout line and the error line be lost to the message parser
  unet_gst_launch -m tiffstacksrc "location=$s_input" "start-index=$s_start" "stop-index=$stop" \
      ! "${seg[@]}" ! tiffstacksink "location=$tmp" "compression=$COMPRESSION" 2>> "$log" 9>&- |
    "$UNET_PYTHON" "$UNET_ROOT/pipelines/trainlog.py" csv --quiet --message unetsegment-stats \
      > "$stmp" 2>> "$log"
  status=("${PIPESTATUS[@]}")
  set -e
  if [ "${status[0]}" -ne 0 ] || [ "${status[1]}" -ne 0 ]; then
    rm -f -- "$tmp" "$stmp"
    # the first error with its details (what a user acts on), else the log's end
    if grep -q '^ERROR' "$log"; then
      sed -n '/^ERROR/,$p' "$log" | head -n 40 >&2
    else
      tail -n 20 "$log" >&2
    fi
    unet_die "shard $i ($s_input pages $s_start-$s_stop) failed (status ${status[0]})"
  fi
  got=$(unet_with_runtime "$UNET_PYTHON" "$SHARDS_PY" count "$tmp") || got=-1
  rows=$(( $(wc -l < "$stmp") - 1 ))
  if [ "$got" != "$s_frames" ] || [ "$rows" != "$s_frames" ]; then
    rm -f -- "$tmp" "$stmp"
    unet_die "shard $i wrote $got pages and $rows statistics rows, expected $s_frames"
  fi
  # statistics first: the shard counts as complete once its stack file has its name
  mv -f -- "$stmp" "$csv"
  mv -f -- "$tmp" "$s_file"
  echo "$UNET_SCRIPT: shard $i complete ($s_frames pages)" >&2
}

# ---- assembling -------------------------------------------------------------------

# Assembles every stack whose shards are all complete and joins the statistics of those
# stacks; when a stack still lacks shards (retries spent) the others are still finished,
# and the run ends FAILED naming what is missing.
assemble_all() {
  local k i shards tmp items=() total=0 done_stacks=0 incomplete=() lacking
  for k in "${!STACKS[@]}"; do
    stack_fields "${STACKS[$k]}"
    lacking=()
    for ((i = k_first; i < k_first + k_count; i++)); do
      shard_done "$i" || lacking+=("$i")
    done
    stack_fields "${STACKS[$k]}"
    if [ ${#lacking[@]} -gt 0 ]; then
      incomplete+=("$k_input (shards ${lacking[*]})")
      continue
    fi
    total=$((total + k_frames))
    done_stacks=$((done_stacks + 1))
    for ((i = k_first; i < k_first + k_count; i++)); do
      shard_fields "${PLAN[$i]}"
      items+=("$k_input" "$s_start" "$i" "$(stats_file "$i")")
    done
    stack_done && continue
    if [ "$k_count" -gt 1 ]; then
      shards=()
      for ((i = k_first; i < k_first + k_count; i++)); do
        shard_fields "${PLAN[$i]}"
        shards+=("$s_file")
      done
      rm -f -- "$k_output".part-*
      tmp="$k_output.part-$(hostname -s)-$$"
      echo "$UNET_SCRIPT: assembling $k_output from $k_count shards ($k_frames pages)" >&2
      unet_with_runtime "$UNET_PYTHON" "$SHARDS_PY" assemble --out "$tmp" --frames "$k_frames" \
        --compression "$COMPRESSION" "${shards[@]}" || fail_run "assembling $k_output failed (see above)"
      mv -f -- "$tmp" "$k_output"
    fi
    : > "$W/stats/stack-$k.ok"
    if [ "$k_count" -gt 1 ] && [ "${KEEP_SHARDS:-0}" -eq 0 ]; then
      rm -f -- "${shards[@]}"
    fi
  done
  if [ "$done_stacks" -gt 0 ]; then
    unet_with_runtime "$UNET_PYTHON" "$SHARDS_PY" merge-stats --out "$STATS" --expect "$total" "${items[@]}" ||
      fail_run "joining the statistics failed"
  fi
  if [ ${#incomplete[@]} -gt 0 ]; then
    fail_run "$done_stacks of ${#STACKS[@]} stack(s) written; ${#incomplete[@]} still lack shards after $((RETRIES + 1)) attempts: ${incomplete[*]} (logs in $W/logs)"
  fi
  rm -rf -- "$W/shards"/*/*.part-* 2>/dev/null || true
  echo "${#STACKS[@]} stacks, $total pages" > "$W/DONE"
  rm -f -- "$W/FAILED"
  echo "$UNET_SCRIPT: done: ${#STACKS[@]} stack(s), $total pages; statistics in $STATS" >&2
}

fail_run() {
  rm -f -- "$W/DONE"
  echo "$*" > "$W/FAILED"
  unet_die "$*"
}

# ---- Slurm --------------------------------------------------------------------------

# array_spec IDX...: "0-3,7,9-10"
array_spec() {
  local out="" a=$1 b=$1 x
  shift
  for x in "$@"; do
    if [ "$x" -eq $((b + 1)) ]; then b=$x; continue; fi
    out+="${out:+,}$a$([ "$a" -ne "$b" ] && echo "-$b")"
    a=$x; b=$x
  done
  out+="${out:+,}$a$([ "$a" -ne "$b" ] && echo "-$b")"
  echo "$out"
}

sbatch_common() {
  SB=(--parsable)
  [ -n "$PARTITION" ] && SB+=("--partition=$PARTITION")
  [ -n "$ACCOUNT" ] && SB+=("--account=$ACCOUNT")
  [ -n "$QOS" ] && SB+=("--qos=$QOS")
  SB+=("${SBATCH_ARGS[@]}")
}

# Slurm's MaxArraySize: array indices must stay below it (1001 unless configured)
max_array_size() {
  local m
  m=$(scontrol show config 2>/dev/null | awk '$1 == "MaxArraySize" { print $3 }')
  [[ "$m" =~ ^[0-9]+$ ]] && [ "$m" -ge 1 ] && echo "$m" || echo 1001
}

# submit_round ROUND IDX...: array job(s) of those shards (shard = offset + array index,
# one array per MaxArraySize block of shard indices) + the job that depends on them all
submit_round() {
  local round=$1 m out jid fjid wrap spec chunk offset x deps="" submitted=()
  shift
  m=$(max_array_size)
  local -a todo=("$@")
  rm -f -- "$W/DONE" "$W/FAILED"
  while [ ${#todo[@]} -gt 0 ]; do
    chunk=$(( todo[0] / m ))
    offset=$(( chunk * m ))
    local -a tasks=() rest=()
    for x in "${todo[@]}"; do
      if [ $((x / m)) -eq "$chunk" ]; then tasks+=($((x - offset))); else rest+=("$x"); fi
    done
    todo=("${rest[@]}")
    spec=$(array_spec "${tasks[@]}")
    [ -n "$MAX_RUNNING" ] && spec+="%$MAX_RUNNING"
    sbatch_common
    SB+=("--array=$spec" "--job-name=unet-shards" "--time=$TIME" --requeue
         "--output=$W/logs/slurm-%A_%a.log")
    [ -n "$GRES" ] && SB+=("--gres=$GRES")
    [ -n "$CPUS" ] && SB+=("--cpus-per-task=$CPUS")
    [ -n "$MEM" ] && SB+=("--mem=$MEM")
    wrap="export UNET_BUILD_ROOT=$(printf %q "$UNET_BUILD"); exec $(printf %q "$SELF") --run-shard $(printf %q "$W") \$(($offset + SLURM_ARRAY_TASK_ID))"
    if [ -n "${UNET_DRY_RUN:-}" ]; then
      echo "sbatch ${SB[*]} --wrap='$wrap'"
      deps+=":ARRAY_JOB_ID"
      continue
    fi
    out=$(sbatch "${SB[@]}" --wrap="$wrap") || {
      [ ${#submitted[@]} -gt 0 ] && scancel "${submitted[@]}" 2>/dev/null
      unet_die "sbatch refused the shard array (see above)"
    }
    jid=${out%%;*}
    submitted+=("$jid")
    deps+=":$jid"
    printf '%s\tshards\t%s\t%s\n' "$round" "$jid" "$offset" >> "$W/jobs"
    echo "$UNET_SCRIPT: round $round: shard array job $jid, shards $offset + ($spec)" >&2
  done
  sbatch_common
  [ -n "$deps" ] && SB+=("--dependency=afterany$deps" --kill-on-invalid-dep=no)
  SB+=("--job-name=unet-assemble" --requeue
       "--time=$ASSEMBLE_TIME" "--output=$W/logs/assemble-round$round-%j.log")
  [ -n "$MEM" ] && SB+=("--mem=$MEM")
  wrap="export UNET_BUILD_ROOT=$(printf %q "$UNET_BUILD"); exec $(printf %q "$SELF") --finish $(printf %q "$W") $round"
  if [ -n "${UNET_DRY_RUN:-}" ]; then
    echo "sbatch ${SB[*]} --wrap='$wrap'"
    return 0
  fi
  out=$(sbatch "${SB[@]}" --wrap="$wrap") || {
    scancel "${submitted[@]}" 2>/dev/null || true
    unet_die "sbatch refused the assembling job (see above)"
  }
  fjid=${out%%;*}
  printf '%s\tassemble\t%s\t-\n' "$round" "$fjid" >> "$W/jobs"
  echo "$UNET_SCRIPT: round $round: $# shard task(s), then assembling job $fjid" >&2
}

# jobs of this work directory that Slurm still knows as queued or running
active_jobs() {
  local ids
  [ -f "$W/jobs" ] || return 0
  ids=$(cut -f3 "$W/jobs" | tr '\n' ',' | sed 's/,*$//')
  [ -n "$ids" ] || return 0
  squeue -h -r -j "$ids" -o "%i %T" 2>/dev/null || true
}

finish_slurm() {
  local round=$1
  missing_shards
  if [ ${#MISSING[@]} -gt 0 ]; then
    if [ "$round" -le "$RETRIES" ]; then
      echo "$UNET_SCRIPT: ${#MISSING[@]} shard(s) missing after round $round: ${MISSING[*]}; submitting them again" >&2
      submit_round $((round + 1)) "${MISSING[@]}"
      return 0
    fi
  fi
  assemble_all
}

print_status() {
  local done=0 i line n_run=0 n_pend=0 state round arrays
  missing_shards
  done=$(( ${#PLAN[@]} - ${#MISSING[@]} ))
  echo "shards: $done/${#PLAN[@]} done"
  if [ -f "$W/jobs" ] && command -v squeue >/dev/null; then
    while read -r line; do
      state=${line#* }
      case "$state" in RUNNING|COMPLETING) n_run=$((n_run + 1)) ;; PENDING|CONFIGURING|REQUEUED) n_pend=$((n_pend + 1)) ;; esac
    done < <(active_jobs)
    echo "jobs: $n_run running, $n_pend pending (squeue: shard tasks and the assembling job)"
    round=$(tail -n 1 "$W/jobs" | cut -f1)
    arrays=$(awk -F'\t' -v r="$round" '$1 == r && $2 == "shards" { printf "%s%s", (n++ ? "," : ""), $3 }' "$W/jobs")
    echo "latest round: $round, shard array job(s) $arrays, assembling job $(tail -n 1 "$W/jobs" | cut -f3)"
    if command -v sacct >/dev/null && sacct -n -X -j "$arrays" -o State >/dev/null 2>&1; then
      echo "task states (sacct): $(sacct -n -X -j "$arrays" -o State | sort | uniq -c | awk '{printf "%s%s %s", (NR>1?", ":""), $1, $2}')"
    fi
  fi
  if [ ${#MISSING[@]} -gt 0 ] && [ ${#MISSING[@]} -le 20 ]; then
    echo "missing shards: ${MISSING[*]}"
  fi
  if [ -f "$W/DONE" ]; then
    echo "finished: $(cat "$W/DONE")"
  elif [ -f "$W/FAILED" ]; then
    echo "failed: $(cat "$W/FAILED")"
  fi
}

wait_slurm() {
  local last="" now idle=0
  while :; do
    [ -f "$W/DONE" ] && { echo "$UNET_SCRIPT: $(cat "$W/DONE"), statistics in $STATS" >&2; return 0; }
    [ -f "$W/FAILED" ] && unet_die "$(cat "$W/FAILED")"
    # none of our jobs in squeue: the run ends with DONE or FAILED within moments, unless
    # the jobs were cancelled (allow for a shared file system's caching and a busy
    # controller not answering squeue for a while)
    if [ -z "$(active_jobs)" ]; then
      idle=$((idle + 1))
      [ "$idle" -lt 30 ] || unet_die "no job of $W is queued or running any more and the run did not finish (logs in $W/logs)"
    else
      idle=0
    fi
    now=$(print_status)
    now=$(sed -n '1,2p' <<< "$now" | tr '\n' ' ')
    [ "$now" != "$last" ] && echo "$UNET_SCRIPT: $now" >&2
    last=$now
    sleep 1
  done
}

# ---- this machine ---------------------------------------------------------------------

run_local() {
  local round workers=() k pids=() n i threads
  if [ -n "$GPUS" ]; then
    IFS=, read -r -a workers <<< "$GPUS"
  else
    for ((k = 0; k < JOBS; k++)); do workers+=(""); done
    threads=$(( $(nproc) / JOBS ))
    [ "$threads" -ge 1 ] || threads=1
    [ -n "${UNET_NUM_THREADS:-}" ] || export UNET_NUM_THREADS=$threads
  fi
  n=${#workers[@]}
  trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done' INT TERM
  for ((round = 1; round <= RETRIES + 1; round++)); do
    missing_shards
    [ ${#MISSING[@]} -eq 0 ] && break
    echo "$UNET_SCRIPT: round $round: ${#MISSING[@]} shard(s) on $n ${GPUS:+GPU }worker(s)" >&2
    pids=()
    for ((k = 0; k < n; k++)); do
      (
        set +e
        rc=0
        for ((i = k; i < ${#MISSING[@]}; i += n)); do
          ( run_shard "${MISSING[$i]}" "${workers[$k]}" ) || rc=1
        done
        exit $rc
      ) &
      pids+=($!)
    done
    for k in "${pids[@]}"; do wait "$k" || true; done
    [ -n "${UNET_DRY_RUN:-}" ] && return 0
  done
  trap - INT TERM
  assemble_all
}

# ---- internal entry points ----------------------------------------------------------

case "${1:-}" in
  --run-shard) load_workdir "${2:?}"; run_shard "${3:?}" "${4:-}"; exit 0 ;;
  --finish) load_workdir "${2:?}"; finish_slurm "${3:?}"; exit 0 ;;
  --status) load_workdir "${2:?}"; print_status; exit 0 ;;
esac

# ---- options ------------------------------------------------------------------------

model="$UNET_ROOT/samples/nuclei-model.safetensors"
mode=labels
device=""
tile=0
batch=""
compression=none
props=()
out=""
outdir=""
lists=()
workdir=""
stats=""
nshards=1
pages_per=""
keep=0
sched=""
time_limit=1:00:00
assemble_time=1:00:00
gres=""
cpus=""
mem=""
partition=""
account=""
qos=""
max_running=""
sbatch_args=()
retries=2
wait_end=0
gpus=""
jobs=1

num() { [[ "$2" =~ ^[1-9][0-9]*$ ]] || unet_die "$1 must be a positive number, not '$2'"; }

while [ $# -gt 0 ]; do
  case "$1" in
    -O|--out) out=${2:?}; shift 2 ;;
    -D|--output-dir) outdir=${2:?}; shift 2 ;;
    -L|--list) lists+=("${2:?}"); shift 2 ;;
    -w|--work-dir) workdir=${2:?}; shift 2 ;;
    -s|--stats) stats=${2:?}; shift 2 ;;
    -n|--shards) num "$1" "${2:-}"; nshards=$2; shift 2 ;;
    -P|--pages-per-shard) num "$1" "${2:-}"; pages_per=$2; shift 2 ;;
    --keep-shards) keep=1; shift ;;
    -m|--model) model=${2:?}; shift 2 ;;
    -o|--output-mode) mode=${2:?}; shift 2 ;;
    -d|--device) device=${2:?}; shift 2 ;;
    -t|--tile-size) tile=${2:?}; shift 2 ;;
    -b|--batch-size) num "$1" "${2:-}"; batch=$2; shift 2 ;;
    -c|--compression) compression=${2:?}; shift 2 ;;
    -p|--property) props+=("${2:?}"); shift 2 ;;
    --slurm) sched=slurm; shift ;;
    --local) sched=local; shift ;;
    --time) time_limit=${2:?}; shift 2 ;;
    --assemble-time) assemble_time=${2:?}; shift 2 ;;
    --gpu) gres=${gres:-gpu:1}; device=${device:-cuda}; shift ;;
    --gres) gres=${2:?}; shift 2 ;;
    --cpus) num "$1" "${2:-}"; cpus=$2; shift 2 ;;
    --mem) mem=${2:?}; shift 2 ;;
    --partition) partition=${2:?}; shift 2 ;;
    --account) account=${2:?}; shift 2 ;;
    --qos) qos=${2:?}; shift 2 ;;
    --max-running) num "$1" "${2:-}"; max_running=$2; shift 2 ;;
    --sbatch-arg) sbatch_args+=("${2:?}"); shift 2 ;;
    --retries) [[ "${2:-}" =~ ^[0-9]+$ ]] || unet_die "--retries must be a number"; retries=$2; shift 2 ;;
    --wait) wait_end=1; shift ;;
    --gpus) [[ "${2:-}" =~ ^[0-9]+(,[0-9]+)*$ ]] || unet_die "--gpus must be a list of GPU ids such as 0,1,2,3"
            gpus=$2; device=${device:-cuda}; shift 2 ;;
    --jobs) num "$1" "${2:-}"; jobs=$2; shift 2 ;;
    -h|--help) unet_usage; exit 0 ;;
    --) shift; break ;;
    -*) unet_die "unknown option $1 (see --help)" ;;
    *) break ;;
  esac
done
inputs=("$@")
for l in "${lists[@]}"; do
  [ -r "$l" ] || unet_die "cannot read list '$l'"
  while IFS= read -r line || [ -n "$line" ]; do
    [ -n "$line" ] && [ "${line:0:1}" != "#" ] && inputs+=("$line")
  done < "$l"
done
[ ${#inputs[@]} -ge 1 ] || { unet_usage >&2; exit 2; }
device=${device:-auto}
case "$mode" in labels|probabilities|instances) ;; *) unet_die "--output-mode must be labels, probabilities or instances, not '$mode'" ;; esac
case "$device" in auto|cpu|cuda) ;; *) unet_die "--device must be auto, cpu or cuda" ;; esac
case "$compression" in none|lzw|deflate|zstd) ;; *) unet_die "--compression must be none, lzw, deflate or zstd" ;; esac
[[ "$tile" =~ ^[0-9]+$ ]] || unet_die "--tile-size must be a number"
[ -n "$out" ] && [ ${#inputs[@]} -gt 1 ] && unet_die "--out names the output of one input; use --output-dir for several"
[ -n "$pages_per" ] && [ "$nshards" -gt 1 ] && unet_die "give --shards or --pages-per-shard, not both"
[ -r "$model" ] || unet_die "cannot read model '$model' (pass -m)"
if [ -z "$sched" ]; then
  if command -v sbatch >/dev/null; then sched=slurm; else sched=local; fi
fi
if [ "$sched" = slurm ] && [ -z "${UNET_DRY_RUN:-}" ]; then
  command -v sbatch >/dev/null && command -v squeue >/dev/null ||
    unet_die "--slurm needs sbatch and squeue (Slurm's client commands); use --local on one machine"
fi
[ "$sched" = slurm ] && [ -n "$gpus" ] && unet_die "--gpus is for --local; on Slurm ask for --gpu (one per task)"
for p in "${props[@]}"; do
  case "$p" in *=*) ;; *) unet_die "--property wants P=V, not '$p'" ;; esac
  case "${p%%=*}" in model|device|output|tile-size|batch-size|post-messages|gpu-id|name)
    unet_die "--property ${p%%=*} is set by this script's own options" ;; esac
done

abspath() { realpath -m -- "$1"; }
model=$(abspath "$model")
[ -n "$outdir" ] && { mkdir -p -- "$outdir" || unet_die "cannot create '$outdir'"; }
[ -n "$out" ] && { mkdir -p -- "$(dirname -- "$(abspath "$out")")" || unet_die "cannot create the directory of '$out'"; }

unet_ensure_build
unet_require_element tiffstacksrc tiffstacksink unetsegment concat

# ---- plan ------------------------------------------------------------------------------
for f in "${inputs[@]}"; do
  [ -r "$f" ] || unet_die "cannot read input stack '$f'"
  case "$f" in *$'\t'*|*$'\n'*) unet_die "input path with a tab or newline: '$f'" ;; esac
done
mapfile -t abs_inputs < <(for f in "${inputs[@]}"; do abspath "$f"; done)

# the plan is made in a scratch directory with @WORKDIR@ for the work directory, whose
# default name depends on the plan
scratch=$(mktemp -d)
trap 'rm -rf -- "$scratch"' EXIT
new_plan="$scratch/plan.tsv"
new_stacks="$scratch/stacks.tsv"
new_conf="$scratch/job.conf"
: > "$new_plan"
: > "$new_stacks"

# frame counts as tiffstacksrc sees them (one process for all inputs)
mapfile -t counts < <(unet_with_runtime "$UNET_PYTHON" "$SHARDS_PY" count "${abs_inputs[@]}")
[ ${#counts[@]} -eq ${#abs_inputs[@]} ] || unet_die "could not read the inputs' page counts (see above)"

idx=0
declare -A seen_out=()
for k in "${!abs_inputs[@]}"; do
  f=${abs_inputs[$k]}
  n=${counts[$k]}
  if [ -n "$out" ]; then
    o=$(abspath "$out")
  elif [ -n "$outdir" ]; then
    b=$(basename -- "$f"); o="$(abspath "$outdir")/${b%.tif*}-$mode.tif"
  else
    o="${f%.tif*}-$mode.tif"
  fi
  [ "$o" != "$f" ] || unet_die "output $o would overwrite its input"
  [ -z "${seen_out[$o]:-}" ] || unet_die "two inputs would both be written to $o (use --output-dir with distinct names)"
  seen_out[$o]=1
  if [ -n "$pages_per" ]; then
    count=$(( (n + pages_per - 1) / pages_per ))
  else
    count=$(( nshards < n ? nshards : n ))
  fi
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$k" "$f" "$o" "$n" "$idx" "$count" >> "$new_stacks"
  for ((j = 0; j < count; j++)); do
    a=$(( j * n / count )); b=$(( (j + 1) * n / count - 1 ))
    if [ "$count" -eq 1 ]; then
      sf=$o          # a whole stack is written to its output directly
    else
      sf=$(printf '@WORKDIR@/shards/stack-%05d/shard-%05d.tif' "$k" "$idx")
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$idx" "$k" "$f" "$a" "$b" "$((b - a + 1))" "$sf" >> "$new_plan"
    idx=$((idx + 1))
  done
done
{
  declare -p model mode device tile batch compression props | sed \
    -e 's/^declare -- model=/MODEL=/' -e 's/^declare -- mode=/MODE=/' -e 's/^declare -- device=/DEVICE=/' \
    -e 's/^declare -- tile=/TILE=/' -e 's/^declare -- batch=/BATCH=/' \
    -e 's/^declare -- compression=/COMPRESSION=/' -e 's/^declare -a props=/PROPS=/'
  echo "MODEL_ID=$(stat -c '%s-%Y' -- "$model")"
} > "$new_conf"

# Work directory: --work-dir, or beside the first output, named after the plan (inputs,
# outputs, page ranges, model, settings): the same command finds the same directory
# again, another plan gets its own
if [ -n "$workdir" ]; then
  W=$(abspath "$workdir")
else
  first_out=$(head -n 1 "$new_stacks" | cut -f3)
  W="$(dirname -- "$first_out")/segment-cluster-$(cat "$new_plan" "$new_stacks" "$new_conf" | sha256sum | cut -c1-12)"
fi
case "$W" in *@WORKDIR@*|*$'\t'*|*$'\n'*) unet_die "unusable work directory name '$W'" ;; esac
mkdir -p -- "$W" || unet_die "cannot create work directory '$W'"
# one front end per work directory at a time (a local run holds it to the end, a Slurm
# submission while it plans, submits and --waits)
exec 9> "$W/.lock"
flock -n 9 || unet_die "another segment-cluster.sh is running on $W"
[ -n "$stats" ] || stats="$W/stats.csv"
stats=$(abspath "$stats")
while IFS= read -r line; do
  printf '%s\n' "${line//@WORKDIR@/"$W"}"
done < "$new_plan" > "$scratch/plan.w" && mv -- "$scratch/plan.w" "$new_plan"

if [ -f "$W/plan.tsv" ]; then
  if ! cmp -s "$new_plan" "$W/plan.tsv" || ! cmp -s "$new_stacks" "$W/stacks.tsv" ||
     ! cmp -s "$new_conf" "$W/job.conf"; then
    unet_die "work directory $W holds a run with other inputs, shards or settings; use another --work-dir (or remove it)"
  fi
  W_=$W; load_workdir "$W_"
  if [ "$sched" = slurm ] && [ -n "$(active_jobs)" ]; then
    unet_die "jobs of $W are still queued or running (see --status $W, or scancel them)"
  fi
else
  mkdir -p -- "$W/stats" "$W/logs" "$W/shards"
  for k in "${!abs_inputs[@]}"; do
    if [ "$(awk -F'\t' -v k="$k" '$1 == k { print $6 }' "$new_stacks")" -gt 1 ]; then
      mkdir -p -- "$(printf '%s/shards/stack-%05d' "$W" "$k")"
    fi
  done
  cp -- "$new_conf" "$W/job.conf"
  cp -- "$new_stacks" "$W/stacks.tsv"
  cp -- "$new_plan" "$W/plan.tsv"
fi
rm -rf -- "$scratch"
trap - EXIT

{
  declare -p stats retries time_limit assemble_time gres cpus mem partition account qos max_running \
    sbatch_args keep gpus jobs | sed -e 's/^declare -[-a] \([a-z_]*\)=/\U\1\E=/'
  echo "UNET_BUILD=$(printf %q "$UNET_BUILD")"
} > "$W/sched.conf"
load_workdir "$W"

missing_shards
echo "$UNET_SCRIPT: ${#STACKS[@]} stack(s), ${#PLAN[@]} shard(s), ${#MISSING[@]} to run; work directory $W" >&2

if [ "$sched" = local ]; then
  run_local
  exit 0
fi

if [ ${#MISSING[@]} -eq 0 ] && [ -f "$W/DONE" ]; then
  assemble_all     # every stack is written: this only joins the statistics again
  exit 0
fi
# (with no shard missing, only the assembling job is submitted)
submit_round 1 "${MISSING[@]}"
if [ -n "${UNET_DRY_RUN:-}" ]; then
  exit 0
elif [ "$wait_end" -eq 1 ]; then
  wait_slurm
else
  echo "$UNET_SCRIPT: progress: $SELF --status $W" >&2
fi
