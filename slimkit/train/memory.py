"""Memory-bounded training (after AccUDNN, Guo et al. ICCD 2019; methods.md section 9).

* ``measure_activation_memory``: bytes of activations autograd saves for backward (CPU: counted through
  ``torch.autograd.graph.saved_tensors_hooks``, one count per storage; CUDA: ``torch.cuda.max_memory_allocated``
  above the level before the forward).
* ``apply_memory_budget``: splits every ``nn.Sequential`` into segments, measures each segment's saved bytes and
  forward time (the cost model), and wraps segments - best bytes-saved per second-of-recompute first - until the
  measured activation memory fits. A wrapped segment keeps only its input: on CPU it is recomputed in backward
  (activation checkpointing, ``torch.utils.checkpoint``); on CUDA a segment whose host round trip
  (2 x bytes / PCIe bandwidth) is cheaper than its recompute is offloaded to pinned host memory instead
  (``torch.autograd.graph.save_on_cpu``).
* ``tune_batch_size``: the largest batch under the budget and the throughput-optimal one, with the learning rate
  scaled linearly (Goyal et al. 2017).

The budget covers weights + gradients + activations (optimizer state is not counted).
"""
import contextlib
import copy
import math
import time
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from slimkit.errors import SlimkitError

PCIE_BYTES_PER_S = 12e9  # a PCIe 3 x16 link's practical rate; only used to choose offload vs recompute on CUDA


def _forward_loss(model, batch):
    out = model(batch)
    return out.float().pow(2).mean() if out.is_floating_point() else out.sum()


def measure_activation_memory(model, batch):
    """Bytes saved for backward by one forward of ``model`` on ``batch`` (runs forward + backward once)."""
    device = batch.device
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        loss = _forward_loss(model, batch)
        peak = torch.cuda.max_memory_allocated(device) - base
        loss.backward()
        model.zero_grad(set_to_none=True)
        return int(peak)
    seen = {}
    # Weights are saved by reference (often as a transposed view): they are not activations.
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = _forward_loss(model, batch)
    loss.backward()
    model.zero_grad(set_to_none=True)
    return int(sum(seen.values()))


class Checkpointed(nn.Module):
    """Runs ``segment`` without keeping its inner activations; they are recomputed during backward."""

    def __init__(self, segment):
        super().__init__()
        self.segment = segment

    def forward(self, x):
        if not torch.is_grad_enabled():
            return self.segment(x)
        calls = [0]

        def run(inp):  # the second call is the recompute in backward: it must not update BN statistics again
            calls[0] += 1
            if calls[0] == 1:
                return self.segment(inp)
            with _bn_stats_restored(self.segment):
                return self.segment(inp)

        return checkpoint(run, x, use_reentrant=False)


@contextlib.contextmanager
def _bn_stats_restored(module):
    """Restore BatchNorm running statistics on exit (also when checkpoint's early stop raises)."""
    saved = [(b, b.clone()) for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
             for b in (m.running_mean, m.running_var, m.num_batches_tracked) if b is not None]
    try:
        yield
    finally:
        with torch.no_grad():
            for buf, copy_ in saved:
                buf.copy_(copy_)


class Offloaded(nn.Module):
    """Runs ``segment`` with its saved activations moved to (pinned) host memory until backward."""

    def __init__(self, segment):
        super().__init__()
        self.segment = segment

    def forward(self, x):
        with torch.autograd.graph.save_on_cpu(pin_memory=x.is_cuda):
            return self.segment(x)


@dataclass
class SegmentCost:
    path: str  # "<sequential path>[start:stop]"
    saved_bytes: int
    forward_s: float
    action: str = "checkpoint"


@dataclass
class MemoryPlan:
    budget_bytes: int
    weight_bytes: int
    activation_bytes_before: int
    activation_bytes_after: int
    wrapped: list = field(default_factory=list)

    @property
    def fits(self):
        return 2 * self.weight_bytes + self.activation_bytes_after <= self.budget_bytes


def _weight_bytes(model):
    return sum(p.numel() * p.element_size() for p in model.parameters())


def _segments(model):
    """(parent Sequential, start, stop) chunks of about sqrt(n) children for every Sequential with >= 2 children."""
    out = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Sequential) and len(mod) >= 2 and not isinstance(mod, (Checkpointed, Offloaded)):
            n = len(mod)
            size = max(1, math.isqrt(n)) if n > 3 else n
            for start in range(0, n, size):
                out.append((name, mod, start, min(n, start + size)))
    # Nested Sequentials: keep the innermost ones only (outer ones are handled through their children).
    names = {name for name, *_ in out}
    return [s for s in out if not any(other != s[0] and other.startswith(s[0] + ".") or
                                      (s[0] == "" and other) for other in names)]


def _time_forward(segment, x, repeats=3):
    with torch.no_grad():
        segment(x)
        t0 = time.perf_counter()
        for _ in range(repeats):
            segment(x)
        if x.is_cuda:
            torch.cuda.synchronize(x.device)
    return (time.perf_counter() - t0) / repeats


