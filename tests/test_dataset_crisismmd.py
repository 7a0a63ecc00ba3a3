"""CrisisMMD adapter on a tiny fixture: real tsv split files, jpg/png images, a tiny random BERT."""

from __future__ import annotations

from pathlib import Path

import pytest
from datafixtures import write_jpg, write_lines

from bench.api.errors import BenchError
from bench.train.resolve import RunSpec, build_adapter
from bench.train.run import run

HEADER = "event_name\ttweet_id\timage_id\ttweet_text\timage\tlabel\tlabel_text\tlabel_image\tlabel_text_image"
WORDS = ["roads", "closed", "near", "the", "coast", "flood", "help", "people", "rescue", "donate", "pray", "for",
         "damage", "bridge", "we", "love", "sunny", "day", "mora", "leaves", "&", "amp", ";", "\"", "!", "."]


def make_bert(d: Path) -> None:
    from transformers import BertConfig

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS
    d.mkdir(parents=True, exist_ok=True)
    (d / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
               intermediate_size=64, max_position_embeddings=64).save_pretrained(d)
    (d / "tokenizer_config.json").write_text('{"do_lower_case": true, "tokenizer_class": "BertTokenizer"}')


def make_crisis(root: Path) -> None:
    tid = 906123456789012300
    texts = {0: ["Roads closed near the coast flood help", "\"Mora\" leaves flood damage &amp; bridge", "rescue people"],
             1: ["we love sunny day", "pray for we", "sunny day !"]}
    for tag, n in (("train", 3), ("dev", 1), ("test", 1)):
        rows = {"informative": [HEADER], "humanitarian": [HEADER]}
        for c, lab in enumerate(["informative", "not_informative"]):
            for i in range(n):
                tid += 1
                for j in range(2 if (tag == "train" and i == 0) else 1):  # a tweet with two images
                    ext = "png" if j == 1 else "jpg"
                    rel = f"data_image/hurricane_irma/8_9_2017/{tid}_{j}.{ext}"
                    write_jpg(root / rel, c, size=(32, 32), seed=tid + j, gray=(i == 1), fmt="PNG" if ext == "png" else None)
                    text = texts[c][i % 3]
                    rows["informative"].append(f"hurricane_irma\t{tid}\t{tid}_{j}\t{text}\t{rel}\t{lab}\t{lab}\t{lab}\tPositive")
                    hl, fine = (("infrastructure_and_utility_damage", "vehicle_damage") if c == 0 else ("not_humanitarian",) * 2)
                    rows["humanitarian"].append(f"hurricane_irma\t{tid}\t{tid}_{j}\t{text}\t{rel}\t{fine}\t{hl}\t{hl}\tPositive")
        for task, r in rows.items():
            write_lines(root / "crisismmd_datasplit_agreed_label" / f"task_{task}_text_img_agreed_lab_{tag}.tsv", r)


def test_prepare_and_train_both_directions(tmp_path):
    root, cache, bert = tmp_path / "CrisisMMD_v2.0", tmp_path / "cache", tmp_path / "bert_tiny"
    make_crisis(root)
    make_bert(bert)
    ov = {"crisismmd": {"root": str(root), "cache": str(cache), "bert_dir": str(bert), "max_length": "16",
                        "image_cache": "40", "image_size": "32"},
          "train": {"batch_size": "4", "epochs": "1", "teacher_epochs": "1"}}
    ad = build_adapter("crisismmd", ov)
    m = ad.prepare()
    assert [m["splits"][s]["n"] for s in ("train", "val", "test")] == [8, 2, 2]
    assert m["info"]["vocab_sha256"] and m["info"]["max_length"] == 16
    sp = ad.load()
    ids, mask = sp["train"].inputs["text"], sp["train"].aux["text.mask"]
    assert ids.dtype.is_floating_point is False and tuple(ids.shape) == (8, 16)
    # the leading double quote survived (quoting disabled): '"' is token id 5 + WORDS.index('"')
    quote_id = 5 + 23
    assert any(quote_id in row.tolist() for row in ids)
    assert int(ids[0, 0]) == 2 and int(mask[0].sum()) >= 3  # [CLS] first
    for s, t in (("text", "image"), ("image", "text")):
        rec = run(RunSpec("crisismmd", t, s, "dist", 0, ov, str(tmp_path / "res")))
        assert rec["status"] == "ok", rec.get("traceback")
    # humanitarian task: the merged label_text column is the target (5 classes)
    ov2 = {"crisismmd": {**ov["crisismmd"], "task": "humanitarian", "cache": str(tmp_path / "c2")}}
    m2 = build_adapter("crisismmd", ov2).prepare()
    assert m2["splits"]["train"]["class_hist"] == [0, 4, 4, 0, 0]


@pytest.mark.parametrize("mutate,msg", [
    (lambda l: l.replace("\tPositive", ""), "expected 9 tab-separated columns"),
    (lambda l: l.replace("\tinformative\tinformative", "\tinformative\tmaybe"), "unknown informative label 'maybe'"),
])
def test_bad_rows(tmp_path, mutate, msg):
    root, bert = tmp_path / "r", tmp_path / "b"
    make_crisis(root)
    make_bert(bert)
    f = root / "crisismmd_datasplit_agreed_label" / "task_informative_text_img_agreed_lab_test.tsv"
    lines = f.read_text().splitlines()
    lines[1] = mutate(lines[1])
    f.write_text("\n".join(lines) + "\n")
    with pytest.raises(BenchError, match=msg) as e:
        build_adapter("crisismmd", {"crisismmd": {"root": str(root), "cache": str(tmp_path / "c"), "bert_dir": str(bert)}}).prepare()
    assert "agreed_lab_test.tsv:2" in str(e.value)


def test_header_missing_image_and_no_bert(tmp_path):
    root, bert = tmp_path / "r", tmp_path / "b"
    make_crisis(root)
    make_bert(bert)
    ov = {"crisismmd": {"root": str(root), "cache": str(tmp_path / "c"), "bert_dir": str(bert)}}
    f = root / "crisismmd_datasplit_agreed_label" / "task_informative_text_img_agreed_lab_dev.tsv"
    f.write_text(f.read_text().replace("label_text_image", "agree", 1))
    with pytest.raises(BenchError, match="dev.tsv:1: header must be the 9 columns"):
        build_adapter("crisismmd", ov).prepare()
    make_crisis(root)
    next((root / "data_image").rglob("*.png")).unlink()
    m = build_adapter("crisismmd", ov).prepare()
    assert m["splits"]["train"]["skipped"]["missing image"]["count"] == 1
    with pytest.raises(BenchError, match="bert_dir must be a local BERT directory"):
        build_adapter("crisismmd", {"crisismmd": {"root": str(root), "cache": str(tmp_path / "d")}}).prepare()
