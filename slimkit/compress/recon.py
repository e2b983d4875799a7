"""Channel selection by reconstruction: which input channels of a layer to keep so that its outputs can be
rebuilt best by least squares from the rest (channel pruning of He et al. 2017 and ThiNet, solved exactly).

A layer's weights W (rows = im2col columns, grouped by input channel; a bias column is never removed) see the
quadratic objective ``f(W) = tr(W' G W) - 2 tr(W' B) + c`` (G: Gram matrix of the layer's inputs, B: inputs
times target outputs). Its minimiser is ``W* = G^-1 B``. Removing channel g from the kept set and refitting
the others raises the minimum by exactly ``tr(W*_g' (H_gg)^-1 W*_g)`` with ``H = G^-1`` (optimal brain surgeon
for a block of columns), and ``H``, ``W*`` are downdated in closed form. ``greedy_select`` removes, one at a
time, the channel whose removal raises the summed objective of all the layers reading the channels least:
greedy backward elimination on the exact least-squares error, with the refit of every kept weight included.
The returned weights are solved afresh on the kept columns (exact minimiser of the ridge-regularised f).
"""
from dataclasses import dataclass

import torch


@dataclass
class Quadratic:
    """One consumer's least-squares problem: ``gram`` (d, d), ``rhs`` (d, out), ``groups``: LongTensor (C, k)
    of the columns each input channel owns (the remaining columns, e.g. a bias, are always kept)."""

    gram: torch.Tensor
    rhs: torch.Tensor
    groups: torch.Tensor


def _regularised(gram, ridge):
    scale = float(gram.diagonal().mean())
    return gram + max(ridge * scale, 1e-12 * max(scale, 1e-30)) * torch.eye(gram.shape[0], dtype=gram.dtype)


def solve(q: Quadratic, keep_groups, ridge):
    """Exact minimiser of f restricted to the kept channels' columns (plus the always-kept ones):
    (weights on those columns, their column indices)."""
    cols = kept_columns(q, keep_groups)
    g = _regularised(q.gram[cols][:, cols], ridge)
    return torch.linalg.solve(g, q.rhs[cols]), cols


def kept_columns(q: Quadratic, keep_groups):
    d = q.gram.shape[0]
    owned = torch.zeros(d, dtype=torch.bool)
    owned[q.groups.flatten()] = True
    keep = ~owned
    keep[q.groups[torch.as_tensor(keep_groups, dtype=torch.long)].flatten()] = True
    return torch.nonzero(keep)[:, 0]


def objective(q: Quadratic, w, cols):
    """f(W) - c for weights ``w`` on columns ``cols`` (the others zero)."""
    g = q.gram[cols][:, cols]
    return float((w * (g @ w)).sum() - 2 * (w * q.rhs[cols]).sum())


def greedy_select(problems, n_keep, ridge=1e-3):
    """Keep ``n_keep`` of the C channels shared by ``problems`` (one Quadratic per consumer, same C):
    sorted LongTensor of kept channel ids."""
    n = problems[0].groups.shape[0]
    if any(q.groups.shape[0] != n for q in problems):
        raise ValueError("greedy_select: every consumer must read the same channels")
    if not 1 <= n_keep <= n:
        raise ValueError(f"greedy_select: n_keep must be in [1, {n}], got {n_keep}")
    state = []
    for q in problems:
        h = torch.linalg.inv(_regularised(q.gram, ridge))
        state.append([h, h @ q.rhs])
    alive = torch.ones(n, dtype=torch.bool)
    for _ in range(n - n_keep):
        live = torch.nonzero(alive)[:, 0]
        cost = torch.zeros(len(live), dtype=problems[0].gram.dtype)
        for q, (h, w) in zip(problems, state):
            g = q.groups[live]
            hb = h[g[:, :, None], g[:, None, :]]  # (C, k, k)
            wb = w[g]  # (C, k, out)
            cost += (wb * torch.linalg.solve(hb, wb)).sum((1, 2))
        j = int(live[int(cost.argmin())])
        alive[j] = False
        for q, st in zip(problems, state):
            h, w = st
            c = q.groups[j]
            inv = torch.linalg.inv(h[c][:, c])
            hc = h[:, c]
            st[1] = w - hc @ (inv @ w[c])
            st[0] = h - hc @ inv @ hc.T
    return torch.nonzero(alive)[:, 0]


def conv_groups(n_channels, k):
    """Column groups of an im2col design matrix with channels outermost (F.unfold's order), plus a bias column."""
    return torch.arange(n_channels * k).reshape(n_channels, k)
