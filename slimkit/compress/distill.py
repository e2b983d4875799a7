"""distill: few-shot recovery of a compressed student from the original teacher (Bai et al., AAAI 2020).

``method="cross"`` (cross distillation): conv/linear layers are fitted one at a time, first to last.
For a student layer W_s with teacher counterpart W_t, x_t is the layer input in the teacher and x_s
in the student (earlier layers already fitted). Correction loss L_c = ||W_s x_t - W_t x_t||^2 (the
student layer on the teacher's hidden input), imitation loss L_i = ||W_s x_s - W_t x_s||^2 (the
teacher layer on the student's hidden input; channels the student no longer has are filled with the
teacher's activations, see ``_imitation_target``), L = mu L_c + (1 - mu) L_i, each a mean over
elements. Then an end-to-end fine-tune on the same images (Adam, cross-entropy + KD to the teacher's
logits, random shifts), as the paper's fine-tune with its optional KD and augmentation switched on.

Both losses are quadratic in (W_s, b_s), so the default ``solver="lsq"`` solves each layer in closed
form: with A = im2col rows of the layer input, G = mu A_t'A_t + (1 - mu) A_s'A_s and
B = mu A_t'Y_t + (1 - mu) A_s'Y_st, W = (G + ridge * mean(diag G) I)^-1 B. This is the exact minimiser
the paper approaches with Adam (``solver="adam"``, ``iters`` steps); with 10 images per class a
32x32 layer still has ~100k rows for a few hundred unknowns, so the solve is well posed and takes
milliseconds instead of minutes. The default ridge (1e-2) was the best of 1e-4..1e-1 for layer-wise
recovery of a pruned ResNet-20 (77.1% -> 80.9% top-1 before fine-tune, K=10).
Baselines on the same data: ``"layerwise"`` (L = ||W_s x_s - W_t x_t||^2, then the same fine-tune)
and ``"finetune"`` (the fine-tune only).

The teacher is the model before the first lossy pass (``context.extras["reference"]``, set by
``compress``; else ``context.teacher``). Layers are paired by module name; when pruning removed
channels, the kept input/output channels are recovered by matching the student's weights to exact
slices of the teacher's (what pruning leaves before any retraining). A layer whose channels cannot
be matched is skipped and listed in ``model.distill_report``.
"""
import copy
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from slimkit.compress.base import PassConfig, register_pass
from slimkit.compress.importance import gram_solve
from slimkit.errors import SlimkitError

_LAYERS = (torch.nn.Conv2d, torch.nn.Linear)


@dataclass
class DistillConfig(PassConfig):
    """k: images per class taken from ``data``; mu: weight of the correction loss; solver: closed-form
    least squares per layer ("lsq") or the paper's Adam loop ("adam", ``iters`` steps at ``lr``);
    finetune_*: the end-to-end Adam fine-tune (0 epochs = none); kd: weight of a knowledge-distillation
    term (teacher logits, T=4) added to its cross-entropy; augment: random shifts of up to 1/8 of the
    image size during the fine-tune; flip: also random horizontal flips (off: wrong for digits/text)."""

    name = "distill"
    lossless = False
    method: Literal["cross", "layerwise", "finetune"] = "cross"
    k: int = 10
    mu: float = 0.6
    solver: Literal["lsq", "adam"] = "lsq"
    ridge: float = 1e-2  # lsq: Tikhonov weight relative to the mean diagonal of the Gram matrix
    iters: int = 150  # adam only
    lr: float = 1e-3  # adam only
    batch_size: int = 50
    finetune_epochs: int = 100
    finetune_lr: float = 3e-4
    kd: float = 1.0  # weight of the teacher-logit KD term in the fine-tune (temperature 4); 0 = CE only
    augment: bool = True
    flip: bool = False
    seed: int = 0

    def __post_init__(self):
        if not 0.0 <= self.mu <= 1.0:
            raise ValueError(f"mu must be in [0, 1], got {self.mu}")
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        if self.ridge < 0:
            raise ValueError(f"ridge must be >= 0, got {self.ridge}")


def few_shot(data, k, seed):
    """At most k (x, y) pairs per class from an iterable of batches -> (X, Y) tensors."""
    xs, ys = [], []
    for batch in data:
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise SlimkitError("distill: data must yield (images, labels) batches")
        xs.append(batch[0])
        ys.append(batch[1])
    if not xs:
        raise SlimkitError("distill: data is empty; it needs K labelled images per class")
    X, Y = torch.cat(xs), torch.cat(ys)
    order = torch.randperm(len(Y), generator=torch.Generator().manual_seed(seed))
    keep, seen = [], {}
    for i in order.tolist():
        c = int(Y[i])
        if seen.get(c, 0) < k:
            seen[c] = seen.get(c, 0) + 1
            keep.append(i)
    keep = torch.tensor(sorted(keep))
    return X[keep], Y[keep]


