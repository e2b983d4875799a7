"""Format readers on tiny files written here in the official formats (no /work/shared needed)."""
import gzip
import os
import pickle

import matplotlib

matplotlib.use("Agg")
import matplotlib.image as mpimg  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from slimkit.data import (CIFAR10_NORMALIZATION, MNIST_NORMALIZATION, balanced_holdout, load_dataset,  # noqa: E402
                          read_cifar10_batches, read_image_folder, read_mnist, read_mnist_idx, read_npz)


def write_idx(path, array, gz=False):
    # IDX: two zero bytes, type code 0x08 (ubyte), number of dims, big-endian int32 sizes, then the data.
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    opener = gzip.open if gz else open
    with opener(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def write_mnist_dir(root, n_train=20, n_test=10, gz=False):
    rng = np.random.default_rng(0)
    arrays = {"train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
              "train-labels-idx1-ubyte": np.arange(n_train) % 10,
              "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
              "t10k-labels-idx1-ubyte": (np.arange(n_test) + 3) % 10}
    for name, arr in arrays.items():
        write_idx(os.path.join(root, name + (".gz" if gz else "")), arr, gz)
    return {k: v.astype(np.uint8) for k, v in arrays.items()}


def write_cifar_batches(root, per_batch=6):
    rng = np.random.default_rng(1)
    images = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        x = rng.integers(0, 256, (per_batch, 3, 32, 32), dtype=np.uint8)  # CHW, as the official rows are
        labels = list(rng.integers(0, 10, per_batch))
        with open(os.path.join(root, name), "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"labels": labels, b"data": x.reshape(per_batch, 3072),
                         b"filenames": [b"f.png"] * per_batch}, f)
        images[name] = (x, labels)
    return images


@pytest.mark.parametrize("gz", [False, True])
def test_read_mnist_idx_roundtrips_official_magic(tmp_path, gz):
    written = write_mnist_dir(tmp_path, gz=gz)
    x = read_mnist_idx(str(tmp_path / ("train-images-idx3-ubyte" + (".gz" if gz else ""))))
    assert x.shape == (20, 28, 28) and x.dtype == np.uint8
    np.testing.assert_array_equal(x, written["train-images-idx3-ubyte"])
    head = open(tmp_path / "train-labels-idx1-ubyte", "rb").read(4) if not gz else None
    if head is not None:
        assert int.from_bytes(head, "big") == 2049  # the official labels magic number
    x_tr, y_tr, x_te, y_te = read_mnist(str(tmp_path))
    assert (x_tr.shape, y_tr.shape, x_te.shape, y_te.shape) == ((20, 28, 28), (20,), (10, 28, 28), (10,))
    np.testing.assert_array_equal(y_te, written["t10k-labels-idx1-ubyte"])


def test_read_mnist_idx_rejects_bad_files(tmp_path):
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x01\x02\x03\x04rest")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_mnist_idx(str(bad))
    short = tmp_path / "short"
    short.write_bytes(bytes([0, 0, 8, 1]) + (5).to_bytes(4, "big") + b"\x00\x01")
    with pytest.raises(ValueError, match="header says"):
        read_mnist_idx(str(short))


def test_mnist_spec_from_idx_dir_and_npz(tmp_path):
    written = write_mnist_dir(tmp_path)
    s = load_dataset(f"mnist:{tmp_path}")
    assert (len(s.train), len(s.test), s.num_classes, s.input_size) == (20, 10, 10, (1, 28, 28))
    assert s.normalization == MNIST_NORMALIZATION and "official test split" in s.description
    x0, y0 = s.test[0]
    raw = torch.from_numpy(written["t10k-images-idx3-ubyte"][0]).float()
    torch.testing.assert_close(x0[0], (raw / 255 - 0.1307) / 0.3081, rtol=1e-5, atol=1e-5)
    assert int(y0) == 3
    npz = tmp_path / "mnist.npz"
    np.savez(npz, x_train=written["train-images-idx3-ubyte"], y_train=written["train-labels-idx1-ubyte"],
             x_test=written["t10k-images-idx3-ubyte"], y_test=written["t10k-labels-idx1-ubyte"])
    s2 = load_dataset(f"mnist:{npz}")
    torch.testing.assert_close(s2.train.tensors()[0], s.train.tensors()[0], rtol=0, atol=0)


def test_read_cifar10_batches_official_layout(tmp_path):
    written = write_cifar_batches(tmp_path)
    x_tr, y_tr, x_te, y_te = read_cifar10_batches(str(tmp_path))
    assert x_tr.shape == (30, 32, 32, 3) and x_te.shape == (6, 32, 32, 3) and x_tr.dtype == np.uint8
    np.testing.assert_array_equal(x_tr[6:12], written["data_batch_2"][0].transpose(0, 2, 3, 1))  # CHW rows -> HWC
    np.testing.assert_array_equal(y_te, written["test_batch"][1])
    s = load_dataset(f"cifar10:{tmp_path}")
    assert (len(s.train), len(s.test), s.input_size) == (30, 6, (3, 32, 32))
    assert s.normalization == CIFAR10_NORMALIZATION
    mean, std = torch.tensor([0.485, 0.456, 0.406])[:, None, None], torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    expected = (torch.from_numpy(written["test_batch"][0][2]).float() / 255 - mean) / std
    torch.testing.assert_close(s.test[2][0], expected, rtol=1e-5, atol=1e-5)


def test_read_cifar10_batches_names_missing_files(tmp_path):
    (tmp_path / "data_batch_1").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="data_batch_2"):
        read_cifar10_batches(str(tmp_path))


