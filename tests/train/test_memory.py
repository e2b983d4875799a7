"""Memory-bounded training: same outputs and gradients, fewer saved activation bytes, clear budget errors."""
import copy
import pytest
import torch
from torch import nn

from slimkit.errors import SlimkitError
from slimkit.train.memory import apply_memory_budget, measure_activation_memory, tune_batch_size


def _mlp(depth=12, width=64):
    torch.manual_seed(0)
    layers = [m for _ in range(depth) for m in (nn.Linear(width, width), nn.ReLU())]
    return nn.Sequential(*layers, nn.Linear(width, 4))


def _weights(m):
    return sum(p.numel() * p.element_size() for p in m.parameters())


def test_measure_counts_saved_activations_exactly():
    m = nn.Sequential(nn.Linear(8, 16), nn.ReLU())
    x = torch.randn(4, 8)
    # Linear saves its input (4x8); ReLU saves its output (4x16); the loss (pow) saves the ReLU output again
    # (same storage, counted once). float32.
    assert measure_activation_memory(m, x) == 4 * (4 * 8 + 4 * 16)


def test_budget_keeps_outputs_and_gradients_and_cuts_memory():
    model = _mlp()
    x = torch.randn(32, 64)
    before = measure_activation_memory(model, x)
    budget = 2 * _weights(model) + before // 2
    small, plan = apply_memory_budget(model, x, budget, return_plan=True)
    assert plan.fits and plan.wrapped
    after = measure_activation_memory(small, x)
    assert after <= before // 2
    torch.testing.assert_close(small(x), model(x), rtol=0, atol=0)
    small(x).sum().backward()
    model(x).sum().backward()
    for a, b in zip(small.parameters(), model.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-6, atol=1e-7)


def test_input_model_untouched_and_generous_budget_is_a_copy():
    model = _mlp(depth=3)
    n_before = len(model)
    same = apply_memory_budget(model, torch.randn(2, 64), 10 ** 9)
    assert same is not model and len(model) == n_before


def test_budget_smaller_than_model_raises():
    model = _mlp(depth=2)
    with pytest.raises(SlimkitError, match="smaller than the model's weights"):
        apply_memory_budget(model, torch.randn(2, 64), _weights(model))


def test_tuner_finds_largest_fitting_batch_and_scales_lr():
    model = _mlp(depth=2, width=32)
    per_sample = measure_activation_memory(model, torch.randn(1, 32))
    budget = 2 * _weights(model) + 16 * per_sample + per_sample // 2
    res = tune_batch_size(model, lambda b: torch.randn(b, 32), budget, base_batch=8, base_lr=0.1,
                          candidates=[1, 2, 4, 8, 16, 32], steps=1)
    assert res.largest_batch == 16
    assert res.best_batch in (1, 2, 4, 8, 16)
    assert res.best_lr == pytest.approx(0.1 * res.best_batch / 8)


def test_checkpoint_recompute_does_not_update_batchnorm_stats_twice():
    from slimkit.train.memory import Checkpointed

    torch.manual_seed(0)
    seg = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4))
    plain, wrapped = copy.deepcopy(seg).train(), Checkpointed(copy.deepcopy(seg)).train()
    x = torch.randn(8, 3, 10, 10)
    for _ in range(3):
        plain(x).square().sum().backward()
        wrapped(x).square().sum().backward()
    for a, b in zip(plain.modules(), wrapped.segment.modules()):
        if isinstance(a, nn.BatchNorm2d):
            torch.testing.assert_close(b.running_mean, a.running_mean, rtol=0, atol=0)
            torch.testing.assert_close(b.running_var, a.running_var, rtol=0, atol=0)
            assert int(b.num_batches_tracked) == int(a.num_batches_tracked) == 3
    for p, q in zip(plain.parameters(), wrapped.segment.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-6)


def test_planner_takes_the_cheapest_segments_and_whole_stages_when_they_win():
    from slimkit.train.memory import BlockCost, _choose

    # Stage A: 3 blocks keeping 10 B each (2 B of it the input from the block before), 1 s each;
    # stage B: 3 blocks keeping 5 B (1 B input), 1 s each.
    costs = {"A": [BlockCost(f"A[{i}]", 10, 2, 2, 1.0) for i in range(3)],
             "B": [BlockCost(f"B[{i}]", 5, 1, 1, 1.0) for i in range(3)]}
    # Whole A saves 3 * (10 - 2) - 2 (its output stays) = 22 B for 3 s: cheaper than A[0:2] + B[0:2] (21 B, 4 s).
    saved, seconds, segs = _choose(costs, 20, cuda=False)
    assert (saved, seconds) == (22, 3.0) and [(p, j, k) for p, j, k, _ in segs] == [("A", 0, 3)]
    saved, seconds, segs = _choose(costs, 25, cuda=False)  # + B[0:1] (4 - 1 = 3 B) for one more second
    assert (saved, seconds) == (25, 4.0) and sorted((p, j, k) for p, j, k, _ in segs) == [("A", 0, 3), ("B", 0, 1)]


