import pytest
import torch
from torch import nn

from _toy_graphs import toy_net, one_thread  # noqa: F401 (autouse fixture)
from test_graph import EditablePadNet
from slimkit.compress.graph import build_graph
from slimkit.compress.surgery import apply_removal, get_surgery, prune_record, register_surgery


def _groups_of(graph, param, channels):
    gids = graph.group_ids(graph.param_elems[param][0])
    return {int(gids[c]) for c in channels}


def test_slicing_updates_shape_attributes_and_keeps_input_untouched():
    model, x = toy_net(), torch.randn(2, 3, 8, 8)
    w = model.block2.conv1.weight.detach().clone()
    g = build_graph(model, x)
    out = apply_removal(g, _groups_of(g, "block2.conv1.weight", [1, 3, 5]), model)
    c = out.block2.conv1
    assert (c.in_channels, c.out_channels) == (4, 5) and c.weight.shape == (5, 4, 3, 3)
    assert torch.equal(c.weight, w[[0, 2, 4, 6, 7]])
    assert out.block2.bn1.num_features == 5 and out.block2.bn1.running_var.shape == (5,)
    assert out.block2.conv2.in_channels == 5 and out.block2.conv2.weight.shape == (8, 5, 3, 3)
    assert type(out) is type(model) and model.block2.conv1.out_channels == 8  # same class; input unchanged
    assert out(x).shape == (2, 5)
    rec = prune_record(out)
    assert rec.kept["block2.conv1"][0].tolist() == [0, 2, 4, 6, 7] and rec.kept["block2.conv1"][1] is None
    assert rec.kept["block2.conv2"][0] is None and torch.equal(rec.kept["block2.conv2"][1], rec.kept["block2.conv1"][0])
    chain = next(ch for ch in rec.chains if ch.producer == "block2.conv1")
    assert chain.consumers == ["block2.conv2"] and chain.size == 8 and chain.kept.tolist() == [0, 2, 4, 6, 7]
    assert chain.followers == ["block2.bn1.bias", "block2.bn1.running_mean", "block2.bn1.running_var",
                               "block2.bn1.weight"]


def test_depthwise_and_linear_after_flatten():
    model, x = toy_net(), torch.randn(2, 3, 8, 8)
    g = build_graph(model, x)
    out = apply_removal(g, _groups_of(g, "side.weight", [0, 5]), model)
    assert out.side.out_channels == 4 and out.fc.in_features == (8 + 4) * 16
    stream = _groups_of(g, "stem.weight", [0])
    out = apply_removal(g, stream, model)
    assert out.dw.groups == out.dw.in_channels == out.dw.out_channels == 7 and out.dwbn.num_features == 7
    assert out.stem.out_channels == 3 and out(x).shape == (2, 5)


def test_nothing_removed_is_identical_and_pad_is_edited():
    model, x = toy_net(), torch.randn(2, 3, 8, 8)
    g = build_graph(model, x)
    torch.testing.assert_close(apply_removal(g, [], model)(x), model(x), rtol=0, atol=0)
    net, y = EditablePadNet().eval(), torch.randn(2, 3, 4, 4)
    g = build_graph(net, y)
    out = apply_removal(g, _groups_of(g, "b.weight", [0]), net)
    assert (out.pad.left, out.pad.right, out.b.out_channels, out.fc.in_features) == (0, 1, 3, 3)
    assert out(y).shape == (2, 2)
    with pytest.raises(ValueError, match="every output channel"):
        apply_removal(g, _groups_of(g, "a.weight", [0, 1]), net)


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb, self.mid, self.head = nn.Embedding(10, 6), nn.Linear(6, 6), nn.Linear(6, 10, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, ids):
        return self.head(torch.relu(self.mid(self.emb(ids))))


def test_tied_weights_stay_tied():
    model, ids = Tied().eval(), torch.randint(0, 10, (2, 4))
    g = build_graph(model, ids)
    # the head reads mid's outputs through the shared matrix, whose columns are also the embedding's
    # features (mid's inputs): so mid's inputs and outputs are one set of channels
    assert _groups_of(g, "mid.weight", [1]) == {int(g.group_ids(g.param_elems["mid.weight"][1])[1])}
    out = apply_removal(g, _groups_of(g, "mid.weight", [1, 2]), model)
    assert out.head.weight is out.emb.weight and out.emb.weight.shape == (10, 4)
    assert out.mid.weight.shape == (4, 4) and out.emb.embedding_dim == 4 and out.head.in_features == 4
    assert out(ids).shape == (2, 4, 10)


def test_registry_extends_and_rejects_duplicates():
    class Custom(nn.Module):
        pass

    assert get_surgery(Custom()) is None
    register_surgery(Custom)(lambda m: None)
    assert get_surgery(Custom()) is not None
    with pytest.raises(ValueError, match="already registered"):
        register_surgery(Custom)(lambda m: None)

    class MyConv(nn.Conv2d):  # subclasses use their parent's surgery
        pass

    assert get_surgery(MyConv(2, 2, 1)) is get_surgery(nn.Conv2d(2, 2, 1))
