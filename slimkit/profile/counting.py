"""MAC counting on top of torch.utils.flop_counter.FlopCounterMode.

Convention used everywhere in slimkit: one multiply-accumulate = 1 MAC, FLOPs = 2 x MACs.
FlopCounterMode reports FLOPs (2 per MAC) for matmul/conv/attention ops; we halve them.

What FlopCounterMode lacks is added through its public ``custom_mapping`` (``CUSTOM_FORMULAS``):
``aten.mkldnn_rnn_layer`` (what ``nn.LSTM`` runs on CPU), ``aten.mv``, ``aten.dot``,
``aten._scaled_dot_product_flash_attention_for_cpu`` (SDPA on CPU), and the inference
fast paths of ``nn.MultiheadAttention`` (``aten._native_multi_head_attention``) and
``nn.TransformerEncoderLayer`` (``aten._transformer_encoder_layer_fwd``).
Ops that are neither counted nor listed in ``MAC_FREE_OPS`` (element-wise, shape, normalisation,
pooling, reductions, indexing: by convention 0 MACs) are reported as *unsupported*, never silently 0.
"""
from collections import Counter
from dataclasses import dataclass, field

import torch
from torch.utils.flop_counter import FlopCounterMode

from slimkit.model_io import Example
from slimkit.profile.memory import ActivationTracker


def _numel(shape):
    n = 1
    for s in shape:
        n *= int(s)
    return n


def _mv_flops(a_shape, b_shape, *args, out_shape=None, **kwargs):
    return 2 * _numel(a_shape)  # [m, n] @ [n]: m*n MACs


def _dot_flops(a_shape, b_shape, *args, out_shape=None, **kwargs):
    return 2 * _numel(a_shape)


def _mkldnn_rnn_layer_flops(input_shape, w_ih_shape, w_hh_shape, *args, out_shape=None, **kwargs):
    # One LSTM layer/direction on CPU: per time step and sample, gates (4H) x (input I + hidden H) MACs.
    gates, in_features = w_ih_shape
    hidden = w_hh_shape[1]
    steps_x_batch = _numel(input_shape) // in_features
    return 2 * steps_x_batch * gates * (in_features + hidden)


def _attention_macs(batch, q_len, kv_len, embed):
    # scores Q K^T and weights x V: Lq*Lk*E MACs each, summed over heads (E = heads x head dim)
    return 2 * batch * q_len * kv_len * embed


def _sdpa_cpu_flops(q_shape, k_shape, v_shape, *args, out_shape=None, **kwargs):
    # [B, H, L, E] layout; a causal mask is not discounted (same convention as torch's CUDA formulas)
    *bh, q_len, e = q_shape
    kv_len, ev = k_shape[-2], v_shape[-1]
    return 2 * _numel(bh) * q_len * kv_len * (e + ev)


def _native_mha_flops(q_shape, k_shape, v_shape, embed_dim, num_head, *args, out_shape=None, **kwargs):
    # nn.MultiheadAttention's inference fast path (batch_first [B, L, E]): Q, K, V and output projections.
    b, lq, lk, e = q_shape[0], q_shape[1], k_shape[1], embed_dim
    macs = b * (lq * e * e + 2 * lk * e * e) + _attention_macs(b, lq, lk, e) + b * lq * e * e
    return 2 * macs


def _encoder_layer_flops(src_shape, embed_dim, num_heads, qkv_w, qkv_b, proj_w, proj_b, use_gelu, norm_first, eps,
                         nw1, nb1, nw2, nb2, ffn_w1, *args, out_shape=None, **kwargs):
    # nn.TransformerEncoderLayer's inference fast path: self-attention block + 2-layer MLP.
    b, seq, e = src_shape
    ffn = ffn_w1[0]
    macs = b * seq * 4 * e * e + _attention_macs(b, seq, seq, e) + 2 * b * seq * e * ffn
    return 2 * macs


CUSTOM_FORMULAS = {
    torch.ops.aten.mv: _mv_flops,
    torch.ops.aten.dot: _dot_flops,
    torch.ops.aten.mkldnn_rnn_layer: _mkldnn_rnn_layer_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_flops,
    torch.ops.aten._native_multi_head_attention: _native_mha_flops,
    torch.ops.aten._transformer_encoder_layer_fwd: _encoder_layer_flops,
}

