"""``timm`` image models as backbones (``timm``): any ``timm.list_models()`` name, built with
``pretrained=False`` and, optionally, weights from a local file (nothing is downloaded).

Stage maps and the pooled vector come from timm's generic API, so no model is special-cased:
``forward_intermediates`` gives the deepest ``stages`` feature maps (NCHW, also for ViTs) and the
final features, ``forward_head(pre_logits=True)`` the pooled vector the classifier reads. Inputs:
images and spectrograms as they are, a (C, L) sequence as a 1-channel C x L image, a frame stack
folded into the batch and averaged over time. ``in_chans`` follows the input; a weights file for
3-channel images has its first convolution summed or tiled to fit (timm's own adaptation).
Library networks expose no pre-activation maps: pre- and post-activation outputs are the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from bench.api.config import hp
from bench.api.errors import BenchError
from bench.api.registry import register_backbone
from bench.models.output import Backbone
from bench.models.registry import (
    BackboneFactory,
    InputSpec,
    adapt_input_conv,
    first_mismatch,
    load_weights_file,
    parse_kwargs,
)
from bench.models.trunk import ImageTrunkBackbone


@register_backbone("timm")
class TimmFactory(BackboneFactory):
    description = "any timm model (timm.list_models()); stage maps from forward_intermediates"
    library = "timm"
    layouts = ("sequence", "image", "video")

    @dataclass
    class Params:
        model: str = hp("resnet18", "timm model name, e.g. resnet34, efficientnet_b0, vit_tiny_patch16_224")
        weights: str = hp("", "local weights file (.safetensors / .pth state dict); empty: random init")
        stages: int = hp(4, "stage maps: the deepest N feature levels", ge=1)
        kwargs: str = hp("", "extra timm.create_model arguments KEY=VALUE;..., e.g. channels=16,32,64,128;stem_width=16 "
                             "(a narrow ResNet)")

    @classmethod
    def build(cls, p: Any, spec: InputSpec, num_classes: int) -> Backbone:
        try:
            import timm
        except ImportError as exc:  # a dependency, but say so plainly where it is missing
            raise BenchError("backbone 'timm' needs the timm package: pip install 'timm>=1.0'") from exc
        if not timm.is_model(p.model):
            close = timm.list_models(f"*{p.model}*")[:8]
            raise BenchError(f"timm has no model {p.model!r}" + (f"; similar: {', '.join(close)}" if close else ""))
        in_chans = ImageTrunkBackbone.input_channels(spec)
        kw: dict[str, Any] = dict(parse_kwargs(p.kwargs, "timm.kwargs"), pretrained=False, num_classes=0,
                                  in_chans=in_chans)
        try:  # models with a fixed input size (ViTs) are built for the modality's size
            hw = (1, *spec.shape) if spec.layout == "sequence" else spec.shape[-3:]
            net = timm.create_model(p.model, img_size=tuple(hw[-2:]), **kw)
        except TypeError:  # the model takes no img_size (CNNs take any size)
            try:
                net = timm.create_model(p.model, **kw)
            except TypeError as exc:
                raise BenchError(f"timm model {p.model!r} does not take timm.kwargs={p.kwargs!r}: {exc}") from exc
        if p.weights:
            _load_timm_weights(net, p.weights, in_chans)
        return TimmBackbone(net, spec, num_classes, p.stages, p.model)


def _load_timm_weights(net: nn.Module, path: str, in_chans: int) -> None:
    """A timm (or original) state dict for this model: classifier dropped, stem adapted to ``in_chans``."""
    state = dict(load_weights_file(path, "timm.weights"))
    cfg = getattr(net, "pretrained_cfg", {}) or {}
    heads = cfg.get("classifier") or ()
    for h in (heads,) if isinstance(heads, str) else heads:
        state = {k: v for k, v in state.items() if not k.startswith(h + ".")}
    convs = cfg.get("first_conv") or ()
    for c in (convs,) if isinstance(convs, str) else convs:
        w = state.get(c + ".weight")
        if w is not None and w.dim() == 4 and w.shape[1] != in_chans:
            state[c + ".weight"] = adapt_input_conv(w, in_chans)
    problem = first_mismatch(net.state_dict(), state)
    if problem is not None:
        raise BenchError(f"timm.weights {path} does not fit timm model {type(net).__name__}: {problem}")
    net.load_state_dict(state)


class TimmBackbone(ImageTrunkBackbone):
    """A timm model behind the ModelOutput contract (see the module docstring)."""

    def __init__(self, net: nn.Module, spec: InputSpec, num_classes: int, stages: int, model_name: str):
        super().__init__()
        self.net = net
        self.generic = hasattr(net, "forward_intermediates")
        levels = len(getattr(net, "feature_info", []) or []) or 1
        self.n_maps = max(1, min(stages, levels))
        self._probe(spec, num_classes, f"timm model {model_name!r}", (RuntimeError, AssertionError, ValueError))

    def _encode(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        if self.generic:
            final, maps = self.net.forward_intermediates(x, indices=self.n_maps)
        else:  # older architectures: the final feature map is the only stage map
            final = self.net.forward_features(x)
            maps = [final] if final.dim() == 4 else []
        return list(maps), self.net.forward_head(final, pre_logits=True)
