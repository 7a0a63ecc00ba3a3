"""Speed features: exactness of teacher-output caching, placement/prefetch equivalence, precision
paths, plan resolution, and accuracy within noise of the all-off run."""

from __future__ import annotations

import math

import pytest
import torch

from bench.api.config import TrainConfig, build_params
from bench.api.errors import ConfigError
from bench.data import Split
from bench.train.acceleration import SpeedPlan, plan_speed
from bench.train.placement import BatchSource
from bench.train.resolve import RunSpec, resolve
from bench.train.run import run
from bench.train.teacher_outputs import decide_teacher_cache

TINY = {"synthetic": {"n_train": "240", "n_test": "60", "width": "8"}}


def _run(tmp_path, method, train, data=TINY, direction=("audio", "visual"), seed=0, sub="r"):
    ov = {**data, "train": {"epochs": "1", "teacher_epochs": "1", **train}}
    rec = run(RunSpec("synthetic", direction[0], direction[1], method, seed, ov, str(tmp_path / sub)), force=True)
    assert rec["status"] == "ok", rec.get("traceback")
    return rec


def _trace(rec):
    return [(h["terms"], h["val_metric"], h["test_metric"]) for h in rec["history"]]


@pytest.mark.parametrize("method,extra", [
    ("logit", {}), ("dist", {}), ("nkd", {}), ("dkd", {}), ("feat", {}), ("feat", {"mode": "map"}), ("pkd", {}),
    ("afd", {}), ("fdcmkd", {}), ("ucmkd", {}),
])
def test_teacher_cache_gives_the_same_run(tmp_path, method, extra):
    """Cached teacher outputs are the recomputed ones: the whole history is identical in fp32."""
    data = {**TINY, **({method: extra} if extra else {})}
    on = _run(tmp_path, method, {"teacher_cache": "on"}, data)
    off = _run(tmp_path, method, {"teacher_cache": "off"}, data)
    assert on["speed"]["teacher_cache"] is True and "cached" in on["speed"]["teacher_cache_reason"]
    assert off["speed"]["teacher_cache"] is False
    assert _trace(on) == _trace(off)
    assert on["run_id"] == off["run_id"]  # speed settings are not part of the identity


@pytest.mark.parametrize("method", ["dkd", "fdcmkd", "crd"])
def test_runs_without_the_nan_fill_of_new_tensors_are_the_same(tmp_path, monkeypatch, method):
    """seed_everything turns torch's NaN fill of new tensors off: nothing reads memory it did not
    write (fdcmkd and crd build tensors with torch.empty), so the run with the fill on is the same
    bits, predictions included; the record says which was in force."""
    import bench.train.device as device_mod
    import bench.train.run as run_mod
    import bench.train.teachers as teachers_mod

    off = _run(tmp_path, method, {}, sub="off")
    assert off["environment"]["fill_uninitialized_memory"] is False

    def seed_with_fill(seed, deterministic=True):
        device_mod.seed_everything(seed, deterministic)
        torch.utils.deterministic.fill_uninitialized_memory = True

    monkeypatch.setattr(run_mod, "seed_everything", seed_with_fill)
    monkeypatch.setattr(teachers_mod, "seed_everything", seed_with_fill)
    try:
        on = _run(tmp_path, method, {}, sub="on")
    finally:
        torch.utils.deterministic.fill_uninitialized_memory = False
    assert on["environment"]["fill_uninitialized_memory"] is True
    assert _trace(on) == _trace(off) and on["best_metric"] == off["best_metric"]
    assert on["predictions_sha256"] == off["predictions_sha256"] and on["run_id"] == off["run_id"]


def test_teacher_cache_unpaired_and_other_direction(tmp_path):
    for train in ({"pairing": "unpaired"}, {}):
        on = _run(tmp_path, "logit", {**train, "teacher_cache": "on"}, direction=("visual", "audio"))
        off = _run(tmp_path, "logit", {**train, "teacher_cache": "off"}, direction=("visual", "audio"))
        assert on["speed"]["teacher_cache"] and _trace(on) == _trace(off)


