#!/usr/bin/env bash
# First run on a GPU machine: versions, the CUDA test suite, `bench speed` and the default job on
# CUDA, each under its own timeout (together under 8 minutes), then a short Markdown report.
#
#   bash scripts/gpu-check.sh [--dry-run] [REPORT.md]
#
# REPORT.md defaults to $OUT/gpu-check-report.md when OUT is set (a GPU runner collects the files
# under $OUT; the logs, junit.xml, speed.json and the default job's records go to $OUT/gpu-check/),
# else ./gpu-check-report.md. --dry-run (or GPU_CHECK_ALLOW_CPU=1) runs every step on the CPU at
# tiny sizes, to check the plumbing and the report on a machine without a GPU.
#
# A failing or timed-out step does not stop the others; the exit status is 1 if any step failed.
# Nothing is installed outside the checkout: a missing .venv is made by scripts/setup.sh, or, on an
# offline GPU image whose python3 already has torch, as a local venv over that torch that maps
# this checkout's packages in (no download, no build).
#
# Tunables (seconds): GPU_CHECK_BUDGET (total, default 450), GPU_CHECK_TEST_TIMEOUT (210),
# GPU_CHECK_SPEED_TIMEOUT (100); the default job gets what the earlier steps left of the budget
# (GPU_CHECK_JOB_TIMEOUT caps it lower).
# GPU_CHECK_TESTS (default tests/test_cuda.py) and GPU_CHECK_PYTEST_ARGS select the tests.
set -u
cd "$(dirname "$0")/.."
ROOT=$(pwd)

DRY=${GPU_CHECK_ALLOW_CPU:-0}
REPORT=""
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY=1 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) REPORT=$arg ;;
  esac
done
OUT_DIR=${OUT:-}
if [ -z "$REPORT" ]; then
  if [ -n "$OUT_DIR" ]; then REPORT="$OUT_DIR/gpu-check-report.md"; else REPORT="$ROOT/gpu-check-report.md"; fi
