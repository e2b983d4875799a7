"""DDP integration: ``register(ddp_model, compressor) -> CommState`` installs a communication hook.

The hook compresses each gradient bucket, all-gathers the packed payloads (gloo or NCCL; sizes are
exchanged first when a compressor's payload size depends on the data), decodes every rank's payload
and writes the average back into the bucket. ``no_sync`` accumulation works unchanged: DDP only
calls the hook on the step that synchronises, with the accumulated gradient.
``CommState`` carries the compressor (its state goes into checkpoints) and the counters that
``pop_stats()`` returns: bytes_sent, compress_s, comm_s.
"""
import copy
import threading
import time

import torch
import torch.distributed as dist

from slimkit.comm._registry import BUILTIN_HOOKS, parse_compressor  # BUILTIN_HOOKS: wrapped for the same stats
from slimkit.comm.auto import DENSE, Auto
from slimkit.comm.base import Compressor, plain_options, slice_segments
from slimkit.registry import parse_spec

PATHS = ("auto", "allgather", "twophase")
PHASE2_RANK_OFFSET = 65536  # the phase-2 compressor of rank r draws the noise stream of "rank" r + this
_POWERSGD_KEYS = ("iter", "error_dict", "p_memory_dict", "q_memory_dict")


class CommState:
    """What the hook needs between calls; the trainer checkpoints ``state_dict()`` and logs ``pop_stats()``."""

    def __init__(self, compressor, process_group=None, param_names=None, path="auto"):
        if path not in PATHS:
            raise ValueError(f"path must be one of {PATHS}, got {path!r}")
        self.compressor = compressor
        self.process_group = process_group
        self.param_names = param_names or {}
        self.rank = dist.get_rank(process_group) if dist.is_initialized() else 0
        self.world_size = dist.get_world_size(process_group) if dist.is_initialized() else 1
        self.path = path
        # the two-phase path re-compresses each averaged chunk: its own copy, with its own error feedback
        self.compressor2 = copy.deepcopy(compressor) if isinstance(compressor, Compressor) else None
        self._a2a_ok = True
        self.auto_last = {}  # auto: the last choice per bucket (to flush residuals when it changes)
        self._lock = threading.Lock()
        self._stats = self._zero()
        self.steps = 0
        self.torch_state = None  # the state object of a wrapped PyTorch hook (PowerSGD)

    def bind(self):
        self.compressor.bind(self.rank)
        if self.compressor2 is not None:
            self.compressor2.bind(self.rank + PHASE2_RANK_OFFSET)

    def path_for(self, n: int) -> str:
        """"auto": two-phase from 3 ranks up (with 2 it sends the same bytes and quantizes twice),
        and only for buckets big enough to split into one chunk per rank."""
        if self.path == "allgather" or n < 16 * self.world_size:
            return "allgather"
        if self.path == "twophase":
            return "twophase"
        return "twophase" if self.world_size >= 3 else "allgather"

    def all_to_all(self, send, send_sizes, recv_sizes, fixed_size=False):
        """all_to_all_single with uneven splits (gloo and NCCL in torch 2.13 both have it); a backend
        without it falls back to all-gathering everything and keeping this rank's chunks."""
        out = torch.empty(sum(recv_sizes), dtype=torch.uint8, device=send.device)
        if self._a2a_ok:
            try:
                dist.all_to_all_single(out, send, recv_sizes, send_sizes, group=self.process_group)
                return out
            except (RuntimeError, NotImplementedError):
                self._a2a_ok = False  # every rank fails the same way on the same backend
        # every rank's chunk sizes: identical for fixed-size payloads, else exchanged
        table = ([list(send_sizes)] * self.world_size if fixed_size
                 else _exchange_sizes(send_sizes, self.process_group, send.device))
        width = max(sum(row) for row in table)
        padded = torch.zeros(width, dtype=torch.uint8, device=send.device)
        padded[: send.numel()] = send
        outs = [torch.empty(width, dtype=torch.uint8, device=send.device) for _ in table]
        dist.all_gather(outs, padded, group=self.process_group)
        pos = 0
        for src, size in enumerate(recv_sizes):
            start = sum(table[src][: self.rank])  # where the sender put my chunk
            out[pos: pos + size] = outs[src][start: start + size]
            pos += size
        return out

    def chunk_sizes(self, mine, device):
        """Sizes of the payloads every rank sends me: an all-to-all of one int64 per peer (O(N) bytes
        per rank; all-gathering the whole N x N table would be O(N^2))."""
        send = torch.tensor(mine, dtype=torch.int64, device=device)
        if self._a2a_ok:
            try:
                out = torch.empty_like(send)
                dist.all_to_all_single(out, send, group=self.process_group)
                return out.cpu().tolist()
            except (RuntimeError, NotImplementedError):
                self._a2a_ok = False
        return [row[self.rank] for row in _exchange_sizes(mine, self.process_group, device)]

    @staticmethod
    def _zero():
        return {"bytes_sent": 0, "wire_bytes": 0, "decoded": 0, "compress_s": 0.0, "comm_s": 0.0, "hook_calls": 0}

    def _add(self, **kw):
        with self._lock:
            for k, v in kw.items():
                self._stats[k] += v

    def pop_stats(self) -> dict:
        """Counters since the last call: bytes_sent (payload bytes this rank put into collectives),
        compress_s (encode + decode time), comm_s (collective launch to completion; may overlap
        backward), hook_calls; plus ``bits`` for adaptive compressors."""
        with self._lock:
            out, self._stats = self._stats, self._zero()
        bits = getattr(self.compressor, "bits", None)
        if isinstance(bits, int):
            out["bits"] = bits
        return out

    def observe_loss(self, loss: float) -> None:
        """Call once per optimizer step with the local loss. Adaptive compressors (MQGrad) need it;
        the loss is averaged over ranks first so every rank takes the same decision."""
        self.steps += 1
        observe = getattr(self.compressor, "observe_loss", None)
        if observe is None:
            return
        value = float(loss)
        if dist.is_initialized() and self.world_size > 1:
            t = torch.tensor([value], dtype=torch.float64)
            dist.all_reduce(t, group=self.process_group)
            value = float(t) / self.world_size
        observe(value)
        if self.compressor2 is not None:
            self.compressor2.observe_loss(value)  # same losses and seed: the same bit-width decisions

    def state_dict(self) -> dict:
        out = {"steps": self.steps, "rank": self.rank, "world_size": self.world_size}
        if isinstance(self.compressor, Compressor):
            out["compressor"] = self.compressor.state_dict()
            out["compressor2"] = self.compressor2.state_dict()  # phase-2 error feedback and noise
            out["spec"] = repr(self.compressor)  # for people (and the slimkit versions that compared it)
            out["compressor_key"] = self.compressor.checkpoint_key()
        if self.torch_state is not None:
            # PowerSGDState uses __slots__: keep its step counter and error-feedback/warm-start memories
            out["torch_state"] = {k: getattr(self.torch_state, k) for k in _POWERSGD_KEYS
                                  if hasattr(self.torch_state, k)}
        return out

    def load_state_dict(self, state: dict) -> None:
        self.steps = int(state.get("steps", 0))
        if "compressor" in state:
            if not _same_compressor(state, self.compressor):
                raise ValueError(f"checkpoint was written with compressor {state.get('spec')}, "
                                 f"this run uses {self.compressor!r}")
            self.compressor.load_state_dict(state["compressor"])
            if "compressor2" in state:
                self.compressor2.load_state_dict(state["compressor2"])
            if state.get("rank", self.rank) != self.rank or state.get("world_size", self.world_size) != self.world_size:
                # another rank's residuals (or another chunk layout) do not belong to this one
                self.compressor.reset_rank_state(self.rank)
                self.compressor2.reset_rank_state(self.rank + PHASE2_RANK_OFFSET)
        if self.torch_state is not None and "torch_state" in state:
            for k, v in state["torch_state"].items():
                setattr(self.torch_state, k, v)


