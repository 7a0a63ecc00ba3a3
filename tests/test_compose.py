"""Method composition (#26 item 3) and the zoo in the products (item 4): ``--methods dkd+rkd`` trains
one student with the CE once plus each part's weighted terms, is named as the composition in its
record, tables and leaderboard, and refuses what cannot share a student, with the reason."""

import math

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from bench.api.compose import composition_class, composition_params, decode, encode
from bench.api.errors import BenchError, ConfigError
from bench.api.method import CONTROL, MethodContext
from bench.api.registry import METHODS, select_methods
from bench.models import ModelOutput
from bench.train.resolve import RunSpec, resolve
from bench.train.run import NullReporter, run

pytestmark = pytest.mark.usefixtures("one_thread")

D = torch.float64
SMALL = {"synthetic": {"n_train": "200", "n_test": "100"}, "train": {"epochs": "1", "teacher_epochs": "1"}}


def small(**scopes):
    out = {k: dict(v) for k, v in SMALL.items()}
    for k, v in scopes.items():
        out.setdefault(k, {}).update(v)
    return out


def spec(method, overrides=None, results="results", seed=0):
    return RunSpec("synthetic", "audio", "visual", method, seed, overrides or small(), str(results), "cpu")


# ---------------------------------------------------------------- the loss against an oracle
def huber(d):
    return 0.5 * d * d if abs(d.item()) < 1 else abs(d) - 0.5


def kl(p, q):
    return sum(p[i] * (torch.log(p[i]) - torch.log(q[i])) for i in range(len(p)))


def softmax(v, tau):
    e = [torch.exp(x / tau) for x in v]
    s = sum(e)
    return [x / s for x in e]


def oracle(zs, zt, fs, ft, y, *, alpha, beta, tau, w_dkd, w_rkd, dist_w=25.0, angle_w=50.0):
    """CE + w_dkd * (alpha TCKD + beta NCKD) + w_rkd * (25 distance + 50 angle), with loops over
    samples, pairs and triplets (DKD: Zhao et al. eq. 4-5; RKD: Park et al. eq. 4-7, mdistiller's
    normalisation and degenerate-entry convention)."""
    n, c = zs.shape
    ft, zt = ft.detach(), zt.detach()
    ce = sum(-torch.log(softmax(zs[b], 1.0)[y[b]]) for b in range(n)) / n
    tckd = nckd = 0.0
    for b in range(n):
        ps, pt = softmax(zs[b], tau), softmax(zt[b], tau)
        tckd = tckd + kl([pt[y[b]], 1 - pt[y[b]]], [ps[y[b]], 1 - ps[y[b]]])
        rest = [k for k in range(c) if k != y[b]]
        nckd = nckd + kl(softmax([zt[b, k] for k in rest], tau), softmax([zs[b, k] for k in rest], tau))
    tckd, nckd = tckd / n * tau**2, nckd / n * tau**2

    def dists(f):
        d = [[torch.sqrt(((f[i] - f[j]) ** 2).sum()) if i != j else f.new_zeros(()) for j in range(n)] for i in range(n)]
        pos = [d[i][j] for i in range(n) for j in range(n) if i != j]
        mean = sum(pos) / len(pos)
        return [[d[i][j] / mean for j in range(n)] for i in range(n)]

    def angles(f):
        out = []
        for i in range(n):
            for j in range(n):
                for k in range(n):
                    if j == i or k == i:
                        out.append(f.new_zeros(()))
                        continue
                    eij = (f[j] - f[i]) / torch.sqrt(((f[j] - f[i]) ** 2).sum())
                    eik = (f[k] - f[i]) / torch.sqrt(((f[k] - f[i]) ** 2).sum())
                    out.append((eij * eik).sum())
        return out

    ds, dt = dists(fs), dists(ft)
    dist = sum(huber(ds[i][j] - dt[i][j]) for i in range(n) for j in range(n)) / n**2
    a_s, a_t = angles(fs), angles(ft)
    angle = sum(huber(a - b) for a, b in zip(a_s, a_t)) / n**3
    return ce + w_dkd * (alpha * tckd + beta * nckd) + w_rkd * (dist_w * dist + angle_w * angle)


