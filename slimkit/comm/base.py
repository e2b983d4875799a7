"""The compressor interface: ``compress(flat) -> uint8 payload``, ``decompress(payload, numel)``.

The payload is exactly what goes on the wire, so ``payload.numel()`` is the real byte count.
``segments`` names the parameters a flat bucket is made of (name, numel); stateful compressors
(error feedback) key their buffers by parameter name so they survive DDP's bucket rebuild.
"""
import functools
import inspect
import math
from typing import ClassVar, Optional, Sequence

import torch

Segments = Optional[Sequence[tuple[str, int]]]


def _records_arguments(init):
    """Wrap ``__init__`` so the outermost call keeps its arguments (defaults filled in, ``**kwargs``
    merged) as the compressor's config: what ``options()``, ``repr`` and ``to_dict()`` derive from."""
    sig = inspect.signature(init)

    @functools.wraps(init)
    def wrapped(self, *args, **kwargs):
        if "_config" not in self.__dict__:  # a subclass's super().__init__ does not overwrite it
            try:
                bound = sig.bind(self, *args, **kwargs)
            except TypeError:
                return init(self, *args, **kwargs)  # let the constructor raise its own error
            bound.apply_defaults()
            config = {}
            for pname, param in list(sig.parameters.items())[1:]:
                if param.kind is param.VAR_KEYWORD:
                    config.update(bound.arguments.get(pname, {}))
                elif param.kind is not param.VAR_POSITIONAL:
                    config[pname] = bound.arguments[pname]
            self._config = config
        return init(self, *args, **kwargs)

    return wrapped


