"""Importance sampling vs uniform, and SGD-G2 vs SGD with a tuned step, on the embedded digits set.

    python benchmarks/train/bench_sampling_sgdg2.py --out benchmarks/results/train

Problems: multinomial logistic regression (convex) and a 64-128-10 MLP, on the 1,438 training digits of
``load_dataset("digits")``. Full training loss after every epoch, against epochs and against wall time
(training only). Importance sampling uses the trainer's protocol: per-sample ||d loss / d logits|| feeds
``sampler.update``; losses are weighted by ``sampler.loss_weights``. Several seeds; means reported.
"""
import argparse
import os
import statistics
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from slimkit.data import load_dataset  # noqa: E402
from slimkit.train.optim import create_optimizer  # noqa: E402
from slimkit.train.sampling import create_sampler  # noqa: E402


def data():
    s = load_dataset("digits")
    x, y = s.train.tensors()
    return x.flatten(1).float(), torch.as_tensor(y).long()


def model(kind):
    if kind == "convex":
        return torch.nn.Linear(64, 10)
    return torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))


def full_loss(m, x, y):
    with torch.no_grad():
        return float(F.cross_entropy(m(x), y))


def run(kind, x, y, *, optimizer, opts, sampler, epochs, batch, seed):
    torch.manual_seed(seed)
    m = model(kind)
    opt = create_optimizer(optimizer, m.parameters(), **opts)
    samp = create_sampler(sampler, len(y), seed=seed, **({"mixture": 0.5, "period": 5} if sampler == "importance" else {}))
    curve, t = [(0, 0.0, full_loss(m, x, y))], 0.0
    for epoch in range(1, epochs + 1):
        idx_all = torch.tensor(list(iter(samp)))
        t0 = time.perf_counter()
        for idx in idx_all.split(batch):
            xb, yb = x[idx], y[idx]
            w = samp.loss_weights(idx) if samp.reweights else torch.ones(len(idx))

            def closure():
                opt.zero_grad()
                logits = m(xb)
                loss = (F.cross_entropy(logits, yb, reduction="none") * w).mean()
                loss.backward()
                return loss, logits

            loss, logits = closure()
            if samp.reweights:
                p = logits.detach().softmax(1)
                p[torch.arange(len(yb)), yb] -= 1  # d CE / d logits, per sample
                samp.update(idx, p.norm(dim=1))
            if getattr(opt, "needs_closure", False):
                opt.step(lambda: closure()[0])
            else:
                opt.step()
        t += time.perf_counter() - t0
        curve.append((epoch, t, full_loss(m, x, y)))
    return curve


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/results/train")
    args = ap.parse_args()
    torch.set_num_threads(1)
    x, y = data()
    lines = ["# Importance sampling and SGD-G2 on the embedded digits", "",
             f"1,438 training digits (embedded, seeded class-balanced split), batch {args.batch}, {args.epochs} epochs, "
             f"{args.seeds} seeds, 1 torch thread, torch {torch.__version__}, 2-core x86 CPU "
             f"(load average {os.getloadavg()[0]:.2f}). Loss = full training cross-entropy; time = training only.", ""]
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    # 1) importance vs uniform with SGD, momentum and Adam
    lines += ["## Importance sampling vs uniform", "",
              "| problem | optimizer | sampler | loss after 1 / 5 / final epoch | train s |", "|---|---|---|---|---:|"]
    opt_cfg = {"sgd": dict(lr=0.05, momentum=0.0, weight_decay=0.0), "sgd-momentum": dict(lr=0.05, momentum=0.9, weight_decay=0.0),
               "adam": dict(lr=1e-3)}
    for row, kind in enumerate(("convex", "mlp")):
        for name, opts in opt_cfg.items():
            for sampler in ("uniform", "importance"):
                curves = [run(kind, x, y, optimizer="sgd" if name.startswith("sgd") else name, opts=opts, sampler=sampler,
                              epochs=args.epochs, batch=args.batch, seed=s) for s in range(args.seeds)]
                mean = [statistics.mean(c[e][2] for c in curves) for e in range(args.epochs + 1)]
                secs = statistics.mean(c[-1][1] for c in curves)
                lines.append(f"| {kind} | {name} | {sampler} | {mean[1]:.4f} / {mean[5]:.4f} / {mean[-1]:.4f} | {secs:.2f} |")
                if name == "sgd-momentum":
                    axes[row][0].plot(range(args.epochs + 1), mean, label=f"{sampler}")
                    axes[row][0].set_title(f"{kind}: momentum SGD, loss vs epoch")
    # 2) SGD-G2 vs SGD with a tuned step (MLP)
    lines += ["", "## SGD-G2 vs SGD with a tuned step (MLP)", "",
              "| optimizer | loss after 1 / 5 / final epoch | train s | time to SGD-best final loss |", "|---|---|---:|---|"]
    results = {}
    for lr in (0.01, 0.03, 0.1, 0.3):
        results[f"sgd lr={lr}"] = [run("mlp", x, y, optimizer="sgd", opts=dict(lr=lr, momentum=0.0, weight_decay=0.0),
                                       sampler="uniform", epochs=args.epochs, batch=args.batch, seed=s) for s in range(args.seeds)]
    for shrink in ("fast", "average"):
        results[f"sgd-g2 h0=0.1 shrink={shrink}"] = [run("mlp", x, y, optimizer="sgd-g2", opts=dict(lr=0.1, shrink=shrink),
                                                         sampler="uniform", epochs=args.epochs, batch=args.batch, seed=s)
                                                     for s in range(args.seeds)]
    means = {k: [(statistics.mean(c[e][1] for c in v), statistics.mean(c[e][2] for c in v)) for e in range(args.epochs + 1)]
             for k, v in results.items()}
    best_sgd = min((k for k in means if k.startswith("sgd lr")), key=lambda k: means[k][-1][1])
    target = means[best_sgd][-1][1]
    for k, m in means.items():
        reach = next((t for t, v in m if v <= target), None)
        lines.append(f"| {k}{' (best SGD)' if k == best_sgd else ''} | {m[1][1]:.4f} / {m[5][1]:.4f} / {m[-1][1]:.4f} | "
                     f"{m[-1][0]:.2f} | {'not reached' if reach is None else f'{reach:.2f} s'} |")
        if k == best_sgd or k.startswith("sgd-g2"):
            axes[1][1].plot([t for t, _ in m], [v for _, v in m], label=k)
    axes[1][1].set_title("MLP: loss vs wall time (s)")
    axes[0][1].axis("off")
    for ax in (axes[0][0], axes[1][0], axes[1][1]):
        ax.set_yscale("log")
        ax.legend(fontsize=7)
    lines += ["", "![curves](sampling_sgdg2.png)", "",
              f"Command: `python benchmarks/train/bench_sampling_sgdg2.py --epochs {args.epochs} --seeds {args.seeds}`"]
    os.makedirs(args.out, exist_ok=True)
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "sampling_sgdg2.png"), dpi=100)
    with open(os.path.join(args.out, "sampling_sgdg2.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
