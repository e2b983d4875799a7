"""Disturbance-immune weight sharing (DI-NAS, Niu et al., arXiv 2003.13089) as an optimizer wrapper.

In a weight-sharing supernet, training a later architecture changes weights an earlier one uses and
so its accuracy ("performance disturbance"). DI constrains later updates to the orthogonal
complement of what earlier architectures use. slimkit's form (../shared/research/methods.md, section 7,
a [proposal] there; the paper's projection granularity, alpha and reset schedule are not known):

* every conv / linear weight W (out x d, d = in * k * k) has a projector P (d x d), the identity at first;
* forward hooks record up to ``samples`` of each layer's input vectors (unfolded k x k x C_in patches
  for convs; a constant 1 is appended for a bias): by default (``record="post"``) from a forward of
  a few images run inside ``recording_inputs()`` AFTER the architecture's step, so that what is
  protected is the architecture as trained (``"pre"`` records the training forward's inputs: free,
  but one step older);
* ``end_architecture()`` folds them into P with the recursive-least-squares (OWM) update for a block
  of inputs X (rows normalised to total energy 1):  P <- P - P X^T (alpha I + X P X^T)^-1 X P;
  with alpha -> 0, P is the orthogonal projector onto the complement of everything recorded;
* ``step()`` runs the wrapped optimizer, then replaces each protected layer's update dW by dW @ P.
  Projecting the UPDATE rather than the gradient keeps momentum, Adam moments and weight decay
  from leaking into the protected subspace (for plain SGD the two are the same: W <- W - lr grad P).

So dW x = 0 for every recorded input x of an earlier architecture: its layer outputs, and its loss
to first order, are unchanged on those inputs. ``decay`` forgets old architectures
(P <- (1 - decay) P + decay I per architecture), otherwise the layers every architecture shares
would freeze once their input space is covered. ``enabled=False`` is plain weight sharing through the
same code path. ``state_dict()`` holds the projectors, so checkpoints resume exactly.
"""
import contextlib
import fnmatch
from dataclasses import asdict, dataclass

import torch
from torch import nn

from slimkit.nas.layers import SharedConv, linear_inputs, unfold_patches


@dataclass
class DIConfig:
    enabled: bool = True
    alpha: float = 0.01  # relative: a direction holding a fraction f of the recorded energy keeps 1/(1+f/alpha)
    samples: int = 64  # input vectors recorded per layer per architecture
    decay: float = 0.05  # per architecture: P <- (1 - decay) P + decay I
    # "ops": protect the layers of the searched operations only; the skeleton every architecture shares
    # (``supernet.skeleton`` globs: stem, reduction blocks, classifier) trains freely, else it would freeze
    # as soon as its input space is covered. "all": every conv / linear layer.
    scope: str = "ops"
    exclude: str = ""  # further comma-separated globs of module names never projected
    seed: int = 0
    dtype: str = "float32"  # of the projector algebra; float64 for tight checks
    # "pre": record the inputs of the training forward itself (free, but they predate the step);
    # "post": record only inside ``recording_inputs()``, e.g. a forward of a few images after the step
    record: str = "post"
    version: int = 1

    def __post_init__(self):
        if self.alpha <= 0:
            raise ValueError(f"alpha must be > 0, got {self.alpha!r}")
        if not 0.0 <= self.decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {self.decay!r}")
        if int(self.samples) < 1:
            raise ValueError(f"samples must be >= 1, got {self.samples!r}")
        if self.scope not in ("ops", "all"):
            raise ValueError(f"scope must be 'ops' or 'all', got {self.scope!r}")
        if self.record not in ("pre", "post"):
            raise ValueError(f"record must be 'pre' or 'post', got {self.record!r}")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {self.dtype!r}")


def _weights(module):
    """(weight, bias or None) of a protected layer."""
    return module.weight, getattr(module, "bias", None) if not isinstance(module, SharedConv) else None


