#!/usr/bin/env bash
# The non-default pair of docs/results/backbones.md: on the AV-Digits hard preset (audio -> visual),
# a timm ResNet-34 teacher on the MFCC frames and a torchvision ResNet-18 student on the digit
# images, next to the dataset's default pair (its small ResNets), w/o KD and Logit KD, 3 seeds.
# The default pair's runs are those of `bench reproduce offline` (results/offline, shared: nothing
# runs twice); the chosen pair's go to results/backbones-avdigits. Resumable. Prints the table.
#   bash scripts/backbone-comparison.sh            # JOBS=2 for two single-threaded processes
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH=${BENCH:-.venv/bin/bench}
SEEDS=${SEEDS:-0,1,2}
JOBS=${JOBS:-1}
DEFAULT_RESULTS=${DEFAULT_RESULTS:-results/offline}
CHOSEN_RESULTS=${CHOSEN_RESULTS:-results/backbones-avdigits}
OUT=${OUT:-docs/results/backbones.md}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # one thread per process: two stall on a shared machine
common=(--methods none,logit --datasets avdigits --set avdigits.preset=hard --directions a2v --seeds "$SEEDS" -j "$JOBS")

echo "cores: $(nproc --all)   load before: $(cut -d' ' -f1-3 /proc/loadavg)"
t0=$(date +%s)
"$BENCH" run "${common[@]}" -r "$DEFAULT_RESULTS"
t1=$(date +%s)
"$BENCH" run "${common[@]}" -r "$CHOSEN_RESULTS" \
  --set train.teacher_backbone=timm --set teacher.model=resnet34 \
  --set train.student_backbone=torchvision --set student.model=resnet18
t2=$(date +%s)
echo "[time] default pair: $((t1 - t0)) s, chosen pair: $((t2 - t1)) s (load $(cut -d' ' -f1-3 /proc/loadavg))"
.venv/bin/python -m bench.report.backbone_pairs "$DEFAULT_RESULTS" "$CHOSEN_RESULTS" --out "$OUT" \
  --dataset avdigits --direction a2v --methods none,logit --set preset=hard
cat "$OUT"
