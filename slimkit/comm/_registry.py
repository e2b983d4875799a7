"""Compressor registry: ``@register_compressor(name)``, ``create_compressor(name, **opts)``,
``list_compressors()``, and ``parse_compressor("ecq(bits=2, beta=0.9)")`` for CLI strings
(``COMPRESSORS``, a ``slimkit.registry.Registry``; specs use its option grammar)."""
from slimkit.registry import Registry, parse_spec

# PyTorch's own DDP hooks, accepted by name wherever a compressor spec is; here (not in hook.py, which
# imports this module) so that parsing a spec does not need the hook module
BUILTIN_HOOKS = ("allreduce", "fp16", "powersgd")

COMPRESSORS = Registry("compressor", builtins=tuple(
    f"slimkit.comm.{m}" for m in ("identity", "qsgd", "terngrad", "lpc", "sign", "topk", "ecq", "mqgrad", "auto")))
_REGISTRY = COMPRESSORS.entries


def register_compressor(name):
    def wrap(cls):
        COMPRESSORS.register(name, cls)
        cls.name = name
        return cls

    return wrap


def list_compressors():
    return COMPRESSORS.names()


def get_compressor_class(name):
    return COMPRESSORS.get(name)


def create_compressor(name, **opts):
    """Build a registered compressor; unknown options raise with the accepted ones listed."""
    return COMPRESSORS.create(name, **opts)


def parse_compressor(spec: str):
    """``"ecq(bits=2, beta=0.9)"`` -> ``create_compressor("ecq", bits=2, beta=0.9)``.
    Option values follow ``slimkit.registry``'s grammar (numbers, true/false, none, quoted strings, tuples,
    bare words such as ``norm=max``). The bare names of PyTorch's own hooks ("allreduce", "fp16",
    "powersgd") come back as that string, which ``register`` accepts, so ``--compress powersgd`` works too."""
    name, opts = parse_spec(spec, "compressor")
    if name in BUILTIN_HOOKS and not opts:
        return name  # PyTorch's own hook by name; register() accepts it
    return create_compressor(name, **opts)
