"""The shared part of library CNN trunks (timm, torchvision): how a sequence or a frame stack
becomes images, the probe that measures the stage maps, and the ModelOutput they return."""

from __future__ import annotations

import torch
import torch.nn as nn

from bench.api.errors import BenchError
from bench.models.output import Backbone, ModelOutput
from bench.models.registry import InputSpec


class ImageTrunkBackbone(Backbone):
    """A 2-D image trunk under any input layout: a 1-D sequence (C, L) is read as a one-channel
    image, a frame stack (T, C, H, W) is encoded frame by frame and averaged (maps and vector).
    Subclasses set up their trunk, call :meth:`_probe` and implement :meth:`_encode`."""

    @staticmethod
    def input_channels(spec: InputSpec) -> int:
        """Channels of the images the trunk sees: a sequence becomes a one-channel image."""
        return 1 if spec.layout == "sequence" else spec.channels

    def _probe(self, spec: InputSpec, num_classes: int, who: str, errors: tuple[type[Exception], ...]) -> None:
        """Stage channels and feature size measured on two zero samples (eval mode), then the head."""
        self.sequence = spec.layout == "sequence"
        self.frames = spec.frames
        with torch.no_grad():
            was = self.training
            self.eval()
            try:
                maps, pooled = self._encode(self._to_image(torch.zeros(2, *spec.shape)))
            except errors as exc:
                raise BenchError(f"{who} cannot take {spec.describe()}: {exc}") from exc
            finally:
                self.train(was)
        self.stage_channels = [int(m.shape[1]) for m in maps]
        self.feature_dim = int(pooled.shape[1])
        self.num_classes = num_classes
        self.classifier = nn.Linear(self.feature_dim, num_classes)

    def _to_image(self, x: torch.Tensor) -> torch.Tensor:
        if self.sequence:
            return x.float().unsqueeze(1)
        return x.flatten(0, 1) if self.frames > 1 else x

    def _encode(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Images -> (stage maps, pooled vector)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> ModelOutput:
        b = x.shape[0]
        maps, pooled = self._encode(self._to_image(x))
        if self.frames > 1:
            maps = [m.view(b, self.frames, *m.shape[1:]).mean(1) for m in maps]
            pooled = pooled.view(b, self.frames, -1).mean(1)
        return ModelOutput(self.classifier(pooled), pooled, pooled, maps, maps)
