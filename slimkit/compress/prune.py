"""Structured pruning: physically remove channels/neurons, dependency-aware (``graph.py``).

Targets (one of):

- ``macs=0.5``: keep about half of the MACs (searched: the number of removed groups is bisected
  against the exact MAC count of the pruned model on the example inputs);
- ``ratio=0.3``: remove 30% of the prunable channel groups of every layer cluster (``scope=layer``)
  or of all of them ranked together (``scope=global``);
- neither, with ``criterion=redundancy``: remove every unit whose activation is a linear combination
  of the others with relative residual < ``tau``.

With ``criterion=redundancy`` the removed units' contribution is folded into the next conv/linear:
``W_next[:, K] += W_next[:, S] @ C`` where ``C`` solves ``A_K C = A_S`` (least squares over the
calibration activations), so an exactly dependent unit is removed losslessly. This applies to units
whose layer output reaches only convs/linears through pass-through ops (BN/ReLU); others are removed
without compensation.

Example::

    from slimkit.compress.prune import PruneConfig, prune
    small = prune(model, torch.randn(1, 3, 32, 32), PruneConfig(macs=0.5, criterion="l1"))
"""
import copy
from dataclasses import dataclass
from typing import Optional

import torch
from tqdm.auto import tqdm

from slimkit.compress.base import CompressContext, PassConfig, register_pass
from slimkit.compress.graph import ChannelGraph, trace
from slimkit.compress.importance import (activation_node, get_importance, gram, group_scores, record,
                                         redundancy_residuals, gram_solve)
from slimkit.compress.surgery import apply_removal
from slimkit.profile.counting import count_macs

SCOPES = ("global", "layer")


@dataclass
class PruneConfig(PassConfig):
    """``macs``: fraction of MACs to keep; ``ratio``: fraction of channels to remove per layer (or
    globally); ``criterion``: l1|l2|bn_scale|vote|redundancy; ``round_to``: kept channels per layer
    cluster rounded up to a multiple; ``tau``: redundancy threshold; ``q``: vote top fraction;
    ``coupled=False`` prunes only channels with a single producer (block-internal channels), the usual
    setting for residual networks, whose shared residual stream is the most sensitive part."""

    name = "prune"
    lossless = False
    macs: Optional[float] = None
    ratio: Optional[float] = None
    criterion: str = "l1"
    scope: str = "global"
    round_to: int = 1
    tau: float = 1e-4
    q: float = 0.5
    calib_batches: int = 4
    coupled: bool = True  # False: leave groups coupled across adds/concats (a ResNet's residual stream) intact

    def __post_init__(self):
        if self.macs is not None and not 0 < self.macs <= 1:
            raise ValueError(f"prune: macs must be a kept fraction in (0, 1], got {self.macs}")
        if self.ratio is not None and not 0 <= self.ratio < 1:
            raise ValueError(f"prune: ratio must be a removed fraction in [0, 1), got {self.ratio}")
        if self.macs is not None and self.ratio is not None:
            raise ValueError("prune: give either macs= or ratio=, not both")
        if self.scope not in SCOPES:
            raise ValueError(f"prune: scope must be one of {SCOPES}, got {self.scope!r}")
        if self.macs is None and self.ratio is None and self.criterion != "redundancy":
            raise ValueError("prune: needs macs= (kept MAC fraction) or ratio= (removed channel fraction)")
        get_importance(self.criterion)  # raises with the valid names
        if self.round_to < 1:
            raise ValueError(f"prune: round_to must be >= 1, got {self.round_to}")


def _as_tuple(x):
    return x if isinstance(x, tuple) else (x,)


def calibration_batches(example_inputs, context, n):
    """Input tuples for activation statistics: the few-shot data if given, else the example inputs."""
    if context is not None and context.data is not None:
        out = []
        for batch in context.data:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            out.append(_as_tuple(x))
            if len(out) >= n:
                break
        return out
    return [_as_tuple(example_inputs)]


