"""pq: Q-CNN product quantization of conv and linear weights (Wu et al., CVPR 2016).

Input channels are split into M subspaces of ``sub_dim`` channels; each subspace has a codebook of
``k`` codewords shared by all output channels and kernel positions, and every weight sub-vector is
replaced by the index of a codeword. Codebooks start from k-means; error correction then minimises
the layer RESPONSE error ||T - W_q S||^2, with S the layer input in the already-quantized network
(layers go in execution order) and T the original layer's response, by block coordinate descent:
a D-step (least squares for one subspace's codebook) and a B-step (exhaustive search over the k
codewords for each output channel and kernel position).

Storage = codebooks (fp16 by default) + bit-packed indices (log2 k bits each) + biases;
``storage_bytes()`` reports it and ``packed_state()`` produces it. Inference: linear layers have a
lookup-table path (``lut=True``: M*k dot products per input, then M table look-ups per output);
conv layers and ``lut=False`` use the dense fallback (weights rebuilt from codebooks).

**Codeword fine-tuning** ("And the bit goes down", Stock et al. 2020): with few-shot data, ``steps`` steps of
function matching (``matching.py``: KL to the teacher's outputs on augmented views, mixup/cutmix) train the
codebooks, biases and BatchNorm affine parameters with every assignment fixed, so the storage stays the same.
"""
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from slimkit.compress._hooks import execution_order, record_layer_io
from slimkit.compress.base import PassConfig, register_pass
from slimkit.compress.im2col import input_rows, output_rows
from slimkit.errors import SlimkitError


@dataclass
class PQConfig(PassConfig):
    """sub_dim: input channels per subspace (C's); k: codewords per subspace (<= 256).
    ec_iters: error-correction sweeps (0 = plain k-means PQ; every image position of the data is
    used through the response statistics); lut: linear layers use the lookup-table path; steps/lr:
    codeword fine-tune by function matching on the few-shot data (skipped without data); features: weight of
    the teacher's block outputs in it; tta: its target (see distill: ``flip`` averages the teacher over each view
    and its mirror image)."""

    name = "pq"
    lossless = False
    sub_dim: int = 4
    k: int = 16
    ec_iters: int = 2
    kmeans_iters: int = 25
    codebook_dtype: Literal["float16", "float32"] = "float16"
    lut: bool = True
    steps: int = 1000  # codeword fine-tune by function matching (needs data; 0 = none)
    features: float = 0.0  # weight of the block-output MSE in that fine-tune (see distill)
    tta: Literal["none", "flip", "flip_logits"] = "none"
    lr: float = 1e-4  # Adam: a codeword's gradient sums over every weight that uses it, so SGD steps blew up
    # > 0: give each layer k, 2k, ... up to k_max codewords (0: 4k, at most 256), chosen by measured sensitivity
    # (the KL to the original's outputs with that layer alone quantized) under conv+linear weights this many
    # times smaller than fp32; 0: k in every layer
    target_ratio: float = 0.0
    k_max: int = 0
    seed: int = 0

    def __post_init__(self):
        if self.steps < 0:
            raise ValueError(f"pq: steps must be >= 0, got {self.steps}")
        if not 2 <= self.k <= 256:
            raise ValueError(f"k must be in [2, 256], got {self.k}")
        if self.sub_dim < 1:
            raise ValueError(f"sub_dim must be >= 1, got {self.sub_dim}")
        if self.target_ratio < 0 or not (self.k_max == 0 or self.k <= self.k_max <= 256):
            raise ValueError(f"pq: target_ratio must be >= 0 and k_max 0 or in [k, 256], got {self.target_ratio}, "
                             f"{self.k_max}")

    def k_options(self):
        top = self.k_max or min(4 * self.k, 256)
        return [self.k * 2 ** i for i in range(9) if self.k * 2 ** i <= top]


def pack_indices(indices, bits):
    """uint8 indices (< 2**bits) -> bit-packed uint8 array of ceil(n * bits / 8) bytes."""
    flat = np.asarray(indices, dtype=np.uint8).reshape(-1)
    bit_planes = np.unpackbits(flat[:, None], axis=1)[:, 8 - bits:]  # keep the low `bits` bits, MSB first
    return np.packbits(bit_planes.reshape(-1))


