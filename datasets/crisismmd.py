"""CrisisMMD v2.0 (tweet text <-> tweet image), the agreed-label benchmark splits.

Raw layout read by ``bench prepare crisismmd --root ROOT --set crisismmd.bert_dir=DIR``
(``datasets.md`` section 5)::

    ROOT/data_image/<event>/<D_M_YYYY>/<tweet_id>_<n>.jpg|png
    ROOT/crisismmd_datasplit_agreed_label/task_<task>_text_img_agreed_lab_{train,dev,test}.tsv

Each tsv has the 9-column header ``event_name tweet_id image_id tweet_text image label label_text
label_image label_text_image``; it is read with quoting disabled (about 1 % of tweets start with a
double quote). One sample per (tweet, image) row; the target is ``label_text`` (== ``label_image``
in the agreed files): ``task=informative`` (2 classes, the paper's task as chosen by the project)
or ``task=humanitarian`` (5 merged classes; the fine ``label`` column is not used). The official
dev split is the validation split. Text is kept as published (mojibake and ``&amp;`` included).

Text: WordPiece ids from the user's local BERT directory (``bert_dir``: config.json + vocab.txt
[+ weights]; nothing is downloaded; a run on the cache uses the directory recorded in the manifest
unless ``bert_dir`` is given), ``[CLS] ... [SEP]``, padded/truncated to ``max_length`` 128,
cached as int32 ids + int8 mask. Encoder: BERT (``freeze_text`` for the frozen protocol).
Image: RGB uint8 at ``image_cache`` squared; train RandomResizedCrop(224) + flip, eval
CenterCrop(224) of the cached 256 (torchvision MobileNetV2 conventions; the aspect ratio is not
kept in the cache). Encoder: MobileNetV2 (``image_weights``: a local ImageNet state dict).
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from bench.api.config import hp
from bench.api.errors import BenchError
from bench.api.registry import register_dataset
from bench.data import Modality
from bench.data.cache import ArraySpec, PrepPlan, SplitPlan, read_text_lines
from bench.data.prepared import PreparedDataset
from bench.data.vision import center_crop, normalize, random_resized_crop, read_image, resize, to_float_nchw
from bench.models import Backbone
from bench.models.registry import build_default

HEADER = ["event_name", "tweet_id", "image_id", "tweet_text", "image", "label", "label_text", "label_image",
          "label_text_image"]
TASKS = {
    "informative": ["informative", "not_informative"],
    "humanitarian": ["affected_individuals", "infrastructure_and_utility_damage", "not_humanitarian",
                     "other_relevant_information", "rescue_volunteering_or_donation_effort"],
}


@dataclass
class CrisisParams:
    root: str = hp("", "CrisisMMD_v2.0 directory (only needed by `bench prepare`)")
    cache: str = hp("", "prepared cache directory (default $CMKD_BENCH_CACHE/crisismmd)")
    task: Literal["informative", "humanitarian"] = hp("informative", "benchmark task (agreed-label split)")
    split_dir: str = hp("crisismmd_datasplit_agreed_label", "folder of the split tsv files, relative to root")
    bert_dir: str = hp("", "local BERT directory (config.json, vocab.txt, weights); a run defaults to the cache's")
    max_length: int = hp(128, "token sequence length (covers every tweet of the splits)")
    image_cache: int = hp(256, "cached image size (square)")
    image_size: int = hp(224, "network input size of images")
    freeze_text: bool = hp(False, "freeze BERT and train only its classifier")
    image_weights: str = hp("", "local MobileNetV2 ImageNet state dict (empty: random init)")


@register_dataset("crisismmd")
class CrisisMMD(PreparedDataset):
    description = "CrisisMMD v2.0 tweets: text (BERT) <-> image (MobileNetV2); informative or humanitarian task"
    Params = CrisisParams
    prep_keys = ("task", "split_dir", "max_length", "image_cache")
    train_defaults = {"epochs": 20, "teacher_epochs": 20, "batch_size": 64, "lr": 0.01, "schedule": "poly"}

    @property
    def classes(self) -> list[str]:
        return TASKS[self.params.task]

    @property
    def modalities(self) -> list[Modality]:
        p = self.params
        return [Modality("text", "t", "text", (2, p.max_length)), Modality("image", "i", "image", (3, p.image_size, p.image_size))]

    def _tokenizer(self):
        from transformers import AutoTokenizer

        from bench.models.hf import refuse_custom_code

        d = Path(self.params.bert_dir).expanduser() if self.params.bert_dir else None
        if d is None or not (d / "vocab.txt").exists():
            raise BenchError(f"crisismmd: bert_dir must be a local BERT directory with vocab.txt (got {str(d or '')!r}); "
                             f"set --set crisismmd.bert_dir=/path/to/bert-base-uncased")
        refuse_custom_code(d, "crisismmd.bert_dir")
        return AutoTokenizer.from_pretrained(str(d), local_files_only=True, trust_remote_code=False), d

    def array_specs(self) -> dict[str, ArraySpec]:
        p = self.params
        return {"text": ArraySpec((p.max_length,), "int32"), "text.mask": ArraySpec((p.max_length,), "int8"),
                "image": ArraySpec((p.image_cache, p.image_cache, 3), "uint8"), "label": ArraySpec((), "int64")}

    def plan(self, root: Path) -> PrepPlan:
        p = self.params
        self.tok, bert = self._tokenizer()
        sources, splits = {}, {}
        specs = self.array_specs()
        for split, tag in (("train", "train"), ("val", "dev"), ("test", "test")):
            path = root / p.split_dir / f"task_{p.task}_text_img_agreed_lab_{tag}.tsv"
            if not path.exists():
                raise BenchError(f"crisismmd: split file {path} not found")
            rel, d = self.source(root, path)
            sources[rel] = d
            lines = [ln for ln in read_text_lines(path)]
            rows = list(csv.reader(lines, delimiter="\t", quoting=csv.QUOTE_NONE))
            if not rows or rows[0] != HEADER:
                raise BenchError(f"{path}:1: header must be the 9 columns {' '.join(HEADER)}, got {rows[0] if rows else []}")
            sp = SplitPlan([], np.zeros(0), specs)
            items, labels, seen = [], [], set()
            for lineno, row in enumerate(rows[1:], 2):
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue
                if len(row) != 9:
                    raise BenchError(f"{path}:{lineno}: expected 9 tab-separated columns, got {len(row)}")
                rec = dict(zip(HEADER, row))
                lab = rec["label_text"].strip()
                if lab not in self.classes:
                    raise BenchError(f"{path}:{lineno}: unknown {p.task} label {lab!r} in label_text "
                                     f"(expected one of {', '.join(self.classes)})")
                sp.listed += 1
                key = rec["image_id"]
                if key in seen:
                    sp.skip("duplicate row", key)
                    continue
                seen.add(key)
                img = (root / rec["image"]).resolve()
                if root.resolve() not in img.parents:
                    raise BenchError(f"{path}:{lineno}: image path {rec['image']!r} points outside the dataset root")
                if not img.exists():
                    sp.skip("missing image", key)
                    continue
                items.append((key, rec["tweet_text"], img, self.classes.index(lab)))
                labels.append(self.classes.index(lab))
            sp.items, sp.labels = items, np.array(labels, np.int64)
            splits[split] = sp
        vocab = hashlib.sha256((bert / "vocab.txt").read_bytes()).hexdigest()
        info = {"tokenizer": type(self.tok).__name__, "bert_dir": str(bert), "vocab_sha256": vocab,
                "max_length": p.max_length, "lowercase": bool(getattr(self.tok, "do_lower_case", False)),
                "task": p.task, "target_column": "label_text",
                "image_cache": f"{p.image_cache}x{p.image_cache} (aspect ratio not kept)"}
        return PrepPlan(self.name, {**self.prep_params(), "vocab_sha256": vocab}, splits, sources, list(self.classes), info)

    def prep_params(self) -> dict[str, Any]:
        d = super().prep_params()
        if getattr(self, "_vocab", None):
            d["vocab_sha256"] = self._vocab
        return d

    def decode(self, split: str, item: Any) -> dict[str, np.ndarray]:
        key, text, img, label = item
        enc = self.tok(text, max_length=self.params.max_length, padding="max_length", truncation=True)
        s = self.params.image_cache
        return {"text": np.asarray(enc["input_ids"], np.int32), "text.mask": np.asarray(enc["attention_mask"], np.int8),
                "image": read_image(img, (s, s)), "label": np.int64(label)}

    def adopt_manifest(self, manifest: dict[str, Any], explicit: set[str]) -> None:
        # the text encoder's weights sit in the BERT directory the cache was tokenised with
        bert = manifest.get("info", {}).get("bert_dir", "")
        if "bert_dir" not in explicit and not self.params.bert_dir and bert and Path(bert).is_dir():
            self.params.bert_dir = bert

    def load(self):
        self.use_cache_settings()
        m = self.manifest()
        self._vocab = m["prep_params"].get("vocab_sha256")
        if self.params.bert_dir:
            _, bert = self._tokenizer()
            now = hashlib.sha256((bert / "vocab.txt").read_bytes()).hexdigest()
            if now != self._vocab:
                raise BenchError(f"crisismmd: {bert}/vocab.txt differs from the vocabulary the cache was tokenised with")
        return super().load()

    def prepare_batch(self, modality: str, x: torch.Tensor, train: bool, generator: torch.Generator | None,
                      aux: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        if modality == "text":
            mask = (aux or {})["mask"]
            return torch.stack([x.long(), mask.long()], 1)
        img = to_float_nchw(x)
        s = self.params.image_size
        img = random_resized_crop(img, s, generator) if train else center_crop(resize(img, self.params.image_cache), s)
        return normalize(img)

    def augments(self, modality: str) -> bool:
        return modality != "text"  # token ids are used as they are; images get a random crop

    def default_backbone(self, modality: str) -> tuple[str, dict[str, Any]]:
        """BERT from ``bert_dir`` on the tokens (``freeze_text``: the frozen protocol); MobileNetV2 on images."""
        if modality == "text":
            return "bert", {"dir": self.params.bert_dir, "freeze": self.params.freeze_text}
        return "mobilenetv2", {"weights": self.params.image_weights}

    def build_model(self, modality: str, num_classes: int) -> Backbone:
        if modality == "text" and not self.params.bert_dir:
            raise BenchError("crisismmd: set --set crisismmd.bert_dir=/path/to/local/bert (no hub download)")
        return build_default(self, modality, num_classes)
