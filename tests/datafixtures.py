"""Writers of tiny datasets in their real on-disk formats (wav, jpg, png, csv/txt/tsv, .mat).

Each class gets its own audio tone and image colour so one epoch on a few samples is learnable.
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np


def write_wav(path: Path, seconds: float, freq: float, sr: int = 16000, channels: int = 1, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    n = int(round(seconds * sr))
    t = np.arange(n) / sr
    x = 0.5 * np.sin(2 * np.pi * freq * t) + 0.05 * rng.normal(size=n)
    pcm = np.clip(x * 32767, -32768, 32767).astype("<i2")
    if channels > 1:
        pcm = np.repeat(pcm[:, None], channels, axis=1).reshape(-1)
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes(pcm.tobytes())


def class_colour(c: int) -> np.ndarray:
    rng = np.random.default_rng(1000 + c)
    return rng.integers(30, 225, size=3)


def write_jpg(path: Path, c: int, size=(48, 64), seed: int = 0, gray: bool = False, fmt: str | None = None) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    h, w = size
    img = np.clip(class_colour(c)[None, None, :] + rng.normal(0, 12, size=(h, w, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(img)
    if gray:
        im = im.convert("L")
    im.save(path, format=fmt)


def write_lines(path: Path, lines: list[str], crlf: bool = False, bom: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    end = "\r\n" if crlf else "\n"
    data = ("\ufeff" if bom else "") + end.join(lines) + end
    path.write_bytes(data.encode("utf-8"))
