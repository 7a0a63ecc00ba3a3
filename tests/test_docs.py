"""The documentation (issue #29): the site builds offline in strict mode, the generated references
are current, and every ``bench`` command the README and the site show exists with the options used."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main

from bench.api.errors import BenchError
from bench.cli import app
from bench.cli import docs as cli_docs
from bench.report import docs as report_docs
from bench.report.catalog import method_infos

ROOT = Path(__file__).resolve().parent.parent

def test_site_builds_offline_in_strict_mode(tmp_path):
    """`mkdocs build --strict`: every warning (broken link or anchor, a page missing from the nav, an
    API object mkdocstrings cannot find, a missing include) fails. Proxies point at a closed port,
    so anything the build tried to download would fail it too."""
    site = tmp_path / "site"
    dead = "http://127.0.0.1:9"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "HTTP_PROXY": dead, "HTTPS_PROXY": dead, "ALL_PROXY": dead,
           "http_proxy": dead, "https_proxy": dead, "NO_PROXY": "", "no_proxy": ""}
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"), "-d", str(site)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "WARNING" not in r.stderr, r.stderr
    pages = {p.relative_to(site).as_posix() for p in site.rglob("*.html")}
    for page in ("index.html", "reference/cli.html", "reference/api.html", "reference/datasets.html",
                 "reference/methods/fdcmkd.html", "results/comparison.html", "synthetic/index.html",
                 "guides/slurm.html", "statistics.html"):
        assert page in pages, sorted(pages)
    api = (site / "reference/api.html").read_text()
    assert 'id="bench.api.method.Method"' in api and "teacher_cache_fields" in api  # rendered from the docstrings
    assert ":class:" not in api  # the Sphinx roles of the docstrings are dropped (docs_hooks)
    assert "cluster.sh" in (site / "guides/slurm.html").read_text()  # slurm/README.md included, not copied
    html = "".join((site / p).read_text() for p in pages)
    assert not re.search(r"fonts\.(googleapis|gstatic)\.com", html)  # no web fonts: the pages work offline


def test_generated_pages_are_current():
    """Regenerating the CLI reference, the catalogues, the results blocks and the generated nav
    entries changes nothing (run `bench docs generate` after changing the code)."""
    assert cli_docs.generate(ROOT, check=True) == [], "stale generated docs: run `bench docs generate`"


def test_every_documented_command_parses():
    problems = cli_docs.check_commands(ROOT)
    assert not problems, "\n".join(map(str, problems))
    checked = cli_docs.documentation_files(ROOT)
    assert ROOT / "README.md" in checked and ROOT / "slurm" / "README.md" in checked  # includes are checked too


SNIPPET = """
```bash
bench run --methods all --datasets synthetic --seeds 0,1,2 -j 2
bench run --methods all --epochs 2 --no-such-flag     # a removed option
.venv/bin/bench tabel comparison
for d in crema ave; do .venv/bin/bench prepare $d --root /data/$d --bogus; done
bench leaderboard --cells && bench status | bench collect --from x
bench run --methods all \\
    --epochs 3 --gone
OMP_NUM_THREADS=1 bench speed --methods fdcmkd --dataset crema --json x.json 2>&1 | tee log
bench run --epochs N
bench table --help
```

