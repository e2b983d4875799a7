"""Coverage matrix: which third-party models each compression pass handles, slimkit beside Torch-Pruning.

    python benchmarks/compress/coverage.py --out benchmarks/results/compress [--models resnet,vit]

Models: Hugging Face transformers built from tiny configs (random weights, well-conditioned as in the
tests: tests/compress/_hf_models.py), no download. For each model and pass (profile, fold, lowrank,
prune(macs=0.5), int8) slimkit's ``compress`` runs with its checks on; a row says ok or the one-line
error, the MAC ratio, the output agreement with the original (relative error ||y' - y|| / ||y|| and top-1
agreement of the last dim, on 16 probe inputs) and the pass's wall time. Torch-Pruning (MetaPruner, L1
magnitude, heads declared for attention, the classifier ignored, iterative steps until <= 0.5x MACs)
runs on the same models: MAC ratio, agreement, whether the pruned model still runs. Writes
coverage.md and coverage.json. Needs transformers; Torch-Pruning optional (``pip install torch-pruning``).
"""
import argparse
import json
import os
import platform
import sys
import time
import warnings

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tests", "compress"))  # the tiny HF model builders

PASSES = ("fold", "lowrank", "prune(macs=0.5)", "int8")


def _agreement(model, ref_model, probes, output=None):
    from slimkit.compress.check import compare_outputs
    from slimkit.model_io import Example, select_output

    with torch.no_grad():
        ref = torch.cat([select_output(Example.of(p)(ref_model), output)[0] for p in probes])
        out = torch.cat([select_output(Example.of(p)(model), output)[0] for p in probes])
    return compare_outputs(ref, out)


def slimkit_row(name, model, example, probes, recipe):
    from slimkit.compress import compress

    data = [(p, torch.zeros(len(next(iter(p.values()))), dtype=torch.long)) for p in probes]
    t0 = time.perf_counter()
    try:
        res = compress(model, example, recipe, data=data, latency_batches=(), progress=False)
    except Exception as err:  # noqa: BLE001 - the finding is the error line
        return {"status": f"{type(err).__name__}: {str(err).splitlines()[0][:160]}", "seconds": time.perf_counter() - t0}
    seconds = time.perf_counter() - t0
    rel, agree = _agreement(res.model, model, probes)
    return {"status": "ok", "seconds": seconds, "macs_ratio": res.report.after.macs / res.report.before.macs,
            "rel_error": rel, "agreement": agree, "check": res.report.passes[-1].check}


