"""Ranking quality of a weight-sharing supernet on NAS-Bench-201: plain WS vs DI-WS, 3 seeds.

Each run trains the cell-space supernet with single-path sampling on a class-balanced CIFAR-10 subset
of cifar10_train.npz, estimates the same ``--cells`` cells (sampled uniformly from the 15,625, fixed
for every run) by BN-recalibrated accuracy on a held-out class-balanced split of cifar10_train.npz,
and compares the estimates with the 200-epoch CIFAR-10 test accuracies of nats_bench_tss.csv
(Kendall tau, Spearman rho, top-10 overlap). It then runs an evolutionary search on the supernet and
reports the ground truth of the cell it picks. Runs are resumable chunks (``--max-minutes``):

    python benchmarks/nas/bench_rank.py run --method ws --seed 0 --max-minutes 14   # repeat until "done"
    python benchmarks/nas/bench_rank.py report      # rank.json + rank.md (with published_tau.json beside)
"""
import argparse
import json
import os
import random
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import cifar_subsets  # noqa: E402

from slimkit.nas import DIConfig, SupernetConfig, SupernetTrainer, get_space  # noqa: E402
from slimkit.nas.ranking import kendall_tau, read_nats_tss, spearman_rho, topk_overlap  # noqa: E402
from slimkit.nas.search import Search, SearchConfig  # noqa: E402
from slimkit.nas.supernet import ArchEvaluator  # noqa: E402