def channel_maps(w_ref, w_stu):
    """(out_idx, in_idx) with w_ref[out_idx][:, in_idx] == w_stu exactly, or None if not a slice."""
    if w_ref.shape == w_stu.shape and torch.equal(w_ref, w_stu):
        return torch.arange(w_ref.shape[0]), torch.arange(w_ref.shape[1])
    if w_ref.shape[2:] != w_stu.shape[2:]:
        return None
    table = {}
    ref = w_ref.detach().reshape(w_ref.shape[0], w_ref.shape[1], -1)
    for o in range(ref.shape[0]):
        for i in range(ref.shape[1]):
            table.setdefault(ref[o, i].numpy().tobytes(), []).append((o, i))
    stu = w_stu.detach().reshape(w_stu.shape[0], w_stu.shape[1], -1)
    out_votes = torch.zeros(stu.shape[0], ref.shape[0])
    in_votes = torch.zeros(stu.shape[1], ref.shape[1])
    for o in range(stu.shape[0]):
        for i in range(stu.shape[1]):
            for ro, ri in table.get(stu[o, i].numpy().tobytes(), ()):
                out_votes[o, ro] += 1
                in_votes[i, ri] += 1
    out_idx, in_idx = out_votes.argmax(1), in_votes.argmax(1)
    if not torch.equal(w_ref[out_idx][:, in_idx], w_stu):
        return None
    return out_idx, in_idx


def _inputs_outputs(model, name, X, batch, want_out):
    mod = model.get_submodule(name)
    ins, outs = [], []

    def hook(m, args, out):  # returns None: the forward output is left alone
        ins.append(args[0].detach())
        if want_out:
            outs.append(out.detach())

    h = mod.register_forward_hook(hook)
    try:
        with torch.no_grad():
            for i in range(0, len(X), batch):
                model(X[i:i + batch])
    finally:
        h.remove()
    return torch.cat(ins), (torch.cat(outs) if want_out else None)


def _imitation_target(ref, x_s, x_t, in_idx, out_idx, config):
    """Y_st: the teacher layer on the student's hidden input. The paper removes channels inside the
    layer solver, so its x_s still carries the channels being removed; here they are already gone, and
    the teacher layer restricted to the kept channels would be a trivial target (the unchanged slice).
    The removed channels are therefore filled with the teacher's activations, so the student layer is
    asked to absorb their contribution from the channels it keeps."""
    with torch.no_grad():
        outs = []
        for i in range(0, len(x_s), config.batch_size):
            full = x_t[i:i + config.batch_size].clone()
            full[:, in_idx] = x_s[i:i + config.batch_size]
            outs.append(ref(full)[:, out_idx])
        return torch.cat(outs)


def _fit_layer(layer, y_st, x_s, x_t, y_t, config, gen):
    """Adam on one student layer; ``y_st`` = the imitation target (cross only)."""
    params = [p for p in layer.parameters()]
    opt = torch.optim.Adam(params, lr=config.lr)
    n = len(x_s)
    for _ in range(config.iters):
        pick = torch.randint(0, n, (min(config.batch_size, n),), generator=gen)
        ys = layer(x_s[pick])
        if config.method == "cross":
            loss = config.mu * F.mse_loss(layer(x_t[pick]), y_t[pick]) + (1 - config.mu) * F.mse_loss(ys, y_st[pick])
        else:
            loss = F.mse_loss(ys, y_t[pick])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return loss.item()


def _rows(layer, x):
    """The layer's input as a design matrix: one row per output position, (rows, in*kh*kw [+1])."""
    if isinstance(layer, torch.nn.Conv2d):
        cols = F.unfold(x, layer.kernel_size, dilation=layer.dilation, padding=layer.padding, stride=layer.stride)
        a = cols.transpose(1, 2).reshape(-1, cols.shape[1])
    else:
        a = x.reshape(-1, x.shape[-1])
    if layer.bias is not None:
        a = torch.cat([a, torch.ones(len(a), 1, dtype=a.dtype)], 1)
    return a.double()


def _responses(y):
    """Layer outputs matched row for row with ``_rows``: (rows, out)."""
    if y.dim() == 4:
        y = y.permute(0, 2, 3, 1)
    return y.reshape(-1, y.shape[-1]).double()


def _lsq_supported(layer):
    return isinstance(layer, torch.nn.Linear) or (
        layer.padding_mode == "zeros" and not isinstance(layer.padding, str))


def _solve_layer(layer, y_st, x_s, x_t, y_t, config):
    """Closed-form minimiser of the (cross or layer-wise) loss for one layer; returns the loss."""
    cross = config.method == "cross"
    w = config.mu if cross else 0.0  # weight of the correction (teacher-input) term
    d = layer.weight[0].numel() + (layer.bias is not None)
    gram = torch.zeros(d, d, dtype=torch.float64)
    rhs = torch.zeros(d, layer.weight.shape[0], dtype=torch.float64)
    with torch.no_grad():
        for i in range(0, len(x_s), config.batch_size):
            sl = slice(i, i + config.batch_size)
            a_s = _rows(layer, x_s[sl])
            target_s = y_st[sl] if cross else y_t[sl]  # imitation target, or the layer-wise one
            gram += (1 - w) * a_s.T @ a_s
            rhs += (1 - w) * a_s.T @ _responses(target_s)
            if w > 0:
                a_t = _rows(layer, x_t[sl])
                gram += w * a_t.T @ a_t
                rhs += w * a_t.T @ _responses(y_t[sl])
        sol = gram_solve(gram, rhs, config.ridge)  # (d, out)
        n_w = layer.weight[0].numel()
        layer.weight.copy_(sol[:n_w].T.reshape(layer.weight.shape).to(layer.weight.dtype))
        if layer.bias is not None:
            layer.bias.copy_(sol[n_w].to(layer.bias.dtype))
        ys = layer(x_s)
        if cross:
            return float(w * F.mse_loss(layer(x_t), y_t) + (1 - w) * F.mse_loss(ys, y_st))
        return float(F.mse_loss(ys, y_t))


