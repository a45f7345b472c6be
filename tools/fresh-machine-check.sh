#!/usr/bin/env bash
# Developer tool (not CI): does the README's test command pass on a fresh machine, every time?
#
# Each run starts cold: a new clone of this repository's committed HEAD (or --ref), a new venv made by the install
# part of the README's first command (as .ci/run does), fresh hpload/vLLM/torch caches, and the page cache dropped
# (`sync; echo 3 > /proc/sys/vm/drop_caches`, skipped with a note where that is not permitted) just before the
# README's test command runs. pip's wheel cache stays. By default: three such runs in a row, then one more with one
# core kept busy by another process (stress-ng --cpu 1 if installed, else a Python busy loop), so that every start
# and every step is slower than on a quiet machine. It prints each run's pass/fail counts and durations, then a
# summary line; exit status 0 only when every run passed.
#
# The whole check takes well over an hour on 2 cores. A quick check that the tool itself works:
#     tools/fresh-machine-check.sh --runs 1 --busy-runs 1 --tests tests/test_foundation.py
#
# Options:
#   --runs N          cold runs on a quiet machine (default 3)
#   --busy-runs N     cold runs with one core busy (default 1)
#   --tests "ARGS"    extra arguments for the test command, e.g. one short test file (default: the whole suite)
#   --ref REF         what to clone (default HEAD; uncommitted changes are not in a clone)
#   --work DIR        where clones, venvs and logs go (default /tmp/hpload-fresh-check-<time>); kept afterwards
#   --keep-caches     keep ~/.cache/hpload, vLLM's and torch's caches instead of fresh ones per run
#   --keep-venvs      keep each run's venv (about 4 GB); by default it is removed once its run ends (logs stay)
set -uo pipefail

src=$(cd "$(dirname "$0")/.." && pwd)
runs=3 busy_runs=1 tests="" ref=HEAD keep_caches=0 keep_venvs=0
work=/tmp/hpload-fresh-check-$(date +%Y%m%d-%H%M%S)
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs=$2; shift 2 ;;
    --busy-runs) busy_runs=$2; shift 2 ;;
    --tests) tests=$2; shift 2 ;;
    --ref) ref=$2; shift 2 ;;
    --work) work=$2; shift 2 ;;
    --keep-caches) keep_caches=1; shift ;;
    --keep-venvs) keep_venvs=1; shift ;;
    -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "fresh-machine-check: unknown option $1; fix: see --help" >&2; exit 2 ;;
  esac
done
commit=$(git -C "$src" rev-parse --verify "$ref^{commit}") || { echo "fresh-machine-check: --ref $ref: no such commit" >&2; exit 2; }
mkdir -p "$work"
# The wheel cache is the one thing a fresh machine may share with this one (the brief allows it): pin it before
# XDG_CACHE_HOME moves, since pip keeps it there by default.
pip_cache=$(python3 -m pip cache dir 2>/dev/null || echo "$HOME/.cache/pip")

busy_pid=""
cleanup() {
  if [ -n "$busy_pid" ]; then kill "$busy_pid" 2>/dev/null; wait "$busy_pid" 2>/dev/null; fi
}
trap cleanup EXIT
trap 'cleanup; exit 130' INT TERM

drop_caches() {
  sync
  if (echo 3 > /proc/sys/vm/drop_caches) 2>/dev/null; then echo "page cache dropped"
  else echo "page cache NOT dropped (not permitted here); this run starts warmer than a fresh machine"; fi
}

start_busy() {
  if command -v stress-ng >/dev/null 2>&1; then
    stress-ng --cpu 1 --quiet >/dev/null 2>&1 & busy_pid=$!
    echo "one core busy: stress-ng --cpu 1 (pid $busy_pid)"
  else
    python3 -c 'while True: pass' & busy_pid=$!
    echo "one core busy: a Python busy loop (pid $busy_pid)"
  fi
}

stop_busy() {
  cleanup
  busy_pid=""
}

