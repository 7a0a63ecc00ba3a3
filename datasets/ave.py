"""AVE (Audio-Visual Event localisation videos as 28-class event classification), as C2KD uses it.

Raw layout read by ``bench prepare ave --root ROOT`` (``datasets.md`` section 3)::

    ROOT/Annotations.txt                     optional header + ``Category&VideoID&Quality&Start&End``
    ROOT/trainSet.txt, valSet.txt, testSet.txt   the official splits (same line format, no header)
    ROOT/Audios/<vid>.wav                    audio extracted from AVE/<vid>.mp4 (any rate)
    ROOT/Image-01-FPS-SE/<vid>/NNNNN.jpg     C2KD's event-segment frames, or
    ROOT/Image-01-FPS/<vid>/NNNNN.jpg        whole-clip 1-fps frames (the event's seconds are used),
                                             extracted from ROOT/AVE/<vid>.mp4 when neither exists

Lines are split on ``&`` only (category names contain commas and parentheses). Samples are keyed
by (video id, event index) with the event's own segment (REC): two events of one video are two
samples even when they share the segment (``-ccciEuH9FE`` 5-10 is both male and female speech);
only a row that repeats an event exactly (same video, segment and category) is a duplicate.
``dedup=reference`` keeps only the first usable event of a video id within a split, as C2KD's
loader does. The zero-length event (``VWi2ENBuTbw`` 0-0, train) is skipped in both modes, so the
official splits give 3,338 / 402 / 402 samples (``dedup=event``: 3,339 rows minus that event)
and 3,311 / 401 / 402 (``dedup=reference``: C2KD's 3,312 / 401 / 402 minus that event). The real
``valSet.txt`` is the validation split. Audio: recipe B on the event segment (257 x 1004;
``spec_resize=numpy_resize`` reproduces C2KD's ``numpy.resize`` to 257 x 1024). Zero-length
events are skipped and reported; video ids shared across splits are reported.
"""

from __future__ import annotations

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

CLASSES = [
    "Church bell", "Male speech, man speaking", "Bark", "Fixed-wing aircraft, airplane", "Race car, auto racing",
    "Female speech, woman speaking", "Helicopter", "Violin, fiddle", "Flute", "Ukulele", "Frying (food)", "Truck",
    "Shofar", "Motorcycle", "Acoustic guitar", "Train horn", "Clock", "Banjo", "Goat", "Baby cry, infant cry", "Bus",
    "Chainsaw", "Cat", "Horse", "Toilet flush", "Rodents, rats, mice", "Accordion", "Mandolin",
]
HEADER = "Category&VideoID&Quality&StartTime&EndTime"


@dataclass
class AVEParams:
    root: str = hp("", "raw AVE directory (only needed by `bench prepare`)")
    cache: str = hp("", "prepared cache directory (default $CMKD_BENCH_CACHE/ave)")
    dedup: Literal["event", "reference"] = hp("event", "one sample per event (REC) or first event per video id (REF)")
    spec_resize: Literal["none", "numpy_resize"] = hp("none", "keep 257x1004 (REC) or C2KD's numpy.resize to 257x1024 (REF)")
    frame_cache: int = hp(256, "cached frame size (square)")
    max_frames: int = hp(10, "frames kept per event in the cache")
    frame_policy: Literal["segments", "reference"] = hp("segments", "frame choice: per-segment random/middle (REC) or first listed (REF)")
    num_frames: int = hp(1, "frames per sample (C2KD num_frame: 1)")
    image_size: int = hp(224, "network input size of frames")
    width: int = hp(64, "ResNet first-stage width (64 = ResNet-18)")


