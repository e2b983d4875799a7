"""Importance sampling on the paper's convex settings (then a deep net), and SGD-G2 checked and timed.

    python benchmarks/train/bench_sampling_sgdg2.py --out benchmarks/results/train      # needs slimkit[bench]

1) Convex (scikit-learn's bundled data, standardised): l2-regularised logistic regression (breast_cancer, 2 classes;
   digits, 10 classes) and ridge least squares (diabetes); lambda = 1e-3. Per-sample gradients are exact (linear
   models), so the sampler gets the true ||grad f_i(w)|| of the drawn samples and the exact variance of the
   one-sample estimator, V(p) = (1/n^2) sum_i ||g_i||^2 / p_i - ||mean g||^2, is computed at every epoch's weights
   for the sampler's current p, for uniform p and for the optimal p* ~ ||g_i||. SGD with each sampler's best lr from
   a grid (3 seeds), loss gap f - f* (f* from L-BFGS to convergence) per epoch and per CPU second (time.process_time: the machine is shared).
2) Deep net: the 64-128-10 MLP on the embedded digits with the trainer's proxy (||d loss / d logits||).
3) SGD-G2: the rule of methods.md section 14 on a random quadratic (its h_opt is 2 g'Ag / g'A^2g: the step at which
   a gradient step stops shrinking ||g||), the MLP against tuned SGD per epoch and per second, and the per-step cost
   of its second gradient, SGD and SGD-G2 steps interleaved.
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

LAMBDA = 1e-3
TOLS = (1e-2, 1e-3)  # convex: f - f* tolerances
LOSS_TARGETS = (0.1, 0.01)  # MLP: full training loss targets


# ----------------------------------------------------------------------------- 1) convex problems
def convex_problems():
    from sklearn.datasets import load_breast_cancer, load_diabetes, load_digits

    def std(x):
        x = torch.as_tensor(x, dtype=torch.float64)
        return (x - x.mean(0)) / x.std(0).clamp_min(1e-12)

    bc, dg, db = load_breast_cancer(), load_digits(), load_diabetes()
    yd = torch.as_tensor(db.target, dtype=torch.float64)
    return {"logistic, breast_cancer (569x30)": ("logistic", std(bc.data), torch.as_tensor(bc.target), 2),
            "logistic, digits (1797x64)": ("logistic", std(dg.data), torch.as_tensor(dg.target), 10),
            "least squares, diabetes (442x10)": ("lsq", std(db.data), (yd - yd.mean()) / yd.std(), 1)}


def per_sample_grads(kind, W, x, y):
    """Exact per-sample gradients [n, d+1, k] of f_i(W) = loss_i + lambda/2 ||W||^2 (bias as the last row)."""
    xb = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
    z = xb @ W
    if kind == "logistic":
        r = z.softmax(1) - F.one_hot(y, W.shape[1]).to(z.dtype)
    else:
        r = z - y[:, None]
    return xb[:, :, None] * r[:, None, :] + LAMBDA * W


def full_loss(kind, W, x, y):
    xb = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
    z = xb @ W
    data = F.cross_entropy(z, y) if kind == "logistic" else 0.5 * (z[:, 0] - y).pow(2).mean()
    return float(data + 0.5 * LAMBDA * W.pow(2).sum())


def optimum(kind, x, y, k):
    W = torch.zeros(x.shape[1] + 1, k, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([W], lr=1, max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-15,
                            line_search_fn="strong_wolfe")
    xb = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)

    def closure():
        opt.zero_grad()
        z = xb @ W
        data = F.cross_entropy(z, y) if kind == "logistic" else 0.5 * (z[:, 0] - y).pow(2).mean()
        loss = data + 0.5 * LAMBDA * W.pow(2).sum()
        loss.backward()
        return loss
    for _ in range(5):
        opt.step(closure)
    return full_loss(kind, W.detach(), x, y)


def variance(G, p):
    """Exact variance (trace) of the one-sample estimator g_i / (n p_i), i ~ p."""
    n = len(G)
    sq = G.flatten(1).pow(2).sum(1)
    return float((sq / p).sum() / n ** 2 - G.mean(0).pow(2).sum())


def run_convex(kind, x, y, k, sampler, lr, epochs, batch, seed, eval_every=5):
    """Per-epoch curve (epoch, train s, f), per-epoch variances, and a fine curve (mini-batches, train s, f) every
    ``eval_every`` mini-batches (the evaluations are not timed)."""
    n = len(y)
    torch.manual_seed(seed)
    W = torch.zeros(x.shape[1] + 1, k, dtype=torch.float64)
    samp = create_sampler(sampler, n, seed=seed, **({"mixture": 0.5, "period": 5} if sampler == "importance" else {}))
    f0 = full_loss(kind, W, x, y)
    curve, var, t, fine, mb = [(0, 0.0, f0)], [], 0.0, [(0, 0.0, f0)], 0
    for epoch in range(1, epochs + 1):
        idx_all = torch.tensor(list(iter(samp)))
        t0 = time.process_time()
        for idx in idx_all.split(batch):
            G = per_sample_grads(kind, W, x[idx], y[idx])
            w = samp.loss_weights(idx).double() if samp.reweights else torch.ones(len(idx), dtype=torch.float64)
            if samp.reweights:
                samp.update(idx, G.flatten(1).norm(dim=1))
            W = W - lr * (G * w[:, None, None]).mean(0)
            mb += 1
            if mb % eval_every == 0:
                t += time.process_time() - t0
                fine.append((mb, t, full_loss(kind, W, x, y)))
                t0 = time.process_time()
        t += time.process_time() - t0
        loss = full_loss(kind, W, x, y)
        curve.append((epoch, t, loss if loss == loss else float("inf")))
        Gall = per_sample_grads(kind, W, x, y)
        norms = Gall.flatten(1).norm(dim=1)
        p_uni = torch.full((n,), 1.0 / n, dtype=torch.float64)
        p_samp = samp.probs.double() if samp.reweights else p_uni
        var.append((variance(Gall, p_uni), variance(Gall, p_samp), variance(Gall, norms / norms.sum())))
    return curve, var, fine


def first_reach(fine, ok):
    """(mini-batches, train s) of the first fine-curve point with ok(value), or None."""
    return next(((mb, t) for mb, t, v in fine if v == v and ok(v)), None)


def target_cells(runs_by_cfg, ok):
    """Best config for one target: the one whose median mini-batches to it is lowest among those that reach it on
    every seed. Returns (config, median mini-batches, median s, per-seed mini-batches) or (None, per-config misses)."""
    best = None
    for cfg, fines in runs_by_cfg.items():
        hits = [first_reach(f, ok) for f in fines]
        if all(h is not None for h in hits):
            med = statistics.median(h[0] for h in hits)
            if best is None or med < best[1]:
                best = (cfg, med, statistics.median(h[1] for h in hits), [h[0] for h in hits])
    return best


def convex_section(args, lines, axes):
    lines += ["## 1. Importance sampling on convex problems", "",
              f"SGD, batch {args.batch} drawn i.i.d. from p, lambda {LAMBDA:g}, {args.epochs} epochs, {args.seeds} seeds; "
              "each sampler with its best lr of {0.003, 0.01, 0.03, 0.1, 0.3} (by mean final loss). Sampler: "
              "mixture 0.5, refresh every 5 updates, exact per-sample gradient norms. Variance ratio = V(uniform) / "
              "V(p) at the IS run's weights after each epoch (median over epochs and seeds; > 1 means lower variance).",
              "", "| problem | sampler (best lr) | f - f* after 1 / 5 / final epoch | train CPU s per epoch | "
              "variance vs uniform: sampler's p | optimal p* |", "|---|---|---|---:|---:|---:|"]
    target_rows = []
    for row, (name, (kind, x, y, k)) in enumerate(convex_problems().items()):
        fstar = optimum(kind, x, y, k)
        best = {}
        for sampler in ("uniform", "importance"):
            trials = {}
            for lr in (0.003, 0.01, 0.03, 0.1, 0.3):
                runs = [run_convex(kind, x, y, k, sampler, lr, args.epochs, args.batch, s, args.eval_every)
                        for s in range(args.seeds)]
                trials[lr] = (statistics.mean(r[0][-1][2] for r in runs), runs)
            lr = min(trials, key=lambda v: trials[v][0])
            best[sampler] = (lr, trials[lr][1])
            for tol in TOLS:
                tb = target_cells({v: [r[2] for r in trials[v][1]] for v in trials}, lambda f, tol=tol: f - fstar <= tol)
                target_rows.append((name, tol, sampler, tb))
        for sampler, (lr, runs) in best.items():
            gap = [statistics.mean(r[0][e][2] - fstar for r in runs) for e in range(args.epochs + 1)]
            secs = statistics.mean(r[0][-1][1] for r in runs) / args.epochs
            vr = [u / s for r in runs for u, s, _ in r[1]]
            vo = [u / o for r in runs for u, _, o in r[1]]
            lines.append(f"| {name} | {sampler} (lr {lr:g}) | {gap[1]:.2e} / {gap[5]:.2e} / {gap[-1]:.2e} | {secs:.3f} "
                         f"| {statistics.median(vr):.2f}x | {statistics.median(vo):.2f}x |")
            axes[row][0].plot(range(args.epochs + 1), [max(g, 1e-12) for g in gap], label=f"{sampler} lr {lr:g}")
            times = [statistics.mean(r[0][e][1] for r in runs) for e in range(args.epochs + 1)]
            axes[row][1].plot(times, [max(g, 1e-12) for g in gap], label=f"{sampler} lr {lr:g}")
        print(f"convex {name} done", flush=True)
        axes[row][0].set_title(f"{name}: f - f* vs epoch", fontsize=8)
        axes[row][1].set_title("vs CPU s", fontsize=8)
        for ax in axes[row][:2]:
            ax.set_yscale("log")
            ax.legend(fontsize=6)
    lines += ["", f"Mini-batches and training CPU seconds to a fixed tolerance f - f* <= tol (loss evaluated every "
              f"{args.eval_every} mini-batches, evaluations not timed). Each sampler with the lr of the grid that reaches "
              "the tolerance on every seed in the fewest median mini-batches (tuned per target); cells: median "
              "mini-batches (per seed), median s.", "",
              "| problem | tol | uniform | importance | IS / uniform mini-batches | IS / uniform s |",
              "|---|---|---|---|---:|---:|"]
    for name in dict.fromkeys(r[0] for r in target_rows):
        for tol in TOLS:
            got = {smp: tb for n_, t_, smp, tb in target_rows if n_ == name and t_ == tol}

            def cell(tb):
                return ("not reached (no lr of the grid on every seed within "
                        f"{args.epochs} epochs)" if tb is None else
                        f"lr {tb[0]:g}: **{tb[1]:.0f}** ({', '.join(map(str, tb[3]))}), {tb[2]:.3f} s")
            u, i = got.get("uniform"), got.get("importance")
            ratio_mb = f"{i[1] / u[1]:.2f}" if u and i else "-"
            ratio_s = f"{i[2] / u[2]:.2f}" if u and i and u[2] > 0 else "-"
            lines.append(f"| {name} | {tol:g} | {cell(u)} | {cell(i)} | {ratio_mb} | {ratio_s} |")
    lines.append("")


# ----------------------------------------------------------------------------- 2) deep net + 3) SGD-G2
def digits():
    s = load_dataset("digits")
    x, y = s.train.tensors()
    return x.flatten(1).float(), torch.as_tensor(y).long()


def mlp():
    return torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))


def run_mlp(x, y, *, optimizer, opts, sampler, epochs, batch, seed, eval_every=5, fine=None):
    """Per-epoch curve (epoch, train s, full training loss); if ``fine`` is a list, (mini-batches, train s, loss)
    every ``eval_every`` mini-batches is appended to it (evaluations not timed)."""
    torch.manual_seed(seed)
    m = mlp()
    opt = create_optimizer(optimizer, m.parameters(), **opts)
    samp = create_sampler(sampler, len(y), seed=seed, **({"mixture": 0.5, "period": 5} if sampler == "importance" else {}))

    def loss_all():
        with torch.no_grad():
            return float(F.cross_entropy(m(x), y))
    curve, t, mb = [(0, 0.0, loss_all())], 0.0, 0
    if fine is not None:
        fine.append((0, 0.0, curve[0][2]))
    for epoch in range(1, epochs + 1):
        idx_all = torch.tensor(list(iter(samp)))
        t0 = time.process_time()
        for idx in idx_all.split(batch):
            if fine is not None and mb and mb % eval_every == 0:
                t += time.process_time() - t0
                fine.append((mb, t, loss_all()))
                t0 = time.process_time()
            mb += 1
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
        t += time.process_time() - t0
        curve.append((epoch, t, loss_all()))
    return curve


def mean_curve(curves, epochs):
    return [(statistics.mean(c[e][1] for c in curves), statistics.mean(c[e][2] for c in curves)) for e in range(epochs + 1)]


def loss_target_table(lines, fines, args, grad_evals=None):
    """Mini-batches and train s to each fixed training-loss target, per config (median over seeds, per-seed)."""
    grad_evals = grad_evals or {}
    lines += ["", f"Mini-batches and training CPU seconds to a fixed full-training-loss target (loss evaluated every "
              f"{args.eval_every} mini-batches, evaluations not timed; median over seeds, per-seed mini-batches in "
              "brackets; '-' = not reached within the run).", "",
              "| optimizer | " + " | ".join(f"to loss {t:g}" for t in LOSS_TARGETS) + " |",
              "|---|" + "---|" * len(LOSS_TARGETS)]
    for k, fl in fines.items():
        cells = []
        for tgt in LOSS_TARGETS:
            hits = [first_reach(f, lambda v, tgt=tgt: v <= tgt) for f in fl]
            per = ", ".join("-" if h is None else str(h[0]) for h in hits)
            if all(h is not None for h in hits):
                med = statistics.median(h[0] for h in hits)
                ge = f" = {med * grad_evals[k]:.0f} gradient evaluations" if k in grad_evals else ""
                cells.append(f"**{med:.0f}**{ge} ({per}), {statistics.median(h[1] for h in hits):.2f} s")
            else:
                cells.append(f"not reached by {sum(h is None for h in hits)}/{len(hits)} ({per})")
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    lines.append("")


def deep_section(args, lines, x, y):
    lines += ["## 2. Importance sampling on a deep net (MLP 64-128-10, embedded digits)", "",
              f"Batch {args.mlp_batch}, {args.epochs} epochs, {args.seeds} seeds. Trainer's proxy: per-sample "
              "||d CE / d logits||. Full training loss, mean over seeds.", "",
              "| optimizer | sampler | loss after 1 / 5 / final epoch | train CPU s |", "|---|---|---|---:|"]
    fines = {}
    for name, (opt, opts) in {"sgd-momentum lr 0.05": ("sgd", dict(lr=0.05, momentum=0.9, weight_decay=0.0)),
                              "adam lr 1e-3": ("adam", dict(lr=1e-3))}.items():
        for sampler in ("uniform", "importance"):
            fl = [[] for _ in range(args.seeds)]
            m = mean_curve([run_mlp(x, y, optimizer=opt, opts=opts, sampler=sampler, epochs=args.epochs,
                                    batch=args.mlp_batch, seed=s, eval_every=args.eval_every, fine=fl[s])
                            for s in range(args.seeds)], args.epochs)
            fines[f"{name}, {sampler}"] = fl
            lines.append(f"| {name} | {sampler} | {m[1][1]:.4f} / {m[5][1]:.4f} / {m[-1][1]:.4f} | {m[-1][0]:.2f} |")
    loss_target_table(lines, fines, args)
    print("deep done", flush=True)


def quadratic_check():
    """SGD-G2's rule on f = 1/2 t'At (deterministic, so g' = g - hAg exactly): the n-D loss ratio after 200 steps;
    on a 1-D quadratic (a = 4): h after 200 steps, |1 - h a| and |theta| after 100 and 200 steps."""
    from slimkit.train.optim.sgd_g2 import SGDG2

    g = torch.Generator().manual_seed(0)
    q = torch.linalg.qr(torch.randn(5, 5, generator=g, dtype=torch.float64))[0]
    A = q @ torch.diag(torch.tensor([1.0, 2.0, 4.0, 8.0, 16.0], dtype=torch.float64)) @ q.T
    theta = torch.nn.Parameter(torch.randn(5, generator=g, dtype=torch.float64))
    opt = SGDG2([theta], lr=0.01, beta=0.9)

    def closure():
        opt.zero_grad()
        loss = 0.5 * theta @ A @ theta
        loss.backward()
        return loss
    f0 = float(closure().detach())
    for _ in range(200):
        closure()
        opt.step(closure)
    f1 = float(0.5 * theta.detach() @ A @ theta.detach())
    # 1-D: h_opt = 2/a for every h, so h -> 2/a and the contraction |1 - h a| -> 1: the iterate stalls.
    t1 = torch.nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    o1 = SGDG2([t1], lr=0.1, beta=0.9)

    def c1():
        o1.zero_grad()
        loss = 0.5 * 4.0 * t1.pow(2).sum()
        loss.backward()
        return loss
    at = {}
    for i in range(1, 201):
        c1()
        o1.step(c1)
        at[i] = float(t1.detach().abs())
    h = o1.param_groups[0]["lr"]
    return f1 / f0, h, abs(1 - h * 4.0), at[100], at[200]


def step_costs(x, y, steps, batch):
    """Per-step CPU time of SGD and SGD-G2 on the MLP and LeNet-5 (digits 8x8 upsampled is not needed: LeNet on
    28x28 zeros-padded digits), steps interleaved; medians and the ratio."""
    from slimkit.models import create_model

    out = {}
    for name, make, xb in (("MLP 64-128-10", mlp, x[:batch]),
                           ("LeNet-5 (28x28 input)", lambda: create_model("lenet5"),
                            F.pad(x[:batch].view(-1, 1, 8, 8), (10, 10, 10, 10)))):
        yb = y[:batch]
        models = {k: make() for k in ("sgd", "sgd-g2")}
        opts = {"sgd": create_optimizer("sgd", models["sgd"].parameters(), lr=0.05, momentum=0.0, weight_decay=0.0),
                "sgd-g2": create_optimizer("sgd-g2", models["sgd-g2"].parameters(), lr=0.05)}
        times = {k: [] for k in models}
        for i in range(steps + 1):
            for k in (("sgd", "sgd-g2") if i % 2 else ("sgd-g2", "sgd")):
                m, o = models[k], opts[k]
                t0 = time.process_time()

                def closure():
                    o.zero_grad()
                    loss = F.cross_entropy(m(xb), yb)
                    loss.backward()
                    return loss
                closure()
                o.step(closure) if k == "sgd-g2" else o.step()
                if i:
                    times[k].append(time.process_time() - t0)
        med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        out[name] = (med["sgd"], med["sgd-g2"])
    return out


def sgdg2_section(args, lines, x, y, ax):
    fratio, h, contraction, t100, t200 = quadratic_check()
    lines += ["## 3. SGD-G2", "",
              "What is verified (the rule as methods.md section 14 lists it; the PDF itself was not available here):",
              "- the implementation is that rule (unit test `test_sgd_g2_step_size_rule_on_a_quadratic`: h_opt = 2/a, "
              "the beta-average when h_opt >= h, the (1 - beta) h_opt cut otherwise);",
              "- on a quadratic h_opt = 2 g'Ag / g'A^2g, independent of h: the largest step along g that does not "
              "grow ||g|| (twice the step that minimises it); on a 5-D quadratic (eigenvalues 1..16, h0 0.01) f "
              f"fell to {fratio:.1e} of its start in 200 deterministic steps;",
              f"- on a 1-D quadratic (a = 4, h0 0.1) h_opt = 2/a = 0.5 for every h, so h climbs to it ({h:.4f} after "
              f"200 steps, |1 - h a| = {contraction:.4f}) and the iterate stops contracting: |theta| = {t100:.2e} "
              f"after 100 steps and {t200:.2e} after 200 (from 1). With that constant 2 the rule drives a 1-D "
              "problem to the edge of stability; whether the paper's constant is 2 needs the PDF.", ""]
    results, fines = {}, {}
    for lr in (0.03, 0.1, 0.3):
        fl = fines[f"sgd lr={lr}"] = [[] for _ in range(args.seeds)]
        results[f"sgd lr={lr}"] = [run_mlp(x, y, optimizer="sgd", opts=dict(lr=lr, momentum=0.0, weight_decay=0.0),
                                           sampler="uniform", epochs=args.epochs, batch=args.mlp_batch, seed=s,
                                           eval_every=args.eval_every, fine=fl[s])
                                   for s in range(args.seeds)]
    for h0 in (0.03, 0.1):
        for shrink in ("fast", "average"):
            k = f"sgd-g2 h0={h0} shrink={shrink}"
            fl = fines[k] = [[] for _ in range(args.seeds)]
            results[k] = [run_mlp(x, y, optimizer="sgd-g2", opts=dict(lr=h0, shrink=shrink), sampler="uniform",
                                  epochs=args.epochs, batch=args.mlp_batch, seed=s, eval_every=args.eval_every,
                                  fine=fl[s]) for s in range(args.seeds)]
    means = {k: mean_curve(v, args.epochs) for k, v in results.items()}
    best_sgd = min((k for k in means if k.startswith("sgd lr")), key=lambda k: means[k][-1][1])
    target_loss = means[best_sgd][-1][1]
    lines += ["MLP on the embedded digits, full training loss (mean over seeds):", "",
              "| optimizer | loss after 1 / 5 / final epoch | train CPU s | epochs / CPU s to the best SGD's final loss |",
              "|---|---|---:|---|"]
    for k, m in means.items():
        reach = next(((e, t) for e, (t, v) in enumerate(m) if v <= target_loss), None)
        lines.append(f"| {k}{' (best SGD)' if k == best_sgd else ''} | {m[1][1]:.4f} / {m[5][1]:.4f} / {m[-1][1]:.4f} "
                     f"| {m[-1][0]:.2f} | {'not reached' if reach is None else f'{reach[0]} / {reach[1]:.2f} s'} |")
        if k == best_sgd or k.startswith("sgd-g2"):
            ax.plot([t for t, _ in m], [v for _, v in m], label=k)
    loss_target_table(lines, fines, args, grad_evals={k: 2 for k in fines if k.startswith("sgd-g2")})
    ax.set_title("MLP: loss vs CPU s", fontsize=8)
    ax.set_yscale("log")
    ax.legend(fontsize=6)
    costs = step_costs(x, y, args.cost_steps, args.mlp_batch)
    lines += ["", f"Per-step cost of the second gradient ({args.cost_steps} interleaved steps, batch {args.mlp_batch}, "
              "medians):", "", "| model | SGD ms | SGD-G2 ms | ratio |", "|---|---:|---:|---:|"]
    for name, (a, b) in costs.items():
        lines.append(f"| {name} | {a:.3f} | {b:.3f} | {b / a:.2f}x |")
    lines.append("")


def _cpu():
    with open("/proc/cpuinfo") as f:
        info = f.read()
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    return name + (" (VNNI)" if "vnni" in info else " (no VNNI)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--batch", type=int, default=8, help="convex problems")
    ap.add_argument("--mlp-batch", type=int, default=32, help="deep net and SGD-G2")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--cost-steps", type=int, default=200)
    ap.add_argument("--eval-every", type=int, default=5, help="mini-batches between loss evaluations (targets)")
    ap.add_argument("--out", default="benchmarks/results/train")
    args = ap.parse_args()
    torch.set_num_threads(1)
    lines = ["# Importance sampling and SGD-G2", "",
             f"{_cpu()}, 1 torch thread, torch {torch.__version__}, load average at start "
             f"{os.getloadavg()[0]:.2f}. Times are CPU seconds of this process (time.process_time, 1 thread), training "
             "only, evaluations excluded: wall time on this shared machine is not a fair measure.", ""]
    fig, axes = plt.subplots(4, 2, figsize=(10, 12))
    convex_section(args, lines, axes)
    x, y = digits()
    deep_section(args, lines, x, y)
    sgdg2_section(args, lines, x, y, axes[3][0])
    axes[3][1].axis("off")
    lines += ["![curves](sampling_sgdg2.png)", "",
              f"Command: `python benchmarks/train/bench_sampling_sgdg2.py --epochs {args.epochs} --batch {args.batch} "
              f"--mlp-batch {args.mlp_batch} --seeds {args.seeds}` (load average at end {os.getloadavg()[0]:.2f})"]
    os.makedirs(args.out, exist_ok=True)
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "sampling_sgdg2.png"), dpi=90)
    with open(os.path.join(args.out, "sampling_sgdg2.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
