"""SGD-G2 (Ayadi & Turinici, ICPR 2020; methods.md, "SGD-G2"): SGD whose step size adapts from a second
gradient evaluation on the same mini-batch after a trial Euler step (a stochastic Runge-Kutta estimate).

    g  = gradient at theta (already in p.grad when step() is called)
    g' = gradient at theta - h g              (the closure re-evaluates the same mini-batch)
    h_opt = 2 h <g - g', g> / ||g - g'||^2    if <g - g', g> > 0, else h
    h    <- beta h + (1 - beta) h_opt         if h_opt >= h, else (1 - beta) h_opt
    theta <- theta - h g

The update rule is from a secondary write-up of the paper ([secondary] in methods.md); the constants were not
checked against the PDF. Inner products run over all parameters of a param group; h lives in group["lr"].
``shrink="fast"`` (default) is that rule; on noisy mini-batch gradients it ratchets h down (a 10x cut whenever
h_opt < h, slow recovery), so ``shrink="average"`` offers the symmetric ``h <- beta h + (1 - beta) h_opt``.
"""
import torch

from slimkit.train.optim import register_optimizer


class SGDG2(torch.optim.Optimizer):
    needs_closure = True  # the trainer passes a closure that re-evaluates the same mini-batch

    def __init__(self, params, lr=0.1, beta=0.9, min_lr=1e-6, max_lr=10.0, shrink="fast"):
        if lr <= 0:
            raise ValueError(f"lr (initial step h0) must be > 0, got {lr}")
        if not 0 <= beta < 1:
            raise ValueError(f"beta must be in [0, 1), got {beta}")
        if shrink not in ("fast", "average"):
            raise ValueError(f"shrink must be 'fast' or 'average', got {shrink!r}")
        super().__init__(params, dict(lr=lr, beta=beta, min_lr=min_lr, max_lr=max_lr, shrink=shrink))

    @torch.no_grad()
    def step(self, closure):
        """``closure`` must zero the grads, recompute the loss on the same mini-batch, call backward and return the
        loss. Gradients at the current point must already be in ``p.grad`` (call backward first)."""
        if closure is None:
            raise ValueError("SGD-G2 needs a closure that re-evaluates the same mini-batch")
        groups = []
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            groups.append((group, params, [p.grad.clone() for p in params]))
        if not any(params for _, params, _ in groups):
            raise RuntimeError("SGD-G2.step: no gradients; call loss.backward() before step(closure)")
        for group, params, grads in groups:
            for p, g in zip(params, grads):
                p.sub_(g, alpha=group["lr"])  # trial Euler step
        with torch.enable_grad():
            loss = closure()
        for group, params, grads in groups:
            h = group["lr"]
            num = den = 0.0
            for p, g in zip(params, grads):
                g2 = p.grad if p.grad is not None else torch.zeros_like(g)
                diff = g - g2
                num += float((diff * g).sum())
                den += float((diff * diff).sum())
            h_opt = 2 * h * num / den if num > 0 and den > 0 else h
            beta = group["beta"]
            if h_opt >= h or group["shrink"] == "average":
                h_new = beta * h + (1 - beta) * h_opt
            else:
                h_new = (1 - beta) * h_opt
            h_new = min(max(h_new, group["min_lr"]), group["max_lr"])
            for p, g in zip(params, grads):
                p.add_(g, alpha=h)  # undo the trial step
                p.sub_(g, alpha=h_new)
                p.grad = g  # leave the gradient of the current point, as plain SGD would
            group["lr"] = h_new
        return loss


@register_optimizer("sgd-g2")
def sgd_g2(params, lr=0.1, beta=0.9, **kwargs):
    """SGD with the SGD-G2 adaptive step (two gradient evaluations per step)."""
    return SGDG2(params, lr=lr, beta=beta, **kwargs)
