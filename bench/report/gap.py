"""``bench analyze gap``: the CCH criterion and the modality gap, measured (issue #27, item 4).

For every student modality ``s`` whose records hold its same-modality direction (``v2v``) and at
least one other teacher choice (cross-modal ``a2v``, the teacher set ``av2v``):

1. **CCH per teacher choice**: I(H_T;H_S), I(H_S;Y) and delta = I(H_T;H_S) - I(H_S;Y) at each PCA
   size k, with ``bench analyze cch``'s estimator on the train split of the features seed. H_S is
   one network for all choices of ``s`` (the saved w/o KD student), H_T the choice's teacher:
   :mod:`bench.report.gap_features` says which files and why.
2. **Gain** per (method, choice): the KD run's selected-epoch test metric (``best_metric``) minus
   the w/o KD run's, paired per seed (and split fingerprint). w/o KD is run once per direction
   (its config names the teacher modality, so ``a2v`` and ``v2v`` are separate runs; it never
   reads the teacher, so on a deterministic device they agree, which the notes check); a gain is
   paired with the w/o KD runs of its own direction, else of the same-modality direction, else of
   the first other direction of ``s`` (column "w/o KD of").
3. **Modality gap** per (method, choice other than same-modality): gain(choice) - gain(same-
   modality), paired per seed; n/a for a method that distils from a teacher set only (MST-Distill:
   no same-modality run exists to subtract).
4. **Does CCH predict which teachers help?** Per (method, choice): the prediction (``predict="all"``:
   delta > 0 at every k -> helps, <= 0 at every k -> does not help, else no prediction;
   ``"middle"``: the sign at the middle k) against the measured gain verdict; and, per method,
   whether ordering the choices by delta (middle k) gives the order by mean gain (Spearman's rho
   with three or more choices).

Statistics are :mod:`bench.report.stats.paired`'s (95 % t-interval, paired t-test, Holm): every
gain shown is one family, every gap another. Verdicts are better / worse / equivalent (TOST in
the ROPE) / inconclusive / untested; never "tie". A missing value says why in its row.
Records enter as in the comparison table: ok, paired protocol, no teacher control, default
method parameters (tuned records left out), of the dataset configuration given by ``--set``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from bench.api.errors import BenchError
from bench.data.tsets import direction_kind, is_set
from bench.records.provenance import stable_hash
from bench.records.store import load_records, to_frame
from bench.report import gap_features as G
from bench.report.analysis import _adapter_and_splits, onehot_minus_one
from bench.report.cells import one_per_seed
from bench.report.rows import display_name, order_methods
from bench.report.stats import paired as P
from bench.report.tables import seed_values
from bench.report.tuning import select_params

PREDICTS = ("all", "middle")
KIND_ORDER = {"cross-modal": 0, "teacher-set": 1, "same-modality": 2}
MEASURED = {"better": "helps", "worse": "hurts", "equivalent": "no effect", "inconclusive": "not shown",
            "untested": "untested"}


def check_predict(value: str) -> str:
    if value not in PREDICTS:
        raise BenchError(f"--predict {value!r}: expected all (every k agrees on the sign, the default) or middle "
                         f"(the sign at the middle k)")
    return value


def _records(results: Path, adapter: Any, sets: str, remedy: str) -> tuple[pd.DataFrame, dict[str, dict], list[str]]:
    """The ok records of ``results`` that the analysis reads (see :func:`select_records`)."""
    return select_records(load_records(results, status="ok"), adapter, sets, remedy, where=str(results))


def select_records(records: list[dict[str, Any]], adapter: Any, sets: str, remedy: str,
                   where: str = "the records") -> tuple[pd.DataFrame, dict[str, dict], list[str]]:
    """Of ok ``records``, those the analysis reads (see the module docstring) as a frame and by run
    id, and notes on those left out. A list rather than a folder, so that a publication that has
    already loaded and checked its records (``bench reproduce``) analyses exactly those."""
    mine = [r for r in records if r.get("dataset") == adapter.name and r.get("status", "ok") == "ok"]
    if not mine:
        raise BenchError(f"bench analyze gap: no ok records of {adapter.name} in {where}; run `{remedy}` first")
    want = stable_hash(adapter.fingerprint())
    same = [r for r in mine if stable_hash((r.get("config") or {}).get("dataset")) == want]
    if not same:
        raise BenchError(f"bench analyze gap: {len(mine)} record(s) of {adapter.name} in {where}, none run with the "
                         f"dataset parameters given ({sets.strip() or 'the defaults'}); pass the --set options the "
                         f"runs used")
    notes = [f"{len(mine) - len(same)} record(s) of {adapter.name} with other dataset parameters left out"] \
        if len(same) < len(mine) else []
    df = to_frame(same)
    keep = (df["pairing"] == "paired") & (df["teacher_control"] == "none")
    if not keep.all():
        notes.append(f"{int((~keep).sum())} record(s) of the unpaired protocol or a teacher control left out")
    df, more = select_params(df[keep], "default")
    return df, {r["run_id"]: r for r in same}, notes + more


def _cell(df: pd.DataFrame, direction: str, method: str) -> tuple[dict | None, str | None]:
    """A (direction, method) cell's (seed, split fingerprint) -> best metric, or why there is none."""
    sub = df[(df["direction"] == direction) & (df["method"] == method)]
    if sub.empty:
        return None, f"no {display_name(method)} records of {direction}"
    _, problems = one_per_seed(sub.to_dict("records"))
    groups = int(sub["group_hash"].nunique())
    if groups > 1 or problems:
        return None, f"conflict in {display_name(method)} on {direction}: " + "; ".join(
            ([f"{groups} configurations"] if groups > 1 else []) + problems)
    return seed_values(sub, "best_metric"), None


