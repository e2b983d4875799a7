"""int8: post-training static int8 through ONNX Runtime (QDQ, per-channel weights).

The model is exported to ONNX, calibrated on a few batches (the few-shot data, else the example
inputs) and quantized with ``onnxruntime.quantization.quantize_static``. ONNX Runtime has fast
int8 conv/matmul kernels on x86 CPUs, which eager PyTorch lacks. The result is an ``OrtModule``:
an nn.Module wrapper around an ONNX Runtime session. It is NOT an eager module: it runs on CPU,
has no parameters to train, and cannot be passed to later passes that edit layers. Needs the
``deploy`` extra (onnx, onnxruntime, onnxscript).
"""
import io
import os
import platform
import tempfile
from dataclasses import dataclass
from typing import Literal, Optional

import numpy as np
import torch

from slimkit.compress.base import PassConfig, register_pass
from slimkit.errors import SlimkitError


@dataclass
class Int8Config(PassConfig):
    """calib_batches: how many batches of ``context.data`` calibrate activation ranges.
    calibrate: ORT calibration method. per_channel: per-output-channel weight scales.
    reduce_range: 7-bit weights; None = on exactly when the x86 CPU lacks VNNI (see
    ``needs_reduce_range``). threads: ORT intra-op threads (0 = ORT default, all cores)."""

    name = "int8"
    lossless = False
    calib_batches: int = 8
    calibrate: Literal["minmax", "entropy", "percentile"] = "minmax"
    per_channel: bool = True
    reduce_range: Optional[bool] = None
    threads: int = 0


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


def _require_ort():
    try:
        import onnxruntime  # noqa: F401
        import onnx  # noqa: F401
    except ImportError as err:
        raise SlimkitError("the int8 pass needs ONNX Runtime: pip install 'slimkit[deploy]'") from err


def _as_tuple(x):
    return x if isinstance(x, tuple) else (x,)


def export_onnx(model, example_inputs, opset=17):
    """ONNX bytes of ``model`` (eval mode) with a dynamic batch dimension."""
    inputs = _as_tuple(example_inputs)
    names = [f"input{i}" for i in range(len(inputs))]
    buf = io.BytesIO()
    model = model.eval()
    with torch.no_grad():
        torch.onnx.export(
            model, inputs, buf, input_names=names, output_names=["output"], opset_version=opset,
            dynamic_axes={n: {0: "batch"} for n in names + ["output"]}, dynamo=False,
        )
    return buf.getvalue()


class OrtModule(torch.nn.Module):
    """Runs an ONNX model with ONNX Runtime behind an nn.Module call: tensors in, tensor out.

    It keeps the ONNX bytes so it can be deep-copied, pickled and saved (``slimkit.compress.save``
    writes them as a plain ``.onnx`` file)."""

    def __init__(self, onnx_bytes, threads=0, kind="fp32"):
        super().__init__()
        self.onnx_bytes = onnx_bytes
        self.threads = threads
        self.kind = kind
        self._build()

    def _build(self):
        _require_ort()
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.threads:
            opts.intra_op_num_threads = self.threads
        self.session = ort.InferenceSession(self.onnx_bytes, opts, providers=["CPUExecutionProvider"])
        self._names = [i.name for i in self.session.get_inputs()]

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("session", None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._build()

    def forward(self, *inputs):
        if len(inputs) != len(self._names):
            raise SlimkitError(f"OrtModule expects {len(self._names)} inputs, got {len(inputs)}")
        feed = {n: t.detach().cpu().float().contiguous().numpy() for n, t in zip(self._names, inputs)}
        return torch.from_numpy(self.session.run(None, feed)[0])

    def extra_repr(self):
        return f"kind={self.kind}, onnx_bytes={len(self.onnx_bytes)}"

    @classmethod
    def from_torch(cls, model, example_inputs, threads=0):
        """An ORT fp32 copy of ``model``: the fair baseline for int8 latency."""
        return cls(export_onnx(model, example_inputs), threads=threads, kind="fp32")


class _Reader:
    """CalibrationDataReader over a list of input feeds."""

    def __init__(self, feeds):
        self._it = iter(feeds)

    def get_next(self):
        return next(self._it, None)

    def rewind(self):  # newer ORT versions call it
        pass


def _calibration_feeds(example_inputs, context, config, names):
    feeds = []
    if context is not None and context.data is not None:
        for i, batch in enumerate(context.data):
            if i >= config.calib_batches:
                break
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            feeds.append({names[0]: x.detach().float().cpu().numpy()})
    if not feeds:  # data-free: calibrate on the example inputs only (ranges will be rough)
        feeds.append({n: t.detach().float().cpu().numpy() for n, t in zip(names, _as_tuple(example_inputs))})
    return feeds


def quantize_onnx(onnx_bytes, feeds, config):
    """Static QDQ int8 quantization of ONNX bytes; returns the int8 ONNX bytes."""
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
        quantize_static(
            pre, dst, _Reader(feeds), quant_format=QuantFormat.QDQ, per_channel=config.per_channel,
            reduce_range=needs_reduce_range() if config.reduce_range is None else config.reduce_range,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            calibrate_method=method,
            extra_options={"CalibTensorRangeSymmetric": False},
        )
        with open(dst, "rb") as f:
            return f.read()


@register_pass(Int8Config)
def int8(model, example_inputs, config, context=None):
    """Static int8 via ONNX Runtime; returns an ``OrtModule`` (not an eager module)."""
    _require_ort()
    if isinstance(model, OrtModule):
        raise SlimkitError("int8: the model is already an ONNX Runtime module; int8 must be the last pass")
    floats = {str(t.dtype) for t in [*model.parameters(), *model.buffers(), *_as_tuple(example_inputs)]
              if torch.is_tensor(t) and t.is_floating_point()}
    if floats - {"torch.float32"}:  # ORT's CPU kernels and quantizer are float32 (no float64 Conv)
        raise SlimkitError(f"int8: needs a float32 model and inputs, got {sorted(floats)}; call model.float() first")
    onnx_bytes = model.onnx_bytes if isinstance(model, OrtModule) else export_onnx(model, example_inputs)
    names = [f"input{i}" for i in range(len(_as_tuple(example_inputs)))]
    feeds = _calibration_feeds(example_inputs, context, config, names)
    return OrtModule(quantize_onnx(onnx_bytes, feeds, config), threads=config.threads, kind="int8")


def onnx_weight_bytes(onnx_bytes):
    """Bytes of all initializers (weights, scales, zero points) in an ONNX model."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load_from_string(onnx_bytes)
    return int(sum(np.asarray(numpy_helper.to_array(t)).nbytes for t in m.graph.initializer))