def test_budget_plan_leaves_batchnorm_statistics_alone_and_reports_its_cost():
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
                            for _ in range(6)]).train()
    model = nn.Sequential(nn.Sequential(*[m for blk in model for m in blk]))  # one Sequential of 18 layers
    x = torch.randn(4, 4, 8, 8)
    before = measure_activation_memory(model, x)
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}
    small, plan = apply_memory_budget(model, x, 2 * _weights(model) + before // 3, return_plan=True)
    assert plan.fits and plan.activation_bytes_after <= before // 3
    assert plan.recompute_s > 0 and plan.backward_peak_bytes > plan.activation_bytes_after
    assert len(plan.blocks) == 18
    got = {k: v for k, v in small.state_dict().items() if "running" in k or "num_batches" in k}
    assert len(got) == len(stats)
    for a, b in zip(stats.values(), got.values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_peak_aware_plan_splits_a_segment_whose_recompute_would_break_the_budget():
    from slimkit.train.memory import BlockCost, _choose, predicted_peak

    costs = {"S": [BlockCost(f"S[{i}]", 10, 2, 2, 1.0) for i in range(4)]}
    before = 4 * 8 + 5  # 8 B kept per block + 5 B outside the Sequential
    whole, halves = [("S", 0, 4)], [("S", 0, 2), ("S", 2, 4)]

    def plan(segs):
        from slimkit.train.memory import SegmentCost
        return [(p, j, k, SegmentCost("", 0, 0.0, "checkpoint", 8 * (k - j) + 2)) for p, j, k in segs]
    # whole: 5 B outside + all 34 B at once while recomputing; halves: 5 + 18, then 5 + 2 + 18
    assert predicted_peak(costs, plan(whole), before) == 39
    assert predicted_peak(costs, plan(halves), before) == 25
    _, _, segs = _choose(costs, 28, cuda=False, limit_bytes=30, before_bytes=before)
    assert sorted((p, j, k) for p, j, k, _ in segs) == halves


def test_packed_segment_keeps_its_inner_activations_in_16_bits_counted_exactly():
    from slimkit.train.memory import Packed

    torch.manual_seed(0)
    seg = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU())
    x = torch.randn(4, 8)
    # plain: Linear1 saves x (4x8 fp32), ReLU1 its output (4x16; Linear2 saves the same tensor), ReLU2 its output
    # (4x16; the loss saves it again). Packed keeps x and the output in fp32 and ReLU1's output once in bf16.
    assert measure_activation_memory(seg, x) == 4 * (4 * 8 + 4 * 16 + 4 * 16)
    assert measure_activation_memory(Packed(seg, "bf16"), x) == 4 * (4 * 8 + 4 * 16) + 2 * 4 * 16


@pytest.mark.parametrize("dtype,min_snr_db", [("bf16", 40.0), ("fp16", 55.0)])
def test_packed_segment_gives_the_same_outputs_and_gradients_within_the_rounding(dtype, min_snr_db):
    from slimkit.train.memory import Packed

    torch.manual_seed(0)
    seg = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(512, 4))
    plain, packed = copy.deepcopy(seg).train(), Packed(copy.deepcopy(seg), dtype).train()
    x = torch.randn(8, 3, 8, 8)
    y_plain, y_packed = plain(x), packed(x)
    torch.testing.assert_close(y_packed, y_plain, rtol=0, atol=0)  # the forward itself is untouched
    y_plain.square().sum().backward()
    y_packed.square().sum().backward()
    grads = [(p.grad, q.grad) for p, q in zip(plain.parameters(), packed.segment.parameters())]
    err = sum(((a - b) ** 2).sum() for a, b in grads)
    ref = sum((a ** 2).sum() for a, _ in grads)
    assert 0 < err and 10 * torch.log10(ref / err) >= min_snr_db  # lossy, but by the 16-bit rounding only


def test_planner_packs_where_converting_is_cheaper_than_recomputing():
    from slimkit.train.memory import BlockCost, _choose

    # 4 blocks keeping 10 B (2 B input, 2 B output), recompute 1 s, 16-bit packing 0.2 s each.
    costs = {"S": [BlockCost(f"S[{i}]", 10, 2, 2, 1.0, 0.2) for i in range(4)]}
    # packing all four as one segment keeps half of 4 * 8 - 2 = 30 B: saves 15 B for 0.8 s; without pack the
    # cheapest 15 B is 2 recomputed blocks (2 s).
    saved, seconds, segs = _choose(costs, 15, cuda=False, pack=True)
    assert (saved, seconds) == (15, pytest.approx(0.8)) and [(j, k, s.action) for _, j, k, s in segs] == [(0, 4, "pack")]
    saved, seconds, _ = _choose(costs, 15, cuda=False)
    assert (saved, seconds) == (22, 3.0)  # S[0:3] recomputed: 3 * 8 - 2
    # more than packing can give: pack and recompute mix (S[0:3] recomputed = 22 B, S[3:4] packed = 3 B)
    saved, seconds, segs = _choose(costs, 25, cuda=False, pack=True)
    assert saved >= 25 and {s.action for *_, s in segs} == {"pack", "checkpoint"}


def test_budget_with_pack_fits_and_rejects_unknown_types():
    model = _mlp()
    x = torch.randn(32, 64)
    before = measure_activation_memory(model, x)
    budget = 2 * _weights(model) + before // 2
    small, plan = apply_memory_budget(model, x, budget, return_plan=True, pack="bf16")
    assert plan.fits and measure_activation_memory(small, x) == plan.activation_bytes_after <= before // 2
    torch.testing.assert_close(small(x), model(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match="pack must be None or one of"):
        apply_memory_budget(model, x, budget, pack="int4")
