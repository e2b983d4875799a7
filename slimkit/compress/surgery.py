"""Physical channel removal on a copy of the user's own modules.

``apply_removal(graph, removed_groups, model)`` deep-copies ``model`` and slices every parameter and
buffer along each dim by the elements the channel graph gave it, then updates the attributes that
describe shapes (``in_channels``, ``out_features``, ``num_features``, ``normalized_shape``, HF
``Conv1D.nf``, attention head counts ...), so the model's own forward code runs unchanged. Tied
parameters (an LM head sharing the embedding matrix) stay tied.

Extend it for a custom layer whose attributes describe its shapes::

    @register_surgery(MyLayer)
    def _(module):            # called after its parameters were sliced
        module.width = module.weight.shape[0]

The pruned model carries a :class:`PruneRecord` (``prune_record(model)``): the kept channel indices
per conv/linear layer relative to the model before the first prune, and the single-producer channel
chains that recovery passes may re-select.
"""
import copy
import fnmatch
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
from torch import nn

from slimkit.compress.graph import pad_editor
from slimkit.registry import Registry

SURGERY = Registry("surgery", plural="surgeries", by_type=True)
_SURGERY = SURGERY.entries
RECORD_ATTR = "_slimkit_prune_record"

# attribute names that hold an attention module's head count, and its total head width
HEAD_COUNT_ATTRS = ("num_heads", "num_attention_heads", "n_head", "n_heads", "heads", "num_attn_heads")
HEAD_WIDTH_ATTRS = ("all_head_size", "split_size", "inner_dim", "attention_dim", "proj_size", "inner_size")


def register_surgery(module_type):
    """Register ``fn(module)`` that updates ``module_type``'s shape attributes after its parameters were
    sliced; subclasses use their parent's. A duplicate raises."""
    return SURGERY.register(module_type)


def get_surgery(module):
    return SURGERY.find(module)


@register_surgery(nn.modules.conv._ConvNd)
def _conv(m):
    w = m.weight
    if m.transposed:
        m.in_channels, m.out_channels = w.shape[0], w.shape[1] * m.groups
    elif m.groups > 1 and w.shape[1] == 1 and m.groups == m.in_channels == m.out_channels:  # depthwise
        m.in_channels = m.out_channels = m.groups = w.shape[0]
    else:
        m.out_channels, m.in_channels = w.shape[0], w.shape[1] * m.groups


@register_surgery(nn.Linear)
def _linear(m):
    m.out_features, m.in_features = m.weight.shape


@register_surgery(nn.modules.batchnorm._NormBase)
def _batchnorm(m):
    ref = m.weight if m.weight is not None else m.running_mean
    m.num_features = ref.shape[0]


@register_surgery(nn.LayerNorm)
def _layernorm(m):
    if m.weight is not None:
        m.normalized_shape = tuple(m.weight.shape)


