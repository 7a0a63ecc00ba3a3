"""A run on a prepared cache needs only the cache: settings it was prepared with come from its manifest."""

from __future__ import annotations

from test_dataset_crisismmd import make_bert, make_crisis

from bench.train.resolve import RunSpec, build_adapter, resolve
from bench.train.run import run


def test_crisismmd_run_uses_the_bert_dir_the_cache_was_tokenised_with(tmp_path):
    root, cache, bert = tmp_path / "CrisisMMD_v2.0", tmp_path / "cache", tmp_path / "bert_tiny"
    make_crisis(root)
    make_bert(bert)
    build_adapter("crisismmd", {"crisismmd": {"root": str(root), "cache": str(cache), "bert_dir": str(bert),
                                              "max_length": "16", "image_cache": "40"}}).prepare()
    train = {"batch_size": "4", "epochs": "1", "teacher_epochs": "1"}
    only_cache = {"crisismmd": {"cache": str(cache), "image_size": "32"}, "train": train}
    rec = run(RunSpec("crisismmd", "image", "text", "none", 0, only_cache, str(tmp_path / "res")))
    assert rec["status"] == "ok", rec.get("traceback")
    params = rec["config"]["dataset"]["params"]
    assert (params["bert_dir"], params["max_length"], params["image_cache"]) == (str(bert), 16, 40)
    repeated = {"crisismmd": {**only_cache["crisismmd"], "bert_dir": str(bert), "max_length": "16",
                              "image_cache": "40"}, "train": train}
    assert rec["config_hash"] == resolve(RunSpec("crisismmd", "image", "text", "none", 0, repeated)).config_hash
