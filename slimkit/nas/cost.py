"""What an architecture costs, from the profiler: MACs and parameters counted on the standalone net,
latency from a per-block look-up table of latencies MEASURED with ``slimkit.profile``.

Budgets are ``key=value`` lists: ``latency_ms=5``, ``macs=50M``, ``params=1.5M`` (k/M/G suffixes).
The table is keyed by each block's shape and choices (``SearchSpace.blocks``); an architecture's
estimate is the sum of its blocks times ``scale``. A block timed alone runs with its weights and
activations hot in cache, so the plain sum under-estimates a whole network (by ~17% on the 2-core EPYC
here, eager, batch 1); ``LatencyLUT.calibrate`` sets ``scale`` to the median measured / summed ratio
of a few whole networks, and ``LatencyLUT.check`` times other whole networks against the estimate.
"""
import json
import os
import platform
import re

import torch

from slimkit.nas.space import parse_spec

BUDGET_KEYS = ("latency_ms", "macs", "params")
_SUFFIX = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}


def parse_budget(text) -> dict:
    """``"latency_ms=5,macs=50M"`` -> ``{"latency_ms": 5.0, "macs": 5e7}``."""
    if isinstance(text, dict):
        items = text.items()
    else:
        items = []
        for part in filter(None, (p.strip() for p in str(text or "").split(","))):
            key, eq, value = part.partition("=")
            if not eq:
                raise ValueError(f"bad --budget item {part!r}; expected key=value with key one of {', '.join(BUDGET_KEYS)}")
            items.append((key.strip(), value.strip()))
    out = {}
    for key, value in items:
        if key not in BUDGET_KEYS:
            raise ValueError(f"unknown budget {key!r}; expected one of {', '.join(BUDGET_KEYS)} (e.g. latency_ms=5)")
        m = re.fullmatch(r"([0-9]*\.?[0-9]+(?:e-?[0-9]+)?)\s*([kKmMgG]?)", str(value))
        if not m or float(m.group(1)) <= 0:
            raise ValueError(f"budget {key}={value!r} must be a positive number (k/M/G suffixes allowed)")
        out[key] = float(m.group(1)) * _SUFFIX[m.group(2).lower()]
    return out


def _key_text(key):
    return json.dumps(key)


