"""The reporting side against hostile input: names that are markup (HTML, LaTeX, Rich, Markdown),
options out of range, outputs that cannot be written, and the two ranking/marking rules.

Everything runs the real thing: records written as files, the CLI through typer's runner, the page
in headless Chromium, the tables through pdflatex/pdftotext.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from test_leaderboard import _browser, chromium
from typer.testing import CliRunner

from bench.cli import app
from bench.records.store import load_records, write_record
from bench.report.leaderboard import RANK_RULES, build_leaderboard

XSS_NAME = '<img src=x onerror="document.body.dataset.xss=\'name\'">'
XSS_CAT = '<img src=x onerror="document.body.dataset.xss=\'category\'">'
CLOSE_SCRIPT = "</script><script>document.body.dataset.xss='blob'</script><!--<script>"
ATTR_BREAK = '"><svg onload="document.body.dataset.xss=\'attr\'">'
TEX_NASTY = r"R&D_100%$x$\textbf{x}^~#{}<>|"
_n = [0]


def rec(method: str, ds: str, mod: str, seed: int, value: float, cat: str = "Logits", params: dict | None = None,
        task: str = "classification") -> dict:
    """A minimal ok record with the fields results.read_record checks; the run id is a safe file name
    whatever the other fields hold."""
    _n[0] += 1
    params = dict(params or {})
    ph = json.dumps(params, sort_keys=True)
    return {
        "schema": 1, "run_id": f"h{_n[0]:06d}", "status": "ok", "method": method, "method_category": cat,
        "method_source": "builtin", "method_source_hash": None, "dataset": ds, "task": task,
        "teacher_modality": "t", "student_modality": mod, "direction": "t2x", "seed": seed, "metric": "top1",
        "config": {"method_params": params, "train": {}, "dataset": {"params": {}}},
        "config_hash": f"{method}|{ds}|{mod}|{seed}|{ph}", "group_hash": f"{method}|{ds}|{mod}|{ph}",
        "best_metric": value, "final_metric": value, "history": [{"epoch": 1, "test_metric": value}],
        "git_commit": "abc1234", "selected_epoch": 1,
    }


def cli(*args: str):
    return CliRunner().invoke(app, list(args))


# ------------------------------------------------------------------------------------------
# the HTML page

def hostile_results(root: Path, datasets: tuple[str, ...] = ("A", "B")) -> Path:
    for ds in datasets:
        for mod in ("visual", "au\u2028dio"):
            for s in (0, 1):
                write_record(root, rec("none", ds, mod, s, 50 + s, "Uni-Modal"))
                write_record(root, rec(XSS_NAME, ds, mod, s, 60 + s, XSS_CAT))
                write_record(root, rec(ATTR_BREAK, ds, mod, s, 55 + s, "Feature"))
                write_record(root, rec("m[/]&amp;", ds, mod, s, 52 + s, "Cross-Modal"))
    return root


class Dom(HTMLParser):
    """The dumped DOM: body attributes, every start tag's attributes, the board's rows as text."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.body: dict = {}
        self.attrs: list[tuple[str, dict]] = []
        self.rows: list[tuple[str, list[str]]] = []
        self.ids: dict[str, str] = {}
        self._in_board = self._cell = False
        self._id: str | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.attrs.append((tag, a))
        if tag == "body":
            self.body = a
        if tag == "table" and a.get("id") == "board":
            self._in_board = True
        if self._in_board and tag == "tr" and "data-method" in a:
            self.rows.append((a["data-method"], []))
        if self._in_board and tag == "td" and self.rows:
            self.rows[-1][1].append("")
            self._cell = True
        if a.get("id") in ("rank-rule",):
            self._id = a["id"]
            self.ids[self._id] = ""

    def handle_endtag(self, tag):
        if tag == "table":
            self._in_board = False
        if tag == "td":
            self._cell = False
        if tag == "p":
            self._id = None

    def handle_data(self, data):
        if self._cell and self.rows:
            self.rows[-1][1][-1] += data
        if self._id:
            self.ids[self._id] += data


def dump(url: str) -> tuple[Dom, str]:
    out = _browser(["--enable-logging=stderr", "--v=0", "--virtual-time-budget=3000", "--dump-dom", url])
    assert out.returncode == 0, out.stderr[-800:]
    return Dom(out.stdout), out.stderr


needs_chromium = pytest.mark.skipif(chromium() is None, reason="needs Debian chromium (installed by .ci/run)")