class Compressor:
    """A gradient compressor. Its options are its constructor's arguments: ``config()`` returns them,
    ``options()`` (and so ``repr``) leaves out ``RUN_OPTIONS``, which do not change what a checkpoint's
    state means, and ``to_dict()`` is the form ``COMPRESSORS.from_dict`` builds back and checkpoints store."""

    name: ClassVar[str] = ""
    fixed_size: ClassVar[bool] = True  # same payload size for the same numel (no size exchange needed)
    version: ClassVar[int] = 1  # of to_dict's options
    RUN_OPTIONS: ClassVar[tuple] = ("seed", "nonfinite")

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:
            cls.__init__ = _records_arguments(cls.__dict__["__init__"])

    @_records_arguments
    def __init__(self, seed: int = 0, nonfinite: str = "raise"):
        if nonfinite not in ("raise", "skip"):
            raise ValueError(f"nonfinite must be 'raise' or 'skip', got {nonfinite!r}")
        self.seed, self.nonfinite = int(seed), nonfinite
        self.generator = torch.Generator().manual_seed(self.seed)
        self.skipped = 0

    # -- interface -------------------------------------------------------------------------
    def compress(self, flat: torch.Tensor, segments: Segments = None) -> torch.Tensor:
        raise NotImplementedError

    def decompress(self, payload: torch.Tensor, numel: int) -> torch.Tensor:
        raise NotImplementedError

    def compress_decoded(self, flat: torch.Tensor, segments: Segments = None, **kw) -> tuple[torch.Tensor, torch.Tensor]:
        """(payload, decompress(payload)); compressors that can give the decoded values without
        decoding their own payload again (QSGD and its subclasses) override this."""
        payload = self.compress(flat, segments, **kw)
        return payload, self.decompress(payload, flat.numel())

    def compress_chunks(self, flat: torch.Tensor, segments: Segments, bounds: Sequence[int], **kw):
        """One payload per chunk ``flat[bounds[j]:bounds[j+1]]`` (the two-phase hook sends chunk j to
        rank j) and the concatenated values the peers will decode. Stateful compressors override
        this to apply their state (error feedback) to the whole bucket at once."""
        payloads, decoded = [], []
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            p, d = self.compress_decoded(flat[lo:hi], slice_segments(segments, lo, hi), **kw)
            payloads.append(p)
            decoded.append(d.reshape(-1))
        return payloads, torch.cat(decoded) if decoded else flat.new_zeros(0)

    def decompress_own(self, payload: torch.Tensor, numel: int) -> torch.Tensor:
        """Decode this rank's own last payload, reusing the copy a stateful compressor already decoded."""
        cached = getattr(self, "_last", None)
        if cached is not None and cached[0] is payload:
            return cached[1]
        return self.decompress(payload, numel)

    def bind(self, rank: int) -> None:
        """Give each rank its own random stream (independent noise keeps averaging unbiased)."""
        self.generator.manual_seed(self.seed * 1_000_003 + rank)

    def reset_rank_state(self, rank: int) -> None:
        """After loading another rank's state (resume with a new world size): drop what is per-rank."""
        self.bind(rank)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "skipped": self.skipped}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.skipped = int(state.get("skipped", 0))

    def config(self) -> dict:
        """The constructor's arguments, defaults filled in. A compressor that resolves some of them in its
        constructor (a default that depends on another option) overrides this to give the resolved values."""
        return dict(self.__dict__.get("_config", {}))

    def options(self) -> dict:
        return {k: v for k, v in self.config().items() if k not in self.RUN_OPTIONS}

    def to_dict(self) -> dict:
        """``{"name", "version", "options"}`` with every option (``slimkit.registry.to_dict``'s form)."""
        return {"name": self.name, "version": self.version, "options": plain_options(self.config())}

    def checkpoint_key(self) -> dict:
        """What a checkpoint's compressor state is valid for: ``to_dict()`` without ``RUN_OPTIONS``."""
        key = self.to_dict()
        key["options"] = {k: v for k, v in key["options"].items() if k not in self.RUN_OPTIONS}
        return key

    def __repr__(self):
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options().items())
        return f"{self.name}({opts})"

    # -- helpers -------------------------------------------------------------------------------
    def check_finite(self, flat: torch.Tensor) -> torch.Tensor:
        """NaN/Inf would poison every rank's model: raise, or (nonfinite='skip') send zeros."""
        if bool(torch.isfinite(flat.sum())):  # one reduction: NaN/Inf anywhere makes the sum non-finite
            return flat
        bad = int((~torch.isfinite(flat)).sum())
        if bad == 0:
            return flat  # the sum overflowed, the values are finite
        if self.nonfinite == "skip":
            self.skipped += 1
            return torch.zeros_like(flat)
        raise FloatingPointError(
            f"{self.name}: gradient has {bad} NaN/Inf values out of {flat.numel()}; "
            "fix the loss/learning rate or create the compressor with nonfinite='skip'"
        )

    def roundtrip(self, flat: torch.Tensor, segments: Segments = None) -> tuple[torch.Tensor, int]:
        """Compress then decompress locally: (decoded tensor, payload bytes). For tests and analysis."""
        payload = self.compress(flat, segments)
        return self.decompress(payload, flat.numel()).view_as(flat), payload.numel()


def plain_options(value):
    """Options as plain data (a checkpoint loads with weights_only): compressors by their repr, lists as tuples."""
    if isinstance(value, Compressor):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return tuple(plain_options(v) for v in value)
    if isinstance(value, dict):
        return {k: plain_options(v) for k, v in value.items()}
    return value


def bits_for(n: int) -> int:
    """Bits needed to store an index in [0, n)."""
    return max(1, math.ceil(math.log2(max(n, 2))))


def slice_segments(segments: Segments, lo: int, hi: int):
    """The parts of ``segments`` (name, numel) that fall into [lo, hi), renamed ``name@a:b`` when a
    parameter is cut, so that per-name state of a chunk never collides with the whole parameter's."""
    if segments is None:
        return None
    out, pos = [], 0
    for name, size in segments:
        a, b = max(lo, pos), min(hi, pos + size)
        if a < b:
            out.append((name if (a, b) == (pos, pos + size) else f"{name}@{a - pos}:{b - pos}", b - a))
        pos += size
    return out
