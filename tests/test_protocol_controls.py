"""Controls (issue #25): the label-smoothing and virtual-teacher methods of the ``Control`` category,
the ``--methods`` groups, and the two teacher modifiers (``train.teacher_control=shuffled|random``)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import tiny

from bench.api.errors import BenchError, ConfigError
from bench.api.registry import METHODS, select_methods
from bench.launch.grid import expand_grid
from bench.train.device import seed_everything
from bench.train.loop import load_splits
from bench.train.resolve import RunSpec, resolve
from bench.train.run import build_student_and_method, run
from bench.train.step import Trainer
from bench.train.teacher_outputs import shuffled_partners
from bench.train.teachers import build_network, random_teacher, teacher_path

KD_AND_BASELINE = {"none", "logit", "dist", "dml", "nkd", "dkd", "feat", "pkd", "ofd", "afd", "c2kd", "fdcmkd", "ucmkd",
                   "at", "sp", "pkt", "rkd", "nst", "cc", "kdsvd",  # #26's relation zoo, KD methods
                   "reviewkd", "mfh", "mgdfr", "crd", "vid", "discomkd"}  # #26: ReviewKD and the modality-general rankings


def _spec(method: str, tmp_path, extra: dict | None = None, epochs: str = "1") -> RunSpec:
    ov = tiny(extra)
    ov["train"]["epochs"] = epochs
    return RunSpec("synthetic", "audio", "visual", method, 0, ov, str(tmp_path), "cpu")


# -- the control methods and the --methods groups ------------------------------------------------

def test_methods_all_is_unchanged_and_controls_come_by_name():
    # `all` is every registered method but the controls: the methods of then plus those added since (#26)
    every_kd = {m for m in METHODS.names() if METHODS.get(m).category != "Control"}
    assert set(select_methods("all")) == every_kd and KD_AND_BASELINE <= every_kd
    assert select_methods("controls") == ["ls", "tfkd"]
    assert set(select_methods("all,controls")) == every_kd | {"ls", "tfkd"}
    assert select_methods("dkd, LS ,dkd") == ["dkd", "ls"]
    assert {METHODS.get(m).category for m in ("ls", "tfkd")} == {"Control"}
    # a method of a teacher set's mixture (MST-Distill) runs in `all` only on teacher-set directions
    needs_set = {m for m in every_kd if METHODS.get(m).requires_teacher_set}
    assert {s.method for s in expand_grid("all", "synthetic", "a2v", "0")} == every_kd - needs_set
    skipped: list[str] = []
    on_set = {s.method for s in expand_grid("all", "synthetic", "av2v", "0", skipped=skipped)}
    # the fusion teacher has no stage maps: the stage-map methods are left out with the reason
    left_out = {w.split(" ", 1)[0] for w in skipped}
    assert on_set == every_kd - left_out and needs_set | {"logit", "dkd", "fdcmkd", "none"} <= on_set
    assert {"at", "sp", "reviewkd", "vid"} <= left_out and all("has no stage maps" in w for w in skipped)
    assert {s.method for s in expand_grid("controls", "synthetic", "a2v", "0")} == {"ls", "tfkd"}
    with pytest.raises(BenchError, match="unknown method 'lss'"):
        select_methods("all,lss")


def test_label_smoothing_and_virtual_teacher_losses():
    from bench.methods.ls import ls_loss
    from bench.methods.tfkd import tfkd_reg_loss, virtual_teacher

    z = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]], dtype=torch.float64)
    y = torch.tensor([0, 2])
    logp = torch.log_softmax(z, 1)
    target = torch.full((2, 3), 0.1 / 3, dtype=torch.float64) + 0.9 * torch.nn.functional.one_hot(y, 3).double()
    assert ls_loss(z, y, 0.1).item() == pytest.approx(-(target * logp).sum(1).mean().item(), rel=1e-12)
    q = virtual_teacher(y, 3, 0.99, 20.0)
    p_d = torch.tensor([[0.99, 0.005, 0.005], [0.005, 0.005, 0.99]])
    assert torch.allclose(q, torch.softmax(p_d / 20.0, 1))  # the temperature divides the probabilities
    q = q.double()
    kl = (q * (q.log() - logp)).sum(1)
    assert tfkd_reg_loss(z, y).item() == pytest.approx(kl.mean().item() / 3, rel=1e-6)  # nn.KLDivLoss(): / (B*C)
    assert tfkd_reg_loss(z, y, reduction="batchmean").item() == pytest.approx(kl.mean().item(), rel=1e-6)


# -- teacher_control: identity and refusals -------------------------------------------------------

def test_teacher_control_is_hashed_only_off_its_default(tmp_path):
    base = resolve(_spec("logit", tmp_path))
    assert "teacher_control" not in base.config["train"]
    assert resolve(_spec("logit", tmp_path, {"train": {"teacher_control": "none"}})).config_hash == base.config_hash
    shuffled = resolve(_spec("logit", tmp_path, {"train": {"teacher_control": "shuffled"}}))
    rand = resolve(_spec("logit", tmp_path, {"train": {"teacher_control": "random"}}))
    assert shuffled.config["train"]["teacher_control"] == "shuffled" and rand.config["train"]["teacher_control"] == "random"
    assert len({base.config_hash, shuffled.config_hash, rand.config_hash}) == 3
    # a run without a teacher is the same run under any teacher control
    plain = resolve(_spec("none", tmp_path))
    assert resolve(_spec("none", tmp_path, {"train": {"teacher_control": "shuffled"}})).run_id == plain.run_id


def test_teacher_control_refusals(tmp_path):
    with pytest.raises(ConfigError, match="teacher_control must be none, shuffled or random"):
        resolve(_spec("logit", tmp_path, {"train": {"teacher_control": "permuted"}}))
    with pytest.raises(ConfigError, match="paired by class, not by sample"):
        resolve(RunSpec("avdigits", "audio", "visual", "logit", 0, {"train": {"teacher_control": "shuffled"}},
                        str(tmp_path), "cpu"))
    with pytest.raises(ConfigError, match="choose one"):
        resolve(_spec("logit", tmp_path, {"train": {"teacher_control": "shuffled", "pairing": "unpaired"}}))
    ck = tmp_path / "t.pt"
    torch.save({}, ck)
    with pytest.raises(ConfigError, match="cannot be combined with train.teacher_checkpoint"):
        resolve(_spec("logit", tmp_path, {"train": {"teacher_control": "random", "teacher_checkpoint": str(ck)}}))


# -- the shuffled teacher ---------------------------------------------------------------------------

def test_shuffled_partners_are_other_samples_of_the_same_class():
    labels = torch.tensor([0, 1, 0, 2, 1, 0, 2, 1, 1, 0])
    p = shuffled_partners(labels, 3)
    assert sorted(p.tolist()) == list(range(10))  # every sample's outputs are used exactly once
    assert all(int(p[i]) != i and int(labels[p[i]]) == int(labels[i]) for i in range(10))
    assert torch.equal(p, shuffled_partners(labels, 3))  # fixed by the seed
    assert any(not torch.equal(p, shuffled_partners(labels, s)) for s in range(4, 10))
    with pytest.raises(ConfigError, match="class 3 has 1 training sample"):
        shuffled_partners(torch.tensor([0, 0, 3]), 0)


@pytest.mark.parametrize("cache", ["on", "off"])
def test_shuffled_teacher_changes_only_which_sample_the_teacher_sees(tmp_path, cache):
    """Against the paired run of the same seed: the same batches, student inputs and labels; the
    teacher's outputs for sample i are exactly its outputs for partner[i], another training sample
    of i's class (from the per-run cache, or recomputed from the partner's input)."""
    engines, outs = {}, {}
    for control in ("none", "shuffled"):
        spec = _spec("logit", tmp_path, {"train": {"teacher_control": control, "teacher_cache": cache}})
        r = resolve(spec)
        splits = load_splits(r.adapter, r.train)
        seed_everything(0, True)
        teacher = build_network(r, "teacher", splits, torch.device("cpu")).eval()
        student, method, plan = build_student_and_method(r, spec, splits, teacher, torch.device("cpu"))
        engines[control] = eng = Trainer(adapter=r.adapter, train_split=splits["train"], student=student,
                                         student_modality="visual", method=method, teacher=teacher,
                                         teacher_modality="audio", train=r.train, device=torch.device("cpu"),
                                         plan=plan, seed=0)
        assert (eng.tcache is not None) == (cache == "on")
        gen = torch.Generator().manual_seed(11)
        steps = []
        with torch.no_grad():
            for s_like, li, idx in list(eng.src.iterate(eng.batches(gen)))[:3]:
                xb, y, t_idx = eng.inputs(s_like, li, idx, gen)
                steps.append((idx, xb["visual"], y, t_idx, eng.teacher_out(xb, t_idx).logits))
        outs[control] = steps
    tr = splits["train"]
    with torch.no_grad():
        xa, _ = r.adapter.batch(tr, torch.arange(len(tr)), ["audio"], torch.device("cpu"), False, None)
        every = teacher(xa["audio"]).logits
    partner = engines["shuffled"].partners
    assert torch.equal(partner, shuffled_partners(tr.labels, 0))
    for (i0, xs0, y0, t0, z0), (i1, xs1, y1, t1, z1) in zip(outs["none"], outs["shuffled"]):
        assert torch.equal(i0, i1) and torch.equal(xs0, xs1) and torch.equal(y0, y1)  # nothing else changed
        assert torch.equal(t0, i0) and torch.equal(t1, partner[i1])
        assert (t1 != i1).all() and torch.equal(tr.labels[t1], y1)
        assert torch.allclose(z0, every[i0], atol=1e-5) and torch.allclose(z1, every[t1], atol=1e-5)


# -- the random teacher -----------------------------------------------------------------------------

def test_random_teacher_is_the_seeded_initial_network_never_trained(tmp_path):
    """No teacher epoch runs, nothing under results/teachers is read or written (a planted file at
    the trained teacher's path stays untouched), and the teacher is the network a trained teacher of
    this seed starts from."""
    spec = _spec("logit", tmp_path, {"train": {"teacher_control": "random"}})
    r = resolve(spec)
    planted = teacher_path(r, "audio")
    planted.parent.mkdir(parents=True)
    planted.write_bytes(b"not a checkpoint")

    class Phases:
        def __init__(self):
            self.phases, self.total = [], None

        def begin(self, run_id, total_epochs):
            self.total = total_epochs

        def epoch(self, run_id, phase, epoch, info):
            self.phases.append(phase)

        def end(self, run_id, record):
            pass

        def note(self, run_id, message):
            self.phases.append(f"note: {message}")

    rep = Phases()
    rec = run(spec, rep)
    assert rec["status"] == "ok" and math.isfinite(rec["best_metric"])
    assert rep.total == 1 and rep.phases == ["student"]
    assert rec["teacher"]["source"] == "random" and rec["teacher"]["epochs"] == 0 and rec["teacher"]["checkpoint"] is None
    assert sorted(p.name for p in planted.parent.iterdir()) == [planted.name] and planted.read_bytes() == b"not a checkpoint"
    splits = load_splits(r.adapter, r.train)
    model, _ = random_teacher(r, splits, torch.device("cpu"))
    seed_everything(0, True)
    fresh = build_network(r, "teacher", splits, torch.device("cpu"))
    assert all(torch.equal(v, fresh.state_dict()[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("method,extra", [("ls", {}), ("tfkd", {}), ("logit", {"train": {"teacher_control": "shuffled"}}),
                                          ("dml", {"train": {"teacher_control": "random"}})])
def test_controls_run_end_to_end(tmp_path, method, extra):
    rec = run(_spec(method, tmp_path, extra))
    assert rec["status"] == "ok" and math.isfinite(rec["best_metric"]) and len(rec["history"]) == 1
    assert rec["method_category"] == METHODS.get(method).category
    if method in ("ls", "tfkd"):
        assert rec["teacher"] is None and rec["method_category"] == "Control"
    else:
        assert rec["config"]["train"]["teacher_control"] == extra["train"]["teacher_control"]
    if method == "dml":  # the peer trains from the random teacher; no teacher file exists
        assert rec["teacher"]["source"] == "random" and not (tmp_path / "teachers").exists()


def test_teacher_controls_are_rows_of_their_own_and_never_ranked(tmp_path):
    """A method's shuffled- and random-teacher records are shown under their own names, never
    averaged into (or flagged as a conflict of) the method's row, and never ranked: no mark in the
    table, no row of the leaderboard (a note counts them)."""
    from typer.testing import CliRunner

    from bench.cli import app
    from bench.records.store import write_record
    from bench.report.leaderboard import build_leaderboard
    from bench.report.tuning import select_params_records
    from test_tables_latex import rec

    res = tmp_path / "res"
    for s in range(3):
        write_record(res, rec("none", "toy", "visual", s, 50.0 + s))
        write_record(res, rec("logit", "toy", "visual", s, 60.0 + s))
        for control, v in (("shuffled", 55.0), ("random", 45.0)):
            r = rec("logit", "toy", "visual", s, v + s)
            r["config"]["train"] = {"teacher_control": control}
            r["config_hash"] += control
            r["group_hash"] += control
            write_record(res, r)
    out = CliRunner().invoke(app, ["table", "-r", str(res), "--format", "markdown"], env={"COLUMNS": "200"})
    assert out.exit_code == 0, out.output
    rows = {ln.split("|")[1].strip(): ln.split("|")[2].strip() for ln in out.output.splitlines() if ln.startswith("| ")}
    # shown, never ranked: the second mark goes to w/o KD (51.0), not to the shuffled control (56.0)
    assert rows["Logit"].startswith("**61.0") and rows["Logit (shuffled teacher)"] == "56.0"
    assert rows["w/o KD"] == "<u>51.0</u>" and "shown but never ranked" in out.output
    assert rows["Logit (random teacher)"].startswith("46.0") and "conflict" not in out.output.lower()
    raw = [__import__("json").loads(p.read_text()) for p in (res / "records").glob("*.json")]
    for recs in (select_params_records(raw)[0], raw):  # renamed rows, or raw records (the controls' own config)
        lb = build_leaderboard(recs)
        assert [r["display"] for r in lb.rows] == ["Logit", "w/o KD"] and not any("conflict" in n for n in lb.notes)
        assert "6 teacher-control record(s) (shuffled or random teacher) not ranked" in " ".join(lb.notes)


def test_a_control_rows_studies_are_left_out_like_its_methods():
    """A teacher-control row key is its registered method's for the default-parameter rule, so the
    leaderboard (which applies it after renaming) hides a control's study records like the table."""
    from bench.report.studies import default_params_keep

    assert default_params_keep("logit:shuffled-teacher", [{}, {"tau": 9.0}]) == [True, False]
    assert default_params_keep("logit:tuned", [{"tau": 9.0}]) == [True]  # only tuned: all kept, as before
