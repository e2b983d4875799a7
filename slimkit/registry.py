"""One plug-in mechanism for every kind of extension: passes, compressors, optimizers, models, data sets,
importance criteria, samplers, latency runtimes and the per-module-type tables of pruning.

``Registry(kind)`` holds plug-ins by name (or by module type, ``by_type=True``)::

    PASSES = Registry("pass", plural="passes")

    @PASSES.register(FoldConfig)          # a typed config dataclass (``name`` ClassVar) + its handler
    def fold(model, example_inputs, config, context): ...

    @COMPRESSORS.register("qsgd")         # or a class / function under a name
    class QSGD(Compressor): ...

``get(name)`` returns what was registered (a ``Plugin(config, fn)`` for a config plug-in), ``names()``
lists them, ``create("qsgd(bits=4)", *args)`` parses a spec in the option grammar below and builds it;
``to_dict(config)`` / ``from_dict(data)`` round-trip a config as ``{"name", "version", "options"}``.
A duplicate name raises; an unknown one raises ``ValueError("unknown <kind> 'x'; known <kinds>: a, b")``.

Option grammar (the recipe grammar, slimkit.compress.recipe; whitespace ignored)::

    spec  := NAME | NAME "(" [FIELD "=" VALUE ("," FIELD "=" VALUE)*] ")"
    VALUE := int | float | true | false | none | 'quoted' | "quoted" | (VALUE, ...) | bare word
"""
import dataclasses
import fnmatch
import importlib
import inspect
import re
import typing
from typing import Any, Callable, NamedTuple, Optional

_MISSING = object()
_NAME_RE = re.compile(r"^([A-Za-z_][A-Za-z0-9_-]*)\s*(?:\((.*)\))?$", re.S)


class Plugin(NamedTuple):
    """A config plug-in: the typed config dataclass and the function that applies it."""

    config: type
    fn: Callable


class OptionError(ValueError, TypeError):
    """Options a plug-in does not take. A ValueError for callers that report bad input in one line,
    and a TypeError as Python raises for a wrong keyword argument."""


