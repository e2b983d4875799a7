"""Memory-bounded training (after AccUDNN, Guo et al. ICCD 2019; methods.md, "AccUDNN").

* ``measure_activation_memory``: bytes of activations autograd saves for backward (CPU: counted through
  ``torch.autograd.graph.saved_tensors_hooks``, one count per storage; CUDA: ``torch.cuda.max_memory_allocated``
  above the level before the forward).
* ``plan_memory``: the cost model, measured per block (each child of an innermost ``nn.Sequential``): bytes its
  backward keeps, its input's bytes, its forward (= recompute) time.
* ``apply_memory_budget``: picks, over all contiguous runs of blocks (a whole stage is one run), the set of segments
  with the least predicted recompute time that brings the saved activations under the budget (a Pareto DP), wraps
  them and checks by measuring. A wrapped segment keeps only its input: on CPU it is recomputed in backward
  (activation checkpointing, ``torch.utils.checkpoint``); on CUDA a segment whose host round trip
  (2 x bytes / PCIe bandwidth) is cheaper than its recompute is offloaded to pinned host memory instead
  (``torch.autograd.graph.save_on_cpu``). Long segments keep the fewest bytes after the forward but recompute
  many at once in backward: ``MemoryPlan.backward_peak_bytes`` bounds that peak. With ``pack="bf16"`` (or
  ``"fp16"``) a segment may instead keep its activations in 16 bits (``Packed``): half their bytes for a dtype
  conversion, far cheaper than a recompute, at a rounding of 2^-9 (bf16) / 2^-12 (fp16) relative in what backward
  reads; the planner prices both per block and mixes them.
* ``tune_batch_size``: the largest batch under the budget and the throughput-optimal one, with the learning rate
  scaled linearly (Goyal et al. 2017).

The budget covers weights + gradients + activations (optimizer state is not counted).
"""
import contextlib
import copy
import dataclasses
import time
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from slimkit.errors import SlimkitError
from slimkit.profile.sizes import weight_bytes

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
    _MEASURING.append((seen, weights))  # Packed's own hooks replace these: it reports what it keeps here

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = _forward_loss(model, batch)
    finally:
        _MEASURING.pop()
    loss.backward()
    model.zero_grad(set_to_none=True)
    return int(sum(seen.values()))


_MEASURING = []  # (seen, weight storages) of the measure_activation_memory calls in progress
PACK_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


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


class Packed(nn.Module):
    """Runs ``segment`` keeping the float32 activations its backward reads in 16 bits (``dtype``: "bf16" or
    "fp16"), converted back when backward needs them; weights and the segment's own input and output stay as they
    are (the neighbouring segments keep them in float32 anyway, so a 16-bit copy would add bytes, not save them).
    torch.autograd.graph.saved_tensors_hooks does the keeping; the conversion waits until the segment's forward
    has returned, when its output is known. One saved tensor that several ops save (a ReLU's output that the next
    conv also saves) is converted once."""

    def __init__(self, segment, dtype="bf16"):
        super().__init__()
        self.segment = segment
        self.dtype = dtype

    def forward(self, x):
        if not torch.is_grad_enabled():
            return self.segment(x)
        target = PACK_DTYPES[self.dtype]
        weights = {p.untyped_storage().data_ptr() for p in self.segment.parameters()}
        held = {}  # view key -> [tensor]; every save of one view shares one holder

        def pack(t):
            key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
            return held.setdefault(key, [t])

        def unpack(holder):
            t = holder[0]
            return t.float() if t.dtype == target else t

        with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
            out = self.segment(x)
        keep = weights | {x.untyped_storage().data_ptr()}
        if torch.is_tensor(out):
            keep.add(out.untyped_storage().data_ptr())
        for holder in held.values():
            t = holder[0]
            if t.dtype == torch.float32 and t.untyped_storage().data_ptr() not in keep:
                holder[0] = t.to(target)
        for seen, params in _MEASURING:
            for holder in held.values():
                storage = holder[0].untyped_storage()
                if storage.data_ptr() not in params:
                    seen[storage.data_ptr()] = storage.nbytes()
        return out


