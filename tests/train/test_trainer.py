"""The training loop on tiny deterministic data: learning, files, exact resume, plug-in protocols."""
import csv
import json
import sys
import types

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch.utils.data import Dataset, TensorDataset

import slimkit
from slimkit.errors import CheckpointError
from slimkit.train import TrainConfig, config_from_dict, evaluate, fit, load_checkpoint, parse_size
from slimkit.train.trainer import per_sample_loss


def _data(n=192, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 6, 6, generator=g)
    y = (x[:, 0, :3].sum((1, 2)) > x[:, 0, 3:].sum((1, 2))).long()  # top half brighter than bottom half
    return TensorDataset(x, y)


def _model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                               torch.nn.Flatten(), torch.nn.Dropout(0.2), torch.nn.Linear(64, 2))


BASE = dict(batch_size=32, lr=0.05, optimizer="sgd", progress=False, seed=3)


def _assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0, msg=f"{k} differs")


def test_fit_learns_and_writes_parseable_logs(tmp_path):
    train, test = _data(), _data(96, seed=1)
    res = fit(_model(), train, test, TrainConfig(epochs=4, out_dir=str(tmp_path), **BASE))
    assert len(res.history) == 4
    assert res.eval_accuracy >= 0.85
    assert res.history[-1]["train_loss"] < res.history[0]["train_loss"]
    assert res.history[-1]["step"] == 4 * 6  # 192 / 32 batches per epoch
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    lines = [json.loads(s) for s in open(tmp_path / "metrics.jsonl")]
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4] == [r["epoch"] for r in lines]
    assert float(rows[-1]["eval_accuracy"]) == pytest.approx(res.eval_accuracy)
    saved = yaml.safe_load(open(tmp_path / "config.yaml"))
    cfg = config_from_dict(saved)  # the saved config is a loadable, resolved config
    assert cfg.epochs == 4 and cfg.device == "cpu" and cfg.meta["world_size"] == 1
    assert load_checkpoint(tmp_path / "checkpoint.pt")["epoch"] == 4
    reloaded = _model()
    reloaded.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))
    _assert_same_weights(reloaded, res.model)


def test_module_is_callable_as_verb():
    res = slimkit.train(_model(), _data(64), epochs=1, **BASE)
    assert res.history[0]["epoch"] == 1 and res.history[0]["eval_accuracy"] is None


def test_resume_after_one_epoch_matches_straight_run(tmp_path):
    straight = fit(_model(), _data(), _data(64, 1), TrainConfig(epochs=2, **BASE)).model
    fit(_model(), _data(), _data(64, 1), TrainConfig(epochs=1, out_dir=str(tmp_path), **BASE))
    # A different init proves the weights come from the checkpoint, not the constructor.
    resumed = fit(_model(seed=7), _data(), _data(64, 1),
                  TrainConfig(epochs=2, out_dir=str(tmp_path), resume=True, **BASE))
    _assert_same_weights(straight, resumed.model)
    assert [r["epoch"] for r in resumed.history] == [1, 2]
    assert [int(r["epoch"]) for r in csv.DictReader(open(tmp_path / "metrics.csv"))] == [1, 2]


def test_result_independent_of_workers_and_progress_bar():
    # Guards against anything that consumes the loader's generator (e.g. tqdm.auto iterating it twice).
    runs = [fit(_model(), _data(), None, TrainConfig(epochs=2, **{**BASE, "progress": p}, num_workers=w)).model
            for w, p in ((0, False), (0, True), (1, False))]
    _assert_same_weights(runs[0], runs[1])
    _assert_same_weights(runs[0], runs[2])


class _Crashing(Dataset):
    """Raises on the n-th item read, like a job killed mid-epoch."""

    def __init__(self, data, crash_at):
        self.data, self.reads, self.crash_at = data, 0, crash_at

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        self.reads += 1
        if self.reads == self.crash_at:
            raise RuntimeError("simulated crash")
        return self.data[i]