class Registry:
    """Plug-ins of one ``kind``. ``builtins``: modules imported on first use (their imports register the
    shipped plug-ins). ``describe(entry)``: how an entry is named in the "known" list (default: its key).
    ``target(entry)``: the callable ``create`` calls (default: the entry itself). ``known``: the words
    before that list (default "known <plural>")."""

    def __init__(self, kind: str, *, plural: Optional[str] = None, builtins: tuple = (), by_type: bool = False,
                 describe: Optional[Callable] = None, target: Optional[Callable] = None, known: Optional[str] = None):
        self.kind = kind
        self.plural = plural or f"{kind}s"
        self.by_type = by_type
        self.entries: dict = {}  # key -> what was registered; tests may monkeypatch.setitem it
        self._builtins = tuple(builtins)
        self._loaded = not self._builtins
        self._describe = describe
        self._target = target or (lambda entry: entry)
        self._known = known or f"known {self.plural}"

    # -- registering ------------------------------------------------------------------------------------
    def register(self, key=None, obj=_MISSING):
        """``register(ConfigClass)`` decorates the config's handler; ``register("name")`` (or no name:
        the object's ``__name__``) decorates a class or function; ``register(key, obj)`` adds ``obj`` now."""
        if obj is not _MISSING:
            self._add(key, obj)
            return obj
        if _is_config(key) and not self.by_type:
            if not getattr(key, "name", ""):
                raise ValueError(f"{key.__name__} needs a class attribute `name`")

            def wrap_config(fn):
                self._add(key.name, Plugin(key, fn))
                return fn

            return wrap_config

        def wrap(value):
            self._add(key if key is not None else value.__name__, value)
            return value

        return wrap

    def _add(self, key, value):
        if key in self.entries:
            raise ValueError(f"{self.kind} {self._label(key)!r} is already registered")
        self.entries[key] = value

    # -- looking up ------------------------------------------------------------------------------------
    def _load(self):
        if not self._loaded:
            for mod in self._builtins:  # a lookup while these import finds them in sys.modules: no recursion
                importlib.import_module(mod)
            self._loaded = True

    def names(self, pattern: str = "*") -> list:
        """Registered names, sorted, optionally filtered by a glob pattern."""
        self._load()
        return sorted((k for k in self.entries if fnmatch.fnmatch(self._label(k), pattern)), key=self._label)

    list = names

    def __contains__(self, key) -> bool:
        self._load()
        return key in self.entries

    def __iter__(self):
        return iter(self.names())

    def __len__(self) -> int:
        self._load()
        return len(self.entries)

    def get(self, key):
        """What was registered under ``key``; an unknown key raises the one error of this module."""
        self._load()
        try:
            return self.entries[key]
        except (KeyError, TypeError):  # TypeError: an unhashable key
            raise self.unknown(key) from None

    def find(self, obj) -> Any:
        """For ``by_type`` registries: the entry of ``type(obj)`` or its nearest registered base, else None."""
        self._load()
        for cls in type(obj).__mro__:
            if cls in self.entries:
                return self.entries[cls]
        return None

    def unknown(self, key) -> ValueError:
        known = ", ".join(self._describe(self.entries[k]) if self._describe else self._label(k) for k in self.names())
        return ValueError(f"unknown {self.kind} {key!r}; {self._known}: {known or '(none registered)'}")

    def _label(self, key):
        return key.__name__ if isinstance(key, type) else str(key)

    # -- building ----------------------------------------------------------------------------------------
    def create(self, spec, /, *args, **options):
        """Build a plug-in from ``spec`` (a name or ``NAME(FIELD=VALUE, ...)``); keyword ``options``
        override those in the spec. A config plug-in gives its config (the handler runs it later, as
        ``quantize_(model, config)`` does); a class or function is called with ``*args`` and the options."""
        self._load()
        plain = not isinstance(spec, str) or spec in self.entries  # a registered name is never parsed
        name, parsed = (spec, {}) if plain else parse_spec(spec, self.kind)
        parsed.update(options)
        entry = self.get(name)
        if isinstance(entry, Plugin):
            return build_config(entry.config, parsed, kind=self.kind, name=name)
        fn = self._target(entry)
        check_options(fn, parsed, kind=self.kind, name=name)
        if not parsed:  # no options: a TypeError is a bug of the plug-in, not bad input
            return fn(*args)
        try:
            return fn(*args, **parsed)
        except TypeError as err:  # e.g. alpha=nan parsed as a string and compared with a number
            raise OptionError(f"{self.kind} {name!r}: bad option value in {parsed}: {err}") from err

    def from_dict(self, data, /, *args):
        """Build a plug-in back from :func:`to_dict`'s form (``{"name", "version", "options"}``, read from
        JSON or YAML: lists come back as tuples). A version newer than the plug-in's raises."""
        if not isinstance(data, dict) or not isinstance(data.get("name"), str):
            raise ValueError(f"a {self.kind} config is a mapping with 'name', 'version' and 'options', got {data!r}")
        name = data["name"]
        entry = self.get(name)
        known = getattr(entry.config if isinstance(entry, Plugin) else entry, "version", CONFIG_VERSION)
        version = data.get("version", CONFIG_VERSION)
        if not isinstance(version, int) or version > known:
            raise ValueError(f"{self.kind} {name!r} config has version {version!r}; this slimkit reads up to {known}")
        return self.create(name, *args, **_tuples(dict(data.get("options") or {})))


def _is_config(key):
    return isinstance(key, type) and dataclasses.is_dataclass(key)


def check_options(fn, options, *, kind, name):
    """Options ``fn`` has no parameter for raise, naming the ones it accepts (skipped when it takes **kwargs)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # builtins without a signature
        return
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    unknown = [k for k in options if k not in params]
    if unknown:
        accepted = [p for p in params if p not in ("self", "kwargs")]
        raise OptionError(f"{kind} {name!r} got unknown option(s) {unknown}; it accepts {accepted}")


# -- the option grammar ---------------------------------------------------------------------------------
def split_top(text: str, sep: str = ",") -> list:
    """Split on ``sep`` outside parentheses and quotes."""
    parts, depth, cur, quote = [], 0, [], None
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise ValueError(f"unbalanced ')' in {text!r}")
        if ch == sep and depth == 0 and not quote:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if depth != 0:
        raise ValueError(f"unbalanced '(' in {text!r}")
    if quote:
        raise ValueError(f"unclosed quote {quote} in {text!r}")
    parts.append("".join(cur))
    return [p.strip() for p in parts]


def parse_value(text: str):
    """One VALUE of the grammar: int, float, true/false, none/null, a quoted string, a tuple or a bare word."""
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    if text.startswith("(") and text.endswith(")"):
        inner = text[1:-1].strip()
        items = split_top(inner) if inner else []
        if items and items[-1] == "":  # a trailing comma: ('auto',)
            items.pop()
        return tuple(parse_value(item) for item in items)
    if any(ch in text for ch in "()'\"=,"):
        raise ValueError(f"{text!r} is not a value (int, float, true/false, none, 'string', (tuple) or word)")
    return text


def parse_spec(spec: str, kind: str = "plug-in"):
    """``"NAME(FIELD=VALUE, ...)"`` -> ``(NAME, {FIELD: value})``; a bad spec raises ValueError saying why."""
    if not isinstance(spec, str):
        raise TypeError(f"expected a {kind} spec string such as 'name(field=value)', got {type(spec).__name__}")
    text = spec.strip()
    m = _NAME_RE.match(text)
    if not m:
        split_top(text)  # an unbalanced bracket is the likelier mistake: say so
        raise ValueError(f"cannot parse {kind} {text!r}; expected NAME or NAME(FIELD=VALUE, ...)")
    name = m.group(1)
    return name, parse_options(m.group(2) or "", f"{kind} {name!r}")


def parse_options(text: str, what: str = "options") -> dict:
    """The inside of a spec's parentheses, ``"FIELD=VALUE, ..."`` -> ``{FIELD: value}`` (``""`` -> ``{}``);
    the command line's ``--optim-opts``/``--sampler-opts`` are this. ``what`` names them in errors."""
    options = {}
    text = text.strip()
    for arg in split_top(text) if text else []:
        key, eq, val = arg.partition("=")
        if not eq or not key.strip() or not val.strip():
            raise ValueError(f"argument {arg!r} of {what} is not FIELD=VALUE")
        try:
            options[key.strip()] = parse_value(val.strip())
        except ValueError as err:
            raise ValueError(f"argument {key.strip()!r} of {what}: {err}") from None
    return options


