"""A zero-cost score beside the supernet on NAS-Bench-201: how well NASWOT ranks the cells bench_rank.py ranks.

Scores the same ``--cells`` cells (fixed sample of the 15,625) with ``slimkit.nas.zero_cost.naswot``: the
published network (C=16, N=5) at initialisation, one batch of ``--batch`` training images (cifar10_train.npz;
no test image), per seed a new initialisation and batch. Reports, against the 200-epoch CIFAR-10 test accuracy
of nats_bench_tss.csv: Kendall tau, Spearman rho, top-10 overlap and the true accuracy of the top-scored cell
(random search with N = --cells); and for every supernet run of ``--rank-dirs`` (bench_rank.py's estimates) the
same for the mean of the two ranks (supernet estimate, NASWOT score of the run's seed), equal weights. Then, per
``--search-seeds``, bench_rank.py's evolution (same population and generations) over all 15,625 cells with NASWOT
as the fitness, and the ground truth of its pick; per ``--combined-seeds``, the same evolution with the rank mean
of NASWOT and the DI supernet as the fitness (needs bench_rank.py's supernet.pt of that seed). Resumable (scores
and search states cached per seed):

    python benchmarks/nas/bench_zero_cost.py --seeds 0,1,2 [--combined-seeds 0,1,2]
"""
import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import cifar_subsets  # noqa: E402
from bench_rank import DATA, OPTIMUM, sampled_cells  # noqa: E402

from slimkit._io import atomic_write, write_text  # noqa: E402
from slimkit.nas import get_space  # noqa: E402
from slimkit.nas.ranking import kendall_tau, ranks, read_nats_tss, spearman_rho, topk_overlap  # noqa: E402
from slimkit.nas.zero_cost import naswot  # noqa: E402
from slimkit.profile.analysis import cpu_name  # noqa: E402

RESULTS = os.path.join(ROOT, "benchmarks", "results", "nas")


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=os.path.join(DATA, "cifar10_train.npz"))
    p.add_argument("--gt", default=os.path.join(DATA, "nats_bench_tss.csv"))
    p.add_argument("--cells", type=int, default=200)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--batch", type=int, default=128, help="images per score (the authors' 128)")
    p.add_argument("--C", type=int, default=16)
    p.add_argument("--N", type=int, default=5)
    p.add_argument("--rank-dirs", default=",".join(os.path.join(RESULTS, d) for d in ("rank", "rank_ws5000")))
    p.add_argument("--search-seeds", default="0,1,2", help="evolution on NASWOT over the whole space ('' = none)")
    p.add_argument("--combined-seeds", default="", help="evolution on the DI supernet + NASWOT percentile mean "
                   "(needs the rank runs' supernet.pt; '' = none)")
    p.add_argument("--combined-dir", default=os.path.join(RESULTS, "rank"))
    p.add_argument("--search-population", type=int, default=20)
    p.add_argument("--search-generations", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=os.path.join(RESULTS, "zero_cost"))
    return p.parse_args(argv)


def metrics(score, truth):
    best = int(np.argmax(score))
    return {"kendall_tau": kendall_tau(score, truth), "spearman": spearman_rho(score, truth),
            "top10_overlap": topk_overlap(score, truth, 10), "top_truth": truth[best]}


def seed_batch(images, seed, n):
    """The ``n`` images a seed scores with (its cell scores and its search see the same batch)."""
    return images[torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:n]]


def score_cells(args, seed, cells, gt, images):
    path = os.path.join(args.out, f"naswot_s{seed}.json")
    done = json.load(open(path)) if os.path.exists(path) else {}
    space = get_space("nb201", C=args.C, N=args.N)
    x = seed_batch(images, seed, args.batch)
    from tqdm import tqdm

    for k in tqdm([c for c in cells if str(c) not in done], desc=f"naswot seed {seed}"):
        torch.manual_seed(1000 * seed + k)
        t0 = time.process_time()
        s = naswot(space.build(space.arch(space.decode_body(gt[k]["arch"]))), x)
        done[str(k)] = {"score": s, "cpu_s": time.process_time() - t0}
        if len(done) % 20 == 0:
            _write_json(path, done)
    _write_json(path, done)
    return done