def _set_bn_eval(model):
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()


def _shift_flip(x, gen, flip):
    """Few-shot augmentation for image batches: a random shift by up to 1/8 of the size (zero-padded
    crop, one offset per batch) and, when ``flip``, a random horizontal flip per image."""
    if x.dim() != 4:
        return x
    if flip:
        mask = torch.rand(len(x), generator=gen) < 0.5
        x = torch.where(mask[:, None, None, None], x.flip(3), x)
    h, w = x.shape[2:]
    ph, pw = h // 8, w // 8
    i, j = (int(torch.randint(0, 2 * p + 1, (1,), generator=gen)) for p in (ph, pw))
    return F.pad(x, (pw, pw, ph, ph))[:, :, i:i + h, j:j + w]


def finetune(model, X, Y, epochs, lr, batch_size, gen, progress=False, teacher=None, kd=0.0, temperature=4.0,
             augment=False, flip=False):
    """End-to-end fine-tune: Adam with a cosine schedule on cross-entropy (+ ``kd`` x T^2 x KL to the
    teacher's softened logits when ``teacher`` is given), optionally on shifted/flipped copies of the
    few images. BatchNorm statistics stay frozen (too few images to estimate them). Adam rather than
    SGD: with frozen (or folded) BatchNorm, SGD at 1e-3 diverged to NaN on the pruned ResNet-20."""
    from tqdm import tqdm

    if epochs <= 0:
        return model
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    batches = [idx for _ in range(epochs) for idx in torch.randperm(len(X), generator=gen).split(batch_size)]
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, len(batches))
    use_kd = teacher is not None and kd > 0
    model.train()
    _set_bn_eval(model)
    for idx in tqdm(batches, desc="distill: fine-tune", disable=not progress, leave=False):
        x = _shift_flip(X[idx], gen, flip) if augment else X[idx]
        logits = model(x)
        loss = F.cross_entropy(logits, Y[idx])
        if use_kd:
            with torch.no_grad():
                soft = F.softmax(teacher(x) / temperature, 1)
            loss = loss + kd * temperature ** 2 * F.kl_div(F.log_softmax(logits / temperature, 1), soft,
                                                           reduction="batchmean")
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


@register_pass(DistillConfig)
def distill(model, example_inputs, config, context=None):
    """Few-shot recovery of ``model`` towards the teacher; returns a new model."""
    from tqdm import tqdm

    if context is None or context.data is None:
        raise SlimkitError("distill needs few-shot data: compress(..., data=[(images, labels), ...])")
    reference = context.extras.get("reference") or context.teacher
    if reference is None:
        raise SlimkitError("distill needs the teacher model (context.teacher)")
    reference = reference.eval()
    gen = torch.Generator().manual_seed(config.seed)
    X, Y = few_shot(context.data, config.k, config.seed)
    student = copy.deepcopy(model).eval()
    report = {}
    if config.method != "finetune":
        ref_modules = dict(reference.named_modules())
        names = [n for n, m in student.named_modules() if isinstance(m, _LAYERS)]
        for name in tqdm(names, desc=f"distill: {config.method}", disable=not context.progress, leave=False):
            layer, ref = student.get_submodule(name), ref_modules.get(name)
            if type(ref) is not type(layer) or (isinstance(layer, torch.nn.Conv2d) and layer.groups != 1):
                report[name] = "skipped: no matching teacher layer"
                continue
            maps = channel_maps(ref.weight.detach(), layer.weight.detach())
            if maps is None:
                report[name] = "skipped: channels do not match a slice of the teacher layer"
                continue
            out_idx, in_idx = maps
            x_s, _ = _inputs_outputs(student, name, X, config.batch_size, False)
            x_t, y_t = _inputs_outputs(reference, name, X, config.batch_size, True)
            y_st = _imitation_target(ref, x_s, x_t, in_idx, out_idx, config) if config.method == "cross" else None
            args = (layer, y_st, x_s, x_t[:, in_idx], y_t[:, out_idx], config)
            if config.solver == "lsq" and _lsq_supported(layer):
                report[name] = _solve_layer(*args)
            else:
                report[name] = _fit_layer(*args, gen)
        student.eval()
    finetune(student, X, Y, config.finetune_epochs, config.finetune_lr, min(config.batch_size, 32), gen,
             progress=context.progress, teacher=reference, kd=config.kd, augment=config.augment, flip=config.flip)
    student.requires_grad_(True)
    student.distill_report = report
    return student
