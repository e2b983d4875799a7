"""Compress a trained model with a recipe; writes the model, report.md, report.html and a Pareto plot.

Example: slimkit compress --model resnet20 --checkpoint ckpt.th --data cifar10:cifar10_train.npz
         --recipe "fold,prune(macs=0.5),distill(k=10)" --out runs/compress
A seeded class-balanced --test-fraction of --data is held out for accuracy (unless the spec has its own
?holdout=); K images per class of the rest are the few-shot set. The checkpoint file is only read.
--out must be empty (or --overwrite given); it is checked before any work, and all outputs are written
to a staging folder and moved in together at the end, so an interrupted run leaves earlier results intact.
"""
import json
import os


def add_arguments(p):
    p.add_argument("--model", required=True,
                   help="zoo name (slimkit.models.list_models()), pkg.module:function or path/file.py:function "
                        "returning an nn.Module, or hf:DIR (a local Hugging Face folder; nothing is downloaded)")
    p.add_argument("--input", default=None,
                   help="example input shape for data-free runs of user models, e.g. 1x3x32x32 (zoo/hf: known)")
    p.add_argument("--output", default=None,
                   help="which model output the checks compare: an index or a name such as logits (default: the "
                        "first tensor)")
    p.add_argument("--checkpoint", default=None, help="weights to load (read only)")
    p.add_argument("--data", default=None, help="slimkit.data spec, e.g. cifar10:cifar10_train.npz; omit = data-free")
    p.add_argument("--recipe", required=True, help='e.g. "fold,prune(macs=0.5),distill(k=10)" or a .yaml file')
    p.add_argument("--out", required=True, help="output directory (must be empty unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace the results of an earlier run in --out")
    p.add_argument("--k", type=int, default=10, help="few-shot images per class (default 10)")
    p.add_argument("--test-fraction", type=float, default=0.1,
                   help="hold out a seeded class-balanced FRACTION of --data for accuracy (default 0.1; a ?holdout= "
                        "in the spec wins)")
    p.add_argument("--latency-batches", default="1,64", help="batch sizes to time, comma list ('' = none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")


def load_splits(spec, k, test_fraction, seed):
    """``slimkit.data`` spec -> (few-shot (x, y), eval (x, y), description). Unless the spec's query
    says otherwise a seeded class-balanced ``test_fraction`` is held out for evaluation (files such as
    cifar10_train.npz are sorted by class, so a "last N" split would hold a single class)."""
    import torch

    from slimkit.data import few_shot_indices, load_dataset

    if "holdout=" in spec:
        splits = load_dataset(spec, seed=seed)
    else:
        splits = load_dataset(spec, seed=seed, holdout="balanced", test_fraction=test_fraction)
    tx, ty = splits.train.tensors()
    idx = few_shot_indices(ty, k, seed)
    ex, ey = splits.test.tensors()
    desc = f"{splits.description}; few-shot: K={k} per class from the train split, seed {seed}"
    return (tx[idx].float(), torch.as_tensor(ty)[idx].long()), (ex.float(), torch.as_tensor(ey).long()), desc


def _batches(x, y, bs):
    return [(x[i:i + bs], y[i:i + bs]) for i in range(0, len(y), bs)]


def run(args):
    from slimkit.compress import compress, save
    from slimkit.compress.export import default_suffix
    from slimkit.compress.recipe import load_recipe, recipe_to_yaml
    from slimkit.models.user import resolve_model
    from slimkit.report.html import write_html
    from slimkit.report.plots import pareto_plot

    from slimkit._io import check_out_dir, staged_outputs
    from slimkit.errors import SlimkitError

    recipe = load_recipe(args.recipe)  # fail on a bad recipe before any heavy work
    out_dir = check_out_dir(args.out, flag="--out", overwrite=args.overwrite)
    if args.checkpoint and not os.path.exists(args.checkpoint):
        raise FileNotFoundError(f"--checkpoint: no file at {args.checkpoint!r}")
    user = resolve_model(args.model, args.checkpoint)
    if args.input:
        user.input_size = tuple(int(d) for d in args.input.lower().split("x"))[1:]
    model = user.model.eval()
    few = evalset = None
    data_desc = "none (data-free)"
    if args.data:
        (fx, fy), (tx, ty), data_desc = load_splits(args.data, args.k, args.test_fraction, args.seed)
        few, evalset = _batches(fx, fy, 50), _batches(tx, ty, 500)
        example = {user.input_name: tx[:1]} if user.input_name else tx[:1]
    else:
        example = user.example_inputs(seed=args.seed)
        if example is None:
            raise SlimkitError(f"--model {args.model}: give the example input shape with --input, e.g. --input 1x3x32x32")
    batches = tuple(int(b) for b in args.latency_batches.split(",") if b.strip())
    output = int(args.output) if args.output and args.output.lstrip("-").isdigit() else args.output
    result = compress(model, example, recipe, data=few, eval_data=evalset, progress=not args.no_progress,
                      latency_batches=batches, output=output)
    rep = result.report
    model_name = "model" + default_suffix(result.model)
    with staged_outputs(out_dir, stale=OUTPUTS) as stage:
        save(result.model, stage.path(model_name), example, output)
        with open(stage.path("recipe.yaml"), "w") as f:
            f.write(recipe_to_yaml(recipe))
        with open(stage.path("report.json"), "w") as f:
            json.dump(rep.to_dict(), f, indent=1, default=str)
        md = rep.to_markdown() + (
            f"\nModel: `{args.model}` (checkpoint `{args.checkpoint}`). Data: {data_desc}. "
            f"Saved model: `{model_name}` (load with `slimkit.compress.load` or plain torch/ONNX Runtime).\n")
        with open(stage.path("report.md"), "w") as f:
            f.write(md)
        images = []
        if rep.before.accuracy is not None:
            lat = {k: v["median_ms"] for k, v in rep.latency.items()}
            b = batches[0] if batches else None
            pts = [dict(label="before", accuracy=100 * rep.before.accuracy, macs=rep.before.macs,
                        latency_ms=lat.get(f"before@b{b}"))]
            pts += [dict(label=r.name, accuracy=100 * r.stats.accuracy, macs=r.stats.macs,
                         latency_ms=lat.get(f"after@b{b}") if i == len(rep.passes) - 1 else None)
                    for i, r in enumerate(rep.passes)]
            images.append(pareto_plot(pts, stage.path("pareto.png"), title=f"{args.model}: accuracy vs cost"))
        write_html(stage.path("report.html"), f"slimkit compress: {args.model}", md, images)
    print(md)
    print(f"wrote {os.path.join(args.out, model_name)}, report.md, report.html to {args.out}")
    return 0


# Every file a compress run writes; with --overwrite the ones this run did not write are removed.
OUTPUTS = ("model.pt2", "model.onnx", "recipe.yaml", "report.json", "report.md", "report.html", "pareto.png")
