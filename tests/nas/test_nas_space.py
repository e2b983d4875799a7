"""Search spaces: specs round-trip, every sampled spec builds standalone and trains one step, and the
supernet computes exactly what the standalone net computes once its shared weights are copied."""
import json
import random

import pytest
import torch

from slimkit.models import create_model
from slimkit.nas import build_arch, get_space, list_spaces, parse_spec, recalibrate_bn

# Tiny versions of every registered space (the published NB201 skeleton is checked by counts below).
TINY = {"cell": {}, "nb201": {"C": 4, "N": 1}, "seesaw_tiny": {}}


def _samples(space, n, seed=0):
    rng = random.Random(seed)
    return [space.sample(rng) for _ in range(n)]


def test_registered_spaces():
    assert {"cell", "nb201", "seesaw", "seesaw_tiny"} <= set(list_spaces())
    assert get_space("nb201").size == 5 ** 6 == 15_625
    assert get_space("cell").size == 125
    with pytest.raises(ValueError, match="known spaces"):
        get_space("nope")


@pytest.mark.parametrize("name", ["cell", "nb201", "seesaw", "seesaw_tiny"])
def test_spec_round_trip(name, tmp_path):
    space = get_space(name, **TINY.get(name, {}))
    for arch in _samples(space, 10):
        text = arch.encode()
        assert parse_spec(text) == arch
        assert parse_spec(arch.to_dict()) == arch
        assert parse_spec({"space": arch.space, "options": dict(arch.options),
                           "choices": arch.to_dict()["choices"]}) == arch
        path = tmp_path / "spec.json"
        path.write_text(json.dumps(arch.to_dict()))
        assert parse_spec(str(path)) == arch


def test_nb201_string_matches_nats_bench_format():
    body = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_1x1~2|"
    arch = parse_spec("nb201:" + body)
    assert arch.values == ("nor_conv_3x3", "nor_conv_3x3", "nor_conv_3x3", "skip_connect", "nor_conv_3x3",
                           "nor_conv_1x1")
    assert arch.encode() == "nb201:" + body
    assert parse_spec("nb201:" + body + "?N=2").options == (("N", 2),)


def test_published_nb201_best_cell_counts():
    # C=16, N=5 skeleton, best CIFAR-10 cell (4 conv3x3 + 1 conv1x1 + skip). Params per cell at C
    # channels: 4*9C^2 + C^2 + 5 affine BNs * 2C = 37C^2 + 10C -> 5 cells each at C=16/32/64:
    # 48,160 + 191,040 + 760,960; stem 432 + 32; reductions 14,464 + 57,600; last BN 128; linear 650.
    # MACs: every conv3x3 of a cell costs 2,359,296 at all three stages (C^2 and resolution trade off),
    # a conv1x1 262,144 -> 15 cells * 9,699,328; stem 442,368; reductions 2 * 3,670,016; linear 640.
    from slimkit.profile.counting import count_macs

    net = create_model("nas")
    assert sum(p.numel() for p in net.parameters()) == 48_160 + 191_040 + 760_960 + 464 + 14_464 + 57_600 + 128 + 650
    assert count_macs(net, torch.randn(1, 3, 32, 32)) == 15 * 9_699_328 + 442_368 + 2 * 3_670_016 + 640


def test_bad_specs_name_the_fix():
    with pytest.raises(ValueError, match="SPACE:BODY"):
        parse_spec("nonsense")
    with pytest.raises(ValueError, match="OP one of"):
        parse_spec("cell:|conv~0|+|none~0|none~1|")
    with pytest.raises(ValueError, match="not an option"):
        parse_spec("seesaw_tiny:w0.3/1x1k3dense/1x2k3dense/1x2k3dense")
    with pytest.raises(ValueError, match="DEPTHxEXPAND"):
        parse_spec("seesaw_tiny:w1/1x1k3dense")


@pytest.mark.parametrize("name", sorted(TINY))
def test_sampled_specs_build_and_train_standalone(name):
    space = get_space(name, **TINY[name])
    torch.manual_seed(0)
    for arch in _samples(space, 6):
        net = create_model("nas", spec=arch.encode(), num_classes=7)
        out = net(torch.randn(2, 3, 16, 16))
        assert out.shape == (2, 7)
        out.pow(2).mean().backward()
        assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)


@pytest.mark.parametrize("name", sorted(TINY))
def test_supernet_equals_standalone_with_copied_weights(name):
    space = get_space(name, **TINY[name])
    torch.manual_seed(0)
    supernet = space.supernet(num_classes=10)
    calib = [torch.randn(16, 3, 16, 16) for _ in range(2)]
    x = torch.randn(4, 3, 16, 16)  # the nets pool globally: 16x16 inputs keep the test fast
    for arch in _samples(space, 8, seed=1):
        supernet.set_arch(arch)
        # the path also runs forward/backward inside the supernet
        supernet.train()
        supernet(x).pow(2).mean().backward()
        recalibrate_bn(supernet, calib)
        net = supernet.export(arch).eval()
        assert type(net) is type(build_arch(arch))
        torch.testing.assert_close(net(x), supernet(x), rtol=1e-4, atol=1e-5)
        # training mode (batch statistics) too, with dropout off
        for m in net.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
        net.train(), supernet.train()
        torch.testing.assert_close(net(x), supernet(x), rtol=1e-4, atol=1e-5)


def test_mobile_space_contains_the_zoo_mobilenet_v2():
    spec = "seesaw:w1/1x1k3dense/2x6k3dense/3x6k3dense/4x6k3dense/3x6k3dense/3x6k3dense/1x6k3dense"
    ours, zoo = build_arch(spec), create_model("mobilenet_v2")
    assert [p.shape for p in ours.parameters()] == [p.shape for p in zoo.parameters()]


def test_full_mobile_space_supernet_equals_standalone():
    # The real seesaw space (widths 0.5-1, expansions 3/6, kernels 3/5, all four patterns, MobileNetV2 depth):
    # a few samples, standalone forward/backward and supernet == exported standalone net in eval mode.
    space = get_space("seesaw")
    torch.manual_seed(0)
    supernet = space.supernet(num_classes=10)
    calib = [torch.randn(8, 3, 16, 16)]
    x = torch.randn(2, 3, 16, 16)
    for arch in _samples(space, 3, seed=2):
        standalone = create_model("nas", spec=arch.encode())
        standalone(x).pow(2).mean().backward()
        supernet.set_arch(arch)
        recalibrate_bn(supernet, calib)
        net = supernet.export(arch).eval()
        assert [p.shape for p in net.parameters()] == [p.shape for p in standalone.parameters()]
        torch.testing.assert_close(net(x), supernet(x), rtol=1e-4, atol=1e-5)
