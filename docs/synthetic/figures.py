"""Figures and tables of docs/synthetic/README.md, from the generator and from results folders.

    .venv/bin/python docs/synthetic/figures.py                              # ground truth only
    .venv/bin/python docs/synthetic/figures.py 0.0=RES_A 0.5=RES_B 1.0=RES_C   # + probe and KD gains

Each ``GAP=DIR`` names a results folder of ``bench run --methods all --datasets synthetic --seeds
0,1,2 --set synthetic.gap=GAP`` (records and cached teachers). Writes PNG files next to this
script and prints the Markdown tables.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from bench.report.premise import premise_probe
from bench.datasets.synthetic import SyntheticParams, bayes_accuracies, generate
from bench.report.figures import pyplot

HERE = Path(__file__).resolve().parent
GAPS = (0.0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0)


def ground_truth(plt) -> None:
    keys = ("z", "s_audio", "z+s_audio", "audio", "visual")
    labels = {"z": "shared z alone", "s_audio": "private s_audio alone", "z+s_audio": "z + s_audio (all audio's latents)",
              "audio": "raw audio input (teacher ceiling)", "visual": "raw visual input (student ceiling)"}
    rows = {}
    for g in GAPS:
        p = SyntheticParams(gap=g, n_train=24, n_test=20000)
        rows[g] = bayes_accuracies(p, generate(p)["test"])
    print("| gap | " + " | ".join(keys) + " |\n|---|" + "---:|" * len(keys))
    for g in GAPS:
        print(f"| {g} | " + " | ".join(f"{rows[g][k]:.1f}" for k in keys) + " |")
    fig, ax = plt.subplots(figsize=(5.6, 3.4), dpi=150)
    for k in keys:
        ax.plot(GAPS, [rows[g][k] for g in GAPS], marker="o", ms=3, label=labels[k])
    ax.axhline(100 / 6, color="grey", lw=0.6, ls=":")
    ax.set_xlabel("synthetic.gap")
    ax.set_ylabel("Bayes-optimal accuracy (%)")
    ax.set_title("Ground truth: where the class information lives", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(HERE / "bayes_vs_gap.png")
    plt.close(fig)


def probe(plt, folders: dict[float, str]) -> None:
    bands = ("raw", "low", "high", "low_perm", "high_perm")
    res: dict[float, dict] = {}
    for g, d in folders.items():
        per_seed = [premise_probe(d, "audio", overrides={"synthetic": {"gap": str(g)}}, seed=s) for s in (0, 1, 2)]
        res[g] = {(r["band"], r["latent"]): np.mean([ps[i]["r2_within"] for ps in per_seed])
                  for i, r in enumerate(per_seed[0])}
    print("\n| gap | band | z (shared) | s_audio (teacher-private) | s_visual (control) |\n|---|---|---:|---:|---:|")
    for g in folders:
        for b in bands + ("input",):
            print(f"| {g} | {b} | " + " | ".join(f"{res[g][(b, lat)]:.3f}" for lat in ("z", "s_audio", "s_visual")) + " |")
    fig, axes = plt.subplots(1, 2, figsize=(7.2, 3.0), dpi=150, sharey=True)
    gs = list(folders)
    for ax, lat, title in zip(axes, ("z", "s_audio"), ("shared latent z", "teacher-private latent s_audio")):
        for b, st in (("low", "-o"), ("high", "-s"), ("low_perm", ":o"), ("high_perm", ":s")):
            ax.plot(gs, [res[g][(b, lat)] for g in gs], st, ms=4, label=b)
        ax.set_title(f"{title}: within-class R²", fontsize=9)
        ax.set_xlabel("synthetic.gap")
    axes[0].set_ylabel("test R² of a ridge probe")
    axes[0].legend(fontsize=7)
    fig.suptitle("Audio teacher's pre-ReLU feature, FD-CMKD's DFT bands (3 seeds)", fontsize=9)
    fig.tight_layout()
    fig.savefig(HERE / "premise_probe_vs_gap.png")
    plt.close(fig)


def gains(plt, folders: dict[float, str]) -> None:
    """Gain of each method over w/o KD per direction and gap; * = Welch p < 0.05 over the seeds."""
    from scipy.stats import ttest_ind

    from bench.records.store import load_results
    from bench.report.tables import display_name

    out: dict[tuple[str, str], dict[float, tuple[float, float]]] = {}
    for g, d in folders.items():
        df = load_results(d)
        for direction, sub in df.groupby("direction"):
            base = sub[sub["method"] == "none"]["best_metric"].to_numpy()
            for m, s in sub.groupby("method"):
                if m != "none":
                    v = s["best_metric"].to_numpy()
                    out.setdefault((direction, m), {})[g] = (v.mean() - base.mean(),
                                                             float(ttest_ind(v, base, equal_var=False).pvalue))
    gs = list(folders)
    for direction in ("a2v", "v2a"):
        print(f"\n{direction}: gain over w/o KD (points; * = Welch p < 0.05, 3 seeds)\n")
        print("| method | " + " | ".join(f"gap {g}" for g in gs) + " |\n|---|" + "---:|" * len(gs))
        for (dd, m), v in sorted(out.items()):
            if dd == direction:
                print(f"| {display_name(m)} | " + " | ".join(
                    f"{v[g][0]:+.1f}{'*' if v[g][1] < 0.05 else ''}" for g in gs) + " |")
    fig, axes = plt.subplots(1, 2, figsize=(8.4, 3.4), dpi=150, sharey=False)
    for ax, direction in zip(axes, ("a2v", "v2a")):
        for (dd, m), v in sorted(out.items()):
            if dd == direction and m != "feat":
                ax.plot(gs, [v[g][0] for g in gs], "-o", ms=3, label=display_name(m))
        ax.axhline(0, color="black", lw=0.6)
        ax.set_title(f"{direction}: gain over w/o KD (mean of 3 seeds; Feat off-scale)", fontsize=8)
        ax.set_xlabel("synthetic.gap")
    axes[0].set_ylabel("top-1 gain (points)")
    axes[1].legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(HERE / "kd_gain_vs_gap.png")
    plt.close(fig)


def main(argv: list[str]) -> None:
    plt = pyplot()
    ground_truth(plt)
    folders = {float(a.split("=", 1)[0]): a.split("=", 1)[1] for a in argv}
    if folders:
        probe(plt, folders)
        gains(plt, folders)


if __name__ == "__main__":
    main(sys.argv[1:])
