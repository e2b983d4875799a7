"""``auto``: per bucket, pick fp32 all-reduce, fp16 all-reduce or a compressor from measured costs.

The hook probes the link once (and every ``refresh`` hook calls): all-reduce, all-gather and
all-to-all of a small and a large message, each timed and fitted as latency + bytes * s_per_byte.
For each new bucket it times every candidate compressor on that bucket's real gradient (encode,
decode, payload bytes per value). Every measurement is all-reduced (max) before use, so every rank
holds the same numbers and takes the same decision without a broadcast. The predicted hook time of
each choice (``predict``) follows the collectives the hook really runs; a compressor is chosen only
when it is predicted at least ``1 - margin`` faster than fp32, so a wrong guess near the break-even
point costs little. When a bucket leaves a compressor, that compressor's error-feedback residual
for the bucket is added to the next gradient sent, so nothing that was held back is lost.
"""
import copy
import statistics
import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from slimkit.comm._registry import parse_compressor, register_compressor
from slimkit.comm.base import Compressor

DENSE = ("fp32", "fp16")
KINDS = ("all_reduce", "all_gather", "all_to_all")


@dataclass
class LinkModel:
    """Seconds for one collective: ``fits[kind] = (latency_s, s_per_byte)``; bytes are per rank
    (the all-reduced tensor, one rank's all-gather input, one rank's whole all-to-all input)."""

    fits: dict = field(default_factory=dict)

    def time(self, kind: str, nbytes: float) -> float:
        a, b = self.fits[kind]
        return a + b * nbytes

    @classmethod
    def from_rate(cls, latency_s: float, bytes_per_s: float, world: int):
        """An idealised link (for tests and the cost model): ring all-reduce and all-gather, direct all-to-all."""
        per = 1.0 / bytes_per_s
        return cls({"all_reduce": (2 * (world - 1) * latency_s, 2 * (world - 1) / world * per),
                    "all_gather": ((world - 1) * latency_s, (world - 1) * per),
                    "all_to_all": (latency_s, (world - 1) / world * per)})


@dataclass
class CodecCost:
    """A compressor on one bucket: seconds per value to encode and to decode, payload bytes per value."""

    enc_s: float
    dec_s: float
    bytes_per_value: float
    fixed_size: bool = True
    path: str | None = None  # the hook path this was measured on (None: the one choose() is given)


def predict(choice: str, n: int, world: int, link: LinkModel, codec: CodecCost | None = None,
            path: str = "twophase", cast_s: float = 0.0) -> float:
    """Predicted seconds of one hook call on a bucket of ``n`` values."""
    if choice == "fp32":
        return link.time("all_reduce", 4 * n)
    if choice == "fp16":
        return link.time("all_reduce", 2 * n) + cast_s * n
    c = codec
    gather_size = 0.0 if c.fixed_size else link.time("all_gather", 8)  # data-dependent sizes: exchange them
    if path == "allgather":
        return c.enc_s * n + gather_size + link.time("all_gather", c.bytes_per_value * n) + (world - 1) * c.dec_s * n
    chunk = n / world
    a2a_sizes = 0.0 if c.fixed_size else link.time("all_to_all", 8 * world)
    return (c.enc_s * n + a2a_sizes + link.time("all_to_all", c.bytes_per_value * n)
            + (world - 1) * c.dec_s * chunk + c.enc_s * chunk  # decode my chunk from everyone, re-encode
            + gather_size + link.time("all_gather", c.bytes_per_value * chunk) + (world - 1) * c.dec_s * chunk)


def choose(n: int, world: int, link: LinkModel, codecs: dict, path: str = "twophase", cast_s: float = 0.0,
           margin: float = 0.9, fp16: bool = True) -> tuple[str, dict]:
    """(choice, predicted seconds of every option): fp32 unless another option is predicted to take
    at most ``margin`` of fp32's time; then the fastest of those. ``fp16=False`` leaves fp16 out."""
    times = {"fp32": predict("fp32", n, world, link)}
    if fp16:
        times["fp16"] = predict("fp16", n, world, link, cast_s=cast_s)
    for name, cost in codecs.items():
        times[name] = predict(name, n, world, link, cost, cost.path or path)
    best = min(times, key=times.get)
    return (best if times[best] <= margin * times["fp32"] else "fp32"), times


def _max_over_ranks(values, group):
    t = torch.tensor(values, dtype=torch.float64)
    if dist.is_initialized() and dist.get_world_size(group) > 1:
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
    return t.tolist()


