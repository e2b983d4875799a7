"""Frank-Wolfe (fw-adam) vs tuned Adam on a tanh RNN: mini-batches and time to fixed targets.

    # 1) count mini-batches to each target (resumable: one JSON per run in --runs; split by --tasks/--seeds)
    python benchmarks/train/bench_fw_rnn.py count --tasks adding-100 --seeds 0,1,2 --mnist ../shared/data/mnist.npz
    # 2) per-mini-batch wall cost of every optimizer, interleaved (run alone: cpujob exclusive)
    python benchmarks/train/bench_fw_rnn.py time --mnist ../shared/data/mnist.npz
    # 3) tables
    python benchmarks/train/bench_fw_rnn.py report

Every optimizer step consumes one fresh mini-batch, FW inner steps included, so "mini-batches" is the data
and gradient cost. FW runs are evaluated at the anchor weights w_k (``anchor_weights()``). A run stops when it has
reached its last target, diverges (non-finite loss), or hits ``--max-batches`` ("not reached"). Time to target is
mini-batches x the measured per-mini-batch cost of that optimizer on that task (``time``), not the wall time of
the counting runs, which share the CPU with other jobs.
"""
import argparse
import glob
import json
import os
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from slimkit.data.sequences import AddingProblem, CopyingMemory, NoisePaddedRows, pixel_sequences
from slimkit.models import create_model
from slimkit.train.optim import create_optimizer

# Tuned baseline grid (issue 14): Adam at three learning rates, with and without clipping; FW-Adam with the
# authors' cumulative iterate, radius = lr = 1e-3 (their adding/HAR setting), K in {1, 5, 10}.
CONFIGS = {f"adam lr={lr:g}{' clip=1' if clip else ''}": dict(name="adam", opts=dict(lr=lr), clip=clip)
           for lr in (2e-4, 1e-3, 2e-3) for clip in (None, 1.0)}
CONFIGS.update({f"fw-adam K={k}": dict(name="fw-adam", opts=dict(lr=1e-3, inner_steps=k, iterate="cumulative"),
                                       clip=None) for k in (1, 5, 10)})

# name -> (targets, "loss" (lower is better) or "accuracy" (higher), mini-batch budget)
# Budgets are what 2 shared CPU cores allowed (the papers train 10-100x longer).
TASKS = {"adding-50": ((0.05, 0.01), "loss", 6000), "adding-100": ((0.05, 0.01), "loss", 3000), "adding-200": ((0.05, 0.01), "loss", 1500),
         "copying": ((0.28, 0.15), "loss", 1000), "pixel-mnist": ((0.8, 0.9), "accuracy", 1000),
         "noisy-mnist": ((0.8, 0.9), "accuracy", 1000),
         # affordable on a shared 2-vCPU machine: 28 rows + 12 noise steps (the authors pad to 1000)
         "noisy-mnist-40": ((0.8, 0.9), "accuracy", 2000),
         # sequential row MNIST: 28 steps of 28 pixels, no noise (noisy-mnist with zero padding steps)
         "row-mnist": ((0.8, 0.9), "accuracy", 1500)}


def _stack(ds, idx):
    if isinstance(ds, AddingProblem):
        return ds.x[idx], ds.y[idx]
    if isinstance(ds, CopyingMemory):  # one vectorised one-hot instead of one per sample
        return F.one_hot(ds.ids[idx], ds.vocab_size).to(torch.float32), ds.y[idx]
    if hasattr(ds, "__getitems__"):
        items = ds.__getitems__(idx.tolist())
    else:
        items = [ds[int(i)] for i in idx]
    return torch.stack([b[0] for b in items]), torch.stack([torch.as_tensor(b[1]) for b in items])