```text
bench run --methods all|a,b [--epochs N] [--vanished N]
bench table --format latex|csv [--std]
bench/cli/       the `bench` command: not a command line
```
"""


def test_checker_reports_unknown_commands_and_options():
    problems = {p.line: p.problem for p in cli_docs.check_markdown(SNIPPET, "x.md")}
    assert set(problems) == {4, 5, 6, 8, 11, 16}, problems
    assert "--no-such-flag" in problems[4] and "'tabel'" in problems[5] and "--bogus" in problems[6]
    assert "--gone" in problems[8]  # a continued line is checked as one command
    assert "--epochs" in problems[11]  # a placeholder value belongs in a text block
    assert problems[16] == "bench run has no option --vanished"
    assert cli_docs.check_markdown(SNIPPET.replace("--vanished N", ""), "x.md")[-1].line == 11


def test_a_documented_option_that_disappears_from_the_cli_is_reported(monkeypatch):
    """Remove `--epochs` from `bench run` (as a refactoring would): the checker names every README
    and site line that still uses it."""
    root = typer.main.get_command(app)
    ctx = typer.Context(root, info_name="bench")
    run = root.get_command(ctx, "run")
    run.params = [p for p in run.params if "--epochs" not in p.opts]
    monkeypatch.setattr(cli_docs, "root_command", lambda: root)
    problems = cli_docs.check_commands(ROOT)
    assert problems and all("--epochs" in p.problem for p in problems), "\n".join(map(str, problems))
    assert {p.file for p in problems} >= {"docs/getting-started.md"}


def _mini_root(tmp_path: Path) -> Path:
    (tmp_path / "docs" / "results").mkdir(parents=True)
    shutil.copy(ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
    (tmp_path / "docs" / "results" / "comparison.md").write_text(
        "| Method | a A |\n|---|---|\n| w/o KD | 1.0 ± 0.1 |\n\nBest in bold.  \n† = tied.\n\nmore notes\n")
    (tmp_path / "docs" / "results" / "new_study.md").write_text("| x |\n|---|\n| 1 |\n")
    (tmp_path / "README.md").write_text("# t\n\n<!-- generated: results-table -->\nold table\n<!-- end generated -->\nend\n")
    return tmp_path


def test_generate_writes_blocks_and_pages_and_removes_stale_ones(tmp_path):
    root = _mini_root(tmp_path)
    methods = root / "docs" / report_docs.METHOD_DIR
    methods.mkdir(parents=True)
    (methods / "gone.md").write_text("# gone\n\n" + report_docs.GENERATED_NOTE.format(what="x") + "\n")
    (methods / "notes.md").write_text("# hand-written, kept\n")
    changed = cli_docs.generate(root)
    assert "README.md" in changed and f"docs/{report_docs.METHOD_DIR}/gone.md" in changed
    assert not (methods / "gone.md").exists() and (methods / "notes.md").exists()
    readme = (root / "README.md").read_text()
    assert "| w/o KD | 1.0 ± 0.1 |\n\nBest in bold.  \n† = tied.\n<!-- end generated -->\nend\n" in readme
    assert "old table" not in readme and "more notes" not in readme
    nav = (root / "mkdocs.yml").read_text()
    assert "      - New study: results/new_study.md\n" in nav  # a new results page gets a nav entry
    assert "          - FD-CMKD: reference/methods/fdcmkd.md\n" in nav
    assert (methods / "fdcmkd.md").read_text() == report_docs.method_page(
        next(m for m in method_infos() if m.name == "fdcmkd"))
    assert cli_docs.generate(root, check=True) == []  # idempotent
    (root / "README.md").write_text(readme.replace("| w/o KD | 1.0", "| w/o KD | 9.9"))  # hand-edited
    assert cli_docs.generate(root, check=True) == ["README.md"]


def test_an_unknown_generated_block_is_an_error_naming_the_file():
    with pytest.raises(BenchError, match=r"x\.md: unknown generated block 'nope'"):
        report_docs.fill_blocks("<!-- generated: nope -->\n<!-- end generated -->\n", {}, "x.md")


def test_docstrings_become_markdown_that_shows_what_they_say():
    md = report_docs.docstring_markdown(
        "Reads ``ROOT/<clip>.wav`` and <name> files, see :class:`~bench.api.Method`.\nThe switches:\n"
        "* ``freq``: on\n* a | b\n")
    assert "`ROOT/<clip>.wav`" in md and "&lt;name&gt;" in md and "`bench.api.Method`" in md
    assert "switches:\n\n* `freq`: on\n* a | b" in md  # the blank line a Markdown list needs
    assert report_docs.inline_markdown("a | *b* [c]", cell=True) == "a \\| \\*b\\* \\[c\\]"


def test_method_pages_cover_the_registry_and_the_hand_written_table():
    """Every built-in method has a generated page and a row in the wiring table of methods/index.md,
    so a new method cannot be left out of the site."""
    builtin = {m.name for m in method_infos() if m.source == "builtin"}
    pages = {p.stem for p in (ROOT / "docs" / report_docs.METHOD_DIR).glob("*.md")} - {"index"}
    assert pages == builtin
    table = set(re.findall(r"^\| \[`([a-z0-9]+)`\]", (ROOT / "docs" / "methods" / "index.md").read_text(), re.M))
    assert table == builtin
    fd = (ROOT / "docs" / report_docs.METHOD_DIR / "fdcmkd.md").read_text()
    assert "| `ratio` | `float` | `0.5` |" in fd and "teacher-output cache reads" in fd


def test_readme_is_a_landing_page():
    """The two commands stay first, unchanged; the rest of the documentation lives on the site."""
    text = (ROOT / "README.md").read_text()
    first = re.search(r"```bash\n(.*?)```", text, re.S)
    assert first and text.index("```bash") < text.index("\n## ")
    lines = first.group(1).splitlines()
    assert lines[0].startswith("bash scripts/setup.sh && .venv/bin/bench run --methods all --datasets synthetic --seeds 0,1,2 -j 2")
    assert lines[1].startswith("bash scripts/test.sh")
    assert len(text.splitlines()) <= 170
    assert "<!-- generated: results-table" in text
    links = re.findall(r"\]\((docs/[^)#]+)", text)
    assert links and all((ROOT / link).exists() for link in links), links


def test_bench_docs_check_fails_on_stale_pages_and_generate_fixes_them(tmp_path):
    from typer.testing import CliRunner

    root = _mini_root(tmp_path / "repo")
    cli = CliRunner()
    res = cli.invoke(app, ["docs", "check", "--root", str(root)])
    assert res.exit_code == 1 and "stale: README.md (run bench docs generate)" in res.output, res.output
    assert cli.invoke(app, ["docs", "generate", "--root", str(root)]).exit_code == 0
    res = cli.invoke(app, ["docs", "check", "--root", str(root)])
    assert res.exit_code == 0 and "every documented bench command parses" in res.output, res.output
    (root / "docs" / "page.md").write_text("```bash\nbench results --no-such-option\n```\n")
    res = cli.invoke(app, ["docs", "check", "--root", str(root)])
    assert res.exit_code == 1 and "docs/page.md:2" in res.output and "--no-such-option" in res.output, res.output
    res = cli.invoke(app, ["docs", "check", "--root", str(tmp_path)])
    assert res.exit_code == 2 and "no mkdocs.yml" in res.output, res.output
