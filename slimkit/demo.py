"""Train a small zoo model on the built-in digits data, profile it, compress it (about a minute on 2 CPU cores).

The demo is a list of steps (``STEPS``) run in order on one :class:`DemoContext`; each step reads what
earlier ones left there and prints a short report. Later stages (e.g. compression) append a step.
Nothing is downloaded: the digits set ships inside the package.
"""
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any, Optional

from slimkit._io import check_out_dir, write_text


@dataclass
class DemoContext:
    out_dir: str
    model_name: str = "lenet5"
    data_spec: str = "digits"
    epochs: int = 8
    quick: bool = False
    seed: int = 0
    overwrite: bool = False  # replace the outputs of an earlier demo in out_dir
    progress: bool = True
    splits: Any = None  # slimkit.data.DatasetSplits, inputs resized to what the model expects
    model: Any = None
    example_inputs: Any = None  # one batch of one sample, for profiling/compression
    result: Any = None  # slimkit.train.TrainResult
    profile: Any = None
    recipe: Optional[str] = None  # compression recipe; None = fold, prune to 0.5x MACs, cross distillation
    compressed: Any = None  # slimkit.compress.CompressResult
    outputs: dict = field(default_factory=dict)  # headline numbers by step, e.g. {"accuracy": 0.97}
    timings: dict = field(default_factory=dict)

    def say(self, text=""):
        print(text, flush=True)


def step_data(ctx: DemoContext):
    from slimkit.data import load_dataset
    from slimkit.models import get_model_info

    splits = load_dataset(ctx.data_spec)
    want = tuple(get_model_info(ctx.model_name).input_size)
    have = tuple(splits.input_size)
    if have != want:  # e.g. 8x8 digits for a 28x28 LeNet: resize once, up front
        splits = _resized(splits, want)
    ctx.splits = splits
    ctx.say(f"data: {ctx.data_spec}, {len(splits.train)} train / {len(splits.test)} held-out samples, "
            f"{splits.num_classes} classes, input {have}" + (f" resized to {want}" if have != want else ""))


def step_model(ctx: DemoContext):
    import torch

    from slimkit.train.build import build_model

    torch.manual_seed(ctx.seed)
    ctx.model = build_model(ctx.model_name, ctx.splits)
    ctx.example_inputs = ctx.splits.test[0][0].unsqueeze(0)
    params = sum(p.numel() for p in ctx.model.parameters())
    ctx.say(f"model: {ctx.model_name}, {params:,} parameters")


def step_train(ctx: DemoContext):
    from slimkit.train import TrainConfig, fit

    epochs = min(ctx.epochs, 3) if ctx.quick else ctx.epochs
    config = TrainConfig(epochs=epochs, batch_size=32, lr=2e-3, optimizer="adam", seed=ctx.seed, device="cpu",
                         out_dir=os.path.join(ctx.out_dir, "train"), progress=ctx.progress, overwrite=ctx.overwrite,
                         meta={"model": ctx.model_name, "data": ctx.data_spec, "demo": True})
    ctx.result = fit(ctx.model, ctx.splits.train, ctx.splits.test, config)
    ctx.model = ctx.result.model.eval()
    ctx.outputs["accuracy"] = ctx.result.eval_accuracy
    ctx.say(f"trained {epochs} epochs: held-out accuracy {ctx.result.eval_accuracy:.4f} "
            f"({len(ctx.splits.test)} samples; logs in {config.out_dir})")


def step_profile(ctx: DemoContext):
    import slimkit.profile

    # Quick mode times batch 1 only, with fewer repeats; the full demo also times batch 64.
    timing = dict(batch_sizes=(1,), repeats=5) if ctx.quick else dict(batch_sizes=(1, 64), repeats=20)
    ctx.profile = slimkit.profile(ctx.model, ctx.example_inputs, name=ctx.model_name, progress=ctx.progress, **timing)
    ctx.outputs["macs"] = ctx.profile.macs
    write_text(os.path.join(ctx.out_dir, "profile.json"), ctx.profile.to_json() + "\n")
    ctx.say(ctx.profile.table())


