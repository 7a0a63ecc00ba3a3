"""Backbones and the model-output contract.

Every backbone returns a :class:`ModelOutput` carrying the logits, the pooled penultimate
vector (post- and pre-activation) and the per-stage feature maps (post- and pre-activation),
so any KD method can consume any pair of modalities without hooks keyed on module names
(which break as soon as teacher and student architectures differ). Feature maps are always
``(B, C, *spatial)`` with 0, 1 or 2 spatial axes; :func:`to_4d` gives them a common layout.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class ModelOutput:
    logits: torch.Tensor
    """(B, C) class scores, or (B, C, H, W) for dense prediction."""
    feature: torch.Tensor
    """(B, D) pooled post-activation penultimate vector: what the classifier sees."""
    pre_feature: torch.Tensor
    """(B, D) pooled pre-activation vector of the last stage (FD-CMKD's default tap point)."""
    feature_maps: list[torch.Tensor] = field(default_factory=list)
    """Post-activation output of every stage, shallow to deep."""
    preact_maps: list[torch.Tensor] = field(default_factory=list)
    """Pre-activation output of every stage (OFD distils these)."""

    def apply(self, fn) -> "ModelOutput":
        """The same outputs with ``fn`` applied to every tensor (``None`` entries, as in a teacher
        cache that holds only some fields, stay ``None``)."""
        def f(t):
            return None if t is None else fn(t)

        return ModelOutput(f(self.logits), f(self.feature), f(self.pre_feature),
                           [f(m) for m in self.feature_maps], [f(m) for m in self.preact_maps])

    def detach(self) -> "ModelOutput":
        return self.apply(torch.Tensor.detach)


def to_4d(t: torch.Tensor) -> torch.Tensor:
    """(B,C) -> (B,C,1,1); (B,C,L) -> (B,C,L,1); (B,C,H,W) unchanged."""
    if t.dim() == 2:
        return t[:, :, None, None]
    if t.dim() == 3:
        return t[:, :, :, None]
    if t.dim() == 4:
        return t
    raise ValueError(f"feature map of shape {tuple(t.shape)} has more than 2 spatial axes")


class Backbone(nn.Module):
    """Base class. Subclasses implement :meth:`encode`; :meth:`forward` adds the classifier."""

    feature_dim: int
    num_classes: int
    stage_channels: list[int]

    def encode(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Return (post-activation stage maps, pre-activation stage maps)."""
        raise NotImplementedError

    def bn_before_relu(self) -> list[nn.Module | None]:
        """The BatchNorm feeding each stage's final ReLU (None where there is none): OFD margins."""
        return [None] * len(self.stage_channels)

    def pool(self, m: torch.Tensor) -> torch.Tensor:
        return m.flatten(2).mean(-1) if m.dim() > 2 else m

    def forward(self, x: torch.Tensor) -> ModelOutput:
        maps, pre = self.encode(x)
        feat = self.pool(maps[-1])
        pre_feat = self.pool(pre[-1])
        return ModelOutput(self.classifier(feat), feat, pre_feat, maps, pre)


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


class MLPBackbone(Backbone):
    """Vectors: Linear-BN-ReLU stages. Stage "maps" are (B, C) vectors."""

    def __init__(self, in_features: int, num_classes: int, widths: Sequence[int] = (128, 128)):
        super().__init__()
        self.linears = nn.ModuleList()
        self.bns = nn.ModuleList()
        cin = in_features
        for w in widths:
            self.linears.append(nn.Linear(cin, w))
            self.bns.append(nn.BatchNorm1d(w))
            cin = w
        self.stage_channels = list(widths)
        self.feature_dim = widths[-1]
        self.num_classes = num_classes
        self.classifier = nn.Linear(self.feature_dim, num_classes)

    def encode(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        h = x.flatten(1)
        maps, pres = [], []
        for lin, bn in zip(self.linears, self.bns):
            pre = bn(lin(h))
            h = F.relu(pre)
            maps.append(h)
            pres.append(pre)
        return maps, pres

    def bn_before_relu(self) -> list[nn.Module | None]:
        return list(self.bns)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


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


class BertBackbone(Backbone):
    """A BERT encoder from a local directory (CrisisMMD text encoder).

    Input: (B, 2, L) long = token ids and attention mask. Feature: the final ``[CLS]`` hidden state
    (768-d for BERT-base; pre-activation = the same vector, BERT has no final ReLU). Stage maps: the
    hidden states of the last ``map_layers`` layers as (B, H, L) sequences with padded positions
    zeroed. ``freeze`` trains only the classifier (the frozen-BERT protocol). A directory without
    weights (config + vocab only) gives a randomly initialised model, as the tests use.
    """

    def __init__(self, model_dir: str, num_classes: int, freeze: bool = False, map_layers: int = 2):
        super().__init__()
        from transformers import BertConfig, BertModel

        d = Path(model_dir)
        has_weights = any((d / f).exists() for f in ("model.safetensors", "pytorch_model.bin"))
        if has_weights:
            self.bert = BertModel.from_pretrained(str(d), local_files_only=True, add_pooling_layer=False)
        else:
            self.bert = BertModel(BertConfig.from_pretrained(str(d), local_files_only=True), add_pooling_layer=False)
        self.pretrained = has_weights
        self.freeze = freeze
        if freeze:
            for p in self.bert.parameters():
                p.requires_grad_(False)
        hdim = self.bert.config.hidden_size
        self.map_layers = map_layers
        self.stage_channels = [hdim] * map_layers
        self.feature_dim = hdim
        self.num_classes = num_classes
        self.classifier = nn.Linear(hdim, num_classes)

    def forward(self, x: torch.Tensor) -> ModelOutput:
        ids, mask = x[:, 0].long(), x[:, 1].long()
        if self.freeze:
            self.bert.eval()
        out = self.bert(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        hs = out.hidden_states[-self.map_layers:]
        m = mask[:, None, :].to(hs[-1].dtype)
        maps = [h.transpose(1, 2) * m for h in hs]
        cls = out.last_hidden_state[:, 0]
        return ModelOutput(self.classifier(cls), cls, cls, maps, maps)


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
