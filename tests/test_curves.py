"""Training curves from the records: the seed statistics, `bench curves` (PNG + PDF, what the
legend says, the selection options), and the curves in the HTML leaderboard (headless Chromium)."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny
from test_leaderboard import _browser, chromium
from typer.testing import CliRunner

from bench.cli import app
from bench.records.store import load_records, write_record
from bench.report.curves import select, series

CATS = {"none": "Uni-Modal", "logit": "Logits", "fdcmkd": "Cross-Modal"}


def rec(method: str, seed: int, test: list[float], ds: str = "A", direction: str = "a2v", terms: dict | None = None,
        params: dict | None = None) -> dict:
    """A minimal ok record whose history has known numbers."""
    n = len(test)
    terms = terms or {"ce": [1.0 / (e + 1 + seed) for e in range(n)]}
    hist = [{"epoch": e + 1, "test_metric": test[e], "val_metric": test[e] - 1, "lr": 0.1, "train_loss":
             sum(v[e] for v in terms.values()), "terms": {k: v[e] for k, v in terms.items()}} for e in range(n)]
    sel = int(np.argmax([h["val_metric"] for h in hist])) + 1
    ph = repr(sorted((params or {}).items()))
    return {
        "schema": 1, "run_id": f"{ds}_{direction}_{re.sub(r'[^A-Za-z0-9]', 'x', method)}_s{seed}_{abs(hash(ph)) % 10**6}",
        "status": "ok", "method": method, "method_category": CATS.get(method, "Logits"), "method_source": "builtin",
        "method_source_hash": None, "dataset": ds, "task": "classification", "teacher_modality": "audio",
        "student_modality": "visual", "direction": direction, "seed": seed, "metric": "top1",
        "config": {"method_params": params or {}, "train": {"epochs": n}, "dataset": {"params": {}}},
        "config_hash": f"{method}-{ds}-{direction}-{seed}-{ph}", "group_hash": f"{method}-{ds}-{direction}-{ph}",
        "best_metric": hist[sel - 1]["test_metric"], "selected_epoch": sel, "final_metric": test[-1],
        "reference_best_metric": max(test), "reference_best_epoch": int(np.argmax(test)) + 1, "history": hist,
        "teacher": {"modality": "audio", "test_metric": 80.0 + seed},
    }


def test_series_is_the_mean_and_sample_std_over_seeds():
    rs = [rec("logit", 0, [10, 20, 30]), rec("logit", 1, [12, 22, 33]), rec("logit", 2, [14, 24])]  # seed 2: 2 epochs
    s = series(rs, "test_metric")
    assert s.epochs.tolist() == [1, 2, 3] and s.n.tolist() == [3, 3, 2]
    assert s.mean.tolist() == pytest.approx([12, 22, 31.5])
    assert s.std.tolist() == pytest.approx([2.0, 2.0, np.std([30, 33], ddof=1)])
    ce = series(rs, "loss/ce")
    assert ce.mean[0] == pytest.approx(np.mean([1 / 1, 1 / 2, 1 / 3]))
    one = series(rs[:1], "val_metric")
    assert one.mean.tolist() == [9, 19, 29] and np.isnan(one.std).all()  # no band from one seed


def test_selection_prefers_defaults_and_refuses_to_average_configurations(tmp_path):
    rs = [rec("logit", s, [10, 20]) for s in range(2)] + [rec("logit", 0, [50, 60], params={"tau": 99.0})]
    figs = select(rs)
    (fig,) = figs
    (g,) = fig.groups
    assert len(g.records) == 2 and all(r["config"]["method_params"] == {} for r in g.records)
    # an unknown method with two configurations in one cell: left out with a note, never averaged
    odd = [rec("plugx", 0, [1, 2], params={"a": 1}), rec("plugx", 1, [1, 2], params={"a": 2})]
    fig = select(rs + odd)[0]
    assert [g.method for g in fig.groups] == ["logit"]
    assert fig.notes == ["plugx on A a2v: records of 2 configurations; left out (not averaged)"]


def grid(root: Path) -> Path:
    for s in range(3):
        write_record(root, rec("none", s, [40 + s, 45 + s, 46 + s]))
        write_record(root, rec("logit", s, [50 + s, 58 + s, 60 + s], terms={"ce": [1.0, 0.8, 0.7], "kd": [2.0, 1.0, 0.5]}))
        write_record(root, rec("logit", s, [30 + s, 31 + s, 32 + s], direction="v2a"))
        write_record(root, rec("logit", s, [20, 21, 22 + s], ds="B"))
    return root


def test_bench_curves_writes_a_png_and_pdf_per_cell_with_the_values_in_the_legend(tmp_path):
    from PIL import Image

    res = grid(tmp_path / "res")
    out = tmp_path / "curves"
    r = CliRunner().invoke(app, ["curves", "-r", str(res), "--out", str(out)])
    assert r.exit_code == 0, r.output
    names = sorted(p.name for p in out.iterdir())
    assert names == [f"curves_{c}.{x}" for c in ("A_a2v", "A_v2a", "B_a2v") for x in ("pdf", "png")]
    img = np.asarray(Image.open(out / "curves_A_a2v.png").convert("RGB")).astype(int)
    assert img.shape[0] > 400 and img.std() > 10
    blue = (np.abs(img - [31, 119, 180]).sum(axis=2) < 40).sum()  # the first method's colour is drawn
    assert blue > 200
    if shutil.which("pdftotext"):
        text = subprocess.run(["pdftotext", str(out / "curves_A_a2v.pdf"), "-"], capture_output=True, text=True, check=True).stdout
        # logit's selected epochs (val = test - 1, best at the last epoch): 60, 61, 62 -> 61.00 ± 1.00
        assert "Logit: best_metric 61.00 ± 1.00 (n=3)" in text, text
        assert "loss term: kd" in text and "teacher (audio) 81.0" in text
    # selection options, as in bench table
    out2 = tmp_path / "sel"
    r = CliRunner().invoke(app, ["curves", "-r", str(res), "--out", str(out2), "--datasets", "A", "--directions", "v2a",
                                 "--value", "final_metric"])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out2.iterdir()) == ["curves_A_v2a.pdf", "curves_A_v2a.png"]
    r = CliRunner().invoke(app, ["curves", "-r", str(res), "--out", str(out2), "--methods", "dkd"])
    assert r.exit_code == 2 and "--methods dkd: no records match; present: logit, none" in r.output
    r = CliRunner().invoke(app, ["curves", "-r", str(res), "--out", str(out2), "--value", "best"])
    assert r.exit_code == 2 and "--value 'best': expected one of best_metric, final_metric, reference_best_metric" in r.output


def _svgs(page: str) -> list[ET.Element]:
    """The curve images (the statistics panels' error bars are inline SVGs too, with class="bar")."""
    return [ET.fromstring(base64.b64decode(b))
            for b in re.findall(r'<img alt="[^"]*" src="data:image/svg\+xml;base64,([^"]+)"', page)]


def test_page_curves_are_well_formed_svg_with_every_name_as_text(tmp_path):
    from bench.report.leaderboard import build_leaderboard
    from bench.report.leaderboard_page import render_html

    hostile = '<img src=x onerror="alert(1)">&"'
    rs = [rec("none", s, [40, 41, 42]) for s in range(2)]
    rs += [rec(hostile, s, [50, 51, 52 + s], terms={hostile: [1.0, 0.5, 0.2]}) for s in range(2)]
    page = render_html(build_leaderboard(rs), None)
    svgs = _svgs(page)
    assert len(svgs) == 4  # w/o KD: metric + loss; the plug-in: metric + loss
    ns = "{http://www.w3.org/2000/svg}"
    texts = ["".join(t.itertext()) for s in svgs for t in s.iter(f"{ns}text")]
    assert hostile in texts  # the loss term's name, as text of a parsed SVG
    assert "w/o KD test" in texts and "teacher (audio) 80.5" in texts
    lines = [p for s in svgs for p in s.iter(f"{ns}polyline")]
    assert all(len(p.get("points").split()) == 3 for p in lines)  # one vertex per epoch
    assert not [e for s in svgs for e in s.iter() if e.tag.endswith("script") or any(a.startswith("on") for a in e.attrib)]
    assert hostile not in page  # and in the page itself, only escaped


@pytest.mark.skipif(chromium() is None, reason="needs Debian chromium (installed by .ci/run)")
def test_leaderboard_page_shows_curves_in_headless_chromium(tmp_path):
    """Real runs (2 methods x 2 seeds, tiny), the page, and Chromium: the method's detail opens
    from the URL, its curve images are in the DOM and paint the curve colour on screen."""
    from PIL import Image

    res = tmp_path / "res"
    sets = [x for scope, kv in tiny({"train": {"epochs": "3", "teacher_epochs": "2"}}).items()
            for k, v in kv.items() for x in ("--set", f"{scope}.{k}={v}")]
    r = CliRunner().invoke(app, ["run", "--methods", "none,logit", "--datasets", "synthetic", "--directions", "a2v",
                                 "--seeds", "0,1", "-r", str(res), *sets])
    assert r.exit_code == 0, r.output
    assert len(load_records(res)) == 4
    site = tmp_path / "site"
    r = CliRunner().invoke(app, ["leaderboard", "-r", str(res), "--format", "html", "--out", str(site)])
    assert r.exit_code == 0, r.output
    page = (site / "index.html").read_text()
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "") and "https://" not in page
    svgs = _svgs(page)
    assert len(svgs) == 4
    url = (site / "index.html").resolve().as_uri()
    anchor = re.search(r'<details id="(m-\d+)"><summary>Logit', page).group(1)
    out = _browser(["--virtual-time-budget=3000", "--dump-dom", f"{url}#open={anchor}"])
    assert out.returncode == 0, out.stderr[-500:]
    opened = re.search(rf'<details id="{anchor}" open="">(.*?)</details>', out.stdout, re.DOTALL)
    assert opened, "the method's detail did not open"
    assert len(re.findall(r'<img alt="[^"]*" src="data:image/svg\+xml;base64,', opened.group(1))) == 2

    def shot(fragment: str, name: str) -> np.ndarray:
        path = tmp_path / name
        # tall enough for the whole page: the statistics panels put the details below a first screen
        o = _browser(["--window-size=1280,3200", "--hide-scrollbars", f"--screenshot={path}", url + fragment])
        assert o.returncode == 0, o.stderr[-500:]
        return np.asarray(Image.open(path).convert("RGB")).astype(int)

    def curve_pixels(img: np.ndarray) -> int:
        return int((np.abs(img - [31, 119, 180]).sum(axis=2) < 40).sum())

    # the curves are painted; control: the closed page only has that colour in the performance profile
    opened_px, closed_px = curve_pixels(shot(f"#open={anchor}", "open.png")), curve_pixels(shot("", "closed.png"))
    assert opened_px - closed_px > 300, (opened_px, closed_px)
