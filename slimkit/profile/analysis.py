"""``profile(model, example_inputs)`` -> ``Profile``: what a network costs, counted and measured.

Units: 1 MAC = one multiply-accumulate; FLOPs = 2 x MACs. Counts (MACs, peak activation bytes) are
for ONE forward at batch size 1. Latency is measured per runtime x thread setting x batch size.
"""
import copy
import json
import math
import os
import platform
from dataclasses import asdict, dataclass, field

import torch

from slimkit.errors import ShapeError
from slimkit.profile.counting import analyze_ops
from slimkit.profile.latency import compare_latency, parse_threads
from slimkit.model_io import Example
from slimkit.profile.runtimes import get_runtime, make_runner
from slimkit.profile.sizes import param_count, weight_bytes
from slimkit.report.table import format_table

SCHEMA_VERSION = 1


def _human(n, unit=""):
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.2f} {suffix}{unit}"
    return f"{n:g} {unit}".rstrip()


@dataclass
class Profile:
    """Analysis object returned by ``slimkit.profile``.

    ``macs``: multiply-accumulates of one forward at batch 1 (``flops`` = 2 x macs). ``params``:
    parameter count. ``weight_bytes``: parameters + buffers at their actual dtype sizes, packed storage where a
    module reports it (``slimkit.profile.sizes``: the number the compression report prints).
    ``peak_activation_bytes``: peak of live activation storage during that forward (inputs and
    weights excluded; see ``slimkit.profile.memory``). ``unsupported_ops``: aten ops seen in the
    forward that no formula counts and that are not known to be MAC-free, with call counts: a
    non-empty dict means ``macs`` is a lower bound. ``latency``: one row per runtime x threads x
    batch size with median/p90/p25/p75/min/max ms, samples/s and the load average at the time.
    """
    name: str
    input_shapes: list
    input_dtypes: list
    device: str
    macs: int
    params: int
    weight_bytes: int
    peak_activation_bytes: int
    modules: list = field(default_factory=list)  # rows: name ('' = root), type, depth, params, macs
    operators: dict = field(default_factory=dict)  # aten op -> MACs
    op_calls: dict = field(default_factory=dict)  # aten op -> calls in the forward
    unsupported_ops: dict = field(default_factory=dict)
    latency: list = field(default_factory=list)
    environment: dict = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    @property
    def flops(self) -> int:
        """2 x MACs (one multiply-accumulate = 2 floating-point operations)."""
        return 2 * self.macs

    def total(self) -> int:
        """Total MACs (fvcore-style twin of ``.macs``)."""
        return self.macs

    def by_module(self, depth=None) -> dict:
        """``{module name: {"type", "params", "macs"}}`` for every module ('' = the whole model),
        down to ``depth`` levels (None: all). A parent's MACs include its children's."""
        return {r["name"]: {"type": r["type"], "params": r["params"], "macs": r["macs"]}
                for r in self.modules if depth is None or r["depth"] <= depth}

    def by_operator(self) -> dict:
        """``{aten op: MACs}`` for the counted ops, largest first."""
        return dict(self.operators)

    def latency_for(self, batch_size=1, runtime="eager", threads=None):
        """The latency row for a setting (first thread setting when ``threads`` is None), or None."""
        for row in self.latency:
            if row["batch_size"] == batch_size and row["runtime"] == runtime and threads in (None, row["threads"]):
                return row
        return None

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self)))

    def to_json(self, path=None, indent=2) -> str:
        text = json.dumps(self.to_dict(), indent=indent)
        if path is not None:
            with open(path, "w") as f:
                f.write(text + "\n")
        return text

    @classmethod
    def from_dict(cls, d) -> "Profile":
        known = {f for f in cls.__dataclass_fields__}
        missing = {"name", "macs", "params", "weight_bytes"} - set(d)
        if missing:
            raise ValueError(f"not a slimkit profile: missing keys {sorted(missing)}")
        return cls(**{k: v for k, v in d.items() if k in known})

    @classmethod
    def from_json(cls, path) -> "Profile":
        with open(path) as f:
            return cls.from_dict(json.load(f))

    def summary_lines(self):
        shapes = ", ".join("x".join(map(str, s)) for s in self.input_shapes)
        unsupported = ", ".join(f"{k} x{v}" for k, v in self.unsupported_ops.items()) or "none"
        return [
            f"{self.name}: input {shapes} ({', '.join(self.input_dtypes)}), device {self.device}",
            f"MACs (1 MAC = 1 multiply-accumulate, batch 1): {self.macs:,} ({_human(self.macs)}); "
            f"FLOPs = 2 x MACs = {self.flops:,}",
            f"params: {self.params:,} ({_human(self.params)}); weight bytes (params + buffers): "
            f"{self.weight_bytes:,} ({_human(self.weight_bytes, 'B')})",
            f"peak activation bytes (batch 1, live tensors during forward): {self.peak_activation_bytes:,} "
            f"({_human(self.peak_activation_bytes, 'B')})",
            f"unsupported ops (not counted, MACs may be a lower bound): {unsupported}",
        ]

    def module_table(self, depth=2) -> str:
        rows = []
        for r in self.modules:
            if r["depth"] > depth:
                continue
            share = 100.0 * r["macs"] / self.macs if self.macs else 0.0
            label = "  " * r["depth"] + (r["name"].rsplit(".", 1)[-1] if r["name"] else "(model)")
            rows.append({"module": label, "type": r["type"], "params": r["params"], "macs": r["macs"],
                         "share": round(share, 1)})
        return format_table(rows, ["module", "type", "params", ("macs", "MACs"), ("share", "% MACs")])

    def operator_table(self) -> str:
        rows = [{"op": op, "macs": m, "calls": self.op_calls.get(op)} for op, m in self.operators.items()]
        return format_table(rows, [("op", "aten op"), ("macs", "MACs"), "calls"])

    def latency_table(self) -> str:
        return format_table(self.latency, [
            "runtime", ("threads", "thr"), ("batch_size", "batch"), ("median_ms", "median ms"), ("p90_ms", "p90 ms"),
            ("iqr_ms", "IQR ms"), ("min_ms", "min ms"), ("max_ms", "max ms"), ("throughput", "samples/s"),
            ("load1", "load avg")])

    def table(self, depth=2) -> str:
        parts = ["\n".join(self.summary_lines()), self.module_table(depth)]
        if self.operators:
            parts.append(self.operator_table())
        if self.latency:
            parts.append(self.latency_table() + f"\n(load avg = 1-min load when timed; this machine has "
                                                f"{self.environment.get('cpu_cores', '?')} cores)")
        return "\n\n".join(parts)

    def __str__(self):
        return self.table()


