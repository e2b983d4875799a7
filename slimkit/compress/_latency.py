"""Interleaved latency timing for compression reports, on top of the profiler's ``compare_latency``
(rounds rotate through the models, so load drift on a shared machine hits all of them alike).
Returns plain dicts (median with p25/p75 spread, run count, load average) for the report."""


def interleaved_latency(models, example_inputs, repeats=30, warmup=3, progress=False):
    """``models``: dict name -> callable. Returns dict name -> {median_ms, p25_ms, p75_ms, n, loadavg}."""
    from slimkit.profile.latency import compare_latency

    stats = compare_latency(models, example_inputs, warmup=warmup, repeats=repeats, progress=progress)
    return {name: {"median_ms": s.median_ms, "p25_ms": s.p25_ms, "p75_ms": s.p75_ms, "n": s.n,
                   "loadavg": tuple(s.loadavg)} for name, s in stats.items()}
