"""Profile every zoo model: MACs, params, weight bytes, peak activations and measured latency at
batch 1, written as a markdown table (hardware, torch version and load average in its header).

    python benchmarks/profile/zoo_table.py --out benchmarks/results/zoo.md
    python benchmarks/profile/zoo_table.py --runtime eager,onnxruntime --threads 1 --models 'resnet*'

Latency on a shared machine is contended: the 1-minute load average is recorded per model.
"""
import argparse
import datetime
import os
import platform
import sys

import torch

import slimkit
from slimkit.models import create_model, get_model_info, list_models
from slimkit.profile.analysis import cpu_name
from slimkit.report.table import to_markdown


def example_input(info, batch=1):
    shape = (batch, *info.input_size)
    if info.input_dtype.is_floating_point:
        return torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(info.input_dtype)
    return torch.randint(0, 2, shape, dtype=info.input_dtype)


def profile_row(name, runtimes, threads, warmup, repeats):
    info = get_model_info(name)
    prof = slimkit.profile(create_model(name).eval(), example_input(info), batch_sizes=(1,), threads=(threads,),
                           runtime=runtimes, warmup=warmup, repeats=repeats, name=name, progress=False)
    row = {"model": name, "input": "x".join(map(str, info.input_size)), "macs_m": prof.macs / 1e6,
           "params_m": prof.params / 1e6, "weight_mb": prof.weight_bytes / 1e6,
           "act_mb": prof.peak_activation_bytes / 1e6,
           "unsupported": ", ".join(prof.unsupported_ops) or "none"}
    for rt in runtimes:
        lat = prof.latency_for(batch_size=1, runtime=rt)
        row[f"{rt}_ms"] = lat["median_ms"]
        row[f"{rt}_p90"] = lat["p90_ms"]
        row[f"{rt}_load"] = lat["load1"]
    first = prof.latency_for(batch_size=1, runtime=runtimes[0])
    # measured ms per GMAC: if MACs predicted latency this would be roughly constant across models
    row["ms_per_gmac"] = first["median_ms"] / (prof.macs / 1e9) if prof.macs else None
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join("benchmarks", "results", "zoo.md"))
    parser.add_argument("--models", default="*", help="glob over zoo names (default: all)")
    parser.add_argument("--runtime", default="eager", help="eager,onnxruntime,compile (comma-separated)")
    parser.add_argument("--threads", default="1", help="CPU threads for timing: an integer or 'all' (default 1)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args(argv)
    from tqdm import tqdm

    names = list_models(args.models)
    if not names:
        print(f"no zoo model matches {args.models!r}; known: {', '.join(list_models()) or 'none'}", file=sys.stderr)
        return 2
    runtimes = [r.strip() for r in args.runtime.split(",")]
    rows, failures = [], []
    for name in tqdm(names, desc="zoo"):
        try:
            rows.append(profile_row(name, runtimes, args.threads, args.warmup, args.repeats))
        except Exception as err:  # one broken model must not hide the others' numbers
            failures.append(f"- {name}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
    cols = [("model", "model"), ("input", "input"), ("macs_m", "MMACs (1 MAC = 1 mul-add)"),
            ("params_m", "params (M)"), ("weight_mb", "weight MB"), ("act_mb", "peak act. MB")]
    for rt in runtimes:
        cols += [(f"{rt}_ms", f"{rt} median ms"), (f"{rt}_p90", f"{rt} p90 ms"), (f"{rt}_load", "load avg")]
    cols += [("ms_per_gmac", f"{runtimes[0]} ms / GMAC"), ("unsupported", "uncounted ops")]
    header = [
        f"# slimkit zoo profile ({datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC)",
        "",
        f"Hardware: {cpu_name()}, {os.cpu_count()} cores "
        f"({platform.platform()}); torch {torch.__version__}; threads={args.threads}; batch 1; "
        f"warm-up {args.warmup}, {args.repeats} timed calls; MACs and bytes for one forward at batch 1; "
        "peak act. = peak live activation bytes during a no-grad forward (inputs and weights excluded).",
        "Latencies were measured on a shared machine: the load avg column is the 1-minute load when "
        "each model was timed (more than the core count means contended numbers).",
        "",
        to_markdown(rows, cols),
    ]
    if failures:
        header += ["", "Models that failed to profile:", *failures]
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write("\n".join(header) + "\n")
    print("\n".join(header))
    print(f"wrote {args.out}")
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
