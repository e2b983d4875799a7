"""Bandwidth-limited time-to-accuracy for gradient compression (issue 4), one command:

    python benchmarks/comm/bench_time_to_accuracy.py --data /work/shared/data/mnist.npz [--quick]

4 gloo workers (LeNet-5 on MNIST, test split = MNIST's own 10k test set, first --test-size images)
run inside a private network namespace (``unshare -n``) whose loopback is brought up with MTU 1500
and shaped with ``tc qdisc ... tbf`` to each --rates value. Only that namespace's loopback is used.
If unshare/tc are unavailable the run falls back to unshaped loopback and says so in the results.
Methods share seeds and hyper-parameters. Output: JSON, markdown table and accuracy-vs-time PNG in --out.
"""
import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time

METHODS = {  # key: (label, spec for slimkit.comm.register)
    "fp32": ("fp32 all-reduce", "allreduce"),
    "fp16": ("fp16 hook (torch)", "fp16"),
    "powersgd": ("PowerSGD hook (torch, rank 1)", "powersgd"),
    "qsgd4": ("QSGD 4-bit", "qsgd(bits=4)"),
    "ecq2": ("ECQ-SGD 2-bit", "ecq(bits=2)"),
    "ecq4": ("ECQ-SGD 4-bit", "ecq(bits=4)"),
    "lpc4": ("LPC 4-bit", "lpc(bits=4)"),
    "mqgrad": ("MQGrad", "mqgrad"),
    "ecq2_tp": ("ECQ-SGD 2-bit, two-phase", "ecq(bits=2)|twophase"),
    "auto": ("auto", "auto"),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="mnist.npz with x_train/y_train/x_test/y_test")
    p.add_argument("--out", default="benchmarks/results/comm")
    p.add_argument("--quick", action="store_true", help="120 steps, 100mbit only, looser target")
    p.add_argument("--rates", default="100mbit,1gbit", help="tc tbf rates, comma separated")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated keys of METHODS")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch", type=int, default=32, help="per worker")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--eval-every", type=int, default=25)
    p.add_argument("--test-size", type=int, default=5000)
    p.add_argument("--target", type=float, default=0.97, help="target test accuracy")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-shape", action="store_true", help="skip unshare/tc: unshaped loopback")
    p.add_argument("--_inner", default=None, help=argparse.SUPPRESS)  # rate, when run inside the namespace
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.rates, args.target, args.test_size = 120, "100mbit", 0.90, 2000
    unknown = [m for m in args.methods.split(",") if m not in METHODS]
    if unknown:
        p.error(f"unknown method(s) {unknown}; choose from {list(METHODS)}")
    if not os.path.exists(args.data):
        p.error(f"--data {args.data} does not exist (expected mnist.npz)")
    return args


# ---------------------------------------------------------------- worker (one per rank)
def _lenet5():
    import torch.nn as nn

    try:  # prefer the zoo's LeNet-5 when the models package provides it
        from slimkit.models import create_model, get_model_info

        info = get_model_info("lenet5")
        return create_model("lenet5"), tuple(info.input_size), "slimkit.models lenet5"
    except (ValueError, ImportError, TypeError):
        pass
    model = nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5),
                          nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(400, 120), nn.ReLU(),
                          nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))
    return model, (1, 28, 28), "local LeNet-5 (zoo has no lenet5 yet)"


def _net_bytes():
    # /proc/net/dev is per network namespace: inside ours, only this benchmark's traffic
    with open("/proc/net/dev") as f:
        for line in f:
            if line.strip().startswith("lo:"):
                return int(line.split(":")[1].split()[8])  # transmit bytes
    return 0


