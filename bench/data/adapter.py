"""Dataset-adapter API and the in-memory paired data pipeline.

An adapter turns a dataset into three splits of **paired arrays**: one tensor per modality
(first axis = sample) plus labels. Arrays are stored compactly (uint8 frames, fp16
spectrograms, token ids) and converted/augmented per mini-batch on the training device, so
training never decodes files and the same pipeline is fast on a GPU.

Model selection never touches test: when an adapter has no validation split of its own, the
runner carves a stratified, seeded one out of train (:func:`stratified_split`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterator

import numpy as np
import torch

from bench.api.errors import BenchError
from bench.models import Backbone


@dataclass(frozen=True)
class Modality:
    name: str
    """Full name, e.g. ``audio``."""
    code: str
    """Short code used in direction names, e.g. ``a`` in ``a2v``."""
    kind: str
    """vector | sequence | image | spectrogram | text | video (documentation and encoder choice)."""
    shape: tuple[int, ...] = ()
    """Per-sample shape of the stored array."""


@dataclass
class Split:
    inputs: dict[str, torch.Tensor]
    labels: torch.Tensor
    meta: dict[str, Any] = field(default_factory=dict)
    aux: dict[str, torch.Tensor] = field(default_factory=dict)
    """Per-sample side arrays named ``<modality>.<what>`` (e.g. ``visual.nframes``), indexed
    together with the inputs and handed to :meth:`DatasetAdapter.prepare_batch`."""

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, idx: torch.Tensor) -> "Split":
        return Split({k: v[idx] for k, v in self.inputs.items()}, self.labels[idx], dict(self.meta),
                     {k: v[idx] for k, v in self.aux.items()})

    def aux_for(self, modality: str, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        pre = modality + "."
        return {k[len(pre):]: v[idx] for k, v in self.aux.items() if k.startswith(pre)}

    def check(self, where: str, modalities: list[str], num_classes: int, ignore_index: int | None = None) -> None:
        n = len(self)
        for m in modalities:
            if m not in self.inputs:
                raise BenchError(f"{where}: modality {m!r} missing (have {sorted(self.inputs)})")
            if self.inputs[m].shape[0] != n:
                raise BenchError(f"{where}: modality {m!r} has {self.inputs[m].shape[0]} samples but there are {n} labels")
        lab = self.labels
        valid = lab if ignore_index is None else lab[lab != ignore_index]
        if valid.numel() and (int(valid.min()) < 0 or int(valid.max()) >= num_classes):
            raise BenchError(f"{where}: labels must lie in 0..{num_classes - 1}, found {int(valid.min())}..{int(valid.max())}")


class DatasetAdapter:
    """Base class of every dataset adapter (register subclasses with ``@register_dataset``)."""

    name: ClassVar[str]
    description: ClassVar[str] = ""
    task: ClassVar[str] = "classification"  # or "segmentation"
    metric: ClassVar[str] = "top1"  # or "mIoU"
    ignore_index: ClassVar[int | None] = None
    paired_by: ClassVar[str] = "sample"
    """How the modalities of a training sample belong together: ``sample`` (one recording of one
    event) or ``class`` (a sample of each modality with the same label, e.g. AV-Digits); on a
    class-paired set the shuffled-teacher control is the method itself, so it is refused."""
    redrawn_splits: ClassVar[tuple[str, ...]] = ()
    """The splits this dataset's own protocol drew at random from one pool of samples (none of
    them a split file of the dataset's distribution): with ``train.split_mode=per_seed`` the
    runner pools them and draws them again from the run's seed, with the same number of samples
    of each class in each (:func:`redraw_indices`). Empty (the default): every split the adapter
    hands over is official and kept; only the validation split the runner carves follows the seed."""
    Params: ClassVar[type]
    version: ClassVar[int] = 1
    """Bumped when a change to the adapter (loading, splits, preprocessing, augmentation, its own
    ``build_model``) alters results at the same parameters, with a line in docs/reference/versions.md;
    recorded in every record's ``versions`` and checked by ``bench reproduce`` per cell."""
    train_defaults: ClassVar[dict[str, Any]] = {}
    """Overrides of :class:`bench.api.config.TrainConfig` defaults for this dataset."""

    def __init__(self, params: Any, cache_dir: str | None = None):
        self.params = params
        self.cache_dir = cache_dir

    # -- description --------------------------------------------------------------------------
    @property
    def modalities(self) -> list[Modality]:
        raise NotImplementedError

    @property
    def num_classes(self) -> int:
        raise NotImplementedError

    @property
    def class_names(self) -> list[str]:
        return [str(i) for i in range(self.num_classes)]

    def modality(self, key: str) -> Modality:
        for m in self.modalities:
            if key in (m.name, m.code):
                return m
        valid = ", ".join(f"{m.name} ({m.code})" for m in self.modalities)
        raise BenchError(f"dataset {self.name!r} has no modality {key!r}; it has: {valid}")

    def directions(self) -> list[tuple[str, str]]:
        """All ordered cross-modal (teacher, student) modality pairs (``--directions all``); teacher
        sets and same-modality directions are asked for by name or group (:mod:`bench.data.tsets`)."""
        ms = [m.name for m in self.modalities]
        return [(a, b) for a in ms for b in ms if a != b]

    def direction_name(self, teacher: str, student: str) -> str:
        from bench.data.tsets import teacher_code

        return f"{teacher_code(self, teacher)}2{self.modality(student).code}"

    def parse_direction(self, text: str) -> tuple[str, str]:
        """``a2v`` (codes), ``audio2visual`` / ``audio->visual`` (names), ``v2v`` (same modality) or
        a teacher set ``av2v`` / ``a+v2v`` / ``audio+visual->visual`` -> (teacher, student)."""
        from bench.data.tsets import check_set, parse_teacher

        t = text.strip()
        for sep in ("->", ":", "2"):
            if sep in t:
                a, b = t.split(sep, 1) if sep != "2" else _split_on_2(t, self)
                ta, sb = parse_teacher(self, a), self.modality(b).name
                check_set(self, ta, sb)
                return ta, sb
        raise BenchError(f"direction {text!r}: expected e.g. {self.direction_name(*self.directions()[0])} or teacher->student")

    # -- data ---------------------------------------------------------------------------------
    def load(self) -> dict[str, Split]:
        """Return ``{"train": ..., "test": ..., optionally "val": ...}``."""
        raise NotImplementedError

    def load_without_test(self) -> dict[str, Split]:
        """The splits but test, for tuning, which must never read the test split. By default
        :meth:`load` with test dropped as it is handed over; an adapter that reads test from its
        own file overrides this so that the file is never opened (it may be absent or damaged)."""
        splits = dict(self.load())
        splits.pop("test", None)
        return splits

    def redraw_problem(self) -> str | None:
        """Why this adapter's splits cannot be drawn again per seed with its parameters (None: they
        can); the runner refuses ``train.split_mode=per_seed`` with this reason."""
        return None

    def build_model(self, modality: str, num_classes: int) -> Backbone:
        raise NotImplementedError

    def prepare_batch(self, modality: str, x: torch.Tensor, train: bool, generator: torch.Generator | None,
                      aux: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Convert a stored mini-batch to network input (dtype, normalisation, augmentation).

        Runs on the training device. ``aux`` holds the modality's side arrays for the batch.
        Default: cast to float.
        """
        return x.float()

    def augments(self, modality: str) -> bool:
        """Whether ``prepare_batch(train=True)`` is random for ``modality`` (crop, flip, frame or
        crop choice). A frozen teacher on a modality that is not augmented sees the same input for
        a sample at every step, so the runner may cache its outputs. Default: assume it is."""
        return True

    def batch(self, split: Split, idx: torch.Tensor, modalities: list[str], device: torch.device, train: bool,
              generator: torch.Generator | None) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """One mini-batch: network inputs per modality and the labels, on ``device``.

        Modalities are augmented independently (as the audio-visual references do); dense tasks
        override this to apply one geometric transform to every modality and the label map.
        """
        xs = {}
        for m in modalities:
            x = torch.as_tensor(split.inputs[m][idx]).to(device, non_blocking=True)
            aux = {k: v.to(device, non_blocking=True) for k, v in split.aux_for(m, idx).items()}
            xs[m] = self.prepare_batch(m, x, train, generator, aux)
        return xs, torch.as_tensor(split.labels[idx]).to(device, non_blocking=True)

    def fingerprint(self) -> dict[str, Any]:
        """What identifies this dataset's content (used in teacher-cache keys)."""
        from bench.api.config import params_dict

        return {"dataset": self.name, "params": params_dict(self.params)}


def _split_on_2(t: str, ds: DatasetAdapter) -> tuple[str, str]:
    # Modality names may themselves contain '2'; try every split point (the teacher may be a set).
    from bench.data.tsets import parse_teacher

    for i, ch in enumerate(t):
        if ch == "2":
            a, b = t[:i], t[i + 1:]
            try:
                parse_teacher(ds, a)
                ds.modality(b)
                return a, b
            except BenchError:
                continue
    _c = [m.code for m in ds.modalities]
    raise BenchError(
        f"direction {t!r}: no such modality pair in {ds.name!r}; valid: "
        + ", ".join(ds.direction_name(a, b) for a, b in ds.directions())
        + f" (same-modality: {_c[-1]}2{_c[-1]}; a teacher set: members joined by '+', e.g. {'+'.join(_c)}2{_c[-1]})"
    )


def stratified_split(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded stratified split of indices into (keep, held_out) with ~``fraction`` held out per class.

    Classes with a single sample stay entirely in ``keep``. Labels of dense tasks (one map per
    sample) are split uniformly at random instead.
    """
    rng = np.random.default_rng(seed)
    lab = labels.cpu().numpy()
    n = lab.shape[0]
    if lab.ndim > 1:
        perm = rng.permutation(n)
        k = int(round(fraction * n))
        return torch.from_numpy(np.sort(perm[k:])), torch.from_numpy(np.sort(perm[:k]))
    keep, held = [], []
    for c in np.unique(lab):
        idx = np.flatnonzero(lab == c)
        rng.shuffle(idx)
        k = int(round(fraction * len(idx)))
        if len(idx) > 1:
            k = min(max(k, 1 if fraction > 0 else 0), len(idx) - 1)
        else:
            k = 0
        held.extend(idx[:k])
        keep.extend(idx[k:])
    return torch.from_numpy(np.sort(np.array(keep, dtype=np.int64))), torch.from_numpy(np.sort(np.array(held, dtype=np.int64)))


def redraw_indices(labels: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """Draw the splits named in ``labels`` again from the pool of all their samples.

    The pool is the splits' samples in the order given (positions ``0..N-1``: the first split's
    rows, then the second's, ...). Each split receives, from ``seed``, as many samples of each class
    as it holds now (dense labels: as many samples), so sizes and class histograms are those of the
    prepared splits and only which sample goes where changes. Returns each split's pool positions,
    sorted. Deterministic in (``seed``, the labels); disjoint, and together the whole pool."""
    names = list(labels)
    rng = np.random.default_rng([int(seed), 0x5EED])
    lab = {n: labels[n].cpu().numpy() for n in names}
    pool = np.concatenate([lab[n] for n in names]) if names else np.zeros(0, np.int64)
    parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
    if pool.ndim > 1:
        perm = rng.permutation(pool.shape[0])
        start = 0
        for n in names:
            parts[n].append(perm[start:start + lab[n].shape[0]])
            start += lab[n].shape[0]
    else:
        for c in np.unique(pool):
            idx = np.flatnonzero(pool == c)
            rng.shuffle(idx)
            start = 0
            for n in names:
                k = int((lab[n] == c).sum())
                parts[n].append(idx[start:start + k])
                start += k
    return {n: torch.from_numpy(np.sort(np.concatenate(parts[n])).astype(np.int64)) for n in names}


def concat_splits(splits: list[Split]) -> Split:
    """One in-memory split holding the samples of ``splits`` in order (inputs, labels and the side
    arrays every one of them has); for the small datasets whose splits are drawn again per seed."""
    def cat(vs: list) -> torch.Tensor:
        return torch.cat([torch.as_tensor(v[:]) for v in vs])

    mods = [m for m in splits[0].inputs if all(m in s.inputs for s in splits)]
    aux = [k for k in splits[0].aux if all(k in s.aux for s in splits)]
    return Split({m: cat([s.inputs[m] for s in splits]) for m in mods}, cat([s.labels for s in splits]),
                 dict(splits[0].meta), {k: cat([s.aux[k] for s in splits]) for k in aux})


def batch_indices(n: int, batch_size: int, shuffle: bool, generator: torch.Generator | None, drop_last: bool) -> Iterator[torch.Tensor]:
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    stop = n - (n % batch_size) if (drop_last and n >= batch_size) else n
    for i in range(0, stop, batch_size):
        yield order[i:i + batch_size]