class LatencyLUT:
    """Measured block latencies (median ms) for one runtime, thread count and batch size."""

    def __init__(self, space, runtime="eager", threads=1, batch_size=1, warmup=5, repeats=30, entries=None,
                 scale=1.0, calibration=None):
        self.space, self.runtime, self.threads, self.batch_size = space, runtime, int(threads), int(batch_size)
        self.warmup, self.repeats = int(warmup), int(repeats)
        self.entries = dict(entries or {})  # key text -> {"median_ms", "iqr_ms", "load1"}
        self.scale = float(scale)  # whole network / sum of its blocks (1.0 until calibrate())
        self.calibration = list(calibration or [])  # the rows calibrate() measured

    def _blocks(self, arch):
        return self.space.blocks(self.space, parse_spec(arch))

    def missing(self, archs):
        todo = {}
        for arch in archs:
            for key, module, shape in self._blocks(arch):
                k = _key_text(key)
                if k not in self.entries and k not in todo:
                    todo[k] = (module, shape)
        return todo

    def measure(self, archs, progress=False, chunk=16):
        """Time every block of ``archs`` not in the table yet, interleaved in chunks (compare_latency)."""
        from tqdm import tqdm

        from slimkit.profile import compare_latency, make_runner

        todo = list(self.missing(archs).items())
        bar = tqdm(total=len(todo), desc="latency LUT", disable=not progress or not todo, leave=False)
        for i in range(0, len(todo), chunk):
            calls = {}
            for k, (module, shape) in todo[i:i + chunk]:
                x = torch.randn(self.batch_size, *shape, generator=torch.Generator().manual_seed(0))
                runner = make_runner(module.eval(), (x,), self.runtime, threads=self.threads)
                calls[k] = (lambda r=runner, x=x: r(x))
            stats = compare_latency(calls, (), warmup=self.warmup, repeats=self.repeats, threads=self.threads)
            for k, st in stats.items():
                self.entries[k] = {"median_ms": st.median_ms, "iqr_ms": st.iqr_ms, "load1": st.loadavg[0]}
            bar.update(len(calls))
        bar.close()
        return len(todo)

    def block_sum(self, arch) -> float:
        """Sum of the block latencies of ``arch`` (blocks not in the table are measured first)."""
        if self.missing([arch]):
            self.measure([arch])
        return sum(self.entries[_key_text(k)]["median_ms"] for k, _m, _s in self._blocks(arch))

    def estimate(self, arch) -> float:
        """``scale`` x the sum of the block latencies of ``arch``."""
        return self.scale * self.block_sum(arch)

    def check(self, archs, repeats=None, progress=False):
        """Rows {spec, lut_ms, block_sum_ms, measured_ms, error_pct}: whole networks timed interleaved vs
        the estimate."""
        from slimkit.profile import compare_latency, make_runner

        archs = [parse_spec(a) for a in archs]
        self.measure(archs, progress=progress)
        x = torch.randn(self.batch_size, *self.space.input_size, generator=torch.Generator().manual_seed(0))
        calls = {}
        for a in archs:
            runner = make_runner(self.space.build(a).eval(), (x,), self.runtime, threads=self.threads)
            calls[a.encode()] = (lambda r=runner: r(x))
        stats = compare_latency(calls, (), warmup=self.warmup, repeats=repeats or self.repeats, threads=self.threads)
        rows = []
        for a in archs:
            est, meas = self.estimate(a), stats[a.encode()].median_ms
            rows.append({"spec": a.encode(), "lut_ms": est, "block_sum_ms": self.block_sum(a), "measured_ms": meas,
                         "error_pct": 100.0 * (est - meas) / meas, "load1": stats[a.encode()].loadavg[0]})
        return rows

    def calibrate(self, archs, repeats=None, progress=False):
        """Time ``archs`` whole and set ``scale`` = median(measured / block sum) over them (one number per
        table: the cache effect is a property of the machine and runtime, not of one network). Check on
        OTHER networks afterwards. Returns the rows measured."""
        rows = self.check(archs, repeats=repeats, progress=progress)
        ratios = sorted(r["measured_ms"] / r["block_sum_ms"] for r in rows)
        if not ratios:
            raise ValueError("calibrate needs at least one architecture")
        mid = len(ratios) // 2
        self.scale = ratios[mid] if len(ratios) % 2 else 0.5 * (ratios[mid - 1] + ratios[mid])
        self.calibration = rows
        return rows

    def to_dict(self):
        from slimkit.profile.analysis import cpu_name

        return {"space": self.space.name, "space_options": {k: v for k, v in self.space.options.items()
                                                            if isinstance(v, (int, float, str))},
                "runtime": self.runtime, "threads": self.threads, "batch_size": self.batch_size,
                "warmup": self.warmup, "repeats": self.repeats, "cpu": cpu_name(), "torch": torch.__version__,
                "python": platform.python_version(), "scale": self.scale, "calibration": self.calibration,
                "entries": self.entries}

    def save(self, path):
        tmp = f"{path}.tmp"
        with open(tmp, "w") as f:
            json.dump(self.to_dict(), f, indent=1)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, space, path, runtime="eager", threads=1, batch_size=1, **kw):
        with open(path) as f:
            d = json.load(f)
        asked = {"space": space.name, "runtime": runtime, "threads": int(threads), "batch_size": int(batch_size)}
        found = {k: d.get(k) for k in asked}
        if found != asked:
            raise ValueError(f"latency table {path!r} was measured for {found}, not {asked}; use another --lut file")
        return cls(space, runtime, threads, batch_size, d.get("warmup", 5), d.get("repeats", 30), d["entries"],
                   d.get("scale", 1.0), d.get("calibration"))


class CostModel:
    """``cost(arch) -> {"macs", "params"[, "latency_ms"]}``, cached; ``feasible(arch, budget)``."""

    def __init__(self, space, lut=None):
        self.space, self.lut, self.cache = space, lut, {}

    def __call__(self, arch) -> dict:
        from slimkit.profile.counting import count_macs

        arch = parse_spec(arch)
        key = arch.encode()
        if key not in self.cache:
            net = self.space.build(arch).eval()
            x = torch.zeros(1, *self.space.input_size)
            cost = {"macs": int(count_macs(net, x)), "params": sum(p.numel() for p in net.parameters())}
            if self.lut is not None:
                cost["latency_ms"] = self.lut.estimate(arch)
            self.cache[key] = cost
        return dict(self.cache[key])

    def feasible(self, arch, budget) -> bool:
        if "latency_ms" in budget and self.lut is None:
            raise ValueError("a latency_ms budget needs a latency look-up table (CostModel(space, lut=LatencyLUT(...)))")
        cost = self(arch)
        return all(cost[k] <= v for k, v in budget.items())
