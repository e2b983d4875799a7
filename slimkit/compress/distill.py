"""distill: few-shot recovery of a compressed student from the original teacher.

Two stages, both on the K-shot images (``data``; with ``data=None``, the synthetic images of an earlier
``synth`` pass):

1. **Layer by layer, first to last** (``method="layerwise"`` or ``"cross"``): each conv/linear layer is refit
   by closed-form least squares, its inputs taken from the student whose earlier layers are already fitted,
   so errors do not accumulate. ``layerwise`` (channel pruning of He et al. 2017): ``||W_s x_s - W_t x_t||^2``,
   the student layer on the student's input against the teacher layer on the teacher's; ``cross`` (cross
   distillation, Bai et al. 2020): ``mu ||W_s x_t - W_t x_t||^2 + (1 - mu) ||W_s x_s - W_t x_s||^2``.
   With a prune record (``surgery.prune_record``), ``select="recon"`` also re-chooses WHICH teacher channels
   each single-producer chain keeps (the count prune chose stays): the producer is refit at full width, the
   layers reading its channels are solved for every channel, and channels are removed one at a time by the
   exact least-squares error of those layers (``recon.greedy_select``); the readers keep the least-squares
   refit on the kept channels. Rows: ``views`` random crops/flips of each image. See ``recon.py``.
2. **Function matching** (``steps`` SGD steps, see ``matching.py``): KL to the teacher's outputs on
   crops/flips/mixup/cutmix of the images, the same view for both, optionally plus penultimate features.

``method="finetune"`` runs stage 2 only. ``bnrecal`` (on by default) re-estimates BatchNorm statistics
between the stages, kept only where that lowers the KL to the teacher on the clean images. The teacher is
the model before the first lossy pass (``context.extras["reference"]``, set by ``compress``; else
``context.teacher``). Layers pair with the teacher's by module name; without a prune
record the kept channels are recovered by matching weights to exact slices of the teacher's, and a layer
that matches nothing is skipped and listed in ``model.distill_report``.
"""
import copy
import math
from dataclasses import dataclass
from typing import Literal, Optional

import torch
import torch.nn.functional as F

from slimkit.compress import _hooks
from slimkit.compress.base import PassConfig, register_pass
from slimkit.compress.bnrecal import batchnorms, recalibrate
from slimkit.compress.im2col import input_rows, output_rows
from slimkit.compress.importance import gram_solve
from slimkit.compress.matching import MatchSettings, function_matching, usable_tta
from slimkit.compress.recon import Quadratic, greedy_select, solve
from slimkit.compress.views import flip_safe, random_views
from slimkit.errors import SlimkitError

_LAYERS = (torch.nn.Conv2d, torch.nn.Linear)


