"""Compression passes and the ``slimkit.compress(model, example_inputs, recipe)`` verb.

Passes register themselves on import (``slimkit.compress.base.register_pass``); this module imports
every pass module so that ``list_passes()`` is complete. A pass module that is not written yet is
skipped; one that exists but fails to import raises, so a broken pass never goes unnoticed.
"""
import importlib

from slimkit._callable import make_module_callable
from slimkit.compress.base import CompressContext, PassConfig, get_pass, list_passes, register_pass

_PASS_MODULES = ("fold", "lowrank", "prune", "prune_unstructured", "pq", "int8", "bnrecal", "synth", "drop", "distill", "budget")

for _name in _PASS_MODULES:
    _full = f"{__name__}.{_name}"
    try:
        importlib.import_module(_full)
    except ModuleNotFoundError as _err:
        if _err.name != _full:  # the module exists but one of ITS imports is missing: fail loudly
            raise

from slimkit.compress.api import CompressResult, compress  # noqa: E402
from slimkit.compress.export import load, save  # noqa: E402
from slimkit.compress.recipe import RecipeError, parse_recipe, recipe_to_string  # noqa: E402

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
