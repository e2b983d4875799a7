"""Search under a measured-latency budget vs random search and vs the zoo's MobileNetV2 / Seesaw-Net.

Steps (each resumable; run them in order):

    python benchmarks/nas/bench_search.py search    # slimkit search: evolution, then random search on the same supernet
    python benchmarks/nas/bench_search.py train     # slimkit train: the four networks, same schedule
    /work/tools/cpujob exclusive -- python benchmarks/nas/bench_search.py latency   # interleaved, short
    python benchmarks/nas/bench_search.py report

The budget is the measured latency of the zoo's seesaw_net at width 0.5 (lut_check_*.json, from
bench_lut.py: in eager PyTorch the zoo's seesaw_net is slower than mobilenet_v2 at equal width, so a
mobilenet_v2 budget would leave no seesaw_net); each zoo baseline is the widest of its widths whose
measured latency fits the budget.
Data: a class-balanced subset of cifar10_train.npz written OUTSIDE the repository (--work); every
accuracy in the report is on cifar10_test_dev.npz after standalone training from scratch.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

DATA = os.path.join(ROOT, "..", "shared", "data")
OUT = os.path.join(ROOT, "benchmarks", "results", "nas")
PY = sys.executable


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("action", choices=["search", "train", "latency", "report"])
    p.add_argument("--data", default=os.path.join(DATA, "cifar10_train.npz"))
    p.add_argument("--test", default=os.path.join(DATA, "cifar10_test_dev.npz"))
    p.add_argument("--work", default="/tmp/slimkit_nas_search", help="data subset and runs (outside the repo)")
    p.add_argument("--lut-check", default=os.path.join(OUT, "lut_check_seesaw_eager_1t.json"))
    p.add_argument("--budget-model", default="seesaw_net w0.5")
    p.add_argument("--train-images", type=int, default=10000)
    p.add_argument("--supernet-steps", type=int, default=400)
    p.add_argument("--population", type=int, default=12)
    p.add_argument("--generations", type=int, default=5)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--di", action="store_true", help="train the supernet with DI-WS")
    return p.parse_args(argv)


def _load(path):
    with open(path) as f:
        return json.load(f)


def subset(args):
    """A class-balanced --train-images subset (+10% for slimkit train's own held-out split)."""
    from slimkit.data import few_shot_indices

    path = os.path.join(args.work, f"cifar10_sub{args.train_images}.npz")
    if not os.path.exists(path):
        os.makedirs(args.work, exist_ok=True)
        d = np.load(args.data)
        idx = few_shot_indices(torch.as_tensor(d["y"]).long(), int(args.train_images * 1.1) // 10, 0).numpy()
        np.savez(path, x=d["x"][idx], y=d["y"][idx])
    return path


def budget(args):
    check = _load(args.lut_check)
    zoo = {r["model"]: r["median_ms"] for r in check["zoo"]}
    ms = zoo[args.budget_model]
    widths = {}
    for family in ("mobilenet_v2", "seesaw_net"):
        fit = [float(k.split(" w")[-1]) for k, v in zoo.items() if k.startswith(family + " ") and v <= ms]
        widths[family] = max(fit) if fit else None
    return ms, check, widths, zoo


def _env(args):
    return {**os.environ, "OMP_NUM_THREADS": str(args.threads)}


def search(args):
    data = subset(args)
    ms, check, _, _ = budget(args)
    lut = os.path.join(ROOT, check["lut_file"])
    common = ["--space", "seesaw", "--data", f"cifar10:{data}", "--budget", f"latency_ms={ms:.3f}", "--lut", lut,
              "--supernet-steps", str(args.supernet_steps), "--population", str(args.population),
              "--generations", str(args.generations), "--parents", str(args.population // 2),
              "--mutations", str(args.population // 2), "--crossovers", str(args.population // 2),
              "--eval-images", "500", "--calib-images", "256", "--val-fraction", "0.1", "--no-progress"]
    common += ["--di"] if args.di else []
    evo, rnd = os.path.join(args.work, "evolution"), os.path.join(args.work, "random")
    resume = ["--resume"] if os.path.exists(os.path.join(evo, "search_config.json")) else []
    subprocess.run([PY, "-m", "slimkit.cli", "search", *common, "--strategy", "evolution", "--out", evo, *resume],
                   check=True, env=_env(args))
    os.makedirs(rnd, exist_ok=True)
    if not os.path.exists(os.path.join(rnd, "supernet.pt")):
        shutil.copy(os.path.join(evo, "supernet.pt"), os.path.join(rnd, "supernet.pt"))  # the same supernet
    subprocess.run([PY, "-m", "slimkit.cli", "search", *common, "--strategy", "random", "--out", rnd, "--resume"],
                   check=True, env=_env(args))


def models(args):
    """name -> (zoo model, --model-opts) of the four networks compared."""
    _, _, widths, _ = budget(args)
    out = {"evolution": ("nas", f"spec={os.path.join(args.work, 'evolution', 'best_spec.json')}"),
           "random": ("nas", f"spec={os.path.join(args.work, 'random', 'best_spec.json')}")}
    for family, w in widths.items():
        if w is not None:
            out[family] = (family, f"width_mult={w:g}")
    return out


def train(args):
    data = subset(args)
    for name, (model, opts) in models(args).items():
        out = os.path.join(args.work, f"train_{name}")
        if os.path.exists(os.path.join(out, "model.pt")):
            continue
        cmd = [PY, "-m", "slimkit.cli", "train", "--model", model, "--model-opts", opts, "--data",
               f"cifar10:{data}?holdout=balanced&test_fraction=0.0909", "--epochs", str(args.epochs), "--lr", "0.05",
               "--lr-schedule", "cosine", "--batch-size", "64", "--eval-every", str(args.epochs), "--out", out,
               "--no-progress"]
        subprocess.run(cmd, check=True, env=_env(args))


def _build(args, name):
    from slimkit.models import create_model
    from slimkit.train._cli import parse_options

    model, opts = models(args)[name]
    net = create_model(model, **parse_options(opts))
    net.load_state_dict(torch.load(os.path.join(args.work, f"train_{name}", "model.pt"), map_location="cpu",
                                   weights_only=True))
    return net.eval()


def latency(args):
    from slimkit.profile import compare_latency
    from slimkit.profile.analysis import cpu_name

    torch.set_num_threads(1)
    x = torch.randn(1, 3, 32, 32)
    nets = {name: _build(args, name) for name in models(args)}
    rows = {}
    for batch in (1, 64):
        xb = x.expand(batch, -1, -1, -1).contiguous()
        stats = compare_latency({k: (lambda m=m: m(xb)) for k, m in nets.items()}, (), warmup=5, repeats=40, threads=1)
        for k, s in stats.items():
            rows.setdefault(k, {})[f"eager_b{batch}_ms"] = s.median_ms
            rows[k][f"eager_b{batch}_iqr_ms"] = s.iqr_ms
            rows[k]["load1"] = s.loadavg[0]
    with open(os.path.join(OUT, "search_latency.json"), "w") as f:
        json.dump({"cpu": cpu_name(), "torch": torch.__version__, "threads": 1, "rows": rows,
                   "loadavg": os.getloadavg()}, f, indent=1)
    print(json.dumps(rows, indent=1))


def report(args):
    from slimkit.data import load_dataset
    from slimkit.nas.supernet import accuracy
    from slimkit.profile.counting import count_macs
    from slimkit.report.table import to_markdown

    torch.set_num_threads(args.threads)
    ms, check, widths, zoo = budget(args)
    test = load_dataset(f"cifar10:{args.test}", holdout="balanced", test_fraction=1.0 - 1e-9)
    tx, ty = test.test.tensors()
    batches = [(tx[i:i + 500].float(), ty[i:i + 500].long()) for i in range(0, len(ty), 500)]
    lat = _load(os.path.join(OUT, "search_latency.json"))["rows"] if os.path.exists(
        os.path.join(OUT, "search_latency.json")) else {}
    rows = []
    for name in models(args):
        net = _build(args, name)
        row = {"model": name, "macs": count_macs(net, torch.zeros(1, 3, 32, 32)),
               "params": sum(p.numel() for p in net.parameters()), "test_dev_acc": accuracy(net, batches),
               **lat.get(name, {})}
        if name in ("evolution", "random"):
            best = _load(os.path.join(args.work, name, "best_spec.json"))
            res = _load(os.path.join(args.work, name, "results.json"))
            row.update(spec=best["spec"], lut_ms=best["latency_ms"], supernet_val_acc=best["val_accuracy_in_supernet"],
                       evaluated=len(res["history"]), rejected=res["rejected"])
        else:
            row.update(spec=f"zoo {name}, {models(args)[name][1]}", lut_ms=None)
        log = os.path.join(args.work, f"train_{name}", "metrics.jsonl")
        row["train_s"] = sum(json.loads(line).get("epoch_time_s", 0) or 0 for line in open(log)) if os.path.exists(log) else None
        rows.append(row)
    cols = ["model", ("test_dev_acc", "test-dev top-1 %"), ("eager_b1_ms", "measured ms b1"),
            ("eager_b64_ms", "measured ms b64"), ("lut_ms", "LUT ms"), ("macs", "MACs"), ("params", "params"),
            ("supernet_val_acc", "supernet val %"), "spec"]
    text = (f"budget latency_ms={ms:.3f} (= measured zoo {args.budget_model}, eager, 1 thread, batch 1); "
            f"zoo widths {widths}; {args.epochs} epochs on {args.train_images} images; {check['cpu']}, "
            f"torch {torch.__version__}\n\n" + to_markdown(rows, cols) + "\n")
    with open(os.path.join(OUT, "search.md"), "w") as f:
        f.write(text)
    with open(os.path.join(OUT, "search.json"), "w") as f:
        json.dump({"budget_ms": ms, "rows": rows, "settings": vars(args)}, f, indent=1, default=str)
    print(text)


if __name__ == "__main__":
    a = parse()
    {"search": search, "train": train, "latency": latency, "report": report}[a.action](a)
