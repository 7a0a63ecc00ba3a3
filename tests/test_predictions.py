"""Per-sample predictions beside every record (#24 item 2): written by real tiny runs, re-scored
exactly by ``bench results --verify``, damaged files named, old records reported as such, kept
through resume and ``bench collect``."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny
from typer.testing import CliRunner

from bench.cli import app
from bench.records.predictions import NO_PREDICTIONS, read_predictions, split_fingerprint_of
from bench.records.store import load_results, read_record, record_path
from bench.train.loop import load_splits, score_predictions
from bench.train.resolve import RunSpec, build_adapter, build_train_config, resolve
from bench.train.run import NullReporter, run

pytestmark = pytest.mark.usefixtures("one_thread")


def spec(results, method="none", seed=0, extra=None):
    return RunSpec("synthetic", "audio", "visual", method, seed, tiny(extra), str(results), "cpu")


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    """One results folder with two methods at seed 0 (a teacher-free and a distilling one)."""
    res = tmp_path_factory.mktemp("pred") / "res"
    recs = {m: run(spec(res, m)) for m in ("none", "logit")}
    for r in recs.values():
        assert r["status"] == "ok", r.get("traceback")
    return res, recs


def verify(results, *extra):
    out = CliRunner().invoke(app, ["results", "-r", str(results), "--verify", *extra], env={"COLUMNS": "400"})
    return out.exit_code, out.output


def copy_of(ran, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(ran[0], dst)
    return dst


def npz_bytes(arrays):
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def replace_file(results, rid, data, update_sha=True):
    """Write ``data`` as the run's predictions file; with ``update_sha`` the record notes its hash
    (so that what is checked next is the content, not the hash)."""
    path = results / "predictions" / f"{rid}.npz"
    path.write_bytes(data)
    if update_sha:
        edit_record(results, rid, predictions_sha256=hashlib.sha256(data).hexdigest())
    return path


def edit_record(results, rid, drop=(), **fields):
    p = record_path(results, rid)
    rec = json.loads(p.read_text())
    for k in drop:
        rec.pop(k, None)
    rec.update(fields)
    p.write_text(json.dumps(rec))


def labels_of(rec):
    adapter = build_adapter("synthetic", tiny())
    return load_splits(adapter, build_train_config(adapter, tiny()))


def test_predictions_rescore_to_the_records_metrics_exactly(ran):
    res, recs = ran
    splits = labels_of(recs["none"])
    for rec in recs.values():
        path = res / "predictions" / f"{rec['run_id']}.npz"
        assert rec["predictions_path"] == str(path)
        assert rec["predictions_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert read_record(record_path(res, rec["run_id"]))["predictions_sha256"] == rec["predictions_sha256"]
        with np.load(path, allow_pickle=False) as z:
            a = {k: z[k] for k in z.files}
        assert int(a["selected.epoch"]) == rec["selected_epoch"] and int(a["last.epoch"]) == 3
        for which, row in (("selected", rec["history"][rec["selected_epoch"] - 1]), ("last", rec["history"][-1])):
            for split in ("val", "test"):
                pred = a[f"{which}.{split}.pred"]
                assert pred.shape == (len(splits[split]),)
                assert a[f"{which}.{split}.topk_values"].dtype == np.float16
                assert a[f"{which}.{split}.topk_indices"].dtype == np.int16
                assert a[f"{which}.{split}.topk_values"].shape == (len(splits[split]), 5)
                assert (a[f"{which}.{split}.topk_indices"][:, 0] == pred).all()  # the top logit is the prediction
                # scored by hand, independently of the package's scoring function
                by_hand = 100.0 * int((pred == splits[split].labels.numpy()).sum()) / len(splits[split])
                assert by_hand == row[f"{split}_metric"]
                assert score_predictions("top1", {"pred": torch.from_numpy(pred)}, splits[split].labels) == by_hand
        assert 100.0 * (a["selected.test.pred"] == splits["test"].labels.numpy()).mean() == pytest.approx(rec["best_metric"], abs=1e-12)
        assert score_predictions("top1", {"pred": torch.from_numpy(a["selected.test.pred"])}, splits["test"].labels) == rec["best_metric"]
        assert score_predictions("top1", {"pred": torch.from_numpy(a["last.test.pred"])}, splits["test"].labels) == rec["final_metric"]
        assert score_predictions("top1", {"pred": torch.from_numpy(a["selected.val.pred"])}, splits["val"].labels) == rec["val_at_selected"]


def test_split_fingerprint_is_the_same_for_two_methods_at_one_seed(ran):
    res, recs = ran
    a, b = recs["none"]["split_fingerprint"], recs["logit"]["split_fingerprint"]
    assert set(a) == {"val", "test"} and a == b and a["val"] != a["test"]
    splits = labels_of(recs["none"])
    assert a["test"] == split_fingerprint_of(splits["test"])
    df = load_results(res)
    assert set(df["split_fingerprint"]) == {a["test"]}  # what the statistics pair seeds on
    other = build_adapter("synthetic", tiny({"synthetic": {"n_test": "150"}}))
    assert split_fingerprint_of(load_splits(other, build_train_config(other, tiny()))["test"]) != a["test"]
    shuffled = splits["test"].subset(torch.arange(len(splits["test"])).flip(0))  # same labels, other order
    assert split_fingerprint_of(shuffled) != a["test"]


def test_verify_passes_on_genuine_predictions(ran):
    code, text = verify(ran[0])
    assert code == 0, text
    assert "2 re-score exactly" in text and "0 problem(s)" in text


def test_verify_names_a_flipped_prediction(ran, tmp_path):
    res = copy_of(ran, tmp_path)
    rec = ran[1]["none"]
    rid = rec["run_id"]
    path = res / "predictions" / f"{rid}.npz"
    with np.load(path, allow_pickle=False) as z:
        a = {k: z[k] for k in z.files}
    y0 = int(labels_of(rec)["test"].labels[0])
    a["selected.test.pred"] = a["selected.test.pred"].copy()
    a["selected.test.pred"][0] = (y0 + 1) % 6 if a["selected.test.pred"][0] == y0 else y0  # one sample flipped
    replace_file(res, rid, npz_bytes(a))
    code, text = verify(res)
    assert code == 1, text
    assert str(path) in text and "best_metric" in text and "selected" in text
    assert "Traceback" not in text
    assert text.count("FAIL") == 1  # the other run still re-scores; only the flipped one is reported


@pytest.mark.parametrize("damage, expect", [
    ("truncated", "unreadable"),
    ("sha256", "has sha256"),
    ("count", "wrong number of samples"),
    ("missing", "is missing"),
    ("fingerprint", "labels fingerprint mismatch"),
    ("epoch", "its selected epoch"),
])
def test_verify_names_a_damaged_predictions_file(ran, tmp_path, damage, expect):
    res = copy_of(ran, tmp_path)
    rid = ran[1]["none"]["run_id"]
    path = res / "predictions" / f"{rid}.npz"
    data = path.read_bytes()
    if damage == "truncated":
        replace_file(res, rid, data[: len(data) // 2])
    elif damage == "sha256":
        edit_record(res, rid, predictions_sha256="0" * 64)
    elif damage == "count":
        with np.load(path, allow_pickle=False) as z:
            a = {k: z[k] for k in z.files}
        for k in [k for k in a if k.startswith("last.test.")]:
            a[k] = a[k][:-1]
        replace_file(res, rid, npz_bytes(a))
    elif damage == "missing":
        path.unlink()
    elif damage == "fingerprint":
        fp = dict(ran[1]["none"]["split_fingerprint"], test="f" * 16)
        edit_record(res, rid, split_fingerprint=fp)
    elif damage == "epoch":
        with np.load(path, allow_pickle=False) as z:
            a = {k: z[k] for k in z.files}
        a["selected.epoch"] = np.array(99)
        replace_file(res, rid, npz_bytes(a))
    code, text = verify(res)
    assert code == 1, text
    assert str(path) in text and expect in text, text
    assert "Traceback" not in text
    assert "1 re-score exactly" in text  # the undamaged run is still verified


def test_a_file_holding_objects_is_refused_without_running_them(ran, tmp_path):
    res = copy_of(ran, tmp_path)
    rid = ran[1]["none"]["run_id"]
    marker = tmp_path / "MARKER"

    class Planted:
        def __reduce__(self):
            return (exec, (f"open({str(marker)!r}, 'w').write('ran')",))

    evil = np.empty(1, dtype=object)
    evil[0] = Planted()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        with np.load(ran[0] / "predictions" / f"{rid}.npz", allow_pickle=False) as z:
            for k in z.files:
                with zf.open(k + ".npy", "w") as fh:
                    np.lib.format.write_array(fh, z[k] if k != "selected.test.pred" else evil, allow_pickle=True)
    path = replace_file(res, rid, buf.getvalue())
    code, text = verify(res)
    assert code == 1 and str(path) in text and "unreadable" in text, text
    assert not marker.exists()


def test_an_old_record_without_predictions_is_reported_as_such(ran, tmp_path):
    res = copy_of(ran, tmp_path)
    rid = ran[1]["none"]["run_id"]
    edit_record(res, rid, drop=("predictions_path", "predictions_sha256", "split_fingerprint"))
    (res / "predictions" / f"{rid}.npz").unlink()
    code, text = verify(res)
    assert code == 0, text
    assert f"{rid}: {NO_PREDICTIONS}" in text and "1 without predictions" in text and "1 re-score exactly" in text
    df = load_results(res)  # and the tables still read it (no fingerprint: None)
    fps = df.set_index("run_id")["split_fingerprint"]
    assert fps.isna()[rid] and fps[ran[1]["logit"]["run_id"]] == ran[1]["logit"]["split_fingerprint"]["test"]
    out = CliRunner().invoke(app, ["table", "comparison", "-r", str(res), "--format", "markdown"])
    assert out.exit_code == 0, out.output


class _InterruptAfter(NullReporter):
    def __init__(self, n):
        self.n = n

    def epoch(self, run_id, phase, epoch, info):
        if phase == "student" and epoch == self.n:
            raise KeyboardInterrupt


@pytest.mark.parametrize("old_checkpoint", [False, True])
def test_a_resumed_run_writes_the_predictions_of_an_uninterrupted_one(ran, tmp_path, old_checkpoint):
    full = ran[1]["none"]
    s = spec(tmp_path, "none")
    with pytest.raises(KeyboardInterrupt):
        run(s, _InterruptAfter(2))
    ckpt = tmp_path / "checkpoints" / f"{resolve(s).run_id}.pt"
    state = torch.load(ckpt, weights_only=True)
    assert set(state["predictions"]) == {"selected", "last"}
    if old_checkpoint:  # a checkpoint written before predictions were kept: they are evaluated again
        del state["predictions"]
        torch.save(state, ckpt)
    rec = run(s)
    assert rec.get("resumed_from_epoch") == 2 and rec["best_metric"] == full["best_metric"]
    got = read_predictions(Path(rec["predictions_path"]), rec["predictions_sha256"])
    want = read_predictions(ran[0] / "predictions" / f"{full['run_id']}.npz")
    assert set(got) == set(want)
    for k in want:
        assert np.array_equal(got[k], want[k]), k
    code, text = verify(tmp_path)
    assert code == 0 and "1 re-score exactly" in text, text


def test_collect_copies_the_predictions_checked_by_hash(ran, tmp_path):
    src = copy_of(ran, tmp_path)
    rid_bad = ran[1]["logit"]["run_id"]
    (src / "predictions" / f"{rid_bad}.npz").write_bytes(b"not the file")  # its hash no longer matches
    out = CliRunner().invoke(app, ["collect", "--from", str(src), "-r", str(tmp_path / "dest")], env={"COLUMNS": "400"})
    assert out.exit_code == 0, out.output
    assert "predictions not copied" in out.output and rid_bad in out.output
    rid = ran[1]["none"]["run_id"]
    copied = tmp_path / "dest" / "predictions" / f"{rid}.npz"
    assert copied.read_bytes() == (ran[0] / "predictions" / f"{rid}.npz").read_bytes()
    assert read_record(record_path(tmp_path / "dest", rid))["predictions_path"] == str(copied)
    assert not (tmp_path / "dest" / "predictions" / f"{rid_bad}.npz").exists()
    code, text = verify(tmp_path / "dest")
    assert code == 1 and "1 re-score exactly" in text and f"{rid_bad}.npz is missing" in text, text


def test_slurm_collect_brings_the_predictions_of_a_recovered_record(ran, tmp_path):
    import cloudpickle
    from submitit.core.utils import JobPaths

    from bench.launch.slurm import collect_finished
    from bench.records.files import atomic_write_json, plain_json

    rec = ran[1]["none"]
    rid, dest = rec["run_id"], tmp_path / "dest"
    logs = dest / "slurm" / "logs"
    atomic_write_json(dest / "slurm" / "submissions" / "20250101-000000-123.json",
                      {"array_job": "123", "logs": str(logs), "tasks": [{"job_id": "123_0", "run_id": rid}]})
    pkl = JobPaths(logs / "123", job_id="123_0", task_id=0).result_pickle
    pkl.parent.mkdir(parents=True, exist_ok=True)
    pkl.write_bytes(cloudpickle.dumps(("success", [plain_json(rec)])))
    rep = collect_finished(dest)
    assert rep["recovered"] == [rid] and rep["notes"] == []
    assert (dest / "predictions" / f"{rid}.npz").read_bytes() == Path(rec["predictions_path"]).read_bytes()
    code, text = verify(dest)
    assert code == 0 and "1 re-score exactly" in text, text


def test_confusion_counts_score_to_miou_by_hand():
    # two images, three classes (class 2 in neither the labels nor the predictions: not averaged)
    per_image = torch.tensor([[[2, 1, 0], [0, 3, 0], [0, 0, 0]],
                              [[1, 0, 0], [1, 0, 0], [0, 0, 0]]], dtype=torch.int32)
    # summed: [[3, 1], [1, 3]] -> IoU 3 / (3 + 1 + 1) = 0.6 for both classes
    assert score_predictions("mIoU", {"confusion": per_image}, None) == pytest.approx(60.0, abs=1e-12)
    one = torch.tensor([[[4, 0], [2, 2]]])  # IoU0 = 4/6, IoU1 = 2/4
    assert score_predictions("mIoU", {"confusion": one}, None) == pytest.approx(100 * (4 / 6 + 2 / 4) / 2, abs=1e-12)
    assert score_predictions("top1", {"pred": torch.tensor([0, 1, 2, 2])}, torch.tensor([0, 1, 1, 2])) == 75.0


def test_a_segmentation_runs_confusion_counts_rescore_to_its_miou(tmp_path):
    from test_dataset_nyudv2 import make_mat, ov

    root = tmp_path / "raw"
    make_mat(root)
    build_adapter("nyudv2", ov(root, tmp_path / "cache")).prepare()
    rec = run(RunSpec("nyudv2", "depth", "rgb", "none", 0, ov(root, tmp_path / "cache"), str(tmp_path / "res"), "cpu"))
    assert rec["status"] == "ok", rec.get("traceback")
    a = read_predictions(Path(rec["predictions_path"]), rec["predictions_sha256"])
    k = 40
    assert a["selected.test.confusion"].shape == (2, k, k)  # per image, never pixels
    assert not any(name.endswith(".pred") for name in a)
    labels = build_adapter("nyudv2", ov(root, tmp_path / "cache")).load()["test"].labels
    valid = int((labels != 255).sum())
    assert int(a["selected.test.confusion"].sum()) == valid  # every labelled pixel counted once
    conf = torch.from_numpy(a["selected.test.confusion"]).long().sum(0).double()
    tp = conf.diag()
    denom = conf.sum(0) + conf.sum(1) - tp
    by_hand = float(100.0 * (tp[denom > 0] / denom[denom > 0]).mean())
    assert by_hand == rec["best_metric"]
    code, text = verify(tmp_path / "res")  # a record holds no path: the data is not at the default place
    assert code == 1 and rec["predictions_path"] in text and "Traceback" not in text, text
    assert "cannot load dataset 'nyudv2'" in text or "labels fingerprint mismatch" in text, text  # (another cache)
    code, text = verify(tmp_path / "res", "--set", f"nyudv2.cache={tmp_path / 'cache'}")
    assert code == 0 and "1 re-score exactly" in text, text


def test_collect_from_a_compact_records_file_resumes_a_grid(ran, tmp_path):
    """A grid whose results folder was lost resumes from its published records.jsonl.gz: the
    records are taken in, the runs they cover are skipped, and a damaged file is refused whole."""
    from bench.records.compact import write_compact
    from bench.records.store import load_records

    recs = load_records(ran[0])
    pub = tmp_path / "pub"
    compact = write_compact(recs, pub / "records.jsonl.gz")
    dest = tmp_path / "dest"
    out = CliRunner().invoke(app, ["collect", "--from", str(compact), "-r", str(dest)], env={"COLUMNS": "400"})
    assert out.exit_code == 0 and "2 copied" in out.output, out.output
    # no predictions beside the compact file: the records keep their fields and the note says so
    assert out.output.count("predictions not copied") == 2, out.output
    for r in recs:
        got = read_record(record_path(dest, r["run_id"]))
        assert {k: got[k] for k in ("config_hash", "best_metric", "history")} == \
               {k: r[k] for k in ("config_hash", "best_metric", "history")}
    again = run(spec(dest, "logit"))
    assert again.get("skipped") is True and again["best_metric"] == ran[1]["logit"]["best_metric"]
    out = CliRunner().invoke(app, ["collect", "--from", str(compact), "-r", str(dest)], env={"COLUMNS": "400"})
    assert "0 copied, 2 duplicate(s)" in out.output, out.output

    # with the predictions folder beside it (a published folder that kept them) they come along, checked
    shutil.copytree(ran[0] / "predictions", pub / "predictions")
    dest2 = tmp_path / "dest2"
    out = CliRunner().invoke(app, ["collect", "--from", str(compact), "-r", str(dest2)], env={"COLUMNS": "400"})
    assert "2 copied" in out.output and "predictions not copied" not in out.output, out.output
    code, text = verify(dest2)
    assert code == 0 and "2 re-score exactly" in text, text

    # one bad line: nothing is taken from the file, and the line is named
    import gzip

    lines = gzip.decompress(compact.read_bytes()).split(b"\n")
    lines[1] = b'{"run_id": '
    bad = tmp_path / "bad.jsonl.gz"
    bad.write_bytes(gzip.compress(b"\n".join(lines)))
    out = CliRunner().invoke(app, ["collect", "--from", str(bad), "-r", str(tmp_path / "dest3")], env={"COLUMNS": "400"})
    assert "0 copied" in out.output and "line 2" in out.output and "nothing copied" in out.output, out.output
    assert not list((tmp_path / "dest3" / "records").glob("*.json"))
