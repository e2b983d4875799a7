"""Compressor options come from the constructor: to_dict/from_dict round trip, and the checkpoint key."""
import json

import pytest
import torch
import yaml

from slimkit import comm
from slimkit.comm import CommState
from slimkit.comm._registry import COMPRESSORS

SPECS = ["identity", "qsgd(norm='max', bits=2)", "lpc", "terngrad", "sign", "topk(ratio=0.1)", "ecq(inner='lpc')",
         "ecq(inner='sign', alpha=1, beta=1)", "mqgrad(actions=(2, 4))", "auto(link_rate=1e5)"]
ECQ2 = ("ecq(bits=2, alpha=0.2, beta=0.9, inner='qsgd', norm='max', bucket_size=512, coding='auto', clip=None)")
ECQ4 = ECQ2.replace("bits=2", "bits=4")


@pytest.mark.parametrize("spec", SPECS)
def test_to_dict_round_trips_through_json_and_yaml_with_a_version(spec):
    c = comm.parse_compressor(spec)
    d = c.to_dict()
    assert d["version"] == 1 and d["name"] == c.name
    for loaded in (json.loads(json.dumps(d)), yaml.safe_load(yaml.safe_dump(d))):  # tuples come back as lists
        back = COMPRESSORS.from_dict(loaded)
        assert back.to_dict() == d and repr(back) == repr(c)


def test_options_and_repr_are_derived_from_the_constructor():
    assert repr(comm.parse_compressor("qsgd")) == "qsgd(bits=4, norm='l2', bucket_size=512, coding='auto', clip=None)"
    assert repr(comm.parse_compressor("ecq")) == ECQ2  # the inner quantizer's options as it resolved them
    assert comm.parse_compressor("mqgrad(actions=(2, 4))").options()["initial_bits"] == 4  # resolved default
    assert comm.parse_compressor("auto").options()["candidates"] == (ECQ2, ECQ4)
    key = comm.parse_compressor("qsgd(seed=3, nonfinite='skip')").checkpoint_key()
    assert "seed" not in key["options"] and "nonfinite" not in key["options"]  # they do not change the state
    with pytest.raises(ValueError, match="version 2; this slimkit reads up to 1"):
        COMPRESSORS.from_dict({**comm.parse_compressor("sign").to_dict(), "version": 2})


def _state(spec):
    return CommState(comm.parse_compressor(spec))


@pytest.mark.parametrize("written, resumed", [
    ("ecq(bits=2)", "ecq(bits=2, norm='max', seed=5)"),  # the same options spelt otherwise; another seed
    ("mqgrad()", "mqgrad(initial_bits=8)"),
])
def test_checkpoint_key_accepts_the_same_options(written, resumed):
    saved = torch.load(_save(_state(written)), weights_only=True)  # the key is plain data
    assert saved["compressor_key"]["options"] == comm.parse_compressor(written).checkpoint_key()["options"]
    _state(resumed).load_state_dict(saved)


def _save(state):
    import io

    buf = io.BytesIO()
    torch.save(state.state_dict(), buf)
    buf.seek(0)
    return buf


@pytest.mark.parametrize("written, resumed", [("ecq(bits=2)", "ecq(bits=4)"), ("mqgrad()", "mqgrad(epsilon=0.5)"),
                                              ("qsgd", "lpc")])
def test_checkpoint_key_refuses_other_options(written, resumed):
    saved = _state(written).state_dict()
    with pytest.raises(ValueError, match="checkpoint was written with compressor"):
        _state(resumed).load_state_dict(saved)


# what checkpoints written before the key held: the repr of the hand-kept options() (some options left out)
OLD_SPECS = {
    "ecq(bits=2)": ECQ2,
    "mqgrad()": "mqgrad(actions=(2, 4, 8, 16), initial_bits=8, interval=10, lam=0.1, ef=True)",
    "auto": f"auto(candidates=({ECQ2!r}, {ECQ4!r}), margin=0.9, refresh=1000, link_rate=None, fp16=False)",
    "qsgd(bits=3)": "qsgd(bits=3, norm='l2', bucket_size=512, coding='auto', clip=None)",
}


@pytest.mark.parametrize("spec", sorted(OLD_SPECS))
def test_checkpoints_from_before_the_key_still_load(spec):
    saved = _state(spec).state_dict()
    del saved["compressor_key"]
    saved["spec"] = OLD_SPECS[spec]
    _state(spec).load_state_dict(saved)
    with pytest.raises(ValueError, match="checkpoint was written with compressor"):
        _state("qsgd(bits=5)").load_state_dict(saved)