def test_interrupted_run_keeps_checkpoint_and_resumes_exactly(tmp_path):
    cfg = dict(epochs=3, lr_schedule="cosine", grad_clip=1.0, **BASE)
    straight = fit(_model(), _data(), None, TrainConfig(**cfg)).model
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(_model(), _Crashing(_data(), crash_at=192 + 100), None, TrainConfig(out_dir=str(tmp_path), **cfg))
    state = load_checkpoint(tmp_path / "checkpoint.pt")  # the epoch-1 checkpoint survived intact
    assert state["epoch"] == 1 and state["step"] == 6
    resumed = fit(_model(seed=5), _data(), None, TrainConfig(out_dir=str(tmp_path), resume=True, **cfg))
    _assert_same_weights(straight, resumed.model)
    # lr each epoch ran with: cosine over 3 epochs from 0.05
    assert [r["lr"] for r in resumed.history] == pytest.approx([0.05, 0.0375, 0.0125])


def test_missing_or_corrupt_checkpoint_raises_and_overwrites_nothing(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        fit(_model(), _data(64), None, TrainConfig(epochs=1, out_dir=str(tmp_path), resume=True, **BASE))
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "checkpoint.pt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="corrupt"):
        fit(_model(), _data(64), None, TrainConfig(epochs=1, out_dir=str(tmp_path), resume=True, **BASE))
    assert (tmp_path / "checkpoint.pt").read_bytes() == b"garbage"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


def test_checkpoint_of_another_model_raises(tmp_path):
    fit(_model(), _data(64), None, TrainConfig(epochs=1, out_dir=str(tmp_path), **BASE))
    other = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(36, 2))
    with pytest.raises(CheckpointError, match="does not fit"):
        fit(other, _data(64), None, TrainConfig(epochs=2, out_dir=str(tmp_path), resume=True, **BASE))


class _Counter:
    def __init__(self):
        self.n = 0

    def state_dict(self):
        return {"n": torch.tensor(self.n)}

    def load_state_dict(self, state):
        self.n = int(state["n"])


def test_stateful_plugin_is_checkpointed_and_restored(tmp_path):
    from slimkit.train import Trainer

    plugin = _Counter()
    plugin.n = 41
    Trainer(_model(), _data(64), None, TrainConfig(epochs=1, out_dir=str(tmp_path), **BASE),
            plugins={"counter": plugin}).fit()
    assert int(load_checkpoint(tmp_path / "checkpoint.pt")["extra_state"]["counter"]["n"]) == 41
    fresh = _Counter()
    t = Trainer(_model(), _data(64), None, TrainConfig(epochs=2, out_dir=str(tmp_path), resume=True, **BASE))
    t.register_stateful("counter", fresh)
    t.fit()
    assert fresh.n == 41
    with pytest.raises(TypeError, match="state_dict"):
        t.register_stateful("bad", object())


class _ClosureSGD(torch.optim.SGD):
    """Plain SGD that also re-evaluates the closure once per step, recording both losses."""

    needs_closure = True

    def __init__(self, params, lr=0.1):
        super().__init__(params, lr=lr)
        self.records = []

    def step(self, closure=None):
        grads_before = [p.grad.clone() for g in self.param_groups for p in g["params"]]
        loss = closure()
        grads_after = [p.grad for g in self.param_groups for p in g["params"]]
        # Same mini-batch, same weights (no dropout here) -> the closure reproduces the gradients.
        self.records.append(all(torch.allclose(a, b, atol=1e-6) for a, b in zip(grads_before, grads_after)))
        return super().step()


def test_closure_optimizer_gets_same_minibatch(monkeypatch):
    import slimkit.train.optim as optim

    made = []

    def factory(params, lr=0.1):
        made.append(_ClosureSGD(params, lr=lr))
        return made[-1]

    monkeypatch.setitem(optim._OPTIMIZERS, "closure-sgd", factory)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(36, 2))
    fit(model, _data(96), None, TrainConfig(epochs=1, batch_size=32, optimizer="closure-sgd", progress=False))
    assert made[0].records == [True, True, True]


class _FakeImportanceSampler(torch.utils.data.Sampler):
    reweights = True

    def __init__(self, n, seed=0, weight=2.0):
        self.n, self.weight, self.updates = n, weight, []

    def __iter__(self):
        return iter(range(self.n))

    def __len__(self):
        return self.n

    def loss_weights(self, indices):
        return torch.full((len(indices),), self.weight)

    def update(self, indices, grad_norms):
        self.updates.append((indices.clone(), grad_norms.clone()))


