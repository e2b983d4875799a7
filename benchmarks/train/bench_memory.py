"""Memory-bounded training: activation memory and step time before/after ``apply_memory_budget``.

    python benchmarks/train/bench_memory.py --model resnet56 --batch 64 --ratio 3 --out benchmarks/results/train

Budget = weights + grads + (saved activation bytes before) / ratio. Compared: the plain model, the earlier fixed
plan (sqrt(n)-block segments picked greedily: layer1 in three 3-block segments + layer2[0:6], 15 of 27 blocks
recomputed) and the plan of the per-block cost model (``apply_memory_budget``, whole stages allowed as one segment), and that plan with
16-bit packing of saved activations allowed (``pack="bf16"``: the planner packs where converting is cheaper than
recomputing).
Memory: bytes saved for backward after the forward (the budget's measure) and the allocator's peak during a whole
training step above the level before it (glibc ``mallinfo2`` read after every ATen op, backward and recompute
included). Time: ``--repeats`` rounds of ``--pairs`` interleaved steps (order rotated); per round the median step
of each model; reported as the median over rounds with the [min, max] of the per-round ratios.
"""
import argparse
import ctypes
import gc
import os
import statistics
import time

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from slimkit.models import create_model, get_model_info
from slimkit.train.memory import Checkpointed, _bn_stats_restored, apply_memory_budget, measure_activation_memory


class _MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                                               "uordblks", "fordblks", "keepcost")]


_LIBC = ctypes.CDLL("libc.so.6")
_LIBC.mallinfo2.restype = _MallInfo2


def _in_use():
    m = _LIBC.mallinfo2()
    return m.uordblks + m.hblkhd  # bytes handed out by malloc (heap + mmap'd blocks)


class _PeakMode(TorchDispatchMode):
    """Reads the allocator's in-use bytes after every ATen op (forward, backward and checkpoint recompute)."""

    def __init__(self):
        super().__init__()
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.peak = max(self.peak, _in_use())
        return out


def peak_step_bytes(model, x, y, repeats=3):
    """Median peak (above the level before the step) of forward + loss + backward."""
    peaks = []
    with _bn_stats_restored(model):
        for _ in range(repeats + 1):
            model.zero_grad(set_to_none=True)
            gc.collect()
            base = _in_use()
            mode = _PeakMode()
            with mode:
                torch.nn.functional.cross_entropy(model(x), y).backward()
            peaks.append(mode.peak - base)
    model.zero_grad(set_to_none=True)
    return int(statistics.median(peaks[1:]))  # the first step allocates the grads for the first time


def fixed_plan(model, plan):
    """Wrap the given (sequential name, start, stop) segments of a copy of ``model`` in checkpointing."""
    import copy

    model = copy.deepcopy(model)
    for name in {p[0] for p in plan}:
        seq = getattr(model, name)
        orig, new, i = list(seq), [], 0
        for _, a, b in sorted(p for p in plan if p[0] == name):
            new += orig[i:a] + [Checkpointed(nn.Sequential(*orig[a:b]))]
            i = b
        new += orig[i:]
        for k in list(seq._modules):
            del seq._modules[k]
        for j, m in enumerate(new):
            seq.add_module(str(j), m)
    return model


def step_time(model, opt, x, y):
    t0 = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    return time.perf_counter() - t0