def input_rows(module, args, n, generator):
    """Recorded input vectors of one forward call, in ``weight.flatten(1)`` column order."""
    if isinstance(module, SharedConv):
        return module.input_vectors(args, n, generator)
    x = args[0]
    if isinstance(module, nn.Conv2d):
        rows = unfold_patches(x, module.kernel_size, module.stride, module.padding, module.dilation, module.groups,
                              n=n, generator=generator)
        return rows if module.bias is None else torch.cat([rows, rows.new_ones(rows.shape[0], 1)], dim=1)
    return linear_inputs(x, n, generator, bias=module.bias is not None)


class DisturbanceImmune:
    """``DisturbanceImmune(optimizer, supernet)``: call ``step()`` / ``zero_grad()`` instead of the
    optimizer's, and ``end_architecture()`` when an architecture's training is over (after every
    step in single-path training)."""

    def __init__(self, optimizer, supernet, config: DIConfig = None, **overrides):
        self.optimizer, self.supernet = optimizer, supernet
        self.config = config or DIConfig(**overrides)
        if config is not None and overrides:
            self.config = DIConfig(**{**asdict(config), **overrides})
        cfg = self.config
        excl = [p.strip() for p in cfg.exclude.split(",") if p.strip()]
        if cfg.scope == "ops":
            excl += list(getattr(supernet, "skeleton", ()))
        self.layers = {name: m for name, m in supernet.named_modules()
                       if isinstance(m, (nn.Conv2d, nn.Linear, SharedConv))
                       and not any(fnmatch.fnmatch(name, p) for p in excl)}
        self.projectors = {}  # name -> Q = I - P (the protected part), float32 [d, d]
        self.stamp = {}  # name -> architecture count when Q was last decayed
        self.architectures = 0
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self._records = {}
        self._force = False
        self._hooks = [m.register_forward_hook(self._make_hook(name)) for name, m in self.layers.items()]

    # ------------------------------------------------------------------ switches and optimizer facade
    @property
    def enabled(self):
        return self.config.enabled

    @enabled.setter
    def enabled(self, value):
        self.config.enabled = bool(value)

    @property
    def param_groups(self):
        return self.optimizer.param_groups

    def zero_grad(self, set_to_none=True):
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def remove(self):
        for h in self._hooks:
            h.remove()
        self._hooks = []

    @contextlib.contextmanager
    def recording_inputs(self):
        """Record layer inputs of the forwards run inside (any grad mode); with ``record="post"`` this is
        the only place inputs are recorded: run the architecture on a few images after its step."""
        self._force = True
        try:
            yield
        finally:
            self._force = False

    def _make_hook(self, name):
        def hook(module, args, output):
            live = self._force or (self.config.record == "pre" and torch.is_grad_enabled())
            if self.enabled and module.training and live:
                rows = input_rows(module, args, self.config.samples, self.generator)
                self._records.setdefault(name, []).append(rows)
        return hook

    # ------------------------------------------------------------------ projector algebra
    def projector(self, name):
        """P of a layer (None when nothing is protected there yet)."""
        q = self._q(name)
        return None if q is None else torch.eye(q.shape[0], dtype=q.dtype) - q

    def _q(self, name):
        q = self.projectors.get(name)
        if q is None:
            return None
        age = self.architectures - self.stamp[name]
        if age and self.config.decay:
            q.mul_((1.0 - self.config.decay) ** age)  # lazy decay: I - P shrinks by (1 - decay) per architecture
        self.stamp[name] = self.architectures
        return q

    def _fold(self, items):
        """P <- P - P X^T (alpha I + X P X^T)^-1 X P, i.e. Q <- Q + P X^T K X P, for (name, X) items of one
        shape at once: in single-path training this runs for every layer after every step, and on small
        layers the per-op overhead, not the algebra, is the cost (zero-padding all to one size was no faster)."""
        dtype = getattr(torch, self.config.dtype)
        x = torch.stack([v for _, v in items]).to(dtype)  # [L, m, d]
        energy = x.pow(2).sum((1, 2))
        keep = [i for i, e in enumerate(energy.tolist()) if e > 0]
        if not keep:
            return
        if len(keep) < len(items):
            items, x, energy = [items[i] for i in keep], x[keep], energy[keep]
        x = x / energy.sqrt()[:, None, None]
        d = x.shape[2]
        q = torch.stack([self._q(n).to(dtype) if n in self.projectors else torch.zeros(d, d, dtype=dtype)
                         for n, _ in items])
        xp = x - x @ q  # X P, with P = I - Q symmetric
        k = xp @ x.transpose(1, 2)  # X P X^T + alpha I: symmetric positive definite, so Cholesky (half LU's work)
        k.diagonal(dim1=1, dim2=2).add_(self.config.alpha)
        chol, info = torch.linalg.cholesky_ex(k)
        sol = torch.cholesky_solve(xp, chol) if not info.any() else torch.linalg.solve(k, xp)
        q = q + xp.transpose(1, 2) @ sol
        q = 0.5 * (q + q.transpose(1, 2))
        for (name, _), qi in zip(items, q.unbind(0)):
            self.projectors[name] = qi.clone()  # own storage: a stacked one would live as long as any slice
            self.stamp[name] = self.architectures

    def end_architecture(self):
        """Fold the inputs recorded since the last call into the projectors of the layers used."""
        if self.enabled:
            by_shape = {}
            for name, rows in self._records.items():
                x = torch.cat(rows)
                if x.shape[0] > self.config.samples:
                    x = x[torch.randperm(x.shape[0], generator=self.generator)[:self.config.samples]]
                by_shape.setdefault(tuple(x.shape), []).append((name, x))
            for items in by_shape.values():
                self._fold(items)
        self._records = {}
        self.architectures += 1

    # ------------------------------------------------------------------ the update
    def step(self, closure=None):
        """The wrapped optimizer's step, with each protected layer's weight update multiplied by P
        (layers of one shape stacked, as in ``_fold``)."""
        if not self.enabled:
            return self.optimizer.step(closure)
        by_shape = {}
        for name, m in self.layers.items():
            w, b = _weights(m)
            if name in self.projectors and w.grad is not None:
                by_shape.setdefault((tuple(w.shape), b is not None), []).append((name, w, b))
        before = {key: (torch.stack([w.detach() for _, w, _ in items]),
                        torch.stack([b.detach() for _, _, b in items]) if key[1] else None)
                  for key, items in by_shape.items()}
        loss = self.optimizer.step(closure)
        with torch.no_grad():
            for key, items in by_shape.items():
                w0, b0 = before[key]
                delta = (torch.stack([w for _, w, _ in items]) - w0).flatten(2)  # [L, out, d]
                if b0 is not None:
                    delta = torch.cat([delta, (torch.stack([b for _, _, b in items]) - b0)[:, :, None]], dim=2)
                q = torch.stack([self._q(name) for name, _, _ in items]).to(delta.dtype)
                delta = delta - delta @ q  # dW @ P with P = I - Q
                nw = w0.flatten(2) + delta[:, :, :w0[0, 0].numel()]
                for i, (_, w, b) in enumerate(items):
                    w.copy_(nw[i].view_as(w))
                    if b is not None:
                        b.copy_(b0[i] + delta[i, :, -1])
        return loss

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self):
        return {"config": asdict(self.config), "projectors": dict(self.projectors), "stamp": dict(self.stamp),
                "architectures": self.architectures, "generator": self.generator.get_state(),
                "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state):
        self.config = DIConfig(**state["config"])
        self.projectors = {k: v.clone() for k, v in state["projectors"].items()}
        self.stamp = dict(state["stamp"])
        self.architectures = int(state["architectures"])
        self.generator.set_state(state["generator"])
        self.optimizer.load_state_dict(state["optimizer"])
        unknown = set(self.projectors) - set(self.layers)
        if unknown:
            raise ValueError(f"DI state has projectors for layers this supernet lacks: {sorted(unknown)[:5]}")
