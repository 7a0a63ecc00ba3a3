"""What ``bench speed`` feeds the step it times, without a dataset: random arrays in an adapter's
stored layout (:func:`fake_split`), and for the all-off set-up per-sample files decoded in
``DataLoader`` workers as the reference code trains (:class:`ReferenceFiles`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.api.errors import BenchError
from bench.data import DatasetAdapter, Split
from bench.data.vision import IMAGENET_MEAN, IMAGENET_STD


def fake_split(adapter: DatasetAdapter, n: int, seed: int = 0) -> Split:
    """A training split of ``n`` random samples in the adapter's stored layout."""
    g = torch.Generator().manual_seed(seed)
    k = adapter.num_classes
    specs = getattr(adapter, "array_specs", None)
    if specs is None:
        if adapter.name == "synthetic":
            sp = adapter.load()["train"]
            reps = -(-n // len(sp))
            idx = torch.arange(reps * len(sp))[:n] % len(sp)
            return sp.subset(idx)
        raise BenchError(f"bench speed: dataset {adapter.name!r} has no declared array layout (array_specs)")
    inputs, aux, labels = {}, {}, None
    for key, spec in specs().items():
        shape = (n, *spec.shape)
        dt = np.dtype(spec.dtype)
        if key == getattr(adapter, "label_key", "label"):
            if len(spec.shape) == 0:
                labels = torch.randint(0, k, (n,), generator=g)
            else:
                labels = torch.randint(0, k, shape, generator=g).to(getattr(torch, str(dt)))
            continue
        if key.endswith("nframes"):
            t = torch.full(shape, int(getattr(adapter.params, "max_frames", 1)), dtype=torch.int16)
        elif key.endswith("mask"):
            t = torch.ones(shape, dtype=getattr(torch, str(dt)))
        elif dt.kind == "u":
            t = torch.randint(0, 256 if dt.itemsize == 1 else 4000, shape, generator=g).to(getattr(torch, str(dt)))
        elif dt.kind == "i":
            hi = 1000 if key.startswith("text") else 12000
            t = torch.randint(-hi if "audio" in key else 1, hi, shape, generator=g).to(getattr(torch, str(dt)))
        else:
            t = torch.randn(shape, generator=g).to(getattr(torch, str(dt)))
        (aux if "." in key else inputs)[key] = t
    assert labels is not None
    return Split(inputs, labels, {}, aux)


class ReferenceFiles(torch.utils.data.Dataset):
    """Per-sample decoding from files in DataLoader workers, as the reference code trains.

    Audio-visual sets: a wav per clip (decoded, resampled, STFT of the adapter's recipe) and jpg
    frames (PIL, torchvision ``RandomResizedCrop`` + flip + ``ToTensor`` + ``Normalize``). Other
    sets: one ``.npy`` per sample and modality, converted by the adapter's own transform.
    """

    def __init__(self, adapter: DatasetAdapter, folder: Path, n: int, modalities: list[str], seed: int = 0):
        self.adapter, self.folder, self.n, self.mods = adapter, folder, n, modalities
        self.av = hasattr(adapter, "audio_recipe")
        rng = np.random.default_rng(seed)
        folder.mkdir(parents=True, exist_ok=True)
        if self.av:
            from torchvision import transforms

            self.labels = rng.integers(0, adapter.num_classes, n)
            self._write_av(rng)
            self.frame_tf = transforms.Compose([
                transforms.RandomResizedCrop(int(adapter.params.image_size)), transforms.RandomHorizontalFlip(),  # type: ignore[attr-defined]
                transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
        else:
            sp = fake_split(adapter, n, seed)
            for i in range(n):
                np.save(folder / f"label-{i}.npy", sp.labels[i].numpy())
                for m in modalities:
                    np.save(folder / f"{m}-{i}.npy", sp.inputs[m][i].numpy())
                    for k, v in sp.aux_for(m, torch.tensor([i])).items():
                        np.save(folder / f"{m}.{k}-{i}.npy", v[0].numpy())

    def _write_av(self, rng: np.random.Generator) -> None:
        import wave

        from PIL import Image

        sr = 16000
        secs = {"A": 2.5, "B": 10.0, "C": 10.0}[self.adapter.audio_recipe]  # type: ignore[attr-defined]
        for i in range(self.n):
            x = (rng.standard_normal(int(sr * secs)) * 3000).clip(-32767, 32767).astype(np.int16)
            with wave.open(str(self.folder / f"{i}.wav"), "wb") as w:
                w.setnchannels(1)
                w.setsampwidth(2)
                w.setframerate(sr)
                w.writeframes(x.tobytes())
            for f in range(int(getattr(self.adapter.params, "num_frames", 1))):
                img = rng.integers(0, 256, (360, 480, 3), dtype=np.uint8)  # CREMA-D video frames are 480 x 360
                Image.fromarray(img).save(self.folder / f"{i}-{f}.jpg", quality=90)

    def __len__(self) -> int:
        return self.n

    def _audio(self, i: int) -> torch.Tensor:
        from bench.data.audio import (
            load_mono,
            recipe_a,
            recipe_b,
            recipe_c_batch,
            recipe_c_wave,
        )

        recipe = self.adapter.audio_recipe  # type: ignore[attr-defined]
        if recipe == "A":
            a, _ = recipe_a(load_mono(self.folder / f"{i}.wav", 22050))
            return torch.from_numpy(a).unsqueeze(0)
        if recipe == "B":
            a, _ = recipe_b(load_mono(self.folder / f"{i}.wav", 16000))
            return torch.from_numpy(a).unsqueeze(0)
        w, _ = recipe_c_wave(load_mono(self.folder / f"{i}.wav", 16000))
        return recipe_c_batch(torch.from_numpy(w)[None], True, None)[0]

    def _visual(self, i: int) -> torch.Tensor:
        from PIL import Image

        t = int(getattr(self.adapter.params, "num_frames", 1))
        frames = [self.frame_tf(Image.open(self.folder / f"{i}-{f}.jpg").convert("RGB")) for f in range(t)]
        return frames[0] if t == 1 else torch.stack(frames)

    def __getitem__(self, i: int) -> tuple[dict[str, torch.Tensor], Any]:
        if self.av:
            return {m: self._audio(i) if m == "audio" else self._visual(i) for m in self.mods}, int(self.labels[i])
        # one sample from its files, through the adapter's own (possibly joint) transform, on the CPU
        x = {m: torch.from_numpy(np.load(self.folder / f"{m}-{i}.npy"))[None] for m in self.mods}
        aux = {p.name.rsplit("-", 1)[0]: torch.from_numpy(np.load(p))[None]
               for m in self.mods for p in self.folder.glob(f"{m}.*-{i}.npy")}
        lab = torch.from_numpy(np.load(self.folder / f"label-{i}.npy"))[None]
        xs, y = self.adapter.batch(Split(x, lab, {}, aux), torch.arange(1), self.mods, torch.device("cpu"), True, None)
        return {m: xs[m][0] for m in self.mods}, y[0]
