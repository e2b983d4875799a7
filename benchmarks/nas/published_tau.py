"""Kendall tau of a PUBLISHED one-shot supernet's estimates against nats_bench_tss.csv, on the same
cells bench_rank.py ranks and on all 15,625: the yardstick beside our own taus.

The estimates file is not in the repository (third-party data): few-shot-NAS (Zhao et al., ICML 2021)
release the CIFAR-10 accuracy their one-shot NAS-Bench-201 supernet estimates for every cell in
github.com/aoiang/few-shot-NAS, Few-Shot_NasBench201/supernet_info/one-shot-supernet (and few-shot-supernet),
as JSON keyed by the cell as a Python tuple string. Their own rank.py computes a different statistic,
so tau here is recomputed (tau-b, scipy) on the same footing as ours:

    python benchmarks/nas/published_tau.py --estimates PATH/one-shot-supernet --name "few-shot-NAS one-shot"
"""
import argparse
import ast
import json
import os
import sys

from scipy import stats

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_rank import DATA, sampled_cells  # noqa: E402

from slimkit.nas.ranking import read_nats_tss, topk_overlap  # noqa: E402


def cell_string(key):
    """"[(('none', 0),), (('none', 0), ('none', 1)), ...]" -> "|none~0|+|none~0|none~1|+|...|"."""
    return "+".join("|" + "|".join(f"{op}~{i}" for op, i in node) + "|" for node in ast.literal_eval(key))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--estimates", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--gt", default=os.path.join(DATA, "nats_bench_tss.csv"))
    p.add_argument("--cells", type=int, default=200)
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "nas", "rank", "published_tau.json"))
    args = p.parse_args(argv)
    gt = read_nats_tss(args.gt)
    with open(args.estimates) as f:
        est = {cell_string(k): v for k, v in json.load(f).items()}
    missing = [r["arch"] for r in gt if r["arch"] not in est]
    if missing:
        raise SystemExit(f"{len(missing)} cells of {args.gt} have no estimate, e.g. {missing[0]}")
    rows = {}
    for label, idx in (("all", range(len(gt))), (f"{args.cells} sampled", sampled_cells(gt, args.cells))):
        e = [est[gt[k]["arch"]] for k in idx]
        t = [gt[k]["cifar10"] for k in idx]
        rows[label] = {"cells": len(e), "kendall_tau": float(stats.kendalltau(e, t).statistic),
                       "spearman": float(stats.spearmanr(e, t).statistic), "top10_overlap": topk_overlap(e, t, 10)}
        print(args.name, label, rows[label])
    old = {}
    if os.path.exists(args.out):
        with open(args.out) as f:
            old = json.load(f)
    old[args.name] = {"source": os.path.abspath(args.estimates), "rows": rows}
    with open(args.out, "w") as f:
        json.dump(old, f, indent=1)


if __name__ == "__main__":
    main()
