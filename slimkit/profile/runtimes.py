"""The runtimes a model's latency can be measured in: eager PyTorch, ONNX Runtime fp32, torch.compile.

Eager latency of small models is dominated by per-op Python/dispatcher overhead; a deployment
runtime (ONNX Runtime) shows what the architecture costs once that overhead is gone.
"""
import io
import warnings

import torch

from slimkit.errors import SlimkitError

RUNTIMES = ("eager", "onnxruntime", "compile")


def _onnx_bytes(model, inputs):
    names = [f"input{i}" for i in range(len(inputs))]
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        # The TorchScript exporter on purpose: it needs no onnxscript and gives a dynamic batch axis,
        # so one export serves every batch size. Its deprecation and constant-folding warnings are
        # silenced; OrtRunner checks the exported model's output against eager instead.
        warnings.simplefilter("ignore")
        torch.onnx.export(model, inputs, buf, input_names=names, opset_version=17, dynamo=False,
                          dynamic_axes={n: {0: "batch"} for n in names})
    return buf.getvalue()


class OrtRunner:
    """ONNX Runtime CPU session of ``model``; call with torch tensors, get the first output as a tensor."""

    def __init__(self, model, example_inputs, threads=1):
        try:
            import onnxruntime as ort
        except ImportError as err:
            raise SlimkitError("runtime 'onnxruntime' needs ONNX Runtime: pip install 'slimkit[deploy]'") from err
        inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
        self.onnx_bytes = _onnx_bytes(model.eval(), inputs)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.session = ort.InferenceSession(self.onnx_bytes, opts, providers=["CPUExecutionProvider"])
        self.names = [i.name for i in self.session.get_inputs()]
        self._check(model, inputs)

    def _check(self, model, inputs, rtol=1e-3, atol=1e-4):
        """The exported graph must compute what the eager model computes (fp32 summation order aside)."""
        with torch.no_grad():
            ref = model(*inputs)
        ref = ref[0] if isinstance(ref, (tuple, list)) else ref
        got = self(*inputs)
        if got.shape != ref.shape or not torch.allclose(got, ref.to(got.dtype), rtol=rtol, atol=atol):
            err = (got - ref).abs().max().item() if got.shape == ref.shape else f"shape {tuple(got.shape)}"
            raise SlimkitError(f"ONNX Runtime output differs from eager (max abs diff {err}, allowed "
                               f"rtol={rtol}, atol={atol}): the export is not faithful for this model")

    def __call__(self, *inputs):
        feed = {n: t.detach().cpu().contiguous().numpy() for n, t in zip(self.names, inputs)}
        return torch.from_numpy(self.session.run(None, feed)[0])


def make_runner(model, example_inputs, runtime="eager", *, threads=1, device="cpu"):
    """A callable ``fn(*inputs)`` running ``model`` (eval mode) in ``runtime``.

    ``threads`` only matters for ONNX Runtime (intra-op threads); torch's own thread count is set by
    the timing loop. ONNX Runtime runs on the CPU only.
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; expected one of {', '.join(RUNTIMES)}")
    model = model.eval()
    if runtime == "eager":
        return model
    if runtime == "compile":
        return torch.compile(model)
    if torch.device(device).type != "cpu":
        raise ValueError(f"runtime 'onnxruntime' runs on the CPU only, got device={device!r}")
    return OrtRunner(model, example_inputs, threads=threads)
