"""A BERT encoder from a local directory behind the ModelOutput contract (CrisisMMD text)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from bench.models.output import Backbone, ModelOutput


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