@register_surgery(nn.GroupNorm)
def _groupnorm(m):
    if m.weight is not None:
        size = m._slimkit_group_size if hasattr(m, "_slimkit_group_size") else m.num_channels // m.num_groups
        m.num_channels = m.weight.shape[0]
        m.num_groups = max(1, m.num_channels // size) if m.num_groups > 1 else 1
        if hasattr(m, "_slimkit_group_size"):
            del m._slimkit_group_size


@register_surgery(nn.Embedding)
def _embedding(m):
    m.num_embeddings, m.embedding_dim = m.weight.shape


def _generic(m):
    """Modules without a registered surgery: the usual attribute names (Hugging Face Conv1D: ``nf``)."""
    w = getattr(m, "weight", None)
    if not torch.is_tensor(w) or w.dim() != 2:
        return
    if type(m).__name__ == "Conv1D" and hasattr(m, "nf"):  # weight [in, out]
        m.nf = w.shape[1]
        if hasattr(m, "nx"):
            m.nx = w.shape[0]
    else:
        if hasattr(m, "out_features"):
            m.out_features = w.shape[0]
        if hasattr(m, "in_features"):
            m.in_features = w.shape[1]


@dataclass
class Chain:
    """Channels with exactly one producer (e.g. a block-internal conv's outputs): the producer's output
    channels, the parameters sliced with them (``followers``, along dim 0) and the layers reading them."""

    producer: str
    followers: list
    consumers: list
    size: int
    kept: torch.Tensor


@dataclass
class PruneRecord:
    """``kept[module] = (out_idx, in_idx)``: kept indices along a conv/linear layer's output channels
    (weight dim 0; HF Conv1D: its output features) and input channels, relative to the model before the
    first prune (None = unchanged). ``chains``: see :class:`Chain`."""

    kept: dict = field(default_factory=dict)
    chains: list = field(default_factory=list)
    sizes: dict = field(default_factory=dict)  # module -> (out, in) channels before the first prune


def prune_record(model) -> Optional[PruneRecord]:
    return getattr(model, RECORD_ATTR, None)


def _tensor_owners(model):
    """id(tensor) -> [(module, attribute name, is_parameter)] over every module (tied weights appear twice)."""
    owners = {}
    for mod in model.modules():
        for name, p in mod._parameters.items():
            if p is not None:
                owners.setdefault(id(p), []).append((mod, name, True))
        for name, b in mod._buffers.items():
            if b is not None:
                owners.setdefault(id(b), []).append((mod, name, False))
    return owners


def _get_tensor(model, fqn):
    mod_name, _, attr = fqn.rpartition(".")
    mod = model.get_submodule(mod_name) if mod_name else model
    return getattr(mod, attr)


def keep_indices(graph, removed_groups):
    """``{param/buffer FQN: {dim: kept LongTensor}}`` for every tensor that loses positions."""
    removed = np.zeros(len(graph.groups) + 1, dtype=bool)
    for g in removed_groups:
        removed[g] = True
    keep = {}
    for fqn, dims in graph.param_elems.items():
        for d, elems in dims.items():
            gids = graph.group_ids(elems)
            mask = ~removed[gids]
            if not mask.all():
                keep.setdefault(fqn, {})[d] = torch.from_numpy(np.nonzero(mask)[0]).long()
    return keep


def _module_kind_dims(mod):
    """(out dim, in dim) of a layer's weight, or None for layers without that notion."""
    if isinstance(mod, nn.modules.conv._ConvNd):
        return (1, 0) if mod.transposed else (0, 1)
    if isinstance(mod, nn.Linear):
        return (0, 1)
    if type(mod).__name__ == "Conv1D":
        return (1, 0)
    return None


def apply_removal(graph, removed_groups, model, fold=None):
    """A pruned copy of ``model`` without the channels of ``removed_groups`` (group ids).

    ``fold``: optional ``{weight FQN: fn(weight tensor)}`` applied to weights before slicing (linear-
    redundancy pruning moves a removed unit's contribution to the kept ones this way)."""
    removed_groups = set(removed_groups)
    new = copy.deepcopy(model)
    keep = keep_indices(graph, removed_groups)
    _check_not_empty(graph, keep, new)
    if fold:
        with torch.no_grad():
            for fqn, fn in fold.items():
                fn(_get_tensor(new, fqn))
    touched = set()
    owners = _tensor_owners(new)  # tied tensors: every owner gets the sliced one
    for fqn, dims in keep.items():
        t = _get_tensor(new, fqn)
        sliced = t.detach()
        for d, idx in sorted(dims.items()):
            sliced = sliced.index_select(d, idx)
        sliced = sliced.clone()
        param = nn.Parameter(sliced, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else None
        entries = owners.pop(id(t), [])
        for mod, name, is_param in entries:
            if is_param:
                mod._parameters[name] = param
            else:
                mod._buffers[name] = sliced
            touched.add(mod)
        owners[id(param if param is not None else sliced)] = entries
    for owner, size in graph.groupnorms:
        if owner:
            mod = new.get_submodule(owner)
            if isinstance(mod, nn.GroupNorm):
                mod._slimkit_group_size = size
    for mod in touched:
        (get_surgery(mod) or _generic)(mod)
    _edit_pads(graph, removed_groups, new)
    _fix_heads(graph, removed_groups, new)
    record = _record(graph, keep, model, new)
    setattr(new, RECORD_ATTR, record)
    return new


def _check_not_empty(graph, keep, model):
    for p in graph.unique_producers():
        idx = keep.get(p.param, {}).get(p.dim)
        if idx is not None and len(idx) == 0:
            raise ValueError(f"pruning would remove every output channel of {p.module!r}")


def _edit_pads(graph, removed, model):
    for pad in graph.pads:
        mod = model.get_submodule(pad.module)
        left = sum(1 for g in graph.group_ids(pad.left).tolist() if g not in removed)
        right = sum(1 for g in graph.group_ids(pad.right).tolist() if g not in removed)
        pad_editor(mod)(mod, pad.dim, left, right)


def _fix_heads(graph, removed, model):
    """Attention modules keep their head count in attributes (view(.., num_heads, head_dim)): update
    them on the module that ran the split and its parents, where they hold the old values."""
    by_module = {}
    for s in graph.splits:
        kept = sum(1 for g in graph.group_ids(s.units).tolist() if g not in removed)
        by_module.setdefault(s.module, []).append((len(s.units), kept, s.unit))
    for owner, events in by_module.items():
        old, new_count, unit = events[0]
        if old == new_count or any(e[:2] != (old, new_count) for e in events):
            continue
        names = owner.split(".") if owner else []
        candidates = [".".join(names[:i]) for i in range(len(names), max(len(names) - 3, -1), -1)]
        for name in candidates:
            mod = model.get_submodule(name) if name else model
            for attr in HEAD_COUNT_ATTRS:
                if isinstance(getattr(mod, attr, None), int) and getattr(mod, attr) == old:
                    setattr(mod, attr, new_count)
            for attr in HEAD_WIDTH_ATTRS:
                if isinstance(getattr(mod, attr, None), int) and getattr(mod, attr) == old * unit:
                    setattr(mod, attr, new_count * unit)


def _record(graph, keep, old_model, new_model):
    """The PruneRecord of ``new_model``, composed with the one ``old_model`` carried (if any)."""
    prev = prune_record(old_model) or PruneRecord()
    mods = dict(new_model.named_modules())
    kept, sizes = dict(prev.kept), dict(prev.sizes)
    for name, mod in old_model.named_modules():
        kd = _module_kind_dims(mod)
        if kd is not None and name not in sizes:
            sizes[name] = (mod.weight.shape[kd[0]], mod.weight.shape[kd[1]])
    for name, mod in mods.items():
        kd = _module_kind_dims(mod)
        wname = f"{name}.weight" if name else "weight"
        if kd is None or wname not in keep:
            continue
        o, i = keep[wname].get(kd[0]), keep[wname].get(kd[1])
        po, pi = prev.kept.get(name, (None, None))
        kept[name] = (_compose(po, o), _compose(pi, i))
    chains = []
    for p in graph.unique_producers():
        if not p.param.endswith(".weight") or _module_kind_dims(mods.get(p.module)) is None:
            continue
        elems = graph.param_elems[p.param][p.dim]
        gids = graph.group_ids(elems)
        if (gids < 0).any() or any(len(graph.groups[g].members) != 1 or not graph.groups[g].prunable
                                   for g in set(gids.tolist())):
            continue
        gset = set(gids.tolist())
        followers, consumers = [], []
        for fqn, dims in graph.param_elems.items():
            if fqn == p.param:
                continue
            for d, e in dims.items():
                ge = graph.group_ids(e)
                if not set(ge.tolist()) & gset:
                    continue
                mod_name = fqn.rpartition(".")[0]
                kd = _module_kind_dims(mods.get(mod_name))
                if kd is not None and fqn == f"{mod_name}.weight" and d == kd[1] and len(e) == len(elems):
                    consumers.append(mod_name)
                elif d == 0 and len(e) == len(elems) and set(ge.tolist()) <= gset:
                    followers.append(fqn)
                else:  # read through a flatten or tied in another way: not a simple chain
                    consumers = None
                    break
            if consumers is None:
                break
        if consumers is None or not consumers:
            continue
        size = len(elems)
        idx = keep.get(p.param, {}).get(p.dim, torch.arange(size))
        prev_out = prev.kept.get(p.module, (None, None))[0]
        chains.append(Chain(p.module, sorted(followers), sorted(set(consumers)),
                            sizes.get(p.module, (size,))[0], _compose(prev_out, idx)))
    return PruneRecord(kept, chains, sizes)


def _compose(prev, idx):
    if prev is None:
        return idx
    if idx is None:
        return prev
    return prev[idx]


def matches(name, patterns):
    """True when module ``name`` matches one of the glob ``patterns`` (or lies under one)."""
    return any(fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(name, p + ".*") for p in patterns)
