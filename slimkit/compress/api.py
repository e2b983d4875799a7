"""``compress(model, example_inputs, recipe, data=None, eval_data=None)``: run a recipe safely.

This file runs the recipe; ``check.py`` holds the checks after each pass, ``measure.py`` the counts,
accuracy and latency the report shows, ``_report.py`` the report.

The input model is deep-copied and never modified. Example inputs may be a tensor, a tuple or a dict of
keyword arguments; outputs a tensor, a tuple, a dict or a ``ModelOutput``: ``output=`` selects the one
compared (default: the first tensor with a batch dimension, e.g. ``.logits``). After EVERY pass the new
model is checked (``check.py``): forward, shape, finite, not constant across inputs, lossless passes
exact, lossy ones within a relative-error bound. A failed check raises ``CompressionCheckError``
naming the pass, the module and the measured number.
"""
import copy
import time
import warnings
from dataclasses import dataclass

import torch

from slimkit.compress._report import CompressReport, PassRow
from slimkit.compress.base import CompressContext, get_pass
from slimkit.compress.check import CheckConfig, check_pass, probe_examples
# measurements live in measure.py; the old names stay importable from here
from slimkit.compress.measure import accuracy, measure_latency, model_stats, param_count, weight_bytes  # noqa: F401
from slimkit.compress.recipe import parse_recipe, recipe_to_string
from slimkit.model_io import Example, select_output
from slimkit.profile.runtimes import make_runner


@dataclass
class CompressResult:
    model: torch.nn.Module
    report: CompressReport


def _target_outcome(extras):
    """{"metric", "target", "achieved", "met"} of a pass that aimed at a target (see CompressContext.extras)."""
    if not isinstance(extras, dict) or "met" not in extras:
        return None
    return {"metric": extras["metric"], "target": float(extras["target"]), "achieved": float(extras["achieved"]),
            "met": bool(extras["met"])}


def compress(model, example_inputs, recipe, data=None, eval_data=None, *, output=None, check=None, progress=True,
             latency_batches=(1, 64), latency_repeats=20):
    """Compress a copy of ``model`` with ``recipe`` (string, YAML-parsed list or configs).

    ``example_inputs``: a tensor, a tuple or a dict of keyword inputs. ``data``: few-shot (inputs,
    labels) data for passes that need it (distill, pq error correction, int8 calibration) -- a Dataset,
    a DataLoader, an (X, Y) pair or an iterable of batches. ``eval_data``: the same forms, for the
    accuracy columns. ``output``: which model output to compare (an index, a key/attribute name such as
    ``"logits"``, or a callable; default the first tensor). ``check``: a ``CheckConfig`` overriding the
    per-pass bounds. Set ``latency_batches=()`` to skip timing. Returns ``CompressResult(model, report)``.
    A pass that misses its target (budget) says so in the report (``targets_met=False``, its row's ``target``,
    a line in the Markdown) and with a warning."""
    from tqdm import tqdm

    from slimkit.data.batches import as_batches

    configs = parse_recipe(recipe)
    data, eval_data = as_batches(data, what="data"), as_batches(eval_data, what="eval_data")
    example = Example.of(example_inputs)
    checks = check or CheckConfig()
    teacher = copy.deepcopy(model).eval()
    current = copy.deepcopy(model).eval()
    context = CompressContext(teacher=teacher, data=data, eval_data=eval_data, progress=progress, output=output)
    # The model as it was before the first lossy pass: same structure as later students, same function
    # as the teacher; distillation pairs layers with it.
    context.extras["reference"] = teacher
    with torch.no_grad():
        _, output_desc = select_output(example(teacher), output)
    probes = probe_examples(example, data, checks.probe_batches)
    before = model_stats(teacher, example, eval_data, output=output)
    rows, seen_lossy, last_macs = [], False, before.macs
    recovery = [bool(getattr(c, "recovery", False)) for c in configs]
    for i, cfg in enumerate(tqdm(configs, desc="compress", disable=not progress)):
        _, fn = get_pass(cfg.name)
        t0 = time.perf_counter()
        new = fn(current, example_inputs if not isinstance(example_inputs, Example) else example, cfg, context)
        seconds = time.perf_counter() - t0
        ref = teacher if getattr(cfg, "recovery", False) else current
        # a lossy pass that a later recovery pass repairs is judged (error bound) after that recovery
        deferred = not cfg.lossless and not recovery[i] and any(recovery[i + 1:])
        summary = check_pass(cfg, current, new, probes, ref, output, checks, output_desc, deferred=deferred)
        seen_lossy = seen_lossy or not cfg.lossless
        if not seen_lossy:
            context.extras["reference"] = new
        # a deployment module (int8's ONNX Runtime session) runs the graph counted before it: FlopCounterMode
        # cannot see inside it
        deployed = getattr(new, "runtime", "eager") != "eager"
        stats = model_stats(new, example, eval_data, macs=last_macs if deployed else None, output=output)
        last_macs = stats.macs
        rows.append(PassRow(cfg.name, recipe_to_string([cfg]), cfg.lossless, seconds, stats, summary,
                            _target_outcome(context.extras.get(cfg.name))))
        current = new
    report = CompressReport(recipe=recipe_to_string(configs), before=before, after=rows[-1].stats if rows else before,
                            passes=rows)
    aimed = [r.target for r in rows if r.target is not None]
    report.targets_met = all(t["met"] for t in aimed) if aimed else None
    for r in report.missed_targets():
        warnings.warn(f"compress: {r.config} missed its target: {r.target['metric']} {r.target['achieved']:,.6g} > "
                      f"{r.target['target']:,.6g}; the model is the closest the pass got", stacklevel=2)
    report.notes.append(f"checks compare the model output {output_desc!r}; inputs: {example.describe()}")
    if latency_batches:
        timed = {"before": teacher, "after": current}
        runtime = getattr(current, "runtime", "eager")  # a deployment module (int8's OrtModule) says which it is
        if runtime != "eager":
            timed["before_ort_fp32"] = make_runner(teacher, example, runtime, threads=current.threads, output=output)
            report.notes.append("after = ONNX Runtime int8 session (not an eager module); before_ort_fp32 = the input "
                                "model exported to ONNX Runtime fp32, the fair runtime baseline")
        report.latency = measure_latency(timed, example, latency_batches, latency_repeats, progress)
        report.notes.append("latency measured interleaved on a possibly shared machine; load average recorded per row")
    return CompressResult(current, report)
