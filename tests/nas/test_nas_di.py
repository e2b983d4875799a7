"""The disturbance-immune update: a later architecture's update is orthogonal to the inputs an earlier
one stored, so the earlier one's outputs and loss on those inputs do not move; plain weight sharing
goes through the same code path; the projector state checkpoints and resumes exactly."""
import torch
import torch.nn.functional as F

from slimkit.nas import DIConfig, DisturbanceImmune, get_space
from slimkit.nas.layers import SharedConv


def _setup(space_name="cell", seed=0, momentum=0.9, weight_decay=1e-3, **di):
    space = get_space(space_name, **({"C": 4, "N": 1} if space_name == "cell" else {}))
    torch.manual_seed(seed)
    supernet = space.supernet().double()
    opt = torch.optim.SGD(supernet.parameters(), lr=0.5, momentum=momentum, weight_decay=weight_decay)
    cfg = dict(alpha=1e-10, samples=10**6, decay=0.0, dtype="float64", scope="all")
    cfg.update(di)
    return space, supernet, DisturbanceImmune(opt, supernet, DIConfig(**cfg))


def _step(supernet, di, arch, x, y):
    supernet.set_arch(arch).train()
    di.zero_grad()
    loss = F.cross_entropy(supernet(x), y)
    loss.backward()
    di.step()
    with torch.no_grad(), di.recording_inputs():  # record the inputs of the architecture as trained
        supernet(x)
    di.end_architecture()
    return loss.item()


def _loss(supernet, arch, x, y):
    supernet.set_arch(arch).train()  # batch statistics, as in training
    with torch.no_grad():
        return F.cross_entropy(supernet(x), y).item()


A = "cell:|nor_conv_3x3~0|+|nor_conv_1x1~0|nor_conv_3x3~1|?C=4"
B = "cell:|nor_conv_3x3~0|+|nor_conv_1x1~0|skip_connect~1|?C=4"  # shares the stem, 2 convs, reductions, head