def _per_seed(a: dict, b: dict) -> dict:
    """a - b on their matched (seed, fingerprint) keys (:func:`bench.report.stats.paired.match`)."""
    a, b = P.aligned(a, b)
    keys, _, _ = P.match(a, b)
    return {k: a[k] - b[k] for k in keys}


def _plan(df: pd.DataFrame, adapter: Any, need: str = "same-modality") -> dict[str, list[tuple[str, str, str]]]:
    """Student modality -> its teacher choices (direction, teacher, kind), same-modality last: the
    students with records of a choice of kind ``need`` and of at least one other choice (the gap
    needs the same-modality direction; the teacher-set comparison a teacher set)."""
    plan = {}
    for s in (m.name for m in adapter.modalities):
        sub = df[df["student_modality"] == s]
        dirs = {d: t for d, t in zip(sub["direction"], sub["teacher_modality"])}
        choices = sorted(((d, t, direction_kind(t, s)) for d, t in dirs.items()),
                         key=lambda c: (KIND_ORDER[c[2]], c[0]))
        if any(c[2] == need for c in choices) and len(choices) > 1:
            plan[s] = choices
    return plan


def _none_runs_note(df: pd.DataFrame, s: str, dirs: list[str]) -> str:
    """Whether the w/o KD runs of ``s``'s directions agree seed by seed (separate runs, same result?)."""
    sub = df[(df["method"] == "none") & (df["student_modality"] == s) & (df["direction"].isin(dirs))]
    have = sorted(set(sub["direction"]))
    if len(have) < 2:
        return f"w/o KD of {s}: runs of {', '.join(have) or 'no direction'} only"
    differ = []
    for seed, g in sub.groupby("seed"):
        vals = {d: float(v) for d, v in zip(g["direction"], g["best_metric"])}
        if len(set(vals.values())) > 1:
            differ.append(f"seed {seed}: " + ", ".join(f"{d} {v:g}" for d, v in sorted(vals.items())))
    head = f"w/o KD of {s}: separate runs per direction ({', '.join(have)})"
    return head + ("; equal best metric on every seed" if not differ else "; they differ (" + "; ".join(differ) + ")")


def _cch(results: Path, adapter: Any, df: pd.DataFrame, by_id: dict[str, dict], plan: dict, splits: dict, seed: int,
         ks: tuple[int, ...], tap: str, set_feature: str, device: torch.device, remedy_of: Any) -> dict:
    """(student, direction) -> {"rows": per-k values, "teacher_file", "hs_run"} or {"missing": why}."""
    train = splits["train"]
    y = train.labels.numpy()
    if y.ndim != 1:
        raise BenchError("bench analyze gap needs image-level labels (classification datasets only)")
    yoh = onehot_minus_one(y, adapter.num_classes)
    none = df[df["method"] == "none"]
    out: dict = {}
    for s, choices in plan.items():
        none_recs = [by_id[rid] for rid in none[none["student_modality"] == s]["run_id"]]
        hs_model, hs_rec = G.student_network(results, adapter, none_recs, s, seed, device, remedy_of(s))
        hs = G.representation(hs_model, adapter, train, s, device, tap)
        for d, t, _kind in choices:
            kd = df[(df["direction"] == d) & (df["method"] != "none") & (df["seed"] == seed)]
            try:
                name = G.teacher_file([k if isinstance(k, str) else None for k in kd["teacher_key"]], d, seed)
                model, path = G.teacher_network(results, adapter, t, name, device)
                ht = G.representation(model, adapter, train, t, device, tap, fused=set_feature == "fused" and is_set(t))
                if ht.shape == hs.shape and np.array_equal(ht, hs):
                    raise G.Missing(f"its teacher {path.name} computes exactly H_S's features (the same network)")
                out[(s, d)] = {"rows": G.cch_per_k(ht, hs, yoh, ks), "teacher_file": str(path.relative_to(results)),
                               "hs_run": hs_rec["run_id"]}
            except G.Missing as why:
                out[(s, d)] = {"missing": str(why), "hs_run": hs_rec["run_id"]}
    return out


