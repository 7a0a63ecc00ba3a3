"""The CUDA-only paths of the runner, each checked against the fp32 eager result on the same GPU.

Every speed feature is on by default on CUDA (``bench.train.acceleration``), so these tests are what says the
GPU numbers can be trusted: bf16 autocast + channels_last, fp16 + GradScaler (saved and resumed),
pinned-memory prefetching on a side stream, GPU-resident data, fused optimizers, the AV adapters'
GPU-side augmentation, the teacher-output cache, several runs packed on one GPU, ``bench speed``'s
MFU, and deterministic mode.

Tolerances, in three kinds:

* **exact** (``==`` on whole histories) where the two set-ups run the same kernels on the same
  values and only differ in *where* or *when* the data move (placement, prefetch, cache, packing,
  resume, reruns): any difference is a bug (a race, a missed synchronisation, lost state);
* **rounding-level** where the kernels differ but compute the same function in fp32 (fused vs
  foreach optimizers, NCHW vs NHWC convolutions, CUDA vs CPU), bounded by float32 rounding; these
  comparisons turn TF32 off (cuDNN rounds fp32 convolution operands to a 10-bit mantissa by
  default, and one kernel doing so while the other does not would differ by ~5e-4, not ~6e-8);
* **statistical** where the precision changes (bf16/fp16): the first step's loss within the
  format's rounding error, and final accuracy within what two runs differing by noise can differ.

Without a GPU the module is skipped. ``CMKD_TEST_CUDA_ON_CPU=1`` runs the same bodies on the CPU
(a development aid: it exercises imports, fixtures, the call sequence and every device-independent
assertion); assertions that only hold on CUDA sit under ``if CUDA:``. Sized to run in well under
four minutes on one H100.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from conftest import tiny

from bench.api.config import TrainConfig, build_params
from bench.api.method import MethodContext
from bench.api.registry import METHODS
from bench.data import Split
from bench.train.acceleration import SpeedPlan, all_off, frozen_forward, to_channels_last
from bench.train.loop import load_splits
from bench.train.placement import BatchSource
from bench.train.resolve import RunSpec, build_adapter, build_train_config, resolve
from bench.train.run import NullReporter, run
from bench.train.step import Trainer, make_optimizer, probe_outputs
from bench.train.teacher_outputs import TeacherOutputs

ON_CPU = os.environ.get("CMKD_TEST_CUDA_ON_CPU") == "1"
DEV = "cpu" if ON_CPU else "cuda"
CUDA = DEV == "cuda"

pytestmark = pytest.mark.skipif(
    not (ON_CPU or torch.cuda.is_available()),
    reason="needs a CUDA device (torch.cuda.is_available() is False); "
           "CMKD_TEST_CUDA_ON_CPU=1 runs the same bodies on the CPU as a development aid",
)

# Rounding-level comparisons of fp32 paths run with TF32 off (the ``full_fp32`` fixture): cuDNN
# rounds fp32 convolution operands to TF32 (10-bit mantissa, ~5e-4) by default, and a kernel that
# does vs one that does not would differ by that, not by float32 rounding (~6e-8).
FP32_REL = 1e-4
"""fp32 vs fp32 with other kernels (NHWC, another device): float32 rounding through a dozen layers
and training-mode batch norm (which divides by small batch spreads), with a 100x margin."""
BF16_REL = 3e-2
"""bf16 has an 8-bit mantissa (2^-9 ~ 2e-3 per rounding); the first loss of a freshly initialised
network (every loss is computed in fp32 from bf16 activations) moves by a few roundings of the
logits, far inside 3e-2."""
FP16_REL = 1e-2
"""fp16: 11-bit mantissa (2^-12 ~ 2.4e-4), so about 8x tighter than bf16; 1e-2 keeps the margin."""

# What seed_everything sets before a run's first GEMM, set before this module's first one too (the
# first-step helpers multiply before any run), so that this process and the `bench run` processes
# the tests start use the same cuBLAS workspace and so the same GEMM kernels.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


@pytest.fixture
def full_fp32():
    """TF32 off for this test (restored afterwards, also when it fails)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _device() -> torch.device:
    return torch.device(DEV)


def _spec(results: Path, method: str, extra: dict | None = None, seed: int = 0, direction=("audio", "visual"),
          dataset: str = "synthetic", overrides: dict | None = None) -> RunSpec:
    ov = overrides if overrides is not None else tiny(extra)
    return RunSpec(dataset, direction[0], direction[1], method, seed, ov, str(results), DEV)