def test_reweighting_sampler_protocol(monkeypatch):
    made = []

    def create_sampler(name, num_samples, seed=0, **opts):
        assert name == "fake-is"
        made.append(_FakeImportanceSampler(num_samples, seed, **opts))
        return made[-1]

    monkeypatch.setitem(sys.modules, "slimkit.train.sampling", types.SimpleNamespace(create_sampler=create_sampler))
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(36, 2))
    w0 = [p.detach().clone() for p in model.parameters()]
    data = _data(64)
    fit(model, data, None, TrainConfig(epochs=1, batch_size=32, lr=0.1, optimizer="sgd",
                                       optimizer_options={"momentum": 0.0, "weight_decay": 0.0},
                                       sampler="fake-is", sampler_options={"weight": 2.0}, progress=False))
    s = made[0]
    assert [idx.tolist() for idx, _ in s.updates] == [list(range(32)), list(range(32, 64))]
    # Grad norm of sample i's own loss wrt its logits: ||softmax(z_i) - onehot(y_i)||, weights undone.
    x, y = data.tensors
    ref = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(36, 2))
    with torch.no_grad():
        for p, w in zip(ref.parameters(), w0):
            p.copy_(w)
    z = ref(x[:32])
    expected = (z.softmax(1) - F.one_hot(y[:32], 2)).norm(dim=1)
    torch.testing.assert_close(s.updates[0][1], expected.detach(), rtol=1e-5, atol=1e-6)
    # The weight multiplies the loss: one step with weight 2 equals plain SGD at lr 0.2.
    F.cross_entropy(z, y[:32]).backward()
    with torch.no_grad():
        first_step = [w - 0.2 * p.grad for p, w in zip(ref.parameters(), w0)]
    assert len(first_step) == 2  # checked indirectly through the second batch's grad norms below
    with torch.no_grad():
        for p, w in zip(ref.parameters(), first_step):
            p.copy_(w)
        z2 = ref(x[32:])
    torch.testing.assert_close(s.updates[1][1], (z2.softmax(1) - F.one_hot(y[32:], 2)).norm(dim=1),
                               rtol=1e-5, atol=1e-6)


def test_memory_budget_hook_called_once_with_bytes(monkeypatch):
    calls = []

    def apply_memory_budget(model, example_batch, budget_bytes, pack=None):
        calls.append((tuple(example_batch.shape), budget_bytes, pack))
        return model

    monkeypatch.setitem(sys.modules, "slimkit.train.memory",
                        types.SimpleNamespace(apply_memory_budget=apply_memory_budget))
    fit(_model(), _data(64), None, TrainConfig(epochs=2, memory_budget="512MiB", **BASE))
    fit(_model(), _data(64), None, TrainConfig(epochs=1, memory_budget="1GB", memory_pack="fp16", **BASE))
    assert calls == [((32, 1, 6, 6), 512 * 2**20, None), ((32, 1, 6, 6), 10**9, "fp16")]


@pytest.mark.parametrize("text,expected", [("2GB", 2 * 10**9), ("512MiB", 512 * 2**20), ("1.5 GiB", 3 * 2**29),
                                           ("100", 100), (4096, 4096), ("64kb", 64000)])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["2XB", "", "-1GB", "GB", 0])
def test_parse_size_rejects(bad):
    with pytest.raises(ValueError, match="expected a positive number"):
        parse_size(bad)


@pytest.mark.parametrize("kw,msg", [({"loss": "l1"}, "unknown loss 'l1'; expected one of: ce, mse, huber"),
                                    ({"lr_schedule": "exp"}, "unknown lr_schedule"),
                                    ({"epochs": 0}, "epochs must be a positive integer"),
                                    ({"log_format": "csv,xml"}, "unknown log_format 'xml'"),
                                    ({"memory_budget": "lots"}, "bad memory size")])
def test_bad_config_values_raise(kw, msg):
    with pytest.raises(ValueError, match=msg):
        TrainConfig(**kw)


def test_config_from_dict_rejects_unknown_keys():
    with pytest.raises(ValueError, match="unknown train config key.*epoch.*known keys"):
        config_from_dict({"epoch": 3})


def test_unknown_optimizer_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown optimizer 'nope'"):
        fit(_model(), _data(32), None, TrainConfig(epochs=1, optimizer="nope", progress=False))