def unpack_indices(packed, bits, count):
    planes = np.unpackbits(np.asarray(packed, dtype=np.uint8))[: count * bits].reshape(count, bits)
    full = np.concatenate([np.zeros((count, 8 - bits), np.uint8), planes], axis=1)
    return np.packbits(full, axis=1).reshape(-1)


class _PQBase(torch.nn.Module):
    """codebooks [M, k, d]; indices [M, out, P] (uint8; P = kernel positions, 1 for linear)."""

    def _init_pq(self, codebooks, indices, bias, dtype):
        # Codebooks train in fp32 but every forward sees them rounded to the storage dtype, which is
        # what storage_bytes() counts and packed_state() writes.
        self.storage_dtype = dtype
        self.codebooks = torch.nn.Parameter(codebooks.float().to(getattr(torch, dtype)).float())
        self.register_buffer("indices", indices.to(torch.uint8))
        self.bias = None if bias is None else torch.nn.Parameter(bias.detach().clone())

    @property
    def bits(self):
        return max(1, math.ceil(math.log2(self.codebooks.shape[1])))

    def dense_weight(self):
        # Inference reuses the rebuilt weight until the codebooks change; while tracing (torch.export)
        # or training it is rebuilt, so saved programs keep the compact codebooks + indices.
        if self.training or torch.is_grad_enabled() or torch.compiler.is_compiling():
            return self._rebuild()
        key = (self.codebooks._version, self.indices._version, self.codebooks.data_ptr(), self.indices.data_ptr())
        if getattr(self, "_cache_key", None) != key:
            self._cache, self._cache_key = self._rebuild(), key
        return self._cache

    def stored_codebooks(self):
        return self.codebooks.to(getattr(torch, self.storage_dtype)).float()

    def _rebuild(self):
        M, _, d = self.codebooks.shape
        _, out, P = self.indices.shape
        cb = self.stored_codebooks()
        gathered = cb[torch.arange(M, device=cb.device)[:, None, None], self.indices.long()]  # [M, out, P, d]
        return gathered.permute(1, 0, 3, 2).reshape(out, M * d, P)

    def storage_bytes(self):
        idx_bytes = math.ceil(self.indices.numel() * self.bits / 8)
        bias = 0 if self.bias is None else self.bias.numel() * self.bias.element_size()
        cb_bytes = self.codebooks.numel() * torch.empty((), dtype=getattr(torch, self.storage_dtype)).element_size()
        return cb_bytes + idx_bytes + bias

    def packed_state(self):
        """The compact storage form: codebooks, bit-packed indices and their shape."""
        return {"codebooks": self.codebooks.detach().to(getattr(torch, self.storage_dtype)), "bits": self.bits, "index_shape": tuple(self.indices.shape),
                "packed_indices": torch.from_numpy(pack_indices(self.indices.cpu().numpy(), self.bits)),
                "bias": None if self.bias is None else self.bias.detach().clone()}


class PQLinear(_PQBase):
    def __init__(self, codebooks, indices, bias, dtype="float16", lut=True):
        super().__init__()
        self._init_pq(codebooks, indices, bias, dtype)
        self.lut = lut

    def forward(self, x):
        if not self.lut:
            return F.linear(x, self.dense_weight()[..., 0], self.bias)
        M, K, d = self.codebooks.shape
        lead = x.shape[:-1]
        xs = x.reshape(-1, M, d)
        table = torch.einsum("bmd,mkd->bmk", xs, self.stored_codebooks().to(x.dtype))  # M*k dot products per row
        idx = self.indices[..., 0].long().unsqueeze(0).expand(xs.shape[0], -1, -1)  # [B, M, out]
        out = torch.gather(table, 2, idx).sum(1)  # M look-ups and adds per output
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*lead, -1)


class PQConv2d(_PQBase):
    def __init__(self, conv, codebooks, indices, dtype="float16"):
        super().__init__()
        self._init_pq(codebooks, indices, conv.bias, dtype)
        self.kernel_size, self.stride, self.padding = conv.kernel_size, conv.stride, conv.padding
        self.dilation, self.padding_mode = conv.dilation, conv.padding_mode
        if conv.padding_mode != "zeros":
            raise SlimkitError(f"pq: padding_mode {conv.padding_mode!r} is not supported")

    def forward(self, x):
        w = self.dense_weight().reshape(self.indices.shape[1], -1, *self.kernel_size)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation)


