#!/usr/bin/env bash
# Pack what the H100 session produced into $OUT (at most 8 files come back): one tarball of results and reports.
set -u
cp /root/gpu-run.log "$OUT/" 2>/dev/null
tar czf "$OUT/results.tgz" -C /root results --exclude='*.jsonl' 2>/dev/null
ls -la "$OUT"