def make_task(name, args, seed):
    """(train set, held-out (x, y), model kwargs, loss fn, accuracy fn or None)."""
    if name.startswith("adding"):
        t = int(name.split("-")[1])
        train, test = AddingProblem(t, 50000, seed=2 * seed), AddingProblem(t, 1000, seed=2 * seed + 1)
        return train, (test.x, test.y), dict(input_size=2, num_classes=1), F.mse_loss, None
    if name == "copying":
        train = CopyingMemory(args.delay, 50000, seed=2 * seed)
        test = CopyingMemory(args.delay, 500, seed=2 * seed + 1)
        held = _stack(test, torch.arange(len(test)))

        def ce(out, y):
            return F.cross_entropy(out.flatten(0, 1), y.flatten())
        return train, held, dict(input_size=train.vocab_size, num_classes=train.vocab_size, per_step=True), ce, None
    d = np.load(args.mnist)
    n_test = args.mnist_test
    if name == "pixel-mnist":
        train = pixel_sequences(d["x_train"], d["y_train"], pixels_per_step=args.pixels_per_step)
        test = pixel_sequences(d["x_test"][:n_test], d["y_test"][:n_test], pixels_per_step=args.pixels_per_step)
        held = test.tensors()
        mkw = dict(input_size=args.pixels_per_step, num_classes=10)
    else:  # noisy-mnist (length --noise-length) or noisy-mnist-L (length L)
        length = (28 if name == "row-mnist" else int(name.split("-")[2]) if name.count("-") == 2
                  else args.noise_length)
        train = NoisePaddedRows(d["x_train"], d["y_train"], length, seed=2 * seed)
        test = NoisePaddedRows(d["x_test"][:n_test], d["y_test"][:n_test], length, seed=2 * seed + 1,
                               mean=train.mean, std=train.std)
        held = _stack(test, torch.arange(len(test)))
        mkw = dict(input_size=28, num_classes=10)

    def acc(out, y):
        return float((out.argmax(1) == y).float().mean())
    return train, held, mkw, F.cross_entropy, acc


def _anchor(opt):
    import contextlib
    return opt.anchor_weights() if hasattr(opt, "anchor_weights") else contextlib.nullcontext()


def evaluate(model, opt, held, loss_fn, acc_fn, chunk=500):
    x, y = held
    with torch.no_grad(), _anchor(opt):
        outs = [model(x[i:i + chunk]) for i in range(0, len(x), chunk)]
    out = torch.cat(outs)
    return float(loss_fn(out, y)), (acc_fn(out, y) if acc_fn else None)


def _ckpt_path(args, task, cfg_name, seed):
    return os.path.join(args.runs, "partial", f"{task}__{cfg_name.replace(' ', '_')}__s{seed}.pt")


