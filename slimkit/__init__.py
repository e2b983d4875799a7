"""slimkit: make deep networks cheaper to train and to run, and prove it with measurements.

Verbs: ``slimkit.profile(model, example_inputs)``, ``slimkit.compress(model, example_inputs, recipe)``.
Subpackages load on first use so that ``import slimkit`` stays cheap: it initialises neither CUDA
nor torch.distributed (tests/test_import.py asserts it).
"""
import importlib

__version__ = "0.1.0"

_SUBPACKAGES = ("models", "data", "profile", "train", "compress", "comm", "report")


def __getattr__(name):
    if name in _SUBPACKAGES:
        return importlib.import_module(f"slimkit.{name}")
    raise AttributeError(f"module 'slimkit' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_SUBPACKAGES))
