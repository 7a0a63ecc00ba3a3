"""Why does Feat (FitNet) sit at chance on ``synthetic`` a2v? (issue #25)

Runs the default synthetic job's Feat configuration (audio teacher -> visual student, seed 0)
through the runner's own code (resolve, the cached teacher, ``build_student_and_method``, ``fit``)
and prints, per variant:

* the gradient norm of each loss term (CE, the weighted hint MSE) with respect to the student's
  parameters at the first steps (each term on its own, before the optimiser step);
* after every epoch (eval mode, training set), the fraction of dead student features: units of
  the pooled penultimate vector (the classifier's input) that are 0 on every training sample, and
  of the regressor's output; the share of zero activations; a ridge linear probe's training
  accuracy on the student's feature (class information it carries); the regressor's output
  variance next to its target's total and within-class variance, and the plain MSE;
* the training CE and hint terms, and the test accuracy.

Variants: ``--set`` style overrides given on the command line, e.g. ``feat.feat_weight=1``, plus
two settings of this script: ``diag.clip=X`` clips the student's gradient norm at X (the student
only: ``train.grad_clip`` would retrain the teacher with clipping too, since it is part of the
teacher's identity) and ``diag.lr_warmup=N`` ramps the lr linearly over the first N epochs' steps
(the runner has no warm-up: applied here by scaling each step's lr). The built-in list (no
argument): vector Feat (as published), with clipping, with a warm-up, with smaller hint weights, the
default (the reference hint layer's map), and w/o KD for the dead-feature baseline.

Usage: ``OMP_NUM_THREADS=1 python scripts/diagnose-feat.py [--steps 5] [--epochs N] [VARIANT ...]``
where a VARIANT is ``name:scope.key=value,scope.key=value`` (``name:`` alone: the defaults).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import tempfile
from contextlib import contextmanager
from typing import Any

import torch

from bench.train.device import resolve_device
from bench.train.loop import fit, load_splits
from bench.train.resolve import RunSpec, resolve
from bench.train.run import build_student_and_method
from bench.train.step import Trainer
from bench.train.teachers import get_teacher

DEFAULT_VARIANTS = [
    "feat-vector:feat.mode=vector",
    "feat-vector+clip1:feat.mode=vector,diag.clip=1",
    "feat-vector+clip5:feat.mode=vector,diag.clip=5",
    "feat-vector+warmup1:feat.mode=vector,diag.lr_warmup=1",
    "feat-vector+warmup3:feat.mode=vector,diag.lr_warmup=3",
    "feat-vector-w10:feat.mode=vector,feat.feat_weight=10",
    "feat-vector-w1:feat.mode=vector,feat.feat_weight=1",
    "feat-map:feat.mode=map",
    "feat-default:",
    "none:method=none",
]


def parse_variant(text: str) -> tuple[str, str, dict[str, dict[str, str]], dict[str, str]]:
    name, _, rest = text.partition(":")
    method, overrides, diag = "feat", {}, {}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, value = item.split("=", 1)
        if key == "method":
            method = value
            continue
        scope, k = key.split(".", 1)
        (diag if scope == "diag" else overrides.setdefault(scope, {}))[k] = value
    return name or method, method, overrides, diag


@contextmanager
def lr_warmup(steps: int):
    """Scale the lr of the first ``steps`` optimiser steps linearly from 1/steps to 1 (the runner
    sets each epoch's lr at the epoch's start; this multiplies it per step)."""
    original = Trainer.optimizer_step
    count = {"n": 0}

    def stepped(self: Trainer) -> None:
        k = count["n"]
        count["n"] += 1
        if k < steps:
            saved = [g["lr"] for g in self.opt.param_groups]
            for g in self.opt.param_groups:
                g["lr"] = g["lr"] * (k + 1) / steps
            original(self)
            for g, lr in zip(self.opt.param_groups, saved):
                g["lr"] = lr
        else:
            original(self)

    Trainer.optimizer_step = stepped  # type: ignore[method-assign]
    try:
        yield
    finally:
        Trainer.optimizer_step = original  # type: ignore[method-assign]


def grad_norm(term: torch.Tensor, params: list[torch.nn.Parameter]) -> float:
    grads = torch.autograd.grad(term, params, retain_graph=True, allow_unused=True)
    return math.sqrt(sum(float((g.detach() ** 2).sum()) for g in grads if g is not None))


def probe_accuracy(f: torch.Tensor, y: torch.Tensor, num_classes: int) -> float:
    """Training accuracy of a ridge linear probe on ``f``: how much class information it carries."""
    x = torch.cat([f.flatten(1), torch.ones(len(f), 1)], 1).double()
    onehot = torch.nn.functional.one_hot(y, num_classes).double()
    w = torch.linalg.solve(x.T @ x + 1e-2 * torch.eye(x.shape[1], dtype=x.dtype), x.T @ onehot)
    return float(((x @ w).argmax(1) == y).double().mean())


@torch.no_grad()
def epoch_state(student, method, teacher, adapter, split, s_mod, t_mod, device) -> dict[str, float]:
    """Eval-mode state on the training set: units of the student's pooled penultimate vector that
    are 0 on every sample (dead), the share of zero activations, a linear probe's accuracy on it,
    and for Feat the regressor's output variance next to its target's (a regressor that predicts
    a constant has variance ~0 and an MSE equal to the target's variance)."""
    was = student.training
    student.eval()
    method.modules.eval()
    xb, y = adapter.batch(split, torch.arange(len(split)), [s_mod, t_mod], device, False, None)
    s = student(xb[s_mod])
    out = {"dead_feature": float((s.feature.abs().amax(0) == 0).float().mean()),
           "zero_act": float((s.feature == 0).float().mean()),
           "probe": probe_accuracy(s.feature, y, adapter.num_classes)}
    if "reg" in method.modules and teacher is not None:
        fs, ft = method.regress(s, teacher.eval()(xb[t_mod]))
        out["dead_regressor"] = float((fs.transpose(0, 1).reshape(fs.shape[1], -1).abs().amax(1) == 0).float().mean())
        out["reg_var"] = float(fs.var(0, unbiased=False).mean())
        out["target_var"] = float(ft.var(0, unbiased=False).mean())
        within = torch.stack([ft[y == c].var(0, unbiased=False).mean() for c in torch.unique(y)]).mean()
        out["target_within_var"] = float(within)
        out["mse"] = float(((fs - ft) ** 2).mean())
    student.train(was)
    method.modules.train(was)
    return out


def run_variant(text: str, results: str, steps: int, epochs: int | None) -> dict[str, Any]:
    name, method_name, overrides, diag = parse_variant(text)
    if epochs is not None:
        overrides.setdefault("train", {})["epochs"] = str(epochs)
    spec = RunSpec("synthetic", "audio", "visual", method_name, 0, overrides, results, "cpu")
    r = resolve(spec)
    device = resolve_device("cpu")
    splits = load_splits(r.adapter, r.train)
    teacher, tinfo = get_teacher(r, splits, device) if r.method_cls.uses_teacher else (None, None)
    student, method, plan = build_student_and_method(r, spec, splits, teacher, device)
    s_mod, t_mod = r.config["student_modality"], r.config["teacher_modality"]
    norms: list[dict[str, float]] = []
    inner = method.loss
    s_params = [p for p in student.parameters() if p.requires_grad]

    def measured(s, t, y, epoch):
        terms = inner(s, t, y, epoch)
        if len(norms) < steps:
            norms.append({k: grad_norm(v, s_params) for k, v in terms.items()})
        return terms

    method.loss = measured  # type: ignore[method-assign]
    per_epoch: list[dict[str, Any]] = []

    def on_epoch(e: int, row: dict[str, Any]) -> None:
        per_epoch.append({"epoch": e, "test": row["test_metric"], **row["terms"],
                          **epoch_state(student, method, teacher, r.adapter, splits["train"], s_mod, t_mod,
                                           device)})

    n_steps = len(splits["train"]) // r.train.batch_size
    warm = int(diag.get("lr_warmup", "0")) * n_steps
    train = dataclasses.replace(r.train, grad_clip=float(diag.get("clip", r.train.grad_clip)))
    with lr_warmup(warm) if warm else _nothing():
        res = fit(adapter=r.adapter, splits=splits, student=student, student_modality=s_mod, method=method,
                  teacher=teacher, teacher_modality=t_mod, train=train, epochs=r.train.epochs, seed=spec.seed,
                  device=device, on_epoch=on_epoch, plan=plan, teacher_key=None)
    report = method.report() if callable(getattr(method, "report", None)) else None
    return {"name": name, "norms": norms, "epochs": per_epoch, "best": res.history[res.selected_epoch - 1]["test_metric"],
            "teacher": tinfo["test_metric"] if tinfo else None, "report": report}


@contextmanager
def _nothing():
    yield


def show(v: dict[str, Any]) -> None:
    print(f"\n== {v['name']}  (teacher test {v['teacher']}, selected-epoch test {v['best']:.1f}"
          + (f", method {v['report']}" if v["report"] else "") + ")")
    for i, n in enumerate(v["norms"], 1):
        print(f"  step {i}: grad norm " + ", ".join(f"{k} {x:.3g}" for k, x in n.items()))
    for e in v["epochs"]:
        rest = {k: x for k, x in e.items() if k not in ("epoch", "test")}
        print(f"  epoch {e['epoch']:2d}: test {e['test']:5.1f}  " + ", ".join(f"{k} {x:.3f}" for k, x in rest.items()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("variants", nargs="*", help="name:scope.key=value,... (default: the built-in list)")
    ap.add_argument("--steps", type=int, default=5, help="first steps whose per-term gradient norms are printed")
    ap.add_argument("--epochs", type=int, default=None, help="student epochs (default: the synthetic default, 10)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="diagnose-feat-") as results:
        for text in args.variants or DEFAULT_VARIANTS:
            show(run_variant(text, results, args.steps, args.epochs))


if __name__ == "__main__":
    main()
