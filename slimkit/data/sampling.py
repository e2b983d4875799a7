"""Few-shot subsets (K samples per class, seeded) and the DataLoaders the trainer uses."""
from typing import Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, SequentialSampler, Subset


def dataset_labels(dataset: Dataset) -> torch.Tensor:
    """Class labels of a Dataset: from ``.y``/``.targets``/TensorDataset tensors if present, else by reading it."""
    for attr in ("y", "targets"):
        if hasattr(dataset, attr):
            return torch.as_tensor(getattr(dataset, attr))
    if hasattr(dataset, "tensors"):
        return torch.as_tensor(dataset.tensors[-1])
    if isinstance(dataset, Subset):
        return dataset_labels(dataset.dataset)[torch.as_tensor(dataset.indices)]
    return torch.as_tensor([int(dataset[i][1]) for i in range(len(dataset))])


def few_shot_indices(labels, k: int, seed: int, classes: Optional[Sequence[int]] = None, *,
                     at_most: bool = False) -> torch.Tensor:
    """Exactly ``k`` indices per class, drawn without replacement with ``numpy.random.default_rng(seed)``.

    ``classes`` defaults to the labels present; a class with fewer than ``k`` samples raises ValueError,
    or keeps all its samples with ``at_most=True`` (distill's few-shot images: the same seed, the same picks).
    Returns int64 indices sorted ascending (class balance: k * number of classes in total).
    """
    labels = np.asarray(torch.as_tensor(labels).cpu())
    if labels.ndim != 1:
        raise ValueError(f"few_shot_indices needs 1-D class labels, got shape {labels.shape}")
    if int(k) < 1:
        raise ValueError(f"k must be >= 1 samples per class, got {k}")
    classes = np.unique(labels) if classes is None else np.asarray(list(classes))
    rng = np.random.default_rng(seed)
    picked = []
    for c in classes:
        members = np.flatnonzero(labels == c)
        if len(members) < k and not at_most:
            raise ValueError(f"class {int(c)} has {len(members)} samples, fewer than k={k}")
        picked.append(rng.choice(members, size=min(int(k), len(members)), replace=False))
    return torch.from_numpy(np.sort(np.concatenate(picked)).astype(np.int64))


def few_shot_subset(dataset: Dataset, k: int, seed: int, labels=None) -> Subset:
    """``Subset`` of ``dataset`` with exactly ``k`` samples per class (see :func:`few_shot_indices`)."""
    labels = dataset_labels(dataset) if labels is None else labels
    return Subset(dataset, few_shot_indices(labels, k, seed).tolist())


class FewShotSampler(Sampler):
    """Yields the ``k``-per-class indices; ``shuffle`` reorders them each epoch (seeded by seed + epoch)."""

    def __init__(self, labels, k: int, seed: int = 0, shuffle: bool = True):
        self.indices = few_shot_indices(labels, k, seed)
        self.seed, self.shuffle, self.epoch = int(seed), bool(shuffle), 0

    def set_epoch(self, epoch: int):
        self.epoch = int(epoch)

    def __len__(self):
        return len(self.indices)

    def __iter__(self):
        if not self.shuffle:
            return iter(self.indices.tolist())
        order = torch.randperm(len(self.indices), generator=torch.Generator().manual_seed(self.seed + self.epoch))
        self.epoch += 1  # a fresh order next time unless set_epoch is called
        return iter(self.indices[order].tolist())


def make_loaders(splits, batch_size: int, seed: int, num_workers: int = 0, eval_batch_size: Optional[int] = None,
                 drop_last: bool = False):
    """(train_loader, test_loader): train shuffled by a generator seeded with ``seed``, test in order."""
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    g = torch.Generator().manual_seed(int(seed))
    train = DataLoader(splits.train, batch_size=int(batch_size), shuffle=True, generator=g,
                       num_workers=num_workers, drop_last=drop_last)
    test = DataLoader(splits.test, batch_size=int(eval_batch_size or batch_size),
                      sampler=SequentialSampler(splits.test), num_workers=num_workers)
    return train, test
