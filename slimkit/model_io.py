"""Model I/O as users have it: example inputs as a tensor, a tuple or a dict of keyword arguments;
outputs as a tensor, a tuple, a dict or a dataclass / Hugging Face ``ModelOutput``.

``Example.of(inputs)`` normalises the inputs once; ``select_output(out, selector)`` picks "the output"
that checks, profiles and exports compare (default: the first tensor with a batch dimension, so
``.logits`` of a ``SequenceClassifierOutput`` whose scalar ``loss`` comes first). ``FlatModule`` wraps a
model as ``f(*tensors) -> tensor`` for torch.export and ONNX, which want positional tensors.
"""
import dataclasses
import math
from collections.abc import Mapping
from typing import Any, Callable, Optional, Union

import torch

from slimkit.errors import ShapeError, SlimkitError

Selector = Union[None, int, str, Callable]


@dataclasses.dataclass(frozen=True)
class Example:
    """Positional ``args`` and keyword ``kwargs`` of one model call. Tensors with a batch dimension are
    resized together by ``resized``; other values (ints, flags, None) pass through unchanged."""

    args: tuple = ()
    kwargs: dict = dataclasses.field(default_factory=dict)

    @classmethod
    def of(cls, inputs) -> "Example":
        if isinstance(inputs, Example):
            return inputs
        if isinstance(inputs, Mapping):
            return cls((), dict(inputs))
        if isinstance(inputs, (tuple, list)):
            return cls(tuple(inputs), {})
        return cls((inputs,), {})

    def __call__(self, model):
        return model(*self.args, **self.kwargs)

    # ---- the tensors, flat, in a fixed order (positional first, then keywords in insertion order)
    def names(self):
        return [f"input{i}" for i, a in enumerate(self.args) if torch.is_tensor(a)] + \
            [k for k, v in self.kwargs.items() if torch.is_tensor(v)]

    def tensors(self):
        return [a for a in self.args if torch.is_tensor(a)] + [v for v in self.kwargs.values() if torch.is_tensor(v)]

    def with_tensors(self, tensors) -> "Example":
        it = iter(tensors)
        args = tuple(next(it) if torch.is_tensor(a) else a for a in self.args)
        kwargs = {k: next(it) if torch.is_tensor(v) else v for k, v in self.kwargs.items()}
        return Example(args, kwargs)

    def map(self, fn) -> "Example":
        return self.with_tensors([fn(t) for t in self.tensors()])

    @property
    def batch_size(self):
        ts = self.tensors()
        return int(ts[0].shape[0]) if ts and ts[0].dim() > 0 else 1

    def resized(self, batch_size) -> "Example":
        """Every tensor's dim 0 set to ``batch_size`` by repeating samples (or taking the first ones)."""
        def fix(t):
            if t.dim() == 0 or t.shape[0] == 0:
                raise ShapeError(f"inputs need a batch dimension with >= 1 sample, got shape {tuple(t.shape)}")
            n = t.shape[0]
            if n == batch_size:
                return t
            return t.repeat(math.ceil(batch_size / n), *([1] * (t.dim() - 1)))[:batch_size].contiguous()
        return self.map(fix)

    def describe(self):
        parts = [f"{n}: {'x'.join(map(str, t.shape)) or 'scalar'} {str(t.dtype).replace('torch.', '')}"
                 for n, t in zip(self.names(), self.tensors())]
        return ", ".join(parts) or "no tensors"


def example_from_batch(batch, like: Optional[Example] = None) -> Example:
    """The model inputs of one data batch: ``(x, y)`` -> x (a tensor, tuple or dict of keyword inputs);
    a dict batch (Hugging Face style) -> its entries except ``labels``. When ``like`` takes a single
    keyword tensor (e.g. ``input_ids``) and the batch gives a bare tensor, the tensor goes there."""
    if isinstance(batch, Mapping):
        return Example((), {k: v for k, v in batch.items() if k not in ("labels", "label")})
    x = batch[0] if isinstance(batch, (tuple, list)) else batch
    if isinstance(x, (Mapping, Example)):
        return Example.of(x)
    if like is not None and not like.args and len(like.names()) == 1 and torch.is_tensor(x):
        return Example((), {**like.kwargs, like.names()[0]: x})
    return Example.of(x)


