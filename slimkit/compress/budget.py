"""Budget driver: hit ``target_macs`` / ``target_bytes`` / ``target_latency_ms`` by allocating
per-layer prune ratios (``method=prune``) or low-rank candidates (``method=lowrank``) greedily by
measured sensitivity (AIMET-style per-layer sweep, then a min-max-sensitivity allocation).

1. **Sensitivity sweep.** Each layer (a cluster of coupled channel groups for prune; a conv/linear for
   lowrank) is compressed *alone* at each level of a grid (prune: removed fraction k/steps; lowrank:
   the rank grid of every decomposition). Sensitivity = relative output error of the whole network,
   ``||f'(x) - f(x)|| / ||f(x)||``, on the calibration inputs (the few-shot ``context.data`` if given,
   else the example inputs: data-free then, so use a batch of several inputs). The saving of each
   level is measured in the target's unit (MACs, weight bytes, or MACs as the latency proxy).
2. **Allocation (AIMET-style greedy).** For an error threshold ``eps`` every layer takes its most
   compressed level whose sensitivity is <= ``eps``; ``eps`` is bisected over the measured
   sensitivities until the combined model (built, then measured: exact MACs / bytes, or the median
   batch-1 latency) meets the target with the smallest ``eps``. If even the largest ``eps`` misses,
   the most compressed model is returned and ``context.extras['budget']['met']`` is False.
3. **Blocks** (``blocks=true``, prune only): every residual block (``drop.candidate_blocks``) is one more
   option with a single level, replaced by ``nn.Identity``, its sensitivity measured the same way. The
   allocation then mixes dropped blocks and thinned layers; with ``target_latency_ms`` each bisection step
   times the combined model, so the mix is chosen by measured latency (fewer layers save launches that
   thinner layers do not: ``benchmarks/results/compress/structure.md``), not by MACs.
   (A ratio-greedy "least error per saved MAC" walk was tried first: because the output error
   saturates near 1, it jumped straight to the most pruned level of the most expensive layer.)

Targets: a value <= 1 for ``target_macs`` / ``target_bytes`` is a fraction of the pass's input model, or with
``of=original`` of the model given to ``compress`` (so ``drop(blocks=2),budget(target_macs=0.5,of=original)``
means half the original's MACs, whatever the drop removed); larger values are absolute (MACs on the example
inputs; weight bytes as ``slimkit.profile.sizes.weight_bytes`` counts them for the compression report: parameters
and buffers, packed storage where a module has it).
``target_latency_ms`` is the absolute median latency at batch 1 on this machine, in ``runtime`` (a
registered latency runtime, ``slimkit.profile.RUNTIMES``: eager by default).
"""
import copy
from dataclasses import dataclass
from typing import Literal, Optional

import torch
from tqdm.auto import tqdm

from slimkit.compress import lowrank as lr
from slimkit.compress.base import CompressContext, PassConfig, register_pass
from slimkit.compress.bnrecal import batchnorms, collecting_statistics
from slimkit.compress.drop import candidate_blocks, replace
from slimkit.compress.prune import Pruner, calibration_examples
from slimkit.model_io import Example, select_output
from slimkit.profile.counting import count_macs
from slimkit.profile.runtimes import get_runtime, make_runner
from slimkit.profile.sizes import weight_bytes  # the report's number: target_bytes is judged on what it prints

METHODS = ("prune", "lowrank")


@dataclass
class BudgetConfig(PassConfig):
    """Exactly one of ``target_macs``, ``target_bytes``, ``target_latency_ms``; ``method``: prune|lowrank;
    ``criterion`` ranks channels inside a layer (prune); ``steps``: levels per layer in the sweep;
    ``runtime``: the latency runtime ``target_latency_ms`` is timed in; ``blocks``: also consider dropping whole
    residual blocks (prune only); ``coupled``: as prune's; ``of``: what a fractional target is a fraction of
    (``input``: this pass's input model; ``original``: the model given to ``compress``); ``recal``: measure each
    candidate's error after re-estimating its BatchNorm statistics on the calibration inputs (adaptive BN, as
    EagleEye ranks pruned candidates: stale statistics overstate the damage of pruning early layers); the model
    returned keeps its statistics either way."""

    name = "budget"
    lossless = False
    target_macs: Optional[float] = None
    target_bytes: Optional[float] = None
    target_latency_ms: Optional[float] = None
    method: str = "prune"
    criterion: str = "l1"
    steps: int = 8
    round_to: int = 1
    calib_batches: int = 2
    runtime: str = "eager"
    blocks: bool = False
    coupled: bool = True  # prune only; False leaves channels shared across adds (a ResNet's stream) intact
    of: Literal["input", "original"] = "input"
    recal: bool = False

    def __post_init__(self):
        given = [t for t in (self.target_macs, self.target_bytes, self.target_latency_ms) if t is not None]
        if len(given) != 1:
            raise ValueError("budget: give exactly one of target_macs=, target_bytes=, target_latency_ms=")
        if given[0] <= 0:
            raise ValueError(f"budget: the target must be > 0, got {given[0]}")
        if self.method not in METHODS:
            raise ValueError(f"budget: method must be one of {METHODS}, got {self.method!r}")
        if self.steps < 2:
            raise ValueError(f"budget: steps must be >= 2, got {self.steps}")
        if self.blocks and self.method != "prune":
            raise ValueError("budget: blocks=true needs method=prune")
        get_runtime(self.runtime)  # an unknown name raises, listing the registered runtimes
        if self.of not in ("input", "original"):
            raise ValueError(f"budget: of must be input or original, got {self.of!r}")


