"""Issue #28: the command that rebuilds docs/results from the committed records reproduces it byte
for byte. A toy grid is built four times (three output folders, one of them twice, the second time
from its own compact records file, in place; one build in another process with another hash seed,
one after a library changed matplotlib's global style): every file must come out with the same
bytes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {"synthetic": {"n_train": "240", "n_test": "120"}}


def files(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` by its relative path, with its bytes."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def differing(a: dict[str, bytes], b: dict[str, bytes]) -> list[str]:
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


def test_rebuilding_the_outputs_gives_the_same_bytes(tmp_path, monkeypatch):
    monkeypatch.setattr("bench.train.run.code_state",
                        lambda path=None: {"commit": "0" * 40, "dirty": False, "diff_hash": None, "untracked": 0})
    from bench.launch.local import LocalExecutor
    from bench.report.reproduce import Benchmark, build_outputs, offline_specs

    tiny = (Benchmark("synthetic", "synthetic", TINY),)
    res, a, b = tmp_path / "res", tmp_path / "a", tmp_path / "b"
    specs = offline_specs(res, seeds="0,1", device="cpu", epochs=1, teacher_epochs=1, benchmarks=tiny,
                          methods="none,logit,fdcmkd", directions="a2v")
    assert not LocalExecutor().run(specs).failed

    build_outputs(res, a, benchmarks=tiny, every_direction=False, log=lambda s: None)
    first = files(a)
    # the reading is the reading of the summary beside it: every number comes from summary.json
    from bench.report.reading import reading_markdown

    assert first["reading.md"].decode() == reading_markdown(json.loads(first["summary.json"]))
    # another process with another string hash seed: set and dict orders built from names differ
    script = ("import sys; from pathlib import Path; from bench.report.reproduce import Benchmark, build_outputs; "
              f"build_outputs(Path(sys.argv[1]), Path(sys.argv[2]), benchmarks=(Benchmark('synthetic', 'synthetic', {TINY!r}),), "
              "every_direction=False, log=lambda s: None)")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    subprocess.run([sys.executable, "-c", script, str(res), str(b)], check=True, env=env, cwd=tmp_path, timeout=300)
    assert differing(first, files(b)) == []

    # in this process after a library changed matplotlib's process-wide style (optuna's plot
    # functions call plt.style.use("ggplot"); `bench tune` draws them): the figures come out the same,
    # and the caller's style is left as it was
    import matplotlib
    import matplotlib.style

    c = tmp_path / "c"
    with matplotlib.rc_context():
        matplotlib.style.use("ggplot")
        ggplot = dict(matplotlib.rcParams)
        build_outputs(res, c, benchmarks=tiny, every_direction=False, log=lambda s: None)
        assert dict(matplotlib.rcParams) == ggplot
    assert differing(first, files(c)) == []

    # in place, from the compact file the first build wrote: the published folder rebuilt from its records
    compact = a / "records.jsonl.gz"
    summary = build_outputs(compact, a, benchmarks=tiny, every_direction=False, log=lambda s: None)
    again = files(a)
    assert summary["results"] == str(compact)  # the -r given, as given: the one file that names it
    assert differing(first, again) == ["summary.json"]
    s1, s2 = json.loads(first["summary.json"]), json.loads(again["summary.json"])
    assert s1.pop("results") == str(res) and s2.pop("results") == str(compact) and s1 == s2

    for name in ("comparison.md", "comparison.tex", "leaderboard/index.html", "records.jsonl.gz", "summary.json"):
        assert name in first, name
    if shutil.which("pdflatex") and shutil.which("pdftoppm"):
        for name in ("comparison.pdf", "comparison.png", "sensitivity.pdf", "sensitivity_heatmap.pdf",
                     "sensitivity_heatmap.png", "leaderboard/profile.pdf"):
            assert name in first, name
    if shutil.which("chromium"):
        assert "leaderboard.png" in first
    assert not any(str(tmp_path).encode() in v for k, v in first.items() if k != "summary.json")


def test_a_saved_figure_carries_no_time_or_version():
    """Matplotlib stamps a PDF with the clock's time and both formats with its version; neither
    may be in a published figure (the same figure would differ by them alone)."""
    import matplotlib

    from bench.report.figures import pyplot, save_figure

    def saved(base: Path) -> dict[str, bytes]:
        fig, ax = pyplot().subplots(figsize=(2, 2), dpi=50)
        ax.plot([0, 1], [1, 0])
        return {p.suffix: p.read_bytes() for p in save_figure(fig, base)}

    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = saved(Path(tmp) / "f")
    assert set(out) == {".png", ".pdf"}
    assert b"CreationDate" not in out[".pdf"] and matplotlib.__version__.encode() not in out[".pdf"]
    assert b"Software" not in out[".png"] and matplotlib.__version__.encode() not in out[".png"]


def test_the_pdfs_are_dated_by_the_newest_record(tmp_path):
    from bench.report.reproduce import latex_env, source_date_epoch

    recs = [{"finished_at": "2026-01-02T03:04:05+00:00"}, {"finished_at": "2026-01-02T03:04:06.9+00:00"},
            {"finished_at": None}, {"finished_at": "2026-01-02T04:04:05"}]  # a naive time is read as UTC
    assert source_date_epoch(recs) == 1767326645
    assert source_date_epoch([{"finished_at": "garbage"}]) is None
    env = latex_env(1767326645)
    assert env["SOURCE_DATE_EPOCH"] == "1767326645" and env["FORCE_SOURCE_DATE"] == "1"
    if shutil.which("pdflatex"):
        from bench.report.reproduce import compile_latex
        from bench.report.studies import standalone

        pdfs = []
        for i in range(2):
            (tmp_path / str(i)).mkdir()
            assert compile_latex(standalone(r"\begin{tabular}{c}x\end{tabular}"), tmp_path / str(i) / "t.pdf", None,
                                 1767326645) is None
            pdfs.append((tmp_path / str(i) / "t.pdf").read_bytes())
        assert pdfs[0] == pdfs[1] and b"D:20260102" in pdfs[0]


def test_a_records_file_rebuilds_outputs_but_runs_nothing(tmp_path):
    """-r FILE is for --outputs-only: the grid cannot write its runs into a compact records file."""
    from typer.testing import CliRunner

    from bench.cli import app
    from bench.records.compact import write_compact

    compact = write_compact([], tmp_path / "records.jsonl.gz")
    r = CliRunner().invoke(app, ["reproduce", "offline", "-r", str(compact), "-o", str(tmp_path / "out"),
                                 "--parts", "main"])
    assert r.exit_code != 0 and "add --outputs-only" in r.output
    assert compact.read_bytes() == write_compact([], tmp_path / "again.jsonl.gz").read_bytes()
    assert not (tmp_path / "out").exists()



def test_the_cd_diagram_draws_its_crossbars_left_to_right(monkeypatch, tmp_path):
    """scikit-posthocs draws a crossbar through a set of names, in an order that the process's
    string hash seed changes, and so do the saved bytes: cd_diagram puts the points in rank order."""
    from types import SimpleNamespace

    import bench.report.figures as figures
    from bench.report.leaderboard import cd_diagram

    names = ["none", "logit", "feat", "dkd", "fdcmkd", "crd", "nkd", "ofd"]
    p = [[1.0] * len(names) for _ in names]  # the Nemenyi p matrix in the methods' order
    p[0][-1] = p[-1][0] = 0.001  # all alike but the ends: two crossbars of seven names
    lb = SimpleNamespace(alpha=0.05, method_label=str.upper,
                         friedman={"statistic": 3.0, "methods": names, "avg_ranks": {m: 1.0 + 0.5 * i for i, m in enumerate(names)},
                                   "nemenyi_p": p, "n_blocks": 10, "cd": 1.5})
    seen = []
    monkeypatch.setattr(figures, "save_figure", lambda fig, base: seen.append(fig) or [])
    cd_diagram(lb, tmp_path / "cd")
    bars = [ln.get_xdata() for ln in seen[0].axes[0].lines if len(ln.get_xdata()) > 2 and len(set(ln.get_ydata())) == 1]
    assert sorted(len(x) for x in bars) == [7, 7]
    assert all(list(x) == sorted(x) for x in bars)
    figures.pyplot().close(seen[0])