def _worker(rank, world, port, spec, args, out_file):
    import numpy as np
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F

    import slimkit.comm as comm

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    data = np.load(args["data"])
    xtr = (torch.tensor(data["x_train"], dtype=torch.float32).unsqueeze(1) / 255 - 0.1307) / 0.3081
    ytr = torch.tensor(data["y_train"]).long()
    xte = (torch.tensor(data["x_test"][: args["test_size"]], dtype=torch.float32).unsqueeze(1) / 255 - 0.1307) / 0.3081
    yte = torch.tensor(data["y_test"][: args["test_size"]]).long()
    torch.manual_seed(args["seed"])
    model, input_size, model_src = _lenet5()
    if input_size[-1] == 32:  # zoo variant for 32x32 inputs
        xtr, xte = F.pad(xtr, (2, 2, 2, 2)), F.pad(xte, (2, 2, 2, 2))
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=args["lr"], momentum=0.9)
    spec, _, path = spec.partition("|")  # "spec|path" picks the hook's path (default auto)
    state = comm.register(ddp, spec, path=path or "auto")
    gen = torch.Generator().manual_seed(args["seed"])
    n_params = sum(p.numel() for p in model.parameters())
    rec = {"steps": [], "curve": [], "model": model_src, "params": n_params}
    clock, net0 = 0.0, _net_bytes()

    def evaluate():
        with torch.no_grad():
            model.eval()
            acc = float((model(xte).argmax(1) == yte).float().mean())
            model.train()
        return acc

    for step in range(args["steps"]):
        idx = torch.randint(len(xtr), (world, args["batch"]), generator=gen)[rank]  # same stream on all ranks
        t0 = time.perf_counter()
        opt.zero_grad()
        loss = F.cross_entropy(ddp(xtr[idx]), ytr[idx])
        loss.backward()
        opt.step()
        dt = time.perf_counter() - t0
        state.observe_loss(loss.item())
        clock += dt
        s = state.pop_stats()
        rec["steps"].append({"step_s": dt, "compress_s": s["compress_s"], "comm_s": s["comm_s"],
                             "bytes_sent": s["bytes_sent"], "bits": s.get("bits"), "loss": loss.item()})
        if (step + 1) % args["eval_every"] == 0 or step + 1 == args["steps"]:
            if rank == 0:  # the clock is paused while rank 0 evaluates
                rec["curve"].append({"step": step + 1, "time_s": clock, "acc": evaluate()})
            dist.barrier()
    rec["net_bytes"] = _net_bytes() - net0
    rec["loadavg"] = os.getloadavg()
    if rank == 0:
        with open(out_file, "w") as f:
            json.dump(rec, f)
    dist.barrier()
    dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _shape_loopback(rate):
    """Inside the private namespace: lo up at MTU 1500, token bucket at ``rate``. Returns a note."""
    cmds = [["ip", "link", "set", "lo", "up", "mtu", "1500"],
            # limit (queue bytes) instead of latency: a deep queue, so tbf delays packets rather than drops them
            ["tc", "qdisc", "add", "dev", "lo", "root", "tbf", "rate", rate, "burst", "64kb", "limit", "8mb"]]
    for cmd in cmds:
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            return f"shaping failed ({' '.join(cmd)}: {out.stderr.strip()}): unshaped loopback"
    qdisc = subprocess.run(["tc", "qdisc", "show", "dev", "lo"], capture_output=True, text=True).stdout.strip()
    return f"private netns, lo mtu 1500, {qdisc}"


def run_inner(args):
    """Runs every method at one link setting (we are already inside the namespace, or unshaped)."""
    import torch.multiprocessing as mp
    from tqdm import tqdm

    rate = args._inner
    note = _shape_loopback(rate) if rate != "unshaped" else "unshaped loopback (no unshare/tc)"
    print(f"[{rate}] {note}", flush=True)
    results = {"rate": rate, "network": note, "methods": {}}
    for label in tqdm(args.methods.split(","), desc=f"methods @ {rate}"):
        out_file = os.path.join(args.out, f"_run_{rate}_{label}.json")
        mp.spawn(_worker, args=(args.workers, _free_port(), METHODS[label][1], vars(args), out_file),
                 nprocs=args.workers, join=True)
        with open(out_file) as f:
            results["methods"][label] = json.load(f)
        os.remove(out_file)
    with open(os.path.join(args.out, f"raw_{rate}.json"), "w") as f:
        json.dump(results, f)


