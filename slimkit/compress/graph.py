"""Channel dependency graph over a captured ATen graph (``capture.py``: torch.export).

Every position along a *tracked* dimension of a tensor is an *element* (a union-find id). Each
parameter and buffer starts with fresh elements on each of its dims of size > 1; ops tie elements
together: a conv/linear ties its weight's input dim to the channels it reads and its weight's output
dim becomes the channels it writes (*source* elements); element-wise ops (residual ``+``, ``*``, a
LayerNorm's or BatchNorm's affine parameters, a layer-scale parameter) tie the elements they combine;
views/permutes move them; a reshape that splits a tracked dim (``[B, T, H*D] -> [B, T, H, D]``) ties
the inner positions together, so attention heads become units; ``cat`` concatenates element lists;
constant zero padding on a tracked dim adds *zero* elements.

A connected component holding at least one source element is a :class:`ChannelGroup`: one unit that
structured pruning keeps or removes as a whole. Components that reach the network input or output, an
op whose channel semantics we do not model (listed in ``unsupported``), a channel index, a grouped conv
or a padding whose amounts live in code are *fixed*. Surgery (``surgery.py``) slices every parameter
and buffer along each dim by the kept elements, on a copy of the user's own modules.
"""
import fnmatch
import functools
import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.fx

from slimkit.compress.capture import Capture, GraphError, capture
from slimkit.registry import Registry

__all__ = ["ChannelGraph", "ChannelGroup", "GraphError", "build_graph", "register_pad_editor"]


# ---------------------------------------------------------------- op tables (ATen overload packet names)
UNARY = {
    "relu", "relu_", "gelu", "gelu_", "silu", "silu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "hardtanh",
    "hardtanh_", "hardswish", "hardswish_", "hardsigmoid", "hardsigmoid_", "leaky_relu", "leaky_relu_", "elu",
    "elu_", "mish", "mish_", "celu", "selu", "softplus", "dropout", "dropout_", "feature_dropout",
    "alpha_dropout", "clone", "contiguous", "alias", "detach", "detach_", "lift_fresh_copy", "to", "_to_copy",
    "type_as", "neg", "abs", "exp", "log", "sqrt", "rsqrt", "pow", "square", "reciprocal", "sin", "cos", "erf",
    "clamp", "clamp_", "clamp_min", "clamp_max", "sign", "round", "floor", "ceil", "nan_to_num", "logical_not",
    "bitwise_not", "relu6", "silu", "log_sigmoid", "expm1", "log1p", "sgn", "float", "half", "bfloat16",
    "requires_grad_", "dropout2d", "native_dropout_backward",
}
BINARY = {
    "add", "add_", "sub", "sub_", "rsub", "mul", "mul_", "div", "div_", "maximum", "minimum", "eq", "ne", "lt",
    "le", "gt", "ge", "fmod", "remainder", "masked_fill", "masked_fill_", "where", "lerp", "addcmul", "addcdiv",
    "logical_and", "logical_or", "bitwise_and", "bitwise_or", "copysign", "atan2", "hypot", "xlogy",
    "floor_divide", "true_divide", "pow_",
}
REDUCE = {"mean", "sum", "amax", "amin", "var", "std", "var_mean", "std_mean", "logsumexp", "prod", "any", "all",
          "argmax", "argmin", "linalg_vector_norm", "norm", "max", "min"}
DIM_OPS = {"_softmax", "softmax", "_log_softmax", "log_softmax", "cumsum", "cumprod"}
POOL = {"max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d",
        "adaptive_avg_pool2d", "adaptive_avg_pool3d", "adaptive_max_pool1d", "adaptive_max_pool2d",
        "_adaptive_avg_pool2d", "upsample_nearest1d", "upsample_nearest2d", "upsample_bilinear2d",
        "upsample_bicubic2d", "_upsample_nearest_exact2d", "upsample_linear1d", "max_pool2d_with_indices",
        "lp_pool2d", "fractional_max_pool2d"}
VIEWS = {"view", "reshape", "_unsafe_view", "view_copy", "flatten", "unflatten", "squeeze", "squeeze_", "unsqueeze",
         "unsqueeze_", "_reshape_alias"}
NEW_TENSORS = {"arange", "zeros", "ones", "full", "empty", "scalar_tensor", "zeros_like", "ones_like", "full_like",
               "empty_like", "rand_like", "randn_like", "tensor", "new_zeros", "new_ones", "new_full", "new_empty",
               "linspace", "rand", "randn", "randint", "eye", "tril", "triu", "bernoulli"}
NO_OUTPUT = {"_assert_tensor_metadata", "_assert_async", "sym_constrain_range_for_size", "_assert_scalar",
             "sym_size", "sym_numel", "sym_stride", "_local_scalar_dense", "item", "size", "dim"}

PAD_EDITORS = Registry("pad editor", by_type=True)
_PAD_EDITORS = PAD_EDITORS.entries


def register_pad_editor(module_type):
    """Let a module whose channel padding lives in attributes have it edited by pruning:
    ``fn(module, dim, left, right)`` sets the new amounts. Without an editor, groups that meet a
    channel padding are fixed (its amounts live in code)."""
    return PAD_EDITORS.register(module_type)


def pad_editor(module):
    """The registered editor of ``module``'s padding, or its own ``set_channel_pad(dim, left, right)``."""
    if module is None:
        return None
    editor = PAD_EDITORS.find(module)
    if editor is not None:
        return editor
    if callable(getattr(module, "set_channel_pad", None)):
        return lambda m, dim, left, right: m.set_channel_pad(dim, left, right)
    return None


# ---------------------------------------------------------------- data structures
class _UnionFind:
    def __init__(self):
        self.parent = []

    def new(self, n):
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        return np.arange(start, start + n, dtype=np.int64)

    def find(self, x):
        p = self.parent
        root = x
        while p[root] != root:
            root = p[root]
        while p[x] != root:
            p[x], x = root, p[x]
        return root

    def union(self, a, b):
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def union_arrays(self, a, b):
        for x, y in zip(np.asarray(a).ravel().tolist(), np.asarray(b).ravel().tolist()):
            self.union(x, y)

    def roots(self, grid):
        g = np.asarray(grid)
        return np.array([self.find(int(e)) for e in g.ravel()], dtype=np.int64).reshape(g.shape)


@dataclass(eq=False)
class Track:
    """Tensor dims ``dims`` (ascending) whose positions carry the element ids in ``grid``."""

    dims: tuple
    grid: np.ndarray


