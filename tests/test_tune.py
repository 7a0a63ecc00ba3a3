"""Equal-budget tuning (``bench tune``, ``bench run --tuned``, ``--params``): every method's study
completes with exactly its budget, resumes after ``kill -9`` without repeating finished trials,
shares a journal file between concurrent workers, never reads the test split, and the tuned run
reproduces its best trial; the same study as a SLURM array on the localhost cluster."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bench.api.config import params_dict
from bench.api.errors import ConfigError
from bench.api.registry import METHODS
from bench.api.search import Categorical, Integer, Real, check_space
from bench.cli import app
from bench.records.provenance import stable_hash
from bench.records.store import load_records

DATA = ["--datasets", "synthetic", "--directions", "a2v", "--set", "synthetic.n_train=480", "--set",
        "synthetic.n_test=180", "--set", "synthetic.width=8", "--set", "train.batch_size=32", "--device", "cpu"]
TINY = [*DATA, "--epochs", "2", "--teacher-epochs", "2"]

ROOT = Path(__file__).resolve().parent.parent


def bench(*args: str, env: dict | None = None):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(app, list(args), catch_exceptions=False, env={"COLUMNS": "200", **(env or {})})


pytestmark = pytest.mark.usefixtures("one_thread")


def load(results: Path, name: str):  # type: ignore[no-untyped-def]
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name=name, storage=JournalStorage(
        JournalFileBackend(str(results / "tuning" / f"{name}.journal"))))


def study_of(results: Path, method: str) -> str:
    names = [p.parent.name for p in (results / "tuning").glob("*/study.json")
             if json.loads(p.read_text())["method"] == method]
    assert len(names) == 1, names
    return names[0]


def states(study) -> dict[str, int]:  # type: ignore[no-untyped-def]
    out: dict[str, int] = {}
    for t in study.get_trials():
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


def finished(study) -> list:  # type: ignore[no-untyped-def]
    return [t for t in study.get_trials() if t.state.name in ("COMPLETE", "PRUNED")]


# -- search spaces -----------------------------------------------------------------------------------


def test_every_builtin_space_is_valid_and_holds_the_defaults():
    """Each method declares 1-3 parameters (none: nothing), inside its Params' bounds, with the
    published default inside the range (so the default is one of the configurations searched)."""
    for e in METHODS.entries():
        space = check_space(e.obj.search_space, e.obj.Params, e.name)
        assert (len(space) == 0) == (e.name == "none"), e.name
        defaults = params_dict(e.obj.Params())
        for k, d in space.items():
            assert d.low <= defaults[k] <= d.high, (e.name, k, defaults[k], d)
    assert METHODS.get("dkd").search_space["beta"] == Real(0.5, 10.0)
    r = bench("list", "methods")
    assert "search space (bench tune)" in r.output and "beta [0.5, 10], tau [1, 8] log" in r.output


def test_space_mistakes_name_the_method_and_the_key():
    dkd = METHODS.get("dkd")
    cases = [({"betta": Real(1, 2)}, "'betta' is not a parameter of DKDParams; valid: alpha, beta"),
             ({"beta": Real(-1, 2)}, "beta: -1 lies outside the parameter's valid range (>= 0)"),
             ({"warmup": Real(1, 2)}, "warmup: Real sets a float but the parameter is int"),
             ({"beta": Integer(1, 8)}, "beta: Integer sets a int but the parameter is float"),
             ({"tau": Real(0, 4)}, "tau: 0 lies outside the parameter's valid range (> 0)"),
             ({"tau": Real(0, 4, log=True)}, "tau: a log-scaled range needs low > 0, got 0"),
             ({"beta": Real(3, 2)}, "beta: low 3 must be below high 2"),
             ({"train.lr": Real(0.01, 0.1)}, "(train.lr is shared by every method: bench tune --tune-lr)"),
             ({"alpha": Real(0, 1), "beta": Real(0, 1), "tau": Real(1, 2), "ce_weight": Real(0, 1)}, "4 parameters"),
             ({"beta": Categorical((1.0,))}, "Categorical needs a tuple of at least two values")]
    for space, msg in cases:
        with pytest.raises(ConfigError) as exc:
            check_space(space, dkd.Params, "method 'dkd' search_space")
        assert "method 'dkd' search_space" in str(exc.value) and msg in str(exc.value), str(exc.value)


HEAD_HASHES = {  # resolve(spec).config_hash of the default job at the commit before tuning existed (DKD and
    # Feat changed deliberately with their version 2, #25)
    "afd_audio2visual": "07c8fc0d94", "afd_visual2audio": "9abdf18336", "c2kd_audio2visual": "7e4c04138a",
    "c2kd_visual2audio": "a5a15eefa8", "dist_audio2visual": "3041937b26", "dist_visual2audio": "336765d6e3",
    "dkd_audio2visual": "7a32dd5c9f", "dkd_visual2audio": "5a83c36997", "dml_audio2visual": "7ff37b4b1c",
    "dml_visual2audio": "e3cba1e4f0", "fdcmkd_audio2visual": "1175d97469", "fdcmkd_visual2audio": "65393d638a",
    "feat_audio2visual": "2c647c8a6a", "feat_visual2audio": "9b0510b81b", "logit_audio2visual": "90bb5eafd0",
    "logit_visual2audio": "a5da143540", "nkd_audio2visual": "af74cc5ce8", "nkd_visual2audio": "4d0ea630c3",
    "none_audio2visual": "dca449066f", "none_visual2audio": "7936a87e6d", "ofd_audio2visual": "efa6e8fc49",
    "ofd_visual2audio": "72a412d072", "pkd_audio2visual": "03cb9d167a", "pkd_visual2audio": "e9974f6d03",
    "ucmkd_audio2visual": "b95685c777", "ucmkd_visual2audio": "102862c977",
}
ADDED_AFTER_TUNING = {"at", "sp", "pkt", "rkd", "nst", "cc", "kdsvd", "wsld", "ctkd", "mlkd",
                      "reviewkd", "mfh", "mgdfr", "crd", "vid", "discomkd"}  # no earlier identity to keep (#26's zoo)


def test_default_hashes_unchanged_and_tuned_is_part_of_the_identity():
    import dataclasses

    from bench.launch.grid import expand_grid
    from bench.train.resolve import resolve

    specs = expand_grid("all", "synthetic", "all", "0")
    got = {f"{s.method}_{s.teacher_modality}2{s.student_modality}": resolve(s).config_hash for s in specs}
    # the methods that existed then keep their hashes; methods added since (the zoo, #26) had none to keep
    assert {k: v for k, v in got.items() if k.split("_")[0] not in ADDED_AFTER_TUNING} == HEAD_HASHES
    assert {k.split("_")[0] for k in got} - {k.split("_")[0] for k in HEAD_HASHES} == ADDED_AFTER_TUNING
    spec = next(s for s in specs if s.method == "dkd")
    tuned = dataclasses.replace(spec, tuned={"study": "x", "trial": 3, "value": 50.0})
    r = resolve(tuned)
    assert r.config["tuned"] == {"study": "x", "trial": 3, "value": 50.0} and "tuned" not in resolve(spec).config
    assert r.config_hash != resolve(spec).config_hash and r.run_id != resolve(spec).run_id


def test_rank_change_note_names_who_moved():
    from bench.report.tuning import rank_change_note

    changes = [{"method": "dkd", "default": (3, 2.5), "tuned": (1, 1.25)},
               {"method": "logit", "default": (1, 1.5), "tuned": (2, 1.75)},
               {"method": "none", "default": (2, 2.0), "tuned": (2, 2.0)}]
    (line,) = rank_change_note(changes)
    assert line == ("places, default -> tuned leaderboard: DKD 3 -> 1 (mean rank 2.50 -> 1.25); "
                    "Logit 1 -> 2 (mean rank 1.50 -> 1.75); unchanged: w/o KD")
    assert rank_change_note(changes[2:]) == ["places, default -> tuned leaderboard: no method changed place"]
    assert rank_change_note([]) == []


def test_study_identity_space_and_shared_lr():
    """A study is named by everything its trials depend on; --tune-lr gives every method (w/o KD
    too) the lr around the dataset's; a key fixed with --set is not searched."""
    from bench.tune.grid import plan_studies

    ov = {"train": {"epochs": "2"}}
    a = plan_studies("dkd,none", "synthetic", "a2v", n_trials=4, results=Path("r"), overrides=ov)
    assert [s.method for s in a.studies] == ["dkd"] and a.skipped == ["none"]
    assert a.studies[0].name.startswith("synthetic_a2v_dkd_n4_s1000_")
    same = plan_studies("dkd", "synthetic", "a2v", n_trials=4, results=Path("elsewhere"), overrides=ov)
    assert same.studies[0].name == a.studies[0].name  # the folder is no part of the identity
    for other in (dict(n_trials=5), dict(n_trials=4, seed=0), dict(n_trials=4, pruner="none"),
                  dict(n_trials=4, overrides={"train": {"epochs": "3"}})):
        kw = {"overrides": ov, **other}
        assert plan_studies("dkd", "synthetic", "a2v", results=Path("r"), **kw).studies[0].name != a.studies[0].name
    lr = plan_studies("dkd,none", "synthetic", "a2v", n_trials=4, results=Path("r"), tune_lr=True,
                      overrides={"dkd": {"beta": "3"}})
    spaces = {s.method: s.space for s in lr.studies}
    assert set(spaces) == {"dkd", "none"} and set(spaces["dkd"]) == {"dkd.tau", "train.lr"}
    assert spaces["none"]["train.lr"] == Real(0.005, 0.5, log=True)  # synthetic's lr 0.05, a decade either side
    assert lr.studies[0].defaults == {"dkd.tau": 4.0, "train.lr": 0.05}


