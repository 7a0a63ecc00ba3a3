"""What a grid must satisfy before ``bench reproduce`` publishes it: every record says which code
made it, that code was a commit (not a dirty tree), the seeds of one cell ran one commit with the
same versions of what determines a result (runner, method, adapter, backbones), and the whole grid
ran one runner version.

The commit check is per cell, not per grid: a method added later may join a published grid without
rerunning it, as long as its own seeds come from one commit. The runner version is checked over the
grid, because the runner (training loop, evaluation, selection) is what every cell shares.
``--allow-mixed-provenance`` publishes anyway; the outputs then say so (a banner at the top of
every Markdown output and ``provenance.mixed`` in ``summary.json``).
"""

from __future__ import annotations

from typing import Any, Iterable

from bench.api.errors import BenchError

OVERRIDE_FLAG = "--allow-mixed-provenance"

CELL_VERSIONS = ("runner", "method", "adapter", "backbones")
"""The versions the seeds of one cell must agree on (``record["versions"]``)."""

SHOWN = 8
"""Run ids named per problem before the rest are counted."""


def _ids(recs: list[dict[str, Any]]) -> str:
    ids = sorted(str(r["run_id"]) for r in recs)
    return ", ".join(ids[:SHOWN]) + (f" and {len(ids) - SHOWN} more" if len(ids) > SHOWN else "")


def _short(commit: Any) -> str:
    return str(commit)[:12] if commit else "none"


def cell_key(r: dict[str, Any]) -> tuple[str, str, str, str]:
    """One cell: a method's configuration (everything but the seed: the group hash) on one
    dataset and direction."""
    return (str(r["dataset"]), str(r["direction"]), str(r["method"]), str(r.get("group_hash") or r["config_hash"]))


def cell_name(key: tuple[str, str, str, str]) -> str:
    d, direction, m, group = key
    return f"cell {m} on {d} {direction} (config group {group})"


def _seeds(recs: list[dict[str, Any]]) -> str:
    return ", ".join(str(s) for s in sorted({int(r["seed"]) for r in recs}))


def _render(v: Any) -> str:
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_render(x)}" for k, x in sorted(v.items())) + "}"
    return "none" if v is None else str(v)


def provenance_problems(records: Iterable[dict[str, Any]]) -> list[str]:
    """Why ``records`` may not be published as one grid (empty: they may), each naming the records
    or the cell and what differs."""
    recs = list(records)
    problems: list[str] = []
    missing = [r for r in recs if not isinstance(r.get("versions"), dict) or "code" not in r]
    if missing:
        problems.append(f"{len(missing)} record(s) carry no provenance (made before records kept the code state and "
                        f"the versions, or by hand): {_ids(missing)}")
    unknown = [r for r in recs if "code" in r and r["code"] is None]
    if unknown:
        problems.append(f"{len(unknown)} record(s) were made outside a git checkout, so their code cannot be "
                        f"identified: {_ids(unknown)}")
    dirty: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in recs:
        code = r.get("code")
        if isinstance(code, dict) and code.get("dirty"):
            dirty.setdefault((str(code.get("commit")), str(code.get("diff_hash"))), []).append(r)
        elif "code" not in r and str(r.get("git_commit") or "").endswith("+dirty"):
            dirty.setdefault((str(r["git_commit"]).removesuffix("+dirty"), "unknown"), []).append(r)
    for (commit, diff), rs in sorted(dirty.items()):
        problems.append(f"{len(rs)} record(s) come from a dirty tree (commit {_short(commit)} with uncommitted changes, "
                        f"diff hash {diff}): {_ids(rs)}")

    cells: dict[tuple[str, str, str, str], list[dict[str, Any]]] = {}
    for r in recs:
        cells.setdefault(cell_key(r), []).append(r)
    for key, rs in sorted(cells.items()):
        commits: dict[str, list[dict[str, Any]]] = {}
        for r in rs:
            code = r.get("code")
            c = code.get("commit") if isinstance(code, dict) else str(r.get("git_commit") or "").removesuffix("+dirty")
            commits.setdefault(str(c or "none"), []).append(r)
        if len(commits) > 1:
            problems.append(f"{cell_name(key)}: its seeds ran different commits ("
                            + "; ".join(f"seed {_seeds(v)}: {_short(c)}" for c, v in sorted(commits.items())) + ")")
        for what in CELL_VERSIONS:
            seen: dict[str, list[dict[str, Any]]] = {}
            for r in rs:
                if isinstance(r.get("versions"), dict):
                    seen.setdefault(_render(r["versions"].get(what)), []).append(r)
            if len(seen) > 1:
                problems.append(f"{cell_name(key)}: its seeds ran different {what} versions ("
                                + "; ".join(f"seed {_seeds(v)}: {what} {k}" for k, v in sorted(seen.items())) + ")")

    runners: dict[str, list[dict[str, Any]]] = {}
    for r in recs:
        if isinstance(r.get("versions"), dict):
            runners.setdefault(_render(r["versions"].get("runner")), []).append(r)
    if len(runners) > 1:
        problems.append("the grid mixes runner versions (rerun the older ones): "
                        + "; ".join(f"runner {k}: {len(v)} record(s), e.g. {_ids(v[:3])}"
                                    for k, v in sorted(runners.items())))
    return problems


def provenance_summary(records: Iterable[dict[str, Any]], problems: list[str]) -> dict[str, Any]:
    """What ``summary.json`` says about the published records' provenance."""
    recs = list(records)
    commits = sorted({str((r.get("code") or {}).get("commit")) for r in recs if isinstance(r.get("code"), dict)})
    runners = sorted({_render((r.get("versions") or {}).get("runner")) for r in recs if isinstance(r.get("versions"), dict)})
    envs = sorted({str((r.get("environment") or {}).get("packages_hash")) for r in recs
                   if (r.get("environment") or {}).get("packages_hash")})
    return {"records": len(recs), "commits": commits, "runner_versions": runners, "package_sets": envs,
            "mixed": bool(problems), "problems": problems,
            **({"published_with": OVERRIDE_FLAG} if problems else {})}


def check_publishable(records: Iterable[dict[str, Any]], allow_mixed: bool = False,
                      where: str = "the grid") -> dict[str, Any]:
    """:func:`provenance_summary` of ``records``, or a refusal listing every problem (unless
    ``allow_mixed``: then the summary says ``mixed``)."""
    recs = list(records)
    problems = provenance_problems(recs)
    if problems and not allow_mixed:
        raise BenchError(f"refusing to publish {where}: its provenance does not hold together\n"
                         + "\n".join(f"  - {p}" for p in problems)
                         + f"\nrerun those runs from one clean commit, or pass {OVERRIDE_FLAG} to publish anyway "
                           "(the outputs then say so)")
    return provenance_summary(recs, problems)


def mixed_banner(summary: dict[str, Any]) -> str:
    """The line at the top of every Markdown output published with mixed provenance."""
    n = len(summary["problems"])
    return (f"> **Mixed provenance**: published with `{OVERRIDE_FLAG}` over {n} problem(s) "
            f"(see `provenance` in summary.json): " + "; ".join(summary["problems"][:3])
            + (" ..." if n > 3 else "") + "\n\n")
