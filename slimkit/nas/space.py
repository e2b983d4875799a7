"""Search spaces as data: a space is a list of named categorical choices plus a builder.

An architecture is an :class:`Arch`: the space's name, the chosen value of every choice (in the
space's order) and the space's build options. It encodes to a plain string ``SPACE:BODY[?k=v&k=v]``
(the same grammar as data set specs) and to a dict; both decode back to an equal ``Arch``. Sampling,
mutation and crossover work on the choice vector, so every strategy works on every space.
"""
import json
import random
from dataclasses import dataclass, field
from typing import Callable

from slimkit.data._registry import _parse_query


@dataclass(frozen=True)
class Choice:
    name: str
    options: tuple

    def __post_init__(self):
        if not self.options:
            raise ValueError(f"choice {self.name!r} needs at least one option")


@dataclass(frozen=True)
class Arch:
    """One architecture of a space: hashable, so searches can de-duplicate."""
    space: str
    values: tuple
    options: tuple = ()  # sorted (key, value) pairs of non-default build options, e.g. (("N", 2),)

    def encode(self) -> str:
        return get_space(self.space, **dict(self.options)).encode(self)

    def to_dict(self) -> dict:
        space = get_space(self.space, **dict(self.options))
        return {"space": self.space, "options": dict(self.options),
                "choices": {c.name: v for c, v in zip(space.choices, self.values)}, "spec": self.encode()}

    def __str__(self):
        return self.encode()


@dataclass
class SearchSpace:
    """A named list of choices; ``encode_body``/``decode_body`` map values <-> the string body, and
    ``build(arch, num_classes)`` returns the standalone network, ``supernet(num_classes)`` the
    weight-sharing one. ``options`` are the build options (part of every spec when non-default)."""
    name: str
    choices: list
    encode_body: Callable
    decode_body: Callable
    builder: Callable
    supernet_builder: Callable
    options: dict = field(default_factory=dict)
    defaults: dict = field(default_factory=dict)
    blocks: Callable = None  # (space, arch) -> [(lut key, module, input shape)] for the latency look-up table
    covering: Callable = None  # space -> archs whose blocks cover every block of the space (None: too many)
    input_size: tuple = (3, 32, 32)

    def _option_pairs(self):
        return tuple(sorted((k, v) for k, v in self.options.items() if self.defaults.get(k) != v))

    def arch(self, values) -> Arch:
        values = tuple(values)
        if len(values) != len(self.choices):
            raise ValueError(f"space {self.name!r} has {len(self.choices)} choices, got {len(values)} values")
        for c, v in zip(self.choices, values):
            if v not in c.options:
                raise ValueError(f"{self.name}: {c.name}={v!r} is not an option; options: {list(c.options)}")
        return Arch(self.name, values, self._option_pairs())

    @property
    def size(self) -> int:
        n = 1
        for c in self.choices:
            n *= len(c.options)
        return n

    def sample(self, rng: random.Random) -> Arch:
        return self.arch(rng.choice(c.options) for c in self.choices)

    def mutate(self, arch: Arch, rng: random.Random, prob: float = 0.1) -> Arch:
        """Resample each choice with probability ``prob``; at least one changes (when any can)."""
        free = [i for i, c in enumerate(self.choices) if len(c.options) > 1]
        values = list(arch.values)
        hit = [i for i in free if rng.random() < prob] or ([rng.choice(free)] if free else [])
        for i in hit:
            values[i] = rng.choice([o for o in self.choices[i].options if o != values[i]])
        return self.arch(values)

    def crossover(self, a: Arch, b: Arch, rng: random.Random) -> Arch:
        return self.arch(x if rng.random() < 0.5 else y for x, y in zip(a.values, b.values))

    def encode(self, arch: Arch) -> str:
        text = f"{self.name}:{self.encode_body(arch.values)}"
        if arch.options:
            text += "?" + "&".join(f"{k}={v}" for k, v in arch.options)
        return text

    def build(self, arch, num_classes=10):
        return self.builder(self, self.parse(arch), num_classes)

    def supernet(self, num_classes=10):
        return self.supernet_builder(self, num_classes)

    def parse(self, spec) -> Arch:
        arch = parse_spec(spec)
        if arch.space != self.name or dict(arch.options) != dict(self._option_pairs()):
            raise ValueError(f"spec {arch.encode()!r} is not in space {self.name!r} with options {self.options}")
        return arch


# ---------------------------------------------------------------------------------------- registry
_SPACES: dict[str, Callable] = {}


def register_space(name):
    """Register ``factory(**options) -> SearchSpace`` under ``name``; a duplicate raises."""

    def wrap(fn):
        if name in _SPACES:
            raise ValueError(f"search space {name!r} is already registered")
        _SPACES[name] = fn
        return fn

    return wrap


def list_spaces():
    return sorted(_SPACES)


def get_space(name, **options) -> SearchSpace:
    if isinstance(name, SearchSpace):
        return name
    try:
        factory = _SPACES[name]
    except KeyError:
        raise ValueError(f"unknown search space {name!r}; known spaces: {', '.join(list_spaces())}") from None
    return factory(**options)


def parse_spec(spec) -> Arch:
    """An ``Arch`` from a spec string ``SPACE:BODY[?k=v&...]``, a dict (``to_dict`` form, or
    ``{"spec": ...}``), a path to a JSON file holding either, or an ``Arch``."""
    if isinstance(spec, Arch):
        return spec
    if isinstance(spec, dict):
        if "spec" in spec:
            return parse_spec(spec["spec"])
        if "space" not in spec or "choices" not in spec:
            raise ValueError("an architecture dict needs 'space' and 'choices' (or 'spec'), e.g. Arch.to_dict()")
        space = get_space(spec["space"], **spec.get("options", {}))
        missing = [c.name for c in space.choices if c.name not in spec["choices"]]
        if missing:
            raise ValueError(f"architecture dict for {space.name!r} lacks choices {missing}")
        return space.arch(spec["choices"][c.name] for c in space.choices)
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"spec must be a string 'SPACE:BODY', a dict or a JSON file path, got {spec!r}")
    if spec.endswith(".json"):
        try:
            with open(spec) as f:
                return parse_spec(json.load(f))
        except FileNotFoundError:
            raise FileNotFoundError(f"spec file {spec!r} does not exist") from None
    head, sep, body = spec.partition(":")
    if not sep:
        raise ValueError(f"spec {spec!r} must look like SPACE:BODY (known spaces: {', '.join(list_spaces())})")
    body, _, query = body.partition("?")
    space = get_space(head, **_parse_query(query, spec))  # the data-spec grammar: ?key=value&key=value
    return space.arch(space.decode_body(body))
