import json
import os

import pytest
import torch
from conftest import tiny

from bench.api.errors import BenchError, RecordError
from bench.records.store import load_results, read_record
from bench.train.resolve import RunSpec, resolve
from bench.train.run import NullReporter, run
from bench.train.teachers import teacher_path


def spec(tmp_path, method="logit", t="audio", s="visual", seed=0, extra=None, **kw):
    return RunSpec("synthetic", t, s, method, seed, tiny(extra), str(tmp_path), "cpu", **kw)


def test_record_fields_and_protocol(tmp_path):
    rec = run(spec(tmp_path, "fdcmkd"))
    assert rec["status"] == "ok"
    for key in ("method", "dataset", "task", "teacher_modality", "student_modality", "seed", "metric",
                "best_metric", "final_metric", "history", "config", "package_version", "git_commit", "device",
                "wall_time_s", "reference_best_metric", "selected_epoch"):
        assert key in rec, key
    assert rec["metric"] == "top1" and rec["selection"] == "val"
    h = rec["history"]
    assert [r["epoch"] for r in h] == [1, 2, 3]
    sel = max(h, key=lambda r: (r["val_metric"], r["epoch"]))
    assert rec["selected_epoch"] == sel["epoch"] and rec["best_metric"] == sel["test_metric"]
    assert rec["final_metric"] == h[-1]["test_metric"]
    assert rec["reference_best_metric"] == max(r["test_metric"] for r in h)
    assert set(h[0]["terms"]) == {"ce", "ce_low", "ce_high", "align", "low", "high"}
    assert rec["config"]["method_params"]["l1"] == 1.0
    assert rec["teacher"]["modality"] == "audio" and rec["teacher"]["cached"] is False
    on_disk = json.loads((tmp_path / "records" / f"{rec['run_id']}.json").read_text())
    assert on_disk["best_metric"] == rec["best_metric"]


def test_same_seed_is_bit_identical_and_seeds_differ(tmp_path):
    a = run(spec(tmp_path / "a", "logit"))
    b = run(spec(tmp_path / "b", "logit"))
    assert [r["test_metric"] for r in a["history"]] == [r["test_metric"] for r in b["history"]]
    assert [r["train_loss"] for r in a["history"]] == [r["train_loss"] for r in b["history"]]
    c = run(spec(tmp_path / "a", "logit", seed=1))
    assert [r["train_loss"] for r in c["history"]] != [r["train_loss"] for r in a["history"]]


def test_teacher_is_cached_and_shared(tmp_path):
    a = run(spec(tmp_path, "logit"))
    b = run(spec(tmp_path, "fdcmkd"))
    assert a["teacher"]["cached"] is False and b["teacher"]["cached"] is True
    assert a["teacher"]["checkpoint"] == b["teacher"]["checkpoint"]
    assert a["teacher"]["test_metric"] == b["teacher"]["test_metric"]


def test_teacher_beats_chance_by_a_wide_margin(tmp_path):
    # default synthetic size, short schedule: the audio teacher must be far above 1/6
    ov = {"train": {"teacher_epochs": "6", "epochs": "1"}}
    rec = run(RunSpec("synthetic", "audio", "visual", "logit", 0, ov, str(tmp_path), "cpu"))
    assert rec["teacher"]["test_metric"] > 70.0  # chance = 16.7 %
    assert rec["teacher"]["selection"] == "val"


class _InterruptAfter(NullReporter):
    def __init__(self, n):
        self.n = n

    def epoch(self, run_id, phase, epoch, info):
        if phase == "student" and epoch == self.n:
            raise KeyboardInterrupt


