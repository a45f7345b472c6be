#!/usr/bin/env bash
# Issue 21 on the lent H200: what causes the 512-stream cliff (and, when the tree has the agreement benchmark, the
# client agreement rerun). Results of the 2026-12-04 run: docs/results/h200-issue21/. The device calls, back to back
# (each within 30 s of the last), after `bash ../shared/gpu/prepare.sh .gpu ...` and
# `bash benchmarks/gpu/issue21-stage.sh TREE` in the checkout the device tool sends (py-spy's wheel in .whl/):
#   1. carry .gpu/part-aa:                 mkdir -p /root/stage/parts && cp .gpu/part-aa /root/stage/parts/
#   2. carry .gpu/part-ab, .whl:           cp .gpu/part-ab /root/stage/parts/ && cp .whl/*.whl /root/stage/
#   3. carry .gpu/part-ac, part-ad, SHA256SUMS, install.sh, .gpu-src:
#        bash .gpu/install.sh && cd .gpu-src && (I21_BUDGET_S=1290 setsid nohup bash benchmarks/gpu/issue21.sh \
#          > /root/run.log 2>&1 &); sleep 3; bash benchmarks/gpu/issue21-wait.sh 470 80
#   4. and on:                             bash /root/hpsrc/benchmarks/gpu/issue21-wait.sh 555 70    (timeout 600)
#   each call brings back $OUT/i21.tgz (all results so far); give the machine back after the one that saw ALL DONE.
# For each vLLM configuration it starts vLLM by hand through `vllm serve`'s entry point (vllm.entrypoints.cli.main:
# `python -m vllm.entrypoints.openai.api_server` parses --api-server-count but always runs one API server), attaches
# hpload (4 workers) at 128 and 512 streams, twice each, interleaved, and samples every vLLM process's CPU
# (proc_cpu.py). It skips the configurations that would not end within I21_BUDGET_S seconds, so the results can be
# brought back before the device's time runs out. Results: /root/i21 (A/<config>/c<streams>-r<repeat>, cpu.jsonl,
# vllm-<config>.log, summary.md). Locally, a dry run of the logic against the echo server:
#   I21_DRY=1 I21_PY=.venv/bin/python I21_OUT=/tmp/i21 I21_ROOT=/tmp/i21src I21_HP=/tmp/i21hp I21_PORT=18000 \
#     I21_RUNS="8:32:8:1" I21_CONFIGS="base|" I21_HP_ARGS="--set load.workers=2" bash benchmarks/gpu/issue21.sh
set -u
cd "$(dirname "$0")/../.."
t0=$(date +%s)
tree=$(cat .gpu-src-commit 2>/dev/null || git rev-parse --short HEAD 2>/dev/null || echo '?')
budget=${I21_BUDGET_S:-1170}
out=${I21_OUT:-/root/i21}
mkdir -p "$out"
# A private copy: the device re-syncs the working tree at every call, and this run must not see it change. hpload is
# not installed there: a tree of symlinks lays the copy out as the package installs (as device.sh does).
hp=${I21_HP:-/root/hp}
root=${I21_ROOT:-/root/hpsrc}
rm -rf "$root" && mkdir -p "$root" && cp -r hpload servers loadgen scenarios tui benchmarks "$root"/
rm -rf "$hp" && mkdir -p "$hp/hpload"
for f in "$root"/hpload/*; do ln -s "$f" "$hp/hpload/$(basename "$f")"; done
for d in servers loadgen scenarios tui; do ln -s "$root/$d" "$hp/hpload/$d"; done
if [ -z "${I21_DRY:-}" ]; then
  export PYTHONPATH=/root/stage/site:$hp VLLM_USE_FLASHINFER_SAMPLER=0 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
  py=python3
  model=/root/models/llama-1b
else  # a local dry run against the echo server, with a virtualenv that has hpload's dependencies
  export PYTHONPATH=$hp
  py=${I21_PY:?set I21_PY to a python with the dependencies of hpload}
  model=${I21_MODEL:-$HOME/.cache/hpload/models/tiny-llama}
fi
g=$root/benchmarks/gpu
cd /tmp  # not a tree root: there, python -m hpload would import the unmapped hpload/ folder
log() { echo "== $(date +%T) +$(( $(date +%s) - t0 ))s $*"; }
label() { echo "$1" > "$out/label"; }

# The runs per configuration: streams, measured requests, warm-up requests, repeat (~4 s at 128 and ~17 s at 512 streams
# at the throughputs seen before; repeats interleaved so drift shows as a spread, not as a configuration effect).
runs=${I21_RUNS:-"128:512:128:1 512:1024:512:1 128:512:128:2 512:1024:512:2"}
# name|vLLM flags; in priority order (the budget drops the tail). Async scheduling is vLLM 0.26.0's default (it
# resolves to on for this model), so its axis is turning it off. 8192 is the default max_num_batched_tokens on a
# card of >= 70 GiB in the API server. max_cudagraph_capture_size defaults to min(2 x max_num_seqs, 512): a batch
# of 512 decodes plus any prefill runs without CUDA graphs.
configs=${I21_CONFIGS:-"base|
api4|--api-server-count 4
api2|--api-server-count 2
noasync|--no-async-scheduling
mnbt16k|--max-num-batched-tokens 16384
cg1024|--max-cudagraph-capture-size 1024
si8|--stream-interval 8"}
per_config_s=${I21_PER_CONFIG_S:-140}
# config:streams pairs that get one more run, not in the tables, with py-spy on the API server and the engine core
# in its steady state (the measured runs stay unprofiled).
profiles=${I21_PROFILES:-"base:128 base:512 api4:512"}
vport=${I21_PORT:-8000}

vpid=""
start_vllm() {  # $1 name, rest: extra flags
  local name=$1; shift
  label "start/$name"
  if [ -n "${I21_DRY:-}" ]; then
    setsid $py -m hpload serve echo --port $vport --ttft-ms 20 --itl-ms 2 > "$out/vllm-$name.log" 2>&1 &
  else
    setsid $py -m vllm.entrypoints.cli.main serve "$model" --port $vport --load-format dummy --dtype bfloat16 \
      --max-model-len 2048 --gpu-memory-utilization 0.85 --max-num-seqs 512 --enable-per-request-metrics "$@" \
      > "$out/vllm-$name.log" 2>&1 &
  fi
  vpid=$!
  local t=$(date +%s)
  until $py -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:$vport/v1/models', timeout=2)" 2>/dev/null; do
    if ! kill -0 "$vpid" 2>/dev/null; then log "server $name died at start"; tail -n 20 "$out/vllm-$name.log"; return 1; fi
    if [ $(( $(date +%s) - t )) -gt 420 ]; then log "server $name not ready in 420 s"; return 1; fi
    sleep 1
  done
  log "server $name ready in $(( $(date +%s) - t )) s (pid $vpid)"
}
stop_vllm() {
  [ -n "$vpid" ] || return 0
  label "stop"
  kill -TERM -- "-$vpid" 2>/dev/null
  for _ in $(seq 60); do kill -0 "$vpid" 2>/dev/null || break; sleep 0.5; done
  kill -KILL -- "-$vpid" 2>/dev/null
  vpid=""
  if [ -z "${I21_DRY:-}" ]; then  # the next start needs the card's memory back
    for _ in $(seq 60); do
      used=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1)
      [ "${used:-0}" -lt 2000 ] && break; sleep 0.5
    done
  fi
  sleep 1
}
hp_run() {  # $1 config, $2 streams, $3 requests, $4 warm-up, $5 repeat, $6 seed
  local lab="A/$1/c$2-r$5"
  label "$lab"
  timeout 300 $py -m hpload run "$g/issue21-cliff.toml" --results "$out/$lab" --quiet \
    --set load.concurrency="$2" --set load.num_requests="$3" --set load.warmup_requests="$4" \
    --set workload.seed="$6" --set servers.vllm.url="http://127.0.0.1:$vport" ${I21_HP_ARGS:-} > "$out/$(echo "$lab" | tr / _).log" 2>&1
  local rc=$?
  label "idle"
  [ $rc -eq 0 ] || { log "hpload $lab exit $rc"; tail -n 5 "$out/$(echo "$lab" | tr / _).log"; }
  $py "$g/issue21_summary.py" "$out" --run "$lab"
}

prof_run() {  # $1 config, $2 streams, $3 seed: a longer run with py-spy in the middle of it
  local lab="P/$1/c$2" delay=9 dur=8 n=1536 w=512
  [ "$2" -le 128 ] && { delay=5; dur=5; w=128; }
  label "$lab"
  timeout 300 $py -m hpload run "$g/issue21-cliff.toml" --results "$out/$lab" --quiet \
    --set load.concurrency="$2" --set load.num_requests=$n --set load.warmup_requests=$w \
    --set workload.seed="$3" --set servers.vllm.url="http://127.0.0.1:$vport" ${I21_HP_ARGS:-} \
    > "$out/$(echo "$lab" | tr / _).log" 2>&1 &
  local hpid=$!
  sleep $delay
  mkdir -p "$out/prof"
  local api engine tag pid spies=""
  # vLLM runs in its own session (setsid), so its processes are found by session id, not by name alone
  api=$(pgrep -s "$vpid" -f '^VLLM::APIServer' | head -1); api=${api:-$vpid}
  engine=$(pgrep -s "$vpid" -f '^VLLM::EngineCore' | head -1)
  for target in "api:$api" "engine:$engine"; do
    tag=${target%%:*}; pid=${target#*:}
    if [ -n "$pid" ] && [ -n "$pyspy" ]; then
      "$pyspy" record -d $dur -r 50 --nonblocking --threads --format raw \
        -o "$out/prof/$1-c$2-$tag.txt" --pid "$pid" > "$out/prof/$1-c$2-$tag.log" 2>&1 &
      spies="$spies $!"
    fi
  done
  wait $hpid $spies
  label "idle"
  $py "$g/issue21_summary.py" "$out" --run "$lab"
  for tag in api engine; do
    [ -f "$out/prof/$1-c$2-$tag.txt" ] && $py "$g/pyspy_top.py" "$out/prof/$1-c$2-$tag.txt" --top 12 --full $((dur * 50))
  done
}

{
  log "issue21 start; budget ${budget}s; tree $tree"
  [ -z "${I21_DRY:-}" ] && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  [ -z "${I21_DRY:-}" ] && $py -c "import vllm, torch; print('vllm', vllm.__version__, 'torch', torch.__version__)"
  if [ -z "${I21_DRY:-}" ] && [ ! -f "$model/config.json" ]; then $py -m hpload model like llama-1b "$model" >/dev/null; fi
  pyspy=""
  whl=$(ls /root/stage/py_spy-*.whl 2>/dev/null | head -1)
  if [ -n "$whl" ]; then
    rm -rf /root/pyspy && $py -m zipfile -e "$whl" /root/pyspy && pyspy=$(find /root/pyspy -name py-spy -type f | head -1)
    [ -n "$pyspy" ] && chmod +x "$pyspy"
  fi
  [ -n "${I21_PYSPY:-}" ] && pyspy=$I21_PYSPY
  log "py-spy: ${pyspy:-none}"
  label "idle"
  $py "$g/proc_cpu.py" --out "$out/cpu.jsonl" --label-file "$out/label" --interval 0.5 &
  sampler=$!
  seed=100
  while IFS='|' read -r -u 3 name flags; do
    [ -n "$name" ] || continue
    left=$(( budget - ($(date +%s) - t0) ))
    if [ "$left" -lt "$per_config_s" ]; then log "skip $name: ${left}s left of the budget"; continue; fi
    log "config $name: $flags"
    # shellcheck disable=SC2086  # flags are words
    if ! start_vllm "$name" $flags; then stop_vllm; continue; fi
    for r in $runs; do
      IFS=: read -r c n w rep <<< "$r"
      seed=$((seed + 1))
      hp_run "$name" "$c" "$n" "$w" "$rep" "$seed"
    done
    for pr in $profiles; do
      [ "${pr%%:*}" = "$name" ] || continue
      seed=$((seed + 1))
      prof_run "$name" "${pr#*:}" "$seed"
    done
    if [ "$name" = base ] && [ -f "$root/benchmarks/bench_agreement.py" ] && [ "${I21_B:-1}" != 0 ]; then
      # Part B on the base server (per-request metrics on): the agreement benchmark of the tree, one invocation per
      # round (each prints its own table, so a cut-off run keeps the rounds it finished); --seed R*1000 gives the
      # prompts its --rounds would give round R.
      for rnd in $(seq 0 $(( ${I21_B_ROUNDS:-3} - 1 ))); do
        left=$(( budget - ($(date +%s) - t0) ))
        if [ "$left" -lt "${I21_B_ROUND_S:-150}" ]; then log "skip agreement round $rnd: ${left}s left"; continue; fi
        label "B/round$rnd"
        log "agreement round $rnd"
        timeout 400 $py "$root/benchmarks/bench_agreement.py" --url "http://127.0.0.1:$vport" --tokenizer "$model" \
          --input-len "${I21_B_IN:-128}" --output-len "${I21_B_OUT:-128}" --concurrency "${I21_B_CONC:-32,128,512}" \
          --num-requests "${I21_B_N:-512}" --rounds 1 --seed $((rnd * 1000)) --workers 4 > "$out/B-round$rnd.log" 2>&1
        log "agreement round $rnd exit $?"
        grep -A 40 "^round" "$out/B-round$rnd.log" | grep -v "^  done" | head -n 40
        label "idle"
      done
    fi
    grep -hE "Asynchronous scheduling is|max_num_batched_tokens|cudagraph_capture_sizes|Capturing CUDA graphs|API server|non-default args" \
      "$out/vllm-$name.log" 2>/dev/null | cut -c1-400 | head -n 8
    stop_vllm
  done 3<<< "$configs"
  kill "$sampler" 2>/dev/null; wait "$sampler" 2>/dev/null
  $py "$g/issue21_summary.py" "$out" | tee "$out/summary.md"
  log "ALL DONE"
}
