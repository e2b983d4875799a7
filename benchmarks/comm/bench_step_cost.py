"""Per-step cost of each gradient-exchange method per link, interleaved, 4 gloo workers.

    python benchmarks/comm/bench_step_cost.py --model lenet5 [--rates unshaped,1gbit,100mbit] [--steps 20]

For each link the workers run inside a private network namespace (``unshare -n``; lo MTU 1500,
``tc tbf`` at the rate; "unshaped" = plain loopback) and, in ONE process group, every method in
turn, --rounds times in alternation (A B C ... A B C ...), so that a load change on the shared
machine hits every method alike. Step time = rank 0's wall time of forward + backward + update,
between barriers; medians over the measured steps of all rounds (first 2 steps of each block are
warm-up). Models: lenet5 on MNIST batches, resnet20 on CIFAR-10 batches, mlp25m (3072-4096-4096-
2048-10, 25.2 M parameters) on CIFAR-10 batches. Time to accuracy = steps to the target (measured
once per method by bench_time_to_accuracy.py, which does not depend on the link) x step time here.
Output: step_cost_<model>.json/.md in --out.
"""
import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time

METHODS = {"fp32": ("fp32 all-reduce", "allreduce", "auto"), "fp16": ("fp16 hook (torch)", "fp16", "auto"),
           "powersgd": ("PowerSGD (torch, rank 1)", "powersgd", "auto"),
           "ecq2": ("ECQ-SGD 2-bit, all-gather", "ecq(bits=2)", "allgather"),
           "ecq2_tp": ("ECQ-SGD 2-bit, two-phase", "ecq(bits=2)", "twophase"),
           "auto": ("auto", "auto", "auto")}


def _build(name):
    import torch.nn as nn

    from slimkit.models import create_model

    if name == "mlp25m":
        return nn.Sequential(nn.Flatten(), nn.Linear(3072, 4096), nn.ReLU(), nn.Linear(4096, 4096), nn.ReLU(),
                             nn.Linear(4096, 2048), nn.ReLU(), nn.Linear(2048, 10))
    return create_model(name)


def _data(name, args):
    import numpy as np
    import torch

    if name == "lenet5":
        d = np.load(args["mnist"])
        x = torch.tensor(d["x_train"][:4096], dtype=torch.float32).unsqueeze(1) / 255
        return (x - 0.1307) / 0.3081, torch.tensor(d["y_train"][:4096]).long()
    d = np.load(args["cifar"])
    idx = np.random.default_rng(0).choice(len(d["y"] if "y" in d else d["y_train"]), 4096, replace=False)
    xs = d["x"] if "x" in d else d["x_train"]
    ys = d["y"] if "y" in d else d["y_train"]
    x = torch.tensor(xs[idx], dtype=torch.float32)
    if x.shape[-1] == 3:
        x = x.permute(0, 3, 1, 2)
    return (x / 255 - 0.5) / 0.25, torch.tensor(ys[idx]).long()


def _worker(rank, world, port, args, out_file):
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F

    import slimkit.comm as comm

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    x, y = _data(args["model"], args)
    gen = torch.Generator().manual_seed(rank)
    res = {k: {"step_s": [], "choices": None, "bytes": []} for k in args["methods"]}
    models = {}
    for rnd in range(args["rounds"]):
        for key in args["methods"]:
            _, spec, path = METHODS[key]
            if key not in models:  # one model, DDP wrapper and hook state per method, kept across rounds
                torch.manual_seed(0)
                model = _build(args["model"])
                ddp = torch.nn.parallel.DistributedDataParallel(model)
                models[key] = (ddp, torch.optim.SGD(ddp.parameters(), lr=0.01, momentum=0.9),
                               comm.register(ddp, spec, path=path))
            ddp, opt, state = models[key]
            for step in range(args["steps"] + 2):
                idx = torch.randint(len(x), (args["batch"],), generator=gen)
                dist.barrier()
                t0 = time.perf_counter()
                opt.zero_grad()
                F.cross_entropy(ddp(x[idx]), y[idx]).backward()
                opt.step()
                dist.barrier()
                dt = time.perf_counter() - t0
                s = state.pop_stats()
                if step >= 2:
                    res[key]["step_s"].append(dt)
                    res[key]["bytes"].append(s["wire_bytes"])
            res[key]["choices"] = [c for c, _ in getattr(state.compressor, "choices", {}).values()] or None
            if args["rounds"] == 1:  # free it: 5 copies of a 25 M-parameter model and its state do not fit
                del models[key], ddp, opt, state
                import gc

                gc.collect()
    if rank == 0:
        res["_params"] = sum(p.numel() for p in _build(args["model"]).parameters())
        res["_loadavg"] = os.getloadavg()
        with open(out_file, "w") as f:
            json.dump(res, f)
    dist.barrier()
    dist.destroy_process_group()


