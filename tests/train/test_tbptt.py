"""Truncated BPTT in the trainer: chunk-by-chunk updates equal a hand-written TBPTT loop; FW evaluates at w_k."""
import copy

import pytest
import torch
from torch.utils.data import TensorDataset

from slimkit.models import create_model
from slimkit.train import evaluate, fit
from slimkit.train.trainer import per_sample_loss

BASE = dict(batch_size=8, epochs=1, optimizer="sgd", lr=0.1, optimizer_options=dict(momentum=0.0, weight_decay=0.0),
            progress=False, seed=0)


def _classify_data(n=16, steps=10):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, steps, 2, generator=g)
    return TensorDataset(x, (x[:, :3, 0].sum(1) > 0).long())


def _model(per_step=False, classes=2):
    torch.manual_seed(0)
    return create_model("rnn_classifier", input_size=2, hidden_size=6, num_classes=classes, cell="tanh",
                        per_step=per_step)


def _reference(model, batches, chunk, lr=0.1, per_step=False):
    """TBPTT by hand: per chunk, forward from the detached state, backward, one SGD step."""
    model = copy.deepcopy(model)
    for x, y in batches:
        state = None
        for start in range(0, x.shape[1], chunk):
            xc = x[:, start:start + chunk]
            yc = y[:, start:start + chunk] if per_step else y
            model.zero_grad()
            out, state = model.forward_chunk(xc, None if state is None else state.detach())
            per_sample_loss("ce", out, yc).mean().backward()
            with torch.no_grad():
                for p in model.parameters():
                    p -= lr * p.grad
    return model


def _one_batch(data):
    return [data[:]]  # one batch: the mean loss does not depend on the shuffle order


@pytest.mark.parametrize("chunk", [4, 10])
def test_tbptt_updates_once_per_chunk_like_the_hand_loop(chunk):
    data = _classify_data(n=8)
    model = _model()
    want = _reference(model, _one_batch(data), chunk)
    res = fit(model, data, **BASE, tbptt=chunk)
    assert res.history[-1]["step"] == -(-10 // chunk)  # one batch, ceil(10 / chunk) chunks
    for a, b in zip(res.model.parameters(), want.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_tbptt_longer_than_the_sequence_is_the_plain_step():
    data = _classify_data()
    plain = fit(_model(), data, **BASE)
    chunked = fit(_model(), data, **BASE, tbptt=50)
    for a, b in zip(plain.model.parameters(), chunked.model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_tbptt_cuts_per_step_targets_with_the_input():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, 9, 2, generator=g)
    data = TensorDataset(x, (x[..., 0] > 0).long())  # a target per step [N, T]
    model = _model(per_step=True)
    want = _reference(model, _one_batch(data), 3, per_step=True)
    res = fit(model, data, **BASE, tbptt=3)
    for a, b in zip(res.model.parameters(), want.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_tbptt_errors_name_the_option():
    with pytest.raises(ValueError, match="tbptt"):
        fit(_model(), _classify_data(), **BASE, tbptt=0)
    mlp = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(20, 2))
    with pytest.raises(ValueError, match="forward_chunk"):
        fit(mlp, _classify_data(), **BASE, tbptt=5)


def test_frank_wolfe_run_is_evaluated_at_the_anchor_weights():
    from slimkit.train import TrainConfig
    from slimkit.train.trainer import Trainer

    data = _classify_data(n=24)  # 3 batches per epoch with K = 2: the epoch ends inside an inner loop
    cfg = TrainConfig(**dict(BASE, optimizer="fw-adam", lr=0.05,
                             optimizer_options=dict(inner_steps=2, iterate="cumulative")))
    trainer = Trainer(_model(), data, data, cfg)
    res = trainer.fit()
    with trainer.optimizer.anchor_weights():
        anchor_eval = evaluate(res.model, data)["loss"]
    probe_eval = evaluate(res.model, data)["loss"]
    assert res.history[-1]["eval_loss"] == pytest.approx(anchor_eval, rel=1e-6)
    assert anchor_eval != pytest.approx(probe_eval, rel=1e-4)
