"""The shared layer helpers of the recovery passes: im2col rows (compress/im2col.py) match the layer's own
output row for row, and the hook helpers (compress/_hooks.py) record what named layers see and in which
order they run, removing their hooks even when the forward fails."""
import pytest
import torch

from slimkit.compress._hooks import execution_order, record_layer_io
from slimkit.compress.im2col import input_rows, output_rows
from slimkit.model_io import Example


@pytest.mark.parametrize("kw", [dict(), dict(stride=2, padding=1), dict(padding=2, dilation=2)])
def test_conv_rows_times_the_weight_are_the_conv_output(kw):
    g = torch.Generator().manual_seed(0)
    conv = torch.nn.Conv2d(3, 5, 3, bias=False, **kw)
    x = torch.randn(2, 3, 9, 9, generator=g)
    rows = input_rows(conv, x)
    assert rows.shape[1] == 3 * 3 * 3
    torch.testing.assert_close(rows @ conv.weight.reshape(5, -1).T, output_rows(conv(x), conv))
    torch.testing.assert_close(output_rows(conv(x)), output_rows(conv(x), conv))  # no layer: 4-D is a conv output


def test_linear_rows_keep_the_last_dim_as_features():
    lin = torch.nn.Linear(4, 6, bias=False)
    x = torch.randn(2, 3, 5, 4)  # channel-last, e.g. an MLP on image tokens
    rows = input_rows(lin, x)
    assert rows.shape == (30, 4)
    torch.testing.assert_close(rows @ lin.weight.T, output_rows(lin(x), lin))


class _Twice(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Linear(3, 3), torch.nn.Linear(3, 3)

    def forward(self, x, scale=1.0):
        return self.a(self.b(self.a(x))) * scale


def test_record_layer_io_over_tensor_and_example_batches():
    m = _Twice()
    xs = [torch.randn(2, 3), Example((torch.randn(4, 3),), {"scale": 2.0})]
    ins, outs = record_layer_io(m, ["a", "b"], xs, outputs=True)
    assert [t.shape[0] for t in ins["a"]] == [2, 2, 4, 4]  # a runs twice per batch: both calls recorded
    assert len(ins["b"]) == len(outs["b"]) == 2
    torch.testing.assert_close(ins["a"][0], xs[0])
    torch.testing.assert_close(outs["b"][0], m.b(m.a(xs[0])).detach())
    assert not ins["a"][0].requires_grad and record_layer_io(m, ["a"], xs)[1] == {}
    assert not m.a._forward_hooks and not m.b._forward_hooks


def test_execution_order_is_first_call_order_and_hooks_go_even_on_error():
    m = _Twice()
    assert execution_order(m, torch.randn(1, 3), lambda mod: isinstance(mod, torch.nn.Linear)) == ["a", "b"]
    assert execution_order(m, (torch.randn(1, 3),), lambda mod: mod is m.b) == ["b"]
    with pytest.raises(RuntimeError):
        execution_order(m, torch.randn(1, 4), lambda mod: isinstance(mod, torch.nn.Linear))  # wrong width
    with pytest.raises(RuntimeError):
        record_layer_io(m, ["a"], [torch.randn(1, 4)])
    assert not m.a._forward_pre_hooks and not m.a._forward_hooks
