"""Records and reports against hostile and inconsistent input (issue #23, items 6, 8 and 13): a
second record of a seed is a conflict, not another seed; ``bench collect`` refuses records whose
identity does not hold together; the leaderboard's rerun command re-resolves to the record's config
hash for every kind of record; record fields are checked; names reach no output format with
control or bidi characters."""

from __future__ import annotations

import csv
import io
import json
import re
import shlex
import shutil
import subprocess
import types
import unicodedata
from pathlib import Path

import pytest
from conftest import tiny
from test_dataset_folder import make_folder
from typer.testing import CliRunner

from bench.api.errors import RecordError
from bench.cli import app
from bench.records.provenance import stable_hash
from bench.records.store import collect, load_records, load_results, read_record, write_record
from bench.report.leaderboard import build_leaderboard, reproduce_command
from bench.report.tables import build_comparison

cli = CliRunner()


def invoke(*args: str):  # type: ignore[no-untyped-def]
    return cli.invoke(app, list(args), env={"COLUMNS": "250"})


def rec(method: str, ds: str, mod: str, seed: int, value: float, *, variant: str = "v", metric: str = "top1",
        cat: str = "Logits", run_id: str | None = None) -> dict:
    """An ok record whose identity holds together (run id, config hash, group hash), as ``bench run``
    writes them; ``variant`` stands for a setting that makes another configuration."""
    cfg = {"dataset": {"dataset": ds, "params": {"variant": variant}}, "teacher_modality": "t", "student_modality": mod,
           "method": method, "method_params": {}, "train": {"epochs": 1}, "seed": seed}
    ch = stable_hash(cfg)
    return {
        "schema": 1, "run_id": run_id or f"{ds}_t2x_{method}_s{seed}_{ch[:8]}", "status": "ok", "method": method,
        "method_category": cat, "method_source": "builtin", "method_source_hash": None, "dataset": ds,
        "task": "classification", "teacher_modality": "t", "student_modality": mod, "direction": "t2x", "seed": seed,
        "metric": metric, "config": cfg, "config_hash": ch,
        "group_hash": stable_hash({k: v for k, v in cfg.items() if k != "seed"}),
        "best_metric": value, "final_metric": value, "history": [{"epoch": 1, "test_metric": value}],
        "selected_epoch": 1, "git_commit": "abc1234",
    }


def put(root: Path, r: dict, name: str | None = None) -> Path:
    """Write ``r`` as ``root/records/NAME.json`` (any file name, as a copied file may have)."""
    p = root / "records" / f"{name or r['run_id']}.json"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(r))
    return p


# ------------------------------------------------------------------------------------------
# 6. one record per seed: a second record of a seed is a conflict

def duplicated_seed(root: Path) -> tuple[Path, Path]:
    """m on A/visual: seeds 0 and 1, and a second record of seed 0 made with another config hash
    (the same cell configuration otherwise), as a hand-edited or forged file would be."""
    for s, v in ((0, 60.0), (1, 62.0)):
        write_record(root, rec("none", "A", "visual", s, 50.0 + s, cat="Uni-Modal"))
        write_record(root, rec("m", "A", "visual", s, v))
    first = root / "records" / f"{rec('m', 'A', 'visual', 0, 60.0)['run_id']}.json"
    second = dict(rec("m", "A", "visual", 0, 90.0), config_hash="f00dfeed00", run_id="A_t2x_m_s0_f00dfeed")
    return first, put(root, second)


