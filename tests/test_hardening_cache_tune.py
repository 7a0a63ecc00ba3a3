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
