import pytest
import torch
import torch.nn.functional as F
from torch import nn

from _toy_graphs import toy_net, one_thread  # noqa: F401 (autouse fixture)
from slimkit.compress.graph import GraphError, build_graph


def _members(graph):
    """Each group as the sorted list of (weight FQN, channel) it holds."""
    return [sorted((graph.producers[pi].param, c) for pi, c in g.members) for g in graph.groups]


def test_toynet_groups_follow_residual_pad_concat_and_depthwise():
    g = build_graph(toy_net(), torch.randn(2, 3, 8, 8))
    members = _members(g)
    # residual stream of stage 1 (stem + block1.conv2) sits in channels 2..5 of stage 2 (pad of 2 each side)
    for c in range(4):
        assert sorted([("stem.weight", c), ("block1.conv2.weight", c), ("block2.conv2.weight", c + 2)]) in members
    # stage-2 channels 0,1,6,7 are tied only to the zero pad, whose amounts live in code: block2.conv2 alone, fixed
    by_members = {tuple(m): grp for m, grp in zip(members, g.groups)}
    for c in (0, 1, 6, 7):
        assert not by_members[(("block2.conv2.weight", c),)].prunable
    assert len(g.groups) == 4 + 4 + 8 + 4 + 6 + 5  # stem-stream, b1.conv1, b2.conv1, pad-only, side, fc
    prunable = g.prunable_groups()
    assert len(prunable) == 4 + 4 + 8 + 6  # fc outputs reach the network output; pad-only channels stay
    assert not any(("fc.weight", 0) in _members(g)[grp.id] for grp in prunable)
    assert sorted(len(c) for c in g.clusters()) == [4, 4, 6, 8]
    # the depthwise conv and its BN follow the channels they read (no group of their own)
    assert not any(p.param == "dw.weight" for p in g.producers)
    root = g.uf.find(int(g.param_elems["dw.weight"][0][3]))
    assert root == g.uf.find(int(g.param_elems["block2.conv2.weight"][0][3]))
    assert g.unsupported == {}


class PadModule(nn.Module):
    """An option-A shortcut whose channel padding is an attribute with an edit hook."""

    def __init__(self, pad):
        super().__init__()
        self.left = self.right = pad

    def forward(self, x):
        return F.pad(x, (0, 0, 0, 0, self.left, self.right))

    def set_channel_pad(self, dim, left, right):
        self.left, self.right = left, right


class EditablePadNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.pad = nn.Conv2d(3, 2, 1), nn.Conv2d(2, 4, 1), PadModule(1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        y = self.a(x)
        z = torch.relu(self.b(y)) + self.pad(y)
        return self.fc(z.mean((2, 3)))


def test_editable_pad_channels_are_prunable():
    g = build_graph(EditablePadNet().eval(), torch.randn(2, 3, 4, 4))
    assert [p.module for p in g.pads] == ["pad"]
    # b's channels 0 and 3 meet only the zero pad: prunable because the pad can be edited
    assert sum(1 for m in _members(g) if m in ([("b.weight", 0)], [("b.weight", 3)])) == 2
    assert all(grp.prunable for grp in g.groups if _members(g)[grp.id][0][0] == "b.weight")


class Unsupported(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        return torch.fft.fft2(self.conv(x)).real


class Reflect(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.fc = nn.Linear(6, 2)

    def forward(self, x):
        return self.fc(F.pad(self.conv(x), (0, 0, 0, 0, 1, 1), mode="reflect").mean((2, 3)))


def test_unknown_op_and_reflect_pad_fix_channels_and_are_reported():
    g = build_graph(Unsupported().eval(), torch.randn(1, 3, 4, 4))
    assert g.prunable_groups() == [] and "fft_fft2" in g.unsupported
    assert list(g.unsupported.values()) == ["<top>"]
    g = build_graph(Reflect().eval(), torch.randn(1, 3, 4, 4))
    assert g.prunable_groups() == [] and any("reflect" in k for k in g.unsupported)


class Slicing(nn.Module):
    """Channel slicing and a hard-coded reshape: those channels are fixed, not pruned wrongly."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.fc = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 6, 1), nn.Linear(6 * 4, 2)

    def forward(self, x):
        y = self.a(x)[:, :2] * 2
        return self.fc(self.b(x).view(-1, 24)), y


def test_channel_slicing_is_fixed_and_flatten_ties_features():
    g = build_graph(Slicing().eval(), torch.randn(1, 3, 2, 2))
    # a's channels are sliced by a constant index; b's reach fc through a flatten (4 features each)
    prunable = {_members(g)[grp.id][0][0] for grp in g.prunable_groups()}
    assert prunable == {"b.weight"} and len(g.prunable_groups()) == 6
    fc_in = g.group_ids(g.param_elems["fc.weight"][1])
    assert fc_in.tolist() == [gid for gid in g.group_ids(g.param_elems["b.weight"][0]).tolist() for _ in range(4)]


class Heads(nn.Module):
    """Multi-head self-attention written out: q/k/v projections, a head split, SDPA, merge, output."""

    def __init__(self, dim=8, heads=2):
        super().__init__()
        self.num_heads, self.head_dim = heads, dim // heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x):
        b, t, _ = x.shape
        q, k, v = (p(x).view(b, t, -1, self.head_dim).transpose(1, 2) for p in (self.q, self.k, self.v))
        y = F.scaled_dot_product_attention(q, k, v)
        return self.o(y.transpose(1, 2).reshape(b, t, -1))


def test_attention_heads_are_units():
    g = build_graph(Heads().eval(), torch.randn(2, 5, 8))
    heads = [grp for grp in g.groups if {g.producers[pi].param for pi, _ in grp.members} == {"q.weight", "k.weight",
                                                                                             "v.weight"}]
    assert len(heads) == 2 and all(len(h.members) == 3 * 4 and h.prunable for h in heads)
    assert [s.unit for s in g.splits] == [4, 4, 4] and {s.module for s in g.splits} == {""}


def test_data_dependent_branch_raises_with_name():
    class Branchy(nn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x

    with pytest.raises(GraphError, match="Branchy.*data-dependent"):
        build_graph(Branchy(), torch.randn(1, 3))


class Transposes(nn.Module):
    """``.T`` (aten.numpy_T) and ``.permute`` of the same 3-D activation feed two heads."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(4, 6), nn.Linear(3, 2), nn.Linear(3, 2)

    def forward(self, x):  # x: [3, 5, 4]
        y = self.a(x)  # [3, 5, 6]
        return self.b(y.T).sum() + self.c(y.permute(2, 1, 0)).sum()


def test_numpy_T_follows_channels_like_permute_and_untracked_input_stays_untracked():
    import types

    from slimkit.compress.graph import Val

    g = build_graph(Transposes().eval(), torch.randn(3, 5, 4))
    assert any(n.target is torch.ops.aten.numpy_T.default for n in g.cap.program.graph.nodes)
    a_channels = g.group_ids(g.param_elems["a.weight"][0]).tolist()
    assert a_channels == g.group_ids(g.param_elems["a.bias"][0]).tolist()  # .T moved a's channels to dim 0, the
    # dim both heads reduce over their last dim (size 3) is not a's: a's groups reach neither head's weight
    assert not set(a_channels) & set(g.group_ids(g.param_elems["b.weight"][1]).tolist())
    # an input without a channel record (not a graph value, like the other handlers' untracked inputs)
    fake = types.SimpleNamespace(args=(None,), meta={"val": torch.empty(4, 3)})
    out = g._op_numpy_T(fake)
    assert isinstance(out, Val) and (out.shape, out.tracks) == ((4, 3), [])
    assert (g._op_t(fake).shape, g._op_t(fake).tracks) == ((4, 3), [])  # as its sibling does
