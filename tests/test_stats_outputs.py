"""The statistics as the tables, the leaderboard and its page show them: marks that do not depend
on row order, at-chance flags, intervals and p-values in CSV/JSON, the page's legend and panels."""

from __future__ import annotations

import itertools
import json
import random

import pytest
from typer.testing import CliRunner

from bench.cli import app
from bench.records.store import load_records, load_results, write_record
from bench.report.leaderboard import build_leaderboard
from bench.report.table_stats import mark_chance, mark_tied, mark_vs_baseline
from bench.report.tables import build_comparison, to_csv, to_json, to_latex, to_markdown
from test_tables_latex import rec

cli = CliRunner()

# mfeat-fac-like saturated column: three rows share 98.50 exactly; dkd is one sample behind
SATURATED = {"none": [98.5, 98.5, 98.5], "logit": [98.25, 98.75, 98.5], "dkd": [98.25, 98.25, 98.25],
             "fdcmkd": [98.0, 98.5, 99.0]}
NOISY = {"none": [50.0, 52.0, 51.0], "logit": [58.0, 61.0, 60.0], "dkd": [50.9, 52.2, 51.1],
         "fdcmkd": [57.5, 61.5, 59.5]}


@pytest.fixture
def results(tmp_path):
    r = tmp_path / "res"
    for ds, cell in (("fac", SATURATED), ("toy", NOISY)):
        for m, vals in cell.items():
            for s, v in enumerate(vals):
                write_record(r, {**rec(m, ds, "visual", s, v), "num_classes": 10})
    return r


def marked(df, methods):
    comp = build_comparison(df, methods=methods)
    mark_chance(comp, df)
    mark_tied(comp)
    mark_vs_baseline(comp)
    return comp


def test_marks_do_not_depend_on_the_order_of_rows(results):
    df = load_results(results)
    ref = marked(df, list(SATURATED))
    fac = ("fac", "visual")
    # the best of the saturated column: the higher unrounded mean, then the name; never the first row
    assert {m for m in SATURATED if ref.marks.get((m, fac)) == "best"} == {"none", "logit", "fdcmkd"}
    assert ref.detail[("dkd", fac)]["vs_best"].seeds == [0, 1, 2]
    rng = random.Random(0)
    for perm in itertools.permutations(SATURATED):
        shuffled = df.sample(frac=1.0, random_state=rng.randrange(10**6)).reset_index(drop=True)
        comp = marked(shuffled, list(perm))
        assert comp.marks == ref.marks and comp.tied == ref.tied and comp.vs_baseline == ref.vs_baseline, perm
        assert {k: v["vs_best"].p_adj for k, v in comp.detail.items() if "vs_best" in v} == {
            k: v["vs_best"].p_adj for k, v in ref.detail.items() if "vs_best" in v}


def test_leaderboard_best_and_near_best_do_not_depend_on_record_order(results):
    recs = load_records(results)
    ref = build_leaderboard(recs)
    assert ref.tied_best[("fac", "visual")][0] == "fdcmkd"  # 98.5 = 98.5 = 98.5 = 98.5: then the name
    for seed in range(6):
        shuffled = list(recs)
        random.Random(seed).shuffle(shuffled)
        lb = build_leaderboard(shuffled)
        assert lb.tied_best == ref.tied_best and {k: v["verdict"] for k, v in lb.verdicts.items()} == {
            k: v["verdict"] for k, v in ref.verdicts.items()}


def test_at_chance_is_flagged_not_ranked_last_in_silence(tmp_path):
    r = tmp_path / "res"
    for m, vals in {"none": [30.0, 32.0, 31.0], "feat": [9.0, 11.5, 10.2], "logit": [35.0, 36.0, 34.0]}.items():
        for s, v in enumerate(vals):
            write_record(r, {**rec(m, "toy", "visual", s, v), "num_classes": 10})
    md = cli.invoke(app, ["table", "-r", str(r), "--format", "markdown", "--std"]).output
    row = {ln.split("|")[1].strip(): ln for ln in md.splitlines() if ln.startswith("| ")}
    assert "◦" in row["Feat"] and "◦" not in row["w/o KD"] + row["Logit"]
    assert "◦ = at chance: the 95 % t-interval of the seed mean contains chance (100/num\\_classes: toy/visual 10.0)" in md
    tex = cli.invoke(app, ["table", "-r", str(r)]).output
    assert r"$^{\circ}$" in tex and "◦" not in tex