def test_loss_and_gradients_equal_ce_once_plus_the_weighted_parts():
    """dkd+rkd at dkd.beta=2, rkd.weight=0.5 on fixed float64 tensors: the total and its gradients
    w.r.t. the student's logits and features match the oracle to 1e-6 relative; terms are PART.TERM."""
    g = torch.Generator().manual_seed(3)
    n, c, d = 5, 4, 3
    zs0, zt = torch.randn(n, c, generator=g, dtype=D), torch.randn(n, c, generator=g, dtype=D)
    fs0, ft = torch.randn(n, d, generator=g, dtype=D), torch.randn(n, 6, generator=g, dtype=D)
    y = torch.tensor([0, 3, 1, 1, 2])
    cls = composition_class("rkd+dkd", METHODS)
    params = composition_params(cls, {"dkd": {"beta": "2"}, "rkd": {"weight": "0.5"}})
    m = cls(params, MethodContext(c, 10, "classification", "audio", "visual", torch.device("cpu")))
    zs, fs = zs0.clone().requires_grad_(), fs0.clone().requires_grad_()
    terms = m.loss(ModelOutput(zs, fs, fs), ModelOutput(zt, ft, ft), y, 1)  # W = ceil(20/240*10) = 1: factor 1
    assert list(terms) == ["ce", "dkd.tckd", "dkd.nckd", "rkd.rkd_distance", "rkd.rkd_angle"]
    total = sum(terms.values())
    zs2, fs2 = zs0.clone().requires_grad_(), fs0.clone().requires_grad_()
    want = oracle(zs2, zt, fs2, ft, y, alpha=1.0, beta=2.0, tau=4.0, w_dkd=1.0, w_rkd=0.5)
    assert abs(total.item() - want.item()) <= 1e-6 * abs(want.item())
    for a, b in zip(torch.autograd.grad(total, [zs, fs]), torch.autograd.grad(want, [zs2, fs2])):
        assert (a - b).abs().max() <= 1e-6 * b.abs().max() and b.abs().max() > 0
    assert terms["ce"].item() == pytest.approx(F.cross_entropy(zs0, y).item(), rel=1e-12)  # once, unweighted


# ---------------------------------------------------------------- names and identity
def test_canonical_order_and_the_reversible_file_encoding():
    assert select_methods("rkd+dkd,dkd, DKD.RKD") == ["dkd+rkd", "dkd"]  # one composition, whatever the order
    assert select_methods("fdcmkd+sp+logit") == ["logit+sp+fdcmkd"]  # Logits, Feature, Cross-Modal
    a, b = resolve(spec("rkd+dkd")), resolve(spec("dkd+rkd"))
    assert a.run_id == b.run_id and a.config_hash == b.config_hash and a.config["method"] == "dkd+rkd"
    assert a.run_id.startswith("synthetic_a2v_dkd.rkd_s0_")
    for name in ("dkd", "dkd+rkd", "logit+sp+fdcmkd", "my-kd_2+x"):
        assert decode(encode(name)) == name and set(encode(name)) <= set("abcdefghijklmnopqrstuvwxyz0123456789._-")
    assert resolve(spec("dkd.rkd")).run_id == a.run_id


def test_part_parameters_and_weights_enter_the_hash_and_a_weight_of_1_does_not():
    base = resolve(spec("dkd+rkd"))
    p = base.config["method_params"]
    assert p["dkd.beta"] == 8.0 and p["rkd.angle_weight"] == 50.0 and not any(k.endswith(".weight") for k in p)
    assert base.config["method_version"] == {"dkd": 2, "rkd": 1}
    assert resolve(spec("dkd+rkd", small(rkd={"weight": "1"}))).config_hash == base.config_hash
    half = resolve(spec("dkd+rkd", small(rkd={"weight": "0.5"})))
    assert half.config_hash != base.config_hash and half.config["method_params"]["rkd.weight"] == 0.5
    assert resolve(spec("dkd+rkd", small(dkd={"beta": "4"}))).config_hash != base.config_hash
    # a single method's identity is untouched by compositions; its part weight does not exist
    assert resolve(spec("dkd")).config["method_params"] == {k[4:]: v for k, v in p.items() if k.startswith("dkd.")}
    with pytest.raises(ConfigError, match=r"rkd.weight: a part's weight exists only inside a composition"):
        resolve(spec("rkd", small(rkd={"weight": "0.5"})))
    with pytest.raises(ConfigError, match=r"rkd.weight=-1.0: must be >= 0"):
        resolve(spec("dkd+rkd", small(rkd={"weight": "-1"})))
    with pytest.raises(ConfigError, match="unknown parameter dkd.betta"):
        resolve(spec("dkd+rkd", small(dkd={"betta": "4"})))