def _same_compressor(state, compressor) -> bool:
    """Whether a checkpoint's compressor state fits ``compressor``: its ``compressor_key`` (the options,
    ``Compressor.checkpoint_key``) is equal. A checkpoint from before the key has only ``spec``, the repr
    of a hand-kept option list that left some options out: each option it names must match."""
    if "compressor_key" in state:
        key, ours = state["compressor_key"], compressor.checkpoint_key()
        if key.get("version", 1) > ours["version"]:
            raise ValueError(f"checkpoint's compressor {key.get('name')!r} has options version {key['version']}; "
                             f"this slimkit reads up to {ours['version']}")
        return (key["name"], key["options"]) == (ours["name"], ours["options"])
    spec = state.get("spec")
    if not spec or spec == repr(compressor):
        return True
    try:
        name, options = parse_spec(spec, "compressor")
    except ValueError:
        return False
    ours = compressor.options()
    return name == compressor.name and all(k in ours and plain_options(ours[k]) == plain_options(v) for k, v in options.items())


def _layout(state, bucket, n):
    """The bucket's parameters in model order, as (segments, order). DDP rebuilds buckets after the
    first step (and a resumed run starts from the initial layout), so the hook always compresses
    the bucket in the model's parameter order: results do not depend on the bucket layout."""
    params = bucket.parameters()
    sizes = [p.numel() for p in params]
    if sum(sizes) != n:  # unexpected layout (padding): key the error by bucket, keep DDP's order
        return [(f"bucket{bucket.index()}", n)], None
    keys = [state.param_names.get(id(p), (len(state.param_names) + i, f"param@{id(p)}"))
            for i, p in enumerate(params)]
    order = sorted(range(len(params)), key=lambda i: keys[i][0])
    segments = [(keys[i][1], sizes[i]) for i in order]
    return segments, (None if order == list(range(len(params))) else (order, sizes))


