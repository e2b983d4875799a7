"""load_dataset on the embedded digits set, spec parsing, Normalization and the registry."""
import dataclasses

import pytest
import torch

from slimkit.data import (ArrayDataset, DatasetSplits, Normalization, balanced_holdout, get_dataset_info,
                          last_holdout, list_datasets, load_dataset, read_digits)

SCHEMES = ["adding", "cifar10", "copying", "digits", "folder", "mnist", "npz", "pixel-mnist"]


def test_registry_lists_every_scheme():
    assert list_datasets() == SCHEMES
    assert get_dataset_info("cifar10").form == "cifar10:PATH"
    assert get_dataset_info("pixel-mnist").options == ("permute", "drop_bad")


def test_unknown_scheme_lists_valid_forms():
    with pytest.raises(ValueError) as e:
        load_dataset("imagenet:/x")
    for form in ("digits", "cifar10:PATH", "mnist:PATH", "npz:PATH", "folder:PATH", "adding:T", "copying:T",
                 "pixel-mnist:PATH"):
        assert form in str(e.value)


@pytest.mark.parametrize("spec, match", [("cifar10", "needs an argument"), ("digits:x", "takes no ':' argument"),
                                         ("digits?bogus=1", "unknown option"), ("digits?resize", "key=value"),
                                         ("digits?holdout=random", "holdout must be"), ("", "non-empty string"),
                                         ("adding:abc", "positive integer")])
def test_bad_specs_say_what_was_expected(spec, match):
    with pytest.raises(ValueError, match=match):
        load_dataset(spec)


def test_digits_default_split_is_balanced_seeded_and_recorded():
    x, y = read_digits()
    assert x.shape == (1797, 8, 8) and y.shape == (1797,) and x.max() == 16
    s = load_dataset("digits")
    assert isinstance(s, DatasetSplits) and (len(s.train), len(s.test)) == (1438, 359)
    assert (s.num_classes, s.input_size) == (10, (1, 8, 8))
    per_class = torch.bincount(torch.as_tensor(y).long(), minlength=10)
    expected = torch.floor(per_class.double() * 0.2 + 0.5).long()
    assert torch.bincount(s.test.y, minlength=10).tolist() == expected.tolist()
    assert "class-balanced" in s.description and "seed 0" in s.description and "UCI" in s.description
    assert s.normalization.scale == 1 / 16 and s.spec == "digits" and s.meta["seed"] == 0
    # Same seed: same split and values; another seed: another split.
    again = load_dataset("digits")
    assert torch.equal(again.test.x, s.test.x) and torch.equal(again.test.y, s.test.y)
    other = load_dataset("digits", seed=1)
    assert not torch.equal(other.test.x, s.test.x) and len(other.test) == 359
    # Train and test are disjoint and cover the set exactly once.
    tr, te = balanced_holdout(y, 0.2, 0)
    assert sorted(tr.tolist() + te.tolist()) == list(range(1797))


def test_digits_sample_is_explicitly_normalised():
    s = load_dataset("digits")
    x0, y0 = s.train[0]
    assert x0.dtype == torch.float32 and x0.shape == (1, 8, 8) and y0.dtype == torch.int64
    raw = s.train.x[0].float()  # raw uint8 pixels are kept; normalisation is applied on read
    torch.testing.assert_close(x0, (raw / 16 - s.normalization.mean[0]) / s.normalization.std[0], rtol=1e-5, atol=1e-5)
    xs, _ = s.train.tensors()
    torch.testing.assert_close(xs.mean(), torch.tensor(0.0), rtol=0, atol=1e-3)  # fitted on train, rounded to 1e-4
    torch.testing.assert_close(xs.std(), torch.tensor(1.0), rtol=0, atol=1e-3)


def test_digits_resize_to_lenet_size():
    s = load_dataset("digits?resize=28")
    assert s.input_size == (1, 28, 28) and s.train[3][0].shape == (1, 28, 28)
    assert "resized to 28x28" in s.description
    assert load_dataset("digits", resize=28).input_size == (1, 28, 28)  # keyword form too


def test_spec_options_and_keywords():
    s = load_dataset("digits?test_fraction=0.5&seed=3")
    per_class = torch.bincount(torch.as_tensor(read_digits()[1]).long(), minlength=10)
    half = torch.floor(per_class.double() * 0.5 + 0.5).long()
    assert torch.bincount(s.test.y, minlength=10).tolist() == half.tolist()
    assert (len(s.train) + len(s.test), s.meta["seed"]) == (1797, 3)
    k = load_dataset("digits?seed=3", seed=4)  # keywords win over spec options
    assert k.meta["seed"] == 4
    last = load_dataset("digits", holdout="last", test_fraction=0.1)
    assert len(last.test) == 180 and "last 180 samples" in last.description


def test_to_dict_records_everything_but_tensors():
    d = load_dataset("digits").to_dict()
    assert d["spec"] == "digits" and d["train_size"] == 1438 and d["test_size"] == 359
    assert set(d["normalization"]) == {"mean", "std", "scale"} and d["input_size"] == [1, 8, 8]


def test_normalization_roundtrip_and_validation():
    n = Normalization((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 1 / 255)
    x = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    torch.testing.assert_close(n.invert(n.apply(x)), x.float(), rtol=1e-5, atol=1e-4)  # lossless up to float32
    assert Normalization.from_dict(n.to_dict()) == n
    seq = torch.rand(5, 7, 3)  # channels last, as in sequences
    torch.testing.assert_close(n.apply(seq, channel_dim=-1)[..., 1], (seq[..., 1] / 255 - 0.456) / 0.224)
    with pytest.raises(ValueError, match="one mean per std"):
        Normalization((0.0, 0.0), (1.0,))
    with pytest.raises(ValueError, match="std must be > 0"):
        Normalization((0.0,), (0.0,))
    with pytest.raises(ValueError, match="unknown Normalization fields"):
        Normalization.from_dict({"mean": [0], "std": [1], "scale": 1, "gamma": 2})


def test_array_dataset_batch_fetch_matches_single_reads():
    x = torch.randint(0, 256, (10, 1, 3, 3), dtype=torch.uint8)
    ds = ArrayDataset(x, torch.arange(10), Normalization((0.5,), (0.25,), 1 / 255))
    batch = ds.__getitems__([4, 1, 7])
    for (xb, yb), i in zip(batch, [4, 1, 7]):
        torch.testing.assert_close(xb, ds[i][0], rtol=0, atol=0)
        assert int(yb) == i
    with pytest.raises(ValueError, match="differ in length"):
        ArrayDataset(x, torch.arange(3))


def test_holdout_helpers_validate_fraction():
    assert [t.tolist() for t in last_holdout(10, 0.3)] == [list(range(7)), [7, 8, 9]]
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match="test_fraction"):
            balanced_holdout([0, 1, 0, 1], bad, 0)


def test_splits_work_with_dataclasses_replace():
    s = load_dataset("digits")
    s2 = dataclasses.replace(s, description="changed")
    assert s2.train is s.train and s2.description == "changed"
