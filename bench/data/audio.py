"""Audio decoding and the three spectrogram recipes of the OGM-GE / C2KD line of work.

Recipes (``datasets.md`` 1.4):

* **A** (C2KD / OGM-GE CREMA-D): mono at 22,050 Hz, tile to 3 s, clip to [-1, 1], STFT n_fft 512,
  hop 353, periodic Hann, centred with zero padding, ``log(|S| + 1e-7)`` -> 257 x 188.
* **B** (C2KD AVE, "Audio-1004"): mono at 16 kHz, tile to 160,000 samples, clip,
  ``scipy.signal.spectrogram`` (nperseg 512, noverlap 353, Tukey(0.25), constant detrend, PSD
  density), ``log(x + 1e-7)``, per-clip z-score -> 257 x 1004.
* **C** (C2KD / OGM-GE VGGSound): mono at 16 kHz, double by tiling while shorter than 10 s, a 5-s
  crop (random in training; REC: fixed centre crop at 2.5 s in evaluation), STFT n_fft 256, hop
  128, ``log(|S| + 1e-7)`` -> 129 x 626. The crop is random per step, so the cache keeps the
  10-s int16 waveform and :func:`recipe_c_batch` computes the STFT on the training device.

The fixed repeat counts of the references (3x, 10x) break on very short clips; here signals are
tiled until long enough, and an empty signal becomes silence (counted by the caller).
Resampling uses ``torchaudio.functional.resample`` (windowed sinc); the references use librosa
(soxr), which differs slightly: recorded in the cache manifest.
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import torch

from bench.api.errors import BenchError


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """(mono float32 samples in [-1, 1], sample rate). PCM 8/16/24/32-bit and float wavs."""
    path = Path(path)
    if not path.exists():
        raise BenchError(f"{path}: audio file not found")
    try:
        with wave.open(str(path), "rb") as w:
            ch, width, sr, n = w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()
            raw = w.readframes(n)
        if width == 1:
            x = (np.frombuffer(raw, np.uint8).astype(np.float32) - 128.0) / 128.0
        elif width == 2:
            x = np.frombuffer(raw, "<i2").astype(np.float32) / 32768.0
        elif width == 3:
            b = np.frombuffer(raw, np.uint8).reshape(-1, 3)
            i = (b[:, 0].astype(np.int32) | (b[:, 1].astype(np.int32) << 8) | (b[:, 2].astype(np.int32) << 16))
            i = np.where(i >= 1 << 23, i - (1 << 24), i)
            x = i.astype(np.float32) / float(1 << 23)
        elif width == 4:
            x = np.frombuffer(raw, "<i4").astype(np.float32) / float(1 << 31)
        else:
            raise BenchError(f"{path}: unsupported sample width {width} bytes")
        x = x.reshape(-1, ch) if ch > 0 else x.reshape(-1, 1)
    except wave.Error:
        # WAVE_FORMAT_IEEE_FLOAT / EXTENSIBLE: the stdlib refuses them, scipy reads them.
        from scipy.io import wavfile

        try:
            sr, data = wavfile.read(str(path))
        except Exception as exc:  # noqa: BLE001 - any parse failure is a bad file
            raise BenchError(f"{path}: not a readable WAV file ({exc})") from None
        x = np.asarray(data)
        if x.dtype.kind == "i":
            x = x.astype(np.float32) / float(np.iinfo(x.dtype).max + 1)
        elif x.dtype.kind == "u":
            x = (x.astype(np.float32) - 128.0) / 128.0
        x = x.astype(np.float32).reshape(x.shape[0], -1)
    except EOFError:
        raise BenchError(f"{path}: truncated WAV file") from None
    return x.mean(axis=1).astype(np.float32), int(sr)


def resample(x: np.ndarray, sr: int, target: int) -> np.ndarray:
    if sr == target or x.size == 0:
        return x.astype(np.float32)
    import torchaudio.functional as AF

    return AF.resample(torch.from_numpy(x.astype(np.float32)), sr, target).numpy()


def load_mono(path: str | Path, target_sr: int) -> np.ndarray:
    x, sr = read_wav(path)
    return resample(x, sr, target_sr)


def tile_to(x: np.ndarray, n: int) -> tuple[np.ndarray, bool]:
    """Repeat ``x`` until it has at least ``n`` samples, cut to ``n``. (array, was_empty)."""
    if x.size == 0:
        return np.zeros(n, np.float32), True
    reps = -(-n // x.size)
    return np.tile(x, reps)[:n].astype(np.float32), False


def hann_periodic(n: int) -> torch.Tensor:
    return torch.hann_window(n, periodic=True, dtype=torch.float64)


def log_stft(x: np.ndarray | torch.Tensor, n_fft: int, hop: int) -> torch.Tensor:
    """``log(|STFT| + 1e-7)``, centred with zero padding (librosa >= 0.10 semantics): (..., F, T)."""
    t = torch.as_tensor(x)
    win = hann_periodic(n_fft).to(device=t.device, dtype=t.dtype if t.is_floating_point() else torch.float32)
    s = torch.stft(t, n_fft, hop, n_fft, win, center=True, pad_mode="constant", return_complex=True)
    return torch.log(s.abs() + 1e-7)


def recipe_a(x: np.ndarray) -> tuple[np.ndarray, bool]:
    """Waveform at 22,050 Hz -> 257 x 188 log-magnitude (float32), empty flag."""
    y, empty = tile_to(x, 66150)
    y = np.clip(y, -1.0, 1.0)
    return log_stft(torch.from_numpy(y.astype(np.float64)), 512, 353).float().numpy(), empty


def recipe_b(x: np.ndarray) -> tuple[np.ndarray, bool]:
    """Waveform at 16 kHz -> 257 x 1004 z-scored log-PSD (float32), empty flag."""
    from scipy.signal import spectrogram

    y, empty = tile_to(x, 160000)
    y = np.clip(y, -1.0, 1.0)
    _, _, s = spectrogram(y.astype(np.float64), nperseg=512, noverlap=353)
    s = np.log(s + 1e-7)
    s = (s - s.mean()) / (s.std() + 1e-9)
    return s.astype(np.float32), empty


def recipe_c_wave(x: np.ndarray) -> tuple[np.ndarray, bool]:
    """Waveform at 16 kHz -> the 10-s int16 waveform recipe C crops from (doubling tiles), empty flag."""
    if x.size == 0:
        return np.zeros(160000, np.int16), True
    y = x.astype(np.float32)
    while y.size < 160000:
        y = np.concatenate([y, y])
    y = np.clip(y[:160000], -1.0, 1.0)
    return np.round(y * 32767.0).astype(np.int16), False


def recipe_c_batch(wave_i16: torch.Tensor, train: bool, generator: torch.Generator | None,
                   eval_crop: str = "center") -> torch.Tensor:
    """(B, 160000) int16 -> (B, 1, 129, 626) float: 5-s crop then log-STFT (on the batch's device)."""
    b = wave_i16.shape[0]
    x = wave_i16.float() / 32767.0
    if train or eval_crop == "random":
        starts = torch.randint(0, 80001, (b,), generator=generator).tolist()
    else:
        starts = [40000] * b
    crops = torch.stack([x[i, s:s + 80000] for i, s in enumerate(starts)])
    return log_stft(crops, 256, 128).unsqueeze(1)
