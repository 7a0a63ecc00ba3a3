"""Hardening of the launchers (#23): best-effort progress, clear messages instead of tracebacks, loose
CLI checks, and grids larger than one SLURM job array.

Every test here failed on c0f15da. The SLURM tests run on the localhost cluster (slurm/cluster.sh)
and are skipped without it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from bench.api.errors import BenchError
from bench.cli import app
from bench.records.store import load_records
from conftest import tiny

TINY = ["--datasets", "synthetic", "--directions", "a2v", "--set", "synthetic.n_train=480",
        "--set", "synthetic.n_test=180", "--set", "synthetic.width=8", "--set", "train.batch_size=32",
        "--device", "cpu"]


def bench(*args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(app, list(args), catch_exceptions=False, env={"COLUMNS": "200"})


def ok_methods(res: Path) -> dict[str, str]:
    return {r["method"]: r["status"] for r in load_records(res)}


pytestmark = pytest.mark.usefixtures("one_thread")


# -- 7. a lost progress queue -----------------------------------------------------------------------

GATED = '''
import os, time
from bench.api import Method, register_method

@register_method("gatedq")
class GatedQ(Method):
    """w/o KD that waits at the start of epoch 2 while the gate file exists: the test kills the
    progress queue's process while every run is still training, however fast the machine is."""
    category = "Uni-Modal"
    uses_teacher = False

    def loss(self, s, t, y, epoch):
        while epoch >= 2 and os.path.exists({gate!r}):
            time.sleep(0.05)
        return {{"ce": self.task_loss(s.logits, y)}}
'''


class ManagerKiller:
    """A progress reporter that kills the multiprocessing manager (the process behind the packed
    executor's progress queue) at the first event, then opens the gate the runs wait at."""

    def __init__(self, gate: Path):
        self.gate = gate
        self.killed = False
        self.ended: dict[str, str] = {}
        self.notes: list[str] = []

    def begin(self, run_id, total_epochs):  # type: ignore[no-untyped-def]
        import multiprocessing as mp

        if not self.killed:
            managers = [p for p in mp.active_children() if p.name.startswith("SyncManager")]
            assert len(managers) == 1, managers
            os.kill(managers[0].pid, signal.SIGKILL)
            managers[0].join(30)
            assert not managers[0].is_alive()
            self.killed = True
            self.gate.unlink()

    def epoch(self, run_id, phase, epoch, info):  # type: ignore[no-untyped-def]
        pass

    def end(self, run_id, record):  # type: ignore[no-untyped-def]
        self.ended[run_id] = record["status"]

    def note(self, run_id, message):  # type: ignore[no-untyped-def]
        self.notes.append(message)


def test_killed_progress_queue_leaves_packed_runs_ok(tmp_path):
    from bench.launch.grid import expand_grid
    from bench.launch.packed import PackedExecutor

    gate = tmp_path / "GATE"
    gate.write_text("hold")
    plug = tmp_path / "gatedq.py"
    plug.write_text(GATED.format(gate=str(gate)))
    res = tmp_path / "res"
    specs = expand_grid("gatedq", "synthetic", "a2v", "0,1", overrides=tiny(), results_dir=str(res), device="cpu",
                        plugins=[str(plug)])
    rep = ManagerKiller(gate)
    out = PackedExecutor(2, rep).run(specs)
    assert rep.killed
    assert [r["status"] for r in out.failed] == [] and len(out.done) == 2, [r.get("error") for r in out.failed]
    assert sorted(r["status"] for r in load_records(res)) == ["ok", "ok"]
    # the parent reported both ends from the records (the queue could not carry them)
    assert rep.ended == {r["run_id"]: "ok" for r in out.done}
    assert any("progress queue was lost" in n for n in rep.notes)


# -- 12. dead worker processes, --fail-fast ---------------------------------------------------------

SUICIDAL = '''
import os, signal
from bench.api import Method, register_method

@register_method({name!r})
class Suicidal(Method):
    """w/o KD whose process kills itself (as the OOM killer would) while {flag!r} exists."""
    category = "Uni-Modal"
    uses_teacher = False

    def loss(self, s, t, y, epoch):
        if os.path.exists({flag!r}):
            os.kill(os.getpid(), signal.SIGKILL)
        return {{"ce": self.task_loss(s.logits, y)}}
