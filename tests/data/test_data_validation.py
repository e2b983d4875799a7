"""Data validation at load and safe reading: bad files raise DataError naming the file and first bad index;
planted pickle payloads never run; ?drop_bad=true drops bad samples and reports them."""
import gzip
import os
import pickle

import numpy as np
import pytest

from slimkit.data import load_dataset
from slimkit.data.readers import read_mnist_idx
from slimkit.errors import DataError

N = 60  # 6 per class, 10 classes


def _arrays(seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (N, 6, 6), dtype=np.uint8), np.arange(N) % 10


def _npz(tmp_path, name="d.npz", **arrays):
    path = tmp_path / name
    np.savez(path, **arrays)
    return str(path)


class _Payload:
    """Unpickling this calls exec: it writes the marker file if anything unpickles it unsafely."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


def test_nan_and_inf_pixels_name_the_file_and_first_index(tmp_path):
    x, y = _arrays()
    x = x.astype(np.float32)
    x[7, 0, 1], x[9, 2, 2] = np.nan, np.inf
    path = _npz(tmp_path, x=x, y=y)
    with pytest.raises(DataError, match=r"d\.npz: sample 7 is bad \(non-finite value \(NaN/Inf\) in x\); 2 bad "):
        load_dataset(f"npz:{path}")
    splits = load_dataset(f"npz:{path}?drop_bad=true")
    assert len(splits.train) + len(splits.test) == N - 2
    assert splits.meta["dropped"][0]["count"] == 2 and splits.meta["dropped"][0]["first_index"] == 7
    assert "dropped 2 bad samples of" in splits.description and "first at index 7" in splits.description
    assert all(np.isfinite(v) for v in splits.normalization.mean + splits.normalization.std)


def test_labels_out_of_range(tmp_path):
    x, y = _arrays()
    y = y.copy()
    y[[3, 11, 40]] = 57  # would silently build a 58-class head
    path = _npz(tmp_path, x=x, y=y)
    with pytest.raises(DataError, match=r"label 57 appears but classes 10, 11, .* have no samples \(47 missing\)"):
        load_dataset(f"npz:{path}")
    with pytest.raises(DataError, match=r"sample 3 is bad \(label >= num_classes=10, label 57\); 3 bad"):
        load_dataset(f"npz:{path}?num_classes=10")
    splits = load_dataset(f"npz:{path}?num_classes=10&drop_bad=true")
    assert splits.num_classes == 10 and len(splits.train) + len(splits.test) == N - 3
    y[[3, 11, 40]], y[5] = 1, -1
    with pytest.raises(DataError, match=r"sample 5 is bad \(negative label, label -1\)"):
        load_dataset(f"npz:{_npz(tmp_path, 'neg.npz', x=x, y=y)}?num_classes=10")


def test_known_class_count_is_enforced_for_fixed_sets(tmp_path):
    x, y = _arrays()
    y = y.copy()
    y[12] = 10
    np.savez(tmp_path / "c.npz", x=np.zeros((N, 32, 32, 3), np.uint8), y=y)
    with pytest.raises(DataError, match=r"c\.npz: sample 12 is bad \(label >= num_classes=10, label 10\)"):
        load_dataset(f"cifar10:{tmp_path / 'c.npz'}")


@pytest.mark.parametrize("y,msg", [
    (np.array([str(v) for v in range(N)]), r"have dtype <U2 \(strings\); expected integer class ids"),
    (np.arange(N) % 10 + 0.5, r"label 0\.5 at index 0 is not"),
    (np.arange(N // 2) % 10, r"x has 60 samples but y has 30 labels"),
    (np.zeros((N, 2)), r"must be one class id per sample \(shape \[N\]\), got shape \(60, 2\)"),
])
def test_bad_label_arrays(tmp_path, y, msg):
    x, _ = _arrays()
    with pytest.raises(DataError, match=msg):
        load_dataset(f"npz:{_npz(tmp_path, x=x, y=y)}")


def test_float_labels_that_are_whole_numbers_are_accepted(tmp_path):
    x, y = _arrays()
    splits = load_dataset(f"npz:{_npz(tmp_path, x=x, y=y.astype(np.float32))}")
    assert splits.num_classes == 10 and splits.train.y.dtype.is_floating_point is False


def test_empty_set_and_empty_split(tmp_path):
    with pytest.raises(DataError, match="holds no samples"):
        load_dataset(f"npz:{_npz(tmp_path, x=np.zeros((0, 6, 6), np.uint8), y=np.zeros(0, np.int64))}")
    x, y = _arrays()
    three = _npz(tmp_path, "three.npz", x=x[:30], y=np.arange(30) % 10)  # 3 per class
    with pytest.raises(DataError, match=r"held-out split is empty .*test_fraction=0\.1 rounds to 0 held out"):
        load_dataset(f"npz:{three}?test_fraction=0.1")
    assert len(load_dataset(f"npz:{three}?test_fraction=0.34").test) == 10


def test_corrupt_npz_and_pickled_object_arrays(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"PK\x03\x04" + b"garbage" * 20)
    with pytest.raises(DataError, match=r"bad\.npz is not a readable \.npz file"):
        load_dataset(f"npz:{bad}")
    marker = tmp_path / "marker"
    x, _ = _arrays()
    y = np.empty(N, dtype=object)
    y[:] = [_Payload(marker)] * N
    path = _npz(tmp_path, "evil.npz", x=x, y=y)  # np.savez pickles object arrays
    with pytest.raises(DataError, match="holds pickled object arrays; slimkit reads only plain numeric arrays"):
        load_dataset(f"npz:{path}")
    assert not marker.exists()


def _cifar_dir(tmp_path, protocol, payload_in=None, marker=None):
    root = tmp_path / f"cifar-p{protocol}"
    root.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"batch_label": b"training batch", b"labels": [int(v) for v in rng.integers(0, 10, 20)],
                 b"data": rng.integers(0, 256, (20, 3072), dtype=np.uint8), b"filenames": [b"a.png"] * 20}
        if name == payload_in:
            batch[b"labels"] = _Payload(marker)
        with open(root / name, "wb") as f:
            pickle.dump(batch, f, protocol=protocol)
    return root


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_cifar_python_batches_load_through_the_restricted_unpickler(tmp_path, protocol):
    splits = load_dataset(f"cifar10:{_cifar_dir(tmp_path, protocol)}")
    assert len(splits.train) == 100 and len(splits.test) == 20 and splits.input_size == (3, 32, 32)


def test_planted_payload_in_a_cifar_batch_never_runs(tmp_path):
    marker = tmp_path / "marker"
    root = _cifar_dir(tmp_path, 2, payload_in="data_batch_3", marker=marker)
    with open(root / "data_batch_3", "rb") as f:  # the payload is live: the full unpickler runs it
        pickle.load(f)
    assert marker.exists()
    marker.unlink()
    with pytest.raises(DataError, match=r"data_batch_3 is not a plain-data pickle; refused to read it "
                                        r"\(UnpicklingError: global (__builtin__|builtins)\.exec is not allowed"):
        load_dataset(f"cifar10:{root}")
    assert not marker.exists()


def test_corrupt_png_in_folder_is_named_or_dropped(tmp_path):
    from PIL import Image

    for c in ("cat", "dog"):
        os.makedirs(tmp_path / c)
        for i in range(5):
            Image.fromarray(np.full((6, 6), 40 * i, np.uint8)).save(tmp_path / c / f"{i}.png")
    (tmp_path / "dog" / "9-broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(DataError, match=r"cannot read image .*dog/9-broken\.png.*pass \?drop_bad=true"):
        load_dataset(f"folder:{tmp_path}")
    splits = load_dataset(f"folder:{tmp_path}?drop_bad=true")
    assert len(splits.train) + len(splits.test) == 10
    assert splits.meta["dropped"][0]["reasons"] == {"unreadable image": 1}
    assert "9-broken.png" in splits.description


def test_truncated_gzip_idx_is_a_data_error(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(b"\x00\x00\x08\x03" + b"\x00" * 100)[:-9])
    with pytest.raises(DataError, match="corrupt gzip file"):
        read_mnist_idx(str(path))
