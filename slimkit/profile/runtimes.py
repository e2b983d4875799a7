"""The runtimes a model's latency can be measured in: eager PyTorch, ONNX Runtime fp32, torch.compile.

Eager latency of small models is dominated by per-op Python/dispatcher overhead; a deployment
runtime (ONNX Runtime) shows what the architecture costs once that overhead is gone.
"""
import torch

from slimkit.model_io import Example

RUNTIMES = ("eager", "onnxruntime", "compile")


class OrtRunner:
    """ONNX Runtime CPU session of ``model`` (``slimkit.onnx_runtime``: exported, verified against eager);
    call it like the model, get the selected output as a tensor."""

    def __init__(self, model, example_inputs, threads=1, output=None):
        from slimkit.onnx_runtime import OrtSession, export_onnx

        example = Example.of(example_inputs)
        self.onnx_bytes = export_onnx(model.eval(), example, output)
        self.session = OrtSession(self.onnx_bytes, example.names(), threads=threads)
        self.names = self.session.names

    def __call__(self, *inputs, **kwargs):
        return self.session(*inputs, **kwargs)


def make_runner(model, example_inputs, runtime="eager", *, threads=1, device="cpu", output=None):
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
    return OrtRunner(model, example_inputs, threads=threads, output=output)
