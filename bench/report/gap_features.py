"""The networks behind ``bench analyze gap``'s CCH column: H_S, H_T per teacher choice, and the
criterion computed from their features.

* **H_S** is one network per student modality, the same for every teacher choice of that student,
  so the deltas of ``a2v``, ``v2v`` and ``av2v`` differ only in H_T and can be compared. It is the
  w/o KD student of the features seed saved with ``--save-model`` (plain CE on the student's
  modality: the "trained unimodal student" of the CCH recipe). It cannot be the cached teacher of
  the student's modality, which ``bench analyze cch`` uses: that network is H_T of ``v2v``, and
  I(H_T;H_S) of a network with itself is meaningless. The w/o KD run of the same-modality direction
  is taken when it was saved, else that of the first other direction in name order (w/o KD never
  reads its teacher; the report names the run used).
* **H_T** is the teacher that the choice's KD records of that seed name (``teacher.checkpoint``:
  only its file name is used, read from ``RESULTS/teachers/<dataset>/<teacher>/``, never from
  the path written in a record): the unimodal teacher, or the fusion teacher of a teacher set.
  A fusion teacher's representation is its classifier input (``ModelOutput.pre_feature`` /
  ``feature``: the hidden layer, the vector a KD method reads and the analogue of a unimodal
  teacher's pooled feature); ``set_feature="fused"`` takes the concatenated members' pooled
  vectors instead (the fused vector before the head).

Both are rebuilt as the dataset's own networks; a record or teacher file with another backbone is
reported as missing, with the reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.api.errors import BenchError
from bench.api.names import join_under
from bench.data import batch_indices
from bench.data.tsets import batch_inputs, component, is_set, members
from bench.records.files import load_torch_file
from bench.records.models import load_saved_model
from bench.records.provenance import stable_hash
from bench.report.analysis import gaussian_mi, pca_apply, pca_fit

SET_FEATURES = ("output", "fused")


class Missing(Exception):
    """A value that cannot be computed from what the results folder holds (reported, never dropped)."""


def check_set_feature(value: str) -> str:
    if value not in SET_FEATURES:
        raise BenchError(f"--set-feature {value!r}: expected output (the fusion teacher's classifier input, the "
                         f"default) or fused (the members' pooled vectors concatenated)")
    return value


def overrides_text(overrides: dict[str, dict[str, str]]) -> str:
    """``--set`` options that reproduce ``overrides`` (for the commands an error suggests)."""
    return "".join(f" --set {scope}.{k}={v}" for scope, kv in overrides.items() for k, v in kv.items())


def _default_backbone(rec: dict[str, Any], role: str) -> bool:
    b = (rec.get("backbones") or {}).get(role)
    return not isinstance(b, dict) or bool(b.get("default", True))  # records before backbones: the default


def student_network(results: Path, adapter: Any, none_recs: list[dict[str, Any]], student: str, seed: int,
                    device: torch.device, remedy: str) -> tuple[torch.nn.Module, dict[str, Any]]:
    """H_S: the saved w/o KD student of ``student`` at ``seed`` (see the module docstring)."""
    same = adapter.direction_name(student, student)
    saved = [r for r in none_recs
             if r["student_modality"] == student and int(r["seed"]) == seed and r.get("model_path")]
    if not saved:
        raise BenchError(f"bench analyze gap: no w/o KD student of {student} saved with --save-model at seed {seed} "
                         f"in {results} (H_S, the student representation of every teacher choice); make it with "
                         f"`{remedy}`")
    saved.sort(key=lambda r: (r["direction"] != same, r["direction"], r["run_id"]))
    rec = saved[0]
    if not _default_backbone(rec, "student"):
        raise BenchError(f"bench analyze gap: the w/o KD student of run {rec['run_id']} has a non-default backbone; "
                         f"the analysis rebuilds the dataset's own networks only")
    model = adapter.build_model(student, adapter.num_classes).to(device)
    try:
        model.load_state_dict(load_saved_model(results, rec, device)["student"])
    except RuntimeError as exc:
        raise BenchError(f"bench analyze gap: the saved model of run {rec['run_id']} does not fit the dataset's "
                         f"{student} network: {str(exc).splitlines()[0]}") from None
    model.eval()
    return model, rec


def teacher_file(kd_keys: list[str | None], direction: str, seed: int) -> str:
    """The one teacher file name the KD records of ``direction`` at ``seed`` distilled, or :class:`Missing`."""
    keys = sorted({k for k in kd_keys if k})
    if not keys:
        raise Missing(f"no KD record of {direction} at seed {seed} names its teacher")
    if len(keys) > 1:
        raise Missing(f"the KD records of {direction} at seed {seed} distilled {len(keys)} different teachers "
                      f"({', '.join(keys)})")
    if keys[0].startswith(("sha256:", "metric:")):
        raise Missing(f"the teacher of {direction} is not a cached teacher file ({keys[0]}): a user checkpoint "
                      f"is not read by this analysis")
    return keys[0]


def teacher_network(results: Path, adapter: Any, teacher: str, name: str,
                    device: torch.device) -> tuple[torch.nn.Module, Path]:
    """H_T: the cached teacher file ``name`` of ``teacher`` (a modality or a set), rebuilt and loaded."""
    from bench.models.fusion import DEFAULT_FUSION, fusion_factory
    from bench.train.resolve import resolve_backbone

    path = join_under(Path(results) / "teachers", adapter.name, component(teacher), name, where="record teacher file")
    if not path.is_file():
        raise Missing(f"its teacher file {path} is not in {results}")
    state = load_torch_file(path, "cached teacher", device, required=("model", "info"),
                            remedy="Delete it; the next `bench run` that needs it trains it again")
    fp = (state.get("info") or {}).get("fingerprint") or {}
    if stable_hash(fp.get("dataset")) != stable_hash(adapter.fingerprint()):
        raise Missing(f"teacher file {path.name} was trained on other dataset parameters than the --set given")
    nc = adapter.num_classes
    if is_set(teacher):
        fusion = fp.get("fusion") or {}
        default = resolve_backbone(adapter, "teacher", teacher, "default", {}, fusion.get("name", DEFAULT_FUSION))
        if stable_hash(fusion) != stable_hash(default.identity()):
            raise Missing(f"teacher file {path.name}: members with non-default backbones are not rebuilt here")
        nets = {m: adapter.build_model(m, nc) for m in members(teacher)}
        model = fusion_factory(default.name).build_fusion(nets, nc, adapter.task)
    else:
        if "backbone" in fp:
            raise Missing(f"teacher file {path.name} has a non-default backbone; only the dataset's own is rebuilt")
        model = adapter.build_model(teacher, nc)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        why = str(exc).splitlines()[0]
        raise Missing(f"teacher file {path.name} does not fit the dataset's network: {why}") from None
    return model.to(device).eval(), path


@torch.no_grad()
def representation(model: torch.nn.Module, adapter: Any, split: Any, modality: str, device: torch.device,
                   tap: str = "pre", fused: bool = False, batch_size: int = 256) -> np.ndarray:
    """(N, D) features of ``split`` (eval mode, in split order): ``pre_feature`` (``tap="pre"``) or
    ``feature``; ``fused``: a fusion teacher's members' vectors at that tap, concatenated."""
    out = []
    for idx in batch_indices(len(split), batch_size, False, None, False):
        xs, _ = batch_inputs(adapter, split, idx, [modality], device, False, None)
        x = xs[modality]
        if fused:
            outs = model.member_outputs(x).values()
            v = torch.cat([o.pre_feature if tap == "pre" else o.feature for o in outs], 1)
        else:
            o = model(x)
            v = o.pre_feature if tap == "pre" else o.feature
        out.append(v.float().cpu())
    return torch.cat(out).numpy()


def middle_k(ks: tuple[int, ...]) -> int:
    """The middle PCA size (the lower of the two middle ones for an even count)."""
    return sorted(ks)[(len(ks) - 1) // 2]


def cch_per_k(ht: np.ndarray, hs: np.ndarray, yoh: np.ndarray, ks: tuple[int, ...]) -> list[dict[str, Any]]:
    """I(H_T;H_S), I(H_S;Y) and their difference at each PCA size (capped at the smaller feature
    size, ``k_used``), with ``bench analyze cch``'s estimator: standardise, PCA fitted on these
    (train) features, Ledoit-Wolf covariances."""
    rows = []
    for k in ks:
        kk = min(k, ht.shape[1], hs.shape[1])
        zt, zs = pca_apply(ht, pca_fit(ht, kk)), pca_apply(hs, pca_fit(hs, kk))
        i_ts, i_sy = gaussian_mi(zt, zs), gaussian_mi(zs, yoh)
        rows.append({"k": k, "k_used": kk, "i_ts": i_ts, "i_sy": i_sy, "delta": i_ts - i_sy})
    return rows
