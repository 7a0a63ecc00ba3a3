"""Issue #25 item 6, provenance that a grid can be checked against: the code state of a record
(commit, dirty, diff hash), the environment's package-set hash, the versions of what determines a
result (pinned here on a tiny run of every method), the publish check of ``bench reproduce`` and the
compact records file the published outputs reproduce from."""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bench.api.errors import BenchError, RecordError
from bench.cli import app
from bench.records.store import load_records, write_record

cli = CliRunner()

CLEAN = {"commit": "c0ffee" * 6 + "c0ff", "dirty": False, "diff_hash": None, "untracked": 0}
"""The code state the grid of this module's records says it ran (the test's own checkout may be dirty)."""


# -- the code state ------------------------------------------------------------------------------

def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)


@pytest.fixture
def repo(tmp_path):
    r = tmp_path / "repo"
    r.mkdir()
    _git(r, "init", "-q")
    _git(r, "config", "user.email", "t@example.org")
    _git(r, "config", "user.name", "t")
    (r / "a.py").write_text("x = 1\n")
    (r / ".gitignore").write_text("ignored/\n")
    _git(r, "add", "a.py", ".gitignore")
    _git(r, "commit", "-qm", "first")
    return r


def test_a_clean_tree_is_not_marked(repo):
    from bench.records.provenance import code_state, git_commit

    state = code_state(repo)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
    assert state == {"commit": head, "dirty": False, "diff_hash": None, "untracked": 0}
    assert git_commit(repo) == head
    (repo / "ignored").mkdir()
    (repo / "ignored" / "big.bin").write_bytes(b"\0" * 100)  # an ignored file is not part of the code
    assert code_state(repo)["dirty"] is False
    assert code_state(repo / "ignored")["commit"] == head  # any folder of the checkout finds its root


def test_a_dirty_tree_is_marked_with_a_hash_of_its_diff(repo):
    from bench.records.provenance import code_state, git_commit

    (repo / "a.py").write_text("x = 2\n")
    one = code_state(repo)
    assert one["dirty"] is True and re.fullmatch(r"[0-9a-f]{16}", one["diff_hash"])
    assert git_commit(repo).endswith("+dirty")
    assert code_state(repo)["diff_hash"] == one["diff_hash"]  # the same diff, the same hash
    (repo / "a.py").write_text("x = 3\n")
    two = code_state(repo)
    assert two["dirty"] and two["diff_hash"] != one["diff_hash"]  # another diff, another hash
    _git(repo, "add", "a.py")  # staged counts as well (git diff HEAD)
    assert code_state(repo)["diff_hash"] == two["diff_hash"]
    _git(repo, "checkout", "-q", "HEAD", "--", "a.py")
    assert code_state(repo)["dirty"] is False
    # an untracked file that is not ignored is part of the code: its name and its content count
    (repo / "b.py").write_text("y = 1\n")
    three = code_state(repo)
    assert three["dirty"] and three["untracked"] == 1 and three["diff_hash"] not in (one["diff_hash"], two["diff_hash"])
    (repo / "b.py").write_text("y = 2\n")
    four = code_state(repo)
    assert four["diff_hash"] != three["diff_hash"]
    (repo / "b.py").rename(repo / "c.py")
    assert code_state(repo)["diff_hash"] != four["diff_hash"]


def test_outside_a_checkout_there_is_no_code_state(tmp_path):
    from bench.records.provenance import code_state, git_commit

    assert code_state(tmp_path) is None and git_commit(tmp_path) is None


def test_the_environment_has_a_package_set_hash_that_follows_the_package_list():
    from bench.records.provenance import installed_packages, package_set_hash, runtime_environment

    env = runtime_environment()
    assert env["packages_hash"] == package_set_hash()
    assert env["python"] and env["torch"] and "threads" in env and "cuda" in env and "cpu_model" in env
    pkgs = installed_packages()
    assert pkgs == sorted(set(pkgs)) and any(p.startswith("torch==") for p in pkgs)
    a = ["numpy==2.0.0", "torch==2.11.0"]
    assert package_set_hash(a) == package_set_hash(list(reversed(a)))  # order does not matter
    assert package_set_hash(a) != package_set_hash(["numpy==2.0.1", "torch==2.11.0"])  # a version does
    assert package_set_hash(a) != package_set_hash(a + ["scipy==1.14.0"])  # and so does a package more
    assert package_set_hash(a) != package_set_hash(pkgs)


