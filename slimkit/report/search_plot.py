"""The search's accuracy-vs-cost plot (in report: it reuses report.plots' Pareto rule; the nas CLI draws it).

A search never times a whole network: its ``latency_ms`` is the look-up-table ESTIMATE (sum of per-block
latencies measured alone, times the table's calibration scale), so the latency axis says so. The shared
``slimkit.report.plots.pareto_figure`` labels its latency axis "measured latency" by default, which is right
for ``slimkit compress`` (it times the networks) and wrong here; this module passes the search's own labels.
"""
import json
import os

_ACCURACY = "accuracy in the supernet (%)"


def latency_label(runtime=None, threads=None):
    """Axis label of LUT-estimated latency, naming the table's runtime and thread count when known."""
    where = ", ".join(x for x in (runtime, f"{threads} thr" if threads else None) if x)
    return f"latency, look-up-table estimate{f' ({where})' if where else ''} (ms)"


def search_figure(points, title, lat_label=None):
    """The matplotlib figure: one panel per cost present (MACs; LUT-estimated latency), Pareto points
    joined. ``points``: dicts with label, accuracy (%), macs and/or latency_ms."""
    from slimkit.report.plots import pareto_figure

    return pareto_figure(points, title, lat_label or latency_label(), _ACCURACY)


def search_pareto_plot(points, path, title, lat_label=None):
    """Write :func:`search_figure` as a PNG; returns ``path``."""
    from slimkit.report.plots import pareto_plot

    return pareto_plot(points, path, title, latency_label=lat_label or latency_label(), accuracy_label=_ACCURACY)


def points_from_results(history, best_spec=None):
    """Plot points from a search's ``results.json`` history (the best one labelled)."""
    return [{"label": "best" if best_spec is not None and r["spec"] == best_spec else "", "accuracy": r["accuracy"],
             "macs": r.get("macs"), "latency_ms": r.get("latency_ms")} for r in history]


def replot(out_dir):
    """Redraw ``out_dir/pareto.png`` of a finished ``slimkit search`` from its results.json and
    search_config.json (no training, no timing). Returns the path."""
    def load(name):
        with open(os.path.join(out_dir, name)) as f:
            return json.load(f)

    res, cfg = load("results.json"), load("search_config.json")
    best = max(res["history"], key=lambda r: r["accuracy"])["spec"] if res["history"] else None  # = SearchResult.best
    has_lat = any(r.get("latency_ms") is not None for r in res["history"])
    return search_pareto_plot(points_from_results(res["history"], best), os.path.join(out_dir, "pareto.png"),
                              title=_title(cfg["space"], cfg["strategy"], cfg.get("budget"), has_lat),
                              lat_label=latency_label(cfg.get("runtime"), cfg.get("threads")))


def _title(space, strategy, budget, has_latency):
    return (f"slimkit search: {space}, {strategy}, budget {budget or 'none'}"
            + ("; latency = look-up-table estimate, not timed" if has_latency else ""))
