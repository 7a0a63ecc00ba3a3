"""FD-CMKD study tables (ablation, threshold, sensitivity), default-config filtering, LaTeX wrapping.

Each study is a one-factor (or two-factor) study around the method's defaults: the ablation table
varies the four switches with l1, l2 and ratio at their defaults, the threshold table varies
``ratio`` with the full method, the sensitivity table/heatmap varies ``l1`` x ``l2`` with the full
method. Records that also change another parameter are left out (and counted in a note), so a
row never mixes configurations. Run the grids with ``bench run --sweep`` (README).
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.api.errors import BenchError
from bench.report.figures import in_default_style
from bench.report.tables import Comparison, build_comparison, check_label, tex_escape

SWITCHES = ("freq", "align", "scale", "log")


SWITCH_NAMES = ("Freq", "Align", "Scale", "Log")


VARIANTS = ("decomp", "bands", "split", "split_tau", "band_weights")
"""FD-CMKD's variant parameters (learnable split, multi-band DFT, Haar): rows of their own in the
ablation and threshold tables."""


def variant_label(params: dict, defaults: dict) -> str:
    """'' for the paper's decomposition, else e.g. '4 DFT bands', 'Haar, 3 bands', 'learnable split'."""
    parts = []
    if params.get("split", "fixed") == "learnable":
        parts.append("learnable split")
    if params.get("decomp", "dft") == "haar":
        parts.append(f"Haar, {params.get('bands', 2)} bands")
    elif params.get("bands", 2) != 2:
        parts.append(f"{params['bands']} DFT bands")
    if list(params.get("band_weights") or []) != list(defaults.get("band_weights") or []):
        parts.append("weights " + "/".join(f"{w:g}" for w in params["band_weights"]))
    if params.get("split_tau", defaults.get("split_tau")) != defaults.get("split_tau"):
        parts.append(f"tau {params['split_tau']:g}")
    return ", ".join(parts)


# Table 4 rows in the paper's order: baseline (Feat), F, A, F+A, F+S, F+A+S, F+A+S+L
ABLATION_ORDER = [
    (False, False, False, False), (True, False, False, False), (False, True, False, False),
    (True, True, False, False), (True, False, True, False), (True, True, True, False), (True, True, True, True),
]


def method_defaults(method: str) -> dict[str, Any] | None:
    """The default parameters of a row's method; a tuned or teacher-control row key
    (``logit:shuffled-teacher``) is its registered method's."""
    from bench.api.config import params_dict
    from bench.api.names import PART_SEPARATOR
    from bench.api.registry import METHODS
    from bench.report.rows import base_method

    try:
        base = base_method(method)
        if PART_SEPARATOR in base:  # a composition: its flat PART.KEY defaults (bench.api.compose)
            from bench.api.compose import default_params

            return default_params(base, METHODS)
        return params_dict(METHODS.get(base).Params())
    except Exception:  # noqa: BLE001 - a plug-in not loaded here: nothing to compare with
        return None


def default_params_keep(method: str, params: list[dict[str, Any]]) -> list[bool]:
    """Which of a method's records to show: only the default-parameter ones when some exist.

    Studies (ablations, sweeps) leave non-default records of a method in the results folder; the
    comparison table and the leaderboard must show the method as published, not flag a conflict.
    A method run only with non-default parameters (or unknown here, e.g. an unloaded plug-in)
    keeps all its records (a conflict is flagged if they differ).
    """
    d = method_defaults(method)
    if d is None:
        return [True] * len(params)
    is_def = [all(p.get(k, v) == v for k, v in d.items()) for p in params]
    return is_def if any(is_def) else [True] * len(params)


