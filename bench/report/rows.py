"""Row keys and names of the comparison tables and the leaderboard: a method's display name, the
suffixes of its tuned and teacher-control rows, and the order rows are shown in (category, then
the paper's order, then name)."""

from __future__ import annotations

from typing import Iterable

from bench.api.names import PART_SEPARATOR

CATEGORY_ORDER = ["Uni-Modal", "Control", "Logits", "Feature", "Cross-Modal", "Composition"]


PAPER_ORDER = ["none", "ls", "tfkd", "logit", "dist", "dml", "nkd", "dkd", "feat", "pkd", "ofd", "afd", "c2kd", "fdcmkd",
               "ucmkd"]


DISPLAY = {
    "none": "w/o KD", "logit": "Logit", "dist": "DIST", "dml": "DML", "nkd": "NKD", "dkd": "DKD",
    "feat": "Feat", "pkd": "PKD", "ofd": "OFD", "afd": "AFD", "c2kd": "C2KD", "fdcmkd": "FD-CMKD", "ucmkd": "UCMKD",
    "ls": "w/o KD + LS", "tfkd": "Tf-KD (virtual)", "wsld": "WSLD", "ctkd": "CTKD", "mlkd": "MLKD",
    "at": "AT", "sp": "SP", "pkt": "PKT", "rkd": "RKD", "nst": "NST", "cc": "CC", "kdsvd": "KDSVD",
    "crd": "CRD", "vid": "VID",
    "reviewkd": "ReviewKD", "mfh": "MFH", "mgdfr": "MGDFR",
    "discomkd": "DisCoM-KD",
    "mst": "MST-Distill",
}


TUNED_SUFFIX = ":tuned"
"""Row key suffix of a method's tuned records next to its default ones (``--params both``); no
registered name can contain ``:``."""


CONTROL_SUFFIXES = {"shuffled": ":shuffled-teacher", "random": ":random-teacher"}
"""Row key suffix of a method's teacher-control records (``train.teacher_control``): a control is a
row of its own, named "Logit (shuffled teacher)", never averaged into the method's row."""

_SUFFIX_LABELS = {TUNED_SUFFIX: " (tuned)", **{v: f" ({k} teacher)" for k, v in CONTROL_SUFFIXES.items()}}


def is_control_row(key: str) -> bool:
    """A row key of a teacher-control run (``logit:shuffled-teacher``, also with ``:tuned``): a
    control, shown next to its method and tested against w/o KD, but never ranked as a method."""
    return any(s in key for s in CONTROL_SUFFIXES.values())


def base_method(key: str) -> str:
    """The registered method of a row key (``logit:shuffled-teacher:tuned`` -> ``logit``)."""
    return key.split(":", 1)[0]


def display_name(method: str) -> str:
    for suffix, label in _SUFFIX_LABELS.items():
        if method.endswith(suffix):
            return display_name(method[: -len(suffix)]) + label
    if PART_SEPARATOR in method:  # a composition (bench.api.compose): "DKD + RKD"
        return " + ".join(DISPLAY.get(p, p) for p in method.split(PART_SEPARATOR))
    return DISPLAY.get(method, method)


def order_methods(methods: Iterable[str], categories: dict[str, str]) -> list[str]:
    def key(m: str) -> tuple[int, int, str]:
        cat = categories.get(m) or "Cross-Modal"
        ci = CATEGORY_ORDER.index(cat) if cat in CATEGORY_ORDER else len(CATEGORY_ORDER)
        base = base_method(m)  # a tuned or teacher-control row right below its method's row
        pi = PAPER_ORDER.index(base) if base in PAPER_ORDER else len(PAPER_ORDER)
        return (ci, pi, m)

    return sorted(set(methods), key=key)


MODALITY_SHORT = {"audio": "A", "visual": "V", "text": "T", "image": "V", "depth": "Depth", "rgb": "RGB"}