def hostile_page(tmp_path: Path, datasets: tuple[str, ...]) -> tuple[str, Dom, str]:
    res = hostile_results(tmp_path / "res", datasets)
    site = tmp_path / "site"
    r = cli("leaderboard", "-r", str(res), "--format", "html", "--out", str(site))
    assert r.exit_code == 0, r.output
    dom, log = dump((site / "index.html").resolve().as_uri())
    return (site / "index.html").read_text(), dom, log


@needs_chromium
def test_hostile_names_are_text_in_the_page_and_no_script_runs(tmp_path):
    page, dom, log = hostile_page(tmp_path, ("A", "B"))
    assert "data-xss" not in dom.body, dom.body  # before the fix: data-xss="name" (the page's own innerHTML)
    assert not [(t, a) for t, a in dom.attrs if any(k.startswith("on") for k in a)]  # no handler made it into the DOM
    assert [t for t, _ in dom.attrs].count("svg") == 0
    rows = {m: cells for m, cells in dom.rows}
    assert set(rows) == {XSS_NAME, ATTR_BREAK, "m[/]&amp;", "none"}  # data-method holds the raw key
    assert rows[XSS_NAME][2] == XSS_NAME and rows[XSS_NAME][3] == XSS_CAT  # shown as the text it is
    assert rows[ATTR_BREAK][2] == ATTR_BREAK and rows["m[/]&amp;"][2] == "m[/]&amp;"
    assert "Content Security Policy" not in log and "Content-Security-Policy" not in log, log[-2000:]
    # the per-method details (written by Python) show the names as text too
    assert html.escape(XSS_NAME) in page and XSS_NAME not in page.replace(html.escape(XSS_NAME), "")


@needs_chromium
def test_a_name_cannot_end_or_bend_the_data_script(tmp_path):
    page, dom, log = hostile_page(tmp_path, ("A", CLOSE_SCRIPT))
    # the page works: before the fix the "<!--<script>" in the blob swallowed the page's script (no rows)
    assert len(dom.rows) == 4 and "Content Security Policy" not in log
    assert "data-xss" not in dom.body, dom.body
    assert page.count("</script") == 2 and "<!--" not in page  # exactly the two script elements close
    assert f'value="{html.escape(CLOSE_SCRIPT)}"' in page  # a filter value, not markup
    assert dom.ids["rank-rule"].endswith("Ranked on 4 of 4 cells (those every ranked method has).")


def test_script_json_is_inert_and_round_trips():
    from bench.report.leaderboard_page import script_json

    data = {"a": CLOSE_SCRIPT, "b": "x\u2028y\u2029z", "c": float("nan"), "d": ["<!--", "&amp;", ">"]}
    text = script_json(data)
    assert not set(text) & set("<>&\u2028\u2029") and text.isascii()
    assert json.loads(text) == {**data, "c": None}


def test_page_has_a_restrictive_csp_with_the_hashes_of_its_inline_code(tmp_path):
    from bench.report.leaderboard_page import CSS, JS, render_html

    lb = build_leaderboard(load_records(hostile_results(tmp_path / "res")))
    page = render_html(lb, None)
    meta = re.search(r'<meta http-equiv="Content-Security-Policy" content="([^"]+)">', page)
    assert meta is not None and page.index(meta.group(0)) < page.index("<style>")  # before anything it governs
    policy = dict(d.strip().split(" ", 1) for d in html.unescape(meta.group(1)).split(";"))
    inline_js = re.findall(r"<script>(.*?)</script>", page, re.S)
    inline_css = re.findall(r"<style>(.*?)</style>", page, re.S)
    assert inline_js == [JS] and inline_css == [CSS]

    def h(s: str) -> str:
        return "'sha256-" + base64.b64encode(hashlib.sha256(s.encode()).digest()).decode() + "'"

    assert policy == {"default-src": "'none'", "script-src": h(JS), "style-src": h(CSS), "img-src": "data:",
                      "base-uri": "'none'", "form-action": "'none'"}
    assert " style=" not in page  # no inline style attribute that the policy would block


# ------------------------------------------------------------------------------------------
# the rank rule

HALF_VALUES = {  # cell -> method -> value; "half" has only dataset A (2 of 4 cells)
    ("A", "visual"): {"full1": 70, "half": 65, "full2": 60, "full3": 55, "none": 50},
    ("A", "audio"): {"full1": 72, "half": 71, "full3": 62, "full2": 61, "none": 50},
    ("B", "visual"): {"full2": 80, "full3": 78, "none": 75, "full1": 70},
    ("B", "audio"): {"full2": 80, "full3": 78, "none": 75, "full1": 70},
}


