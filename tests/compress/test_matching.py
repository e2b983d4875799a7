"""Function matching's divergence guard: a run that blows up rolls back to finite weights and says so; a run
that does not diverge is exactly the plain loop."""
import copy

import pytest
import torch

from _tiny_resnet import tiny_data, tiny_model
from slimkit.compress.matching import MatchSettings, function_matching


def _x():
    return torch.cat([b[0] for b in tiny_data(n_batches=2)])


def test_divergence_rolls_back_to_finite_weights_and_warns():
    teacher, student = tiny_model().eval(), tiny_model().eval()
    with pytest.warns(UserWarning, match=r"diverged \d+ time\(s\); rolled back"):
        function_matching(student, teacher, _x(), MatchSettings(steps=40, lr=1e6, batch_size=8),
                          torch.Generator().manual_seed(0))
    assert all(torch.isfinite(p).all() for p in student.parameters())


def test_a_stable_run_is_untouched_by_the_guard():
    """Same seed, same steps: the guarded loop gives bit-identical weights to a second run (no rollback fired)
    and issues no warning."""
    teacher, student = tiny_model().eval(), tiny_model().eval()
    twin = copy.deepcopy(student)
    s = MatchSettings(steps=20, lr=1e-2, batch_size=8)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        function_matching(student, teacher, _x(), s, torch.Generator().manual_seed(0))
        function_matching(twin, teacher, _x(), s, torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(student.state_dict().values(), twin.state_dict().values()))
    assert any(not torch.equal(a, b) for a, b in zip(student.state_dict().values(), tiny_model().state_dict().values()))
