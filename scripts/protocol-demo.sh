#!/usr/bin/env bash
# Issue #25's demonstration (not the republish): synthetic, 3 seeds with per-seed splits
# (train.split_mode=per_seed), w/o KD and its label-smoothing control, Logit, DKD, Feat and FD-CMKD,
# each of the four also with a shuffled and a random teacher, through the paired statistics.
# Resumable like every grid: rerun after an interruption. Outputs in $OUT (default
# docs/results/protocol-demo): comparison.md (vs w/o KD, intervals), comparison_tied.md (not below
# the best), leaderboard.md, leaderboard/index.html (+ .png screenshot when chromium is there).
#   RES=results/protocol-demo OUT=docs/results/protocol-demo JOBS=2 bash scripts/protocol-demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
RES=${RES:-results/protocol-demo}
OUT=${OUT:-docs/results/protocol-demo}
JOBS=${JOBS:-2}
B=.venv/bin/bench
SPLITS=(--set train.split_mode=per_seed)
mkdir -p "$OUT"
t0=$(date +%s)
$B run --methods none,ls,logit,dkd,feat,fdcmkd --datasets synthetic --seeds 0,1,2 -j "$JOBS" -r "$RES" "${SPLITS[@]}"
for control in shuffled random; do
  $B run --methods logit,dkd,feat,fdcmkd --datasets synthetic --seeds 0,1,2 -j "$JOBS" -r "$RES" "${SPLITS[@]}" \
    --set train.teacher_control=$control
done
echo "grid: $(( $(date +%s) - t0 )) s"
$B table -r "$RES" --format markdown --std --vs-baseline --intervals -o "$OUT/comparison.md"
$B table -r "$RES" --format markdown --std --mark-tied -o "$OUT/comparison_tied.md"
$B leaderboard -r "$RES" --format markdown --out "$OUT/leaderboard.md"
$B leaderboard -r "$RES" --format html --out "$OUT/leaderboard"
if command -v chromium > /dev/null; then
  chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1280,3400 \
    --screenshot="$OUT/leaderboard.png" "file://$(realpath "$OUT/leaderboard/index.html")" 2> /dev/null || true
fi
echo "outputs in $OUT"