def half_results(root: Path) -> Path:
    cats = {"none": "Uni-Modal", "full1": "Logits", "full2": "Feature", "full3": "Feature", "half": "Cross-Modal"}
    for (ds, mod), per in HALF_VALUES.items():
        for m, v in per.items():
            write_record(root, rec(m, ds, mod, 0, v, cats[m]))
    return root


def test_rank_rules_common_and_own(tmp_path):
    recs = load_records(half_results(tmp_path / "res"))
    own = {r["method"]: r for r in build_leaderboard(recs, rank_cells="own").rows}
    # own cells: "half" stands first on its 2 cells, ahead of methods that ran all 4 (issue #15)
    assert own["half"]["mean_rank"] == pytest.approx((2 + 2) / 2)
    assert own["full1"]["mean_rank"] == pytest.approx((1 + 1 + 4 + 4) / 4)
    assert own["full2"]["mean_rank"] == pytest.approx((3 + 4 + 1 + 1) / 4)
    assert min(own.values(), key=lambda r: r["mean_rank"])["method"] == "half"
    lb = build_leaderboard(recs)  # default: common cells
    rows = {r["method"]: r for r in lb.rows}
    assert lb.rank_rule == "common" and lb.rank_used == [("A", "visual"), ("A", "audio")]
    assert lb.rank_left_out == {("B", "visual"): ["half"], ("B", "audio"): ["half"]}
    expect = {"full1": 1.0, "half": 2.0, "full2": 3.5, "full3": 3.5, "none": 5.0}  # hand-ranked on the A cells
    assert {m: r["mean_rank"] for m, r in rows.items()} == pytest.approx(expect)
    assert [r["method"] for r in lb.rows][:2] == ["full1", "half"]
    assert all(r["rank_cells"] == 2 and r["cells"] == (2 if m == "half" else 4) for m, r in rows.items())
    # gains and coverage still use every cell a method has
    assert rows["full2"]["mean_gain"] == pytest.approx((10 + 11 + 5 + 5) / 4)
    st = lb.stats_statement()
    assert st.startswith(RANK_RULES["common"]) and "Ranked on 2 of 4 cells" in st
    assert "left out of the ranking: B/visual (missing: half), B/audio (missing: half)" in st


def test_rank_rule_complete_ranks_every_cell_and_lists_the_incomplete_method(tmp_path):
    """A method one benchmark cannot run ("half" lacks B) no longer drops B out of the ranks: the
    methods with all 4 cells are ranked on all 4, "half" is listed unranked with its gain."""
    recs = load_records(half_results(tmp_path / "res"))
    lb = build_leaderboard(recs, rank_cells="complete")
    rows = {r["method"]: r for r in lb.rows}
    assert lb.rank_used == list(HALF_VALUES) and lb.unranked == ["half"] and lb.rank_left_out == {}
    expect = {"full1": (1 + 1 + 4 + 4) / 4, "full2": (2 + 3 + 1 + 1) / 4, "full3": (3 + 2 + 2 + 2) / 4,
              "none": (4 + 4 + 3 + 3) / 4}  # hand-ranked among the four complete methods, every cell
    assert {m: r["mean_rank"] for m, r in rows.items() if m != "half"} == pytest.approx(expect)
    assert rows["half"]["mean_rank"] is None and rows["half"]["mean_gain"] == pytest.approx((15 + 21) / 2)
    assert [r["method"] for r in lb.rows][-1] == "half"
    st = lb.stats_statement()
    assert st.startswith(RANK_RULES["complete"])
    assert "Ranked on all 4 cells: the methods that have every one; not ranked (lacks a cell): half." in st


def test_rank_rule_edge_cases(tmp_path):
    root = tmp_path / "res"
    for m, ds, v in (("x", "A", 60), ("y", "B", 70), ("none", "A", 50), ("none", "B", 50)):
        write_record(root, rec(m, ds, "visual", 0, v))
    # a conflict-only method has nothing to rank: it is listed, unranked, and does not empty the ranking
    write_record(root, rec("z", "A", "visual", 0, 1, params={"k": 1}))
    write_record(root, rec("z", "A", "visual", 1, 2, params={"k": 2}))
    lb = build_leaderboard(load_records(root), methods=["x", "none", "z"])
    rows = {r["method"]: r for r in lb.rows}
    assert lb.unranked == ["z"] and rows["z"]["mean_rank"] is None
    assert rows["x"]["mean_rank"] == 1.0 and rows["none"]["mean_rank"] == 2.0
    assert "not ranked (no usable cell): z" in lb.rank_detail()
    # no cell every method has: nobody ranked, and the statement says why and what to do
    lb = build_leaderboard(load_records(root), methods=["x", "y"])
    assert all(r["mean_rank"] is None for r in lb.rows)
    assert "No cell of the 2 is covered by every ranked method" in lb.rank_detail() and "--rank-cells own" in lb.rank_detail()
    r = cli("leaderboard", "-r", str(root), "--rank-cells", "best")
    assert r.exit_code == 2 and "--rank-cells 'best'" in r.output and "common" in r.output


