"""Checks every image data set passes at load: dtypes, x/y lengths, empty sets, NaN/Inf, label range.

A bad file raises :class:`slimkit.errors.DataError` naming the file and the first bad index. Bad samples
(non-finite values, labels outside ``0..num_classes-1``) can be dropped instead with ``drop_bad=True``
(``?drop_bad=true`` in a spec); what was dropped is returned so the loader can report it.
"""
from typing import Optional

import numpy as np

from slimkit.errors import DataError

_CHUNK = 4096  # samples per isfinite pass: bounded extra memory on 50k-image sets


def check_labels_dtype(y, where) -> np.ndarray:
    """Class ids as int64 [N]; floats must be whole numbers (or NaN/Inf, caught per sample later)."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DataError(f"labels in {where} must be one class id per sample (shape [N]), got shape {y.shape}")
    if y.dtype == bool or np.issubdtype(y.dtype, np.integer):
        return y.astype(np.int64)
    if np.issubdtype(y.dtype, np.floating):
        finite = np.isfinite(y)
        whole = np.zeros_like(finite)
        whole[finite] = y[finite] == np.round(y[finite])
        if not whole[finite].all():
            i = int(np.flatnonzero(finite & ~whole)[0])
            raise DataError(f"labels in {where} must be integer class ids; label {y[i].item()!r} at index {i} is not")
        return y  # stays float so NaN/Inf labels are reported per sample, then cast
    raise DataError(f"labels in {where} have dtype {y.dtype} ({_kind(y.dtype)}); expected integer class ids "
                    "0..K-1")


def _kind(dtype):
    return {"U": "strings", "S": "bytes", "O": "Python objects"}.get(dtype.kind, dtype.kind)


def check_samples(x, y, *, where: str, num_classes: Optional[int] = None, drop_bad: bool = False):
    """Validate raw arrays ``x`` [N, ...] and labels ``y`` [N]; returns ``(x, y int64, dropped)``.

    ``dropped`` is ``{}`` or ``{"count", "reasons": {reason: n}, "first_index"}`` (indices into the file).
    """
    x = np.asarray(x)
    if not (x.dtype == bool or np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise DataError(f"inputs x in {where} have dtype {x.dtype} ({_kind(x.dtype)}); expected numbers "
                        "(uint8 images or floats)")
    y = check_labels_dtype(y, where)
    if len(x) != len(y):
        raise DataError(f"{where}: x has {len(x)} samples but y has {len(y)} labels; they must match one to one")
    if len(x) == 0:
        raise DataError(f"{where} holds no samples")
    masks = {}
    if np.issubdtype(x.dtype, np.floating):
        flat = x.reshape(len(x), -1)
        finite = np.concatenate([np.isfinite(flat[i:i + _CHUNK]).all(axis=1) for i in range(0, len(x), _CHUNK)])
        masks["non-finite value (NaN/Inf) in x"] = ~finite
    finite_y = np.isfinite(y) if np.issubdtype(y.dtype, np.floating) else np.ones(len(y), dtype=bool)
    masks["non-finite label"] = ~finite_y
    y_safe = np.where(finite_y, y, 0).astype(np.int64)
    masks["negative label"] = finite_y & (y_safe < 0)
    if num_classes is not None:
        masks[f"label >= num_classes={num_classes}"] = finite_y & (y_safe >= num_classes)
    reasons = {r: int(m.sum()) for r, m in masks.items() if m.any()}
    if not reasons:
        return x, y_safe, {}
    bad = np.logical_or.reduce([masks[r] for r in reasons])
    first = int(np.flatnonzero(bad)[0])
    summary = ", ".join(f"{r}: {n}" for r, n in reasons.items())
    if not drop_bad:
        why = next(r for r in reasons if masks[r][first])
        label = f", label {y[first].item()!r}" if "label" in why else ""
        raise DataError(f"{where}: sample {first} is bad ({why}{label}); {int(bad.sum())} bad samples in all "
                        f"({summary}). Fix the data, or pass ?drop_bad=true to drop them")
    keep = ~bad
    if not keep.any():
        raise DataError(f"{where}: every sample is bad ({summary}); nothing is left")
    return x[keep], y_safe[keep], {"count": int(bad.sum()), "reasons": reasons, "first_index": first, "where": where}


def check_class_ids(labels, num_classes, where):
    """With ``num_classes`` inferred (max + 1), every class 0..K-1 must have samples: a stray label such as 57
    in a 10-class set would otherwise build a 58-class head silently."""
    present = np.unique(np.concatenate([np.asarray(lab) for lab in labels]))
    missing = np.setdiff1d(np.arange(num_classes), present)
    if len(missing):
        top = int(present.max())
        shown = ", ".join(str(int(c)) for c in missing[:8]) + (" ..." if len(missing) > 8 else "")
        raise DataError(f"labels in {where} are not 0..K-1: label {top} appears but classes {shown} have no samples "
                        f"({len(missing)} missing). Pass ?num_classes=N to state the class count (then labels >= N "
                        "are errors, or dropped with ?drop_bad=true), or fix the labels")


def dropped_text(dropped) -> str:
    """One phrase per dropped batch, e.g. 'dropped 3 bad samples of x.npz (negative label: 3; first at index 5)'."""
    def first(d):
        f = d["first_index"]
        return f"first at index {f}" if isinstance(f, int) else f"first: {f}"

    return "; ".join(f"dropped {d['count']} bad samples of {d['where']} "
                     f"({', '.join(f'{r}: {n}' for r, n in d['reasons'].items())}; {first(d)})" for d in dropped)
