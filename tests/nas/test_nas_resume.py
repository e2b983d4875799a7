"""Supernet training interrupted and resumed from its checkpoint ends exactly where an uninterrupted
run ends (weights, DI projectors, sampled architectures, losses), and refuses a checkpoint of other settings."""
import pytest
import torch

from slimkit.nas import DIConfig, SupernetConfig, SupernetTrainer, get_space


def _data(n=48):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


def _trainer(path, di=True, seed=0, init=0, **cfg):
    space = get_space("cell", C=4)
    torch.manual_seed(init)
    supernet = space.supernet(10)
    x, y = _data()
    config = SupernetConfig(steps=6, batch_size=8, lr=0.1, seed=seed, checkpoint_every=2,
                            di=DIConfig(enabled=di, alpha=0.01, samples=16, decay=0.05), **cfg)
    return SupernetTrainer(supernet, x, y, config, checkpoint_path=path)


@pytest.mark.parametrize("di", [True, False])
def test_interrupted_supernet_training_resumes_bit_identical(tmp_path, di):
    full = _trainer(str(tmp_path / "full.pt"), di)
    full.run(progress=False)
    part = _trainer(str(tmp_path / "part.pt"), di)
    part.run(progress=False, stop_after=3)  # "killed" after step 3: the checkpoint is from step 3 (run's own save)
    resumed = _trainer(str(tmp_path / "part.pt"), di, init=7)  # fresh objects, other initial weights
    resumed.run(progress=False)
    assert resumed.step_count == full.step_count == 6
    assert [h["arch"] for h in resumed.history] == [h["arch"] for h in full.history]
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in full.history]
    for (n, a), (_, b) in zip(full.supernet.state_dict().items(), resumed.supernet.state_dict().items()):
        assert torch.equal(a, b), n
    if di:
        assert full.di.projectors and full.di.projectors.keys() == resumed.di.projectors.keys()
        for n in full.di.projectors:
            assert torch.equal(full.di._q(n), resumed.di._q(n))


def test_resume_refuses_a_checkpoint_of_other_settings(tmp_path):
    _trainer(str(tmp_path / "s.pt")).run(progress=False, stop_after=2)
    with pytest.raises(ValueError):
        _trainer(str(tmp_path / "s.pt"), lr_schedule="none").run(progress=False)
