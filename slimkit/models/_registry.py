"""Model registry: ``@register_model`` tags a builder; ``create_model(name)`` looks it up."""
import fnmatch
from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class ModelInfo:
    name: str
    builder: Callable[..., torch.nn.Module]
    input_size: tuple  # one sample, without the batch dimension, e.g. (3, 32, 32)
    input_dtype: torch.dtype = torch.float32
    description: str = ""


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(name=None, *, input_size, input_dtype=torch.float32, description=""):
    """Register a model builder under ``name`` (default: the function's name). Duplicates raise."""

    def wrap(fn):
        key = name or fn.__name__
        if key in _REGISTRY:
            raise ValueError(f"model {key!r} is already registered")
        doc = description or ((fn.__doc__ or "").strip().splitlines() or [""])[0]
        _REGISTRY[key] = ModelInfo(key, fn, tuple(input_size), input_dtype, doc)
        return fn

    return wrap


def list_models(pattern="*"):
    """Registered model names, sorted, optionally filtered by a glob pattern."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def get_model_info(name) -> ModelInfo:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())}") from None


def create_model(name, *, checkpoint=None, **kwargs):
    """Build a registered model; ``checkpoint=`` loads weights (see ``load_checkpoint``)."""
    model = get_model_info(name).builder(**kwargs)
    if checkpoint is not None:
        from slimkit.models._checkpoint import load_checkpoint

        load_checkpoint(model, checkpoint)
    return model
