"""Recurrent sequence models: tanh RNN / LSTM / GRU classifier, and a regressor (one output) for the adding problem.

``forward_chunk(x, state)`` runs one piece of a long sequence from a carried hidden state, which is what truncated
BPTT needs (``TrainConfig(tbptt=...)`` calls it chunk by chunk and detaches the state between chunks).
"""
from torch import nn

from slimkit.errors import ShapeError
from slimkit.models._registry import register_model

CELLS = {"tanh": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


class RNNClassifier(nn.Module):
    """Inputs [N, T, input_size] (batch first). ``per_step=True`` returns [N, T, classes] (copying task),
    otherwise the head reads the last step: [N, classes]. ``num_classes=1`` is a regression head.
    ``cell="tanh"`` is the vanilla (Elman) RNN h_t = tanh(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)."""

    def __init__(self, input_size=1, hidden_size=128, num_layers=1, num_classes=10, cell="lstm", per_step=False):
        super().__init__()
        if cell not in CELLS:
            raise ValueError(f"cell must be one of {sorted(CELLS)}, got {cell!r}")
        self.input_size, self.num_classes, self.per_step, self.cell = input_size, num_classes, per_step, cell
        self.rnn = CELLS[cell](input_size, hidden_size, num_layers, batch_first=True)
        self.head = nn.Linear(hidden_size, num_classes)

    def _check(self, x):
        if x.dim() != 3 or x.shape[-1] != self.input_size:
            raise ShapeError(f"rnn_classifier expects input [N, T, {self.input_size}], got {list(x.shape)}")

    def forward_features(self, x):
        self._check(x)
        out, _ = self.rnn(x)
        return out if self.per_step else out[:, -1]

    def forward_head(self, x):
        return self.head(x)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))

    def forward_chunk(self, x, state=None):
        """(outputs, new state) for the chunk ``x`` [N, t, input_size] starting from ``state`` (None: zeros).
        Outputs are per step [N, t, classes] with ``per_step``, else those of the chunk's last step."""
        self._check(x)
        out, state = self.rnn(x, state)
        return self.head(out if self.per_step else out[:, -1]), state


@register_model(input_size=(784, 1))
def rnn_classifier(input_size=1, hidden_size=128, num_layers=1, num_classes=10, cell="lstm", per_step=False):
    """tanh-RNN/LSTM/GRU sequence classifier; default input: pixel-by-pixel MNIST (784 steps x 1)."""
    return RNNClassifier(input_size, hidden_size, num_layers, num_classes, cell, per_step)


@register_model(input_size=(100, 2))
def rnn_regressor(input_size=2, hidden_size=128, num_layers=1, cell="tanh"):
    """Sequence regressor (one output from the last step); default: tanh RNN on the adding problem (T=100)."""
    return RNNClassifier(input_size, hidden_size, num_layers, 1, cell, False)
