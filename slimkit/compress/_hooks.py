"""Run a model once with temporary forward hooks (recovery passes record what layers see)."""
import torch


def run_hooked(model, x, handles):
    """``model(x)`` without gradients; the hook ``handles`` are removed afterwards, even on error."""
    try:
        with torch.no_grad():
            return model(x)
    finally:
        for h in handles:
            h.remove()
