"""Search for an architecture under a budget: train a weight-sharing supernet, then search it.

Example: slimkit search --space seesaw --data cifar10:cifar10_train.npz --budget latency_ms=5
         --strategy evolution --out runs/search
A seeded class-balanced --val-fraction of --data is held out: the supernet trains on the rest and
candidates are ranked by their accuracy on the held-out part. A latency budget is judged on a
per-block look-up table measured here (runtime/threads/batch 1), saved as OUT/lut.json. Everything
is checkpointed in OUT; the same command with --resume continues an interrupted search.
"""
import json
import os

_FILES = ("supernet.pt", "search_state.json")


def add_arguments(p):
    p.add_argument("--space", required=True, help="search space (slimkit.nas.list_spaces()): seesaw, nb201, cell, ...")
    p.add_argument("--space-opts", default="", help="space options k=v,k=v, e.g. C=16,N=2 for nb201")
    p.add_argument("--data", required=True, help="slimkit.data spec, e.g. cifar10:cifar10_train.npz")
    p.add_argument("--budget", default="", help="latency_ms=5, macs=50M, params=1M (comma-separated; default none)")
    p.add_argument("--strategy", default="evolution", help="evolution | random")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--val-fraction", type=float, default=0.1, help="held-out fraction of --data for ranking")
    p.add_argument("--train-images", type=int, default=0, help="class-balanced subset for the supernet (0 = all)")
    p.add_argument("--eval-images", type=int, default=1000, help="held-out images per candidate evaluation")
    p.add_argument("--calib-images", type=int, default=256, help="training images for BN recalibration per candidate")
    p.add_argument("--supernet-steps", type=int, default=1000, help="single-path training steps")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--di", action="store_true", help="disturbance-immune updates (DI-NAS); default plain weight sharing")
    p.add_argument("--di-opts", default="", help="DIConfig options k=v,k=v, e.g. alpha=0.01,decay=0.05")
    p.add_argument("--population", type=int, default=16)
    p.add_argument("--generations", type=int, default=8)
    p.add_argument("--parents", type=int, default=8)
    p.add_argument("--mutations", type=int, default=8)
    p.add_argument("--crossovers", type=int, default=8)
    p.add_argument("--runtime", default="eager", help="latency runtime: eager | onnxruntime | compile")
    p.add_argument("--threads", type=int, default=1, help="threads for latency measurements")
    p.add_argument("--lut", default=None, help="latency table to use/extend (default OUT/lut.json)")
    p.add_argument("--lut-repeats", type=int, default=30)
    p.add_argument("--lut-calibrate", type=int, default=8,
                   help="whole networks timed to calibrate a new table (scale = measured / block sum); 0 = raw sum")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue the search checkpointed in --out")
    p.add_argument("--no-progress", action="store_true")


def _options(text, what):
    from slimkit.train.config import parse_options

    return parse_options(text, what) if text else {}


def _settings(args):
    keep = ("space", "space_opts", "data", "budget", "strategy", "val_fraction", "train_images", "eval_images",
            "calib_images", "supernet_steps", "batch_size", "lr", "di", "di_opts", "population", "parents",
            "mutations", "crossovers", "runtime", "threads", "lut_repeats", "lut_calibrate", "seed")
    return {k: getattr(args, k) for k in keep}


def _check_out(args):
    """Refuse to mix runs: a non-resumed run needs a directory without a search in it; --resume needs
    the same settings as the run it continues (only --generations may grow)."""
    path = os.path.join(args.out, "search_config.json")
    present = [f for f in _FILES if os.path.exists(os.path.join(args.out, f))]
    if present and not args.resume:
        raise ValueError(f"--out {args.out!r} already holds a search ({', '.join(present)}); "
                         f"add --resume to continue it or choose another --out")
    if args.resume and os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        diff = sorted(k for k, v in _settings(args).items() if old.get(k) != v)
        if diff:
            raise ValueError(f"--resume: settings differ from the run in {args.out!r}: {', '.join(diff)}")
    os.makedirs(args.out, exist_ok=True)
    with open(path, "w") as f:
        json.dump(_settings(args), f, indent=1)


