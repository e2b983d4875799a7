"""Exact MAC / parameter / byte / activation counts on tiny nets (hand-computed in _profile_nets.py)."""
import pytest
import torch
import torch.nn as nn

from slimkit.profile import analyze_ops, count_macs

from _profile_nets import LstmHead, Nested, WithCdist, conv_net


def test_conv_linear_macs_by_operator_and_module():
    ops = analyze_ops(conv_net().eval(), torch.randn(1, 3, 8, 8))
    assert ops.macs == 3888 + 720
    assert ops.by_operator == {"aten.convolution": 3888, "aten.addmm": 720}
    assert ops.by_module == {"": 4608, "0": 3888, "3": 720}
    assert ops.unsupported_ops == {}
    assert count_macs(conv_net(), torch.randn(1, 3, 8, 8)) == 4608


def test_macs_scale_with_batch():
    assert count_macs(conv_net(), torch.randn(3, 3, 8, 8)) == 3 * 4608


def test_by_module_is_hierarchical_and_sums_to_total():
    ops = analyze_ops(Nested().eval(), torch.randn(1, 3, 8, 8))
    assert ops.by_module["block"] == ops.by_module["block.0"] == 3888
    assert ops.by_module["head"] == 720
    assert ops.by_module["block"] + ops.by_module["head"] == ops.by_module[""] == ops.macs == 4608


def test_unsupported_ops_listed_exactly():
    ops = analyze_ops(WithCdist().eval(), torch.randn(2, 4, 3))
    # relu / add are MAC-free, linear is counted (2*4 rows x 3 x 2), cdist is not countable
    assert ops.unsupported_ops == {"aten._cdist_forward": 1}
    assert ops.macs == 2 * 4 * 3 * 2


def test_lstm_custom_formula():
    t = 5
    ops = analyze_ops(LstmHead().eval(), torch.randn(1, t, 8))
    assert ops.by_operator["aten.mkldnn_rnn_layer"] == t * 4 * 16 * (8 + 16)
    assert ops.macs == t * 4 * 16 * (8 + 16) + 16 * 3
    assert ops.unsupported_ops == {}


def test_mv_and_dot_custom_formulas():
    class MatVec(nn.Module):
        def forward(self, w, v):
            return torch.mv(w, v).dot(v[:6])

    ops = analyze_ops(MatVec(), (torch.randn(6, 7), torch.randn(7)))
    assert ops.by_operator == {"aten.mv": 42, "aten.dot": 6}
    assert ops.unsupported_ops == {}


def test_peak_activation_bytes_of_a_linear_chain():
    # Linear(10->100) -> ReLU -> Linear(100->7), batch 4, fp32, no grad:
    # peak while ReLU runs = its input + output = 2 * 4*100*4 bytes
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(10, 100), nn.ReLU(), nn.Linear(100, 7))
    assert analyze_ops(net, torch.randn(4, 10)).peak_activation_bytes == 2 * 4 * 100 * 4
    # in-place ReLU reuses the storage: peak = hidden + logits
    net_inplace = nn.Sequential(nn.Linear(10, 100), nn.ReLU(inplace=True), nn.Linear(100, 7))
    assert analyze_ops(net_inplace, torch.randn(4, 10)).peak_activation_bytes == 4 * 100 * 4 + 4 * 7 * 4


def test_views_of_weights_are_not_activations():
    # Linear's weight transpose (aten.t) aliases the parameter: only the output counts
    net = nn.Linear(10, 3)
    assert analyze_ops(net, torch.randn(2, 10)).peak_activation_bytes == 2 * 3 * 4


class _Attn(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.mha = nn.MultiheadAttention(8, 2, batch_first=True)

    def forward(self, q, kv):
        return self.mha(q, kv, kv, need_weights=False)[0]


def test_attention_formulas_match_hand_count_on_fast_and_slow_paths():
    b, lq, lk, e = 2, 5, 7, 8
    q, kv = torch.randn(b, lq, e), torch.randn(b, lk, e)
    proj = b * lq * e * e * 2 + b * lk * e * e * 2  # q and out projections, k and v projections
    attn = 2 * b * lq * lk * e  # scores and weighted sum, all heads
    cross = analyze_ops(_Attn().eval(), (q, kv))  # cross-attention: SDPA on CPU
    assert cross.macs == proj + attn and cross.unsupported_ops == {}
    assert cross.by_operator["aten._scaled_dot_product_flash_attention_for_cpu"] == attn
    net = _Attn()
    fast = analyze_ops(net.eval(), (q, q))  # self-attention in eval: aten._native_multi_head_attention
    assert "aten._native_multi_head_attention" in fast.by_operator
    assert fast.macs == analyze_ops(net.train(), (q, q)).macs == 4 * b * lq * e * e + 2 * b * lq * lq * e


def test_transformer_encoder_fast_path_formula():
    b, seq, e, ffn = 2, 5, 8, 16
    layer = nn.TransformerEncoderLayer(e, 2, ffn, dropout=0.0, batch_first=True)
    x = torch.randn(b, seq, e)
    fast = analyze_ops(layer.eval(), x)
    assert list(fast.by_operator) == ["aten._transformer_encoder_layer_fwd"]
    expected = 4 * b * seq * e * e + 2 * b * seq * seq * e + 2 * b * seq * e * ffn
    assert fast.macs == analyze_ops(layer.train(), x).macs == expected


@pytest.mark.parametrize("cls,gates", [(nn.RNN, 1), (nn.GRU, 3), (nn.LSTM, 4)])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_recurrent_layers_counted_exactly(cls, gates, bidirectional):
    batch, steps, inp, hid, d = 3, 5, 8, 16, 2 if bidirectional else 1
    net = cls(inp, hid, num_layers=2, batch_first=True, bidirectional=bidirectional).eval()
    ops = analyze_ops(net, torch.randn(batch, steps, inp))
    # per step, sample and direction: gates*H*(in + H); layer 2 reads d*H features
    expected = batch * steps * d * (gates * hid * (inp + hid) + gates * hid * (d * hid + hid))
    assert ops.macs == expected and ops.unsupported_ops == {}
