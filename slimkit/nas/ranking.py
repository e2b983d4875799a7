"""How well estimates rank architectures: Kendall's tau-b, Spearman's rho, top-k overlap; and the
NATS-Bench topology (= NAS-Bench-201) ground truth table."""
import csv

import numpy as np


def kendall_tau(a, b) -> float:
    """Kendall's tau-b (ties counted as in scipy.stats.kendalltau). O(n^2): fine for a few thousand."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or len(a) < 2:
        raise ValueError(f"kendall_tau needs two 1-D sequences of equal length >= 2, got {a.shape} and {b.shape}")
    i, j = np.triu_indices(len(a), k=1)
    # comparisons, not signs of differences: equal infinite scores (a zero-cost score's -inf) are ties
    da = (a[i] > a[j]).astype(float) - (a[i] < a[j])
    db = (b[i] > b[j]).astype(float) - (b[i] < b[j])
    concordant_minus_discordant = float((da * db).sum())
    n_a, n_b = float((da != 0).sum()), float((db != 0).sum())
    if n_a == 0 or n_b == 0:
        return float("nan")
    return concordant_minus_discordant / np.sqrt(n_a * n_b)


def ranks(x) -> np.ndarray:
    """0-based ranks, ascending, tied values (equal infinities included) sharing their mean rank."""
    x = np.asarray(x, dtype=float)
    r = np.empty(len(x))
    r[np.argsort(x, kind="mergesort")] = np.arange(len(x))
    for v in np.unique(x):
        m = x == v
        r[m] = r[m].mean()
    return r


def spearman_rho(a, b) -> float:
    return float(np.corrcoef(ranks(a), ranks(b))[0, 1])


def topk_overlap(estimate, truth, k=10) -> float:
    """Fraction of the true top-k that is also in the estimated top-k."""
    estimate, truth = np.asarray(estimate, dtype=float), np.asarray(truth, dtype=float)
    top_e = set(np.argsort(-estimate, kind="mergesort")[:k].tolist())
    top_t = set(np.argsort(-truth, kind="mergesort")[:k].tolist())
    return len(top_e & top_t) / float(k)


def read_nats_tss(path) -> list:
    """Rows of nats_bench_tss.csv in NATS-Bench index order: {index, arch (cell string), cifar10,
    cifar100, imagenet16} (test accuracy % after 200 epochs)."""
    rows = []
    with open(path, newline="") as f:
        for k, r in enumerate(csv.DictReader(f)):
            rows.append({"index": k, "arch": r["ArchitectureString"], "unique": r["UniqueString"],
                         "cifar10": float(r["CIFAR10TestAccuracy200Epochs"]),
                         "cifar100": float(r["CIFAR100TestAccuracy200Epochs"]),
                         "imagenet16": float(r["ImageNetTestAccuracy200Epochs"])})
    if len(rows) != 15_625:
        raise ValueError(f"{path!r} has {len(rows)} rows; the NATS-Bench topology table has 15,625")
    return rows