@dataclass
class DistillConfig(PassConfig):
    """method: layer-wise objective (``layerwise`` | ``cross``) or ``finetune`` (function matching only);
    select: ``recon`` re-selects the kept channels of pruned chains by reconstruction, ``keep`` keeps prune's;
    k: images per class taken from ``data`` (None: all); mu: cross's correction weight; ridge: Tikhonov weight
    relative to the mean diagonal of each Gram matrix; views: random crops/flips per image for the layer
    solves; bnrecal: re-estimate BatchNorm statistics after the layer stage; steps/lr/batch_size: the
    function-matching fine-tune (one-cycle schedule, peak lr); optimizer: ``sgd`` (Nesterov momentum) or ``adam``
    (then use a peak lr near 1e-3); loss: ``kl`` to the teacher's softened outputs at ``temperature``, or ``mse``
    between the logits; features: weight of the
    feature MSE (each term relative to the teacher's feature energy) at ``feature_at``: every block's output
    (``blocks``, the teacher's blocks found by name in the student) or the classifier's input (``penultimate``);
    crop: the function-matching views' crop (``shift``: padded shift, ``resized``: random-resized crop);
    ema: decay of an exponential moving average of the fine-tuned weights, returned instead of the last ones (0: off);
    anchor: L2-SP weight pulling the weights towards those function matching started from (0: off);
    adv: half of each batch moved one signed-gradient step (adv x the input std) up the KD loss (0: off);
    tta: ``flip``: the target (logits and features) is the teacher's mean on each view and its mirror image (a
    two-view ensemble; only where flips are used), ``flip_logits``: only the logits averaged, ``none``: the view's;
    bn: ``frozen`` (BatchNorm normalises with its running statistics while function matching) or ``train``
    (batch statistics; the running ones are re-estimated on the clean images afterwards, guarded as bnrecal);
    mix: mixup/cutmix between the images; flip: horizontal flips (``auto``: when the teacher says mirrored
    images keep their class)."""

    name = "distill"
    lossless = False
    recovery = True
    # function matching alone by default: with >= 600 steps it generalises better than starting from the
    # layer-wise closed-form refit, which fits the few images' views (ResNet-20, K=10: 85.98% vs 85.08% test,
    # 91.2% vs 86.5% val); the layer-wise stage stays an option
    method: Literal["layerwise", "cross", "finetune"] = "finetune"
    select: Literal["recon", "keep"] = "recon"
    k: Optional[int] = 10
    mu: float = 0.6
    solver: Literal["lsq", "adam"] = "lsq"
    ridge: float = 1e-2
    iters: int = 150  # adam solver only
    views: int = 4
    # on by default, guarded (kept only where it lowers the KL to the teacher on the clean images): +0.8 / +0.6 pt
    # on the few-shot ResNet-20 (image draws 0 / 1); unguarded it blew up a random-weight ResNet-56
    bnrecal: bool = True
    steps: int = 1500
    lr: float = 0.01
    batch_size: int = 64
    temperature: float = 1.0
    loss: Literal["kl", "mse"] = "kl"
    optimizer: Literal["sgd", "adam"] = "sgd"
    # block-output MSE on by default: +2.7 pt on the few-shot ResNet-20 benchmark (weight 10 of {1, 3, 10, 30},
    # picked on the validation split); a model without residual-style blocks gets no term
    features: float = 10.0
    feature_at: Literal["penultimate", "blocks"] = "blocks"
    crop: Literal["shift", "resized", "none"] = "shift"
    ema: float = 0.0
    anchor: float = 0.0
    adv: float = 0.0
    tta: Literal["none", "flip", "flip_logits"] = "none"
    bn: Literal["frozen", "train"] = "frozen"
    mix: Literal["none", "mixup", "cutmix", "both"] = "both"
    flip: Literal["auto", "on", "off"] = "auto"
    seed: int = 0

    def __post_init__(self):
        if not 0.0 <= self.mu <= 1.0:
            raise ValueError(f"distill: mu must be in [0, 1], got {self.mu}")
        if self.k is not None and self.k < 1:
            raise ValueError(f"distill: k must be >= 1 (or none: all images), got {self.k}")
        if self.ridge < 0 or self.views < 1 or self.steps < 0:
            raise ValueError("distill: ridge >= 0, views >= 1 and steps >= 0 are required")
        if not 0.0 <= self.ema < 1.0:
            raise ValueError(f"distill: ema must be in [0, 1) (0: off), got {self.ema}")
        if self.anchor < 0 or self.adv < 0:
            raise ValueError(f"distill: anchor and adv must be >= 0 (0: off), got {self.anchor}, {self.adv}")


def few_shot(data, k, seed):
    """At most k (x, y) pairs per class (all when k is None) -> (X, Y) tensors; unlabelled data (Y None)
    keeps its first images."""
    from slimkit.data.batches import as_tensors
    from slimkit.data.sampling import few_shot_indices

    X, Y = data if isinstance(data, tuple) and len(data) == 2 and torch.is_tensor(data[0]) else as_tensors(data)
    if len(X) == 0:
        raise SlimkitError("distill: data is empty; it needs K labelled images per class")
    if k is None or Y is None:
        return X, Y
    keep = few_shot_indices(Y.reshape(-1), k, seed, at_most=True)
    return X[keep], Y[keep]


def channel_maps(w_ref, w_stu):
    """(out_idx, in_idx) with w_ref[out_idx][:, in_idx] == w_stu exactly, or None if not a slice (the fallback
    when the model carries no prune record)."""
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


# ---------------------------------------------------------------- capturing layer inputs and outputs
class _Stop(Exception):
    """Raised by a hook once every wanted module has run: the rest of the forward is not needed."""


