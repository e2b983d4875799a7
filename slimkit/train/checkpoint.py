"""Training checkpoints: written atomically, loaded with ``weights_only=True``, RNG states included.

A checkpoint is a plain dict (``FORMAT`` marks it) holding the model, optimizer and scheduler
state, epoch/step counters, the RNG states of torch/numpy/random, the resolved config, the metrics
history and ``extra_state`` for stateful plug-ins (objects with ``state_dict``/``load_state_dict``,
e.g. the gradient compressor's error buffers). Anything that goes wrong while reading it raises
:class:`slimkit.errors.CheckpointError`; a failed write leaves the previous file untouched.
"""
import os
import random

import numpy as np
import torch

from slimkit._io import atomic_write
from slimkit.errors import CheckpointError

FORMAT = "slimkit.train/1"
_REQUIRED = ("format", "model", "optimizer", "epoch", "step", "rng")


def save_checkpoint(path, state: dict, *, tagged: bool = True) -> str:
    """Write ``state`` to ``path`` atomically: temp file in the same directory, fsync, ``os.replace``.

    A crash at any point leaves either the old file or the new one, never a torn file. ``tagged=False``
    writes ``state`` as it is (no ``format`` key): a bare state_dict such as a run's ``model.pt``.
    """
    path = os.fspath(path)
    with atomic_write(path, "wb") as f:  # also fsyncs the folder, so the rename survives a power cut
        torch.save({"format": FORMAT, **state} if tagged else state, f)
    return path


def load_checkpoint(path, map_location="cpu") -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`; CheckpointError if missing or corrupt."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"no checkpoint at {path!r} (expected a file written by slimkit train)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises several types for truncated/garbled files
        raise CheckpointError(f"checkpoint {path!r} is corrupt or unreadable: {type(err).__name__}: {err}") from err
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path!r} is not a slimkit training checkpoint (expected format {FORMAT!r})")
    missing = [k for k in _REQUIRED if k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path!r} lacks {', '.join(missing)}")
    return state


def get_rng_state() -> dict:
    """RNG states of python, numpy and torch (CPU and, if already initialised, CUDA) as tensors/ints."""
    np_state = np.random.get_state(legacy=False)
    state = {
        "python": _encode_python_rng(random.getstate()),
        "numpy_key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
        "numpy_pos": int(np_state["state"]["pos"]),
        "numpy_gauss": [int(np_state["has_gauss"]), float(np_state["gauss"])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(_decode_python_rng(state["python"]))
    np.random.set_state({
        "bit_generator": "MT19937",
        "state": {"key": state["numpy_key"].numpy().astype(np.uint32), "pos": int(state["numpy_pos"])},
        "has_gauss": int(state["numpy_gauss"][0]),
        "gauss": float(state["numpy_gauss"][1]),
    })
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


# random.getstate() is (version, tuple_of_625_ints, gauss_next); weights_only loading accepts
# lists and ints, so keep it in that form.
def _encode_python_rng(s):
    return [s[0], list(s[1]), s[2]]


def _decode_python_rng(s):
    return (s[0], tuple(s[1]), s[2])
