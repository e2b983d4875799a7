"""Load weights into a model from a file, with clear errors and without ever writing to the file."""
import os
import pickle
import zipfile

import torch

from slimkit.errors import CheckpointError


def read_state_dict(path):
    """The state_dict stored at ``path``: a raw state_dict, or one under 'state_dict' / 'model'.

    A ``module.`` prefix (from DataParallel/DDP) is stripped. Only tensors are unpickled (weights_only).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError, ValueError) as err:
        raise CheckpointError(f"cannot read checkpoint {path}: it is corrupt or not a torch file ({err})") from None
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} holds no state_dict (expected a dict of tensors, or one under 'state_dict')")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_checkpoint(model, path):
    """Load ``path`` into ``model`` strictly; mismatched keys or shapes raise CheckpointError naming them."""
    state = read_state_dict(path)
    own = model.state_dict()
    # Checkpoints from torch < 0.4.1 lack BN's num_batches_tracked counter; it does not affect outputs.
    missing = sorted(k for k in set(own) - set(state) if not k.endswith("num_batches_tracked"))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: checkpoint {list(state[k].shape)} vs model {list(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:8]}{' ...' if len(missing) > 8 else ''}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
        if shapes:
            parts.append("shape mismatch " + "; ".join(shapes[:8]))
        raise CheckpointError(f"checkpoint {path} does not fit {type(model).__name__}: " + ", ".join(parts))
    model.load_state_dict(state, strict=False)
    return model