def test_a_second_record_of_a_seed_is_a_conflict_in_tables_and_leaderboard(tmp_path):
    first, second = duplicated_seed(tmp_path / "res")
    comp = build_comparison(load_results(tmp_path / "res"))
    cell = comp.cells[("m", ("A", "visual"))]
    assert cell.conflict and cell.mean is None  # before: n=3, mean (60 + 62 + 90) / 3 = 70.7 for seeds 0, 0, 1
    (why,) = comp.conflicts
    assert "seed 0 has 2 different records" in why and first.name in why and second.name in why
    assert not comp.cells[("none", ("A", "visual"))].conflict  # the other rows are untouched
    md = invoke("table", "-r", str(tmp_path / "res"), "--format", "markdown")
    assert md.exit_code == 0, md.output
    assert "| m | conflict |" in md.output and "70.7" not in md.output and "f00dfeed.json" in md.output
    lb = build_leaderboard(load_records(tmp_path / "res"))
    assert lb.stats[("m", ("A", "visual"))].conflict
    assert any("seed 0 has 2 different records" in n and second.name in n for n in lb.notes)
    out = invoke("leaderboard", "-r", str(tmp_path / "res"), "--format", "markdown")
    assert out.exit_code == 0 and "seed 0 has 2 different records" in out.output