@pytest.mark.parametrize("method,why", [
    ("dml", "trained with the student"), ("c2kd", "trained with the student"), ("ofd", "train mode"),
    ("none", "no teacher"),
])
def test_teacher_cache_refused_with_reason(tmp_path, method, why):
    rec = _run(tmp_path, method, {"teacher_cache": "on"})
    assert rec["speed"]["teacher_cache"] is False and why in rec["speed"]["teacher_cache_reason"]


def test_teacher_cache_refused_for_augmented_inputs_and_plugins():
    from bench.api.registry import DATASETS, METHODS

    crema = DATASETS.get("crema")(DATASETS.get("crema").Params())
    vgg = DATASETS.get("vggsound")(DATASETS.get("vggsound").Params())
    assert crema.augments("visual") and not crema.augments("audio") and vgg.augments("audio")
    out = torch.zeros(2, 4)
    from bench.models import ModelOutput

    probe = ModelOutput(out, out, out, [], [])

    class Plugin(METHODS.get("logit")):  # a method that does not say what it reads
        name = "plugin"

        def teacher_cache_fields(self):
            return None

    plan = SpeedPlan(teacher_cache=True)
    m = Plugin.__new__(Plugin)
    assert "does not declare" in decide_teacher_cache(plan, m, crema, "audio", probe, 10, torch.device("cpu")).teacher_cache_reason
    lk = METHODS.get("logit").__new__(METHODS.get("logit"))
    d = decide_teacher_cache(plan, lk, crema, "visual", probe, 10, torch.device("cpu"))
    assert not d.teacher_cache and "augmented" in d.teacher_cache_reason
    d = decide_teacher_cache(plan, lk, crema, "audio", probe, 10, torch.device("cpu"))
    assert d.teacher_cache and d.teacher_cache_fields == ["logits"]
    big = ModelOutput(torch.zeros(2, 10**6), out, out, [], [])
    d = decide_teacher_cache(plan, lk, crema, "audio", big, 10**4, torch.device("cpu"))
    assert not d.teacher_cache and "GiB" in d.teacher_cache_reason


def test_placements_and_prefetch_give_the_same_run(tmp_path):
    base = _run(tmp_path, "fdcmkd", {"speed": "off"})
    for placement in ("device", "pinned", "stream"):
        rec = _run(tmp_path, "fdcmkd", {"data_placement": placement, "teacher_cache": "off", "channels_last": "off"})
        assert rec["speed"]["data_placement"] == placement
        assert _trace(rec) == _trace(base), placement


def test_batch_source_prefetch_matches_and_propagates_errors():
    x = torch.arange(40, dtype=torch.float32).view(20, 2)
    sp = Split({"a": x}, torch.arange(20) % 3)
    batches = [torch.randperm(20)[:5] for _ in range(4)]
    plain = BatchSource(sp, ["a"], torch.device("cpu"), SpeedPlan(data_placement="stream", prefetch=False))
    pre = BatchSource(sp, ["a"], torch.device("cpu"), SpeedPlan(data_placement="stream", prefetch=True))
    got_plain = [(s.inputs["a"][li], idx) for s, li, idx in plain.iterate(batches)]
    got_pre = [(s.inputs["a"][li], idx) for s, li, idx in pre.iterate(batches)]
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(got_plain, got_pre))
    assert all(torch.equal(v, x[i]) for v, i in got_pre)
    bad = [torch.tensor([0, 1]), torch.tensor([99])]  # out of range: raised on the training thread
    with pytest.raises(IndexError):
        list(pre.iterate(bad))


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_paths_train(tmp_path, amp):
    rec = _run(tmp_path, "fdcmkd", {"amp": amp, "channels_last": "on", "fused_optim": "on"})
    assert rec["speed"]["amp"] == amp and rec["speed"]["channels_last"] and rec["speed"]["fused_optim"]
    h = rec["history"][-1]
    assert math.isfinite(h["train_loss"]) and 0 <= h["test_metric"] <= 100


