"""Leaderboard statistics against a hand computation on a fabricated results folder."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from bench.api.errors import BenchError
from bench.records.store import collect, load_records, write_record
from bench.report.leaderboard import build_leaderboard, cd_diagram

CATS = {"none": "Uni-Modal", "m1": "Logits", "m2": "Feature", "m3": "Cross-Modal", "m4": "Logits"}
CELLS = {("A", "visual"): "a2v", ("A", "audio"): "v2a", ("B", "visual"): "t2v"}
VALUES = {
    ("A", "visual"): {"none": [50, 51, 52], "m1": [60, 61, 62], "m2": [50, 52, 54], "m3": [40, 41, 42]},
    ("A", "audio"): {"none": [80, 80.5, 81], "m1": [80, 81, 82], "m2": [90, 91, 92], "m3": [70, 71, 72]},
    ("B", "visual"): {"none": [30, 31, 32], "m1": [40, 41, 42], "m3": [31, 31, 31]},  # m2 missing
}


def fake(method: str, ds: str, mod: str, seed: int, value: float, group: str = "g", commit: str = "abc1234") -> dict:
    """A record whose identity holds together (run id, config and group hash; ``bench collect``
    checks them); ``group`` stands for a setting that makes another configuration."""
    from bench.records.provenance import stable_hash

    d = CELLS[(ds, mod)]
    cfg = {"dataset": {"dataset": ds, "params": {"variant": group}}, "teacher_modality": "x", "student_modality": mod,
           "method": method, "method_params": {}, "train": {"epochs": 3}, "seed": seed}
    ch = stable_hash(cfg)
    return {
        "schema": 1, "run_id": f"{ds}_{d}_{method}_s{seed}_{ch[:8]}", "status": "ok",
        "method": method, "method_category": CATS[method], "method_source": "builtin", "method_source_hash": None,
        "dataset": ds, "task": "classification", "teacher_modality": "x", "student_modality": mod, "direction": d,
        "seed": seed, "metric": "top1", "config": cfg,
        "config_hash": ch, "group_hash": stable_hash({k: v for k, v in cfg.items() if k != "seed"}),
        "best_metric": value, "final_metric": value,
        "history": [{"epoch": 1, "test_metric": value}], "git_commit": commit, "selected_epoch": 1,
    }


def make_results(root: Path) -> Path:
    for (ds, mod), per in VALUES.items():
        for m, vals in per.items():
            for s, v in enumerate(vals):
                write_record(root, fake(m, ds, mod, s, v))
    # m4: two configurations recorded for one cell -> a conflict, never averaged
    write_record(root, fake("m4", "A", "visual", 0, 70, group="g1"))
    write_record(root, fake("m4", "A", "visual", 1, 20, group="g2"))
    return root


def test_ranks_gains_wtl_negative_transfer(tmp_path):
    lb = build_leaderboard(load_records(make_results(tmp_path / "res")), rank_cells="own")
    rows = {r["method"]: r for r in lb.rows}
    assert rows["m1"]["mean_rank"] == pytest.approx((1 + 2 + 1) / 3)
    assert rows["m2"]["mean_rank"] == pytest.approx((2 + 1) / 2)
    assert rows["none"]["mean_rank"] == pytest.approx((3 + 3 + 2.5) / 3)  # tie with m3 on B/visual
    assert rows["m3"]["mean_rank"] == pytest.approx((4 + 4 + 2.5) / 3)
    assert [r["method"] for r in lb.rows][:4] == ["m1", "m2", "none", "m3"]
    assert rows["m1"]["mean_gain"] == pytest.approx((10 + 0.5 + 10) / 3)
    assert rows["m2"]["mean_gain"] == pytest.approx((1 + 10.5) / 2)
    assert rows["m3"]["mean_gain"] == pytest.approx((-10 - 9.5 + 0) / 3)
    # paired on seeds: not significant is "inconclusive" (it used to be printed "tie")
    def bei(m):
        return tuple(rows[m][v] for v in ("better", "equivalent", "inconclusive", "worse"))

    assert (bei("m1"), bei("m2"), bei("m3")) == ((2, 0, 1, 0), (1, 0, 1, 0), (0, 0, 1, 2))
    assert [rows[m]["negative_transfer"] for m in ("m1", "m2", "m3")] == [0, 0, 2]
    assert (rows["m2"]["cells"], rows["m2"]["grid"]) == (2, 3) and rows["m1"]["coverage"] == 1.0
    assert rows["m4"]["cells"] == 0 and any("m4" in n and "conflict" in n for n in lb.notes)
    # the per-cell p-value is scipy's paired t-test on the seed-matched values
    from scipy.stats import ttest_rel

    p = ttest_rel([50, 52, 54], [50, 51, 52]).pvalue
    assert lb.verdicts[("m2", ("A", "visual"))]["p"] == pytest.approx(p)
    assert lb.verdicts[("m2", ("A", "visual"))]["ci"] == pytest.approx([1 - 4.302653 / 3 ** 0.5, 1 + 4.302653 / 3 ** 0.5])
    # statistically tied with the best on A/visual: nobody (m1 is clearly ahead)
    assert lb.tied_best[("A", "visual")] == ["m1"]


def test_friedman_iman_davenport_and_cd_diagram_on_ten_blocks(tmp_path, monkeypatch):
    """Ten datasets (independent blocks): Friedman as scipy (no ties here), the Iman-Davenport F,
    Nemenyi CD, the diagram; on the three-cell fixture (2 blocks) the same tests are refused."""
    from scipy.stats import f as f_dist
    from scipy.stats import friedmanchisquare, studentized_range

    root = tmp_path / "ten"
    base = {"none": 50.0, "m1": 60.0, "m3": 40.0}
    for i in range(10):
        monkeypatch.setitem(CELLS, (f"D{i}", "visual"), "a2v")
        for m, v in base.items():
            for s in range(3):
                write_record(root, fake(m, f"D{i}", "visual", s, v + {"none": 0, "m1": -4, "m3": 4}[m] * (i % 4) + 0.3 * s))
    lb = build_leaderboard(load_records(root))
    f = lb.friedman
    assert f["methods"] == ["none", "m1", "m3"] and f["n_blocks"] == 10
    mat = np.array(f["matrix"])
    chi = friedmanchisquare(*mat.T).statistic
    assert f["statistic"] == pytest.approx(chi)
    assert f["F"] == pytest.approx(9 * chi / (10 * 2 - chi)) and f["pvalue"] == pytest.approx(f_dist.sf(f["F"], 2, 18))
    assert f["cd"] == pytest.approx(studentized_range.ppf(0.95, 3, np.inf) / np.sqrt(2) * np.sqrt(3 * 4 / 60))
    assert set(f["vs_control"]) == {"m1", "m3"}
    paths = cd_diagram(lb, tmp_path / "cd")
    assert [p.suffix for p in paths] == [".png", ".pdf"]
    from PIL import Image

    im = Image.open(paths[0])
    assert im.size[0] > 300 and np.asarray(im.convert("L")).std() > 5  # a drawn, non-blank image
    assert "Iman-Davenport F=" in lb.stats_statement() and "alpha=0.05" in lb.stats_statement()
    few = build_leaderboard(load_records(make_results(tmp_path / "res")))
    assert few.friedman["statistic"] is None and "2 independent block(s)" in few.friedman["refused"]
    assert cd_diagram(few, tmp_path / "cd2") == [] and "Demsar 2006" in few.stats_statement()


def test_refusals(tmp_path):
    root = tmp_path / "res"
    for m in ("none", "m1"):
        write_record(root, fake(m, "A", "visual", 0, 50 if m == "none" else 60))
    lb = build_leaderboard(load_records(root))
    assert lb.friedman["statistic"] is None and "refused" in lb.friedman["refused"]
    assert cd_diagram(lb, tmp_path / "cd") == []
    assert lb.rows[0]["untested"] == 1  # one seed: no significance test, said so
    with pytest.raises(BenchError, match="no ok records"):
        build_leaderboard([])
    with pytest.raises(BenchError, match="correction"):
        build_leaderboard(load_records(root), correction="sidak")


def test_holm_correction_changes_verdicts(tmp_path):
    recs = load_records(make_results(tmp_path / "res"))
    raw = build_leaderboard(recs)
    holm = build_leaderboard(recs, correction="holm")
    from statsmodels.stats.multitest import multipletests

    ps = [v["p"] for v in raw.verdicts.values() if v["p"] is not None]
    adj = multipletests(ps, method="holm")[1]
    assert sorted(v["p_adj"] for v in holm.verdicts.values() if v["p"] is not None) == pytest.approx(sorted(adj))


def test_collect_merges_dedups_and_reports_conflicts(tmp_path):
    a = make_results(tmp_path / "a")
    b = tmp_path / "b"
    shutil.copytree(a, b)
    rec = json.loads(next((b / "records").glob("A_a2v_m1_s0_*.json")).read_text())
    dest = tmp_path / "merged"
    r1 = collect([a], dest)
    assert len(r1["copied"]) == len(list((a / "records").glob("*.json")))
    r2 = collect([a, b], dest)  # idempotent: everything is a duplicate
    assert r2["copied"] == [] and r2["conflict"] == [] and len(r2["duplicate"]) == 2 * len(r1["copied"])
    c = tmp_path / "c"
    rec["best_metric"] = 99.0
    write_record(c, rec)
    r3 = collect([c], dest)
    assert len(r3["conflict"]) == 1 and rec["run_id"] in r3["conflict"][0] and "99.0" in r3["conflict"][0]
    kept = json.loads((dest / "records" / f"{rec['run_id']}.json").read_text())
    assert kept["best_metric"] == 60  # the destination's record is kept, not silently replaced


def test_cli_formats(tmp_path):
    from typer.testing import CliRunner

    from bench.cli import app

    res = make_results(tmp_path / "res")
    cli = CliRunner()
    r = cli.invoke(app, ["leaderboard", "-r", str(res), "--format", "json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert [x["method"] for x in data["rows"]][:2] == ["m1", "m2"]
    r = cli.invoke(app, ["leaderboard", "-r", str(res), "--format", "markdown", "--cells"])
    # default rule: ranked on the 2 cells every ranked method has (m2 lacks B/visual)
    assert "| 1.50 | 2/3 | m1 |" in r.output and "paired t-test" in r.output and "61.00±1.00 (best)" in r.output
    assert "Holm-corrected" in r.output and "ROPE of ±0.5" in r.output and "W/T/L" not in r.output
    assert "left out of the ranking: B/visual (missing: m2)" in r.output
    r = cli.invoke(app, ["leaderboard", "-r", str(res), "--format", "markdown", "--rank-cells", "own"])
    assert "| 1.33 | 3/3 | m1 |" in r.output and "own-cells rule" in r.output
    r = cli.invoke(app, ["leaderboard", "-r", str(res), "--format", "csv"])
    assert r.output.splitlines()[1].startswith("m1,Logits,1.5,")
    r = cli.invoke(app, ["leaderboard", "-r", str(res), "--format", "latex", "--out", str(tmp_path / "lb.tex")])
    assert r.exit_code == 0 and "\\toprule" in (tmp_path / "lb.tex").read_text()
    r = cli.invoke(app, ["collect", "--from", str(res), "-r", str(tmp_path / "m")])
    assert r.exit_code == 0 and "copied" in r.output


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def _browser(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                           "--allow-file-access-from-files", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(chromium() is None, reason="needs Debian chromium (installed by .ci/run)")
def test_html_page_in_headless_chromium(tmp_path):
    import re

    from typer.testing import CliRunner

    from bench.cli import app

    res = make_results(tmp_path / "res")
    site = tmp_path / "site"
    r = CliRunner().invoke(app, ["leaderboard", "-r", str(res), "--format", "html", "--out", str(site)])
    assert r.exit_code == 0, r.output
    page = (site / "index.html").read_text()
    assert "http://" not in page and "https://" not in page  # no CDN: works offline
    url = (site / "index.html").resolve().as_uri()

    def rows(fragment: str) -> list[str]:
        out = _browser(["--virtual-time-budget=3000", "--dump-dom", url + fragment])
        assert out.returncode == 0, out.stderr[-500:]
        body = out.stdout.split('<table id="board"', 1)[1].split("</table>", 1)[0]
        return re.findall(r'<tr data-method="([^"]+)"', body)

    assert rows("") == ["m1", "m2", "none", "m3", "m4"]  # default: mean rank ascending
    assert rows("#sort=gain&dir=asc") == ["m3", "m2", "m1", "none", "m4"]  # nulls (baseline, no cells) last
    assert rows("#sort=method&dir=desc")[0] == "none"
    shot = site / "leaderboard.png"
    out = _browser(["--window-size=1280,1000", "--hide-scrollbars", f"--screenshot={shot}", url])
    assert out.returncode == 0 and shot.stat().st_size > 10_000
    from PIL import Image

    assert np.asarray(Image.open(shot).convert("L")).std() > 10


PLUGIN_SRC = '''
import torch.nn.functional as F
from bench.api import Method
from bench.api import register_method

@register_method("{name}")
class Plug(Method):
    """A researcher's own KD method: soft-label KL at T=2 (a plug-in, not part of cmkd-bench)."""
    category = "Logits"
    description = "plug-in test method"

    def loss(self, s, t, y, epoch):
        kd = F.kl_div(F.log_softmax(s.logits / 2, 1), F.softmax(t.logits / 2, 1), reduction="batchmean") * 4
        return {{"ce": self.task_loss(s.logits, y), "kd": 0.5 * kd}}
