"""Terminal renderings (Rich) of what the commands report: the registries, a prepared cache, SLURM
progress, the records of a folder, ``bench speed`` and the CCH analysis.

Every string that comes from a plug-in, a dataset folder or a record goes in as
:class:`rich.text.Text`, never parsed as markup.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table
from rich.text import Text


def _row(t: Table, *cells: Any) -> None:
    t.add_row(*(c if isinstance(c, Text) else Text(str(c)) for c in cells))


def method_catalog() -> Table:
    """``bench list methods``: every method, grouped by category (the tables' order), with its
    source (reference code) and where it was registered from; the composition syntax below."""
    from bench.api.compose import USAGE
    from bench.report.catalog import method_infos
    from bench.report.rows import CATEGORY_ORDER

    def rank(cat: str) -> int:
        return CATEGORY_ORDER.index(cat) if cat in CATEGORY_ORDER else len(CATEGORY_ORDER)

    t = Table(title="KD methods, by category", caption=USAGE, caption_justify="left")
    for c in ("name", "category", "description", "parameters (defaults)", "search space (bench tune)",
              "source (reference code; registered from)"):
        t.add_column(c)
    last = None
    for m in sorted(method_infos(), key=lambda m: rank(str(m.category))):  # stable: registry order within one
        if last is not None and m.category != last:
            t.add_section()
        last = m.category
        _row(t, m.name, m.category, m.description, m.params_text(), m.search_space,
             f"{m.origin_text()}; {m.source_text()}")
    return t


def dataset_catalog() -> Table:
    from bench.report.catalog import dataset_infos

    t = Table(title="datasets")
    for c in ("name", "task", "metric", "modalities", "directions", "description"):
        t.add_column(c)
    for d in dataset_infos():
        mods = ", ".join(f"{name} ({code}, {kind})" for name, code, kind, _shape in d.modalities) or "from the data"
        dirs = ", ".join(d.directions) or "from the data"
        if d.by_name:
            dirs += f"; by name: {', '.join(d.by_name)}"
        _row(t, d.name, d.task, d.metric, mods, dirs, d.description)
    t.caption = DIRECTION_SYNTAX
    return t


DIRECTION_SYNTAX = ("directions: TEACHER2STUDENT with modality codes (a2v) or names (audio->visual). --directions all "
                    "= the cross-modal pairs; 'same' = same-modality (v2v: the student modality's own teacher, a "
                    "separately trained one when train.teacher_backbone differs); 'sets' = a teacher set of all "
                    "modalities (av2v, also written a+v2v: members joined by '+', or their codes run together where "
                    "that reads back unambiguously; its teacher is train.teacher_fusion, late fusion of the members' "
                    "pooled features by default)")


def backbone_catalog() -> list[Any]:
    """``bench list backbones``: every registered backbone (library and version, inputs, tasks,
    parameters, source), then what each dataset builds by default per modality."""
    import importlib.metadata

    from bench.api.config import describe_params
    from bench.api.registry import BACKBONES, DATASETS
    from bench.models.registry import factory_attr, factory_description

    t = Table(title="backbones (--set train.teacher_backbone=NAME / train.student_backbone=NAME; "
                    "parameters: --set teacher.KEY=V / student.KEY=V)")
    for c in ("name", "library", "inputs", "tasks", "description", "parameters (defaults)", "source"):
        t.add_column(c)
    for e in sorted(BACKBONES.entries(), key=lambda e: e.source != "builtin" or e.obj.__module__ != "bench.models.zoo"):
        lib = factory_attr(e.obj, "library") or "cmkd-bench"
        try:
            lib += " " + importlib.metadata.version(lib) if lib != "cmkd-bench" else ""
        except importlib.metadata.PackageNotFoundError:
            lib += " (not installed)"
        ps = ", ".join(f"{n}={d}" + (f" ({rng})" if rng else "")
                       for n, _, d, _, rng in describe_params(factory_attr(e.obj, "Params"))) or "-"
        _row(t, e.name, lib, ", ".join(factory_attr(e.obj, "layouts") or ("any",)),
             ", ".join(factory_attr(e.obj, "tasks") or ("any",)), factory_description(e.obj), ps,
             e.source + (f" [{e.source_hash}]" if e.source_hash else ""))
    d = Table(title="dataset defaults (train.*_backbone=default; --set teacher.KEY=V changes one parameter of it)")
    for c in ("dataset", "modality", "default backbone"):
        d.add_column(c)
    for e in DATASETS.entries():
        try:
            ad = e.obj(e.obj.Params())
            mods = ad.modalities
        except Exception:  # noqa: BLE001 - a plug-in adapter that needs settings to describe itself
            continue
        for m in mods:
            fn = getattr(ad, "default_backbone", None)
            try:
                text = _default_text(*fn(m.name)) if callable(fn) else "its own build_model"
            except Exception:  # noqa: BLE001 - e.g. a folder dataset without its folder
                text = "(depends on the dataset's files)"
            _row(d, e.name, f"{m.name} ({m.kind})", text)
    return [t, d]


def _default_text(name: str, params: dict[str, Any]) -> str:
    ps = ", ".join(f"{k}={','.join(map(str, v)) if isinstance(v, (list, tuple)) else v}" for k, v in params.items())
    return f"{name}({ps})"


def prepare_report(m: dict[str, Any], cache: Path, seconds: float, adapter: Any = None) -> list[Any]:
    """The prepared splits (rows listed, used, skipped and why, class histogram or pixels per class
    for dense labels), the cache's size, and what one GPU run holds per data placement."""
    from bench.train.placement import fmt_bytes as g
    from bench.train.placement import manifest_sizes, placement_needs

    out: list[Any] = []
    splits = m["splits"]
    dense = any(s.get("hist_unit") == "pixels" for s in splits.values())
    t = Table(title=f"{m['dataset']} prepared into {cache} in {seconds:.1f}s")
    for c in ("split", "listed", "used", "skipped (reason: count)", "void pixels" if dense else "class histogram"):
        t.add_column(c)
    for split, s in splits.items():
        skipped = "; ".join(f"{r}: {v['count']}" for r, v in s["skipped"].items()) or "-"
        last = f"{s.get('void_pixels', 0):,}" if dense else " ".join(map(str, s["class_hist"]))
        _row(t, split, s["listed"], s["n"], skipped, last)
    out.append(t)
    if dense:  # segmentation: pixels per class (void excluded), one column per split
        h = Table(title=f"{m['dataset']}: labelled pixels per class")
        h.add_column("class")
        for split in splits:
            h.add_column(split, justify="right")
        totals = {split: max(sum(s["class_hist"]), 1) for split, s in splits.items()}
        for c, name in enumerate(m.get("classes") or range(len(next(iter(splits.values()))["class_hist"]))):
            _row(h, f"{c} {name}", *(f"{s['class_hist'][c]:,} ({100 * s['class_hist'][c] / totals[sp]:.1f}%)"
                                     for sp, s in splits.items()))
        out.append(h)
    size = sum((cache / a["file"]).stat().st_size for s in splits.values() for a in s["arrays"].values()
               if (cache / a["file"]).exists())  # the arrays of this version (a rebuilt cache has them in v-*/)
    notes = {k: v for k, v in m.get("info", {}).items()
             if k in ("clips_with_empty_audio", "video_ids_shared_across_splits", "images_in_train_and_test")}
    out.append(Text(f"cache: {size / 2**20:.1f} MiB, content hash {m['content_hash']}" + (f", notes: {notes}" if notes else "")))
    if adapter is None:
        return out
    from bench.train.resolve import build_train_config

    tc = build_train_config(adapter, {})
    mt = Table(title=f"memory of one GPU run on this cache (batch {tc.batch_size}, eval batch {tc.eval_batch_size}; "
                     f"teacher-output cache not included)")
    for c in ("direction", "arrays read", "device", "pinned", "stream"):
        mt.add_column(c)
    for t_mod, s_mod in adapter.directions():
        sizes = manifest_sizes(m, [s_mod, t_mod], getattr(adapter, "label_key", "label"))
        need = placement_needs(sizes, tc.batch_size, tc.eval_batch_size, cuda=True)
        _row(mt, adapter.direction_name(t_mod, s_mod), g(sum(d for _n, d, _r in sizes.values())),
             f"{g(need['device']['device_bytes'])} GPU + {g(need['device']['host_bytes'])} RAM",
             f"{g(need['pinned']['host_bytes'])} pinned RAM",
             f"{g(need['stream']['host_bytes'])} RAM (+{g(need['stream']['page_cache_bytes'])} page cache)")
    out.append(mt)
    return out


def slurm_status(rows: list[dict[str, Any]], show_all: bool) -> list[Any]:
    """Per array: done / running / pending / failed / other; then the unfinished tasks (or all),
    each with its error tail."""
    from bench.launch.slurm import summarize

    t = Table(title="SLURM arrays")
    for c in ("array", "done", "running", "pending", "failed", "other"):
        t.add_column(c)
    for arr, c in summarize(rows).items():
        other = sum(v for k, v in c.items() if k not in ("done", "running", "pending", "failed"))
        _row(t, arr, *(c.get(k, 0) for k in ("done", "running", "pending", "failed")), other)
    out: list[Any] = [t]
    for r in rows if show_all else [r for r in rows if r["status"] != "DONE"]:
        line = f"{r['job_id']:>10} {r['status']:<12} {r['run_id']}"
        out.append(Text(line, style="red" if r["error"] else ""))
        if r["error"]:
            out.append(Text("    " + r["error"].strip().replace("\n", "\n    ")))
    return out


def records_table(df: Any, where: Path) -> Table:
    """``bench results``: one line per record."""
    t = Table(title=f"{len(df)} records in {where}")
    for c in ("dataset", "dir", "method", "seed", "status", "metric", "selected", "final", "ref. best", "epoch", "time"):
        t.add_column(c, justify="right" if c in ("seed", "selected", "final", "ref. best", "epoch", "time") else "left")
    for r in df.sort_values(["dataset", "direction", "method", "seed"]).itertuples():
        ok = r.status == "ok"
        _row(t, r.dataset, r.direction, r.method, r.seed, Text(r.status, style="" if ok else "red"), r.metric,
             f"{r.best_metric:.2f}" if ok else "-", f"{r.final_metric:.2f}" if ok else "-",
             f"{r.reference_best_metric:.2f}" if ok else "-", int(r.selected_epoch) if ok else "-",
             f"{r.wall_time_s:.0f}s" if r.wall_time_s == r.wall_time_s else "-")
    return t


def speed_table(results: list[dict[str, Any]], title: str) -> Table:
    """``bench speed``: per method, direction and mode: throughput, step breakdown, TFLOP/s, MFU."""
    tab = Table(title=title)
    for col in ("method", "dir", "mode", "samples/s", "step ms", "data%", "teacher%", "student%", "optim%",
                "TFLOP/s", "MFU", "peak GiB", "speed-up"):
        tab.add_column(col, justify="right" if col not in ("method", "dir", "mode") else "left")
    for r in results:
        for name, x in r["modes"].items():
            pct = x["breakdown_pct"]
            _row(tab, r["method"], r["direction"], name, f"{x['samples_per_s']:.1f}", f"{x['step_ms']:.1f}",
                 *(f"{pct.get(k, 0):.1f}" for k in ("data", "teacher_forward", "student_forward_backward", "optimizer")),
                 f"{x['tflops']:.2f}", f"{100 * x['mfu']:.1f}%" if x["mfu"] is not None else "n/a",
                 f"{x['peak_memory_gib']:.2f}", f"{r['speedup']:.2f}x" if name == "on" and "speedup" in r else "")
    return tab


def grid_estimate_lines(estimate: dict[str, Any], unit: str) -> list[Text]:
    out = []
    for name, e in estimate.items():
        teach = (f" + teachers {e['teacher_hours']:.2f}" if e["teacher_hours"] is not None
                 else " (teachers not included: add 'none' to --methods)")
        out.append(Text(f"estimated {unit}-hours ({name}), {e['runs']} runs x {e['epochs']} epochs at the official split "
                        f"sizes, one run after another: students {e['student_runs_hours']:.2f}{teach}; "
                        f"{e['train_pflop']:.1f} PFLOP of training steps"))
    return out


def cch_table(dataset: str, rows: list[dict[str, Any]]) -> Table:
    cols = ("direction", "k", "I(H_T;H_S)", "I(H_S;Y)", "delta", "verdict", "measured_mean_gain")
    t = Table(title=f"CCH criterion on {dataset} (Gaussian MI, nats)")
    for c in cols:
        t.add_column(c)
    for r in rows:
        _row(t, *(r[c] for c in cols))
    return t
