"""slimkit.registry: one plug-in mechanism (register/get/names/create, one error style, the option grammar)."""
from dataclasses import dataclass
from typing import ClassVar

import pytest

from slimkit.registry import OptionError, Plugin, Registry, format_value, parse_spec, parse_value


def test_register_get_names_and_duplicate_raises():
    reg = Registry("widget")

    @reg.register("b")
    def b():
        return "B"

    reg.register("a", len)
    assert reg.names() == ["a", "b"] and reg.list() == ["a", "b"] and list(reg) == ["a", "b"]
    assert reg.get("b") is b and "a" in reg and len(reg) == 2
    assert reg.names("a*") == ["a"]
    with pytest.raises(ValueError, match="widget 'a' is already registered"):
        reg.register("a", max)


def test_unknown_name_error_lists_the_known_ones():
    reg = Registry("gadget")
    reg.register("x", 1)
    reg.register("y", 2)
    with pytest.raises(ValueError, match=r"^unknown gadget 'z'; known gadgets: x, y$"):
        reg.get("z")
    with pytest.raises(ValueError, match=r"^unknown gadget \['z'\]; known gadgets"):
        reg.get(["z"])  # unhashable: same error, not a TypeError
    named = Registry("scheme", describe=lambda v: f"{v}:PATH", known="valid forms")
    named.register("npz", "npz")
    with pytest.raises(ValueError, match=r"^unknown scheme 'q'; valid forms: npz:PATH$"):
        named.get("q")


def test_create_parses_the_spec_and_checks_options():
    reg = Registry("shape")

    @reg.register("box")
    class Box:
        def __init__(self, size, *, depth=1, label="x"):
            self.size, self.depth, self.label = size, depth, label

    box = reg.create("box(depth=3, label='a b')", 2)
    assert (box.size, box.depth, box.label) == (2, 3, "a b")
    assert reg.create("box(depth=3)", 2, depth=5).depth == 5  # keyword options override the spec
    with pytest.raises(OptionError, match=r"shape 'box' got unknown option\(s\) \['colour'\]; it accepts "
                                          r"\['size', 'depth', 'label'\]"):
        reg.create("box(colour=red)", 1)
    err = pytest.raises(OptionError, reg.create, "box", 1, colour=1).value
    assert isinstance(err, ValueError) and isinstance(err, TypeError)


def test_config_plugins_create_typed_configs():
    reg = Registry("pass", plural="passes")

    @dataclass
    class Scale:
        name: ClassVar[str] = "scale"
        factor: float = 1.0
        on: bool = True

    @reg.register(Scale)
    def scale(x, config):
        return x * config.factor

    plugin = reg.get("scale")
    assert isinstance(plugin, Plugin) and plugin.config is Scale and plugin.fn is scale
    cfg = reg.create("scale(factor=2, on=false)")
    assert cfg == Scale(factor=2.0, on=False) and isinstance(cfg.factor, float)
    assert plugin.fn(3, cfg) == 6
    with pytest.raises(ValueError, match="pass 'scale' has no field 'size'"):
        reg.create("scale(size=2)")
    with pytest.raises(ValueError, match="scale: field 'on' expects"):
        reg.create("scale(on=3)")

    @dataclass
    class Nameless:
        x: int = 0

    with pytest.raises(ValueError, match="Nameless needs a class attribute `name`"):
        reg.register(Nameless)


def test_by_type_registry_finds_the_nearest_base():
    reg = Registry("surgery", plural="surgeries", by_type=True)

    class Base:
        pass

    class Child(Base):
        pass

    @reg.register(Base)
    def base_fn(m):
        return "base"

    assert reg.find(Child()) is base_fn and reg.find(object()) is None
    assert reg.names() == [Base]  # by_type keys are the types themselves
    with pytest.raises(ValueError, match="surgery 'Base' is already registered"):
        reg.register(Base)(lambda m: None)


def test_builtin_modules_load_on_first_lookup():
    reg = Registry("thing", builtins=("json",))
    assert not reg._loaded
    assert reg.names() == [] and reg._loaded


@pytest.mark.parametrize("text, value", [("3", 3), ("-0.5", -0.5), ("True", True), ("false", False), ("none", None),
                                         ("max", "max"), ("'a,b'", "a,b"), ('"x"', "x"), ("(2, 4)", (2, 4)),
                                         ("('auto',)", ("auto",)), ("()", ()), ("Conv|Gemm", "Conv|Gemm")])
def test_values_parse_and_format_back(text, value):
    assert parse_value(text) == value
    assert parse_value(format_value(value)) == value


@pytest.mark.parametrize("spec, needle", [("ecq(2)", "is not FIELD=VALUE"), ("ecq(bits=)", "is not FIELD=VALUE"),
                                          ("1abc", "cannot parse"), ("ecq(bits=f(x))", "is not a value"),
                                          ("ecq(bits=2", "unbalanced '('"), ("ecq(a='x)", "unclosed quote")])
def test_bad_specs_say_why(spec, needle):
    with pytest.raises(ValueError, match=needle.replace("(", r"\(")):
        parse_spec(spec, "compressor")


def test_spec_names_and_options():
    assert parse_spec(" sgd-g2 ") == ("sgd-g2", {})
    assert parse_spec("ecq(bits=2, beta=0.5, norm=max)") == ("ecq", {"bits": 2, "beta": 0.5, "norm": "max"})


def test_configs_round_trip_through_dict_json_and_yaml_with_a_version():
    import json

    import yaml

    from slimkit.compress.base import PASSES
    from slimkit.registry import to_dict

    cfg = PASSES.create("prune(macs=0.5, exclude=('fc', 'stem'))")
    d = to_dict(cfg)
    assert d["name"] == "prune" and d["version"] == 1 and d["options"]["exclude"] == ("fc", "stem")
    assert list(d["options"]) == [f.name for f in __import__("dataclasses").fields(cfg)]  # every field, defaults too
    for loaded in (d, json.loads(json.dumps(d)), yaml.safe_load(yaml.safe_dump(d))):  # lists back to tuples
        assert PASSES.from_dict(loaded) == cfg
    with pytest.raises(ValueError, match="config has version 2; this slimkit reads up to 1"):
        PASSES.from_dict({**d, "version": 2})
    with pytest.raises(ValueError, match="unknown pass 'nope'"):
        PASSES.from_dict({"name": "nope", "options": {}})
    with pytest.raises(TypeError, match="plug-in config dataclass"):
        to_dict(object())


def test_option_lists_are_the_inside_of_a_spec():
    from slimkit.registry import parse_options

    assert parse_options("momentum=0.9, betas=(0.9, 0.99), name='a,b'") == parse_spec(
        "sgd(momentum=0.9, betas=(0.9, 0.99), name='a,b')")[1] == {"momentum": 0.9, "betas": (0.9, 0.99), "name": "a,b"}
    assert parse_options("  ") == {}
    with pytest.raises(ValueError, match="argument 'x' of --optim-opts is not FIELD=VALUE"):
        parse_options("x", "--optim-opts")