def resize_batch(inputs, batch_size):
    """``inputs`` (tensor, tuple, dict of keyword inputs or Example) with dimension 0 of every tensor
    resized to ``batch_size`` by repeating samples; non-tensor arguments pass through. Tuples stay tuples;
    keyword inputs come back as a ``slimkit.model_io.Example``."""
    ex = Example.of(inputs).resized(batch_size)
    return ex if isinstance(inputs, (dict, Example)) else tuple(ex.args)


def _check_forward(model, inputs, name):
    example = Example.of(inputs)
    try:
        with torch.no_grad():
            example(model)
    except (RuntimeError, ValueError, IndexError, TypeError) as err:
        raise ShapeError(f"{name} failed on inputs {example.describe()}: {str(err).splitlines()[0]}") from err


def on_device(model, dev):
    """``model`` itself when already on ``dev``, else a copy moved there (the caller's model stays put)."""
    first = next(iter(model.parameters()), None)
    if first is not None and first.device != torch.device(dev):
        return copy.deepcopy(model).to(dev)
    return model


def cpu_name() -> str:
    """The CPU model (Linux: /proc/cpuinfo), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _environment(device):
    env = {"torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
           "processor": cpu_name(), "cpu_cores": os.cpu_count(),
           "torch_threads_default": torch.get_num_threads()}
    if torch.device(device).type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return env


def _module_rows(model, by_module):
    return [{"name": name, "type": type(m).__name__, "depth": 0 if not name else name.count(".") + 1,
             "params": sum(p.numel() for p in m.parameters()), "macs": int(by_module.get(name, 0))}
            for name, m in model.named_modules()]


def _thread_settings(threads, device):
    if torch.device(device).type != "cpu":
        return [(None, "-")]  # GPU kernels: the torch CPU thread count is not the knob
    settings, seen = [], set()
    for t in ([threads] if isinstance(threads, (str, int)) else threads):
        n = parse_threads(t)
        if n not in seen:  # "1" and "all" on a 1-core machine are the same run
            seen.add(n)
            settings.append((n, str(t) if str(t) == str(n) else f"{t}={n}"))
    return settings


def _runtimes(runtime):
    names = [r.strip() for r in runtime.split(",")] if isinstance(runtime, str) else list(runtime)
    for r in names:
        get_runtime(r)  # an unknown name raises, listing the registered runtimes
    return names


def profile(model, example_inputs, *, device="cpu", batch_sizes=(1, 64), threads=("1", "all"), warmup=3,
            repeats=20, runtime="eager", name=None, progress=True) -> Profile:
    """Count and time ``model`` on ``example_inputs`` (a tensor, a tuple or a dict of keyword inputs such as
    ``{"input_ids": ids}``; dim 0 is the batch and is
    resized to each of ``batch_sizes``). ``threads``: CPU thread settings, ints or "all".
    ``runtime``: a registered runtime ("eager", "onnxruntime", "compile", see ``slimkit.profile.RUNTIMES``)
    or several (list or "eager,onnxruntime").
    ``batch_sizes=()`` skips timing. The model is put in eval mode on a copy when it must move device.
    Returns a ``Profile``; ``print(profile)`` shows its tables."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"profile expects a torch.nn.Module, got {type(model).__name__}")
    if any(int(b) < 1 for b in batch_sizes):
        raise ValueError(f"batch sizes must be >= 1, got {tuple(batch_sizes)}")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was asked for but torch.cuda.is_available() is False")
    name = name or type(model).__name__
    runtimes = _runtimes(runtime)
    _thread_settings(threads, device)  # bad settings fail before any work
    model = on_device(model, dev)
    was_training = model.training
    model.eval()
    try:
        inputs = Example.of(example_inputs).resized(1).map(lambda t: t.to(dev))
        _check_forward(model, inputs, name)
        ops = analyze_ops(model, inputs)
        prof = Profile(
            name=name, input_shapes=[list(t.shape) for t in inputs.tensors()],
            input_dtypes=[str(t.dtype).replace("torch.", "") for t in inputs.tensors()],
            device=str(dev), macs=ops.macs, params=param_count(model), weight_bytes=weight_bytes(model),
            peak_activation_bytes=ops.peak_activation_bytes, modules=_module_rows(model, ops.by_module),
            operators=ops.by_operator, op_calls=ops.op_calls, unsupported_ops=ops.unsupported_ops,
            environment=_environment(device))
        prof.latency = measure_settings({name: (model, inputs)}, runtimes=runtimes, threads=threads,
                                        batch_sizes=batch_sizes, warmup=warmup, repeats=repeats, device=device,
                                        progress=progress)[name]
    finally:
        model.train(was_training)
    return prof


