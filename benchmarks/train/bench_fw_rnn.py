"""Frank-Wolfe (fw-adam) vs Adam vs SGD on long-range sequence tasks: wall time to Adam's final loss.

    python benchmarks/train/bench_fw_rnn.py --mnist ../shared/data/mnist.npz --out benchmarks/results/train

Same LSTM, data, batch, step budget and seeds for every optimizer; the optimizers of one seed run interleaved
step by step so machine load hits them alike. Loss is evaluated on a fixed held-out batch every ``--eval-every``
steps; "time to Adam's final" is the wall time (training only) at which an optimizer first reaches the final
held-out loss of Adam for the same seed, divided by Adam's total training time.
"""
import argparse
import json
import os
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from slimkit.data.sequences import AddingProblem, CopyingMemory, pixel_sequences
from slimkit.models import create_model
from slimkit.train.optim import create_optimizer

OPTIMIZERS = {"adam": dict(lr=2e-3), "fw-adam": dict(lr=2e-3, radius=1e-3, inner_steps=1),
              "sgd": dict(lr=0.5, momentum=0.9, weight_decay=0.0)}


def make_task(name, args, seed):
    if name.startswith("adding"):
        t = int(name.split("-")[1])
        train, test = AddingProblem(t, 20000, seed=2 * seed), AddingProblem(t, 512, seed=2 * seed + 1)
        model = dict(input_size=2, num_classes=1)

        def loss(out, y):
            return F.mse_loss(out, y)
    elif name == "copying":
        train, test = CopyingMemory(args.delay, 20000, seed=2 * seed), CopyingMemory(args.delay, 512, seed=2 * seed + 1)
        model = dict(input_size=train.vocab_size, num_classes=train.vocab_size, per_step=True)

        def loss(out, y):
            return F.cross_entropy(out.flatten(0, 1), y.flatten())
    else:
        d = np.load(args.mnist)
        sub = args.mnist_subsample  # pixel stride: 1 = the full 784-step task
        xtr, xte = d["x_train"][:, ::sub, ::sub], d["x_test"][:512, ::sub, ::sub]
        train = pixel_sequences(xtr, d["y_train"])
        test = pixel_sequences(xte, d["y_test"][:512])
        model = dict(input_size=1, num_classes=10)

        def loss(out, y):
            return F.cross_entropy(out, y.long())
    xs = torch.stack([test[i][0] for i in range(len(test))])
    ys = torch.stack([torch.as_tensor(test[i][1]) for i in range(len(test))])
    return train, (xs, ys), model, loss


def run_task(task, args):
    results = []
    for seed in range(args.seeds):
        train, (tx, ty), mkw, loss_fn = make_task(task, args, seed)
        runs = {}
        for name, opts in OPTIMIZERS.items():
            torch.manual_seed(seed)
            model = create_model("rnn_classifier", hidden_size=args.hidden, **mkw)
            runs[name] = dict(model=model, opt=create_optimizer(name, model.parameters(), **opts), t=0.0, curve=[])
        g = torch.Generator().manual_seed(seed)
        for step in range(1, args.steps + 1):
            idx = torch.randint(0, len(train), (args.batch,), generator=g)
            batch = [train[int(i)] for i in idx]
            x = torch.stack([b[0] for b in batch])
            y = torch.stack([torch.as_tensor(b[1]) for b in batch])
            names = list(runs) if step % 2 else list(runs)[::-1]
            for name in names:
                r = runs[name]
                t0 = time.perf_counter()
                r["opt"].zero_grad(set_to_none=True)
                loss = loss_fn(r["model"](x), y)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(r["model"].parameters(), 1.0)
                r["opt"].step()
                r["t"] += time.perf_counter() - t0
                if step % args.eval_every == 0 or step == args.steps:
                    with torch.no_grad():
                        r["curve"].append((step, r["t"], float(loss_fn(r["model"](tx), ty))))
        target = runs["adam"]["curve"][-1][2]
        adam_time = runs["adam"]["t"]
        for name, r in runs.items():
            reach = next((t for _, t, v in r["curve"] if v <= target), None)
            results.append(dict(task=task, seed=seed, optimizer=name, final_loss=r["curve"][-1][2], train_s=r["t"],
                                time_to_adam_final=reach, ratio=None if reach is None else reach / adam_time,
                                curve=r["curve"]))
        print(task, seed, {n: round(r["curve"][-1][2], 4) for n, r in runs.items()}, flush=True)
    return results


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default="adding-200,adding-750,copying,pixel-mnist")
    ap.add_argument("--mnist", default=None, help="mnist.npz (x_train, y_train, x_test, y_test); pixel task skipped if absent")
    ap.add_argument("--mnist-subsample", type=int, default=2, help="pixel stride (2 -> 196 steps; 1 = 784)")
    ap.add_argument("--delay", type=int, default=50, help="copying task delay T")
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--eval-every", type=int, default=25)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/train")
    args = ap.parse_args()
    torch.set_num_threads(1)  # three optimizers interleaved; one thread each keeps timings comparable
    tasks = [t for t in args.tasks.split(",") if t != "pixel-mnist" or args.mnist]
    results = [r for t in tasks for r in run_task(t, args)]
    load = os.getloadavg()
    lines = ["# Frank-Wolfe vs Adam vs SGD on long-range sequence tasks", "",
             f"LSTM hidden {args.hidden}, batch {args.batch}, {args.steps} steps, {args.seeds} seeds, grad-norm clip 1.0, "
             f"1 torch thread, torch {torch.__version__}, 2-core x86 CPU (shared; load average at end "
             f"{load[0]:.2f}/{load[1]:.2f}/{load[2]:.2f}). Optimizers: {json.dumps(OPTIMIZERS)}. "
             f"copying delay {args.delay}; pixel-MNIST pixel stride {args.mnist_subsample}.", "",
             "| task | optimizer | final held-out loss (mean over seeds) | train s | time to Adam's final / Adam time |",
             "|---|---|---:|---:|---|"]
    verdicts = []
    for task in tasks:
        for name in OPTIMIZERS:
            rs = [r for r in results if r["task"] == task and r["optimizer"] == name]
            ratios = [r["ratio"] for r in rs]
            rtxt = ", ".join("not reached" if x is None else f"{x:.2f}x" for x in ratios)
            lines.append(f"| {task} | {name} | {statistics.mean(r['final_loss'] for r in rs):.4f} | "
                         f"{statistics.mean(r['train_s'] for r in rs):.1f} | {rtxt} |")
            if name == "fw-adam":
                verdicts.append((task, all(x is not None and x <= 0.8 for x in ratios)))
    met = sum(ok for _, ok in verdicts)
    lines += ["", f"Target: FW reaches Adam's final loss in <= 0.8x Adam's time on at least two of three tasks. "
              f"Met on {met} of {len(verdicts)} tasks: " + ", ".join(f"{t} {'yes' if ok else 'no'}" for t, ok in verdicts),
              "", f"Command: `python benchmarks/train/bench_fw_rnn.py --tasks {args.tasks} --steps {args.steps} "
              f"--seeds {args.seeds} --hidden {args.hidden} --mnist-subsample {args.mnist_subsample}"
              + (f" --mnist {args.mnist}`" if args.mnist else "`")]
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "fw_rnn.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(args.out, "fw_rnn.json"), "w") as f:
        json.dump(results, f)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
