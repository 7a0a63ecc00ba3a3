import pytest

from bench.api.config import parse_overrides
from bench.api.errors import BenchError, ConfigError
from bench.api.registry import DATASETS, METHODS, Registry
from bench.train.resolve import RunSpec, resolve


def test_builtin_methods_and_datasets_are_registered():
    for m in ("none", "logit", "fdcmkd"):
        assert m in METHODS
    assert "synthetic" in DATASETS


def test_unknown_method_lists_valid_names():
    with pytest.raises(BenchError) as e:
        METHODS.get("no-such-method")
    msg = str(e.value)
    assert "no-such-method" in msg and "fdcmkd" in msg and "logit" in msg


def test_unknown_dataset_lists_valid_names(tmp_path):
    with pytest.raises(BenchError) as e:
        resolve(RunSpec("cifar1000", "audio", "visual", "none", results_dir=str(tmp_path)))
    assert "synthetic" in str(e.value)


def test_unknown_modality_names_the_valid_ones(tmp_path):
    with pytest.raises(BenchError) as e:
        resolve(RunSpec("synthetic", "depth", "visual", "logit", results_dir=str(tmp_path)))
    assert "depth" in str(e.value) and "audio (a)" in str(e.value)


def test_same_modality_direction_resolves_apart_from_cross_modal(tmp_path):
    # issue #27: a same-modality direction (v2v) is a run of its own, no longer refused
    r = resolve(RunSpec("synthetic", "visual", "v", "logit", results_dir=str(tmp_path)))
    cross = resolve(RunSpec("synthetic", "audio", "v", "logit", results_dir=str(tmp_path)))
    assert (r.direction, r.config["teacher_modality"], r.config["student_modality"]) == ("v2v", "visual", "visual")
    assert r.run_id.startswith("synthetic_v2v_logit_s0_") and r.config_hash != cross.config_hash


def test_direction_parsing():
    from bench.train.resolve import build_adapter

    ad = build_adapter("synthetic", {})
    assert ad.parse_direction("a2v") == ("audio", "visual")
    assert ad.parse_direction("visual->audio") == ("visual", "audio")
    assert ad.parse_direction("audio2visual") == ("audio", "visual")
    with pytest.raises(BenchError, match="a2v"):
        ad.parse_direction("x2y")


@pytest.mark.parametrize(
    "item, pattern",
    [
        ("logit.tau", "SCOPE.KEY=VALUE"),
        ("tau=3", "needs a scope"),
    ],
)
def test_malformed_set(item, pattern):
    with pytest.raises(ConfigError, match=pattern):
        parse_overrides([item])


def test_override_errors_name_the_key(tmp_path):
    spec = lambda ov: RunSpec("synthetic", "audio", "visual", "logit", overrides=ov, results_dir=str(tmp_path))  # noqa: E731
    with pytest.raises(ConfigError, match=r"logit\.temperature.*valid logit parameters: ce_weight, kd_weight, logit_std, logit_std_form, tau"):
        resolve(spec({"logit": {"temperature": "2"}}))
    with pytest.raises(ConfigError, match=r"logit\.tau: expected a number"):
        resolve(spec({"logit": {"tau": "warm"}}))
    with pytest.raises(ConfigError, match="unknown scope 'dkdd'"):
        resolve(spec({"dkdd": {"beta": "8"}}))
    with pytest.raises(ConfigError, match=r"train\.epochs: expected an integer"):
        resolve(spec({"train": {"epochs": "2.5"}}))
    with pytest.raises(ConfigError, match="fdcmkd: log=true"):
        resolve(RunSpec("synthetic", "audio", "visual", "fdcmkd", overrides={"fdcmkd": {"freq": "false"}},
                        results_dir=str(tmp_path)))


def test_overrides_change_the_run_identity_and_are_recorded(tmp_path):
    a = resolve(RunSpec("synthetic", "audio", "visual", "logit", results_dir=str(tmp_path)))
    b = resolve(RunSpec("synthetic", "audio", "visual", "logit", overrides={"logit": {"tau": "2"}}, results_dir=str(tmp_path)))
    assert a.run_id != b.run_id
    assert b.config["method_params"]["tau"] == 2.0 and a.config["method_params"]["tau"] == 4.0


def test_duplicate_registration_is_an_error():
    reg = Registry("method", "bench.methods", "none.group")
    reg._loaded = True

    class A:
        pass

    class B:
        pass

    reg.register("x")(A)
    with pytest.raises(BenchError, match="registered twice"):
        reg.register("x")(B)


def test_plugin_file_registers_with_source_hash(tmp_path):
    f = tmp_path / "my_method.py"
    f.write_text(
        "import torch\n"
        "from bench.api import Method\n"
        "from bench.api import register_method\n"
        "@register_method('myplugkd')\n"
        "class MyKD(Method):\n"
        "    category = 'Logits'\n"
        "    def loss(self, s, t, y, epoch):\n"
        "        return {'ce': self.task_loss(s.logits, y)}\n"
    )
    try:
        names = METHODS.load_plugin_file(f)
        assert names == ["myplugkd"]
        e = METHODS.entry("myplugkd")
        assert e.source == f"plugin:{f.resolve()}" and len(e.source_hash) == 16
    finally:
        METHODS.unregister("myplugkd")
    with pytest.raises(BenchError, match="no such file"):
        METHODS.load_plugin_file(tmp_path / "missing.py")
