"""Channel importance criteria: ``fn(graph, activations_fn) -> {(weight FQN, dim): scores}``.

Each producer (a weight dim that creates channels) gets one score per channel. Scores are normalised
per producer (divided by its mean) so groups from different layers compare fairly in a global ranking;
a group's score is the mean over its members.

- ``l1`` / ``l2``: norm of the channel's output filter, divided by its fan-in (weight only, data-free).
- ``group_l1``: mean over every weight the channel touches (producer filter, consumer input slices, BN
  scale), each member's L1 normalised by its mean (data-free).
- ``bn_scale``: |gamma| of the BatchNorm that follows the channel (network slimming); channels
  without a BN fall back to ``l2``.
- ``vote``: majority voting of activations (needs data): each sample votes for the top-``q``
  fraction of a layer's units by mean activation; a unit's score is its share of votes.
- ``redundancy``: linear redundancy (needs data): the relative least-squares residual of a unit's
  activation given the other units of its layer (small = redundant). Computed from the Gram matrix:
  residual_j^2 / ||a_j||^2 = 1 / (G_jj (G^-1)_jj).
"""
import numpy as np
import torch

from slimkit.compress.graph import UNARY, _op
from slimkit.registry import Registry

# "expected one of": the words PruneConfig's and the tests' error checks have always used
CRITERIA = Registry("criterion", plural="criteria", known="expected one of")
_CRITERIA = CRITERIA.entries
_FOLLOW = UNARY | {"batch_norm", "layer_norm", "group_norm", "instance_norm"}


# register_importance(name) decorates fn(graph, activations=None) -> {(weight FQN, dim): scores}
register_importance, list_importances, get_importance = CRITERIA.register, CRITERIA.names, CRITERIA.get


def _tensor(graph, fqn):
    mod, _, attr = fqn.rpartition(".")
    return getattr(graph.cap.model.get_submodule(mod) if mod else graph.cap.model, attr).detach()


def _norm_scores(graph, p):
    out = {}
    for prod in graph.unique_producers():
        w = _tensor(graph, prod.param).movedim(prod.dim, 0).flatten(1).float()
        out[(prod.param, prod.dim)] = w.abs().pow(p).sum(1).pow(1 / p) / max(w.shape[1], 1) ** (1 / p)
    return out


@register_importance("l1")
def l1(graph, activations=None):
    return _norm_scores(graph, 1)


@register_importance("l2")
def l2(graph, activations=None):
    return _norm_scores(graph, 2)


@register_importance("group_l1")
def group_l1(graph, activations=None):
    """Every weight a channel touches, not only the filter that makes it: the producer's output filter, each
    consumer's input slice and the BatchNorm scale, each member's L1 normalised by its mean (so layers of
    other sizes weigh the same) and averaged per channel group (DepGraph's group-level magnitude)."""
    bn_weights = {w for w, _, _ in graph.bn_params}
    total, count = np.zeros(len(graph.groups)), np.zeros(len(graph.groups))
    for fqn, dims in graph.param_elems.items():
        w = _tensor(graph, fqn).float()
        if w.dim() < 2 and fqn not in bn_weights:  # biases say nothing about a channel's use
            continue
        for d, elems in dims.items():
            gids = graph.group_ids(elems)
            hit = gids >= 0  # not a kernel position or a fixed input channel
            if hit.any():
                s = w.movedim(d, 0).reshape(w.shape[d], -1).abs().sum(1)
                np.add.at(total, gids[hit], (s / s.mean().clamp_min(1e-12)).numpy()[hit])
                np.add.at(count, gids[hit], 1)
    mean = total / np.maximum(count, 1)
    return {(p.param, p.dim): torch.from_numpy(mean[graph.group_ids(graph.param_elems[p.param][p.dim])]).float()
            for p in graph.unique_producers()}


@register_importance("bn_scale")
def bn_scale(graph, activations=None):
    out = _norm_scores(graph, 2)
    gamma = {}
    for wname, _, _ in graph.bn_params:
        elems = graph.param_elems.get(wname, {}).get(0)
        if elems is None:
            continue
        for e, gv in zip(elems.tolist(), _tensor(graph, wname).abs().tolist()):
            gamma.setdefault(graph.uf.find(e), gv)
    for prod in graph.unique_producers():
        roots = [graph.uf.find(e) for e in graph.param_elems[prod.param][prod.dim].tolist()]
        if all(r in gamma for r in roots):
            out[(prod.param, prod.dim)] = torch.tensor([gamma[r] for r in roots])
    return out


