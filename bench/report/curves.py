"""Training curves from the records themselves (no tracker needed): ``bench curves`` and the
curves in the HTML leaderboard's per-method detail.

Every record keeps its per-epoch history (validation and test metric, lr, total loss, each loss
term). A curve is the mean over the seeds of one configuration at each epoch, with a ± one sample
standard deviation band where at least two seeds have that epoch. Runs are selected as for the
tables and the leaderboard: ok records of one pairing protocol, each method with its default
parameters when such records exist, and a (dataset, direction, method) whose records come from
different configurations is left out with a note instead of being averaged.

The page's curves are SVG documents built here as text and embedded as ``data:`` images: no
script, no network, allowed by the page's CSP (``img-src data:``), and an image cannot run code
even if a name in it were hostile (names are XML-escaped all the same).
"""

from __future__ import annotations

import base64
import html
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.api.errors import BenchError
from bench.report.figures import in_default_style

VALUES = {"best_metric": "selected_epoch", "final_metric": None, "reference_best_metric": "reference_best_epoch"}
"""``--value`` -> the record field with the epoch it was read at (None: the last epoch)."""

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2", "#7f7f7f",
          "#bcbd22", "#393b79", "#637939", "#843c39"]


@dataclass
class Series:
    """One per-epoch quantity over seeds: mean, sample std (nan below two seeds) and count."""

    epochs: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    n: np.ndarray


def _field(row: dict[str, Any], key: str) -> float | None:
    v = (row.get("terms") or {}).get(key[len("loss/"):]) if key.startswith("loss/") else row.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def series(records: list[dict[str, Any]], key: str) -> Series | None:
    """Mean ± std over ``records`` (the seeds of one configuration) of a history field
    (``test_metric``, ``val_metric``, ``train_loss``, ``lr``) or a loss term (``loss/<name>``)."""
    per: dict[int, list[float]] = {}
    for rec in records:
        for row in rec.get("history") or []:
            v = _field(row, key)
            if v is not None and isinstance(row.get("epoch"), int):
                per.setdefault(row["epoch"], []).append(v)
    if not per:
        return None
    eps = sorted(per)
    vals = [np.asarray(per[e]) for e in eps]
    return Series(np.asarray(eps), np.array([v.mean() for v in vals]),
                  np.array([v.std(ddof=1) if len(v) > 1 else np.nan for v in vals]), np.array([len(v) for v in vals]))


def loss_terms(records: list[dict[str, Any]]) -> list[str]:
    """The loss terms in these records' histories, in first-seen order."""
    out: list[str] = []
    for rec in records:
        for row in rec.get("history") or []:
            for t in row.get("terms") or {}:
                if t not in out:
                    out.append(t)
    return out


def teacher_metric(records: list[dict[str, Any]]) -> tuple[str, float] | None:
    """(teacher modality, mean test metric over the seeds' teachers) when the records name one."""
    vals = [float(r["teacher"]["test_metric"]) for r in records if isinstance(r.get("teacher"), dict)
            and isinstance(r["teacher"].get("test_metric"), (int, float))]
    if not vals:
        return None
    return str(records[0].get("teacher_modality")), float(np.mean(vals))


@dataclass
class Group:
    """The records (seeds) of one method in one (dataset, direction)."""

    method: str
    label: str
    records: list[dict[str, Any]]
    value_points: list[tuple[int, float]] = field(default_factory=list)
    """(epoch, value) per seed for ``--value``: where the reported number was read."""


@dataclass
class Figure:
    dataset: str
    direction: str
    metric: str
    groups: list[Group]
    notes: list[str] = field(default_factory=list)