def format_value(value) -> str:
    """The grammar's text for ``value`` (``parse_value(format_value(v)) == v`` for grammar values)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, tuple):
        return "(" + ", ".join(format_value(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    if isinstance(value, str):
        try:
            plain = parse_value(value) == value
        except ValueError:
            plain = False
        if not plain:  # "a,b", "1", "none": quoted, or they would read back as something else
            return repr(value)
    return str(value)


# -- typed configs ---------------------------------------------------------------------------------------
CONFIG_VERSION = 1  # of to_dict's form; a plug-in class may carry its own ``version`` ClassVar


def to_dict(config) -> dict:
    """A typed plug-in config as plain data, ``{"name": ..., "version": ..., "options": {field: value}}``
    with every field; ``Registry.from_dict`` builds it back (also after a JSON or YAML round trip)."""
    if not _is_config(type(config)) or not getattr(config, "name", ""):
        raise TypeError(f"expected a plug-in config dataclass with a `name`, got {type(config).__name__}")
    return {"name": config.name, "version": getattr(config, "version", CONFIG_VERSION),
            "options": {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}}


def _tuples(value):
    """Lists (JSON and YAML have no tuples) as tuples, in dicts too; the grammar's values have no lists."""
    if isinstance(value, (list, tuple)):
        return tuple(_tuples(v) for v in value)
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    return value


def coerce(cls, field, value, *, name=None):
    """Check/convert ``value`` against the dataclass field's type annotation; ValueError if it does not fit."""
    hints = typing.get_type_hints(cls)
    tp = hints.get(field.name, typing.Any)
    allowed = typing.get_args(tp) if typing.get_origin(tp) is typing.Union else (tp,)
    if value is None and type(None) in allowed:
        return None
    for t in allowed:
        if typing.get_origin(t) is typing.Literal:
            if value in typing.get_args(t):
                return value
            # the grammar reads the words none/true/false as values; a Literal of words means the word
            word = "none" if value is None else str(value).lower() if isinstance(value, bool) else None
            if word in typing.get_args(t):
                return word
            continue
        if t is typing.Any:
            return value
        if t is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if t is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if t in (bool, str) and isinstance(value, t):
            return value
        if (t is tuple or typing.get_origin(t) is tuple) and isinstance(value, tuple):
            return value
    raise ValueError(f"{name or cls.__name__}: field {field.name!r} expects {tp}, got {value!r}")


def build_config(cls, options: dict, *, kind: str, name: str):
    """``cls(**options)`` with each value checked against its field's type; errors name the field."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    clean = {}
    for key, value in options.items():
        if key not in fields:
            raise ValueError(f"{kind} {name!r} has no field {key!r}")
        clean[key] = coerce(cls, fields[key], value, name=name)
    try:
        return cls(**clean)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{kind} {name!r}: {err}") from None


def default_text(field) -> str:
    """A dataclass field's default in the grammar, or ``<required>``."""
    if field.default is not dataclasses.MISSING:
        return format_value(field.default)
    if field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return format_value(field.default_factory())  # type: ignore[misc]
    return "<required>"
