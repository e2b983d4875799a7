"""Cell search spaces: the NAS-Bench-201 space (Dong & Yang, ICLR 2020) and a small one for quick runs.

A cell is a DAG of ``nodes`` nodes; node j sums one operation applied to each earlier node, and the
last node is the cell's output. NAS-Bench-201: 4 nodes, 6 edges, 5 operations (15,625 cells) in the
published macro skeleton: stem conv 3x3 -> C, three stages of N cells (C, 2C, 4C channels) joined by
ResNet basic blocks with stride 2, then BN-ReLU, global pooling and a linear classifier; C=16, N=5.
Cell bodies use NAS-Bench-201's string form ``|op~0|+|op~0|op~1|+|op~0|op~1|op~2|`` (the format of
``ArchitectureString`` in nats_bench_tss.csv).

Standalone nets and the supernet share one module layout (each edge is a ModuleDict keyed by op
name), so a standalone net's state_dict keys are a subset of the supernet's: ``export`` copies them.
The supernet's BatchNorms have no affine parameters (every shared parameter is then a conv or
linear weight, which the disturbance-immune update projects); BN statistics are recalibrated per
architecture before evaluation (``slimkit.nas.supernet.recalibrate_bn``).
"""
import torch
from torch import nn

from slimkit.models._checks import check_image_input
from slimkit.nas.space import Choice, SearchSpace, register_space

OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")


class ReLUConvBN(nn.Sequential):
    def __init__(self, cin, cout, k, stride=1, affine=True):
        super().__init__(nn.ReLU(inplace=False), nn.Conv2d(cin, cout, k, stride, k // 2, bias=False),
                         nn.BatchNorm2d(cout, affine=affine))


def make_op(name, channels, affine=True):
    if name == "none":
        return None
    if name == "skip_connect":
        return nn.Identity()
    if name == "nor_conv_1x1":
        return ReLUConvBN(channels, channels, 1, affine=affine)
    if name == "nor_conv_3x3":
        return ReLUConvBN(channels, channels, 3, affine=affine)
    if name == "avg_pool_3x3":
        return nn.AvgPool2d(3, 1, 1, count_include_pad=False)
    raise ValueError(f"unknown cell op {name!r}; expected one of {', '.join(OPS)}")


def edge_list(nodes):
    """(to, from) pairs in NAS-Bench-201 string order."""
    return [(j, i) for j in range(1, nodes) for i in range(j)]


class Cell(nn.Module):
    """One cell; ``ops`` = the op per edge (standalone) or None (all candidate ops: supernet)."""

    def __init__(self, channels, nodes, ops=None, candidates=OPS, affine=True):
        super().__init__()
        self.nodes, self.pairs = nodes, edge_list(nodes)
        self.edges = nn.ModuleList()
        for e in range(len(self.pairs)):
            names = [ops[e]] if ops is not None else list(candidates)
            d = nn.ModuleDict()
            for n in names:
                m = make_op(n, channels, affine)
                if m is not None:
                    d[n] = m
            self.edges.append(d)
        self.ops = tuple(ops) if ops is not None else None

    def forward(self, x, ops=None):
        ops = ops or self.ops
        states = [x]
        for j in range(1, self.nodes):
            terms = [self.edges[e][ops[e]](states[i]) for e, (jj, i) in enumerate(self.pairs)
                     if jj == j and ops[e] != "none"]
            states.append(sum(terms[1:], terms[0]) if terms else torch.zeros_like(x))
        return states[-1]


class ResNetBlock(nn.Module):
    """NAS-Bench-201's reduction block: ReLUConvBN 3x3 s2, ReLUConvBN 3x3, + AvgPool2d(2)-Conv1x1 shortcut."""

    def __init__(self, cin, cout, affine=True):
        super().__init__()
        self.conv_a = ReLUConvBN(cin, cout, 3, 2, affine)
        self.conv_b = ReLUConvBN(cout, cout, 3, 1, affine)
        self.downsample = nn.Sequential(nn.AvgPool2d(2, 2), nn.Conv2d(cin, cout, 1, bias=False))

    def forward(self, x):
        return self.downsample(x) + self.conv_b(self.conv_a(x))


class CellNet(nn.Module):
    """The macro skeleton; ``cell_ops`` None builds the supernet (every op on every edge)."""
    model_name = "nas"

    def __init__(self, channels, cells_per_stage, nodes, cell_ops=None, candidates=OPS, num_classes=10,
                 affine=True):
        super().__init__()
        self.num_classes = num_classes
        c = channels
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, padding=1, bias=False), nn.BatchNorm2d(c, affine=affine))
        layers = []
        for stage in range(3):
            if stage:
                layers.append(ResNetBlock(c, 2 * c, affine))
                c *= 2
            layers += [Cell(c, nodes, cell_ops, candidates, affine) for _ in range(cells_per_stage)]
        self.cells = nn.ModuleList(layers)
        self.lastact = nn.Sequential(nn.BatchNorm2d(c, affine=affine), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c, num_classes)
        self.cell_ops = tuple(cell_ops) if cell_ops is not None else None

    def forward_features(self, x):
        check_image_input(self.model_name, x, 3)
        x = self.stem(x)
        for layer in self.cells:
            x = layer(x, self.cell_ops) if isinstance(layer, Cell) else layer(x)
        return self.pool(self.lastact(x)).flatten(1)

    def forward_head(self, x):
        return self.classifier(x)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


