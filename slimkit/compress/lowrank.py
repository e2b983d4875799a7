"""Data-free low-rank decomposition (DLA): per layer, pick (method, rank) by one knob.

Candidates per layer:

- ``svd`` (linear): ``W ~ U_r S_r V_r^T`` -> Linear(in, r, no bias) + Linear(r, out); MACs mn -> r(m+n).
- ``channel`` (conv kxk): W as [C_out, C_in*k*k] -> kxk conv with r filters + 1x1 conv.
- ``spatial`` (conv kxk, Jaderberg): W as [C_in*kh, kw*C_out] -> (kh x 1) conv with r filters + (1 x kw) conv.

**How accuracy loss is estimated without data.** For each candidate the error is the relative
Frobenius error of the weight reconstruction, ``e = sqrt(sum of discarded s_i^2 / sum of all s_i^2)``
(the discarded singular-value energy). It equals the layer's relative output error for white
(isotropic, uncorrelated) inputs. Each layer independently maximises
``tradeoff * (MACs saved / layer MACs) - e``; ``tradeoff=0`` changes nothing, larger values trade more
error for fewer MACs (the error is monotone in ``tradeoff``). **Calibration data refines it**: with
``calibrate=True`` and ``context.data`` (or the example inputs), ``e`` becomes the measured relative
output error ``||f_r(x) - f(x)|| / ||f(x)||`` of the layer on its recorded real inputs.

**The default is a budget, not the knob.** With no arguments, ranks are chosen so that the SUM of the
estimated per-layer relative errors stays within ``budget`` (0.03): the knob is bisected to the largest
value that respects it. A sum is the worst case (every layer's error adds up in the same direction), so
the default stays conservative on networks whose layers amplify errors; the sum grows with depth, so deep
networks get proportionally smaller per-layer errors. With few-shot data (``compress(..., data=...)``) the
per-layer errors are measured on the layers' real inputs instead of estimated (``calibrate`` defaults
to "auto": on when data is present). Give ``tradeoff=`` to use the knob directly.

Alternatives to the knob: ``energy=0.99`` keeps the smallest rank holding 99% of the singular-value
energy per layer (if that saves MACs); ``ranks={"layer.name": r}`` (Python API) fixes ranks.
Grouped convs, dilated spatial splits and layers where no candidate saves MACs are left alone.
"""
import copy
from dataclasses import dataclass, field
from typing import Optional, Union

import torch
from torch import nn
from tqdm.auto import tqdm

from slimkit.compress._hooks import record_layer_io
from slimkit.compress.base import CompressContext, PassConfig, register_pass
from slimkit.model_io import Example

METHODS = ("svd", "channel", "spatial")


@dataclass
class LowRankConfig(PassConfig):
    """``budget``: the default rule, total estimated relative error over all layers; ``tradeoff``: the knob
    (>= 0) instead; ``energy``: keep-energy rule instead; ``ranks``: fixed ranks; ``methods``: comma-separated
    subset of svd,channel,spatial; ``calibrate``: measure errors on data (auto: when data is present)."""

    name = "lowrank"
    lossless = False
    tradeoff: Optional[float] = None
    budget: float = 0.03
    energy: Optional[float] = None
    ranks: Optional[dict] = None
    methods: str = "svd,channel,spatial"
    calibrate: Union[bool, str] = "auto"
    calib_batches: int = 2
    rank_steps: int = 16

    def __post_init__(self):
        if self.tradeoff is not None and self.tradeoff < 0:
            raise ValueError(f"lowrank: tradeoff must be >= 0, got {self.tradeoff}")
        if self.budget < 0:
            raise ValueError(f"lowrank: budget must be >= 0, got {self.budget}")
        if self.calibrate not in (True, False, "auto"):
            raise ValueError(f"lowrank: calibrate must be true, false or auto, got {self.calibrate!r}")
        if self.energy is not None and not 0 < self.energy <= 1:
            raise ValueError(f"lowrank: energy must be in (0, 1], got {self.energy}")
        bad = [m for m in self.methods.split(",") if m not in METHODS]
        if bad:
            raise ValueError(f"lowrank: unknown methods {bad}; expected a comma list of {', '.join(METHODS)}")


@dataclass
class Candidate:
    layer: str
    method: str
    rank: int
    macs_before: int
    macs_after: int
    error: float  # estimated relative output error (see module docstring)

    @property
    def saving(self):
        return 1 - self.macs_after / self.macs_before


@dataclass
class LayerInfo:
    module: nn.Module
    in_shape: tuple
    out_shape: tuple
    singular: dict = field(default_factory=dict)  # method -> (U, S, Vh)


def _matrix(mod, method):
    w = mod.weight.detach().double()
    if method == "svd":
        return w
    if method == "channel":
        return w.flatten(1)
    o, i, kh, kw = w.shape  # spatial: M[(i, h), (w, o)] = W[o, i, h, w]
    return w.permute(1, 2, 3, 0).reshape(i * kh, kw * o)


