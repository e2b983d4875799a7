"""The checks ``compress`` runs after every pass, so it never returns a broken model.

Every pass: the new model runs on the example inputs, gives a finite output of the reference's shape,
and that output is not constant across inputs (the all-zero logits of an ONNX Runtime fusion bug
passed a finite-and-shaped check). A lossless pass must reproduce its input model's outputs within
``rtol=1e-5, atol=1e-5 * max|output|``. A lossy pass is compared on the probe inputs (the example,
the calibration data, and noise-perturbed copies of the example when there are fewer than 4 samples):
the relative error ``||new - ref|| / ||ref||`` must stay within a bound (per pass kind, configurable
with ``CheckConfig``), and so must the top-1 agreement when a minimum is set. Compression passes are
compared with the model they started from; recovery passes (``PassConfig.recovery``) with the teacher.
A failure raises ``CompressionCheckError`` with the measured number, the pass and the output compared.
"""
from dataclasses import dataclass, field
from typing import Optional

import torch

from slimkit.errors import CompressionCheckError
from slimkit.model_io import Example, as_example_list, select_output

RTOL = 1e-5
ATOL_REL = 1e-5  # atol = ATOL_REL * max|reference output|
# default bound on the relative output error per pass, before any recovery: a broken model is
# typically much further from the reference than its own norm; int8 should be close
DEFAULT_MAX_REL_ERROR = {"int8": 0.3}
GENERIC_MAX_REL_ERROR = 2.0
RECOVERY_MAX_REL_ERROR = 1.0
CONSTANT_TOL = 1e-3  # output variation across inputs below this fraction of the reference's = constant


@dataclass
class CheckConfig:
    """``max_rel_error``: {pass name: bound} overrides (``"*"`` for all lossy passes); ``min_agreement``:
    {pass name: minimum top-1 agreement in [0, 1]}; ``probe_batches``: calibration batches compared."""

    max_rel_error: dict = field(default_factory=dict)
    min_agreement: dict = field(default_factory=dict)
    probe_batches: int = 4

    def rel_bound(self, cfg, deferred=False):
        """The pass's bound; None (no bound now) when ``deferred`` and the user set none for it."""
        if cfg.name in self.max_rel_error:
            return self.max_rel_error[cfg.name]
        if "*" in self.max_rel_error:
            return self.max_rel_error["*"]
        if deferred:
            return None
        if getattr(cfg, "recovery", False):
            return RECOVERY_MAX_REL_ERROR
        return DEFAULT_MAX_REL_ERROR.get(cfg.name, GENERIC_MAX_REL_ERROR)

    def agreement_bound(self, cfg):
        return self.min_agreement.get(cfg.name, self.min_agreement.get("*"))