def test_weight_changes_the_loss():
    g = torch.Generator().manual_seed(0)
    s = ModelOutput(torch.randn(4, 3, generator=g), torch.randn(4, 5, generator=g), torch.randn(4, 5, generator=g))
    t = ModelOutput(torch.randn(4, 3, generator=g), torch.randn(4, 5, generator=g), torch.randn(4, 5, generator=g))
    y = torch.tensor([0, 1, 2, 0])
    cls = composition_class("dkd+rkd", METHODS)
    ctx = MethodContext(3, 10, "classification", "audio", "visual", torch.device("cpu"))
    one = cls(composition_params(cls, {}), ctx).loss(s, t, y, 1)
    half = cls(composition_params(cls, {"rkd": {"weight": "0.5"}}), ctx).loss(s, t, y, 1)
    assert half["rkd.rkd_angle"].item() == pytest.approx(0.5 * one["rkd.rkd_angle"].item(), rel=1e-12)
    assert half["dkd.nckd"].item() == one["dkd.nckd"].item() and half["ce"].item() == one["ce"].item()


@pytest.mark.parametrize("methods, overrides, reason", [
    ("dml+c2kd", {}, "dml and c2kd both train the teacher"),
    ("dml+dkd", {}, r"need the teacher in different ways \(dkd reads a frozen teacher in eval mode; dml trains"),
    ("ofd+rkd", {}, "need the teacher in different ways"),
    ("dkd+wsld", {"wsld": {"teacher_mode": "reference"}}, "wsld reads a frozen teacher in train mode"),
    ("ls+dkd", {}, "ls is a control"),
    ("tfkd+dkd", {}, "tfkd is a control"),
    ("none+dkd", {}, "none uses no teacher and adds no distillation term"),
    ("dkd+dkd", {}, "dkd appears twice"),
    ("dkd+", {}, "an empty part"),
    ("dkd+nosuch", {}, "unknown method 'nosuch'"),
    ("dkd+rkd", {"rkd": {"ce_weight": "0.5"}}, r"counted once.*dkd.ce_weight=1, rkd.ce_weight=0.5.*"
                                                r"e.g. --set rkd.ce_weight=1$"),
    ("logit+nkd", {}, r"logit.ce_weight=0.1, nkd.ce_weight=1; a part without ce_weight counts 1"),
])
def test_impossible_compositions_are_refused_with_the_reason(methods, overrides, reason):
    with pytest.raises(BenchError, match=reason):
        resolve(spec(methods, small(**overrides)))


def test_dense_support_is_every_parts_and_the_cache_fields_are_the_union():
    both = composition_class("dkd+rkd", METHODS)
    assert both.dense_ok and both.category == "Composition" and both.search_space == {}
    no = composition_class("dkd+mlkd", METHODS)
    assert not no.dense_ok and no.dense_reason == "part mlkd: " + METHODS.get("mlkd").dense_reason
    ctx = MethodContext(3, 10, "classification", "audio", "visual", torch.device("cpu"))
    assert both(both.Params(), ctx).teacher_cache_fields() == {"logits", "feature"}


def test_all_is_every_kd_method_of_the_zoo_without_controls_or_compositions():
    kd = {e.name for e in METHODS.entries() if e.obj.category != CONTROL}
    assert set(select_methods("all")) == kd and {"rkd", "cc", "mlkd", "ctkd", "none"} <= kd
    assert not {"ls", "tfkd"} & set(select_methods("all")) and not any("+" in m for m in select_methods("all"))


# ---------------------------------------------------------------- training, records, reports
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    res = tmp_path_factory.mktemp("compose")
    comp = run(spec("rkd+dkd", small(rkd={"weight": "0.5"}), res))
    none = run(spec("none", small(), res))
    return res, comp, none


def test_a_composition_trains_one_epoch_and_its_record_names_both_parts(trained):
    from bench.records.store import identity_problem, read_record, record_path

    res, rec, _ = trained
    assert rec["status"] == "ok" and math.isfinite(rec["best_metric"])
    assert rec["method"] == "dkd+rkd" and rec["method_parts"] == ["dkd", "rkd"] and rec["method_category"] == "Composition"
    assert rec["config"]["method_params"]["rkd.weight"] == 0.5 and rec["config"]["method_params"]["dkd.tau"] == 4.0
    assert rec["versions"]["method"] == {"dkd": 2, "rkd": 1} and rec["method_source"] == "builtin"
    assert set(rec["history"][0]["terms"]) == {"ce", "dkd.tckd", "dkd.nckd", "rkd.rkd_distance", "rkd.rkd_angle"}
    assert rec["speed"]["teacher_cache_fields"] == ["feature", "logits"]  # the union, cached once
    assert rec["extra"]["method"]["dkd"]["warmup_epochs"] == 1
    assert identity_problem(rec) is None and read_record(record_path(res, rec["run_id"]))["method"] == "dkd+rkd"


