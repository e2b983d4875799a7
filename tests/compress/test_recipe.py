import pytest

from slimkit.compress import RecipeError, parse_recipe, recipe_to_string
from slimkit.compress.int8 import Int8Config
from slimkit.compress.pq import PQConfig
from slimkit.compress.recipe import recipe_from_yaml, recipe_to_yaml


def test_string_parses_to_typed_configs():
    cfgs = parse_recipe("pq(k=8, sub_dim=2), int8(per_channel=false,calibrate=entropy)")
    assert cfgs == [PQConfig(k=8, sub_dim=2), Int8Config(per_channel=False, calibrate="entropy")]
    assert isinstance(cfgs[0].k, int) and cfgs[0].k == 8


def test_bare_names_and_defaults():
    assert parse_recipe("pq,int8") == [PQConfig(), Int8Config()]


def test_string_round_trip():
    text = "pq(k=8,ec_iters=0),int8(threads=1)"
    assert recipe_to_string(parse_recipe(text)) == text
    assert recipe_to_string([PQConfig(), Int8Config()]) == "pq,int8"


def test_yaml_round_trip():
    cfgs = [PQConfig(k=32, codebook_dtype="float32"), Int8Config()]
    text = recipe_to_yaml(cfgs)
    assert "recipe:" in text and "k: 32" in text
    assert recipe_from_yaml(text) == cfgs
    assert recipe_from_yaml("- pq: {k: 4}\n- int8\n") == [PQConfig(k=4), Int8Config()]


def test_float_field_accepts_int():
    from dataclasses import dataclass

    from slimkit.compress.recipe import _coerce
    from slimkit.compress.base import PassConfig
    import dataclasses

    @dataclass
    class C(PassConfig):
        name = "c"
        x: float = 0.5

    assert _coerce(C, dataclasses.fields(C)[0], 1) == 1.0 and isinstance(_coerce(C, dataclasses.fields(C)[0], 1), float)


@pytest.mark.parametrize("bad, needle", [
    ("nosuchpass", "unknown pass 'nosuchpass'"),
    ("pq(k=8", "unbalanced '('"),
    ("pq(k)", "is not FIELD=VALUE"),
    ("pq(colour=red)", "has no field 'colour'"),
    ("pq(k=big)", "field 'k' expects"),
    ("int8(calibrate=magic)", "field 'calibrate' expects"),
    ("pq(k=1000)", "k must be in [2, 256]"),
    ("", "empty recipe"),
    ("pq,,int8", "cannot parse pass ''"),
])
def test_bad_strings_show_grammar_and_known_passes(bad, needle):
    with pytest.raises(RecipeError) as info:
        parse_recipe(bad)
    msg = str(info.value)
    assert needle in msg
    assert "Grammar: recipe := pass" in msg
    assert "pq(sub_dim=4, k=16" in msg and "int8(calib_batches=8" in msg
    assert isinstance(info.value, ValueError)  # the CLI prints ValueErrors as one line


def test_fold_before_prune_warns():
    import warnings

    with pytest.warns(UserWarning, match="put fold last"):
        parse_recipe("fold,prune(macs=0.5),distill")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        parse_recipe("prune(macs=0.5),distill,fold")


def test_literal_word_fields_take_none_true_false_as_words():
    """``mix=none`` means the word 'none' of distill's Literal field, not Python None (it was refused), and
    the string form round-trips."""
    from slimkit.compress.recipe import parse_recipe, recipe_to_string

    cfg = parse_recipe("distill(mix=none,flip=off)")[0]
    assert (cfg.mix, cfg.flip) == ("none", "off")
    assert parse_recipe(recipe_to_string([cfg]))[0].mix == "none"
