"""Deprecated module: the ``slimkit train`` command is ``slimkit.cli.train``; what other code imported
from here lives in library modules (``parse_options``: ``slimkit.train.config``, ``build_model``:
``slimkit.train.build``). Those two names keep working here with a DeprecationWarning."""
import importlib
import warnings

_MOVED = {"parse_options": "slimkit.train.config", "build_model": "slimkit.train.build"}


def __getattr__(name):
    if name not in _MOVED:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r} (the train command is slimkit.cli.train)")
    warnings.warn(f"slimkit.train._cli.{name} is deprecated; use {_MOVED[name]}.{name}", DeprecationWarning,
                  stacklevel=2)
    return getattr(importlib.import_module(_MOVED[name]), name)