def test_the_package_list_kept_per_process_sees_a_package_installed_meanwhile(tmp_path, monkeypatch):
    """The list is kept between runs of a worker (it costs half a second to read), but a
    distribution that appears on ``sys.path`` later is in the next answer, and gone once removed."""
    import time

    from bench.records.provenance import installed_packages

    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    before = installed_packages()
    assert installed_packages() == before  # kept
    time.sleep(0.01)  # a later modification time on file systems with coarse clocks
    info = site / "cmkd_probe_pkg-3.1.4.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: cmkd-probe-pkg\nVersion: 3.1.4\n")
    os.utime(site, ns=(time.time_ns() + 10**9,) * 2)  # the install touched the directory
    assert installed_packages() == sorted(before + ["cmkd-probe-pkg==3.1.4"])
    shutil.rmtree(info)
    os.utime(site, ns=(time.time_ns() + 2 * 10**9,) * 2)
    assert installed_packages() == before


def test_a_record_carries_its_code_state_versions_and_environment(tmp_path):
    from bench.records.provenance import code_state, package_set_hash

    from bench.train.resolve import RunSpec
    from bench.train.run import RUNNER_VERSION, run

    ov = {"synthetic": {"n_train": "120", "n_test": "60"}, "train": {"epochs": "1", "teacher_epochs": "1"}}
    rec = run(RunSpec("synthetic", "audio", "visual", "dkd", 0, ov, str(tmp_path), "cpu"))
    assert rec["versions"] == {"runner": RUNNER_VERSION, "method": 2, "adapter": 1,
                               "backbones": {"teacher": 1, "student": 1}}
    here = code_state()
    assert rec["code"]["commit"] == here["commit"] and rec["git_commit"].startswith(here["commit"])
    assert rec["environment"]["packages_hash"] == package_set_hash()
    assert rec["config"]["dataset"] == {"dataset": "synthetic", "params": rec["config"]["dataset"]["params"]}  # its fingerprint


# -- the results pinned with their versions ------------------------------------------------------

PINNED_VERSIONS = {"runner": 2, "adapter": 1, "backbone": 1}
"""The runner, synthetic's adapter and its default backbone (mlp) versions the results below were pinned at."""