DATA = os.path.join(ROOT, "..", "shared", "data")
OPTIMUM = 94.37


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("action", choices=["run", "report"])
    p.add_argument("--method", choices=["ws", "di"], default="ws")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", default=os.path.join(DATA, "cifar10_train.npz"))
    p.add_argument("--gt", default=os.path.join(DATA, "nats_bench_tss.csv"))
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "nas", "rank"))
    p.add_argument("--C", type=int, default=8, help="proxy skeleton channels (published: 16)")
    p.add_argument("--N", type=int, default=1, help="proxy cells per stage (published: 5)")
    p.add_argument("--steps", type=int, default=4500)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--train-images", type=int, default=20000)
    p.add_argument("--cells", type=int, default=200)
    p.add_argument("--eval-images", type=int, default=500)
    p.add_argument("--calib-images", type=int, default=256)
    p.add_argument("--di-opts", default="alpha=0.01,decay=0.05,scope=all", help="DIConfig k=v,... for --method di (default: the arm that met the PD target)")
    p.add_argument("--search-population", type=int, default=20)
    p.add_argument("--search-generations", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--max-minutes", type=float, default=14.0)
    return p.parse_args(argv)


def data(args):
    tx, ty, vx, vy = cifar_subsets(args.data, args.train_images, args.eval_images)
    calib = tx[torch.randperm(len(ty), generator=torch.Generator().manual_seed(0))[:args.calib_images]]
    return tx, ty, calib, vx, vy


def sampled_cells(gt, n):
    return sorted(random.Random(2024).sample(range(len(gt)), n))  # the same cells for every run


def _json(path, default):
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    return default


def _dump(path, obj):
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(path + ".tmp", path)


def run(args):
    from slimkit.train.config import parse_options

    torch.set_num_threads(args.threads)
    deadline = time.time() + 60 * args.max_minutes
    space = get_space("nb201", C=args.C, N=args.N)
    run_dir = os.path.join(args.out, f"{args.method}_s{args.seed}")
    os.makedirs(run_dir, exist_ok=True)
    gt = read_nats_tss(args.gt)
    di = DIConfig(enabled=args.method == "di", seed=args.seed,
                  **(parse_options(args.di_opts, "--di-opts") if args.method == "di" else {}))
    cfg = SupernetConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed, di=di,
                         checkpoint_every=100)
    tx, ty, calib, vx, vy = data(args)
    torch.manual_seed(args.seed)
    supernet = space.supernet(10)
    trainer = SupernetTrainer(supernet, tx, ty, cfg, checkpoint_path=os.path.join(run_dir, "supernet.pt"))
    trainer.load()
    while trainer.step_count < cfg.steps and time.time() < deadline:
        trainer.run(stop_after=50, progress=False)
        cpu_s = "" if trainer.train_cpu_seconds is None else f" ({trainer.train_cpu_seconds:.0f} s CPU)"
        print(f"step {trainer.step_count}/{cfg.steps}, {trainer.train_seconds:.0f} s{cpu_s}, loss "
              f"{sum(h['loss'] for h in trainer.history[-50:]) / 50:.3f}, load {os.getloadavg()[0]:.2f}", flush=True)
    if trainer.step_count < cfg.steps:
        return print("partial: training")
    train_json = os.path.join(run_dir, "train.json")
    if not os.path.exists(train_json):  # written once, when training ends (later chunks only estimate/search)
        from slimkit.profile.analysis import cpu_name

        _dump(train_json, {"step": trainer.step_count, "train_seconds": trainer.train_seconds,
                           "train_cpu_seconds": trainer.train_cpu_seconds, "cpu": cpu_name(),
                           "torch": torch.__version__, "threads": args.threads, "di": vars(di),
                           "loadavg": os.getloadavg()})
    evaluate = ArchEvaluator(supernet, calib, vx, vy)
    est_path = os.path.join(run_dir, "estimates.json")
    est = _json(est_path, {})
    for k in sampled_cells(gt, args.cells):
        if str(k) in est:
            continue
        if time.time() > deadline:
            _dump(est_path, est)
            return print(f"partial: {len(est)}/{args.cells} cells estimated")
        t0 = time.time()
        arch = space.arch(space.decode_body(gt[k]["arch"]))
        est[str(k)] = {"arch": gt[k]["arch"], "estimate": evaluate(arch), "truth": gt[k]["cifar10"],
                       "seconds": time.time() - t0}
        if len(est) % 10 == 0:
            _dump(est_path, est)
    _dump(est_path, est)
    search_path = os.path.join(run_dir, "search.json")
    if os.path.exists(search_path):
        return print("done")
    by_arch = {gt[k]["arch"]: gt[k]["cifar10"] for k in range(len(gt))}
    cache = {v["arch"]: v["estimate"] for v in est.values()}

    def fitness(arch):
        body = arch.encode().split(":", 1)[1].split("?")[0]
        if body not in cache:
            cache[body] = evaluate(arch)
        return cache[body]

    scfg = SearchConfig("evolution", args.search_population, args.search_generations, parents=10,
                        mutations=args.search_population // 2, crossovers=args.search_population // 2, seed=args.seed)
    result = Search(space, fitness, None, {}, scfg, os.path.join(run_dir, "search_state.json")).run(progress=False)
    if time.time() > deadline + 600:
        print("warning: search ran past the chunk deadline", flush=True)
    best = result.best
    body = best["spec"].split(":", 1)[1].split("?")[0]
    _dump(search_path, {"best_spec": best["spec"], "best_estimate": best["accuracy"], "best_truth": by_arch[body],
                        "evaluated": len(result.history)})
    print("done")


def summarize(run_dir, gt_best=OPTIMUM):
    est = _json(os.path.join(run_dir, "estimates.json"), {})
    if not est:
        return None
    e = [v["estimate"] for v in est.values()]
    t = [v["truth"] for v in est.values()]
    top = max(est.values(), key=lambda v: v["estimate"])
    ckpt = _json(os.path.join(run_dir, "train.json"), None)  # small; the checkpoint is not committed
    if ckpt is None:
        ckpt = {k: v for k, v in torch.load(os.path.join(run_dir, "supernet.pt"), map_location="cpu",
                                            weights_only=True).items()
                if k in ("step", "train_seconds", "train_cpu_seconds")}
    search = _json(os.path.join(run_dir, "search.json"), {})
    return {"cells": len(est), "kendall_tau": float(kendall_tau(e, t)), "spearman": spearman_rho(e, t),
            "top10_overlap": topk_overlap(e, t, 10), "train_s": ckpt["train_seconds"], "steps": ckpt["step"],
            "step_ms": 1000 * ckpt["train_seconds"] / ckpt["step"],
            "cpu_step_ms": (1000 * ckpt["train_cpu_seconds"] / ckpt["step"]) if ckpt.get("train_cpu_seconds") else None,
            # ws_s0 (4500 steps) predates the cpu field; it ran in the session whose PD timing recorded AMD EPYC
            "cpu": ckpt.get("cpu", "not recorded (AMD EPYC)"),
            "train_load1": (ckpt.get("loadavg") or [None])[0],
            "eval_s_per_cell": sum(v["seconds"] for v in est.values()) / len(est),
            "top_estimated_truth": top["truth"], "search_best_truth": search.get("best_truth"),
            "search_best_spec": search.get("best_spec"), "search_evaluated": search.get("evaluated")}


def report(args):
    import statistics

    rows, per = [], {}
    for method in ("ws", "di"):
        for seed in range(10):
            d = os.path.join(args.out, f"{method}_s{seed}")
            if os.path.isdir(d):
                s = summarize(d)
                if s:
                    per.setdefault(method, []).append({"seed": seed, **s})
    for method, runs in per.items():
        def ms(key):
            vals = [r[key] for r in runs if r[key] is not None]
            if not vals:
                return None, None
            return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)
        row = {"method": {"ws": "plain WS", "di": "DI-WS"}[method], "seeds": len(runs)}
        for key in ("kendall_tau", "spearman", "top10_overlap", "train_s", "top_estimated_truth", "search_best_truth"):
            row[key], row[key + "_sd"] = ms(key)
        rows.append(row)
    _dump(os.path.join(args.out, "rank.json"), {"summary": rows, "runs": per, "settings": vars(args)})
    text = _markdown(args, rows, per)
    with open(os.path.join(args.out, "rank.md"), "w") as f:
        f.write(text)
    print(text)