def _kmeans(vectors, k, iters, gen):
    """Lloyd's k-means; returns (centroids [k, d], assignment [n])."""
    n = vectors.shape[0]
    if n <= k:  # every vector gets its own codeword: exact
        cent = torch.zeros(k, vectors.shape[1])
        cent[:n] = vectors
        return cent, torch.arange(n)
    cent = vectors[torch.randperm(n, generator=gen)[:k]].clone()
    for _ in range(iters):
        assign = torch.cdist(vectors, cent).argmin(1)
        sums = torch.zeros_like(cent).index_add_(0, assign, vectors)
        counts = torch.bincount(assign, minlength=k).unsqueeze(1)
        empty = counts[:, 0] == 0
        cent = torch.where(empty[:, None], cent, sums / counts.clamp(min=1))
    return cent, torch.cdist(vectors, cent).argmin(1)


def _sub_dim_for(cin, want):
    return max(d for d in range(1, min(want, cin) + 1) if cin % d == 0)


def kmeans_pq(weight, sub_dim, k, iters, gen):
    """weight [out, Cs, P] -> (codebooks [M, k, d], indices [M, out, P]) by per-subspace k-means."""
    out, cs, P = weight.shape
    M = cs // sub_dim
    books, idx = [], []
    for m in range(M):
        vec = weight[:, m * sub_dim:(m + 1) * sub_dim, :].permute(0, 2, 1).reshape(-1, sub_dim)
        cent, assign = _kmeans(vec, k, iters, gen)
        books.append(cent)
        idx.append(assign.reshape(out, P))
    return torch.stack(books), torch.stack(idx)


def response_stats(S, T):
    """Sufficient statistics of the response error for rows S [R, Cs, P] (layer inputs) and
    T [R, out] (target responses): G = S^T S, A = S^T T, t2 = ||T||^2 (float64)."""
    S = S.reshape(S.shape[0], -1).double()
    T = T.double()
    return S.T @ S, S.T @ T, float((T ** 2).sum())


def error_correct(codebooks, indices, G, A, t2, iters):
    """Block coordinate descent on ||T - S W^T||^2 with W built from (codebooks, indices).

    Works on the statistics G = S^T S, A = S^T T, t2 = ||T||^2 (``response_stats``), so every
    response row is used at a cost independent of their number. Blocks: for each subspace m, a
    B-step per kernel position p (exhaustive search over the k codewords for every output channel),
    then a D-step (least squares for codebook m given all its assignments, ridge toward the old
    codebook for unused codewords). Returns (codebooks, indices, err_before, err_after), errors
    relative to ||T||^2."""
    M, K, d = codebooks.shape
    _, out, P = indices.shape
    D, idx = codebooks.clone().double(), indices.clone().long()
    G, A = G.double(), A.double()
    W = D[torch.arange(M)[:, None, None], idx].permute(1, 0, 3, 2).reshape(out, -1)  # [out, Cs*P]
    Q = A - G @ W.T  # S^T (T - S W^T): the residual seen through S

    def err():
        return float((t2 - 2 * (W * A.T).sum() + ((W @ G) * W).sum()) / max(t2, 1e-12))

    cols = torch.arange(M * d * P).reshape(M, d, P)  # column of (subspace m, channel j, position p)
    e0 = err()
    for _ in range(iters):
        for m in range(M):
            for p in range(P):  # B-step
                J = cols[m, :, p]
                WJ, GJJ = W[:, J], G[J][:, J]
                B = Q[J] + GJJ @ WJ.T  # S_p^T (residual without this block), [d, out]
                score = torch.einsum("kd,de,ke->k", D[m], GJJ, D[m])[:, None] - 2 * D[m] @ B
                idx[m, :, p] = score.argmin(0)
                WJn = D[m][idx[m, :, p]]
                Q -= G[:, J] @ (WJn - WJ).T
                W[:, J] = WJn
            Jall = cols[m].reshape(-1)  # D-step
            Wm, Gm = W[:, Jall], G[Jall][:, Jall]
            Qext = (Q[Jall] + Gm @ Wm.T).reshape(d, P, out)  # S_m^T (residual without subspace m)
            O = F.one_hot(idx[m], K).double()  # [out, P, K]
            rhs = torch.einsum("jpo,opk->kj", Qext, O).reshape(-1)
            Gpq = Gm.reshape(d, P, d, P).permute(1, 3, 0, 2)  # [P, P, d, d]
            # H[(k,j),(l,e)] = sum_o sum_pq [idx_op = k][idx_oq = l] Gpq[j,e], accumulated sparsely
            kp = idx[m][:, :, None].expand(out, P, P).reshape(-1)
            kq = idx[m][:, None, :].expand(out, P, P).reshape(-1)
            H4 = torch.zeros(K, K, d, d, dtype=G.dtype)
            H4.index_put_((kp, kq), Gpq.unsqueeze(0).expand(out, P, P, d, d).reshape(-1, d, d), accumulate=True)
            H = H4.permute(0, 2, 1, 3).reshape(K * d, K * d)
            lam = 1e-6 * float(H.diagonal().mean()) + 1e-12
            sol = torch.linalg.solve(H + lam * torch.eye(K * d, dtype=H.dtype), rhs + lam * D[m].reshape(-1))
            D[m] = sol.reshape(K, d)
            Wn = D[m][idx[m]].permute(0, 2, 1).reshape(out, -1)
            Q -= G[:, Jall] @ (Wn - Wm).T
            W[:, Jall] = Wn
    return D.to(codebooks.dtype), idx, e0, err()