@needs_chromium
def test_page_applies_the_same_rank_rule_when_filtering(tmp_path):
    res = half_results(tmp_path / "res")
    site = tmp_path / "site"
    assert cli("leaderboard", "-r", str(res), "--format", "html", "--out", str(site)).exit_code == 0
    url = (site / "index.html").resolve().as_uri()

    def board(fragment: str) -> tuple[dict[str, tuple[str, str]], list[str], str]:
        dom, log = dump(url + fragment)
        assert "Content Security Policy" not in log, log[-2000:]
        return {m: (c[0], c[1]) for m, c in dom.rows}, [m for m, _ in dom.rows], dom.ids["rank-rule"]

    def python(**kw) -> tuple[dict[str, tuple[str, str]], str]:
        lb = build_leaderboard(load_records(res), **kw)
        return ({r["method"]: ("-" if r["mean_rank"] is None else f"{r['mean_rank']:.2f}",
                               "-" if r["mean_rank"] is None else f"{r['rank_cells']}/{r['grid']}") for r in lb.rows},
                RANK_RULES[lb.rank_rule] + " " + lb.rank_detail())

    shown, order, text = board("")
    assert (shown, text) == python()  # the page's script reproduces the Python ranks and statement
    assert order[:2] == ["full1", "half"] and shown["half"] == ("2.00", "2/4")
    shown, order, text = board("#rule=own")
    assert (shown, text) == python(rank_cells="own") and order[0] == "half"
    shown, order, text = board("#rule=complete")
    assert (shown, text) == python(rank_cells="complete") and shown["half"] == ("-", "-") and order[0] == "full2"
    shown, order, text = board("#nodataset=A")  # "half" has no cell left: listed, not ranked
    assert {m: v for m, v in shown.items() if m != "half"} == python(datasets=["B"])[0]
    assert shown["half"] == ("-", "-") and order[-1] == "half"
    assert text.endswith("Ranked on 2 of 2 cells (those every ranked method has); not ranked (no usable cell): half.")
    shown, order, _ = board("#nocategory=Cross-Modal")  # without "half" every cell is common again
    assert shown == python(methods=["full1", "full2", "full3", "none"])[0] and shown["full2"] == ("1.75", "4/4")
    shown, order, _ = board("#sort=ranked_on&dir=asc&rule=own")  # sorting works under the CSP too
    assert order[0] == "half"


# ------------------------------------------------------------------------------------------
# LaTeX

def test_tex_escape_is_one_pass_and_complete():
    from bench.report.tables import tex_escape

    assert tex_escape("\\{}") == r"\textbackslash{}\{\}"  # the replacement's braces stay as they are
    assert tex_escape("~^") == r"\textasciitilde{}\textasciicircum{}"
    assert tex_escape("a<b>c|d") == r"a\textless{}b\textgreater{}c\textbar{}d"
    assert tex_escape("&%$#_") == r"\&\%\$\#\_"
    assert tex_escape("two\n\nlines") == "two  lines"  # no paragraph break inside a caption


def latex_results(root: Path) -> Path:
    cats = {"none": "Uni-Modal", "k&d_1%": "Logits", TEX_NASTY: "Feature"}
    for ds in (TEX_NASTY, "plain"):
        for mod in ("vi~s^u_al", "audio"):
            for s, base in enumerate((50, 52)):
                for m, dv in (("none", 0), ("k&d_1%", 10), (TEX_NASTY, 5)):
                    write_record(root, rec(m, ds, mod, s, base + dv, cats[m]))
    return root


def pdf_text(tex: Path) -> str:
    p = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", tex.name], cwd=tex.parent,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout[-3000:]
    out = subprocess.run(["pdftotext", "-layout", str(tex.with_suffix(".pdf")), "-"], capture_output=True, text=True).stdout
    # the default fonts' accents: ~ and ^ come out as the spacing accents
    return out.replace("\u02dc", "~").replace("\u02c6", "^")


