"""Lets a subpackage double as its verb: ``slimkit.profile(...)`` and ``slimkit.profile.Profile``."""
import sys
import types


def make_module_callable(module_name, fn):
    # Importing a submodule rebinds the parent's attribute to the module object, so a plain
    # function named like its package would be shadowed; a callable module keeps both working.
    module = sys.modules[module_name]

    class _CallableModule(types.ModuleType):
        def __call__(self, *args, **kwargs):
            return fn(*args, **kwargs)

    _CallableModule.__call__.__doc__ = fn.__doc__
    module.__class__ = _CallableModule