@dataclass
class BlockCost:
    """Cost model entry for one child of an ``nn.Sequential``, measured on the example batch."""
    path: str  # "<sequential path>[index]"
    saved_bytes: int  # bytes its backward keeps when it is not checkpointed (its input included, if it saves it)
    input_bytes: int  # bytes of its input (the previous block's output, usually kept by that block anyway)
    output_bytes: int  # bytes of its output (kept for the next block either way)
    forward_s: float  # forward time: the price of recomputing it
    pack_s: float = 0.0  # time to convert its own saved bytes to 16 bits and back: the price of packing it


@dataclass
class SegmentCost:
    path: str  # "<sequential path>[start:stop]"
    saved_bytes: int  # predicted bytes no longer kept after the forward
    forward_s: float  # predicted recompute time (CUDA offload: the host round trip; pack: the conversions)
    action: str = "checkpoint"  # or "offload", "pack"
    inner_bytes: int = 0  # bytes its recompute holds at once during backward


@dataclass
class MemoryPlan:
    budget_bytes: int
    weight_bytes: int  # parameters + buffers as they lie in memory (slimkit.profile.sizes.weight_bytes)
    activation_bytes_before: int
    activation_bytes_after: int
    wrapped: list = field(default_factory=list)
    blocks: list = field(default_factory=list)  # the per-block cost model (BlockCost)
    predicted_peak_bytes: int = 0  # cost model's saved bytes at their highest during backward (predicted_peak)
    grad_bytes: int = None  # gradients of the trainable parameters; None: as many as weight_bytes

    @property
    def fits(self):
        grads = self.weight_bytes if self.grad_bytes is None else self.grad_bytes
        return self.weight_bytes + grads + self.activation_bytes_after <= self.budget_bytes

    @property
    def recompute_s(self):
        """Predicted extra seconds per training step (sum of the wrapped segments' prices: forward times of the
        recomputed ones, conversions of the packed ones)."""
        return sum(c.forward_s for c in self.wrapped)

    @property
    def backward_peak_bytes(self):
        """Upper bound on saved activations during backward: what the forward keeps plus the largest recomputed
        segment's own activations (a long segment keeps few bytes after the forward but recomputes many at once)."""
        return self.activation_bytes_after + max((c.inner_bytes for c in self.wrapped if c.action == "checkpoint"),
                                                 default=0)


def _fixed_bytes(model):
    """(weight bytes, gradient bytes): what training holds whatever the activations."""
    grads = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    return weight_bytes(model, packed=False), int(grads)


def _sequentials(model):
    """(path, Sequential) for every Sequential with >= 2 children that holds no other Sequential (the innermost
    ones: outer ones are handled through their children)."""
    out = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Sequential) and len(mod) >= 2 and not isinstance(mod, (Checkpointed, Offloaded, Packed)):
            if not any(isinstance(m, nn.Sequential) for m in list(mod.modules())[1:]):
                out.append((name or "<root>", mod))
    return out


def _time_forward(module, x, repeats=5):
    """Forward time (the recompute price) of ``module`` on ``x``, with autograd recording as in a recompute (it
    saves tensors for the backward that follows: about 1.5x a no-grad forward on CPU): the fastest of ``repeats``
    runs, which other load on the machine can only lengthen."""
    times = []
    x = x.detach().requires_grad_(x.is_floating_point())
    with torch.enable_grad():
        module(x)
        for _ in range(repeats):
            if x.is_cuda:
                torch.cuda.synchronize(x.device)
            t0 = time.perf_counter()
            out = module(x)
            if x.is_cuda:
                torch.cuda.synchronize(x.device)
            times.append(time.perf_counter() - t0)
            del out
    return min(times)


