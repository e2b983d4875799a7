"""The data forms a user has, as one thing passes can read: a list of ``(x, y)`` batches.

``as_batches(data)`` accepts

- a ``torch.utils.data.Dataset`` of single samples (``TensorDataset(x, y)``, an ``ArrayDataset``, any map-style
  dataset whose items are ``(x, y)``): batched here;
- a ``DataLoader`` (or any iterable of ``(x, y)`` batches, e.g. a list): taken as it is;
- an ``(X, Y)`` pair of tensors with the same first dimension: split into batches;
- an iterable of single ``(x, y)`` samples (0-dim labels): batched here.

Anything else raises :class:`~slimkit.errors.DataError` naming these forms. ``as_tensors(data)`` returns the
concatenated ``(X, Y)``. ``y`` may be ``None`` (unlabelled images) when every item is a bare tensor.
"""
from collections.abc import Iterable, Mapping

import torch
from torch.utils.data import Dataset, default_collate

from slimkit.errors import DataError

FORMS = ("a torch Dataset of (x, y) samples, a DataLoader, an (X, Y) pair of tensors, "
         "or an iterable of (x, y) batches")


def _fail(what, why):
    raise DataError(f"{what}= must be {FORMS}; {why}")


def _is_pair(data):
    """(X, Y): two tensors, same first dim, Y of fewer dims than X or integer (two image batches are not a pair)."""
    if not (isinstance(data, (tuple, list)) and len(data) == 2 and torch.is_tensor(data[0])):
        return False
    x, y = data
    if y is None:
        return isinstance(data, tuple) and x.dim() >= 1
    return (torch.is_tensor(y) and x.dim() >= 1 and y.dim() >= 1 and len(x) == len(y)
            and (y.dim() < x.dim() or not y.is_floating_point()))


def _item(item, what):
    """One element of an iterable -> (x, y) with y possibly None."""
    if torch.is_tensor(item) or isinstance(item, Mapping):
        return item, None
    if isinstance(item, (tuple, list)) and len(item) == 2:
        x, y = item[0], item[1]
        if not (torch.is_tensor(x) or isinstance(x, Mapping)):
            _fail(what, f"an item's input is a {type(x).__name__}, not a tensor")
        if not torch.is_tensor(y):
            try:
                y = torch.as_tensor(y)
            except (TypeError, ValueError, RuntimeError):
                _fail(what, f"an item's label is a {type(y).__name__}, not a tensor or number")
        return x, y
    if isinstance(item, (tuple, list)) and len(item) == 1 and torch.is_tensor(item[0]):
        return item[0], None
    _fail(what, f"got an item of type {type(item).__name__}")


def _group(items, batch_size):
    """Single samples (label 0-dim) -> stacked batches."""
    out = []
    for i in range(0, len(items), batch_size):
        chunk = items[i:i + batch_size]
        x = default_collate([c[0] for c in chunk])  # tensors or dicts of tensors
        y = None if any(c[1] is None for c in chunk) else torch.stack([c[1] for c in chunk])
        out.append((x, y))
    return out


def as_batches(data, batch_size=64, what="data"):
    """``data`` in any of the accepted forms -> list of ``(x, y)`` batches (None stays None)."""
    if data is None:
        return None
    if _is_pair(data):
        X, Y = data
        return [(X[i:i + batch_size], None if Y is None else Y[i:i + batch_size]) for i in range(0, len(X), batch_size)]
    if isinstance(data, Dataset) and hasattr(data, "__len__") and hasattr(data, "__getitem__"):
        if len(data) == 0:
            raise DataError(f"{what}= is an empty Dataset")
        return _group([_item(data[i], what) for i in range(len(data))], batch_size)  # items are single samples
    if isinstance(data, (str, bytes, Mapping)) or not isinstance(data, Iterable) or torch.is_tensor(data):
        _fail(what, f"got {type(data).__name__}")
    items = [_item(b, what) for b in data]
    if not items:
        raise DataError(f"{what}= holds no batches")
    if all(_is_sample(x, y) for x, y in items):
        return _group(items, batch_size)
    return items


def _is_sample(x, y):
    """A single sample, not a batch: its label is a scalar."""
    return torch.is_tensor(x) and y is not None and y.dim() == 0


def as_tensors(data, what="data"):
    """``data`` in any accepted form -> ``(X, Y)`` concatenated (Y None for unlabelled data)."""
    batches = as_batches(data, what=what)
    if not batches:
        raise DataError(f"{what}= is empty")
    if not all(torch.is_tensor(x) for x, _ in batches):
        raise DataError(f"{what}= holds dict inputs; this pass needs image/feature tensors")
    X = torch.cat([x for x, _ in batches])
    if any(y is None for _, y in batches):
        return X, None
    return X, torch.cat([y.reshape(-1) for _, y in batches])
