"""Image decoding for ``bench prepare`` and batched, device-side image augmentation.

The references augment each frame in a DataLoader worker with torchvision's
``RandomResizedCrop(224)`` + ``RandomHorizontalFlip`` and evaluate with ``Resize((224, 224))``,
all followed by ImageNet normalisation (``datasets.md`` 1.3). Here the cache holds uint8 frames
already resized to a fixed size, and :func:`random_resized_crop` draws torchvision's crop
parameters per image (scale 0.08-1, log-uniform ratio 3/4-4/3, 10 attempts, centre-crop
fallback) and resamples all crops of a batch in one ``roi_align`` call on the training device.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bench.api.errors import BenchError

IMAGENET_MEAN = (0.485, 0.456, 0.406)


IMAGENET_STD = (0.229, 0.224, 0.225)


def read_image(path: str | Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode an image file to RGB uint8 (H, W, 3), optionally resized to ``size`` = (H, W).

    Palette, greyscale, CMYK and alpha images are converted to RGB (CrisisMMD has all of them).
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.exists():
        raise BenchError(f"{path}: image file not found")
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if size is not None and (im.height, im.width) != tuple(size):
                im = im.resize((size[1], size[0]), Image.BILINEAR)
            return np.asarray(im, dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise BenchError(f"{path}: unreadable image ({exc})") from None


def read_gray(path: str | Path) -> np.ndarray:
    """Single-channel image (label maps, 16-bit depth pngs) as stored: (H, W) uint8/uint16."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.exists():
        raise BenchError(f"{path}: image file not found")
    try:
        with Image.open(path) as im:
            a = np.asarray(im)
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise BenchError(f"{path}: unreadable image ({exc})") from None
    if a.ndim != 2:
        raise BenchError(f"{path}: expected a single-channel image, got shape {a.shape}")
    return a


def resize_short(h: int, w: int, short: int) -> tuple[int, int]:
    if h <= w:
        return short, max(1, round(w * short / h))
    return max(1, round(h * short / w)), short


def normalize(x: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """(N, 3, H, W) float in [0, 1] -> ImageNet-normalised."""
    m = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - m) / s