'''


def _suicidal_plugin(tmp_path: Path, name: str) -> tuple[Path, Path]:
    flag = tmp_path / "DIE"
    flag.write_text("1")
    plug = tmp_path / f"{name}.py"
    plug.write_text(SUICIDAL.format(flag=str(flag), name=name))
    return plug, flag


def test_dead_worker_in_packed_run_is_one_clear_line_and_resumes(tmp_path):
    plug, flag = _suicidal_plugin(tmp_path, "suicidal")
    res = tmp_path / "res"
    args = ["run", "-j", "2", "--methods", "none,suicidal", "--plugin", str(plug), "--epochs", "2", "-r", str(res), *TINY]
    r = bench(*args)
    assert r.exit_code == 1, r.output
    assert "a worker process died unexpectedly" in r.output and "rerun the same command to resume" in r.output
    assert "Traceback" not in r.output
    flag.unlink()
    r = bench(*args)
    assert r.exit_code == 0, r.output
    assert ok_methods(res) == {"none": "ok", "suicidal": "ok"}


def test_dead_worker_in_tune_processes_is_one_clear_line_and_resumes(tmp_path):
    plug, flag = _suicidal_plugin(tmp_path, "suicidaltune")
    res = tmp_path / "res"
    args = ["tune", "-j", "2", "--methods", "suicidaltune", "--tune-lr", "--trials", "2", "--plugin", str(plug),
            "--epochs", "2", "-r", str(res), *TINY]
    r = bench(*args)
    assert r.exit_code == 1, r.output
    assert "a worker process died unexpectedly" in r.output and "rerun the same command to resume" in r.output
    assert "finished trials are kept" in r.output and "Traceback" not in r.output
    flag.unlink()
    r = bench(*args)
    assert r.exit_code == 0, r.output
    [study] = [p for p in (res / "tuning").iterdir() if p.is_dir() and p.name.startswith("synthetic_a2v_suicidaltune")]
    states = [json.loads(p.read_text())["state"] for p in sorted((study / "trials").glob("*.json"))]
    assert states.count("complete") == 2, states


FLAKY = '''
from bench.api import Method, register_method

@register_method("flakyff")
class FlakyFF(Method):
    category = "Uni-Modal"
    uses_teacher = False

    def loss(self, s, t, y, epoch):
        raise RuntimeError("boom: failed on purpose")
