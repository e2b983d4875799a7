"""Compressor speed on LeNet-5 gradients: encode and decode time per call, 1 thread.

LeNet-5 is trained for --warm steps on MNIST (batch 32, SGD lr 0.05, momentum 0.9, one process), then
the gradients of 4 different batches stand in for 4 ranks. Per method and per step, each "rank"
compresses its gradient (with its parameter segments, so ECQ keeps its error buffers) and rank 0
does what the DDP hook does: decode its own payload (``decompress_own``) and the 3 peers' payloads
and sum them. Reported: median over --repeats steps of compress time per rank and of the decode+sum
time, in ms. Output: markdown table and JSON in --out (file names carry --label).
"""
import argparse
import json
import os
import statistics
import sys
import time

SPECS = {"qsgd4": "qsgd(bits=4)", "ecq2": "ecq(bits=2)", "ecq4": "ecq(bits=4)", "lpc4": "lpc(bits=4)",
         "mqgrad": "mqgrad"}


def lenet_gradients(data, warm, world, seed=0):
    import numpy as np
    import torch
    import torch.nn.functional as F

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench_time_to_accuracy import _lenet5

    torch.manual_seed(seed)
    model, input_size, _ = _lenet5()
    d = np.load(data)
    x = (torch.tensor(d["x_train"], dtype=torch.float32).unsqueeze(1) / 255 - 0.1307) / 0.3081
    if input_size[-1] == 32:
        x = F.pad(x, (2, 2, 2, 2))
    y = torch.tensor(d["y_train"]).long()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    gen = torch.Generator().manual_seed(seed)
    grads = []
    for step in range(warm + world):
        idx = torch.randint(len(x), (32,), generator=gen)
        opt.zero_grad()
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        if step >= warm:  # no update after warm-up: 4 batches at the same weights
            grads.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]).clone())
        else:
            opt.step()
    segments = [(n, p.numel()) for n, p in model.named_parameters()]
    return grads, segments


def measure(spec, grads, segments, repeats):
    import torch

    import slimkit.comm as comm

    world, n = len(grads), grads[0].numel()
    cs = [comm.parse_compressor(spec) for _ in range(world)]
    for r, c in enumerate(cs):
        c.bind(r)
    enc, dec, nbytes = [], [], []
    for i in range(repeats + 5):
        t0 = time.perf_counter()
        payloads = [c.compress(g, segments) for c, g in zip(cs, grads)]
        t1 = time.perf_counter()
        total = torch.zeros(n)
        for r, p in enumerate(payloads):
            total += cs[0].decompress_own(p, n) if r == 0 else cs[0].decompress(p, n)
        t2 = time.perf_counter()
        if i >= 5:
            enc.append((t1 - t0) / world)
            dec.append(t2 - t1)
            nbytes.append(payloads[0].numel())
    return {"compress_ms": 1e3 * statistics.median(enc), "decode_sum_ms": 1e3 * statistics.median(dec),
            "payload_bytes": statistics.mean(nbytes)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="mnist.npz")
    p.add_argument("--out", default="benchmarks/results/comm")
    p.add_argument("--label", default="current")
    p.add_argument("--warm", type=int, default=300)
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--methods", default=",".join(SPECS))
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    grads, segments = lenet_gradients(args.data, args.warm, 4)
    n = grads[0].numel()
    rows = {m: measure(SPECS[m], grads, segments, args.repeats) for m in args.methods.split(",")}
    lines = [f"# Compressor speed ({args.label}): LeNet-5 gradient, {n} values, 4 ranks, 1 thread\n",
             f"torch {torch.__version__}, load average {' / '.join(f'{x:.2f}' for x in os.getloadavg())}. "
             f"Gradients after {args.warm} SGD steps; median of {args.repeats} steps.\n",
             "| method | payload B | compress ms (per rank) | decode own + 3 peers and sum, ms | total ms |",
             "|---|---:|---:|---:|---:|"]
    for m, r in rows.items():
        lines.append(f"| {SPECS[m]} | {r['payload_bytes']:.0f} | {r['compress_ms']:.2f} | {r['decode_sum_ms']:.2f} | "
                     f"{r['compress_ms'] + r['decode_sum_ms']:.2f} |")
    lines.append(f"\nCommand: `python benchmarks/comm/bench_compressor_speed.py {' '.join(sys.argv[1:])}`")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"compressor_speed_{args.label}.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(args.out, f"compressor_speed_{args.label}.json"), "w") as f:
        json.dump({"args": vars(args), "numel": n, "rows": rows}, f, indent=1)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
