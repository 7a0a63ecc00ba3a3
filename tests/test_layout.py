"""The code layout (issue #18): plug-in imports stay stable, the documented plug-in examples run, no
import cycles, modules of a readable size."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from bench.cli import app
from bench.records.store import load_records

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"


PLUGIN_PAGE = ROOT / "docs" / "extending" / "plugins.md"


def readme_example(kind: str) -> str:
    """The Python block that follows ``<!-- example: KIND`` on the site's plug-in page."""
    text = PLUGIN_PAGE.read_text()
    m = re.search(r"<!-- example: " + kind + r"\b[^>]*-->\s*```python\n(.*?)```", text, re.S)
    assert m, f"{PLUGIN_PAGE.relative_to(ROOT)} has no '{kind}' example block"
    return m.group(1)


def test_readme_plugin_examples_run(tmp_path):
    """The plug-in examples, copied from docs/extending/plugins.md, train end to end."""
    (tmp_path / "my_method.py").write_text(readme_example("method"))
    (tmp_path / "my_dataset.py").write_text(readme_example("dataset"))
    res = CliRunner().invoke(app, ["run", "--plugin", str(tmp_path / "my_method.py"), "--plugin",
                                   str(tmp_path / "my_dataset.py"), "--methods", "mykd,none", "--datasets", "blobs",
                                   "-r", str(tmp_path / "res"), "--device", "cpu", "--epochs", "2"])
    assert res.exit_code == 0, res.output
    recs = load_records(tmp_path / "res")
    assert sorted((r["method"], r["direction"]) for r in recs) == [("mykd", "l2r"), ("mykd", "r2l"),
                                                                   ("none", "l2r"), ("none", "r2l")]
    assert all(r["status"] == "ok" and r["best_metric"] > 40 for r in recs)  # 3 classes: chance 33 %
    mykd = next(r for r in recs if r["method"] == "mykd")
    assert set(mykd["history"][0]["terms"]) == {"ce", "kd"} and mykd["method_source"].startswith("plugin:")
    assert mykd["speed"]["teacher_cache"] is True  # teacher_cache_fields + augments() False: cached


OLD_IMPORTS = """
import warnings
warnings.simplefilter("error", DeprecationWarning)
try:
    from bench.method import Method
except DeprecationWarning as w:
    assert "bench.api.method" in str(w), w
else:
    raise SystemExit("no DeprecationWarning for bench.method")
warnings.simplefilter("ignore", DeprecationWarning)
from bench.method import Method, MethodContext
from bench.config import hp, TrainConfig
from bench.registry import register_method, register_dataset
from bench.models import ModelOutput, to_4d, ResNetBackbone, MLPBackbone
from bench.data import DatasetAdapter, Modality, Split
from bench.prepared import PreparedDataset
from bench.cache import ArraySpec, PrepPlan, SplitPlan, sha256_file
from bench.errors import BenchError
from bench.utils import stable_hash, atomic_write_json, resolve_device
from bench.runner import RunSpec, run, resolve, build_adapter, load_splits, get_teacher
from bench.vision import normalize
import bench.api as api
assert Method is api.Method and hp is api.hp and register_method is api.register_method
assert DatasetAdapter is api.DatasetAdapter and ModelOutput is api.ModelOutput
print("ok")
"""


def test_old_import_paths_still_work_with_a_deprecation_warning():
    r = subprocess.run([sys.executable, "-c", OLD_IMPORTS], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def _module_name(p: Path) -> str:
    rel = p.relative_to(ROOT).with_suffix("")
    return ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)


def _bench_modules() -> dict[str, Path]:
    return {_module_name(p): p for p in BENCH.rglob("*.py") if not {"methods", "datasets"} & set(p.parts)}


def _imports(p: Path, name: str, mods: dict[str, Path]) -> set[str]:
    """bench modules imported by ``p`` anywhere in it (module level and inside functions)."""
    out = set()
    pkg = name if p.name == "__init__.py" else name.rsplit(".", 1)[0]
    for n in ast.walk(ast.parse(p.read_text())):
        if isinstance(n, ast.ImportFrom):
            base = pkg.split(".")[: len(pkg.split(".")) - (n.level - 1)] if n.level else []
            m = ".".join(base + [n.module]) if n.level and n.module else (".".join(base) if n.level else n.module or "")
            cands = [m] + [f"{m}.{a.name}" for a in n.names]
        elif isinstance(n, ast.Import):
            cands = [a.name for a in n.names]
        else:
            continue
        for c in cands:
            while c and c not in mods:
                c = c.rsplit(".", 1)[0] if "." in c else ""
            if c and c != name:
                out.add(c)
    return out


def test_no_import_cycles():
    """Tarjan's strongly connected components over every import between bench modules, also the
    ones inside functions (a cycle hidden in a function is still a cycle)."""
    mods = _bench_modules()
    graph = {m: _imports(p, m, mods) for m, p in mods.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    assert len(mods) > 40 and not cycles, cycles


def test_modules_stay_readable():
    """No module of bench/ over about 500 lines; no loose modules besides the package's own."""
    sizes = {m: len(p.read_text().splitlines()) for m, p in _bench_modules().items()}
    assert max(sizes.values()) <= 520, sorted(sizes.items(), key=lambda kv: -kv[1])[:3]
    loose = sorted(p.name for p in BENCH.glob("*.py"))
    assert loose == ["__init__.py", "_moved.py"], loose
    subpackages = sorted(p.name for p in BENCH.iterdir() if (p / "__init__.py").exists() and not p.is_symlink())
    assert subpackages == ["api", "cli", "data", "launch", "models", "records", "report", "train", "tune"]