def _ok(rec: dict) -> dict:
    assert rec["status"] == "ok", rec.get("traceback")
    if CUDA:
        assert rec["device"].startswith("cuda:"), rec["device"]
    return rec


def _trace(rec: dict) -> list:
    """Everything a run computes per epoch (not its wall time)."""
    return [(h["epoch"], h["lr"], h["train_loss"], h["terms"], h["val_metric"], h["test_metric"]) for h in rec["history"]]


def _plan(rec: dict) -> dict:
    """The resolved speed settings of a run (not its memory figures, which depend on what was free)."""
    keys = ("amp", "channels_last", "data_placement", "prefetch", "non_blocking", "compile", "fused_optim",
            "teacher_inference", "teacher_cache", "teacher_cache_fields")
    return {k: rec["speed"][k] for k in keys}


FP32 = {"amp": "off", "channels_last": "off"}
"""Speed features that change numerics, off: what stays on only moves data."""


def _samples_within(a: float, b: float, n: int, k: int) -> bool:
    """Two accuracies (%) on ``n`` samples differ by at most ``k`` samples."""
    return abs(a - b) <= 100.0 * k / n + 1e-9


# --------------------------------------------------------------------------------------------
# one training step from fresh models (for rounding-level comparisons)

def _first_step(adapter, train, split, t_mod: str, s_mod: str, method_name: str, plan: SpeedPlan,
                device: torch.device, seed: int = 0) -> dict:
    """The first training step's loss from models initialised on the CPU under ``seed`` (so every
    device and plan starts from the same weights), on the first shuffled batch of ``seed``."""
    torch.manual_seed(seed)
    k = adapter.num_classes
    student = adapter.build_model(s_mod, k).to(device)
    teacher = adapter.build_model(t_mod, k).to(device)
    mcls = METHODS.get(method_name)
    method = mcls(mcls.Params(), MethodContext(k, train.epochs, adapter.task, t_mod, s_mod, device, adapter.ignore_index))
    s_probe, t_probe = probe_outputs(adapter, split, student, teacher, s_mod, t_mod, device)
    method.setup(student, teacher, s_probe, t_probe)
    method.modules.to(device)
    teacher.eval()
    eng = Trainer(adapter=adapter, train_split=split, student=student, student_modality=s_mod, method=method,
                  teacher=teacher, teacher_modality=t_mod, train=train, device=device, plan=plan)
    gen = torch.Generator().manual_seed(seed)
    it = eng.src.iterate(eng.batches(gen))
    s_like, li, idx = next(it)
    it.close()
    xb, y, t_idx = eng.inputs(s_like, li, idx, gen)
    total, terms = eng.student_step(xb, eng.teacher_out(xb, t_idx), y, 1)
    with torch.no_grad(), plan.autocast(device):
        out_dtype = eng.student_fwd(to_channels_last(xb[s_mod], plan)).logits.dtype
    return {"loss": float(total.detach()), "terms": {k: float(v.detach()) for k, v in terms.items()}, "dtype": out_dtype,
            "engine": eng, "student": student}


def _synthetic(extra: dict | None = None):
    ov = tiny(extra)
    adapter = build_adapter("synthetic", ov)
    train = build_train_config(adapter, ov)
    return adapter, train, load_splits(adapter, train)["train"]


# --------------------------------------------------------------------------------------------
# bf16 autocast on tensor cores, channels_last