def step_compress(ctx: DemoContext):
    import torch

    import slimkit.compress
    from slimkit.compress import save
    from slimkit.data import few_shot_subset

    # Few-shot recovery, as a user with little data would run it: K images per class from the training split.
    k = 5 if ctx.quick else 10
    shots = few_shot_subset(ctx.splits.train, k, seed=ctx.seed)
    xs = torch.stack([shots[i][0] for i in range(len(shots))])
    ys = torch.as_tensor([int(shots[i][1]) for i in range(len(shots))])
    tx = torch.stack([ctx.splits.test[i][0] for i in range(len(ctx.splits.test))])
    ty = torch.as_tensor([int(ctx.splits.test[i][1]) for i in range(len(ctx.splits.test))])
    # Prune with BatchNorm in place, recover, then fold (fine-tuning a BN-folded net trains worse).
    # The layer-wise refit first: these fine-tunes are short (100-300 steps).
    steps = 100 if ctx.quick else 300
    recipe = ctx.recipe or f"prune(macs=0.5,coupled=false),distill(method=layerwise,k={k},steps={steps}),fold"
    res = slimkit.compress(ctx.model, ctx.example_inputs, recipe, data=[(xs, ys)], eval_data=[(tx, ty)],
                           progress=ctx.progress, latency_batches=(1,) if ctx.quick else (1, 64),
                           latency_repeats=5 if ctx.quick else 20)
    ctx.compressed = res
    ctx.outputs["compressed_accuracy"] = res.report.after.accuracy
    ctx.outputs["compressed_macs"] = res.report.after.macs
    write_text(os.path.join(ctx.out_dir, "compress_report.md"), res.report.to_markdown())
    write_text(os.path.join(ctx.out_dir, "compress_report.json"),
               json.dumps(res.report.to_dict(), indent=1, default=str) + "\n")
    save(res.model, os.path.join(ctx.out_dir, "compressed.pt2"), ctx.example_inputs)
    ctx.say(res.report.to_markdown())


STEPS = [("data", step_data), ("model", step_model), ("train", step_train), ("profile", step_profile),
         ("compress", step_compress)]


def run_demo(out_dir="runs/demo", *, epochs=8, quick=False, model="lenet5", seed=0, progress=True,
             overwrite=False) -> DemoContext:
    ctx = DemoContext(out_dir=out_dir, model_name=model, epochs=epochs, quick=quick, seed=seed, progress=progress,
                      overwrite=overwrite)
    check_out_dir(out_dir, flag="--out", overwrite=overwrite)  # before any work
    for i, (name, step) in enumerate(STEPS, 1):
        ctx.say(f"[{i}/{len(STEPS)}] {name}")
        t0 = time.perf_counter()
        step(ctx)
        ctx.timings[name] = time.perf_counter() - t0
    ctx.say(f"done in {sum(ctx.timings.values()):.1f} s; outputs in {out_dir}")
    return ctx


def _resized(splits, size):
    """Copy of ``splits`` whose inputs are bilinearly resized to ``size`` (C, H, W)."""
    import dataclasses

    import torch
    import torch.nn.functional as F
    from torch.utils.data import TensorDataset

    def convert(ds):
        x = torch.stack([ds[i][0] for i in range(len(ds))]).float()
        y = torch.as_tensor([int(ds[i][1]) for i in range(len(ds))])
        if x.shape[1] != size[0]:
            raise ValueError(f"model expects {size[0]} input channels, the data has {x.shape[1]}")
        return TensorDataset(F.interpolate(x, size=tuple(size[1:]), mode="bilinear", align_corners=False), y)

    new = {"train": convert(splits.train), "test": convert(splits.test), "input_size": tuple(size)}
    if dataclasses.is_dataclass(splits):
        return dataclasses.replace(splits, **new)
    return type("Splits", (), {**vars(splits), **new})()
