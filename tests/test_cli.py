"""End-to-end through the ``bench`` command line (typer's runner, same process)."""

import json
import subprocess
import sys

from typer.testing import CliRunner

from bench.cli import app

runner = CliRunner()
TINY = ["--set", "synthetic.n_train=480", "--set", "synthetic.n_test=180", "--set", "synthetic.width=8",
        "--set", "train.batch_size=32", "--epochs", "2", "--teacher-epochs", "3", "--device", "cpu"]


def invoke(*args):
    res = runner.invoke(app, list(args))
    return res


def test_help_everywhere():
    for cmd in ([], ["run"], ["list"], ["results"], ["table"]):
        res = invoke(*cmd, "--help")
        assert res.exit_code == 0, res.output
        assert "Usage" in res.output


def test_list_methods_and_datasets():
    res = invoke("list", "methods")
    assert res.exit_code == 0
    for m in ("none", "logit", "fdcmkd", "tau=4.0", "ratio=0.5"):
        assert m in res.output
    res = invoke("list", "datasets")
    assert res.exit_code == 0 and "synthetic" in res.output and "a2v" in res.output


def test_run_results_table_roundtrip(tmp_path):
    out = tmp_path / "res"
    res = invoke("run", "--methods", "none,logit,fdcmkd", "--datasets", "synthetic", "--directions", "all",
                 "--seeds", "0,1", "--results", str(out), *TINY)
    assert res.exit_code == 0, res.output
    recs = [json.loads(p.read_text()) for p in (out / "records").glob("*.json")]
    assert len(recs) == 12 and all(r["status"] == "ok" for r in recs)
    assert {r["direction"] for r in recs} == {"a2v", "v2a"}
    assert "w/o KD" in res.output and "FD-CMKD" in res.output  # printed comparison
    # rerun: everything skipped
    res2 = invoke("run", "--methods", "none,logit,fdcmkd", "--datasets", "synthetic", "--seeds", "0,1",
                  "--results", str(out), *TINY)
    assert res2.exit_code == 0 and "12 already done, 0 to run" in res2.output
    res3 = invoke("results", "--results", str(out))
    assert res3.exit_code == 0 and "12 records" in res3.output
    tex = tmp_path / "t.tex"
    res4 = invoke("table", "--results", str(out), "--out", str(tex), "--std")
    assert res4.exit_code == 0, res4.output
    text = tex.read_text()
    assert r"\begin{tabular}" in text and r"\textbf{" in text and r"\underline{" in text
    assert "FD-CMKD" in text and "w/o KD" in text


def test_bad_names_exit_2_with_message():
    res = subprocess.run([sys.executable, "-m", "bench.cli", "run", "--methods", "nope", "--datasets", "synthetic"],
                         capture_output=True, text=True)
    assert res.returncode == 2
    assert "unknown method 'nope'" in res.stderr and "fdcmkd" in res.stderr
    res = subprocess.run([sys.executable, "-m", "bench.cli", "run", "--datasets", "synthetic", "--directions", "a2t"],
                         capture_output=True, text=True)
    assert res.returncode == 2 and "a2v" in res.stderr
