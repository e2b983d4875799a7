#!/usr/bin/env bash
# Runs the ranking benchmark for METHOD (ws | di) and the given seeds in resumable chunks of <= 14 min,
# then writes the report. Two of these (ws and di) can run side by side on 2 cores (1 thread each).
# LOCK wraps each chunk (default: the shared CPU lock /work/tools/cpujob where it exists, else nice -n 15 with
# 1 OpenMP/MKL thread; LOCK= runs without either).
#   benchmarks/nas/run_rank.sh ws 0 1 2 & benchmarks/nas/run_rank.sh di 0 1 2
set -u
cd "$(dirname "$0")/../.."
PY=.venv/bin/python
if [ -x /work/tools/cpujob ]; then default_lock="nice -n 15 /work/tools/cpujob shared --"
else default_lock="nice -n 15 env OMP_NUM_THREADS=1 MKL_NUM_THREADS=1"; fi
LOCK=${LOCK-$default_lock}
method=$1; shift
mkdir -p benchmarks/results/nas/rank
for seed in "$@"; do
  for try in $(seq 20); do
    $LOCK $PY benchmarks/nas/bench_rank.py run --method "$method" --seed "$seed" --max-minutes 14 \
      | tee -a "benchmarks/results/nas/rank/log_$method.txt" | grep -q '^done' && break
  done
done
$PY benchmarks/nas/bench_rank.py report
