"""Two profiles side by side with ratios (B / A).

Latency ratios are ratios of MEASURED latencies at the same runtime, threads and batch size; a MAC
ratio is only a count ratio and is never presented as a speed-up.
"""
from slimkit.report.table import format_table, to_markdown


def profile_pair(model_a, inputs_a, model_b, inputs_b, *, names=("A", "B"), runtime="eager", threads=("1", "all"),
                 batch_sizes=(1, 64), warmup=3, repeats=20, device="cpu", progress=True):
    """Profile two models; their latencies are timed INTERLEAVED (round-robin) at each runtime x
    threads x batch setting, so load drift on a shared machine hits both alike. Returns (A, B)."""
    from slimkit.profile.analysis import measure_settings, on_device, profile, resize_batch

    if names[0] == names[1]:
        names = (f"{names[0]} (A)", f"{names[1]} (B)")
    a = profile(model_a, inputs_a, device=device, batch_sizes=(), runtime=runtime, threads=threads, name=names[0])
    b = profile(model_b, inputs_b, device=device, batch_sizes=(), runtime=runtime, threads=threads, name=names[1])
    import torch

    dev = torch.device(device)
    entries = {}
    for prof, m, x in ((a, model_a, inputs_a), (b, model_b, inputs_b)):
        m = on_device(m, dev).eval()
        entries[prof.name] = (m, tuple(t.to(dev) if isinstance(t, torch.Tensor) else t for t in resize_batch(x, 1)))
    rows = measure_settings(entries, runtimes=runtime, threads=threads, batch_sizes=batch_sizes, warmup=warmup,
                            repeats=repeats, device=device, progress=progress)
    a.latency, b.latency = rows[a.name], rows[b.name]
    return a, b


def _ratio(a, b):
    return None if not a or b is None else round(b / a, 3)


def compare_rows(a, b) -> list:
    """Rows ``{metric, a, b, ratio}`` for the counts and for every latency setting both profiles have."""
    rows = [{"metric": label, "a": getattr(a, key), "b": getattr(b, key), "ratio": _ratio(getattr(a, key), getattr(b, key))}
            for key, label in (("macs", "MACs (count)"), ("params", "params"), ("weight_bytes", "weight bytes"),
                               ("peak_activation_bytes", "peak activation bytes (batch 1)"))]
    b_rows = {(r["runtime"], r["threads"], r["batch_size"]): r for r in b.latency}
    for ra in a.latency:
        rb = b_rows.get((ra["runtime"], ra["threads"], ra["batch_size"]))
        if rb is None:
            continue
        setting = f"{ra['runtime']}, {ra['threads']} thr, batch {ra['batch_size']}"
        rows.append({"metric": f"measured median ms ({setting})", "a": ra["median_ms"], "b": rb["median_ms"],
                     "ratio": _ratio(ra["median_ms"], rb["median_ms"])})
    return rows


def compare_table(a, b, markdown=False) -> str:
    """The comparison as a text (or markdown) table; ratio = B / A."""
    cols = ["metric", ("a", f"A: {a.name}"), ("b", f"B: {b.name}"), ("ratio", "ratio B/A")]
    rows = compare_rows(a, b)
    text = to_markdown(rows, cols) if markdown else format_table(rows, cols)
    note = ("ratio < 1: B is smaller/faster. Latency ratios are of measured medians (interleaved timing when made "
            "by profile_pair; load avg in each profile); the MAC ratio is a count, not a speed-up.")
    return text + "\n" + note