def _write_json(path, obj, **kw):
    with atomic_write(path) as f:  # an interrupted run leaves the last complete cache, never half a file
        json.dump(obj, f, **kw)


def _body(arch_or_spec):
    spec = arch_or_spec if isinstance(arch_or_spec, str) else arch_or_spec.encode()
    return spec.split(":", 1)[1].split("?")[0]


def _naswot_of(args, seed, gt, images):
    """``score(arch)``: NASWOT on the seed's batch, the network initialised per cell as in score_cells."""
    space = get_space("nb201", C=args.C, N=args.N)
    index = {r["arch"]: r["index"] for r in gt}
    x = seed_batch(images, seed, args.batch)

    def score(arch):
        torch.manual_seed(1000 * seed + index[_body(arch)])
        return naswot(space.build(arch), x)
    return score


def _evolve(args, seed, gt, fitness, state, kind):
    """bench_rank.py's evolution over all 15,625 cells with ``fitness``; the pick's ground truth and scoring CPU."""
    from slimkit.nas.search import Search, SearchConfig

    space = get_space("nb201", C=args.C, N=args.N)
    truth = {r["arch"]: r["cifar10"] for r in gt}
    cpu = []

    def timed(arch):
        t0 = time.process_time()
        f = fitness(arch)
        cpu.append(time.process_time() - t0)
        return f if np.isfinite(f) else -1e9  # the search sorts numbers; -inf = no distinct codes

    cfg = SearchConfig("evolution", args.search_population, args.search_generations, parents=10,
                       mutations=args.search_population // 2, crossovers=args.search_population // 2, seed=seed)
    result = Search(space, timed, None, {}, cfg, os.path.join(args.out, state)).run(progress=True)
    out = {"seed": seed, "kind": kind, "best_spec": result.best["spec"], "best_score": result.best["accuracy"],
           "best_truth": truth[_body(result.best["spec"])], "evaluated": len(result.history), "cpu_s": sum(cpu)}
    if len(cpu) < len(result.history):  # resumed: the scoring CPU of earlier runs is in the last results file
        earlier = [r for r in _earlier_searches(args) if r["seed"] == seed and r.get("kind", "naswot") == kind
                   and r["best_spec"] == out["best_spec"]]
        out["cpu_s"] = earlier[0]["cpu_s"] if earlier and not cpu else float("nan")
    return out


def search(args, seed, gt, images):
    """Evolution with NASWOT (seed's batch, per-cell initialisation) as the fitness."""
    return _evolve(args, seed, gt, _naswot_of(args, seed, gt, images), f"search_state_s{seed}.json", "naswot")


def _percentile(reference):
    """``p(v)``: the fraction of ``reference`` below v, ties counted half (the rank mean's scale for new cells)."""
    ref = np.sort(np.asarray(reference, dtype=float))
    return lambda v: (np.searchsorted(ref, v, "left") + np.searchsorted(ref, v, "right")) / (2.0 * len(ref))


def combined_search(args, seed, gt, images, cells, scores):
    """Evolution whose fitness is the mean of two percentiles against the same ``--cells`` reference cells: the
    cell's NASWOT score among theirs, and its estimate in the DI supernet of ``--combined-dir``/di_s<seed> among
    theirs (the '+ NASWOT' rank mean, extended to cells outside the sample). Needs that run's supernet.pt
    (re-trained by bench_rank.py where it is gone); the supernet's tau on the reference cells is reported."""
    import bench_rank
    from slimkit.nas.supernet import ArchEvaluator

    run_dir = os.path.join(args.combined_dir, f"di_s{seed}")
    ckpt = os.path.join(run_dir, "supernet.pt")
    if not os.path.exists(ckpt):
        print(f"combined search, seed {seed}: no {ckpt}; re-train it with "
              f"python benchmarks/nas/bench_rank.py run --method di --seed {seed} (about 470 CPU-s)")
        return None
    rargs = bench_rank.parse(["run", "--data", args.data])
    small = get_space("nb201", C=rargs.C, N=rargs.N)
    supernet = small.supernet(10)
    supernet.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=True)["model"])
    _, _, calib, vx, vy = bench_rank.data(rargs)
    estimate = ArchEvaluator(supernet, calib, vx, vy)
    # the reference cells' estimates in this supernet, cached: a re-trained supernet (bench_rank.py does not
    # commit supernet.pt) differs from the ranked run in float rounding, so its own estimates are the scale
    path = os.path.join(args.out, f"combined_estimates_s{seed}.json")
    est = json.load(open(path)) if os.path.exists(path) else {}
    from tqdm import tqdm

    for k in tqdm([c for c in cells if str(c) not in est], desc=f"supernet estimates, seed {seed}"):
        est[str(k)] = estimate(small.arch(small.decode_body(gt[k]["arch"])))
        if len(est) % 20 == 0:
            _write_json(path, est)
    _write_json(path, est)
    e, z = [est[str(k)] for k in cells], [scores[seed][str(k)]["score"] for k in cells]
    p_est, p_zc = _percentile(e), _percentile(z)
    score = _naswot_of(args, seed, gt, images)

    def fitness(arch):
        return 0.5 * (p_zc(score(arch)) + p_est(estimate(small.arch(small.decode_body(_body(arch))))))

    out = _evolve(args, seed, gt, fitness, f"search_combined_state_s{seed}.json", "di+naswot")
    truth = [gt[k]["cifar10"] for k in cells]
    out.update(supernet_tau=kendall_tau(e, truth), rank_mean_tau=kendall_tau(ranks(e) + ranks(z), truth))
    return out


