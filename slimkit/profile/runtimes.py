"""The runtimes a model's latency can be measured in: eager PyTorch, ONNX Runtime fp32, torch.compile.

Eager latency of small models is dominated by per-op Python/dispatcher overhead; a deployment
runtime (ONNX Runtime) shows what the architecture costs once that overhead is gone.

A runtime is a plug-in of ``RUNTIMES``: a function ``build(model, example, *, threads, device, output)``
returning a callable that runs the (eval-mode) model, registered with ``@register_runtime(name, ...)``.
Every timing loop (``profile``, ``measure_settings``, ``slimkit profile --runtime``) takes the names.
"""
from dataclasses import dataclass
from typing import Callable

import torch

from slimkit.registry import Registry


@dataclass(frozen=True)
class Runtime:
    name: str
    build: Callable  # (model, example_inputs, *, threads, device, output) -> callable like the model
    devices: tuple = ("cpu", "cuda", "mps")  # device types it runs on
    setup_on_first_call: bool = False  # compiles / allocates on the first call per shape: warm up at least once
    cuda_peak: bool = False  # on CUDA, also record the allocator peak of one forward (cuda_peak_bytes)


RUNTIMES = Registry("runtime")


def register_runtime(name, *, devices=("cpu", "cuda", "mps"), setup_on_first_call=False, cuda_peak=False):
    """Register ``build(model, example_inputs, *, threads, device, output) -> callable`` as runtime ``name``."""

    def wrap(build):
        RUNTIMES.register(name, Runtime(name, build, tuple(devices), setup_on_first_call, cuda_peak))
        return build

    return wrap


def get_runtime(name) -> Runtime:
    return RUNTIMES.get(name)


@register_runtime("eager", cuda_peak=True)
def _eager(model, example_inputs, *, threads, device, output):
    return model


@register_runtime("compile", setup_on_first_call=True)
def _compile(model, example_inputs, *, threads, device, output):
    return torch.compile(model)


@register_runtime("onnxruntime", devices=("cpu",), setup_on_first_call=True)
def _onnxruntime(model, example_inputs, *, threads, device, output):
    # the int8 pass's module: exported and verified against eager, the same session options
    from slimkit.onnx_runtime import OrtModule

    return OrtModule.from_torch(model, example_inputs, threads=threads, output=output)


def make_runner(model, example_inputs, runtime="eager", *, threads=1, device="cpu", output=None):
    """A callable ``fn(*inputs)`` running ``model`` (eval mode) in ``runtime``.

    ``threads`` only matters for ONNX Runtime (intra-op threads); torch's own thread count is set by
    the timing loop. ONNX Runtime runs on the CPU only.
    """
    rt = get_runtime(runtime)
    if torch.device(device).type not in rt.devices:
        raise ValueError(f"runtime {runtime!r} runs on {', '.join(rt.devices)} only, got device={device!r}")
    return rt.build(model.eval(), example_inputs, threads=threads, device=device, output=output)