def count_run(task, cfg_name, seed, args, data, deadline=None):
    """One counting run. Every ``--ckpt-every`` mini-batches the whole run state (model, optimizer, batch-order
    generator, curve) is saved under runs/partial/, so a stopped run resumes exactly where it was. Returns None when
    ``deadline`` (time.time()) passes first (the checkpoint is then current)."""
    targets, metric, budget = TASKS[task]
    budget = args.max_batches or budget
    cfg = CONFIGS[cfg_name]
    train, held, mkw, loss_fn, acc_fn = data
    torch.manual_seed(seed)
    model = create_model("rnn_classifier", cell="tanh", hidden_size=args.hidden, **mkw)
    opt = create_optimizer(cfg["name"], model.parameters(), **cfg["opts"])
    g = torch.Generator().manual_seed(10_000 + seed)  # same batch order for every optimizer of this seed
    reached, curve, status, start, cpu = {}, [], "budget", 1, 0.0
    ckpt = _ckpt_path(args, task, cfg_name, seed)
    if os.path.exists(ckpt):
        st = torch.load(ckpt, weights_only=False)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        g.set_state(st["gen"])
        reached, curve, start, cpu = st["reached"], st["curve"], st["mb"] + 1, st["cpu_s"]
        print(f"  resuming {os.path.basename(ckpt)} at mini-batch {start}", flush=True)
    t0, c0 = time.perf_counter(), time.process_time()
    for mb in range(start, budget + 1):
        x, y = _stack(train, torch.randint(0, len(train), (args.batch,), generator=g))
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        if not torch.isfinite(loss):
            status = "diverged"
            break
        loss.backward()
        if cfg["clip"]:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["clip"])
        opt.step()
        if mb % args.eval_every == 0 or mb == budget:
            cpu += time.process_time() - c0  # training CPU time only: evaluations excluded
            ev_loss, ev_acc = evaluate(model, opt, held, loss_fn, acc_fn)
            value = ev_acc if metric == "accuracy" else ev_loss
            curve.append((mb, ev_loss, ev_acc, cpu))
            for tgt in targets:
                ok = value >= tgt if metric == "accuracy" else value <= tgt
                if ok and str(tgt) not in reached:
                    reached[str(tgt)] = mb
            if not np.isfinite(ev_loss):
                status = "diverged"
                break
            if len(reached) == len(targets):
                status = "reached"
                break
            if mb % args.ckpt_every == 0 or (deadline and time.time() > deadline):
                os.makedirs(os.path.dirname(ckpt), exist_ok=True)
                torch.save(dict(model=model.state_dict(), opt=opt.state_dict(), gen=g.get_state(), mb=mb,
                                reached=reached, curve=curve, cpu_s=cpu), ckpt + ".tmp")
                os.replace(ckpt + ".tmp", ckpt)
                if deadline and time.time() > deadline:
                    return None
            c0 = time.process_time()
    if os.path.exists(ckpt):
        os.remove(ckpt)
    return dict(task=task, config=cfg_name, seed=seed, hidden=args.hidden, batch=args.batch, budget=budget,
                reached=reached, status=status, batches=curve[-1][0] if curve else 0, curve=curve,
                wall_s=time.perf_counter() - t0, cpu_s=cpu, torch=torch.__version__)