class CellSupernet(CellNet):
    """Weight-sharing supernet of a cell space: ``set_arch(arch)`` picks the single path to run."""
    skeleton = ("stem.*", "cells.*.conv_a.*", "cells.*.conv_b.*", "cells.*.downsample.*", "classifier")

    def __init__(self, space, num_classes=10):
        o = space.options
        super().__init__(o["C"], o["N"], o["nodes"], None, o["ops"], num_classes, affine=False)
        self.space = space
        self.arch = None

    def set_arch(self, arch):
        self.arch = self.space.parse(arch)
        self.cell_ops = self.arch.values
        return self

    def forward(self, x):
        if self.cell_ops is None:
            raise ValueError("CellSupernet: call set_arch(arch) before forward")
        return super().forward(x)

    def export(self, arch=None, num_classes=None):
        """The standalone net of ``arch`` (default: the current one) with this supernet's weights and
        BN statistics; its BNs are affine with weight 1, bias 0, so it computes what the supernet does."""
        arch = self.space.parse(arch or self.arch)
        net = self.space.build(arch, num_classes or self.num_classes)
        mine = self.state_dict()
        state = net.state_dict()
        for k in state:
            if k in mine:
                state[k] = mine[k].clone()
        net.load_state_dict(state)
        return net


def _cell_body(values, nodes):
    parts, e = [], 0
    for j in range(1, nodes):
        parts.append("|" + "|".join(f"{values[e + i]}~{i}" for i in range(j)) + "|")
        e += j
    return "+".join(parts)


def _parse_body(body, nodes, ops):
    groups = body.split("+")
    if len(groups) != nodes - 1:
        raise ValueError(f"cell string {body!r} must have {nodes - 1} '+'-separated node groups")
    values = []
    for j, g in enumerate(groups, start=1):
        items = [t for t in g.split("|") if t]
        if len(items) != j:
            raise ValueError(f"node {j} of cell string {body!r} must have {j} inputs, got {len(items)}")
        for i, item in enumerate(items):
            op, sep, src = item.partition("~")
            if not sep or src != str(i) or op not in ops:
                raise ValueError(f"bad edge {item!r} in {body!r}: expected OP~{i} with OP one of {', '.join(ops)}")
            values.append(op)
    return values


def _build_cellnet(space, arch, num_classes):
    o = space.options
    return CellNet(o["C"], o["N"], o["nodes"], arch.values, o["ops"], num_classes, affine=True)


def _cell_blocks(space, arch):
    """Latency look-up blocks: stem, each cell (keyed by its ops, channels and resolution), each
    reduction block, and the head."""
    o = space.options
    c, res = o["C"], 32
    blocks = [(("stem", c), nn.Sequential(nn.Conv2d(3, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)), (3, 32, 32))]
    for stage in range(3):
        if stage:
            blocks.append((("reduce", c, res), ResNetBlock(c, 2 * c), (c, res, res)))
            c, res = 2 * c, res // 2
        for _ in range(o["N"]):
            blocks.append((("cell", c, res, arch.values), Cell(c, o["nodes"], arch.values, o["ops"]), (c, res, res)))
    head = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 10))
    blocks.append((("head", c, res), head, (c, res, res)))
    return blocks


def cell_space(name, C, N, nodes, ops, defaults):
    ops = tuple(ops)
    choices = [Choice(f"edge{j}<-{i}", ops) for j, i in edge_list(nodes)]
    return SearchSpace(
        name=name, choices=choices, encode_body=lambda v: _cell_body(v, nodes),
        decode_body=lambda b: _parse_body(b, nodes, ops), builder=_build_cellnet,
        supernet_builder=lambda sp, n: CellSupernet(sp, n),
        options={"C": int(C), "N": int(N), "nodes": int(nodes), "ops": ops}, defaults=defaults, blocks=_cell_blocks)


@register_space("nb201")
def nb201(C=16, N=5):
    """NAS-Bench-201 / NATS-Bench topology space: 4 nodes, 5 ops, 15,625 cells; published C=16, N=5."""
    return cell_space("nb201", C, N, 4, OPS, defaults={"C": 16, "N": 5, "nodes": 4, "ops": OPS})


@register_space("cell")
def small_cell(C=8, N=1):
    """A small cell space for quick experiments: 3 nodes (3 edges), the 5 NAS-Bench-201 ops, 125 cells."""
    return cell_space("cell", C, N, 3, OPS, defaults={"C": 8, "N": 1, "nodes": 3, "ops": OPS})