def _capture(model, names, X, batch, outputs=()):
    """Per batch of ``X``: {name: input} (and {name + "/out": output} for ``outputs``), stopping the forward
    after the last wanted module ran (first call of each)."""
    mods = {n: model.get_submodule(n) for n in names}
    for i in range(0, len(X), batch):
        seen = {}

        def hook(m, args, out, n=None):
            if n in seen:
                return
            seen[n] = args[0].detach()
            if n in outputs:
                seen[n + "/out"] = out.detach()
            if all(k in seen for k in mods):
                raise _Stop

        handles = [m.register_forward_hook(lambda m, a, o, n=n: hook(m, a, o, n)) for n, m in mods.items()]
        try:
            with torch.no_grad():
                model(X[i:i + batch])
        except _Stop:
            pass
        finally:
            for h in handles:
                h.remove()
        yield seen


def execution_order(model, x):
    """Conv/linear module names in the order of their first call on ``x``."""
    return _hooks.execution_order(model, x, lambda m: isinstance(m, _LAYERS))


# ---------------------------------------------------------------- least-squares pieces
def _rows(layer, x):
    """The layer's input as a design matrix: one row per output position, (rows, in*kh*kw [+1])."""
    a = input_rows(layer, x)
    if layer.bias is not None:
        a = torch.cat([a, torch.ones(len(a), 1, dtype=a.dtype)], 1)
    return a.float()


def _responses(y, layer):
    """Layer outputs matched row for row with ``_rows``: (rows, out)."""
    return output_rows(y, layer).float()


def _channels(layer):
    """The channel dimension of the layer's input and output tensors: 1 for a conv (channel-first), -1 for a
    linear layer, whatever its input's rank (tokens (B, T, C), channel-last maps (B, H, W, C))."""
    return 1 if isinstance(layer, torch.nn.Conv2d) else -1


def _tt(a, b):
    """a' b of one batch, computed in float32 (fast), summed over batches in float64 by the caller."""
    return (a.T @ b).double()


def _flat_weight(layer):
    """(d, out): the layer's weight (and bias) as the solution matrix of ``_rows``."""
    w = layer.weight.detach().reshape(layer.weight.shape[0], -1).T.double()
    if layer.bias is not None:
        w = torch.cat([w, layer.bias.detach().double()[None]], 0)
    return w


def _set_flat_weight(layer, sol):
    n_w = layer.weight[0].numel()
    with torch.no_grad():
        layer.weight.copy_(sol[:n_w].T.reshape(layer.weight.shape).to(layer.weight.dtype))
        if layer.bias is not None:
            layer.bias.copy_(sol[n_w].to(layer.bias.dtype))


def _lsq_supported(layer):
    return isinstance(layer, torch.nn.Linear) or (
        layer.groups == 1 and layer.padding_mode == "zeros" and not isinstance(layer.padding, str))


def _tensor(model, fqn):
    mod, _, attr = fqn.rpartition(".")
    return getattr(model.get_submodule(mod) if mod else model, attr)


def _put(model, fqn, value):
    """Replace a parameter or buffer by ``value`` (any shape), keeping its kind."""
    mod_name, _, attr = fqn.rpartition(".")
    mod = model.get_submodule(mod_name) if mod_name else model
    if attr in mod._parameters:
        mod._parameters[attr] = torch.nn.Parameter(value.detach().clone(), requires_grad=mod._parameters[attr].requires_grad)
    else:
        mod._buffers[attr] = value.detach().clone()


def _pick(t, out_idx, in_idx):
    if out_idx is not None:
        t = t.index_select(0, out_idx)
    if in_idx is not None and t.dim() > 1:
        t = t.index_select(1, in_idx)
    return t


