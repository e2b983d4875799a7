"""Channel importance criteria: callables ``(graph, activations_fn) -> {(source, channel): score}``.

Scores are normalised per source layer (divided by that layer's mean) so groups from different layers
compare fairly in a global ranking; a group's score is the mean over its members.

- ``l1`` / ``l2``: norm of the output filter, divided by its fan-in (weight only, data-free).
- ``bn_scale``: |gamma| of the BatchNorm that follows the channel (network slimming); channels
  without a BN fall back to ``l2``.
- ``vote``: majority voting of activations (needs data): each sample votes for the top-``q``
  fraction of a layer's units by mean activation; a unit's score is its share of votes.
- ``redundancy``: linear redundancy (needs data): the relative least-squares residual of a unit's
  activation given the other units of its layer (small = redundant). Computed from the Gram matrix:
  residual_j^2 / ||a_j||^2 = 1 / (G_jj (G^-1)_jj).
"""
import torch
import torch.fx

_CRITERIA = {}


def register_importance(name):
    def wrap(fn):
        if name in _CRITERIA:
            raise ValueError(f"importance {name!r} is already registered")
        _CRITERIA[name] = fn
        return fn
    return wrap


def list_importances():
    return sorted(_CRITERIA)


def get_importance(name):
    try:
        return _CRITERIA[name]
    except KeyError:
        raise ValueError(f"unknown criterion {name!r}; expected one of {', '.join(list_importances())}") from None


def _module(graph, node_name):
    node = next(n for n in graph.gm.graph.nodes if n.name == node_name)
    return graph.modules[node.target]


def _norm_scores(graph, p):
    out = {}
    for src in graph.sources:
        w = _module(graph, src).weight.detach()
        w = w.flatten(1)
        out[src] = w.abs().pow(p).sum(1).pow(1 / p) / w.shape[1] ** (1 / p)
    return out


@register_importance("l1")
def l1(graph, activations=None):
    return _norm_scores(graph, 1)


@register_importance("l2")
def l2(graph, activations=None):
    return _norm_scores(graph, 2)


@register_importance("bn_scale")
def bn_scale(graph, activations=None):
    out = _norm_scores(graph, 2)
    gamma = {}
    for name, src_in in graph.param_pass.items():
        bn = _module(graph, name)
        if getattr(bn, "affine", False) and hasattr(bn, "running_var"):
            for e, gv in zip(graph.tensors[src_in].elems, bn.weight.detach().abs()):
                gamma.setdefault(e, float(gv))
    for src, elems in graph.sources.items():
        if all(e in gamma for e in elems):
            out[src] = torch.tensor([gamma[e] for e in elems])
    return out


def activation_node(graph, src):
    """Follow single-user pass-through ops (BN, ReLU, ...) after ``src``: where its units are 'activated'."""
    nodes = {n.name: n for n in graph.gm.graph.nodes}
    node = nodes[src]
    while len(node.users) == 1:
        user = next(iter(node.users))
        if graph.tensors.get(user.name) is not graph.tensors[node.name] or user.name in graph.consumers:
            break
        node = user
    return node.name


def per_channel(act):
    """[N, C, *] -> [N, C, S] (S positions per channel)."""
    return act.reshape(act.shape[0], act.shape[1], -1)


@register_importance("vote")
def vote(graph, activations, q=0.5):
    if activations is None:
        raise ValueError("criterion 'vote' needs data (context.data or example inputs with a batch)")
    acts = activations({src: activation_node(graph, src) for src in graph.sources})
    out = {}
    for src, a in acts.items():
        m = per_channel(a).mean(2)  # [N, C]
        k = max(1, int(round(q * m.shape[1])))
        top = m.topk(k, dim=1).indices
        votes = torch.zeros(m.shape[1]).index_add_(0, top.flatten(), torch.ones(top.numel()))
        out[src] = votes / m.shape[0] + 1e-6
    return out


def gram(a):
    """Gram matrix over samples of per-channel activations [N, C, *] -> [C, C] (float64)."""
    x = per_channel(a).transpose(1, 2).reshape(-1, a.shape[1]).double()
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
    acts = activations({src: activation_node(graph, src) for src in graph.sources})
    return {src: redundancy_residuals(gram(a)).float() + 1e-6 for src, a in acts.items()}


def group_scores(graph, per_source):
    """Mean of per-source-normalised member scores for each prunable group."""
    norm = {s: v / v.mean().clamp_min(1e-12) for s, v in per_source.items()}
    return {g.id: float(sum(norm[s][i] for s, i in g.members) / len(g.members)) for g in graph.prunable_groups()}


class _Recorder(torch.fx.Interpreter):
    def __init__(self, gm, wanted):
        super().__init__(gm)
        self.wanted, self.seen = wanted, {}

    def run_node(self, n):
        out = super().run_node(n)
        if n.name in self.wanted:
            self.seen[n.name] = out.detach()
        return out


@torch.no_grad()
def record(gm, batches, node_names):
    """Outputs of ``node_names`` over input ``batches`` (tuples), concatenated along the batch."""
    acc = {}
    for inputs in batches:
        rec = _Recorder(gm, set(node_names))
        rec.run(*inputs)
        for k, v in rec.seen.items():
            acc.setdefault(k, []).append(v)
    return {k: torch.cat(v) for k, v in acc.items()}