def plan_memory(model, example_batch, budget_bytes):
    """Measure the cost of each candidate segment: saved bytes and forward time (the recompute price)."""
    costs = []
    inputs = {}
    hooks = []
    for name, seq, start, stop in _segments(model):
        def grab(mod, args, key=(name, start)):
            inputs.setdefault(key, args[0].detach())
        hooks.append(seq[start].register_forward_pre_hook(grab))
    with torch.no_grad():
        model(example_batch)
    for h in hooks:
        h.remove()
    for name, seq, start, stop in _segments(model):
        x = inputs.get((name, start))
        if x is None:
            continue
        segment = nn.Sequential(*list(seq)[start:stop])
        saved = measure_activation_memory(segment, x.clone().requires_grad_(x.is_floating_point()))
        seconds = _time_forward(segment, x)
        action = "checkpoint"
        if x.is_cuda and 2 * saved / PCIE_BYTES_PER_S < seconds:
            action = "offload"
        costs.append(SegmentCost(f"{name or '<root>'}[{start}:{stop}]", saved, seconds, action))
    return costs


def apply_memory_budget(model, example_batch, budget_bytes, *, return_plan=False):
    """A copy of ``model`` whose training-time memory (weights + grads + saved activations) fits ``budget_bytes``.

    Raises ``SlimkitError`` when the weights and gradients alone exceed the budget, or when even wrapping every
    segment does not fit.
    """
    budget_bytes = int(budget_bytes)
    weights = _weight_bytes(model)
    if 2 * weights >= budget_bytes:
        raise SlimkitError(f"memory budget {budget_bytes:,} B is smaller than the model's weights + gradients "
                           f"({2 * weights:,} B)")
    model = copy.deepcopy(model)
    before = measure_activation_memory(model, example_batch)
    plan = MemoryPlan(budget_bytes, weights, before, before)
    if plan.fits:
        return (model, plan) if return_plan else model
    costs = plan_memory(model, example_batch, budget_bytes)
    by_path = {c.path: c for c in costs}
    candidates = [(name, seq, start, stop) for name, seq, start, stop in _segments(model)
                  if f"{name or '<root>'}[{start}:{stop}]" in by_path]
    # Best saving per second of recompute first.
    candidates.sort(key=lambda s: -by_path[f"{s[0] or '<root>'}[{s[2]}:{s[3]}]"].saved_bytes /
                    max(by_path[f"{s[0] or '<root>'}[{s[2]}:{s[3]}]"].forward_s, 1e-9))
    replacements = {}
    for name, seq, start, stop in candidates:
        cost = by_path[f"{name or '<root>'}[{start}:{stop}]"]
        replacements.setdefault(id(seq), (seq, []))[1].append((start, stop, cost.action))
        plan.wrapped.append(cost)
        _rebuild(model, replacements)
        plan.activation_bytes_after = measure_activation_memory(model, example_batch)
        if plan.fits:
            break
    if not plan.fits:
        raise SlimkitError(f"cannot fit the budget {budget_bytes:,} B: weights+grads {2 * weights:,} B plus "
                           f"{plan.activation_bytes_after:,} B of activations after checkpointing every segment")
    return (model, plan) if return_plan else model


def _rebuild(model, replacements):
    """Replace each recorded Sequential's children by wrapped segments (idempotent for a given record)."""
    for seq, chunks in replacements.values():
        original = seq.__dict__.setdefault("_slimkit_original", list(seq))
        chunks = sorted(chunks)
        new, i = [], 0
        for start, stop, action in chunks:
            new.extend(original[i:start])
            wrap = Offloaded if action == "offload" else Checkpointed
            new.append(wrap(nn.Sequential(*original[start:stop])))
            i = stop
        new.extend(original[i:])
        for key in list(seq._modules):
            del seq._modules[key]
        for j, m in enumerate(new):
            seq.add_module(str(j), m)


@dataclass
class BatchSizeResult:
    largest_batch: int
    best_batch: int
    best_lr: float
    rows: list  # (batch, activation bytes, samples/s, fits)


def tune_batch_size(model, make_batch, budget_bytes, *, base_batch=32, base_lr=0.1, candidates=None, steps=2):
    """Measure activation memory and training throughput per batch size; return the largest batch whose weights
    + grads + activations fit ``budget_bytes`` and the fastest one (samples/s), with lr scaled linearly."""
    candidates = candidates or [2 ** k for k in range(0, 13)]
    weights = _weight_bytes(model)
    if 2 * weights >= budget_bytes:
        raise SlimkitError(f"memory budget {budget_bytes:,} B is smaller than the model's weights + gradients "
                           f"({2 * weights:,} B)")
    rows = []
    for b in candidates:
        batch = make_batch(b)
        act = measure_activation_memory(model, batch)
        fits = 2 * weights + act <= budget_bytes
        speed = 0.0
        if fits:
            t0 = time.perf_counter()
            for _ in range(steps):
                _forward_loss(model, batch).backward()
            model.zero_grad(set_to_none=True)
            speed = steps * b / (time.perf_counter() - t0)
        rows.append((b, act, speed, fits))
        if not fits:
            break  # activations grow with the batch: larger ones will not fit either
    fitting = [r for r in rows if r[3]]
    if not fitting:
        raise SlimkitError(f"not even batch {candidates[0]} fits the budget {budget_bytes:,} B")
    best = max(fitting, key=lambda r: r[2])[0]
    return BatchSizeResult(fitting[-1][0], best, base_lr * best / base_batch, rows)