def _prediction(deltas: list[float] | None, ks: tuple[int, ...], predict: str) -> str:
    if not deltas:
        return "missing"
    if predict == "middle":
        return "helps" if deltas[ks.index(G.middle_k(ks))] > 0 else "does not help"
    if all(x > 0 for x in deltas):
        return "helps"
    return "does not help" if all(x <= 0 for x in deltas) else "no prediction (the ks disagree)"


def _agreement(predicted: str, verdict: str | None) -> str:
    """CCH says KD helps when delta > 0, "does not help or hurts" otherwise; inconclusive decides nothing."""
    if verdict is None:
        return "missing"
    if predicted not in ("helps", "does not help"):
        return "no prediction"
    if verdict in ("inconclusive", "untested"):
        return "undecided"
    if predicted == "helps":
        return "agree" if verdict == "better" else "disagree"
    return "agree" if verdict in ("worse", "equivalent") else "disagree"


def _ranking(rows: list[dict[str, Any]], ks: tuple[int, ...]) -> dict[str, Any]:
    """Per method: the choices ordered by delta at the middle k and by mean gain, and whether they agree."""
    from scipy.stats import rankdata, spearmanr

    k = G.middle_k(ks)
    have = [r for r in rows if r.get(f"delta_k{k}") is not None and r.get("mean_gain") is not None]
    res: dict[str, Any] = {"k": k, "choices": [r["direction"] for r in have],
                           "delta": [r[f"delta_k{k}"] for r in have], "gain": [r["mean_gain"] for r in have],
                           "missing": [r["direction"] for r in rows if r not in have]}
    if len(have) < 2:
        res.update(same_order=None, rho=None)
        return res
    rd, rg = rankdata([-x for x in res["delta"]]), rankdata([-x for x in res["gain"]])
    res["same_order"] = bool(np.array_equal(rd, rg))
    rho = float(spearmanr(res["delta"], res["gain"]).statistic) if len(have) >= 3 else float("nan")
    res["rho"] = None if rho != rho else rho
    return res


