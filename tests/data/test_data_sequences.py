"""Adding problem, copying memory and pixel-by-pixel MNIST: shapes, dtypes, exact targets, seeding."""
import math

import numpy as np
import pytest
import torch

from slimkit.data import AddingProblem, CopyingMemory, load_dataset, pixel_sequences


def test_adding_problem_target_is_sum_of_marked_values():
    ds = AddingProblem(seq_len=30, num_samples=200, seed=0)
    assert len(ds) == 200 and ds.x.shape == (200, 30, 2) and ds.y.shape == (200, 1)
    assert ds.x.dtype == torch.float32 and ds.y.dtype == torch.float32
    values, markers = ds.x[..., 0], ds.x[..., 1]
    assert ((values >= 0) & (values < 1)).all()
    assert markers.sum(1).tolist() == [2.0] * 200  # exactly two markers per sequence
    assert set(markers.unique().tolist()) == {0.0, 1.0}
    first, second = markers[:, :15].argmax(1), markers[:, 15:].argmax(1) + 15
    assert (markers[:, :15].sum(1) == 1).all() and (markers[:, 15:].sum(1) == 1).all()  # one per half
    rows = torch.arange(200)
    torch.testing.assert_close(ds.y[:, 0], values[rows, first] + values[rows, second], rtol=0, atol=0)
    x5, y5 = ds[5]
    assert x5.shape == (30, 2) and y5.shape == (1,)


def test_adding_problem_is_seeded():
    a, b, c = AddingProblem(20, 50, 7), AddingProblem(20, 50, 7), AddingProblem(20, 50, 8)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y) and not torch.equal(a.x, c.x)
    with pytest.raises(ValueError, match="seq_len >= 2"):
        AddingProblem(1, 10)


def test_copying_targets_equal_input_symbols():
    ds = CopyingMemory(delay=15, num_samples=100, seed=0)
    length = 15 + 20
    assert ds.ids.shape == (100, length) and ds.y.shape == (100, length) and ds.y.dtype == torch.int64
    symbols = ds.ids[:, :10]
    assert symbols.min() >= 1 and symbols.max() <= 8  # alphabet of 8
    assert (ds.ids[:, 10:10 + 14] == 0).all()  # T - 1 blanks
    assert (ds.ids[:, 10 + 14] == 9).all()  # delimiter
    assert (ds.ids[:, 25:] == 0).all()
    assert (ds.y[:, :25] == 0).all()  # T + 10 blanks in the target
    assert torch.equal(ds.y[:, 25:], symbols)  # then the symbols, copied
    x, y = ds[3]
    assert x.shape == (length, 10) and x.dtype == torch.float32 and torch.equal(x.argmax(1), ds.ids[3])
    assert torch.equal(y, ds.y[3])
    assert torch.equal(CopyingMemory(15, 100, 0).ids, ds.ids) and not torch.equal(CopyingMemory(15, 100, 1).ids, ds.ids)
    ids_only = CopyingMemory(15, 4, 0, one_hot=False)
    assert ids_only[0][0].shape == (length,) and ids_only[0][0].dtype == torch.int64


def test_copying_and_adding_specs():
    a = load_dataset("adding:40?train_size=64&test_size=16", seed=2)
    assert (len(a.train), len(a.test), a.input_size, a.num_classes, a.normalization) == (64, 16, (40, 2), None, None)
    assert a.train.seed == 4 and a.test.seed == 5  # train/test streams never share a seed
    c = load_dataset("copying:5?train_size=8&test_size=4")
    assert c.input_size == (25, 10) and c.num_classes == 9 and len(c.train) == 8
    baseline = 10 * math.log(8) / 25  # memoryless cross-entropy, as in Arjovsky et al.
    assert f"{baseline:.4f}" == "0.8318"
    with pytest.raises(ValueError, match="generates its own test set"):
        load_dataset("adding:10", holdout="last")


def test_pixel_sequences_raster_and_permuted():
    images = torch.randint(0, 256, (6, 28, 28), dtype=torch.uint8)
    labels = torch.arange(6)
    ds = pixel_sequences(images, labels)
    x, y = ds[2]
    assert x.shape == (784, 1) and x.dtype == torch.float32 and int(y) == 2
    torch.testing.assert_close(x[:, 0], images[2].flatten().float() / 255, rtol=0, atol=1e-7)
    perm_ds = pixel_sequences(images, labels, permute=True, seed=3)
    perm = torch.randperm(784, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(perm_ds[2][0][:, 0], x[perm, 0], rtol=0, atol=0)
    assert not torch.equal(pixel_sequences(images, labels, permute=True, seed=4)[2][0], perm_ds[2][0])
    with pytest.raises(ValueError, match=r"images \[N, H, W\]"):
        pixel_sequences(images.reshape(6, -1), labels)


def test_pixel_mnist_spec(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "m.npz", x_train=rng.integers(0, 256, (12, 28, 28), dtype=np.uint8),
             y_train=np.arange(12) % 10, x_test=rng.integers(0, 256, (4, 28, 28), dtype=np.uint8),
             y_test=np.arange(4))
    s = load_dataset(f"pixel-mnist:{tmp_path / 'm.npz'}?permute=true", seed=1)
    assert (len(s.train), len(s.test), s.input_size, s.num_classes) == (12, 4, (784, 1), 10)
    assert s.meta["permute"] is True and "permuted" in s.description
    # The same permutation for train and test: the test image's pixels in permuted order.
    perm = torch.randperm(784, generator=torch.Generator().manual_seed(1))
    raw = torch.from_numpy(np.load(tmp_path / "m.npz")["x_test"][1]).flatten().float() / 255
    torch.testing.assert_close(s.test[1][0][:, 0], raw[perm], rtol=0, atol=1e-7)
