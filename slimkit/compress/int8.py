"""int8: post-training static int8 through ONNX Runtime (QDQ, per-channel weights).

The model is exported to ONNX (``slimkit.onnx_runtime.export_onnx``: verified against eager on the
calibration inputs, refused for data-dependent control flow), calibrated on a few batches (the few-shot
data, else the example inputs; integer token ids stay integer) and quantized with
``onnxruntime.quantization.quantize_static``. The int8 session is then compared with the fp32 ONNX
Runtime session on the calibration inputs: at ``ORT_ENABLE_ALL`` ONNX Runtime fuses ops into int8
kernels, and some fusions are wrong for some shapes (a global ``AvgPool2d(kernel > input, ceil_mode)``
becomes a constant under ``QLinearAveragePool``). If the int8 output is constant across inputs or its
relative error exceeds ``max_rel_error``, the next lower optimisation level is tried; the level used and
the fused ops that were dropped are reported. The result is an ``OrtModule``: an nn.Module around an
ONNX Runtime session. It is NOT an eager module: it runs on CPU, has no parameters to train, and must
be the last pass. Needs the ``deploy`` extra (onnx, onnxruntime, onnxscript).
"""
import os
import platform
import tempfile
from dataclasses import dataclass
from typing import Literal, Optional

import torch

from slimkit.compress.base import PassConfig, register_pass
from slimkit.errors import CompressionCheckError, SlimkitError
from slimkit.model_io import Example, as_example_list
from slimkit.onnx_runtime import LEVELS, OrtModule, OrtSession, export_onnx, onnx_weight_bytes, require_ort  # noqa: F401
from slimkit.profile.sizes import param_count


@dataclass
class Int8Config(PassConfig):
    """calib_batches: how many batches of ``context.data`` calibrate activation ranges.
    calibrate: ORT calibration method. per_channel: per-output-channel weight scales.
    reduce_range: 7-bit weights; None = on exactly when the x86 CPU lacks VNNI (see
    ``needs_reduce_range``). threads: ORT intra-op threads (0 = ORT default, all cores).
    level: ORT graph optimisation level, or "auto" (highest whose int8 output matches fp32 ORT within
    ``max_rel_error`` and is not constant). exporter: torchscript (fast) or dynamo."""

    name = "int8"
    lossless = False
    calib_batches: int = 8
    calibrate: Literal["minmax", "entropy", "percentile"] = "minmax"
    per_channel: bool = True
    reduce_range: Optional[bool] = None
    threads: int = 0
    level: Literal["auto", "all", "extended", "basic", "disabled"] = "auto"
    op_types: str = ""  # ONNX op types to quantize, |-separated (e.g. Conv|Gemm); "" = all ORT supports
    max_rel_error: float = 0.3
    exporter: Literal["torchscript", "dynamo"] = "torchscript"