def gap(dataset: str, results: Path, out: Path, overrides: dict[str, dict[str, str]], seed: int = 0,
        ks: tuple[int, ...] = (4, 8, 16), tap: str = "pre", device: str = "cpu", *, set_feature: str = "output",
        predict: str = "all", methods: list[str] | None = None, alpha: float = P.ALPHA, rope: float = P.ROPE,
        correction: str = P.DEFAULT_CORRECTION) -> dict[str, Any]:
    """``bench analyze gap``: writes ``gap_<dataset>.csv`` (one row per student, method and teacher
    choice) and ``gap_<dataset>.md``; returns the rows, the rankings, the notes and the Markdown."""
    from bench.api.names import check_component
    from bench.report.gap_render import write_outputs
    from bench.train.resolve import build_adapter

    G.check_set_feature(set_feature)
    check_predict(predict)
    P.check_correction(correction)
    P.check_alpha(alpha)
    P.check_rope(rope)
    ks = tuple(dict.fromkeys(int(k) for k in ks))
    if not ks or min(ks) < 1:
        raise BenchError(f"--k {','.join(map(str, ks))}: expected PCA sizes >= 1")
    methods = [m for m in methods or [] if m != "none"] or None  # w/o KD is every gain's baseline anyway
    results = Path(results)
    if not results.is_dir():
        raise BenchError(f"-r {results}: expected a results folder (records/, teachers/, models/), not a file")
    probe = build_adapter(dataset, overrides)
    if probe.task != "classification":  # before any split is read
        raise BenchError(f"bench analyze gap: {probe.name} is a {probe.task} dataset; the CCH's I(H_S;Y) needs "
                         f"image-level labels (classification datasets only)")
    adapter, _, splits = _adapter_and_splits(dataset, overrides, seed)
    name = check_component(adapter.name, "dataset name")
    sets = G.overrides_text(overrides)
    grid = (f"bench run --methods none,{','.join(methods or ['logit'])} --datasets {name} --directions all,same,sets "
            f"--seeds 0,1,2 --save-model{sets}")
    df, by_id, notes = _records(results, adapter, sets, grid)
    plan = _plan(df, adapter)
    if not plan:
        raise BenchError(f"bench analyze gap: no student modality of {name} in {results} has records of its "
                         f"same-modality direction (e.g. {adapter.direction_name(*(adapter.modalities[0].name,) * 2)}) "
                         f"and of another teacher choice; run `{grid}`")
    known = set(df["method"]) - {"none"}
    if not known:
        raise BenchError(f"bench analyze gap: no KD records beside w/o KD for the students of {name}; run `{grid}`")
    for m in methods or []:
        if m not in known:
            raise BenchError(f"--methods: no records of {m!r} on {name} (recorded KD methods: "
                             f"{', '.join(sorted(known))})")
    cch = _cch(results, adapter, df, by_id, plan, splits, seed, ks, tap, set_feature, torch.device(device),
               lambda s: f"bench run --methods none --datasets {name} --directions {adapter.direction_name(s, s)} "
                         f"--seeds {seed} --save-model{sets}")
    rows, n_gain, n_gap, _ = _measured(df, adapter, plan, cch, ks, methods, notes, alpha, rope, correction)
    for row in rows:
        deltas = [row.get(f"delta_k{k}") for k in ks]
        row["predicted"] = _prediction(None if None in deltas else deltas, ks, predict)
        row["measured"] = MEASURED.get(row.get("gain_verdict") or "", "missing")
        row["agreement"] = _agreement(row["predicted"], row.get("gain_verdict"))
    rankings = {(s, m): _ranking([r for r in rows if (r["student"], r["method"]) == (s, m)], ks)
                for s, m in dict.fromkeys((r["student"], r["method"]) for r in rows)}
    info = {"dataset": name, "seed": seed, "ks": ks, "tap": tap, "set_feature": set_feature, "predict": predict,
            "n_train": len(splits["train"]), "alpha": alpha, "rope": rope, "correction": correction,
            "n_gain_tests": n_gain, "n_gap_tests": n_gap}
    return write_outputs(out, rows, cch, plan, rankings, notes, info)


CCH_KEYS = ("teacher_file", "hs_run", "cch_missing")


def gains_and_gaps(df: pd.DataFrame, adapter: Any, *, need: str = "same-modality", methods: list[str] | None = None,
                   alpha: float = P.ALPHA, rope: float = P.ROPE,
                   correction: str = P.DEFAULT_CORRECTION) -> dict[str, Any]:
    """The measured part of ``bench analyze gap`` alone: gains and gaps from the records'
    best metrics (``df`` from :func:`select_records`), without CCH, so without any model file,
    and writing nothing (a publication whose grid saved no models calls this). ``need``: which
    students are analysed (:func:`_plan`). Returns ``rows`` (as ``gap``'s, less the CCH columns),
    ``plan``, ``per_seed`` ((student, method, direction) -> seed key -> gain, what a further
    paired comparison of gains starts from), ``notes`` and the sizes of the two families."""
    P.check_correction(correction)
    P.check_alpha(alpha)
    P.check_rope(rope)
    plan = _plan(df, adapter, need)
    notes: list[str] = []
    rows, n_gain, n_gap, per_seed = _measured(df, adapter, plan, {}, (), methods, notes, alpha, rope, correction)
    for r in rows:
        for k in CCH_KEYS:
            r.pop(k, None)
    return {"rows": rows, "plan": plan, "per_seed": per_seed, "notes": notes, "n_gain_tests": n_gain,
            "n_gap_tests": n_gap}


def set_only(method: str) -> bool:
    """Whether ``method`` distils from a teacher set only (MST-Distill): it has no run with a
    one-modality teacher, so no modality gap. A name no registry knows (a plug-in not loaded)
    counts as not: its gap then says which gain is missing."""
    from bench.api.compose import method_class
    from bench.api.registry import METHODS

    try:
        return bool(method_class(method, METHODS).requires_teacher_set)
    except (BenchError, KeyError):
        return False


