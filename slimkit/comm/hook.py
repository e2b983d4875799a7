"""DDP integration: ``register(ddp_model, compressor) -> CommState`` installs a communication hook.

The hook compresses each gradient bucket, all-gathers the packed payloads (gloo or NCCL; sizes are
exchanged first when a compressor's payload size depends on the data), decodes every rank's payload
and writes the average back into the bucket. ``no_sync`` accumulation works unchanged: DDP only
calls the hook on the step that synchronises, with the accumulated gradient.
``CommState`` carries the compressor (its state goes into checkpoints) and the counters that
``pop_stats()`` returns: bytes_sent, compress_s, comm_s.
"""
import threading
import time

import torch
import torch.distributed as dist

from slimkit.comm.base import Compressor

BUILTIN_HOOKS = ("allreduce", "fp16", "powersgd")  # PyTorch's own hooks, wrapped for the same stats
_POWERSGD_KEYS = ("iter", "error_dict", "p_memory_dict", "q_memory_dict")


class CommState:
    """What the hook needs between calls; the trainer checkpoints ``state_dict()`` and logs ``pop_stats()``."""

    def __init__(self, compressor, process_group=None, param_names=None):
        self.compressor = compressor
        self.process_group = process_group
        self.param_names = param_names or {}
        self.rank = dist.get_rank(process_group) if dist.is_initialized() else 0
        self.world_size = dist.get_world_size(process_group) if dist.is_initialized() else 1
        self._lock = threading.Lock()
        self._stats = self._zero()
        self.steps = 0
        self.torch_state = None  # the state object of a wrapped PyTorch hook (PowerSGD)

    @staticmethod
    def _zero():
        return {"bytes_sent": 0, "compress_s": 0.0, "comm_s": 0.0, "hook_calls": 0}

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

    def state_dict(self) -> dict:
        out = {"steps": self.steps, "rank": self.rank, "world_size": self.world_size}
        if isinstance(self.compressor, Compressor):
            out["compressor"] = self.compressor.state_dict()
            out["spec"] = repr(self.compressor)
        if self.torch_state is not None:
            # PowerSGDState uses __slots__: keep its step counter and error-feedback/warm-start memories
            out["torch_state"] = {k: getattr(self.torch_state, k) for k in _POWERSGD_KEYS
                                  if hasattr(self.torch_state, k)}
        return out

    def load_state_dict(self, state: dict) -> None:
        self.steps = int(state.get("steps", 0))
        if "compressor" in state:
            if state.get("spec") and state["spec"] != repr(self.compressor):
                raise ValueError(f"checkpoint was written with compressor {state['spec']}, "
                                 f"this run uses {self.compressor!r}")
            self.compressor.load_state_dict(state["compressor"])
            if state.get("rank", self.rank) != self.rank:
                self.compressor.reset_rank_state(self.rank)
        if self.torch_state is not None and "torch_state" in state:
            for k, v in state["torch_state"].items():
                setattr(self.torch_state, k, v)


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


def compression_hook(state: CommState, bucket):
    """DDP comm hook: compress, all-gather payloads, decode and average."""
    buf = bucket.buffer()
    n, world, group = buf.numel(), state.world_size, state.process_group
    t0 = time.perf_counter()
    segments, layout = _layout(state, bucket, n)
    flat = _to_model_order(buf.detach().reshape(-1).cpu().float(), layout)
    payload = state.compressor.compress(flat, segments)
    t1 = time.perf_counter()
    size = payload.numel()
    if state.compressor.fixed_size:
        sizes = [size] * world
    else:  # data-dependent sizes: exchange them, then pad everyone to the largest
        mine = torch.tensor([size], dtype=torch.int64, device=buf.device)
        gathered = [torch.empty_like(mine) for _ in range(world)]
        dist.all_gather(gathered, mine, group=group)
        sizes = [int(s) for s in gathered]
    width = max(sizes)
    send = torch.zeros(width, dtype=torch.uint8, device=buf.device)
    send[:size] = payload.to(buf.device)
    outs = [torch.empty(width, dtype=torch.uint8, device=buf.device) for _ in range(world)]
    fut = dist.all_gather(outs, send, group=group, async_op=True).get_future()

    def finish(_):
        t2 = time.perf_counter()
        total = torch.zeros(n, dtype=torch.float32)
        for r, (out, s) in enumerate(zip(outs, sizes)):
            total += (state.compressor.decompress_own(payload, n) if r == state.rank
                      else state.compressor.decompress(out[:s].cpu(), n))
        buf.copy_(_to_bucket_order(total / world, layout).view_as(buf).to(buf.dtype))
        t3 = time.perf_counter()
        state._add(bytes_sent=width + (0 if state.compressor.fixed_size else 8),
                   compress_s=(t1 - t0) + (t3 - t2), comm_s=t2 - t1, hook_calls=1)
        return buf

    return fut.then(finish)


def _wrap_torch_hook(state: CommState, hook, bytes_per_elem):
    def wrapped(torch_state, bucket):
        t0 = time.perf_counter()
        fut = hook(torch_state, bucket)

        def done(f):
            nbytes = bucket.buffer().numel() * bytes_per_elem if bytes_per_elem else 0
            state._add(bytes_sent=int(nbytes), comm_s=time.perf_counter() - t0, hook_calls=1)
            return f.value()

        return fut.then(done)

    return wrapped


def register(ddp_model, compressor, process_group=None, **hook_opts) -> CommState:
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
        from slimkit.comm._registry import parse_compressor

        compressor = parse_compressor(compressor)
    if not isinstance(compressor, Compressor):
        raise TypeError(f"expected a slimkit Compressor, a spec string or one of {BUILTIN_HOOKS}, "
                        f"got {type(compressor).__name__}")
    state = CommState(compressor, process_group, names)
    compressor.bind(state.rank)
    ddp_model.register_comm_hook(state, compression_hook)
    return state
