"""MLP encoder for vector modalities."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.models.output import Backbone


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
