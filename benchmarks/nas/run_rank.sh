#!/usr/bin/env bash
# Runs every (method, seed) of the ranking benchmark in resumable chunks of <= 14 min, then the report.
# LOCK wraps each chunk (default: this machine's shared CPU lock; LOCK= to run without one).
set -u
cd "$(dirname "$0")/../.."
PY=.venv/bin/python
LOCK=${LOCK-"nice -n 15 /work/tools/cpujob shared --"}
mkdir -p benchmarks/results/nas/rank
for run in "ws 0" "ws 1" "ws 2" "di 0" "di 1" "di 2"; do
  set -- $run
  for try in $(seq 20); do
    $LOCK $PY benchmarks/nas/bench_rank.py run --method "$1" --seed "$2" --max-minutes 14 \
      | tee -a benchmarks/results/nas/rank/log.txt | grep -q '^done' && break
  done
done
$PY benchmarks/nas/bench_rank.py report