'''


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_fail_fast_stops_with_one_line(tmp_path, jobs):
    plug = tmp_path / "flakyff.py"
    plug.write_text(FLAKY)
    res = tmp_path / "res"
    r = bench("run", "--fail-fast", "-j", jobs, "--methods", "flakyff", "--plugin", str(plug), "--epochs", "1",
              "-r", str(res), *TINY)
    assert r.exit_code == 1, r.output
    assert "--fail-fast: run synthetic_a2v_flakyff_s0_" in r.output and "RuntimeError: boom" in r.output
    assert "Traceback" not in r.output
    assert ok_methods(res) == {"flakyff": "failed"}  # the failure is recorded, as without --fail-fast


def _loop(tmp_path: Path) -> Path:
    a, b = tmp_path / "loop-a", tmp_path / "loop-b"
    a.symlink_to(b)
    b.symlink_to(a)
    return a


def test_symlink_loops_are_named_errors(tmp_path):
    loop = _loop(tmp_path)
    res = str(tmp_path / "res")
    for args, where in (
        (["run", "--methods", "logit", "--teacher-checkpoint", str(loop), "-r", res, *TINY], "train.teacher_checkpoint"),
        (["run", "--methods", "none", "--plugin", str(loop), "-r", res, *TINY], "--plugin"),
        (["tune", "--methods", "dkd", "--trials", "1", "-r", str(loop), *TINY], "--results"),
    ):
        r = bench(*args)
        assert r.exit_code == 2, (args, r.output)
        assert f"{where}" in r.output and "cannot resolve the path" in r.output and str(loop) in r.output, r.output


def test_plugin_that_exits_is_a_plugin_error(tmp_path):
    plug = tmp_path / "quits.py"
    plug.write_text("import sys\nsys.exit(0)\n")
    r = bench("run", "--methods", "none", "--plugin", str(plug), "-r", str(tmp_path / "res"), *TINY)
    assert r.exit_code == 2, r.output
    assert f"--plugin {plug}: importing it called exit" in r.output
    assert not (tmp_path / "res" / "records").exists()


# -- 13. loose checks ---------------------------------------------------------------------------------

def test_seeds_beyond_32_bits_are_refused_up_front(tmp_path):
    for seed in ("4294967296", "18446744073709551616"):
        r = bench("run", "--methods", "none", "--seeds", f"0,{seed}", "--epochs", "1", "-r", str(tmp_path / "res"), *TINY)
        assert r.exit_code == 2 and "seeds must be between 0 and 4294967295" in r.output, r.output
    assert not (tmp_path / "res" / "records").exists()  # refused before anything ran
    r = bench("tune", "--methods", "dkd", "--trials", "1", "--seed", "4294967296", "-r", str(tmp_path / "res"), *TINY)
    assert r.exit_code == 2 and "--seed 4294967296: expected an integer between 0 and 4294967295" in r.output, r.output
    r = bench("run", "--methods", "none", "--seeds", "4294967295", "--epochs", "1", "-r", str(tmp_path / "res"), *TINY)
    assert r.exit_code == 0, r.output  # the largest seed runs


def test_folder_modality_without_features_names_the_file(tmp_path):
    from bench.train.resolve import build_adapter

    d = tmp_path / "toy"
    d.mkdir()
    (d / "meta.json").write_text(json.dumps({"name": "toy", "num_classes": 2, "modalities": ["a", "b"]}))
    for split in ("train", "test"):
        y = np.arange(20) % 2
        np.savez(d / f"{split}.npz", a=np.zeros((20, 0), np.float32), b=np.ones((20, 6), np.float32), label=y)
    with pytest.raises(BenchError) as exc:
        build_adapter(str(d), {}).modalities  # noqa: B018
    msg = str(exc.value)
    assert str(d / "train.npz") in msg and "'a'" in msg and "(0,)" in msg and "at least 1" in msg, msg


@pytest.mark.parametrize("j", ["0", "-1"])
def test_jobs_below_one_are_refused(tmp_path, j):
    for cmd, extra in (("run", ["--methods", "none", "--epochs", "1"]), ("tune", ["--methods", "dkd", "--trials", "1"])):
        r = bench(cmd, "-j", j, *extra, "-r", str(tmp_path / "res"), *TINY)
        assert r.exit_code == 2, r.output
        assert "Invalid value for '--runs-per-gpu' / '--jobs' / '-j'" in r.output, r.output
        assert not (tmp_path / "res").exists()


def test_tune_live_table_ends_its_line(tmp_path):
    r = bench("tune", "--methods", "dkd", "--trials", "1", "--epochs", "1", "--teacher-epochs", "1",
              "-r", str(tmp_path / "res"), *TINY)
    assert r.exit_code == 0, r.output
    end = r.output.index("finished in")
    assert r.output[end - 2:end] == "┘\n", repr(r.output[end - 40:end + 20])


# -- 16. grids larger than one job array --------------------------------------------------------------

def test_parallelism_is_shared_among_a_grids_arrays():
    from bench.launch.arrays import share_parallelism

    assert share_parallelism(64, [1001, 449]) == [44, 20]  # at most 64 at once, both arrays drain together
    assert share_parallelism(64, [10]) == [64]
    assert share_parallelism(100, [30, 30]) == [100, 100]  # the whole grid fits: no limit to share
    assert sum(share_parallelism(7, [5, 5, 5])) == 7


def _cluster_up() -> bool:
    if shutil.which("sinfo") is None:
        return False
    r = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    return r.returncode == 0 and any(s.startswith(("idle", "mixed", "alloc")) for s in r.stdout.split())


slurm_only = pytest.mark.skipif(not _cluster_up(), reason="no SLURM cluster (start it with: bash slurm/cluster.sh up)")


def _manifest(res: Path) -> dict:
    from bench.launch.slurm import manifests

    return manifests(res)[-1]  # the latest submission


def test_submissions_are_ordered_by_time_then_job_id_as_a_number(tmp_path):
    """Two submissions in one second: the later one has the larger array job id, which may have
    more digits (99, then 100); a string sort put 100 first and made the older one the latest."""
    from bench.launch.slurm import manifests, task_table

    sub = tmp_path / "slurm" / "submissions"
    sub.mkdir(parents=True)
    for stamp, job in (("20261204-101010", 99), ("20261204-101010", 100), ("20261204-101009", 998)):
        (sub / f"{stamp}-{job}.json").write_text(json.dumps({"array_job": str(job), "tasks": []}))
    assert [m["array_job"] for m in manifests(tmp_path)] == ["998", "99", "100"]
    assert task_table(tmp_path) == []


def _sacct_times(job: str) -> list[tuple[str, str, str]]:
    out = subprocess.run(["sacct", "-X", "-n", "-P", "-j", job, "--format=JobID,Start,End"], capture_output=True,
                         text=True, check=True).stdout
    return [tuple(line.split("|")) for line in out.splitlines() if line.strip()]  # type: ignore[misc]


FLAKY_SLURM = '''
import os
from bench.api import Method, register_method

