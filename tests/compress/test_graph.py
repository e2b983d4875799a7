import pytest
import torch
import torch.nn.functional as F
from torch import nn

from _toys_a import toy_net, one_thread  # noqa: F401 (autouse fixture)
from slimkit.compress.graph import GraphError, build_graph


def _group_members(graph):
    return [sorted(g.members) for g in graph.groups]


def test_toynet_groups_follow_residual_pad_concat_and_depthwise():
    g = build_graph(toy_net(), torch.randn(2, 3, 8, 8))
    members = _group_members(g)
    # residual stream of stage 1 (stem + block1.conv2) sits in channels 2..5 of stage 2 (pad of 2 each side)
    for c in range(4):
        assert sorted([("stem", c), ("block1_conv2", c), ("block2_conv2", c + 2)]) in members
    # stage-2 channels 0,1,6,7 are tied only to the zero pad: block2.conv2 alone
    for c in (0, 1, 6, 7):
        assert [("block2_conv2", c)] in members
    assert len(g.groups) == 4 + 4 + 8 + 4 + 6 + 5  # stem-stream, b1.conv1, b2.conv1, pad-only, side, fc
    prunable = g.prunable_groups()
    assert len(prunable) == 4 + 4 + 8 + 4 + 6  # fc outputs reach the network output: fixed
    assert not any(("fc", 0) in grp.members for grp in prunable)
    assert sorted(len(c) for c in g.clusters()) == [4, 6, 8, 8]
    assert list(g.pads) == ["pad"] and g.param_pass["dw"] == "relu_4"  # depthwise is pass-through


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

    def forward(self, x):
        return F.pad(self.conv(x), (0, 0, 0, 0, 1, 1), mode="reflect")


class Slicing(nn.Module):
    """Channel slicing and a hard-coded reshape: those channels are fixed, not pruned wrongly."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.fc = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 6, 1), nn.Linear(6 * 4, 2)

    def forward(self, x):
        y = self.a(x)[:, :2] * 2
        return self.fc(self.b(x).view(-1, 24)), y


def test_unsupported_op_and_bad_pad_raise_naming_op():
    with pytest.raises(GraphError, match="fft2"):
        build_graph(Unsupported(), torch.randn(1, 3, 4, 4))
    with pytest.raises(GraphError, match="pad.*reflect"):
        build_graph(Reflect(), torch.randn(1, 3, 4, 4))


def test_channel_slicing_and_constant_reshape_are_fixed():
    g = build_graph(Slicing(), torch.randn(1, 3, 2, 2))
    assert g.prunable_groups() == []
    assert len(g.groups) == 4 + 6 + 2


def test_untraceable_model_raises_with_name():
    class Branchy(nn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x

    with pytest.raises(GraphError, match="Branchy"):
        build_graph(Branchy(), torch.randn(1, 3))