def _time_pack(module, x, dtype, repeats=5):
    """Seconds to convert the float32 activations ``module``'s backward keeps on ``x`` (not its input, output or
    weights) to ``dtype`` and back: the price of ``Packed``. The fastest of ``repeats``."""
    kept = {}
    skip = {p.untyped_storage().data_ptr() for p in module.parameters()} | {x.untyped_storage().data_ptr()}

    def grab(t):
        if t.dtype == torch.float32 and t.untyped_storage().data_ptr() not in skip:
            kept.setdefault(t.untyped_storage().data_ptr(), t)
        return t

    x = x.clone().requires_grad_(True)
    skip.add(x.untyped_storage().data_ptr())
    with torch.autograd.graph.saved_tensors_hooks(grab, lambda t: t):
        out = module(x)
    if torch.is_tensor(out):
        kept.pop(out.untyped_storage().data_ptr(), None)
    tensors = [t.detach() for t in kept.values()]
    del out
    if not tensors:
        return 0.0
    times = []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        for t in tensors:
            t.to(dtype).float()
        times.append(time.perf_counter() - t0)
    return min(times[1:])


def plan_memory(model, example_batch, pack=None):
    """The per-block cost model: for each child of every innermost ``nn.Sequential``, the bytes its backward keeps,
    its input's bytes and its forward time, measured on the inputs it sees in a forward of ``example_batch``
    (with ``pack``: also the time to convert its saved bytes to that 16-bit type and back)."""
    seqs = _sequentials(model)
    inputs, outputs, hooks = {}, {}, []
    for path, seq in seqs:
        for i, child in enumerate(seq):
            def grab(mod, args, key=(path, i)):
                inputs.setdefault(key, args[0].detach())

            def grab_out(mod, args, out, key=(path, i)):
                outputs.setdefault(key, out.numel() * out.element_size() if torch.is_tensor(out) else 0)
            hooks += [child.register_forward_pre_hook(grab), child.register_forward_hook(grab_out)]
    with torch.no_grad():
        model(example_batch)
    for h in hooks:
        h.remove()
    costs = {}
    for path, seq in seqs:
        row = []
        for i, child in enumerate(seq):
            x = inputs.get((path, i))
            if x is None or not x.is_floating_point():
                row = None  # a child that never ran (or takes ids): leave this Sequential alone
                break
            saved = measure_activation_memory(child, x.clone().requires_grad_(True))
            seconds = _time_forward(child, x)
            pack_s = _time_pack(child, x, PACK_DTYPES[pack]) if pack else 0.0
            row.append(BlockCost(f"{path}[{i}]", saved, x.numel() * x.element_size(), outputs[(path, i)], seconds,
                                 pack_s))
        if row:
            costs[path] = row
    return costs


def _segment_options(blocks, cuda, cap=None, pack=False):
    """Pareto front of (bytes saved, recompute seconds, segments) over the ways to wrap contiguous runs of
    ``blocks`` (whole Sequential included; recomputed segments holding at most ``cap`` bytes at once; with
    ``pack``, 16-bit packed segments too, which keep half of what they hold beyond their input and output): a DP
    over prefixes that keeps only undominated choices."""
    n = len(blocks)
    fronts = [[] for _ in range(n + 1)]
    fronts[0] = [(0, 0.0, ())]
    for j in range(n):
        if not fronts[j]:
            continue
        fronts[j + 1].extend(fronts[j])  # block j stays as it is
        own, secs = 0, 0.0
        for k in range(j + 1, n + 1):  # wrap blocks j..k-1 as one segment
            last = blocks[k - 1]
            own += max(last.saved_bytes - last.input_bytes, 0)  # its input is its predecessor's output
            secs += last.forward_s
            inner = own + blocks[j].input_bytes  # what the recompute holds at once
            saved = own - last.output_bytes  # the segment's output is still kept for what follows
            if saved <= 0:
                continue
            action, price = "checkpoint", secs
            if cuda and 2 * inner / PCIE_BYTES_PER_S < secs:
                action, price = "offload", 2 * inner / PCIE_BYTES_PER_S
            if action == "checkpoint" and cap is not None and inner > cap:
                break  # longer segments from j only hold more
            seg = SegmentCost("", saved, price, action, inner)
            fronts[k].extend((b + saved, t + price, segs + ((j, k, seg),)) for b, t, segs in fronts[j])
        if pack:
            own, secs = 0, 0.0
            for k in range(j + 1, n + 1):
                last = blocks[k - 1]
                own += max(last.saved_bytes - last.input_bytes, 0)
                secs += last.pack_s
                saved = (own - last.output_bytes) // 2
                if saved > 0:
                    seg = SegmentCost("", saved, secs, "pack", 0)
                    fronts[k].extend((b + saved, t + secs, segs + ((j, k, seg),)) for b, t, segs in fronts[j])
        fronts[j + 1] = _pareto(fronts[j + 1])
    return _pareto(fronts[n])