def _latency_ms(model, example, runtime="eager"):
    """Median batch-1 latency of ``model`` in ``runtime`` (ONNX Runtime with torch's thread count, as deployed)."""
    return _Latency(model, example, runtime).base_ms


class _Latency:
    """Batch-1 latency in ``runtime``, each candidate timed interleaved with the original model and scaled by
    the original's first median: a shared machine's load drifts during the search, and the ratio to a model
    timed alongside is steadier than an absolute median of a ~1 ms model."""

    def __init__(self, model, example, runtime):
        from slimkit.profile.latency import compare_latency

        self.compare, self.one, self.runtime = compare_latency, example.resized(1), runtime
        self.warmup = 2 + get_runtime(runtime).setup_on_first_call
        self.ref = self._call(model)
        self.base_ms = self.compare({"ref": self.ref}, (), warmup=self.warmup, repeats=30)["ref"].median_ms

    def _call(self, model):
        first = next(iter(model.parameters()), None)
        runner = make_runner(model, self.one, self.runtime, threads=torch.get_num_threads(),
                             device=str(first.device) if first is not None else "cpu")
        return lambda: self.one(runner)

    def __call__(self, model):
        t = self.compare({"ref": self.ref, "cand": self._call(model)}, (), warmup=self.warmup, repeats=30)
        return self.base_ms * t["cand"].median_ms / t["ref"].median_ms


class _Metric:
    def __init__(self, config, model, example_inputs, original=None):
        self.x = Example.of(example_inputs)
        ref = model
        if config.of == "original" and config.target_latency_ms is None:
            if original is None:
                raise ValueError("budget(of=original) needs the original model: run it through slimkit.compress")
            ref = original
        if config.target_latency_ms is not None:
            self.kind, self.target = "latency_ms", config.target_latency_ms
            self.fn = _Latency(model, self.x, config.runtime)
        elif config.target_bytes is not None:
            self.kind, self.fn = "bytes", weight_bytes
            self.target = config.target_bytes * (weight_bytes(ref) if config.target_bytes <= 1 else 1)
        else:
            self.kind, self.fn = "macs", lambda m: count_macs(m, self.x)
            self.target = config.target_macs * (count_macs(ref, self.x) if config.target_macs <= 1 else 1)
        # the sweep ranks savings in the target unit; latency uses MACs as its proxy
        self.proxy = weight_bytes if self.kind == "bytes" else (lambda m: count_macs(m, self.x))


class _Sensitivity:
    def __init__(self, model, batches, output=None, recal=False):
        self.batches, self.output, self.recal = batches, output, recal
        with torch.no_grad():
            self.ref = [select_output(b(model), output)[0] for b in batches]

    @torch.no_grad()
    def __call__(self, model):
        if self.recal and batchnorms(model):  # on a copy: the candidate itself is not changed
            model = copy.deepcopy(model)
            with collecting_statistics(model):
                for b in self.batches:
                    b(model)
        num = den = 0.0
        for b, r in zip(self.batches, self.ref):
            num += float((select_output(b(model), self.output)[0] - r).pow(2).sum())
            den += float(r.pow(2).sum())
        return (num / max(den, 1e-30)) ** 0.5


