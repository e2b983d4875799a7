"""Opt-in checks on the real files in ../shared/data (skipped where they are absent, e.g. a fresh clone)."""
import os

import pytest
import torch

from slimkit.data import CIFAR10_NORMALIZATION, load_dataset

SHARED = os.environ.get("SLIMKIT_SHARED_DATA", "/work/shared/data")
CIFAR, MNIST = os.path.join(SHARED, "cifar10_train.npz"), os.path.join(SHARED, "mnist.npz")


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isfile(CIFAR), reason="needs ../shared/data/cifar10_train.npz")
def test_real_cifar10_npz_balanced_holdout():
    s = load_dataset(f"cifar10:{CIFAR}")
    assert (len(s.train), len(s.test), s.input_size) == (45000, 5000, (3, 32, 32))
    assert torch.bincount(s.test.y, minlength=10).tolist() == [500] * 10
    assert s.normalization == CIFAR10_NORMALIZATION and s.train.x.dtype == torch.uint8
    last = load_dataset(f"cifar10:{CIFAR}?holdout=last")
    assert len(last.test) == 5000 and "last 5000 samples" in last.description


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isfile(MNIST), reason="needs ../shared/data/mnist.npz")
def test_real_mnist_and_pixel_mnist():
    s = load_dataset(f"mnist:{MNIST}")
    assert (len(s.train), len(s.test), s.input_size) == (60000, 10000, (1, 28, 28))
    xs, _ = s.test.tensors()
    # The usual train-set statistics are close to, but not exactly, the test set's own.
    assert abs(float(xs.mean())) < 0.05 and abs(float(xs.std()) - 1.0) < 0.05
    p = load_dataset(f"pixel-mnist:{MNIST}?permute=true")
    assert p.input_size == (784, 1) and p.train[0][0].shape == (784, 1)
