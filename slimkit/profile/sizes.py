"""Parameter counts and weight bytes: the one definition the profiler, the compression report, the budget
pass and the training-memory planner use, so a ``target_bytes`` is judged on the number the report prints.

A module may say how it is stored: ``storage_bytes()`` (pq's codebooks + bit-packed indices, an ONNX
Runtime module's initializers) and ``param_count()`` then stand for its whole subtree. Every other tensor
is counted once (tied weights once) at its dtype size.
"""
import torch


def _parts(model, method):
    """(modules that report ``method`` for their subtree, the tensors of everything else)."""
    if hasattr(model, method):
        return [model], []
    own, covered, tensors = [], [], []
    for name, mod in model.named_modules():
        if any(name == p or name.startswith(p + ".") for p in covered):
            continue
        if hasattr(mod, method):
            own.append(mod)
            covered.append(name)
            continue
        tensors += list(mod.parameters(recurse=False)) + list(mod.buffers(recurse=False))
    unique = {id(t): t for t in tensors}  # a tied weight is one tensor in several modules
    return own, list(unique.values())


def weight_bytes(model: torch.nn.Module, packed: bool = True) -> int:
    """Bytes of the model's parameters and buffers. ``packed=True``: as stored (modules with
    ``storage_bytes()`` report their packed size); ``packed=False``: as the tensors lie in memory now
    (what training holds)."""
    if not packed:
        tensors = {id(t): t for t in list(model.parameters()) + list(model.buffers())}
        return int(sum(t.numel() * t.element_size() for t in tensors.values()))
    own, tensors = _parts(model, "storage_bytes")
    return int(sum(m.storage_bytes() for m in own) + sum(t.numel() * t.element_size() for t in tensors))


def param_count(model: torch.nn.Module) -> int:
    """Number of parameters (tied ones once); a module with ``param_count()`` reports its own subtree."""
    own, tensors = _parts(model, "param_count")
    params = {id(p) for p in model.parameters()}
    return int(sum(m.param_count() for m in own) + sum(t.numel() for t in tensors if id(t) in params))
