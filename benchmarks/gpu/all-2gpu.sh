#!/usr/bin/env bash
# The 2-GPU session, detached on the device (see all.sh): the wrapper's GPU overhead, then TP=2 / device_map.
set -u
cd "$(dirname "$0")/../.."
g=/root/hpsrc/benchmarks/gpu  # device.sh copies the tree there first
step() { echo "== $(date +%T) $*"; timeout 900 bash benchmarks/gpu/device.sh "$@"; echo "== $(date +%T) exit $?"; }
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  step python3 $g/hf_served_vs_offline.py --model /root/models/llama-1b --batch-sizes 1,32
  step run $g/gpu-2gpu.toml
  step report /root/results/gpu-2gpu
  echo "ALL DONE"
} >> /root/gpu-run.log 2>&1
