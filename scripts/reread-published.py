"""Re-read the published comparison (docs/results/comparison.md: mean ± std over 3 seeds, printed to
1 decimal) with what its numbers allow: Welch from the summary statistics, uncorrected vs Holm over
the 72 tests against w/o KD; Friedman/Iman-Davenport with cells and with datasets as blocks.

Usage: .venv/bin/python scripts/reread-published.py   (the numbers of docs/results.md, "What they say")
"""
import re
import numpy as np
from scipy import stats
from statsmodels.stats.multitest import multipletests
ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
from bench.report.stats.across import friedman_from_ranks, refusal, MIN_BLOCKS
from bench.report.stats.aggregate import rank_matrix

rows = {}
cols = None
for line in open(ROOT / "docs/results/comparison.md"):
    if line.startswith("| Method"):
        cols = [c.strip() for c in line.strip().strip("|").split("|")][1:]
    elif line.startswith("| ") and "±" in line:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        vals = []
        for c in cells[1:]:
            m = re.search(r"([\d.]+) ± ([\d.]+)", c)
            vals.append((float(m.group(1)), float(m.group(2))))
        rows[cells[0]] = vals
base = rows["w/o KD"]
tests = []
for m, vals in rows.items():
    if m == "w/o KD":
        continue
    for j, (mu, sd) in enumerate(vals):
        b_mu, b_sd = base[j]
        t, p = stats.ttest_ind_from_stats(mu, max(sd, 1e-9), 3, b_mu, max(b_sd, 1e-9), 3, equal_var=False)
        tests.append((m, cols[j], mu - b_mu, p))
ps = np.array([t[3] for t in tests])
holm = multipletests(ps, alpha=0.05, method="holm")[0]
print(f"{len(tests)} tests vs w/o KD; uncorrected p<0.05: {(ps < 0.05).sum()}; Holm: {holm.sum()}")
for (m, c, d, p), h in zip(tests, holm):
    if p < 0.05:
        print(f"  {m:8s} {c:12s} {d:+6.1f} p={p:.4f} {'survives Holm' if h else '-'}")
methods = list(rows)
means = np.array([[rows[m][j][0] for m in methods] for j in range(len(cols))])  # cells x methods
for label, mat in (("6 cells as blocks", means),
                   ("3 datasets as blocks (mean of the two directions)", means.reshape(3, 2, -1).mean(axis=1))):
    ranks = rank_matrix(mat)
    avg = ranks.mean(axis=0)
    f = friedman_from_ranks(avg, mat.shape[0])
    print(label, {k: round(v, 4) for k, v in f.items()}, "refusal:", refusal(mat.shape[0], len(methods)))
    order = np.argsort(avg)
    print("  mean ranks:", ", ".join(f"{methods[i]} {avg[i]:.2f}" for i in order[:5]))
# FD-CMKD vs UCMKD per cell
for j, c in enumerate(cols):
    a, b = rows["FD-CMKD"][j], rows["UCMKD"][j]
    t, p = stats.ttest_ind_from_stats(a[0], max(a[1], 1e-9), 3, b[0], max(b[1], 1e-9), 3, equal_var=False)
    print(f"FD-CMKD vs UCMKD {c}: {a[0]-b[0]:+.1f} p={p:.3f}")
