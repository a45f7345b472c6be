#!/usr/bin/env bash
# Stages, on the CPU machine, the tree that benchmarks/gpu/issue21.sh runs on the device: the device tool sends the
# lead's checkout (DEST's repo), not this worktree, so the product tree to measure (SRC: a worktree, e.g. main's or
# the agreement benchmark's branch) plus this branch's issue-21 files go to an ignored folder there, named in carry.
#   bash benchmarks/gpu/issue21-stage.sh SRC [DEST]        DEST defaults to /work/main/.gpu-src
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
src=$(cd "$1" && pwd)
dest=${2:-/work/main/.gpu-src}
repo=$(cd "$(dirname "$dest")" && git rev-parse --show-toplevel)
name=/$(basename "$dest")/
grep -qx "$name" "$repo/.git/info/exclude" 2>/dev/null || echo "$name" >> "$repo/.git/info/exclude"
rm -rf "$dest" && mkdir -p "$dest"
# the committed tree only (its commit names exactly what ran), not the worktree's uncommitted edits
git -C "$src" archive HEAD hpload servers loadgen scenarios tui benchmarks | tar xf - -C "$dest"
cp "$here"/benchmarks/gpu/issue21.sh "$here"/benchmarks/gpu/issue21_summary.py "$here"/benchmarks/gpu/proc_cpu.py \
   "$here"/benchmarks/gpu/issue21-cliff.toml "$here"/benchmarks/gpu/pyspy_top.py "$here"/benchmarks/gpu/issue21-wait.sh "$dest/benchmarks/gpu/"
echo "$(git -C "$src" rev-parse --abbrev-ref HEAD)@$(git -C "$src" rev-parse --short HEAD)" > "$dest/.gpu-src-commit"
du -sh "$dest"; cat "$dest/.gpu-src-commit"
