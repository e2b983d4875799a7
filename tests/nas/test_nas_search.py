"""Search strategies: every evaluated (and so every returned) candidate is within the budget, by the
profiler's MAC count or the latency table's estimate; an interrupted or extended search resumes on the
same trajectory; the CLI writes its results and resumes."""
import json
import random
import statistics
import zlib

import numpy as np
import pytest
import torch

from slimkit.cli import main
from slimkit.models import create_model
from slimkit.nas import get_space
from slimkit.nas.cost import CostModel, LatencyLUT, parse_budget
from slimkit.nas.search import Search, SearchConfig


def fake_accuracy(arch):
    return zlib.crc32(arch.encode().encode()) % 1000 / 10.0  # deterministic, unrelated to cost


def _median_cost(space, cost, key, n=12):
    rng = random.Random(5)
    return statistics.median(cost(space.sample(rng))[key] for _ in range(n))


CFG = dict(population=6, generations=3, parents=3, mutations=4, crossovers=3, seed=1)


@pytest.mark.parametrize("strategy", ["evolution", "random"])
def test_search_respects_a_mac_budget(strategy):
    space = get_space("seesaw_tiny")
    cost = CostModel(space)
    budget = {"macs": _median_cost(space, cost, "macs")}
    result = Search(space, fake_accuracy, cost, budget, SearchConfig(strategy, **CFG)).run(progress=False)
    assert len(result.history) == SearchConfig(**CFG).evaluations == 6 + 2 * 7
    assert len({r["spec"] for r in result.history}) == len(result.history)
    assert result.rejected > 0  # the budget did bind
    for row in result.history:
        assert row["macs"] <= budget["macs"]
    for row in result.history[::5]:
        assert row["macs"] == CostModel(space)(row["spec"])["macs"]  # recounted from scratch
    assert result.best["macs"] <= budget["macs"]


def test_evolution_respects_a_latency_budget_from_the_lut():
    space = get_space("seesaw_tiny")
    lut = LatencyLUT(space, warmup=0, repeats=1)  # values are irrelevant here, only that the search obeys them
    lut.measure(space.covering(space))
    n_entries = len(lut.entries)
    cost = CostModel(space, lut)
    budget = parse_budget(f"latency_ms={_median_cost(space, cost, 'latency_ms'):.6f}")
    result = Search(space, fake_accuracy, cost, budget, SearchConfig(**CFG)).run(progress=False)
    assert result.rejected > 0 and len(result.history) > 6
    for row in result.history:
        assert row["latency_ms"] <= budget["latency_ms"]
        assert row["latency_ms"] == pytest.approx(lut.estimate(row["spec"]), rel=1e-12)
    assert len(lut.entries) == n_entries  # the covering set held every block the search met


def test_lut_calibration_scales_the_block_sum_by_the_median_ratio_and_is_saved(tmp_path):
    space = get_space("seesaw_tiny")
    lut = LatencyLUT(space, warmup=0, repeats=1)
    rng = random.Random(3)
    archs = [space.sample(rng) for _ in range(3)]
    rows = lut.calibrate(archs)
    assert len(rows) == 3 and len(lut.calibration) == 3
    ratios = sorted(r["measured_ms"] / r["block_sum_ms"] for r in rows)
    assert lut.scale == pytest.approx(ratios[1], rel=1e-12)  # median of three
    other = space.sample(rng)
    assert lut.estimate(other) == pytest.approx(lut.scale * lut.block_sum(other), rel=1e-12)
    loaded = LatencyLUT.load(space, lut.save(str(tmp_path / "lut.json")))
    assert loaded.scale == lut.scale and loaded.estimate(other) == pytest.approx(lut.estimate(other), rel=1e-12)


def test_interrupted_or_extended_search_follows_the_same_trajectory(tmp_path):
    space = get_space("cell")
    cost = CostModel(space)
    budget = {"params": _median_cost(space, cost, "params")}
    full = Search(space, fake_accuracy, cost, budget, SearchConfig(**{**CFG, "generations": 4})).run(progress=False)
    # interrupted after one generation, then resumed by a fresh object
    path = str(tmp_path / "state.json")
    Search(space, fake_accuracy, cost, budget, SearchConfig(**{**CFG, "generations": 4}), path).run(
        progress=False, stop_after=1)
    resumed = Search(space, fake_accuracy, CostModel(space), budget, SearchConfig(**{**CFG, "generations": 4}),
                     path).run(progress=False)
    assert resumed.history == full.history and resumed.rejected == full.rejected
    # a finished 2-generation search extended to 4
    path2 = str(tmp_path / "state2.json")
    Search(space, fake_accuracy, cost, budget, SearchConfig(**{**CFG, "generations": 2}), path2).run(progress=False)
    extended = Search(space, fake_accuracy, cost, budget, SearchConfig(**{**CFG, "generations": 4}), path2).run(
        progress=False)
    assert extended.history == full.history
    with pytest.raises(ValueError, match="other settings"):
        Search(space, fake_accuracy, cost, budget, SearchConfig(**{**CFG, "seed": 9}), path2).run(progress=False)