# ---------------------------------------------------------------- outer driver and report
def summarise(rec, target, warmup=5):
    steps = rec["steps"][warmup:]  # skip DDP's first steps (bucket rebuild, connection setup)
    n = len(steps)
    mean = lambda k: sum(s[k] for s in steps) / n  # noqa: E731
    reach = next((c["time_s"] for c in rec["curve"] if c["acc"] >= target), None)
    reach_step = next((c["step"] for c in rec["curve"] if c["acc"] >= target), None)
    step_s, comp, wire = mean("step_s"), mean("compress_s"), mean("comm_s")
    return {"payload_bytes": mean("bytes_sent"), "net_bytes": rec["net_bytes"] / len(rec["steps"]),
            "step_ms": 1e3 * step_s, "compress_ms": 1e3 * comp, "wire_ms": 1e3 * wire,
            "compute_ms": 1e3 * max(step_s - comp - wire, 0.0), "time_to_target_s": reach, "steps_to_target": reach_step,
            "final_acc": rec["curve"][-1]["acc"], "train_s": rec["curve"][-1]["time_s"],
            "loadavg": rec["loadavg"]}


def report(args, all_results):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    lines = [f"# Gradient compression: time to {args.target:.0%} test accuracy, LeNet-5 / MNIST, "
             f"{args.workers} gloo workers\n",
             f"Hardware: 2-core x86 CPU (shared with other jobs), torch {torch.__version__} CPU, "
             f"{args.steps} steps, batch {args.batch}/worker, SGD lr {args.lr} momentum 0.9, seed {args.seed}. "
             "Test split: first {0} images of MNIST's test set.\n".format(args.test_size),
             "payload = bytes one rank puts into the collective per step (what the compressor emits; "
             "PowerSGD: not counted by the wrapper); net = bytes through the namespace's loopback per step, "
             "all ranks, TCP/IP headers included. step = wall time of forward+backward+update; wire = collective "
             "launch to completion (overlaps backward, includes waiting for slower ranks); compute = step - "
             "compress - wire. Clock paused during evaluation.\n"]
    fig, axes = plt.subplots(1, len(all_results), figsize=(6.5 * len(all_results), 4.5), squeeze=False)
    for ax, res in zip(axes[0], all_results):
        rate = res["rate"]
        lines += [f"\n## Link: {rate} ({res['network']})\n",
                  "| method | payload B/step | vs fp32 | net B/step | step ms | compute ms | compress ms | wire ms "
                  f"| time to {args.target:.0%} (s) | final acc | load avg (1/5/15 min) |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        summ = {k: summarise(v, args.target) for k, v in res["methods"].items()}
        res["summary"] = summ
        fp32 = summ.get("fp32")
        for key, s in summ.items():
            label = METHODS[key][0]
            ratio = f"{fp32['payload_bytes'] / s['payload_bytes']:.1f}x" if fp32 and s["payload_bytes"] else "-"
            pay = f"{s['payload_bytes']:.0f}" if s["payload_bytes"] else "n/a"
            ttt = f"{s['time_to_target_s']:.1f}" if s["time_to_target_s"] is not None else "not reached"
            lines.append(f"| {label} | {pay} | {ratio} | {s['net_bytes']:.0f} | {s['step_ms']:.1f} | "
                         f"{s['compute_ms']:.1f} | {s['compress_ms']:.1f} | {s['wire_ms']:.1f} | {ttt} | "
                         f"{s['final_acc']:.4f} | {' / '.join(f'{x:.2f}' for x in s['loadavg'])} |")
            curve = res["methods"][key]["curve"]
            ax.plot([c["time_s"] for c in curve], [c["acc"] for c in curve], label=label, marker=".")
        ax.axhline(args.target, color="gray", ls=":", lw=1)
        ax.set(title=f"LeNet-5/MNIST, {args.workers} workers, {rate}", xlabel="training wall-clock (s)",
               ylabel="test accuracy", ylim=(max(0.0, args.target - 0.25), 1.0))
        ax.legend(fontsize=7)
        lines += _verdict(summ, args.target, rate)
    fig.tight_layout()
    png = os.path.join(args.out, "time_to_accuracy.png")
    fig.savefig(png, dpi=120)
    md = os.path.join(args.out, "time_to_accuracy.md")
    with open(md, "w") as f:
        f.write("\n".join(lines) + f"\n\n![accuracy vs wall-clock](time_to_accuracy.png)\n\nCommand: "
                f"`python benchmarks/comm/bench_time_to_accuracy.py {' '.join(sys.argv[1:])}`\n")
    with open(os.path.join(args.out, "time_to_accuracy.json"), "w") as f:
        json.dump({"args": vars(args), "results": all_results}, f, indent=1)
    print("\n".join(lines))
    print(f"wrote {md}, {png}")


def _verdict(summ, target, rate):
    fp32, ecq, psgd = summ.get("fp32"), summ.get("ecq2"), summ.get("powersgd")
    if not (fp32 and ecq):
        return []
    ratio = fp32["payload_bytes"] / ecq["payload_bytes"]
    gap = 100 * (fp32["final_acc"] - ecq["final_acc"])  # negative: ECQ ends above fp32
    out = ["", f"Targets (ECQ-SGD 2-bit): bytes {ratio:.1f}x fewer than fp32 (target >= 32x: "
               f"{'met' if ratio >= 32 else 'NOT met'}); final accuracy {gap:+.2f} pt below fp32 (target <= 0.3: "
               f"{'met' if gap <= 0.3 else 'NOT met'})"]
    t_e, t_f = ecq["time_to_target_s"], fp32["time_to_target_s"]
    if t_e is not None and t_f is not None:
        verdict = ("met" if t_f / t_e >= 4 else "NOT met") if rate == "100mbit" else "the 4x target is for 100mbit"
        out.append(f"; time to {target:.0%}: {t_f / t_e:.2f}x sooner than fp32 (target >= 4x at 100mbit: {verdict})")
    else:
        out.append(f"; time to target: ECQ {t_e}, fp32 {t_f} (None = not reached)")
    if psgd and t_e is not None:
        t_p = psgd["time_to_target_s"]
        out.append(f"; vs PowerSGD: {'sooner' if t_p is None or t_e < t_p else 'NOT sooner'} "
                   f"({t_e:.1f} s vs {t_p if t_p is None else round(t_p, 1)} s).")
    return ["".join(out)]


def main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    if args._inner:
        run_inner(args)
        return 0
    rates = args.rates.split(",")
    can_shape = not args.no_shape and all(shutil.which(t) for t in ("unshare", "tc", "ip"))
    if not can_shape:
        print("unshare/tc/ip unavailable or --no-shape: falling back to UNSHAPED loopback "
              "(the link will not limit the run)", flush=True)
        rates = ["unshaped"]
    all_results = []
    for rate in rates:
        passed = list(sys.argv[1:] if argv is None else argv)
        inner = [sys.executable, os.path.abspath(__file__), *passed, "--_inner", rate]
        cmd = ["unshare", "-n", *inner] if rate != "unshaped" else inner
        out = subprocess.run(cmd)
        if out.returncode != 0 and rate != "unshaped":
            print(f"unshare -n failed (rc {out.returncode}): falling back to UNSHAPED loopback", flush=True)
            rate = "unshaped"
            subprocess.run([*inner[:-1], rate], check=True)
        with open(os.path.join(args.out, f"raw_{rate}.json")) as f:
            all_results.append(json.load(f))
    report(args, all_results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
