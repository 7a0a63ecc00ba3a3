"""Issue #15's reporting pieces: better / worse / equivalent / inconclusive against w/o KD in every comparison output, the
default job's printed table, and the offline reproduction's outputs built from records."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from typer.testing import CliRunner

from bench.cli import app
from bench.records.store import load_results, write_record
from bench.report.table_stats import mark_tied, mark_vs_baseline
from bench.report.tables import build_comparison, to_latex, to_markdown, to_rich
from test_tables_latex import rec

cli = CliRunner()

# seeds per method on one cell: better, worse, inconclusive and single-seed against w/o KD
CELL = {"none": [50.0, 51.0, 52.0], "logit": [60.0, 61.0, 62.0], "feat": [40.0, 41.0, 42.0],
        "fdcmkd": [50.5, 52.5, 49.0], "dkd": [70.0]}


@pytest.fixture
def results(tmp_path):
    r = tmp_path / "res"
    for m, vals in CELL.items():
        for s, v in enumerate(vals):
            write_record(r, rec(m, "toy", "visual", s, v))
    return r


def test_vs_baseline_marks_better_worse_inconclusive_and_untested(results):
    df = load_results(results)
    comp = build_comparison(df)
    mark_vs_baseline(comp)
    col = ("toy", "visual")
    # not significant is "inconclusive" (it was printed "tie"): FD-CMKD's seeds move by +0.5, +1.5, -3.0
    assert {m: comp.vs_baseline.get((m, col)) for m in CELL} == {
        "none": None, "logit": "better", "feat": "worse", "fdcmkd": "inconclusive", "dkd": "untested"}
    assert "over the 3 tested cells" in comp.vs_rule and "Holm-corrected" in comp.vs_rule
    assert "ROPE of ±0.5" in comp.vs_rule and "tie" not in comp.vs_rule
    assert "seed(s) 1, 2 of w/o KD unmatched" in " ".join(comp.notes)  # DKD has seed 0 only: said, not dropped
    md = to_markdown(comp, std=True)
    row = {line.split("|")[1].strip(): line for line in md.splitlines() if line.startswith("| ")}
    assert "▲" in row["Logit"] and "▼" in row["Feat"] and not {"▲", "▼"} & set(row["FD-CMKD"] + row["DKD"])
    assert "significantly better/worse than w/o KD" in md
    tex = to_latex(comp, std=True)
    assert r"$^{\uparrow}$" in tex and r"$^{\downarrow}$" in tex and "▲" not in tex
    if shutil.which("pdflatex"):
        from bench.report.studies import standalone
        from bench.report.reproduce import compile_latex

        assert compile_latex(standalone(tex), results.parent / "t.pdf", None) is None


def test_correction_makes_the_test_stricter(tmp_path):
    r = tmp_path / "res"
    # a small but consistent gain: significant alone, not after Bonferroni over many tested cells
    for c in range(6):
        for s, (a, b) in enumerate([(50.0, 51.0), (50.4, 51.2), (49.8, 51.1)]):  # paired p = 0.019
            write_record(r, rec("none", f"d{c}", "visual", s, a))
            write_record(r, rec("logit", f"d{c}", "visual", s, b + (0 if c == 0 else 5)))
    df = load_results(r)
    plain, strict = build_comparison(df), build_comparison(df)
    mark_vs_baseline(plain, correction="none")
    mark_vs_baseline(strict, correction="bonferroni")
    assert plain.vs_baseline[("logit", ("d0", "visual"))] == "better"
    assert strict.vs_baseline[("logit", ("d0", "visual"))] == "inconclusive"
    assert strict.vs_baseline[("logit", ("d1", "visual"))] == "better"


def test_rich_table_of_the_default_job_shows_std_marks_and_verdicts(results):
    df = load_results(results)
    comp = build_comparison(df)
    mark_tied(comp)
    mark_vs_baseline(comp)
    from rich.console import Console

    con = Console(width=200, record=True)
    con.print(to_rich(comp))
    text = " ".join(con.export_text().split())
    assert "61.0 ± 1.0 (n=3) ▲" in text and "41.0 ± 1.0 (n=3) ▼" in text
    assert "significantly better/worse than w/o KD" in text and "not significantly different from the best" in text


def test_bench_table_vs_baseline_option(results):
    r = cli.invoke(app, ["table", "-r", str(results), "--format", "markdown", "--vs-baseline", "--std"])
    assert r.exit_code == 0, r.output
    assert "▲" in r.output and "▼" in r.output
    r = cli.invoke(app, ["table", "ablation", "-r", str(results), "--vs-baseline"])
    assert r.exit_code == 2 and "--vs-baseline applies to the comparison" in r.output
    r = cli.invoke(app, ["table", "-r", str(results), "--vs-baseline", "--correction", "sidak"])
    assert r.exit_code == 2 and "--correction 'sidak'" in r.output
    r = cli.invoke(app, ["table", "-r", str(results), "--vs-baseline", "--rope", "-1"])
    assert r.exit_code == 2 and "--rope -1" in r.output


def test_reproduce_offline_builds_every_output_from_a_real_grid(tmp_path, monkeypatch):
    """The offline reproduction at toy scale (one benchmark, one direction, 2 seeds, 1 epoch): the
    grid runs, and every output is built from its records (tables, studies, leaderboard page and
    its screenshot, protocol gap, unimodal accuracies); a second call runs nothing. The records say
    they ran one clean commit (the checkout the test runs in may be dirty, which bench reproduce
    would rightly refuse to publish: tests/test_provenance.py)."""
    import json

    monkeypatch.setattr("bench.train.run.code_state",
                        lambda path=None: {"commit": "0" * 40, "dirty": False, "diff_hash": None, "untracked": 0})

    from bench.launch.grid import pending
    from bench.launch.local import LocalExecutor
    from bench.report.reproduce import Benchmark, build_outputs, offline_specs

    tiny = (Benchmark("synthetic", "synthetic", {"synthetic": {"n_train": "240", "n_test": "120"}}),)
    res, out = tmp_path / "res", tmp_path / "docs"
    specs = offline_specs(res, seeds="0,1", device="cpu", epochs=1, teacher_epochs=1, benchmarks=tiny,
                          methods="none,logit,fdcmkd", directions="a2v")
    assert len(specs) == 3 * 2 + 16 * 2  # comparison + 16 study points (ablation 6, threshold 2, l1 x l2 8) per seed
    outcome = LocalExecutor().run(specs)
    assert not outcome.failed and pending(specs) == []
    summary = build_outputs(res, out, benchmarks=tiny, every_direction=False)  # the toy grid is a2v only
    for name in ("comparison.md", "comparison.tex", "comparison_vs_baseline.md", "ablation.md", "threshold.md",
                 "sensitivity.md", "leaderboard.md", "leaderboard/index.html", "protocol_gap.md", "unimodal.md",
                 "summary.json"):
        assert (out / name).exists(), name
    assert "▲" in (out / "comparison_vs_baseline.md").read_text() or "unmarked" in (out / "comparison_vs_baseline.md").read_text()
    gap = summary["protocol_gap"][0]
    assert gap["dataset"] == "synthetic" and gap["runs"] == 6 and gap["mean_gap"] >= 0  # best test epoch >= selected
    assert {r["modality"] for r in summary["unimodal"]} == {"visual"}
    assert json.loads((out / "summary.json").read_text())["friedman"]["n_cells"] == 1
    assert summary["provenance"]["mixed"] is False and (out / "records.jsonl.gz").exists()
    if shutil.which("pdflatex") and shutil.which("pdftoppm"):
        assert (out / "comparison.pdf").exists() and (out / "comparison.png").exists()
        assert (out / "sensitivity_heatmap.png").exists()
    if shutil.which("chromium"):
        assert (out / "leaderboard.png").stat().st_size > 10_000


def test_an_incomplete_benchmark_is_shown_apart_not_ranked():
    """A benchmark missing runs (here one seed of one method) is reported with what is missing;
    study variants (non-default parameters) neither fill nor open holes."""
    import pandas as pd

    from bench.report.reproduce import grid_coverage

    rows = []
    for d, mods in (("synthetic", ("audio", "visual")), ("avdigits", ("audio", "visual"))):
        for m in ("none", "logit"):
            for s in mods:
                for seed in (0, 1, 2):
                    if (d, m, s, seed) != ("avdigits", "logit", "visual", 2):
                        rows.append({"dataset": d, "method": m, "student_modality": s, "seed": seed,
                                     "method_params": {}})
    rows.append({"dataset": "avdigits", "method": "logit", "student_modality": "visual", "seed": 2,
                 "method_params": {"tau": 8.0}})  # a non-default variant does not count
    cov = grid_coverage(pd.DataFrame(rows))
    assert cov["synthetic"] == {"expected": 12, "done": 12, "missing": []}
    assert cov["avdigits"] == {"expected": 12, "done": 11, "missing": ["logit->visual seed 2"]}
    # a direction with no record at all is missing too when the dataset's modalities are given
    only_visual = pd.DataFrame([r for r in rows if r["dataset"] == "synthetic" or r["student_modality"] == "visual"])
    assert grid_coverage(only_visual)["avdigits"]["expected"] == 6
    cov = grid_coverage(only_visual, {"avdigits": ["audio", "visual"]})
    assert cov["avdigits"]["expected"] == 12 and cov["avdigits"]["done"] == 5
    assert "none->audio seed 0" in cov["avdigits"]["missing"]


def test_rendered_tables_are_cropped_to_their_content(tmp_path):
    from PIL import Image, ImageDraw

    from bench.report.reproduce import trim_margins

    page = Image.new("RGB", (1000, 1400), "white")
    ImageDraw.Draw(page).rectangle((300, 500, 599, 649), fill="black")  # the "table": 300 x 150 pixels
    png = tmp_path / "t.png"
    page.save(png)
    trim_margins(png, pad=10)
    with Image.open(png) as im:
        assert im.size == (320, 170) and im.getpixel((5, 5)) == (255, 255, 255) and im.getpixel((15, 15)) == (0, 0, 0)


def test_tie_marks_survive_a_best_shared_at_the_printed_precision(tmp_path):
    """Two methods equal at one decimal share the bold; the tie test still runs against the higher
    unrounded mean, so a third method within noise gets its dagger (it used to lose it)."""
    r = tmp_path / "res"
    cell = {"logit": [77.0, 77.3, 77.7], "fdcmkd": [77.0, 77.3, 77.65], "dkd": [77.0, 77.1, 77.1],
            "none": [60.0, 60.1, 60.2]}
    for m, vals in cell.items():
        for s, v in enumerate(vals):
            write_record(r, rec(m, "toy", "visual", s, v))
    df = load_results(r)
    comp = build_comparison(df)
    col = ("toy", "visual")
    assert comp.marks[("logit", col)] == comp.marks[("fdcmkd", col)] == "best"  # 77.3 and 77.3 printed
    mark_tied(comp)
    assert ("dkd", col) in comp.tied and ("none", col) not in comp.tied
    assert ("logit", col) not in comp.tied and ("fdcmkd", col) not in comp.tied  # bold already says it
