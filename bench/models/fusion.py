"""The multimodal teacher of a teacher-set direction (``av2v``): a registered fusion network over
the member modalities' own backbones, trained jointly end to end with the teachers' recipe.

``late_fusion`` (the default, ``train.teacher_fusion``): each member's backbone (the dataset's
network for that modality, or ``train.teacher_backbone``) pools its last stage; the pooled vectors
are concatenated (the *fused* vector) and a head of two linear layers, ``D -> D // 2`` with a ReLU,
then the classifier, maps it to the classes: the shape of the reference multimodal teachers
(MST-Distill's CNN-I ``concat -> fc1 -> fc2``, DSCNN-I ``fc1 -> fc2``), so a method may tap the
fused vector and the hidden layer. ``late_fusion_linear``: concatenation -> linear classifier.

Its :class:`ModelOutput` has ``feature`` = the classifier's input (the hidden layer; the fused
vector for the linear head), ``pre_feature`` = that layer before its ReLU (the members' pooled
pre-activations, concatenated, for the linear head), ``logits``, and **no** stage maps: a
method that reads ``feature_maps``/``preact_maps`` refuses such a teacher, naming the direction.
Dense tasks (segmentation) fuse late at the logit level instead: the members' logit maps are
concatenated and a 1x1 convolution, initialised to their average, gives the fused logits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.api.errors import BenchError
from bench.api.registry import register_backbone
from bench.models.output import Backbone, ModelOutput
from bench.models.registry import BackboneChoice, BackboneFactory, InputSpec

DEFAULT_FUSION = "late_fusion"


class FusionNet(Backbone):
    """Late fusion of member backbones; ``forward`` takes ``{modality: input}``."""

    def __init__(self, nets: dict[str, Backbone], num_classes: int, head: str = "mlp", dense: bool = False):
        super().__init__()
        self.nets = nn.ModuleDict(nets)
        self.head_kind, self.dense = head, dense
        self.num_classes = num_classes
        self.stage_channels = []
        self.fused_dim = sum(int(n.feature_dim) for n in nets.values())
        if dense:
            k = len(nets)
            self.classifier = nn.Conv2d(k * num_classes, num_classes, 1)
            with torch.no_grad():  # starts as the average of the members' logits
                w = torch.zeros(num_classes, k * num_classes, 1, 1)
                for i in range(k):
                    w[:, i * num_classes:(i + 1) * num_classes, 0, 0] = torch.eye(num_classes) / k
                self.classifier.weight.copy_(w)
                self.classifier.bias.zero_()
            self.feature_dim = self.fused_dim
        elif head == "mlp":
            hidden = max(self.fused_dim // 2, 1)
            self.fc = nn.Linear(self.fused_dim, hidden)
            self.classifier = nn.Linear(hidden, num_classes)
            self.feature_dim = hidden
        else:
            self.classifier = nn.Linear(self.fused_dim, num_classes)
            self.feature_dim = self.fused_dim

    @property
    def taps(self) -> list[str]:
        """Vectors a method may mask and continue the forward from (:meth:`from_tap`)."""
        return ["fused", "hidden"] if (self.head_kind == "mlp" and not self.dense) else ["fused"]

    def member_outputs(self, x: dict[str, torch.Tensor]) -> dict[str, ModelOutput]:
        missing = [m for m in self.nets if m not in x]
        if missing:
            raise BenchError(f"fusion teacher: the batch lacks the input of {', '.join(missing)} (has {sorted(x)})")
        return {m: net(x[m]) for m, net in self.nets.items()}

    def fused(self, outs: dict[str, ModelOutput]) -> torch.Tensor:
        return torch.cat([o.feature for o in outs.values()], 1)

    def from_tap(self, tap: str, h: torch.Tensor) -> ModelOutput:
        """The head run on from tap ``tap``'s (possibly masked) vector ``h``."""
        if tap == "fused" and self.head_kind == "mlp":
            pre = self.fc(h)
            feat = F.relu(pre)
            return ModelOutput(self.classifier(feat), feat, pre, [], [])
        return ModelOutput(self.classifier(h), h, h, [], [])

    def forward(self, x: dict[str, torch.Tensor]) -> ModelOutput:  # type: ignore[override]
        if not isinstance(x, dict):
            raise BenchError("the fusion teacher takes a dict {modality: input} (a teacher-set batch)")
        outs = self.member_outputs(x)
        if self.dense:
            logits = self.classifier(torch.cat([o.logits for o in outs.values()], 1))
            fused = self.fused(outs)
            return ModelOutput(logits, fused, torch.cat([o.pre_feature for o in outs.values()], 1), [], [])
        fused = self.fused(outs)
        if self.head_kind == "mlp":
            return self.from_tap("fused", fused)
        pre = torch.cat([o.pre_feature for o in outs.values()], 1)
        return ModelOutput(self.classifier(fused), fused, pre, [], [])


class _FusionFactory(BackboneFactory):
    library = ""
    layouts: ClassVar[tuple[str, ...]] = ("multimodal",)
    tasks: ClassVar[tuple[str, ...]] = ("classification", "segmentation")
    head: ClassVar[str] = "mlp"

    @classmethod
    def build(cls, params: Any, spec: InputSpec, num_classes: int) -> Backbone:
        raise BenchError(f"backbone {cls.name!r} is the multimodal teacher of a teacher-set direction (e.g. av2v), "
                         f"built from the member modalities' backbones; choose it with train.teacher_fusion, "
                         f"not as a network of one modality")

    @classmethod
    def build_fusion(cls, nets: dict[str, Backbone], num_classes: int, task: str) -> FusionNet:
        return FusionNet(nets, num_classes, cls.head, dense=task != "classification")


@register_backbone("late_fusion")
class LateFusion(_FusionFactory):
    description = ("multimodal teacher: members' pooled features concatenated -> Linear(D, D/2) -> ReLU -> classifier "
                   "(dense tasks: the members' logit maps fused by a 1x1 conv)")
    head = "mlp"


@register_backbone("late_fusion_linear")
class LateFusionLinear(_FusionFactory):
    description = "multimodal teacher: members' pooled features concatenated -> linear classifier"
    head = "linear"


@dataclass
class FusionChoice(BackboneChoice):
    """The teacher of a teacher set: the fusion network and each member's backbone choice."""

    members: dict[str, BackboneChoice] = field(default_factory=dict)

    def identity(self) -> dict[str, Any]:
        return {"name": self.name, "params": {},
                "members": {m: c.identity() for m, c in self.members.items()}}

    def describe(self) -> str:
        return f"{self.name}[{', '.join(f'{m}: {c.describe()}' for m, c in self.members.items())}]"


def fusion_factory(name: str) -> type[_FusionFactory]:
    from bench.api.registry import BACKBONES

    obj = BACKBONES.get(name)
    if not hasattr(obj, "build_fusion"):
        fusions = [e.name for e in BACKBONES.entries() if hasattr(e.obj, "build_fusion")]
        raise BenchError(f"train.teacher_fusion={name!r} is not a fusion network; registered: {', '.join(fusions)}")
    return obj
