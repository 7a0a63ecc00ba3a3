"""Issue #23, items 1-2: files in a results folder and model directories are data, never code.

Every hostile file here would run code when read the unsafe way: unpickling writes a marker file
under ``tmp_path`` (pickles), or importing the directory's Python does (an ``auto_map`` model
directory). Each test asserts that the marker is never written and that the error or note names
the file or directory; the normal paths (resume, the cached teacher, a collected saved model, a
SLURM task's result) still work.
"""

from __future__ import annotations

import builtins
import pickle
import re
import shutil
from pathlib import Path

import pytest
import torch
from conftest import tiny
from typer.testing import CliRunner

from bench.api.errors import BenchError
from bench.cli import app
from bench.records.store import collect, read_record, record_path, write_record
from bench.train.resolve import RunSpec, build_adapter, resolve
from bench.train.run import NullReporter, run
from bench.train.teachers import teacher_path, teacher_resume_path

cli = CliRunner()
SETS = ["--set", "synthetic.n_train=480", "--set", "synthetic.n_test=180", "--set", "synthetic.width=8"]


class Planted:
    """Unpickled, this runs code: it writes ``marker`` (what a hostile ``os.system`` would do)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


def plant(path: Path, marker: Path, fields: tuple[str, ...] = ("model", "info")) -> Path:
    """A torch file shaped like a checkpoint of this package whose every field runs code."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: Planted(marker) for k in fields}, path)
    return path


def spec(results: Path, method: str = "logit", extra: dict | None = None, **kw) -> RunSpec:
    return RunSpec("synthetic", "audio", "visual", method, 0, tiny(extra), str(results), "cpu", **kw)


def error_text(excinfo) -> str:
    return " ".join(str(excinfo.value).split())


# -- pickles the runner reads -------------------------------------------------------------------

def test_a_planted_cached_teacher_runs_no_code_and_is_named(tmp_path):
    marker = tmp_path / "MARKER"
    s = spec(tmp_path / "res")
    path = plant(teacher_path(resolve(s), "audio"), marker)
    with pytest.raises(BenchError) as e:
        run(s)
    assert not marker.exists()
    assert str(path) in error_text(e) and "refused" in error_text(e)
    assert "Delete it to train the teacher again" in error_text(e)
    assert path.exists() and not path.with_name(path.name + ".corrupt").exists()  # the user decides, not us
    rec = read_record(record_path(tmp_path / "res", resolve(s).run_id))
    assert rec["status"] == "failed" and str(path) in rec["error"]


@pytest.mark.parametrize("which", ["student", "teacher"])
def test_a_planted_resume_checkpoint_runs_no_code_and_is_named(tmp_path, which):
    marker = tmp_path / "MARKER"
    s = spec(tmp_path / "res", "none" if which == "student" else "logit")
    r = resolve(s)
    target = (tmp_path / "res" / "checkpoints" / f"{r.run_id}.pt" if which == "student"
              else teacher_resume_path(teacher_path(r, "audio")))
    plant(target, marker, ("student", "method", "optimizer", "history", "best_state", "best_key", "selected"))
    with pytest.raises(BenchError) as e:
        run(s)
    assert not marker.exists()
    assert str(target) in error_text(e) and "Delete it to train the run again from epoch 1" in error_text(e)


def test_a_planted_teacher_checkpoint_option_runs_no_code(tmp_path):
    marker = tmp_path / "MARKER"
    ck = tmp_path / "mine.pt"
    torch.save({"model": Planted(marker)}, ck)
    with pytest.raises(BenchError) as e:
        run(spec(tmp_path / "res", extra={"train": {"teacher_checkpoint": str(ck)}}))
    assert not marker.exists() and str(ck) in error_text(e)


class _InterruptAt(NullReporter):
    def epoch(self, run_id, phase, epoch, info):
        if phase == "student" and epoch == 2:
            raise KeyboardInterrupt


def test_a_normal_run_still_resumes_and_reuses_its_cached_teacher(tmp_path):
    extra = {"train": {"epochs": "3", "teacher_epochs": "2"}}
    full = run(spec(tmp_path / "full", extra=extra))
    s = spec(tmp_path / "cut", extra=extra)
    with pytest.raises(KeyboardInterrupt):
        run(s, _InterruptAt())
    rec = run(s)
    assert rec["status"] == "ok" and rec["resumed_from_epoch"] == 2 and rec["teacher"]["cached"] is True
    assert [h["test_metric"] for h in rec["history"]] == [h["test_metric"] for h in full["history"]]
    assert [h["train_loss"] for h in rec["history"]] == [h["train_loss"] for h in full["history"]]


# -- bench analyze and bench collect --------------------------------------------------------------