def test_csv_and_json_carry_intervals_p_values_and_verdicts(results):
    df = load_results(results)
    comp = marked(df, None)
    csv_text = to_csv(comp)
    head = csv_text.splitlines()[0].split(",")
    for col in ("ci_low", "ci_high", "at_chance", "vs_baseline_verdict", "vs_baseline_diff_ci_low", "vs_baseline_p",
                "vs_baseline_p_adj", "vs_best_verdict", "vs_best_p_adj"):
        assert col in head, col
    data = to_json(comp)
    cell = next(c for c in data["cells"] if c["method"] == "logit" and c["dataset"] == "toy")
    from scipy.stats import ttest_rel

    assert cell["vs_baseline"]["p"] == pytest.approx(ttest_rel(NOISY["logit"], NOISY["none"]).pvalue)
    assert cell["vs_baseline"]["verdict"] == "better" and cell["vs_baseline"]["ci"][0] > 0
    assert cell["ci_low"] < cell["mean"] < cell["ci_high"]
    assert any("Holm-corrected" in x for x in data["rules"])
    r = cli.invoke(app, ["table", "-r", str(results), "--format", "json", "--vs-baseline", "--rope", "5"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    dkd = next(c for c in out["cells"] if c["method"] == "dkd" and c["dataset"] == "toy")
    assert dkd["vs_baseline"]["verdict"] == "equivalent"  # its 90 % interval [-0.34, +1.14] is well inside +-5


def test_intervals_column_is_optional_and_latex_stays_compact(results):
    df = load_results(results)
    comp = marked(df, None)
    plain, wide = to_markdown(comp, std=True), to_markdown(comp, std=True, intervals=True)
    assert "95 % CI" not in plain.splitlines()[0] and wide.splitlines()[0].count("95 % CI") == 2
    tex = to_latex(comp, std=True, intervals=True)
    assert r"\multicolumn{2}{c}{fac}" in tex and "95 \\% CI" in tex
    assert "[" not in to_latex(comp, std=True).split(r"\midrule", 1)[1]  # the compact table: mean ± std and marks


def test_page_shows_legend_intervals_and_verdicts(results, tmp_path):
    site = tmp_path / "site"
    r = cli.invoke(app, ["leaderboard", "-r", str(results), "--format", "html", "--out", str(site)])
    assert r.exit_code == 0, r.output
    page = (site / "index.html").read_text()
    assert "Legend" in page and "ROPE of ±0.5 points" in page and "Holm-corrected over the 6 comparisons" in page
    assert page.count('<img class="bar"') >= 4 and "Aggregates with 95 % intervals" in page
    assert 'class="v v-better"' in page and "Performance profile" in page and (site / "profile.png").exists()
    import re

    assert "2 independent block(s)" in page and not re.search(r"\btie\b", page)


def test_page_panels_paint_in_headless_chromium(results, tmp_path):
    """The statistics as a reader sees them: Chromium loads the page (its CSP allows only data:
    images), the error-bar images decode and paint their points, and the verdict cells are there."""
    import re

    import numpy as np
    from PIL import Image
    from test_leaderboard import _browser, chromium

    if chromium() is None:
        pytest.skip("needs Debian chromium (installed by .ci/run)")
    site = tmp_path / "site"
    r = cli.invoke(app, ["leaderboard", "-r", str(results), "--format", "html", "--out", str(site)])
    assert r.exit_code == 0, r.output
    url = (site / "index.html").resolve().as_uri()
    dom = _browser(["--virtual-time-budget=3000", "--dump-dom", url])
    assert dom.returncode == 0, dom.stderr[-500:]
    bars = re.findall(r'<img class="bar" alt="([^"]+)"', dom.stdout)
    assert len(bars) >= 4 and all(re.fullmatch(r"-?[\d.]+ \[-?[\d.]+, -?[\d.]+\]", b) for b in bars), bars
    assert re.search(r'class="v v-better"', dom.stdout) and "inconclusive" in dom.stdout
    shot = tmp_path / "page.png"
    o = _browser(["--window-size=1280,3200", "--hide-scrollbars", f"--screenshot={shot}", url])
    assert o.returncode == 0, o.stderr[-500:]
    img = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    points = int((np.abs(img - [29, 78, 216]).sum(axis=2) < 40).sum())  # the bars' points (#1d4ed8)
    assert points > 4 * 20, points  # each painted point is a disc of ~30 pixels
