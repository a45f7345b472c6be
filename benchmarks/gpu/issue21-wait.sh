#!/usr/bin/env bash
# On the device, in every polling call after issue21.sh was launched: waits up to LIMIT seconds for it to end, prints
# the log's tail, and puts everything it has so far into $OUT (each call, so a machine that goes away loses nothing
# already measured).
#   bash /root/hpsrc/benchmarks/gpu/issue21-wait.sh [LIMIT_S=540] [TAIL_LINES=60] [RESULTS=i21]   (under /root)
limit=${1:-540}
t=$(date +%s)
while [ $(( $(date +%s) - t )) -lt "$limit" ]; do
  grep -q "ALL DONE" /root/run.log 2>/dev/null && break
  sleep 5
done
tail -n "${2:-60}" /root/run.log
tar czf "$OUT/${3:-i21}.tgz" -C /root "${3:-i21}" run.log 2>/dev/null
ls -la "$OUT"