def _record_inputs(supernet, arch, x):
    """Every input vector each conv/linear layer sees in ``arch``'s forward, by F.unfold (not DI's code)."""
    seen = {}

    def hook(name):
        def f(m, args, out):
            inp = args[0].detach()
            if isinstance(m, torch.nn.Conv2d):
                cols = F.unfold(inp, m.kernel_size, padding=m.padding, stride=m.stride)
                seen[name] = cols.permute(0, 2, 1).reshape(-1, cols.shape[1])
            elif isinstance(m, torch.nn.Linear):
                seen[name] = torch.cat([inp, torch.ones(len(inp), 1, dtype=inp.dtype)], 1)
        return f

    hs = [m.register_forward_hook(hook(n)) for n, m in supernet.named_modules()
          if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    supernet.set_arch(arch).train()
    with torch.no_grad():
        supernet(x)
    for h in hs:
        h.remove()
    return seen


def _flat_update(m, before):
    d = (m.weight.detach() - before[0]).flatten(1)
    if getattr(m, "bias", None) is not None:
        d = torch.cat([d, (m.bias.detach() - before[1])[:, None]], 1)
    return d


def test_projected_update_is_orthogonal_to_the_stored_inputs():
    space, supernet, di = _setup(momentum=0.0, weight_decay=0.0)  # unprojected update = -lr * grad
    g = torch.Generator().manual_seed(0)
    xa, ya = torch.randn(1, 3, 8, 8, generator=g, dtype=torch.float64), torch.tensor([3])
    xb, yb = torch.randn(1, 3, 8, 8, generator=g, dtype=torch.float64), torch.tensor([5])
    _step(supernet, di, space.parse(A), xa, ya)
    stored = _record_inputs(supernet, A, xa)  # A's inputs as trained, by F.unfold (not DI's code)
    layers = dict(supernet.named_modules())
    before = {n: (layers[n].weight.detach().clone(),
                  None if layers[n].bias is None else layers[n].bias.detach().clone()) for n in stored}
    _step(supernet, di, space.parse(B), xb, yb)
    checked = 0
    for name, x in stored.items():
        m = layers[name]
        if m.weight.grad is None:
            continue  # not on B's path
        raw = 0.5 * m.weight.grad.flatten(1)  # what plain weight sharing would apply
        if m.bias is not None:
            raw = torch.cat([raw, 0.5 * m.bias.grad[:, None]], 1)
        delta = _flat_update(m, before[name])
        leak = (delta @ x.T).norm() / (raw.norm() * x.norm())
        assert leak < 1e-7, f"{name}: update not orthogonal to A's inputs (relative {leak:.2e})"
        assert (raw @ x.T).norm() / (raw.norm() * x.norm()) > 1e-3  # and plain WS would disturb A
        # where A's inputs span less than the layer's input space, the update is not simply zero
        checked += x.shape[0] < x.shape[1] and delta.norm() > 1e-3 * raw.norm()
    assert checked >= 6  # e.g. stage-2/3 cell convs, reduction convs and the classifier


def test_earlier_architecture_loss_unchanged_plain_ws_moves_it():
    g = torch.Generator().manual_seed(1)
    xa, ya = torch.randn(1, 3, 8, 8, generator=g, dtype=torch.float64), torch.tensor([3])
    xb, yb = torch.randn(1, 3, 8, 8, generator=g, dtype=torch.float64), torch.tensor([5])
    drift = {}
    for enabled in (True, False):
        space, supernet, di = _setup(enabled=enabled)
        _step(supernet, di, space.parse(A), xa, ya)
        before = _loss(supernet, A, xa, ya)
        for _ in range(3):
            _step(supernet, di, space.parse(B), xb, yb)
        drift[enabled] = abs(_loss(supernet, A, xa, ya) - before)
    assert drift[True] < 1e-9 * max(1.0, drift[False])
    assert drift[False] > 1e-3


def test_disabled_is_exactly_the_wrapped_optimizer():
    space, s1, di = _setup(enabled=False)
    _, s2, _ = _setup()
    opt2 = torch.optim.SGD(s2.parameters(), lr=0.5, momentum=0.9, weight_decay=1e-3)
    x, y = torch.randn(2, 3, 8, 8, dtype=torch.float64), torch.tensor([1, 2])
    for arch in (A, B, A):
        _step(s1, di, space.parse(arch), x, y)
        s2.set_arch(arch).train()
        opt2.zero_grad(set_to_none=True)
        F.cross_entropy(s2(x), y).backward()
        opt2.step()
    assert di.projectors == {}
    for p1, p2 in zip(s1.parameters(), s2.parameters()):
        assert torch.equal(p1, p2)


def test_large_alpha_leaves_updates_almost_free_and_decay_forgets():
    space, supernet, di = _setup(alpha=1e6, decay=0.5)
    x, y = torch.randn(2, 3, 8, 8, dtype=torch.float64), torch.tensor([1, 2])
    _step(supernet, di, space.parse(A), x, y)
    q = {n: di.projectors[n].norm().item() for n in di.projectors}
    assert q and max(q.values()) < 1e-5  # P = I - Q close to I
    di.architectures += 3  # three architectures that did not use these layers
    for n in q:  # I - P shrinks by (1 - decay) once per architecture after A: 4 times
        assert abs(di._q(n).norm().item() - q[n] * 0.5 ** 4) < 1e-6 * q[n]


def test_projector_state_resumes_exactly():
    xs = [torch.randn(2, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(i)) for i in range(5)]
    ys = [torch.tensor([i % 10, (i + 3) % 10]) for i in range(5)]
    archs = [A, B, A, B, A]
    space, s1, di1 = _setup(alpha=1e-3, samples=16, decay=0.1)
    for a, x, y in zip(archs, xs, ys):
        _step(s1, di1, space.parse(a), x, y)
    _, s2, di2 = _setup(alpha=1e-3, samples=16, decay=0.1)
    for a, x, y in list(zip(archs, xs, ys))[:2]:
        _step(s2, di2, space.parse(a), x, y)
    state, model = di2.state_dict(), s2.state_dict()
    _, s3, di3 = _setup(seed=7, alpha=1e-3, samples=16, decay=0.1)  # fresh objects, other init
    s3.load_state_dict(model)
    di3.load_state_dict(state)
    for a, x, y in list(zip(archs, xs, ys))[2:]:
        _step(s3, di3, space.parse(a), x, y)
    for p1, p3 in zip(s1.parameters(), s3.parameters()):
        assert torch.equal(p1, p3)
    assert di1.projectors.keys() == di3.projectors.keys()
    for n in di1.projectors:
        assert torch.equal(di1._q(n), di3._q(n))


def test_sliced_mobile_supernet_update_orthogonal_for_every_group_pattern():
    # Grouped 1x1 convs are sub-blocks of one dense weight: an update orthogonal to the stored
    # group inputs (placed in the full layout) must leave the earlier slice's outputs unchanged.
    space, supernet, di = _setup("seesaw_tiny")
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    a = space.parse("seesaw_tiny:w0.5/1x1k3dense/1x2k3uneven/1x4k5seesaw")
    b = space.parse("seesaw_tiny:w1/1x1k3dense/1x4k5even/1x2k3dense")
    supernet.set_arch(a).eval()
    _step(supernet, di, a, x, torch.tensor([1]))
    before = _loss(supernet, a, x, torch.tensor([1]))
    _step(supernet, di, b, torch.randn(1, 3, 8, 8, dtype=torch.float64), torch.tensor([2]))
    assert abs(_loss(supernet, a, x, torch.tensor([1])) - before) < 1e-9
    assert any(isinstance(m, SharedConv) for m in di.layers.values())


def test_scope_ops_leaves_the_shared_skeleton_unprojected():
    space = get_space("nb201", C=4, N=1)
    supernet = space.supernet()
    di = DisturbanceImmune(torch.optim.SGD(supernet.parameters(), lr=0.1), supernet)  # default scope="ops"
    # 3 cells x 6 edges x (conv1x1 + conv3x3); the stem, 2 x 3 reduction convs and the classifier are excluded
    assert len(di.layers) == 3 * 6 * 2
    assert all(".edges." in n for n in di.layers)
    everything = DisturbanceImmune(torch.optim.SGD(supernet.parameters(), lr=0.1), supernet, scope="all")
    assert len(everything.layers) == 3 * 6 * 2 + 1 + 2 * 3 + 1


def test_unfold_patches_are_exactly_f_unfold_columns():
    from slimkit.nas.layers import unfold_patches

    torch.manual_seed(0)
    # (channels, kernel, stride, padding, dilation, groups, size): padding, strides, dilation, groups, 1x1, non-square
    for c, k, s, p, d, g, h in [(6, 3, 1, 1, 1, 1, 9), (6, 3, 2, 1, 1, 2, 9), (4, 5, 1, 2, 1, 4, 7),
                                (4, 3, 1, 2, 2, 1, 8), (3, 1, 1, 0, 1, 1, 5), (4, (3, 1), (2, 1), (1, 0), 1, 1, 6)]:
        x = torch.randn(3, c, h, h)
        rows = unfold_patches(x, k, s, p, d, g, n=10**6)  # n above the patch count: every patch, in order
        ref = F.unfold(x, k, dilation=d, padding=p, stride=s)  # [images, c * kh * kw, positions]
        ref = ref.view(3, g, ref.shape[1] // g, ref.shape[2]).permute(0, 1, 3, 2).reshape(-1, ref.shape[1] // g)
        assert torch.equal(rows, ref)
        sub = unfold_patches(x, k, s, p, d, g, n=5, generator=torch.Generator().manual_seed(1))
        assert sub.shape == (5, ref.shape[1]) and all((ref == r).all(1).any() for r in sub)


def test_sample_indices_is_a_subset_of_distinct_indices():
    from slimkit.nas.layers import sample_indices

    g = torch.Generator().manual_seed(0)
    for total, n in [(5, 64), (64, 64), (300, 64), (65536, 64)]:  # all, all, randperm path, draw path
        idx = sample_indices(total, n, g)
        assert len(idx) == min(total, n) and len(idx.unique()) == len(idx)
        assert idx.min() >= 0 and idx.max() < total
    hits = torch.zeros(1000)  # uniform: every index drawn about 64/1000 of the time over 2000 draws
    for _ in range(2000):
        hits[sample_indices(1000, 64, g)] += 1
    assert hits.sum() == 2000 * 64 and 64 < hits.min() and hits.max() < 200