def squash(s: str) -> str:
    """Text to compare with pdftotext's: no white space, and no "_" (OT1's \\_ is a drawn rule, which
    pdftotext reads as a space; the PNG check shows it)."""
    return re.sub(r"[\s_]+", "", s)


needs_latex = pytest.mark.skipif(shutil.which("pdflatex") is None or shutil.which("pdftotext") is None,
                                 reason="needs texlive and poppler-utils (installed by .ci/run)")


@needs_latex
def test_latex_tables_with_every_special_character_compile_and_print_the_names(tmp_path):
    from bench.report.leaderboard import to_latex
    from bench.report.studies import standalone

    res = latex_results(tmp_path / "res")
    tex = tmp_path / "comparison.tex"
    r = cli("table", "comparison", "-r", str(res), "--standalone", "--std", "--out", str(tex),
            "--caption", "Results: 50% of R&D_x {raw} ~ ^ \\ <a|b>")
    assert r.exit_code == 0, r.output
    text = pdf_text(tex)
    flat = squash(text)
    for name in (TEX_NASTY, "k&d_1%", "vi~s^u_al", "Results: 50% of R&D_x {raw} ~ ^ \\ <a|b>"):
        assert squash(name) in flat, (name, text)
    # the leaderboard's LaTeX too
    lb = build_leaderboard(load_records(res))
    tex2 = tmp_path / "leaderboard.tex"
    tex2.write_text(standalone(to_latex(lb)))
    flat = squash(pdf_text(tex2))
    assert squash(TEX_NASTY) in flat and squash("k&d_1%") in flat


@needs_latex
def test_leaderboard_latex_statement_stays_a_comment(tmp_path):
    """The statistics statement follows the tabular as a comment and names the methods left out of
    the ranking: a line break in a name must not end the comment."""
    from bench.report.leaderboard import to_latex
    from bench.report.studies import standalone

    root = tmp_path / "res"
    for m, ds, v in (("none", "A", 50), ("none", "B", 50), ("k", "A", 60), ("k", "B", 60), ("x\n\\undefinedcs", "A", 55)):
        write_record(root, rec(m, ds, "visual", 0, v))
    tex = tmp_path / "lb.tex"
    tex.write_text(standalone(to_latex(build_leaderboard(load_records(root)))))
    assert "x \\textbackslash{}undefinedcs" in tex.read_text() and "missing: x \\undefinedcs" in tex.read_text()
    assert "x\\undefinedcs" in squash(pdf_text(tex))


@needs_latex
def test_study_tables_with_a_hostile_dataset_name_compile(tmp_path):
    fd = {"freq": True, "align": True, "scale": True, "log": True, "l1": 1.0, "l2": 1.0, "ratio": 0.5, "tap": "pre",
          "phi": "linear"}
    root = tmp_path / "res"
    for i, (l1, l2, v) in enumerate(((0.5, 0.5, 57.0), (1.0, 1.0, 58.0), (2.0, 0.5, 61.0))):
        write_record(root, rec("fdcmkd", TEX_NASTY, "vi~s^u_al", 0, v, "Cross-Modal", {**fd, "l1": l1, "l2": l2}))
    write_record(root, rec("fdcmkd", TEX_NASTY, "vi~s^u_al", 0, 55.0, "Cross-Modal", {**fd, "freq": False, "align": False,
                                                                                     "scale": False, "log": False}))
    for kind in ("sensitivity", "ablation", "threshold"):
        tex = tmp_path / f"{kind}.tex"
        r = cli("table", kind, "-r", str(root), "--standalone", "--out", str(tex))
        assert r.exit_code == 0, r.output
        assert squash(TEX_NASTY) in squash(pdf_text(tex)), kind


def test_caption_latex_passes_source_and_labels_are_checked(tmp_path):
    res = latex_results(tmp_path / "res")
    r = cli("table", "-r", str(res), "--caption", r"Top-1 $\pm$ std", "--caption-latex")
    assert r.exit_code == 0 and r"\caption{Top-1 $\pm$ std." in r.output
    r = cli("table", "-r", str(res), "--caption", r"Top-1 $\pm$ std")
    assert r.exit_code == 0 and r"\caption{Top-1 \$\textbackslash{}pm\$ std." in r.output
    r = cli("table", "-r", str(res), "--label", "tab:a}b%")
    assert r.exit_code == 2 and "--label 'tab:a}b%'" in r.output and "letters, digits" in r.output