def test_plan_resolution_and_errors():
    cpu = torch.device("cpu")
    t = build_params(TrainConfig, {}, "train")
    p = plan_speed(t, cpu)
    assert (p.amp, p.channels_last, p.data_placement, p.fused_optim, p.teacher_inference) == ("off", True, "device", False, True)
    off = plan_speed(build_params(TrainConfig, {"speed": "off"}, "train"), cpu)
    assert off == SpeedPlan()
    with pytest.raises(ConfigError, match="train: amp must be one of"):
        build_params(TrainConfig, {"amp": "fp8"}, "train")
    with pytest.raises(ConfigError, match="train: data_placement must be one of"):
        build_params(TrainConfig, {"data_placement": "gpu"}, "train")
    a = resolve(RunSpec("synthetic", "audio", "visual", "logit", 0, {"train": {"amp": "bf16", "compile": "true"}}))
    b = resolve(RunSpec("synthetic", "audio", "visual", "logit", 0, {}))
    assert a.run_id == b.run_id and "amp" not in a.config["train"]


def test_speed_features_keep_accuracy_within_noise(tmp_path):
    """With every feature that applies on CPU on (bf16 autocast, channels_last, fused SGD, data in
    RAM with prefetching, cached teacher), final accuracy stays within noise of the all-off run:
    the difference is below three standard errors of a difference of two accuracies on the test
    set plus the seed-to-seed spread of the all-off runs."""
    data = {"synthetic": {"n_train": "1200", "n_test": "400"}}
    ov = {"epochs": "5", "teacher_epochs": "5"}
    fast = {**ov, "amp": "bf16", "channels_last": "on", "fused_optim": "on", "data_placement": "pinned",
            "teacher_cache": "on"}
    offs, ons = [], []
    for seed in (0, 1):
        for store, train in ((offs, {**ov, "speed": "off"}), (ons, fast)):
            rec = run(RunSpec("synthetic", "audio", "visual", "logit", seed, {**data, "train": train},
                              str(tmp_path / "acc")), force=True)
            assert rec["status"] == "ok", rec.get("traceback")
            store.append(rec["final_metric"])
    assert ons != offs  # bf16 really changed the numerics
    n = 400
    p = sum(offs + ons) / 400.0
    se_diff = 100 * math.sqrt(2 * p * (1 - p) / n)
    spread = abs(offs[0] - offs[1])
    for a, b in zip(ons, offs):
        assert abs(a - b) <= 3 * se_diff + spread, (ons, offs, se_diff)


def test_compile_gives_the_same_run(tmp_path):
    eager = _run(tmp_path, "fdcmkd", {"compile": "false"})
    comp = _run(tmp_path, "fdcmkd", {"compile": "true"})
    assert comp["speed"]["compile"] is True
    a, b = eager["history"][-1], comp["history"][-1]
    assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-3)
    assert abs(b["test_metric"] - a["test_metric"]) <= 100 * 2 / 60  # at most two of 60 test samples flip


def test_bench_speed_smoke(tmp_path):
    """CPU smoke run of the benchmark (figures are not asserted as timings, only as consistent)."""
    import json

    from typer.testing import CliRunner

    from bench.cli import app

    out = tmp_path / "speed.json"
    res = CliRunner().invoke(app, ["speed", "--methods", "fdcmkd,dml", "--dataset", "crema", "--directions", "a2v,v2a",
                                   "--batch-size", "2", "--steps", "1", "--warmup", "0", "--workers", "1",
                                   "--set", "crema.image_size=64", "--json", str(out)])
    assert res.exit_code == 0, res.output
    d = json.loads(out.read_text())
    assert len(d["results"]) == 4
    by = {(r["method"], r["direction"]): r for r in d["results"]}
    for r in d["results"]:
        on, off = r["modes"]["on"], r["modes"]["off"]
        assert r["speedup"] == pytest.approx(on["samples_per_s"] / off["samples_per_s"])
        for m in (on, off):
            assert m["samples_per_s"] > 0 and m["flops_per_step"] > 0 and m["tflops"] > 0 and m["mfu"] is None
            assert set(m["breakdown_ms"]) == {"data", "teacher_forward", "student_forward_backward", "optimizer"}
            assert sum(m["breakdown_pct"].values()) == pytest.approx(100)
        assert off["settings"]["amp"] == "off" and "DataLoader" in off["data_pipeline"]
    # FD-CMKD a2v: the audio teacher is not augmented, so its forward is cached and not executed
    a2v = by[("fdcmkd", "a2v")]["modes"]
    assert a2v["on"]["settings"]["teacher_cache"] and a2v["on"]["flops_per_step"] < a2v["off"]["flops_per_step"]
    # visual teacher (augmented) and DML (trained teacher): recomputed, same FLOPs in both set-ups
    for key in (("fdcmkd", "v2a"), ("dml", "a2v")):
        m = by[key]["modes"]
        assert not m["on"]["settings"]["teacher_cache"]
        assert m["on"]["flops_per_step"] == m["off"]["flops_per_step"]
    assert d["grid_estimate"]["on"]["runs"] == 4
    assert "samples/s" in res.output and "speed-up" in res.output


