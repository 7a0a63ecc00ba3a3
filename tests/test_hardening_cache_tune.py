"""Hardening (#23): a prepared cache rebuilt under a running run, tuned parameters taken from the
journal only inside the study's space, damaged Optuna journals, and tuning without a test split."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bench.cli import app

SYN = {"synthetic": {"n_train": "240", "n_test": "90", "width": "8"},
       "train": {"epochs": "2", "teacher_epochs": "2", "batch_size": "32"}}
SYN_ARGS = ["--datasets", "synthetic", "--directions", "a2v", "--set", "synthetic.n_train=240", "--set",
            "synthetic.n_test=90", "--set", "synthetic.width=8", "--set", "train.batch_size=32", "--epochs", "2",
            "--teacher-epochs", "2", "--device", "cpu"]


def bench(*args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(app, list(args), catch_exceptions=False, env={"COLUMNS": "250"})


pytestmark = pytest.mark.usefixtures("one_thread")


# -- tuned parameters and journals ---------------------------------------------------------------------


def dkd_study(results: Path, params: dict | None = None, n_trials: int = 1):  # type: ignore[no-untyped-def]
    """A one-trial dkd study on synthetic whose only finished trial has ``params`` (no training:
    the trial is added as Optuna would record it, with distributions wide enough to hold it)."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    from bench.tune.grid import plan_studies
    from bench.tune.study import open_study, study_lock

    plan = plan_studies("dkd", "synthetic", "a2v", n_trials=n_trials, overrides=SYN, results=results, device="cpu")
    st = plan.studies[0]
    with study_lock(st):
        study = open_study(st)
    if params is not None:
        dists = {k: CategoricalDistribution([v]) if isinstance(v, str) else
                 IntDistribution(min(0, v), max(1, v)) if isinstance(v, int) else FloatDistribution(0.0, max(1.0, v))
                 for k, v in params.items()}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=50.0))
    return st, study


def run_spec(st):  # type: ignore[no-untyped-def]
    return dataclasses.replace(st.base, seed=0)


def test_tuned_refuses_a_best_trial_outside_the_search_space(tmp_path):
    """A best trial edited into the journal (out-of-range weight, keys the study never searched) is
    refused, naming study and trial; a trial inside the space is applied."""
    from bench.api.errors import BenchError
    from bench.tune.best import tuned_spec

    good, _ = dkd_study(tmp_path / "good", {"dkd.beta": 2.5, "dkd.tau": 3.0})
    applied = tuned_spec(run_spec(good))
    assert applied.overrides["dkd"] == {"beta": 2.5, "tau": 3.0} and applied.tuned["trial"] == 1
    cases = [
        ({"dkd.beta": 5000.0, "dkd.tau": 3.0}, "dkd.beta=5000.0 lies outside the study's search space"),
        ({"dkd.beta": 2.5, "dkd.tau": 3.0, "train.selection": "test"}, "sets train.selection='test', outside"),
        ({"dkd.beta": 2.5, "dkd.tau": 3.0, "synthetic.n_test": 60}, "sets synthetic.n_test=60, outside"),
        ({"dkd.beta": 2.5}, "has no value for dkd.tau"),
    ]
    for i, (params, msg) in enumerate(cases):
        st, _ = dkd_study(tmp_path / f"bad{i}", params)
        with pytest.raises(BenchError, match=msg) as exc:
            tuned_spec(run_spec(st))
        assert f"study {st.name}, trial 1" in str(exc.value)
    # study.json describing another space than the method declares: not this configuration's study
    st, _ = dkd_study(tmp_path / "space", {"dkd.beta": 2.5, "dkd.tau": 3.0})
    path = tmp_path / "space" / "tuning" / st.name / "study.json"
    info = json.loads(path.read_text())
    info["space"]["dkd.beta"]["high"] = 10000.0
    path.write_text(json.dumps(info))
    with pytest.raises(BenchError, match="study.json records the search space"):
        tuned_spec(run_spec(st))


def test_tuned_run_cli_refuses_the_edited_journal(tmp_path):
    st, _ = dkd_study(tmp_path, {"dkd.beta": 5000.0, "dkd.tau": 3.0})
    r = bench("run", "--tuned", "--methods", "dkd", "--seeds", "0", "-r", str(tmp_path), *SYN_ARGS)
    assert r.exit_code == 2, r.output
    assert f"study {st.name}, trial 1" in r.output and "dkd.beta=5000.0" in r.output
    assert "Traceback" not in r.output and not list((tmp_path / "runs").glob("**/*.json"))


