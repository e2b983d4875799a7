"""NASWOT: the score is log |K| of the ReLU-code agreement matrix, checked by hand; duplicated codes give -inf;
the scored network is left as it was."""
import math

import numpy as np
import pytest
import torch

from slimkit.nas import get_space
from slimkit.nas.ranking import kendall_tau
from slimkit.nas.zero_cost import naswot


def _identity_relu():
    lin = torch.nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.eye(2))
    return torch.nn.Sequential(lin, torch.nn.ReLU())


def test_naswot_by_hand():
    """Codes of (1, 1), (1, -1), (-1, 1) are 11, 10, 01: agreements K = [[2, 1, 1], [1, 2, 0], [1, 0, 2]],
    det 4; a second ReLU on the same units doubles K (det x 8 for 3 images)."""
    x = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0]])
    assert naswot(_identity_relu(), x) == pytest.approx(math.log(4.0), abs=1e-12)
    twice = torch.nn.Sequential(_identity_relu(), torch.nn.ReLU())  # the second sees the same positive units
    assert naswot(twice, x) == pytest.approx(math.log(4.0 * 8), abs=1e-12)


def test_naswot_duplicate_codes_score_minus_inf_and_ties_rank_as_ties():
    x = torch.tensor([[1.0, 1.0], [2.0, 3.0], [-1.0, 1.0]])  # images 0 and 1: the same code
    assert naswot(_identity_relu(), x) == float("-inf")
    assert kendall_tau([float("-inf"), float("-inf"), 1.0], [1.0, 2.0, 3.0]) == pytest.approx(2 / math.sqrt(6))


def test_naswot_leaves_the_network_unchanged_and_ranks_nb201_cells():
    """On an NB201 network (C=4, N=1) the copy's BatchNorm runs on batch statistics, the original's buffers
    and mode stay; a cell with convolutions scores above the all-'none' cell (one code for every image)."""
    space = get_space("nb201", C=4, N=1)
    torch.manual_seed(0)
    conv = space.build(space.arch(["nor_conv_3x3"] * 6)).eval()
    empty = space.build(space.arch(["none"] * 6)).eval()
    before = {k: v.clone() for k, v in conv.state_dict().items()}
    x = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    s_conv, s_empty = naswot(conv, x), naswot(empty, x)
    assert all(torch.equal(v, conv.state_dict()[k]) for k, v in before.items()) and not conv.training
    assert np.isfinite(s_conv) and s_conv > s_empty
    with pytest.raises(ValueError, match="nn.ReLU"):
        naswot(torch.nn.Linear(2, 2), x[:, 0, 0, :2])
    with pytest.raises(ValueError, match=">= 2 inputs"):
        naswot(_identity_relu(), torch.ones(1, 2))