@dataclass(eq=False)
class Val:
    shape: tuple
    tracks: list = field(default_factory=list)


@dataclass
class Producer:
    """A weight whose ``dim`` creates channels: conv/linear output channels, an embedding's features."""

    param: str
    dim: int
    module: str
    node: str


@dataclass
class Consumer:
    """A weight whose ``dim`` reads channels (conv input channels, linear input features)."""

    param: str
    dim: int
    module: str
    node: str


@dataclass
class ChannelGroup:
    """Coupled channels kept or removed together: ``members`` are (producer index, channel)."""

    id: int
    members: list = field(default_factory=list)
    prunable: bool = True


@dataclass
class Pad:
    node: str
    module: str
    dim: int
    left: np.ndarray
    right: np.ndarray


@dataclass
class Split:
    """A reshape that split a tracked dim into units (heads) of ``unit`` positions each."""

    node: str
    module: str
    units: np.ndarray  # one element per unit
    unit: int


def _op(node):
    t = node.target
    if hasattr(t, "overloadpacket"):
        return t.overloadpacket.__name__
    return getattr(t, "__name__", str(t))


def _meta_shape(v):
    return tuple(int(s) for s in v.shape) if hasattr(v, "shape") else None


def _prod(xs):
    return int(math.prod(int(x) for x in xs))


def _tracked_input(handler):
    """An op handler whose first argument is a tensor: called as ``handler(self, node, x)`` with that
    tensor's Val; when it is not tracked the op's result is untracked and the handler is not called."""

    @functools.wraps(handler)
    def visit(self, node):
        x = self._val(node.args[0])
        if x is None:
            return self._untracked(node)
        return handler(self, node, x)

    return visit


