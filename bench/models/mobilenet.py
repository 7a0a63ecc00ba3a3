"""torchvision MobileNetV2 behind the ModelOutput contract (CrisisMMD's image encoder)."""

from __future__ import annotations

import torch
import torch.nn as nn

from bench.models.output import Backbone


class MobileNetV2Backbone(Backbone):
    """torchvision MobileNetV2 exposing the ModelOutput contract (CrisisMMD image encoder).

    Stage maps are taken at the ends of the stride-4/8/16/32 groups of ``features`` (indices 3, 6,
    13 and 18); the last one is split into its pre-activation (after BatchNorm) and the ReLU6
    output, whose global average (1280-d) is the pooled feature. ``weights`` is a local state-dict
    file (e.g. torchvision's ImageNet checkpoint); no download happens at run time.
    """

    TAPS = (3, 6, 13)

    def __init__(self, num_classes: int, weights: str = "", width_mult: float = 1.0):
        super().__init__()
        from torchvision.models import mobilenet_v2

        net = mobilenet_v2(weights=None, width_mult=width_mult)
        if weights:
            state = torch.load(weights, map_location="cpu", weights_only=True)
            state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
            missing, _unexpected = net.load_state_dict(state, strict=False)
            if [k for k in missing if not k.startswith("classifier.")]:
                raise ValueError(f"{weights}: not a MobileNetV2 state dict (missing {missing[:3]} ...)")
        self.features = net.features
        last = net.features[-1]
        self.stage_channels = [net.features[i].out_channels for i in self.TAPS] + [last[0].out_channels]
        self.feature_dim = self.stage_channels[-1]
        self.num_classes = num_classes
        self.classifier = nn.Linear(self.feature_dim, num_classes)

    def encode(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        maps = []
        h = x
        for i, layer in enumerate(self.features[:-1]):
            h = layer(h)
            if i in self.TAPS:
                maps.append(h)
        last = self.features[-1]
        pre = last[1](last[0](h))
        out = last[2](pre)
        maps.append(out)
        return maps, maps[:-1] + [pre]

    def bn_before_relu(self) -> list[nn.Module | None]:
        return [None] * (len(self.stage_channels) - 1) + [self.features[-1][1]]