PINNED = {  # method: (method version, first-epoch train loss, last-epoch train loss, best_metric)
    "logit": (1, 0.2869257256388664, 0.247423455119133, 15.0),
    "afd": (1, 17.948800802230835, 17.882022105157375, 22.0),
    "c2kd": (1, 4.010821007192135, 3.78152147307992, 18.0),
    "dist": (1, 5.428896903991699, 5.581417798995972, 17.0),
    "nkd": (1, 4.579318046569824, 4.4402453899383545, 19.0),
    "dkd": (2, 2.6680145747959614, 2.388906423933804, 17.0),
    "dml": (1, 3.700294777750969, 3.585490472614765, 19.0),
    "fdcmkd": (1, 12.968801323324442, 12.507079312577844, 16.0),
    "feat": (2, 206.50169706344604, 139.15158104896545, 18.0),
    "none": (1, 1.818354845046997, 1.76918363571167, 15.0),
    "ofd": (1, 3.0568082332611084, 3.0005370378494263, 18.0),
    "pkd": (1, 7.745124816894531, 7.429443359375, 15.0),
    "ucmkd": (1, 4.0064080357551575, 3.920128881931305, 20.0),
    "ls": (1, 1.81876540184021, 1.7781939506530762, 19.0),
    "tfkd": (1, 1.683560136705637, 1.6140283402055502, 15.0),
    "at": (1, 139.64441800117493, 216.3621289730072, 17.0),
    "sp": (1, 8.733299016952515, 4.99373733997345, 17.0),
    "pkt": (1, 2.471385359764099, 2.128717839717865, 14.0),
    "rkd": (1, 5.681657075881958, 4.149900436401367, 14.0),
    "nst": (1, 10.434665203094482, 8.564409375190735, 19.0),
    "cc": (1, 2.8042131066322327, 2.096030741930008, 18.0),
    "kdsvd": (1, 1.8252805573865771, 1.7762625655159354, 19.0),
    "wsld": (1, 13.266857147216797, 12.870093822479248, 16.0),
    "ctkd": (1, 0.2864677235484123, 0.24730286747217178, 13.0),
    "mlkd": (1, 11.352538675069809, 39.84188026189804, 17.0),
    "crd": (2, 12.784887909889221, 13.178701162338257, 20.0),
    "discomkd": (1, 7.74797523021698, 7.391072392463684, 20.0),
    "mfh": (1, 0.017643341794610023, 0.016161536797881126, 14.0),
    "mgdfr": (1, 0.9341794159263372, 1.3587441658601165, 18.0),
    "reviewkd": (1, 19.47825527191162, 18.25337564945221, 16.0),
    "vid": (1, 4.972018241882324, 4.8874804973602295, 16.0),
    "mst": (1, 1.9603002965450287, 1.873372882604599, 16.0),  # on av2v (PIN_DIRECTIONS)
}
PIN_DIRECTIONS = {"mst": ("audio+visual", "visual")}
"""Methods that need another direction than a2v (MST-Distill distils a teacher set's mixture)."""
PIN_OVERRIDES = {"synthetic": {"n_train": "200", "n_test": "100"}, "train": {"epochs": "2", "teacher_epochs": "1"}}

BUMP = ("bump the version of what changed it (bench.train.run.RUNNER_VERSION, the method's `version`, the "
        "dataset adapter's or the backbone's `version`), add a line saying why to docs/reference/versions.md, "
        "then re-pin PINNED / PINNED_VERSIONS in tests/test_provenance.py")


def test_default_results_do_not_change_without_a_version_bump(tmp_path):
    """A tiny run of every method at its defaults on ``synthetic`` (one thread, as pinned): a
    result that moves while every version stays the same fails with what to bump."""
    import torch

    from bench.api.registry import select_methods
    from bench.train.resolve import RunSpec
    from bench.train.run import run

    assert sorted(select_methods("all,controls")) == sorted(PINNED), "a method was added or removed: pin it here"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    problems = []
    try:
        for m, (mv, loss1, loss_last, metric) in PINNED.items():
            t_mod, s_mod = PIN_DIRECTIONS.get(m, ("audio", "visual"))
            rec = run(RunSpec("synthetic", t_mod, s_mod, m, 0, PIN_OVERRIDES, str(tmp_path), "cpu"))
            v = rec["versions"]
            now = {"runner": v["runner"], "adapter": v["adapter"], "backbone": set(v["backbones"].values())}
            if (v["method"], now) != (mv, {**PINNED_VERSIONS, "backbone": {PINNED_VERSIONS["backbone"]}}):
                problems.append(f"{m}: versions are now {v}, the result was pinned at method {mv} and "
                                f"{PINNED_VERSIONS}: check docs/reference/versions.md has the bump's line and "
                                f"re-pin this method's result")
                continue
            h = rec["history"]
            got = (h[0]["train_loss"], h[-1]["train_loss"], rec["best_metric"])
            if (got[0] != pytest.approx(loss1, rel=1e-5) or got[1] != pytest.approx(loss_last, rel=1e-5)
                    or abs(got[2] - metric) > 1.0):
                problems.append(f"{m}: the result changed at unchanged versions (train loss {loss1!r} -> {got[0]!r}, "
                                f"last {loss_last!r} -> {got[1]!r}, {rec['metric']} {metric} -> {got[2]})")
    finally:
        torch.set_num_threads(threads)
    assert not problems, "\n".join(problems) + "\n" + BUMP