def layer_macs(info, method=None, rank=None):
    """Exact MACs of the original layer (method None) or of its decomposition, for one forward."""
    mod, out = info.module, info.out_shape
    n = out[0]
    if isinstance(mod, nn.Linear):
        rows = n * (int(torch.tensor(out[1:-1]).prod()) if len(out) > 2 else 1)
        if method is None:
            return rows * mod.in_features * mod.out_features
        return rows * rank * (mod.in_features + mod.out_features)
    o, i, kh, kw = mod.weight.shape
    hw = out[2] * out[3]
    if method is None:
        return n * hw * o * i * kh * kw
    if method == "channel":
        return n * hw * rank * (i * kh * kw + o)
    w_mid = info.in_shape[3]  # the (kh x 1) conv keeps the full input width
    return n * out[2] * w_mid * rank * i * kh + n * hw * o * rank * kw


def _is_conv1d_hf(mod):
    """Hugging Face's Conv1D (GPT-2): a linear layer with its weight stored [in, out]."""
    return type(mod).__name__ == "Conv1D" and hasattr(mod, "nf") and getattr(mod, "weight", None) is not None


def _as_linear(mod):
    """The nn.Linear computing what a HF Conv1D computes (decomposed like any linear layer)."""
    lin = nn.Linear(mod.weight.shape[0], mod.weight.shape[1], bias=mod.bias is not None)
    lin.weight.data = mod.weight.detach().T.contiguous()
    if mod.bias is not None:
        lin.bias.data = mod.bias.detach().clone()
    return lin


def _methods_for(mod, allowed):
    if isinstance(mod, nn.Linear) or _is_conv1d_hf(mod):
        return [m for m in ("svd",) if m in allowed]
    if isinstance(mod, nn.Conv2d) and mod.groups == 1 and mod.padding_mode == "zeros" \
            and not isinstance(mod.padding, str):
        out = [m for m in ("channel",) if m in allowed]
        kh, kw = mod.kernel_size
        if "spatial" in allowed and kh > 1 and kw > 1 and mod.dilation == (1, 1):
            out.append("spatial")
        return out
    return []


@torch.no_grad()
def analyze(model, example_inputs, methods=METHODS):
    """Record layer shapes on one forward and the SVD of each candidate matrix."""
    example = Example.of(example_inputs)
    infos, hooks = {}, []
    for name, mod in model.named_modules():
        if _methods_for(mod, methods):
            def hook(m, inp, out, name=name):
                infos[name] = LayerInfo(_as_linear(m) if _is_conv1d_hf(m) else m, tuple(inp[0].shape), tuple(out.shape))
            hooks.append(mod.register_forward_hook(hook))
    try:
        example(model)
    finally:
        for h in hooks:
            h.remove()
    for info in infos.values():
        for method in _methods_for(info.module, methods):
            info.singular[method] = torch.linalg.svd(_matrix(info.module, method), full_matrices=False)
    return infos


def build(mod, method, rank, svd):
    """The decomposed replacement of ``mod`` (an nn.Sequential of two layers) at ``rank``."""
    u, s, vh = svd
    root = s[:rank].sqrt()
    a, b = (u[:, :rank] * root), (root[:, None] * vh[:rank])  # M ~ a @ b
    dt = mod.weight.dtype
    if method == "svd":
        first = nn.Linear(mod.in_features, rank, bias=False)
        second = nn.Linear(rank, mod.out_features, bias=mod.bias is not None)
        first.weight.data = b.to(dt)
        second.weight.data = a.to(dt)
    elif method == "channel":
        o, i, kh, kw = mod.weight.shape
        first = nn.Conv2d(i, rank, (kh, kw), mod.stride, mod.padding, mod.dilation, bias=False)
        second = nn.Conv2d(rank, o, 1, bias=mod.bias is not None)
        first.weight.data = b.reshape(rank, i, kh, kw).to(dt)
        second.weight.data = a.reshape(o, rank, 1, 1).to(dt)
    else:
        o, i, kh, kw = mod.weight.shape
        first = nn.Conv2d(i, rank, (kh, 1), (mod.stride[0], 1), (mod.padding[0], 0), bias=False)
        second = nn.Conv2d(rank, o, (1, kw), (1, mod.stride[1]), (0, mod.padding[1]), bias=mod.bias is not None)
        first.weight.data = a.reshape(i, kh, rank).permute(2, 0, 1).unsqueeze(-1).contiguous().to(dt)
        second.weight.data = b.reshape(rank, kw, o).permute(2, 0, 1).unsqueeze(2).contiguous().to(dt)
    if mod.bias is not None:
        second.bias.data = mod.bias.detach().clone()
    return nn.Sequential(first, second).to(mod.weight.device)