'''


def test_plugins_entry_point_and_file_run_and_rank(tmp_path):
    """A method from an installed package's entry point and one from --plugin both run and rank."""
    import os
    import sys

    site = tmp_path / "site"
    pkg = site / "mykdpkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(PLUGIN_SRC.format(name="epkd"))
    # what `pip install` of a package declaring [project.entry-points."cmkd_bench.methods"] leaves on sys.path
    dist = site / "mykdpkg-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: mykdpkg\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[cmkd_bench.methods]\nepkd = mykdpkg\n")
    plug = tmp_path / "my_method.py"
    plug.write_text(PLUGIN_SRC.format(name="filekd"))
    env = {**os.environ, "PYTHONPATH": str(site), "COLUMNS": "250"}
    res = tmp_path / "res"
    bench = [sys.executable, "-m", "bench.cli"]
    common = ["--datasets", "synthetic", "--directions", "a2v", "--epochs", "2", "--teacher-epochs", "2",
              "--results", str(res), "--set", "synthetic.n_train=480", "--set", "synthetic.n_test=180",
              "--set", "synthetic.width=8"]
    r = subprocess.run(bench + ["list", "methods"], env=env, capture_output=True, text=True)
    assert "entry-point:mykdpkg" in r.stdout, r.stdout + r.stderr
    r = subprocess.run(bench + ["run", "--methods", "none,epkd,filekd", "--plugin", str(plug)] + common,
                       env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    recs = {x["method"]: x for x in load_records(res)}
    assert recs["epkd"]["method_source"] == "entry-point:mykdpkg"
    assert recs["filekd"]["method_source"] == f"plugin:{plug.resolve()}" and len(recs["filekd"]["method_source_hash"]) == 16
    r = subprocess.run(bench + ["leaderboard", "-r", str(res), "--format", "json"], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert {x["method"] for x in json.loads(r.stdout)["rows"]} == {"none", "epkd", "filekd"}
    # a changed plug-in file is a different version: the leaderboard tells them apart by source hash
    plug.write_text(PLUGIN_SRC.format(name="filekd").replace("* 4", "* 4.0"))
    r = subprocess.run(bench + ["run", "--methods", "filekd", "--plugin", str(plug)] + common,
                       env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    lb = build_leaderboard(load_records(res))
    names = sorted(m for m in lb.methods if m.startswith("filekd"))
    assert len(names) == 2 and all("@" in n for n in names)