def test_every_bumped_version_has_a_changelog_line():
    from bench.api.registry import BACKBONES, DATASETS, METHODS
    from bench.models.registry import factory_attr
    from bench.train.run import RUNNER_VERSION

    text = (Path(__file__).resolve().parents[1] / "docs" / "reference" / "versions.md").read_text()
    rows = set(re.findall(r"^\| (\w+(?: [\w-]+)?) \| (\d+) \|", text, re.M))
    bumped = [("runner", "runner", RUNNER_VERSION)]
    bumped += [("method", e.name, e.obj.version) for e in METHODS.entries()]
    bumped += [("adapter", e.name, getattr(e.obj, "version", 1)) for e in DATASETS.entries()]
    bumped += [("backbone", e.name, factory_attr(e.obj, "version")) for e in BACKBONES.entries()]
    missing = []
    for kind, name, version in bumped:
        label = "runner" if kind == "runner" else f"{kind} {name}"
        for v in range(2, int(version) + 1):
            if (label, str(v)) not in rows:
                missing.append(f"{label} {v}")
    assert not missing, f"no changelog line in docs/reference/versions.md for: {', '.join(missing)}"


# -- a tiny real grid: the publish check and the compact records ---------------------------------

@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """The offline reproduction at toy scale (synthetic, a2v, 3 methods, 2 seeds, 1 epoch), every
    record saying it ran the clean commit :data:`CLEAN`."""
    from bench.launch.local import LocalExecutor
    from bench.report.reproduce import Benchmark, offline_specs

    tiny = (Benchmark("synthetic", "synthetic", {"synthetic": {"n_train": "240", "n_test": "120"}}),)
    res = tmp_path_factory.mktemp("grid") / "res"
    specs = offline_specs(res, seeds="0,1", device="cpu", epochs=1, teacher_epochs=1, benchmarks=tiny,
                          methods="none,logit,fdcmkd", directions="a2v")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("bench.train.run.code_state", lambda path=None: dict(CLEAN))
        outcome = LocalExecutor().run(specs)
    assert not outcome.failed
    return res, tiny


def _copy(grid, tmp_path) -> Path:
    res = tmp_path / "res"
    shutil.copytree(grid[0] / "records", res / "records")
    return res


def _edit(res: Path, method: str, seed: int | None, change) -> list[str]:  # type: ignore[no-untyped-def]
    """Apply ``change`` to the default-parameter records of ``method`` (one ``seed`` or all); their run ids."""
    ids = []
    for r in load_records(res):
        if r["method"] == method and (seed is None or r["seed"] == seed) and r["config"]["method_params"] == _defaults(method):
            r.pop("path")
            change(r)
            write_record(res, r)
            ids.append(r["run_id"])
    assert ids
    return ids


def _defaults(method: str) -> dict:
    from bench.api.config import build_params, hashed_params
    from bench.api.registry import METHODS

    return hashed_params(build_params(METHODS.get(method).Params, {}, method))  # what a record's method_params hold


def _refusal(res: Path, tiny, tmp_path) -> str:  # type: ignore[no-untyped-def]
    from bench.report.reproduce import build_outputs

    out = tmp_path / "out"
    with pytest.raises(BenchError) as exc:
        build_outputs(res, out, benchmarks=tiny, every_direction=False)
    assert not out.exists()  # refused before anything is written
    msg = str(exc.value)
    assert msg.startswith("refusing to publish") and "--allow-mixed-provenance" in msg
    return msg


def test_publish_refuses_a_record_from_a_dirty_tree(grid, tmp_path):
    res = _copy(grid, tmp_path)
    ids = _edit(res, "logit", 1, lambda r: r.update(code={**CLEAN, "dirty": True, "diff_hash": "abcdef0123456789"},
                                                    git_commit=CLEAN["commit"] + "+dirty"))
    msg = _refusal(res, grid[1], tmp_path)
    assert "dirty tree" in msg and "abcdef0123456789" in msg and ids[0] in msg