def test_budget_parsing():
    assert parse_budget("latency_ms=5, macs=50M,params=1.5k") == {"latency_ms": 5.0, "macs": 5e7, "params": 1500.0}
    with pytest.raises(ValueError, match="latency_ms, macs, params"):
        parse_budget("flops=3")
    with pytest.raises(ValueError, match="positive number"):
        parse_budget("macs=-1")


@pytest.fixture
def tiny_cifar(tmp_path):
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(10), 12).astype(np.uint8)
    x = (rng.integers(0, 60, (120, 32, 32, 3)) + (y[:, None, None, None] * np.array([20, 7, 13])) % 200)
    path = tmp_path / "tiny.npz"
    np.savez(path, x=x.astype(np.uint8), y=y)
    return f"cifar10:{path}"


def _search(out, data, gens, *extra):
    return main(["search", "--space", "cell", "--space-opts", "C=4", "--data", data, "--budget", "params=20k",
                 "--out", str(out), "--supernet-steps", "4", "--batch-size", "8", "--population", "3",
                 "--generations", str(gens), "--parents", "2", "--mutations", "2", "--crossovers", "1",
                 "--eval-images", "20", "--calib-images", "16", "--di", "--no-progress", *extra])


def test_cli_search_writes_results_and_resumes(tiny_cifar, tmp_path, capsys):
    assert _search(tmp_path / "a", tiny_cifar, 2) == 0
    for name in ("results.md", "results.json", "pareto.png", "best_spec.json", "best_model.py", "supernet.pt"):
        assert (tmp_path / "a" / name).exists()
    best = json.loads((tmp_path / "a" / "best_spec.json").read_text())
    assert best["params"] <= 20_000
    spec_file = str(tmp_path / "a" / "best_spec.json")
    # the found spec trains from scratch with slimkit train (--model-opts reaches the builder)
    assert main(["train", "--model", "nas", "--model-opts", f"spec={spec_file}", "--data", tiny_cifar, "--epochs", "1",
                 "--batch-size", "16", "--out", str(tmp_path / "t"), "--no-progress"]) == 0
    net = create_model("nas", spec=spec_file)
    net.load_state_dict(torch.load(tmp_path / "t" / "model.pt", weights_only=True))
    assert sum(p.numel() for p in net.parameters()) == best["params"]
    assert _search(tmp_path / "a", tiny_cifar, 2) == 2  # refuses to overwrite without --resume
    assert "--resume" in capsys.readouterr().err
    assert _search(tmp_path / "b", tiny_cifar, 1) == 0
    assert _search(tmp_path / "b", tiny_cifar, 2, "--resume") == 0
    hist = [json.loads((tmp_path / d / "search_state.json").read_text())["history"] for d in ("a", "b")]
    assert hist[0] == hist[1] and len(hist[0]) == 3 + 3


def test_search_plot_labels_latency_as_the_lut_estimate(tmp_path):
    """The search never times a whole network: its latency axis must not say "measured"."""
    import matplotlib.pyplot as plt

    from slimkit.report.search_plot import latency_label, replot, search_figure

    history = [{"spec": f"s{i}", "accuracy": 10.0 + i, "macs": 1e6 * (i + 1), "latency_ms": 1.0 + i} for i in range(4)]
    fig = search_figure([{"label": "", **r} for r in history], "t", latency_label("eager", 1))
    labels = [ax.get_xlabel() for ax in fig.axes]
    plt.close(fig)
    assert labels == ["MACs (millions)", "latency, look-up-table estimate (eager, 1 thr) (ms)"]
    assert not any("measured" in lbl for lbl in labels)
    (tmp_path / "results.json").write_text(json.dumps({"budget": {"latency_ms": 5.0}, "rejected": 0, "history": history}))
    (tmp_path / "search_config.json").write_text(json.dumps({"space": "cell", "strategy": "evolution",
                                                              "budget": "latency_ms=5", "runtime": "eager", "threads": 1}))
    assert replot(str(tmp_path)) == str(tmp_path / "pareto.png") and (tmp_path / "pareto.png").stat().st_size > 0