def test_bf16_channels_last_first_step_and_accuracy(tmp_path, full_fp32):
    """bf16 + channels_last against fp32 NCHW from the same weights and batch: the student really
    computes in bf16 with NHWC weights, the first loss agrees within bf16 rounding, and after a
    whole (tiny) run the final accuracy is within noise of the fp32 run's."""
    dev = _device()
    adapter, train, split = _synthetic()
    ref = _first_step(adapter, train, split, "audio", "visual", "fdcmkd", all_off(), dev)
    fast_plan = SpeedPlan(amp="bf16", channels_last=True, teacher_inference=True, non_blocking=CUDA)
    fast = _first_step(adapter, train, split, "audio", "visual", "fdcmkd", fast_plan, dev)
    assert ref["dtype"] == torch.float32 and fast["dtype"] == torch.bfloat16
    conv = fast["student"].stem[0].weight
    assert conv.dim() == 4 and conv.is_contiguous(memory_format=torch.channels_last)
    assert not ref["student"].stem[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert fast["loss"] == pytest.approx(ref["loss"], rel=BF16_REL), (fast["terms"], ref["terms"])
    assert fast["loss"] != ref["loss"]  # bf16 really ran

    # Whole runs are chaotic (a rounding difference grows into a different trajectory within a few
    # epochs), so bf16 must stay within what fp32 runs differing by noise differ by, the criterion
    # of tests/test_speed.py: 3 standard errors of a difference of two accuracies on the 1200 test
    # samples (100*sqrt(2p(1-p)/n) <= 2.0 points) plus the spread of two fp32 seeds. (Measured on
    # the CPU: fp32 seeds 0/1 24.8/29.1 %, bf16 27.3/27.7 %; teachers 49.6/47.8 vs 49.2/49.5 %.)
    data = {"synthetic": {"n_test": "1200"}}
    fp32 = [_ok(run(_spec(tmp_path / "fp32", "fdcmkd", {**data, "train": {"speed": "off"}}, seed=s))) for s in (0, 1)]
    bf16 = _ok(run(_spec(tmp_path / "bf16", "fdcmkd", {**data, "train": {"amp": "bf16", "channels_last": "on"}})))
    assert bf16["speed"]["amp"] == "bf16" and bf16["speed"]["channels_last"] is True
    assert fp32[0]["speed"]["amp"] == "off" and bf16["run_id"] == fp32[0]["run_id"]
    for what, get in (("student", lambda r: r["final_metric"]), ("teacher", lambda r: r["teacher"]["test_metric"])):
        a, b = get(bf16), get(fp32[0])
        p = (a + b) / 200
        bound = 3 * 100 * math.sqrt(2 * p * (1 - p) / 1200) + abs(get(fp32[0]) - get(fp32[1]))
        assert abs(a - b) <= bound, (what, a, b, bound)
    assert all(math.isfinite(h["train_loss"]) for h in bf16["history"])


def test_channels_last_fp32_is_the_same_function(full_fp32):
    """NHWC vs NCHW in fp32: different convolution kernels, same function (rounding-level)."""
    dev = _device()
    adapter, train, split = _synthetic()
    ref = _first_step(adapter, train, split, "audio", "visual", "logit", all_off(), dev)
    nhwc = _first_step(adapter, train, split, "audio", "visual", "logit", SpeedPlan(channels_last=True), dev)
    assert nhwc["dtype"] == torch.float32
    assert nhwc["loss"] == pytest.approx(ref["loss"], rel=FP32_REL)


# --------------------------------------------------------------------------------------------
# fp16 + GradScaler

class _ScalerSnapshots(NullReporter):
    """After each student epoch (the checkpoint is written just before), read the GradScaler state
    stored in the run's real checkpoint; optionally interrupt like Ctrl-C after epoch ``stop``."""

    def __init__(self, ckpt: Path, stop: int | None = None):
        self.ckpt, self.stop, self.scaler = ckpt, stop, {}

    def epoch(self, run_id, phase, epoch, info):
        if phase != "student":
            return
        self.scaler[epoch] = torch.load(self.ckpt, map_location="cpu", weights_only=False)["scaler"]
        if epoch == self.stop:
            raise KeyboardInterrupt


def test_fp16_gradscaler_first_step_and_resume(tmp_path, full_fp32):
    """fp16 autocast with a GradScaler: the first loss agrees with fp32 within fp16 rounding; the
    scaler's state is in every checkpoint and an interrupted run resumes it, so interrupt + resume
    gives exactly the uninterrupted history and the same scaler state at every epoch."""
    dev = _device()
    adapter, train, split = _synthetic()
    ref = _first_step(adapter, train, split, "audio", "visual", "fdcmkd", all_off(), dev)
    half = _first_step(adapter, train, split, "audio", "visual", "fdcmkd", SpeedPlan(amp="fp16", teacher_inference=True), dev)
    assert half["dtype"] == torch.float16 and half["engine"].scaler is not None
    assert half["engine"].scaler.is_enabled()
    assert half["loss"] == pytest.approx(ref["loss"], rel=FP16_REL)

    extra = {"train": {"epochs": "4", "amp": "fp16"}}
    s_full, s_cut = _spec(tmp_path / "full", "fdcmkd", extra), _spec(tmp_path / "cut", "fdcmkd", extra)
    rid = resolve(s_full).run_id
    full_snap = _ScalerSnapshots(tmp_path / "full" / "checkpoints" / f"{rid}.pt")
    full = _ok(run(s_full, full_snap))
    assert full["speed"]["amp"] == "fp16"
    ckpt = tmp_path / "cut" / "checkpoints" / f"{rid}.pt"
    cut = _ScalerSnapshots(ckpt, stop=2)
    with pytest.raises(KeyboardInterrupt):
        run(s_cut, cut)
    again = _ScalerSnapshots(ckpt, stop=3)  # resumes at epoch 3, stops after it
    with pytest.raises(KeyboardInterrupt):
        run(s_cut, again)
    last = _ScalerSnapshots(ckpt)
    resumed = _ok(run(s_cut, last))
    assert resumed["resumed_from_epoch"] == 3
    assert _trace(resumed) == _trace(full)
    for e in (1, 2, 3, 4):
        state = full_snap.scaler[e]
        assert state and state["scale"] > 0 and "_growth_tracker" in state, state
    assert cut.scaler[2] == full_snap.scaler[2]
    # a scaler that were not restored would start again at growth tracker 0 and scale 2^16
    assert again.scaler[3] == full_snap.scaler[3] and last.scaler[4] == full_snap.scaler[4]
    assert full_snap.scaler[3] != full_snap.scaler[2]
    assert not ckpt.exists()


# --------------------------------------------------------------------------------------------
# data placement: pinned RAM + side-stream prefetch, device-resident, streamed

def test_placements_equal_speed_off_exactly(tmp_path):
    """pinned (prefetch thread, side CUDA stream), device (GPU-resident) and stream (memory map,
    prefetched) only move data: with numerics-changing features off, every history equals the
    all-off run's exactly."""
    base = _ok(run(_spec(tmp_path, "fdcmkd", {"train": {"speed": "off"}})))
    assert base["speed"]["data_placement"] == "stream" and not base["speed"]["prefetch"]
    for placement in ("device", "pinned", "stream"):
        rec = _ok(run(_spec(tmp_path, "fdcmkd", {"train": {**FP32, "fused_optim": "off", "teacher_cache": "off",
                                                           "data_placement": placement}}), force=True))
        assert rec["speed"]["data_placement"] == placement
        assert rec["speed"]["prefetch"] == (placement != "device")
        assert rec["speed"]["non_blocking"] == CUDA
        assert _trace(rec) == _trace(base), placement
        if placement == "device":  # the run's arrays were copied to the GPU once and stay there
            placed = [t for (_sid, _k, dev, _pin), (_s, t) in BatchSource._placed.items() if dev == DEV]
            assert placed and all(t.device.type == DEV for t in placed)


def test_pinned_prefetch_on_side_stream_delivers_every_batch_intact():
    """The prefetch thread copies batches on a side stream while the training stream is busy: each
    batch must arrive complete (the event wait and record_stream keep it valid)."""
    dev = _device()
    n, d = (256, 2**16) if CUDA else (64, 2**10)
    x = torch.randn(n, d)
    split = Split({"a": x}, torch.arange(n) % 5)
    plan = SpeedPlan(data_placement="pinned", prefetch=True, non_blocking=CUDA)
    src = BatchSource(split, ["a"], dev, plan)
    if CUDA:
        assert src.src.inputs["a"].is_pinned()
    g = torch.Generator().manual_seed(0)
    batches = [torch.randperm(n, generator=g)[:32] for _ in range(24)]
    busy = torch.randn(2048, 2048, device=dev) if CUDA else None
    for s, li, idx in src.iterate(batches):
        if busy is not None:
            for _ in range(4):  # keep the training stream busy while the next copies run
                busy = torch.tanh(busy @ busy * 1e-3)
        got = s.inputs["a"][li]
        assert got.device.type == DEV
        assert torch.equal(got.cpu(), x[idx])


# --------------------------------------------------------------------------------------------
# fused optimizers

@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_fused_optimizer_step_matches_unfused(optimizer):
    """Three steps of the fused kernel vs the default (foreach) one on the same parameters and
    gradients: the same update up to a few float32 roundings (1e-6 relative)."""
    dev = _device()
    train = build_params(TrainConfig, {"optimizer": optimizer, "lr": "0.05", "weight_decay": "5e-4"}, "train")
    g = torch.Generator().manual_seed(0)
    init = [torch.randn(64, 32, generator=g), torch.randn(32, generator=g), torch.randn(8, 3, 3, 3, generator=g)]
    grads = [[torch.randn(p.shape, generator=g) for p in init] for _ in range(3)]
    out = {}
    for fused in (True, False):
        params = [torch.nn.Parameter(p.clone().to(dev)) for p in init]
        opt = make_optimizer(train, params, dev, fused=fused)
        assert bool(opt.defaults.get("fused")) is fused
        for step in grads:
            for p, gr in zip(params, step):
                p.grad = gr.to(dev)
            opt.step()
        out[fused] = [p.detach().cpu() for p in params]
    for a, b in zip(out[True], out[False]):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_fused_optimizer_run_matches_unfused(tmp_path):
    """One student epoch with fused vs foreach SGD from the same (shared) teacher: per-step rounding
    differences (the test above) stay rounding-level over an epoch's steps: loss within 1e-3
    relative (the bound the compile test uses), at most two of the 180 test predictions flip.
    (Longer runs are chaotic: a 1e-7 difference can grow to percent-level losses within a few
    epochs, so whole-run agreement is a statistical question, as for bf16.)"""
    recs = {}
    for fused in ("on", "off"):
        recs[fused] = _ok(run(_spec(tmp_path, "logit", {"train": {**FP32, "epochs": "1", "fused_optim": fused}}),
                              force=True))
        assert recs[fused]["speed"]["fused_optim"] is (fused == "on")
    assert recs["on"]["teacher"]["checkpoint"] == recs["off"]["teacher"]["checkpoint"]
    (a,), (b,) = recs["on"]["history"], recs["off"]["history"]
    assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-3)
    assert _samples_within(a["test_metric"], b["test_metric"], 180, 2)