def test_losses_match_torch():
    logits = torch.randn(5, 3)
    y = torch.tensor([0, 2, 1, 1, 0])
    onehot = F.one_hot(y, 3).float()
    torch.testing.assert_close(per_sample_loss("ce", logits, y), F.cross_entropy(logits, y, reduction="none"))
    torch.testing.assert_close(per_sample_loss("mse", logits, y).mean(), F.mse_loss(logits, onehot))
    torch.testing.assert_close(per_sample_loss("huber", logits, y, 0.5).mean(),
                               torch.nn.HuberLoss(delta=0.5)(logits, onehot))


def test_huber_regression_training_reduces_loss():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 4, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 0.0]) + 0.1 * torch.randn(128, generator=g)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 1), torch.nn.Flatten(0))
    res = fit(model, TensorDataset(x, y), TensorDataset(x, y),
              TrainConfig(epochs=5, loss="huber", lr=0.05, batch_size=16, progress=False))
    assert res.history[-1]["eval_loss"] < 0.2 * res.history[0]["train_loss"]
    assert res.eval_accuracy is None  # regression: no accuracy
    assert evaluate(res.model, TensorDataset(x, y), loss="huber")["loss"] == pytest.approx(res.final["eval_loss"])


_WORKER = """
import os, sys, torch
import torch.distributed as dist
from torch.utils.data import TensorDataset
from slimkit.train import TrainConfig, fit
out, compress = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else None)
dist.init_process_group("gloo")  # one group for the three runs below (fit leaves it alone)
rank = dist.get_rank()
g = torch.Generator().manual_seed(0)
x = torch.randn(128, 8, generator=g)
y = (x[:, 0] > 0).long()
for name, epochs, resume in (("straight", 2, False), ("split", 1, False), ("split", 2, True)):
    torch.manual_seed(rank)  # different init per rank: DDP must broadcast rank 0's weights
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Dropout(0.1), torch.nn.Linear(16, 2))
    res = fit(model, TensorDataset(x, y), TensorDataset(x, y),
              TrainConfig(epochs=epochs, batch_size=16, lr=0.1, progress=False, out_dir=os.path.join(out, name),
                          compress=compress, resume=resume))
    torch.save(res.model.state_dict(), os.path.join(out, name, "rank%d.pt" % rank))
    torch.save(res.history, os.path.join(out, name, "history%d.pt" % rank))
dist.destroy_process_group()
"""


def _torchrun(tmp_path, *extra):
    import os
    import subprocess

    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script), str(out), *extra], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def _check_ddp_runs(out):
    straight, split = out / "straight", out / "split"
    for d in (straight, split):  # DDP keeps the replicas identical
        w0, w1 = (torch.load(d / f"rank{r}.pt", weights_only=True) for r in (0, 1))
        for k in w0:
            torch.testing.assert_close(w0[k], w1[k], rtol=0, atol=0)
    a = torch.load(straight / "rank0.pt", weights_only=True)
    b = torch.load(split / "rank0.pt", weights_only=True)
    for k in a:  # 1 epoch + resume == 2 epochs straight, across 2 processes
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    h0 = torch.load(straight / "history0.pt", weights_only=False)
    assert [h["step"] for h in h0] == [4, 8]  # 128 samples / 2 ranks / batch 16 per epoch
    assert h0[-1]["eval_accuracy"] is not None  # rank 0 evaluates
    rows = list(csv.DictReader(open(split / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2]  # only rank 0 writes logs
    state = load_checkpoint(split / "checkpoint.pt")
    assert state["epoch"] == 2 and len(state["ranks"]) == 2
    assert yaml.safe_load(open(split / "config.yaml"))["meta"]["world_size"] == 2
    return rows, state


@pytest.mark.distributed
@pytest.mark.timeout(120)
def test_two_process_gloo_run_and_exact_resume(tmp_path):
    _check_ddp_runs(_torchrun(tmp_path))


@pytest.mark.distributed
@pytest.mark.timeout(120)
def test_two_process_gloo_with_gradient_compression_resumes_exactly(tmp_path):
    rows, state = _check_ddp_runs(_torchrun(tmp_path, "ecq(bits=2)"))
    assert all(int(r["bytes_sent"]) > 0 and int(r["hook_calls"]) > 0 for r in rows)
    # Each rank's error-feedback buffers are stored and given back to that rank on resume.
    assert all("comm" in r["extra_state"] for r in state["ranks"])
