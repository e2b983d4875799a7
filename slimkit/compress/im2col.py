"""A conv/linear layer's input and output as matrices, one row per output position (im2col): the
design matrix and targets of the least-squares fits of the recovery passes (distill, pq)."""
import torch
import torch.nn.functional as F


def input_rows(layer, x):
    """``(rows, in*kh*kw)`` for a ``Conv2d`` (the unfolded patches, batch-major then position), else
    ``(rows, in_features)``; dtype as ``x``."""
    if isinstance(layer, torch.nn.Conv2d):
        cols = F.unfold(x, layer.kernel_size, dilation=layer.dilation, padding=layer.padding, stride=layer.stride)
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])
    return x.reshape(-1, x.shape[-1])


def output_rows(y, layer=None):
    """Layer outputs matched row for row with ``input_rows``: ``(rows, out)``; dtype as ``y``. A ``Conv2d``'s
    output is channel-first; without ``layer`` any 4-D ``y`` is taken for a conv output."""
    if isinstance(layer, torch.nn.Conv2d) or (layer is None and y.dim() == 4):
        y = y.permute(0, 2, 3, 1)
    return y.reshape(-1, y.shape[-1])