fi
case "$REPORT" in /*) ;; *) REPORT="$ROOT/$REPORT" ;; esac

BUDGET=${GPU_CHECK_BUDGET:-450}
T_INFO=30
T_TEST=${GPU_CHECK_TEST_TIMEOUT:-210}
T_SPEED=${GPU_CHECK_SPEED_TIMEOUT:-100}
TESTS=${GPU_CHECK_TESTS:-tests/test_cuda.py}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")
STEPS="$WORK/steps.tsv"
: > "$STEPS"
START=$(date +%s)
export PYTHONUNBUFFERED=1

if [ "$DRY" = 1 ]; then
  DEV=cpu
  PYTEST_ARGS='-k "fused_optimizer_step or pinned_prefetch"'
  export CMKD_TEST_CUDA_ON_CPU=1
  SPEED_ARGS=(--device cpu --directions a2v --batch-size 2 --steps 1 --warmup 0 --workers 1
              --set crema.image_size=64 --set crema.width=8)
  JOB_ARGS=(--device cpu --methods none,logit --directions a2v --epochs 1 --teacher-epochs 1
            --set synthetic.n_train=240 --set synthetic.n_test=60)
else
  DEV=cuda
  PYTEST_ARGS=""
  SPEED_ARGS=()
  JOB_ARGS=(--methods all --device cuda)
fi

PYTEST_ARGS=${GPU_CHECK_PYTEST_ARGS-$PYTEST_ARGS}

# ---------------------------------------------------------------------------------------------
# python environment

setup_env() {
  if [ -x .venv/bin/python ] && .venv/bin/python -c "import bench, torch, pytest" >/dev/null 2>&1; then
    return 0
  fi
  if [ ! -e .venv ] && command -v python3 >/dev/null 2>&1 \
     && python3 -c "import torch, torchvision, torchaudio, typer, rich, pytest" >/dev/null 2>&1; then
    # An offline GPU image whose python3 (itself often a venv) holds torch: a bare venv that adds
    # python3's package folders and maps bench, bench.methods and bench.datasets to this checkout
    # as pyproject.toml's package-dir does; no download, no build. No `bench` script: the steps
    # call `python -m bench.cli`.
    echo "no .venv: a venv over $(command -v python3)'s packages, this checkout mapped in (offline)"
    local sites site
    sites=$(python3 -c "import sys; print([p for p in sys.path if p.endswith(('site-packages', 'dist-packages'))])")
    if python3 -m venv --without-pip .venv; then
      site=$(.venv/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
      cat > "$site/_cmkd_bench_checkout.py" <<PYEOF
"""python3's packages and the cmkd-bench checkout at $ROOT (made by scripts/gpu-check.sh)."""
import importlib.util
import site
import sys

for _d in $sites:
    site.addsitedir(_d)
_DIRS = {"bench": "$ROOT/bench", "bench.methods": "$ROOT/methods", "bench.datasets": "$ROOT/datasets"}


class _Finder:
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        d = _DIRS.get(name)
        if d is None:
            return None
        return importlib.util.spec_from_file_location(name, d + "/__init__.py", submodule_search_locations=[d])


sys.meta_path.insert(0, _Finder)
PYEOF
      echo "import _cmkd_bench_checkout" > "$site/_cmkd_bench_checkout.pth"
      .venv/bin/python -c "import bench.cli, bench.methods, bench.datasets, torch, pytest" && return 0
    fi
    echo "the venv over python3 did not work; trying scripts/setup.sh"
    rm -rf .venv
  fi
  bash scripts/setup.sh --test
}

# step NAME TIMEOUT LOG LABEL CMD...: run CMD under its timeout, tee its output to LOG, record its
# exit status and wall time (LABEL: the command as the report shows it)
step() {
  local name=$1 limit=$2 log=$3 label=$4
  shift 4
  echo
  echo "=== $name (timeout ${limit}s): $label"
  local t0 t1 rc
  t0=$(date +%s.%N)
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$log"
  rc=${PIPESTATUS[0]}
  t1=$(date +%s.%N)
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$rc" "$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", b-a}')" "$limit" "$label" >> "$STEPS"
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then echo "=== $name: ran out of time after ${limit}s"; fi
  return 0
}

left() { echo $(( BUDGET - ($(date +%s) - START) )); }

setup_log="$WORK/setup.log"
step setup 900 "$setup_log" "use .venv, or make it (scripts/setup.sh --test; offline: a venv over python3's torch)" \
  bash -c "$(declare -f setup_env); ROOT='$ROOT'; setup_env"
PY="$ROOT/.venv/bin/python"
[ -x "$PY" ] || PY=python3
START=$(date +%s)  # the budget counts from here: a first-time setup is not part of the check

# ---------------------------------------------------------------------------------------------
# (a) device and versions

cat > "$WORK/info.py" <<'EOF'
import json, platform, sys
import torch
out, dev = sys.argv[1], sys.argv[2]
info = {"python": platform.python_version(), "torch": torch.__version__, "cuda_build": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cuda_available": torch.cuda.is_available(), "host": platform.node()}
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    info.update(device=torch.cuda.get_device_name(0), capability=f"{p.major}.{p.minor}",
                memory_gib=round(p.total_memory / 2**30, 1), multiprocessors=p.multi_processor_count,
                bf16=torch.cuda.is_bf16_supported(), tf32_conv=torch.backends.cudnn.allow_tf32,
                tf32_matmul=torch.backends.cuda.matmul.allow_tf32)
else:
    info["device"] = f"CPU {platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"
try:
    import bench
    info["bench"] = bench.__version__
except Exception as exc:  # noqa: BLE001 - reported, not fatal here
    info["bench"] = f"not importable: {exc}"
json.dump(info, open(out, "w"), indent=1)
print(json.dumps(info, indent=1))
if dev == "cuda" and not torch.cuda.is_available():
    sys.exit("torch.cuda.is_available() is False: the CUDA steps cannot run (--dry-run checks the plumbing on a CPU)")
EOF
step info "$T_INFO" "$WORK/info.log" "nvidia-smi; torch, CUDA and cuDNN versions" bash -c '
  if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi
    nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader > "$1/gpu.csv" || true
  else
    echo "nvidia-smi: not found"
  fi
  "$2" "$1/info.py" "$1/info.json" "$3"' info "$WORK" "$PY" "$DEV"

# ---------------------------------------------------------------------------------------------
# (b) the CUDA test suite

limit=$(( $(left) - 60 < T_TEST ? $(left) - 60 : T_TEST ))
[ "$limit" -lt 30 ] && limit=30
# shellcheck disable=SC2086  # PYTEST_ARGS is a word list on purpose
eval "set -- $PYTEST_ARGS"
step tests "$limit" "$WORK/tests.log" "pytest -q -ra $TESTS $PYTEST_ARGS" "$PY" -m pytest -q -ra -p no:cacheprovider --junitxml="$WORK/junit.xml" "$TESTS" "$@"

# ---------------------------------------------------------------------------------------------
# (d) bench speed (before the default job: nothing else runs while it times)

BENCH=("$PY" -m bench.cli)
[ -x .venv/bin/bench ] && BENCH=(.venv/bin/bench)
limit=$(( $(left) - 45 < T_SPEED ? $(left) - 45 : T_SPEED ))
[ "$limit" -lt 20 ] && limit=20
step speed "$limit" "$WORK/speed.log" "bench speed --methods fdcmkd --dataset crema ${SPEED_ARGS[*]-}" "${BENCH[@]}" speed --methods fdcmkd --dataset crema --json "$WORK/speed.json" ${SPEED_ARGS[@]+"${SPEED_ARGS[@]}"}

# ---------------------------------------------------------------------------------------------
# (c) the default job, with what is left of the budget

limit=$(( $(left) - 10 ))
[ "$limit" -lt 30 ] && limit=30
[ -n "${GPU_CHECK_JOB_TIMEOUT:-}" ] && [ "$GPU_CHECK_JOB_TIMEOUT" -lt "$limit" ] && limit=$GPU_CHECK_JOB_TIMEOUT
step default-job "$limit" "$WORK/job.log" "bench run --datasets synthetic ${JOB_ARGS[*]}" "${BENCH[@]}" run --datasets synthetic --results "$WORK/job" "${JOB_ARGS[@]}"
"${BENCH[@]}" table comparison --format markdown --results "$WORK/job" --datasets synthetic --out "$WORK/job-table.md" \
  > "$WORK/job-table.log" 2>&1 || true

# ---------------------------------------------------------------------------------------------
# (e) the report

mkdir -p "$(dirname "$REPORT")"
REPORT_PY="$PY"
"$REPORT_PY" -c "import json, xml.etree.ElementTree" >/dev/null 2>&1 || REPORT_PY=python3
WORK="$WORK" DRY="$DRY" TESTS="$TESTS" BUDGET="$BUDGET" "$REPORT_PY" - "$REPORT" <<'EOF'
import glob, json, os, re, sys, time
import xml.etree.ElementTree as ET

work, report = os.environ["WORK"], sys.argv[1]
dry = os.environ["DRY"] == "1"
L = []
add = L.append


def read(name, default=""):
    try:
        return open(os.path.join(work, name), errors="replace").read()
    except OSError:
        return default


def tail(text, n):
    lines = text.rstrip().splitlines()
    return "\n".join(lines[-n:])


ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
steps = []
for line in read("steps.tsv").splitlines():
    name, rc, secs, limit, cmd = line.split("\t", 4)
    steps.append({"name": name, "rc": int(rc), "s": float(secs), "limit": int(limit), "cmd": cmd})
by = {s["name"]: s for s in steps}
failed = [s["name"] for s in steps if s["rc"] != 0]
info = {}
try:
    info = json.loads(read("info.json", "{}"))
except ValueError:
    pass

add(f"# GPU check: {info.get('device', '?')}" + (" (dry run on the CPU)" if dry else ""))
add("")
add(f"{time.strftime('%Y-%m-%d %H:%M %Z')} on `{info.get('host', '?')}`. **{'PASS' if not failed else 'FAIL'}**"
    + (f": failed steps: {', '.join(failed)}" if failed else ": every step succeeded"))
add("")
add("## Device and versions")
add("")
gpu = read("gpu.csv").strip()
if gpu:
    add(f"- nvidia-smi: {gpu} (name, driver, memory, compute capability)")
keys = [("device", "device"), ("capability", "compute capability"), ("memory_gib", "memory GiB"),
        ("multiprocessors", "SMs"), ("bf16", "bf16 supported"), ("tf32_conv", "cuDNN TF32 (fp32 convolutions)"),
        ("tf32_matmul", "TF32 matmul"), ("torch", "torch"), ("cuda_build", "CUDA (torch build)"), ("cudnn", "cuDNN"),
        ("python", "python"), ("bench", "cmkd-bench"), ("cuda_available", "torch.cuda.is_available()")]
for k, label in keys:
    if k in info:
        add(f"- {label}: {info[k]}")
add("")
add("## Steps")
add("")
add("| step | exit | wall s | timeout s | result |")
add("| --- | ---: | ---: | ---: | --- |")
for s in steps:
    res = "ok" if s["rc"] == 0 else ("**ran out of time**" if s["rc"] in (124, 137) else "**failed**")
    add(f"| {s['name']} | {s['rc']} | {s['s']:.1f} | {s['limit']} | {res} |")
add("")
for s in steps:
    add(f"- {s['name']}: `{s['cmd']}`")
add("")

# ---- tests
add(f"## Test suite ({os.environ['TESTS']})")
add("")
log = ANSI.sub("", read("tests.log"))
try:
    root = ET.parse(os.path.join(work, "junit.xml")).getroot()
    suites = [root] if root.tag == "testsuite" else list(root)
    tot = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    secs = sum(float(s.get("time", 0)) for s in suites)
    passed = tot["tests"] - tot["failures"] - tot["errors"] - tot["skipped"]
    add(f"**{passed} passed, {tot['failures']} failed, {tot['errors']} errors, {tot['skipped']} skipped** "
        f"of {tot['tests']} in {secs:.0f} s")
    add("")
    skips = {}
    for case in root.iter("testcase"):
        name = f"{case.get('classname', '').split('.')[-1]}::{case.get('name')}"
        for kind in ("failure", "error"):
            for el in case.findall(kind):
                add(f"### {kind}: `{name}`")
                add("")
                add("```")
                add(tail((el.get("message") or "") + "\n" + (el.text or ""), 30))
                add("```")
                add("")
        for el in case.findall("skipped"):
            skips.setdefault(el.get("message", ""), []).append(name)
    for msg, names in skips.items():
        add(f"- skipped ({len(names)}): {msg}")
    if skips:
        add("")
except (OSError, ET.ParseError) as exc:
    add(f"no junit.xml ({exc}); the log's last lines:")
    add("")
    add("```")
    add(tail(log, 40))
    add("```")
    add("")
m = re.search(r"=+ warnings summary =+\n(.*?)(?:\n-- Docs|\n=+ )", log, re.S)
if m:
    add("Warnings (pytest's summary, trimmed):")
    add("")
    add("```")
    add("\n".join(m.group(1).strip().splitlines()[:40]))
    add("```")
    add("")

# ---- bench speed
add("## bench speed (CREMA-D shapes, FD-CMKD)")
add("")
try:
    sp = json.loads(read("speed.json"))
except ValueError:
    sp = None
if not sp:
    add("no speed.json; the log's last lines:")
    add("")
    add("```")
    add(tail(ANSI.sub("", read("speed.log")), 30))
    add("```")
else:
    r0 = sp["results"][0]
    peak = (f"MFU against {r0['peak_tflops']} TFLOP/s ({r0['peak_basis']})" if r0.get("peak_tflops")
            else "no MFU (no peak known for this device)")
    add(f"{r0['device']}, torch {r0['torch']}, batch {r0['batch_size']}, {r0['steps']} timed steps after "
        f"{r0['warmup']} warm-up; {peak}")
    add("")
    add("| dir | mode | samples/s | step ms | data % | teacher % | student % | optim % | TFLOP/s | MFU | peak GiB | eval samples/s |")
    add("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in sp["results"]:
        for name in sorted(r["modes"], key=lambda m: m != "on"):
            x = r["modes"][name]
            pct = x["breakdown_pct"]
            mfu = f"{100 * x['mfu']:.2f} %" if x.get("mfu") is not None else "n/a"
            add(f"| {r['direction']} | {name} | {x['samples_per_s']:.1f} | {x['step_ms']:.1f} | "
                + " | ".join(f"{pct.get(k, 0):.1f}" for k in ("data", "teacher_forward", "student_forward_backward", "optimizer"))
                + f" | {x['tflops']:.3g} | {mfu} | {x['peak_memory_gib']:.2f} | {x['eval_samples_per_s']:.1f} |")
    add("")
    for r in sp["results"]:
        if "speedup" in r:
            on = r["modes"]["on"]
            s = on["settings"]
            add(f"- {r['method']} {r['direction']}: on/off **{r['speedup']:.2f}x** "
                f"({r['modes']['on']['samples_per_s']:.1f} vs {r['modes']['off']['samples_per_s']:.1f} samples/s); "
                f"on = amp {s['amp']}, channels_last {s['channels_last']}, {on['data_pipeline']}, fused {s['fused_optim']}, "
                f"teacher cache {s['teacher_cache']}; off = {r['modes']['off']['data_pipeline']}")
    for name, e in sp.get("grid_estimate", {}).items():
        teach = f" + teachers {e['teacher_hours']:.2f}" if e.get("teacher_hours") is not None else ""
        add(f"- grid estimate ({name}): {e['runs']} runs x {e['epochs']} epochs: {e['student_runs_hours']:.2f} h{teach}; "
            f"{e['train_pflop']:.1f} PFLOP")
add("")

# ---- default job
job = by.get("default-job")
add(f"## Default job (`{job['cmd'] if job else 'bench run --methods all --datasets synthetic'}`)")
add("")
recs = []
for p in glob.glob(os.path.join(work, "job", "records", "**", "*.json"), recursive=True):
    try:
        recs.append(json.load(open(p)))
    except (OSError, ValueError):
        pass
ok = [r for r in recs if r.get("status") == "ok"]
bad = [r for r in recs if r.get("status") != "ok"]
if job:
    ran_out = job["rc"] in (124, 137)
    line = (f"wall time **{job['s']:.0f} s** (timeout {job['limit']} s), exit {job['rc']}"
            + (" - **ran out of time**: rerun the same command to finish (finished runs are skipped)" if ran_out else "")
            + f"; records: {len(ok)} ok, {len(bad)} failed")
    if ok:
        dev = sorted({r.get("device", "?") for r in ok})
        secs = sum(r.get("wall_time_s", 0) for r in ok)
        line += f"; device {', '.join(dev)}; {secs:.0f} s of run time summed over the records"
    add(line)
    add("")
for r in bad:
    add(f"- failed: `{r.get('run_id')}`: {r.get('error')}")
table = read("job-table.md").strip()
if table:
    add(table)
else:
    add("no table: " + tail(ANSI.sub("", read("job-table.log")), 5))
add("")
if job and job["rc"] != 0:
    add("```")
    add(tail(ANSI.sub("", read("job.log")), 25))
    add("```")
    add("")
open(report, "w").write("\n".join(L) + "\n")
print(f"wrote {report}")
EOF

if [ -n "$OUT_DIR" ]; then
  mkdir -p "$OUT_DIR/gpu-check"
  for f in tests.log junit.xml speed.json speed.log job.log; do
    [ -f "$WORK/$f" ] && cp "$WORK/$f" "$OUT_DIR/gpu-check/"
  done
  [ -d "$WORK/job/records" ] && tar -czf "$OUT_DIR/gpu-check/job-records.tgz" -C "$WORK/job" records
fi

echo
cat "$REPORT"
echo "work folder: $WORK"
if awk -F'\t' '$2 != 0 {bad=1} END {exit !bad}' "$STEPS"; then
  exit 1
fi
exit 0