class _Walker:
    """The layer-by-layer solve over a student that carries a prune record (or whose kept channels were
    recovered by weight matching)."""

    def __init__(self, student, reference, XV, config, kept, chains, report, progress):
        self.s, self.t, self.XV, self.cfg = student, reference, XV, config
        self.kept, self.chains, self.report, self.progress = kept, chains, report, progress
        self.batch = 50

    def indices(self, name):
        return self.kept.get(name, (None, None))

    def _stats(self, name, out_idx, in_idx, layer):
        """(G, B) of the layer's objective with the student's current input channels."""
        cfg, ref = self.cfg, self.t.get_submodule(name)
        cross = cfg.method == "cross"
        ch = _channels(layer)
        d = layer.weight[0].numel() + (layer.bias is not None)
        gram = torch.zeros(d, d, dtype=torch.float64)
        rhs = torch.zeros(d, layer.weight.shape[0], dtype=torch.float64)
        w_ref = None
        if cross:
            full_in = in_idx if in_idx is not None else None
            w_ref = _pick(ref.weight.detach(), out_idx, None)
        for st, te in zip(_capture(self.s, [name], self.XV, self.batch), _capture(self.t, [name], self.XV, self.batch, {name})):
            x_s, x_t, y_t = st[name], te[name], te[name + "/out"]
            if out_idx is not None:
                y_t = y_t.index_select(ch, out_idx)
            a_s = _rows(layer, x_s)
            if not cross:
                gram += _tt(a_s, a_s)
                rhs += _tt(a_s, _responses(y_t, layer))
                continue
            # imitation target: the teacher layer on the student's input, removed channels filled with the
            # teacher's activations (the student layer absorbs their contribution from the kept ones)
            full = x_t.clone()
            if full_in is not None:
                full.index_copy_(ch, full_in, x_s)
            else:
                full = x_s
            with torch.no_grad():
                y_st = F.conv2d(full, w_ref, None, ref.stride, ref.padding, ref.dilation, ref.groups) \
                    if isinstance(ref, torch.nn.Conv2d) else F.linear(full, w_ref)
            if ref.bias is not None:
                b = ref.bias.detach() if out_idx is None else ref.bias.detach()[out_idx]
                y_st = y_st + (b[:, None, None] if ch == 1 else b)
            x_tk = x_t if in_idx is None else x_t.index_select(ch, in_idx)
            a_t = _rows(layer, x_tk)
            gram += (1 - cfg.mu) * _tt(a_s, a_s) + cfg.mu * _tt(a_t, a_t)
            rhs += (1 - cfg.mu) * _tt(a_s, _responses(y_st, layer)) + cfg.mu * _tt(a_t, _responses(y_t, layer))
        return gram, rhs

    def refit(self, name):
        layer = self.s.get_submodule(name)
        out_idx, in_idx = self.indices(name)
        gram, rhs = self._stats(name, out_idx, in_idx, layer)
        sol = gram_solve(gram, rhs, self.cfg.ridge)
        _set_flat_weight(layer, sol)
        self.report[name] = "refit"

    def reselect(self, chain):
        """Refit the producer at full width, choose its kept channels by the readers' reconstruction error,
        slice, and set the readers to their least-squares refit."""
        cfg, s, t = self.cfg, self.s, self.t
        prod = s.get_submodule(chain.producer)
        p_out, p_in = self.indices(chain.producer)
        consumers = list(chain.consumers)
        # 1. widen the chain to the teacher's full width (producer refit on the student's input)
        saved = {chain.producer + ".weight": prod.weight}
        if prod.bias is not None:
            saved[chain.producer + ".bias"] = prod.bias
        for f in chain.followers:
            saved[f] = _tensor(s, f)
        for c in consumers:
            saved[c + ".weight"] = s.get_submodule(c).weight
        _put(s, chain.producer + ".weight", _pick(t.get_submodule(chain.producer).weight.detach(), None, p_in))
        if prod.bias is not None:
            _put(s, chain.producer + ".bias", t.get_submodule(chain.producer).bias.detach())
        prod = s.get_submodule(chain.producer)
        self.kept[chain.producer] = (None, p_in)
        gram, rhs = self._stats(chain.producer, None, p_in, prod)
        _set_flat_weight(prod, gram_solve(gram, rhs, cfg.ridge))
        for f in chain.followers:
            _put(s, f, _tensor(t, f))
        for c in consumers:
            _put(s, c + ".weight", _pick(t.get_submodule(c).weight.detach(), self.indices(c)[0], None))
        # 2. one pass: every reader's full-width input in the student, input/output in the teacher
        problems = [self._consumer_problem(c) for c in consumers]
        keep = greedy_select(problems, len(chain.kept), cfg.ridge)
        # 3. slice the producer/followers to the chosen channels, readers to their refit
        w_full = prod.weight.detach()
        _put(s, chain.producer + ".weight", w_full.index_select(0, keep))
        if prod.bias is not None:
            _put(s, chain.producer + ".bias", prod.bias.detach()[keep])
        for f in chain.followers:
            _put(s, f, _tensor(t, f).detach()[keep])
        for c, q in zip(consumers, problems):
            layer = s.get_submodule(c)
            _put(s, c + ".weight", layer.weight.detach().index_select(1, keep))
            layer = s.get_submodule(c)
            sol, cols = solve(q, keep, cfg.ridge)
            _set_flat_weight(layer, sol)
            self.kept[c] = (self.indices(c)[0], keep)
            self.report[c] = "refit on re-selected channels"
        self.kept[chain.producer] = (keep, p_in)
        chain.kept = keep
        self.report[chain.producer] = f"refit; kept {len(keep)}/{chain.size} channels re-selected by reconstruction"
        del saved

    def _consumer_problem(self, c):
        cfg, layer, ref = self.cfg, self.s.get_submodule(c), self.t.get_submodule(c)
        out_idx = self.indices(c)[0]
        d = layer.weight[0].numel() + (layer.bias is not None)
        n_out = layer.weight.shape[0]
        g_s = torch.zeros(d, d, dtype=torch.float64)
        g_t = torch.zeros(d, d, dtype=torch.float64)
        cross_ts = torch.zeros(d, n_out, dtype=torch.float64)
        cross = cfg.method == "cross"
        for st, te in zip(_capture(self.s, [c], self.XV, self.batch), _capture(self.t, [c], self.XV, self.batch, {c})):
            a_s = _rows(layer, st[c])
            g_s += _tt(a_s, a_s)
            if cross:
                a_t = _rows(layer, te[c])
                g_t += _tt(a_t, a_t)
            else:
                y_t = te[c + "/out"]
                if out_idx is not None:
                    y_t = y_t.index_select(_channels(layer), out_idx)
                cross_ts += _tt(a_s, _responses(y_t, layer))
        k = layer.weight[0, 0].numel() if isinstance(layer, torch.nn.Conv2d) else 1
        groups = torch.arange(layer.weight.shape[1] * k).reshape(layer.weight.shape[1], k)
        if cross:  # both targets are the teacher layer's own function: B = G W_t
            gram = (1 - cfg.mu) * g_s + cfg.mu * g_t
            w_t = _flat_weight(ref) if out_idx is None else _flat_weight(ref)[:, out_idx]
            return Quadratic(gram, gram @ w_t, groups)
        return Quadratic(g_s, cross_ts, groups)


