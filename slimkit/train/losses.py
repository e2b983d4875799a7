"""Training losses: ``per_sample_loss(kind, logits, targets)`` (ce, mse, huber; class ids become one-hot
targets for the regression losses) and the top-1 count the trainer and ``evaluate`` report."""
import torch
import torch.nn.functional as F

LOSSES = ("ce", "mse", "huber")


def per_sample_loss(kind, logits, targets, huber_delta=1.0):
    """Loss per sample (reduction='none', then mean over non-batch dims)."""
    if kind == "ce":
        if logits.dim() == 3 and targets.dim() == 2:  # per-step outputs [N, T, C], targets [N, T]
            return F.cross_entropy(logits.transpose(1, 2), targets, reduction="none").mean(1)
        return F.cross_entropy(logits, targets, reduction="none")
    if not torch.is_floating_point(targets) and logits.dim() == 2:
        targets = F.one_hot(targets.long(), logits.shape[1]).to(logits.dtype)  # class ids -> regression target
    fn = torch.nn.MSELoss(reduction="none") if kind == "mse" else torch.nn.HuberLoss(reduction="none", delta=huber_delta)
    out = fn(logits, targets.to(logits.dtype))
    return out.flatten(1).mean(1) if out.dim() > 1 else out


def correct_count(logits, targets):
    """Top-1 hits of class logits [N, C] on class ids [N]; None when the targets are not class ids."""
    if torch.is_floating_point(targets) or logits.dim() != 2 or targets.dim() != 1:
        return None
    return int((logits.argmax(1) == targets).sum())