def test_publish_refuses_a_cell_whose_seeds_ran_two_commits(grid, tmp_path):
    res = _copy(grid, tmp_path)
    _edit(res, "logit", 1, lambda r: r.update(code={**CLEAN, "commit": "d" * 40}))
    msg = _refusal(res, grid[1], tmp_path)
    assert "cell logit on synthetic a2v" in msg and "different commits" in msg
    assert "seed 0: c0ffeec0ffee" in msg and "seed 1: dddddddddddd" in msg
    assert "none on synthetic" not in msg  # the other cells hold together


def test_publish_refuses_a_cell_whose_seeds_ran_two_method_versions(grid, tmp_path):
    res = _copy(grid, tmp_path)
    _edit(res, "fdcmkd", 0, lambda r: r["versions"].update(method=2))
    msg = _refusal(res, grid[1], tmp_path)
    assert "cell fdcmkd on synthetic a2v" in msg and "different method versions" in msg
    assert "seed 0: method 2" in msg and "seed 1: method 1" in msg
    assert "runner" not in msg.split("\n", 1)[1].split("rerun those")[0]


def test_publish_refuses_a_grid_of_two_runner_versions_but_not_a_later_commit_per_cell(grid, tmp_path):
    res = _copy(grid, tmp_path)
    # a method added later from another commit joins the grid: every one of its seeds from that commit
    _edit(res, "none", None, lambda r: r.update(code={**CLEAN, "commit": "e" * 40}))
    from bench.records.store import load_records as load
    from bench.report.publish import provenance_problems

    assert provenance_problems(load(res, status="ok")) == []
    from bench.train.run import RUNNER_VERSION

    other = RUNNER_VERSION + 1
    _edit(res, "none", None, lambda r: r["versions"].update(runner=other))
    msg = _refusal(res, grid[1], tmp_path)
    assert ("mixes runner versions" in msg and f"runner {RUNNER_VERSION}:" in msg
            and f"runner {other}: 2 record(s)" in msg), msg
    assert "different commits" not in msg


def test_publish_refuses_records_without_provenance(grid, tmp_path):
    res = _copy(grid, tmp_path)
    ids = _edit(res, "none", 0, lambda r: (r.pop("code"), r.pop("versions")))
    msg = _refusal(res, grid[1], tmp_path)
    assert "carry no provenance" in msg and ids[0] in msg


def test_the_override_publishes_and_the_outputs_say_so(grid, tmp_path):
    from bench.report.reproduce import build_outputs

    res = _copy(grid, tmp_path)
    ids = _edit(res, "logit", 1, lambda r: r.update(code={**CLEAN, "dirty": True, "diff_hash": "abcdef0123456789"}))
    out = tmp_path / "out"
    summary = build_outputs(res, out, benchmarks=grid[1], every_direction=False, allow_mixed_provenance=True)
    on_disk = json.loads((out / "summary.json").read_text())["provenance"]
    assert on_disk == summary["provenance"]
    assert on_disk["mixed"] is True and on_disk["published_with"] == "--allow-mixed-provenance"
    assert any(ids[0] in p and "dirty tree" in p for p in on_disk["problems"])
    for page in ("comparison.md", "leaderboard.md", "ablation.md"):
        assert (out / page).read_text().startswith("> **Mixed provenance**: published with `--allow-mixed-provenance`")
    from bench.report.docs import results_block

    assert results_block(out).startswith("|")  # the README's table is still found under the banner


def test_bench_reproduce_refuses_from_the_command_line(grid, tmp_path):
    res = _copy(grid, tmp_path)
    _edit(res, "logit", 0, lambda r: r["versions"].update(adapter=3))
    r = cli.invoke(app, ["reproduce", "--outputs-only", "-r", str(res), "-o", str(tmp_path / "out")])
    assert r.exit_code != 0 and "refusing to publish" in r.output and "different adapter versions" in r.output
    assert not (tmp_path / "out").exists()