def _to_model_order(flat, layout):
    if layout is None:
        return flat
    order, sizes = layout
    chunks = flat.split(sizes)
    return torch.cat([chunks[i] for i in order])


def _to_bucket_order(flat, layout):
    if layout is None:
        return flat
    order, sizes = layout
    chunks = flat.split([sizes[i] for i in order])
    out = [None] * len(sizes)
    for pos, i in enumerate(order):
        out[i] = chunks[pos]
    return torch.cat(out)


def _average(parts, world):
    """Sum of decoded payloads divided by ``world``, divided first: the mean of finite values
    cannot overflow, their sum can (issue 11, case 5)."""
    total = torch.zeros(parts[0].numel(), dtype=torch.float32)
    for part in parts:
        total.add_(part.reshape(-1), alpha=1.0 / world)
    return total


def _exchange_sizes(mine, group, device):
    """All ranks' payload sizes ([world] or [world, k] int64 list) for data-dependent payloads."""
    t = torch.tensor(mine, dtype=torch.int64, device=device).reshape(-1)
    out = [torch.empty_like(t) for _ in range(dist.get_world_size(group))]
    dist.all_gather(out, t, group=group)
    return [o.cpu().tolist() for o in out]


def _all_gather_padded(payload, sizes, group, device):
    """Start an all-gather of ``payload`` padded to max(sizes); returns (future, out buffers)."""
    width = max(sizes)
    send = torch.zeros(width, dtype=torch.uint8, device=device)
    send[: payload.numel()] = payload.to(device)
    outs = [torch.empty(width, dtype=torch.uint8, device=device) for _ in sizes]
    return dist.all_gather(outs, send, group=group, async_op=True).get_future(), outs, width


def compression_hook(state: CommState, bucket):
    """DDP comm hook: compress, then either all-gather every payload (``path="allgather"``) or run the
    two-phase compressed all-reduce (``path="twophase"``), decode and average. With ``auto`` the
    bucket may instead go through a plain fp32 or fp16 all-reduce."""
    buf = bucket.buffer()
    n = buf.numel()
    t0 = time.perf_counter()
    segments, layout = _layout(state, bucket, n)
    flat = _to_model_order(buf.detach().reshape(-1).cpu().float(), layout)
    path = state.path_for(n)
    c1, c2 = state.compressor, state.compressor2
    if isinstance(c1, Auto):
        key = (bucket.index(), n)
        # with path="auto" the policy weighs both paths (two-phase only from 3 ranks, as path_for)
        paths = ["allgather", "twophase"] if state.path == "auto" and path == "twophase" else [path]
        choice = c1.decide(key, flat, segments, state.world_size, state.process_group, paths,
                           chunk_bounds(n, state.world_size))
        _flush_left(state, key, choice, flat, segments)
        if choice in DENSE:
            return _dense_allreduce(state, buf, flat, layout, choice, t0)
        name, path = choice.rsplit("|", 1)
        c1, c2 = c1.candidates[name], c2.candidates[name]
    if path == "twophase":
        return _two_phase(state, c1, c2, buf, flat, segments, layout, t0)
    return _all_gather_path(state, c1, buf, flat, segments, layout, t0)


