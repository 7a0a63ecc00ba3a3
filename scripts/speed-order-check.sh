#!/usr/bin/env bash
# Benchmark check for `bench speed` (#23 item 14): the figures of a method must not depend on where
# it comes in the process. Times none,logit (modes on,off) and then, in a new process, logit,none
# (modes off,on) on the synthetic shapes, and compares each (method, mode)'s median samples/s:
# they agree when max/min <= 1 + TOL (TOL=0.25 by default). Prints every figure with its spread
# (IQR and min-max over the repeats), the thread count and the load average; exit 1 on a
# disagreement. Run it on a quiet machine: on a shared one other processes' work lands in some
# blocks (the spread shows it), and no tolerance separates that from the code.
#   bash scripts/speed-order-check.sh                  # ~1 minute on 2 CPU cores
#   TOL=0.15 STEPS=50 REPEATS=7 bash scripts/speed-order-check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
TOL=${TOL:-0.25} STEPS=${STEPS:-30} WARMUP=${WARMUP:-5} REPEATS=${REPEATS:-5}
OUTDIR=$(mktemp -d "${TMPDIR:-/tmp}/speed-order-XXXXXX")
trap 'rm -rf "$OUTDIR"' EXIT
common=(--dataset synthetic --directions a2v --steps "$STEPS" --warmup "$WARMUP" --repeats "$REPEATS")
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || uptime) on $(getconf _NPROCESSORS_ONLN) cores"
"$PY" -m bench.cli speed --methods none,logit --modes on,off "${common[@]}" --json "$OUTDIR/a.json" >/dev/null
"$PY" -m bench.cli speed --methods logit,none --modes off,on "${common[@]}" --json "$OUTDIR/b.json" >/dev/null
echo "load average after:  $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || uptime)"
"$PY" - "$OUTDIR/a.json" "$OUTDIR/b.json" "$TOL" <<'EOF'
import json
import sys

a, b = (json.load(open(p)) for p in sys.argv[1:3])
tol = float(sys.argv[3])


def cells(d):
    return {(r["method"], m): v for r in d["results"] for m, v in r["modes"].items()}


ca, cb = cells(a), cells(b)
env = a["environment"]
print(f"threads {env['threads']} (interop {env['interop_threads']}), BLAS {env['blas']}, torch {env['torch']}; "
      f"process warm-up {a['process_warmup_s']:.2f} s / {b['process_warmup_s']:.2f} s")
print(f"{'method':7} {'mode':4} | {'order 1: none,logit':>34} | {'order 2: logit,none':>34} | ratio")
bad = []
for key in sorted(ca):
    x, y = ca[key], cb[key]

    def fig(v):
        t = v["timing"]
        lo, hi = t["samples_per_s_range"]
        return f"{v['samples_per_s']:8.1f} samples/s IQR {t['iqr_step_ms']:5.2f} ms [{lo:7.1f}-{hi:7.1f}]"

    ratio = max(x["samples_per_s"], y["samples_per_s"]) / min(x["samples_per_s"], y["samples_per_s"])
    ok = ratio <= 1 + tol
    bad += [] if ok else [key]
    print(f"{key[0]:7} {key[1]:4} | {fig(x)} | {fig(y)} | {ratio:.2f} {'ok' if ok else 'DISAGREE'}")
print(f"tolerance: max/min <= {1 + tol:.2f}; " + ("all agree" if not bad else f"disagree: {bad}"))
sys.exit(1 if bad else 0)
EOF
