"""ONNX export and ONNX Runtime sessions: the one place slimkit turns a model into a deployment graph.

Used by the profiler's ``onnxruntime`` runtime and by the int8 pass (both run an ``OrtModule``). ``export_onnx`` exports the
selected output of ``model`` on an example (tensor, tuple or keyword inputs; integer token ids stay
integer) with a dynamic batch axis, then VERIFIES the graph against eager on every probe input given
(the TorchScript exporter records the path the example took through Python ``if``s; a graph that
disagrees on other inputs is refused). A forward with data-dependent control flow is refused up front:
``torch.export`` cannot capture it either, so no single graph computes it.
The TorchScript exporter is the default because it is fast (2 s vs ~40 s for the dynamo exporter on a
ResNet-20 here) and needs no onnxscript; ``exporter="dynamo"`` selects ``torch.onnx.export(dynamo=True)``.
"""
import io
import math
import warnings

import torch

from slimkit.errors import SlimkitError
from slimkit.model_io import Example, FlatModule, select_output

LEVELS = ("all", "extended", "basic", "disabled")


class ExportError(SlimkitError):
    """The model cannot be exported to a faithful ONNX graph; the message says why."""


def require_ort():
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as err:
        raise SlimkitError("ONNX Runtime is needed here: pip install 'slimkit[deploy]'") from err


def _data_dependent(flat, tensors):
    """The reason text when ``torch.export`` finds data-dependent control flow, else None."""
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.export.export(flat, tensors, strict=False)
    except Exception as err:  # noqa: BLE001 - only the data-dependent kind is a verdict here
        text = f"{type(err).__name__}: {err}"
        if "data-dependent" in text or "GuardOnDataDependent" in text or "Could not guard" in text:
            return str(err).strip().splitlines()[0][:200]
    return None


def export_onnx(model, example_inputs, output=None, probes=(), opset=17, exporter="torchscript",
                rtol=1e-3, atol_rel=1e-4):
    """ONNX bytes of ``model``'s selected output (eval mode) with a dynamic batch dimension, verified
    against eager on the example and on ``probes`` (more Examples of the same structure)."""
    example = Example.of(example_inputs)
    model = model.eval()
    flat = FlatModule(model, example, output).eval()
    tensors = tuple(example.tensors())
    names = example.names()
    reason = _data_dependent(flat, tensors)
    if reason is not None:
        raise ExportError(f"{type(model).__name__} branches on tensor values (data-dependent control flow: "
                          f"{reason}); an exported graph would keep one branch only. Rewrite the branch with "
                          "torch.where/torch.cond to export it")
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporters' deprecation and constant-folding chatter
        if exporter == "dynamo":
            batch = torch.export.Dim("batch", min=1, max=65536)
            big = tuple(t.expand(2, *t.shape[1:]).contiguous() if t.shape[0] == 1 else t for t in tensors)
            prog = torch.onnx.export(flat, big, dynamo=True, input_names=names, output_names=["output"],
                                     dynamic_shapes=tuple({0: batch} for _ in big), verbose=False)
            buf.write(prog.model_proto.SerializeToString())
        elif exporter == "torchscript":
            torch.onnx.export(flat, tensors, buf, input_names=names, output_names=["output"], opset_version=opset,
                              dynamic_axes={n: {0: "batch"} for n in names + ["output"]}, dynamo=False)
        else:
            raise ValueError(f"exporter must be 'torchscript' or 'dynamo', got {exporter!r}")
    data = buf.getvalue()
    session = OrtSession(data, names)
    for ex in [example] + list(probes):
        with torch.no_grad():
            ref = select_output(ex(model), output)[0]
        got = session(ex)
        atol = atol_rel * float(ref.abs().max()) + 1e-6
        if got.shape != ref.shape or not torch.allclose(got, ref.to(got.dtype), rtol=rtol, atol=atol):
            err = (got - ref).abs().max().item() if got.shape == ref.shape else f"shape {tuple(got.shape)}"
            raise ExportError(f"the ONNX graph of {type(model).__name__} differs from eager on inputs "
                              f"{ex.describe()} (max abs diff {err}, allowed rtol={rtol}, atol={atol:.3g}): the export "
                              "is not faithful for this model (a Python branch the trace baked in?)")
    return data


