"""What a tuning grid looks like while it runs and after: one row per study (trials complete /
pruned / running / failed of N, best validation value and its parameters), read from the studies'
storage, so it is the same whether the trials run here, in worker processes or on SLURM; and each
study's optimisation-history plot (Optuna's, saved as PNG and PDF)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.report.figures import in_default_style
from bench.tune.plan import TunePlan
from bench.tune.study import best_trial, counts, quiet_optuna, storage_of, study_dir


class Snapshot:
    """Reads every study of a plan from its storage (storages kept open: a journal is re-read
    incrementally, not from the start, at each poll)."""

    def __init__(self, plan: TunePlan):
        self.plan = plan
        self.storages: dict[str, Any] = {}

    def rows(self) -> list[dict[str, Any]]:
        import optuna

        quiet_optuna()
        out = []
        for st in self.plan.studies:
            row: dict[str, Any] = {"study": st.name, "dataset": st.dataset, "direction": st.direction,
                                   "method": st.method, "n_trials": st.n_trials, "space": st.space}
            try:
                if st.name not in self.storages:
                    self.storages[st.name] = storage_of(st)
                study = optuna.load_study(study_name=st.name, storage=self.storages[st.name])
            except KeyError:  # not created yet
                out.append(dict(row, complete=0, pruned=0, running=0, failed=0, waiting=0, finished=0, best=None,
                                best_trial=None, best_params={}))
                continue
            c = counts(study)
            b = best_trial(study)
            out.append(dict(row, **c, best=None if b is None else b.value, best_trial=None if b is None else b.number,
                            best_params={} if b is None else dict(b.params)))
        return out


def fmt_params(params: dict[str, Any]) -> str:
    return ", ".join(f"{k.split('.', 1)[1] if k.split('.', 1)[0] != 'train' else k}={_num(v)}"
                     for k, v in sorted(params.items()))


def _num(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def table(rows: list[dict[str, Any]], title: str = "bench tune"):  # type: ignore[no-untyped-def]
    """The live view: a Rich table (names from plug-ins go in as Text, never as markup)."""
    from rich.table import Table
    from rich.text import Text

    from bench.report.tables import display_name

    t = Table(title=Text(title))
    for c, j in (("dataset", "left"), ("dir", "left"), ("method", "left"), ("done", "right"), ("pruned", "right"),
                 ("running", "right"), ("failed", "right"), ("best val", "right"), ("best parameters", "left")):
        t.add_column(c, justify=j)  # type: ignore[arg-type]
    for r in rows:
        done = f"{r['finished']}/{r['n_trials']}"
        t.add_row(Text(r["dataset"]), Text(r["direction"]), Text(display_name(r["method"])),
                  Text(done, style="green" if r["finished"] >= r["n_trials"] else ""), Text(str(r["pruned"])),
                  Text(str(r["running"])), Text(str(r["failed"]), style="red" if r["failed"] else ""),
                  Text("-" if r["best"] is None else f"{r['best']:.2f} (#{r['best_trial']})"),
                  Text(fmt_params(r["best_params"]) or "-"))
    return t


@in_default_style
def history_plots(plan: TunePlan) -> list[Path]:
    """Optuna's optimisation-history plot of every study that has a finished trial, saved as
    ``tuning/<study>/history.png`` and ``.pdf``."""
    import warnings

    import optuna
    from optuna.visualization.matplotlib import plot_optimization_history

    from bench.report.figures import pyplot, save_figure
    from bench.report.tables import display_name

    quiet_optuna()
    pyplot()
    paths: list[Path] = []
    for st in plan.studies:
        try:
            study = optuna.load_study(study_name=st.name, storage=storage_of(st))
        except KeyError:
            continue
        if counts(study)["finished"] == 0:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ax = plot_optimization_history(study, target_name="validation metric")
        ax.set_title(f"{display_name(st.method)} on {st.dataset} {st.direction}: {st.n_trials} trials")
        fig = ax.figure
        fig.tight_layout()
        paths += save_figure(fig, study_dir(st.results, st.name) / "history")
    return paths


@in_default_style
def overview_plots(plan: TunePlan) -> list[Path]:
    """One figure per (dataset, direction): each method's best validation value so far against the
    trial number (the equal budget made visible), ``tuning/overview-<dataset>-<direction>.png|pdf``."""
    import optuna

    from bench.report.figures import pyplot, save_figure
    from bench.report.tables import display_name

    quiet_optuna()
    plt = pyplot()
    groups: dict[tuple[str, str], list[Any]] = {}
    for st in plan.studies:
        groups.setdefault((st.dataset, st.direction), []).append(st)
    paths: list[Path] = []
    for (dataset, direction), sts in groups.items():
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for st in sts:
            try:
                study = optuna.load_study(study_name=st.name, storage=storage_of(st))
            except KeyError:
                continue
            best, xs, ys = None, [], []
            for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
                if t.state.name == "COMPLETE" and t.value is not None:
                    best = t.value if best is None else max(best, t.value)
                if best is not None:
                    xs.append(t.number)
                    ys.append(best)
            if xs:
                ax.step(xs, ys, where="post", label=display_name(st.method))
        ax.set_xlabel("trial")
        ax.set_ylabel("best validation metric so far")
        ax.set_title(f"{dataset} {direction}: equal budget ({sts[0].n_trials} trials per method)")
        if ax.get_lines():
            ax.legend(fontsize=7, ncol=2, loc="lower right")
        fig.tight_layout()
        paths += save_figure(fig, Path(plan.results) / "tuning" / f"overview-{dataset}-{direction}")
    return paths
