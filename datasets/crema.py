"""CREMA-D (audio-visual emotion recognition, 6 classes), as OGM-GE / C2KD use it.

Raw layout read by ``bench prepare crema --root ROOT`` (``datasets.md`` section 2)::

    ROOT/AudioWAV/<clip>.wav                 the dataset's wavs (any rate/channels: resampled)
    ROOT/Image-01-FPS/<clip>/NNNNN.jpg       1-fps frames (OGM-GE ``video_preprocessing.py``), or
    ROOT/VideoFlash/<clip>.flv               the videos: frames are then extracted the same way
                                             (frame indices 0, fps, 2*fps, ...) into Image-01-FPS/
    ROOT/train.csv, ROOT/test.csv            OGM-GE split files: ``<clip>,<code>`` per line
                                             (LF or CRLF, optional BOM; 6,698 / 744 rows)

Class indices are the C2KD dictionary NEU 0, HAP 1, SAD 2, FEA 3, DIS 4, ANG 5 (never file
order). Audio: recipe A (257 x 188 log-magnitude STFT at 22,050 Hz). Visual: 1 frame per clip.
The official split has no validation part: the runner carves a seeded stratified 10 % from
train (the references select on test; ``--set train.selection=test`` reproduces that, labelled).
Rows whose wav or frames are missing are skipped and counted in the prepare report.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from bench.api.config import hp
from bench.api.errors import BenchError
from bench.api.registry import register_dataset
from bench.data.cache import PrepPlan, SplitPlan, iter_nonempty
from bench.data.vision import extract_frames_1fps

from ._av import AVDataset, AVItem, keep_frames, list_frames

CODES = ["NEU", "HAP", "SAD", "FEA", "DIS", "ANG"]
NAMES = ["neutral", "happy", "sad", "fear", "disgust", "anger"]
CLIP_RE = re.compile(r"^\d{4}_[A-Z]{3}_([A-Z]{3})_[A-Z]{2}$")


@dataclass
class CremaParams:
    root: str = hp("", "raw CREMA-D directory (only needed by `bench prepare`)")
    cache: str = hp("", "prepared cache directory (default $CMKD_BENCH_CACHE/crema or ~/.cache/cmkd-bench/crema)")
    train_csv: str = hp("train.csv", "train split file, relative to root")
    test_csv: str = hp("test.csv", "test split file, relative to root")
    frame_dir: str = hp("Image-01-FPS", "folder of per-clip 1-fps frame folders, relative to root")
    extract_frames: bool = hp(True, "clips without a frame folder: extract 1-fps frames from VideoFlash/<clip>.flv (PyAV)")
    frame_cache: int = hp(256, "cached frame size (square)")
    max_frames: int = hp(3, "frames kept per clip in the cache")
    frame_policy: Literal["segments", "reference"] = hp("segments", "frame choice: per-segment random/middle (REC) or first listed (REF)")
    num_frames: int = hp(1, "frames per sample (C2KD: 1)")
    image_size: int = hp(224, "network input size of frames")
    width: int = hp(64, "ResNet first-stage width (64 = ResNet-18, 512-d features)")


@register_dataset("crema")
class CremaD(AVDataset):
    description = "CREMA-D audio-visual emotions (6 classes; OGM-GE split, recipe A audio, 1 frame)"
    Params = CremaParams
    classes = NAMES
    audio_recipe = "A"
    prep_keys = ("train_csv", "test_csv", "frame_dir", "frame_cache", "max_frames", "frame_policy")
    # C2KD / FD-CMKD optimiser: SGD 0.01, momentum 0.9, no weight decay, poly to 1e-4, batch 64.
    train_defaults = {"epochs": 100, "teacher_epochs": 100, "batch_size": 64, "lr": 0.01, "schedule": "poly"}

    def plan(self, root: Path) -> PrepPlan:
        p = self.params
        sources = {}
        splits = {}
        for split, fname in (("train", p.train_csv), ("test", p.test_csv)):
            path = root / fname
            if not path.exists():
                raise BenchError(f"crema: split file {path} not found (OGM-GE data/CREMAD/{Path(fname).name} expected)")
            rel, digest = self.source(root, path)
            sources[rel] = digest
            items, labels, seen = [], [], set()
            sp = SplitPlan([], np.zeros(0), self.array_specs())
            for lineno, line in iter_nonempty(path):
                fields = line.split(",")
                if len(fields) != 2:
                    raise BenchError(f"{path}:{lineno}: expected 2 comma-separated fields '<clip>,<code>', "
                                     f"got {len(fields)}: {line!r}")
                clip, code = fields[0].strip(), fields[1].strip()
                if code not in CODES:
                    raise BenchError(f"{path}:{lineno}: unknown emotion code {code!r} (expected one of {', '.join(CODES)})")
                m = CLIP_RE.match(clip)
                if not m:
                    raise BenchError(f"{path}:{lineno}: {clip!r} is not a CREMA-D clip name (AAAA_SSS_EEE_LL)")
                if m.group(1) != code:
                    raise BenchError(f"{path}:{lineno}: clip {clip} has emotion {m.group(1)} in its name but is labelled {code}")
                sp.listed += 1
                if clip in seen:
                    sp.skip("duplicate row", clip)
                    continue
                seen.add(clip)
                wav = root / "AudioWAV" / f"{clip}.wav"
                if not wav.exists():
                    sp.skip("missing audio", clip)
                    continue
                fdir = root / p.frame_dir / clip
                flv = root / "VideoFlash" / f"{clip}.flv"
                if not fdir.is_dir() and p.extract_frames and flv.exists():
                    extract_frames_1fps(flv, fdir)  # OGM-GE's extractor, once, into the usual layout
                frames = list_frames(fdir, p.frame_policy) if fdir.is_dir() else []
                if not frames:
                    sp.skip("missing frames", clip)
                    continue
                items.append(AVItem(clip, CODES.index(code), wav, keep_frames(frames, p.max_frames, p.frame_policy)))
                labels.append(CODES.index(code))
            sp.items, sp.labels = items, np.array(labels, np.int64)
            splits[split] = sp
        return PrepPlan(self.name, self.prep_params(), splits, sources, list(NAMES),
                        {**self.plan_info(), "class_codes": CODES})