def _splits(args):
    import torch

    from slimkit.data import few_shot_indices, load_dataset

    spec = args.data
    splits = load_dataset(spec, seed=args.seed) if "holdout=" in spec else \
        load_dataset(spec, seed=args.seed, holdout="balanced", test_fraction=args.val_fraction)
    tx, ty = splits.train.tensors()
    vx, vy = splits.test.tensors()
    k_classes = splits.num_classes or int(ty.max()) + 1
    if args.train_images:
        idx = few_shot_indices(ty, max(1, args.train_images // k_classes), args.seed)
        tx, ty = tx[idx], ty[idx]
    vidx = few_shot_indices(vy, max(1, min(args.eval_images // k_classes, int(torch.bincount(vy).min()))), args.seed)
    g = torch.Generator().manual_seed(args.seed)
    calib = tx[torch.randperm(len(ty), generator=g)[:args.calib_images]]
    return splits, tx.float(), ty.long(), calib.float(), vx[vidx].float(), vy[vidx].long()


def _lut(args, space, budget):
    from slimkit.nas.cost import LatencyLUT

    path = args.lut or os.path.join(args.out, "lut.json")
    if os.path.exists(path):
        lut = LatencyLUT.load(space, path, args.runtime, args.threads, 1)
    elif "latency_ms" in budget:
        lut = LatencyLUT(space, args.runtime, args.threads, 1, repeats=args.lut_repeats)
    else:
        return None, path
    if space.covering is not None and lut.missing(space.covering(space)):
        print(f"measuring the latency look-up table ({args.runtime}, {args.threads} thread(s), batch 1) ...", flush=True)
        lut.measure(space.covering(space), progress=not args.no_progress)
        lut.save(path)
    if args.lut_calibrate > 0 and not lut.calibration:
        import random

        rng = random.Random(10_000 + args.seed)  # not the search's own stream
        lut.calibrate([space.sample(rng) for _ in range(args.lut_calibrate)], progress=not args.no_progress)
        print(f"latency table calibrated on {args.lut_calibrate} whole networks: scale {lut.scale:.3f}", flush=True)
        lut.save(path)
    return lut, path


def _write_outputs(args, result, lut):
    from slimkit.report.search_plot import _title, latency_label, points_from_results, search_pareto_plot
    from slimkit.report.table import format_table, to_markdown

    rows = sorted(result.history, key=lambda r: -r["accuracy"])
    cols = [("rank", "#"), ("accuracy", "val acc %"), ("macs", "MACs"), ("params", "params")]
    if lut is not None:
        cols.append(("latency_ms", f"LUT ms ({lut.runtime}, {lut.threads} thr)"))
    cols += [("generation", "gen"), ("spec", "spec")]
    ranked = [{"rank": i + 1, **r} for i, r in enumerate(rows)]
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(f"budget: {result.budget or 'none'}; strategy {result.config.strategy}; "
                f"{len(rows)} candidates evaluated, {result.rejected} drawn over budget\n\n")
        f.write(to_markdown(ranked, cols) + "\n")
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"budget": result.budget, "rejected": result.rejected, "history": result.history}, f, indent=1)
    best = result.best
    # latency_ms is the look-up-table estimate (nothing is timed whole), and the plot says so
    search_pareto_plot(points_from_results(rows, best["spec"]), os.path.join(args.out, "pareto.png"),
                       title=_title(args.space, result.config.strategy, args.budget, lut is not None),
                       lat_label=latency_label(lut.runtime, lut.threads) if lut is not None else None)
    from slimkit.nas.space import parse_spec

    arch = parse_spec(best["spec"])
    with open(os.path.join(args.out, "best_spec.json"), "w") as f:
        json.dump({**arch.to_dict(), "val_accuracy_in_supernet": best["accuracy"],
                   **{k: best[k] for k in ("macs", "params", "latency_ms") if k in best}}, f, indent=1)
    with open(os.path.join(args.out, "best_model.py"), "w") as f:
        f.write(f'"""The architecture slimkit search found ({args.out}): `slimkit profile --model best_model:build`."""\n'
                f"from slimkit.models import create_model\n\nSPEC = {best['spec']!r}\n\n\n"
                f"def build(num_classes=10):\n    return create_model(\"nas\", spec=SPEC, num_classes=num_classes)\n")
    print(format_table(ranked[:10], cols, title="top candidates (accuracy in the supernet, held-out split)"))
    return best


def run(args):
    import torch

    from slimkit.nas import DIConfig, SupernetConfig, SupernetTrainer, get_space
    from slimkit.nas.cost import CostModel, parse_budget
    from slimkit.nas.search import Search, SearchConfig
    from slimkit.nas.supernet import ArchEvaluator

    space = get_space(args.space, **_options(args.space_opts, "--space-opts"))  # bad names fail before any work
    budget = parse_budget(args.budget)
    scfg = SearchConfig(args.strategy, args.population, args.generations, args.parents, args.mutations,
                        args.crossovers, seed=args.seed)
    di = DIConfig(enabled=args.di, seed=args.seed, **_options(args.di_opts, "--di-opts"))
    ncfg = SupernetConfig(steps=args.supernet_steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed, di=di)
    _check_out(args)
    splits, tx, ty, calib, vx, vy = _splits(args)
    print(f"data: {splits.description}; supernet trains on {len(ty)} images, candidates ranked on {len(vy)} "
          f"held-out images (class-balanced)", flush=True)
    lut, lut_path = _lut(args, space, budget)
    torch.manual_seed(args.seed)
    supernet = space.supernet(splits.num_classes or 10)
    trainer = SupernetTrainer(supernet, tx, ty, ncfg, checkpoint_path=os.path.join(args.out, "supernet.pt"))
    trainer.run(progress=not args.no_progress)
    print(f"supernet: {trainer.step_count} steps ({'DI-WS' if args.di else 'plain WS'}), "
          f"{trainer.train_seconds:.0f} s of training", flush=True)
    cost = CostModel(space, lut)
    search = Search(space, ArchEvaluator(supernet, calib, vx, vy), cost, budget, scfg,
                    state_path=os.path.join(args.out, "search_state.json"),
                    on_save=(lambda: lut.save(lut_path)) if lut is not None else None)
    result = search.run(progress=not args.no_progress)
    if not result.history:
        raise ValueError(f"no candidate within budget {args.budget!r} was found in {scfg.max_tries} draws; "
                         f"loosen --budget")
    best = _write_outputs(args, result, lut)
    print(f"best: {best['spec']} ({best['accuracy']:.2f}% held-out in the supernet); wrote results.md, pareto.png, "
          f"best_spec.json, best_model.py to {args.out}")
    print(f"train it from scratch: slimkit train --model nas --model-opts spec={os.path.join(args.out, 'best_spec.json')} "
          f"--data {args.data}")
    return 0
