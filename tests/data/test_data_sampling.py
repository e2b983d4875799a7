"""Few-shot sampling (exactly K per class, seeded) and make_loaders."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader, TensorDataset

from slimkit.data import (DatasetSplits, FewShotSampler, dataset_labels, few_shot_indices, few_shot_subset,
                          load_dataset, make_loaders)

LABELS = torch.tensor([0] * 7 + [1] * 5 + [2] * 9 + [3] * 4)


def test_few_shot_indices_exactly_k_per_class():
    idx = few_shot_indices(LABELS, 3, seed=0)
    assert idx.dtype == torch.int64 and len(idx) == 12 and len(set(idx.tolist())) == 12
    assert torch.bincount(LABELS[idx]).tolist() == [3, 3, 3, 3]
    assert idx.tolist() == sorted(idx.tolist())


def test_few_shot_indices_seeded():
    a, b = few_shot_indices(LABELS, 2, seed=5), few_shot_indices(LABELS, 2, seed=5)
    assert torch.equal(a, b)
    others = {tuple(few_shot_indices(LABELS, 2, seed=s).tolist()) for s in range(6)}
    assert len(others) == 6  # different seeds, different subsets


def test_few_shot_indices_errors():
    with pytest.raises(ValueError, match="class 3 has 4 samples, fewer than k=5"):
        few_shot_indices(LABELS, 5, seed=0)
    with pytest.raises(ValueError, match="class 4 has 0 samples"):
        few_shot_indices(LABELS, 1, seed=0, classes=range(10))
    with pytest.raises(ValueError, match="k must be >= 1"):
        few_shot_indices(LABELS, 0, seed=0)
    with pytest.raises(ValueError, match="1-D class labels"):
        few_shot_indices(LABELS.view(5, 5), 1, seed=0)


def test_few_shot_indices_at_most_keeps_small_classes_whole():
    idx = few_shot_indices(LABELS, 5, seed=0, at_most=True)
    assert torch.bincount(LABELS[idx]).tolist() == [5, 5, 5, 4]  # class 3 has only 4
    # the same seed picks the same samples as the strict form wherever the class is large enough
    assert torch.equal(few_shot_indices(LABELS, 3, seed=2, at_most=True), few_shot_indices(LABELS, 3, seed=2))


def test_distill_few_shot_is_the_data_picker():
    from slimkit.compress.distill import few_shot

    X = torch.arange(len(LABELS)).float()[:, None]
    got_x, got_y = few_shot((X, LABELS), 3, seed=7)
    idx = few_shot_indices(LABELS, 3, seed=7)
    assert torch.equal(got_y, LABELS[idx]) and torch.equal(got_x[:, 0].long(), idx)


def test_few_shot_subset_and_sampler_on_digits():
    s = load_dataset("digits")
    sub = few_shot_subset(s.train, 5, seed=0)
    assert len(sub) == 50 and torch.bincount(s.train.y[sub.indices], minlength=10).tolist() == [5] * 10
    assert torch.equal(dataset_labels(sub), s.train.y[sub.indices])
    sampler = FewShotSampler(s.train.y, 2, seed=1)
    first, second = list(sampler), list(sampler)
    assert sorted(first) == sorted(second) == few_shot_indices(s.train.y, 2, 1).tolist()
    assert first != second  # reshuffled each epoch
    sampler.set_epoch(0)
    assert list(sampler) == first  # ... reproducibly
    assert list(FewShotSampler(s.train.y, 2, seed=1, shuffle=False)) == sorted(first)


def test_dataset_labels_fallbacks():
    td = TensorDataset(torch.zeros(4, 2), torch.tensor([1, 0, 1, 0]))
    assert dataset_labels(td).tolist() == [1, 0, 1, 0]

    class Plain(torch.utils.data.Dataset):
        def __len__(self):
            return 3

        def __getitem__(self, i):
            return torch.zeros(1), i % 2

    assert dataset_labels(Plain()).tolist() == [0, 1, 0]


def test_make_loaders_seeded_shuffle_and_ordered_test():
    x = torch.arange(40, dtype=torch.float32).unsqueeze(1)
    splits = DatasetSplits(TensorDataset(x, torch.arange(40)), TensorDataset(x[:10], torch.arange(10)), 40, (1,),
                           None, "toy")
    order = lambda loader: torch.cat([y for _, y in loader]).tolist()  # noqa: E731
    tr, te = make_loaders(splits, batch_size=8, seed=0)
    assert isinstance(tr, DataLoader) and len(tr) == 5
    first = order(tr)
    assert sorted(first) == list(range(40)) and first != list(range(40))
    assert order(make_loaders(splits, 8, seed=0)[0]) == first  # same seed, same order
    assert order(make_loaders(splits, 8, seed=1)[0]) != first
    assert order(te) == list(range(10))
    assert len(make_loaders(splits, 8, 0, eval_batch_size=10)[1]) == 1
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        make_loaders(splits, 0, 0)


def test_make_loaders_on_digits_batches():
    tr, te = make_loaders(load_dataset("digits"), batch_size=32, seed=0)
    xb, yb = next(iter(tr))
    assert xb.shape == (32, 1, 8, 8) and xb.dtype == torch.float32 and yb.dtype == torch.int64
    assert sum(len(y) for _, y in te) == 359


@settings(max_examples=40, deadline=None)
@given(counts=st.lists(st.integers(1, 12), min_size=1, max_size=6), k=st.integers(1, 12), seed=st.integers(0, 2**31))
def test_few_shot_indices_property(counts, k, seed):
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])[torch.randperm(sum(counts))]
    if k > min(counts):
        with pytest.raises(ValueError, match="fewer than k"):
            few_shot_indices(labels, k, seed)
        return
    idx = few_shot_indices(labels, k, seed)
    assert len(set(idx.tolist())) == len(idx) == k * len(counts)
    assert torch.bincount(labels[idx], minlength=len(counts)).tolist() == [k] * len(counts)