def _port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _shape(rate):
    cmds = [["ip", "link", "set", "lo", "up", "mtu", "1500"]]
    if rate != "unshaped":
        cmds.append(["tc", "qdisc", "add", "dev", "lo", "root", "tbf", "rate", rate, "burst", "64kb", "limit", "8mb"])
    for cmd in cmds:
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode:
            return f"shaping failed: {out.stderr.strip()}"
    return subprocess.run(["tc", "qdisc", "show", "dev", "lo"], capture_output=True, text=True).stdout.strip()


def run_inner(args):
    import torch.multiprocessing as mp

    note = _shape(args._inner)
    f = os.path.join(args.out, f"_step_{args.model}_{args._inner}.json")
    opts = {**vars(args), "methods": args.methods.split(",")}
    mp.spawn(_worker, args=(args.workers, _port(), opts, f), nprocs=args.workers, join=True)
    with open(f) as fh:
        res = json.load(fh)
    res["_network"] = note
    with open(f, "w") as fh:
        json.dump(res, fh)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="lenet5", choices=["lenet5", "resnet20", "mlp25m"])
    p.add_argument("--rates", default="unshaped,1gbit,100mbit")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--steps", type=int, default=20, help="measured steps per method per round")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--mnist", default="/work/shared/data/mnist.npz")
    p.add_argument("--cifar", default="/work/shared/data/cifar10_train.npz")
    p.add_argument("--steps-to-target", default=None, help="JSON {method: steps} from bench_time_to_accuracy")
    p.add_argument("--out", default="benchmarks/results/comm")
    p.add_argument("--_inner", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    if args._inner:
        run_inner(args)
        return 0
    import torch

    results = {}
    for rate in args.rates.split(","):
        inner = [sys.executable, os.path.abspath(__file__), *(sys.argv[1:] if argv is None else argv), "--_inner", rate]
        ok = shutil.which("unshare") and subprocess.run(["unshare", "-n", *inner]).returncode == 0
        if not ok:
            raise SystemExit(f"unshare -n failed for {rate}; this benchmark needs a private network namespace")
        f = os.path.join(args.out, f"_step_{args.model}_{rate}.json")
        with open(f) as fh:
            results[rate] = json.load(fh)
        os.remove(f)
    stt = json.load(open(args.steps_to_target)) if args.steps_to_target else {}
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    lines = [f"# Step cost per link, {args.model}, {args.workers} gloo workers (torch {torch.__version__})\n",
             f"CPU: {cpu}, 2 cores shared by the {args.workers} workers. Batch {args.batch}/worker, {args.rounds} "
             f"interleaved rounds x {args.steps} measured steps per method. step = median of rank 0's forward+"
             "backward+update between barriers (p25-p75 in brackets); B/worker = bytes one rank sends per step.\n"]
    for rate, res in results.items():
        fp32 = statistics.median(res["fp32"]["step_s"]) if "fp32" in res else None
        lines += [f"\n## {rate} ({res['_network']}); {res['_params']:,} parameters; load avg "
                  f"{' / '.join(f'{v:.2f}' for v in res['_loadavg'])}\n",
                  "| method | step ms [p25-p75] | vs fp32 (speed) | B/worker/step | auto's choice | steps to target "
                  "| time to target s |", "|---|---:|---:|---:|---|---:|---:|"]
        for key in args.methods.split(","):
            r = res[key]
            q = statistics.quantiles(r["step_s"], n=4)
            med = statistics.median(r["step_s"])
            steps = stt.get(key)
            if key == "auto" and r["choices"]:  # auto's step count is that of what it picked
                pick = r["choices"][-1]
                steps = stt.get({"fp32": "fp32", "fp16": "fp16"}.get(pick, "ecq2_tp" if "bits=2" in pick else ""))
            ttt = f"{steps * med:.1f}" if steps else "-"
            lines.append(f"| {METHODS[key][0]} | {1e3 * med:.1f} [{1e3 * q[0]:.1f}-{1e3 * q[2]:.1f}] | "
                         f"{fp32 / med:.2f}x | {statistics.mean(r['bytes']):,.0f} | "
                         f"{', '.join(r['choices']) if r['choices'] else '-'} | {steps or '-'} | {ttt} |")
    md = "\n".join(lines) + f"\n\nCommand: `python benchmarks/comm/bench_step_cost.py {' '.join(sys.argv[1:])}`\n"
    with open(os.path.join(args.out, f"step_cost_{args.model}.md"), "w") as f:
        f.write(md)
    with open(os.path.join(args.out, f"step_cost_{args.model}.json"), "w") as f:
        json.dump({"args": vars(args), "results": results}, f)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
