"""ResNets over 1-D or 2-D inputs (the ResNet-18s of OGM-GE / C2KD, and the small CPU-sized
encoders), and loading torchvision ResNet weights into them."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.models.output import Backbone


def _conv(dim: int):
    return nn.Conv1d if dim == 1 else nn.Conv2d


def _bn(dim: int):
    return nn.BatchNorm1d if dim == 1 else nn.BatchNorm2d


class BasicBlock(nn.Module):
    """ResNet basic block that also returns its pre-activation output."""

    def __init__(self, dim: int, cin: int, cout: int, stride: int, dilation: int = 1):
        super().__init__()
        Conv, BN = _conv(dim), _bn(dim)
        self.conv1 = Conv(cin, cout, 3, stride, dilation, dilation=dilation, bias=False)
        self.bn1 = BN(cout)
        self.conv2 = Conv(cout, cout, 3, 1, dilation, dilation=dilation, bias=False)
        self.bn2 = BN(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(Conv(cin, cout, 1, stride, bias=False), BN(cout))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = F.relu(self.bn1(self.conv1(x)))
        pre = self.bn2(self.conv2(h)) + self.shortcut(x)
        return F.relu(pre), pre


class ResNetBackbone(Backbone):
    """A ResNet over 1-D (sequences, spectrogram rows as channels) or 2-D inputs.

    ``resnet18(dim=2, in_channels=1)`` is the audio ResNet-18 of OGM-GE/C2KD (1-channel
    spectrogram), ``resnet18(dim=2, in_channels=3)`` the visual one. Small widths and one block
    per stage give the CPU-sized encoders of the synthetic benchmark.
    """

    def __init__(
        self,
        dim: int,
        in_channels: int,
        num_classes: int,
        widths: Sequence[int] = (64, 128, 256, 512),
        blocks: Sequence[int] = (2, 2, 2, 2),
        stem: str = "imagenet",
        frames: int = 1,
        dilate_last: bool = False,
    ):
        super().__init__()
        if dim not in (1, 2):
            raise ValueError("dim must be 1 or 2")
        Conv, BN = _conv(dim), _bn(dim)
        self.dim = dim
        self.frames = frames
        if stem == "imagenet":
            self.stem = nn.Sequential(
                Conv(in_channels, widths[0], 7, 2, 3, bias=False), BN(widths[0]), nn.ReLU(inplace=True),
                (nn.MaxPool1d if dim == 1 else nn.MaxPool2d)(3, 2, 1),
            )
        elif stem == "small":
            self.stem = nn.Sequential(Conv(in_channels, widths[0], 3, 1, 1, bias=False), BN(widths[0]), nn.ReLU(inplace=True))
        else:
            raise ValueError(f"unknown stem {stem!r}")
        stages = []
        cin = widths[0]
        for i, (w, n) in enumerate(zip(widths, blocks)):
            layers = []
            last = dilate_last and i == len(widths) - 1  # output stride 16 for DeepLabV3+
            for j in range(n):
                stride = 2 if (j == 0 and i > 0 and not last) else 1
                layers.append(BasicBlock(dim, cin, w, stride, 2 if last else 1))
                cin = w
            stages.append(nn.ModuleList(layers))
        self.stages = nn.ModuleList(stages)
        self.stage_channels = list(widths)
        self.feature_dim = widths[-1]
        self.num_classes = num_classes
        self.classifier = nn.Linear(self.feature_dim, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv1d, nn.Conv2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def encode(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        b = x.shape[0]
        if self.frames > 1:
            # (B, T, C, H, W) -> frames folded into the batch, pooled over time below (OGM-GE).
            x = x.flatten(0, 1)
        h = self.stem(x)
        maps, pres = [], []
        for stage in self.stages:
            pre = h
            for block in stage:
                h, pre = block(h)
            maps.append(h)
            pres.append(pre)
        if self.frames > 1:
            maps = [m.view(b, self.frames, *m.shape[1:]).mean(1) for m in maps]
            pres = [p.view(b, self.frames, *p.shape[1:]).mean(1) for p in pres]
        return maps, pres

    def bn_before_relu(self) -> list[nn.Module | None]:
        return [stage[-1].bn2 for stage in self.stages]


def resnet18(dim: int, in_channels: int, num_classes: int, frames: int = 1) -> ResNetBackbone:
    return ResNetBackbone(dim, in_channels, num_classes, (64, 128, 256, 512), (2, 2, 2, 2), "imagenet", frames)


def load_torchvision_resnet(backbone: ResNetBackbone, path: str) -> None:
    """Load a torchvision ResNet-18/34 state dict (e.g. ImageNet weights) into a 2-D ResNetBackbone."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    out = {}
    for k, v in state.items():
        if k.startswith("fc."):
            continue
        k2 = k.replace("conv1.", "stem.0.", 1) if k.startswith("conv1.") else k
        k2 = k2.replace("bn1.", "stem.1.", 1) if k.startswith("bn1.") else k2
        if k2.startswith("layer"):
            i = int(k2[5]) - 1
            k2 = f"stages.{i}" + k2[6:]
            k2 = k2.replace("downsample.", "shortcut.")
        out[k2] = v
    missing, unexpected = backbone.load_state_dict(out, strict=False)
    missing = [m for m in missing if not m.startswith("classifier.")]
    if missing or unexpected:
        raise ValueError(f"{path}: not a torchvision ResNet state dict matching this backbone "
                         f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