def select(records: list[dict[str, Any]], *, datasets: list[str] | None = None, methods: list[str] | None = None,
           directions: list[str] | None = None, value: str = "best_metric", pairing: str = "paired") -> list[Figure]:
    """One :class:`Figure` per (dataset, direction) of the selected ok records, one group per method."""
    from bench.report.studies import default_params_keep
    from bench.report.tables import display_name, order_methods

    if value not in VALUES:
        raise BenchError(f"--value {value!r}: expected one of {', '.join(VALUES)}")
    if pairing not in ("paired", "unpaired"):
        raise BenchError(f"--pairing {pairing!r}: expected paired or unpaired")
    recs = [r for r in records if r.get("status") == "ok" and r.get("history")
            and ((r.get("config") or {}).get("train") or {}).get("pairing", "paired") == pairing]
    if not recs:
        raise BenchError(f"no ok records with a history ({pairing} protocol) to draw")
    for opt, key, want in (("--datasets", "dataset", datasets), ("--directions", "direction", directions),
                           ("--methods", "method", methods)):
        if want:
            present = sorted({str(r[key]) for r in recs})
            recs = [r for r in recs if str(r[key]) in want]
            if not recs:
                raise BenchError(f"{opt} {','.join(want)}: no records match; present: {', '.join(present)}")
    by_method: dict[str, list[dict[str, Any]]] = {}
    for r in recs:
        by_method.setdefault(r["method"], []).append(r)
    kept: list[dict[str, Any]] = []
    for m, rs in by_method.items():
        mask = default_params_keep(m, [(r.get("config") or {}).get("method_params", {}) for r in rs])
        kept += [r for r, k in zip(rs, mask) if k]
    cells: dict[tuple[str, str], dict[str, list[dict[str, Any]]]] = {}
    for r in kept:
        cells.setdefault((r["dataset"], r["direction"]), {}).setdefault(r["method"], []).append(r)
    figs = []
    for (ds, d), per in cells.items():
        fig = Figure(ds, d, str(next(iter(per.values()))[0].get("metric", "metric")), [])
        cats = {m: str(rs[0].get("method_category") or "Cross-Modal") for m, rs in per.items()}
        for m in order_methods(per, cats):
            rs = list({r["config_hash"]: r for r in per[m]}.values())  # a run collected twice counts once
            if len({r.get("group_hash") for r in rs}) > 1:
                fig.notes.append(f"{m} on {ds} {d}: records of {len({r.get('group_hash') for r in rs})} "
                                 f"configurations; left out (not averaged)")
                continue
            g = Group(m, display_name(m), sorted(rs, key=lambda r: r.get("seed", 0)))
            for r in g.records:
                at = r.get(VALUES[value]) if VALUES[value] else (r["history"][-1].get("epoch"))
                if isinstance(at, int) and isinstance(r.get(value), (int, float)):
                    g.value_points.append((at, float(r[value])))
            fig.groups.append(g)
        if fig.groups:
            figs.append(fig)
    return sorted(figs, key=lambda f: (f.dataset, f.direction))


def _plain(s: object) -> str:
    """A name as matplotlib text: a ``$`` must not start mathtext."""
    return str(s).replace("$", r"\$")


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", s)[:80] or "_"