def _measured(df: pd.DataFrame, adapter: Any, plan: dict, cch: dict, ks: tuple[int, ...], methods: list[str] | None,
              notes: list[str], alpha: float, rope: float,
              correction: str) -> tuple[list[dict[str, Any]], int, int, dict[tuple[str, str, str], dict]]:
    """One row per (student, method, teacher choice) with its CCH values, gain and gap; the numbers
    of gain and gap tests (each family corrected together); the per-seed gains."""
    cats = dict(zip(df["method"], df["method_category"]))
    rows, gain_items, seeds_of = [], {}, {}
    for s, choices in plan.items():
        dirs = [c[0] for c in choices]
        notes.append(_none_runs_note(df, s, dirs))
        same = adapter.direction_name(s, s)
        base = {d: _cell(df, d, "none") for d in dirs}
        notes += [why for _, why in base.values() if why and why.startswith("conflict")]
        ms = [m for m in order_methods(set(df[df["student_modality"] == s]["method"]) - {"none"}, cats)
              if not methods or m in methods]
        for m in ms:
            for d, t, kind in choices:
                row = _row(s, d, t, kind, m, cch.get((s, d), {}), ks)
                row["gap_vs"] = same if kind != "same-modality" else None
                kd, why = _cell(df, d, m)
                b_dir = next((x for x in [d, same, *dirs] if x in base and base[x][0] is not None), None)
                if kd is None or b_dir is None:
                    row["gain_missing"] = why or f"no w/o KD records of student {s}"
                else:
                    row["baseline"] = b_dir
                    gain_items[(s, m, d)] = (kd, base[b_dir][0])
                    seeds_of[(s, m, d)] = _per_seed(kd, base[b_dir][0])
                rows.append(row)
    gains = P.compare_family(gain_items, alpha=alpha, rope=rope, correction=correction)
    gap_items, by_key = {}, {(r["student"], r["method"], r["direction"]): r for r in rows}
    for key, row in by_key.items():
        if key in gains:
            _fill(row, "gain", gains[key], "mean_gain", "w/o KD")
        if row["gap_vs"] is None:
            continue
        if row["kind"] == "teacher-set" and set_only(key[1]):
            row["gap_missing"] = (f"n/a: {display_name(key[1])} distils from a teacher set only; no run with a "
                                  f"one-modality teacher to subtract")
            continue
        ref = (key[0], key[1], row["gap_vs"])
        if key in seeds_of and ref in seeds_of:
            gap_items[key] = (seeds_of[key], seeds_of[ref])
        else:
            lacking = " and of ".join(x[2] for x in (key, ref) if x not in seeds_of)
            row["gap_missing"] = f"gain of {lacking} missing"
    gaps = P.compare_family(gap_items, alpha=alpha, rope=rope, correction=correction)
    for key, r in gaps.items():
        _fill(by_key[key], "gap", r, "mean_gap", by_key[key]["gap_vs"])
    tested = [sum(1 for r in fam.values() if r.p is not None) for fam in (gains, gaps)]
    return rows, tested[0], tested[1], seeds_of


def _row(s: str, d: str, t: str, kind: str, m: str, c: dict, ks: tuple[int, ...]) -> dict[str, Any]:
    row: dict[str, Any] = {"student": s, "direction": d, "teacher": t, "kind": kind, "method": m,
                           "teacher_file": c.get("teacher_file"), "hs_run": c.get("hs_run"),
                           "cch_missing": c.get("missing")}
    for v in c.get("rows", []):
        row.update({f"k_used_k{v['k']}": v["k_used"], f"I_TS_k{v['k']}": v["i_ts"], f"I_SY_k{v['k']}": v["i_sy"],
                    f"delta_k{v['k']}": v["delta"]})
    return row


def _fill(row: dict[str, Any], prefix: str, r: P.Paired, mean_key: str, other: str) -> None:
    row.update({f"{prefix}_n": r.n, f"{prefix}_seeds": " ".join(map(str, r.seeds)), mean_key: r.diff,
                f"{prefix}_ci_low": r.ci[0] if r.ci else None, f"{prefix}_ci_high": r.ci[1] if r.ci else None,
                f"{prefix}_p": r.p, f"{prefix}_p_adj": r.p_adj, f"{prefix}_verdict": r.verdict,
                f"{prefix}_unmatched": r.unmatched_text("KD" if prefix == "gain" else row["direction"], other)})