def _flush_left(state, key, choice, flat, segments):
    """When ``auto`` moves a bucket off a compressor, add that compressor's error-feedback residual
    (what it still owed this rank's gradient) to the gradient sent now."""
    last = state.auto_last.get(key)
    state.auto_last[key] = choice
    if last is None or last.split("|")[0] == choice.split("|")[0] or last in DENSE:
        return
    left = state.compressor.candidates[last.split("|")[0]]
    errors = getattr(getattr(left, "quantizer", left), "errors", None)
    if not errors:
        return
    pos = 0
    for name, size in segments:
        h = errors.pop(name, None)
        if h is not None and h.numel() == size:
            flat[pos:pos + size] += h
        pos += size


def _when_done(fut, finish):
    """``fut.then`` that re-raises a failed collective before ``finish()`` reads its buffers: torch runs then()
    callbacks on errors too, and a timed-out collective (a frozen peer) leaves its outputs unfilled."""
    def run(done):
        done.value()
        return finish()

    return fut.then(run)


def _dense_allreduce(state, buf, flat, layout, choice, t0):
    world, n = state.world_size, flat.numel()
    send = flat.div_(world).half() if choice == "fp16" else flat.div_(world)  # divide first: no overflow
    send = send.to(buf.device)
    fut = dist.all_reduce(send, group=state.process_group, async_op=True).get_future()
    t1 = time.perf_counter()

    def finish():
        t2 = time.perf_counter()
        buf.copy_(_to_bucket_order(send.float().cpu(), layout).view_as(buf).to(buf.dtype))
        nbytes = n * (2 if choice == "fp16" else 4)
        state._add(bytes_sent=nbytes, wire_bytes=2 * (world - 1) * nbytes // world, compress_s=(t1 - t0),
                   comm_s=t2 - t1, hook_calls=1)
        return buf

    return _when_done(fut, finish)


def _all_gather_path(state, c1, buf, flat, segments, layout, t0):
    world, group, n = state.world_size, state.process_group, flat.numel()
    payload = c1.compress(flat, segments)
    t1 = time.perf_counter()
    size = payload.numel()
    sizes = [size] * world if c1.fixed_size else [s[0] for s in _exchange_sizes([size], group, buf.device)]
    fut, outs, width = _all_gather_padded(payload, sizes, group, buf.device)

    def finish():
        t2 = time.perf_counter()
        parts = [c1.decompress_own(payload, n) if r == state.rank
                 else c1.decompress(out[:s].cpu(), n) for r, (out, s) in enumerate(zip(outs, sizes))]
        buf.copy_(_to_bucket_order(_average(parts, world), layout).view_as(buf).to(buf.dtype))
        t3 = time.perf_counter()
        state._add(bytes_sent=width + (0 if c1.fixed_size else 8), wire_bytes=(world - 1) * width,
                   decoded=(world - 1) * n, compress_s=(t1 - t0) + (t3 - t2), comm_s=t2 - t1, hook_calls=1)
        return buf

    return _when_done(fut, finish)


