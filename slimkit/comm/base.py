"""The compressor interface: ``compress(flat) -> uint8 payload``, ``decompress(payload, numel)``.

The payload is exactly what goes on the wire, so ``payload.numel()`` is the real byte count.
``segments`` names the parameters a flat bucket is made of (name, numel); stateful compressors
(error feedback) key their buffers by parameter name so they survive DDP's bucket rebuild.
"""
import math
from typing import ClassVar, Optional, Sequence

import torch

Segments = Optional[Sequence[tuple[str, int]]]


class Compressor:
    name: ClassVar[str] = ""
    fixed_size: ClassVar[bool] = True  # same payload size for the same numel (no size exchange needed)

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

    def options(self) -> dict:
        return {}

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
