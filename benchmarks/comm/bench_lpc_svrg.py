"""LPC-SVRG / ALPC-SVRG vs full-precision SVRG: bits needed to reach the SVRG objective, one command:

    python benchmarks/comm/bench_lpc_svrg.py [--dataset digits|breast_cancer] [--epochs 60]

L1-regularised logistic regression, 4 simulated workers. digits = slimkit's embedded 8x8 digits as
a binary task (digit >= 5); breast_cancer ships inside scikit-learn (bench/dev dependency only).
Target: the objective full-precision prox-SVRG reaches after --epochs epochs, plus --tol.
"""
import argparse
import json
import os
import sys

import torch


def load(name):
    from slimkit.comm.lpc_svrg import digits_binary

    if name == "digits":
        return digits_binary()
    if name == "breast_cancer":
        try:
            from sklearn.datasets import load_breast_cancer
        except ImportError:
            sys.exit("breast_cancer needs scikit-learn (pip install scikit-learn); or use --dataset digits")
        d = load_breast_cancer()
        A = torch.tensor(d.data, dtype=torch.float64)
        A = (A - A.mean(0)) / A.std(0)  # standardised features
        A = torch.cat([A, torch.ones(len(A), 1, dtype=torch.float64)], 1)
        return A, torch.tensor(d.target, dtype=torch.float64) * 2 - 1
    sys.exit(f"unknown dataset {name!r}; choose digits or breast_cancer")


def main(argv=None):
    from slimkit.comm.lpc_svrg import SVRGConfig, lpc_svrg

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="digits")
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--step", type=float, default=0.5)
    p.add_argument("--l1", type=float, default=1e-3)
    p.add_argument("--tol", type=float, default=1e-5, help="absolute slack on the target objective")
    p.add_argument("--out", default="benchmarks/results/comm")
    args = p.parse_args(argv)
    A, y = load(args.dataset)
    runs = {"SVRG fp32": dict(bits=None), "LPC-SVRG 2-bit": dict(bits=2), "LPC-SVRG 3-bit": dict(bits=3),
            "LPC-SVRG 4-bit": dict(bits=4), "ASVRG fp32 (momentum 0.5)": dict(bits=None, momentum=0.5),
            "ALPC-SVRG 4-bit (momentum 0.5)": dict(bits=4, momentum=0.5),
            "ALPC-SVRG 2-bit (momentum 0.5)": dict(bits=2, momentum=0.5)}
    res = {}
    from tqdm import tqdm

    for name, kw in tqdm(runs.items(), desc="runs"):
        r = lpc_svrg(A, y, SVRGConfig(epochs=args.epochs, step=args.step, l1=args.l1, **kw))
        res[name] = {"objective": r.objective, "bits": r.bits, "nnz": int((r.x.abs() > 0).sum())}
    target = res["SVRG fp32"]["objective"][-1] + args.tol
    lines = [f"# LPC-SVRG on {args.dataset} (n={A.shape[0]}, d={A.shape[1]}), L1 = {args.l1}, step {args.step}, "
             f"4 workers, {args.epochs} epochs x 50 inner steps, batch 16/worker\n",
             f"Target objective = SVRG fp32 after {args.epochs} epochs + {args.tol:g} = {target:.6f}. "
             "Bits = uplink payload bits (anchor gradients in fp32 included).\n",
             "| method | final objective | epochs to target | Mbits to target | bits vs SVRG fp32 | non-zeros |",
             "|---|---|---|---|---|---|"]
    base_bits = None
    for name, r in res.items():
        hit = next((i for i, o in enumerate(r["objective"]) if o <= target), None)
        mbits = r["bits"][hit] / 1e6 if hit is not None else None
        if name == "SVRG fp32":
            base_bits = mbits
        ratio = f"{base_bits / mbits:.1f}x fewer" if mbits and base_bits else "-"
        lines.append(f"| {name} | {r['objective'][-1]:.6f} | {hit if hit is not None else 'not reached'} | "
                     f"{mbits if mbits is None else round(mbits, 2)} | {ratio} | {r['nnz']} |")
    os.makedirs(args.out, exist_ok=True)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    best = min(min(r["objective"]) for r in res.values())
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for name, r in res.items():
        ax.semilogy([b / 1e6 for b in r["bits"]], [o - best + 1e-9 for o in r["objective"]], label=name)
    ax.set(xlabel="uplink Mbits (all workers)", ylabel="objective - best found",
           title=f"L1 logistic regression, {args.dataset}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, f"lpc_svrg_{args.dataset}.png"), dpi=120)
    with open(os.path.join(args.out, f"lpc_svrg_{args.dataset}.md"), "w") as f:
        f.write("\n".join(lines) + f"\n\n![objective vs bits](lpc_svrg_{args.dataset}.png)\n\nCommand: "
                f"`python benchmarks/comm/bench_lpc_svrg.py {' '.join(sys.argv[1:])}`\n")
    with open(os.path.join(args.out, f"lpc_svrg_{args.dataset}.json"), "w") as f:
        json.dump({"args": vars(args), "results": res}, f)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