def _check_pairs(student, reference, names, kept, report):
    """Layers that can be solved: same type as the teacher's, and channels known (record or weight match)."""
    ref_modules = dict(reference.named_modules())
    good = []
    for name in names:
        layer, ref = student.get_submodule(name), ref_modules.get(name)
        if type(ref) is not type(layer) or not _lsq_supported(layer):
            report[name] = "skipped: no matching teacher layer (or a grouped/odd-padded conv)"
            continue
        if name not in kept:
            maps = channel_maps(ref.weight.detach(), layer.weight.detach())
            if maps is None:
                report[name] = "skipped: channels do not match a slice of the teacher layer"
                continue
            out_idx, in_idx = maps
            kept[name] = (None if len(out_idx) == ref.weight.shape[0] and torch.equal(out_idx, torch.arange(len(out_idx))) else out_idx,
                          None if len(in_idx) == ref.weight.shape[1] and torch.equal(in_idx, torch.arange(len(in_idx))) else in_idx)
        good.append(name)
    return good


def layer_stage(student, reference, XV, config, report, progress=False):
    """Stage 1 in place on ``student``; returns the updated prune record (or None)."""
    from tqdm import tqdm

    record = _record_of(student)
    kept = dict(record.kept) if record is not None else {}
    for name, mod in student.named_modules():  # layers the record does not name were not sliced
        if record is not None and isinstance(mod, _LAYERS) and name not in kept and name in record.sizes:
            kept[name] = (None, None)
    names = _check_pairs(student, reference, execution_order(student, XV[:1]), kept, report)
    chains = {c.producer: c for c in (record.chains if record is not None else [])}
    use_chains = config.select == "recon" and config.solver == "lsq"
    walker = _Walker(student, reference, XV, config, kept, chains, report, progress)
    done = set()
    for name in tqdm(names, desc=f"distill: {config.method}", disable=not progress, leave=False):
        chain = chains.get(name) if use_chains else None
        if chain is not None and all(c in names for c in chain.consumers):
            walker.reselect(chain)
            done.update(chain.consumers)
        elif name not in done:
            if config.solver == "adam":
                _adam_fit(walker, name, config)
            else:
                walker.refit(name)
    if record is not None:
        from slimkit.compress.surgery import RECORD_ATTR

        record.kept.update({k: v for k, v in kept.items() if k in record.kept or v != (None, None)})
        setattr(student, RECORD_ATTR, record)
    return record


def _record_of(model):
    """A copy of the model's prune record; None when it has none (or this slimkit's prune does not write one:
    then kept channels are recovered by weight matching)."""
    try:
        from slimkit.compress.surgery import prune_record
    except ImportError:
        return None
    rec = prune_record(model)
    return copy.deepcopy(rec) if rec is not None else None


