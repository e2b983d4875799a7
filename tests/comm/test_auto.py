"""The ``auto`` policy on simulated links: it picks fp32 when compression cannot pay (fast link,
slow codec) and a compressor when the link is slow; predictions follow the hook's collectives."""
import pytest

import slimkit.comm as comm
from slimkit.comm.auto import CodecCost, LinkModel, choose, predict

N = 25_000_000  # values in a bucket (a 25 M-parameter model in one bucket)
ECQ2 = CodecCost(enc_s=4e-9, dec_s=2e-9, bytes_per_value=0.3, fixed_size=False)  # ~250 M values/s


@pytest.mark.parametrize("world", [2, 4, 64])
def test_fast_link_picks_fp32(world):
    link = LinkModel.from_rate(20e-6, 10e9 / 8 * 10, world)  # 100 Gbit/s: nothing beats plain fp32
    choice, times = choose(N, world, link, {"ecq(bits=2)": ECQ2}, cast_s=1e-9)  # fp16 cast: ~1 ns per value
    assert choice == "fp32" and times["ecq(bits=2)"] > times["fp32"]


@pytest.mark.parametrize("world", [2, 4, 64])
def test_slow_link_picks_the_compressor(world):
    link = LinkModel.from_rate(50e-6, 100e6 / 8, world)  # 100 Mbit/s
    choice, times = choose(N, world, link, {"ecq(bits=2)": ECQ2, "ecq(bits=4)": CodecCost(4e-9, 2e-9, 0.55)})
    assert choice == "ecq(bits=2)" and times[choice] < 0.2 * times["fp32"]


def test_margin_keeps_fp32_near_break_even():
    link = LinkModel.from_rate(0, 1e9, 2)
    t32 = predict("fp32", N, 2, link)
    codec = CodecCost(enc_s=0.95 * t32 / N, dec_s=0.0, bytes_per_value=0.0)  # 5% faster: not enough
    slow_cast = 1e-6  # keep fp16 out of this comparison
    assert choose(N, 2, link, {"x": codec}, path="allgather", cast_s=slow_cast)[0] == "fp32"
    assert choose(N, 2, link, {"x": codec}, path="allgather", cast_s=slow_cast, margin=1.0)[0] == "x"


def test_two_phase_prediction_stays_flat_in_world_size_and_all_gather_grows():
    rate = 1e9 / 8
    tp = [predict("c", N, w, LinkModel.from_rate(0, rate, w), ECQ2, "twophase") for w in (2, 64, 1024)]
    ag = [predict("c", N, w, LinkModel.from_rate(0, rate, w), ECQ2, "allgather") for w in (2, 64, 1024)]
    assert max(tp) < 1.6 * min(tp)
    assert ag[-1] > 100 * ag[0]


def test_auto_spec_and_bad_options():
    a = comm.parse_compressor("auto")
    assert set(a.candidates) == {"ecq(bits=2, alpha=0.2, beta=0.9, inner='qsgd', norm='max', bucket_size=512, "
                                 "coding='auto', clip=None)", repr(comm.parse_compressor("ecq(bits=4)"))}
    with pytest.raises(ValueError, match="margin must lie in"):
        comm.parse_compressor("auto(margin=0)")
    with pytest.raises(ValueError, match="auto candidates must be slimkit compressors"):
        comm.parse_compressor("auto(candidates=('auto',))")
    with pytest.raises(TypeError, match="picks a method per bucket"):
        a.compress(None)