def _save_teacher(results: Path, modality: str) -> Path:
    """A genuine cached teacher file as the runner writes it (random weights: what is read is tested)."""
    adapter = build_adapter("synthetic", tiny())
    model = adapter.build_model(modality, adapter.num_classes)
    path = results / "teachers" / "synthetic" / modality / "seed0-genuine.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict(), "info": {"fingerprint": {"dataset": adapter.fingerprint()}}}, path)
    return path


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> tuple[Path, dict]:
    """A results folder with a genuine audio teacher and a `none` a2v run saved with --save-model."""
    res = tmp_path_factory.mktemp("exec") / "res"
    _save_teacher(res, "audio")
    rec = run(spec(res, "none", {"train": {"epochs": "1"}}, save_model=True))
    assert Path(rec["model_path"]) == res / "models" / f"{rec['run_id']}.pt"
    return res, rec


def _tsne(results: Path, out: Path):
    from bench.report.analysis import tsne

    return tsne("synthetic", "a2v", results, out, tiny(), methods=("none",), n=40)


def test_analyze_refuses_a_planted_cached_teacher(tmp_path):
    marker = tmp_path / "MARKER"
    path = plant(tmp_path / "res" / "teachers" / "synthetic" / "audio" / "seed0-planted.pt", marker)
    res = cli.invoke(app, ["analyze", "similarity", "-d", "synthetic", "-r", str(tmp_path / "res"), *SETS])
    assert res.exit_code != 0 and not marker.exists()
    assert str(path) in "".join(res.output.split()) and "refused" in res.output  # a path wrapped by the console


def test_analyze_reads_a_records_model_only_from_its_results_folder(saved, tmp_path):
    res, rec = saved
    mine = tmp_path / "res"
    shutil.copytree(res, mine)
    marker = tmp_path / "MARKER"
    evil = plant(tmp_path / "elsewhere" / "student.pt", marker, ("student",))
    write_record(mine, dict(rec, model_path=str(evil)))  # a record pointing outside its models folder
    with pytest.raises(BenchError) as e:
        _tsne(mine, tmp_path / "out")
    assert not marker.exists() and str(evil) in error_text(e) and "refused" in error_text(e)
    model = mine / "models" / f"{rec['run_id']}.pt"
    plant(model, marker, ("student",))  # the right place, the wrong file: the record's hash says so
    write_record(mine, rec)
    with pytest.raises(BenchError, match="model_sha256") as e:
        _tsne(mine, tmp_path / "out")
    assert not marker.exists() and str(model) in error_text(e)
    write_record(mine, {k: v for k, v in rec.items() if k != "model_sha256"})  # a record without a hash
    with pytest.raises(BenchError) as e:
        _tsne(mine, tmp_path / "out")
    assert not marker.exists() and str(model) in error_text(e) and "refused" in error_text(e)


def test_collect_copies_a_saved_model_checked_or_drops_the_path(saved, tmp_path):
    import hashlib

    res, rec = saved
    rid = rec["run_id"]
    assert rec.get("model_sha256") == hashlib.sha256(Path(rec["model_path"]).read_bytes()).hexdigest()
    good = collect([res], tmp_path / "good")
    assert good["copied"] == [rid] and good["notes"] == []
    got = read_record(record_path(tmp_path / "good", rid))
    copy = tmp_path / "good" / "models" / f"{rid}.pt"
    assert got["model_path"] == str(copy) and got["model_sha256"] == rec["model_sha256"]
    assert copy.read_bytes() == Path(rec["model_path"]).read_bytes()

    marker = tmp_path / "MARKER"
    outside = tmp_path / "src-out"
    shutil.copytree(res, outside)
    evil = plant(tmp_path / "elsewhere" / "student.pt", marker, ("student",))
    write_record(outside, dict(rec, model_path=str(evil)))
    rep = collect([outside], tmp_path / "d1")
    assert rep["copied"] == [rid] and len(rep["notes"]) == 1 and str(evil) in rep["notes"][0]
    got = read_record(record_path(tmp_path / "d1", rid))
    assert "model_path" not in got and "model_sha256" not in got and any(str(evil) in n for n in got["notes"])
    assert not (tmp_path / "d1" / "models").exists()

    inside = tmp_path / "src-in"
    shutil.copytree(res, inside)
    plant(inside / "models" / f"{rid}.pt", marker, ("student",))
    write_record(inside, {k: v for k, v in rec.items() if k != "model_sha256"})
    out = cli.invoke(app, ["collect", "--from", str(inside), "-r", str(tmp_path / "d2")])
    assert out.exit_code == 0, out.output
    text = "".join(out.output.split())  # the console wraps long paths
    assert "note" in text and "wasrefused" in text and f"{rid}.pt" in text
    assert "model_path" not in read_record(record_path(tmp_path / "d2", rid))
    assert not (tmp_path / "d2" / "models" / f"{rid}.pt").exists()
    shutil.copytree(res / "teachers", tmp_path / "d2" / "teachers")  # collect copies records (and models) only
    with pytest.raises(BenchError, match="no saved none student"):  # and analyze has nothing to read
        _tsne(tmp_path / "d2", tmp_path / "out")
    assert not marker.exists()


# -- SLURM task results ----------------------------------------------------------------------------

