"""Hugging Face ``transformers`` encoders from a local directory as backbones (``hf``).

Audio, vision and text encoders (AST, wav2vec2, HuBERT, ViT, BERT-like, ...) are loaded with
``AutoModel`` from a directory on disk: with weights (``model.safetensors`` / ``pytorch_model.bin``)
they are pretrained, with only ``config.json`` they are randomly initialised (what the tests use).
Nothing is downloaded. How a modality reaches the model follows the model's main input:

* ``input_ids`` models take token ids + mask (text modalities) or, through ``inputs_embeds``, any
  sequence: a learned linear map of each frame (C features of a (C, L) sequence; the C x F rows of
  a (C, F, T) spectrogram) to the hidden size, so a BERT-like encoder reads MFCC or feature frames;
* ``pixel_values`` models (ViT, ...) take images; a 1-channel image is repeated to the model's
  channels, other sizes use the model's position-embedding interpolation or are resized;
* ``input_values`` models take a waveform (wav2vec2, HuBERT: a (1, L) sequence or an (L,) vector)
  or, when the config has ``num_mel_bins`` (AST), a spectrogram, padded or cropped to ``max_length``.

Stage maps are ``stages`` hidden states evenly spaced over the layers (ending at the last) as
(B, H, L) sequences (padded positions zeroed; LayerDrop is turned off so that every layer is
there); the pooled vector is the first token's final
state (``cls``) for token and pixel inputs, the (masked) mean otherwise. Transformers have no
final ReLU: the pre-activation vector and maps are the same tensors.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.api.config import hp
from bench.api.errors import BenchError
from bench.api.registry import register_backbone
from bench.models.output import Backbone, ModelOutput
from bench.models.registry import BackboneFactory, InputSpec

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def check_model_dir(path: str, where: str) -> Path:
    """A local model directory with a config.json, or an error saying what to put where."""
    hint = ("a Hugging Face model directory (config.json, and model.safetensors for pretrained weights), e.g. "
            "from `hf download ORG/MODEL --local-dir DIR` on a machine with network; nothing is downloaded at run time")
    if not path:
        raise BenchError(f"{where} is not set: give {hint}")
    d = Path(path).expanduser()
    if not (d / "config.json").is_file():
        raise BenchError(f"{where}={path}: no config.json there; put {hint}")
    return refuse_custom_code(d, where)


CODE_CONFIGS = ("config.json", "tokenizer_config.json", "preprocessor_config.json", "processor_config.json")
"""The files in which transformers looks for ``auto_map`` (classes defined by Python files to import)."""


def refuse_custom_code(d: Path, where: str) -> Path:
    """``d``, unless one of its configuration files has an ``auto_map``: loading it would import
    the directory's own Python, which a benchmark never does (the ``trust_remote_code=False``
    passed to transformers alone would, for a known model type, quietly ignore the map; without it
    transformers asks on the terminal). Raised before transformers is called, naming the directory."""
    import json

    for name in CODE_CONFIGS:
        f = d / name
        if not f.is_file():
            continue
        try:
            cfg = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BenchError(f"{where}={d}: {name} is not readable JSON ({exc})") from None
        if isinstance(cfg, dict) and cfg.get("auto_map"):
            raise BenchError(f"{where}={d}: {name} has an auto_map (model code in the directory's own Python files); "
                             f"refused: cmkd-bench runs built-in transformers classes only, never a model "
                             f"directory's code (remove auto_map to use the built-in class of its model_type)")
    return d


@register_backbone("hf")
class HFFactory(BackboneFactory):
    description = ("transformers AutoModel from a local directory (AST, wav2vec2, HuBERT, ViT, BERT-like); "
                   "stage maps from hidden states")
    library = "transformers"
    layouts = ("tokens", "sequence", "image", "video", "vector")

    @dataclass
    class Params:
        dir: str = hp("", "local model directory (config.json [+ model.safetensors]); without weights: random init")
        stages: int = hp(4, "stage maps: N hidden states evenly spaced over the layers", ge=1)
        pool: str = hp("auto", "auto (cls for token/pixel inputs, else mean) | cls | mean")
        freeze: bool = hp(False, "freeze the encoder (train the input projection and the classifier)")

        def validate(self) -> None:
            if self.pool not in ("auto", "cls", "mean"):
                raise ValueError(f"pool must be auto, cls or mean, got {self.pool!r}")

    @classmethod
    def build(cls, p: Any, spec: InputSpec, num_classes: int) -> Backbone:
        from transformers import AutoConfig, AutoModel

        d = check_model_dir(p.dir, "hf.dir")
        config = AutoConfig.from_pretrained(str(d), local_files_only=True, trust_remote_code=False)
        if any((d / f).exists() for f in WEIGHT_FILES):
            model = AutoModel.from_pretrained(str(d), local_files_only=True, trust_remote_code=False)
        else:
            model = AutoModel.from_config(config, trust_remote_code=False)
        return HFBackbone(model, spec, num_classes, p.stages, p.pool, p.freeze)


class HFBackbone(Backbone):
    """A transformers encoder behind the ModelOutput contract (see the module docstring)."""

    def __init__(self, model: nn.Module, spec: InputSpec, num_classes: int, stages: int = 4, pool: str = "auto",
                 freeze: bool = False):
        super().__init__()
        self.model = model
        cfg = model.config
        if getattr(cfg, "layerdrop", 0):  # wav2vec2/HuBERT skip random layers in training: stage maps need all
            cfg.layerdrop = 0.0
        self.frames = spec.frames
        self.route = _route(model, spec)
        self.proj: nn.Module | None = None
        if self.route == "embeds":
            c, length = _frame_dims(spec.shape)
            limit = getattr(cfg, "max_position_embeddings", None)
            if limit is not None and length > limit:
                raise BenchError(f"hf model {type(model).__name__}: {spec.describe()} has {length} frames, more than "
                                 f"its max_position_embeddings={limit}")
            self.proj = nn.Linear(c, cfg.hidden_size)
        if self.route == "pixels":
            want = getattr(cfg, "num_channels", spec.channels)
            if spec.channels not in (1, want):
                raise BenchError(f"hf model {type(model).__name__} takes {want}-channel images; {spec.describe()} "
                                 f"has {spec.channels}")
            self.repeat = want if spec.channels == 1 and want != 1 else 1
            self.image_size = getattr(cfg, "image_size", None)
            self.interp = "interpolate_pos_encoding" in inspect.signature(model.forward).parameters
        if self.route == "spectrogram" and _frame_dims(spec.shape)[0] != cfg.num_mel_bins:
            raise BenchError(f"hf model {type(model).__name__} takes {cfg.num_mel_bins} mel bins; {spec.describe()} "
                             f"has {_frame_dims(spec.shape)[0]} rows")
        self.pool_mode = pool if pool != "auto" else ("cls" if self.route in ("ids", "pixels") else "mean")
        self.freeze = freeze
        if freeze:
            for q in self.model.parameters():
                q.requires_grad_(False)
        n_layers = self._count_layers(spec)
        k = max(1, min(stages, n_layers))
        self.taps = sorted({max(1, round(n_layers * (i + 1) / k)) for i in range(k)})
        with torch.no_grad():
            was = self.training
            self.eval()
            probe = self._encode(_dummy(spec))
            self.train(was)
        self.stage_channels = [int(m.shape[1]) for m in probe[0]]
        self.feature_dim = int(probe[1].shape[1])
        self.num_classes = num_classes
        self.classifier = nn.Linear(self.feature_dim, num_classes)

    def _count_layers(self, spec: InputSpec) -> int:
        n = getattr(self.model.config, "num_hidden_layers", None)
        if isinstance(n, int) and n > 0:
            return n
        with torch.no_grad():
            was = self.model.training
            self.model.eval()
            out = self.model(**self._inputs(_dummy(spec))[0], output_hidden_states=True)
            self.model.train(was)
        return len(out.hidden_states) - 1

    def _inputs(self, x: torch.Tensor) -> tuple[dict[str, Any], torch.Tensor | None]:
        r = self.route
        if r == "ids":
            mask = x[:, 1].long()
            return {"input_ids": x[:, 0].long(), "attention_mask": mask}, mask
        if r == "embeds":
            frames = x.float().flatten(1, -2).transpose(1, 2)  # (B, L, C): one token per step of the last axis
            return {"inputs_embeds": self.proj(frames)}, None  # type: ignore[misc]
        if r == "pixels":
            x = x.float()
            if self.repeat > 1:
                x = x.expand(-1, self.repeat, *x.shape[2:])
            kw: dict[str, Any] = {}
            size = self.image_size
            if isinstance(size, int) and tuple(x.shape[-2:]) != (size, size):
                if self.interp:
                    kw["interpolate_pos_encoding"] = True
                else:
                    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
            return {"pixel_values": x, **kw}, None
        if r == "waveform":
            return {"input_values": x.float().reshape(x.shape[0], -1)}, None
        spec = x.float().flatten(1, -2).transpose(1, 2)  # AST: (B, T, mel)
        t = self.model.config.max_length
        spec = spec[:, :t] if spec.shape[1] >= t else F.pad(spec, (0, 0, 0, t - spec.shape[1]))
        return {"input_values": spec}, None

    def _encode(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        kwargs, mask = self._inputs(x)
        if self.freeze:
            self.model.eval()
        out = self.model(**kwargs, output_hidden_states=True)
        hs = out.hidden_states
        maps = [_as_map(hs[i], mask) for i in self.taps]
        last = getattr(out, "last_hidden_state", None)
        last = hs[-1] if last is None else last
        return maps, self._pool(last, mask)

    def _pool(self, h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if h.dim() == 4:  # convolutional models: (B, C, H, W)
            return h.mean((2, 3))
        if self.pool_mode == "cls":
            return h[:, 0]
        if mask is None:
            return h.mean(1)
        m = mask[:, :, None].to(h.dtype)
        return (h * m).sum(1) / m.sum(1).clamp(min=1)

    def forward(self, x: torch.Tensor) -> ModelOutput:
        b = x.shape[0]
        if self.frames > 1:
            x = x.flatten(0, 1)
        maps, pooled = self._encode(x)
        if self.frames > 1:
            maps = [m.view(b, self.frames, *m.shape[1:]).mean(1) for m in maps]
            pooled = pooled.view(b, self.frames, -1).mean(1)
        return ModelOutput(self.classifier(pooled), pooled, pooled, maps, maps)


def _route(model: nn.Module, spec: InputSpec) -> str:
    """How ``spec`` reaches ``model`` (see the module docstring), or an error saying why it cannot."""
    main = getattr(model, "main_input_name", "input_ids")
    lay = spec.layout
    takes_embeds = "inputs_embeds" in inspect.signature(model.forward).parameters
    name = type(model).__name__
    if lay == "tokens" and main == "input_ids":
        return "ids"
    if main == "pixel_values" and lay in ("image", "video"):
        return "pixels"
    if main == "input_values":
        if hasattr(model.config, "num_mel_bins"):
            if lay in ("sequence", "image"):
                return "spectrogram"
        elif lay == "vector" or (lay == "sequence" and spec.shape[0] == 1):
            return "waveform"
    if takes_embeds and lay in ("sequence", "image"):
        return "embeds"
    raise BenchError(f"hf model {name} (main input {main!r}) cannot take {spec.describe()}: it reads "
                     + {"input_ids": "token ids (text) or, through inputs_embeds, sequences",
                        "pixel_values": "images or frame stacks",
                        "input_values": "a 1-channel waveform, or a mel spectrogram (AST)"}.get(main, f"{main!r}"))


def _frame_dims(shape: tuple[int, ...]) -> tuple[int, int]:
    """(features per step, steps) of a sequence (C, L) or an image read row-block by column (C*H, W)."""
    return int(torch.tensor(shape[:-1]).prod()), int(shape[-1])


def _as_map(h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if h.dim() != 3:
        return h
    m = h.transpose(1, 2)
    return m * mask[:, None, :].to(m.dtype) if mask is not None else m


def _dummy(spec: InputSpec) -> torch.Tensor:
    if spec.layout == "tokens":
        return torch.stack([torch.zeros(1, spec.shape[-1], dtype=torch.long),
                            torch.ones(1, spec.shape[-1], dtype=torch.long)], 1)
    x = torch.zeros(1, *spec.shape)
    return x.flatten(0, 1) if spec.layout == "video" else x
