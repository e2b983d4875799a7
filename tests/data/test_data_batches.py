"""Every data form compress(..., data=) accepts gives the same (X, Y); anything else names the forms."""
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from slimkit.data import ArrayDataset
from slimkit.data.batches import FORMS, as_batches, as_tensors
from slimkit.errors import DataError

X = torch.randn(10, 3, 4, 4, generator=torch.Generator().manual_seed(0))
Y = torch.arange(10) % 3

FORMS_OK = {
    "TensorDataset": lambda: TensorDataset(X, Y),
    "ArrayDataset": lambda: ArrayDataset(X, Y),
    "DataLoader": lambda: DataLoader(TensorDataset(X, Y), batch_size=3),
    "pair": lambda: (X, Y),
    "list of batches": lambda: [(X[:4], Y[:4]), (X[4:], Y[4:])],
    "generator of samples": lambda: ((X[i], Y[i]) for i in range(10)),
    "list of samples, int labels": lambda: [(X[i], int(Y[i])) for i in range(10)],
}


@pytest.mark.parametrize("form", sorted(FORMS_OK))
def test_every_form_gives_the_same_tensors(form):
    x, y = as_tensors(FORMS_OK[form]())
    assert torch.equal(x, X) and torch.equal(y, Y)


def test_dataset_of_single_samples_is_batched():
    batches = as_batches(TensorDataset(X, Y), batch_size=4)
    assert [len(b[1]) for b in batches] == [4, 4, 2] and batches[0][0].shape == (4, 3, 4, 4)


def test_unlabelled_images():
    x, y = as_tensors([X[:5], X[5:]])
    assert torch.equal(x, X) and y is None


@pytest.mark.parametrize("bad", [5, "images.npz", X, {"x": X}, [("a", 1)]])
def test_other_forms_get_one_line_naming_the_forms(bad):
    with pytest.raises(DataError) as err:
        as_batches(bad)
    assert FORMS in str(err.value) and "\n" not in str(err.value)


def test_compress_accepts_a_tensor_dataset():
    from slimkit.compress import compress
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(4, 3)).eval()
    res = compress(model, X[:1], "bnrecal(passes=1)", data=TensorDataset(X, Y), eval_data=TensorDataset(X, Y),
                   progress=False, latency_batches=())
    assert res.report.after.accuracy is not None
