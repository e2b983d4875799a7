"""Profiler: ``slimkit.profile(model, example_inputs)`` -> ``Profile`` (MACs, params, bytes, peak
activations, latency per runtime x threads x batch size, per-module and per-operator tables).

Convention: 1 MAC = one multiply-accumulate; FLOPs = 2 x MACs.
"""
from slimkit._callable import make_module_callable
from slimkit.profile.analysis import Profile, measure_settings, profile, resize_batch
from slimkit.profile.compare import compare_rows, compare_table, profile_pair
from slimkit.profile.counting import CUSTOM_FORMULAS, MAC_FREE_OPS, analyze_ops, count_macs
from slimkit.profile.latency import LatencyStats, compare_latency, measure_latency
from slimkit.profile.runtimes import RUNTIMES, Runtime, get_runtime, make_runner, register_runtime

__all__ = ["CUSTOM_FORMULAS", "MAC_FREE_OPS", "RUNTIMES", "LatencyStats", "Profile", "Runtime", "analyze_ops",
           "compare_latency", "compare_rows", "compare_table", "count_macs", "get_runtime", "make_runner",
           "measure_latency", "measure_settings", "profile", "profile_pair", "register_runtime", "resize_batch"]

make_module_callable(__name__, profile)
