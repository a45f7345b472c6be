#!/usr/bin/env bash
# Runs hpload on the lent GPU machine (no network, Python 3.12, vLLM from ../shared/gpu's parts in /root/stage).
# hpload itself is not installed there: a tree of symlinks lays the repo out as the package installs.
#   bash benchmarks/gpu/device.sh run /root/hpsrc/benchmarks/gpu/h100-landscape.toml
#   bash benchmarks/gpu/device.sh python3 /root/hpsrc/benchmarks/gpu/hf_served_vs_offline.py --model ...
set -euo pipefail
# Work from a private copy: the device tool re-syncs the working tree at every call, and a detached run must not
# see its sources change under it.
rm -rf /root/hpsrc && mkdir -p /root/hpsrc && cp -r hpload servers loadgen scenarios tui benchmarks /root/hpsrc/
root=/root/hpsrc
export PYTHONPATH=/root/stage/site:/root/hp VLLM_USE_FLASHINFER_SAMPLER=0 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
rm -rf /root/hp && mkdir -p /root/hp/hpload
for f in "$root"/hpload/*; do ln -s "$f" "/root/hp/hpload/$(basename "$f")"; done
for d in servers loadgen scenarios tui; do ln -s "$root/$d" "/root/hp/hpload/$d"; done
cd /root  # not the repo root: there, python -m would import the unmapped hpload/ folder
for preset in ${HPLOAD_PRESETS:-llama-1b}; do
  [ -f "/root/models/$preset/config.json" ] || python3 -m hpload model like "$preset" "/root/models/$preset" >/dev/null
done
[ "${1:-}" = python3 ] && exec "$@"  # a script, with the same environment
exec python3 -m hpload "$@"