@in_default_style
def draw(fig_data: Figure, out_base: Path, value: str = "best_metric") -> list[Path]:
    """The curves of one (dataset, direction) as PNG + PDF: validation and test metric, total
    training loss and one panel per loss term; one colour per method, mean line, ± std band."""
    from bench.report.figures import pyplot, save_figure

    plt = pyplot()
    all_recs = [r for g in fig_data.groups for r in g.records]
    terms = loss_terms(all_recs)
    panels = [("val_metric", f"validation {fig_data.metric}"), ("test_metric", f"test {fig_data.metric}"),
              ("train_loss", "training loss (total)")] + [(f"loss/{t}", f"loss term: {t}") for t in terms]
    from matplotlib.ticker import MaxNLocator

    ncol = 3
    nrow = math.ceil(len(panels) / ncol)
    legend_in = 0.28 * math.ceil(len(fig_data.groups) / 3) + 0.15  # inches under the panels for the legend
    height = 2.9 * nrow + 0.45 + legend_in
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, height), dpi=120, squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    handles = {}
    for (key, title), ax in zip(panels, axes.flat):
        for i, g in enumerate(fig_data.groups):
            s = series(g.records, key)
            if s is None:
                continue
            c = COLORS[i % len(COLORS)]
            (line,) = ax.plot(s.epochs, s.mean, color=c, lw=1.6)
            handles.setdefault(g.method, (line, g))
            band = ~np.isnan(s.std)
            if band.any():
                ax.fill_between(s.epochs[band], (s.mean - s.std)[band], (s.mean + s.std)[band], color=c, alpha=0.18,
                                lw=0)
            if key == "test_metric" and g.value_points:
                ax.scatter(*zip(*g.value_points), color=c, s=14, zorder=3, edgecolor="white", linewidth=0.5)
        if key == "test_metric" and (t := teacher_metric(all_recs)):
            lo, hi = ax.get_ylim()
            ax.set_ylim(lo, max(hi, t[1] + 0.1 * (max(hi, t[1]) - lo)))  # room for the label above the line
            ax.axhline(t[1], color="#444", ls="--", lw=1)
            ax.annotate(_plain(f"teacher ({t[0]}) {t[1]:.1f}"), (0.99, t[1]), xycoords=("axes fraction", "data"),
                        ha="right", va="bottom", fontsize=7, color="#444")
        ax.set_title(_plain(title), fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.25)
    labels = []
    for line, g in handles.values():
        vals = [v for _, v in g.value_points]
        stat = f"{np.mean(vals):.2f}" + (f" ± {np.std(vals, ddof=1):.2f}" if len(vals) > 1 else "") if vals else "-"
        labels.append(_plain(f"{g.label}: {value} {stat} (n={len(g.records)})"))
    fig.legend([h[0] for h in handles.values()], labels, loc="lower center", ncol=min(3, max(len(labels), 1)),
               fontsize=8, frameon=False)
    n_seeds = sorted({len(g.records) for g in fig_data.groups})
    fig.suptitle(_plain(f"{fig_data.dataset} {fig_data.direction}: mean ± std over seeds (n = "
                        f"{'/'.join(map(str, n_seeds))}); dots: the epoch each seed's {value} is read at"), fontsize=10)
    fig.tight_layout(rect=(0, legend_in / height, 1, 1 - 0.4 / height))
    return save_figure(fig, out_base)


def curves(results: list[Path], out: Path, *, datasets: list[str] | None = None, methods: list[str] | None = None,
           directions: list[str] | None = None, value: str = "best_metric",
           pairing: str = "paired") -> tuple[list[Path], list[str]]:
    """``bench curves``: one figure (PNG + PDF) per (dataset, direction) under ``out``."""
    from bench.records.store import load_records

    figs = select(load_records(results), datasets=datasets, methods=methods, directions=directions, value=value,
                  pairing=pairing)
    if not figs:
        raise BenchError("nothing to draw: every selected cell was left out (see the notes)")
    if out.exists() and not out.is_dir():
        raise BenchError(f"--out {out}: is a file; bench curves writes a folder of figures")
    paths: list[Path] = []
    notes: list[str] = []
    for f in figs:
        paths += draw(f, out / f"curves_{_slug(f.dataset)}_{_slug(f.direction)}", value)
        notes += f.notes
    return paths, notes


# ---- SVG for the HTML page -------------------------------------------------------------------------

def _ticks(lo: float, hi: float, n: int = 4) -> list[float]:
    if not math.isfinite(lo) or not math.isfinite(hi) or hi <= lo:
        return [lo]
    step = 10 ** math.floor(math.log10((hi - lo) / n))
    for m in (1, 2, 2.5, 5, 10):
        if (hi - lo) / (step * m) <= n:
            step *= m
            break
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def _log_ticks(lo: float, hi: float) -> list[float]:
    """Ticks of a log axis: the decades inside [lo, hi], or 1-2-5 steps when it spans one decade."""
    out = [10.0 ** k for k in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1) if lo <= 10.0 ** k <= hi]
    if len(out) < 2:
        out = sorted(m * 10.0 ** k for k in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
                     for m in (1, 2, 5) if lo <= m * 10.0 ** k <= hi)
    return out


