"""Compression passes and the ``slimkit.compress(model, example_inputs, recipe)`` verb.

Passes register themselves on import (``slimkit.compress.base.register_pass``); this module imports
every pass module so that ``list_passes()`` is complete.
"""
from slimkit._callable import make_module_callable
from slimkit.compress import (bnrecal, budget, distill, drop, fold, int8, lowrank, pq, prune,  # noqa: F401
                              prune_unstructured, synth)
from slimkit.compress.api import CompressResult, compress
from slimkit.compress.base import CompressContext, PassConfig, get_pass, list_passes, register_pass
from slimkit.compress.export import load, save
from slimkit.compress.recipe import RecipeError, parse_recipe, recipe_to_string

__all__ = [
    "CompressContext",
    "CompressResult",
    "PassConfig",
    "RecipeError",
    "compress",
    "get_pass",
    "list_passes",
    "load",
    "parse_recipe",
    "recipe_to_string",
    "register_pass",
    "save",
]

make_module_callable(__name__, compress)
