#!/usr/bin/env bash
# The equal-budget tuning comparison of docs/results/tuning.md: every method at its published
# defaults (3 seeds), every method tuned with the same budget on validation (`bench tune`, seed
# 1000), then every tuned configuration on test with the same 3 seeds; prints the time of each
# step and the default-vs-tuned table and leaderboards. Resumable: rerun it after an interruption.
#   bash scripts/tuning-comparison.sh                 # mfeat, 16 trials per method and direction
#   DATASET=synthetic TRIALS=12 bash scripts/tuning-comparison.sh
# RESULTS (default results/tuning-$DATASET) keeps the records and studies; JOBS (default 1) workers;
# OUT (default docs/results/tuning.md) gets the tables and leaderboards.
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH=${BENCH:-.venv/bin/bench}
DATASET=${DATASET:-mfeat}
TRIALS=${TRIALS:-16}
SEEDS=${SEEDS:-0,1,2}
JOBS=${JOBS:-1}
RESULTS=${RESULTS:-results/tuning-$DATASET}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # one thread per process: two stall on a shared machine

step() {  # step NAME COMMAND...: run it, print its wall time and the load
  local name=$1; shift
  local t0; t0=$(date +%s.%N)
  "$@"
  echo "[time] $name: $(python3 -c "print(f'{$(date +%s.%N) - $t0:.0f}')") s (load $(cut -d' ' -f1-3 /proc/loadavg))"
}

echo "cores: $(nproc --all)   load before: $(cut -d' ' -f1-3 /proc/loadavg)"
step "default runs" "$BENCH" run --methods all --datasets "$DATASET" --seeds "$SEEDS" -j "$JOBS" -r "$RESULTS"
step "tuning ($TRIALS trials per method and direction)" \
  "$BENCH" tune --methods all --datasets "$DATASET" --trials "$TRIALS" -j "$JOBS" -r "$RESULTS"
step "tuned runs" "$BENCH" run --tuned --methods all --datasets "$DATASET" --seeds "$SEEDS" -j "$JOBS" -r "$RESULTS"
OUT=${OUT:-docs/results/tuning.md}
mkdir -p "$(dirname "$OUT")"
{
  echo "# Equal-budget tuning on $DATASET: published defaults vs tuned"
  echo
  echo "Regenerate: \`DATASET=$DATASET TRIALS=$TRIALS bash scripts/tuning-comparison.sh\` ($TRIALS trials per method"
  echo "and direction on the validation split, tuning seed 1000, then each best trial on test with seeds $SEEDS)."
  echo
  echo "## Test top-1, default and tuned side by side"
  echo
  "$BENCH" table comparison -r "$RESULTS" --params both --format markdown --std --vs-baseline
  echo
  echo "## Leaderboard: default and tuned ranked together, with the places each would take alone"
  echo
  "$BENCH" leaderboard -r "$RESULTS" --params both --format markdown --cells
  for p in default tuned; do
    echo
    echo "## Leaderboard, $p parameters"
    echo
    "$BENCH" leaderboard -r "$RESULTS" --params "$p" --format markdown --cells
  done
} > "$OUT"
cat "$OUT"