def _pareto(options):
    """Keep the options no other option beats on both bytes saved (more) and seconds (fewer)."""
    options = sorted(options, key=lambda o: (o[1], -o[0]))
    out, best = [], -1
    for o in options:
        if o[0] > best:
            out.append(o)
            best = o[0]
    return out


def _cheapest(costs, need_bytes, cuda, cap, pack=False):
    """The combination with the fewest recompute seconds over all Sequentials that saves >= need_bytes (or the
    most-saving one when none does)."""
    combined = [(0, 0.0, ())]
    for path, blocks in costs.items():
        opts = _segment_options(blocks, cuda, cap, pack)
        combined = _pareto([(b1 + b2, t1 + t2, s1 + tuple((path, j, k, seg) for j, k, seg in s2))
                            for b1, t1, s1 in combined for b2, t2, s2 in opts])
    feasible = [o for o in combined if o[0] >= need_bytes]
    return min(feasible, key=lambda o: o[1]) if feasible else max(combined, key=lambda o: o[0])


def predicted_peak(costs, segments, before_bytes):
    """Saved-activation bytes at their highest during a step under a plan: after the forward, or while a segment
    is recomputed in backward (what the blocks before it still keep + all of its own activations). Blocks are
    taken in forward order (Sequentials in module order); bytes outside them are counted as kept from the start."""
    starts = {(path, j): (k, seg) for path, j, k, seg in segments}
    kept = before_bytes - sum(max(b.saved_bytes - b.input_bytes, 0) for row in costs.values() for b in row)
    peak = 0
    for path, blocks in costs.items():
        j = 0
        while j < len(blocks):
            if (path, j) in starts:
                k, seg = starts[(path, j)]
                if seg.action == "checkpoint":
                    peak = max(peak, kept + seg.inner_bytes)
                    kept += blocks[k - 1].output_bytes
                else:  # offload / pack: what the blocks keep, less what the segment saves
                    kept += sum(max(b.saved_bytes - b.input_bytes, 0) for b in blocks[j:k]) - seg.saved_bytes
                j = k
            else:
                kept += max(blocks[j].saved_bytes - blocks[j].input_bytes, 0)
                j += 1
    return max(peak, kept)


def _choose(costs, need_bytes, cuda, limit_bytes=None, before_bytes=0, pack=False):
    """The cheapest plan saving >= need_bytes. With ``limit_bytes``, also keep the predicted backward peak under
    it: recomputed segments are capped in size, trying every cap, and the cheapest plan within the limit wins
    (else the one with the lowest predicted peak)."""
    if limit_bytes is None:
        return _cheapest(costs, need_bytes, cuda, None, pack)
    inners = sorted({sum(max(b.saved_bytes - b.input_bytes, 0) for b in row[j:k]) + row[j].input_bytes
                     for row in costs.values() for j in range(len(row)) for k in range(j + 1, len(row) + 1)})
    if len(inners) > 64:  # enough caps to find the plan; keeps planning fast on long Sequentials
        inners = [inners[round(i * (len(inners) - 1) / 63)] for i in range(64)]
    best, lowest = None, None
    for cap in [None] + inners[::-1]:
        option = _cheapest(costs, need_bytes, cuda, cap, pack)
        if option[0] < need_bytes:
            continue
        peak = predicted_peak(costs, option[2], before_bytes)
        if peak <= limit_bytes and (best is None or option[1] < best[1]):
            best = option
        if lowest is None or peak < lowest[0]:
            lowest = (peak, option)
    if best is not None:
        return best
    return lowest[1] if lowest else _cheapest(costs, need_bytes, cuda, None, pack)