class Pruner:
    """Ranks the channel groups of a model and builds pruned copies; used by the pass and the budget driver."""

    def __init__(self, model, example_inputs, criterion="l1", context=None, calib_batches=4, q=0.5, coupled=True):
        self.example_inputs = _as_tuple(example_inputs)
        self.graph = ChannelGraph(trace(copy.deepcopy(model).eval(), self.example_inputs))
        self.batches = calibration_batches(example_inputs, context, calib_batches)
        self.criterion = criterion
        fn = get_importance(criterion)
        per_source = fn(self.graph, self._activations) if criterion != "vote" else fn(self.graph, self._activations, q)
        self.scores = group_scores(self.graph, per_source)
        clusters = self.graph.clusters()
        if not coupled:  # keep only groups produced by a single layer
            clusters = [[gid for gid in c if len(self.graph.groups[gid].members) == 1] for c in clusters]
        self.clusters = [sorted(c, key=self.scores.get) for c in clusters if c]
        self.macs0 = count_macs(self.graph.gm, self.example_inputs)
        self._folds = self._redundancy_stats() if criterion == "redundancy" else {}

    def _activations(self, wanted):
        rec = record(self.graph.gm, self.batches, list(set(wanted.values())))
        return {src: rec[node] for src, node in wanted.items()}

    # ---- linear-redundancy compensation
    def _redundancy_stats(self):
        """Gram matrices at the input of eligible consumers: sources whose output only reaches convs/linears."""
        g, nodes, out = self.graph, {n.name: n for n in self.graph.gm.graph.nodes}, {}
        for src, elems in g.sources.items():
            x = activation_node(g, src)
            users = list(nodes[x].users)
            single = all(g.group_of(e) is not None and len(g.groups[g.group_of(e)].members) == 1
                         and g.groups[g.group_of(e)].prunable for e in elems)
            if single and users and all(g.consumers.get(u.name) == x for u in users) \
                    and g.tensors[x].elems == elems:
                out[src] = (x, [u.name for u in users])
        if out:
            acts = record(g.gm, self.batches, list({x for x, _ in out.values()}))
            out = {src: (x, users, gram(acts[x])) for src, (x, users) in out.items()}
        return out

    def _fold_fns(self, removed):
        fns = {}
        for src, (x, users, gmat) in self._folds.items():
            elems = self.graph.sources[src]
            gids = [self.graph.group_of(e) for e in elems]
            S = [i for i, gid in enumerate(gids) if gid in removed]
            K = [i for i, gid in enumerate(gids) if gid not in removed]
            if not S or not K:
                continue
            coef = gram_solve(gmat[K][:, K], gmat[K][:, S])  # [|K|, |S|]: a_S = a_K @ coef
            repeat = self.graph.tensors[x].repeat
            for u in users:
                fns[u] = _make_fold(torch.tensor(K), torch.tensor(S), coef.float(), repeat)
        return fns

    # ---- selection
    def _respect_minimums(self, removed, round_to):
        """Keep >= round_to channels per source and a multiple of round_to per cluster."""
        removed = set(removed)
        for cluster in self.clusters:
            gone = [gid for gid in cluster if gid in removed]
            keep_n = len(cluster) - len(gone)
            want = min(len(cluster), max(round_to, -(-keep_n // round_to) * round_to))
            for gid in reversed(gone):  # give back the best-scored removed groups first
                if keep_n >= want:
                    break
                removed.discard(gid)
                keep_n += 1
        for src, elems in self.graph.sources.items():
            gids = [self.graph.group_of(e) for e in elems]
            kept = sum(1 for gid in gids if gid not in removed)
            for gid in sorted({gid for gid in gids if gid in removed}, key=self.scores.get, reverse=True):
                if kept >= min(round_to, len(elems)):
                    break
                removed.discard(gid)
                kept += 1
        return removed

    def select(self, amount, scope="global", round_to=1):
        """Groups to remove: ``amount`` in [0, 1] is the removed fraction (per cluster or global)."""
        if scope == "layer":
            removed = [gid for c in self.clusters for gid in c[:int(amount * len(c))]]
        else:
            order = sorted((gid for c in self.clusters for gid in c), key=self.scores.get)
            removed = order[:int(round(amount * len(order)))]
        return self._respect_minimums(removed, round_to)

    def build(self, removed):
        return apply_removal(self.graph, removed, fold=self._fold_fns(set(removed)) if self._folds else None)

    def macs_ratio(self, removed):
        return count_macs(self.build(removed), self.example_inputs) / self.macs0

    def search_macs(self, target, scope="global", round_to=1, progress=False):
        """Smallest removed fraction whose pruned model keeps <= ``target`` of the MACs (bisection)."""
        lo, hi = 0.0, 1.0
        best = self.select(1.0, scope, round_to)
        if self.macs_ratio(best) > target:
            return best  # cannot reach the target: return the most pruned model we can build
        for _ in tqdm(range(12), desc="prune: MAC search", disable=not progress, leave=False):
            mid = (lo + hi) / 2
            removed = self.select(mid, scope, round_to)
            if self.macs_ratio(removed) <= target:
                hi, best = mid, removed
            else:
                lo = mid
        return best

    def redundant(self, tau):
        """Greedy: repeatedly remove the eligible unit with the smallest residual while it is < tau."""
        removed = set()
        for src, (_, _, gmat) in self._folds.items():
            gids = [self.graph.group_of(e) for e in self.graph.sources[src]]
            alive = list(range(len(gids)))
            while len(alive) > 1:
                res = redundancy_residuals(gmat[alive][:, alive])
                j = int(res.argmin())
                if res[j] >= tau:
                    break
                removed.add(gids[alive.pop(j)])
        return removed


def _make_fold(K, S, coef, repeat):
    def fold(mod, in_keep):
        with torch.no_grad():
            w = mod.weight
            if repeat == 1:
                w[:, K] += torch.einsum("os...,ks->ok...", w[:, S], coef)
            else:  # flattened input: channel c owns features c*repeat .. c*repeat+repeat-1
                w3 = w.view(w.shape[0], -1, repeat)
                w3[:, K] += torch.einsum("osr,ks->okr", w3[:, S], coef)
    return fold


@register_pass(PruneConfig)
def prune(model, example_inputs, config=PruneConfig(ratio=0.0), context=None):
    """Return a structurally pruned copy of ``model`` (a torch.fx GraphModule); ``model`` is untouched."""
    context = context or CompressContext()
    pruner = Pruner(model, example_inputs, config.criterion, context, config.calib_batches, config.q,
                    config.coupled)
    if config.macs is not None:
        removed = pruner.search_macs(config.macs, config.scope, config.round_to, context.progress)
    elif config.ratio is not None:
        removed = pruner.select(config.ratio, config.scope, config.round_to)
    else:
        removed = pruner._respect_minimums(pruner.redundant(config.tau), config.round_to)
    out = pruner.build(removed)
    context.extras["prune"] = {"groups_removed": len(removed), "groups_prunable": len(pruner.scores),
                               "macs_before": pruner.macs0}
    return out
