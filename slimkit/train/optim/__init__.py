"""Optimizer registry: ``create_optimizer(name, params, **kwargs)`` and ``list_optimizers()``."""
from typing import Callable

import torch

_OPTIMIZERS: dict[str, Callable] = {}


def register_optimizer(name):
    """Register ``fn(params, **kwargs) -> torch.optim.Optimizer`` under ``name``; duplicates raise."""

    def wrap(fn):
        if name in _OPTIMIZERS:
            raise ValueError(f"optimizer {name!r} is already registered")
        _OPTIMIZERS[name] = fn
        return fn

    return wrap


def list_optimizers():
    return sorted(_OPTIMIZERS)


def create_optimizer(name, params, **kwargs):
    try:
        fn = _OPTIMIZERS[name]
    except KeyError:
        raise ValueError(f"unknown optimizer {name!r}; known optimizers: {', '.join(list_optimizers())}") from None
    return fn(params, **kwargs)


register_optimizer("sgd")(lambda params, lr=0.01, momentum=0.9, weight_decay=5e-4, **kw: torch.optim.SGD(
    params, lr=lr, momentum=momentum, weight_decay=weight_decay, **kw))
register_optimizer("adam")(lambda params, lr=1e-3, **kw: torch.optim.Adam(params, lr=lr, **kw))
register_optimizer("adamw")(lambda params, lr=1e-3, **kw: torch.optim.AdamW(params, lr=lr, **kw))


# Each module registers its optimizers on import (after the registry above exists).
from slimkit.train.optim import frank_wolfe, sgd_g2  # noqa: E402,F401
