"""Which structure at ~2x fewer MACs is really faster? Latency of pruned/dropped ResNet-20 shapes (issue 16).

Latency depends only on the shapes a recipe leaves, not on the recovered weights, so this times each recipe's
structure *before* recovery (no distill; BatchNorm folded), interleaved with the checkpoint, in eager PyTorch and
ONNX Runtime at batch 1 and 64. It answers which mix of block dropping, channel pruning and channel rounding
to train, without training each. Run it with the machine otherwise idle (timing).

    python benchmarks/compress/bench_structure.py --train ../shared/data/cifar10_train.npz \
        --checkpoint ../shared/data/resnet20_cifar10.th --out benchmarks/results/compress/structure.md
"""
import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from bench_fewshot import _save, _speed, env, ort_target_ms, splits, teacher  # noqa: E402

P = "coupled=false,scope=layer"
STRUCTURES = {
    # name: recipe (every one ends in fold). scope=layer keeps the same fraction in every layer, so with round_to
    # its kept counts move in coarse steps (the MAC search stops below the target); the global scope lands closer.
    "prune": f"prune(macs=0.5,{P}),fold",
    "prune_r8": f"prune(macs=0.5,{P},round_to=8),fold",
    "prune_coupled": "prune(macs=0.5,coupled=true,scope=layer),fold",
    "drop2_prune": f"drop(blocks=2),prune(macs=0.6,{P}),fold",
    "drop2_prune_r8": f"drop(blocks=2),prune(macs=0.6,{P},round_to=8),fold",
    "drop2_prune_g8": "drop(blocks=2),prune(macs=0.6,coupled=false,round_to=8),fold",
    "drop3_prune_g8": "drop(blocks=3),prune(macs=0.72,coupled=false,round_to=8),fold",
    "drop_only": "drop(macs=0.5),fold",
    # round 6: per-layer widths by measured sensitivity (88.78% after recovery, draw 0)
    "budget_macs": "budget(target_macs=0.5,coupled=false),fold",
    # round 7: the same widths search after dropping 2 blocks, to half the checkpoint's MACs (88.54%, draw 0)
    "drop2_budget_macs": "drop(blocks=2),budget(target_macs=0.5,of=original,coupled=false),fold",
    # the budget driver picks the mix itself: {ms} is the checkpoint's ONNX Runtime batch-1 median / --speedup,
    # timed on this machine; each bisection step times the combined model in ONNX Runtime
    "budget_ort": "budget(target_latency_ms={ms},runtime=onnxruntime,coupled=false,round_to=8),fold",
    "budget_ort_blocks": "budget(target_latency_ms={ms},runtime=onnxruntime,coupled=false,round_to=8,blocks=true),fold",
}


