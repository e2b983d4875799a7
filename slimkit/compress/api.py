"""``compress(model, example_inputs, recipe, data=None, eval_data=None)``: run a recipe safely.

The input model is deep-copied and never modified. After EVERY pass the new model must run on the
example inputs and give finite outputs of the original shape; a lossless pass must also reproduce
its input model's outputs within rtol=1e-5, atol=1e-5 * max|output| (eval mode). A failed check
raises ``CompressionCheckError`` naming the pass and the module.
"""
import copy
import time
from dataclasses import dataclass

import torch

from slimkit.compress._latency import interleaved_latency
from slimkit.compress._report import CompressReport, ModelStats, PassRow
from slimkit.compress.base import CompressContext, get_pass
from slimkit.compress.recipe import parse_recipe, recipe_to_string
from slimkit.errors import CompressionCheckError

RTOL = 1e-5
ATOL_REL = 1e-5  # atol = ATOL_REL * max|reference output|


@dataclass
class CompressResult:
    model: torch.nn.Module
    report: CompressReport


def _as_tuple(x):
    return x if isinstance(x, tuple) else (x,)


def weight_bytes(model):
    """Bytes needed to store the model's weights: modules with ``storage_bytes()`` (pq) report their
    packed size; everything else counts its parameters and buffers."""
    from slimkit.compress.int8 import OrtModule, onnx_weight_bytes

    if isinstance(model, OrtModule):
        return onnx_weight_bytes(model.onnx_bytes)
    total, skip = 0, set()
    for name, mod in model.named_modules():
        if any(name.startswith(p + ".") or name == p for p in skip):
            continue
        if hasattr(mod, "storage_bytes"):
            total += mod.storage_bytes()
            skip.add(name)
            continue
        for t in list(mod.parameters(recurse=False)) + list(mod.buffers(recurse=False)):
            total += t.numel() * t.element_size()
    return total


def param_count(model):
    if hasattr(model, "param_count"):
        return model.param_count()
    total, skip = 0, set()
    for name, mod in model.named_modules():
        if any(name.startswith(p + ".") or name == p for p in skip):
            continue
        if hasattr(mod, "param_count"):  # pq modules: one codebook entry or index per stored value
            total += mod.param_count()
            skip.add(name)
            continue
        total += sum(p.numel() for p in mod.parameters(recurse=False))
    return total


@torch.no_grad()
def accuracy(model, eval_data):
    """Top-1 accuracy of ``model`` over an iterable of (x, y) batches."""
    if hasattr(model, "eval"):
        model.eval()
    correct = total = 0
    for x, y in eval_data:
        correct += (model(x).argmax(1) == y).sum().item()
        total += y.numel()
    return correct / max(total, 1)


def model_stats(model, example_inputs, eval_data=None, macs=None):
    from slimkit.profile.counting import count_macs

    if macs is None:
        with torch.no_grad():
            macs = int(count_macs(model.eval(), _as_tuple(example_inputs)))
    acc = accuracy(model, eval_data) if eval_data is not None else None
    return ModelStats(macs=int(macs), params=int(param_count(model)), weight_bytes=int(weight_bytes(model)), accuracy=acc)


def _run_traced(model, inputs, pass_name):
    """Forward with hooks so a failure names the module it happened in."""
    current = []
    hooks = []
    if hasattr(model, "named_modules"):
        for name, mod in model.named_modules():
            hooks.append(mod.register_forward_pre_hook(lambda m, a, n=name: current.append(n)))
    try:
        with torch.no_grad():
            return model(*inputs)
    except Exception as err:  # noqa: BLE001 - any failure of the new model is a failed check
        where = current[-1] if current else "<top>"
        raise CompressionCheckError(f"pass {pass_name!r}: forward failed in module {where!r}: {err}") from err
    finally:
        for h in hooks:
            h.remove()


def _first_diverging_module(old, new, inputs):
    """Name of the first same-named module (in execution order) whose outputs differ."""
    outs = {}
    hooks = []
    for tag, model in (("old", old), ("new", new)):
        for name, mod in model.named_modules():
            if name:
                hooks.append(mod.register_forward_hook(
                    lambda m, a, o, n=name, t=tag: outs.setdefault(t, {}).setdefault(n, o) if torch.is_tensor(o) else None))
    try:
        with torch.no_grad():
            old(*inputs)
            new(*inputs)
    finally:
        for h in hooks:
            h.remove()
    for name, o in outs.get("new", {}).items():
        ref = outs.get("old", {}).get(name)
        if ref is not None and ref.shape == o.shape and not torch.allclose(o, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()) + 1e-6):
            return name
    return "<output>"