# --------------------------------------------------------------------------------------------
# audio-visual adapters: GPU-side augmentation, GPU-resident data

@pytest.fixture(scope="module")
def av_caches(tmp_path_factory):
    """Tiny CREMA-D and VGGSound folders in their real layouts (the dataset tests' writers),
    prepared into caches once for this module."""
    from test_dataset_ave_vgg import make_vgg
    from test_dataset_crema import make_crema

    root = tmp_path_factory.mktemp("av")
    small = {"frame_cache": "24", "image_size": "20", "width": "4"}
    out = {}
    for name, make in (("crema", make_crema), ("vggsound", make_vgg)):
        make(root / name / "raw")
        ov = {name: {"root": str(root / name / "raw"), "cache": str(root / name / "cache"), **small},
              "train": {"batch_size": "4", "epochs": "1", "teacher_epochs": "1", "val_fraction": "0.25"}}
        build_adapter(name, ov).prepare()
        out[name] = ov
    return out


@pytest.mark.parametrize("name", ["crema", "vggsound"])
def test_av_augmentation_on_device_matches_cpu(av_caches, name):
    """The same generator state gives the same crops/flips/frame choices/audio crops on the GPU as on
    the CPU (every random draw is made on the CPU); the resampled pixels agree far below one grey
    level (1/255/0.225 ~ 0.017 after normalisation) and the spectrogram magnitudes within fp32 FFT
    rounding (1e-5 of the largest bin)."""
    ov = av_caches[name]
    adapter = build_adapter(name, ov)
    split = adapter.load()["train"]
    idx = torch.arange(min(6, len(split)))
    got = {}
    for dev in ("cpu", DEV):
        xs, y = adapter.batch(split, idx, ["audio", "visual"], torch.device(dev), True, torch.Generator().manual_seed(3))
        got[dev] = ({k: v.cpu() for k, v in xs.items()}, y.cpu())
        assert all(v.device.type == dev for v in xs.values())
    (cpu_x, cpu_y), (dev_x, dev_y) = got["cpu"], got[DEV]
    assert torch.equal(cpu_y, dev_y)
    torch.testing.assert_close(dev_x["visual"], cpu_x["visual"], rtol=1e-4, atol=1e-4)
    if name == "vggsound":  # recipe C: random 5-s crop + log-STFT on the batch's device
        mag_d, mag_c = dev_x["audio"].exp(), cpu_x["audio"].exp()
        assert (mag_d - mag_c).abs().max() <= 1e-5 * mag_c.max() + 1e-6
    else:  # recipe A spectrograms are cached: only converted on the device
        assert torch.equal(dev_x["audio"], cpu_x["audio"])
    ev = {dev: adapter.batch(split, idx, ["visual"], torch.device(dev), False, None)[0]["visual"].cpu() for dev in ("cpu", DEV)}
    torch.testing.assert_close(ev[DEV], ev["cpu"], rtol=1e-4, atol=1e-4)  # eval resize (antialiased)


