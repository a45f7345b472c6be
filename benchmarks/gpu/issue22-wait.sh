#!/usr/bin/env bash
# On the device, in every polling call after issue22.sh was launched: issue21-wait.sh for /root/i22 (waits up to
# LIMIT seconds for the run to end, prints the log's tail, puts everything so far into $OUT/i22.tgz).
#   bash /root/hpsrc/benchmarks/gpu/issue22-wait.sh [LIMIT_S=540] [TAIL_LINES=60]
exec bash "$(dirname "$0")/issue21-wait.sh" "${1:-540}" "${2:-60}" i22
