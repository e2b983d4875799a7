"""Model registry: ``@register_model`` tags a builder; ``create_model(name)`` looks it up
(``MODELS``, a ``slimkit.registry.Registry`` of ``ModelInfo``)."""
from dataclasses import dataclass
from typing import Callable

import torch

from slimkit.registry import Registry


@dataclass(frozen=True)
class ModelInfo:
    name: str
    builder: Callable[..., torch.nn.Module]
    input_size: tuple  # one sample, without the batch dimension, e.g. (3, 32, 32)
    input_dtype: torch.dtype = torch.float32
    description: str = ""


MODELS = Registry("model", target=lambda info: info.builder, builtins=tuple(
    f"slimkit.models.{m}" for m in ("lenet", "resnet_cifar", "mobilenet_v2", "seesaw", "efficientnet", "rnn", "nas")))
_REGISTRY = MODELS.entries


def register_model(name=None, *, input_size, input_dtype=torch.float32, description=""):
    """Register a model builder under ``name`` (default: the function's name). Duplicates raise."""

    def wrap(fn):
        key = name or fn.__name__
        doc = description or ((fn.__doc__ or "").strip().splitlines() or [""])[0]
        MODELS.register(key, ModelInfo(key, fn, tuple(input_size), input_dtype, doc))
        return fn

    return wrap


def list_models(pattern="*"):
    """Registered model names, sorted, optionally filtered by a glob pattern."""
    return MODELS.names(pattern)


def get_model_info(name) -> ModelInfo:
    return MODELS.get(name)


def create_model(name, *, checkpoint=None, **kwargs):
    """Build a registered model; ``checkpoint=`` loads weights (see ``load_checkpoint``)."""
    model = MODELS.create(name, **kwargs)
    if checkpoint is not None:
        from slimkit.models._checkpoint import load_checkpoint

        load_checkpoint(model, checkpoint)
    return model
