#!/usr/bin/env bash
# The whole H100 session, detached on the device so it outlives any one 10-minute call:
#   setsid nohup bash benchmarks/gpu/all.sh >/dev/null 2>&1 &      then poll /root/gpu-run.log
set -u
cd "$(dirname "$0")/../.."
g=/root/hpsrc/benchmarks/gpu  # device.sh copies the tree there first
step() { echo "== $(date +%T) hpload $*"; timeout 1500 bash $g/device.sh "$@"; echo "== $(date +%T) exit $?"; }
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  step run $g/h100-landscape.toml
  step report /root/results/h100-landscape
  step run $g/h100-online.toml
  step report /root/results/h100-online
  step tune $g/h100-slo-tune.toml
  step report /root/results/h100-slo-tune
  echo "ALL DONE"
} >> /root/gpu-run.log 2>&1