@register_method("flakys")
class FlakyS(Method):
    category = "Logits"

    def loss(self, s, t, y, epoch):
        if os.path.exists({flag!r}):
            raise RuntimeError("boom: flaky on purpose")
        return {{"ce": self.task_loss(s.logits, y)}}
'''


@slurm_only
def test_grid_over_the_array_limit_is_split_and_followed_as_one(tmp_path):
    """max_array_size=2: three runs go in as an array of two and a job of one, both after the teacher
    array; status, --retry-failed and collect see one grid."""
    from bench.launch import slurm

    flag = tmp_path / "FAIL"
    flag.write_text("1")
    plug = tmp_path / "flakys.py"
    plug.write_text(FLAKY_SLURM.format(flag=str(flag)))
    conf = tmp_path / "slurm.toml"
    conf.write_text("[slurm]\nmax_array_size = 2\n")
    res = tmp_path / "res"
    common = ["--methods", "none,logit,flakys", "--plugin", str(plug), "--epochs", "1", "--teacher-epochs", "1",
              "--slurm-config", str(conf), "-r", str(res), *TINY]
    r = bench("run", "--executor", "slurm", "--wait", *common)
    assert r.exit_code == 1 and "2 completed, 1 not" in r.output, r.output
    assert "submitted run arrays" in r.output and "(3 task(s) in 2 arrays of at most 2, 3 run(s))" in r.output, r.output
    m = _manifest(res)
    arrays = m["array_jobs"]
    assert len(arrays) == 2 and m["array_job"] == arrays[0] and m["max_array_size"] == 2
    per_array = {a: [t for t in m["tasks"] if t["job_id"].split("_")[0] == a] for a in arrays}
    assert [len(v) for v in per_array.values()] == [2, 1]
    # both run arrays waited for the teacher's (afterany): none started before the teacher ended
    [(_, _, teacher_end)] = _sacct_times(m["teacher_job"])
    for a in arrays:
        assert all(start >= teacher_end for _, start, _ in _sacct_times(a)), (a, teacher_end)
    label = "+".join(arrays)
    assert slurm.summarize(slurm.task_table(res)) == {label: {"done": 2, "failed": 1}}
    st = bench("status", "-r", str(res))
    assert label in st.output and "boom: flaky on purpose" in st.output, st.output
    flag.unlink()
    r = bench("run", "--executor", "slurm", "--wait", "--retry-failed", *common)
    assert r.exit_code == 0 and "1 to run" in r.output, r.output
    assert sorted(row["status"] for row in slurm.task_table(res)) == ["DONE"] * 3
    assert ok_methods(res) == {"none": "ok", "logit": "ok", "flakys": "ok"}
    # collect recovers a missing record from its task's result, in whichever array the task was
    second = per_array[arrays[1]][0]["run_id"]
    (res / "records" / f"{second}.json").unlink()
    r = bench("collect", "-r", str(res))
    assert "2 record(s) already present, 1 recovered" in r.output, r.output


@slurm_only
def test_grid_over_the_clusters_real_array_limit_is_submitted(tmp_path):
    """Against the cluster's own MaxArraySize (read with scontrol; sbatch refuses a larger array): a
    grid two tasks larger goes in as two arrays, held (``begin``) so that nothing runs, then cancelled."""
    from bench.launch import slurm

    out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, check=True).stdout
    [limit] = [int(line.split("=")[1]) for line in out.splitlines() if line.startswith("MaxArraySize ")]
    n = limit + 2
    res = tmp_path / "res"
    r = bench("run", "--executor", "slurm", "--methods", "none", "--seeds", ",".join(map(str, range(n))),
              "--slurm-arg", "begin=now+2hours", "-r", str(res), *TINY)
    try:
        assert r.exit_code == 0, r.output
        m = _manifest(res)
        assert len(m["array_jobs"]) == 2 and len(m["tasks"]) == n and m["max_array_size"] == limit
        assert slurm.cluster_max_array_size() == limit
        assert f"in 2 arrays of at most {limit}" in r.output
        rows = slurm.task_table(res)
        assert len(rows) == n and {row["status"] for row in rows} == {"PENDING"}
        assert slurm.summarize(rows) == {"+".join(m["array_jobs"]): {"pending": n}}
    finally:
        for a in _manifest(res)["array_jobs"] if (res / "slurm" / "submissions").exists() else []:
            subprocess.run(["scancel", a], check=False)