def allocate(options, evaluate, target, progress=False):
    """Per-layer levels meeting ``target`` with the smallest worst-layer sensitivity.

    ``options[layer]`` = [(saving, error), ...], level 0 = (0, 0). For a threshold ``eps`` every layer
    takes its most compressed level with error <= eps; ``eps`` is bisected over the measured errors,
    calling ``evaluate(levels)`` (the real metric of the combined model) about log2(#levels) times.
    Returns (levels, metric, met); when even the largest eps misses, the most compressed allocation.
    """
    def levels_at(eps):
        return {k: max(j for j, (_, e) in enumerate(opts) if e <= eps) for k, opts in options.items()}

    eps = sorted({e for opts in options.values() for _, e in opts})
    bar = tqdm(total=max(1, len(eps).bit_length()), desc="budget: allocate", disable=not progress, leave=False)
    lo, hi = 0, len(eps) - 1
    best = evaluate(levels_at(eps[lo]))
    if best <= target:
        return levels_at(eps[lo]), best, True
    best = evaluate(levels_at(eps[hi]))
    if best > target:
        return levels_at(eps[hi]), best, False
    while hi - lo > 1:
        mid = (lo + hi) // 2
        value = evaluate(levels_at(eps[mid]))
        bar.update()
        if value <= target:
            hi, best = mid, value
        else:
            lo = mid
    bar.close()
    return levels_at(eps[hi]), best, True


def _without(model, blocks):
    """A copy of ``model`` with ``blocks`` replaced by ``nn.Identity`` (a block inside a dropped one is skipped)."""
    if not blocks:
        return model
    model, done = copy.deepcopy(model), []
    for name in sorted(blocks, key=len):
        if not any(name == d or name.startswith(d + ".") for d in done):
            replace(model, name, torch.nn.Identity())
            done.append(name)
    model.dropped_blocks = done
    return model


def _budget_prune(model, x, config, context, metric, sens):
    pruner = Pruner(model, x, config.criterion, context, config.calib_batches, coupled=config.coupled)
    base = metric.proxy(pruner.model)
    options, grid = {}, [k / config.steps for k in range(config.steps)]
    blocks = candidate_blocks(pruner.model, x) if config.blocks else []

    def build(levels):
        removed = [gid for ci, lvl in levels.items() if not isinstance(ci, str) for gid in
                   pruner.clusters[ci][:int(grid[lvl] * len(pruner.clusters[ci]))]]
        dropped = [k.split(":", 1)[1] for k, lvl in levels.items() if isinstance(k, str) and lvl]
        return _without(pruner.build(pruner._respect_minimums(removed, config.round_to)), dropped)

    sweep = tqdm(range(len(pruner.clusters) + len(blocks)), desc="budget: sensitivity", disable=not context.progress,
                 leave=False)
    for i in sweep:
        if i < len(pruner.clusters):
            keys = [(i, {i: lvl}) for lvl in range(1, config.steps)]
        else:
            keys = [(f"block:{blocks[i - len(pruner.clusters)]}", {f"block:{blocks[i - len(pruner.clusters)]}": 1})]
        opts = [(0.0, 0.0)]
        for _, levels in keys:
            m = build(levels)
            opts.append((base - metric.proxy(m), sens(m)))
        options[keys[0][0]] = opts
    levels, value, met = allocate(options, lambda lv: metric.fn(build(lv)), metric.target, context.progress)
    return build(levels), levels, value, met


def _budget_lowrank(model, x, config, context, metric, sens):
    model = copy.deepcopy(model).eval()
    infos = lr.analyze(model, x)
    cands = lr.candidates(infos, config.steps, progress=context.progress)
    options, chosen = {}, {}
    for name in tqdm(list(cands), desc="budget: sensitivity", disable=not context.progress, leave=False):
        rows = sorted(cands[name], key=lambda c: c.macs_after, reverse=True)
        opts, picks = [(0.0, 0.0)], [None]
        for c in rows:
            m = lr.replace_layers(model, infos, {name: c})
            saving = (c.macs_before - c.macs_after) if metric.proxy is not weight_bytes else \
                weight_bytes(model) - weight_bytes(m)
            opts.append((float(saving), sens(m)))
            picks.append(c)
        options[name], chosen[name] = opts, picks

    def build(levels):
        return lr.replace_layers(model, infos, {k: chosen[k][lv] for k, lv in levels.items() if lv})

    levels, value, met = allocate(options, lambda lv: metric.fn(build(lv)), metric.target, context.progress)
    return build(levels), levels, value, met


@register_pass(BudgetConfig)
def budget(model, example_inputs, config=BudgetConfig(target_macs=0.5), context=None):
    """Compress a copy of ``model`` to the budget; details go to ``context.extras['budget']``."""
    context = context or CompressContext()
    x = Example.of(example_inputs)
    model = copy.deepcopy(model).eval()
    metric = _Metric(config, model, x, context.teacher)
    sens = _Sensitivity(model, calibration_examples(x, context, config.calib_batches), context.output, config.recal)
    run = _budget_prune if config.method == "prune" else _budget_lowrank
    out, levels, value, met = run(model, x, config, context, metric, sens)
    context.extras["budget"] = {"metric": metric.kind, "target": metric.target, "achieved": value, "met": met,
                                "levels": levels, "output_error": sens(out)}
    return out