def _tp_heads(model):
    """{projection module: heads} for Torch-Pruning, and a function restoring head attributes after a step.
    transformers 5.x spells them query/key/value + num_attention_heads/attention_head_size (BERT) or
    q_proj/k_proj/v_proj + num_attention_heads/head_dim (ViT); the views keep the head size fixed, so after a
    step the head count is the projection width over the head size."""
    heads, fixups = {}, []
    for m in model.modules():
        projs = next((ps for ps in (("query", "key", "value"), ("q_proj", "k_proj", "v_proj"))
                      if all(hasattr(m, a) for a in ps)), None)
        count = next((a for a in ("num_attention_heads", "num_heads") if hasattr(m, a)), None)
        size = next((a for a in ("attention_head_size", "head_dim") if hasattr(m, a)), None)
        if projs and count and size:
            for p in projs:
                heads[getattr(m, p)] = getattr(m, count)
            fixups.append((m, getattr(m, projs[0]), count, size))

    def fix(pruner):
        for m, q, count, size in fixups:
            setattr(m, count, q.out_features // getattr(m, size))
            if hasattr(m, "all_head_size"):
                m.all_head_size = q.out_features
    return heads, fix


def torch_pruning_row(name, model, example, probes, target=0.5):
    import copy

    try:
        import torch_pruning as tp
    except ImportError:
        return {"status": "torch-pruning not installed"}
    from slimkit.profile.counting import count_macs

    key = next(iter(example))
    base = count_macs(model, example)

    def one_shot(ratio):
        """One Torch-Pruning step at ``ratio`` (its iterative head schedule runs the 4-head tiny models down
        to zero heads and crashes, so the MAC target is met by bisecting a one-shot ratio instead)."""
        m = copy.deepcopy(model)
        heads, fix = _tp_heads(m)
        ignored = [mod for n, mod in m.named_modules() if n.endswith(("classifier", "lm_head"))
                   or isinstance(mod, torch.nn.Embedding)]
        pruner = tp.pruner.MetaPruner(
            m, example, importance=tp.importance.MagnitudeImportance(p=1), pruning_ratio=ratio, iterative_steps=1,
            ignored_layers=ignored, num_heads=heads, prune_num_heads=bool(heads), prune_head_dims=False,
            head_pruning_ratio=min(ratio, 0.5) if heads else 0.0, forward_fn=lambda mod, x: mod(**x),
            output_transform=lambda out: out.logits if hasattr(out, "logits") else out)
        pruner.step()
        fix(pruner)
        return m, count_macs(m, example)

    t0 = time.perf_counter()
    try:
        lo, hi, m, macs = 0.0, 0.95, model, base
        for _ in range(8):
            mid = (lo + hi) / 2
            cand, cand_macs = one_shot(mid)
            if cand_macs <= target * base:
                hi, m, macs = mid, cand, cand_macs
            else:
                lo = mid
    except Exception as err:  # noqa: BLE001 - a finding, reported
        return {"status": f"{type(err).__name__}: {str(err).splitlines()[0][:160]}", "seconds": time.perf_counter() - t0}
    seconds = time.perf_counter() - t0
    try:
        rel, agree = _agreement(m.eval(), model, probes)
    except Exception as err:  # noqa: BLE001
        return {"status": f"pruned model fails at forward: {str(err).splitlines()[0][:160]}", "seconds": seconds,
                "macs_ratio": macs / base}
    status = "ok" if macs < 0.95 * base else "prunes nothing"
    return {"status": status, "seconds": seconds, "macs_ratio": macs / base, "rel_error": rel, "agreement": agree,
            "input": key}


def profile_row(model, example):
    import slimkit
    from slimkit.profile.counting import count_macs

    t0 = time.perf_counter()
    try:
        prof = slimkit.profile(model, example, batch_sizes=(), progress=False)
    except Exception as err:  # noqa: BLE001
        return {"status": f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"}
    ok = prof.macs == count_macs(model, {k: v[:1] for k, v in example.items()}) and not prof.unsupported_ops
    return {"status": "ok" if ok else f"unsupported ops {prof.unsupported_ops}", "macs": prof.macs,
            "seconds": time.perf_counter() - t0}


def _fmt(row, what):
    if row.get("status") != "ok":
        return row.get("status", "-")
    if what == "profile":
        return f"ok ({row['macs'] / 1e6:.2f} MMACs)"
    agree = "" if row.get("agreement") is None else f", top-1 {100 * row['agreement']:.0f}%"
    return f"ok {row['macs_ratio']:.2f}x MACs, err {row['rel_error']:.2f}{agree}, {row['seconds']:.1f} s"


def main(argv=None):
    from _hf_models import HF_MODELS, build, example_for

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results/compress")
    ap.add_argument("--models", default=",".join(HF_MODELS))
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    import transformers

    results = {}
    for name in args.models.split(","):
        model = build(name)
        example = example_for(name, batch=2)
        probes = [example_for(name, batch=8, seed=10 + i) for i in range(2)]
        row = {"profile": profile_row(model, example)}
        for recipe in PASSES:
            row[recipe] = slimkit_row(name, model, example, probes, recipe)
        row["torch-pruning"] = torch_pruning_row(name, model, example, probes)
        results[name] = row
        print(name, {k: _fmt(v, k) for k, v in row.items()}, flush=True)
    try:
        import torch_pruning as tp
        tp_version = tp.__version__
    except ImportError:
        tp_version = "not installed"
    env = {"cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
           "transformers": transformers.__version__, "torch_pruning": tp_version, "threads": args.threads}
    try:
        from slimkit.profile.analysis import cpu_name
        env["cpu"] = cpu_name()
    except ImportError:
        pass
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "coverage.json"), "w") as f:
        json.dump({"environment": env, "results": results}, f, indent=1)
    cols = ["profile", *PASSES, "torch-pruning"]
    lines = ["| model | " + " | ".join(c if c != "torch-pruning" else f"Torch-Pruning {tp_version} (0.5x MACs)"
                                       for c in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, row in results.items():
        lines.append(f"| {name} | " + " | ".join(_fmt(row[c], c) for c in cols) + " |")
    text = ("# Coverage: Hugging Face models (tiny configs, random weights)\n\n"
            f"{env['cpu']}, torch {env['torch']}, transformers {env['transformers']}, {args.threads} thread(s). "
            "Command: `python benchmarks/compress/coverage.py`. err = relative output error vs the original model "
            "before any recovery (random weights: an upper bound on what trained models see), top-1 = agreement "
            "of the arg-max of the last output dim, on 16 probe inputs.\n\n" + "\n".join(lines) + "\n")
    with open(os.path.join(args.out, "coverage.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
