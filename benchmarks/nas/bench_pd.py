"""Performance disturbance (PD), measured: how much training later architectures costs earlier ones.

A NAS-Bench-201-cell supernet is first trained with plain single-path weight sharing (shared by all
arms). Then K sampled architectures are trained one after another, m steps each; after each, every
earlier architecture is re-evaluated (BN recalibrated, held-out class-balanced split of
cifar10_train.npz). PD = mean accuracy drop of an earlier architecture between right after its own
training and after each later one. Arms: plain WS and DI-WS at several alpha, same sequence, same
batches. ``timing`` mode times steps with and without DI, interleaved (run it under an exclusive lock):

    python benchmarks/nas/bench_pd.py run        # shared lock, ~15-25 min on 2 loaded cores
    python benchmarks/nas/bench_pd.py timing     # exclusive lock, ~2 min
    python benchmarks/nas/bench_pd.py report     # pd.md from every pd*.json and timing_*.json in --out
"""
import argparse
import copy
import json
import os
import random
import statistics
import sys
import time

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import cifar_subsets  # noqa: E402

from slimkit._io import atomic_write, write_text  # noqa: E402
from slimkit.nas import DIConfig, DisturbanceImmune, SupernetConfig, SupernetTrainer, get_space  # noqa: E402
from slimkit.nas.supernet import ArchEvaluator  # noqa: E402

DATA = os.path.join(ROOT, "..", "shared", "data")


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("action", choices=["run", "timing", "report"])
    p.add_argument("--data", default=os.path.join(DATA, "cifar10_train.npz"))
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "nas", "pd"))
    p.add_argument("--C", type=int, default=8)
    p.add_argument("--N", type=int, default=1)
    p.add_argument("--warmup-steps", type=int, default=1000)
    p.add_argument("--archs", type=int, default=6, help="K architectures trained in sequence")
    p.add_argument("--steps-per-arch", type=int, default=100)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--train-images", type=int, default=5000)
    p.add_argument("--eval-images", type=int, default=500)
    p.add_argument("--arms", default="all:0.01,all:0.001,ops:0.01",
                   help="DI arms SCOPE:ALPHA[:pre|post],... (scope ops = searched operations only, all = every layer; "
                        "pre = record the training forwards' inputs instead of a forward after training)")
    p.add_argument("--max-arms", type=int, default=99, help="arms to run in this invocation (the rest resume later)")
    p.add_argument("--decay", type=float, default=0.05)
    p.add_argument("--samples", type=int, default=256, help="DI input vectors per layer per architecture")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--timing-steps", type=int, default=30)
    p.add_argument("--timing-scope", default="all", help="DI scope timed (the arm that met the PD target)")
    p.add_argument("--timing-record", default="post", choices=("post", "pre"), help="DI's record mode timed")
    return p.parse_args(argv)


def data(args):
    return cifar_subsets(args.data, args.train_images, args.eval_images)


def sequence(space, k, seed):
    """K distinct architectures with at least one conv on every path (a none/pool-only net cannot train)."""
    rng, out = random.Random(1000 + seed), []
    while len(out) < k:
        a = space.sample(rng)
        if sum(v.startswith("nor_conv") for v in a.values) >= 3 and a not in out:
            out.append(a)
    return out


def _per_seed(args, stem, ext):
    """``stem.ext`` for seed 0 (the files earlier runs wrote), ``stem_s<seed>.ext`` for the others: parallel seeds
    must not share a file (report reads every pd*.json)."""
    return os.path.join(args.out, f"{stem}.{ext}" if args.seed == 0 else f"{stem}_s{args.seed}.{ext}")


def warm_supernet(args, space, tx, ty):
    path = _per_seed(args, "warmup", "pt")
    torch.manual_seed(args.seed)
    supernet = space.supernet(10)
    cfg = SupernetConfig(steps=args.warmup_steps, batch_size=args.batch_size, lr=0.05, seed=args.seed,
                         checkpoint_every=100)
    SupernetTrainer(supernet, tx, ty, cfg, checkpoint_path=path).run(progress=False)
    return supernet