def test_packed_runs_equal_sequential_runs(tmp_path):
    """--runs-per-gpu 2: two runs at a time in worker processes; the same records as one at a time,
    and the shared teacher is trained once (the others wait on its lock)."""
    from typer.testing import CliRunner

    from bench.cli import app
    from bench.records.store import load_records

    common = ["--methods", "none,logit,fdcmkd,dkd", "--datasets", "synthetic", "--directions", "a2v", "--epochs", "2",
              "--teacher-epochs", "2", "--set", "synthetic.n_train=480", "--set", "synthetic.n_test=180",
              "--set", "synthetic.width=8"]
    for k, sub in (("1", "seq"), ("2", "packed")):
        r = CliRunner().invoke(app, ["run", *common, "-r", str(tmp_path / sub), "--runs-per-gpu", k])
        assert r.exit_code == 0, r.output
    seq = {r["method"]: r for r in load_records(tmp_path / "seq")}
    packed = {r["method"]: r for r in load_records(tmp_path / "packed")}
    assert set(seq) == set(packed) == {"none", "logit", "fdcmkd", "dkd"}
    for m in seq:
        assert packed[m]["run_id"] == seq[m]["run_id"] and packed[m]["speed"]["runs_per_gpu"] == 2
        assert [h["test_metric"] for h in packed[m]["history"]] == [h["test_metric"] for h in seq[m]["history"]]
    assert len(list((tmp_path / "packed" / "teachers").rglob("*.pt"))) == 1


def test_placed_arrays_are_shared_and_released():
    from bench.train.placement import release_placements

    sp = Split({"a": torch.randn(10, 3), "b": torch.randn(10, 2)}, torch.arange(10) % 2)
    plan = SpeedPlan(data_placement="device")
    only_a = BatchSource(sp, ["a"], torch.device("cpu"), plan)
    both = BatchSource(sp, ["a", "b"], torch.device("cpu"), plan)
    assert both.src.inputs["a"] is only_a.src.inputs["a"]  # the teacher's array is placed once
    assert sorted(only_a.src.inputs) == ["a"] and torch.equal(both.src.inputs["b"], sp.inputs["b"])
    other = Split({"a": torch.randn(4, 3)}, torch.arange(4))
    BatchSource(other, ["a"], torch.device("cpu"), plan)
    release_placements([other])
    assert all(src is other for src, _ in BatchSource._placed.values())


def test_bench_speed_generic_file_pipeline(tmp_path):
    """Non-audio-visual sets: the 'off' loader reads per-sample .npy files through the adapter's
    own transform (AV-Digits: audio MFCC sequences and digit images)."""
    import json

    from typer.testing import CliRunner

    from bench.cli import app

    out = tmp_path / "s.json"
    res = CliRunner().invoke(app, ["speed", "--methods", "logit", "--dataset", "avdigits", "--directions", "a2v",
                                   "--batch-size", "4", "--steps", "1", "--warmup", "0", "--workers", "0",
                                   "--json", str(out)])
    assert res.exit_code == 0, res.output
    r = json.loads(out.read_text())["results"][0]
    assert r["modes"]["on"]["settings"]["teacher_cache"]  # AV-Digits audio is not augmented
    assert r["modes"]["off"]["samples_per_s"] > 0 and "0 worker(s)" in r["modes"]["off"]["data_pipeline"]