def test_copies_of_one_run_count_once_and_other_doubles_conflict(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for s in (0, 1):
        write_record(a, rec("m", "A", "visual", s, 60.0 + s))
    shutil.copytree(a, b)  # the same runs in two folders: one record per seed
    comp = build_comparison(load_results([a, b]))
    cell = comp.cells[("m", ("A", "visual"))]
    assert not cell.conflict and cell.n == 2 and cell.mean == pytest.approx(60.5)
    # the same run (config hash) with other numbers: which is right cannot be told -> conflict
    c = tmp_path / "c"
    write_record(c, dict(rec("m", "A", "visual", 0, 99.0)))
    comp = build_comparison(load_results([a, c]))
    assert comp.cells[("m", ("A", "visual"))].conflict and "seed 0 has 2 different records" in comp.conflicts[0]
    # one config hash recorded for two seeds (a config hash includes the seed)
    d = tmp_path / "d"
    r1 = rec("m", "A", "visual", 1, 61.0)
    put(d, dict(rec("m", "A", "visual", 0, 60.0), config_hash=r1["config_hash"]), "x0")
    put(d, r1, "x1")
    comp = build_comparison(load_results(d))
    assert comp.cells[("m", ("A", "visual"))].conflict and "is recorded for seeds 0, 1" in comp.conflicts[0]


def test_a_cell_of_two_metrics_is_a_conflict(tmp_path):
    for s in (0, 1):
        write_record(tmp_path, rec("m", "A", "visual", s, 60.0 + s))
    write_record(tmp_path, rec("m", "A", "visual", 2, 40.0, metric="mIoU"))
    comp = build_comparison(load_results(tmp_path))
    assert comp.cells[("m", ("A", "visual"))].conflict and "different metrics (mIoU, top1)" in comp.conflicts[0]
    lb = build_leaderboard(load_records(tmp_path))
    assert lb.stats[("m", ("A", "visual"))].conflict and any("different metrics" in n for n in lb.notes)


def test_collect_refuses_records_whose_identity_does_not_hold(tmp_path):
    src, dest = tmp_path / "src", tmp_path / "dest"
    good = rec("m", "A", "visual", 0, 60.0)
    put(src, good)
    forged = {
        "other-hash": dict(rec("m", "A", "visual", 1, 61.0), config_hash="f00dfeed00", run_id="A_t2x_m_s1_f00dfeed"),
        "seed": dict(rec("m", "A", "visual", 2, 62.0), seed=3),
        "method": dict(rec("m", "A", "visual", 4, 62.0), method="k"),
        "dataset": dict(rec("m", "A", "visual", 5, 62.0), dataset="B"),
        "direction": dict(rec("m", "A", "visual", 6, 62.0), direction="t2y"),
        "run-id": dict(rec("m", "A", "visual", 7, 62.0), run_id="A_t2x_m_s7_00000000"),
        "params": {**(r := rec("m", "A", "visual", 8, 62.0)), "config": {**r["config"], "method_params": {"w": 2}}},
    }
    files = {k: put(src, v, f"forged-{k}") for k, v in forged.items()}
    rep = collect([src], dest)
    assert rep["copied"] == [good["run_id"]]
    assert len(rep["invalid"]) == len(forged), rep["invalid"]
    for k, p in files.items():
        (msg,) = [m for m in rep["invalid"] if str(p) in m]
        assert "not copied" in msg, msg
    assert [p.name for p in (dest / "records").glob("*.json")] == [f"{good['run_id']}.json"]


# ------------------------------------------------------------------------------------------
# 8. the leaderboard's rerun command recreates the run: every kind of record

PLUGIN = '''
from bench.api import Method, register_method


@register_method("rerunkd")
class RerunKD(Method):
    category = "Logits"
    uses_teacher = False

    def loss(self, s, t, y, epoch):
        return {"ce": self.task_loss(s.logits, y)}
'''

NARROW = "channels=8,16,32,64;stem_width=8"

TINY_ARGS = ["--datasets", "synthetic", "--directions", "a2v", "--device", "cpu", "--epochs", "1",
             "--teacher-epochs", "1", *sum((["--set", f"{s}.{k}={v}"] for s, kv in tiny().items() if s != "train"
                                            for k, v in kv.items()), []), "--set", "train.batch_size=32"]


@pytest.fixture(scope="module")
def every_kind(tmp_path_factory):
    """One record of each kind the tests make, all in one results folder, through ``bench run``."""
    import torch

    threads_before = torch.get_num_threads()  # restored below: later modules must not inherit one thread
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("kinds")
    res = root / "res"
    plug = root / "rerun_plugin.py"
    plug.write_text(PLUGIN)
    folder = make_folder(root / "toy", n_train=60)

    def run(*args: str) -> dict:
        import bench.cli.runs as runs

        before = {p.name for p in (res / "records").glob("*.json")} if (res / "records").exists() else set()
        with pytest.MonkeyPatch.context() as mp:  # the comparison printed after a run is not what this tests
            mp.setattr(runs, "_print_comparison", lambda *a, **k: None)
            r = cli.invoke(app, ["run", "-r", str(res), *args], catch_exceptions=False)
        assert r.exit_code == 0, r.output
        (new,) = [p for p in (res / "records").glob("*.json") if p.name not in before]
        return read_record(new) | {"path": str(new)}

    kinds = {"default": run("--methods", "logit", *TINY_ARGS)}
    kinds["method params"] = run("--methods", "dkd", "--set", "dkd.beta=3", "--set", "dkd.tau=2", *TINY_ARGS)
    tune = cli.invoke(app, ["tune", "--methods", "dkd", "--trials", "2", "-r", str(res), *TINY_ARGS])
    assert tune.exit_code == 0, tune.output
    kinds["tuned"] = run("--methods", "dkd", "--tuned", "--seeds", "3", *TINY_ARGS)
    kinds["backbones with kwargs"] = run(
        "--methods", "logit", "--set", "train.student_backbone=timm", "--set", "student.model=resnet18",
        "--set", f"student.kwargs={NARROW}", "--set", "teacher.blocks=1,2,1", *TINY_ARGS)
    ck = kinds["default"]["teacher"]["checkpoint"]
    kinds["teacher checkpoint"] = run("--methods", "logit", "--teacher-checkpoint", ck, *TINY_ARGS)
    kinds["fine-tuned teacher checkpoint"] = run("--methods", "logit", "--teacher-checkpoint", ck,
                                                 "--set", "train.teacher_finetune_epochs=1", *TINY_ARGS)
    kinds["unpaired"] = run("--methods", "logit", "--set", "train.pairing=unpaired", *TINY_ARGS)
    kinds["plug-in method"] = run("--methods", "rerunkd", "--plugin", str(plug), *TINY_ARGS)
    kinds["bring-your-own folder"] = run("--methods", "logit", "--datasets", str(folder), "--directions", "v2s",
                                         "--device", "cpu", "--epochs", "1", "--teacher-epochs", "1",
                                         "--set", "toy.width=8")
    yield res, kinds
    torch.set_num_threads(threads_before)


def resolve_printed(command: str, res: Path, monkeypatch) -> list[str]:  # type: ignore[no-untyped-def]
    """The config hashes of the runs that ``command`` would start: the real ``bench run`` command
    line (option parsing, overrides, grid, ``--tuned``), with the training step replaced."""
    import bench.cli.runs as runs
    from bench.train.resolve import resolve

    argv = shlex.split(command)
    assert argv[:2] == ["bench", "run"], command
    planned: list = []

    def no_training(todo, *args, **kwargs):  # type: ignore[no-untyped-def]
        planned.extend(todo)
        return types.SimpleNamespace(failed=[])

    monkeypatch.setattr(runs, "_run_local", no_training)
    monkeypatch.setattr(runs, "_print_comparison", lambda *a, **k: None)
    r = cli.invoke(app, [*argv[1:], "-r", str(res), "--force", "--device", "cpu"])
    assert r.exit_code == 0, f"{command}\n{r.output}"
    return [resolve(s).config_hash for s in planned]


KINDS = ["default", "method params", "tuned", "backbones with kwargs", "teacher checkpoint",
         "fine-tuned teacher checkpoint", "unpaired", "plug-in method", "bring-your-own folder"]


@pytest.mark.parametrize("kind", KINDS)
def test_the_printed_command_re_resolves_to_the_records_config_hash(every_kind, kind, monkeypatch):
    res, kinds = every_kind
    r = kinds[kind]
    command = reproduce_command(r, [r["seed"]])
    assert resolve_printed(command, res, monkeypatch) == [r["config_hash"]], command


def test_real_records_of_every_kind_pass_the_identity_check_of_collect(every_kind, tmp_path):
    res, kinds = every_kind
    rep = collect([res], tmp_path / "merged")
    assert rep["invalid"] == [] and rep["conflict"] == [] and len(rep["copied"]) == len(kinds)


# ------------------------------------------------------------------------------------------
# 13. record fields are checked, with the file and field named

def bad_record(tmp_path: Path, **changes) -> Path:
    r = rec("m", "A", "visual", 0, 60.0)
    for k, v in changes.items():
        if "." in k:
            outer, inner = k.split(".", 1)
            r["config"][outer] = dict(r["config"].get(outer) or {}, **{inner: v})
        else:
            r[k] = v
    return put(tmp_path / "res", r)


@pytest.mark.parametrize("changes, expect", [
    ({"metric": "custom", "best_metric": 1e308}, "field 'best_metric' must be a finite number in [0, 100]"),
    ({"metric": "custom", "final_metric": -5.0}, "field 'final_metric' must be a finite number in [0, 100]"),
    ({"metric": "top1\u202e"}, "field 'metric' must be a metric name"),
    ({"metric": ""}, "field 'metric' must be a metric name"),
    ({"selected_epoch": 5}, "field 'selected_epoch' must be one of the history's epochs (1 to 1)"),
    ({"tuned.study": ["a", "b"]}, "field 'config.tuned.study' must be the study's name"),
    ({"train.pairing": ["paired"]}, "field 'config.train.pairing' must be 'paired' or 'unpaired'"),
    ({"train.epochs": "3"}, "field 'config.train.epochs' must be an integer >= 1"),
])
def test_record_fields_are_checked(tmp_path, changes, expect):
    p = bad_record(tmp_path, **changes)
    with pytest.raises(RecordError) as exc:
        read_record(p)
    assert str(p) in str(exc.value) and expect in str(exc.value)
    for cmd in (("table",), ("leaderboard",)):  # not left out without a word: the command names the file
        out = invoke(*cmd, "-r", str(tmp_path / "res"))
        assert out.exit_code == 2 and expect in " ".join(out.output.split()), out.output


@pytest.mark.parametrize("text", ['{"a": ' * 100_000 + "1" + "}" * 100_000, '{"schema": 1' + "0" * 5000 + "}"],
                         ids=["nested", "long-integer"])
def test_unreadable_json_is_a_record_error_naming_the_file(tmp_path, text):
    p = tmp_path / "res" / "records" / "deep.json"
    p.parent.mkdir(parents=True)
    p.write_text(text)
    with pytest.raises(RecordError, match=re.escape(str(p))):
        read_record(p)
    out = invoke("table", "-r", str(tmp_path / "res"))
    assert out.exit_code == 2 and "deep.json" in out.output
    rep = collect([tmp_path / "res"], tmp_path / "dest")
    assert len(rep["invalid"]) == 1 and str(p) in rep["invalid"][0]


# ------------------------------------------------------------------------------------------
# 13. names reach no output with control or bidi characters

NAMES = {"method": "x\r@SUM(A1:A9)", "dataset": "D\u202eevil\x1b[31m\u200b",  # no quote: a lone \r is not quoted
         "mod": "vis\x07ual\u2066"}


def invisible(text: str) -> list[str]:
    """The control, format (bidi) and separator characters in ``text`` (line feeds between rows aside)."""
    return sorted({f"U+{ord(c):04X}" for c in text if c != "\n" and unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp")})


def hostile_names(root: Path) -> Path:
    for s in (0, 1):
        write_record(root, rec("none", NAMES["dataset"], NAMES["mod"], s, 50.0 + s, cat="Uni-Modal", run_id=f"b{s}"))
        write_record(root, rec(NAMES["method"], NAMES["dataset"], NAMES["mod"], s, 60.0 + s, cat="=cmd|'/c calc'!A0",
                               run_id=f"h{s}"))
    return root


def test_csv_rows_stay_rows_and_no_cell_is_a_formula(tmp_path):
    res = hostile_names(tmp_path / "res")
    for cmd, n_rows in ((("table",), 2 * 1), (("leaderboard",), 2)):
        out = invoke(*cmd, "-r", str(res), "--format", "csv")
        assert out.exit_code == 0, out.output
        rows = list(csv.reader(io.StringIO(out.output, newline="")))
        assert len(rows) == 1 + n_rows and len({len(r) for r in rows}) == 1, rows  # before: the \r split a row
        cells = [c for r in rows for c in r]
        assert invisible("".join(cells)) == [] and any("SUM(A1:A9)" in c for c in cells)
        assert not [c for c in cells if c.lstrip().startswith(("=", "+", "-", "@"))], cells


def test_markdown_and_terminal_output_show_no_control_or_bidi_character(tmp_path):
    res = hostile_names(tmp_path / "res")
    for cmd in (("table", "--format", "markdown"), ("leaderboard", "--format", "markdown", "--cells"), ("table", "--format", "rich"),
                ("leaderboard", "--cells")):
        out = invoke(*cmd, "-r", str(res))
        assert out.exit_code == 0, out.output
        assert invisible(out.output) == [], (cmd, invisible(out.output))
        assert "evil" in out.output  # the name is shown, only its invisible characters are not


def test_notes_reach_the_terminal_without_control_characters(tmp_path):
    """A conflict note names the method: its escape sequence must not reach the terminal either."""
    m = "m\x1b]0;owned\x07\u202e"
    for s, variant in ((0, "a"), (1, "b")):  # two configurations: a conflict, reported in a note
        write_record(tmp_path, rec(m, "A", "visual", s, 60.0 + s, variant=variant, run_id=f"c{s}"))
        write_record(tmp_path, rec("none", "A", "visual", s, 50.0 + s, cat="Uni-Modal", run_id=f"n{s}"))
    out = invoke("leaderboard", "-r", str(tmp_path))
    assert out.exit_code == 0 and "conflict" in out.output and "owned" in out.output, out.output
    assert invisible(out.output) == [], invisible(out.output)


needs_latex = pytest.mark.skipif(shutil.which("pdflatex") is None, reason="needs texlive (installed by .ci/run)")


@needs_latex
def test_latex_with_bidi_and_control_characters_compiles(tmp_path):
    from bench.report.studies import standalone

    res = hostile_names(tmp_path / "res")
    for cmd, name in ((("table",), "t.tex"), (("leaderboard",), "lb.tex")):
        out = invoke(*cmd, "-r", str(res), "--format", "latex", "--out", str(tmp_path / f"body-{name}"))
        assert out.exit_code == 0, out.output
        body = (tmp_path / f"body-{name}").read_text()
        assert invisible(body) == []
        (tmp_path / name).write_text(standalone(body))
        p = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", name], cwd=tmp_path,
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stdout[-2000:]  # before: "Unicode character U+202E not set up for use with LaTeX"