def _legend(lines: list[dict[str, Any]], x0: int, width: int, esc) -> tuple[list[str], int]:  # type: ignore[no-untyped-def]
    """Legend entries left to right, wrapped onto further rows; returns the parts and the rows' height."""
    parts, x, y = [], x0, 22
    for ln in lines:
        w = 24 + 6 * len(str(ln["label"]))
        if x > x0 and x + w > width - 4:
            x, y = x0, y + 13
        dash = f' stroke-dasharray="{ln["dash"]}"' if ln.get("dash") else ""
        parts.append(f'<line x1="{x}" x2="{x + 14}" y1="{y}" y2="{y}" stroke="{ln["color"]}" stroke-width="2"{dash}/>'
                     f'<text x="{x + 17}" y="{y + 3}" fill="#1d2433">{esc(ln["label"])}</text>')
        x += w
    return parts, y - 22 + 13


def svg_panel(lines: list[dict[str, Any]], title: str, width: int = 420, height: int = 230,
              hlines: list[tuple[float, str]] | None = None, log: bool = False) -> str:
    """A small line chart as an SVG document. ``lines``: dicts with ``series`` (:class:`Series`),
    ``label``, ``color`` and optional ``dash``; ``hlines``: (y, label) reference lines; ``log``: a
    log y axis (used when every value is positive). Every text is XML-escaped; only presentation
    attributes are used (no style attribute, no script)."""
    esc = html.escape
    legend, legend_h = _legend(lines, 44, width, esc)
    left, right, top, bottom = 44, 8, 18 + legend_h, 24
    height += legend_h - 13
    pw, ph = width - left - right, height - top - bottom
    xs = [x for ln in lines for x in ln["series"].epochs]
    ys = [y for ln in lines for y in np.concatenate([ln["series"].mean, ln["series"].mean + np.nan_to_num(ln["series"].std),
                                                    ln["series"].mean - np.nan_to_num(ln["series"].std)])]
    ys += [y for y, _ in hlines or []]
    ys = [y for y in ys if math.isfinite(y) and (y > 0 or not log)]
    parts = [(f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
              f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="10">'
              f'<rect width="{width}" height="{height}" fill="#ffffff"/>'),
             f'<text x="{left}" y="12" font-size="11" font-weight="bold" fill="#1d2433">{esc(title)}</text>', *legend]
    if not xs or not ys:
        parts.append(f'<text x="{left}" y="{top + 20}" fill="#5b6475">no history</text></svg>')
        return "".join(parts)
    x0, x1 = min(xs), max(xs)
    x1 = x1 if x1 > x0 else x0 + 1
    f = math.log10 if log else (lambda v: v)
    y0, y1 = f(min(ys)), f(max(ys))
    pad = (y1 - y0) * 0.06 or abs(y0) * 0.05 or 1.0
    y0, y1 = y0 - pad, y1 + pad

    def X(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * pw

    def Y(y: float) -> float:
        v = f(max(y, 1e-300)) if log else y
        return top + (1 - (v - y0) / (y1 - y0)) * ph

    parts.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#c9ced8"/>')
    for t in (_log_ticks(10 ** y0, 10 ** y1) if log else _ticks(y0, y1)):
        parts.append(f'<line x1="{left}" x2="{left + pw}" y1="{Y(t):.1f}" y2="{Y(t):.1f}" stroke="#eef0f4"/>'
                     f'<text x="{left - 4}" y="{Y(t) + 3:.1f}" text-anchor="end" fill="#5b6475">{t:g}</text>')
    for t in _ticks(x0, x1, 5):
        if abs(t - round(t)) < 1e-9:
            parts.append(f'<text x="{X(t):.1f}" y="{top + ph + 13}" text-anchor="middle" fill="#5b6475">{round(t)}</text>')
    parts.append(f'<text x="{left + pw}" y="{height - 2}" text-anchor="end" fill="#5b6475">epoch</text>')
    for y, label in hlines or []:
        parts.append(f'<line x1="{left}" x2="{left + pw}" y1="{Y(y):.1f}" y2="{Y(y):.1f}" stroke="#444" '
                     f'stroke-dasharray="5,3"/><text x="{left + pw - 2}" y="{Y(y) - 3:.1f}" text-anchor="end" '
                     f'fill="#444">{esc(label)}</text>')
    for ln in lines:
        s: Series = ln["series"]
        ok = ~np.isnan(s.std) & ((s.mean - s.std > 0) if log else True)
        if ok.sum() > 1:
            up = [f"{X(x):.1f},{Y(y):.1f}" for x, y in zip(s.epochs[ok], (s.mean + s.std)[ok])]
            dn = [f"{X(x):.1f},{Y(y):.1f}" for x, y in zip(s.epochs[ok][::-1], (s.mean - s.std)[ok][::-1])]
            parts.append(f'<polygon points="{" ".join(up + dn)}" fill="{ln["color"]}" fill-opacity="0.18"/>')
        pts = " ".join(f"{X(x):.1f},{Y(y):.1f}" for x, y in zip(s.epochs, s.mean))
        dash = f' stroke-dasharray="{ln["dash"]}"' if ln.get("dash") else ""
        parts.append(f'<polyline points="{pts}" fill="none" stroke="{ln["color"]}" stroke-width="1.6"{dash}/>')
        if len(s.epochs) == 1:
            parts.append(f'<circle cx="{X(s.epochs[0]):.1f}" cy="{Y(s.mean[0]):.1f}" r="2.5" fill="{ln["color"]}"/>')
    parts.append("</svg>")
    return "".join(parts)


def svg_data_uri(svg: str) -> str:
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode("utf-8")).decode("ascii")


