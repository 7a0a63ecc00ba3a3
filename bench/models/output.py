"""The model-output contract every backbone honours, and the backbone base class.

Every backbone returns a :class:`ModelOutput` carrying the logits, the pooled penultimate
vector (post- and pre-activation) and the per-stage feature maps (post- and pre-activation),
so any KD method can consume any pair of modalities without hooks keyed on module names
(which break as soon as teacher and student architectures differ). Feature maps are always
``(B, C, *spatial)`` with 0, 1 or 2 spatial axes; :func:`to_4d` gives them a common layout.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn


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


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
