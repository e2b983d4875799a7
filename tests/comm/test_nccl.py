"""The DDP hook on CUDA tensors with NCCL, all-gather and two-phase paths and auto: one process per
visible GPU (up to 2; a single GPU gives a one-rank group, which still runs the hook's size exchange,
all-to-all and all-gather through NCCL). Skipped
without CUDA/NCCL, so CI and CPU machines never depend on it."""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

pytestmark = [
    pytest.mark.distributed,
    pytest.mark.timeout(300),
    pytest.mark.skipif(not (torch.cuda.is_available() and dist.is_nccl_available()), reason="needs CUDA + NCCL"),
]
SPECS = {"ref": None, "identity": "identity", "ecq": "ecq(bits=2)", "qsgd": "qsgd(bits=4)", "mqgrad": "mqgrad(interval=1)",
         # the two-phase path (forced, so that a one-GPU group runs it too): all_to_all_single on NCCL
         "identity_tp": "identity|twophase", "ecq_tp": "ecq(bits=2)|twophase", "qsgd_tp": "qsgd(bits=4)|twophase",
         "mqgrad_tp": "mqgrad(interval=1)|twophase", "auto_slow": "auto(link_rate=1e5)|twophase"}


def _port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, out_dir):
    import slimkit.comm as comm

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", rank=rank, world_size=world)
    results = {}
    try:
        for name, spec in SPECS.items():
            torch.manual_seed(0)
            model = torch.nn.Sequential(torch.nn.Linear(8, 64), torch.nn.ReLU(), torch.nn.Linear(64, 3)).cuda()
            ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[rank])
            opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
            spec, _, path = (spec or "").partition("|")
            state = comm.register(ddp, spec, path=path or "auto") if spec else None
            for step in range(4):
                g = torch.Generator().manual_seed(1000 * step + rank)
                x, y = torch.randn(12, 8, generator=g).cuda(), torch.randint(0, 3, (12,), generator=g).cuda()
                opt.zero_grad()
                loss = torch.nn.functional.cross_entropy(ddp(x), y)
                loss.backward()
                opt.step()
                if state is not None:
                    state.observe_loss(loss.item())
            results[name] = dict(params=torch.cat([p.detach().reshape(-1).cpu() for p in model.parameters()]),
                                 stats=state.pop_stats() if state else None)
        torch.save(results, os.path.join(out_dir, f"nccl{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("nccl")
    world = min(2, torch.cuda.device_count())
    mp.spawn(_worker, args=(world, _port(), str(out)), nprocs=world, join=True)
    return [torch.load(out / f"nccl{r}.pt", weights_only=False) for r in range(world)]


@pytest.mark.parametrize("name", ["identity", "identity_tp"])
def test_identity_hook_matches_allreduce_on_nccl(name, runs):
    torch.testing.assert_close(runs[0][name]["params"], runs[0]["ref"]["params"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["ecq", "qsgd", "mqgrad", "ecq_tp", "qsgd_tp", "mqgrad_tp"])
def test_compressed_steps_on_nccl(name, runs):
    first = runs[0][name]
    assert torch.isfinite(first["params"]).all()
    assert not torch.equal(first["params"], runs[0]["identity"]["params"])  # lossy, so not the all-reduce
    assert first["stats"]["hook_calls"] == 4 and first["stats"]["bytes_sent"] > 0
    for other in runs[1:]:
        assert torch.equal(other[name]["params"], first["params"])  # every rank holds the same weights


def test_auto_runs_on_nccl_and_keeps_ranks_identical(runs):
    first = runs[0]["auto_slow"]
    assert torch.isfinite(first["params"]).all() and first["stats"]["hook_calls"] == 4
    assert all(torch.equal(r["auto_slow"]["params"], first["params"]) for r in runs[1:])