# 0 MACs by convention: no multiply-accumulate of two operands (element-wise arithmetic and
# activations, normalisation that folds into the previous layer, pooling, reductions, data movement).
MAC_FREE_OPS = frozenset(f"aten.{name}" for name in """
    abs add add_ addcmul addcdiv alias as_strided avg_pool1d avg_pool2d avg_pool3d _adaptive_avg_pool2d
    _adaptive_avg_pool3d adaptive_max_pool2d max_pool2d_with_indices max_pool3d_with_indices max_pool1d
    max_pool2d amax amin any all argmax argmin arange bernoulli_ bitwise_and bitwise_not bitwise_or cat
    ceil clamp clamp_ clamp_min clamp_min_ clamp_max clone constant_pad_nd contiguous copy_ cos cumsum
    detach div div_ dropout native_dropout elu elu_ embedding empty empty_like empty_strided eq erf exp
    exp_ expand fill_ flatten flip floor full full_like ge gelu gelu_ glu gt hardsigmoid hardsigmoid_
    hardswish hardswish_ hardtanh hardtanh_ index index_select isnan le leaky_relu leaky_relu_ lift_fresh
    lift_fresh_copy log log_softmax _log_softmax logical_and logical_not lt masked_fill masked_fill_ max
    maximum mean min minimum mish mul mul_ native_batch_norm _native_batch_norm_legit
    _native_batch_norm_legit_no_training native_group_norm native_layer_norm ne neg new_empty new_full
    new_ones new_zeros ones ones_like permute pow prelu _prelu_kernel _safe_softmax adaptive_avg_pool2d cudnn_batch_norm reciprocal reflection_pad2d relu
    relu_ relu6 repeat replication_pad2d reshape round rsqrt rsub scalar_tensor select sigmoid sigmoid_
    sign silu silu_ sin slice softmax _softmax softplus split split_with_sizes sqrt squeeze stack std sub
    sub_ sum t tanh tanh_ threshold transpose tril triu unbind unfold unsafe_split unsafe_view unsqueeze
    upsample_bilinear2d upsample_nearest2d _unsafe_view var var_mean view where zero_ zeros zeros_like
    _to_copy to _reshape_alias topk sort gather scatter nonzero _local_scalar_dense item
""".split())


def is_mac_free(op: str) -> bool:
    """True for ops in ``MAC_FREE_OPS`` and their in-place twins (``aten.relu_`` like ``aten.relu``)."""
    return op in MAC_FREE_OPS or op.rstrip("_") in MAC_FREE_OPS


@dataclass
class OpAnalysis:
    """One traced forward: MACs total, per module (dotted name, '' = root) and per aten op, the
    ops that could not be counted, and peak live activation bytes (see ``ActivationTracker``)."""
    macs: int
    by_module: dict = field(default_factory=dict)
    by_operator: dict = field(default_factory=dict)
    op_calls: dict = field(default_factory=dict)
    unsupported_ops: dict = field(default_factory=dict)
    peak_activation_bytes: int = 0


def _counter():
    return FlopCounterMode(display=False, custom_mapping=CUSTOM_FORMULAS)


@torch.no_grad()
def count_macs(model, example_inputs):
    """Total MACs of one forward pass of ``model`` on ``example_inputs`` (a tensor, a tuple, a dict of
    keyword inputs or a ``slimkit.model_io.Example``)."""
    example = Example.of(example_inputs)
    meta = _on_meta(model, example)
    if meta is not None:  # shapes are all a count needs: no arithmetic on the meta device
        try:
            counter = _counter()
            with counter:
                meta[1](meta[0])
            return counter.get_total_flops() // 2
        except Exception:  # noqa: BLE001 - a forward that needs real values (.item(), data-dependent): count for real
            pass
    counter = _counter()
    with counter:
        example(model)
    return counter.get_total_flops() // 2


def _on_meta(model, example):
    """(meta copy of the model, meta example), or None when the model cannot be copied."""
    import copy

    try:
        return copy.deepcopy(model).to("meta"), example.map(lambda t: t.to("meta"))
    except Exception:  # noqa: BLE001 - e.g. an ONNX Runtime session inside: no meta copy
        return None


@torch.no_grad()
def analyze_ops(model, example_inputs) -> OpAnalysis:
    """Trace one no-grad forward: MACs by module and operator, unsupported ops, peak activations."""
    example = Example.of(example_inputs)
    keep = example.tensors() + list(model.parameters()) + list(model.buffers())
    counter = _counter()
    tracker = ActivationTracker(exclude=keep)
    # tracker outside the counter: it sees ops after FlopCounterMode's own decompositions.
    with tracker, counter:
        example(model)
    counts = counter.get_flop_counts()
    root = type(model).__name__
    by_module = {}
    for key, ops in counts.items():
        if key == "Global":
            continue
        name = "" if key == root else key[len(root) + 1:] if key.startswith(root + ".") else key
        by_module[name] = sum(ops.values()) // 2
    by_operator = {str(op): flops // 2 for op, flops in counts.get("Global", {}).items()}
    counted = {str(op) for op in counter.flop_registry}
    unsupported = Counter(op for op in tracker.op_calls.elements() if op not in counted and not is_mac_free(op))
    return OpAnalysis(
        macs=counter.get_total_flops() // 2,
        by_module=by_module,
        by_operator=dict(sorted(by_operator.items(), key=lambda kv: -kv[1])),
        op_calls=dict(sorted(tracker.op_calls.items())),
        unsupported_ops=dict(sorted(unsupported.items())),
        peak_activation_bytes=tracker.peak_bytes,
    )