def _layer_io(model, name, batches, want_output):
    """Inputs (and outputs) of module ``name`` over ``batches``."""
    ins, outs = record_layer_io(model, [name], batches, want_output)
    return torch.cat(ins.get(name, [])), (torch.cat(outs.get(name, [])) if want_output else None)


def _layer_stats(layer, x, y, chunk=8):
    """Response statistics of a conv/linear layer over inputs x and target outputs y (bias removed)."""
    G = A = None
    t2 = 0.0
    for i in range(0, len(x), chunk):
        xs, ys = x[i:i + chunk].float(), y[i:i + chunk].float()
        S, T = input_rows(layer, xs), output_rows(ys, layer)  # im2col: one row per output position
        if layer.bias is not None:
            T = T - layer.bias.detach()
        g, a, t = response_stats(S, T)
        G, A, t2 = (g, a, t) if G is None else (G + g, A + a, t2 + t)
    return G, A, t2


def _execution_order(model, example_inputs):
    return execution_order(model, example_inputs, lambda m: type(m) in (torch.nn.Conv2d, torch.nn.Linear))


@register_pass(PQConfig)
def pq(model, example_inputs, config, context=None):
    """Product-quantize every conv (groups=1) and linear layer; returns a new model."""
    import copy

    from tqdm import tqdm

    from slimkit.data.batches import as_batches

    gen = torch.Generator().manual_seed(config.seed)
    teacher = model.eval()
    student = copy.deepcopy(model).eval()
    batches = []
    if context is not None and context.data is not None:
        batches = [x for x, _ in as_batches(context.data)]
    if not batches:  # no data: error correction falls back to the example inputs
        batches = [example_inputs if torch.is_tensor(example_inputs) else example_inputs[0]]
    order = _execution_order(student, example_inputs)
    names = [n for n in order if not (isinstance(student.get_submodule(n), torch.nn.Conv2d)
                                      and student.get_submodule(n).groups != 1)]
    report = {n: "skipped: grouped conv" for n in order if n not in names}
    ks = (_allocate(copy.deepcopy(teacher), names, batches, config) if config.target_ratio > 0
          else {n: config.k for n in names})
    for i, name in enumerate(tqdm(names, desc="pq", disable=not (context is None or context.progress), leave=False)):
        x_s = _layer_io(student, name, batches, False)[0] if config.ec_iters > 0 else None  # the quantized prefix's
        y_t = _layer_io(teacher, name, batches, True)[1] if config.ec_iters > 0 else None  # the original response
        new = _quantize_layer(student.get_submodule(name), ks[name], x_s, y_t, config, _layer_gen(config, i))
        _set_module(student, name, new)
        report[name] = new.response_error
    student.pq_k = ks
    if config.steps > 0 and context is not None and context.data is not None:
        _finetune_codewords(student, context.extras.get("reference") or context.teacher or teacher, context, config,
                            torch.cat(batches), gen)
    student.pq_report = report
    return student