def apply_memory_budget(model, example_batch, budget_bytes, *, return_plan=False, max_replans=4, peak=True,
                        pack=None):
    """A copy of ``model`` whose training-time memory (weights + grads + saved activations) fits ``budget_bytes``.

    Plans with the per-block cost model (``plan_memory``): among all ways to wrap contiguous runs of blocks of each
    ``nn.Sequential`` - whole stages included - it takes the one with the least predicted recompute time that
    saves enough bytes, then measures the result; if the prediction was optimistic it re-plans for the shortfall.
    ``peak=True`` also keeps the predicted peak during backward (a recomputed segment holds all its activations at
    once) under the budget; ``peak=False`` bounds only what the forward leaves saved (longer segments, fewer kept
    boundaries, a higher backward peak). ``pack="bf16"`` / ``"fp16"`` lets the plan keep segments' activations in
    16 bits (``Packed``) where that is cheaper than recomputing them: exact outputs, gradients within the rounding
    of what backward reads (off by default: the default plan's gradients equal the plain model's).
    Raises ``SlimkitError`` when the weights and gradients alone exceed the budget, or when no plan fits.
    """
    budget_bytes = int(budget_bytes)
    weights, grads = _fixed_bytes(model)
    if pack is not None and pack not in PACK_DTYPES:
        raise ValueError(f"pack must be None or one of {sorted(PACK_DTYPES)}, got {pack!r}")
    if weights + grads >= budget_bytes:
        raise SlimkitError(f"memory budget {budget_bytes:,} B is smaller than the model's weights + gradients "
                           f"({weights + grads:,} B)")
    model = copy.deepcopy(model)
    with _bn_stats_restored(model):  # the planning forwards must not move the copy's BatchNorm statistics
        plan = _fit_plan(model, example_batch, budget_bytes, (weights, grads), max_replans, peak, pack)
    return (model, plan) if return_plan else model


def _fit_plan(model, example_batch, budget_bytes, fixed, max_replans, peak, pack=None):
    before = measure_activation_memory(model, example_batch)
    plan = MemoryPlan(budget_bytes, fixed[0], before, before, grad_bytes=fixed[1])
    if plan.fits:
        return plan
    costs = plan_memory(model, example_batch, pack)
    plan.blocks = [b for row in costs.values() for b in row]
    seqs = dict(_sequentials(model))
    room = budget_bytes - sum(fixed)  # what the activations may take
    need = before - room
    for _ in range(max_replans):
        limit = room if peak else None
        saved, _, segments = _choose(costs, need, example_batch.is_cuda, limit, before, bool(pack))
        replacements = {}
        plan.wrapped = []
        for path, j, k, seg in sorted(segments, key=lambda s: (s[0], s[1])):
            replacements.setdefault(path, (seqs[path], []))[1].append((j, k, seg.action))
            plan.wrapped.append(dataclasses.replace(seg, path=f"{path}[{j}:{k}]"))
        _rebuild(model, replacements, pack)
        plan.activation_bytes_after = measure_activation_memory(model, example_batch)
        plan.predicted_peak_bytes = predicted_peak(costs, segments, before)
        if plan.fits or saved < need:  # fits, or nothing saves more
            break
        need += plan.activation_bytes_after - room  # the model was optimistic
    if not plan.fits:
        raise SlimkitError(f"cannot fit the budget {budget_bytes:,} B: weights+grads {sum(fixed):,} B plus "
                           f"{plan.activation_bytes_after:,} B of activations with the most-saving plan")
    return plan


def _rebuild(model, replacements, pack=None):
    """Replace each recorded Sequential's children by wrapped segments (from its original children, so a new
    plan replaces the previous one)."""
    for seq, chunks in replacements.values():
        original = seq.__dict__.setdefault("_slimkit_original", list(seq))
        new, i = [], 0
        for start, stop, action in sorted(chunks):
            new.extend(original[i:start])
            segment = nn.Sequential(*original[start:stop])
            if action == "pack":
                new.append(Packed(segment, pack))
            else:
                new.append(Offloaded(segment) if action == "offload" else Checkpointed(segment))
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
    fixed = sum(_fixed_bytes(model))
    if fixed >= budget_bytes:
        raise SlimkitError(f"memory budget {budget_bytes:,} B is smaller than the model's weights + gradients "
                           f"({fixed:,} B)")
    rows = []
    for b in candidates:
        batch = make_batch(b)
        act = measure_activation_memory(model, batch)
        fits = fixed + act <= budget_bytes
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
