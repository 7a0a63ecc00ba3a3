"""Trackers (``bench run --log``): the real libraries write locally, and their own readers find
every epoch (TensorBoard's event reader, ``mlflow.search_runs`` / the MLflow client, the W&B offline
run file); a resumed run continues the same tracker run; packed, CLI and SLURM runs log too."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny
from typer.testing import CliRunner

from bench.cli import app
from bench.records.store import load_records
from bench.train.resolve import RunSpec, resolve
from bench.train.run import NullReporter, run
from bench.train.trackers import INSTALL, TrackingReporter, parse_trackers, state_path

ALL = ["tensorboard", "mlflow", "wandb"]


def spec(root: Path, method: str = "none", seed: int = 0, epochs: int = 3, teacher_epochs: int = 2) -> RunSpec:
    return RunSpec("synthetic", "audio", "visual", method, seed,
                   tiny({"train": {"epochs": str(epochs), "teacher_epochs": str(teacher_epochs)}}), str(root), "cpu")


# ---- readers: each tracker's own files, read back with its own library ---------------------------

def tb_scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def mlflow_client(results: Path):
    from bench.train.trackers import MLflowTracker

    return MLflowTracker.client(results)


def mlflow_runs(results: Path):
    import mlflow

    client = mlflow_client(results)
    mlflow.set_tracking_uri(client.tracking_uri)  # the file store of this results folder
    try:
        return mlflow.search_runs(experiment_names=["cmkd-bench"], output_format="list"), client
    finally:
        mlflow.set_tracking_uri(None)


def wandb_records(run_file: Path) -> list:
    """The records of a W&B offline run file (``run-<id>.wandb``: a LevelDB-style log of
    protobuf ``Record`` messages, decoded with wandb's own proto module)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = run_file.read_bytes()
    assert data[:4] == b":W&B"
    pos, buf, out, block = 7, b"", [], 32768
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # block trailer
            pos += left
            continue
        _crc, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pos += 7
        if n == 0 and kind == 0:
            pos += left - 7
            continue
        buf += data[pos:pos + n]
        pos += n
        if kind in (1, 4):  # FULL or LAST fragment
            rec = pb.Record()
            rec.ParseFromString(buf)
            out.append(rec)
            buf = b""
    return out


def wandb_history(results: Path, wid: str) -> tuple[list[dict], list]:
    """Every logged history row of W&B run ``wid`` over its offline folders (a resume adds one)."""
    rows, runs = [], []
    folders = sorted((results / "tracking" / "wandb").glob(f"offline-run-*-{wid}*"), key=lambda p: p.stat().st_mtime)
    for folder in folders:
        for rec in wandb_records(folder / f"run-{wid}.wandb"):
            kind = rec.WhichOneof("record_type")
            if kind == "history":
                rows.append({(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in rec.history.item})
            elif kind == "run":
                runs.append(rec.run)
    return rows, runs


# ---- one run with all three trackers, a teacher trained inside it --------------------------------

@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    root = tmp_path_factory.mktemp("tracked")
    with TrackingReporter(None, ALL) as rep:
        rec = run(spec(root, "logit"), rep)
    assert rec["status"] == "ok" and rec["teacher"]["cached"] is False
    return root, rec


def test_tensorboard_events_hold_every_epoch(tracked):
    root, rec = tracked
    logdir = root / "tracking" / "tensorboard" / rec["run_id"]
    got = tb_scalars(logdir)
    h = rec["history"]
    for key in ("test_metric", "val_metric", "lr", "train_loss"):
        assert got[f"student/{key}"] == [(r["epoch"], pytest.approx(r[key], rel=1e-6)) for r in h], key
    for term in h[0]["terms"]:  # logit KD: ce and kd
        assert got[f"student/loss/{term}"] == [(r["epoch"], pytest.approx(r["terms"][term], rel=1e-6)) for r in h]
    assert set(h[0]["terms"]) == {"ce", "kd"}
    teacher = tb_scalars(logdir / "teacher")  # the teacher trained in this run, under its own prefix
    assert [s for s, _ in teacher["teacher/test_metric"]] == [1, 2]
    assert "student/test_metric" not in teacher
    hp = tb_scalars(logdir / "hparams")
    assert hp["hparams/best_metric"] == [(3, pytest.approx(rec["best_metric"], rel=1e-6))]


def test_mlflow_search_runs_finds_params_tags_metric_history_and_the_record(tracked):
    root, rec = tracked
    runs, client = mlflow_runs(root)
    assert len(runs) == 1
    r = runs[0]
    assert r.info.run_name == rec["run_id"] and r.info.status == "FINISHED"
    assert r.data.params["train.lr"] == str(rec["config"]["train"]["lr"])
    assert r.data.params["method_params.tau"] == str(rec["config"]["method_params"]["tau"])
    assert r.data.params["dataset.params.n_train"] == "480"
    tags = r.data.tags
    assert (tags["dataset"], tags["direction"], tags["method"], tags["seed"], tags["config_hash"]) == (
        "synthetic", "a2v", "logit", "0", rec["config_hash"])
    for key in ("test_metric", "val_metric", "lr"):
        hist = sorted((m.step, m.value) for m in client.get_metric_history(r.info.run_id, f"student/{key}"))
        assert hist == [(x["epoch"], pytest.approx(x[key])) for x in rec["history"]], key
    kd = sorted((m.step, m.value) for m in client.get_metric_history(r.info.run_id, "student/loss/kd"))
    assert kd == [(x["epoch"], pytest.approx(x["terms"]["kd"])) for x in rec["history"]]
    assert [m.step for m in client.get_metric_history(r.info.run_id, "teacher/test_metric")] == [1, 2]
    assert r.data.metrics["best_metric"] == pytest.approx(rec["best_metric"])
    art = Path(client.download_artifacts(r.info.run_id, f"{rec['run_id']}.json"))
    assert json.loads(art.read_text())["history"] == json.loads(json.dumps(rec["history"]))


def test_wandb_offline_run_holds_the_history(tracked):
    root, rec = tracked
    state = json.loads(state_path(root, rec["run_id"]).read_text())
    wid = state["wandb"]["id"]
    rows, runs = wandb_history(root, wid)
    assert runs and runs[0].run_id == wid and runs[0].display_name == rec["run_id"]
    assert "method:logit" in list(runs[0].tags)
    student = [r for r in rows if "student/epoch" in r]
    assert [r["student/epoch"] for r in student] == [1, 2, 3]
    assert [r["student/test_metric"] for r in student] == pytest.approx([x["test_metric"] for x in rec["history"]])
    assert [r["student/loss/ce"] for r in student] == pytest.approx([x["terms"]["ce"] for x in rec["history"]])
    assert [r["teacher/epoch"] for r in rows if "teacher/epoch" in r] == [1, 2]
    assert not list(root.rglob("*.netrc"))  # offline: nothing asked for or stored a login


# ---- resume, fresh start ---------------------------------------------------------------------------

class _StopAt(NullReporter):
    """Ctrl-C after a student epoch (the trackers have logged it: they come first in the fan-out)."""

    def __init__(self, n: int):
        self.n = n

    def epoch(self, run_id, phase, epoch, info):
        if phase == "student" and epoch == self.n:
            raise KeyboardInterrupt


def test_a_resumed_run_appends_to_the_same_tracker_runs(tmp_path):
    s = spec(tmp_path, "none", epochs=4)
    rid = resolve(s).run_id
    with pytest.raises(KeyboardInterrupt), TrackingReporter(_StopAt(2), ALL) as rep:
        run(s, rep)
    first = json.loads(state_path(tmp_path, rid).read_text())
    runs, client = mlflow_runs(tmp_path)
    assert len(runs) == 1 and runs[0].info.status == "KILLED"  # closed on the way out, not left running
    with TrackingReporter(None, ALL) as rep:
        rec = run(s, rep)
    assert rec["resumed_from_epoch"] == 2
    again = json.loads(state_path(tmp_path, rid).read_text())
    assert again["mlflow"]["run_id"] == first["mlflow"]["run_id"] and again["wandb"]["id"] == first["wandb"]["id"]
    test = [(x["epoch"], pytest.approx(x["test_metric"])) for x in rec["history"]]
    # MLflow: the same run, every epoch once, finished
    runs, client = mlflow_runs(tmp_path)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    hist = sorted((m.step, m.value) for m in client.get_metric_history(runs[0].info.run_id, "student/test_metric"))
    assert hist == test
    # TensorBoard: the same folder, epochs 1-4 once each
    assert tb_scalars(tmp_path / "tracking" / "tensorboard" / rid)["student/test_metric"] == test
    # W&B: the same run id in two offline folders (wandb sync appends them in order), epochs 1-4 once
    rows, wruns = wandb_history(tmp_path, first["wandb"]["id"])
    assert len(wruns) == 2 and {r.run_id for r in wruns} == {first["wandb"]["id"]}
    assert [(r["student/epoch"], r["student/test_metric"]) for r in rows] == test
    # a fresh start (--force) opens new tracker runs instead of mixing two trainings into one
    with TrackingReporter(None, ALL) as rep:
        run(s, rep, force=True)
    fresh = json.loads(state_path(tmp_path, rid).read_text())
    assert fresh["mlflow"]["run_id"] != first["mlflow"]["run_id"] and fresh["wandb"]["id"] != first["wandb"]["id"]
    runs, _ = mlflow_runs(tmp_path)
    assert sorted(r.info.status for r in runs) == ["FINISHED", "FINISHED"]


# ---- validation ------------------------------------------------------------------------------------

def test_unknown_and_missing_trackers_are_named(tmp_path, monkeypatch):
    r = CliRunner().invoke(app, ["run", "--methods", "none", "--log", "tensorbord", "-r", str(tmp_path)])
    assert r.exit_code == 2 and "--log: unknown tracker 'tensorbord'; valid: tensorboard, mlflow, wandb" in r.output
    assert not (tmp_path / "records").exists()  # refused before anything ran
    # a library that is not installed: Python's own import block (None in sys.modules) makes
    # `import wandb` fail exactly as on a machine without it
    monkeypatch.setitem(sys.modules, "wandb", None)
    r = CliRunner().invoke(app, ["run", "--methods", "none", "--log", "mlflow,wandb", "-r", str(tmp_path)])
    assert r.exit_code == 2, r.output
    assert "--log wandb: the wandb library is not installed" in r.output
    assert "install the tracking extra: pip install 'cmkd-bench[tracking]'" in r.output and INSTALL in r.output
    assert parse_trackers(" MLflow, tensorboard,mlflow") == ["mlflow", "tensorboard"]


def test_slurm_toml_log_key(tmp_path):
    from bench.api.errors import ConfigError
    from bench.launch.slurm import SlurmOptions

    cfg = tmp_path / "slurm.toml"
    cfg.write_text('[slurm]\npartition = "debug"\nlog = ["tensorboard", "mlflow"]\n')
    assert SlurmOptions.from_sources(cfg, {}, []).log == ["tensorboard", "mlflow"]
    assert SlurmOptions.from_sources(cfg, {"log": ["wandb"]}, []).log == ["wandb"]  # --log wins
    cfg.write_text('[slurm]\nlog = "mlflow,neptune"\n')
    with pytest.raises(ConfigError, match=r"slurm.toml: \[slurm\] log: unknown tracker 'neptune'"):
        SlurmOptions.from_sources(cfg, {}, [])


# ---- the executors: CLI (local), packed workers, SLURM tasks ---------------------------------------

TINY_CLI = ["--datasets", "synthetic", "--directions", "a2v", "--epochs", "2", "--set", "synthetic.n_train=480",
            "--set", "synthetic.n_test=180", "--set", "synthetic.width=8", "--set", "train.batch_size=32"]


def test_cli_and_packed_runs_log_without_changing_the_run_identity(tmp_path):
    plain = CliRunner().invoke(app, ["run", "--methods", "none", "-r", str(tmp_path / "plain"), *TINY_CLI])
    assert plain.exit_code == 0, plain.output
    r = CliRunner().invoke(app, ["run", "--methods", "none", "--log", "tensorboard,mlflow", "-r", str(tmp_path / "a"),
                                 *TINY_CLI])
    assert r.exit_code == 0, r.output
    (p,), (a,) = load_records(tmp_path / "plain"), load_records(tmp_path / "a")
    assert (a["run_id"], a["config_hash"]) == (p["run_id"], p["config_hash"])  # --log is no part of the identity
    assert [{k: v for k, v in h.items() if k != "seconds"} for h in a["history"]] == \
        [{k: v for k, v in h.items() if k != "seconds"} for h in p["history"]]
    assert [s for s, _ in tb_scalars(tmp_path / "a" / "tracking" / "tensorboard" / a["run_id"])["student/lr"]] == [1, 2]
    # packed: two runs in worker processes, each logs from its worker
    r = CliRunner().invoke(app, ["run", "--methods", "none", "--seeds", "0,1", "--runs-per-gpu", "2", "--log",
                                 "mlflow,wandb", "-r", str(tmp_path / "packed"), *TINY_CLI])
    assert r.exit_code == 0, r.output
    recs = {x["run_id"]: x for x in load_records(tmp_path / "packed")}
    runs, client = mlflow_runs(tmp_path / "packed")
    assert {x.info.run_name for x in runs} == set(recs) and {x.info.status for x in runs} == {"FINISHED"}
    for x in runs:
        hist = sorted((m.step, m.value) for m in client.get_metric_history(x.info.run_id, "student/test_metric"))
        assert hist == [(h["epoch"], pytest.approx(h["test_metric"])) for h in recs[x.info.run_name]["history"]]
        wid = json.loads(state_path(tmp_path / "packed", x.info.run_name).read_text())["wandb"]["id"]
        rows, _ = wandb_history(tmp_path / "packed", wid)
        assert [row["student/epoch"] for row in rows] == [1, 2]


def _cluster_up() -> bool:
    if shutil.which("sinfo") is None:
        return False
    r = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, check=False)
    return r.returncode == 0 and any(s.startswith(("idle", "mixed", "alloc")) for s in r.stdout.split())


@pytest.mark.skipif(not _cluster_up(), reason="no SLURM cluster (start it with: bash slurm/cluster.sh up)")
def test_slurm_tasks_log_from_slurm_toml(tmp_path):
    """Three runs, two per task: one packed task and one single-run task, trackers from slurm.toml."""
    cfg = tmp_path / "slurm.toml"
    cfg.write_text('[slurm]\nlog = ["mlflow", "tensorboard"]\n')
    res = tmp_path / "res"
    r = CliRunner().invoke(app, ["run", "--executor", "slurm", "--wait", "--slurm-config", str(cfg), "--runs-per-gpu",
                                 "2", "--methods", "none", "--seeds", "0,1,2", "-r", str(res), *TINY_CLI],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "(2 task(s), 3 run(s))" in r.output
    recs = {x["run_id"]: x for x in load_records(res)}
    runs, client = mlflow_runs(res)
    assert {x.info.run_name for x in runs} == set(recs) and len(recs) == 3
    for x in runs:
        assert [m.step for m in client.get_metric_history(x.info.run_id, "student/test_metric")] == [1, 2]
        assert x.data.tags["seed"] == str(recs[x.info.run_name]["seed"])
        assert tb_scalars(res / "tracking" / "tensorboard" / x.info.run_name)["student/test_metric"][-1][0] == 2