def _tensors(out, path=""):
    """(path, tensor) of every tensor inside ``out`` (tensors, tuples/lists, dicts, dataclasses), in order."""
    if torch.is_tensor(out):
        yield path, out
    elif isinstance(out, Mapping):
        for k, v in out.items():
            yield from _tensors(v, f"{path}.{k}" if path else str(k))
    elif dataclasses.is_dataclass(out) and not isinstance(out, type):
        for f in dataclasses.fields(out):
            yield from _tensors(getattr(out, f.name), f"{path}.{f.name}" if path else f.name)
    elif isinstance(out, (tuple, list)):
        for i, v in enumerate(out):
            yield from _tensors(v, f"{path}[{i}]")


def _first_tensor(out):
    """(tensor, path) of the first tensor with dim >= 1 (falling back to any tensor) inside ``out``."""
    found = list(_tensors(out))
    for p, t in found:
        if t.dim() >= 1:
            return t, p
    return (found[0][1], found[0][0]) if found else (None, "")


def select_output(out, selector: Selector = None):
    """``(tensor, description)`` of the output to compare. ``selector``: None = the first tensor with a
    batch dimension; an int = that element of a tuple/list; a str = that key or attribute (dotted path
    allowed, e.g. ``"logits"``); a callable = ``selector(out)``."""
    if callable(selector) and not isinstance(selector, (str, int)):
        t, desc = selector(out), getattr(selector, "__name__", "selector")
    elif selector is None:
        t, desc = _first_tensor(out)
        desc = desc or "output"
    else:
        t, desc = out, ""
        for part in (str(selector).split(".") if isinstance(selector, str) else [selector]):
            try:
                if isinstance(t, Mapping) and part in t:
                    t = t[part]
                elif isinstance(part, int) or (isinstance(part, str) and part.lstrip("-").isdigit()):
                    t = t[int(part)]
                else:
                    t = getattr(t, part)
            except (AttributeError, IndexError, KeyError, TypeError):
                raise SlimkitError(f"output={selector!r} does not name a part of the model's output "
                                   f"({type(out).__name__}); {describe_outputs(out)}") from None
            desc = f"{desc}.{part}" if desc else str(part)
    if not torch.is_tensor(t):
        raise SlimkitError(f"the selected output {desc!r} is a {type(t).__name__}, not a tensor; pass output= "
                           f"naming a tensor ({describe_outputs(out)})")
    return t, desc


def describe_outputs(out):
    """'tensors: logits 2x10, hidden_states[0] 2x8x64' — what an ``output=`` selector can name."""
    items = [f"{p or 'output'} {'x'.join(map(str, t.shape)) or 'scalar'}" for p, t in _tensors(out)]
    return "tensors: " + (", ".join(items[:8]) + (" ..." if len(items) > 8 else "") if items else "none")


def run_selected(model, example: Example, selector: Selector = None):
    """The selected output tensor of ``model`` on ``example``."""
    return select_output(example(model), selector)[0]


class FlatModule(torch.nn.Module):
    """``model`` as ``forward(*tensors) -> tensor``: the example's tensors positionally (its non-tensor
    arguments are fixed), the selected output. torch.export and the ONNX exporters trace this."""

    def __init__(self, model, example: Example, selector: Selector = None):
        super().__init__()
        self.model = model
        self._example = example
        self._selector = selector

    def forward(self, *tensors):
        return select_output(self._example.with_tensors(tensors)(self.model), self._selector)[0]


def as_example_list(batches, like: Example, limit=None) -> list:
    """Examples from an iterable of data batches (see ``example_from_batch``), at most ``limit``."""
    out = []
    for batch in batches or ():
        out.append(example_from_batch(batch, like))
        if limit is not None and len(out) >= limit:
            break
    return out


def dtype_name(t: Any) -> str:
    return str(t.dtype).replace("torch.", "") if torch.is_tensor(t) else type(t).__name__