def _earlier_searches(args):
    path = os.path.join(args.out, "zero_cost.json")
    return json.load(open(path)).get("searches", []) if os.path.exists(path) else []


def main(argv=None):
    args = parse(argv)
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    gt = read_nats_tss(args.gt)
    cells = sampled_cells(gt, args.cells)
    truth = [gt[k]["cifar10"] for k in cells]
    images = cifar_subsets(args.data, 2000, 10)[0]  # training images only
    seeds = [int(s) for s in args.seeds.split(",")]
    scores = {s: score_cells(args, s, cells, gt, images) for s in seeds}
    rows = []
    for s in seeds:
        sc = [scores[s][str(k)]["score"] for k in cells]
        rows.append({"what": "NASWOT", "seed": s, **metrics(sc, truth),
                     "cpu_s_per_cell": statistics.fmean(scores[s][str(k)]["cpu_s"] for k in cells)})
    for d in args.rank_dirs.split(","):
        for name in sorted(os.listdir(d)):
            est_path = os.path.join(d, name, "estimates.json")
            if not os.path.exists(est_path):
                continue
            est = json.load(open(est_path))
            if any(str(k) not in est for k in cells):
                continue
            method, seed = name.rsplit("_s", 1)
            e = [est[str(k)]["estimate"] for k in cells]
            z = [scores[seeds[int(seed) % len(seeds)]][str(k)]["score"] for k in cells]
            label = f"{'DI-WS' if method == 'di' else 'plain WS'} ({os.path.basename(d)})"
            rows.append({"what": label, "seed": int(seed), **metrics(e, truth)})
            rows.append({"what": label + " + NASWOT", "seed": int(seed), **metrics(ranks(e) + ranks(z), truth)})
    summary = []
    for what in dict.fromkeys(r["what"] for r in rows):
        rs = [r for r in rows if r["what"] == what]
        agg = {"what": what, "runs": len(rs)}
        for key in ("kendall_tau", "spearman", "top10_overlap", "top_truth"):
            vals = [r[key] for r in rs]
            agg[key], agg[key + "_sd"] = statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)
        agg["top_truth_each"] = [round(r["top_truth"], 2) for r in rs]
        agg["within_1pt"] = sum(r["top_truth"] >= OPTIMUM - 1 for r in rs)
        summary.append(agg)
    searches = [search(args, int(s), gt, images) for s in args.search_seeds.split(",") if s.strip()]
    searches += [r for r in (combined_search(args, int(s), gt, images, cells, scores)
                             for s in args.combined_seeds.split(",") if s.strip()) if r is not None]
    env = {"cpu": cpu_name(), "torch": torch.__version__, "threads": args.threads, "cells": args.cells,
           "batch": args.batch, "C": args.C, "N": args.N, "best_in_sample": max(truth), "optimum": OPTIMUM}
    _write_json(os.path.join(args.out, "zero_cost.json"),
                {"settings": env, "summary": summary, "runs": rows, "searches": searches}, indent=1)
    lines = [f"# NASWOT beside the supernet on NAS-Bench-201 ({args.cells} cells)", "",
             f"{env['cpu']}, torch {env['torch']}, {args.threads} thread(s); NASWOT on the C={args.C}, N={args.N} "
             f"network at initialisation, batch {args.batch} of training images. Best of the {args.cells} cells by "
             f"ground truth: {max(truth):.2f}% (space optimum {OPTIMUM}%). '+ NASWOT': the mean of the two ranks.", "",
             "| ranking | runs | Kendall tau | Spearman rho | top-10 overlap | truth of the top cell % (each run) | "
             f"within 1 pt of {OPTIMUM} |", "|---|---:|---|---|---|---|---:|"]
    for a in summary:
        lines.append(f"| {a['what']} | {a['runs']} | {a['kendall_tau']:.3f} +- {a['kendall_tau_sd']:.3f} | "
                     f"{a['spearman']:.3f} +- {a['spearman_sd']:.3f} | {a['top10_overlap']:.2f} | "
                     f"{a['top_truth']:.2f} +- {a['top_truth_sd']:.2f} ({', '.join(map(str, a['top_truth_each']))}) | "
                     f"{a['within_1pt']} of {a['runs']} |")
    if searches:
        lines += ["", f"Evolution over all 15,625 cells (population {args.search_population}, "
                  f"{args.search_generations} generations, as bench_rank.py's search on the supernet); fitness "
                  "'naswot': the NASWOT score; 'di+naswot': the mean of the cell's two percentiles among the "
                  f"{args.cells} reference cells (NASWOT score; estimate in the DI supernet of the same seed):", "",
                  "| fitness | seed | pick (truth %) | within 1 pt | cells scored | CPU s |", "|---|---:|---|---|---:|---:|"]
        for r in searches:
            spec = r["best_spec"].split("?")[0].replace("|", "\\|")  # a table cell: the cell string's bars escaped
            kind = r.get("kind", "naswot") + (f" (supernet tau {r['supernet_tau']:.3f}, rank mean {r['rank_mean_tau']:.3f})"
                                              if "supernet_tau" in r else "")
            lines.append(f"| {kind} | {r['seed']} | `{spec}` ({r['best_truth']:.2f}) | "
                         f"{'yes' if r['best_truth'] >= OPTIMUM - 1 else 'no'} | {r['evaluated']} | {r['cpu_s']:.0f} |")
    cpu = statistics.fmean(r["cpu_s_per_cell"] for r in rows if r["what"] == "NASWOT")
    lines += ["", f"NASWOT costs {cpu:.2f} CPU-s per cell (one forward of the batch); command: "
              f"`python benchmarks/nas/bench_zero_cost.py --seeds {args.seeds}"
              + (f" --combined-seeds {args.combined_seeds}`" if args.combined_seeds else "`")]
    write_text(os.path.join(args.out, "zero_cost.md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
