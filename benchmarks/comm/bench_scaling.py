"""Bytes and decode work per worker per step vs the number of workers, run for real and modelled.

    python benchmarks/comm/bench_scaling.py [--workers 2,4,8] [--steps 8]

N gloo workers (one process each, 1 thread) train a small MLP (270,339 parameters, one DDP bucket)
for --steps steps inside a private network namespace (``unshare -n``, lo up; unshaped, because
bytes do not depend on the speed). Per method the hook's own counters give the bytes each rank puts
on the wire (ring all-reduce: 2 (N-1)/N of the buffer; all-gather: N-1 copies of the payload;
all-to-all: the chunks for the other ranks) and the values it decodes; the namespace's loopback
counts every byte really sent (TCP/IP headers included), divided by N. The cost model uses the
payload bytes per value measured at N=2 and extrapolates to N = 64, 256, 1024.
Output: scaling.md and scaling.json in --out.
"""
import argparse
import json
import os
import shutil
import socket
import subprocess
import sys

METHODS = {"fp32": ("fp32 all-reduce (DDP)", "allreduce", "auto"),
           "ecq2_ag": ("ECQ-SGD 2-bit, all-gather", "ecq(bits=2)", "allgather"),
           "ecq2_tp": ("ECQ-SGD 2-bit, two-phase", "ecq(bits=2)", "twophase"),
           "ecq2d_tp": ("ECQ-SGD 2-bit dense coding, two-phase", "ecq(bits=2, coding='dense')", "twophase")}


def _net_bytes():
    with open("/proc/net/dev") as f:
        for line in f:
            if line.strip().startswith("lo:"):
                return int(line.split(":")[1].split()[8])
    return 0


def _worker(rank, world, port, spec, path, steps, out_file):
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F

    import slimkit.comm as comm

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 256), torch.nn.ReLU(), torch.nn.Linear(256, 1024),
                                torch.nn.ReLU(), torch.nn.Linear(1024, 3))
    ddp = torch.nn.parallel.DistributedDataParallel(model, bucket_cap_mb=25)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05)
    state = comm.register(ddp, spec, path=path)
    g = torch.Generator().manual_seed(rank)
    rows = []
    for step in range(steps + 2):  # 2 warm-up steps: DDP's bucket rebuild, connection setup
        dist.barrier()
        net0 = _net_bytes()
        x, y = torch.randn(16, 8, generator=g), torch.randint(0, 3, (16,), generator=g)
        opt.zero_grad()
        F.cross_entropy(ddp(x), y).backward()
        opt.step()
        dist.barrier()
        s = state.pop_stats()
        if step >= 2:
            rows.append({**s, "net": _net_bytes() - net0})  # all ranks' traffic during this step
    if rank == 0:
        with open(out_file, "w") as f:
            json.dump({"n": sum(p.numel() for p in model.parameters()), "rows": rows}, f)
    dist.destroy_process_group()


def _port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_inner(args):
    import torch.multiprocessing as mp

    subprocess.run(["ip", "link", "set", "lo", "up"], check=False)
    res = {}
    for world in [int(w) for w in args.workers.split(",")]:
        for key, (_, spec, path) in METHODS.items():
            f = os.path.join(args.out, f"_scaling_{key}_{world}.json")
            mp.spawn(_worker, args=(world, _port(), spec, path, args.steps, f), nprocs=world, join=True)
            with open(f) as fh:
                res[f"{key}@{world}"] = json.load(fh)
            os.remove(f)
            print(f"done {key} N={world}", flush=True)
    with open(os.path.join(args.out, "_scaling_raw.json"), "w") as f:
        json.dump(res, f)


def model_bytes(key, world, n, payload_per_value):
    """Bytes one worker sends per step (ring all-reduce / all-gather, direct all-to-all)."""
    if key == "fp32":
        return 2 * (world - 1) / world * 4 * n
    p = payload_per_value * n
    if key == "ecq2_ag":
        return (world - 1) * p + (world - 1) * 8  # + the size exchange
    sizes = 0 if key == "ecq2d_tp" else 16 * (world - 1)
    return (world - 1) / world * p + (world - 1) * p / world + sizes


def model_decoded(key, world, n):
    if key == "fp32":
        return 0
    return (world - 1) * n if key == "ecq2_ag" else 2 * (world - 1) * n / world