def report(results, path):
    """Write the Markdown table of ``results`` (this script's json) to ``path``; return its text."""
    from slimkit._io import write_text

    e, lat = results["env"], results["latency"]
    lines = ["# Latency of ResNet-20 structures at ~2x fewer MACs, before recovery (issue 16)", "",
             f"{e['cpu']}, {e['threads']} threads, torch {e['torch']}; interleaved, {results['repeats']} rounds; "
             "speed-up vs the checkpoint (median ms [p25, p75]); BatchNorm folded. Command: "
             "`python benchmarks/compress/bench_structure.py`.", "",
             "| structure | recipe | MACs | convs | eager b1 | eager b64 | ORT b1 | ORT b64 |",
             "|---|---|---:|---:|---|---|---|---|"]
    for n, i in results["structures"].items():
        lines.append(f"| {n} | `{i['recipe']}` | {i['macs_ratio']:.2f}x fewer | {i['depth']} | "
                     + " | ".join(_speed(lat, kind, n, b) for kind in ("eager", "ort") for b in (1, 64)) + " |")
    picked = [(n, i) for n, i in results["structures"].items() if i.get("budget")]
    if picked:
        lines += ["", "What the budget rows picked (the target and what the driver measured while searching: for a "
                  "latency target ORT batch 1, 30 repeats each; the table's numbers are the interleaved "
                  "re-measurement):", ""]
    for n, i in picked:
        b = i["budget"]
        ms = b.get("metric", "latency_ms") == "latency_ms"
        unit, f = (" ms", ".3f") if ms else (" " + {"macs": "MACs"}.get(b["metric"], b["metric"]), ",.0f")
        lines.append(f"- {n}: target {b['target']:{f}}{unit}, reached {b['achieved']:{f}}{unit} "
                     f"({'met' if b['met'] else 'MISSED'}); dropped blocks: {', '.join(b['dropped']) or 'none'}; "
                     f"conv widths {i['widths']}")
    text = "\n".join(lines) + "\n"
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    write_text(path, text)
    return text


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", default="../shared/data/cifar10_train.npz")
    ap.add_argument("--checkpoint", default="../shared/data/resnet20_cifar10.th")
    ap.add_argument("--rows", default=",".join(STRUCTURES))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=40)
    ap.add_argument("--speedup", type=float, default=1.7, help="the budget rows' ORT batch-1 target vs the checkpoint")
    ap.add_argument("--out", default="benchmarks/results/compress/structure.md")
    args = ap.parse_args(argv)
    unknown = [n for n in args.rows.split(",") if n not in STRUCTURES]
    if unknown:
        ap.error(f"unknown structure(s) {', '.join(unknown)}; known: {', '.join(STRUCTURES)}")

    from slimkit.compress import compress
    from slimkit.compress.check import CheckConfig
    from slimkit.compress.int8 import OrtModule
    from slimkit.compress.measure import interleaved_latency
    from slimkit.profile.counting import count_macs

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    base = teacher(args.checkpoint)
    few, _ = splits(args.train, 10)
    x1 = few[0][:1]
    eager = {"baseline": base}
    # no recovery here, so the outputs are far from the checkpoint's: only the shapes matter
    unchecked = CheckConfig(max_rel_error={"*": float("inf")}, min_agreement={"*": 0.0})
    recipes, chosen = dict(STRUCTURES), {}
    if any("{ms}" in STRUCTURES[n] for n in args.rows.split(",")):
        ms = ort_target_ms(base, x1, args.speedup)
        recipes = {n: r.replace("{ms}", f"{ms:.3f}") for n, r in STRUCTURES.items()}
    for n in args.rows.split(","):
        res = compress(base, x1, recipes[n], data=few, progress=False, latency_batches=(), check=unchecked)
        eager[n] = res.model.eval()
        budget = next((p.target for p in res.report.passes if p.name == "budget"), None)
        if budget:
            chosen[n] = dict(budget, dropped=getattr(res.model, "dropped_blocks", []))
    macs0 = count_macs(base, (x1,))
    info = {n: dict(recipe=recipes.get(n, "pretrained checkpoint"), macs_ratio=macs0 / count_macs(m, (x1,)),
                    depth=sum(isinstance(l, torch.nn.Conv2d) for l in m.modules()),
                    widths=[l.out_channels for l in m.modules() if isinstance(l, torch.nn.Conv2d)],
                    budget=chosen.get(n))
            for n, m in eager.items()}
    ort = {n: OrtModule.from_torch(m, (x1,), threads=args.threads) for n, m in eager.items()}
    lat = {}
    with torch.inference_mode():
        for b in (1, 64):  # the 100 few-shot images cover both batch sizes
            for kind, group in (("eager", eager), ("ort", ort)):
                for n, t in interleaved_latency(group, (few[0][:b],), repeats=args.repeats, warmup=3).items():
                    lat[f"{kind}:{n}@b{b}"] = t
    results = dict(env=env(), repeats=args.repeats, structures=info, latency=lat)
    _save(os.path.splitext(args.out)[0] + ".json", results)
    print(report(results, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
