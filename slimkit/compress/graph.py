"""Channel dependency graph of a model, built on a torch.fx trace.

Every channel of every traced tensor is an *element*. Conv/linear layers create new elements (their
output channels); pass-through ops (BN, activations, pooling, depthwise convs, dropout) keep them;
element-wise ops (residual ``+``, ``*``) tie the channels of their operands together (union-find);
``torch.cat`` on dim 1 concatenates element lists; ``F.pad`` on the channel dim adds *zero* elements
(the option-A shortcut: padded channels map to a channel range of the add's other input);
``flatten`` keeps the elements and multiplies the features per channel (``repeat``).

A connected component of tied elements is a :class:`ChannelGroup`: one unit that structured pruning
keeps or removes as a whole. Components that touch the network input or output, or an op whose
channel semantics we do not model safely (reshape to constant sizes, channel slicing, grouped convs),
are *fixed*. An op or module we do not know at all raises :class:`GraphError` naming it.
"""
import operator
from dataclasses import dataclass, field

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from slimkit.errors import SlimkitError


class GraphError(SlimkitError):
    """The model has a pattern the channel graph cannot handle; the message names module and op."""


# modules that create new channels from their input channels (if groups == 1)
SOURCE_MODULES = (nn.Conv1d, nn.Conv2d, nn.Linear)
# modules with per-channel parameters that keep channel identity
PARAM_PASS_MODULES = (nn.BatchNorm1d, nn.BatchNorm2d)
PASS_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.SiLU, nn.GELU,
    nn.ELU, nn.Mish, nn.Dropout, nn.Dropout2d, nn.Identity, nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d,
    nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Upsample, nn.Hardtanh,
)
PASS_FUNCTIONS = {
    F.relu, F.relu6, F.leaky_relu, F.hardtanh, F.silu, F.gelu, F.elu, F.hardswish, F.hardsigmoid, F.mish,
    F.sigmoid, F.tanh, torch.relu, torch.sigmoid, torch.tanh, torch.clamp, F.dropout, F.dropout2d,
    F.max_pool1d, F.max_pool2d, F.avg_pool1d, F.avg_pool2d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d,
    F.adaptive_max_pool2d, F.interpolate, torch.abs, operator.neg,
}
PASS_METHODS = {"relu", "relu_", "sigmoid", "tanh", "contiguous", "clamp", "clone", "abs", "neg", "detach", "float"}
BINARY_FUNCTIONS = {operator.add, operator.mul, operator.sub, operator.truediv, operator.iadd, operator.imul,
                    torch.add, torch.mul, torch.sub, torch.div, torch.maximum, torch.minimum}
BINARY_METHODS = {"add", "add_", "mul", "mul_", "sub", "div"}
NON_TENSOR_METHODS = {"size", "dim"}


@dataclass
class TensorChannels:
    """Channel elements of a traced tensor (dim 1), and the features per channel after a flatten."""

    elems: list
    repeat: int = 1


@dataclass
class ChannelGroup:
    """Coupled channels that are kept or removed together: ``members`` are (source node, channel)."""

    id: int
    members: list = field(default_factory=list)
    prunable: bool = True


class _UnionFind:
    def __init__(self):
        self.parent = []

    def new(self):
        self.parent.append(len(self.parent))
        return len(self.parent) - 1

    def find(self, x):
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a, b):
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _where(node):
    stack = node.meta.get("nn_module_stack")
    if stack:
        return list(stack.values())[-1][0] if isinstance(list(stack.values())[-1], tuple) else str(list(stack)[-1])
    return node.name


def is_depthwise(m):
    return isinstance(m, (nn.Conv1d, nn.Conv2d)) and m.groups > 1 and m.groups == m.in_channels == m.out_channels


def trace(model, example_inputs):
    """fx-trace ``model`` (a copy is not made here) and record tensor shapes on every node."""
    inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    try:
        gm = torch.fx.symbolic_trace(model)
    except Exception as err:  # noqa: BLE001 - fx raises many types; name the model and the reason
        raise GraphError(f"torch.fx could not trace {type(model).__name__}: {err}. Structural passes need a "
                         "traceable forward (no data-dependent control flow).") from err
    with torch.no_grad():
        ShapeProp(gm).propagate(*inputs)
    return gm