# -- budget, workers, stale trials (unit level, real journal storage) -----------------------------


def test_ask_keeps_the_budget_and_requeues_a_dead_workers_trial(tmp_path):
    """Two workers on one study of N=2: the third ask is refused while both run; when a worker
    dies (its lock released), the next ask fails its trial and hands out the same parameters."""
    from bench.tune.grid import plan_studies
    from bench.tune.study import WorkerLock, ask, counts, open_study, storage_of, study_lock

    plan = plan_studies("dkd", "synthetic", "a2v", n_trials=2, results=tmp_path, device="cpu")
    st = plan.studies[0]
    storage = storage_of(st)
    with WorkerLock(tmp_path) as a:
        b = WorkerLock(tmp_path).__enter__()
        with study_lock(st):
            study = open_study(st, storage)
            t0 = ask(st, study, a.id)
            t1 = ask(st, study, b.id)
            assert ask(st, study, a.id) is None  # 0 finished + 2 running = the budget
        assert t0.params == {"dkd.beta": 8.0, "dkd.tau": 4.0}  # the first trial is the defaults
        b.__exit__(None, None, None)  # worker b dies with trial 1 running
        study.tell(t0, 60.0)
        with study_lock(st):
            t2 = ask(st, study, a.id)
        assert study.trials[t1.number].state.name == "FAIL"
        assert t2.params == t1.params and t2.user_attrs["retry_of"] == t1.number
        study.tell(t2, 55.0)
        with study_lock(st):
            assert ask(st, study, a.id) is None
        assert counts(study)["finished"] == 2


