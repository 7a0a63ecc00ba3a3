"""SLURM job arrays of one grid: the cluster's array size limit, a grid split into as many arrays
as that limit needs (the parallelism shared among them), and the states of a grid's tasks.

SLURM refuses an array with more tasks than ``MaxArraySize`` (1001 by default): ``sbatch
--array=0-1199`` is an "Invalid job array specification". A grid's manifest therefore lists every
array it was submitted as, and what reads it (``bench status``, ``--retry-failed``, ``wait``) asks
for the states of all of them.
"""

from __future__ import annotations

import re
import subprocess
from typing import Any, Callable

from bench.api.errors import BenchError

TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL",
            "DEADLINE"}


BAD = TERMINAL - {"COMPLETED"}


DEFAULT_MAX_ARRAY_SIZE = 1001
"""SLURM's default ``MaxArraySize``: assumed when ``scontrol show config`` cannot be read."""


def cluster_max_array_size() -> int:
    """The cluster's ``MaxArraySize`` from ``scontrol show config``: an array holds at most that many
    tasks (indices 0 .. MaxArraySize-1; 0 disables arrays, then every task is a job of its own)."""
    try:
        out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return DEFAULT_MAX_ARRAY_SIZE
    found = re.search(r"^\s*MaxArraySize\s*=\s*(\d+)", out.stdout, re.MULTILINE)
    if out.returncode != 0 or found is None:
        return DEFAULT_MAX_ARRAY_SIZE
    return max(int(found.group(1)), 1)


def share_parallelism(total: int, sizes: list[int]) -> list[int]:
    """``array_parallelism`` is the grid's: shared among its arrays in proportion to their sizes
    (largest remainder, each at least 1), so that they drain together and, as long as ``total`` is
    at least the number of arrays, no more than ``total`` tasks of the grid run at once."""
    n = sum(sizes)
    if len(sizes) <= 1 or total >= n:
        return [total] * len(sizes)
    exact = [total * s / n for s in sizes]
    shares = [max(int(x), 1) for x in exact]
    order = sorted(range(len(sizes)), key=lambda i: exact[i] - int(exact[i]), reverse=True)
    for i in order[:max(total - sum(shares), 0)]:
        shares[i] += 1
    return shares


def submit_in_arrays(tasks: list[Any], limit: int, parallelism: int, executor: Callable[[int], Any], what: str,
                     on_array: Callable[[list[Any]], None] | None = None) -> list[Any]:
    """``tasks`` (submitit callables) as job arrays of at most ``limit`` tasks each, from executors
    made by ``executor(parallelism of that array)``; ``on_array(jobs so far)`` runs after each array
    is in. A refused submission is a BenchError saying what sbatch answered and what was already
    submitted."""
    from submitit.core.utils import FailedJobError

    chunks = [tasks[i:i + limit] for i in range(0, len(tasks), limit)]
    jobs: list[Any] = []
    for chunk, par in zip(chunks, share_parallelism(parallelism, [len(c) for c in chunks])):
        ex = executor(par)
        try:
            with ex.batch():
                part = [ex.submit(t) for t in chunk]
        except (FailedJobError, OSError) as exc:
            done = list(dict.fromkeys(j.job_id.split("_")[0] for j in jobs))
            raise BenchError(f"sbatch refused the {what} array of {len(chunk)} task(s) ({str(exc).strip()[-400:]}); "
                             + (f"already submitted: {', '.join(done)}. " if done else "")
                             + "A cluster that allows fewer tasks per array than its MaxArraySize takes "
                               "max_array_size = N in the [slurm] table of slurm.toml") from None
        jobs += part
        if on_array is not None:
            on_array(jobs)
    return jobs


def arrays_of(manifest: dict[str, Any]) -> list[str]:
    """The run arrays of one submission (older manifests name one)."""
    return list(manifest.get("array_jobs") or [manifest["array_job"]])


def grid_label(manifest: dict[str, Any]) -> str:
    """How ``bench status`` names a submission: its arrays, joined (one grid, however many arrays)."""
    return "+".join(arrays_of(manifest))


def sacct_states(job_ids: list[str]) -> dict[str, str]:
    """Job/array-task id -> state, from sacct (accounting) falling back to squeue."""
    ids = sorted({j for j in job_ids if j})
    if not ids:
        return {}
    states: dict[str, str] = {}
    try:
        out = subprocess.run(["sacct", "-X", "-n", "-P", "-j", ",".join(ids), "--format=JobID,State"],
                             capture_output=True, text=True, timeout=60)
        for line in out.stdout.splitlines():
            if "|" in line:
                jid, st = line.split("|", 1)
                states[jid.strip()] = st.split()[0] if st.strip() else "UNKNOWN"
    except (OSError, subprocess.TimeoutExpired):
        pass
    try:
        out = subprocess.run(["squeue", "-h", "-r", "-o", "%i|%T", "-j", ",".join(ids)], capture_output=True, text=True,
                             timeout=60)
        for line in out.stdout.splitlines():
            if "|" in line:
                jid, st = line.split("|", 1)
                jid, st = jid.strip(), st.strip()
                # live view wins, except that a cancelled task still winding down stays CANCELLED
                if not (st == "COMPLETING" and states.get(jid) in TERMINAL):
                    states[jid] = st
    except (OSError, subprocess.TimeoutExpired):
        pass
    return states


def _expand_array_states(states: dict[str, str], tasks: list[dict[str, Any]], array_job: str) -> None:
    # sacct may report a not-yet-started array as "123_[0-3]"
    for key, st in list(states.items()):
        if key.startswith(f"{array_job}_[") and key.endswith("]"):
            for t in tasks:
                states.setdefault(t["job_id"], st)


def array_states(arrays: list[str], tasks: list[dict[str, Any]]) -> dict[str, str]:
    """Job id -> state for ``tasks``, which belong to the job arrays ``arrays`` (one grid's)."""
    states = sacct_states(list(arrays) + [t["job_id"] for t in tasks])
    for arr in arrays:
        _expand_array_states(states, [t for t in tasks if t["job_id"].split("_")[0] == arr], arr)
    return states