def _step_cost(per):
    """Lines on equal training time: DI's CPU cost per step vs plain WS's on the same CPU, and how many
    steps WS would have had in DI's CPU time (the runs themselves are at equal steps)."""
    import statistics

    def cpu_ms(method, cpu):
        vals = [r["cpu_step_ms"] for r in per.get(method, []) if r.get("cpu_step_ms") and r["cpu"] == cpu]
        return statistics.fmean(vals) if vals else None, len(vals)

    out = []
    for cpu in sorted({r["cpu"] for rs in per.values() for r in rs}):
        (ws, nws), (di, ndi) = cpu_ms("ws", cpu), cpu_ms("di", cpu)
        if ws and di:
            steps = [r["steps"] for r in per["di"] if r.get("cpu_step_ms") and r["cpu"] == cpu]
            out.append(f"Equal training time ({cpu}, process CPU time, 1 thread): plain WS {ws:.0f} ms/step "
                       f"({nws} run(s)), DI-WS {di:.0f} ms/step ({ndi} run(s)): DI costs {100 * (di / ws - 1):+.0f}% "
                       f"per step, so in DI's CPU time for {steps[0]:,} steps plain WS would have trained "
                       f"{round(steps[0] * di / ws):,} steps. The runs above compare equal steps.")
    return out + [""] if out else []


def _markdown(args, rows, per):
    from slimkit.report.table import to_markdown

    def pm(r, key, fmt="{:.3f}"):
        if r[key] is None:
            return "-"
        return fmt.format(r[key]) + (f" +- {fmt.format(r[key + '_sd'])}" if r["seeds"] > 1 else "")

    summary = [{"method": r["method"], "seeds": r["seeds"], "tau": pm(r, "kendall_tau"), "rho": pm(r, "spearman"),
                "top10": pm(r, "top10_overlap", "{:.2f}"), "train_s": pm(r, "train_s", "{:.0f}"),
                "top_est": pm(r, "top_estimated_truth", "{:.2f}"),
                "search": pm(r, "search_best_truth", "{:.2f}")} for r in rows]
    runs = [{"method": m, **r} for m, rs in per.items() for r in rs]
    text = [f"Ranking quality on NAS-Bench-201 (CIFAR-10 ground truth: nats_bench_tss.csv, 200-epoch test accuracy). "
            f"Proxy supernet nb201 C={args.C} N={args.N} (published skeleton: C=16, N=5), single-path training, "
            f"SGD lr {args.lr} cosine, batch {args.batch_size}, on a class-balanced {args.train_images}-image subset "
            f"of cifar10_train.npz; {args.cells} cells sampled uniformly (the same for every run) estimated by "
            f"BN-recalibrated ({args.calib_images} images) accuracy on {args.eval_images} held-out images. "
            f"Search = evolution (population {args.search_population}, {args.search_generations} generations) on "
            f"the supernet; its pick's ground truth vs the space's optimum {OPTIMUM}%. 1 thread, "
            f"OMP_NUM_THREADS=1, shared 2-vCPU machines (the CPU of each run in the per-run table), "
            f"torch {torch.__version__}. mean +- sd over seeds. step ms = wall time per training step (counts "
            f"waiting for a shared CPU); CPU ms = process CPU time per step (1 thread; recorded from the DI seed-0 "
            f"run on). Train time is only comparable between runs on the same CPU.", "",
            to_markdown(summary, ["method", "seeds", ("tau", "Kendall tau"), ("rho", "Spearman"),
                                  ("top10", "top-10 overlap"), ("train_s", "train s"),
                                  ("top_est", "truth of top-estimated %"), ("search", "truth of search pick %")]),
            "", "Per run:", "",
            to_markdown(runs, ["method", "seed", "steps", "cells", ("kendall_tau", "tau"), ("spearman", "rho"),
                               ("top10_overlap", "top-10"), ("train_s", "train s"), ("step_ms", "step ms"),
                               ("cpu_step_ms", "CPU ms/step"), "cpu", ("train_load1", "load1 at end"),
                               ("eval_s_per_cell", "s/cell"),
                               ("top_estimated_truth", "truth of top-estimated %"),
                               ("search_best_truth", "truth of search pick %"), ("search_evaluated", "evaluated")]),
            ""]
    text += _step_cost(per)
    pub = os.path.join(args.out, "published_tau.json")
    if os.path.exists(pub):
        with open(pub) as f:
            ref = json.load(f)
        prow = [{"estimator": name, "cells": label, **vals} for name, d in ref.items()
                for label, vals in d["rows"].items()]
        text += ["Published one-shot estimators, recomputed here on the same footing (tau-b vs the same ground "
                 "truth; `python benchmarks/nas/published_tau.py`): the CIFAR-10 accuracies that few-shot-NAS "
                 "(Zhao et al., ICML 2021; github.com/aoiang/few-shot-NAS, Few-Shot_NasBench201/supernet_info) "
                 "release for every cell from their full-size one-shot and few-shot supernets.", "",
                 to_markdown(prow, ["estimator", "cells", ("kendall_tau", "Kendall tau"), ("spearman", "Spearman"),
                                    ("top10_overlap", "top-10 overlap")]), ""]
    return "\n".join(text)


if __name__ == "__main__":
    a = parse()
    run(a) if a.action == "run" else report(a)
