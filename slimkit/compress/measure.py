"""What ``compress`` measures about a model for its report: the counts come from ``slimkit.profile``
(MACs, params, weight bytes), top-1 accuracy from the eval data, latency from interleaved timing (rounds
rotate through the models, so load drift on a shared machine hits all of them alike)."""
import torch

from slimkit.compress._report import ModelStats
from slimkit.model_io import Example, example_from_batch, select_output
from slimkit.profile.counting import count_macs
from slimkit.profile.latency import compare_latency
from slimkit.profile.sizes import param_count, weight_bytes


@torch.no_grad()
def accuracy(model, eval_data, like=None, output=None):
    """Top-1 accuracy of ``model`` over an iterable of (inputs, labels) batches (argmax of the last dim)."""
    if hasattr(model, "eval"):
        model.eval()
    correct = total = 0
    for batch in eval_data:
        y = batch["labels"] if isinstance(batch, dict) else batch[1]
        logits = select_output(example_from_batch(batch, like)(model), output)[0]
        correct += (logits.argmax(-1) == y).sum().item()
        total += y.numel()
    return correct / max(total, 1)


def model_stats(model, example_inputs, eval_data=None, macs=None, output=None):
    """MACs, params and weight bytes (``slimkit.profile``), and top-1 accuracy when ``eval_data`` is given.
    ``macs``: the count for a module MAC counting cannot look into (an ONNX Runtime session)."""
    example = Example.of(example_inputs)
    if macs is None:
        with torch.no_grad():
            macs = int(count_macs(model.eval(), example))
    acc = accuracy(model, eval_data, example, output) if eval_data is not None else None
    return ModelStats(macs=int(macs), params=int(param_count(model)), weight_bytes=int(weight_bytes(model)), accuracy=acc)


def measure_latency(models, example_inputs, batches=(1, 64), repeats=20, progress=False):
    """Interleaved latency of each model at each batch size; keys ``f"{name}@b{batch}"``."""
    out = {}
    example = Example.of(example_inputs)
    for b in batches:
        ex = example.resized(b)
        calls = {name: (lambda m=m, ex=ex: ex(m)) for name, m in models.items()}
        timing = interleaved_latency(calls, (), repeats=repeats, progress=progress)
        out.update({f"{name}@b{b}": t for name, t in timing.items()})
    return out


def interleaved_latency(models, example_inputs, repeats=30, warmup=3, progress=False):
    """``models``: dict name -> callable. Returns dict name -> {median_ms, p25_ms, p75_ms, n, loadavg}."""
    stats = compare_latency(models, example_inputs, warmup=warmup, repeats=repeats, progress=progress)
    return {name: {"median_ms": s.median_ms, "p25_ms": s.p25_ms, "p75_ms": s.p75_ms, "n": s.n,
                   "loadavg": tuple(s.loadavg)} for name, s in stats.items()}
