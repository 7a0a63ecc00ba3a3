"""SLURM fan-out against the real single-node cluster that `.ci/run` starts (slurm/cluster.sh up).

Skipped (with the reason) when no SLURM controller answers on this machine.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bench.cli import app
from bench.records.store import load_records


def _cluster_up() -> bool:
    if shutil.which("sinfo") is None:
        return False
    r = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    return r.returncode == 0 and any(s.startswith(("idle", "mixed", "alloc")) for s in r.stdout.split())


pytestmark = pytest.mark.skipif(not _cluster_up(), reason="no SLURM cluster (start it with: bash slurm/cluster.sh up)")

TINY = ["--datasets", "synthetic", "--directions", "a2v", "--set", "synthetic.n_train=480",
        "--set", "synthetic.n_test=180", "--set", "synthetic.width=8"]


def bench(*args: str) -> "CliRunner.invoke":
    r = CliRunner().invoke(app, list(args), catch_exceptions=False)
    return r


def by_method(res: Path) -> dict[str, dict]:
    return {r["method"]: r for r in load_records(res)}


def test_slurm_array_equals_local(tmp_path):
    common = ["--methods", "none,logit,fdcmkd", "--epochs", "2", "--teacher-epochs", "2", *TINY]
    r = bench("run", "--executor", "slurm", "--wait", "--array-parallelism", "2", "-r", str(tmp_path / "slurm"), *common)
    assert r.exit_code == 0, r.output
    assert "submitted teacher array" in r.output  # the teacher is trained once, by its own task
    r = bench("run", "-r", str(tmp_path / "local"), *common)
    assert r.exit_code == 0, r.output
    s, l = by_method(tmp_path / "slurm"), by_method(tmp_path / "local")
    assert set(s) == set(l) == {"none", "logit", "fdcmkd"}
    for m in s:
        assert s[m]["run_id"] == l[m]["run_id"]
        assert s[m]["best_metric"] == l[m]["best_metric"] and s[m]["final_metric"] == l[m]["final_metric"]
        assert [h["test_metric"] for h in s[m]["history"]] == [h["test_metric"] for h in l[m]["history"]]
        assert s[m]["slurm"]["array_job_id"] and l[m]["slurm"] is None
    # idempotent collection; a resubmission finds nothing to do
    r = bench("collect", "-r", str(tmp_path / "slurm"))
    assert "3 record(s) already present" in r.output
    r = bench("run", "--executor", "slurm", "-r", str(tmp_path / "slurm"), *common)
    assert "nothing to submit" in r.output


FAILING = '''
import os
import torch.nn.functional as F
from bench.api import Method
from bench.api import register_method

@register_method("flaky")
class Flaky(Method):
    category = "Logits"
    def loss(self, s, t, y, epoch):
        if os.path.exists({flag!r}):
            raise RuntimeError("boom: flaky plug-in failed on purpose")
        return {{"ce": self.task_loss(s.logits, y)}}
'''


def test_failed_task_status_and_retry(tmp_path):
    flag = tmp_path / "FAIL"
    flag.write_text("1")
    plug = tmp_path / "flaky.py"
    plug.write_text(FAILING.format(flag=str(flag)))
    res = tmp_path / "res"
    common = ["--methods", "none,flaky", "--plugin", str(plug), "--epochs", "1", "--teacher-epochs", "1", *TINY]
    r = bench("run", "--executor", "slurm", "--wait", "-r", str(res), *common)
    assert r.exit_code == 1 and "1 completed, 1 not" in r.output
    r = bench("status", "-r", str(res))
    assert "FAILED" in r.output and "boom: flaky plug-in failed on purpose" in r.output
    assert "│ 1    │ 0       │ 0       │ 1" in r.output  # done, running, pending, failed
    flag.unlink()
    r = bench("run", "--executor", "slurm", "--wait", "--retry-failed", "-r", str(res), *common)
    assert r.exit_code == 0 and "1 to run" in r.output, r.output
    assert by_method(res)["flaky"]["status"] == "ok"
    from bench.launch import slurm

    rows = slurm.task_table(res)  # the latest attempt of each run
    assert sorted(r_["status"] for r_ in rows) == ["DONE", "DONE"]
    assert "FAILED" not in bench("status", "-r", str(res)).output


def _wait_for(pred, timeout: float, what: str) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if pred():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def _ckpt_epochs(res: Path) -> int:
    import torch

    for p in (res / "checkpoints").glob("*.pt"):
        try:
            return len(torch.load(p, weights_only=False)["history"])
        except Exception:
            return 0
    return 0


def _submission(res: Path) -> dict:
    from bench.launch.slurm import manifests

    return manifests(res)[-1]  # the latest submission


# long enough that it cannot finish during the SIGTERM -> SIGKILL grace of scancel (KillWait)
LONG = ["--methods", "none", "--epochs", "30", *TINY[:-2], "--set", "synthetic.width=8",
        "--set", "synthetic.n_train=1200"]


def _gone(job: str) -> bool:
    """The task has no process left: squeue (running, completing, suspended) no longer lists it."""
    out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True).stdout
    return out.strip() == ""


GATED = '''
import os, time
from bench.api import Method, register_method

@register_method({name!r})
class Gated(Method):
    """w/o KD that waits at the start of epoch 3 while {gate!r} exists: a task the test can hold
    still, deterministically, however fast or busy the machine is."""
    category = "Uni-Modal"
    uses_teacher = False

    def loss(self, s, t, y, epoch):
        while epoch >= 3 and os.path.exists({gate!r}):
            time.sleep(0.2)
        return {{"ce": self.task_loss(s.logits, y)}}
'''


def test_scancel_then_resubmit_resumes_from_checkpoint(tmp_path):
    """Deterministic on a busy machine: the task is held at the start of epoch 3 (the gated plug-in)
    when it is cancelled, so it cannot train on between our look at its checkpoint and its end.
    (Freezing it with `scontrol suspend` is not enough: scancel resumes a suspended task with SIGCONT
    before SIGTERM, and it trains on through the KillWait grace; CI once saw a fifth epoch.) The
    resubmission starts only once the cancelled task has no process left."""
    res = tmp_path / "res"
    gate = tmp_path / "GATE"
    gate.write_text("hold")
    plug = tmp_path / "gated.py"
    plug.write_text(GATED.format(gate=str(gate), name="gated_cancel"))  # one name per plug-in file
    args = ["--methods", "gated_cancel", "--plugin", str(plug), *LONG[2:]]
    r = bench("run", "--executor", "slurm", "-r", str(res), *args)
    assert r.exit_code == 0, r.output
    job = _submission(res)["tasks"][0]["job_id"]
    _wait_for(lambda: _ckpt_epochs(res) >= 2, 600, "two finished epochs")
    subprocess.run(["scancel", job], check=True)
    _wait_for(lambda: _gone(job), 300, "the cancelled task to end")
    assert not list((res / "records").glob("*.json"))  # cancelled mid-run: no record
    assert _ckpt_epochs(res) == 2  # held at epoch 3, then killed: nothing trained after the look
    _wait_for(lambda: "CANCELLED" in bench("status", "-r", str(res)).output, 120, "CANCELLED in bench status")
    gate.unlink()
    r = bench("run", "--executor", "slurm", "--wait", "--retry-failed", "-r", str(res), *args)
    assert r.exit_code == 0, r.output
    rec = by_method(res)["gated_cancel"]
    assert rec["status"] == "ok" and rec["resumed_from_epoch"] == 2  # it really was interrupted mid-run
    assert [h["epoch"] for h in rec["history"]] == list(range(1, 31))  # every epoch exactly once


def test_preemption_signal_requeues_and_resumes(tmp_path):
    """scancel --signal=USR2 = what SLURM sends before a time limit / pre-emption: submitit
    checkpoints and requeues the task, which resumes from the run's epoch checkpoint. The task is
    held at epoch 3 (SLURM drops a signal sent to a job it has just resumed from suspension), so
    the signal always arrives mid-run."""
    res = tmp_path / "res"
    gate = tmp_path / "GATE"
    gate.write_text("hold")
    plug = tmp_path / "gated.py"
    plug.write_text(GATED.format(gate=str(gate), name="gated"))
    args = ["--methods", "gated", "--plugin", str(plug), *LONG[2:]]
    r = bench("run", "--executor", "slurm", "-r", str(res), *args)
    assert r.exit_code == 0, r.output
    m = _submission(res)
    job = m["tasks"][0]["job_id"]
    _wait_for(lambda: _ckpt_epochs(res) >= 2, 600, "two finished epochs")
    assert _ckpt_epochs(res) == 2  # held at the start of epoch 3
    subprocess.run(["scancel", "--signal=USR2", job], check=True)

    def requeued() -> bool:
        st = subprocess.run(["squeue", "-h", "-r", "-j", job, "-o", "%T|%r"], capture_output=True, text=True).stdout
        return "PENDING" in st

    def old_credential_expired() -> bool:
        """slurmd refuses a launch whose credential is not newer, in whole seconds, than the
        revocation of the requeued instance's ("Job credential revoked"): release the job only once
        the clock has passed the second after that instance's end (sacct's REQUEUED row)."""
        rows = subprocess.run(["sacct", "-n", "-X", "-D", "-j", job, "-o", "State,End", "-P"], capture_output=True,
                              text=True).stdout.split()
        ends = [r.split("|")[1] for r in rows if r.startswith("REQUEUED|") and r.split("|")[1] not in ("", "Unknown")]
        if not ends:
            return False
        import datetime as _dt

        return _dt.datetime.now() >= _dt.datetime.fromisoformat(ends[-1]) + _dt.timedelta(seconds=2)

    _wait_for(requeued, 300, "the task to be requeued")
    _wait_for(old_credential_expired, 120, "the requeued instance's credential to be older than the clock")
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], capture_output=True)
    gate.unlink()
    from bench.launch import slurm

    states = slurm.wait(m, timeout_s=1200)
    assert list(states.values()) == ["COMPLETED"]
    rec = by_method(res)["gated"]
    assert rec["slurm"]["restart_count"] == "1" and rec["resumed_from_epoch"] == 2
    assert [h["epoch"] for h in rec["history"]] == list(range(1, 31))


def test_packed_array_tasks(tmp_path):
    """--runs-per-gpu 2 on SLURM: three runs in two array tasks, records equal to local runs."""
    common = ["--methods", "none,logit,fdcmkd", "--epochs", "2", "--teacher-epochs", "2", *TINY]
    r = bench("run", "--executor", "slurm", "--wait", "--runs-per-gpu", "2", "-r", str(tmp_path / "slurm"), *common)
    assert r.exit_code == 0, r.output
    assert "(2 task(s), 3 run(s))" in r.output
    m = json.loads(next((tmp_path / "slurm" / "slurm" / "submissions").glob("*.json")).read_text())
    assert m["runs_per_task"] == 2 and len({t["job_id"] for t in m["tasks"]}) == 2
    r = bench("run", "-r", str(tmp_path / "local"), *common)
    s, l = by_method(tmp_path / "slurm"), by_method(tmp_path / "local")
    assert set(s) == {"none", "logit", "fdcmkd"}
    for k in s:
        assert [h["test_metric"] for h in s[k]["history"]] == [h["test_metric"] for h in l[k]["history"]]
        assert s[k]["slurm"]["array_job_id"] == m["array_job"]
