"""Recipes: an ordered list of typed pass configs, with a short string form and a YAML form.

String grammar (whitespace ignored)::

    recipe := pass ("," pass)*
    pass   := NAME | NAME "(" [arg ("," arg)*] ")"
    arg    := FIELD "=" VALUE          VALUE: int, float, true/false, none, or a bare word

Example: ``"fold,prune(macs=0.5),distill(k=10)"``. YAML: a list whose items are a pass name or a
one-key mapping ``{name: {field: value}}`` (a top-level ``recipe:`` key is also accepted).
"""
import dataclasses
import re
import typing

from slimkit.compress.base import PassConfig, get_pass, list_passes

GRAMMAR = (
    "recipe := pass (',' pass)*;  pass := NAME | NAME(FIELD=VALUE, ...);  "
    "VALUE := int | float | true | false | none | word.  Example: fold,prune(macs=0.5),distill(k=10)"
)
_PASS_RE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\s*(?:\((.*)\))?$", re.S)


class RecipeError(ValueError):
    """A recipe string, YAML or dict does not parse; the message shows the grammar and known passes."""


def _known_passes():
    lines = []
    for name in list_passes():
        cls, _ = get_pass(name)
        fields = ", ".join(f"{f.name}={_default_str(f)}" for f in dataclasses.fields(cls))
        lines.append(f"  {name}({fields})")
    return "\n".join(lines) or "  (none registered)"


def _default_str(f):
    if f.default is not dataclasses.MISSING:
        return _format_value(f.default)
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return _format_value(f.default_factory())  # type: ignore[misc]
    return "<required>"


def _fail(msg):
    raise RecipeError(f"{msg}\nGrammar: {GRAMMAR}\nKnown passes and fields (defaults):\n{_known_passes()}")


def _split_top(text, sep=","):
    """Split on ``sep`` outside parentheses."""
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                _fail(f"unbalanced ')' in {text!r}")
        if ch == sep and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if depth != 0:
        _fail(f"unbalanced '(' in {text!r}")
    parts.append("".join(cur))
    return [p.strip() for p in parts]


def _parse_value(text):
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
    return text


def _coerce(cls, field, value):
    """Check/convert ``value`` against the dataclass field's type annotation."""
    hints = typing.get_type_hints(cls)
    tp = hints.get(field.name, typing.Any)
    origin = typing.get_origin(tp)
    allowed = typing.get_args(tp) if origin is typing.Union else (tp,)
    if value is None and type(None) in allowed:
        return None
    for t in allowed:
        if typing.get_origin(t) is typing.Literal:
            if value in typing.get_args(t):
                return value
            continue
        if t is typing.Any:
            return value
        if t is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if t is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if t in (bool, str) and isinstance(value, t):
            return value
    _fail(f"{cls.name}: field {field.name!r} expects {tp}, got {value!r}")


def make_config(name, **kwargs):
    """Build the config of pass ``name`` from keyword values, with type checks."""
    if name not in list_passes():
        _fail(f"unknown pass {name!r}")
    cls, _ = get_pass(name)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    clean = {}
    for key, value in kwargs.items():
        if key not in fields:
            _fail(f"pass {name!r} has no field {key!r}")
        clean[key] = _coerce(cls, fields[key], value)
    try:
        return cls(**clean)
    except (TypeError, ValueError) as err:
        _fail(f"pass {name!r}: {err}")


def parse_recipe(recipe):
    """A recipe string, a list (of configs, names or one-key dicts) or a single config -> list of configs."""
    if isinstance(recipe, PassConfig):
        return [recipe]
    if isinstance(recipe, str):
        text = recipe.strip()
        if not text:
            _fail("empty recipe")
        out = []
        for item in _split_top(text):
            m = _PASS_RE.match(item)
            if not m:
                _fail(f"cannot parse pass {item!r}")
            kwargs = {}
            args = (m.group(2) or "").strip()
            if args:
                for arg in _split_top(args):
                    key, eq, val = arg.partition("=")
                    if not eq or not key.strip() or not val.strip():
                        _fail(f"argument {arg!r} of pass {m.group(1)!r} is not FIELD=VALUE")
                    kwargs[key.strip()] = _parse_value(val.strip())
            out.append(make_config(m.group(1), **kwargs))
        return _check_order(out)
    if isinstance(recipe, dict) and "recipe" in recipe:
        return parse_recipe(recipe["recipe"])
    if isinstance(recipe, (list, tuple)):
        out = []
        for item in recipe:
            if isinstance(item, PassConfig):
                out.append(item)
            elif isinstance(item, str):
                out.extend(parse_recipe(item))
            elif isinstance(item, dict) and len(item) == 1:
                (name, kwargs), = item.items()
                out.append(make_config(name, **(kwargs or {})))
            else:
                _fail(f"recipe item {item!r} is not a pass config, a pass string or a one-key mapping")
        if not out:
            _fail("empty recipe")
        return _check_order(out)
    _fail(f"expected a recipe string, list or PassConfig, got {type(recipe).__name__}")


def _check_order(configs):
    """int8 turns the model into an ONNX Runtime module no later pass can change: refuse it anywhere but
    last now, not after int8 has run."""
    names = [c.name for c in configs]
    structural = [i for i, n in enumerate(names) if n in ("prune", "drop", "distill", "bnrecal")]
    if "fold" in names and structural and names.index("fold") < structural[-1]:
        import warnings

        warnings.warn("recipe: fold runs before prune/drop/distill/bnrecal; pruning scores and recovery work on the "
                      "model WITH BatchNorm far better (a ResNet-56 at 0.7x MACs, before recovery: 10.9% after "
                      "fold,prune vs 56.4% after prune,fold): put fold last, e.g. prune(macs=0.5),distill,fold",
                      UserWarning, stacklevel=3)
    if "int8" in names[:-1]:
        _fail(f"int8 must be the last pass (it returns an ONNX Runtime module that later passes cannot change); "
              f"got {','.join(names)}")
    return configs


def _format_value(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    return str(value)


def config_to_dict(config):
    """Only the fields that differ from the defaults, so the string form stays short."""
    out = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.default is dataclasses.MISSING or value != f.default:
            out[f.name] = value
    return out


def recipe_to_string(configs):
    parts = []
    for cfg in parse_recipe(list(configs)):
        args = ",".join(f"{k}={_format_value(v)}" for k, v in config_to_dict(cfg).items())
        parts.append(f"{cfg.name}({args})" if args else cfg.name)
    return ",".join(parts)


def recipe_to_yaml(configs):
    import yaml

    items = [{c.name: config_to_dict(c)} if config_to_dict(c) else c.name for c in parse_recipe(list(configs))]
    return yaml.safe_dump({"recipe": items}, sort_keys=False)


def recipe_from_yaml(text):
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        _fail(f"recipe YAML does not parse: {err}")
    return parse_recipe(data)


def load_recipe(text_or_path):
    """A recipe string, or a path to a .yaml/.yml file holding one."""
    import os

    if isinstance(text_or_path, str) and text_or_path.endswith((".yaml", ".yml")):
        if not os.path.exists(text_or_path):
            raise FileNotFoundError(f"recipe file {text_or_path!r} does not exist")
        with open(text_or_path) as f:
            return recipe_from_yaml(f.read())
    return parse_recipe(text_or_path)
