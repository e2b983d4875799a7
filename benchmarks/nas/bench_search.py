"""Search under a measured-latency budget vs random search and vs the zoo's MobileNetV2 / Seesaw-Net.

Steps (each resumable; run them in order):

    python benchmarks/nas/bench_search.py search    # slimkit search: evolution, then random search on the same supernet
    python benchmarks/nas/bench_search.py train     # slimkit train: the four networks, same schedule
    /work/tools/cpujob exclusive -- python benchmarks/nas/bench_search.py latency   # interleaved, short
    python benchmarks/nas/bench_search.py report
    python benchmarks/nas/bench_search.py plots     # redraw the committed search/*/pareto.png (latency axis = LUT estimate)

The budget is the measured latency of the zoo's seesaw_net at width 0.5 (lut_check_*.json, from
bench_lut.py: in eager PyTorch the zoo's seesaw_net is slower than mobilenet_v2 at equal width, so a
mobilenet_v2 budget would leave no seesaw_net); each zoo baseline is the widest of its widths whose
measured latency fits the budget.
The search times nothing: it judges latency on a copy of bench_lut's table (in --work) whose scale is
the median measured / block-sum ratio of the whole networks bench_lut timed (lut_check rows), so the
search step can run while others time things; only the ``latency`` step measures.
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
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import loo_scale_errors  # noqa: E402

DATA = os.path.join(ROOT, "..", "shared", "data")
OUT = os.path.join(ROOT, "benchmarks", "results", "nas")
PY = sys.executable


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("action", choices=["search", "train", "latency", "report", "plots"])
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
    p.add_argument("--eval-images", type=int, default=500, help="held-out images per candidate in the supernet")
    p.add_argument("--calib-images", type=int, default=256, help="BN recalibration images per candidate")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--di", action="store_true", help="train the supernet with DI-WS")
    p.add_argument("--test-images", type=int, default=0, help="first N test-dev images in the report (0 = all)")
    p.add_argument("--out", default=OUT, help="where search.md / search.json / search_latency.json go")
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


def lut_from_check(args, check):
    """--work/lut.json: bench_lut's table with scale = median(measured / block sum) over the whole
    networks lut_check timed (no new timing). Returns (path, scale, leave-one-out |error| % per network)."""
    import statistics

    from slimkit.nas import get_space
    from slimkit.nas.cost import LatencyLUT

    space = get_space("seesaw")
    lut = LatencyLUT.load(space, os.path.join(ROOT, check["lut_file"]), check["runtime"], check["threads"], 1)
    lut.scale = 1.0
    missing = lut.missing(space.covering(space))
    if missing:
        raise SystemExit(f"{len(missing)} blocks of the seesaw space are not in {check['lut_file']}; rerun bench_lut.py")
    rows = [{"spec": r["spec"], "block_sum_ms": lut.block_sum(r["spec"]), "measured_ms": r["measured_ms"]}
            for r in check["rows"]]
    lut.scale = statistics.median(r["measured_ms"] / r["block_sum_ms"] for r in rows)
    lut.calibration = rows
    loo = loo_scale_errors([r["block_sum_ms"] for r in rows], [r["measured_ms"] for r in rows])
    os.makedirs(args.work, exist_ok=True)
    return lut.save(os.path.join(args.work, "lut.json")), lut.scale, loo


def _cpu(args, step, fn):
    """Run ``fn`` and add the CPU seconds it and its subprocesses used to --work/cpu.json."""
    import resource

    def used():
        return sum(getattr(resource.getrusage(w), f) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
                   for f in ("ru_utime", "ru_stime"))

    t0 = used()
    try:
        return fn(args)
    finally:
        path = os.path.join(args.work, "cpu.json")
        cpu = _load(path) if os.path.exists(path) else {}
        cpu[step] = cpu.get(step, 0.0) + used() - t0
        os.makedirs(args.work, exist_ok=True)
        with open(path, "w") as f:
            json.dump(cpu, f, indent=1)


def _env(args):
    return {**os.environ, "OMP_NUM_THREADS": str(args.threads)}


def search(args):
    data = subset(args)
    ms, check, _, _ = budget(args)
    lut, scale, _ = lut_from_check(args, check)
    print(f"latency table {lut}: scale {scale:.3f} from {len(check['rows'])} whole networks of {args.lut_check}",
          flush=True)
    common = ["--space", "seesaw", "--data", f"cifar10:{data}", "--budget", f"latency_ms={ms:.3f}", "--lut", lut,
              "--lut-calibrate", "0",
              "--supernet-steps", str(args.supernet_steps), "--population", str(args.population),
              "--generations", str(args.generations), "--parents", str(args.population // 2),
              "--mutations", str(args.population // 2), "--crossovers", str(args.population // 2),
              "--eval-images", str(args.eval_images), "--calib-images", str(args.calib_images), "--val-fraction", "0.1", "--no-progress"]
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


def _same_as(args, name):
    """The searched network trained before ``name`` with the same spec (random search can pick the
    evolution's network: both start from the same seeded population), or None."""
    if name != "random":
        return None
    specs = [_load(os.path.join(args.work, n, "best_spec.json"))["spec"] for n in ("evolution", "random")]
    return "evolution" if specs[0] == specs[1] else None


def train(args):
    data = subset(args)
    for name, (model, opts) in models(args).items():
        out = os.path.join(args.work, f"train_{name}")
        if os.path.exists(os.path.join(out, "model.pt")):
            continue
        same = _same_as(args, name)
        if same:  # the same spec, data, seed and schedule: trained once, not twice
            shutil.copytree(os.path.join(args.work, f"train_{same}"), out, dirs_exist_ok=True)
            with open(os.path.join(out, "same_as.txt"), "w") as f:
                f.write(same + "\n")
            continue
        cmd = [PY, "-m", "slimkit.cli", "train", "--model", model, "--model-opts", opts, "--data",
               f"cifar10:{data}?holdout=balanced&test_fraction=0.0909", "--epochs", str(args.epochs), "--lr", "0.05",
               "--lr-schedule", "cosine", "--batch-size", "64", "--eval-every", str(args.epochs), "--out", out,
               "--no-progress"]
        subprocess.run(cmd, check=True, env=_env(args))


def _build(args, name):
    from slimkit.models import create_model
    from slimkit.train.config import parse_options

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
    with open(os.path.join(args.out, "search_latency.json"), "w") as f:
        json.dump({"cpu": cpu_name(), "torch": torch.__version__, "threads": 1, "rows": rows,
                   "loadavg": os.getloadavg()}, f, indent=1)
    print(json.dumps(rows, indent=1))


def report(args):
    import statistics

    from slimkit.data import load_dataset
    from slimkit.nas.supernet import accuracy
    from slimkit.profile.counting import count_macs
    from slimkit.report.table import to_markdown

    torch.set_num_threads(args.threads)
    ms, check, widths, zoo = budget(args)
    _, scale, loo = lut_from_check(args, check)
    test = load_dataset(f"cifar10:{args.test}", holdout="balanced", test_fraction=0.5)  # both halves: all of it
    (ax, ay), (bx, by) = test.train.tensors(), test.test.tensors()
    tx, ty = torch.cat([ax, bx]), torch.cat([ay, by])
    if args.test_images:  # a seeded random subset (the halves above are ordered by class)
        keep = torch.randperm(len(ty), generator=torch.Generator().manual_seed(0))[:args.test_images]
        tx, ty = tx[keep], ty[keep]
    batches = [(tx[i:i + 500].float(), ty[i:i + 500].long()) for i in range(0, len(ty), 500)]
    lat_path = os.path.join(args.out, "search_latency.json")
    lat = _load(lat_path)["rows"] if os.path.exists(lat_path) else {}
    cfg = _load(os.path.join(args.work, "evolution", "search_config.json"))
    rows = []
    for name, (model, opts) in models(args).items():
        net = _build(args, name)
        row = {"model": name, "macs": count_macs(net, torch.zeros(1, 3, 32, 32)),
               "params": sum(p.numel() for p in net.parameters()), "test_dev_acc": accuracy(net, batches),
               **lat.get(name, {})}
        if name in ("evolution", "random"):
            best = _load(os.path.join(args.work, name, "best_spec.json"))
            res = _load(os.path.join(args.work, name, "results.json"))
            row.update(spec=best["spec"], lut_ms=best["latency_ms"], supernet_val_acc=best["val_accuracy_in_supernet"],
                       evaluated=len(res["history"]), rejected=res["rejected"])
            if _same_as(args, name):
                row["model"] = f"{name} (= {_same_as(args, name)}'s pick, trained once)"
        else:
            key = f"{model} w{float(opts.split('=')[1]):g}"
            row.update(spec=f"zoo {model} {opts}", lut_ms=None, lut_check_ms=zoo[key])
        log = os.path.join(args.work, f"train_{name}", "metrics.jsonl")
        if os.path.exists(log):
            with open(log) as f:
                epochs = [json.loads(line) for line in f if line.strip()]
            row["train_s"] = sum(e.get("epoch_time_s") or 0 for e in epochs)
            last = next((e["eval_accuracy"] for e in reversed(epochs) if e.get("eval_accuracy") is not None), None)
            row["holdout_acc"] = None if last is None else 100.0 * last  # slimkit train's own held-out split
        rows.append(row)
    cpu_path = os.path.join(args.work, "cpu.json")
    cpu = _load(cpu_path) if os.path.exists(cpu_path) else {}
    cols = ["model", ("test_dev_acc", "test-dev top-1 %"), ("lut_ms", "LUT ms (est.)"),
            ("lut_check_ms", "measured ms (bench_lut)"), ("eager_b1_ms", "measured ms b1"),
            ("eager_b64_ms", "measured ms b64"), ("macs", "MACs"), ("params", "params"),
            ("holdout_acc", "train held-out %"), ("supernet_val_acc", "supernet val %"), ("evaluated", "evaluated"), ("rejected", "over budget"),
            ("train_s", "train wall s (shared cores)"), "spec"]
    loo_abs = [abs(v) for v in loo]
    text = [f"Search under a latency budget: latency_ms <= {ms:.3f} (= measured zoo {args.budget_model}, eager, "
            f"1 thread, batch 1, from {os.path.relpath(args.lut_check, ROOT)}); zoo baselines = widest width under "
            f"the budget: {widths}. {check['cpu']}, 2 cores shared, torch {torch.__version__}, OMP_NUM_THREADS=1.",
            "",
            f"Settings: supernet {cfg['supernet_steps']} single-path steps ({'DI-WS' if cfg['di'] else 'plain WS'}, "
            f"batch {cfg['batch_size']}, lr {cfg['lr']}) on a class-balanced {args.train_images}-image subset of "
            f"cifar10_train.npz (10% held out to rank candidates, {cfg['eval_images']} images, BN recalibrated on "
            f"{cfg['calib_images']}); evolution: population {cfg['population']}, {args.generations} generations, "
            f"{cfg['parents']} parents, {cfg['mutations']} mutations + {cfg['crossovers']} crossovers per generation; "
            f"random search: the same number of feasible candidates on the same supernet. Every network below then "
            f"trained from scratch with slimkit train, {args.epochs} epochs, SGD lr 0.05 cosine, batch 64, on the "
            f"same subset; test-dev = cifar10_test_dev.npz ({len(ty)} images).",
            "",
            f"Latency: the search times nothing. LUT ms = bench_lut's per-block table x {scale:.3f} (median measured /"
            f" block-sum over the {len(loo)} whole networks bench_lut timed; leave-one-out error of that scale on "
            f"those networks: median |error| {statistics.median(loo_abs):.1f}%, max {max(loo_abs):.1f}%). "
            + ("measured ms b1/b64: interleaved, bench_search.py latency." if lat else
               "The interleaved whole-network timing of the found networks (latency step) was NOT run: "
               "measured ms b1/b64 are empty; the zoo column is bench_lut's measurement."),
            "",
            "CPU seconds per step (this process + children): " + (", ".join(f"{k} {v:.0f}" for k, v in cpu.items())
                                                                  or "not recorded"),
            "", to_markdown(rows, cols), ""]
    text = "\n".join(text)
    with open(os.path.join(args.out, "search.md"), "w") as f:
        f.write(text)
    with open(os.path.join(args.out, "search.json"), "w") as f:
        json.dump({"budget_ms": ms, "lut_scale": scale, "lut_loo_error_pct": loo, "cpu_s": cpu, "rows": rows,
                   "search_config": cfg, "settings": vars(args)}, f, indent=1, default=str)
    print(text)


def plots(args):
    """Redraw pareto.png of the committed searches (OUT/search/evolution, OUT/search/random) from their
    results.json: the x axis of the latency panel is the look-up-table ESTIMATE (the search times nothing)."""
    from slimkit.report.search_plot import replot

    for name in ("evolution", "random"):
        d = os.path.join(args.out, "search", name)
        if os.path.exists(os.path.join(d, "results.json")):
            print("wrote", replot(d))


if __name__ == "__main__":
    a = parse()
    step = {"search": search, "train": train, "latency": latency, "report": report, "plots": plots}[a.action]
    _cpu(a, a.action, step) if a.action not in ("report", "plots") else step(a)