def test_interrupted_run_resumes_exactly(tmp_path):
    full = run(spec(tmp_path / "full", "fdcmkd", extra={"train": {"epochs": "4"}}))
    s = spec(tmp_path / "cut", "fdcmkd", extra={"train": {"epochs": "4"}})
    with pytest.raises(KeyboardInterrupt):
        run(s, _InterruptAfter(2))
    rid = resolve(s).run_id
    assert (tmp_path / "cut" / "checkpoints" / f"{rid}.pt").exists()
    assert not (tmp_path / "cut" / "records" / f"{rid}.json").exists()
    resumed = run(s)
    assert [r["epoch"] for r in resumed["history"]] == [1, 2, 3, 4]
    assert [r["test_metric"] for r in resumed["history"]] == [r["test_metric"] for r in full["history"]]
    assert [r["train_loss"] for r in resumed["history"]] == pytest.approx([r["train_loss"] for r in full["history"]], rel=0, abs=0)
    assert not (tmp_path / "cut" / "checkpoints" / f"{rid}.pt").exists()


def test_finished_runs_are_skipped_and_force_reruns(tmp_path):
    a = run(spec(tmp_path, "none"))
    path = tmp_path / "records" / f"{a['run_id']}.json"
    mtime = path.stat().st_mtime_ns
    b = run(spec(tmp_path, "none"))
    assert b.get("skipped") is True and path.stat().st_mtime_ns == mtime
    c = run(spec(tmp_path, "none"), force=True)
    assert not c.get("skipped") and path.stat().st_mtime_ns != mtime


def test_crash_writes_failed_record_and_rerun_completes(tmp_path, monkeypatch):
    from bench.methods import logit as logit_mod

    calls = {"n": 0}
    orig = logit_mod.logit_loss

    def boom(*a, **k):
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("simulated crash")
        return orig(*a, **k)

    monkeypatch.setattr(logit_mod, "logit_loss", boom)
    ok_first = run(spec(tmp_path, "none"))
    with pytest.raises(RuntimeError):
        run(spec(tmp_path, "logit"))
    df = load_results(tmp_path, status=None)
    failed = df[df.status == "failed"]
    assert len(failed) == 1 and "simulated crash" in failed.iloc[0]["error"]
    assert read_record(tmp_path / "records" / f"{ok_first['run_id']}.json")["status"] == "ok"
    monkeypatch.setattr(logit_mod, "logit_loss", orig)
    rec = run(spec(tmp_path, "logit"))
    assert rec["status"] == "ok" and not rec.get("skipped")


def test_malformed_records_are_named(tmp_path):
    rd = tmp_path / "records"
    rd.mkdir(parents=True)
    (rd / "broken.json").write_text("{not json")
    with pytest.raises(RecordError, match="broken.json: not valid JSON"):
        load_results(tmp_path)
    (rd / "broken.json").write_text(json.dumps({"schema": 1, "run_id": "x"}))
    with pytest.raises(RecordError, match="broken.json: .*missing field"):
        load_results(tmp_path)
    with pytest.raises(RecordError, match="does not exist"):
        load_results(tmp_path / "nope")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_results_dir(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    with pytest.raises(BenchError, match="not writable"):
        run(spec(ro / "results", "none"))


def test_results_path_that_is_a_file_is_refused(tmp_path):
    f = tmp_path / "file"
    f.write_text("")
    with pytest.raises(BenchError, match="not writable"):
        run(spec(f, "none"))


def test_teacher_cache_key_depends_on_teacher_config(tmp_path):
    r1 = resolve(spec(tmp_path, "logit"))
    r2 = resolve(spec(tmp_path, "logit", extra={"train": {"teacher_epochs": "5"}}))
    r3 = resolve(spec(tmp_path, "fdcmkd", extra={"train": {"epochs": "7"}}))
    assert teacher_path(r1, "audio") != teacher_path(r2, "audio")
    assert teacher_path(r1, "audio") == teacher_path(r3, "audio")  # student epochs do not matter


def test_cuda_request_without_cuda_is_clear(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    s = spec(tmp_path, "none")
    s.device = "cuda"
    with pytest.raises(BenchError, match="CUDA is not available"):
        run(s)