def probe_examples(example: Example, data, n_batches=4, min_samples=4, seed=0):
    """Inputs to compare models on: the example, calibration batches, and perturbed copies of the
    example when that gives fewer than ``min_samples`` samples (a constant output needs >= 2 to show)."""
    probes = [example] + as_example_list(data, example, limit=n_batches)
    if sum(p.batch_size for p in probes) < min_samples:
        g = torch.Generator().manual_seed(seed)

        def perturb(t):
            if t.is_floating_point():
                scale = t.float().std().clamp_min(1e-3) if t.numel() > 1 else torch.tensor(1.0)
                return (t + 0.5 * scale * torch.randn(t.shape, generator=g)).to(t.dtype)
            if t.dtype in (torch.int64, torch.int32) and t.numel():  # token ids: others in the same range
                return torch.randint(0, int(t.max()) + 1, t.shape, generator=g).to(t.dtype)
            return t
        probes += [example.map(perturb) for _ in range(max(1, (min_samples - 1) // max(example.batch_size, 1)))]
    return probes


def run_traced(model, example, pass_name, output=None):
    """Forward with hooks so a failure names the module it happened in; returns the selected output."""
    current, hooks = [], []
    if hasattr(model, "named_modules"):
        for name, mod in model.named_modules():
            hooks.append(mod.register_forward_pre_hook(lambda m, a, n=name: current.append(n)))
    try:
        with torch.no_grad():
            return select_output(example(model), output)[0]
    except CompressionCheckError:
        raise
    except Exception as err:  # noqa: BLE001 - any failure of the new model is a failed check
        where = current[-1] if current else "<top>"
        raise CompressionCheckError(f"pass {pass_name!r}: forward failed in module {where!r}: "
                                    f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from err
    finally:
        for h in hooks:
            h.remove()


def first_diverging_module(old, new, example, output=None):
    """Name of the first same-named module (in execution order) whose outputs differ."""
    outs, hooks = {}, []
    for tag, model in (("old", old), ("new", new)):
        for name, mod in model.named_modules():
            if name:
                hooks.append(mod.register_forward_hook(
                    lambda m, a, o, n=name, t=tag: outs.setdefault(t, {}).setdefault(n, o) if torch.is_tensor(o) else None))
    try:
        with torch.no_grad():
            example(old)
            example(new)
    finally:
        for h in hooks:
            h.remove()
    for name, o in outs.get("new", {}).items():
        ref = outs.get("old", {}).get(name)
        if ref is not None and ref.shape == o.shape and not torch.allclose(
                o, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()) + 1e-6):
            return name
    return "<output>"


def first_nonfinite_module(model, example):
    bad, hooks = [], []
    if hasattr(model, "named_modules"):
        hooks = [m.register_forward_hook(lambda m, a, o, n=n: bad.append(n) if torch.is_tensor(o)
                                         and o.is_floating_point() and not torch.isfinite(o).all() else None)
                 for n, m in model.named_modules()]
    try:
        with torch.no_grad():
            example(model)
    finally:
        for h in hooks:
            h.remove()
    return bad[0] if bad else "<output>"


def compare_outputs(ref, out):
    """(relative error, top-1 agreement or None) of ``out`` against ``ref`` (same shape)."""
    ref, out = ref.detach().double(), out.detach().double()
    rel = float((out - ref).norm() / ref.norm().clamp_min(1e-30))
    agree = None
    if ref.dim() >= 2 and ref.shape[-1] > 1:
        agree = float((ref.argmax(-1) == out.argmax(-1)).double().mean())
    return rel, agree


def variation(t):
    """Mean standard deviation across the batch (dim 0): 0 for an output that ignores its input."""
    t = t.detach().double()
    return float(t.reshape(t.shape[0], -1).std(0).mean()) if t.shape[0] > 1 else 0.0


def check_pass(cfg, old, new, probes, ref_model, output=None, checks=None, output_desc="output", deferred=False):
    """Raise CompressionCheckError unless ``new`` passes; returns the check's one-line summary. ``deferred``: a
    recovery pass follows, so the default error bound is judged after it (finite, non-constant outputs are
    still required now); an explicit bound for the pass still applies."""
    checks = checks or CheckConfig()
    name = cfg.name
    if hasattr(new, "eval"):
        new.eval()
    example = probes[0]
    with torch.no_grad():
        ref0 = select_output(example(old), output)[0]
    out0 = run_traced(new, example, name, output)
    if tuple(out0.shape) != tuple(ref0.shape):
        raise CompressionCheckError(f"pass {name!r}: output {output_desc!r} has shape {tuple(out0.shape)}, "
                                    f"expected {tuple(ref0.shape)} (module '<output>')")
    if out0.is_floating_point() and not torch.isfinite(out0).all():
        raise CompressionCheckError(f"pass {name!r}: non-finite outputs (module {first_nonfinite_module(new, example)!r})")
    if cfg.lossless:
        atol = ATOL_REL * float(ref0.abs().max())
        diff = float((out0 - ref0).abs().max())
        if not torch.allclose(out0, ref0.to(out0.dtype), rtol=RTOL, atol=atol):
            where = first_diverging_module(old, new, example, output)
            raise CompressionCheckError(
                f"pass {name!r} is lossless but changed the outputs: max |diff| {diff:.3g} > rtol {RTOL} / atol "
                f"{atol:.3g}; first diverging module {where!r}")
        return f"forward ok; lossless: max abs diff {diff:.2g} (rtol {RTOL:g})"
    refs, outs = [], []
    with torch.no_grad():
        for ex in probes:
            refs.append(select_output(ex(ref_model), output)[0].float())
            o = select_output(ex(new), output)[0].float()
            if o.is_floating_point() and not torch.isfinite(o).all():
                raise CompressionCheckError(f"pass {name!r}: non-finite outputs on the probe inputs (module "
                                            f"{first_nonfinite_module(new, ex)!r})")
            outs.append(o)
    ref, out = torch.cat(refs), torch.cat(outs)
    rel, agree = compare_outputs(ref, out)
    v_ref, v_out = variation(ref), variation(out)
    against = "the teacher" if getattr(cfg, "recovery", False) else "its input model"
    where = f"output {output_desc!r} on {len(ref)} probe samples vs {against}"
    if v_ref > 0 and v_out <= CONSTANT_TOL * v_ref:
        raise CompressionCheckError(f"pass {name!r}: the output is constant across inputs (variation {v_out:.3g} vs "
                                    f"{v_ref:.3g} before; {where}): the compressed model ignores its input")
    bound = checks.rel_bound(cfg, deferred)
    if bound is not None and rel > bound:
        raise CompressionCheckError(f"pass {name!r}: relative output error {rel:.3g} > bound {bound:g} ({where}); "
                                    f"raise it with check=CheckConfig(max_rel_error={{{name!r}: ...}}) if intended")
    min_agree = checks.agreement_bound(cfg)
    if min_agree is not None and agree is not None and agree < min_agree:
        raise CompressionCheckError(f"pass {name!r}: top-1 agreement {agree:.3f} < {min_agree:g} ({where})")
    text = f"forward ok; rel. error {rel:.3g} " + ("(bound judged after the recovery pass)" if bound is None
                                                   else f"(bound {bound:g})")
    return text + (f", top-1 agreement {100 * agree:.1f}%" if agree is not None else "") + f" vs {against}"
