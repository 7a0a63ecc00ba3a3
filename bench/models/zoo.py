"""This package's own networks as registered backbones: the encoders the dataset adapters use by
default (``DatasetAdapter.default_backbone``), selectable by name for any role and modality.

``--set train.teacher_backbone=resnet --set teacher.blocks=3,4,6,3`` gives a ResNet-34-style
teacher on 1-D sequences as well as on images; a parameter left at 0 is read from the input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from bench.api.config import hp
from bench.api.errors import BenchError
from bench.api.registry import register_backbone
from bench.models.bert import BertBackbone
from bench.models.deeplab import DeepLabV3Plus
from bench.models.mlp import MLPBackbone
from bench.models.mobilenet import MobileNetV2Backbone
from bench.models.output import Backbone
from bench.models.registry import BackboneFactory, InputSpec, require_file
from bench.models.resnet import ResNetBackbone, load_torchvision_resnet


def _same_length(widths: tuple[int, ...], blocks: tuple[int, ...]) -> None:
    if len(widths) != len(blocks) or not widths:
        raise ValueError(f"widths ({len(widths)} stages) and blocks ({len(blocks)} stages) must have the same, "
                         "non-zero number of stages")


@register_backbone("resnet")
class ResNetFactory(BackboneFactory):
    description = ("ResNet of basic blocks over 1-D sequences (C x L), images, spectrograms or frame stacks "
                   "(frames averaged); the audio-visual sets' ResNet-18 and the small default encoders")
    layouts = ("sequence", "image", "video")

    @dataclass
    class Params:
        widths: tuple[int, ...] = hp((64, 128, 256, 512), "channels per stage", ge=1)
        blocks: tuple[int, ...] = hp((2, 2, 2, 2), "basic blocks per stage (2,2,2,2: ResNet-18; 3,4,6,3: ResNet-34)",
                                     ge=1)
        stem: str = hp("imagenet", "imagenet (7x7 stride-2 conv + max-pool) | small (3x3 stride-1 conv)")
        dim: int = hp(0, "1 (sequences) | 2 (images) | 0: from the input", ge=0, le=2)
        in_channels: int = hp(0, "input channels (0: from the input)", ge=0)
        frames: int = hp(0, "frames folded into the batch and averaged (0: from the input)", ge=0)
        weights: str = hp("", "local torchvision ResNet-18/34 state dict to start from (2-D, imagenet stem)")

        def validate(self) -> None:
            _same_length(self.widths, self.blocks)
            if self.stem not in ("imagenet", "small"):
                raise ValueError(f"stem must be 'imagenet' or 'small', got {self.stem!r}")

    @classmethod
    def build(cls, p: Any, spec: InputSpec, num_classes: int) -> Backbone:
        dim = p.dim or (1 if spec.layout == "sequence" else 2)
        net = ResNetBackbone(dim, p.in_channels or spec.channels, num_classes, p.widths, p.blocks, p.stem,
                             p.frames or spec.frames)
        if p.weights:
            require_file(p.weights, "resnet.weights")
            try:
                load_torchvision_resnet(net, p.weights)
            except (ValueError, RuntimeError) as exc:
                raise BenchError(f"resnet.weights: {exc}") from exc
        return net


@register_backbone("mlp")
class MLPFactory(BackboneFactory):
    description = "Linear-BN-ReLU stages over the flattened input (the vector views' default encoder)"

    @dataclass
    class Params:
        widths: tuple[int, ...] = hp((128, 128), "units per stage", ge=1)
        in_features: int = hp(0, "input features (0: the flattened input size)", ge=0)

        def validate(self) -> None:
            if not self.widths:
                raise ValueError("widths needs at least one stage")

    @classmethod
    def build(cls, p: Any, spec: InputSpec, num_classes: int) -> Backbone:
        return MLPBackbone(p.in_features or math.prod(spec.shape), num_classes, p.widths)


@register_backbone("mobilenetv2")
class MobileNetV2Factory(BackboneFactory):
    description = "torchvision MobileNetV2 on 3-channel images (CrisisMMD's image encoder)"
    library = "torchvision"
    layouts = ("image",)

    @dataclass
    class Params:
        weights: str = hp("", "local torchvision MobileNetV2 state dict (empty: random init)")
        width_mult: float = hp(1.0, "width multiplier", gt=0)

    @classmethod
    def build(cls, p: Any, spec: InputSpec, num_classes: int) -> Backbone:
        if spec.shape and spec.channels != 3:  # unknown before data is read: CrisisMMD's images are RGB
            raise BenchError(f"mobilenetv2 takes 3-channel images; {spec.describe()} has {spec.channels} "
                             "(use --set ...backbone=timm with model=mobilenetv2_100, which adapts the stem)")
        if p.weights:
            require_file(p.weights, "mobilenetv2.weights")
        return MobileNetV2Backbone(num_classes, p.weights, p.width_mult)


@register_backbone("bert")
class BertFactory(BackboneFactory):
    description = "BERT from a local directory on token ids + mask (CrisisMMD's text encoder)"
    library = "transformers"
    layouts = ("tokens",)

    @dataclass
    class Params:
        dir: str = hp("", "local BERT directory (config.json [+ weights]); without weights: random init")
        freeze: bool = hp(False, "train only the classifier")
        map_layers: int = hp(2, "stage maps: the last N hidden states", ge=1)

    @classmethod
    def build(cls, p: Any, spec: InputSpec, num_classes: int) -> Backbone:
        from bench.models.hf import check_model_dir

        check_model_dir(p.dir, "bert.dir")
        return BertBackbone(p.dir, num_classes, p.freeze, p.map_layers)


@register_backbone("deeplabv3plus")
class DeepLabFactory(BackboneFactory):
    description = "DeepLabV3+ on a ResNet-18-style encoder, per-pixel logits (NYU-Depth V2)"
    layouts = ("image",)
    tasks = ("segmentation",)

    @dataclass
    class Params:
        width: int = hp(64, "encoder first-stage width (64: ResNet-18)", ge=1)
        aspp_channels: int = hp(256, "ASPP / decoder channels", ge=1)
        pretrained: str = hp("", "local torchvision ResNet-18 state dict for the encoder (empty: random init)")
        in_channels: int = hp(0, "input channels (0: from the input)", ge=0)

    @classmethod
    def build(cls, p: Any, spec: InputSpec, num_classes: int) -> Backbone:
        if p.pretrained:
            require_file(p.pretrained, "deeplabv3plus.pretrained")
        return DeepLabV3Plus(p.in_channels or spec.channels, num_classes, p.width, p.aspp_channels,
                             pretrained=p.pretrained)
