"""Backbones and the :class:`ModelOutput` contract they all return (``output``); one module per
family. Everything is importable from here (``from bench.models import ModelOutput, ResNetBackbone``)."""

from bench.models.bert import BertBackbone
from bench.models.deeplab import DeepLabV3Plus
from bench.models.mlp import MLPBackbone
from bench.models.mobilenet import MobileNetV2Backbone
from bench.models.output import Backbone, ModelOutput, count_parameters, to_4d
from bench.models.resnet import (
           BasicBlock,
           ResNetBackbone,
           load_torchvision_resnet,
           resnet18,
)

__all__ = ["Backbone", "BasicBlock", "BertBackbone", "DeepLabV3Plus", "MLPBackbone", "MobileNetV2Backbone", "ModelOutput",
           "ResNetBackbone", "count_parameters", "load_torchvision_resnet", "resnet18", "to_4d"]