def _quantize_layer(layer, k, x, y, config, gen):
    """A PQ replacement of ``layer`` with ``k`` codewords: k-means, then error correction on its inputs ``x``
    and target outputs ``y`` (none: k-means only)."""
    w = layer.weight.detach().float()
    cs = w.shape[1]
    books, idx = kmeans_pq(w.reshape(w.shape[0], cs, -1), _sub_dim_for(cs, config.sub_dim), k, config.kmeans_iters, gen)
    errs = None
    if config.ec_iters > 0 and x is not None:
        G, A, t2 = _layer_stats(layer, x, y)
        books, idx, e0, e1 = error_correct(books, idx, G, A, t2, config.ec_iters)
        errs = (e0, e1)
    if isinstance(layer, torch.nn.Conv2d):
        new = PQConv2d(layer, books, idx, config.codebook_dtype)
    else:
        new = PQLinear(books, idx, layer.bias, config.codebook_dtype, lut=config.lut)
    new.response_error = errs  # (k-means, after error correction), relative to ||T||^2
    return new


def _layer_gen(config, i):
    """k-means seeds per layer: one layer's codeword count does not change another's initialisation."""
    return torch.Generator().manual_seed(config.seed * 1_000_003 + i)


def _set_module(model, name, module):
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, module)


def _allocate(model, names, batches, config, images=256):
    """(``model``: a copy of the original; its layers are swapped in turn.) Codewords per layer for ``config.target_ratio``: each layer is quantized alone (from the original's inputs)
    at every k option and the KL of the network's outputs to the original's is measured on the data; then, from k
    everywhere, the upgrade with the most KL removed per extra byte is taken while the storage stays within the
    budget (a greedy knapsack; per-layer sensitivities are assumed to add, as in HAWQ-style bit allocation)."""
    from slimkit.compress.matching import kd_loss

    X = torch.cat(batches)[:images]
    options = config.k_options()
    with torch.no_grad():
        ref = model(X)
    kl, size, fp32 = {}, {}, 0
    for i, name in enumerate(names):
        layer = model.get_submodule(name)
        fp32 += sum(p.numel() * 4 for p in (layer.weight, layer.bias) if p is not None)
        x, y = _layer_io(model, name, batches, True) if config.ec_iters > 0 else (None, None)
        for k in options:
            new = _quantize_layer(layer, k, x, y, config, _layer_gen(config, i))
            _set_module(model, name, new)
            try:
                with torch.no_grad():
                    kl[name, k] = float(kd_loss(model(X), ref, 1.0))
            finally:
                _set_module(model, name, layer)
            size[name, k] = new.storage_bytes()
    budget = fp32 / config.target_ratio
    choice = {n: options[0] for n in names}
    total = sum(size[n, options[0]] for n in names)
    if total > budget:
        import warnings

        warnings.warn(f"pq: target_ratio {config.target_ratio:g} is out of reach even at k={options[0]} in every "
                      f"layer ({fp32 / total:.1f}x); using k={options[0]} everywhere", UserWarning, stacklevel=3)
    while True:
        best = None
        for n in names:
            i = options.index(choice[n])
            if i + 1 == len(options):
                continue
            extra, gain = size[n, options[i + 1]] - size[n, choice[n]], kl[n, choice[n]] - kl[n, options[i + 1]]
            if gain > 0 and total + extra <= budget and (best is None or gain / extra > best[0]):
                best = (gain / extra, n, extra)
        if best is None:
            return choice
        choice[best[1]] = options[options.index(choice[best[1]]) + 1]
        total += best[2]


def _finetune_codewords(student, teacher, context, config, X, gen):
    """Function matching on codebooks, biases and norm affine parameters; assignments stay fixed."""
    from slimkit.compress.matching import MatchSettings, function_matching, usable_tta
    from slimkit.compress.views import flip_safe

    teacher = teacher.eval()
    flip = flip_safe(teacher, X)
    settings = MatchSettings(steps=config.steps, lr=config.lr, flip=flip, optimizer="adam",
                             features=config.features, feature_at="blocks", tta=usable_tta(config.tta, flip, "pq"))
    function_matching(student, teacher, X, settings, gen, progress=context.progress, desc="pq")
    student.requires_grad_(True)
