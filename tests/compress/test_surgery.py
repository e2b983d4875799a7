import pytest
import torch
from torch import nn

from _toys_a import toy_net, one_thread  # noqa: F401 (autouse fixture)
from slimkit.compress.graph import build_graph
from slimkit.compress.surgery import apply_removal, get_surgery, register_surgery


def test_conv_linear_bn_depthwise_slicing():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3)
    w = conv.weight.detach().clone()
    get_surgery(conv)(conv, torch.tensor([0, 2]), torch.tensor([1, 3, 5]))
    assert (conv.in_channels, conv.out_channels) == (2, 3) and conv.weight.shape == (3, 2, 3, 3)
    assert torch.equal(conv.weight, w[[1, 3, 5]][:, [0, 2]]) and conv.bias.shape == (3,)
    dw = nn.Conv2d(5, 5, 3, groups=5)
    get_surgery(dw)(dw, torch.tensor([0, 4]), None)
    assert dw.groups == dw.in_channels == dw.out_channels == 2 and dw.weight.shape == (2, 1, 3, 3)
    lin = nn.Linear(6, 4)
    get_surgery(lin)(lin, torch.tensor([0, 1, 5]), None)
    assert lin.in_features == 3 and lin.weight.shape == (4, 3)
    bn = nn.BatchNorm2d(5)
    get_surgery(bn)(bn, torch.tensor([1, 2]), None)
    assert bn.num_features == 2 and bn.running_var.shape == (2,) and bn.weight.shape == (2,)


def test_registry_extends_and_rejects_duplicates():
    class Custom(nn.Module):
        pass

    with pytest.raises(KeyError, match="Custom"):
        get_surgery(Custom())
    register_surgery(Custom)(lambda m, i, o: None)
    assert get_surgery(Custom()) is not None
    with pytest.raises(ValueError, match="already registered"):
        register_surgery(Custom)(lambda m, i, o: None)

    class MyConv(nn.Conv2d):  # subclasses use their parent's surgery
        pass

    assert get_surgery(MyConv(2, 2, 1)) is get_surgery(nn.Conv2d(2, 2, 1))


def test_apply_removal_nothing_is_identity_and_pad_shrinks():
    model, x = toy_net(), torch.randn(2, 3, 8, 8)
    g = build_graph(model, x)
    same = apply_removal(g, [])
    torch.testing.assert_close(same(x), model(x), rtol=0, atol=0)
    pad_only = [grp.id for grp in g.groups if grp.members == [("block2_conv2", 0)]]
    out = apply_removal(g, pad_only)
    node = next(n for n in out.graph.nodes if n.name == "pad")
    assert node.args[1][4:] == (1, 2) and out.block2.conv2.out_channels == 7
    assert out(x).shape == (2, 5)
    with pytest.raises(ValueError, match="every output channel"):
        apply_removal(g, [grp.id for grp in g.groups if grp.members[0][0] == "side"])
