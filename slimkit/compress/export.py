"""Save and load compressed models in formats plain PyTorch / ONNX users can open safely.

- Eager models -> ``.pt2``: a ``torch.export`` ExportedProgram (graph as JSON + weights), written with
  ``torch.export.save``. Load it with plain PyTorch, no slimkit and no pickled Python code:
  ``torch.export.load("model.pt2").module()(x)``. The batch dimension is dynamic.
- ONNX Runtime modules (the int8 pass) -> ``.onnx``: open with ``onnxruntime.InferenceSession(path)``.

``load(path)`` returns an nn.Module-callable in both cases. It never runs code from the file: a ``.pt2``
is checked against an allowlist before loading (see :mod:`slimkit.compress._safe_load`), an ``.onnx``
must parse and carry its weights inside; anything else raises CheckpointError naming the file.
``save`` writes atomically (temp file, fsync, rename): an interrupted save leaves the old file intact.
"""
import os

import torch

from slimkit._io import atomic_path, atomic_write
from slimkit.errors import CheckpointError, SlimkitError
from slimkit.model_io import Example, FlatModule


def default_suffix(model):
    from slimkit.compress.int8 import OrtModule

    return ".onnx" if isinstance(model, OrtModule) else ".pt2"


def save(model, path, example_inputs, output=None):
    """Write ``model`` to ``path`` (.pt2 for eager models, .onnx for ORT modules); returns the path."""
    from slimkit.compress.int8 import OrtModule

    path = str(path)
    want = default_suffix(model)
    if not path.endswith(want):
        raise SlimkitError(f"save: a {type(model).__name__} is saved as '{want}', got path {path!r}")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if isinstance(model, OrtModule):
        with atomic_write(path, "wb") as f:
            f.write(model.onnx_bytes)
        return path
    example = Example.of(example_inputs)
    if example.batch_size == 1:  # export specialises size-1 dims; a batch of 2 keeps the batch dynamic
        example = example.resized(2)
    batch = torch.export.Dim("batch", min=1, max=65536)
    was_training = model.training
    model.eval()
    # keyword inputs (Hugging Face): the program takes the example's tensors positionally and returns the
    # output the checks compared (``output``), since a ModelOutput is not an exportable return value
    target = model if not example.kwargs else FlatModule(model, example, output)
    inputs = tuple(example.args) if not example.kwargs else tuple(example.tensors())
    try:
        dyn = tuple({0: batch} if torch.is_tensor(t) else None for t in inputs)
        ep = torch.export.export(target, inputs, dynamic_shapes=dyn if target is model else (dyn,))  # *tensors
    except Exception as err:  # noqa: BLE001 - re-raised with what to do about it
        raise SlimkitError(f"save: torch.export could not trace {type(model).__name__}: {err}") from err
    finally:
        model.train(was_training)
    with atomic_path(path) as tmp:
        torch.export.save(ep, tmp)
    return path


def load(path):
    """Load a model written by ``save``: a ``.pt2`` ExportedProgram's module or an ORT ``.onnx`` model."""
    path = str(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no saved model at {path!r}")
    if path.endswith(".onnx"):
        from slimkit.compress._safe_load import check_onnx
        from slimkit.compress.int8 import OrtModule

        with open(path, "rb") as f:
            data = f.read()
        check_onnx(data, path)
        try:
            return OrtModule(data, kind="onnx")
        except SlimkitError:
            raise
        except Exception as err:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise CheckpointError(f"{path} is not an ONNX model ONNX Runtime can run: {type(err).__name__}: "
                                  f"{str(err).splitlines()[0] if str(err) else ''}") from None
    if path.endswith(".pt2"):
        from slimkit.compress._safe_load import load_pt2

        return load_pt2(path)
    raise CheckpointError(f"load: expected a .pt2 or .onnx file, got {path!r}")
