"""What a run depends on outside itself (#23): the trackers stay off the network (each run in a
network namespace under a syscall trace: a lookup fails the test, whatever process makes it, the
Go binary wandb-core included), W&B writes nothing outside the results folder, and every record
says which thread counts and BLAS produced its numbers."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny

from bench.records.store import load_records
from bench.train.resolve import RunSpec
from bench.train.run import NullReporter, run

REPO = Path(__file__).resolve().parents[1]

# environment variables under which a library stays quiet on its own (MLflow's telemetry is off in
# CI and under pytest): removed for the traced runs, so the code under test has to switch it off
QUIET_BY_CONTEXT = ("PYTEST_CURRENT_TEST", "CI", "GITHUB_ACTIONS", "CIRCLECI", "GITLAB_CI", "JENKINS_URL", "TRAVIS",
                    "TF_BUILD", "BITBUCKET_BUILD_NUMBER", "CODEBUILD_BUILD_ARN", "BUILDKITE", "TEAMCITY_VERSION",
                    "CLOUD_RUN_EXECUTION", "RUNBOT_HOST_URL", "RUNBOT_BUILD_NAME", "RUNBOT_WORKER_ID",
                    "MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK", "WANDB_MODE", "WANDB_ERROR_REPORTING")

TINY_RUN = {"synthetic": {"n_train": "240", "n_test": "60", "width": "8"}, "train": {"epochs": "1", "batch_size": "32"}}

# one tracked run as `bench run --log` makes it (the tracker names checked and their libraries
# imported first), notes printed
DRIVER = """
import json, sys
from bench.train.resolve import RunSpec
from bench.train.run import NullReporter, run
from bench.train.trackers import TrackingReporter, parse_trackers

class Echo(NullReporter):
    def note(self, run_id, message):
        print("note:", message, flush=True)

trackers = parse_trackers(sys.argv[2])
spec = RunSpec("synthetic", "audio", "visual", "none", 0, json.loads(sys.argv[3]), sys.argv[1], "cpu")
with TrackingReporter(Echo(), trackers) as rep:
    print("status:", run(spec, rep)["status"])