def check_pass(pass_name, lossless, old, new, inputs, ref_shape):
    """Raise CompressionCheckError unless ``new`` passes the forward (and, if lossless, output) check."""
    if hasattr(new, "eval"):
        new.eval()
    out = _run_traced(new, inputs, pass_name)
    if not torch.is_tensor(out) or tuple(out.shape) != tuple(ref_shape):
        got = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
        raise CompressionCheckError(f"pass {pass_name!r}: output shape {got}, expected {tuple(ref_shape)} (module '<output>')")
    if not torch.isfinite(out).all():
        raise CompressionCheckError(f"pass {pass_name!r}: non-finite outputs (module {_first_nonfinite(new, inputs)!r})")
    if not lossless:
        return "forward ok"
    with torch.no_grad():
        ref = old.eval()(*inputs)
    atol = ATOL_REL * float(ref.abs().max())
    diff = float((out - ref).abs().max())
    if not torch.allclose(out, ref, rtol=RTOL, atol=atol):
        where = _first_diverging_module(old, new, inputs)
        raise CompressionCheckError(
            f"pass {pass_name!r} is lossless but changed the outputs: max |diff| {diff:.3g} > rtol {RTOL} / atol {atol:.3g}; "
            f"first diverging module {where!r}")
    return f"forward ok; lossless: max abs diff {diff:.2g} (rtol {RTOL:g})"


def _first_nonfinite(model, inputs):
    bad = []
    hooks = [m.register_forward_hook(lambda m, a, o, n=n: bad.append(n) if torch.is_tensor(o) and not torch.isfinite(o).all() else None)
             for n, m in model.named_modules()] if hasattr(model, "named_modules") else []
    with torch.no_grad():
        model(*inputs)
    for h in hooks:
        h.remove()
    return bad[0] if bad else "<output>"


def _batched(inputs, batch):
    return tuple(t[:1].expand(batch, *t.shape[1:]).contiguous() for t in inputs)


def measure_latency(models, example_inputs, batches=(1, 64), repeats=20, progress=False):
    """Interleaved latency of each model at each batch size; keys ``f"{name}@b{batch}"``."""
    out = {}
    for b in batches:
        timing = interleaved_latency(models, _batched(_as_tuple(example_inputs), b), repeats=repeats, progress=progress)
        out.update({f"{name}@b{b}": t for name, t in timing.items()})
    return out


def compress(model, example_inputs, recipe, data=None, eval_data=None, *, progress=True,
             latency_batches=(1, 64), latency_repeats=20):
    """Compress a copy of ``model`` with ``recipe`` (string, YAML-parsed list or configs).

    ``data``: few-shot (x, y) batches for passes that need data (distill, pq error correction,
    int8 calibration). ``eval_data``: (x, y) batches for the accuracy columns. Set
    ``latency_batches=()`` to skip timing. Returns ``CompressResult(model, report)``."""
    from tqdm import tqdm

    from slimkit.compress.int8 import OrtModule

    configs = parse_recipe(recipe)
    inputs = _as_tuple(example_inputs)
    teacher = copy.deepcopy(model).eval()
    current = copy.deepcopy(model).eval()
    context = CompressContext(teacher=teacher, data=data, eval_data=eval_data, progress=progress)
    # The model as it was before the first lossy pass: same structure as later students, same function
    # as the teacher; distillation pairs layers with it.
    context.extras["reference"] = teacher
    with torch.no_grad():
        ref_shape = teacher(*inputs).shape
    before = model_stats(teacher, inputs, eval_data)
    rows, seen_lossy, last_macs = [], False, before.macs
    for cfg in tqdm(configs, desc="compress", disable=not progress):
        _, fn = get_pass(cfg.name)
        t0 = time.perf_counter()
        new = fn(current, example_inputs, cfg, context)
        seconds = time.perf_counter() - t0
        check = check_pass(cfg.name, cfg.lossless, current, new, inputs, ref_shape)
        seen_lossy = seen_lossy or not cfg.lossless
        if not seen_lossy:
            context.extras["reference"] = new
        # ORT modules cannot be MAC-counted by FlopCounterMode; int8 keeps the graph's MAC count
        is_ort = isinstance(new, OrtModule)
        stats = model_stats(new, inputs, eval_data, macs=last_macs if is_ort else None)
        if is_ort:  # same weights count, now stored as int8
            stats.params = rows[-1].stats.params if rows else before.params
        last_macs = stats.macs
        rows.append(PassRow(cfg.name, recipe_to_string([cfg]), cfg.lossless, seconds, stats, check))
        current = new
    report = CompressReport(recipe=recipe_to_string(configs), before=before, after=rows[-1].stats if rows else before,
                            passes=rows)
    if latency_batches:
        timed = {"before": teacher, "after": current}
        if isinstance(current, OrtModule):
            timed["before_ort_fp32"] = OrtModule.from_torch(teacher, inputs, threads=current.threads)
            report.notes.append("after = ONNX Runtime int8 session (not an eager module); before_ort_fp32 = the input "
                                "model exported to ONNX Runtime fp32, the fair runtime baseline")
        report.latency = measure_latency(timed, inputs, latency_batches, latency_repeats, progress)
        report.notes.append("latency measured interleaved on a possibly shared machine; load average recorded per row")
    return CompressResult(current, report)
