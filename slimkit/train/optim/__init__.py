"""Optimizer registry: ``create_optimizer(name, params, **kwargs)`` and ``list_optimizers()``
(``OPTIMIZERS``, a ``slimkit.registry.Registry``)."""
import torch

from slimkit.registry import Registry

# the modules of the optimizers slimkit ships register them when first looked up
OPTIMIZERS = Registry("optimizer", builtins=("slimkit.train.optim.frank_wolfe", "slimkit.train.optim.sgd_g2"))
_OPTIMIZERS = OPTIMIZERS.entries


def register_optimizer(name):
    """Register ``fn(params, **kwargs) -> torch.optim.Optimizer`` under ``name``; duplicates raise."""
    return OPTIMIZERS.register(name)


def list_optimizers():
    return OPTIMIZERS.names()


def create_optimizer(name, params, **kwargs):
    """``name`` may carry options in the spec grammar (``"sgd(momentum=0.8)"``); ``kwargs`` override them."""
    return OPTIMIZERS.create(name, params, **kwargs)


register_optimizer("sgd")(lambda params, lr=0.01, momentum=0.9, weight_decay=5e-4, **kw: torch.optim.SGD(
    params, lr=lr, momentum=momentum, weight_decay=weight_decay, **kw))
register_optimizer("adam")(lambda params, lr=1e-3, **kw: torch.optim.Adam(params, lr=lr, **kw))
register_optimizer("adamw")(lambda params, lr=1e-3, **kw: torch.optim.AdamW(params, lr=lr, **kw))

