"""LSTM/GRU sequence classifier (and regressor with num_classes=1) for long-range sequence tasks."""
from torch import nn

from slimkit.errors import ShapeError
from slimkit.models._registry import register_model


class RNNClassifier(nn.Module):
    """Inputs [N, T, input_size] (batch first). ``per_step=True`` returns [N, T, classes] (copying task),
    otherwise the head reads the last step: [N, classes]."""

    def __init__(self, input_size=1, hidden_size=128, num_layers=1, num_classes=10, cell="lstm", per_step=False):
        super().__init__()
        cells = {"lstm": nn.LSTM, "gru": nn.GRU}
        if cell not in cells:
            raise ValueError(f"cell must be one of {sorted(cells)}, got {cell!r}")
        self.input_size, self.num_classes, self.per_step = input_size, num_classes, per_step
        self.rnn = cells[cell](input_size, hidden_size, num_layers, batch_first=True)
        self.head = nn.Linear(hidden_size, num_classes)

    def forward_features(self, x):
        if x.dim() != 3 or x.shape[-1] != self.input_size:
            raise ShapeError(f"rnn_classifier expects input [N, T, {self.input_size}], got {list(x.shape)}")
        out, _ = self.rnn(x)
        return out if self.per_step else out[:, -1]

    def forward_head(self, x):
        return self.head(x)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


@register_model(input_size=(784, 1))
def rnn_classifier(input_size=1, hidden_size=128, num_layers=1, num_classes=10, cell="lstm", per_step=False):
    """LSTM/GRU sequence classifier; default input: pixel-by-pixel MNIST (784 steps x 1)."""
    return RNNClassifier(input_size, hidden_size, num_layers, num_classes, cell, per_step)