def prefer_defaults(df: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """:func:`default_params_keep` applied to a results DataFrame; returns (rows kept, notes)."""
    keep = []
    notes = []
    for m, sub in df.groupby("method", sort=False):
        mask = default_params_keep(m, list(sub["method_params"]))
        if not all(mask):
            notes.append(f"{mask.count(False)} {m} record(s) with non-default parameters (studies) not shown.")
        keep.append(sub[mask])
    return (pd.concat(keep) if keep else df), notes


def _variant_frame(df: pd.DataFrame, method: str, keys: tuple[str, ...], fixed: dict[str, Any]
                   ) -> tuple[pd.DataFrame, dict[str, tuple], int]:
    defaults = method_defaults(method) or {}
    sub = df[df["method"] == method].copy()
    if sub.empty:
        raise BenchError(f"no ok {method} records; run the study first (see README: bench run --sweep)")
    ok = sub["method_params"].apply(lambda p: all(p.get(k, v) == v for k, v in fixed.items()))
    dropped = int((~ok).sum())
    sub = sub[ok]
    if sub.empty:
        raise BenchError(f"no {method} records with {', '.join(f'{k}={v}' for k, v in fixed.items())}")
    vals = {}

    def key(p: dict[str, Any]) -> str:
        t = tuple(_hashable(p.get(k, defaults.get(k))) for k in keys)  # older records lack newer keys
        k = "|".join(f"{a}={b}" for a, b in zip(keys, t))
        vals[k] = t
        return k

    sub["method"] = sub["method_params"].apply(key)
    sub["method_category"] = None
    return sub, vals, dropped


def _hashable(v: Any) -> Any:
    return tuple(v) if isinstance(v, list) else v


def build_ablation(df: pd.DataFrame, *, datasets: list[str] | None = None, value: str = "best_metric",
                   decimals: int = 1, method: str = "fdcmkd") -> Comparison:
    d = method_defaults(method) or {}
    keys = SWITCHES + VARIANTS
    fixed = {k: v for k, v in d.items() if k not in keys}
    sub, vals, dropped = _variant_frame(df, method, keys, fixed)

    def var(k: str) -> str:
        return variant_label(dict(zip(keys, vals[k])), d)

    def switches(k: str) -> tuple:
        return vals[k][:len(SWITCHES)]

    order = sorted(vals, key=lambda k: (var(k) != "", ABLATION_ORDER.index(switches(k)) if switches(k) in ABLATION_ORDER else 99,
                                        var(k), k))
    labels = {}
    for k in order:
        v = switches(k)
        base = "Feat (baseline)" if not any(v) else ("FD-CMKD" if all(v) else
                                                     "+".join(n[0] for n, on in zip(SWITCH_NAMES, v) if on))
        labels[k] = base + (f" ({var(k)})" if var(k) else "")
    comp = build_comparison(sub, value=value, methods=order, datasets=datasets, decimals=decimals, row_labels=labels)
    comp.lead_columns = list(SWITCH_NAMES)
    comp.lead_values = {k: [r"\checkmark" if on else "" for on in switches(k)] for k in order}
    comp.title = "Ablation of FD-CMKD's components (Freq: frequency decomposition, Align: shared classifiers, Scale: standardisation, Log: logMSE)"
    if dropped:
        comp.notes.append(f"{dropped} record(s) with other non-default parameters left out.")
    return comp


def build_threshold(df: pd.DataFrame, *, datasets: list[str] | None = None, value: str = "best_metric",
                    decimals: int = 1, method: str = "fdcmkd") -> Comparison:
    d = method_defaults(method) or {}
    keys = ("ratio",) + VARIANTS
    fixed = {k: v for k, v in d.items() if k not in keys}
    sub, vals, dropped = _variant_frame(df, method, keys, fixed)

    def var(k: str) -> str:
        return variant_label(dict(zip(keys, vals[k])), d)

    order = sorted(vals, key=lambda k: (var(k) != "", var(k), vals[k][0]))
    labels = {}
    for k in order:
        v = var(k)
        if "learnable" in v:
            labels[k] = f"{v} (init r = {vals[k][0]:g})"
        elif v:
            labels[k] = v
        else:
            labels[k] = f"r = {vals[k][0]:g}" + (" (default)" if vals[k][0] == d.get("ratio") else "")
    comp = build_comparison(sub, value=value, methods=order, datasets=datasets, decimals=decimals, row_labels=labels)
    comp.title = "Frequency split threshold r of FD-CMKD (low band = the first r of the non-DC frequency bins)"
    if dropped:
        comp.notes.append(f"{dropped} record(s) with other non-default parameters left out.")
    return comp


def build_sensitivity(df: pd.DataFrame, *, datasets: list[str] | None = None, value: str = "best_metric",
                      method: str = "fdcmkd") -> tuple[dict[tuple[str, str], pd.DataFrame], list[str]]:
    """Per (dataset, student modality): a l1 x l2 DataFrame of means over seeds (NaN = missing)."""
    d = method_defaults(method) or {}
    fixed = {k: v for k, v in d.items() if k not in ("l1", "l2")}
    sub, vals, dropped = _variant_frame(df, method, ("l1", "l2"), fixed)
    if datasets:
        sub = sub[sub["dataset"].isin(datasets)]
    l1s = sorted({v[0] for v in vals.values()})
    l2s = sorted({v[1] for v in vals.values()})
    grids = {}
    notes = [f"{dropped} record(s) with other non-default parameters left out."] if dropped else []
    for (ds, mod), cell in sub.groupby(["dataset", "student_modality"], sort=False):
        g = pd.DataFrame(np.nan, index=pd.Index(l1s, name="l1"), columns=pd.Index(l2s, name="l2"))
        for k, grp in cell.groupby("method"):
            if grp["group_hash"].nunique() > 1:
                notes.append(f"{ds}/{mod} {k}: {grp['group_hash'].nunique()} configurations, left out")
                continue
            a, b = vals[k]
            g.loc[a, b] = float(grp.drop_duplicates("config_hash")[value].astype(float).mean())
        grids[(ds, mod)] = g
    return grids, notes


def sensitivity_latex(grids: dict[tuple[str, str], pd.DataFrame], *, decimals: int = 1, metric: str = "top1",
                      caption: str | None = None, label: str = "tab:sensitivity", booktabs: bool = True,
                      notes: list[str] | None = None, caption_is_latex: bool = False) -> str:
    """The l1 x l2 grids as LaTeX; dataset/modality names, notes and a given caption are escaped as
    plain text (``caption_is_latex``: the caption is the user's LaTeX source)."""
    top, mid, bot = (r"\toprule", r"\midrule", r"\bottomrule") if booktabs else (r"\hline", r"\hline", r"\hline")
    metric_word = "mIoU (\\%)" if metric == "mIoU" else "top-1 accuracy (\\%)"
    if caption is not None:
        caption = caption if caption_is_latex else tex_escape(caption)
    cap = caption or (f"Sensitivity of FD-CMKD to the loss weights $\\lambda_1$ (rows, L$_{{low}}$) and $\\lambda_2$ "
                      f"(columns, L$_{{high}}$), {metric_word}; mean over seeds. Per grid, best in \\textbf{{bold}}, "
                      f"second \\underline{{underlined}}; -- = no result.")
    for n in notes or []:
        cap += " " + tex_escape(n)
    out = [r"\begin{table}[t]", r"\centering", r"\small", r"\caption{" + cap + "}", r"\label{" + check_label(label) + "}"]
    for (ds, mod), g in grids.items():
        vals = sorted({round(float(v), decimals) for v in g.values.ravel() if not np.isnan(v)}, reverse=True)
        best, second = (vals[0] if vals else None), (vals[1] if len(vals) > 1 else None)
        n_best = sum(1 for v in g.values.ravel() if not np.isnan(v) and round(float(v), decimals) == best)
        out.append(r"\begin{tabular}{l" + "c" * g.shape[1] + "}")
        out.append(top)
        out.append(rf"\multicolumn{{{g.shape[1] + 1}}}{{c}}{{{tex_escape(ds)} / {tex_escape(mod)}}} \\")
        out.append(mid)
        out.append(r"$\lambda_1 \backslash \lambda_2$ & " + " & ".join(f"{c:g}" for c in g.columns) + r" \\")
        out.append(mid)
        for a in g.index:
            row = [f"{a:g}"]
            for b in g.columns:
                v = g.loc[a, b]
                if np.isnan(v):
                    row.append("--")
                    continue
                t = f"{v:.{decimals}f}"
                r = round(float(v), decimals)
                if r == best:
                    t = rf"\textbf{{{t}}}"
                elif r == second and n_best == 1:
                    t = rf"\underline{{{t}}}"
                row.append(t)
            out.append(" & ".join(row) + r" \\")
        out.append(bot)
        out.append(r"\end{tabular}\quad")
    out.append(r"\end{table}")
    return "\n".join(out) + "\n"


@in_default_style
def sensitivity_heatmap(grids: dict[tuple[str, str], pd.DataFrame], out_base: Path, metric: str = "top1") -> list[Path]:
    from bench.report.figures import pyplot, save_figure

    plt = pyplot()
    n = len(grids)
    if n == 0:
        raise BenchError("no sensitivity grid to draw")
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n + 0.6, 3.4), dpi=150, squeeze=False)
    for ax, ((ds, mod), g) in zip(axes[0], grids.items()):
        im = ax.imshow(g.values, cmap="viridis", origin="lower", aspect="auto")
        ax.set_xticks(range(g.shape[1]), [f"{c:g}" for c in g.columns])
        ax.set_yticks(range(g.shape[0]), [f"{r:g}" for r in g.index])
        ax.set_xlabel(r"$\lambda_2$ (high)")
        ax.set_ylabel(r"$\lambda_1$ (low)")
        ax.set_title(f"{ds} / {mod}", fontsize=9, parse_math=False)  # a "$" in a name is not mathtext
        for i, j in itertools.product(range(g.shape[0]), range(g.shape[1])):
            v = g.values[i, j]
            ax.text(j, i, "--" if np.isnan(v) else f"{v:.1f}", ha="center", va="center", fontsize=7,
                    color="white" if not np.isnan(v) and v < np.nanmean(g.values) else "black")
        fig.colorbar(im, ax=ax, fraction=0.046, label=metric)
    fig.tight_layout()
    return save_figure(fig, out_base)


def standalone(latex_body: str) -> str:
    """Wrap a table in a minimal compilable document (booktabs, amssymb for the check marks)."""
    return ("\\documentclass{article}\n\\usepackage{booktabs}\n\\usepackage{amssymb}\n"
            "\\usepackage[margin=1.5cm,landscape]{geometry}\n\\pagestyle{empty}\n\\begin{document}\n"
            + latex_body + "\\end{document}\n")


def grid_markdown(g: pd.DataFrame, decimals: int) -> str:
    """One l1 x l2 sensitivity grid as a Markdown table (rows l1, columns l2; missing cells --)."""
    head = "| l1 \\ l2 | " + " | ".join(f"{c:g}" for c in g.columns) + " |"
    rows = [head, "|" + "---|" * (g.shape[1] + 1)]
    for a in g.index:
        rows.append(f"| {a:g} | " + " | ".join("--" if v != v else f"{v:.{decimals}f}" for v in g.loc[a]) + " |")
    return "\n".join(rows) + "\n"
