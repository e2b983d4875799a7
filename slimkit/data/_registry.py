"""Data set schemes: ``register_dataset`` / ``list_datasets`` / ``get_dataset_info`` / ``load_dataset(spec)``.

A spec is ``SCHEME``, ``SCHEME:ARG`` or either followed by ``?key=value&key=value`` options, e.g.
``digits?resize=28``, ``cifar10:/data/cifar10_train.npz?holdout=last``, ``pixel-mnist:/data/mnist.npz?permute=true``.
Keyword arguments of :func:`load_dataset` override options given in the spec.
"""
import inspect
from dataclasses import dataclass
from typing import Callable, Optional

from slimkit.data.base import DatasetSplits
from slimkit.registry import Registry


@dataclass(frozen=True)
class DatasetInfo:
    scheme: str
    builder: Callable
    form: str  # how a spec looks, e.g. "cifar10:PATH"
    description: str
    options: tuple  # scheme-specific option names, beyond seed/test_fraction/holdout/resize


# the "known" list shows each scheme's form (cifar10:PATH), which says how to write the spec
DATASETS = Registry("data set scheme", describe=lambda info: info.form, known="valid forms")
_REGISTRY = DATASETS.entries
_COMMON = ("seed", "test_fraction", "holdout", "resize")


def register_dataset(scheme: str, form: str, description: str):
    """Decorator for ``builder(arg, *, seed, test_fraction, holdout, resize, **options) -> DatasetSplits``."""

    def wrap(fn):
        params = inspect.signature(fn).parameters
        options = tuple(p for p in params if p not in _COMMON and p != "arg")
        DATASETS.register(scheme, DatasetInfo(scheme, fn, form, description, options))
        return fn

    return wrap


def list_datasets():
    """Registered scheme names, sorted."""
    return DATASETS.names()


def get_dataset_info(scheme: str) -> DatasetInfo:
    return DATASETS.get(scheme)


def load_dataset(spec: str, *, seed: Optional[int] = None, test_fraction: Optional[float] = None,
                 holdout: Optional[str] = None, resize: Optional[int] = None, **options) -> DatasetSplits:
    """Build the :class:`DatasetSplits` a spec names (see module docstring and docs/data.md).

    ``seed`` (default 0) fixes every random choice (held-out split, synthetic data, permutation).
    ``holdout``: ``official`` (the set's own test split; the default where one exists), ``balanced``
    (seeded, class-balanced, ``test_fraction`` of each class) or ``last`` (the last ``test_fraction``).
    ``resize``: square side for images, bilinear via F.interpolate (e.g. 28 for LeNet-5 on digits).
    """
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"data set spec must be a non-empty string like 'digits' or 'cifar10:PATH', got {spec!r}")
    head, _, query = spec.partition("?")
    scheme, sep, arg = head.partition(":")
    info = get_dataset_info(scheme)
    needs_arg = ":" in info.form
    if needs_arg and not arg:
        raise ValueError(f"data set {scheme!r} needs an argument: {info.form}")
    if not needs_arg and sep:
        raise ValueError(f"data set {scheme!r} takes no ':' argument; use {info.form}")
    given = dict(seed=seed, test_fraction=test_fraction, holdout=holdout, resize=resize, **options)
    kwargs = _parse_query(query, spec)
    kwargs.update({k: v for k, v in given.items() if v is not None})
    unknown = sorted(set(kwargs) - set(_COMMON) - set(info.options))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for {scheme!r}; valid: {', '.join(_COMMON + info.options)}")
    kwargs.setdefault("seed", 0)
    if kwargs.get("holdout") not in (None, "official", "balanced", "last"):
        raise ValueError(f"holdout must be 'official', 'balanced' or 'last', got {kwargs['holdout']!r}")
    for k in _COMMON:
        kwargs.setdefault(k, None)
    splits = info.builder(arg or None, **kwargs)
    splits.spec = spec
    splits.meta.setdefault("seed", kwargs["seed"])
    return splits


def _parse_query(query, spec):
    out = {}
    for part in filter(None, query.split("&")):
        key, eq, value = part.partition("=")
        if not eq or not key:
            raise ValueError(f"spec options must look like ?key=value&key=value, got {part!r} in {spec!r}")
        out[key] = _literal(value)
    return out


def _literal(text):
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text