"""


def _works(cmd: list[str]) -> bool:
    try:
        return subprocess.run(cmd, capture_output=True, timeout=60, check=False).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


STRACE = shutil.which("strace") is not None and _works(["strace", "-f", "-qq", "-o", "/dev/null", "true"])
SECCOMP = STRACE and _works(["strace", "-f", "--seccomp-bpf", "-qq", "-e", "trace=%network", "-o", "/dev/null", "true"])
NETNS = shutil.which("unshare") is not None and _works(["unshare", "-rn", "true"])
MOUNTNS = shutil.which("unshare") is not None and _works(["unshare", "-rm", "true"])
needs_strace = pytest.mark.skipif(not STRACE, reason="strace is missing or cannot trace here (scripts/test.sh installs it)")

_CALL = re.compile(r"^\d+\s+(connect|sendto|sendmsg|sendmmsg)\(")
_ADDR = re.compile(r'inet_addr\("([^"]+)"\)|inet_pton\(AF_INET6?, "([^"]+)"')
_PORT = re.compile(r"htons\((\d+)\)")


def network_lookups(trace: str) -> list[str]:
    """The traced calls that would leave the machine or ask a name server: an IPv4/IPv6 address
    that is not loopback, or port 53 on any address (a local resolver stub, 127.0.0.53, included).
    Unix sockets (wandb's own service, nscd) and netlink stay on the machine."""
    bad = []
    for line in trace.splitlines():
        if not _CALL.match(line) or "AF_INET" not in line:
            continue
        addrs = [a or b for a, b in _ADDR.findall(line)]
        ports = [int(p) for p in _PORT.findall(line)]

        def local(a: str) -> bool:
            ip = ipaddress.ip_address(a)
            mapped = getattr(ip, "ipv4_mapped", None)
            return ip.is_loopback or bool(mapped and mapped.is_loopback)

        if not addrs or 53 in ports or not all(local(a) for a in addrs):
            bad.append(line.strip())
    return bad


def traced(cmd: list[str], tmp_path: Path, env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess, str]:
    """``cmd`` with every network call of every process it starts traced (strace -f), in a network
    namespace with no way out when this machine allows one; returns the result and the trace."""
    log = tmp_path / "network.trace"
    strace = ["strace", "-f", "-qq", *(["--seccomp-bpf"] if SECCOMP else []), "-e", "trace=%network", "-o", str(log)]
    full = [*(["unshare", "-rn"] if NETNS else []), *strace, *cmd]
    base = {k: v for k, v in os.environ.items() if k not in QUIET_BY_CONTEXT}
    base.update({"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HOME": str(tmp_path / "home"), **(env or {})})
    (tmp_path / "home").mkdir(exist_ok=True)
    res = subprocess.run(full, cwd=tmp_path, env=base, capture_output=True, text=True, timeout=600, check=False)
    return res, log.read_text() if log.exists() else ""


def tracked_run(results: Path, trackers: str) -> list[str]:
    return [sys.executable, "-c", DRIVER, str(results), trackers, json.dumps(TINY_RUN)]


# ---- 9: offline means offline ----------------------------------------------------------------------

@needs_strace
def test_the_trace_catches_a_lookup(tmp_path):
    """The harness can fail: a name lookup made by a child process shows up in the trace."""
    res, trace = traced([sys.executable, "-c", "import socket\ntry:\n    socket.getaddrinfo('example.com', 443)\n"
                                              "except OSError:\n    pass\n"], tmp_path)
    assert res.returncode == 0, res.stderr
    assert network_lookups(trace), trace[-2000:]


def _tracker_output(results: Path, tracker: str) -> list[Path]:
    pattern = {"tensorboard": "tensorboard/*/events.out.tfevents.*", "mlflow": "mlruns/*/*/meta.yaml",
               "wandb": "wandb/offline-run-*/run-*.wandb"}[tracker]
    return list((results / "tracking").glob(pattern))


@needs_strace
@pytest.mark.parametrize("tracker", ["tensorboard", "mlflow", "wandb"])
def test_each_tracker_runs_without_a_network_lookup(tmp_path, tracker):
    res_dir = tmp_path / "res"
    res, trace = traced(tracked_run(res_dir, tracker), tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    (rec,) = load_records(res_dir)
    assert rec["status"] == "ok"
    assert "logging stopped" not in res.stdout + res.stderr  # the tracker ran, it was not dropped
    assert _tracker_output(res_dir, tracker), sorted(str(p) for p in (res_dir / "tracking").rglob("*"))[:20]
    assert network_lookups(trace) == []


# ---- 10: W&B writes under the results folder or not at all --------------------------------------------

class Notes(NullReporter):
    def __init__(self) -> None:
        self.notes: list[str] = []

    def note(self, run_id: str, message: str) -> None:
        self.notes.append(message)


def _spec(root: Path) -> RunSpec:
    return RunSpec("synthetic", "audio", "visual", "none", 0, tiny({"train": {"epochs": "1"}}), str(root), "cpu")


def test_wandb_refuses_a_folder_that_leads_outside_the_results(tmp_path):
    """``tracking/wandb`` a link to another folder: W&B would write there; it is dropped with a note
    and the run (and the other tracker) go on."""
    from bench.train.trackers import TrackingReporter

    res, outside = tmp_path / "res", tmp_path / "outside"
    outside.mkdir()
    (res / "tracking").mkdir(parents=True)
    (res / "tracking" / "wandb").symlink_to(outside, target_is_directory=True)
    notes = Notes()
    with TrackingReporter(notes, ["tensorboard", "wandb"]) as rep:
        rec = run(_spec(res), rep)
    assert rec["status"] == "ok"
    assert list(outside.iterdir()) == []
    (msg,) = [n for n in notes.notes if n.startswith("wandb logging stopped")]
    assert "outside the results folder" in msg and str(outside.resolve()) in msg
    assert list((res / "tracking" / "tensorboard").rglob("events.out.tfevents.*"))


@pytest.mark.skipif(not MOUNTNS, reason="no mount namespace here (unshare -rm): a read-only folder cannot be made "
                                        "for root")
def test_wandb_with_a_read_only_tracking_folder_writes_nowhere_else(tmp_path):
    """A read-only tracking folder (a read-only bind mount: root's permission bypass does not apply):
    W&B used to fall back to the system temp folder silently; now it is dropped with a note."""
    res_dir, systmp = tmp_path / "res", tmp_path / "t"
    (res_dir / "tracking").mkdir(parents=True)
    systmp.mkdir()
    ro = str(res_dir / "tracking")
    script = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_DIR",)}
    env.update({"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "TMPDIR": str(systmp)})
    res = subprocess.run(["unshare", "-rm", "sh", "-c", script, ro,
                          *tracked_run(res_dir, "wandb")],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    (rec,) = load_records(res_dir)
    assert rec["status"] == "ok"
    assert "wandb logging stopped" in out and "not writable" in out, out[-3000:]
    assert not list(systmp.rglob("offline-run-*")) and not list(systmp.rglob("*.wandb"))
    assert not list((res_dir / "tracking").iterdir())


# ---- 15: the environment bit-identity depends on ------------------------------------------------------

def test_a_record_says_which_threads_and_blas_made_it(tmp_path):
    import torch

    from bench.train.resolve import resolve

    rec = run(_spec(tmp_path))
    env = rec["environment"]
    assert env["threads"] == torch.get_num_threads() and env["interop_threads"] == torch.get_num_interop_threads()
    blas = re.search(r"BLAS_INFO=([^,\s]+)", torch.__config__.show())
    assert env["blas"] == (blas.group(1) if blas else None) and env["torch"] == torch.__version__
    assert "OMP_NUM_THREADS" in env["thread_variables"]
    assert any(p["api"] == "openmp" or p["api"] == "blas" for p in env["threadpools"])
    # stored with the record, not part of its identity: the config hash is the one resolve gives
    assert rec["config_hash"] == resolve(_spec(tmp_path)).config_hash
    (stored,) = load_records(tmp_path)
    assert stored["environment"] == json.loads(json.dumps(env))
    # another thread count is recorded as such, under the same config hash
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1 if before > 1 else 2)
        other = run(_spec(tmp_path / "other"))
    finally:
        torch.set_num_threads(before)
    assert other["environment"]["threads"] != env["threads"] and other["config_hash"] == rec["config_hash"]