def test_the_composition_is_its_own_row_in_the_table_leaderboard_and_rerun_command(trained):
    from bench.records.store import load_records, load_results
    from bench.report.leaderboard import build_leaderboard
    from bench.report.leaderboard import to_markdown as lb_markdown
    from bench.report.rerun import reproduce_args
    from bench.report.tables import build_comparison, to_markdown

    res, rec, _ = trained
    table = to_markdown(build_comparison(load_results(res)))
    assert "| DKD + RKD |" in table and "| w/o KD |" in table
    lb = build_leaderboard(load_records(res))
    row = next(r for r in lb.rows if r["method"] == "dkd+rkd")
    assert row["display"] == "DKD + RKD" and row["category"] == "Composition" and row["cells"] == 1
    assert "DKD + RKD" in lb_markdown(lb)
    args = reproduce_args(rec, [0])
    assert args[args.index("--methods") + 1] == "dkd+rkd" and "rkd.weight=0.5" in args
    assert not any(a.startswith(("dkd.", "rkd.")) and a != "rkd.weight=0.5" for a in args)  # defaults left out


class _StopAfterFirst(NullReporter):
    def epoch(self, run_id, phase, epoch, info):
        if phase == "student" and epoch == 1:
            raise KeyboardInterrupt


def test_resume_restores_every_parts_modules(tmp_path):
    """dkd+cc (CC has two learnable embeddings): interrupted after epoch 1 and resumed, the run
    equals an uninterrupted one; the embeddings are optimised."""
    ov = small(train={"epochs": "2"})
    full = run(spec("dkd+cc", ov, tmp_path / "full"))
    with pytest.raises(KeyboardInterrupt):
        run(spec("dkd+cc", ov, tmp_path / "cut"), _StopAfterFirst())
    again = run(spec("dkd+cc", ov, tmp_path / "cut"))
    assert again["resumed_from_epoch"] == 1
    assert [h["train_loss"] for h in again["history"]] == [h["train_loss"] for h in full["history"]]
    cls = composition_class("dkd+cc", METHODS)
    m = cls(cls.Params(), MethodContext(3, 2, "classification", "audio", "visual", torch.device("cpu")))
    s = ModelOutput(torch.zeros(2, 3), torch.zeros(2, 5), torch.zeros(2, 5))
    m.setup(None, None, s, ModelOutput(torch.zeros(2, 3), torch.zeros(2, 7), torch.zeros(2, 7)))
    assert len(m.extra_parameters()) == 4 and set(m.state_dict()["parts"]) == {"dkd", "cc"}
    other = cls(cls.Params(), m.ctx)
    other.setup(None, None, s, ModelOutput(torch.zeros(2, 3), torch.zeros(2, 7), torch.zeros(2, 7)))
    other.load_state_dict(m.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(m.extra_parameters(), other.extra_parameters()))


def test_a_composition_of_dense_parts_trains_on_segmentation(tmp_path):
    from test_dataset_nyudv2 import make_mat, ov

    from bench.train.resolve import build_adapter

    root = tmp_path / "raw"
    make_mat(root)
    build_adapter("nyudv2", ov(root, tmp_path / "c")).prepare()
    rec = run(RunSpec("nyudv2", "depth", "rgb", "dkd+rkd", 0, ov(root, tmp_path / "c"), str(tmp_path / "res")))
    assert rec["status"] == "ok" and rec["metric"] == "mIoU", rec.get("traceback")
    assert all(math.isfinite(v) for v in rec["history"][-1]["terms"].values())
    o = {**ov(root, tmp_path / "c"), "mlkd": {"ce_weight": "1"}}  # MLKD's CE weight is 0.1, DKD's 1
    with pytest.raises(BenchError, match="does not apply to segmentation.*part mlkd"):
        resolve(RunSpec("nyudv2", "depth", "rgb", "dkd+mlkd", 0, o, str(tmp_path / "res")))