# -- real studies ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tuned_all(tmp_path_factory):
    """DKD's 4-trial study (what the resume, tuned-run and SLURM tests reuse), then every other
    method's 2-trial study (the defaults and one sampled trial: enough to show each space runs;
    4 trials of ~30 methods cost minutes of the suite), on tiny synthetic (seed 1000)."""
    res = tmp_path_factory.mktemp("tune") / "res"
    t0 = time.perf_counter()
    r = bench("tune", "--methods", "dkd", "--trials", "4", "-r", str(res), *TINY)
    assert r.exit_code == 0, r.output
    out = r.output
    others = ",".join(m for m in one_teacher_methods() if m != "dkd")  # --methods all on a2v, less DKD's study
    r = bench("tune", "--methods", others, "--trials", str(TRIALS_EACH), "-r", str(res), *TINY)
    assert r.exit_code == 0, r.output
    return res, out + r.output, time.perf_counter() - t0


def one_teacher_methods() -> list[str]:
    """``--methods all`` as it runs on a one-teacher direction (synthetic a2v): a method of a
    teacher set's mixture (MST-Distill) is tuned on a teacher-set direction only."""
    from bench.api.registry import select_methods

    return [m for m in select_methods("all") if not METHODS.get(m).requires_teacher_set]


TRIALS_EACH = 2
"""Trials of every method's study but DKD's (which has 4) in :func:`tuned_all`."""