def cell_svgs(records: list[dict[str, Any]], baseline: list[dict[str, Any]] | None, metric: str,
              baseline_label: str = "w/o KD") -> list[tuple[str, str]]:
    """The page's curves of one method in one cell: (title, SVG) for the metric panel (test and
    validation, the w/o KD test curve and the teacher for reference) and the loss panel."""
    lines = []
    for key, label, color, dash in (("test_metric", "test", "#1f77b4", None), ("val_metric", "val", "#1f77b4", "4,3")):
        s = series(records, key)
        if s is not None:
            lines.append({"series": s, "label": label, "color": color, "dash": dash})
    if baseline:
        s = series(baseline, "test_metric")
        if s is not None:
            lines.append({"series": s, "label": f"{baseline_label} test", "color": "#9aa1ad", "dash": "2,2"})
    t = teacher_metric(records)
    n = len(records)
    out = [(f"{metric} per epoch", svg_panel(lines, f"{metric} (mean ± std, {n} seed{'s' if n != 1 else ''})",
                                             hlines=[(t[1], f"teacher ({t[0]}) {t[1]:.1f}")] if t else None))]
    loss_lines = []
    for i, term in enumerate(loss_terms(records)):
        s = series(records, f"loss/{term}")
        if s is not None:
            loss_lines.append({"series": s, "label": term, "color": COLORS[(i + 1) % len(COLORS)]})
    if loss_lines:
        vals = np.concatenate([ln["series"].mean for ln in loss_lines])
        log = bool((vals > 0).all() and vals.max() / vals.min() > 30)  # terms of very different sizes
        out.append(("loss terms per epoch", svg_panel(loss_lines, "training loss terms (mean ± std)"
                                                      + (", log scale" if log else ""), log=log)))
    return out
