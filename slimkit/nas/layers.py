"""Supernet layers whose weights are used through slices, and the input sampling that the
disturbance-immune update records.

``SharedConv`` keeps one weight at the largest size; a sub-architecture uses the first ``out``
channels, a block-diagonal set of (input slice -> output slice) groups, and the centre ``k x k`` of
the kernel. Uneven (1/4 : 3/4), mirrored and even (g=2) group convolutions are therefore sub-blocks
of one dense weight, and a 3x3 kernel is the centre of the 5x5 one. ``SharedBN`` is a BatchNorm
without affine parameters whose statistics are sliced the same way.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn


def sample_indices(total, n, generator=None):
    """A uniform random subset of ``n`` of ``range(total)`` (all of it when total <= n).

    randperm(total) costs O(total) per call (0.4 ms at 65,536 on one core, per layer and step): for a small
    subset of a large range, the first n distinct values of iid draws are the same uniform subset."""
    if total <= n:
        return torch.arange(total)
    if total > 8 * n:
        draws = torch.randint(0, total, (2 * n,), generator=generator)
        uniq, inv = torch.unique(draws, return_inverse=True)
        if len(uniq) >= n:  # almost surely: 2n draws from > 8n values
            first = torch.full((len(uniq),), 2 * n).scatter_reduce_(0, inv, torch.arange(2 * n), "amin")
            return uniq[first.argsort()[:n]]
    return torch.randperm(total, generator=generator)[:n]


def _sample_columns(cols, n, generator):
    """``n`` random rows of ``cols`` [M, d] (all of them when M <= n)."""
    return cols if cols.shape[0] <= n else cols[sample_indices(cols.shape[0], n, generator)]


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def unfold_patches(x, kernel, stride=1, padding=0, dilation=1, groups=1, n=64, generator=None):
    """``n`` random input patches of a conv, as rows [n, (C/groups) * kh * kw] in weight.flatten(1)
    order (the groups of a grouped conv are pooled: each row is one group's patch).

    Only the sampled patches are gathered (F.unfold of the whole input would cost as much memory
    traffic as the conv itself); positions in the zero padding read as 0."""
    x = x.detach()
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = _pair(kernel), _pair(stride), _pair(padding), _pair(dilation)
    nb, c, h, w = x.shape
    ho, wo = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    cg = c // groups
    flat = sample_indices(nb * groups * ho * wo, n, generator)
    img, rest = flat // (groups * ho * wo), flat % (groups * ho * wo)
    grp, pos = rest // (ho * wo), rest % (ho * wo)
    off, valid = _patch_table(c, h, w, cg, kh, kw, sh, sw, ph, pw, dh, dw)
    # one gather by flat index from a per-geometry table (this runs per layer per step, so ops are the cost)
    patch = x.reshape(-1)[off[pos] + ((img * c + grp * cg) * (h * w))[:, None]]
    return patch if valid is None else patch * valid[pos]


_TABLES = {}


def _patch_table(c, h, w, cg, kh, kw, sh, sw, ph, pw, dh, dw):
    """Per output position, the flat offsets of its patch in one image's group [ho*wo, cg*kh*kw] (padding
    positions clamped) and the mask that zeroes them (None without padding)."""
    key = (c, h, w, cg, kh, kw, sh, sw, ph, pw, dh, dw)
    if key not in _TABLES:
        if len(_TABLES) > 256:
            _TABLES.clear()
        ho, wo = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
        pos = torch.arange(ho * wo)
        rows = (pos // wo)[:, None] * sh - ph + torch.arange(kh) * dh  # [P, kh]
        cols = (pos % wo)[:, None] * sw - pw + torch.arange(kw) * dw  # [P, kw]
        off = ((torch.arange(cg) * (h * w))[:, None, None] + (rows.clamp(0, h - 1) * w)[:, None, :, None]
               + cols.clamp(0, w - 1)[:, None, None, :])  # [P, cg, kh, kw]
        valid = ((rows >= 0) & (rows < h))[:, None, :, None] & ((cols >= 0) & (cols < w))[:, None, None, :]
        valid = valid.expand_as(off).reshape(len(pos), -1)
        _TABLES[key] = (off.reshape(len(pos), -1), None if bool(valid.all()) else valid)
    return _TABLES[key]


def linear_inputs(x, n=64, generator=None, bias=False):
    rows = x.detach().reshape(-1, x.shape[-1])
    rows = _sample_columns(rows, n, generator)
    if bias:  # the bias is a weight on a constant input 1
        rows = torch.cat([rows, rows.new_ones(rows.shape[0], 1)], dim=1)
    return rows


def dense_groups(cin, cout, pattern):
    """(in_lo, in_hi, out_lo, out_hi) blocks of a 1x1 conv for a group pattern."""
    if pattern == "dense":
        return [(0, cin, 0, cout)]
    if pattern == "uneven":
        a, b = cin // 4, cout // 4
    elif pattern == "mirror":
        a, b = cin - cin // 4, cout - cout // 4
    elif pattern == "even":
        a, b = cin // 2, cout // 2
    else:
        raise ValueError(f"unknown group pattern {pattern!r}; expected dense, uneven, mirror or even")
    return [(0, a, 0, b), (a, cin, b, cout)]


class SharedConv(nn.Module):
    """A conv weight [out_max, in_max (1 if depthwise), k_max, k_max] shared through slices."""

    def __init__(self, out_max, in_max, k_max=1, depthwise=False):
        super().__init__()
        self.depthwise, self.k_max = depthwise, k_max
        self.weight = nn.Parameter(torch.empty(out_max, 1 if depthwise else in_max, k_max, k_max))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # nn.Conv2d's default, at the largest size

    def kernel_slice(self, w, k):
        if k > self.k_max or k % 2 != self.k_max % 2:
            raise ValueError(f"kernel {k} is not a centred slice of the shared {self.k_max}x{self.k_max} weight")
        off = (self.k_max - k) // 2
        return w[:, :, off:off + k, off:off + k]

    def forward(self, x, out_ch, kernel=1, stride=1, groups=None):
        pad = kernel // 2
        if self.depthwise:
            c = x.shape[1]
            w = self.kernel_slice(self.weight[:c], kernel)
            return F.conv2d(x, w, stride=stride, padding=pad, groups=c)
        groups = groups or [(0, x.shape[1], 0, out_ch)]
        outs = [F.conv2d(x[:, a:b], self.kernel_slice(self.weight[c:d, a:b], kernel), stride=stride, padding=pad)
                for a, b, c, d in groups]
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)

    def sliced_weight(self, out_ch, in_ch, kernel, groups=None):
        """The weight a standalone conv of this slice holds: [out, in/groups, k, k] (grouped convs
        concatenate their blocks along dim 0, as nn.Conv2d(groups=g) stores them)."""
        if self.depthwise:
            return self.kernel_slice(self.weight[:out_ch], kernel).detach().clone()
        groups = groups or [(0, in_ch, 0, out_ch)]
        return torch.cat([self.kernel_slice(self.weight[c:d, a:b], kernel) for a, b, c, d in groups]).detach().clone()

    def input_vectors(self, args, n, generator):
        """Recorded inputs in the FULL weight layout [m, in_max * k_max^2]: each group's patches are
        placed at its input channels and the kernel centre, zeros elsewhere, so that an update
        orthogonal to them leaves every earlier slice's output on these inputs unchanged."""
        x, out_ch = args[0], args[1]
        kernel = args[2] if len(args) > 2 else 1
        stride = args[3] if len(args) > 3 else 1
        groups = args[4] if len(args) > 4 else None
        off, kk = (self.k_max - kernel) // 2, self.k_max
        if self.depthwise:
            rows = unfold_patches(x, kernel, stride, kernel // 2, groups=x.shape[1], n=n, generator=generator)
            full = rows.new_zeros(rows.shape[0], 1, kk, kk)
            full[:, :, off:off + kernel, off:off + kernel] = rows.view(-1, 1, kernel, kernel)
            return full.flatten(1)
        in_max = self.weight.shape[1]
        parts = []
        groups = groups or [(0, x.shape[1], 0, out_ch)]
        per_group = max(1, n // len(groups))
        for a, b, _c, _d in groups:
            rows = unfold_patches(x[:, a:b], kernel, stride, kernel // 2, n=per_group, generator=generator)
            full = rows.new_zeros(rows.shape[0], in_max, kk, kk)
            full[:, a:b, off:off + kernel, off:off + kernel] = rows.view(-1, b - a, kernel, kernel)
            parts.append(full.flatten(1))
        return torch.cat(parts)


class SharedBN(nn.Module):
    """BatchNorm2d without affine parameters over the first C of ``c_max`` channels.
    ``momentum=None`` means a cumulative average (what BN recalibration uses)."""

    def __init__(self, c_max, eps=1e-5, momentum=0.1):
        super().__init__()
        self.eps, self.momentum = eps, momentum
        self.register_buffer("running_mean", torch.zeros(c_max))
        self.register_buffer("running_var", torch.ones(c_max))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def reset_running_stats(self):
        self.running_mean.zero_()
        self.running_var.fill_(1.0)
        self.num_batches_tracked.zero_()

    def forward(self, x):
        c = x.shape[1]
        mean, var = self.running_mean[:c], self.running_var[:c]  # views: batch_norm updates them in place
        if self.training:
            self.num_batches_tracked += 1
            f = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
            return F.batch_norm(x, mean, var, None, None, True, f, self.eps)
        return F.batch_norm(x, mean, var, None, None, False, 0.0, self.eps)