def session_options(level="all", threads=0):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = {
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL, "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC, "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    }[level]
    if threads:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Idle intra-op threads spin by default. Several live sessions (before/after models timed interleaved,
    # or ORT beside eager PyTorch) then steal each other's cores: ResNet-20 at batch 64 read 80 ms among 8
    # sessions against 30 ms alone on 2 cores. Without spinning each session runs at its own speed.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


class OrtSession:
    """An ONNX Runtime CPU session called with an ``Example`` (or flat tensors); returns the first output."""

    def __init__(self, onnx_bytes, names=None, threads=0, level="all"):
        require_ort()
        import onnxruntime as ort

        ort.set_default_logger_severity(3)  # its warnings (unused initializers of quantized graphs) are not ours
        self.onnx_bytes, self.threads, self.level = onnx_bytes, threads, level
        self.session = ort.InferenceSession(onnx_bytes, session_options(level, threads),
                                            providers=["CPUExecutionProvider"])
        self.names = names or [i.name for i in self.session.get_inputs()]
        self._types = {i.name: i.type for i in self.session.get_inputs()}

    def feed(self, tensors):
        feed = {}
        for n, t in zip(self.names, tensors):
            t = t.detach().cpu().contiguous()
            want = self._types.get(n, "")
            if "int64" in want:
                t = t.long()
            elif "int32" in want:
                t = t.int()
            elif "float" in want and t.dtype != torch.float32:
                t = t.float()
            feed[n] = t.numpy()
        return feed

    def __call__(self, *inputs, **kwargs):
        if len(inputs) == 1 and isinstance(inputs[0], Example) and not kwargs:
            tensors = inputs[0].tensors()
        else:
            tensors = list(inputs) + [kwargs[n] for n in self.names[len(inputs):] if n in kwargs]
        if len(tensors) != len(self.names):
            raise SlimkitError(f"ONNX Runtime session expects {len(self.names)} inputs ({', '.join(self.names)}), "
                               f"got {len(tensors)}")
        return torch.from_numpy(self.session.run(None, self.feed(tensors))[0])

    def op_types(self):
        """Op types of the graph ONNX Runtime actually runs at this session's optimisation level."""
        import tempfile

        import onnx
        import onnxruntime as ort

        with tempfile.TemporaryDirectory() as tmp:
            opts = session_options(self.level, self.threads)
            opts.optimized_model_filepath = f"{tmp}/opt.onnx"
            opts.log_severity_level = 3  # ORT warns that an optimised model is machine-specific: we only read it
            ort.InferenceSession(self.onnx_bytes, opts, providers=["CPUExecutionProvider"])
            return sorted({n.op_type for n in onnx.load(f"{tmp}/opt.onnx").graph.node})


class OrtModule(torch.nn.Module):
    """Runs an ONNX model with ONNX Runtime behind an nn.Module call: the model's own inputs (positional
    and keyword tensors, as the example had them) in, the selected output tensor out.

    It keeps the ONNX bytes so it can be deep-copied, pickled and saved (``slimkit.compress.save``
    writes them as a plain ``.onnx`` file). The profiler's ``onnxruntime`` runtime and the int8 pass
    both run models through it, so they share the session options (``session_options``)."""

    runtime = "onnxruntime"  # the latency runtime this module already is (compress times its baseline there)

    def __init__(self, onnx_bytes, threads=0, kind="fp32", level="all", names=None, params=None):
        super().__init__()
        self.onnx_bytes = onnx_bytes
        self.threads = threads
        self.kind = kind
        self.level = level
        self.names = names
        self.params = params  # the source model's parameter count (int8 stores the same weights)
        self._build()

    def _build(self):
        self.session = OrtSession(self.onnx_bytes, self.names, threads=self.threads, level=self.level)
        self.names = self.session.names

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("session", None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._build()

    def forward(self, *inputs, **kwargs):
        return self.session(*inputs, **kwargs)

    def storage_bytes(self):
        """Bytes of the graph's initializers (weights, scales, zero points): what the .onnx file stores."""
        return onnx_weight_bytes(self.onnx_bytes)

    def param_count(self):
        """The source model's parameter count when known, else the elements of the graph's initializers."""
        if getattr(self, "params", None) is not None:
            return self.params
        import onnx

        return int(sum(math.prod(t.dims) for t in onnx.load_from_string(self.onnx_bytes).graph.initializer))

    def extra_repr(self):
        return f"kind={self.kind}, level={self.level}, onnx_bytes={len(self.onnx_bytes)}"

    @classmethod
    def from_torch(cls, model, example_inputs, threads=0, output=None, probes=(), params=None):
        """An ORT fp32 copy of ``model``: the fair baseline for int8 latency."""
        example = Example.of(example_inputs)
        return cls(export_onnx(model, example, output, probes), threads=threads, kind="fp32", names=example.names(),
                   params=params)


def onnx_weight_bytes(onnx_bytes):
    """Bytes of all initializers (weights, scales, zero points) in an ONNX model."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load_from_string(onnx_bytes)
    return int(sum(numpy_helper.to_array(t).nbytes for t in m.graph.initializer))