def activation_node(graph, producer):
    """Follow single-user pass-through ops (BN, ReLU, ...) after a producer's op: where its units are
    'activated'. Returns (node name, channel dim of that node's output)."""
    node = graph.node_by_name(producer.node)
    while len(node.users) == 1:
        user = next(iter(node.users))
        if user.op != "call_function" or _op(user) not in _FOLLOW or user.args[0] is not node:
            break
        node = user
    elems = graph.param_elems[producer.param][producer.dim]
    roots = [graph.uf.find(e) for e in elems.tolist()]
    for t in graph.vals[node.name].tracks:
        if len(t.dims) == 1 and len(t.grid) == len(elems) and [graph.uf.find(int(e)) for e in t.grid] == roots:
            return node.name, t.dims[0]
    return None, None


def per_channel(act, dim=1):
    """[N, ..., C at ``dim``, ...] -> [N, C, S] (S positions per channel)."""
    act = act.movedim(dim, 1)
    return act.reshape(act.shape[0], act.shape[1], -1)


def producer_activations(graph, activations):
    """{producer key: [N, C, S] activations} for every producer whose activation node is found."""
    where = {}
    for prod in graph.unique_producers():
        name, dim = activation_node(graph, prod)
        if name is not None:
            where[(prod.param, prod.dim)] = (name, dim)
    acts = activations(sorted({n for n, _ in where.values()}))
    return {k: per_channel(acts[n], d) for k, (n, d) in where.items() if n in acts}


@register_importance("vote")
def vote(graph, activations, q=0.5):
    if activations is None:
        raise ValueError("criterion 'vote' needs data (context.data or example inputs with a batch)")
    out = l2(graph)
    for key, a in producer_activations(graph, activations).items():
        m = a.mean(2)  # [N, C]
        k = max(1, int(round(q * m.shape[1])))
        top = m.topk(k, dim=1).indices
        votes = torch.zeros(m.shape[1]).index_add_(0, top.flatten(), torch.ones(top.numel()))
        out[key] = votes / m.shape[0] + 1e-6
    return out


def gram(a):
    """Gram matrix over samples of per-channel activations [N, C, *] -> [C, C] (float64)."""
    a = a if a.dim() == 3 else per_channel(a)
    x = a.transpose(1, 2).reshape(-1, a.shape[1]).double()
    return x.T @ x


def gram_solve(g, b, ridge=1e-10):
    """Solve (g + ridge * mean(diag g) I) x = b for a Gram matrix ``g``. Dead (all-zero) units make it
    singular: where the solve fails, or every unit is dead, the pseudo-inverse gives the minimum-norm x."""
    scale = float(g.diagonal().mean())
    if scale > 0:
        x, info = torch.linalg.solve_ex(g + ridge * scale * torch.eye(g.shape[0], dtype=g.dtype), b)
        if int(info) == 0 and torch.isfinite(x).all():
            return x
    return torch.linalg.pinv(g, hermitian=True) @ b


def redundancy_residuals(g, ridge=1e-10):
    """Relative least-squares residual of each unit given all the others, from the Gram matrix."""
    diag = g.diagonal().clamp_min(1e-30)
    inv_diag = gram_solve(g, torch.eye(g.shape[0], dtype=g.dtype), ridge).diagonal()
    res = (1.0 / (diag * inv_diag)).clamp(0, 1).sqrt()
    dead = g.diagonal() <= 1e-12 * g.diagonal().mean().clamp_min(1e-30)
    return res.masked_fill(dead, 0.0)  # an all-zero unit is exactly a (zero) combination of the others


@register_importance("redundancy")
def redundancy(graph, activations):
    if activations is None:
        raise ValueError("criterion 'redundancy' needs data (context.data or example inputs with a batch)")
    out = l2(graph)
    for key, a in producer_activations(graph, activations).items():
        out[key] = redundancy_residuals(gram(a)).float() + 1e-6
    return out


def group_scores(graph, per_source):
    """Mean of per-producer-normalised member scores for each prunable group."""
    norm = {k: v / v.mean().clamp_min(1e-12) for k, v in per_source.items()}
    out = {}
    for g in graph.prunable_groups():
        vals = [float(norm[(graph.producers[pi].param, graph.producers[pi].dim)][c]) for pi, c in g.members]
        out[g.id] = sum(vals) / len(vals)
    return out


@torch.no_grad()
def record(graph, examples, node_names):
    """Outputs of ``node_names`` over the input ``examples``, concatenated along the batch."""
    acc = {}
    for ex in examples:
        for k, v in graph.cap.run(ex, node_names).items():
            acc.setdefault(k, []).append(v)
    return {k: torch.cat(v) for k, v in acc.items()}