def test_a_study_per_method_completes(tuned_all):
    res, out, _ = tuned_all
    assert "nothing to tune for none" in out and "4/4" in out and f"{TRIALS_EACH}/{TRIALS_EACH}" in out
    for e in (METHODS.entry(m) for m in one_teacher_methods()):  # --methods all: the controls are not in it
        if e.name == "none":
            continue
        name = study_of(res, e.name)
        study = load(res, name)
        n = 4 if e.name == "dkd" else TRIALS_EACH
        assert len(finished(study)) == n and set(states(study)) <= {"COMPLETE", "PRUNED"}, (name, states(study))
        first = study.trials[0]
        assert first.user_attrs.get("defaults") is True
        assert {k.split(".", 1)[1]: v for k, v in first.params.items()} == {
            k: v for k, v in params_dict(e.obj.Params()).items() if k in e.obj.search_space}
        assert len({tuple(sorted(t.params.items())) for t in finished(study)}) == n
        d = res / "tuning" / name
        assert (d / "history.png").stat().st_size > 0 and (d / "history.pdf").stat().st_size > 0
        for t in finished(study):
            info = json.loads((d / "trials" / f"{t.number:04d}.json").read_text())
            assert info["params"] == t.params and all("test_metric" not in h for h in info["history"])
            if t.state.name == "COMPLETE":
                assert info["value"] == t.value == max(h["val_metric"] for h in info["history"])
    assert (res / "tuning" / "overview-synthetic-a2v.png").stat().st_size > 0  # best so far, every method
    assert not (res / "records").exists() or not list((res / "records").glob("*.json"))  # trials are no runs