@register_dataset("ave")
class AVE(AVDataset):
    description = "AVE audio-visual events (28 classes; official train/val/test, recipe B audio)"
    Params = AVEParams
    classes = CLASSES
    audio_recipe = "B"
    prep_keys = ("dedup", "spec_resize", "frame_cache", "max_frames", "frame_policy")
    train_defaults = {"epochs": 100, "teacher_epochs": 100, "batch_size": 64, "lr": 0.01, "schedule": "poly"}

    def audio_shape(self) -> tuple[int, ...]:
        return (257, 1024) if self.params.spec_resize == "numpy_resize" else (257, 1004)

    def parse_line(self, path: Path, lineno: int, line: str) -> tuple[str, str, int, int]:
        fields = line.split("&")
        if len(fields) != 5:
            raise BenchError(f"{path}:{lineno}: expected 5 '&'-separated fields "
                             f"(Category&VideoID&Quality&StartTime&EndTime), got {len(fields)}: {line!r}")
        cat, vid, _q, s, e = (f.strip() for f in fields)
        try:
            start, end = int(s), int(e)
        except ValueError:
            raise BenchError(f"{path}:{lineno}: StartTime/EndTime must be integer seconds, got {s!r}/{e!r}") from None
        if not (0 <= start <= end <= 10):
            raise BenchError(f"{path}:{lineno}: need 0 <= StartTime <= EndTime <= 10, got {start}..{end}")
        self.class_index(cat, f"{path}:{lineno}")
        return cat, vid, start, end

    def plan(self, root: Path) -> PrepPlan:
        p = self.params
        sources, splits, vids = {}, {}, {}
        ann = root / "Annotations.txt"
        if ann.exists():  # validated (header detected by content), recorded; the split files define samples
            for lineno, line in iter_nonempty(ann):
                if lineno == 1 and line.strip() == HEADER:
                    continue
                self.parse_line(ann, lineno, line)
            rel, d = self.source(root, ann)
            sources[rel] = d
        for split, fname in (("train", "trainSet.txt"), ("val", "valSet.txt"), ("test", "testSet.txt")):
            path = root / fname
            if not path.exists():
                raise BenchError(f"ave: split file {path} not found (AVE_Dataset/{fname} expected)")
            rel, d = self.source(root, path)
            sources[rel] = d
            sp = SplitPlan([], np.zeros(0), self.array_specs())
            items, labels = [], []
            used_vid: set[str] = set()
            events: dict[str, list[tuple[str, int, int]]] = {}  # vid -> its distinct events, in file order
            for lineno, line in iter_nonempty(path):
                if line.strip() == HEADER:
                    continue
                cat, vid, start, end = self.parse_line(path, lineno, line)
                sp.listed += 1
                ev = events.setdefault(vid, [])
                if (cat, start, end) in ev:  # the very same event listed again
                    sp.skip("duplicate row", f"{vid}#{ev.index((cat, start, end))} ({cat} {start}-{end})")
                    continue
                ev.append((cat, start, end))
                key = f"{vid}#{len(ev) - 1} ({cat} {start}-{end})"  # (video id, event index)
                if p.dedup == "reference" and vid in used_vid:
                    sp.skip("video id already in split (dedup=reference)", key)
                    continue
                if end <= start:
                    sp.skip("zero-length event", key)
                    continue
                wav = root / "Audios" / f"{vid}.wav"
                if not wav.exists():
                    sp.skip("missing audio", key)
                    continue
                se = root / "Image-01-FPS-SE" / vid
                whole = root / "Image-01-FPS" / vid
                mp4 = root / "AVE" / f"{vid}.mp4"
                if not se.is_dir() and not whole.is_dir() and mp4.exists():
                    extract_frames_1fps(mp4, whole)  # OGM-GE's 1-fps extractor (PyAV)
                if se.is_dir():
                    frames = list_frames(se, p.frame_policy)
                elif whole.is_dir():
                    frames = list_frames(whole, "segments")[start:end + 1]  # 1 fps: position = second
                else:
                    frames = []
                if not frames:
                    sp.skip("missing frames", key)
                    continue
                idx = self.class_index(cat, f"{path}:{lineno}")
                items.append(AVItem(key, idx, wav, keep_frames(frames, p.max_frames, p.frame_policy), (start, end)))
                labels.append(idx)
                used_vid.add(vid)
                vids.setdefault(vid, set()).add(split)
            sp.items, sp.labels = items, np.array(labels, np.int64)
            splits[split] = sp
        overlap = {f"{a}&{b}": sum(1 for s in vids.values() if a in s and b in s)
                   for a, b in (("train", "val"), ("train", "test"), ("val", "test"))}
        return PrepPlan(self.name, self.prep_params(), splits, sources, list(CLASSES),
                        {**self.plan_info(), "video_ids_shared_across_splits": overlap})