def _shape(node):
    meta = node.meta.get("tensor_meta")
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


class ChannelGraph:
    """Channel dependency analysis of a traced GraphModule (see module docstring)."""

    def __init__(self, gm):
        self.gm = gm
        self.uf = _UnionFind()
        self.tensors = {}  # node name -> TensorChannels
        self.sources = {}  # node name -> list of elements (output channels of a conv/linear)
        self.consumers = {}  # node name -> input node name (conv/linear reading channels)
        self.param_pass = {}  # node name -> input node name (BN / depthwise conv: slice by input channels)
        self.pads = {}  # node name -> (left zero elems, right zero elems)
        self.fixed, self.zeros = set(), set()
        self.modules = dict(gm.named_modules())
        seen_modules = set()
        for node in gm.graph.nodes:
            if node.op == "call_module":
                mod = self.modules[node.target]
                if any(True for _ in mod.parameters(recurse=False)) and node.target in seen_modules:
                    raise GraphError(f"module {node.target!r} is called more than once (shared weights); "
                                     "structural pruning does not support weight sharing")
                seen_modules.add(node.target)
            self._visit(node)
        self._build_groups()

    # ---- element helpers
    def _new(self, n, fixed=False, zero=False):
        elems = [self.uf.new() for _ in range(n)]
        if fixed:
            self.fixed.update(elems)
        if zero:
            self.zeros.update(elems)
        return elems

    def _fix(self, arg):
        for a in _flat_nodes(arg):
            if a.name in self.tensors:
                self.fixed.update(self.tensors[a.name].elems)

    def _out_new_fixed(self, node):
        shape = _shape(node)
        if shape is not None and len(shape) >= 2:
            self.tensors[node.name] = TensorChannels(self._new(shape[1], fixed=True))

    def _in(self, node, arg):
        if not isinstance(arg, torch.fx.Node) or arg.name not in self.tensors:
            raise GraphError(f"{_where(node)}: op {node.target} reads a tensor whose channels are unknown")
        return self.tensors[arg.name]

    # ---- the visitor
    def _visit(self, node):
        shape = _shape(node)
        if node.op in ("placeholder", "get_attr"):
            self._out_new_fixed(node)
        elif node.op == "output":
            self._fix(node.args)
        elif node.op == "call_module":
            self._visit_module(node, self.modules[node.target])
        elif node.op in ("call_function", "call_method"):
            if shape is None or len(shape) < 2:
                # non-tensor (sizes) or a tensor without a channel dim: its inputs cannot be pruned safely
                if node.op == "call_method" and node.target in NON_TENSOR_METHODS or node.target is getattr:
                    return
                if node.target is operator.getitem and not isinstance(node.args[0], torch.fx.Node):
                    return
                self._fix(node.args)
                self._fix(node.kwargs)
                return
            self._visit_function(node)

    def _visit_module(self, node, mod):
        x = node.args[0]
        if isinstance(mod, SOURCE_MODULES) and not (isinstance(mod, (nn.Conv1d, nn.Conv2d)) and mod.groups > 1):
            tin = self._in(node, x)
            if isinstance(mod, nn.Linear) and len(_shape(x)) != 2:
                self.fixed.update(tin.elems)  # linear on a sequence: channel dim is last, not 1
                self._out_new_fixed(node)
                return
            if tin.repeat != 1 and not isinstance(mod, nn.Linear):
                raise GraphError(f"{node.target}: conv reads a flattened tensor")
            self.consumers[node.name] = x.name
            self.sources[node.name] = self._new(_shape(node)[1])
            self.tensors[node.name] = TensorChannels(self.sources[node.name])
        elif isinstance(mod, PARAM_PASS_MODULES) or is_depthwise(mod):
            self.param_pass[node.name] = x.name
            self.tensors[node.name] = self._in(node, x)
        elif isinstance(mod, (nn.Conv1d, nn.Conv2d)):  # grouped conv: keep all its channels
            self._fix(x)
            self._out_new_fixed(node)
        elif isinstance(mod, PASS_MODULES):
            self.tensors[node.name] = self._in(node, x)
        elif isinstance(mod, nn.Flatten):
            self._flatten(node, x, mod.start_dim, mod.end_dim)
        else:
            raise GraphError(f"module {node.target!r} ({type(mod).__name__}) is not supported by the channel "
                             "graph; register its channel surgery with slimkit.compress.surgery.register_surgery "
                             "and its role in slimkit.compress.graph, or exclude it")

    def _flatten(self, node, x, start=1, end=-1):
        tin, shp = self._in(node, x), _shape(x)
        end = end % len(shp)
        if start != 1 or end != len(shp) - 1:
            self._fix(x)
            self._out_new_fixed(node)
            return
        per = 1
        for s in shp[2:]:
            per *= s
        self.tensors[node.name] = TensorChannels(tin.elems, tin.repeat * per)

    def _visit_function(self, node):
        t, args = node.target, node.args
        x = args[0] if args else None
        if (node.op == "call_function" and t in PASS_FUNCTIONS) or (node.op == "call_method" and t in PASS_METHODS):
            self.tensors[node.name] = self._in(node, x)
        elif (node.op == "call_function" and t in BINARY_FUNCTIONS) or (node.op == "call_method" and t in BINARY_METHODS):
            self._binary(node)
        elif t is torch.cat:
            self._cat(node)
        elif t is torch.flatten or (node.op == "call_method" and t == "flatten"):
            start = args[1] if len(args) > 1 else node.kwargs.get("start_dim", 0 if t is torch.flatten else 0)
            end = args[2] if len(args) > 2 else node.kwargs.get("end_dim", -1)
            self._flatten(node, x, start, end)
        elif node.op == "call_method" and t in ("view", "reshape") or t is torch.reshape:
            rest = args[1:] if len(args) > 2 or not isinstance(args[1], (tuple, list)) else tuple(args[1])
            out = _shape(node)
            if len(out) == 2 and len(rest) == 2 and rest[1] == -1 and len(_shape(x)) >= 2:
                self._flatten(node, x, 1, -1)  # x.view(x.size(0), -1)
            else:
                self._fix(x)
                self._out_new_fixed(node)
        elif node.op == "call_method" and t in ("mean", "sum", "amax") or t in (torch.mean, torch.sum):
            dims = args[1] if len(args) > 1 else node.kwargs.get("dim")
            dims = (dims,) if isinstance(dims, int) else dims
            in_rank = len(_shape(x))
            if dims is None or any(d % in_rank in (0, 1) for d in dims):
                self._fix(x)
                self._out_new_fixed(node)
            else:
                self.tensors[node.name] = self._in(node, x)
        elif t is operator.getitem:
            self._getitem(node)
        elif t is F.pad:
            self._pad(node)
        else:
            raise GraphError(f"{_where(node)}: op {getattr(t, '__name__', t)!r} ({node.op}) is not supported by "
                             "the channel graph")

    def _binary(self, node):
        tens = [a for a in list(node.args) + list(node.kwargs.values()) if isinstance(a, torch.fx.Node)
                and a.name in self.tensors]
        out = _shape(node)
        full = [a for a in tens if _shape(a) == out]
        if not full:
            self._fix(node.args)
            self._out_new_fixed(node)
            return
        ref = self.tensors[full[0].name]
        for a in tens[0:]:
            ta, shp = self.tensors[a.name], _shape(a)
            if len(shp) == len(out) and shp[1] == out[1] and ta.repeat == ref.repeat:
                for e, f in zip(ref.elems, ta.elems):
                    self.uf.union(e, f)
            else:  # broadcast along channels or different layout: keep those channels
                self.fixed.update(ta.elems)
                self.fixed.update(ref.elems)
        self.tensors[node.name] = ref

    def _cat(self, node):
        parts = node.args[0]
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        rank = len(_shape(node))
        tins = [self._in(node, p) for p in parts]
        if dim % rank == 1 and all(t.repeat == 1 for t in tins):
            self.tensors[node.name] = TensorChannels([e for t in tins for e in t.elems])
        else:
            for t in tins[1:]:
                for e, f in zip(tins[0].elems, t.elems):
                    self.uf.union(e, f)
            self.tensors[node.name] = tins[0]

    def _getitem(self, node):
        x, idx = node.args
        tin = self._in(node, x)
        idx = idx if isinstance(idx, tuple) else (idx,)
        if len(idx) >= 2 and idx[0] == slice(None) and idx[1] == slice(None) and Ellipsis not in idx[2:] \
                or len(idx) == 1 and idx[0] == slice(None) or len(idx) >= 2 and idx[1] is Ellipsis \
                and idx[0] == slice(None):
            self.tensors[node.name] = tin
        else:  # indexing the channel dim: its indices would go stale after pruning
            self._fix(x)
            self._out_new_fixed(node)

    def _pad(self, node):
        x = node.args[0]
        pad = node.args[1] if len(node.args) > 1 else node.kwargs["pad"]
        tin, rank = self._in(node, x), len(_shape(x))
        mode = node.args[2] if len(node.args) > 2 else node.kwargs.get("mode", "constant")
        value = node.args[3] if len(node.args) > 3 else node.kwargs.get("value", None)
        cpos = 2 * (rank - 2)  # pad lists last dim first: channel pair sits after the spatial pairs
        if len(pad) <= cpos or pad[cpos] == 0 and pad[cpos + 1] == 0:
            self.tensors[node.name] = tin
            return
        if mode != "constant" or (value not in (None, 0, 0.0)) or not all(isinstance(p, int) for p in pad) \
                or len(pad) > cpos + 2 or tin.repeat != 1:
            raise GraphError(f"{_where(node)}: op pad on the channel dim is only supported as constant zero "
                             f"padding with integer amounts (got pad={pad}, mode={mode}, value={value})")
        left, right = self._new(pad[cpos], zero=True), self._new(pad[cpos + 1], zero=True)
        self.pads[node.name] = (left, right, cpos)
        self.tensors[node.name] = TensorChannels(left + tin.elems + right)

    # ---- groups
    def _build_groups(self):
        roots = {}
        for src, elems in self.sources.items():
            for i, e in enumerate(elems):
                roots.setdefault(self.uf.find(e), []).append((src, i))
        fixed_roots = {self.uf.find(e) for e in self.fixed}
        self.groups = []
        self.root_to_group = {}
        for root, members in roots.items():
            g = ChannelGroup(len(self.groups), members, prunable=root not in fixed_roots)
            self.groups.append(g)
            self.root_to_group[root] = g.id

    def group_of(self, elem):
        """Group id of an element, or None for elements without a source (zero pads, fixed inputs)."""
        return self.root_to_group.get(self.uf.find(elem))

    def prunable_groups(self):
        return [g for g in self.groups if g.prunable]

    def clusters(self):
        """Prunable groups clustered by shared source layers: one "layer" for per-layer ratios."""
        uf, ids = _UnionFind(), {}
        for g in self.prunable_groups():
            ids[g.id] = uf.new()
        by_src = {}
        for g in self.prunable_groups():
            for src, _ in g.members:
                if src in by_src:
                    uf.union(ids[g.id], ids[by_src[src]])
                else:
                    by_src[src] = g.id
        out = {}
        for g in self.prunable_groups():
            out.setdefault(uf.find(ids[g.id]), []).append(g.id)
        return list(out.values())


def _flat_nodes(arg):
    out = []
    torch.fx.node.map_arg(arg, out.append)
    return out


def build_graph(model, example_inputs):
    """Trace ``model`` (caller passes a copy if it will be edited) and analyse its channel dependencies."""
    return ChannelGraph(trace(model, example_inputs))