def to_float_nchw(x: torch.Tensor) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float in [0, 1]."""
    return x.permute(0, 3, 1, 2).float().div_(255.0)


def crop_params(h: int, w: int, n: int, generator: torch.Generator | None,
                scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> torch.Tensor:
    """torchvision ``RandomResizedCrop.get_params`` for ``n`` images: (n, 4) boxes x1, y1, x2, y2."""
    area = h * w
    boxes = []
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(n):
        for _attempt in range(10):
            target = area * float(torch.empty(1).uniform_(scale[0], scale[1], generator=generator))
            ar = math.exp(float(torch.empty(1).uniform_(log_r[0], log_r[1], generator=generator)))
            cw = int(round(math.sqrt(target * ar)))
            ch = int(round(math.sqrt(target / ar)))
            if 0 < cw <= w and 0 < ch <= h:
                i = int(torch.randint(0, h - ch + 1, (1,), generator=generator))
                j = int(torch.randint(0, w - cw + 1, (1,), generator=generator))
                break
        else:  # centre crop at the clamped ratio
            in_ratio = w / h
            if in_ratio < ratio[0]:
                cw, ch = w, int(round(w / ratio[0]))
            elif in_ratio > ratio[1]:
                ch, cw = h, int(round(h * ratio[1]))
            else:
                cw, ch = w, h
            i, j = (h - ch) // 2, (w - cw) // 2
        boxes.append((j, i, j + cw, i + ch))
    return torch.tensor(boxes, dtype=torch.float32)


def random_resized_crop(x: torch.Tensor, out: int | tuple[int, int], generator: torch.Generator | None,
                        flip: bool = True) -> torch.Tensor:
    """(N, C, H, W) float -> (N, C, out, out): an independent random resized crop (+ flip) per image."""
    from torchvision.ops import roi_align

    oh, ow = (out, out) if isinstance(out, int) else out
    n, _, h, w = x.shape
    boxes = crop_params(h, w, n, generator).to(x.device)
    rois = torch.cat([torch.arange(n, device=x.device, dtype=torch.float32)[:, None], boxes], 1)
    y = roi_align(x, rois.to(x.dtype), (oh, ow), spatial_scale=1.0, sampling_ratio=2, aligned=True)
    if flip:
        f = torch.rand(n, generator=generator) < 0.5
        if f.any():
            y[f.to(x.device)] = y[f.to(x.device)].flip(-1)
    return y


def resize(x: torch.Tensor, out: int | tuple[int, int]) -> torch.Tensor:
    """Eval transform ``Resize((out, out))`` (aspect ratio not kept, antialiased bilinear)."""
    oh, ow = (out, out) if isinstance(out, int) else out
    if x.shape[-2:] == (oh, ow):
        return x
    return F.interpolate(x, size=(oh, ow), mode="bilinear", align_corners=False, antialias=True)


def center_crop(x: torch.Tensor, out: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    i, j = max(0, (h - out) // 2), max(0, (w - out) // 2)
    return x[..., i:i + out, j:j + out]


def select_frames(frames: torch.Tensor, nframes: torch.Tensor, t: int, train: bool,
                  generator: torch.Generator | None) -> torch.Tensor:
    """Pick ``t`` frames per clip: one per equal segment of the clip's sorted frames.

    ``frames`` (B, F, H, W, 3) holds each clip's frames in time order in its first ``nframes``
    slots. Training draws a random frame inside each segment, evaluation takes the middle one
    (``datasets.md`` 1.2 REC). Returns (B, t, H, W, 3).
    """
    b = frames.shape[0]
    n = nframes.to("cpu").long().clamp(min=1)
    seg = torch.arange(t).float()
    lo = (seg[None] * n[:, None].float() / t).floor().long()
    hi = ((seg[None] + 1) * n[:, None].float() / t).floor().long().clamp(min=1)
    hi = torch.maximum(hi, lo + 1)
    if train:
        u = torch.rand(b, t, generator=generator)
        pick = lo + (u * (hi - lo).float()).floor().long()
    else:
        pick = (lo + hi - 1) // 2
    pick = torch.minimum(pick, (n[:, None] - 1)).to(frames.device)
    return frames[torch.arange(b, device=frames.device)[:, None], pick]


def extract_frames_1fps(video: str | Path, out_dir: str | Path, per_second: int = 1) -> list[Path]:
    """OGM-GE's frame extractor: keep frame indices 0, fps, 2*fps, ... (fps = int(container rate)).

    Writes ``NNNNN.jpg`` (the absolute 0-based frame index, 5 digits) into ``out_dir`` and returns
    the paths in time order. Decoding uses PyAV (``pip install av``); ``per_second`` > 1 keeps that
    many evenly spaced frames per block of ``fps`` frames, as the reference's
    ``frame_kept_per_second``.
    """
    try:
        import av
    except ImportError:
        raise BenchError(f"{video}: decoding videos needs PyAV (`pip install av`), or extract the frames "
                         f"with OGM-GE's video_preprocessing.py into Image-01-FPS/") from None

    video, out_dir = Path(video), Path(out_dir)
    if not video.exists():
        raise BenchError(f"{video}: video file not found")
    try:
        container = av.open(str(video))
    except Exception as exc:  # noqa: BLE001 - any container error is a bad file
        raise BenchError(f"{video}: unreadable video ({exc})") from None
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    with container:
        stream = container.streams.video[0]
        fps = int(float(stream.average_rate or stream.guessed_rate or 0))
        if fps < 1:
            raise BenchError(f"{video}: no usable frame rate in the container")
        keep = {int(round(k * fps / per_second)) for k in range(per_second)}
        for i, frame in enumerate(container.decode(stream)):
            if i % fps in keep:
                path = out_dir / f"{i:05d}.jpg"
                frame.to_image().save(path, quality=95)
                written.append(path)
    return written