def test_av_first_step_on_device_matches_cpu(av_caches, full_fp32):
    """The whole first step (GPU-side augmentation, forward, FD-CMKD's losses) on the GPU vs the CPU,
    fp32 without TF32, same weights and batch: within float32 rounding."""
    ov = av_caches["crema"]
    adapter = build_adapter("crema", ov)
    train = build_train_config(adapter, ov)
    split = load_splits(adapter, train)["train"]
    res = {dev: _first_step(adapter, train, split, "audio", "visual", "fdcmkd", all_off(), torch.device(dev))
           for dev in ("cpu", DEV)}
    assert res[DEV]["loss"] == pytest.approx(res["cpu"]["loss"], rel=FP32_REL if CUDA else 0)
    scale = abs(res["cpu"]["loss"])
    for k, v in res["cpu"]["terms"].items():  # each term within FP32_REL of the step's loss
        assert abs(res[DEV]["terms"][k] - v) <= (FP32_REL * scale if CUDA else 0), (k, res[DEV]["terms"][k], v)


def test_av_runs_with_device_resident_data(tmp_path, av_caches):
    """CREMA-D with the CUDA defaults (data on the GPU, augmentation there, bf16, cached audio
    teacher) trains; in fp32 the device-resident and the streamed data give the same run exactly;
    VGGSound's randomly cropped audio is never cached."""
    ov = av_caches["crema"]
    rec = _ok(run(_spec(tmp_path / "auto", "fdcmkd", dataset="crema", overrides=ov)))
    sp = rec["speed"]
    assert sp["data_placement"] == "device" and sp["teacher_cache"] is True
    assert sp["amp"] == ("bf16" if CUDA else "off") and sp["channels_last"] is CUDA
    assert all(math.isfinite(h["train_loss"]) for h in rec["history"])
    fp32 = {**ov, "train": {**ov["train"], **FP32}}
    exact = [_ok(run(_spec(tmp_path / "exact", "fdcmkd", dataset="crema",
                           overrides={**fp32, "train": {**fp32["train"], "data_placement": p}}), force=True))
             for p in ("device", "stream")]
    assert [r["speed"]["data_placement"] for r in exact] == ["device", "stream"]
    assert _trace(exact[0]) == _trace(exact[1])
    vgg = _ok(run(_spec(tmp_path / "vgg", "feat", dataset="vggsound", overrides=av_caches["vggsound"])))
    assert vgg["speed"]["teacher_cache"] is False and "augmented" in vgg["speed"]["teacher_cache_reason"]
    assert vgg["speed"]["data_placement"] == "device"


