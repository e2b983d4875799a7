"""Recipes: an ordered list of typed pass configs, with a short string form and a YAML form.

String grammar (whitespace ignored)::

    recipe := pass ("," pass)*
    pass   := NAME | NAME "(" [arg ("," arg)*] ")"
    arg    := FIELD "=" VALUE          VALUE: int, float, true/false, none, 'quoted', (tuple,) or a bare word

The grammar is ``slimkit.registry``'s, shared by every plug-in spec (compressors, samplers, ...).

Example: ``"fold,prune(macs=0.5),distill(k=10)"``. YAML: a list whose items are a pass name or a
one-key mapping ``{name: {field: value}}`` (a top-level ``recipe:`` key is also accepted).
"""
import dataclasses

from slimkit.compress.base import PASSES, PassConfig, get_pass, list_passes
from slimkit.registry import coerce, default_text, format_value, parse_spec, split_top

GRAMMAR = (
    "recipe := pass (',' pass)*;  pass := NAME | NAME(FIELD=VALUE, ...);  "
    "VALUE := int | float | true | false | none | 'string' | (VALUE, ...) | word.  "
    "Example: fold,prune(macs=0.5),distill(k=10)"
)


class RecipeError(ValueError):
    """A recipe string, YAML or dict does not parse; the message shows the grammar and known passes."""


def _known_passes():
    lines = []
    for name in list_passes():
        cls, _ = get_pass(name)
        fields = ", ".join(f"{f.name}={default_text(f)}" for f in dataclasses.fields(cls))
        lines.append(f"  {name}({fields})")
    return "\n".join(lines) or "  (none registered)"


def _fail(msg):
    raise RecipeError(f"{msg}\nGrammar: {GRAMMAR}\nKnown passes and fields (defaults):\n{_known_passes()}")


def _split_top(text, sep=","):
    """Split on ``sep`` outside parentheses."""
    try:
        return split_top(text, sep)
    except ValueError as err:
        _fail(str(err))


def _coerce(cls, field, value):
    """Check/convert ``value`` against the dataclass field's type annotation."""
    try:
        return coerce(cls, field, value, name=cls.name)
    except ValueError as err:
        _fail(str(err))


def make_config(name, **kwargs):
    """Build the config of pass ``name`` from keyword values, with type checks."""
    if name not in PASSES:
        _fail(f"unknown pass {name!r}")
    try:
        return PASSES.create(name, **kwargs)
    except ValueError as err:
        _fail(str(err))


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
            try:
                name, kwargs = parse_spec(item, "pass")
            except ValueError as err:
                _fail(str(err))
            out.append(make_config(name, **kwargs))
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
        args = ",".join(f"{k}={format_value(v)}" for k, v in config_to_dict(cfg).items())
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
