"""Every registered model: forward + backward, output shape; exact MACs/params against hand counts."""
import pytest
import torch

from slimkit.errors import ShapeError
from slimkit.models import create_model, get_model_info, list_models, register_model
from slimkit.models.seesaw import SeesawBlock, UnevenGroupConv1x1
from slimkit.profile.counting import count_macs

# Small inputs and widths keep the whole-registry test fast; the big EfficientNets are covered by counts below.
FAST_KWARGS = {"rnn_classifier": {"hidden_size": 16}, "rnn_regressor": {"hidden_size": 16}}
SMALL_RES = {"efficientnet": 64, "mobilenet_v2_imagenet": 64, "seesaw_net_imagenet": 64}
HEAVY = {"efficientnet_b2", "efficientnet_b3", "efficientnet_b4", "efficientnet_b5", "efficientnet_b6",
         "efficientnet_b7"}


def _example(name, batch=2):
    info = get_model_info(name)
    size = list(info.input_size)
    for prefix, res in SMALL_RES.items():
        if name.startswith(prefix):
            size[-2:] = [res, res]
    if name.startswith("rnn_"):
        size[0] = 20  # 20 steps instead of 784 (100)
    return torch.randn(batch, *size)


def params(m):
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("name", [n for n in list_models() if n not in HEAVY])
def test_forward_backward(name):
    torch.manual_seed(0)
    model = create_model(name, **FAST_KWARGS.get(name, {}))
    x = _example(name)
    out = model(x)
    assert out.shape == (2, model.num_classes)
    out.float().pow(2).mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", sorted(HEAVY))
def test_heavy_efficientnets_build_with_published_sizes(name):
    # Published parameter counts (Tan & Le 2019, Table 2), within 3%.
    published = {"efficientnet_b2": 9.2e6, "efficientnet_b3": 12e6, "efficientnet_b4": 19e6,
                 "efficientnet_b5": 30e6, "efficientnet_b6": 43e6, "efficientnet_b7": 66e6}
    model = create_model(name)
    assert abs(params(model) / published[name] - 1) < 0.03


def test_lenet5_exact_counts():
    m = create_model("lenet5")
    # conv1 28x28 out, 6 filters of 1x5x5: 28*28*6*25 = 117,600
    # conv2 10x10 out, 16 filters of 6x5x5: 10*10*16*150 = 240,000
    # fc1 400*120 = 48,000; fc2 120*84 = 10,080; fc3 84*10 = 840
    assert count_macs(m, torch.randn(1, 1, 28, 28)) == 117_600 + 240_000 + 48_000 + 10_080 + 840
    # params: conv1 6*25+6 = 156, conv2 16*150+16 = 2,416, fc1 48,120, fc2 10,164, fc3 850
    assert params(m) == 156 + 2_416 + 48_120 + 10_164 + 850 == 61_706


def test_resnet20_exact_counts():
    m = create_model("resnet20")
    # conv1: 32*32 * 16 * 27 = 442,368
    # stage 1: 6 convs 32*32 * 16 * 144 = 2,359,296 each
    # stage 2: first conv 16*16 * 32 * 144 = 1,179,648; 5 convs 16*16 * 32 * 288 = 2,359,296 each
    # stage 3: first conv 8*8 * 64 * 288 = 1,179,648; 5 convs 8*8 * 64 * 576 = 2,359,296 each
    # linear 64 * 10 = 640
    expected = 442_368 + 6 * 2_359_296 + 2 * (1_179_648 + 5 * 2_359_296) + 640
    assert expected == 40_551_040
    assert count_macs(m, torch.randn(1, 3, 32, 32)) == expected
    # conv weights 432 + 6*2304 + (4608 + 5*9216) + (18432 + 5*36864) = 267,696; BN 2*(16*7 + 32*6 + 64*6) = 1,376
    # linear 650
    assert params(m) == 267_696 + 1_376 + 650 == 269_722


def test_resnet_depths():
    # Each extra block of each stage adds 2 convs: depth = 6n + 2.
    for depth in (32, 44, 56, 110):
        m = create_model(f"resnet{depth}")
        n_convs = sum(isinstance(mod, torch.nn.Conv2d) for mod in m.modules())
        assert n_convs == depth - 1


def test_seesaw_block_exact_macs():
    block = SeesawBlock(16, 16, stride=1, expand=6).eval()
    # expand 16 -> 96, uneven: 8*8 * (4*24 + 12*72) = 61,440; depthwise 3x3 on 96 ch: 8*8 * 96 * 9 = 55,296
    # project 96 -> 16, uneven: 8*8 * (24*4 + 72*12) = 61,440
    assert count_macs(block, torch.randn(1, 16, 8, 8)) == 61_440 + 55_296 + 61_440
    # An uneven 1x1 costs 1/16 + 9/16 = 0.625 of a dense one.
    conv = UnevenGroupConv1x1(64, 64)
    assert count_macs(conv, torch.randn(1, 64, 1, 1)) == 0.625 * 64 * 64


def test_seesaw_patterns_differ_only_in_flow():
    torch.manual_seed(0)
    a = SeesawBlock(16, 16, 1, 6, "shuffle")
    b = SeesawBlock(16, 16, 1, 6, "seesaw")
    assert isinstance(b.shuffle, torch.nn.Identity) and not isinstance(a.shuffle, torch.nn.Identity)
    assert b.project.splits == (72, 24) and a.project.splits == (24, 72)
    # Without a permutation, the mirrored 1x1's large (3/4) group reads hidden channels 0..71, which straddle both
    # groups of the first 1x1 (0..23 from inputs 0..3, 24..95 from inputs 4..15): that is the cross-group flow.
    b.eval()
    x = torch.randn(1, 16, 4, 4, requires_grad=True)
    (b(x) - x)[0, 0].sum().backward()  # output channel 0 (residual removed): in the mirrored conv's large group
    touched = x.grad.abs().sum((0, 2, 3)) > 0
    assert touched[:4].any() and touched[4:].any()


def test_published_sizes():
    # MobileNetV2 ImageNet: 3.5M params, 300M MACs; Seesaw full/half: ~361M / ~209M MACs (methods.md, section 4)
    # EfficientNet-B0: 5.3M params, 0.39B MACs.
    cases = {"mobilenet_v2_imagenet": (3.50e6, 300.8e6), "efficientnet_b0": (5.29e6, 385.8e6)}
    for name, (p, macs) in cases.items():
        m = create_model(name).eval()
        assert abs(params(m) / p - 1) < 0.01
        assert abs(count_macs(m, torch.randn(1, *get_model_info(name).input_size)) / macs - 1) < 0.01
    for depth, macs in (("full", 361e6), ("half", 209e6)):
        m = create_model("seesaw_net_imagenet", depth=depth).eval()
        assert abs(count_macs(m, torch.randn(1, 3, 224, 224)) / macs - 1) < 0.01


def test_wrong_input_shape_names_expected_shape():
    with pytest.raises(ShapeError, match=r"resnet20 expects input \[N, 3, H, W\], got \[1, 1, 28, 28\]"):
        create_model("resnet20")(torch.randn(1, 1, 28, 28))
    with pytest.raises(ShapeError, match=r"\[N, T, 1\]"):
        create_model("rnn_classifier", hidden_size=4)(torch.randn(2, 5, 3))


def test_unknown_name_lists_known_models():
    with pytest.raises(ValueError, match="unknown model 'resnet21'.*resnet20"):
        create_model("resnet21")


def test_duplicate_registration_raises():
    with pytest.raises(ValueError, match="already registered"):
        register_model("resnet20", input_size=(3, 32, 32))(lambda: None)