def _cpu():
    with open("/proc/cpuinfo") as f:
        info = f.read()
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    return name + (" (VNNI)" if "vnni" in info else " (no VNNI)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet56")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--ratio", type=float, default=3.0, help="target activation-memory reduction")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--pairs", type=int, default=6, help="interleaved steps of each model per repeat")
    ap.add_argument("--pack", default="bf16", choices=["bf16", "fp16"], help="16-bit type of the packing plan")
    ap.add_argument("--pack-ratio", type=float, default=1.8, help="a second, smaller reduction for the packing plan")
    ap.add_argument("--out", default="benchmarks/results/train")
    args = ap.parse_args()
    torch.manual_seed(0)
    base = create_model(args.model).train()
    x = torch.randn(args.batch, *get_model_info(args.model).input_size)
    y = torch.randint(0, base.num_classes, (args.batch,))
    weights = sum(p.numel() * p.element_size() for p in base.parameters())
    before = measure_activation_memory(base, x)
    budget = int(2 * weights + before / args.ratio)
    t0 = time.perf_counter()
    small, plan = apply_memory_budget(base, x, budget, return_plan=True)
    plan_s = time.perf_counter() - t0
    stage, stage_plan = apply_memory_budget(base, x, budget, return_plan=True, peak=False)
    packed, pack_plan = apply_memory_budget(base, x, budget, return_plan=True, pack=args.pack)
    light = apply_memory_budget(base, x, int(2 * weights + before / args.pack_ratio), pack=args.pack)
    models = {"baseline": base, "memory-bounded (cost model)": small,
              "cost model, peak=False (whole stages allowed)": stage,
              f"cost model + {args.pack} packing (pack={args.pack!r})": packed,
              f"same, budget activations/{args.pack_ratio:g} (what packing alone reaches)": light}
    if args.model.startswith("resnet") and len(base.layer1) >= 9:
        old = [("layer1", 0, 3), ("layer1", 3, 6), ("layer1", 6, 9), ("layer2", 0, 3), ("layer2", 3, 6)]
        models["earlier plan (sqrt segments)"] = fixed_plan(base, old)
    saved = {k: measure_activation_memory(m, x) for k, m in models.items()}
    peaks = {k: peak_step_bytes(m, x, y) for k, m in models.items()}
    opts = {k: torch.optim.SGD(m.parameters(), lr=0.01) for k, m in models.items()}
    for k in models:  # warm-up
        step_time(models[k], opts[k], x, y)
    rounds = []
    names = list(models)
    for r in range(args.repeats):
        times = {k: [] for k in models}
        for i in range(args.pairs):
            shift = (r * args.pairs + i) % len(names)
            for k in names[shift:] + names[:shift]:
                times[k].append(step_time(models[k], opts[k], x, y))
        rounds.append({k: statistics.median(v) for k, v in times.items()})
    load = os.getloadavg()
    med = {k: statistics.median(rd[k] for rd in rounds) * 1e3 for k in models}
    ratio = {k: [rd[k] / rd["baseline"] for rd in rounds] for k in models}
    rows = [f"# Memory-bounded training: {args.model}, batch {args.batch}", "",
            f"{_cpu()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}; load average at end "
            f"{load[0]:.2f}/{load[1]:.2f}/{load[2]:.2f}. Budget {budget:,} B = weights+grads {2 * weights:,} B + "
            f"activations/{args.ratio:g}. {args.repeats} rounds x {args.pairs} interleaved steps per model.", "",
            f"Cost-model plan ({plan_s:.0f} s to measure and plan; predicted recompute {plan.recompute_s * 1e3:.0f} ms "
            f"per step, predicted peak {plan.predicted_peak_bytes:,} B): " +
            ", ".join(f"{c.path} ({c.action})" for c in plan.wrapped) + ". With peak=False: " +
            ", ".join(f"{c.path}" for c in stage_plan.wrapped) + f" (predicted peak {stage_plan.predicted_peak_bytes:,} B; "
            f"predicted recompute {stage_plan.recompute_s * 1e3:.0f} ms). With pack={args.pack!r}: " +
            ", ".join(f"{c.path} ({c.action})" for c in pack_plan.wrapped) +
            f" (predicted extra {pack_plan.recompute_s * 1e3:.0f} ms per step).", "",
            "| model | saved activation bytes after forward | vs baseline | peak bytes during a step | vs baseline "
            "| step ms (median of rounds) | slower than baseline: median [min, max] of rounds |",
            "|---|---:|---:|---:|---:|---:|---|"]
    for k in models:
        r = ratio[k]
        rows.append(f"| {k} | {saved[k]:,} | {before / saved[k]:.2f}x lower | {peaks[k]:,} | "
                    f"{peaks['baseline'] / peaks[k]:.2f}x lower | {med[k]:.1f} | {100 * (statistics.median(r) - 1):+.1f}% "
                    f"[{100 * (min(r) - 1):+.1f}%, {100 * (max(r) - 1):+.1f}%] |")
    rows += ["", "Target: >= 3x lower activation memory at <= 20% slower steps."]
    for k in ("memory-bounded (cost model)", f"cost model + {args.pack} packing (pack={args.pack!r})"):
        rows.append(f"{k}: {before / saved[k]:.2f}x lower saved activations ({peaks['baseline'] / peaks[k]:.2f}x "
                    f"lower step peak), steps {100 * (statistics.median(ratio[k]) - 1):+.1f}% (rounds "
                    f"{100 * (min(ratio[k]) - 1):+.1f}% .. {100 * (max(ratio[k]) - 1):+.1f}%).")
    rows += ["", f"Command: `python benchmarks/train/bench_memory.py --model {args.model} --batch {args.batch} "
             f"--ratio {args.ratio:g} --repeats {args.repeats} --pairs {args.pairs} --pack {args.pack} "
             f"--pack-ratio {args.pack_ratio:g}`"]
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"memory_{args.model}.md"), "w") as f:
        f.write("\n".join(rows) + "\n")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
