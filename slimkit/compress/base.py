"""The pass interface shared by every compression pass.

A pass is a typed config dataclass (subclass of ``PassConfig``) plus an apply function registered
with ``@register_pass(ConfigClass)`` (``PASSES``, a ``slimkit.registry.Registry``). The apply function takes
``(model, example_inputs, config, context)`` and returns a NEW nn.Module; it never modifies its input.
"""
from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional

import torch

from slimkit.registry import Registry


@dataclass
class PassConfig:
    """Base of all pass configs. ``name`` is the recipe-string keyword; ``lossless`` passes
    get their outputs checked against the input model, all passes get a forward check."""

    name: ClassVar[str] = ""
    lossless: ClassVar[bool] = False
    # recovery passes (distill, BN recalibration ...) move the model back towards the teacher: their
    # check compares with the teacher, not with the (compressed) model they start from
    recovery: ClassVar[bool] = False
    version: ClassVar[int] = 1


@dataclass
class CompressContext:
    """What a pass may use besides the model: the original (teacher) model, few-shot data,
    evaluation data and whether to show progress bars."""

    teacher: Optional[torch.nn.Module] = None
    data: Any = None  # iterable of (x, y) batches: the few-shot images (may be None: data-free)
    eval_data: Any = None
    progress: bool = True
    output: Any = None  # which model output the passes compare (see slimkit.model_io.select_output)
    # what passes leave for later passes and the report, under the pass's name; a pass aiming at a target
    # (budget) leaves {"metric", "target", "achieved", "met"} there and the report shows whether it was met
    extras: dict = field(default_factory=dict)


PASSES = Registry("pass", plural="passes")
_PASSES = PASSES.entries  # name -> Plugin(config class, apply function); the name older code used


# register_pass(ConfigClass) decorates fn(model, example_inputs, config, context) -> nn.Module;
# get_pass(name) -> Plugin(config class, apply function), a 2-tuple
register_pass, list_passes, get_pass = PASSES.register, PASSES.names, PASSES.get