def test_torn_journal_tail_is_backed_up_and_cut_before_appending(tmp_path):
    """A worker killed mid-append leaves a last line without its newline: the next `bench tune`
    backs the file up, cuts the torn line (saying which) and the journal stays readable after
    further appends."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from bench.tune.study import open_study, study_lock

    st, study = dkd_study(tmp_path, {"dkd.beta": 2.5, "dkd.tau": 3.0})
    journal = tmp_path / "tuning" / f"{st.name}.journal"
    whole = journal.read_bytes()
    n_lines = whole.count(b"\n")
    torn = whole + b'{"op_code": 6, "worker_id": "x", "trial_id": 1, "par'
    journal.write_bytes(torn)
    r = bench("tune", "--methods", "dkd", "--trials", "1", "-r", str(tmp_path), *SYN_ARGS)
    assert r.exit_code == 0, r.output
    flat = " ".join(r.output.split())
    assert f"{journal}: its last line (line {n_lines + 1}, {len(torn) - len(whole)} bytes) was cut short" in flat, flat
    after = journal.read_bytes()  # the torn bytes are gone; whatever bench tune appended follows intact lines
    assert after.startswith(whole) and after.endswith(b"\n")
    assert all(json.loads(line) for line in after.splitlines())
    backups = list(journal.parent.glob(f"{journal.name}.*.bak"))
    assert len(backups) == 1 and backups[0].read_bytes() == torn
    with study_lock(st):  # appending again (a new trial): the journal is still readable
        study = open_study(st)
    study.enqueue_trial({"dkd.beta": 1.0, "dkd.tau": 2.0})
    again = optuna.load_study(study_name=st.name, storage=JournalStorage(JournalFileBackend(str(journal))))
    assert len(again.trials) == 3  # the defaults, the finished trial and the one just queued


def test_damaged_middle_line_is_refused_naming_file_and_line(tmp_path):
    """A complete but damaged line: `bench tune` and `bench run --tuned` stop with the file, the line
    and what to do (no JSONDecodeError traceback), and change nothing."""
    st, _ = dkd_study(tmp_path, {"dkd.beta": 2.5, "dkd.tau": 3.0})
    journal = tmp_path / "tuning" / f"{st.name}.journal"
    lines = journal.read_bytes().split(b"\n")
    lines[2] = lines[2][:10] + b"#" + lines[2][11:]
    journal.write_bytes(b"\n".join(lines))
    before = journal.read_bytes()
    for args in (("tune", "--methods", "dkd", "--trials", "1"), ("run", "--tuned", "--methods", "dkd", "--seeds", "0")):
        r = bench(*args, "-r", str(tmp_path), *SYN_ARGS)
        flat = " ".join(r.output.split())
        assert r.exit_code == 2, r.output
        assert f"{journal}:3: damaged journal line, not valid JSON" in flat, flat
        assert f"head -n 2 {journal}" in flat and "move the file aside" in flat
        assert "Traceback" not in r.output and "JSONDecodeError" not in r.output
    assert journal.read_bytes() == before and not list(journal.parent.glob("*.bak"))


# -- a prepared cache rebuilt while runs read it -------------------------------------------------------


def crema_cache(tmp_path: Path):  # type: ignore[no-untyped-def]
    from test_dataset_crema import make_crema, overrides

    from bench.train.resolve import build_adapter

    root, cache = tmp_path / "raw", tmp_path / "cache"
    make_crema(root, 2)
    build_adapter("crema", overrides(root, cache)).prepare()
    return root, cache


def other_content(root: Path) -> None:
    """Same clips, other sounds and pictures: a rebuild gives arrays of the same shapes, other values."""
    from datafixtures import write_jpg, write_wav

    for i, wav in enumerate(sorted((root / "AudioWAV").glob("*.wav"))):
        write_wav(wav, 1.5, 1200 + 37 * i, seed=100 + i)
    for i, jpg in enumerate(sorted((root / "Image-01-FPS").glob("*/*.jpg"))):
        write_jpg(jpg, i % 6, seed=500 + i)


def test_prepare_refuses_a_complete_cache_and_force_swaps_in_a_new_version(tmp_path):
    """Without --force a complete cache is left alone (clear message); with it the new version is
    built beside the old and swapped in: an adapter that opened the cache before keeps reading the
    old arrays (their files are kept while it holds them), a new one reads the new arrays."""
    import gc

    import numpy as np

    from test_dataset_crema import overrides

    from bench.data.cache import check_cache
    from bench.train.resolve import build_adapter

    root, cache = crema_cache(tmp_path)
    first = json.loads((cache / "manifest.json").read_text())
    args = ["prepare", "crema", "--root", str(root), "--cache", str(cache), "--set", "crema.frame_cache=24"]
    r = bench(*args)
    assert r.exit_code == 2, r.output
    flat = " ".join(r.output.split())
    assert "already holds a complete prepared cache" in flat and "--force" in flat and first["content_hash"] in flat
    assert json.loads((cache / "manifest.json").read_text()) == first
    reader = build_adapter("crema", overrides(root, cache))
    old = reader.load()
    before = old["train"].inputs["audio"][:].clone()
    other_content(root)
    r = bench(*args, "--force")
    assert r.exit_code == 0, r.output
    now = json.loads((cache / "manifest.json").read_text())
    assert now["content_hash"] != first["content_hash"] and now["data_dir"].startswith("v-")
    files = [a["file"] for s in now["splits"].values() for a in s["arrays"].values()]
    assert all(f.startswith(now["data_dir"] + "/") for f in files)
    assert check_cache(cache, "crema") == []
    # the reader that opened the first build still sees it, unchanged, and its files are kept
    assert np.array_equal(old["train"].inputs["audio"][:].numpy(), before.numpy())
    assert np.array_equal(reader.load()["train"].inputs["audio"][:].numpy(), before.numpy())
    assert reader.fingerprint()["cache"] == first["content_hash"] and (cache / "train.audio.npy").exists()
    fresh = build_adapter("crema", overrides(root, cache))
    assert fresh.fingerprint()["cache"] == now["content_hash"]
    assert not np.array_equal(fresh.load()["train"].inputs["audio"][:].numpy(), before.numpy())
    from bench.data.versions import collect_old_versions

    assert collect_old_versions(cache) == []  # still held by the first reader
    del reader, old
    gc.collect()
    assert collect_old_versions(cache) == ["first build"] and not (cache / "train.audio.npy").exists()
    assert check_cache(cache, "crema") == []


def _outcome(rec: dict) -> dict:
    """What a run measured (not when or how long)."""
    hist = [{k: v for k, v in h.items() if k != "seconds"} for h in rec["history"]]
    teacher = {k: rec["teacher"][k] for k in ("val_metric", "test_metric", "final_test_metric", "selected_epoch")}
    return {"history": hist, "teacher": teacher, "dataset": rec["config"]["dataset"],
            **{k: rec[k] for k in ("status", "config_hash", "run_id", "best_metric", "final_metric", "selected_epoch",
                                   "val_at_selected")}}


def test_a_cache_rebuilt_while_a_run_streams_from_it_leaves_the_record_as_undisturbed(tmp_path):
    """A run reads its cache from memory maps while `bench prepare --force` rebuilds it with other
    content, right after the run's first teacher epoch (a state the run reports, no sleep): the
    run's record equals that of an undisturbed run on the same cache, under the same config hash;
    the rebuild did take effect (a new run sees other content)."""
    from test_dataset_crema import overrides

    from bench.train import loop
    from bench.train.resolve import RunSpec, build_adapter
    from bench.train.run import NullReporter, run

    root, cache = crema_cache(tmp_path)
    ov = overrides(root, cache)
    ov["train"].update(epochs="2", teacher_epochs="2")
    calm = run(RunSpec("crema", "audio", "visual", "logit", 0, ov, str(tmp_path / "calm")))
    assert calm["status"] == "ok", calm.get("traceback")
    first = json.loads((cache / "manifest.json").read_text())["content_hash"]
    loop._DATA_CACHE.clear()  # the disturbed run opens the cache itself

    class RebuildDuringTraining(NullReporter):
        rebuilt = False

        def epoch(self, run_id, phase, epoch, info):  # type: ignore[no-untyped-def]
            if (phase, epoch) == ("teacher", 1):
                other_content(root)
                build_adapter("crema", overrides(root, cache)).prepare(force=True)
                self.rebuilt = json.loads((cache / "manifest.json").read_text())["content_hash"] != first

    hook = RebuildDuringTraining()
    disturbed = run(RunSpec("crema", "audio", "visual", "logit", 0, ov, str(tmp_path / "disturbed")), hook)
    assert hook.rebuilt and disturbed["status"] == "ok", disturbed.get("traceback")
    assert _outcome(disturbed) == _outcome(calm)
    assert build_adapter("crema", overrides(root, cache)).fingerprint()["cache"] != first


# -- tuning never reads the test split ----------------------------------------------------------------

FOLDER_TRAIN = {"train": {"epochs": "2", "teacher_epochs": "2", "batch_size": "16", "lr": "0.05"}}


def tune_folder(folder: Path, results: Path, overrides: dict = FOLDER_TRAIN) -> list:
    """Two logit trials on ``folder`` (vec teacher, img student) through the worker `bench tune` runs."""
    from bench.tune.grid import plan_studies
    from bench.tune.study import counts, open_study, study_lock
    from bench.tune.worker import work

    plan = plan_studies("logit", str(folder), "vec->img", n_trials=2, overrides=overrides, results=results,
                        device="cpu")
    work(plan)
    for st in plan.studies:
        with study_lock(st):
            assert counts(open_study(st))["finished"] == 2, st.name
    return plan.studies


@pytest.mark.parametrize("test_file", ["absent", "damaged"])
def test_tuning_works_on_a_folder_whose_test_split_is_absent_or_damaged(tmp_path, test_file):
    """Tuning, its teacher included, never opens test.npz: without it, or with garbage in its place,
    every trial finishes; the teacher it trained has no test score (none was computed)."""
    import torch
    from test_dataset_folder import make_folder

    from bench.train import loop

    folder = make_folder(tmp_path / "toy", n_train=90)
    if test_file == "absent":
        (folder / "test.npz").unlink()
    else:
        (folder / "test.npz").write_bytes(b"PK\x03\x04 not a zip archive" * 8)
    loop._DATA_CACHE.clear()
    tune_folder(folder, tmp_path / "res")
    (teacher,) = (tmp_path / "res" / "teachers").glob("*/vec/seed1000-*.pt")
    info = torch.load(teacher, weights_only=True)["info"]
    assert info["test_metric"] is None and info["final_test_metric"] is None and info["val_metric"] is not None


def test_a_teacher_trained_while_tuning_is_the_teacher_bench_run_trains(tmp_path):
    """The teacher trained by `bench tune` (without test) lies where `bench run` looks for it, with
    the same weights; the first run that uses it scores it on test (its selected epoch and its last,
    kept for this), so that run's record is the record of a run that trained its teacher itself
    (same config hash, same teacher scores)."""
    import numpy as np
    import torch
    from test_dataset_folder import make_folder

    from bench.train import loop
    from bench.train.resolve import RunSpec
    from bench.train.run import run

    # a teacher modality without signal: validation peaks before the last epoch (2 of 4 here)
    noise = np.random.default_rng(1).normal(size=(90, 10)).astype(np.float32)
    folder = make_folder(tmp_path / "toy", n_train=90, train={"vec": noise})
    ov = {"train": dict(FOLDER_TRAIN["train"], teacher_epochs="4")}
    loop._DATA_CACHE.clear()
    tune_folder(folder, tmp_path / "tuned", ov)
    (cached,) = (tmp_path / "tuned" / "teachers").glob("*/vec/seed1000-*.pt")
    tuned_teacher = torch.load(cached, weights_only=True)
    assert tuned_teacher["info"]["selected_epoch"] < 4 and "final_model" in tuned_teacher
    spec = RunSpec(str(folder), "vec", "img", "logit", 1000, ov, str(tmp_path / "tuned"))
    after_tuning = run(spec)
    itself = run(dataclasses.replace(spec, results_dir=str(tmp_path / "alone")))
    assert after_tuning["status"] == itself["status"] == "ok", after_tuning.get("traceback")
    assert after_tuning["teacher"]["cached"] and not itself["teacher"]["cached"]
    assert _outcome(after_tuning) == _outcome(itself)
    assert None not in (after_tuning["teacher"]["test_metric"], after_tuning["teacher"]["final_test_metric"])
    files = [Path(rec["teacher"]["checkpoint"]) for rec in (after_tuning, itself)]
    assert files[0].relative_to(tmp_path / "tuned") == files[1].relative_to(tmp_path / "alone")
    a, b = (torch.load(f, weights_only=True) for f in files)
    assert a["model"].keys() == b["model"].keys() and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["info"] == b["info"] and "final_model" not in a  # the cached file is completed too


def test_a_prepared_cache_loads_for_tuning_without_opening_its_test_arrays(tmp_path):
    """The cache's side of the promise: with its test arrays damaged, loading for tuning works (they
    are never opened) and an ordinary load names the damaged file."""
    from test_dataset_crema import overrides

    from bench.api.errors import BenchError
    from bench.train.resolve import build_adapter

    root, cache = crema_cache(tmp_path)
    (cache / "test.audio.npy").write_bytes(b"\x93NUMPY garbage")
    ad = build_adapter("crema", overrides(root, cache))
    assert sorted(ad.load_without_test()) == ["train"] and len(ad.load_without_test()["train"]) == 12
    with pytest.raises(BenchError, match="test.audio.npy is not a readable array"):
        ad.load()
