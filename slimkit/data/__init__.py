"""Data sets as explicit, reproducible splits: ``load_dataset("digits")`` -> :class:`DatasetSplits`.

Spec strings: ``digits`` (embedded), ``cifar10:PATH``, ``mnist:PATH``, ``npz:PATH``, ``folder:PATH``,
``adding:T``, ``copying:T``, ``pixel-mnist:PATH``, each optionally followed by ``?key=value&...``
(see :func:`load_dataset`). Nothing is downloaded.
"""
from slimkit.data._registry import DatasetInfo, get_dataset_info, list_datasets, load_dataset, register_dataset
from slimkit.data.base import (ArrayDataset, DatasetSplits, Normalization, balanced_holdout, last_holdout,
                               resize_images)
from slimkit.data.readers import (read_cifar10_batches, read_digits, read_image_folder, read_mnist, read_mnist_idx,
                                  read_npz)
from slimkit.data.sampling import FewShotSampler, dataset_labels, few_shot_indices, few_shot_subset, make_loaders
from slimkit.data.sequences import AddingProblem, CopyingMemory, pixel_sequences
from slimkit.data.sets import CIFAR10_NORMALIZATION, MNIST_NORMALIZATION, image_splits  # registers the schemes

__all__ = [
    "AddingProblem", "ArrayDataset", "CIFAR10_NORMALIZATION", "CopyingMemory", "DatasetInfo", "DatasetSplits",
    "FewShotSampler", "MNIST_NORMALIZATION", "Normalization", "balanced_holdout", "dataset_labels",
    "few_shot_indices", "few_shot_subset", "get_dataset_info", "image_splits", "last_holdout", "list_datasets",
    "load_dataset", "make_loaders", "pixel_sequences", "read_cifar10_batches", "read_digits", "read_image_folder",
    "read_mnist", "read_mnist_idx", "read_npz", "register_dataset", "resize_images",
]
