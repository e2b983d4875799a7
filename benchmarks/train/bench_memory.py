"""Memory-bounded training: activation memory and step time before/after ``apply_memory_budget``.

    python benchmarks/train/bench_memory.py --model resnet56 --batch 64 --ratio 3 --out benchmarks/results/train

Budget = weights + grads + (activation bytes before) / ratio. Steps (forward + backward + SGD update) of the two
models are timed interleaved; medians with [p25, p75]. On CPU the activation bytes are those saved for backward.
"""
import argparse
import os
import platform
import statistics
import time

import torch

from slimkit.models import create_model, get_model_info
from slimkit.train.memory import apply_memory_budget, measure_activation_memory


def step_time(model, opt, x, y):
    t0 = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet56")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--ratio", type=float, default=3.0, help="target activation-memory reduction")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--out", default="benchmarks/results/train")
    args = ap.parse_args()
    torch.manual_seed(0)
    base = create_model(args.model).train()
    x = torch.randn(args.batch, *get_model_info(args.model).input_size)
    y = torch.randint(0, base.num_classes, (args.batch,))
    weights = sum(p.numel() * p.element_size() for p in base.parameters())
    before = measure_activation_memory(base, x)
    budget = int(2 * weights + before / args.ratio)
    small, plan = apply_memory_budget(base, x, budget, return_plan=True)
    after = measure_activation_memory(small, x)
    models = {"baseline": base, "memory-bounded": small}
    opts = {k: torch.optim.SGD(m.parameters(), lr=0.01) for k, m in models.items()}
    times = {k: [] for k in models}
    for k in models:  # warm-up
        step_time(models[k], opts[k], x, y)
    for i in range(args.steps):
        order = list(models) if i % 2 == 0 else list(models)[::-1]
        for k in order:
            times[k].append(step_time(models[k], opts[k], x, y))
    load = os.getloadavg()

    def q(v, p):
        return statistics.quantiles(v, n=4)[p] * 1e3

    rows = [f"# Memory-bounded training: {args.model}, batch {args.batch}", "",
            f"{platform.machine()} CPU, {torch.get_num_threads()} torch threads, torch {torch.__version__}; "
            f"load average at end {load[0]:.2f}/{load[1]:.2f}/{load[2]:.2f}. "
            f"Budget {budget:,} B = weights+grads {2 * weights:,} B + activations/{args.ratio:g}.", "",
            f"Wrapped segments ({len(plan.wrapped)}): " + ", ".join(f"{c.path} ({c.action})" for c in plan.wrapped),
            "", "| model | saved activation bytes | vs baseline | step ms median [p25, p75] | vs baseline |",
            "|---|---:|---:|---|---:|"]
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    for k, act in (("baseline", before), ("memory-bounded", after)):
        rows.append(f"| {k} | {act:,} | {before / act:.2f}x lower | {med[k]:.1f} [{q(times[k], 0):.1f}, "
                    f"{q(times[k], 2):.1f}] | {med[k] / med['baseline']:.2f}x |")
    rows += ["", f"Target: >= 3x lower activation memory at <= 20% slower steps. Measured: {before / after:.2f}x lower, "
             f"steps {100 * (med['memory-bounded'] / med['baseline'] - 1):+.1f}%.", "",
             f"Command: `python benchmarks/train/bench_memory.py --model {args.model} --batch {args.batch} "
             f"--ratio {args.ratio:g} --steps {args.steps}`"]
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"memory_{args.model}.md")
    with open(path, "w") as f:
        f.write("\n".join(rows) + "\n")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