def _adam_fit(walker, name, config):
    """The paper's per-layer Adam loop on the same objective (solver="adam"), for reference."""
    layer = walker.s.get_submodule(name)
    gram, rhs = walker._stats(name, *walker.indices(name), layer)
    w = _flat_weight(layer).clone().requires_grad_(True)
    opt = torch.optim.Adam([w], lr=config.lr)
    scale = float(gram.diagonal().mean()) or 1.0
    for _ in range(config.iters):
        loss = ((w * (gram @ w)).sum() - 2 * (w * rhs).sum()) / scale
        opt.zero_grad()
        loss.backward()
        opt.step()
    _set_flat_weight(layer, w.detach())
    walker.report[name] = "refit (adam)"


def solver_views(X, n_views, flip, seed):
    """The images and ``n_views - 1`` random crops/flips of them (fixed: both models see the same rows)."""
    gen = torch.Generator().manual_seed(seed + 1)
    return torch.cat([X] + [random_views(X, gen, True, flip) for _ in range(n_views - 1)]) if X.dim() == 4 else X


@torch.no_grad()
def _kl_to(student, reference, X, batch_size=256):
    from slimkit.compress.matching import kd_loss

    student.eval()
    total = sum(float(kd_loss(student(xb), reference(xb), 1.0)) * len(xb) for xb in X.split(batch_size))
    return total / len(X)


def guarded_recalibrate(student, reference, X, flip, seed):
    """BatchNorm recalibration kept only where it brings the student's outputs on the clean images closer to the
    teacher's (KL): after pruning it usually repairs the statistics, but on an untrained or already matched
    network a handful of images can make them worse. Returns "kept" | "rolled back" | "no batchnorm"."""
    bns = batchnorms(student)
    if not bns:
        return "no batchnorm"
    saved = [copy.deepcopy(m.state_dict()) for m in bns]
    before = _kl_to(student, reference, X)
    recalibrate(student, X, flip=flip, seed=seed)
    if _kl_to(student, reference, X) <= before or not math.isfinite(before):
        return "kept"
    for m, state in zip(bns, saved):
        m.load_state_dict(state)
    return "rolled back"


@register_pass(DistillConfig)
def distill(model, example_inputs, config, context=None):
    """Few-shot recovery of ``model`` towards the teacher; returns a new model."""
    if context is None or (context.data is None and context.extras.get("synthetic") is None):
        raise SlimkitError("distill needs few-shot data: compress(..., data=(X, Y)), or a synth pass before it "
                           "for data-free recovery")
    reference = context.extras.get("reference") or context.teacher
    if reference is None:
        raise SlimkitError("distill needs the teacher model (context.teacher)")
    reference = reference.eval()
    synthetic = context.extras.get("synthetic")
    if context.data is not None:
        X, _ = few_shot(context.data, config.k, config.seed)
        if synthetic is not None:  # few real images + BN-statistics inversions
            X = torch.cat([X, synthetic[0]])
    else:
        X = synthetic[0]
    flip = {"on": True, "off": False}.get(config.flip)
    if flip is None:
        flip = flip_safe(reference, X)
    student = copy.deepcopy(model).eval()
    report = {}
    if config.method != "finetune":
        layer_stage(student, reference, solver_views(X, config.views, flip, config.seed), config, report,
                    context.progress)
    if config.bnrecal:
        report["bnrecal"] = guarded_recalibrate(student, reference, X, flip, config.seed)
    settings = MatchSettings(steps=config.steps, batch_size=config.batch_size, lr=config.lr,
                             temperature=config.temperature, loss=config.loss, optimizer=config.optimizer,
                             features=config.features,
                             feature_at=config.feature_at, crop=config.crop, flip=flip, mix=config.mix,
                             ema=config.ema, bn=config.bn, anchor=config.anchor, adv=config.adv,
                             tta=usable_tta(config.tta, flip, "distill"))
    function_matching(student, reference, X, settings, torch.Generator().manual_seed(config.seed),
                      progress=context.progress)
    if config.bn == "train":  # the running statistics followed mixed views: re-estimate them on clean ones
        report["bnrecal_after"] = guarded_recalibrate(student, reference, X, flip, config.seed)
    student.requires_grad_(True)
    student.distill_report = report
    return student.eval()