def chunk_bounds(n: int, world: int) -> list[int]:
    """Chunk j of a bucket of n values is [bounds[j], bounds[j+1]); rank j reduces it."""
    return [n * j // world for j in range(world + 1)]


def _two_phase(state, c1, c2, buf, flat, segments, layout, t0):
    """Two-phase compressed all-reduce (the scheme of 1-bit Adam's compressed all-reduce):
    1. every rank compresses chunk j of its bucket for rank j, and an all-to-all delivers them;
    2. rank r decodes the N payloads of chunk r, averages them, compresses the average again with
       its own compressor (second error-feedback state), and an all-gather delivers every chunk.
    Bytes sent and values decoded per rank stay about constant in N. Phase 1 runs synchronously so
    that every collective is issued from the hook's thread in bucket order (DDP calls the hook in
    the same bucket order on every rank): with several buckets in flight, collectives issued from
    completion callbacks could interleave differently across ranks."""
    world, group, rank, dev = state.world_size, state.process_group, state.rank, buf.device
    n = flat.numel()
    bounds = chunk_bounds(n, world)
    payloads, own_decoded = c1.compress_chunks(flat, segments, bounds)
    t1 = time.perf_counter()
    mine = [p.numel() for p in payloads]
    if c1.fixed_size:  # same numel -> same size: what I send for chunk r is what everyone sends for it
        recv = [mine[rank]] * world
    else:
        recv = state.chunk_sizes(mine, dev)
    received = state.all_to_all(torch.cat(payloads).to(dev), mine, recv, c1.fixed_size)
    t2 = time.perf_counter()
    lo, hi = bounds[rank], bounds[rank + 1]
    parts, pos = [], 0
    for src, size in enumerate(recv):
        parts.append(own_decoded[lo:hi] if src == rank else c1.decompress(received[pos:pos + size].cpu(), hi - lo))
        pos += size
    avg = _average(parts, world) if hi > lo else flat.new_zeros(0)
    payload2 = c2.compress(avg, slice_segments(segments, lo, hi))
    own2 = c2.decompress_own(payload2, hi - lo)
    t3 = time.perf_counter()
    sizes2 = mine if c1.fixed_size else [s[0] for s in _exchange_sizes([payload2.numel()], group, dev)]
    fut, outs, width = _all_gather_padded(payload2, sizes2, group, dev)

    def finish():
        t4 = time.perf_counter()
        out = torch.empty(n, dtype=torch.float32)
        for j in range(world):
            a, b = bounds[j], bounds[j + 1]
            out[a:b] = own2 if j == rank else c2.decompress(outs[j][: sizes2[j]].cpu(), b - a)
        buf.copy_(_to_bucket_order(out, layout).view_as(buf).to(buf.dtype))
        t5 = time.perf_counter()
        sent1 = sum(mine) - mine[rank]
        state._add(bytes_sent=sum(mine) + payload2.numel(), wire_bytes=sent1 + (world - 1) * width,
                   decoded=(world - 1) * (hi - lo) + (n - (hi - lo)),
                   compress_s=(t1 - t0) + (t3 - t2) + (t5 - t4), comm_s=(t2 - t1) + (t4 - t3), hook_calls=1)
        return buf

    return _when_done(fut, finish)


def _wrap_torch_hook(state: CommState, hook, bytes_per_elem):
    def wrapped(torch_state, bucket):
        t0 = time.perf_counter()
        fut = hook(torch_state, bucket)

        def done(f):
            nbytes = bucket.buffer().numel() * bytes_per_elem if bytes_per_elem else 0
            world = state.world_size  # ring all-reduce: each rank sends 2 (N-1)/N of the buffer
            state._add(bytes_sent=int(nbytes), wire_bytes=int(2 * (world - 1) * nbytes // max(world, 1)),
                       comm_s=time.perf_counter() - t0, hook_calls=1)
            return f.value()

        return fut.then(done)

    return wrapped


def register(ddp_model, compressor="auto", process_group=None, path="auto", **hook_opts) -> CommState:
    """Install slimkit's compression hook on a DistributedDataParallel model.

    ``compressor`` is a Compressor, a spec string (``"ecq(bits=2)"``), or one of PyTorch's own hooks
    by name (``"allreduce"``, ``"fp16"``, ``"powersgd"``; ``hook_opts`` go to PowerSGDState), wrapped
    so that the same stats come out. Returns the CommState to checkpoint and to read stats from.
    """
    if not isinstance(ddp_model, torch.nn.parallel.DistributedDataParallel):
        raise TypeError(f"register() expects a DistributedDataParallel model, got {type(ddp_model).__name__}")
    names = {id(p): (i, n) for i, (n, p) in enumerate(ddp_model.module.named_parameters())}
    if isinstance(compressor, str) and compressor in BUILTIN_HOOKS:
        from torch.distributed.algorithms.ddp_comm_hooks import default_hooks, powerSGD_hook

        state = CommState(compressor, process_group, names)
        if compressor == "powersgd":
            opts = {"matrix_approximation_rank": 1, "start_powerSGD_iter": 2, **hook_opts}
            state.torch_state = powerSGD_hook.PowerSGDState(process_group=process_group, **opts)
            hook, per = powerSGD_hook.powerSGD_hook, None  # bytes: rank-dependent, not counted here
            ddp_model.register_comm_hook(state.torch_state, _wrap_torch_hook(state, hook, per))
        else:
            hook, per = ((default_hooks.allreduce_hook, 4) if compressor == "allreduce"
                         else (default_hooks.fp16_compress_hook, 2))
            ddp_model.register_comm_hook(process_group, _wrap_torch_hook(state, hook, per))
        return state
    if isinstance(compressor, str):
        compressor = parse_compressor(compressor)
    if not isinstance(compressor, Compressor):
        raise TypeError(f"expected a slimkit Compressor, a spec string or one of {BUILTIN_HOOKS}, "
                        f"got {type(compressor).__name__}")
    state = CommState(compressor, process_group, names, path=path)
    state.bind()
    ddp_model.register_comm_hook(state, compression_hook)
    return state