def _wait_for(pred, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    t0 = time.time()
    while time.time() - t0 < timeout:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_kill_9_then_resume_repeats_no_finished_trial(tuned_all, tmp_path):
    """A study killed mid-trial resumes: finished trials stay as they were, the killed trial is
    failed and its parameters run again, and the study ends with exactly 4 finished trials, the
    same configurations and values as the uninterrupted study (same identity, seeded sampler)."""
    full, _, _ = tuned_all
    name = study_of(full, "dkd")
    res = tmp_path / "res"
    cmd = [sys.executable, "-m", "bench.cli", "tune", "--methods", "dkd", "--trials", "4", "-r", str(res), *TINY]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    journal = res / "tuning" / f"{name}.journal"
    seen: dict = {}

    def look() -> bool:
        if not journal.exists():
            return False
        try:
            s = load(res, name)
        except KeyError:
            return False
        st = states(s)
        running = [t for t in s.get_trials() if t.state.name == "RUNNING"]
        # mid-trial: its worker attribute is written after ask() has set every parameter (a kill inside
        # ask() leaves a trial with only some of them, whose retry samples the rest)
        if st.get("COMPLETE", 0) + st.get("PRUNED", 0) >= 2 and len(running) == 1 and running[0].user_attrs.get("worker"):
            seen["before"] = {t.number: (t.params, t.value, t.datetime_complete) for t in finished(s)}
            seen["running"] = running[0].number
            return True
        return False

    def two_done_one_running() -> bool:
        """Looked at while bench tune is stopped (SIGSTOP, and waited for): the trial seen running
        cannot finish between the look and the kill (a trial takes well under a second here)."""
        if proc.poll() is not None:
            raise AssertionError(f"bench tune ended before it was killed: {proc.stderr.read().decode()[-2000:]}")
        if not look():  # a first look while it runs, so that it is not stopped at every poll
            return False
        proc.send_signal(signal.SIGSTOP)
        _, status = os.waitpid(proc.pid, os.WUNTRACED)
        if not os.WIFSTOPPED(status):
            raise AssertionError(f"bench tune ended before it was killed: {proc.stderr.read().decode()[-2000:]}")
        if look():
            return True  # it stays stopped until the SIGKILL
        proc.send_signal(signal.SIGCONT)
        return False

    _wait_for(two_done_one_running, 240, "two finished trials and a running one")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    r = bench("run", "--tuned", "--methods", "dkd", "--seeds", "0", "-r", str(res), *TINY)
    assert r.exit_code == 2 and "finished trials (an equal budget" in r.output  # not before the study is done
    r = bench("tune", "--methods", "dkd", "--trials", "4", "-r", str(res), *TINY)
    assert r.exit_code == 0, r.output
    study = load(res, name)
    after = {t.number: (t.params, t.value, t.datetime_complete) for t in finished(study)}
    assert all(after[n] == v for n, v in seen["before"].items())  # untouched, not rerun
    assert len(after) == 4 and states(study).get("RUNNING", 0) == 0
    killed = study.trials[seen["running"]]
    assert killed.state.name == "FAIL"
    retry = [t for t in finished(study) if t.user_attrs.get("retry_of") == killed.number]
    assert len(retry) == 1 and retry[0].params == killed.params
    ref = load(full, name)
    key = lambda t: (tuple(sorted(t.params.items())), t.value)  # noqa: E731
    assert sorted(map(key, finished(study))) == sorted(map(key, finished(ref)))


def test_two_workers_share_one_journal(tmp_path):
    """`-j 2`: two worker processes on one study finish exactly N distinct trials, both working."""
    res = tmp_path / "res"
    r = bench("tune", "--methods", "logit", "--trials", "8", "-j", "2", "-r", str(res), *DATA,
              "--teacher-epochs", "2", "--epochs", "3")
    assert r.exit_code == 0, r.output
    name = study_of(res, "logit")
    study = load(res, name)
    done = finished(study)
    assert len(done) == 8 and states(study).get("RUNNING", 0) == 0 and states(study).get("FAIL", 0) == 0
    assert sorted(t.number for t in done) == list(range(8))
    assert len({tuple(sorted(t.params.items())) for t in done}) == 8
    workers = {json.loads(p.read_text())["worker"] for p in (res / "tuning" / name / "trials").glob("*.json")}
    assert len(workers) == 2, workers
    assert not list((res / "tuning" / "workers").glob("*.lock"))  # both exited and let go


def test_median_pruning_on_validation(tmp_path):
    """With the median pruner armed after one trial, trials whose validation metric falls below
    the median of the complete trials at that epoch stop there; they count towards the budget."""
    import statistics

    res = tmp_path / "res"
    r = bench("tune", "--methods", "feat", "--trials", "8", "--prune-startup", "1", "--prune-warmup", "0", "-r",
              str(res), *DATA, "--epochs", "4", "--teacher-epochs", "2")
    assert r.exit_code == 0, r.output
    name = study_of(res, "feat")
    trials = [json.loads(p.read_text()) for p in sorted((res / "tuning" / name / "trials").glob("*.json"))]
    assert len(trials) == 8 and {t["state"] for t in trials} == {"complete", "pruned"}
    pruned = [t for t in trials if t["state"] == "pruned"]
    assert pruned
    for t in pruned:
        s = len(t["history"])
        earlier = [c["history"][s - 1]["val_metric"] for c in trials
                   if c["state"] == "complete" and c["number"] < t["number"]]
        assert s < 4 and t["history"][-1]["val_metric"] < statistics.median(earlier), t
        assert t["reason"].startswith(f"pruned after epoch {s}: validation")


def test_database_storage(tmp_path):
    """--storage sqlite:///...: the study lives in the database; bench run --tuned finds it from
    study.json (a bad URL is one line naming it)."""
    res = tmp_path / "res"
    r = bench("tune", "--methods", "dkd", "--trials", "2", "--storage", f"sqlite:///{tmp_path}/no/such/dir/t.db",
              "-r", str(res), *TINY)
    assert r.exit_code == 2 and "cannot open the database" in r.output and "no/such/dir/t.db" in r.output
    r = bench("tune", "--methods", "dkd", "--trials", "2", "--storage", f"sqlite:///{tmp_path}/t.db", "-r", str(res),
              *TINY)
    assert r.exit_code == 0, r.output
    assert not list((res / "tuning").glob("*.journal")) and (tmp_path / "t.db").stat().st_size > 0
    r = bench("run", "--tuned", "--methods", "dkd", "--seeds", "0", "-r", str(res), *TINY)
    assert r.exit_code == 0, r.output
    rec = load_records(res)[0]
    assert rec["tuned"]["study"] == study_of(res, "dkd") and rec["tuned"]["trial"] in (0, 1)


TRIPWIRE = '''
import os
from dataclasses import dataclass
import numpy as np
import torch
from bench.api import DatasetAdapter, MLPBackbone, Modality, Split, hp, register_dataset

FLAG, LOG = {flag!r}, {log!r}


class Tripwire(Split):
    """The test split: once FLAG exists, any read of its data is logged and raises."""

    def __getattribute__(self, name):
        if name in ("inputs", "labels", "aux", "meta", "subset", "aux_for", "check") and os.path.exists(FLAG):
            with open(LOG, "a") as fh:
                fh.write(name + "\\n")
            raise RuntimeError("test split read while tuning: " + name)
        return object.__getattribute__(self, name)


@dataclass
class P:
    n: int = hp(300, "training samples", ge=30)


@register_dataset("tripwire")
class Blobs(DatasetAdapter):
    Params = P
    train_defaults = {{"epochs": 2, "teacher_epochs": 2, "lr": 0.05}}

    @property
    def modalities(self):
        return [Modality("left", "l", "vector", (8,)), Modality("right", "r", "vector", (8,))]

    @property
    def num_classes(self):
        return 3

    def load(self):
        rng = np.random.default_rng(0)

        def split(n, cls=Split):
            y = np.arange(n) % 3
            z = rng.normal(size=(n, 8)) + y[:, None]
            views = {{"left": z, "right": z + 2 * rng.normal(size=(n, 8))}}
            return cls({{k: torch.tensor(v, dtype=torch.float32) for k, v in views.items()}}, torch.tensor(y))

        return {{"train": split(self.params.n), "test": split(90, Tripwire)}}

    def augments(self, modality):
        return False

    def build_model(self, modality, num_classes):
        return MLPBackbone(8, num_classes, (16, 16))
'''


def test_trials_never_read_the_test_split(tmp_path):
    """Every method tuned on a dataset whose test split raises (and logs) on any read, armed after
    the teachers are prepared and with the data loaded afresh: every trial finishes; an ordinary run
    on the same data trips the wire at once, so the wire is live."""
    from bench.api.registry import load_plugin_file
    from bench.train import loop
    from bench.train.run import run
    from bench.tune.grid import plan_studies
    from bench.tune.objective import prepare
    from bench.tune.study import counts, open_study, study_lock
    from bench.tune.worker import work

    flag, log = tmp_path / "ARMED", tmp_path / "reads.log"
    plug = tmp_path / "tripwire.py"
    plug.write_text(TRIPWIRE.format(flag=str(flag), log=str(log)))
    load_plugin_file(plug)
    # AT, NST and KDSVD refuse these MLPs' stage vectors (no spatial axis; tests/test_zoo_relation.py)
    methods = ",".join(m for m in one_teacher_methods() if m not in {"at", "nst", "kdsvd"})
    plan = plan_studies(methods, "tripwire", "l2r", n_trials=2, results=tmp_path / "res", device="cpu",
                        plugins=[str(plug)])
    for st in plan.studies:  # teachers train as bench run trains them (their record keeps a test score)
        prepare(st.base)
    loop._DATA_CACHE.clear()  # trials load the dataset afresh, with the wire armed
    flag.write_text("1")
    work(plan)
    assert not log.exists(), log.read_text()
    assert not (tmp_path / "res" / "predictions").exists()  # trials keep no per-sample predictions
    for st in plan.studies:
        with study_lock(st):
            assert counts(open_study(st))["finished"] == 2, st.name
    with pytest.raises(Exception) as exc:  # the same data in an ordinary run: the wire trips
        run(plan.studies[0].base)
    assert "test split read while tuning" in str(exc.value) and log.read_text()


def test_tuned_run_reproduces_the_best_trial_and_tables_show_both(tuned_all):
    """`bench run --tuned` at the tuning seed retrains the best trial exactly (same parameters, same
    validation curve), labelled with its study and trial; tables and the leaderboard show default
    and tuned side by side with the gain; a method with nothing to tune keeps its default run."""
    res, _, _ = tuned_all
    name = study_of(res, "dkd")
    best = max((t for t in load(res, name).trials if t.state.name == "COMPLETE"), key=lambda t: (t.value, -t.number))
    trial = json.loads((res / "tuning" / name / "trials" / f"{best.number:04d}.json").read_text())
    r = bench("run", "--methods", "dkd,none", "--seeds", "1000", "-r", str(res), *TINY)
    assert r.exit_code == 0, r.output
    r = bench("run", "--tuned", "--methods", "dkd,none", "--seeds", "1000", "-r", str(res), *TINY)
    assert r.exit_code == 0, r.output
    assert "2 runs in the grid, 1 already done, 1 to run" in r.output  # none: its default run is its tuned one
    recs = {(x["method"], bool(x.get("tuned"))): x for x in load_records(res)}
    rec, default = recs[("dkd", True)], recs[("dkd", False)]
    assert rec["tuned"] == rec["config"]["tuned"] == {"study": name, "trial": best.number, "value": best.value}
    mp = rec["config"]["method_params"]
    assert {f"dkd.{k}": v for k, v in mp.items() if f"dkd.{k}" in best.params} == best.params
    assert [h["val_metric"] for h in rec["history"]] == [h["val_metric"] for h in trial["history"]]
    assert rec["val_at_selected"] == best.value and rec["config_hash"] != default["config_hash"]
    untagged = {k: v for k, v in rec["config"].items() if k != "tuned"}  # the trial's configuration, plus the label
    assert stable_hash(untagged, 10) == trial["config_hash"]
    t = bench("table", "-r", str(res), "--format", "markdown")
    assert "(tuned)" not in t.output and "1 tuned record(s) not shown" in t.output
    t = bench("table", "-r", str(res), "--format", "markdown", "--params", "both")
    assert "| DKD (tuned) |" in t.output and "| DKD |" in t.output
    gain = rec["best_metric"] - default["best_metric"]
    assert f"gain from tuning (tuned - default mean, points): DKD {gain:+.2f} on synthetic/visual" in t.output
    t = bench("table", "-r", str(res), "--format", "csv", "--params", "tuned")
    dkd_row = next(ln for ln in t.output.splitlines() if ln.startswith("DKD,"))  # method,category,...,mean,...
    assert float(dkd_row.split(",")[4]) == pytest.approx(rec["best_metric"])
    lb = bench("leaderboard", "-r", str(res), "--format", "markdown", "--params", "both")
    assert "DKD (tuned)" in lb.output and "gain from tuning" in lb.output
    lb_tuned = bench("leaderboard", "-r", str(res), "--format", "csv", "--params", "tuned")
    ranked = {ln.split(",")[0]: ln.split(",")[2] for ln in lb_tuned.output.splitlines()[1:] if ln.count(",") > 3}
    assert {"DKD", "w/o KD"} <= set(ranked) and all(float(v) >= 1 for v in ranked.values()), lb_tuned.output
    # places on the default and on the tuned leaderboard (one cell, so place = which of the two is higher)
    none = recs[("none", False)]["best_metric"]
    flat = " ".join(lb.output.split()).replace("-&gt;", "->")  # Markdown escapes ">"
    if default["best_metric"] != none and rec["best_metric"] != none:
        before, after = (1 if default["best_metric"] > none else 2), (1 if rec["best_metric"] > none else 2)
        if before == after:
            assert "places, default -> tuned leaderboard: no method changed place" in flat, flat
        else:
            assert f"DKD {before} -> {after} (mean rank {before:.2f} -> {after:.2f})" in flat, flat
    r = bench("run", "--tuned", "--methods", "logit", "--seeds", "0", "-r", str(res / "elsewhere"), *TINY)
    assert r.exit_code == 2 and "no tuning study for logit" in r.output and "bench tune --methods logit" in r.output


def _cluster_up() -> bool:
    if shutil.which("sinfo") is None:
        return False
    r = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    return r.returncode == 0 and any(s.startswith(("idle", "mixed", "alloc")) for s in r.stdout.split())


@pytest.mark.skipif(not _cluster_up(), reason="no SLURM cluster (start it with: bash slurm/cluster.sh up)")
def test_the_study_as_a_slurm_array(tuned_all, tmp_path):
    """The dkd study of the local run (same identity), as an array of 2 tasks on the localhost
    cluster: exactly 4 finished trials, each trained by a task of that array."""
    full, _, _ = tuned_all
    res = tmp_path / "res"
    r = bench("tune", "--methods", "dkd", "--trials", "4", "--executor", "slurm", "--tasks", "2", "--wait",
              "-r", str(res), *TINY)
    assert r.exit_code == 0, r.output
    name = study_of(res, "dkd")
    assert name == study_of(full, "dkd")
    study = load(res, name)
    done = finished(study)
    assert len(done) == 4 and sorted(t.number for t in done) == [0, 1, 2, 3]
    manifest = json.loads(next((res / "tuning" / "slurm" / "submissions").glob("*.json")).read_text())
    infos = [json.loads((res / "tuning" / name / "trials" / f"{t.number:04d}.json").read_text()) for t in done]
    assert {i["slurm"]["array_job_id"] for i in infos} == {manifest["array_job"]}
    assert {i["slurm"]["array_task_id"] for i in infos} <= {"0", "1"}
    r = bench("tune", "--methods", "dkd", "--trials", "4", "--executor", "slurm", "--tasks", "2", "--wait",
              "-r", str(res), *TINY)
    assert r.exit_code == 0 and "nothing to submit" in r.output, r.output
