"""Ranking metrics against hand-computed values (and scipy where installed); the NATS-Bench table reader."""
import csv

import numpy as np
import pytest

from slimkit.nas import get_space
from slimkit.nas.ranking import kendall_tau, ranks, read_nats_tss, spearman_rho, topk_overlap


def test_kendall_tau_by_hand():
    # pairs of (1,2,3,4) vs (1,3,2,4): 5 concordant, 1 discordant -> (5 - 1) / 6
    assert kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6)
    assert kendall_tau([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    # tau-b with a tie in a: n0 = 6 pairs, 1 tied in a; C - D = 5 -> 5 / sqrt(5 * 6)
    assert kendall_tau([1, 1, 2, 3], [1, 2, 3, 4]) == pytest.approx(5 / np.sqrt(30))


def test_ranks_average_ties_including_infinities():
    # ascending 0-based ranks; the two -inf (a zero-cost score's duplicate codes) share (0 + 1) / 2
    assert ranks([3.0, -np.inf, 1.0, -np.inf, 3.0]).tolist() == [3.5, 0.5, 2.0, 0.5, 3.5]
    assert spearman_rho([-np.inf, -np.inf, 1.0, 2.0], [0, 1, 2, 3]) == pytest.approx(
        np.corrcoef([0.5, 0.5, 2, 3], [0, 1, 2, 3])[0, 1])


def test_metrics_match_scipy():
    stats = pytest.importorskip("scipy.stats")  # scipy is not a slimkit dependency
    rng = np.random.default_rng(0)
    a = rng.integers(0, 20, 200).astype(float)  # with ties
    b = a + rng.normal(0, 5, 200)
    assert kendall_tau(a, b) == pytest.approx(stats.kendalltau(a, b).statistic, abs=1e-12)
    assert spearman_rho(a, b) == pytest.approx(stats.spearmanr(a, b).statistic, abs=1e-12)


def test_topk_overlap():
    est, truth = [9, 8, 7, 1, 2, 3], [1, 2, 3, 9, 8, 7]
    assert topk_overlap(est, truth, 3) == 0.0
    assert topk_overlap(est, est, 3) == 1.0
    assert topk_overlap([3, 2, 1, 0], [3, 0, 2, 1], 2) == 0.5


def test_read_nats_tss_rows_parse_as_nb201_specs(tmp_path):
    space = get_space("nb201")
    path = tmp_path / "nats.csv"
    cells = [space.sample(__import__("random").Random(i)) for i in range(15_625)]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["CIFAR10TestAccuracy200Epochs", "CIFAR100TestAccuracy200Epochs", "ImageNetTestAccuracy200Epochs",
                    "ArchitectureString", "UniqueString"])
        for i, a in enumerate(cells):
            w.writerow([90 + i % 5, 70, 40, a.encode().split(":", 1)[1], "u"])
    rows = read_nats_tss(path)
    assert len(rows) == 15_625 and rows[7]["cifar10"] == 92.0 and rows[7]["index"] == 7
    assert space.arch(space.decode_body(rows[3]["arch"])) == cells[3]