# ------------------------------------------------------------------------------------------
# marks: all rows vs the paper's KD-only convention

def marks_results(root: Path) -> Path:
    cats = {"none": "Uni-Modal", "logit": "Logits", "feat": "Feature", "fdcmkd": "Cross-Modal"}
    # crema/visual: the baseline is best (an overfitting-prone cell where KD hurts)
    for m, v in (("none", 70.0), ("logit", 60.0), ("feat", 65.0), ("fdcmkd", 62.0)):
        write_record(root, rec(m, "crema", "visual", 0, v, cats[m]))
    for m, v in (("none", 50.0), ("logit", 60.0), ("feat", 55.0), ("fdcmkd", 58.0)):
        write_record(root, rec(m, "crema", "audio", 0, v, cats[m]))
    return root


def _rows(tex: str) -> dict[str, list[str]]:
    out = {}
    for line in tex.splitlines():
        if line.rstrip().endswith(r"\\") and "&" in line:
            cells = [c.strip() for c in line.rstrip()[:-2].split("&")]
            out[cells[0]] = cells[1:]
    return out


def test_marks_kd_only_leaves_the_baseline_unranked(tmp_path):
    res = marks_results(tmp_path / "res")
    r = cli("table", "-r", str(res), "--marks", "kd-only")
    assert r.exit_code == 0, r.output
    rows = _rows(r.output)  # columns: crema A (audio), V (visual)
    assert rows["w/o KD"] == ["50.0", "70.0"]  # best on V, yet not bold: not ranked
    assert rows["Feat"][1] == r"\textbf{65.0}" and rows["FD-CMKD"][1] == r"\underline{62.0}"
    assert rows["Logit"][0] == r"\textbf{60.0}" and rows["FD-CMKD"][0] == r"\underline{58.0}"
    assert "among the KD methods; w/o KD is shown but not ranked" in r.output
    r = cli("table", "-r", str(res))  # default: every row ranked
    rows = _rows(r.output)
    assert rows["w/o KD"][1] == r"\textbf{70.0}" and rows["Feat"][1] == r"\underline{65.0}"
    assert "over every row, w/o KD included" in r.output
    r = cli("table", "-r", str(res), "--marks", "kd-only", "--format", "markdown")
    assert "| w/o KD | 50.0 | 70.0 |" in r.output and "**65.0**" in r.output
    r = cli("table", "-r", str(res), "--marks", "paper")
    assert r.exit_code == 2 and "--marks 'paper'" in r.output and "kd-only" in r.output


# ------------------------------------------------------------------------------------------
# Rich markup

def test_rich_reporter_shows_markup_in_run_ids_as_text():
    from rich.console import Console
    from rich.progress import Progress

    from bench.cli.runs import RichReporter

    buf = io.StringIO()
    con = Console(file=buf, width=200, force_terminal=False)
    with Progress(console=con) as p:
        rep = RichReporter(p, 2)
        for rid in ("ds_oops[/]_s0", "x[@a=(]_[bold]"):
            rep.begin(rid, 2)
            rep.epoch(rid, "student", 1, {"test_metric": 50.0, "val_metric": None})
            rep.end(rid, {"status": "failed", "error": "ValueError: bad [/red] input"})
    out = buf.getvalue()
    assert "failed ds_oops[/]_s0: ValueError: bad [/red] input" in out
    assert "failed x[@a=(]_[bold]:" in out


