"""MAC counting on top of torch.utils.flop_counter.FlopCounterMode.

Convention used everywhere in slimkit: one multiply-accumulate = 1 MAC, FLOPs = 2 x MACs.
FlopCounterMode reports FLOPs (2 per MAC) for matmul/conv/attention ops; we halve them.
"""
import torch
from torch.utils.flop_counter import FlopCounterMode


@torch.no_grad()
def count_macs(model, example_inputs):
    """Total MACs of one forward pass of ``model`` on ``example_inputs`` (a tensor or a tuple)."""
    inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    counter = FlopCounterMode(display=False)
    with counter:
        model(*inputs)
    return counter.get_total_flops() // 2