class ChannelGraph:
    """Channel dependency analysis of a :class:`Capture` (see module docstring).

    ``exclude``: module names or glob patterns whose parameters must not change (their channels are
    fixed). Attributes used by pruning: ``groups``, ``producers``, ``consumers``, ``param_elems``
    (param/buffer FQN -> {dim: element ids}), ``mac_terms`` (MAC cost model), ``unsupported``."""

    def __init__(self, cap: Capture, exclude=()):
        self.cap = cap
        self.uf = _UnionFind()
        self.vals = {}
        self.param_elems = {}  # fqn -> {dim: np.ndarray}
        self.param_nodes = {}  # placeholder name -> fqn
        self.sources = set()
        self.fixed = set()
        self.zeros = set()
        self.producers, self.consumers = [], []
        self.pads, self.splits, self.groupnorms = [], [], []
        self.mac_terms = []  # (base MACs, [element grids whose kept fraction scales them])
        self.unsupported = {}  # op -> module where it fixed channels
        self.bn_params = []  # (weight fqn, bias fqn): affine params of batch/layer norms
        self.modules = dict(cap.model.named_modules())
        self._canonical = {}  # id(tensor) -> the FQN its elements are kept under
        self._uses = {}
        for node in cap.graph.nodes:
            for a in node.all_input_nodes:
                self._uses[a.name] = self._uses.get(a.name, 0) + 1
        for node in cap.graph.nodes:
            self._visit(node)
        self._exclude(exclude)
        self._build_groups()

    # ---------------------------------------------------------------- element helpers
    def _fresh(self, n, fixed=False, zero=False):
        e = self.uf.new(n)
        if fixed:
            self.fixed.update(e.tolist())
        if zero:
            self.zeros.update(e.tolist())
        return e

    def _fix_grid(self, grid):
        self.fixed.update(np.asarray(grid).ravel().tolist())

    def _fix_val(self, v):
        for vv in (v if isinstance(v, list) else [v]):
            if isinstance(vv, Val):
                for t in vv.tracks:
                    self._fix_grid(t.grid)

    def _fix_args(self, node, reason=None):
        tracked = False
        for a in node.all_input_nodes:
            v = self.vals.get(a.name)
            tracked = tracked or any(isinstance(x, Val) and x.tracks for x in (v if isinstance(v, list) else [v]))
            self._fix_val(v)
        if reason and tracked:  # only ops that met channel elements are worth reporting
            self.unsupported.setdefault(reason, self.cap.owner(node) or "<top>")

    def _val(self, a):
        return self.vals.get(a.name) if isinstance(a, torch.fx.Node) else None

    def _track_on(self, v, d):
        """The track of ``v`` that covers dim ``d`` (or None)."""
        if v is None:
            return None
        for t in v.tracks:
            if d in t.dims:
                return t
        return None

    def _normalize(self, tracks):
        """Drop axes along which a track's roots do not vary; drop empty tracks."""
        out = []
        for t in tracks:
            roots = self.uf.roots(t.grid)
            keep_axes = [ax for ax in range(roots.ndim) if roots.shape[ax] > 1
                         and not (roots == roots.take([0], axis=ax)).all()]
            if not keep_axes:
                if roots.size == 1:  # a single channel (a size-1 dim): keep it
                    out.append(t)
                elif roots.size:  # every position is one element: it could only go as a whole dim
                    self._fix_grid(t.grid)
                continue
            idx = tuple(slice(None) if ax in keep_axes else 0 for ax in range(roots.ndim))
            out.append(Track(tuple(t.dims[ax] for ax in keep_axes), t.grid[idx]))
        return out

    # ---------------------------------------------------------------- visitor
    def _visit(self, node):
        if node.op == "placeholder":
            self._placeholder(node)
            return
        if node.op == "output":
            for a in node.all_input_nodes:
                self._fix_val(self.vals.get(a.name))
            return
        if node.op == "get_attr":
            v = node.meta.get("val")
            self.vals[node.name] = Val(_meta_shape(v)) if torch.is_tensor(v) else None
            return
        if node.op != "call_function":
            self._fix_args(node, f"{node.op} {node.target}")
            return
        op = _op(node)
        handler = getattr(self, f"_op_{op}", None)
        try:
            if handler is not None:
                out = handler(node)
            elif op in UNARY:
                out = self._unary(node)
            elif op in BINARY:
                out = self._binary(node)
            elif op in REDUCE:
                out = self._reduce(node)
            elif op in DIM_OPS:
                out = self._dim_op(node)
            elif op in POOL:
                out = self._pool(node)
            elif op in VIEWS:
                out = self._reshape(node)
            elif op in NEW_TENSORS or op in NO_OUTPUT:
                out = self._untracked(node)
            else:
                self._fix_args(node, op)
                out = self._untracked(node)
        except GraphError:
            raise
        except (IndexError, ValueError, KeyError, TypeError) as err:  # an op in a form we did not expect
            self._fix_args(node, f"{op} ({type(err).__name__}: {err})")
            out = self._untracked(node)
        self.vals[node.name] = out

    def _untracked(self, node):
        v = node.meta.get("val")
        if torch.is_tensor(v):
            return Val(_meta_shape(v))
        if isinstance(v, (list, tuple)) and v and all(torch.is_tensor(x) for x in v):
            return [Val(_meta_shape(x)) for x in v]
        return None

    def _placeholder(self, node):
        v = node.meta.get("val")
        if not torch.is_tensor(v):
            self.vals[node.name] = None
            return
        shape = _meta_shape(v)
        fqn = self.cap.tensor_name(node)
        if fqn is None:  # a user input or a constant: no channel elements of its own
            self.vals[node.name] = Val(shape)
            return
        if not v.dtype.is_floating_point:  # integer buffers (position ids, masks) index, they hold no channels
            self.vals[node.name] = Val(shape)
            return
        # tied weights (an LM head sharing the embedding) are one tensor under two names: one set of elements
        fqn = self._canonical.setdefault(id(self._tensor(fqn)), fqn)
        self.param_nodes[node.name] = fqn
        dims = self.param_elems.setdefault(fqn, {})
        tracks = []
        for d, s in enumerate(shape):
            if s > 1:
                dims.setdefault(d, self._fresh(s))
                tracks.append(Track((d,), dims[d]))
        self.vals[node.name] = Val(shape, tracks)

    def _tensor(self, fqn):
        mod, _, attr = fqn.rpartition(".")
        return getattr(self.cap.model.get_submodule(mod) if mod else self.cap.model, attr)

    def _param_of(self, a):
        """FQN of the parameter a node is (directly), else None."""
        return self.param_nodes.get(a.name) if isinstance(a, torch.fx.Node) else None

    # ---------------------------------------------------------------- element-wise
    def _unary(self, node):
        x = self._val(node.args[0]) if node.args else None
        out = node.meta.get("val")
        if x is None or not torch.is_tensor(out):
            return self._untracked(node)
        if _meta_shape(out) != x.shape:
            self._fix_val(x)
            return Val(_meta_shape(out))
        return Val(x.shape, list(x.tracks))

    def _binary(self, node):
        out = node.meta.get("val")
        if not torch.is_tensor(out):
            return None
        oshape = _meta_shape(out)
        return self._broadcast([a for a in list(node.args) + list(node.kwargs.values())
                                if isinstance(a, torch.fx.Node)], oshape)

    def _broadcast(self, nodes, oshape):
        """Tie operands of a broadcasting element-wise op; returns the output's Val."""
        R = len(oshape)
        tracks, plain = [], []
        for a in nodes:
            v = self._val(a)
            if v is None or v.shape is None:
                continue
            off = R - len(v.shape)
            for t in v.tracks:
                odims = tuple(d + off for d in t.dims)
                if off < 0 or any(oshape[od] != v.shape[d] for od, d in zip(odims, t.dims)):
                    self._fix_grid(t.grid)  # broadcast along a tracked dim: not a channel-wise op
                else:
                    tracks.append(Track(odims, t.grid))
            covered = {d for t in v.tracks for d in t.dims}
            plain.append([d + off for d in range(len(v.shape)) if d not in covered and v.shape[d] > 1
                          and 0 <= d + off < R])
        tracks = self._merge_tracks(tracks)
        for dims in plain:  # a full-size operand without elements there (a computed tensor): keep those channels
            for t in tracks:
                if set(t.dims) & set(dims):
                    self._fix_grid(t.grid)
        return Val(oshape, self._normalize(tracks))

    def _merge_tracks(self, tracks):
        """Union tracks that share dims (broadcasting over the union of their dims)."""
        merged = []
        for t in tracks:
            changed = True
            while changed:
                changed = False
                for i, m in enumerate(merged):
                    if set(m.dims) & set(t.dims):
                        dims = tuple(sorted(set(m.dims) | set(t.dims)))
                        ga, gb = self._expand(m, dims), self._expand(t, dims)
                        ga, gb = np.broadcast_arrays(ga, gb)
                        self.uf.union_arrays(ga, gb)
                        t = Track(dims, np.ascontiguousarray(ga))
                        merged.pop(i)
                        changed = True
                        break
            merged.append(t)
        return merged

    @staticmethod
    def _expand(t, dims):
        """``t.grid`` with size-1 axes inserted for the dims of ``dims`` it lacks."""
        shape = [t.grid.shape[t.dims.index(d)] if d in t.dims else 1 for d in dims]
        return t.grid.reshape(shape)

    def _op_where(self, node):
        return self._binary(node)

    # ---------------------------------------------------------------- reductions and dim ops
    def _dims_arg(self, node, pos, rank):
        dims = node.args[pos] if len(node.args) > pos else node.kwargs.get("dim")
        if dims is None:
            return list(range(rank))
        dims = [dims] if isinstance(dims, int) else list(dims)
        return [d % rank for d in dims] if rank else []

    def _reduce(self, node):
        x = self._val(node.args[0])
        out = node.meta.get("val")
        if x is None:
            return self._untracked(node)
        if isinstance(out, (tuple, list)):  # var_mean, max.dim: several outputs of one shape
            shapes = [_meta_shape(o) for o in out]
        else:
            shapes = [_meta_shape(out)]
        rank = len(x.shape)
        dims = self._dims_arg(node, 1, rank) if (len(node.args) > 1 or "dim" in node.kwargs) else list(range(rank))
        keep = len(shapes[0]) == rank
        tracks = []
        for t in x.tracks:
            if set(t.dims) & set(dims):
                self._fix_grid(t.grid)  # reducing over channels couples them all
            else:
                nd = tuple(d if keep else d - sum(1 for r in dims if r < d) for d in t.dims)
                tracks.append(Track(nd, t.grid))
        vals = [Val(s, list(tracks)) for s in shapes]
        return vals if isinstance(out, (tuple, list)) else vals[0]

    def _off_dims(self, x, dims):
        """The tracks of ``x`` that cover none of ``dims``; those that do are fixed (an op along a channel
        dim couples its channels)."""
        keep = []
        for t in x.tracks:
            if set(t.dims) & set(dims):
                self._fix_grid(t.grid)
            else:
                keep.append(t)
        return keep

    @_tracked_input
    def _dim_op(self, node, x):
        return Val(x.shape, self._off_dims(x, [node.args[1] % len(x.shape)]))

    def _pool(self, node):
        x = self._val(node.args[0])
        out = node.meta.get("val")
        outs = list(out) if isinstance(out, (tuple, list)) else [out]
        if x is None:
            return self._untracked(node)
        cdim = 1 if len(x.shape) >= 3 else 0
        tracks = []
        for t in x.tracks:
            if t.dims == (cdim,):
                tracks.append(t)
            else:
                self._fix_grid(t.grid)
        vals = [Val(_meta_shape(o), list(tracks)) for o in outs]
        return vals if isinstance(out, (tuple, list)) else vals[0]

    # ---------------------------------------------------------------- views
    def _reshape(self, node):
        x = self._val(node.args[0])
        out = node.meta.get("val")
        if x is None or not torch.is_tensor(out):
            return self._untracked(node)
        return self._reshape_val(x, _meta_shape(out), node)

    def _reshape_val(self, x, oshape, node):
        ishape = x.shape
        if _prod(ishape) == 0:
            self._fix_val(x)
            return Val(oshape)
        a = [(i, s) for i, s in enumerate(ishape) if s != 1]
        b = [(j, s) for j, s in enumerate(oshape) if s != 1]
        groups, ia, ib = [], 0, 0
        while ia < len(a):
            pa, pb = a[ia][1], b[ib][1]
            ga, gb = [a[ia][0]], [b[ib][0]]
            ia, ib = ia + 1, ib + 1
            while pa != pb:
                if pa < pb:
                    pa *= a[ia][1]
                    ga.append(a[ia][0])
                    ia += 1
                else:
                    pb *= b[ib][1]
                    gb.append(b[ib][0])
                    ib += 1
            groups.append((ga, gb))
        out_tracks = []
        for t in x.tracks:
            if all(ishape[d] == 1 for d in t.dims):  # a single channel on a size-1 dim: reshapes move it anywhere
                self._fix_grid(t.grid)
        for ga, gb in groups:
            inside = [t for t in x.tracks if set(t.dims) & set(ga)]
            if not inside:
                continue
            if len(inside) > 1 or any(not set(t.dims) <= set(ga) for t in inside):
                for t in inside:
                    self._fix_grid(t.grid)
                continue
            t = inside[0]
            gshape = [ishape[d] for d in ga]
            full = np.broadcast_to(self._expand(t, tuple(ga)), gshape)
            grid = np.ascontiguousarray(full).reshape([oshape[d] for d in gb])
            tr = self._normalize([Track(tuple(gb), grid)])
            if tr and len(tr[0].dims) > 1 and len(gb) > len(ga):
                # a split of a tracked dim ([.., H*D] -> [.., H, D]): its innermost positions (a head's
                # dims) form one unit, so code such as view(.., -1, head_dim) stays valid after pruning
                tt = tr[0]
                inner = tt.grid.reshape(-1, tt.grid.shape[-1])
                for row in inner:
                    for e in row[1:]:
                        self.uf.union(int(row[0]), int(e))
                units = np.ascontiguousarray(tt.grid[..., 0])
                owner = self.cap.owner(node) if node is not None else ""
                self.splits.append(Split(node.name if node is not None else "", owner, units.ravel(),
                                         int(tt.grid.shape[-1])))
                tr = self._normalize([Track(tt.dims[:-1], units)])
            out_tracks.extend(tr)
        return Val(oshape, out_tracks)

    def _permute(self, x, perm, oshape):
        tracks = []
        for t in x.tracks:
            nd = [perm.index(d) for d in t.dims]
            order = np.argsort(nd)
            tracks.append(Track(tuple(sorted(nd)), np.transpose(t.grid, order) if t.grid.ndim > 1 else t.grid))
        return Val(oshape, tracks)

    @_tracked_input
    def _op_permute(self, node, x):
        rank = len(x.shape)
        perm = [p % rank for p in node.args[1]]
        return self._permute(x, perm, _meta_shape(node.meta["val"]))

    @_tracked_input
    def _op_transpose(self, node, x):
        rank = len(x.shape)
        d0, d1 = node.args[1] % rank, node.args[2] % rank
        perm = list(range(rank))
        perm[d0], perm[d1] = perm[d1], perm[d0]
        return self._permute(x, perm, _meta_shape(node.meta["val"]))

    _op_swapaxes = _op_transpose

    @_tracked_input
    def _op_t(self, node, x):
        perm = [1, 0] if len(x.shape) == 2 else [0]
        return self._permute(x, perm, _meta_shape(node.meta["val"]))

    @_tracked_input
    def _op_numpy_T(self, node, x):
        return self._permute(x, list(range(len(x.shape)))[::-1], _meta_shape(node.meta["val"]))

    @_tracked_input
    def _op_expand(self, node, x):
        oshape = _meta_shape(node.meta["val"])
        off = len(oshape) - len(x.shape)
        return Val(oshape, [Track(tuple(d + off for d in t.dims), t.grid) for t in x.tracks])

    _op_expand_as = _op_expand
    _op_broadcast_to = _op_expand

    @_tracked_input
    def _op_repeat(self, node, x):
        reps = list(node.args[1])
        oshape = _meta_shape(node.meta["val"])
        off = len(reps) - len(x.shape)
        tracks = []
        for t in x.tracks:
            if any(reps[d + off] != 1 for d in t.dims):
                self._fix_grid(t.grid)
            else:
                tracks.append(Track(tuple(d + off for d in t.dims), t.grid))
        return Val(oshape, tracks)

    @_tracked_input
    def _op_select(self, node, x):
        rank = len(x.shape)
        d, idx = node.args[1] % rank, node.args[2]
        return Val(_meta_shape(node.meta["val"]), self._select_tracks(x, d, idx))

    def _select_tracks(self, x, d, idx):
        """Tracks after indexing dim ``d`` with the constant ``idx`` (the dim goes away)."""
        tracks = []
        for t in x.tracks:
            if d in t.dims:
                if len(t.dims) == 1:
                    self._fix_grid(t.grid)  # a constant channel index would go stale after pruning
                    continue
                ax = t.dims.index(d)
                tracks.append(Track(tuple(e - (e > d) for e in t.dims if e != d), np.take(t.grid, idx, axis=ax)))
            else:
                tracks.append(Track(tuple(e - (e > d) for e in t.dims), t.grid))
        return self._normalize(tracks)

    @_tracked_input
    def _op_slice(self, node, x):
        rank = len(x.shape)
        d = (node.args[1] if len(node.args) > 1 else 0) % rank
        oshape = _meta_shape(node.meta["val"])
        if oshape == x.shape:
            return Val(oshape, list(x.tracks))
        return Val(oshape, self._off_dims(x, [d]))

    def _op_narrow(self, node):
        return self._op_slice(node)

    def _split_pieces(self, node, dim, sizes):
        x = self._val(node.args[0])
        outs = node.meta["val"]
        if x is None:
            return [Val(_meta_shape(o)) for o in outs]
        d = dim % len(x.shape)
        pieces, start = [], 0
        for o, s in zip(outs, sizes):
            tracks = []
            for t in x.tracks:
                if d in t.dims:
                    if len(t.dims) > 1:
                        self._fix_grid(t.grid)
                        continue
                    tracks.append(Track(t.dims, t.grid[start:start + s]))
                else:
                    tracks.append(t)
            pieces.append(Val(_meta_shape(o), tracks))
            start += s
        return pieces

    def _op_split(self, node):
        size = node.args[1]
        dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)
        if isinstance(size, (list, tuple)):
            return self._split_pieces(node, dim, list(size))
        return self._split_pieces(node, dim, [_meta_shape(o)[dim] for o in node.meta["val"]])

    def _op_split_with_sizes(self, node):
        dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)
        return self._split_pieces(node, dim, list(node.args[1]))

    def _op_chunk(self, node):
        dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)
        return self._split_pieces(node, dim, [_meta_shape(o)[dim] for o in node.meta["val"]])

    def _op_unbind(self, node):
        x = self._val(node.args[0])
        outs = node.meta["val"]
        d = (node.args[1] if len(node.args) > 1 else 0) % len(x.shape)
        return [Val(_meta_shape(o), self._select_tracks(x, d, i)) for i, o in enumerate(outs)]

    def _op_getitem(self, node):
        src, idx = node.args
        v = self._val(src)
        if isinstance(v, list):
            return v[idx]
        self._fix_val(v)
        return self._untracked(node)

    def _op_index(self, node):
        x = self._val(node.args[0])
        indices = node.args[1]
        oshape = _meta_shape(node.meta["val"])
        if x is None:
            return self._untracked(node)
        pos = [i for i, ix in enumerate(indices) if ix is not None]
        tracks = []
        contiguous = pos == list(range(pos[0], pos[-1] + 1)) if pos else True
        extra = len(oshape) - (len(x.shape) - len(pos))
        for t in x.tracks:
            if set(t.dims) & set(pos) or not contiguous:
                self._fix_grid(t.grid)
                continue
            tracks.append(Track(tuple(d if d < pos[0] else d - len(pos) + extra for d in t.dims), t.grid))
        return Val(oshape, tracks)

    @_tracked_input
    def _op_index_select(self, node, x):
        return Val(_meta_shape(node.meta["val"]), self._off_dims(x, [node.args[1] % len(x.shape)]))

    def _op_cat(self, node):
        parts = [p for p in node.args[0] if isinstance(p, torch.fx.Node)]
        oshape = _meta_shape(node.meta["val"])
        rank = len(oshape)
        dim = (node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)) % rank
        vals = [self._val(p) for p in parts]
        vals = [v for v in vals if v is not None and v.shape is not None and _prod(v.shape) > 0]  # legacy empty parts
        if not vals:
            return Val(oshape)
        along = [self._track_on(v, dim) for v in vals]
        if any(t is not None for t in along):
            grids = []
            for v, t in zip(vals, along):
                if t is not None and t.dims == (dim,):
                    grids.append(t.grid)
                else:
                    if t is not None:
                        self._fix_grid(t.grid)
                    grids.append(self._fresh(v.shape[dim], fixed=True))
            cat_track = Track((dim,), np.concatenate(grids))
        else:
            cat_track = None
        others = []  # the other dims behave like an element-wise op over the parts
        for v in vals:
            for t in v.tracks:
                if dim not in t.dims:
                    others.append(t)
        others = self._merge_tracks(others)
        for v in vals:  # a part without elements on a dim the others track: keep those channels
            covered = {d for t in v.tracks for d in t.dims}
            for t in others:
                if not set(t.dims) <= covered:
                    self._fix_grid(t.grid)
        return Val(oshape, self._normalize(others + ([cat_track] if cat_track is not None else [])))

    _op_concat = _op_cat

    def _op_stack(self, node):
        parts = [p for p in node.args[0] if isinstance(p, torch.fx.Node)]
        oshape = _meta_shape(node.meta["val"])
        dim = (node.args[1] if len(node.args) > 1 else 0) % len(oshape)
        tracks = []
        for p in parts:
            v = self._val(p)
            if v is None:
                continue
            tracks.extend(Track(tuple(d + (d >= dim) for d in t.dims), t.grid) for t in v.tracks)
        return Val(oshape, self._normalize(self._merge_tracks(tracks)))

    def _pad_common(self, node, pad, mode, value):
        x = self._val(node.args[0])
        oshape = _meta_shape(node.meta["val"])
        if x is None:
            return self._untracked(node)
        rank = len(x.shape)
        tracks = list(x.tracks)
        for k in range(len(pad) // 2):
            d = rank - 1 - k
            left, right = int(pad[2 * k]), int(pad[2 * k + 1])
            t = self._track_on(x, d)
            if t is None or (left == 0 and right == 0):
                continue
            tracks.remove(t)
            if t.dims != (d,) or mode != "constant" or value not in (None, 0, 0.0) or left < 0 or right < 0:
                self._fix_grid(t.grid)
                self.unsupported.setdefault(f"pad on a channel dim (mode={mode}, value={value})",
                                            self.cap.owner(node) or "<top>")
                continue
            owner = self.cap.owner(node)
            editable = pad_editor(self.modules.get(owner)) is not None
            lz, rz = self._fresh(left, fixed=not editable, zero=True), self._fresh(right, fixed=not editable, zero=True)
            if editable:
                self.pads.append(Pad(node.name, owner, d, lz, rz))
            tracks.append(Track((d,), np.concatenate([lz, t.grid, rz])))
        return Val(oshape, tracks)

    def _op_constant_pad_nd(self, node):
        value = node.args[2] if len(node.args) > 2 else 0
        return self._pad_common(node, node.args[1], "constant", value)

    def _op_pad(self, node):
        mode = node.args[2] if len(node.args) > 2 else node.kwargs.get("mode", "constant")
        value = node.args[3] if len(node.args) > 3 else node.kwargs.get("value", None)
        return self._pad_common(node, node.args[1], mode, value)

    # ---------------------------------------------------------------- weighted layers
    def _weight_dims(self, w, d):
        """The element ids of parameter node ``w``'s dim ``d`` (a param placeholder), or None."""
        fqn = self._param_of(w)
        if fqn is None:
            return None
        return self.param_elems.get(fqn, {}).get(d)

    def _tie_param(self, p, dim, grid):
        """Tie parameter node ``p``'s dim ``dim`` to ``grid`` (same length)."""
        e = self._weight_dims(p, dim) if p is not None else None
        if e is not None and grid is not None and len(e) == len(grid):
            self.uf.union_arrays(e, grid)

    def _pdim(self, fqn, dim):
        """Element ids of a parameter's dim (created on first use for a size-1 dim)."""
        dims = self.param_elems.setdefault(fqn, {})
        if dim not in dims:
            dims[dim] = self._fresh(1)
        return dims[dim]

    def _produce(self, w, dim, node):
        fqn = self._param_of(w)
        e = self._pdim(fqn, dim)
        self.sources.update(e.tolist())
        self.producers.append(Producer(fqn, dim, fqn.rpartition(".")[0], node.name))
        return e

    def _consume(self, w, dim, node, in_grid):
        fqn = self._param_of(w)
        e = self._pdim(fqn, dim)
        self.consumers.append(Consumer(fqn, dim, fqn.rpartition(".")[0], node.name))
        if in_grid is not None:
            self.uf.union_arrays(e, in_grid)

    def _conv(self, node, x_node, w, b, groups, transposed=False):
        x = self._val(x_node)
        wv = self._val(w)
        out = node.meta["val"]
        oshape = _meta_shape(out)
        if self._param_of(w) is None or x is None:
            self._fix_args(node, "conv with a computed weight")
            return Val(oshape)
        wshape = wv.shape
        cin = x.shape[1]
        xt = self._track_on(x, 1)
        for t in x.tracks:  # tracks other than the channel dim are mixed by the kernel
            if t is not xt or t.dims != (1,):
                self._fix_grid(t.grid)
        if xt is not None and xt.dims != (1,):
            xt = None
        ospatial = oshape[2:]
        if transposed:
            macs = _prod(x.shape) * wshape[1] * _prod(wshape[2:])
        else:
            macs = oshape[0] * oshape[1] * _prod(ospatial) * wshape[1] * _prod(wshape[2:])
        out_dim, in_dim = (1, 0) if transposed else (0, 1)
        depthwise = not transposed and groups > 1 and groups == cin == oshape[1] and wshape[1] == 1
        if groups == 1:
            self._consume(w, in_dim, node, xt.grid if xt is not None else None)
            e = self._produce(w, out_dim, node)
            self._tie_param(b, 0, e)
            self.mac_terms.append((macs, [g for g in (self._weight_dims(w, 0), self._weight_dims(w, 1))
                                          if g is not None]))
            return Val(oshape, [Track((1,), e)])
        if depthwise:
            grid = xt.grid if xt is not None else None
            self._tie_param(w, 0, grid)
            self._tie_param(b, 0, grid)
            e = self._weight_dims(w, 0)
            self.mac_terms.append((macs, [e] if e is not None else []))
            if grid is None:
                return Val(oshape)
            return Val(oshape, [Track((1,), grid)])
        # grouped conv (not depthwise): channels stay, in and out
        self.unsupported.setdefault(f"grouped conv (groups={groups})", self.cap.owner(node) or "<top>")
        if xt is not None:
            self._fix_grid(xt.grid)
        e = self._produce(w, out_dim, node)
        self._fix_grid(e)
        self._tie_param(b, 0, e)
        return Val(oshape, [Track((1,), e)])

    def _op_conv2d(self, node):
        a = list(node.args) + [None] * 7
        groups = a[6] if a[6] is not None else node.kwargs.get("groups", 1)
        return self._conv(node, a[0], a[1], a[2] if isinstance(a[2], torch.fx.Node) else None, groups)

    _op_conv1d = _op_conv2d
    _op_conv3d = _op_conv2d

    def _op_convolution(self, node):
        a = list(node.args)
        return self._conv(node, a[0], a[1], a[2] if isinstance(a[2], torch.fx.Node) else None, a[8], a[6])

    def _op_conv_transpose2d(self, node):
        a = list(node.args) + [None] * 8
        groups = a[6] if a[6] is not None else 1
        return self._conv(node, a[0], a[1], a[2] if isinstance(a[2], torch.fx.Node) else None, groups, True)

    _op_conv_transpose1d = _op_conv_transpose2d

    def _linear_like(self, node, x_node, w, b, w_in, w_out):
        """x [..., I] times a weight whose dim ``w_in`` reads I and dim ``w_out`` writes O."""
        x = self._val(x_node)
        oshape = _meta_shape(node.meta["val"])
        if x is None:
            return Val(oshape)
        last = len(x.shape) - 1
        xt = self._track_on(x, last)
        if xt is not None and xt.dims != (last,):
            self._fix_grid(xt.grid)
            xt = None
        self._consume(w, w_in, node, xt.grid if xt is not None else None)
        e = self._produce(w, w_out, node)
        self._tie_param(b, 0, e)
        rows = _prod(x.shape[:-1])
        wshape = self._val(w).shape
        self.mac_terms.append((rows * wshape[0] * wshape[1], [g for g in (self._weight_dims(w, 0),
                                                                          self._weight_dims(w, 1)) if g is not None]))
        tracks = [t for t in x.tracks if t is not xt and last not in t.dims]
        return Val(oshape, tracks + [Track((len(oshape) - 1,), e)])

    def _op_linear(self, node):
        x, w = node.args[0], node.args[1]
        b = node.args[2] if len(node.args) > 2 and isinstance(node.args[2], torch.fx.Node) else None
        if self._param_of(w) is None:
            return self._matmul_vals(node, self._val(x), self._transposed(self._val(w)))
        return self._linear_like(node, x, w, b, 1, 0)

    def _transposed(self, v):
        if v is None:
            return None
        r = len(v.shape)
        perm = list(range(r))
        perm[-1], perm[-2] = perm[-2], perm[-1]
        return self._permute(v, perm, tuple(v.shape[p] for p in perm))

    def _op_addmm(self, node):
        bias, m1, m2 = node.args[:3]
        if self._param_of(m2) is not None:  # x @ W + b with W [in, out]: Hugging Face Conv1D (GPT-2)
            return self._linear_like(node, m1, m2, bias if self._param_of(bias) else None, 0, 1)
        out = self._matmul_vals(node, self._val(m1), self._val(m2))
        return self._broadcast_vals([out, self._val(bias)], out.shape)

    def _broadcast_vals(self, vals, oshape):
        tracks = []
        for v in vals:
            if v is None:
                continue
            off = len(oshape) - len(v.shape)
            tracks.extend(Track(tuple(d + off for d in t.dims), t.grid) for t in v.tracks
                          if all(oshape[d + off] == v.shape[d] for d in t.dims))
        return Val(oshape, self._normalize(self._merge_tracks(tracks)))

    def _op_mm(self, node):
        a, b = node.args[:2]
        if self._param_of(b) is not None:
            return self._linear_like(node, a, b, None, 0, 1)
        return self._matmul_vals(node, self._val(a), self._val(b))

    def _op_matmul(self, node):
        a, b = node.args[:2]
        if self._param_of(b) is not None and len(self._val(b).shape) == 2:
            return self._linear_like(node, a, b, None, 0, 1)
        return self._matmul_vals(node, self._val(a), self._val(b))

    _op_bmm = _op_matmul

    def _op_baddbmm(self, node):
        out = self._matmul_vals(node, self._val(node.args[1]), self._val(node.args[2]))
        return self._broadcast_vals([out, self._val(node.args[0])], out.shape)

    def _matmul_vals(self, node, a, b, oshape=None):
        """Generic [..., n, k] @ [..., k, m]: batch dims tie like an element-wise op, the contracted
        dims tie to each other, n and m carry over."""
        oshape = oshape or _meta_shape(node.meta["val"])
        if a is None or b is None or len(a.shape) < 2 or len(b.shape) < 2:
            for v in (a, b):
                self._fix_val(v)
            return Val(oshape)
        ra, rb, R = len(a.shape), len(b.shape), len(oshape)
        ka, kb = self._track_on(a, ra - 1), self._track_on(b, rb - 2)
        tracks = []
        for v, r, keep in ((a, ra, ra - 2), (b, rb, rb - 1)):
            for t in v.tracks:
                if t is ka or t is kb:
                    continue
                if any(d == keep for d in t.dims) and len(t.dims) > 1:
                    self._fix_grid(t.grid)
                    continue
                off = R - r
                tracks.append(Track(tuple(d + off for d in t.dims), t.grid))
        k_grid = None
        for k in (ka, kb):
            if k is not None and len(k.dims) > 1:
                self._fix_grid(k.grid)
        ka = ka if ka is not None and len(ka.dims) == 1 else None
        kb = kb if kb is not None and len(kb.dims) == 1 else None
        if ka is not None and kb is not None:
            self.uf.union_arrays(ka.grid, kb.grid)
            k_grid = ka.grid
        elif (ka is not None) != (kb is not None):  # contracted with a computed tensor: keep those channels
            self._fix_grid((ka or kb).grid)
        # batch dims must agree on both sides (broadcast)
        batch = [t for t in tracks if all(d < R - 2 for d in t.dims)]
        rest = [t for t in tracks if all(t is not b for b in batch)]
        batch = self._merge_tracks(batch)
        out = Val(oshape, self._normalize(batch + rest))
        k = a.shape[-1]
        self.mac_terms.append((_prod(oshape) * k, [t.grid for t in out.tracks] + ([k_grid] if k_grid is not None else [])))
        return out

    def _op_scaled_dot_product_attention(self, node):
        a = list(node.args) + [None] * 7
        q, k, v = (self._val(x) for x in a[:3])
        mask = self._val(a[3]) if isinstance(a[3], torch.fx.Node) else None
        scale = node.kwargs.get("scale", a[6])
        oshape = _meta_shape(node.meta["val"])
        if q is None or k is None or v is None:
            self._fix_args(node)
            return Val(oshape)
        e = len(q.shape) - 1
        if scale is None:  # the default scale 1/sqrt(E) would change if E lost positions
            for x in (q, k):
                t = self._track_on(x, e)
                if t is not None:
                    self._fix_grid(t.grid)
        if q.shape[:-2] != k.shape[:-2] or q.shape[:-2] != v.shape[:-2]:  # grouped-query attention
            self._fix_args(node)
            return Val(oshape)
        scores_shape = q.shape[:-1] + (k.shape[-2],)
        scores = self._matmul_vals(node, q, self._transposed(k), scores_shape)
        if mask is not None:
            scores = self._broadcast_vals([scores, mask], scores_shape)
        t = self._track_on(scores, len(scores_shape) - 1)
        if t is not None:  # softmax over keys
            self._fix_grid(t.grid)
        return self._matmul_vals(node, scores, v, oshape)

    def _op_embedding(self, node):
        w, ids = node.args[:2]
        oshape = _meta_shape(node.meta["val"])
        if self._param_of(w) is None:
            return Val(oshape)
        e = self._produce(w, 1, node)
        return Val(oshape, [Track((len(oshape) - 1,), e)])

    # ---------------------------------------------------------------- normalisation
    def _norm_params(self, node, x, dim, params):
        t = self._track_on(x, dim) if x is not None else None
        grid = t.grid if t is not None and t.dims == (dim,) else None
        if t is not None and grid is None:
            self._fix_grid(t.grid)
        for p in params:
            if isinstance(p, torch.fx.Node):
                self._tie_param(p, 0, grid)
        return grid

    def _op_batch_norm(self, node):
        x = self._val(node.args[0])
        self._norm_params(node, x, 1, node.args[1:5])
        if self._param_of(node.args[1]):
            self.bn_params.append((self._param_of(node.args[1]), self._param_of(node.args[2]), node.name))
        return Val(x.shape, list(x.tracks)) if x is not None else self._untracked(node)

    def _op__native_batch_norm_legit_no_training(self, node):
        v = self._op_batch_norm(node)
        n = len(node.meta["val"])
        return [v] + [Val(_meta_shape(o)) for o in node.meta["val"][1:n]]

    _op__native_batch_norm_legit = _op__native_batch_norm_legit_no_training
    _op_native_batch_norm = _op__native_batch_norm_legit_no_training

    def _op_instance_norm(self, node):
        return self._op_batch_norm(node)

    def _layer_norm_common(self, node, params):
        x = self._val(node.args[0])
        shape = list(node.args[1])
        if x is None:
            return self._untracked(node)
        rank = len(x.shape)
        normed = list(range(rank - len(shape), rank))
        if len(shape) == 1:
            self._norm_params(node, x, rank - 1, params)
        else:
            return Val(x.shape, self._off_dims(x, normed))
        return Val(x.shape, list(x.tracks))

    def _op_layer_norm(self, node):
        return self._layer_norm_common(node, node.args[2:4])

    def _op_native_layer_norm(self, node):
        v = self._layer_norm_common(node, node.args[2:4])
        return [v] + [Val(_meta_shape(o)) for o in node.meta["val"][1:]]

    def _op_rms_norm(self, node):
        return self._layer_norm_common(node, node.args[2:3])

    def _op_group_norm(self, node):
        x = self._val(node.args[0])
        groups = node.args[1]
        if x is None:
            return self._untracked(node)
        grid = self._norm_params(node, x, 1, node.args[2:4])
        c = x.shape[1]
        if grid is not None and groups > 1:
            size = c // groups
            for g in range(groups):  # a GroupNorm group is one unit
                for e in grid[g * size + 1:(g + 1) * size]:
                    self.uf.union(int(grid[g * size]), int(e))
            w = node.args[2]
            owner = self._param_of(w).rpartition(".")[0] if self._param_of(w) else self.cap.owner(node)
            self.groupnorms.append((owner, size))
        return Val(x.shape, list(x.tracks))

    def _op_prelu(self, node):
        x, w = self._val(node.args[0]), node.args[1]
        if x is not None and self._track_on(x, 1) is not None:
            self._tie_param(w, 0, self._track_on(x, 1).grid)
        return Val(x.shape, list(x.tracks)) if x is not None else self._untracked(node)

    # ---------------------------------------------------------------- exclude, groups
    def _exclude(self, patterns):
        patterns = [patterns] if isinstance(patterns, str) else list(patterns or ())
        if not patterns:
            self.excluded = []
            return
        hit = set()
        for fqn, dims in self.param_elems.items():
            module = fqn.rpartition(".")[0]
            if any(fnmatch.fnmatchcase(module, p) or fnmatch.fnmatchcase(module, p + ".*") or module == p
                   for p in patterns):
                hit.add(module)
                for e in dims.values():
                    self._fix_grid(e)
        unknown = [p for p in patterns if not any(fnmatch.fnmatchcase(m, p) or m == p or fnmatch.fnmatchcase(m, p + ".*")
                                                  for m in hit)]
        if unknown:
            mods = sorted({f.rpartition(".")[0] for f in self.param_elems})
            raise GraphError(f"exclude={unknown} matches no module with parameters; modules: "
                             f"{', '.join(mods[:12])}{' ...' if len(mods) > 12 else ''}")
        self.excluded = sorted(hit)

    def _build_groups(self):
        roots = {}
        for pi, p in enumerate(self.producers):
            for c, e in enumerate(self.param_elems[p.param][p.dim].tolist()):
                roots.setdefault(self.uf.find(e), []).append((pi, c))
        fixed_roots = {self.uf.find(e) for e in self.fixed}
        self.groups, self.root_to_group = [], {}
        seen = set()
        for root, members in roots.items():
            # the same producer dim may be listed twice (a weight used by two ops): count members once
            uniq = []
            for m in members:
                key = (self.producers[m[0]].param, self.producers[m[0]].dim, m[1])
                if key not in seen:
                    seen.add(key)
                    uniq.append(m)
            g = ChannelGroup(len(self.groups), uniq, prunable=root not in fixed_roots)
            self.groups.append(g)
            self.root_to_group[root] = g.id
        # the union-find is final now: one table element -> group id makes every later lookup a numpy index
        self._elem_gid = np.array([self.root_to_group.get(self.uf.find(e), -1) for e in range(len(self.uf.parent))],
                                  dtype=np.int64)

    # ---------------------------------------------------------------- queries
    def group_ids(self, elems):
        """Group id per element (-1: no group, e.g. a kernel position or a fixed input channel)."""
        return self._elem_gid[np.asarray(elems, dtype=np.int64)]

    def group_of(self, elem):
        return self.root_to_group.get(self.uf.find(int(elem)))

    def prunable_groups(self):
        return [g for g in self.groups if g.prunable]

    def unique_producers(self):
        """Producers with duplicates (a weight used twice) removed, in graph order."""
        out, seen = [], set()
        for p in self.producers:
            if (p.param, p.dim) not in seen:
                seen.add((p.param, p.dim))
                out.append(p)
        return out

    def clusters(self):
        """Prunable groups clustered by shared producers: one "layer" for per-layer ratios."""
        uf, ids = _UnionFind(), {}
        for g in self.prunable_groups():
            ids[g.id] = int(uf.new(1)[0])
        by_src = {}
        for g in self.prunable_groups():
            for pi, _ in g.members:
                key = (self.producers[pi].param, self.producers[pi].dim)
                if key in by_src:
                    uf.union(ids[g.id], ids[by_src[key]])
                else:
                    by_src[key] = g.id
        out = {}
        for g in self.prunable_groups():
            out.setdefault(uf.find(ids[g.id]), []).append(g.id)
        return list(out.values())

    def mac_model(self):
        """``(base, terms)``: MACs = base + sum(macs * prod(kept fraction of each factor's positions))."""
        terms = []
        for macs, grids in self.mac_terms:
            terms.append((macs, [self.group_ids(g).ravel() for g in grids if g is not None and np.size(g)]))
        return terms

    def node_by_name(self, name):
        return next(n for n in self.cap.graph.nodes if n.name == name)


def modelled_macs(terms, removed_mask):
    """MACs of the modelled ops when the groups in ``removed_mask`` (bool array over group ids) go."""
    total = 0.0
    ext = np.append(removed_mask, False)  # index -1 (no group) is never removed
    for macs, factors in terms:
        f = float(macs)
        for gids in factors:
            f *= 1.0 - ext[gids].mean() if len(gids) else 1.0
        total += f
    return total


def build_graph(model, example_inputs, output=None, exclude=()):
    """Capture ``model`` (the caller passes a copy if it will be edited) and analyse its channels."""
    with torch.no_grad():
        return ChannelGraph(capture(model, example_inputs, output), exclude=exclude)