def test_cifar10_npz_holdouts(tmp_path):
    rng = np.random.default_rng(2)
    x = rng.integers(0, 256, (200, 32, 32, 3), dtype=np.uint8)
    y = np.repeat(np.arange(10), 20).astype(np.uint8)
    np.savez(tmp_path / "c.npz", x=x, y=y)
    s = load_dataset(f"cifar10:{tmp_path / 'c.npz'}")
    assert (len(s.train), len(s.test)) == (180, 20)
    assert torch.bincount(s.test.y, minlength=10).tolist() == [2] * 10
    assert "class-balanced" in s.description and "seed 0" in s.description
    last = load_dataset(f"cifar10:{tmp_path / 'c.npz'}?holdout=last")
    assert last.test.y.tolist() == [9] * 20 and "last 20 samples" in last.description
    torch.testing.assert_close(last.test.x, torch.from_numpy(x[180:]).permute(0, 3, 1, 2), rtol=0, atol=0)
    with pytest.raises(ValueError, match="no official test split"):
        load_dataset(f"cifar10:{tmp_path / 'c.npz'}", holdout="official")


@pytest.mark.parametrize("layout", ["hwc", "chw", "nhw"])
def test_npz_layouts_and_fitted_normalization(tmp_path, layout):
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (40, 3, 5, 5), dtype=np.uint8)
    y = np.arange(40) % 4
    stored = {"hwc": x.transpose(0, 2, 3, 1), "chw": x, "nhw": x[:, 0]}[layout]
    np.savez(tmp_path / "d.npz", x=stored, y=y)
    assert set(read_npz(str(tmp_path / "d.npz"), ("x", "y"))) == {"x", "y"}
    s = load_dataset(f"npz:{tmp_path / 'd.npz'}", test_fraction=0.25)
    channels = 1 if layout == "nhw" else 3
    # 10 per class x 0.25 = 2.5, rounded half up: 3 per class held out.
    assert s.input_size == (channels, 5, 5) and (len(s.train), len(s.test)) == (28, 12) and s.num_classes == 4
    xt, _ = s.train.tensors()
    # Mean/std are fitted on the train split (rounded to 4 decimals) and recorded, so the train split is ~standard.
    torch.testing.assert_close(xt.mean(dim=(0, 2, 3)), torch.zeros(channels), rtol=0, atol=2e-3)
    torch.testing.assert_close(xt.std(dim=(0, 2, 3)), torch.ones(channels), rtol=0, atol=2e-3)
    train_idx, _ = balanced_holdout(y, 0.25, 0)
    expected = torch.from_numpy(x[train_idx.numpy()])
    torch.testing.assert_close(s.train.x, expected[:, :1] if layout == "nhw" else expected, rtol=0, atol=0)


def test_npz_float_and_ambiguous_layout(tmp_path):
    x = np.random.default_rng(4).random((12, 3, 4, 3)).astype(np.float32)
    np.savez(tmp_path / "amb.npz", x=x, y=np.arange(12) % 2)
    with pytest.raises(ValueError, match="cannot tell HWC from CHW"):
        load_dataset(f"npz:{tmp_path / 'amb.npz'}")
    s = load_dataset(f"npz:{tmp_path / 'amb.npz'}?layout=chw")
    assert s.input_size == (3, 4, 3) and s.normalization.scale == 1.0  # float data is not rescaled
    with pytest.raises(ValueError, match="needs arrays x and y"):
        np.savez(tmp_path / "bad.npz", a=x)
        load_dataset(f"npz:{tmp_path / 'bad.npz'}")


def write_png_tree(root, classes=("cat", "dog"), per_class=5, rgb=True):
    rng = np.random.default_rng(5)
    written = {}
    for c in classes:
        os.makedirs(root / c, exist_ok=True)
        for i in range(per_class):
            img = rng.integers(0, 256, (6, 7, 3) if rgb else (6, 7), dtype=np.uint8)
            kw = {} if rgb else {"cmap": "gray", "vmin": 0, "vmax": 255}
            mpimg.imsave(root / c / f"{i:02d}.png", img, **kw)
            written[(c, i)] = img
    return written


def test_read_image_folder_png_roundtrip(tmp_path):
    written = write_png_tree(tmp_path)
    (tmp_path / "notes.txt").write_text("ignored: not a class directory")
    x, y, classes = read_image_folder(str(tmp_path))
    assert classes == ["cat", "dog"] and x.shape == (10, 6, 7, 3) and x.dtype == np.uint8
    assert y.tolist() == [0] * 5 + [1] * 5
    np.testing.assert_array_equal(x[7], written[("dog", 2)])  # PNG is lossless
    s = load_dataset(f"folder:{tmp_path}?test_fraction=0.4")
    assert (len(s.train), len(s.test), s.num_classes, s.input_size) == (6, 4, 2, (3, 6, 7))
    assert s.meta["classes"] == ["cat", "dog"] and torch.bincount(s.test.y).tolist() == [2, 2]


def test_image_folder_train_test_subdirs_and_errors(tmp_path):
    write_png_tree(tmp_path / "train", per_class=3)
    write_png_tree(tmp_path / "test", per_class=2)
    s = load_dataset(f"folder:{tmp_path}")
    assert (len(s.train), len(s.test)) == (6, 4) and "official" in s.description
    with pytest.raises(ValueError, match="no class subdirectories"):
        read_image_folder(str(tmp_path / "train" / "cat"))
    mpimg.imsave(tmp_path / "train" / "cat" / "big.png", np.zeros((9, 9, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="differ in size"):
        read_image_folder(str(tmp_path / "train"))
