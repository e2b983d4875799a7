"""Compressor registry: ``@register_compressor(name)``, ``create_compressor(name, **opts)``,
``list_compressors()``, and ``parse_compressor("ecq(bits=2, beta=0.9)")`` for CLI strings."""
import ast
import importlib
import inspect
import re

_REGISTRY: dict[str, type] = {}
_BUILTIN_MODULES = ("identity", "qsgd", "terngrad", "lpc", "sign", "topk", "ecq", "mqgrad", "auto")


def register_compressor(name):
    def wrap(cls):
        if name in _REGISTRY:
            raise ValueError(f"compressor {name!r} is already registered")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def _load_builtins():
    for mod in _BUILTIN_MODULES:
        importlib.import_module(f"slimkit.comm.{mod}")


def list_compressors():
    _load_builtins()
    return sorted(_REGISTRY)


def get_compressor_class(name):
    _load_builtins()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown compressor {name!r}; known compressors: {', '.join(sorted(_REGISTRY))}") from None


def create_compressor(name, **opts):
    """Build a registered compressor; unknown options raise with the accepted ones listed."""
    cls = get_compressor_class(name)
    accepted = inspect.signature(cls.__init__).parameters
    takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in accepted.values())
    unknown = [k for k in opts if k not in accepted and not takes_kwargs]
    if unknown:
        names = [p for p in accepted if p not in ("self", "kwargs")]
        raise ValueError(f"compressor {name!r} got unknown option(s) {unknown}; it accepts {names}")
    try:
        return cls(**opts)
    except TypeError as err:  # e.g. alpha=nan parsed as the string 'nan' and compared with a number
        raise ValueError(f"compressor {name!r}: bad option value in {opts}: {err}") from None


_SPEC = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(?:\((.*)\))?\s*$", re.S)


def parse_compressor(spec: str):
    """``"ecq(bits=2, beta=0.9)"`` -> ``create_compressor("ecq", bits=2, beta=0.9)``.
    Option values are Python literals (numbers, strings, tuples, None, True/False). The bare names of
    PyTorch's own hooks ("allreduce", "fp16", "powersgd") come back as that string, which
    ``register`` accepts, so ``--compress powersgd`` works too."""
    if not isinstance(spec, str):
        raise TypeError(f"expected a compressor spec string such as 'ecq(bits=2)', got {type(spec).__name__}")
    m = _SPEC.match(spec)
    if not m:
        raise ValueError(f"cannot parse compressor spec {spec!r}; expected NAME or NAME(key=value, ...)")
    name, args = m.group(1), m.group(2)
    from slimkit.comm.hook import BUILTIN_HOOKS

    if name in BUILTIN_HOOKS and not (args and args.strip()):
        return name  # PyTorch's own hook by name; register() accepts it
    opts = {}
    if args and args.strip():
        try:
            call = ast.parse(f"f({args})", mode="eval").body
        except SyntaxError as err:
            raise ValueError(f"cannot parse options of {spec!r}: {err.msg}") from None
        if call.args:
            raise ValueError(f"compressor options must be key=value, got a positional one in {spec!r}")
        for kw in call.keywords:
            try:
                value = ast.literal_eval(kw.value)
            except ValueError:
                # bare words such as norm=max are read as strings
                if isinstance(kw.value, ast.Name):
                    value = kw.value.id
                else:
                    raise ValueError(f"option {kw.arg!r} in {spec!r} is not a literal") from None
            opts[kw.arg] = value
    return create_compressor(name, **opts)
