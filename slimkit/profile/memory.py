"""Peak activation memory of a forward pass, tracked op by op with a TorchDispatchMode.

Definition (``peak_activation_bytes``): during one no-grad forward, every tensor an aten op returns
is tracked by its storage; a storage is live from the op that creates it until the last tensor that
refers to it is freed. The peak is the largest sum of live storage bytes. Inputs, parameters and
buffers are excluded (views of them too), so the number is what the activations add on top of the
weights. Not included: scratch memory kernels allocate internally (e.g. im2col buffers) and the
allocator's rounding; on CUDA, ``torch.cuda.max_memory_allocated`` gives the allocator's view.
"""
import weakref
from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


def _storage_key(t):
    st = t.untyped_storage()
    return st.data_ptr(), st.nbytes()


class ActivationTracker(TorchDispatchMode):
    """Records every aten op (``op_calls``: packet name -> calls) and the peak of live activation bytes."""

    def __init__(self, exclude=()):
        super().__init__()
        self.exclude = {t.untyped_storage().data_ptr() for t in exclude}
        self.live = {}  # storage data_ptr -> [nbytes, number of live tensors using it]
        self.current_bytes = 0
        self.peak_bytes = 0
        self.op_calls = Counter()

    def _release(self, key):
        entry = self.live.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self.current_bytes -= entry[0]
            del self.live[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.op_calls[str(func.overloadpacket)] += 1
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or t.device.type == "meta":
                continue
            key, nbytes = _storage_key(t)
            if key in self.exclude or key == 0:
                continue
            entry = self.live.get(key)
            if entry is None:
                entry = self.live[key] = [nbytes, 0]
                self.current_bytes += nbytes
                self.peak_bytes = max(self.peak_bytes, self.current_bytes)
            entry[1] += 1
            # The storage dies with the last tensor (view) that refers to it.
            weakref.finalize(t, self._release, key)
        return out

    def __exit__(self, *exc):
        out = super().__exit__(*exc)
        # Outputs still alive after the forward do not count any more: stop their finalizers mattering.
        self.live = {}
        return out