def test_the_analysis_reproduces_from_the_compact_records(grid, tmp_path):
    """The published records file, read back, gives the leaderboard and tables the records folder
    gives, and rebuilding it gives the same bytes."""
    from bench.records.compact import write_compact
    from bench.records.store import read_compact

    from bench.report.render import render_leaderboard, render_table
    from bench.report.reproduce import build_outputs

    res, tiny = grid
    out = tmp_path / "out"
    summary = build_outputs(res, out, benchmarks=tiny, every_direction=False)
    assert summary["provenance"]["mixed"] is False and summary["provenance"]["commits"] == [CLEAN["commit"]]
    packed = out / "records.jsonl.gz"
    blob = packed.read_bytes()
    with gzip.open(packed, "rt") as f:
        lines = f.read().splitlines()
    assert len(lines) == len(load_records(res, status="ok")) and blob[4:8] == b"\0\0\0\0"  # mtime 0
    assert [json.loads(x)["run_id"] for x in lines] == sorted(json.loads(x)["run_id"] for x in lines)
    shuffled = list(reversed(read_compact(packed)))  # read back, in another order, with other paths
    assert write_compact(shuffled, tmp_path / "again.jsonl.gz").read_bytes() == blob  # the same bytes again
    # the records themselves come back (all but where each was read from)
    strip = lambda rs: sorted(({k: v for k, v in r.items() if k != "path"} for r in rs), key=lambda r: r["run_id"])  # noqa: E731
    assert strip(read_compact(packed)) == strip(load_records(res, status="ok"))
    # and so does every analysis of them
    for fmt in ("markdown", "json", "csv"):
        kw = dict(fmt=fmt, cells=True, datasets="synthetic")
        assert render_leaderboard([packed], **kw).text == render_leaderboard([res], **kw).text, fmt
    for kind in ("comparison", "ablation", "threshold", "sensitivity"):
        kw = dict(fmt="markdown", std=True, datasets="synthetic")
        assert render_table(packed, kind, **kw).text == render_table(res, kind, **kw).text, kind
    assert render_table(packed, "comparison", fmt="markdown", std=True, datasets="synthetic",
                        mark_tied=True).text == (out / "comparison.md").read_text()
    a = cli.invoke(app, ["leaderboard", "-r", str(packed), "--format", "markdown", "--cells"])
    b = cli.invoke(app, ["leaderboard", "-r", str(res), "--format", "markdown", "--cells"])
    assert a.exit_code == 0 and a.output == b.output, a.output
    a = cli.invoke(app, ["table", "-r", str(packed), "--format", "markdown", "--std"])
    b = cli.invoke(app, ["table", "-r", str(res), "--format", "markdown", "--std"])
    assert a.exit_code == 0 and a.output == b.output, a.output


def test_a_bad_line_of_a_compact_file_is_named(grid, tmp_path):
    from bench.records.compact import write_compact
    from bench.records.store import read_compact

    recs = load_records(grid[0], status="ok")[:3]
    good = write_compact(recs, tmp_path / "ok.jsonl.gz")
    assert [r["path"] for r in read_compact(good)] == [f"{good}:{n}" for n in (1, 2, 3)]
    lines = gzip.decompress(good.read_bytes()).decode().splitlines()
    bad = tmp_path / "bad.jsonl.gz"
    bad.write_bytes(gzip.compress((lines[0] + "\n" + lines[1][:40] + "\n" + lines[2] + "\n").encode()))
    with pytest.raises(RecordError, match=re.escape(f"{bad}, line 2: not valid JSON")):
        load_records(bad)
    wrong = json.loads(lines[2])
    wrong["seed"] = -1
    bad.write_bytes(gzip.compress((lines[0] + "\n\n" + json.dumps(wrong) + "\n").encode()))
    with pytest.raises(RecordError, match=re.escape(f"{bad}, line 3: field 'seed' must be an integer >= 0")):
        load_records(bad)
    bad.write_bytes(b"\x1f\x8b not gzip")
    with pytest.raises(RecordError, match=re.escape(str(bad))):
        load_records(bad)
    with pytest.raises(RecordError, match="does not exist"):
        load_records(tmp_path / "missing.jsonl.gz")
    r = cli.invoke(app, ["leaderboard", "-r", str(bad)])
    assert r.exit_code != 0 and str(bad.name) in r.output
