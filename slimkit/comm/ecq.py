"""ECQ-SGD: error-compensated quantization around any compressor (Wu et al., ICML 2018).

Per rank, with g the local gradient and Q the inner compressor:
    q(t) = Q(g(t) + alpha * h(t))
    h(t+1) = beta * h(t) + (g(t) - q(t))
alpha = compensation coefficient, beta = time decay of the accumulated error. With alpha = beta = 1 this
is plain error feedback: sum of sent q + h equals the sum of gradients (nothing is lost). The error
defaults alpha=0.2, beta=0.9 keep lambda = alpha^2*gamma + (beta-alpha)^2 < 1 for a high-variance
2-bit quantizer (slimkit's [proposal]; the paper's values are not known). The error
buffers are kept per parameter name, so they survive DDP's bucket rebuild and go into checkpoints.
"""
import torch

from slimkit.comm._registry import create_compressor, register_compressor
from slimkit.comm.base import Compressor
from slimkit.comm.qsgd import QSGD


_FMAX = torch.finfo(torch.float32).max


def _saturate(t: torch.Tensor) -> torch.Tensor:
    """Finite inputs near float32 max can overflow in g + alpha*h or g - q: clamp to +-max instead
    (no NaN can arise: both operands are finite). One reduction decides; the clamp is rare."""
    if not bool(torch.isfinite(t.sum())):
        t.clamp_(-_FMAX, _FMAX)
    return t


@register_compressor("ecq")
class ECQ(Compressor):
    def __init__(self, bits: int = 2, alpha: float = 0.2, beta: float = 0.9, inner: str = "qsgd",
                 seed: int = 0, nonfinite: str = "raise", **inner_opts):
        super().__init__(seed, nonfinite)
        if not all(isinstance(v, (int, float)) and 0 <= v <= 1 for v in (alpha, beta)):  # NaN fails too
            raise ValueError(f"alpha and beta must lie in [0, 1], got alpha={alpha!r}, beta={beta!r}")
        if inner == "ecq":
            raise ValueError("ecq cannot wrap itself")
        if inner in ("qsgd", "lpc"):
            inner_opts.setdefault("bits", bits)
        if inner == "qsgd":
            # max-norm buckets: far lower variance than L2 at 2 bits, and sparse enough for the
            # Rice-coded sparse format to beat 1 bit per value (slimkit default, [proposal])
            inner_opts.setdefault("norm", "max")
        self.inner = create_compressor(inner, seed=seed, nonfinite=nonfinite, **inner_opts)
        self.bits, self.alpha, self.beta, self.inner_name = bits, alpha, beta, inner
        self.fixed_size = self.inner.fixed_size
        self.errors: dict[str, torch.Tensor] = {}
        self._bufs: dict = {}  # layout -> (the views stored in errors, their flat buffer)

    def config(self):
        """The inner compressor's options as it resolved them (``bits`` and qsgd's ``norm`` default from ecq)."""
        own = {k: v for k, v in super().config().items() if k in ("bits", "alpha", "beta", "inner")}
        return {**own, **{k: v for k, v in self.inner.config().items() if k != "bits"}}

    def bind(self, rank):
        self.inner.bind(rank)

    def reset_rank_state(self, rank):
        self.inner.bind(rank)
        self.errors, self._bufs = {}, {}  # another rank's residuals do not belong to this one

    def _gather_error(self, n, segments):
        """(segments, h): this bucket's error buffer, one private float32 [n] tensor that the call may
        update in place (the last call's buffer when the layout is the same, else a fresh one)."""
        segments = segments or [("_flat", n)]
        if sum(s for _, s in segments) != n:
            raise ValueError(f"segments cover {sum(s for _, s in segments)} values, the tensor has {n}")
        key, buf = self._bufs.get(tuple(segments), (None, None))
        if buf is not None and all(self.errors.get(name) is part for (name, _), part in zip(segments, key)):
            return segments, buf
        parts = [self.errors.get(name) for name, _ in segments]
        return segments, torch.cat([torch.zeros(size) if part is None else part.reshape(-1)
                                    for part, (_, size) in zip(parts, segments)])

    def compress(self, flat, segments=None, **kw):
        g = self.check_finite(flat.reshape(-1).float())
        segments, h = self._gather_error(g.numel(), segments)
        if isinstance(self.inner, QSGD):  # the error update runs inside the quantizer's chunk loop
            payload = self.inner._compress(g, kw.get("bits") or self.inner.bits, None, (h, self.alpha, self.beta))
            self._last = None  # decompress_own decodes the payload
            self._store(segments, h)
            return payload
        payload, q = self.inner.compress_decoded(_saturate(g + self.alpha * h), **kw)
        self._last = (payload, q)  # the hook reuses it instead of decoding its own payload again
        self._store(segments, _saturate(self.beta * h + (g - q)))
        return payload

    def compress_chunks(self, flat, segments, bounds, **kw):
        """Error feedback over the whole bucket, then one inner payload per chunk (two-phase hook)."""
        g = self.check_finite(flat.reshape(-1).float())
        segments, h = self._gather_error(g.numel(), segments)
        if isinstance(self.inner, QSGD):
            bits = kw.get("bits") or self.inner.bits
            q = torch.empty_like(g)
            payloads = [self.inner._compress(g[lo:hi], bits, q[lo:hi], (h[lo:hi], self.alpha, self.beta))
                        for lo, hi in zip(bounds[:-1], bounds[1:])]
            self._store(segments, h)
            return payloads, q
        payloads, q = self.inner.compress_chunks(_saturate(g + self.alpha * h), None, bounds, **kw)
        self._store(segments, _saturate(self.beta * h + (g - q)))
        return payloads, q

    def _store(self, segments, h_new):
        # views into this bucket's buffer (the next call with this layout updates it in place);
        # state_dict() clones
        parts = h_new.split([s for _, s in segments])
        for (name, _), part in zip(segments, parts):
            self.errors[name] = part
        names = {name for name, _ in segments}
        for key in [k for k in self._bufs if any(name in names for name, _ in k)]:
            del self._bufs[key]  # a layout that shared a parameter is gone (DDP rebuilt its buckets)
        self._bufs[tuple(segments)] = (parts, h_new)

    def decompress(self, payload, numel, out=None):
        if out is not None and isinstance(self.inner, QSGD):
            return self.inner.decompress(payload, numel, out=out)
        return self.inner.decompress(payload, numel)

    def state_dict(self):
        return {"inner": self.inner.state_dict(), "errors": {k: v.clone() for k, v in self.errors.items()}}

    def load_state_dict(self, state):
        self.inner.load_state_dict(state["inner"])
        self.errors, self._bufs = {k: v.clone() for k, v in state["errors"].items()}, {}
