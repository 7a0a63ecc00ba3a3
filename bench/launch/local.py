"""Runs in this process, one after the other: teachers trained on first use and shared through
the checkpoint cache, finished runs skipped, a failing run recorded without stopping the grid
(unless ``fail_fast``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bench.api.errors import BenchError
from bench.train.resolve import RunSpec, resolve
from bench.train.run import Reporter, run


class StoppedEarly(BenchError):
    """The work stopped before its end (``--fail-fast``, a worker process that died); what finished
    is kept. The command line prints it as one line and exits with status 1, as for a failed run."""


def fail_fast_stop(rec: dict[str, Any]) -> StoppedEarly:
    return StoppedEarly(f"--fail-fast: run {rec['run_id']} failed ({rec.get('error')}); the grid stopped there. "
                        f"Finished runs are kept; rerunning the command retries it, then runs the rest")


def dead_worker_stop(kept: str) -> StoppedEarly:
    """A worker process died (killed, out of memory, a crash in native code): the pool cannot go on,
    but nothing finished is lost and the work in progress can resume. ``kept`` says what is kept."""
    return StoppedEarly(f"a worker process died unexpectedly (killed, out of memory or a crash in native code); "
                        f"{kept}: rerun the same command to resume")


@dataclass
class GridOutcome:
    done: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)

    def add(self, rec: dict[str, Any]) -> None:
        (self.failed if rec.get("status") == "failed" else self.skipped if rec.get("skipped") else self.done).append(rec)


def attempt(spec: RunSpec, reporter: Reporter | None, force: bool) -> tuple[dict[str, Any], Exception | None]:
    """Run one spec and return its record. A run that raised comes back as its ``failed`` record
    (the one :func:`run` attached to the exception: it is what happened even when the disk refused
    to store it) with the exception. Configuration errors (BenchError) and Ctrl-C propagate."""
    try:
        return run(spec, reporter, force=force), None
    except (KeyboardInterrupt, BenchError):
        raise
    except Exception as exc:  # noqa: BLE001 - recorded by run()
        rec = getattr(exc, "cmkd_record", None)
        if rec is None:  # raised before the run started training (e.g. the results folder itself)
            rec = {"run_id": resolve(spec).run_id, "status": "failed", "error": f"{type(exc).__name__}: {exc}"}
        return rec, exc


class LocalExecutor:
    """Run specs in this process, in order."""

    def __init__(self, reporter: Reporter | None = None, fail_fast: bool = False):
        self.reporter = reporter
        self.fail_fast = fail_fast

    def run(self, specs: list[RunSpec], force: bool = False) -> GridOutcome:
        out = GridOutcome()
        for spec in specs:
            rec, exc = attempt(spec, self.reporter, force)
            out.add(rec)
            if exc is not None and self.fail_fast:
                raise fail_fast_stop(rec) from exc
        return out