class _FirstUseMode:
    """A set-up whose first step pays a one-off cost of 1 s (as a process's first optimizer, backward
    and kernels do) and whose other steps cost nothing."""

    device = torch.device("cpu")
    cache_build_s = 0.0
    plan = SpeedPlan()

    def __init__(self):
        self.calls = 0

    def step(self, timed=None):
        import time

        self.calls += 1
        if self.calls == 1:
            time.sleep(1.0)
        if timed:
            for phase in ("data", "teacher_forward", "student_forward_backward", "optimizer"):
                timed(phase)

    def count_flops(self):
        return 10**6


def test_speed_keeps_first_use_costs_out_of_the_timed_repeats():
    """The warm-up steps absorb the first-use cost; the timed blocks never see it; every repeat is
    recorded and samples/s is the median repeat's (with the spread beside it)."""
    import statistics

    from bench.train.benchmark import _measure

    mode = _FirstUseMode()
    out = _measure(mode, 4, 2, 8, None, repeats=5)
    t = out["timing"]
    assert mode.calls == 2 + 5 * 4 + 4  # warm-up, the timed blocks, the instrumented breakdown pass
    assert (t["repeats"], t["steps_per_repeat"], len(t["repeat_step_ms"]), len(t["warmup_step_ms"])) == (5, 4, 5, 2)
    assert t["warmup_step_ms"][0] >= 1000  # the one-off cost, kept apart
    assert max(t["repeat_step_ms"]) < 250  # it would be >= 250 ms per step in any block that held it
    med = statistics.median(t["repeat_step_ms"])
    assert t["median_step_ms"] == out["step_ms"] == med
    assert out["samples_per_s"] == pytest.approx(1000 * 8 / med)
    assert t["min_step_ms"] <= med <= t["max_step_ms"] and t["iqr_step_ms"] >= 0
    assert t["samples_per_s_range"] == pytest.approx([8000 / t["max_step_ms"], 8000 / t["min_step_ms"]])


def test_bench_speed_warms_the_process_up_before_the_first_method(tmp_path, monkeypatch):
    """The process-level warm-up runs before the first method is built (not inside its timing), once
    per process; the JSON holds the repeats, the warm-up, the environment and the load average."""
    import json

    from typer.testing import CliRunner

    from bench.cli import app
    from bench.train import benchmark as bm

    monkeypatch.setattr(bm, "_WARM", set())  # a fresh process as far as the warm-up knows
    order = []
    real_warm, real_bench = bm.warm_up_process, bm.benchmark
    monkeypatch.setattr(bm, "warm_up_process", lambda dev: order.append("process warm-up") or real_warm(dev))
    monkeypatch.setattr(bm, "benchmark", lambda *a, **k: order.append(a[1]) or real_bench(*a, **k))
    out = tmp_path / "speed.json"
    res = CliRunner().invoke(app, ["speed", "--methods", "none,logit", "--dataset", "synthetic", "--directions", "a2v",
                                   "--steps", "2", "--warmup", "1", "--repeats", "3", "--modes", "on",
                                   "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert order == ["process warm-up", "none", "logit"]
    d = json.loads(out.read_text())
    assert d["process_warmup_s"] > 0 and bm.warm_up_process(torch.device("cpu")) is None  # once per process
    assert d["environment"]["threads"] == torch.get_num_threads()
    assert set(d["load_average"]) == {"before", "after", "cores"}
    for r in d["results"]:
        t = r["modes"]["on"]["timing"]
        assert r["repeats"] == 3 and len(t["repeat_step_ms"]) == 3 and len(t["warmup_step_ms"]) == 1
        assert r["modes"]["on"]["samples_per_s"] == pytest.approx(1000 * r["batch_size"] / t["median_step_ms"])
