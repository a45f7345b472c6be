#!/usr/bin/env bash
# Issue 22 on the lent H200, in parts ranked as the issue ranks them (a session's 30 device-minutes hold about one):
#   1  capacity under p99 TTFT <= 500 ms / TPOT <= 50 ms, 1B Llama shape: vLLM defaults, hpload's wrapper,
#      `transformers serve` with continuous batching                       (issue22-capacity.toml, ~15 min)
#   2  `hpload tune` with the capacity objective over vLLM's max_num_seqs, max_num_batched_tokens,
#      api_server_count, chunked prefill and async scheduling, 8 trials     (issue22-tune.toml, ~25 min)
#   3  the 8B Llama shape, vLLM and the wrapper at two batch sizes each    (issue22-8b.toml, ~20 min)
# The device calls, back to back (each within 30 s of the last), after `bash ../shared/gpu/prepare.sh .gpu ...`
# (the package list in ../shared/gpu/README.md):
#   1. carry .gpu/part-aa:   mkdir -p /root/stage/parts && cp .gpu/part-aa /root/stage/parts/
#   2. carry .gpu/part-ab:   cp .gpu/part-ab /root/stage/parts/
#   3. carry .gpu/part-ac, part-ad, SHA256SUMS, install.sh:
#        bash .gpu/install.sh && (I22_PARTS="1" setsid nohup bash benchmarks/gpu/issue22.sh > /root/run.log 2>&1 &); \
#        sleep 3; bash benchmarks/gpu/issue22-wait.sh 470
#   4. and on:   bash /root/hpsrc/benchmarks/gpu/issue22-wait.sh 555          (timeout 600)
#   every call brings back $OUT/i22.tgz (all results so far); give the machine back after the one that saw ALL DONE.
# hpload's own launchers start every server (as a user's `hpload capacity` does); each part's results directory is
# kept, so a part cut short by the device's time resumes from the probes on disk when it is run again.
# Locally, a dry run of the whole logic on CPU with the embedded tiny model and short probes (minutes):
#   I22_DRY=1 I22_PY=.venv/bin/python I22_OUT=/tmp/i22 I22_ROOT=/tmp/i22src I22_HP=/tmp/i22hp I22_PARTS="1 2 3" \
#     bash benchmarks/gpu/issue22.sh
set -u
cd "$(dirname "$0")/../.."
t0=$(date +%s)
tree=$(git rev-parse --short HEAD 2>/dev/null || cat .gpu-src-commit 2>/dev/null || echo '?')
out=${I22_OUT:-/root/i22}
parts=${I22_PARTS:-"1 2 3"}
mkdir -p "$out"
# A private copy: the device re-syncs the working tree at every call, and this run must not see it change. hpload is
# not installed there: a tree of symlinks lays the copy out as the package installs (as device.sh does).
hp=${I22_HP:-/root/hp}
root=${I22_ROOT:-/root/hpsrc}
rm -rf "$root" && mkdir -p "$root" && cp -r hpload servers loadgen scenarios tui benchmarks "$root"/
rm -rf "$hp" && mkdir -p "$hp/hpload"
for f in "$root"/hpload/*; do ln -s "$f" "$hp/hpload/$(basename "$f")"; done
for d in servers loadgen scenarios tui; do ln -s "$root/$d" "$hp/hpload/$d"; done
if [ -z "${I22_DRY:-}" ]; then
  export PYTHONPATH=/root/stage/site:$hp VLLM_USE_FLASHINFER_SAMPLER=0 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
  py=python3
  models=/root/models
  # no edits: the scenarios as written
  edit() { cat; }
  short=()
else  # CPU, float32, the tiny model, short probes: checks the logic, measures nothing
  export PYTHONPATH=$hp
  py=${I22_PY:?set I22_PY to a python with hpload\'s dependencies}
  models=${I22_MODELS:-/tmp/i22models}
  edit() { sed -e 's/"bfloat16"/"float32"/; s/"cuda"/"cpu"/; s/gpu_memory_utilization = .*//'; }
  short=(--set capacity.probe_s=3 --set capacity.warmup_s=1 --set capacity.precision=0.5 --set load.workers=1
         --set slo.ttft_p99_ms=5000 --set slo.tpot_p99_ms=500)
fi
g=$root/benchmarks/gpu
cd /tmp  # not a tree root: there, python -m hpload would import the unmapped hpload/ folder
log() { echo "== $(date +%T) +$(( $(date +%s) - t0 ))s $*"; }

model_dir() {  # $1 preset: a dummy-weight architecture with a locally trained tokenizer, made once
  local dir="$models/$1"
  if [ -n "${I22_DRY:-}" ]; then dir=$HOME/.cache/hpload/models/tiny-llama; [ -f "$dir/config.json" ] || $py -m hpload model tiny >/dev/null
  elif [ ! -f "$dir/config.json" ]; then $py -m hpload model like "$1" "$dir" > /dev/null || return 1; fi
  echo "$dir"
}
scenario() {  # $1 toml in benchmarks/gpu, $2 preset -> the scenario with its model filled in, under $out
  local m; m=$(model_dir "$2") || { log "model $2 could not be made"; return 1; }
  sed "s#\"MODEL\"#\"$m\"#" "$g/$1" | edit > "$out/$1"
  echo "$out/$1"
}
part() {  # $1 number, $2 command (capacity|tune), $3 toml, $4 preset, then more hpload arguments
  local n=$1 cmd=$2 toml=$3 preset=$4; shift 4
  local sc; sc=$(scenario "$toml" "$preset") || return 1
  log "part $n start: hpload $cmd $toml ($preset)"
  # hpload's own time limit is the device's: a part cut short keeps every probe already written
  timeout "${I22_PART_TIMEOUT_S:-3000}" $py -m hpload "$cmd" "$sc" --results "$out/part$n" "${short[@]}" "$@" \
    > "$out/part$n.log" 2>&1
  log "part $n ended with exit $?"
  tail -n 25 "$out/part$n.log"
  $py -m hpload report "$out/part$n" > "$out/part$n-report.txt" 2>&1 && tail -n 40 "$out/part$n-report.txt"
}

{
  log "issue22 start; parts $parts; tree $tree"
  [ -z "${I22_DRY:-}" ] && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  $py -c "import vllm, transformers, torch; print('vllm', vllm.__version__, 'transformers', transformers.__version__, 'torch', torch.__version__)" 2>&1 | tail -1
  for p in $parts; do
    case $p in
      1) part 1 capacity issue22-capacity.toml llama-1b ;;
      2) part 2 tune issue22-tune.toml llama-1b ${I22_DRY:+--set tune.n_trials=2} ;;
      3) part 3 capacity issue22-8b.toml llama-8b ;;
      *) log "no part $p" ;;
    esac
  done
  log "ALL DONE"
} 2>&1
