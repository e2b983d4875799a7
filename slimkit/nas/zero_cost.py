"""Zero-cost architecture scores: rank untrained networks by one forward pass of a mini-batch.

NASWOT (Mellor et al., ICML 2021, "Neural Architecture Search without Training", second version): each image
of the batch gets a binary code, which inputs of the network's ReLUs are positive at initialisation;
``K[i, j]`` counts the units where images i and j agree (units minus Hamming distance), and the score is
``log |K|``. A network whose ReLUs cut the batch into distinct linear regions scores higher; on NAS-Bench-201
that correlates with the trained accuracy (``benchmarks/nas/bench_zero_cost.py``). Two images with the same
code make ``K`` singular: -inf, as the authors' ``slogdet`` gives.

Written here because no maintained PyTorch library ships it (the authors' code and NASLib are research code
bound to their search-space APIs).
"""
import copy

import torch


@torch.no_grad()
def naswot(model, x) -> float:
    """NASWOT score of ``model`` (as given: call it on a freshly initialised network) on the batch ``x``.
    Codes come from every ``nn.ReLU`` module's input, with BatchNorm on batch statistics (training mode, as the
    authors score); runs on a copy, so ``model`` and its statistics are unchanged."""
    net = copy.deepcopy(model).train()
    relus = [m for m in net.modules() if isinstance(m, torch.nn.ReLU)]
    if not relus:
        raise ValueError("naswot needs nn.ReLU modules: the score is read from their inputs")
    if len(x) < 2:
        raise ValueError(f"naswot needs a batch of >= 2 inputs, got {len(x)}")
    K = torch.zeros(len(x), len(x), dtype=torch.float64)

    def add(module, args):  # accumulated per ReLU, so the codes of a large network are never held at once
        c = (args[0] > 0).flatten(1).double()
        K.add_(c @ c.T + (1 - c) @ (1 - c).T)

    handles = [m.register_forward_pre_hook(add) for m in relus]
    try:
        net(x)
    finally:
        for h in handles:
            h.remove()
    sign, logdet = torch.linalg.slogdet(K)
    return float(logdet) if sign > 0 else float("-inf")