# --------------------------------------------------------------------------------------------
# teacher-output cache

@pytest.mark.parametrize("method", ["logit", "fdcmkd"])
def test_teacher_cache_equals_recomputed_teacher(tmp_path, method):
    """fp32, everything else at the CUDA defaults: the cached teacher outputs are the recomputed ones,
    so the whole history is identical. The cache pass and the training steps run the teacher on
    batches of the same shape (eval_batch_size = batch_size, a divisor of the training split), so
    the GPU runs the same kernels on every sample either way."""
    b = 24
    extra = {"train": {**FP32, "batch_size": str(b), "eval_batch_size": str(b)}}
    _, _, split = _synthetic(extra)
    assert len(split) % b == 0, len(split)
    on = _ok(run(_spec(tmp_path, method, {"train": {**extra["train"], "teacher_cache": "on"}})))
    off = _ok(run(_spec(tmp_path, method, {"train": {**extra["train"], "teacher_cache": "off"}}), force=True))
    assert on["speed"]["teacher_cache"] is True and off["speed"]["teacher_cache"] is False
    assert on["teacher"]["checkpoint"] == off["teacher"]["checkpoint"]
    assert _trace(on) == _trace(off)


@pytest.mark.parametrize("tf32", [False, True])
def test_teacher_cache_at_default_batch_sizes(tf32):
    """The cache pass at the default evaluation batch (256) vs the teacher run on training batches
    (32). Exact on the CPU; on the GPU another batch shape may get another kernel: in full fp32 the
    outputs then differ by float32 accumulation order (bound 1e-5 of the norm); with TF32 (cuDNN's
    default) one kernel may round operands to TF32 and the other not (bound 1e-2). A warning says
    when they are not bit-identical, since the module docstring of bench.train.teacher_outputs claims exactness."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        _check_cache_vs_live(1e-2 if tf32 else 1e-5, f"TF32 {'on' if tf32 else 'off'}")
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _check_cache_vs_live(bound: float, label: str) -> None:
    dev = _device()
    adapter, train, split = _synthetic()
    torch.manual_seed(0)
    teacher = adapter.build_model("audio", adapter.num_classes).to(dev).eval()
    plan = SpeedPlan(teacher_inference=True)
    last = len(probe_outputs(adapter, split, teacher, None, "audio", None, dev)[0].feature_maps) - 1
    fields = {"logits", "feature", f"feature_maps[{last}]"}
    cache = TeacherOutputs.compute(teacher, adapter, split, "audio", fields, plan, dev, train.eval_batch_size)
    worst, exact = 0.0, True
    for idx in torch.randperm(len(split), generator=torch.Generator().manual_seed(1)).split(train.batch_size):
        xs, _ = adapter.batch(split, idx, ["audio"], dev, True, None)
        live, cached = frozen_forward(teacher, xs["audio"], plan, dev), cache.take(idx)
        for a, c in ((live.logits, cached.logits), (live.feature, cached.feature),
                     (live.feature_maps[last], cached.feature_maps[last])):
            exact &= torch.equal(a, c)
            worst = max(worst, float((a - c).norm() / a.norm().clamp_min(1e-12)))
    if CUDA and not exact:
        warnings.warn(f"teacher cache on CUDA ({label}) at eval_batch_size {train.eval_batch_size} vs batch_size "
                      f"{train.batch_size}: not bit-identical (relative error {worst:.2e})", stacklevel=1)
    assert worst <= (bound if CUDA else 0.0), worst


# --------------------------------------------------------------------------------------------
# several runs per GPU

def test_packed_runs_on_one_gpu_equal_one_at_a_time(tmp_path):
    """``bench run --runs-per-gpu 2 --device cuda``: two worker processes share the GPU; every
    record equals the one-at-a-time run's exactly, and the shared teacher is trained once.
    (CPU development mode: a packed worker gets half the CPU threads, so CPU reductions may round
    differently; there only the test metrics must match, as in tests/test_speed.py.)"""
    from typer.testing import CliRunner

    from bench.cli import app
    from bench.records.store import load_records

    common = ["--methods", "none,logit,fdcmkd,dkd", "--datasets", "synthetic", "--directions", "a2v", "--epochs", "2",
              "--teacher-epochs", "2", "--set", "synthetic.n_train=480", "--set", "synthetic.n_test=180",
              "--set", "synthetic.width=8", "--device", DEV]
    for k, sub in (("1", "seq"), ("2", "packed")):
        r = CliRunner().invoke(app, ["run", *common, "-r", str(tmp_path / sub), "--runs-per-gpu", k])
        assert r.exit_code == 0, r.output
    seq = {r["method"]: _ok(r) for r in load_records(tmp_path / "seq")}
    packed = {r["method"]: _ok(r) for r in load_records(tmp_path / "packed")}
    assert set(seq) == set(packed) == {"none", "logit", "fdcmkd", "dkd"}
    for m in seq:
        assert packed[m]["run_id"] == seq[m]["run_id"] and packed[m]["speed"]["runs_per_gpu"] == 2
        assert _plan(packed[m]) == _plan(seq[m]), m
        if CUDA:
            assert _trace(packed[m]) == _trace(seq[m]), m
        else:
            assert [h["test_metric"] for h in packed[m]["history"]] == [h["test_metric"] for h in seq[m]["history"]]
            assert [h["train_loss"] for h in packed[m]["history"]] == \
                pytest.approx([h["train_loss"] for h in seq[m]["history"]], rel=1e-6)
    assert len(list((tmp_path / "packed" / "teachers").rglob("*.pt"))) == 1


# --------------------------------------------------------------------------------------------
# bench speed

def test_bench_speed_reports_mfu_and_breakdown(tmp_path):
    """``bench speed --methods fdcmkd --dataset crema --steps 3 --warmup 1``: on CUDA the speed
    features resolve as documented, MFU is a fraction in (0, 1] of the device's bf16 peak, the
    step breakdown sums to 100 % and the JSON carries every field the README documents."""
    import json

    from typer.testing import CliRunner

    from bench.cli import app
    from bench.train.benchmark import device_peak_tflops

    out = tmp_path / "speed.json"
    args = ["speed", "--methods", "fdcmkd", "--dataset", "crema", "--steps", "3", "--warmup", "1", "--json", str(out),
            "--device", DEV]
    if not CUDA:  # CPU-sized shapes (the development aid only checks the plumbing)
        args += ["--directions", "a2v", "--batch-size", "2", "--workers", "1", "--set", "crema.image_size=64"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    d = json.loads(out.read_text())
    assert set(d) >= {"results", "grid_estimate", "created"} and d["results"]
    for r in d["results"]:
        assert set(r) >= {"device", "device_type", "torch", "dataset", "method", "direction", "batch_size", "steps",
                          "warmup", "loader_workers", "input_shapes", "peak_tflops", "peak_basis", "modes", "speedup"}
        assert r["device_type"] == DEV and r["steps"] == 3 and r["warmup"] == 1
        on, off = r["modes"]["on"], r["modes"]["off"]
        assert r["speedup"] == pytest.approx(on["samples_per_s"] / off["samples_per_s"])
        for m in (on, off):
            assert set(m) >= {"samples_per_s", "step_ms", "breakdown_ms", "breakdown_pct", "flops_per_step", "tflops",
                              "mfu", "peak_memory_gib", "peak_memory_kind", "teacher_cache_build_s", "settings",
                              "data_pipeline", "eval_samples_per_s"}
            assert set(m["breakdown_pct"]) == {"data", "teacher_forward", "student_forward_backward", "optimizer"}
            assert sum(m["breakdown_pct"].values()) == pytest.approx(100)
            assert m["samples_per_s"] > 0 and m["flops_per_step"] > 0 and m["tflops"] > 0
            if CUDA:
                assert isinstance(m["mfu"], float) and 0 < m["mfu"] <= 1, m["mfu"]
                assert m["peak_memory_kind"] == "torch.cuda.max_memory_allocated" and m["peak_memory_gib"] > 0
            else:
                assert m["mfu"] is None
        assert off["settings"]["amp"] == "off" and "DataLoader" in off["data_pipeline"]
        if CUDA:
            name = torch.cuda.get_device_name(0)
            assert r["device"] == name
            peak = device_peak_tflops(torch.device("cuda"))
            assert peak is not None, f"{name} is not in bench.train.benchmark.PEAK_TFLOPS: MFU cannot be reported"
            assert r["peak_tflops"] == peak
            s = on["settings"]
            assert (s["amp"], s["channels_last"], s["fused_optim"], s["data_placement"]) == \
                ("bf16" if torch.cuda.is_bf16_supported() else "fp16", True, True, "device")
    assert set(d["grid_estimate"]) == {"on", "off"} and d["grid_estimate"]["on"]["student_runs_hours"] > 0


# --------------------------------------------------------------------------------------------
# deterministic mode

def test_deterministic_reruns_are_bit_identical(tmp_path):
    """Two fresh ``bench run`` processes with the same arguments (speed features at their CUDA
    defaults, deterministic mode on, CUBLAS_WORKSPACE_CONFIG left to seed_everything) write
    bit-identical teachers and histories."""
    env = {k: v for k, v in os.environ.items() if k != "CUBLAS_WORKSPACE_CONFIG"}
    env["PYTHONWARNINGS"] = "default"
    logs = []
    for sub in ("a", "b"):
        cmd = [sys.executable, "-m", "bench.cli", "run", "--methods", "none,logit,fdcmkd", "--datasets", "synthetic",
               "--directions", "a2v", "--epochs", "2", "--teacher-epochs", "2", "--set", "synthetic.n_train=480",
               "--set", "synthetic.n_test=180", "--set", "synthetic.width=8", "--device", DEV,
               "-r", str(tmp_path / sub)]
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
        logs.append(p.stderr)
    from bench.records.store import load_records

    a = {r["method"]: _ok(r) for r in load_records(tmp_path / "a")}
    b = {r["method"]: _ok(r) for r in load_records(tmp_path / "b")}
    assert set(a) == set(b) == {"none", "logit", "fdcmkd"}
    for m in a:
        assert _trace(a[m]) == _trace(b[m]), m
        assert _plan(a[m]) == _plan(b[m])
    ta = sorted((tmp_path / "a" / "teachers").rglob("*.pt"))
    tb = sorted((tmp_path / "b" / "teachers").rglob("*.pt"))
    assert len(ta) == len(tb) == 1
    sa = torch.load(ta[0], map_location="cpu", weights_only=False)["model"]
    sb = torch.load(tb[0], map_location="cpu", weights_only=False)["model"]
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    log = "\n".join(logs)
    assert "CUBLAS_WORKSPACE_CONFIG" not in log  # seed_everything set it before the first GEMM
    nondet = sorted({line.strip() for line in log.splitlines() if "does not have a deterministic implementation" in line})
    for line in nondet:  # bit-identical anyway; listed so that the GPU report shows them
        warnings.warn(f"deterministic mode, warn_only: {line}", stacklevel=1)