def _take_lock(path):
    """A run is done by one process at a time (several ``count`` processes may share --runs): the lock file holds
    the owner's pid; a lock whose owner is gone is taken over."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                os.kill(int(open(path).read() or 0), 0)
                return False  # owner alive
            except (ProcessLookupError, ValueError):
                os.remove(path)
                continue
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        return True
    return False


def cmd_count(args):
    os.makedirs(args.runs, exist_ok=True)
    configs = [c for c in CONFIGS if not args.configs or c in args.configs.split(";")]
    deadline = None
    if args.stop_at:  # "HH:MM" UTC today: checkpoint and exit once past it
        import datetime
        now = datetime.datetime.now(datetime.timezone.utc)
        hh, mm = map(int, args.stop_at.split(":"))
        deadline = now.replace(hour=hh, minute=mm, second=0, microsecond=0).timestamp()
    for task in args.tasks.split(","):
        for seed in [int(s) for s in args.seeds.split(",")]:
            data = None
            for cfg in configs:
                path = os.path.join(args.runs, f"{task}__{cfg.replace(' ', '_')}__s{seed}.json")
                if os.path.exists(path):
                    continue
                if deadline and time.time() > deadline:
                    print("past --stop-at: stopping", flush=True)
                    return
                lock = _ckpt_path(args, task, cfg, seed) + ".lock"
                if not _take_lock(lock):
                    print(f"{task} seed {seed} {cfg}: running in another process, skipped", flush=True)
                    continue
                try:
                    data = data or make_task(task, args, seed)
                    r = count_run(task, cfg, seed, args, data, deadline)
                finally:
                    os.remove(lock)
                if r is None:
                    print(f"{task} seed {seed} {cfg}: checkpointed at --stop-at", flush=True)
                    return
                with open(path, "w") as f:
                    json.dump(r, f)
                print(f"{task} seed {seed} {cfg}: {r['status']} {r['reached']} after {r['batches']} "
                      f"({r['wall_s']:.0f} s wall, {r['cpu_s']:.0f} s CPU)", flush=True)


def cmd_time(args):
    """Per-mini-batch wall cost of each config, steps of all configs interleaved, median with [p25, p75]."""
    rows = {}
    for task in args.tasks.split(","):
        train, held, mkw, loss_fn, _ = make_task(task, args, 0)
        models, opts = {}, {}
        for name, cfg in CONFIGS.items():
            torch.manual_seed(0)
            models[name] = create_model("rnn_classifier", cell="tanh", hidden_size=args.hidden, **mkw)
            opts[name] = create_optimizer(cfg["name"], models[name].parameters(), **cfg["opts"])
        times = {n: [] for n in CONFIGS}
        g = torch.Generator().manual_seed(0)
        for step in range(args.time_steps + 1):
            x, y = _stack(train, torch.randint(0, len(train), (args.batch,), generator=g))
            order = list(CONFIGS) if step % 2 else list(CONFIGS)[::-1]
            for name in order:
                t0 = time.perf_counter()
                opts[name].zero_grad(set_to_none=True)
                loss_fn(models[name](x), y).backward()
                if CONFIGS[name]["clip"]:
                    torch.nn.utils.clip_grad_norm_(models[name].parameters(), CONFIGS[name]["clip"])
                opts[name].step()
                if step:  # step 0 is warm-up
                    times[name].append(time.perf_counter() - t0)
        for name, v in times.items():
            q = statistics.quantiles(v, n=4)
            rows[f"{task}|{name}"] = dict(median_ms=statistics.median(v) * 1e3, p25_ms=q[0] * 1e3, p75_ms=q[2] * 1e3)
        print(task, {n: round(rows[f'{task}|{n}']['median_ms'], 1) for n in CONFIGS}, flush=True)
    meta = dict(cpu=_cpu(), torch=torch.__version__, threads=torch.get_num_threads(), load=os.getloadavg(),
                hidden=args.hidden, batch=args.batch, steps=args.time_steps)
    with open(os.path.join(args.out, "fw_rnn_step_cost.json"), "w") as f:
        json.dump(dict(meta=meta, rows=rows), f, indent=1)


def _cpu():
    with open("/proc/cpuinfo") as f:
        info = f.read()
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    return name + (" (VNNI)" if "vnni" in info else " (no VNNI)")


TRIVIAL = {"adding-50": "always predicting 1 gives MSE 0.167", "adding-100": "always predicting 1 gives MSE 0.167",
           "adding-200": "always predicting 1 gives MSE 0.167", "copying": "the memoryless baseline is 0.297",
           "pixel-mnist": "chance is 0.10", "noisy-mnist": "chance is 0.10 (28 rows padded to 100 steps)",
           "noisy-mnist-40": "chance is 0.10 (28 rows + 12 noise steps; 500 test images)",
           "row-mnist": "chance is 0.10 (28 rows of 28 pixels, no noise; 500 test images)"}


def _cpu_at(r, mb):
    """Training CPU seconds of run r when it first reached mini-batch mb (None for runs recorded without it)."""
    pt = next((c for c in r["curve"] if c[0] == mb), None)
    return pt[3] if pt is not None and len(pt) > 3 else None


def cmd_report(args):
    runs = [json.load(open(p)) for p in sorted(glob.glob(os.path.join(args.runs, "*.json")))]
    cost_path = os.path.join(args.out, "fw_rnn_step_cost.json")
    cost = json.load(open(cost_path)) if os.path.exists(cost_path) else {"rows": {}, "meta": {}}
    lines = ["# Frank-Wolfe vs tuned Adam on a tanh RNN: mini-batches and time to fixed targets", "",
             f"tanh RNN (nn.RNN, one layer), batch {runs[0]['batch'] if runs else '?'}, torch "
             f"{runs[0]['torch'] if runs else torch.__version__}, {_cpu()}, 1 torch thread. Mini-batches count every "
             "optimizer step, FW inner steps included (FW K=k makes one Adam update per k mini-batches). FW-Adam: the "
             "authors' cumulative iterate, radius = lr = 1e-3, evaluated at the anchor weights. Held-out loss/accuracy "
             f"evaluated every {args.eval_every} mini-batches (the resolution of the counts).",
             "Cells: median mini-batches over seeds, then the median training CPU seconds of those runs at that point "
             "(time.process_time, evaluations excluded; the machine is shared, so CPU time, not wall time), and the "
             "per-seed mini-batches ('-' = not reached within the budget, 'div' = diverged).", ""]
    verdicts = []
    groups = {}
    for r in runs:
        groups.setdefault((r["task"], r["hidden"], r["budget"]), []).append(r)
    order = list(TASKS)
    for (task, hidden, budget) in sorted(groups, key=lambda k: (order.index(k[0]), -k[1], k[2])):
        rs = groups[(task, hidden, budget)]
        targets, metric, _ = TASKS[task]
        seeds_done = sorted({r["seed"] for r in rs})
        lines += [f"## {task}, hidden {hidden} (targets: {metric} {' / '.join(str(t) for t in targets)}; "
                  f"budget {budget} mini-batches; {TRIVIAL[task]}; seeds {seeds_done}; {len(rs)} runs)", "",
                  "| optimizer | seeds | " + " | ".join(f"to {t}" for t in targets) + f" | best held-out {metric} "
                  "(median) | stopped |", "|---|---|" + "---|" * len(targets) + "---:|---|"]
        summary = {}
        for cfg in CONFIGS:
            cr = sorted((r for r in rs if r["config"] == cfg), key=lambda r: r["seed"])
            if not cr:
                continue
            cells = []
            ms = cost["rows"].get(f"{task}|{cfg}", {}).get("median_ms")
            for t in targets:
                vals = [r["reached"].get(str(t)) for r in cr]
                per = ", ".join(str(v) if v is not None else ("div" if r["status"] == "diverged" else "-")
                                for v, r in zip(vals, cr))
                if all(v is not None for v in vals):
                    med = statistics.median(vals)
                    secs = [_cpu_at(r, v) for r, v in zip(cr, vals)]
                    if all(x is not None for x in secs):
                        tm = f", {statistics.median(secs):.0f} CPU s"
                    else:
                        tm = f", ~{med * ms / 1e3:.0f} s (x step cost)" if ms else ""
                    summary[(cfg, t)] = (med, len(cr))
                    cells.append(f"**{med:.0f}**{tm} ({per})")
                else:
                    summary[(cfg, t)] = None
                    cells.append(f"not reached by {len(cr) - sum(v is not None for v in vals)}/{len(cr)} ({per})")
            best = [(max if metric == "accuracy" else min)(c[2] if metric == "accuracy" else c[1] for c in r["curve"])
                    for r in cr]
            stops = ", ".join(f"{r['status']}@{r['batches']}" for r in cr)
            lines.append(f"| {cfg} | {len(cr)} | " + " | ".join(cells) + f" | {statistics.median(best):.4f} | {stops} |")
        lines.append("")
        # verdict on the seeds that every setting of this group has finished (a fair, paired comparison)
        per_cfg = {c: {r["seed"]: r for r in rs if r["config"] == c} for c in CONFIGS}
        per_cfg = {c: v for c, v in per_cfg.items() if v}
        common = sorted(set.intersection(*(set(v) for v in per_cfg.values()))) if per_cfg else []
        n_adam = sum(1 for c in per_cfg if c.startswith("adam"))
        n_fw = sum(1 for c in per_cfg if c.startswith("fw"))
        grid = f"{n_adam} Adam and {n_fw} FW settings on the seeds all of them finished, {common}"
        for t in targets:
            med = {}
            for c, by_seed in per_cfg.items():
                vals = [by_seed[sd]["reached"].get(str(t)) for sd in common]
                if common and all(v is not None for v in vals):
                    med[c] = statistics.median(vals)
            ok_adam = {c: v for c, v in med.items() if c.startswith("adam")}
            ok_fw = {c: v for c, v in med.items() if c.startswith("fw")}
            best_adam = min(ok_adam, key=ok_adam.get) if ok_adam else None
            best_fw = min(ok_fw, key=ok_fw.get) if ok_fw else None
            if not common:
                v = "no verdict: no seed finished by every setting"
            elif best_fw is None and best_adam is None:
                v = f"not testable here: no optimizer reached it on every seed within {budget} mini-batches ({grid})"
            elif best_fw is None:
                v = (f"not reproduced: best Adam ({best_adam}) {ok_adam[best_adam]:.0f} mini-batches; no FW setting "
                     f"reached it on every seed ({grid})")
            elif best_adam is None:
                v = (f"reproduced: {best_fw} reaches it in {ok_fw[best_fw]:.0f} mini-batches, no Adam setting on "
                     f"every seed ({grid})")
            else:
                a, f_ = ok_adam[best_adam], ok_fw[best_fw]
                word = "reproduced" if f_ < a else "not reproduced (tie at this resolution)" if f_ == a else "not reproduced"
                v = f"{word}: best FW ({best_fw}) {f_:.0f} vs best Adam ({best_adam}) {a:.0f} mini-batches ({grid})"
            verdicts.append(f"- {task} (hidden {hidden}, budget {budget}), {metric} {t}: {v}")
    partial = sorted(glob.glob(os.path.join(args.runs, "partial", "*.pt")))
    if partial:
        lines += ["## Unfinished runs (checkpointed; `count` with the same arguments resumes them)", "",
                  "| run | mini-batches done | training CPU s | best held-out so far |", "|---|---:|---:|---:|"]
        for p in partial:
            st = torch.load(p, weights_only=False)
            task = os.path.basename(p).split("__")[0]
            acc = TASKS.get(task, (None, "loss"))[1] == "accuracy"
            best = (max(c[2] for c in st["curve"]) if acc else min(c[1] for c in st["curve"])) if st["curve"] else float("nan")
            lines.append(f"| {os.path.basename(p)[:-3]} | {st['mb']} | {st['cpu_s']:.0f} | "
                         f"{'accuracy' if acc else 'loss'} {best:.4f} |")
        lines.append("")
    lines += ["## Verdicts (claim: FW reaches the target with fewer mini-batches than the best tuned Adam)", ""]
    lines += verdicts
    lines += ["", "Commands: `python benchmarks/train/bench_fw_rnn.py count --tasks TASK --seeds 0,1,2 --hidden H "
              "[--stop-at HH:MM]` (resumable: one JSON per finished run, checkpoints of running ones under "
              "fw_runs/partial/), then `... report`."]
    with open(os.path.join(args.out, "fw_rnn.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("command", choices=("count", "time", "report"))
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--configs", default="", help="';'-separated config names (default: all)")
    ap.add_argument("--mnist", default="../shared/data/mnist.npz")
    ap.add_argument("--mnist-test", type=int, default=500, help="held-out test images used for the curves")
    ap.add_argument("--pixels-per-step", type=int, default=4, help="4 -> 196 steps of 4 pixels; 1 = the 784-step task")
    ap.add_argument("--noise-length", type=int, default=100, help="noisy MNIST: 28 rows padded to this many steps")
    ap.add_argument("--delay", type=int, default=50, help="copying task delay T (sequence length T + 20)")
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--max-batches", type=int, default=0, help="override the per-task budget")
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--time-steps", type=int, default=10)
    ap.add_argument("--ckpt-every", type=int, default=500, help="mini-batches between resumable checkpoints")
    ap.add_argument("--stop-at", default="", help="HH:MM UTC: checkpoint the current run and exit after this time")
    ap.add_argument("--runs", default="benchmarks/results/train/fw_runs")
    ap.add_argument("--out", default="benchmarks/results/train")
    args = ap.parse_args()
    torch.set_num_threads(1)
    {"count": cmd_count, "time": cmd_time, "report": cmd_report}[args.command](args)


if __name__ == "__main__":
    main()
