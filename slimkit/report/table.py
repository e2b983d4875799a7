"""Plain-text and markdown tables shared by every slimkit report.

``rows`` is a list of dicts (or sequences); ``columns`` names the keys to show, in order, either as
plain keys or as ``(key, header)`` pairs. Numbers are formatted with thousands separators (ints) or
4 significant digits (floats); ``None`` shows as ``-``. Numeric columns are right-aligned.
"""
import math
from numbers import Integral, Real


def format_value(value) -> str:
    """How one cell reads: ``1,234`` for ints, 4 significant digits for floats, ``-`` for None."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, Integral):
        return f"{value:,}"
    if isinstance(value, Real):
        v = float(value)
        if math.isnan(v) or math.isinf(v):
            return str(v)
        if v != 0 and (abs(v) >= 1e6 or abs(v) < 1e-3):
            return f"{v:.3e}"
        return f"{v:,.4g}" if abs(v) < 1e4 else f"{v:,.0f}"
    return str(value)


def _normalise(rows, columns):
    if not columns:
        raise ValueError("format_table needs at least one column, e.g. columns=['name', 'macs']")
    cols = [(c, str(c)) if not isinstance(c, tuple) else (c[0], str(c[1])) for c in columns]
    cells, numeric = [], [True] * len(cols)
    for row in rows:
        if isinstance(row, dict):
            values = [row.get(key) for key, _ in cols]
        else:
            values = list(row)
            if len(values) != len(cols):
                raise ValueError(f"a row has {len(values)} cells, expected {len(cols)} (one per column)")
        for i, v in enumerate(values):
            if v is not None and (isinstance(v, bool) or not isinstance(v, Real)):
                numeric[i] = False
        cells.append([format_value(v) for v in values])
    return [h for _, h in cols], cells, numeric


def format_table(rows, columns, *, title=None) -> str:
    """A fixed-width text table with a header rule; numbers right-aligned."""
    headers, cells, numeric = _normalise(rows, columns)
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]

    def line(values):
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)).rstrip()

    out = [title] if title else []
    out += [line(headers), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in cells]
    return "\n".join(out)


def to_markdown(rows, columns) -> str:
    """The same table as GitHub-flavoured markdown (pipes escaped, numeric columns right-aligned)."""
    headers, cells, numeric = _normalise(rows, columns)

    def esc(v):
        return v.replace("|", "\\|")

    out = ["| " + " | ".join(esc(h) for h in headers) + " |",
           "|" + "|".join("---:" if num else "---" for num in numeric) + "|"]
    out += ["| " + " | ".join(esc(v) for v in r) + " |" for r in cells]
    return "\n".join(out)