def needs_reduce_range(cpuinfo="/proc/cpuinfo"):
    """True on x86 CPUs without VNNI. There ONNX Runtime's u8s8 kernels use VPMADDUBSW, whose int16
    pair sums saturate with full-range int8 weights: on such a CPU a toy CNN fell from 44 dB to 12 dB
    output SNR. 7-bit weights (reduce_range) avoid it at a small precision cost."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        return False
    try:
        with open(cpuinfo) as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return True  # unknown x86 CPU: the safe choice
    return not ({"avx512_vnni", "avx_vnni"} & set(flags))


class _Reader:
    """CalibrationDataReader over a list of input feeds."""

    def __init__(self, feeds):
        self._feeds = feeds
        self._it = iter(feeds)

    def get_next(self):
        return next(self._it, None)

    def rewind(self):  # newer ORT versions call it
        self._it = iter(self._feeds)


def calibration_examples(example_inputs, context, config):
    """The calibration inputs: up to ``calib_batches`` batches of the few-shot data, else the example."""
    example = Example.of(example_inputs)
    out = as_example_list(context.data if context is not None else None, example, limit=config.calib_batches)
    return out or [example]


def quantize_onnx(onnx_bytes, feeds, config, op_types=None):
    """Static QDQ int8 quantization of ONNX bytes; returns the int8 ONNX bytes."""
    import contextlib
    import logging
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[config.calibrate]
    with tempfile.TemporaryDirectory() as tmp:
        src, pre, dst = (os.path.join(tmp, n) for n in ("fp32.onnx", "pre.onnx", "int8.onnx"))
        with open(src, "wb") as f:
            f.write(onnx_bytes)
        try:  # shape inference + BN folding makes quantization cover more ops
            quant_pre_process(src, pre, skip_symbolic_shape=False)
        except Exception:  # noqa: BLE001 - pre-processing is an optimisation, not required
            pre = src
        types = op_types if op_types is not None else [t for t in config.op_types.split("|") if t]
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # the quantizer logs per-tensor chatter ("Axis 1 is out-of-range ...")
        try:
            with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
                quantize_static(
                    pre, dst, _Reader(feeds), quant_format=QuantFormat.QDQ, per_channel=config.per_channel,
                    reduce_range=needs_reduce_range() if config.reduce_range is None else config.reduce_range,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=method, op_types_to_quantize=types or None,
                    extra_options={"CalibTensorRangeSymmetric": False},
                )
        finally:
            root.setLevel(level)
        with open(dst, "rb") as f:
            return f.read()


def _rel_error_and_variation(session, reference, examples):
    outs = torch.cat([session(ex).double() for ex in examples])
    refs = torch.cat([reference(ex).double() for ex in examples])
    rel = float((outs - refs).norm() / refs.norm().clamp_min(1e-30))
    flat = lambda t: t.reshape(t.shape[0], -1)  # noqa: E731
    var_o = float(flat(outs).std(0).mean()) if len(outs) > 1 else 1.0
    var_r = float(flat(refs).std(0).mean()) if len(refs) > 1 else 1.0
    return rel, var_o, var_r


def choose_level(int8_bytes, fp32, examples, config, names, diagnose=lambda: ""):
    """(session, level, report) of the highest ORT optimisation level whose int8 output agrees with fp32."""
    levels = LEVELS if config.level == "auto" else (config.level,)
    tried = {}
    for level in levels:
        sess = OrtSession(int8_bytes, names, threads=config.threads, level=level)
        rel, var_o, var_r = _rel_error_and_variation(sess, fp32, examples)
        constant = var_r > 0 and var_o <= 1e-3 * var_r
        tried[level] = {"rel_error": rel, "constant": constant}
        if not constant and rel <= config.max_rel_error:
            report = {"level": level, "rel_error_vs_fp32_ort": rel, "tried": tried}
            if level != levels[0]:
                top = OrtSession(int8_bytes, names, threads=config.threads, level=levels[0])
                report["dropped_fused_ops"] = sorted(set(top.op_types()) - set(sess.op_types()))
            return sess, level, report
    worst = ", ".join(f"{lv}: rel. error {t['rel_error']:.3g}{' (constant output)' if t['constant'] else ''}"
                      for lv, t in tried.items())
    raise CompressionCheckError(f"int8: the quantized ONNX Runtime model does not match fp32 ONNX Runtime at any "
                                f"optimisation level tried ({worst}; bound {config.max_rel_error}){diagnose()}")


@register_pass(Int8Config)
def int8(model, example_inputs, config, context=None):
    """Static int8 via ONNX Runtime; returns an ``OrtModule`` (not an eager module)."""
    require_ort()
    if isinstance(model, OrtModule):
        raise SlimkitError("int8: the model is already an ONNX Runtime module; int8 must be the last pass")
    example = Example.of(example_inputs)
    floats = {str(t.dtype) for t in [*model.parameters(), *model.buffers(), *example.tensors()]
              if torch.is_tensor(t) and t.is_floating_point()}
    if floats - {"torch.float32"}:  # ORT's CPU kernels and quantizer are float32 (no float64 Conv)
        raise SlimkitError(f"int8: needs a float32 model and inputs, got {sorted(floats)}; call model.float() first")
    output = getattr(context, "output", None)
    calib = calibration_examples(example, context, config)
    fp32_bytes = export_onnx(model, example, output, probes=calib, exporter=config.exporter)
    names = example.names()
    fp32 = OrtSession(fp32_bytes, names, threads=config.threads)
    feeds = [fp32.feed(ex.tensors()) for ex in calib]
    int8_bytes = quantize_onnx(fp32_bytes, feeds, config)

    def diagnose():
        """Which op type breaks it: the error with only that type quantized, worst first."""
        import onnx

        present = {n.op_type for n in onnx.load_from_string(fp32_bytes).graph.node}
        errs = {}
        for op in sorted(present & {"Conv", "Gemm", "MatMul", "Add", "Mul", "Clip", "Relu", "AveragePool",
                                    "GlobalAveragePool", "MaxPool", "Concat", "Sigmoid"}):
            sess = OrtSession(quantize_onnx(fp32_bytes, feeds, config, [op]), names, threads=config.threads,
                              level="basic")
            errs[op] = _rel_error_and_variation(sess, fp32, calib)[0]
        ranked = sorted(errs.items(), key=lambda kv: -kv[1])
        ok = [op for op, e in ranked if e <= config.max_rel_error / 2]
        return ("; rel. error with one op type quantized: " + ", ".join(f"{op} {e:.3g}" for op, e in ranked) +
                (f"; keep the others in fp32 with int8(op_types={'|'.join(ok)})" if ok else ""))

    _, level, report = choose_level(int8_bytes, fp32, calib, config, names, diagnose)
    if context is not None:
        context.extras["int8"] = report
    return OrtModule(int8_bytes, threads=config.threads, kind="int8", level=level, names=names,
                     params=param_count(model))
