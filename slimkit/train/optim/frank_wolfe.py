"""Frank-Wolfe RNN training (Yue et al., ICPR 2020; methods.md, "Frank-Wolfe RNN training").

Each outer step runs ``inner_steps`` (K) Frank-Wolfe iterations inside an L2 ball of radius r around the current
weights w_k, one mini-batch each:

    d_t = g_t / ||g_t||                        (per parameter tensor)
    D_t = (1 - 1/t) D_{t-1} - (r / t) d_t      (FW step 1/t towards the ball's vertex -r d_t; D_0 = 0)
    iterate="textbook":   w_t = w_k + D_t      (the FW iterate; stays in the ball)
    iterate="cumulative": w_t = w_{t-1} + D_t  (the authors' public fgsm.py: D_t is added to the current weights)

The two iterates agree for K <= 2 (the weights after step K are never used for a gradient). At t = K the weights
are restored to w_k and the averaged direction -D_K / r is applied as the gradient of a base optimizer (Adam by
default), then D restarts. With K = 1 this is Adam on per-tensor normalised gradients. ``radius`` defaults to the
learning rate, as in the authors' configs. Truncated BPTT: call ``step()`` after each chunk (one FW iteration).
Evaluate mid-loop models inside ``with optimizer.anchor_weights():`` (w_k, not the probe point w_t).
"""
import contextlib

import torch

from slimkit.train.optim import register_optimizer

ITERATES = ("textbook", "cumulative")


class FrankWolfe(torch.optim.Optimizer):
    def __init__(self, params, radius=None, inner_steps=1, base="adam", lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
                 momentum=0.9, weight_decay=0.0, iterate="textbook"):
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        radius = lr if radius is None else radius
        if radius <= 0:
            raise ValueError(f"radius must be > 0, got {radius}")
        if int(inner_steps) < 1:
            raise ValueError(f"inner_steps must be >= 1, got {inner_steps}")
        if base not in ("adam", "sgd"):
            raise ValueError(f"base must be 'adam' or 'sgd', got {base!r}")
        if iterate not in ITERATES:
            raise ValueError(f"iterate must be one of {ITERATES}, got {iterate!r}")
        defaults = dict(radius=radius, inner_steps=int(inner_steps), base=base, lr=lr, betas=tuple(betas), eps=eps,
                        momentum=momentum, weight_decay=weight_decay, iterate=iterate)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            r, K = group["radius"], group["inner_steps"]
            for p in group["params"]:
                if p.grad is None and not self.state[p]:
                    continue  # never had a gradient: leave it alone
                state = self.state[p]
                t = state.get("t", 0) + 1
                if t == 1:
                    state["anchor"] = p.detach().clone()
                    state["delta"] = torch.zeros_like(p)
                if p.grad is not None:
                    norm = p.grad.norm()
                    d = p.grad / norm if norm > 0 else torch.zeros_like(p)
                else:
                    d = torch.zeros_like(p)
                delta = state["delta"].mul_(1 - 1 / t).add_(d, alpha=-r / t)
                if t < K:
                    if group["iterate"] == "cumulative":
                        p.add_(delta)
                    else:
                        p.copy_(state["anchor"] + delta)
                    state["t"] = t
                    continue
                p.copy_(state["anchor"])
                self._base_update(p, -delta / r, group, state)
                state["t"] = 0
                del state["anchor"], state["delta"]
        return loss

    @contextlib.contextmanager
    def anchor_weights(self):
        """Temporarily put the anchor w_k back into parameters that are inside an inner loop (for evaluation)."""
        swapped = []
        with torch.no_grad():
            for group in self.param_groups:
                for p in group["params"]:
                    anchor = self.state[p].get("anchor") if p in self.state else None
                    if anchor is not None:
                        probe = p.detach().clone()
                        p.copy_(anchor)
                        swapped.append((p, probe))
        try:
            yield
        finally:
            with torch.no_grad():
                for p, probe in swapped:
                    p.copy_(probe)

    @staticmethod
    def _base_update(p, grad, group, state):
        if group["weight_decay"]:
            grad = grad.add(p, alpha=group["weight_decay"])
        if group["base"] == "sgd":
            buf = state.setdefault("momentum_buffer", torch.zeros_like(p))
            buf.mul_(group["momentum"]).add_(grad)
            p.add_(buf, alpha=-group["lr"])
            return
        beta1, beta2 = group["betas"]
        state["outer_step"] = state.get("outer_step", 0) + 1
        k = state["outer_step"]
        m = state.setdefault("exp_avg", torch.zeros_like(p))
        v = state.setdefault("exp_avg_sq", torch.zeros_like(p))
        m.mul_(beta1).add_(grad, alpha=1 - beta1)
        v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        denom = (v / (1 - beta2 ** k)).sqrt_().add_(group["eps"])
        p.addcdiv_(m, denom, value=-group["lr"] / (1 - beta1 ** k))


@register_optimizer("fw-adam")
def fw_adam(params, lr=1e-3, radius=None, inner_steps=1, **kwargs):
    """Frank-Wolfe inner loop + Adam outer step (radius defaults to lr)."""
    return FrankWolfe(params, radius=radius, inner_steps=inner_steps, base="adam", lr=lr, **kwargs)


@register_optimizer("fw-sgd")
def fw_sgd(params, lr=0.1, radius=None, inner_steps=1, **kwargs):
    """Frank-Wolfe inner loop + momentum-SGD outer step (radius defaults to lr)."""
    return FrankWolfe(params, radius=radius, inner_steps=inner_steps, base="sgd", lr=lr, **kwargs)