def probe_link(group=None, small: int = 1024, large: int = 512 * 1024, reps: int = 3) -> LinkModel:
    """Time every collective the hook uses at two message sizes; fit latency and bandwidth."""
    world = dist.get_world_size(group)

    def timed(fn):
        fn()  # warm-up: connection setup, allocation
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        return statistics.median(ts)

    def ops(nbytes):
        ar = torch.zeros(max(nbytes // 4, 1))
        ag_in = torch.zeros(nbytes, dtype=torch.uint8)
        ag_out = [torch.empty_like(ag_in) for _ in range(world)]
        per = max(nbytes // world, 1)
        a2a_in, a2a_out = torch.zeros(per * world, dtype=torch.uint8), torch.empty(per * world, dtype=torch.uint8)
        return [timed(lambda: dist.all_reduce(ar, group=group)),
                timed(lambda: dist.all_gather(ag_out, ag_in, group=group)),
                timed(lambda: dist.all_to_all_single(a2a_out, a2a_in, group=group))]

    t = _max_over_ranks(ops(small) + ops(large), group)
    fits = {}
    for i, kind in enumerate(KINDS):
        b = max((t[3 + i] - t[i]) / (large - small), 0.0)
        fits[kind] = (max(t[i] - b * small, 0.0), b)
    return LinkModel(fits)


@register_compressor("auto")
class Auto(Compressor):
    """Not a codec itself: the hook asks it which candidate to use for each bucket."""

    fixed_size = False

    def __init__(self, candidates: tuple = ("ecq(bits=2)", "ecq(bits=4)"), margin: float = 0.9,
                 refresh: int = 1000, probe_bytes: int = 512 * 1024, link_rate: float | None = None,
                 link_latency: float = 50e-6, fp16: bool = False, seed: int = 0, nonfinite: str = "raise"):
        super().__init__(seed, nonfinite)
        if isinstance(candidates, str):
            candidates = (candidates,)
        if not isinstance(margin, (int, float)) or not 0 < margin <= 1:
            raise ValueError(f"margin must lie in (0, 1], got {margin!r}")
        if not isinstance(refresh, int) or refresh < 1:
            raise ValueError(f"refresh must be an int >= 1 (hook calls between link probes), got {refresh!r}")
        self.candidates = {}
        for spec in candidates:
            c = parse_compressor(spec) if isinstance(spec, str) else spec
            if not isinstance(c, Compressor) or isinstance(c, Auto):
                raise ValueError(f"auto candidates must be slimkit compressors, got {spec!r}")
            self.candidates[repr(c)] = c
        if link_rate is not None and not (isinstance(link_rate, (int, float)) and link_rate > 0):
            raise ValueError(f"link_rate must be > 0 bytes/s (or None to measure the link), got {link_rate!r}")
        self.margin, self.refresh, self.probe_bytes = float(margin), refresh, int(probe_bytes)
        # a known link instead of probing it (tests, or a link the probe cannot see)
        self.link_rate, self.link_latency = link_rate, float(link_latency)
        # fp16 all-reduce is off by default: on LeNet-5/MNIST (4 workers, seed 0) it needed 975 steps to 97%
        # against fp32's 800 and ended 0.84 pt lower, so it can lose time to accuracy while winning per step
        self.fp16 = bool(fp16)
        self.link: LinkModel | None = None
        self.calls = 0
        self.choices: dict = {}  # bucket key -> (choice, predicted seconds of every option)
        self.history: list = []  # (hook call, bucket key, choice) whenever a choice changes

    def config(self):
        """The candidates as the compressors they resolved to (their repr, every option spelt out)."""
        return {**super().config(), "candidates": tuple(self.candidates)}

    def bind(self, rank):
        for c in self.candidates.values():
            c.bind(rank)

    def reset_rank_state(self, rank):
        for c in self.candidates.values():
            c.reset_rank_state(rank)

    def compress(self, flat, segments=None):
        raise TypeError("'auto' picks a method per bucket inside the DDP hook (slimkit.comm.register); "
                        "it has no payload of its own")

    decompress = compress

    def decide(self, key, flat, segments, world, group, paths, bounds):
        """The choice for this bucket, "fp32", "fp16" or "SPEC|PATH"; probes and measures (collectively)
        when the bucket is new or the link measurement stale. ``paths``: the hook paths allowed."""
        self.calls += 1
        if self.link is None or self.calls % self.refresh == 0:
            self.link = (LinkModel.from_rate(self.link_latency, self.link_rate, world) if self.link_rate
                         else probe_link(group, large=self.probe_bytes))
            self.choices = {}
        if key not in self.choices:
            n = flat.numel()
            names = [(name, p) for name in self.candidates for p in paths]
            meas = []
            for name, p in names:
                meas += _measure(self.candidates[name], flat, segments, p, bounds)
            t0 = time.perf_counter()
            flat.half().float()
            meas.append((time.perf_counter() - t0) / max(n, 1))
            meas = _max_over_ranks(meas, group)
            codecs = {f"{name}|{p}": CodecCost(meas[3 * i] / n, meas[3 * i + 1], meas[3 * i + 2] / n,
                                               self.candidates[name].fixed_size, p)
                      for i, (name, p) in enumerate(names)}
            choice, times = choose(n, world, self.link, codecs, cast_s=meas[-1], margin=self.margin, fp16=self.fp16)
            old = self.choices.get(key, (None,))[0]
            if choice != old:
                self.history.append((self.calls, key, choice))
            self.choices[key] = (choice, times)
        return self.choices[key][0]

    def state_dict(self):
        return {"candidates": {k: c.state_dict() for k, c in self.candidates.items()},
                "calls": self.calls, "history": [list(h) for h in self.history]}

    def load_state_dict(self, state):
        for k, s in state["candidates"].items():
            self.candidates[k].load_state_dict(s)
        self.calls = int(state.get("calls", 0))
        self.history = [tuple(h) for h in state.get("history", [])]
        self.link, self.choices = None, {}  # the link may differ after a restart: probe again


def _measure(compressor, flat, segments, path, bounds):
    """[encode seconds for the bucket, decode seconds per value, payload bytes] on a throw-away copy
    (the real compressor's error buffers and noise stream are not touched)."""
    n = flat.numel()
    sizes = [bounds[j + 1] - bounds[j] for j in range(len(bounds) - 1)] if path == "twophase" else [n]
    enc, dec = [], []
    for _ in range(2):  # the faster of two: the first call pays one-time costs (allocation, caches)
        c = copy.deepcopy(compressor)
        t0 = time.perf_counter()
        if path == "twophase":
            payloads, _ = c.compress_chunks(flat, segments, bounds)
        else:
            payloads = [c.compress(flat, segments)]
        t1 = time.perf_counter()
        c.decompress(payloads[0], sizes[0])
        t2 = time.perf_counter()
        enc.append(t1 - t0)
        dec.append((t2 - t1) / max(sizes[0], 1))
    return [min(enc), min(dec), float(sum(p.numel() for p in payloads))]
