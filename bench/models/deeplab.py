"""DeepLabV3+ on a ResNet encoder (NYU-Depth V2 segmentation)."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.models.output import Backbone, ModelOutput
from bench.models.resnet import ResNetBackbone, load_torchvision_resnet


class _ConvBNReLU(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int = 1, dilation: int = 1):
        super().__init__(nn.Conv2d(cin, cout, k, padding=dilation * (k // 2), dilation=dilation, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class DeepLabV3Plus(Backbone):
    """DeepLabV3+ (Chen et al. 2018) on a ResNet encoder at output stride 16.

    ASPP (1x1, three 3x3 atrous branches at rates 6/12/18, image pooling) -> 256 channels; decoder
    fuses the x4 upsampled ASPP output with 48 projected low-level channels (encoder stage 1) by
    two 3x3 conv-BN-ReLU layers; a 1x1 classifier; logits are upsampled to the input size.
    Feature maps for KD: the encoder stages and the decoder output; the pooled decoder output is
    the feature vector.
    """

    def __init__(self, in_channels: int, num_classes: int, width: int = 64, aspp_channels: int = 256,
                 rates: Sequence[int] = (6, 12, 18), pretrained: str = ""):
        super().__init__()
        w = width
        self.encoder = ResNetBackbone(2, in_channels, num_classes, (w, 2 * w, 4 * w, 8 * w), (2, 2, 2, 2), "imagenet",
                                      dilate_last=True)
        if pretrained:
            load_torchvision_resnet(self.encoder, pretrained)
        c = aspp_channels
        cin = 8 * w
        self.aspp = nn.ModuleList([_ConvBNReLU(cin, c, 1)] + [_ConvBNReLU(cin, c, 3, r) for r in rates])
        self.aspp_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), _ConvBNReLU(cin, c, 1))
        self.aspp_proj = nn.Sequential(_ConvBNReLU(c * (len(rates) + 2), c, 1), nn.Dropout(0.1))
        self.low = _ConvBNReLU(w, 48, 1)
        self.dec1 = _ConvBNReLU(c + 48, c, 3)
        self.dec2_conv = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.dec2_bn = nn.BatchNorm2d(c)
        self.head = nn.Conv2d(c, num_classes, 1)
        self.stage_channels = list(self.encoder.stage_channels) + [c]
        self.feature_dim = c
        self.num_classes = num_classes
        self.classifier = self.head  # what a pooled feature would be classified by (1x1 conv)

    def encode(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        maps, pres = self.encoder.encode(x)
        h = maps[-1]
        a = [b(h) for b in self.aspp]
        a.append(F.interpolate(self.aspp_pool(h), size=h.shape[-2:], mode="bilinear", align_corners=False))
        a = self.aspp_proj(torch.cat(a, 1))
        low = maps[0]
        a = F.interpolate(a, size=low.shape[-2:], mode="bilinear", align_corners=False)
        d = self.dec1(torch.cat([a, self.low(low)], 1))
        pre = self.dec2_bn(self.dec2_conv(d))
        return maps + [F.relu(pre)], pres + [pre]

    def forward(self, x: torch.Tensor) -> ModelOutput:
        maps, pres = self.encode(x)
        logits = F.interpolate(self.head(maps[-1]), size=x.shape[-2:], mode="bilinear", align_corners=False)
        return ModelOutput(logits, self.pool(maps[-1]), self.pool(pres[-1]), maps, pres)

    def bn_before_relu(self) -> list[nn.Module | None]:
        return self.encoder.bn_before_relu() + [self.dec2_bn]