def report(args, res):
    import torch

    mean = lambda rows, k: sum(r[k] for r in rows) / len(rows)  # noqa: E731
    worlds = [int(w) for w in args.workers.split(",")]
    lines = [f"# Bytes and decode work per worker per step vs workers (gloo, torch {torch.__version__})\n",
             f"MLP 8-256-1024-3 ({res[f'fp32@{worlds[0]}']['n']:,} parameters, one bucket), {args.steps} steps per "
             "run after 2 warm-up steps, private network namespace (unshare -n). model B = hook counter of bytes "
             "this rank sends (ring/direct algorithms); measured B = all bytes through the namespace's loopback "
             "during the step / N (TCP/IP headers included); decoded = values this rank decodes per step.\n",
             "| method | N | hook B/worker | measured B/worker | measured / hook | decoded/worker | vs N=2 bytes |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    summary = {}
    for key, (label, _, _) in METHODS.items():
        base = None
        for w in worlds:
            rows = res[f"{key}@{w}"]["rows"]
            hook, net, dec = mean(rows, "wire_bytes"), mean(rows, "net") / w, mean(rows, "decoded")
            base = base or hook
            summary[f"{key}@{w}"] = {"hook_bytes": hook, "net_bytes": net, "decoded": dec}
            lines.append(f"| {label} | {w} | {hook:,.0f} | {net:,.0f} | {net / hook:.2f} | {dec:,.0f} | "
                         f"{hook / base:.2f}x |")
    n = res[f"fp32@{worlds[0]}"]["n"]
    lines += ["", "Cost model (payload bytes per value measured at N=2), checked against the runs above and "
              "extrapolated:", "",
              "| method | N | model B/worker | hook B/worker (run) | model decoded/worker | vs N=2 (model) |",
              "|---|---:|---:|---:|---:|---:|"]
    verdict = []
    for key, (label, _, _) in METHODS.items():
        ppv = 0.0
        if key != "fp32":
            rows2 = res[f"{key}@{worlds[0]}"]["rows"]
            ppv = mean(rows2, "bytes_sent") / n if key == "ecq2_ag" else None
            if ppv is None:  # two-phase: bytes_sent = my N chunk payloads + my phase-2 payload
                ppv = mean(rows2, "bytes_sent") / (n * (1 + 1 / worlds[0]))
        base = model_bytes(key, 2, n, ppv)
        for w in worlds + [64, 256, 1024]:
            mb = model_bytes(key, w, n, ppv)
            run = summary.get(f"{key}@{w}", {}).get("hook_bytes")
            lines.append(f"| {label} | {w} | {mb:,.0f} | {'-' if run is None else f'{run:,.0f}'} | "
                         f"{model_decoded(key, w, n):,.0f} | {mb / base:.2f}x |")
            summary.setdefault(f"{key}@{w}", {})["model_bytes"] = mb
        if key.endswith("_tp"):
            worst = max(model_bytes(key, w, n, ppv) for w in worlds + [64, 256, 1024]) / base
            verdict.append(f"{label}: at most {worst:.2f}x its N=2 bytes per worker up to N=1024 (target <= 1.5x: "
                           f"{'met' if worst <= 1.5 else 'NOT met'})")
    lines += [""] + verdict
    md = "\n".join(lines) + f"\n\nCommand: `python benchmarks/comm/bench_scaling.py {' '.join(sys.argv[1:])}`\n"
    with open(os.path.join(args.out, "scaling.md"), "w") as f:
        f.write(md)
    with open(os.path.join(args.out, "scaling.json"), "w") as f:
        json.dump({"args": vars(args), "summary": summary}, f, indent=1)
    print(md)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", default="2,4,8")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--out", default="benchmarks/results/comm")
    p.add_argument("--_inner", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    if args._inner:
        run_inner(args)
        return 0
    inner = [sys.executable, os.path.abspath(__file__), *(sys.argv[1:] if argv is None else argv), "--_inner"]
    if shutil.which("unshare") and subprocess.run(["unshare", "-n", *inner]).returncode == 0:
        pass
    else:
        print("unshare -n unavailable: measured bytes include any other loopback traffic", flush=True)
        subprocess.run(inner, check=True)
    with open(os.path.join(args.out, "_scaling_raw.json")) as f:
        res = json.load(f)
    os.remove(os.path.join(args.out, "_scaling_raw.json"))
    report(args, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
