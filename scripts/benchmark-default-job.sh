#!/usr/bin/env bash
# Time the README's default job (every method x both directions x 3 seeds on `synthetic`, plus
# its teachers) in a fresh results folder; print the wall time, runs/s, the machine load before
# and after, and the comparison table and leaderboard with their Welch tests.
# A benchmark, not a test. Extra arguments go to `bench run`, e.g.
#   bash scripts/benchmark-default-job.sh --runs-per-gpu 2
#   bash scripts/benchmark-default-job.sh --set synthetic.gap=1.0
# KEEP=1 keeps the results folder (its path is printed); BENCH overrides the bench executable.
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH=${BENCH:-.venv/bin/bench}
SEEDS=${SEEDS:-0,1,2}
out=$(mktemp -d "${TMPDIR:-/tmp}/cmkd-default-job.XXXXXX")
[ "${KEEP:-0}" = 1 ] || trap 'rm -rf "$out"' EXIT

echo "cores: $(nproc)   load before: $(cut -d' ' -f1-3 /proc/loadavg)"
start=$(date +%s.%N)
"$BENCH" run --methods all --datasets synthetic --seeds "$SEEDS" -r "$out" "$@"
end=$(date +%s.%N)
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"

runs=$(find "$out/records" -name '*.json' | wc -l)
teachers=$(find "$out/teachers" -name '*.pt' 2>/dev/null | wc -l)
python3 - "$start" "$end" "$runs" "$teachers" <<'EOF'
import sys
start, end, runs, teachers = float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
wall = end - start
print(f"wall {wall:.1f} s for {runs} runs + {teachers} teachers (including process start-up): "
      f"{runs / wall:.3f} runs/s, {wall / max(runs, 1):.2f} s per run")
EOF
"$BENCH" table comparison -r "$out" --format markdown --std --mark-tied --vs-baseline
"$BENCH" leaderboard -r "$out" --cells --format markdown
[ "${KEEP:-0}" = 1 ] && echo "results kept in $out"
exit 0
