"""VGGSound-50: the 50-class VGGSound subset of C2KD / FD-CMKD.

The subset is defined by C2KD's ``vggsound/datasplit.zip`` files ``train_tiny.csv`` (25,835 clips)
and ``test_tiny.csv`` (2,500 clips, 50 per class), rows of the official ``vggsound.csv``
(``ytid,start,label,split``, labels with commas quoted). The 50 classes and their indices are
:data:`CLASSES` (C2KD's first-appearance order in ``train_tiny.csv``; fixed here so a missing
clip cannot shift indices). How the 50 were chosen is not documented by C2KD.

Raw layout read by ``bench prepare vggsound --root ROOT`` (``datasets.md`` section 4)::

    ROOT/train_tiny.csv, ROOT/test_tiny.csv
    ROOT/train-audios/train-set/<ytid>_<start:06d>.wav          (16 kHz mono from hche11's script)
    ROOT/train-videos/train-set-img/Image-01-FPS/<ytid>_<start:06d>.mp4/NNNNN.jpg
    ROOT/test-audios/test-set/...,  ROOT/test-videos/test-set-img/Image-01-FPS/...

Both the zero-padded (C2KD) and the raw start (OGM-GE) names are accepted. A clip listed again
with another label is a second sample (C2KD keeps every row); a row repeating a clip and its label
is reported as a duplicate. As in C2KD, a clip is used only when its wav exists and its frame
folder holds more than 3 jpgs (``min_frames``); every dropped clip is counted by reason. Audio:
recipe C (random 5-s crop of the 10-s tiled waveform in training, the centre crop at 2.5 s in
evaluation; ``audio_eval_crop=random`` is the reference's stochastic test crop). Visual: 3
frames, temporal average pooling.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from bench.api.config import hp
from bench.api.errors import BenchError
from bench.api.registry import register_dataset
from bench.data.cache import PrepPlan, SplitPlan, read_text_lines
from bench.data.vision import extract_frames_1fps

from ._av import AVDataset, AVItem, keep_frames, list_frames

CLASSES = [
    "waterfall burbling", "playing tennis", "alarm clock ringing", "wind noise", "playing bongo", "playing congas",
    "subway, metro, underground", "playing acoustic guitar", "dog growling", "horse neighing", "pigeon, dove cooing",
    "playing trumpet", "footsteps on snow", "playing accordion", "turkey gobbling", "playing clarinet",
    "dog whimpering", "car engine idling", "people farting", "people marching", "helicopter", "cell phone buzzing",
    "cat meowing", "playing double bass", "people hiccup", "playing snare drum", "baby laughter", "people coughing",
    "plastic bottle crushing", "goose honking", "dog barking", "smoke detector beeping", "people sniggering",
    "people eating crisps", "thunder", "ferret dooking", "firing muskets", "cow lowing", "eating with cutlery",
    "playing timbales", "people slapping", "pumping water", "playing tuning fork", "tornado roaring", "dog howling",
    "strike lighter", "blowtorch igniting", "sea lion barking", "cutting hair with electric trimmers",
    "otter growling",
]


@dataclass
class VGGSoundParams:
    root: str = hp("", "raw VGGSound directory (only needed by `bench prepare`)")
    cache: str = hp("", "prepared cache directory (default $CMKD_BENCH_CACHE/vggsound)")
    train_csv: str = hp("train_tiny.csv", "train split csv, relative to root")
    test_csv: str = hp("test_tiny.csv", "test split csv, relative to root")
    min_frames: int = hp(4, "clips with fewer frames are dropped (C2KD: more than 3)")
    frame_cache: int = hp(256, "cached frame size (square)")
    max_frames: int = hp(10, "frames kept per clip in the cache")
    frame_policy: Literal["segments", "reference"] = hp("segments", "frame choice: per-segment random/middle (REC) or first listed (REF)")
    num_frames: int = hp(3, "frames per sample (C2KD use_video_frames: 3)")
    audio_eval_crop: Literal["center", "random"] = hp("center", "5-s audio crop at evaluation: centre (REC) or random (REF)")
    image_size: int = hp(224, "network input size of frames")
    width: int = hp(64, "ResNet first-stage width (64 = ResNet-18)")


@register_dataset("vggsound")
class VGGSound50(AVDataset):
    description = "VGGSound-50 audio-visual (C2KD's 50-class subset; recipe C audio, 3 frames)"
    Params = VGGSoundParams
    classes = CLASSES
    audio_recipe = "C"
    prep_keys = ("train_csv", "test_csv", "min_frames", "frame_cache", "max_frames", "frame_policy")
    train_defaults = {"epochs": 100, "teacher_epochs": 100, "batch_size": 64, "lr": 0.01, "schedule": "poly"}

    def plan(self, root: Path) -> PrepPlan:
        p = self.params
        sources, splits = {}, {}
        for split, fname in (("train", p.train_csv), ("test", p.test_csv)):
            path = root / fname
            if not path.exists():
                raise BenchError(f"vggsound: split file {path} not found (C2KD vggsound/datasplit.zip {Path(fname).name})")
            rel, d = self.source(root, path)
            sources[rel] = d
            sp = SplitPlan([], np.zeros(0), self.array_specs())
            items, labels = [], []
            seen: dict[str, list[int]] = {}  # clip -> the labels it is listed with, in file order
            text = "\n".join(read_text_lines(path))
            for lineno, row in enumerate(csv.reader(io.StringIO(text)), 1):
                if not row or all(not c.strip() for c in row):
                    continue
                if len(row) != 4:
                    raise BenchError(f"{path}:{lineno}: expected 4 columns (ytid,start,label,split), got {len(row)}: {row!r}")
                ytid, start, label, _sp = (c.strip() for c in row)
                if not start.isdigit():
                    raise BenchError(f"{path}:{lineno}: start second must be a non-negative integer, got {start!r}")
                idx = self.class_index(label, f"{path}:{lineno}")
                sp.listed += 1
                stem = f"{ytid}_{int(start):06d}"
                # a clip listed with a second label is a second sample, keyed <stem>#1 (C2KD keeps every row)
                got = seen.setdefault(stem, [])
                if idx in got:  # the same clip with the same label again
                    k = got.index(idx)
                    sp.skip("duplicate row", stem if k == 0 else f"{stem}#{k}")
                    continue
                got.append(idx)
                key = stem if len(got) == 1 else f"{stem}#{len(got) - 1}"
                adir = root / f"{split}-audios" / f"{split}-set"
                fbase = root / f"{split}-videos" / f"{split}-set-img" / "Image-01-FPS"
                wav = next((c for c in (adir / f"{stem}.wav", adir / f"{ytid}_{start}.wav") if c.exists()), None)
                if wav is None:
                    sp.skip("missing audio", key)
                    continue
                fdir = next((c for c in (fbase / f"{stem}.mp4", fbase / f"{ytid}_{start}.mp4") if c.is_dir()), None)
                mp4 = root / f"{split}-videos" / f"{split}-set" / f"{stem}.mp4"
                if fdir is None and mp4.exists():
                    fdir = fbase / f"{stem}.mp4"
                    extract_frames_1fps(mp4, fdir)  # OGM-GE's 1-fps extractor (PyAV)
                frames = list_frames(fdir, p.frame_policy) if fdir is not None else []
                if not frames:
                    sp.skip("missing frames", key)
                    continue
                if len(frames) < p.min_frames:
                    sp.skip(f"fewer than {p.min_frames} frames", key)
                    continue
                items.append(AVItem(key, idx, wav, keep_frames(frames, p.max_frames, p.frame_policy)))
                labels.append(idx)
            sp.items, sp.labels = items, np.array(labels, np.int64)
            splits[split] = sp
        return PrepPlan(self.name, self.prep_params(), splits, sources, list(CLASSES), self.plan_info())
