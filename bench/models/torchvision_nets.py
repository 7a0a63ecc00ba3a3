"""torchvision classification CNNs as backbones (``torchvision``), built with ``weights=None`` and,
optionally, a local state dict (nothing is downloaded).

The network's convolutional trunk (``features`` / ``layers`` where the model has one, else its
children up to the pooling and classifier, with a RegNet's ``trunk_output`` stages unfolded) runs
module by module; a stage map is the last output at each spatial resolution (found once, on a
224 x 224 probe), the deepest ``stages`` of them are kept, and the pooled vector is the global
average of the trunk's output. A (C, L) sequence is read as a 1-channel C x L image, frame stacks
are folded into the batch and averaged. The first convolution is rebuilt for the input's
channels (3-channel weights summed or tiled to fit). Vision transformers and the Inception
family are refused here: ``timm`` or ``hf`` serve them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

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

HEADS = ("avgpool", "fc", "classifier", "heads", "dropout", "head")

REFUSED = ("vit_", "swin", "maxvit", "googlenet", "inception")


@register_backbone("torchvision")
class TorchvisionFactory(BackboneFactory):
    description = "torchvision classification CNNs (ResNet, ResNeXt, RegNet, MobileNet, EfficientNet, ConvNeXt, VGG, ...)"
    library = "torchvision"
    layouts = ("sequence", "image", "video")

    @dataclass
    class Params:
        model: str = hp("resnet18", "torchvision.models name, e.g. resnet34, mobilenet_v3_small, efficientnet_b0")
        weights: str = hp("", "local torchvision state dict (.pth / .safetensors); empty: random init")
        stages: int = hp(4, "stage maps: the deepest N resolutions of the trunk", ge=1)
        kwargs: str = hp("", "extra builder arguments KEY=VALUE;..., e.g. width_mult=0.5 (mobilenet_v2)")

    @classmethod
    def build(cls, p: Any, spec: InputSpec, num_classes: int) -> Backbone:
        import torchvision.models as tvm

        names = tvm.list_models(module=tvm)
        if p.model not in names:
            raise BenchError(f"torchvision has no classification model {p.model!r}; valid: {', '.join(names)}")
        if p.model.startswith(REFUSED):
            raise BenchError(f"torchvision model {p.model!r} has no convolutional trunk this wrapper can read; "
                             "use --set ...backbone=timm (vision transformers, Inception) instead")
        try:
            net = tvm.get_model(p.model, weights=None, **parse_kwargs(p.kwargs, "torchvision.kwargs"))
        except TypeError as exc:
            raise BenchError(f"torchvision model {p.model!r} does not take torchvision.kwargs={p.kwargs!r}: {exc}") from exc
        trunk = _trunk(net)
        if p.weights:
            _load_trunk_weights(net, trunk, p.weights)
        in_chans = ImageTrunkBackbone.input_channels(spec)
        modules = nn.ModuleList(m for _, m in trunk)
        _fit_first_conv(modules, in_chans)
        return TorchvisionBackbone(modules, spec, num_classes, p.stages, in_chans)


def _trunk(net: nn.Module) -> list[tuple[str, nn.Module]]:
    """(state-dict prefix, module) of the trunk, in forward order."""
    for attr in ("features", "layers"):
        m = getattr(net, attr, None)
        if isinstance(m, nn.Sequential):
            out = [(f"{attr}.{n}", c) for n, c in m.named_children()]
            return out + ([("relu", nn.ReLU())] if type(net).__name__ == "DenseNet" else [])
    out = []
    for n, c in net.named_children():
        if n in HEADS:
            continue
        if n == "trunk_output" and isinstance(c, nn.Sequential):
            out += [(f"{n}.{k}", b) for k, b in c.named_children()]
        else:
            out.append((n, c))
    return out


def _load_trunk_weights(net: nn.Module, trunk: list[tuple[str, nn.Module]], path: str) -> None:
    state = load_weights_file(path, "torchvision.weights")
    prefixes = tuple(n + "." for n, _ in trunk)
    want = {k: v for k, v in net.state_dict().items() if k.startswith(prefixes)}
    got = {k: v for k, v in state.items() if k.startswith(prefixes) or k not in net.state_dict()}
    got = {k: v for k, v in got.items() if not k.startswith(tuple(h + "." for h in HEADS))}
    problem = first_mismatch(want, got)
    if problem is not None:
        raise BenchError(f"torchvision.weights {path} does not fit torchvision model {type(net).__name__}: {problem}")
    net.load_state_dict(got, strict=False)


def _fit_first_conv(trunk: nn.ModuleList, in_chans: int) -> None:
    """Rebuild the first convolution for ``in_chans`` inputs, keeping (adapted) weights."""
    for name, conv in trunk.named_modules():
        if not isinstance(conv, nn.Conv2d):
            continue
        if conv.in_channels != in_chans:
            new = nn.Conv2d(in_chans, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                            1, conv.bias is not None)
            with torch.no_grad():
                new.weight.copy_(adapt_input_conv(conv.weight, in_chans))
                if conv.bias is not None:
                    new.bias.copy_(conv.bias)
            parent_name, _, leaf = name.rpartition(".")
            setattr(trunk.get_submodule(parent_name) if parent_name else trunk, leaf, new)
        return


class TorchvisionBackbone(ImageTrunkBackbone):
    """A torchvision trunk behind the ModelOutput contract (see the module docstring)."""

    def __init__(self, trunk: nn.ModuleList, spec: InputSpec, num_classes: int, stages: int, in_chans: int):
        super().__init__()
        self.trunk = trunk
        with torch.no_grad():  # the stage ends: the last module before each change of resolution
            sizes, h = [], torch.zeros(1, in_chans, 224, 224)
            was = self.training
            self.eval()
            for m in self.trunk:
                h = m(h)
                sizes.append(tuple(h.shape[-2:]) if h.dim() == 4 else ())
            self.train(was)
        ends = [i for i in range(len(sizes)) if i == len(sizes) - 1 or sizes[i + 1] != sizes[i]]
        self.taps = set(ends[-stages:])
        self._probe(spec, num_classes, "this torchvision model", (RuntimeError, ValueError))

    def _encode(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        maps = []
        for i, m in enumerate(self.trunk):
            x = m(x)
            if i in self.taps:
                maps.append(x)
        return maps, F.adaptive_avg_pool2d(x, 1).flatten(1)
