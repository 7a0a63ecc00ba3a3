"""Shared machinery of the audio-visual adapters (CREMA-D, AVE, VGGSound-50).

Conventions follow OGM-GE / C2KD (``datasets.md`` section 1):

* frames are the 1-fps jpgs of ``Image-01-FPS/<clip>/NNNNN.jpg`` (OGM-GE's extractor output);
  the cache keeps up to ``max_frames`` of them per clip, resized to ``frame_cache`` squared
  (aspect not kept, as the eval ``Resize((224, 224))`` does), in time order;
* a sample uses ``num_frames`` frames: one per equal segment of the clip, random in training and
  the middle one in evaluation (REC); ``frame_policy=reference`` keeps the references' "first
  frames in ``os.listdir`` order" instead (not reproducible across filesystems; recorded);
* train: ``RandomResizedCrop(image_size)`` + horizontal flip per frame; eval: resize to
  ``image_size``; ImageNet normalisation; backbones from scratch;
* audio: recipe A, B or C of :mod:`bench.data.audio`; network input (1, F, T);
* backbones: ResNet-18 per modality, audio with a 1-channel stem, visual over frames with
  temporal average pooling (OGM-GE); 512-d features (``width=64``).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from bench.api.errors import BenchError
from bench.data import Modality
from bench.data.audio import load_mono, recipe_a, recipe_b, recipe_c_batch, recipe_c_wave
from bench.data.cache import ArraySpec
from bench.data.prepared import PreparedDataset
from bench.data.vision import normalize, random_resized_crop, read_image, resize, select_frames, to_float_nchw
from bench.models import Backbone
from bench.models.registry import build_default

AUDIO_RECIPES = {
    "A": {"sr": 22050, "shape": (257, 188), "dtype": "float16"},
    "B": {"sr": 16000, "shape": (257, 1004), "dtype": "float16"},
    "C": {"sr": 16000, "shape": (160000,), "dtype": "int16"},
}


@dataclass
class AVItem:
    key: str
    label: int
    wav: Path
    frames: list[Path]
    segment: tuple[int, int] | None = None
    """Event segment in whole seconds (AVE): audio samples start*sr .. end*sr."""


def list_frames(folder: Path, policy: str) -> list[Path]:
    """jpg frames of a clip folder: sorted by name (= time) or in raw listing order (REF)."""
    names = [n for n in os.listdir(folder) if n.lower().endswith((".jpg", ".jpeg", ".png"))]
    if policy == "segments":
        names.sort()
    return [folder / n for n in names]


def keep_frames(frames: list[Path], k: int, policy: str) -> list[Path]:
    """At most ``k`` frames: evenly spread over the clip (REC) or the first ``k`` listed (REF)."""
    if len(frames) <= k:
        return frames
    if policy == "reference":
        return frames[:k]
    n = len(frames)
    return [frames[int((i + 0.5) * n / k)] for i in range(k)]


class AVDataset(PreparedDataset):
    """Base of the audio-visual adapters; subclasses implement :meth:`plan`."""

    audio_recipe: ClassVar[str] = "A"
    classes: ClassVar[list[str]] = []
    task = "classification"
    metric = "top1"

    def __init__(self, params: Any, cache_dir: str | None = None):
        super().__init__(params, cache_dir)
        self._empty_audio = 0

    @property
    def modalities(self) -> list[Modality]:
        shape = (1, 129, 626) if self.audio_recipe == "C" else (1, *self.audio_shape())
        p = self.params
        return [Modality("audio", "a", "spectrogram", shape),
                Modality("visual", "v", "video", (p.num_frames, 3, p.image_size, p.image_size))]

    def audio_shape(self) -> tuple[int, ...]:
        return tuple(AUDIO_RECIPES[self.audio_recipe]["shape"])

    def array_specs(self) -> dict[str, ArraySpec]:
        r = AUDIO_RECIPES[self.audio_recipe]
        fc = self.params.frame_cache
        return {
            "audio": ArraySpec(self.audio_shape(), r["dtype"]),
            "visual": ArraySpec((self.params.max_frames, fc, fc, 3), "uint8"),
            "visual.nframes": ArraySpec((), "int16"),
            "label": ArraySpec((), "int64"),
        }

    def plan_info(self) -> dict[str, Any]:
        r = AUDIO_RECIPES[self.audio_recipe]
        return {
            "audio_recipe": self.audio_recipe, "audio_sample_rate": r["sr"],
            "audio_array": {"shape": list(r["shape"]), "dtype": r["dtype"]},
            "resampler": "torchaudio.functional.resample (sinc); references use librosa/soxr",
            "frame_policy": self.params.frame_policy, "max_frames": self.params.max_frames,
            "frame_cache": f"{self.params.frame_cache}x{self.params.frame_cache} (aspect ratio not kept)",
        }

    def prepare_notes(self) -> dict[str, Any]:
        return {"clips_with_empty_audio": self._empty_audio}

    def class_index(self, name: str, where: str) -> int:
        try:
            return self.classes.index(name)
        except ValueError:
            raise BenchError(f"{where}: unknown class {name!r} (expected one of the {len(self.classes)} "
                             f"{self.name} classes, e.g. {', '.join(map(repr, self.classes[:4]))})") from None

    def audio_array(self, item: AVItem) -> np.ndarray:
        r = AUDIO_RECIPES[self.audio_recipe]
        x = load_mono(item.wav, r["sr"])
        if item.segment is not None:
            s, e = item.segment
            x = x[s * r["sr"]:e * r["sr"]]
        if self.audio_recipe == "A":
            a, empty = recipe_a(x)
        elif self.audio_recipe == "B":
            a, empty = recipe_b(x)
            if getattr(self.params, "spec_resize", "none") == "numpy_resize":
                # REF (C2KD AVE): numpy.resize to 257 x 1024 re-flows rows and repeats the start.
                a = np.resize(a, (257, 1024))
        else:
            a, empty = recipe_c_wave(x)
        if empty:
            self._empty_audio += 1
            warnings.warn(f"{item.wav}: no audio samples{' in the event segment' if item.segment else ''}; "
                          f"using silence", stacklevel=2)
        return a

    def decode(self, split: str, item: AVItem) -> dict[str, np.ndarray]:
        fc, k = self.params.frame_cache, self.params.max_frames
        frames = [read_image(f, (fc, fc)) for f in item.frames]
        n = len(frames)
        if n == 0:
            raise BenchError(f"{self.name}: item {item.key} has no frames")
        stack = np.stack(frames + [frames[-1]] * (k - n))
        a = self.audio_array(item)
        return {"audio": a.astype(AUDIO_RECIPES[self.audio_recipe]["dtype"]),
                "visual": stack, "visual.nframes": np.int16(n), "label": np.int64(item.label)}

    # -- training ----------------------------------------------------------------------------
    def prepare_batch(self, modality: str, x: torch.Tensor, train: bool, generator: torch.Generator | None,
                      aux: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        p = self.params
        if modality == "audio":
            if self.audio_recipe == "C":
                return recipe_c_batch(x, train, generator, getattr(p, "audio_eval_crop", "center"))
            return x.float().unsqueeze(1)
        nframes = (aux or {}).get("nframes")
        if nframes is None:
            nframes = torch.full((x.shape[0],), x.shape[1])
        if p.frame_policy == "reference":
            # REF: the first num_frames frames in listing order, train and eval alike.
            t = min(p.num_frames, x.shape[1])
            fr = x[:, :t]
        else:
            fr = select_frames(x, nframes, p.num_frames, train, generator)
        b, t = fr.shape[:2]
        img = to_float_nchw(fr.flatten(0, 1))
        img = random_resized_crop(img, p.image_size, generator) if train else resize(img, p.image_size)
        img = normalize(img)
        if t == 1:
            return img
        return img.view(b, t, *img.shape[1:])

    def augments(self, modality: str) -> bool:
        # frames: random crop, flip and frame choice; audio: only recipe C (random 5-s crop)
        return modality != "audio" or self.audio_recipe == "C"

    def default_backbone(self, modality: str) -> tuple[str, dict[str, Any]]:
        """ResNet-18 per modality (OGM-GE / C2KD): 1-channel spectrograms; frames averaged over time."""
        w = self.params.width
        common = {"dim": 2, "widths": (w, 2 * w, 4 * w, 8 * w), "blocks": (2, 2, 2, 2), "stem": "imagenet"}
        if modality == "audio":
            return "resnet", {**common, "in_channels": 1, "frames": 1}
        return "resnet", {**common, "in_channels": 3, "frames": self.params.num_frames}

    def build_model(self, modality: str, num_classes: int) -> Backbone:
        return build_default(self, modality, num_classes)