def test_rich_tables_show_markup_in_names_as_text(tmp_path):
    root = tmp_path / "res"
    for m, v in (("none", 50.0), ("m[/]", 60.0), ("[bold]x", 55.0)):
        write_record(root, rec(m, "d[@a=(]", "visual", 0, v, "Logits" if m != "none" else "Uni-Modal"))
    r = CliRunner().invoke(app, ["table", "-r", str(root), "--format", "rich"], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert "m[/]" in r.output and "[bold]x" in r.output and "d[@a=(]" in r.output
    r = CliRunner().invoke(app, ["leaderboard", "-r", str(root), "--cells"], env={"COLUMNS": "250"})
    assert r.exit_code == 0, r.output
    assert "m[/]" in r.output and "[bold]x" in r.output


PLUGIN = '''
from bench.api import Method
from bench.api import register_method

@register_method("markupkd")
class Bad(Method):
    """Fails with a message that is Rich markup (a data path, a user string...)."""
    category = "Logits"
    description = "fails on purpose"

    def loss(self, s, t, y, epoch):
        raise ValueError("bad [/] value [bold]x")
'''


def test_run_progress_survives_markup_in_an_error(tmp_path):
    plug = tmp_path / "markup_plugin.py"
    plug.write_text(PLUGIN)
    res = tmp_path / "res"
    r = CliRunner().invoke(app, ["run", "--methods", "markupkd", "--plugin", str(plug), "--datasets", "synthetic",
                                 "--directions", "a2v", "--epochs", "1", "--teacher-epochs", "1", "--results", str(res),
                                 "--set", "synthetic.n_train=120", "--set", "synthetic.n_test=60",
                                 "--set", "synthetic.width=4", "--device", "cpu"], env={"COLUMNS": "250"})
    assert r.exit_code == 1, r.output  # the run failed (its own error), the display did not
    assert "bad [/] value [bold]x" in r.output
    recs = load_records(res)
    assert len(recs) == 1 and recs[0]["status"] == "failed" and "bad [/] value" in recs[0]["error"]


# ------------------------------------------------------------------------------------------
# option validation

def test_option_errors_name_the_option(tmp_path):
    res = marks_results(tmp_path / "res")
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    cases = [
        (["table", "--decimals", "-1"], "--decimals -1: expected a whole number of digits from 0 to 10"),
        (["leaderboard", "--decimals", "-1"], "--decimals -1: expected a whole number of digits from 0 to 10"),
        (["table", "--datasets", ""], "--datasets '': expected comma-separated names"),
        (["leaderboard", "--datasets", ","], "--datasets ',': expected comma-separated names"),
        (["table", "--datasets", "nope"], "--datasets: no records of dataset 'nope'; present: crema"),
        (["leaderboard", "--datasets", "nope"], "--datasets nope: no ok records to rank; present: crema"),
        (["table", "--methods", "fdcmdk"], "--methods: no records of method 'fdcmdk'; present: fdcmkd, feat, logit, none"),
        (["leaderboard", "--methods", "fdcmdk"], "--methods fdcmdk: no ok records of these methods; present:"),
        (["leaderboard", "--pairing", "both"], "--pairing 'both': expected paired or unpaired"),
        (["table", "--out", str(tmp_path)], f"--out {tmp_path}: is a folder; expected a file path"),
        (["leaderboard", "--format", "csv", "--out", str(tmp_path)], f"--out {tmp_path}: is a folder"),
        (["leaderboard", "--format", "html", "--out", str(a_file)], "is a file; --format html writes a folder"),
        (["table", "--alpha", "0"], "--alpha 0.0: expected a significance level in (0, 1)"),
        (["table", "ablation", "--methods", "none"], "--methods applies to the comparison and segmentation tables"),
        (["table", "--format", "markdown", "--standalone"], "--standalone makes a LaTeX document"),
        (["table", "--format", "tex"], "--format 'tex': expected latex, markdown, csv, json or rich"),
    ]
    for args, msg in cases:
        r = CliRunner().invoke(app, [*args, "-r", str(res)], env={"COLUMNS": "300"})
        flat = " ".join(r.output.split())
        assert r.exit_code == 2 and msg in flat and "Traceback" not in r.output, (args, r.output, r.exception)


def test_out_into_a_read_only_folder(tmp_path):
    res = marks_results(tmp_path / "res")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        probe = ro / "probe"
        try:
            probe.write_text("x")
            probe.unlink()
            pytest.skip("running as root: chmod 0o555 does not stop writes, so there is no unwritable folder to test")
        except PermissionError:
            pass
        for args in (["table", "--out", str(ro / "t.tex")], ["leaderboard", "--format", "json", "--out", str(ro / "l.json")],
                     ["leaderboard", "--format", "html", "--out", str(ro / "site")]):
            r = CliRunner().invoke(app, [*args, "-r", str(res)], env={"COLUMNS": "300"})
            assert r.exit_code == 2 and "cannot write (Permission denied)" in r.output, r.output
    finally:
        ro.chmod(0o755)


def test_out_below_a_file_is_reported(tmp_path):
    """The root-proof variant of an unwritable --out: a path whose parent is a file."""
    res = marks_results(tmp_path / "res")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for args in (["table", "--out", str(blocker / "t.tex")], ["leaderboard", "--format", "csv", "--out", str(blocker / "l.csv")],
                 ["leaderboard", "--format", "html", "--out", str(blocker / "site")]):
        r = CliRunner().invoke(app, [*args, "-r", str(res)], env={"COLUMNS": "300"})
        flat = " ".join(r.output.split())
        assert r.exit_code == 2 and "cannot write" in flat and str(blocker) in flat and "Traceback" not in r.output, r.output


# ------------------------------------------------------------------------------------------
# other sinks: Markdown tables, matplotlib text

def test_markdown_outputs_escape_names(tmp_path):
    root = tmp_path / "res"
    bad = "<img src=x onerror=alert(1)>|*x*_[l](u)"
    for m, v in (("none", 50.0), (bad, 60.0)):
        write_record(root, rec(m, "d|1", "visual", 0, v, "Logits" if m != "none" else "Uni-Modal"))
    esc = r"&lt;img src=x onerror=alert(1)&gt;\|\*x\*\_\[l\](u)"
    r = cli("table", "-r", str(root), "--format", "markdown")
    assert r.exit_code == 0, r.output
    line = next(x for x in r.output.splitlines() if x.startswith("| &lt;img"))
    assert line == f"| {esc} | **60.0** |" and "| Method | d\\|1 V |" in r.output
    r = cli("leaderboard", "-r", str(root), "--format", "markdown")
    row = next(x for x in r.output.splitlines() if esc in x)
    assert len(re.findall(r"(?<!\\)\|", row)) == 12  # 11 columns: the name's "|" does not split the row
    assert "<img" not in r.output


def test_dollar_signs_in_names_are_not_mathtext(tmp_path):
    fd = {"freq": True, "align": True, "scale": True, "log": True, "l1": 1.0, "l2": 1.0, "ratio": 0.5, "tap": "pre",
          "phi": "linear"}
    root = tmp_path / "res"
    for l1, l2, v in ((0.5, 0.5, 57.0), (1.0, 1.0, 58.0), (2.0, 0.5, 61.0)):
        write_record(root, rec("fdcmkd", r"cost$\notacommand$", "visual", 0, v, "Cross-Modal", {**fd, "l1": l1, "l2": l2}))
    heat = tmp_path / "heat"
    r = cli("table", "sensitivity", "-r", str(root), "--heatmap", str(heat), "--format", "csv")
    assert r.exit_code == 0, (r.output, r.exception)
    assert heat.with_suffix(".png").stat().st_size > 1000
    # the CD diagram's labels are method names
    from bench.report.leaderboard import cd_diagram

    root2 = tmp_path / "res2"  # ten datasets: the fewest independent blocks the CD is drawn for
    for i, (ds, mod) in enumerate((f"D{n}", "visual") for n in range(10)):
        for j, m in enumerate(("none", r"m$\notacommand$", "k")):
            for s in (0, 1):
                write_record(root2, rec(m, ds, mod, s, 50 + 5 * j + i + s))
    paths = cd_diagram(build_leaderboard(load_records(root2)), tmp_path / "cd")
    assert [p.suffix for p in paths] == [".png", ".pdf"]


@needs_chromium
@needs_latex
def test_a_composition_of_hostile_part_names_is_text_in_the_page_and_the_pdf(tmp_path):
    """A composition's display name is built from its parts' names (``A + B``): a record whose
    parts are markup reaches the HTML page and LaTeX only through the escapers."""
    res = tmp_path / "res"
    comp_xss, comp_tex = f"{XSS_NAME}+dkd", f"{TEX_NASTY}+dkd"
    for mod in ("visual", "audio"):
        for s in (0, 1):
            write_record(res, rec("none", "A", mod, s, 50 + s, "Uni-Modal"))
            write_record(res, rec(comp_xss, "A", mod, s, 60 + s, "Composition"))
            write_record(res, rec(comp_tex, "A", mod, s, 55 + s, "Composition"))
    site = tmp_path / "site"
    r = cli("leaderboard", "-r", str(res), "--format", "html", "--out", str(site))
    assert r.exit_code == 0, r.output
    dom, log = dump((site / "index.html").resolve().as_uri())
    assert "data-xss" not in dom.body, dom.body  # the onerror handler never ran
    assert not [(t, a) for t, a in dom.attrs if any(k.startswith("on") for k in a) or a.get("src") == "x"]
    rows = {m: cells for m, cells in dom.rows}
    assert rows[comp_xss][2] == f"{XSS_NAME} + DKD" and rows[comp_tex][2] == f"{TEX_NASTY} + DKD"
    tex = tmp_path / "comparison.tex"
    r = cli("table", "comparison", "-r", str(res), "--standalone", "--out", str(tex))
    assert r.exit_code == 0, r.output
    flat = squash(pdf_text(tex))
    assert squash(f"{TEX_NASTY} + DKD") in flat  # every special character printed as itself