def weight_error(s, rank):
    """Relative Frobenius error of the rank-``rank`` truncation: discarded singular-value energy."""
    e = s.double().pow(2)
    return float((e[rank:].sum() / e.sum().clamp_min(1e-30)).sqrt())


def candidates(infos, steps=16, calib=None, progress=False):
    """All (method, rank) candidates that save MACs, with their estimated error."""
    out = {}
    for name, info in tqdm(infos.items(), desc="lowrank: candidates", disable=not progress, leave=False):
        base = layer_macs(info)
        rows = []
        for method, (u, s, vh) in info.singular.items():
            full = len(s)
            for rank in sorted({max(1, round(full * k / steps)) for k in range(1, steps + 1)}):
                macs = layer_macs(info, method, rank)
                if macs >= base:
                    continue
                err = weight_error(s, rank) if calib is None else calib(name, build(info.module, method, rank,
                                                                                   (u, s, vh)))
                rows.append(Candidate(name, method, rank, base, macs, err))
        out[name] = rows
    return out


def choose(cands, tradeoff):
    """Per layer, the candidate maximising ``tradeoff * saving - error`` (None = keep the layer)."""
    picks = {}
    for name, rows in cands.items():
        best, best_val = None, 0.0
        for c in rows:
            val = tradeoff * c.saving - c.error
            if val > best_val:
                best, best_val = c, val
        if best is not None:
            picks[name] = best
    return picks


def choose_within(cands, budget, iters=40):
    """The picks of the largest knob value whose summed per-layer error is <= ``budget`` (bisection: every
    layer's pick, hence the sum, grows monotonically with the knob)."""
    total = lambda picks: sum(c.error for c in picks.values())  # noqa: E731
    lo, hi = 0.0, 1.0
    while total(choose(cands, hi)) <= budget and hi < 1e6:
        lo, hi = hi, hi * 2
    for _ in range(iters):
        mid = (lo + hi) / 2
        if total(choose(cands, mid)) <= budget:
            lo = mid
        else:
            hi = mid
    return choose(cands, lo)


def replace_layers(model, infos, picks):
    """A copy of ``model`` with the picked layers replaced by their decompositions."""
    model = copy.deepcopy(model)
    for name, c in picks.items():
        info = infos[name]
        new = build(info.module, c.method, c.rank, info.singular[c.method])
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, attr, new)
    return model


def _calibrator(model, infos, batches):
    """Relative output error of a replacement layer on the layer's recorded real inputs."""
    recorded, _ = record_layer_io(model, list(infos), batches)

    @torch.no_grad()
    def calib(name, new):
        x = torch.cat(recorded[name])
        ref = infos[name].module(x)
        return float((new(x) - ref).norm() / ref.norm().clamp_min(1e-30))
    return calib


@register_pass(LowRankConfig)
def lowrank(model, example_inputs, config=None, context=None):
    """Return a copy of ``model`` with layers replaced by low-rank pairs chosen per layer (error budget or knob)."""
    from slimkit.compress.prune import calibration_examples
    config = config or LowRankConfig()
    context = context or CompressContext()
    model_copy = copy.deepcopy(model).eval()
    infos = analyze(model_copy, example_inputs, config.methods.split(","))
    if config.ranks is not None:
        unknown = sorted(set(config.ranks) - set(infos))
        if unknown:
            raise ValueError(f"lowrank: ranks names unknown layers {unknown}; decomposable: {sorted(infos)}")
        picks = {}
        for name, rank in config.ranks.items():
            method = next(iter(infos[name].singular))
            info = infos[name]
            picks[name] = Candidate(name, method, rank, layer_macs(info), layer_macs(info, method, rank),
                                    weight_error(info.singular[method][1], rank))
    elif config.energy is not None:
        picks = {}
        for name, info in infos.items():
            best = None
            for method, (_, s, _) in info.singular.items():
                cum = s.double().pow(2).cumsum(0) / s.double().pow(2).sum()
                rank = int((cum < config.energy - 1e-12).sum()) + 1
                c = Candidate(name, method, rank, layer_macs(info), layer_macs(info, method, rank),
                              weight_error(s, rank))
                if c.macs_after < c.macs_before and (best is None or c.macs_after < best.macs_after):
                    best = c
            if best is not None:
                picks[name] = best
    else:
        calib = None
        use_data = config.calibrate is True or (config.calibrate == "auto" and context.data is not None)
        if use_data:
            calib = _calibrator(model_copy, infos, calibration_examples(example_inputs, context,
                                                                       config.calib_batches))
        cands = candidates(infos, config.rank_steps, calib, context.progress)
        picks = choose(cands, config.tradeoff) if config.tradeoff is not None else choose_within(cands, config.budget)
    context.extras["lowrank"] = picks
    return replace_layers(model_copy, infos, picks)