def measure_settings(entries, *, runtimes=("eager",), threads=("1", "all"), batch_sizes=(1, 64), warmup=3,
                     repeats=20, device="cpu", progress=True) -> dict:
    """Latency rows for several models, INTERLEAVED per setting (round-robin, see ``compare_latency``).

    ``entries``: ``{name: (model, batch-1 inputs)}``. Returns ``{name: [row, ...]}``, one row per
    runtime x thread setting x batch size."""
    from tqdm import tqdm

    dev = torch.device(device)
    jobs = [(r, s) for r in _runtimes(runtimes) for s in _thread_settings(threads, device)] if batch_sizes else []
    rows = {name: [] for name in entries}
    for rt, (n_threads, label) in tqdm(jobs, desc="latency", disable=not progress or not jobs, leave=False):
        runners = {name: make_runner(m, x, rt, threads=n_threads or 1, device=str(dev)) for name, (m, x) in entries.items()}
        for b in batch_sizes:
            batched = {name: Example.of(x).resized(int(b)) for name, (_, x) in entries.items()}
            # bind each model to its own inputs so models with different input shapes can be interleaved
            calls = {name: (lambda r=runners[name], x=batched[name]: x(r)) for name in entries}
            # compile / ORT do one-time work (compilation, allocator set-up) on the first call per shape
            w = max(int(warmup), 1) if get_runtime(rt).setup_on_first_call else warmup
            stats = compare_latency(calls, (), warmup=w, repeats=repeats, device=str(dev), threads=n_threads,
                                    batch_size=int(b))
            for name, st in stats.items():
                row = {"runtime": rt, "threads": label, "batch_size": int(b), **st.to_dict(), "load1": st.loadavg[0]}
                if dev.type == "cuda" and get_runtime(rt).cuda_peak:
                    row["cuda_peak_bytes"] = _cuda_peak(runners[name], batched[name], dev)
                rows[name].append(row)
    return rows


def _cuda_peak(runner, inputs, dev):
    """Allocator peak above what was allocated before one forward (activations + kernel workspace)."""
    torch.cuda.synchronize(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    base = torch.cuda.memory_allocated(dev)
    with torch.no_grad():
        inputs(runner)
    torch.cuda.synchronize(dev)
    return torch.cuda.max_memory_allocated(dev) - base
