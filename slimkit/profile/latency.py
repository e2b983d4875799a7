"""Latency timing shared by the profiler and the compression benchmarks.

``measure_latency(fn, inputs)`` times one callable after warm-up; ``compare_latency(models, inputs)``
times several callables INTERLEAVED (round-robin, with the order rotated every round) so that load
drift on a shared machine hits all of them alike. Both return ``LatencyStats`` (milliseconds) with the
1-minute load average at the end of the run: timings taken under contention must say so.
"""
import contextlib
import os
import statistics
import time
from dataclasses import asdict, dataclass

import torch

from slimkit.model_io import Example


def all_threads() -> int:
    """CPU cores this process may use (what ``threads="all"`` means)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def parse_threads(value) -> int:
    """``"all"`` -> all usable cores, ``"4"``/``4`` -> 4; anything else raises naming what was expected."""
    if isinstance(value, str) and value.strip().lower() == "all":
        return all_threads()
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"threads must be a positive integer or 'all', got {value!r}") from None
    if n < 1:
        raise ValueError(f"threads must be a positive integer or 'all', got {value!r}")
    return n


@contextlib.contextmanager
def torch_threads(n):
    """Run the block with ``torch.set_num_threads(n)`` (None: leave as is), then restore."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass
class LatencyStats:
    """Per-call wall time in milliseconds over ``n`` timed calls (after ``warmup`` untimed ones)."""
    median_ms: float
    p90_ms: float
    p25_ms: float
    p75_ms: float
    min_ms: float
    max_ms: float
    mean_ms: float
    n: int
    warmup: int
    loadavg: tuple  # os.getloadavg() when timing finished; > cores means the numbers are contended
    batch_size: int | None = None

    @property
    def iqr_ms(self) -> float:
        return self.p75_ms - self.p25_ms

    @property
    def throughput(self) -> float | None:
        """Samples per second at the median latency (needs ``batch_size``)."""
        if self.batch_size is None or self.median_ms <= 0:
            return None
        return self.batch_size * 1e3 / self.median_ms

    def to_dict(self) -> dict:
        d = asdict(self)
        d["loadavg"] = list(self.loadavg)
        d["iqr_ms"] = self.iqr_ms
        d["throughput"] = self.throughput
        return d

    @classmethod
    def from_times(cls, times_ms, warmup=0, batch_size=None):
        if not times_ms:
            raise ValueError("no timings: repeats must be >= 1")
        ts = sorted(times_ms)
        if len(ts) >= 2:
            q = statistics.quantiles(ts, n=20, method="inclusive")  # 5% steps: q[4]=p25, q[14]=p75, q[17]=p90
            p25, p75, p90 = q[4], q[14], q[17]
        else:
            p25 = p75 = p90 = ts[0]
        return cls(median_ms=statistics.median(ts), p90_ms=p90, p25_ms=p25, p75_ms=p75, min_ms=ts[0],
                   max_ms=ts[-1], mean_ms=statistics.fmean(ts), n=len(ts), warmup=warmup,
                   loadavg=tuple(os.getloadavg()), batch_size=batch_size)


class _Timer:
    """Wall clock on CPU; CUDA events (with synchronisation) on a GPU."""

    def __init__(self, device):
        self.cuda = torch.device(device).type == "cuda"

    def time_ms(self, fn, inputs):
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            inputs(fn)
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end)
        t0 = time.perf_counter()
        inputs(fn)
        return (time.perf_counter() - t0) * 1e3


def _rounds(repeats, progress, desc):
    if not progress:
        return range(repeats)
    from tqdm import tqdm

    return tqdm(range(repeats), desc=desc, leave=False)


def _check_counts(warmup, repeats):
    if int(repeats) < 1 or int(warmup) < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")


@torch.no_grad()
def measure_latency(fn, inputs=(), *, warmup=3, repeats=20, device="cpu", threads=None, batch_size=None,
                    progress=False) -> LatencyStats:
    """Time ``fn(*inputs)``: ``warmup`` untimed calls, then ``repeats`` timed ones. ``inputs``: a tuple of
    arguments, one tensor, a dict of keyword arguments or a ``slimkit.model_io.Example``.

    ``threads``: torch intra-op threads for the run (int or "all"; None keeps the current setting).
    ``batch_size`` only feeds ``LatencyStats.throughput``. On CUDA, CUDA events time each call.
    """
    return compare_latency({"fn": fn}, inputs, warmup=warmup, repeats=repeats, device=device,
                           threads=threads, batch_size=batch_size, progress=progress)["fn"]


@torch.no_grad()
def compare_latency(models, inputs=(), *, warmup=3, repeats=20, device="cpu", threads=None, batch_size=None,
                    progress=False) -> dict:
    """Interleaved timing of several callables on the same inputs: ``{name: LatencyStats}``.

    Each round calls every model once, rotating who goes first, so slow drift of a shared machine's
    load spreads evenly. Modules are put in eval mode; callables may also be ONNX Runtime wrappers.
    """
    if not isinstance(models, dict) or not models:
        raise ValueError("compare_latency expects a non-empty dict {name: callable}")
    _check_counts(warmup, repeats)
    inputs = Example.of(inputs)
    if device == "cuda" or str(device).startswith("cuda"):
        torch.cuda.synchronize()
    timer, names = _Timer(device), list(models)
    times = {name: [] for name in names}
    with torch_threads(parse_threads(threads) if threads is not None else None):
        for m in models.values():
            if isinstance(m, torch.nn.Module):
                m.eval()
            for _ in range(int(warmup)):
                timer.time_ms(m, inputs)
        for r in _rounds(int(repeats), progress, "latency"):
            for i in range(len(names)):
                name = names[(r + i) % len(names)]
                times[name].append(timer.time_ms(models[name], inputs))
    return {name: LatencyStats.from_times(ts, warmup=int(warmup), batch_size=batch_size) for name, ts in times.items()}
