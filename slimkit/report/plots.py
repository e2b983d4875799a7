"""Plots for reports (matplotlib, Agg backend: no display needed)."""


def _pareto(points, key):
    """Indices of points not dominated in (lower ``key``, higher accuracy)."""
    front = []
    for i, p in enumerate(points):
        if not any(q[key] <= p[key] and q["accuracy"] >= p["accuracy"] and (q[key], q["accuracy"]) != (p[key], p["accuracy"])
                   for q in points):
            front.append(i)
    return front


def pareto_figure(points, title, latency_label="measured latency (ms)", accuracy_label="top-1 accuracy (%)"):
    """The figure: one panel per cost axis present (accuracy vs MACs, accuracy vs latency); Pareto points
    joined by a line. ``points``: dicts with label, accuracy (%), and macs and/or latency_ms."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axes_keys = [(k, lbl) for k, lbl in (("macs", "MACs (millions)"), ("latency_ms", latency_label))
                 if any(p.get(k) is not None for p in points)]
    if not axes_keys:
        raise ValueError("pareto_plot: points need 'macs' or 'latency_ms' values")
    fig, axes = plt.subplots(1, len(axes_keys), figsize=(6 * len(axes_keys), 4.5), squeeze=False)
    for ax, (key, label) in zip(axes[0], axes_keys):
        pts = [p for p in points if p.get(key) is not None and p.get("accuracy") is not None]
        scale = 1e6 if key == "macs" else 1.0
        for p in pts:
            ax.scatter(p[key] / scale, p["accuracy"], s=30)
            ax.annotate(p["label"], (p[key] / scale, p["accuracy"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        front = sorted((pts[i] for i in _pareto(pts, key)), key=lambda p: p[key])
        if len(front) > 1:
            ax.plot([p[key] / scale for p in front], [p["accuracy"] for p in front], "k--", lw=0.8, label="Pareto front")
            ax.legend(fontsize=8)
        ax.set_xlabel(label)
        ax.set_ylabel(accuracy_label)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def pareto_plot(points, path, title="accuracy vs cost", **labels):
    """Writes :func:`pareto_figure` as a PNG (``labels``: its axis labels; by default the latency is
    measured); returns ``path``."""
    import matplotlib.pyplot as plt

    fig = pareto_figure(points, title, **labels)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