def _slurm_result(results: Path, payload, rid: str) -> Path:
    import cloudpickle
    from submitit.core.utils import JobPaths

    from bench.records.files import atomic_write_json

    logs = results / "slurm" / "logs"
    atomic_write_json(results / "slurm" / "submissions" / "20250101-000000-123.json",
                      {"array_job": "123", "logs": str(logs), "tasks": [{"job_id": "123_0", "run_id": rid}]})
    pkl = JobPaths(logs / "123", job_id="123_0", task_id=0).result_pickle
    pkl.parent.mkdir(parents=True, exist_ok=True)
    with open(pkl, "wb") as fh:
        cloudpickle.dump(payload, fh, pickle.HIGHEST_PROTOCOL)
    return pkl


def test_collect_reads_slurm_results_as_plain_data_only(saved, tmp_path):
    from bench.launch.slurm import collect_finished
    from bench.records.files import plain_json

    _, rec = saved
    rid = rec["run_id"]
    marker = tmp_path / "MARKER"
    pkl = _slurm_result(tmp_path / "bad", ("success", [dict(rec, extra=Planted(marker))]), rid)
    rep = collect_finished(tmp_path / "bad")
    assert not marker.exists()
    assert rep["recovered"] == [] and rep["unfinished"] == [rid]
    assert len(rep["notes"]) == 1 and str(pkl) in rep["notes"][0] and "refused" in rep["notes"][0]
    assert not record_path(tmp_path / "bad", rid).exists()

    _slurm_result(tmp_path / "ok", ("success", [plain_json(rec)]), rid)  # what a task now returns
    rep = collect_finished(tmp_path / "ok")
    assert rep["recovered"] == [rid] and rep["notes"] == []
    assert read_record(record_path(tmp_path / "ok", rid)) == read_record(record_path(saved[0], rid))


# -- model directories with their own Python ----------------------------------------------------

@pytest.fixture
def answer_yes(monkeypatch):
    """A terminal where the user answers "y" to transformers' trust-remote-code question; the
    list records every prompt (there must be none)."""
    asked: list[str] = []

    def fake_input(prompt=""):
        asked.append(str(prompt))
        return "y"

    monkeypatch.setattr(builtins, "input", fake_input)
    return asked


def _code_dir(d: Path, marker: Path, model_type: str, tokenizer: bool = False) -> Path:
    from transformers import BertConfig

    BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=64,
               max_position_embeddings=32).save_pretrained(d)
    cfg = (d / "config.json").read_text().replace('"model_type": "bert"', f'"model_type": "{model_type}"')
    code = f"open({str(marker)!r}, 'w').write('ran')\nfrom transformers import BertConfig, BertModel, BertTokenizer\n"
    code += (f"class EvilConfig(BertConfig):\n    model_type = {model_type!r}\n"
             "class EvilModel(BertModel):\n    config_class = EvilConfig\n"
             "class EvilTokenizer(BertTokenizer):\n    pass\n")
    (d / "evil_code.py").write_text(code)
    auto = '{"AutoConfig": "evil_code.EvilConfig", "AutoModel": "evil_code.EvilModel"}'
    (d / "config.json").write_text(cfg.rstrip().rstrip("}") + f', "auto_map": {auto}}}\n')
    if tokenizer:
        (d / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "flood"]) + "\n")
        (d / "config.json").write_text(cfg)  # the model config is clean: only the tokenizer's has code
        (d / "tokenizer_config.json").write_text(
            '{"do_lower_case": true, "auto_map": {"AutoTokenizer": ["evil_code.EvilTokenizer", null]}}')
    return d


@pytest.mark.parametrize("backbone, model_type", [("hf", "bert"), ("hf", "evil"), ("bert", "bert")])
def test_an_auto_map_model_directory_runs_no_code(tmp_path, answer_yes, backbone, model_type):
    from bench.models.registry import BackboneChoice, InputSpec, backbone_params, build_backbone

    marker = tmp_path / "MARKER"
    d = _code_dir(tmp_path / "model", marker, model_type)
    params = backbone_params(backbone, {"dir": str(d)}, "teacher")
    spec = InputSpec("a", "sequence", (8, 16)) if backbone == "hf" else InputSpec("t", "text", (2, 16), "int64")
    with pytest.raises(BenchError) as e:
        build_backbone(BackboneChoice("teacher", backbone, params, False), spec, 4)
    assert not marker.exists() and answer_yes == []
    assert re.search(rf"{backbone}\.dir={re.escape(str(d))}: config\.json has an auto_map", error_text(e))


def test_a_tokenizer_with_its_own_code_runs_no_code(tmp_path, answer_yes):
    marker = tmp_path / "MARKER"
    d = _code_dir(tmp_path / "bert", marker, "bert", tokenizer=True)
    root = tmp_path / "root"
    root.mkdir()
    adapter = build_adapter("crisismmd", {"crisismmd": {"root": str(root), "cache": str(tmp_path / "c"),
                                                        "bert_dir": str(d)}})
    with pytest.raises(BenchError) as e:
        adapter.prepare()
    assert not marker.exists() and answer_yes == []
    assert f"crisismmd.bert_dir={d}: tokenizer_config.json has an auto_map" in error_text(e)