# "N failed, M passed, K skipped, ... in S s" -> "passed=M failed=N errors=E skipped=K"
counts() {
  python3 - "$1" <<'EOF'
import re, sys
text = open(sys.argv[1], errors="replace").read()
lines = [l for l in text.splitlines() if re.search(r"\b(passed|failed|error|errors|no tests ran)\b.* in [0-9.]+s", l)]
last = lines[-1] if lines else ""
def n(word):
    m = re.search(r"(\d+) " + word, last)
    return int(m.group(1)) if m else 0
print(f"passed={n('passed')} failed={n('failed')} errors={n('errors?')} skipped={n('skipped')}")
EOF
}

results=()
all_ok=1
total=$((runs + busy_runs))
for i in $(seq 1 "$total"); do
  kind=cold
  [ "$i" -gt "$runs" ] && kind=busy
  dir="$work/run$i-$kind"
  mkdir -p "$dir"
  echo "== run $i/$total ($kind) in $dir"
  t0=$(date +%s)
  git clone -q --no-local "$src" "$dir/repo" && git -C "$dir/repo" checkout -q "$commit" || { echo "clone failed"; exit 1; }
  mapfile -t cmds < <(cd "$dir/repo" && python3 .ci/readme_commands.py)
  install_cmd=${cmds[0]}
  test_cmd=${cmds[1]}
  install_only=${install_cmd%&& hpload run*}  # as .ci/run: the tests start the same servers themselves
  env_vars=(PIP_CACHE_DIR="$pip_cache")
  if [ "$keep_caches" = 0 ]; then
    # A fresh machine has no tiny model, no vLLM or torch compile caches: each run gets empty ones.
    env_vars+=(XDG_CACHE_HOME="$dir/cache" HPLOAD_CACHE="$dir/cache/hpload" TORCHINDUCTOR_CACHE_DIR="$dir/cache/inductor"
               VLLM_CACHE_ROOT="$dir/cache/vllm" MPLCONFIGDIR="$dir/cache/matplotlib")
  fi
  echo "install: $install_only"
  (cd "$dir/repo" && env "${env_vars[@]}" bash -c "$install_only") > "$dir/install.log" 2>&1
  install_rc=$?
  t1=$(date +%s)
  if [ "$install_rc" != 0 ]; then
    echo "install FAILED (exit $install_rc) after $((t1 - t0)) s; see $dir/install.log"
    results+=("run $i ($kind): install FAILED in $((t1 - t0)) s")
    all_ok=0
    [ "$keep_venvs" = 0 ] && rm -rf "$dir/repo/.venv" "$dir/cache"
    continue
  fi
  drop_caches
  [ "$kind" = busy ] && start_busy
  echo "tests: $test_cmd $tests"
  t2=$(date +%s)
  (cd "$dir/repo" && env "${env_vars[@]}" bash -c "$test_cmd $tests") > "$dir/tests.log" 2>&1
  test_rc=$?
  t3=$(date +%s)
  [ "$kind" = busy ] && stop_busy
  line="run $i ($kind): exit $test_rc $(counts "$dir/tests.log") tests $((t3 - t2)) s, install $((t1 - t0)) s"
  echo "$line"
  # The slowest set-ups: the first test on each shared server pays its start (vLLM's is the big one).
  grep -E "^[0-9.]+s setup " "$dir/tests.log" | head -3 | sed 's/^/    slowest setup: /'
  [ "$test_rc" != 0 ] && { all_ok=0; grep -E "^(FAILED|ERROR) " "$dir/tests.log" | head -20; }
  results+=("$line")
  [ "$keep_venvs" = 0 ] && rm -rf "$dir/repo/.venv" "$dir/cache"
done

echo "== summary ($(nproc) cores, commit ${commit:0:10}${tests:+, tests: $tests}; logs under $work)"
for line in "${results[@]}"; do echo "  $line"; done
passed=$(printf '%s\n' "${results[@]}" | grep -c ": exit 0 ")
if [ "$all_ok" = 1 ]; then
  echo "fresh-machine-check: PASS: $passed/$total runs passed ($runs cold, $busy_runs with one core busy)"
  exit 0
fi
echo "fresh-machine-check: FAIL: $passed/$total runs passed ($runs cold, $busy_runs with one core busy)"
exit 1