def batches(tx, ty, bs, n, seed):
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        idx = torch.randint(len(ty), (bs,), generator=g)
        yield tx[idx], ty[idx]


def run_arm(args, base, archs, tx, ty, evaluate_fn, di_cfg):
    supernet = copy.deepcopy(base)
    evaluate = ArchEvaluator(supernet, *evaluate_fn)
    opt = torch.optim.SGD(supernet.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    di = DisturbanceImmune(opt, supernet, di_cfg)
    before, after, later = [], [], []  # later[k][j]: accuracy of arch j after arch k's training
    for k, arch in enumerate(archs):
        before.append(evaluate(arch))
        supernet.set_arch(arch)
        for step, (x, y) in enumerate(batches(tx, ty, args.batch_size, args.steps_per_arch, 100 * k + args.seed)):
            supernet.train()
            di.zero_grad()
            F.cross_entropy(supernet(x), y).backward()
            di.step()
        if di.enabled:
            if di.config.record == "post":  # "pre" recorded the training forwards' inputs already
                with torch.no_grad(), di.recording_inputs():  # the architecture as trained
                    for x, _ in batches(tx, ty, 32, 4, 7 + k):
                        supernet(x)
            di.end_architecture()
        after.append(evaluate(arch))
        later.append([evaluate(a) for a in archs[:k]])
        print(f"  arch {k}: {before[-1]:.1f} -> {after[-1]:.1f}; earlier now "
              f"{[round(v, 1) for v in later[-1]]}", flush=True)
    drops = [after[j] - later[k][j] for k in range(len(archs)) for j in range(k)]
    final = [after[j] - later[-1][j] for j in range(len(archs) - 1)]
    return {"before": before, "after": after, "later": later, "pd_mean": statistics.fmean(drops),
            "pd_final": statistics.fmean(final), "own_gain": statistics.fmean(a - b for a, b in zip(after, before))}


def run(args):
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    space = get_space("nb201", C=args.C, N=args.N)
    tx, ty, vx, vy = data(args)
    g = torch.Generator().manual_seed(1)
    calib = tx[torch.randperm(len(ty), generator=g)[:256]]
    base = warm_supernet(args, space, tx, ty)
    archs = sequence(space, args.archs, args.seed)
    path = _per_seed(args, "pd", "json")
    results = {"settings": vars(args), "archs": [a.encode() for a in archs], "arms": {}}
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        if old["archs"] == results["archs"]:
            results["arms"] = old["arms"]
    arms = [("plain WS", DIConfig(enabled=False))]
    for item in args.arms.split(","):
        scope, alpha, *record = item.split(":")  # SCOPE:ALPHA[:pre|post]
        record = record[0] if record else "post"
        name = f"DI-WS {scope} alpha={alpha}" + (" record=pre" if record == "pre" else "")
        arms.append((name, DIConfig(alpha=float(alpha), decay=args.decay, scope=scope, samples=args.samples,
                                    seed=args.seed, record=record)))
    done = 0
    for name, cfg in arms:
        if name in results["arms"] or done >= args.max_arms:
            continue
        print(name, flush=True)
        t0 = time.time()
        results["arms"][name] = run_arm(args, base, archs, tx, ty, (calib, vx, vy), cfg)
        results["arms"][name].update(di=vars(cfg), seconds=time.time() - t0, loadavg=os.getloadavg())
        done += 1
        with atomic_write(path) as f:
            json.dump(results, f, indent=1)
    plain = results["arms"].get("plain WS")
    print(f"{'arm':28s} {'PD mean':>8s} {'PD final':>9s} {'own gain':>9s} {'PD reduction':>13s}")
    for name, r in results["arms"].items():
        red = plain["pd_mean"] / r["pd_mean"] if plain and r["pd_mean"] > 0 else float("inf")
        print(f"{name:28s} {r['pd_mean']:8.2f} {r['pd_final']:9.2f} {r['own_gain']:9.2f} {red:12.2f}x")
    missing = [n for n, _ in arms if n not in results["arms"]]
    print("done" if not missing else f"partial: {len(missing)} arms left")


def timing(args):
    """Median step time, plain vs DI, interleaved step by step, in two regimes: the PD protocol (fold once
    per architecture) and single-path supernet training (fold and record after every step)."""
    torch.set_num_threads(args.threads)
    space = get_space("nb201", C=args.C, N=args.N)
    tx, ty, _, _ = data(args)
    torch.manual_seed(0)
    base = space.supernet(10)
    rows = {}
    for regime in ("pd-protocol", "spos"):
        nets = {"plain": copy.deepcopy(base), "di": copy.deepcopy(base)}
        opts = {k: torch.optim.SGD(n.parameters(), lr=0.02, momentum=0.9) for k, n in nets.items()}
        dis = {k: DisturbanceImmune(opts[k], nets[k], DIConfig(
            enabled=k == "di", scope=args.timing_scope, samples=args.samples if regime == "pd-protocol" else 64,
            record=args.timing_record))
            for k in nets}
        times = {k: [] for k in nets}
        rng = random.Random(0)
        for step, (x, y) in enumerate(batches(tx, ty, args.batch_size, args.timing_steps + 3, 5)):
            arch = space.sample(rng) if regime == "spos" or step % 10 == 0 else arch
            for k in (("plain", "di") if step % 2 == 0 else ("di", "plain")):
                net, di = nets[k], dis[k]
                t0 = time.perf_counter()
                net.set_arch(arch).train()
                di.zero_grad()
                F.cross_entropy(net(x), y).backward()
                di.step()
                if di.enabled and (regime == "spos" or step % 10 == 9):
                    if args.timing_record == "post":  # "pre" recorded the training forward's inputs already
                        with torch.no_grad(), di.recording_inputs():
                            net(x[:8])
                    di.end_architecture()
                if step >= 3:  # warm-up
                    times[k].append(1e3 * (time.perf_counter() - t0))
        med = {k: statistics.median(v) for k, v in times.items()}
        # the steps are paired (same architecture and batch): the median of the per-step ratio is far less noisy
        # than the ratio of medians, whose spread is mostly the architectures' own
        paired = statistics.median(d / p for d, p in zip(times["di"], times["plain"]))
        rows[regime] = {"plain_ms": med["plain"], "di_ms": med["di"], "overhead_pct": 100 * (med["di"] / med["plain"] - 1),
                        "paired_overhead_pct": 100 * (paired - 1),
                        "total_overhead_pct": 100 * (sum(times["di"]) / sum(times["plain"]) - 1),
                        "plain_iqr_ms": _iqr(times["plain"]), "di_iqr_ms": _iqr(times["di"]), "steps": args.timing_steps}
        print(regime, rows[regime], flush=True)
    from slimkit.profile.analysis import cpu_name

    out = {"rows": rows, "cpu": cpu_name(), "torch": torch.__version__, "threads": args.threads,
           "loadavg": os.getloadavg(), "settings": vars(args)}
    os.makedirs(args.out, exist_ok=True)
    suffix = "" if args.timing_record == "post" else "_" + args.timing_record
    with atomic_write(os.path.join(args.out, f"timing_{args.timing_scope}{suffix}.json")) as f:
        json.dump(out, f, indent=1)


def _iqr(v):
    q = statistics.quantiles(v, n=4)
    return q[2] - q[0]


def report(args):
    """pd.md: one table per PD run file (pd*.json) and the step-time table per DI scope (timing_*.json)."""
    import glob

    from slimkit.report.table import to_markdown

    text = ["Performance disturbance (PD) on a NAS-Bench-201-cell supernet: after each later architecture's "
            "training, the accuracy drop of every earlier architecture (held-out class-balanced split of "
            "cifar10_train.npz, BN recalibrated). PD mean = mean over all (earlier, later) pairs; PD final = mean "
            "drop after the last architecture; own gain = an architecture's accuracy gain from its own training. "
            "Negative PD = earlier architectures got better. Target: PD reduced >= 2x at <= 20% extra step time.", ""]
    for path in sorted(glob.glob(os.path.join(args.out, "pd*.json"))):
        with open(path) as f:
            res = json.load(f)
        st = res["settings"]
        plain = res["arms"].get("plain WS")
        rows = []
        for name, r in res["arms"].items():
            if plain is None or plain["pd_mean"] <= 0:
                red = "n/a (plain WS shows no PD)"
            elif r["pd_mean"] <= 0:
                red = "PD removed (<= 0)"
            else:
                red = f"{plain['pd_mean'] / r['pd_mean']:.2f}x"
            rows.append({"arm": name, "pd_mean": r["pd_mean"], "pd_final": r["pd_final"], "own_gain": r["own_gain"],
                         "reduction": red, "seconds": r.get("seconds"),
                         "load1": (r.get("loadavg") or [None])[0]})
        text += [f"### {os.path.basename(path)}", "",
                 f"nb201 C={st['C']} N={st['N']}; plain-WS warm-up {st['warmup_steps']} steps; {st['archs']} "
                 f"architectures x {st['steps_per_arch']} steps (SGD lr {st['lr']}, batch {st['batch_size']}); "
                 f"{st['train_images']} training / {st['eval_images']} held-out images; DI decay {st['decay']}, "
                 f"{st['samples']} input vectors per layer per architecture; seed {st['seed']}, 1 run. "
                 f"Accuracy resolution 0.2 pt (500 images).", "",
                 to_markdown(rows, ["arm", ("pd_mean", "PD mean (pt)"), ("pd_final", "PD final (pt)"),
                                    ("own_gain", "own gain (pt)"), ("reduction", "PD reduction vs plain"),
                                    ("seconds", "arm s"), ("load1", "load")]), ""]
    timing = []
    for path in sorted(glob.glob(os.path.join(args.out, "timing_*.json"))):
        with open(path) as f:
            t = json.load(f)
        for regime, r in t["rows"].items():
            timing.append({"scope": t["settings"]["timing_scope"],
                           "record": t["settings"].get("timing_record", "post"),  # files before the option: post
                           "regime": regime, "paired_overhead_pct": "-", "total_overhead_pct": "-", **r, "cpu": t["cpu"], "torch": t["torch"], "load1": t["loadavg"][0]})
    if timing:
        text += ["### Step time, plain vs DI (median of interleaved steps, 1 thread, batch 64)", "",
                 "pd-protocol: projectors folded once per 10 steps (the PD run folds once per 100-step architecture, so "
                 "this overstates its cost); "
                 "spos: a new architecture and a fold + recording forward after every step (single-path supernet "
                 "training; record=pre: no recording forward, the training forward's inputs are folded). "
                 "Overhead three ways: ratio of the two medians, median of the per-step ratio (steps are paired: "
                 "same architecture and batch), ratio of total time. The IQRs are mostly the architectures' spread. "
                 "`python benchmarks/nas/bench_pd.py timing --timing-scope SCOPE --timing-record post|pre "
                 "--timing-steps N`.", "",
                 to_markdown(timing, ["scope", "record", "regime", ("plain_ms", "plain ms"), ("di_ms", "DI ms"),
                                      ("overhead_pct", "overhead % (of medians)"),
                                      ("paired_overhead_pct", "overhead % (paired median)"),
                                      ("total_overhead_pct", "overhead % (total time)"), ("plain_iqr_ms", "plain IQR ms"),
                                      ("di_iqr_ms", "DI IQR ms"), "steps", "cpu", "torch", "load1"]), ""]
    write_text(os.path.join(args.out, "pd.md"), "\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    a = parse()
    {"run": run, "timing": timing, "report": report}[a.action](a)
