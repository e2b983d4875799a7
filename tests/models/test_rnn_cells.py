"""The zoo's recurrent models: the tanh cell's recurrence by hand, chunked forward = full forward, regressor head."""
import pytest
import torch

from slimkit.models import create_model


def test_tanh_cell_is_the_elman_recurrence():
    torch.manual_seed(0)
    m = create_model("rnn_classifier", input_size=3, hidden_size=5, num_classes=4, cell="tanh")
    x = torch.randn(2, 6, 3)
    rnn = m.rnn
    h = torch.zeros(2, 5)
    for t in range(6):  # h_t = tanh(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)
        h = torch.tanh(x[:, t] @ rnn.weight_ih_l0.T + rnn.bias_ih_l0 + h @ rnn.weight_hh_l0.T + rnn.bias_hh_l0)
    torch.testing.assert_close(m(x), m.head(h), rtol=1e-5, atol=1e-6)
    assert sum(p.numel() for p in m.parameters()) == 5 * 3 + 5 * 5 + 2 * 5 + 5 * 4 + 4


@pytest.mark.parametrize("cell", ["tanh", "lstm", "gru"])
@pytest.mark.parametrize("per_step", [False, True])
def test_chunked_forward_equals_full_forward(cell, per_step):
    torch.manual_seed(1)
    m = create_model("rnn_classifier", input_size=2, hidden_size=4, num_classes=3, cell=cell, per_step=per_step)
    x = torch.randn(3, 10, 2)
    full = m(x)
    state, outs = None, []
    for start in range(0, 10, 4):  # chunks of 4, 4, 2
        out, state = m.forward_chunk(x[:, start:start + 4], state)
        outs.append(out)
    chunked = torch.cat(outs, 1) if per_step else outs[-1]
    torch.testing.assert_close(chunked, full, rtol=1e-5, atol=1e-6)


def test_regressor_has_one_output_and_unknown_cell_lists_tanh():
    m = create_model("rnn_regressor", hidden_size=8)
    assert m.cell == "tanh" and m(torch.randn(4, 100, 2)).shape == (4, 1)
    with pytest.raises(ValueError, match=r"\['gru', 'lstm', 'tanh'\]"):
        create_model("rnn_classifier", cell="relu")
