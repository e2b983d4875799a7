"""Two gloo workers on loopback: compressed steps keep all ranks identical, the hook matches
all-reduce when lossless, no_sync accumulation works, MQGrad decides the same everywhere, and a
run resumed from a checkpoint continues with the same compressor state (bit-identical)."""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

pytestmark = [pytest.mark.distributed, pytest.mark.timeout(120)]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))


def _batch(step, rank):
    g = torch.Generator().manual_seed(1000 * step + rank)
    return torch.randn(12, 8, generator=g), torch.randint(0, 3, (12,), generator=g)


def _train(ddp, opt, state, steps, start=0, accumulate=1):
    for step in range(start, start + steps):
        opt.zero_grad()
        for micro in range(accumulate):
            x, y = _batch(step * accumulate + micro, dist.get_rank())
            ctx = ddp.no_sync() if micro < accumulate - 1 else torch.enable_grad()
            with ctx:
                loss = torch.nn.functional.cross_entropy(ddp(x), y)
                loss.backward()
        opt.step()
        if state is not None:
            state.observe_loss(loss.item())


def _flat(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


SCENARIOS = {  # name: (compressor spec or None for plain DDP, mode)
    "ecq": ("ecq(bits=2)", "plain"),
    "qsgd": ("qsgd(bits=3)", "plain"),
    "topk": ("ecq(inner='topk', ratio=0.1)", "plain"),
    "ref": (None, "no_sync"),
    "identity": ("identity", "no_sync"),
    "mqgrad": ("mqgrad(interval=1, epsilon=0.5)", "plain"),
    "fp16": ("fp16", "plain"),
    "powersgd": ("powersgd", "plain"),
    "resume_first": ("ecq(bits=2, alpha=0.5, beta=0.8)", "resume_first"),
}


def _scenario(spec, mode, out_dir):
    import slimkit.comm as comm

    rank = dist.get_rank()
    model = _model()
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9)
    state = comm.register(ddp, spec) if spec else None
    result = {}
    if mode == "resume_first":
        _train(ddp, opt, state, 3)
        ckpt = {"model": model.state_dict(), "opt": opt.state_dict(), "comm": state.state_dict()}
        torch.save(ckpt, os.path.join(out_dir, f"ckpt{rank}.pt"))
        _train(ddp, opt, state, 3, start=3)
    elif mode == "resume_second":
        ckpt = torch.load(os.path.join(out_dir, f"ckpt{rank}.pt"), weights_only=False)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["opt"])
        state.load_state_dict(ckpt["comm"])
        _train(ddp, opt, state, 3, start=3)
    else:
        _train(ddp, opt, state, 4, accumulate=2 if mode == "no_sync" else 1)
    if state is not None:
        result["stats"] = state.pop_stats()
        result["comm_state"] = state.state_dict()
        result["decisions"] = getattr(state.compressor, "decisions", None)
    result["params"] = _flat(model)
    return result


def _worker(rank, world, port, scenarios, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        results = {name: _scenario(spec, mode, out_dir) for name, (spec, mode) in scenarios.items()}
        torch.save(results, os.path.join(out_dir, f"results{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _spawn(scenarios, out_dir, world=2):
    mp.spawn(_worker, args=(world, _free_port(), scenarios, str(out_dir)), nprocs=world, join=True)
    return [torch.load(out_dir / f"results{r}.pt", weights_only=False) for r in range(world)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """All scenarios in one 2-process run (spawning is the slow part), then the resumed run."""
    out = tmp_path_factory.mktemp("ddp")
    ranks = _spawn(SCENARIOS, out)
    resumed = _spawn({"resume_second": ("ecq(bits=2, alpha=0.5, beta=0.8)", "resume_second")}, out)
    for r, extra in zip(ranks, resumed):
        r.update(extra)
    return ranks


@pytest.mark.parametrize("name", ["ecq", "qsgd", "topk"])
def test_ranks_hold_identical_parameters_after_compressed_steps(name, runs):
    r0, r1 = runs[0][name], runs[1][name]
    assert torch.equal(r0["params"], r1["params"])
    assert not torch.equal(r0["params"], _flat(_model()))  # training moved the weights
    s = r0["stats"]
    n = sum(p.numel() for p in _model().parameters())
    assert s["hook_calls"] == 4 and 0 < s["bytes_sent"] < 4 * 4 * n
    assert s["compress_s"] > 0 and s["comm_s"] > 0


def test_identity_hook_matches_ddp_allreduce_and_no_sync(runs):
    torch.testing.assert_close(runs[0]["identity"]["params"], runs[0]["ref"]["params"], rtol=1e-5, atol=1e-6)
    # one hook call per synchronised step, not per micro-batch
    assert runs[0]["identity"]["stats"]["hook_calls"] == 4


def test_mqgrad_ranks_take_the_same_decisions(runs):
    r0, r1 = runs[0]["mqgrad"], runs[1]["mqgrad"]
    assert r0["decisions"] == r1["decisions"] and len(r0["decisions"]) == 4
    assert torch.equal(r0["params"], r1["params"])


def test_resume_from_checkpoint_continues_with_same_compressor_state(runs):
    for rank in runs:
        a, b = rank["resume_first"], rank["resume_second"]
        assert torch.equal(a["params"], b["params"])
        errs_a, errs_b = a["comm_state"]["compressor"]["errors"], b["comm_state"]["compressor"]["errors"]
        assert errs_a.keys() == errs_b.keys() and len(errs_a) == 4
        assert all(torch.equal(errs_a[k], errs_b[k]) for k in errs_a)


@pytest.mark.parametrize("name", ["fp16", "powersgd"])
def test_pytorch_builtin_hooks_are_wrapped_with_stats(name, runs):
    torch.testing.assert_close(runs[0][name]["params"], runs[1][name]["params"])
    assert runs[0][name]["stats"]["hook_calls"] == 4 and runs[0][name]["stats"]["comm_s"] > 0