def test_bench_list_methods_groups_by_category_with_sources_and_the_composition_syntax():
    from bench.cli import app

    res = CliRunner().invoke(app, ["list", "methods"], env={"COLUMNS": "220"})
    assert res.exit_code == 0, res.output
    out = res.output
    for name in ("rkd", "mlkd", "c2kd", "ls"):
        assert f"│ {name} " in out
    assert "megvii-research/mdistiller" in out and "huofushuo/C2KD" in out  # the reference code
    assert "--methods dkd+rkd" in out and "'+' as '.'" in out and "PART.weight" in out
    # by category: every Logits row before every Feature row, before every Cross-Modal row
    rows = [line for line in out.splitlines() if line.startswith("│ ") and "│ " in line[2:]]
    cats = [next((c for c in ("Uni-Modal", "Control", "Logits", "Feature", "Cross-Modal") if f"│ {c} " in r), None)
            for r in rows]
    seen = [c for c in cats if c]
    assert seen == sorted(seen, key=["Uni-Modal", "Control", "Logits", "Feature", "Cross-Modal"].index)


def test_the_command_line_runs_tables_and_ranks_a_composition(trained):
    """bench run with the parts in another order finds the same run (skipped), and bench table /
    bench leaderboard name it as the composition."""
    from bench.cli import app

    res, rec, _ = trained
    cli = CliRunner()
    sets = ["--set", "synthetic.n_train=200", "--set", "synthetic.n_test=100", "--set", "train.epochs=1",
            "--set", "train.teacher_epochs=1", "--set", "rkd.weight=0.5"]
    out = cli.invoke(app, ["run", "--methods", "rkd+dkd", "--datasets", "synthetic", "--directions", "a2v",
                           "-r", str(res), "--device", "cpu", *sets])
    assert out.exit_code == 0, out.output
    assert "1 runs in the grid, 1 already done, 0 to run" in out.output, out.output
    table = cli.invoke(app, ["table", "-r", str(res), "--format", "markdown"])
    assert table.exit_code == 0 and "DKD + RKD" in table.output, table.output
    board = cli.invoke(app, ["leaderboard", "-r", str(res), "--format", "json"])
    rows = {r["method"]: r for r in __import__("json").loads(board.output)["rows"]}
    assert rows["dkd+rkd"]["display"] == "DKD + RKD" and rows["dkd+rkd"]["category"] == "Composition"
    bad = cli.invoke(app, ["run", "--methods", "dml+c2kd", "--datasets", "synthetic", "-r", str(res), "--device", "cpu"])
    assert bad.exit_code != 0 and "both train the teacher" in " ".join(bad.output.split())


def test_bench_tune_refuses_a_composition(tmp_path):
    from bench.tune.grid import plan_studies

    with pytest.raises(ConfigError, match="a composition is not tuned"):
        plan_studies("dkd+rkd", "synthetic", "a2v", n_trials=2, results=str(tmp_path), overrides=small())


def test_dkd_plus_crd_gets_crds_sample_indices_and_resumes_bit_identically(tmp_path):
    """The issue's example: CRD's bank is keyed by training sample, so the composition must bind the
    training set and pass each batch's indices to the part. Interrupted after epoch 1 and resumed,
    the run equals an uninterrupted one (the bank, its normalisers and CRD's generator travel in the
    composition's state)."""
    ov = small(train={"epochs": "2"}, crd={"weight": "0.8"})
    full = run(spec("dkd+crd", ov, tmp_path / "full"))
    assert full["status"] == "ok" and full["method"] == "dkd+crd"
    assert set(full["history"][0]["terms"]) == {"ce", "dkd.tckd", "dkd.nckd", "crd.crd"}
    alone = run(spec("crd", small(), tmp_path / "alone"))["extra"]["method"]
    crd = full["extra"]["method"]["crd"]
    assert crd["n_data"] == alone["n_data"] == full["splits"]["sizes"]["train"]  # one bank row per training sample
    assert crd["k"] == alone["k"] and len(crd["z"]) == 2 and all(z > 0 for z in crd["z"])  # the bank ran
    with pytest.raises(KeyboardInterrupt):
        run(spec("dkd+crd", ov, tmp_path / "cut"), _StopAfterFirst())
    again = run(spec("dkd+crd", ov, tmp_path / "cut"))
    assert again["resumed_from_epoch"] == 1
    assert [h["train_loss"] for h in again["history"]] == [h["train_loss"] for h in full["history"]]
    assert again["extra"]["method"] == full["extra"]["method"]


def test_a_mixture_of_teachers_method_cannot_be_a_part():
    with pytest.raises(BenchError, match="mst runs a mixture of its own teachers"):
        composition_class("dkd+mst", METHODS)
