"""The registered data set schemes (see :func:`slimkit.data.load_dataset`)."""
import os

import numpy as np
import torch

from slimkit.data import readers
from slimkit.data._registry import register_dataset
from slimkit.data.base import (ArrayDataset, DatasetSplits, Normalization, balanced_holdout, last_holdout,
                               resize_images, to_nchw)
from slimkit.data.sequences import AddingProblem, CopyingMemory, pixel_sequences
from slimkit.data.validate import check_class_ids, check_samples, dropped_text
from slimkit.errors import DataError

# What the pretrained CIFAR ResNet-20 (akamaster/pytorch_resnet_cifar10) was trained with.
CIFAR10_NORMALIZATION = Normalization((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 1.0 / 255)
MNIST_NORMALIZATION = Normalization((0.1307,), (0.3081,), 1.0 / 255)  # the usual MNIST train-set statistics


def image_splits(name, x, y, *, seed, test_fraction, holdout, resize, default_fraction, x_test=None, y_test=None,
                 normalization=None, scale=None, num_classes=None, layout=None, source="", meta=None, path=None,
                 drop_bad=False, dropped=()):
    """Arrays -> DatasetSplits: validate, choose the held-out split, resize, then record the normalisation.

    ``normalization=None`` fits per-channel mean/std on the train split (after ``x * scale``). Every array is
    checked first (:func:`slimkit.data.validate.check_samples`): a bad sample raises DataError naming ``path``
    and its index, or is dropped with ``drop_bad`` (reported in the description and ``meta["dropped"]``).
    """
    where = path or name
    has_official = x_test is not None
    dropped = list(dropped)
    x, y, d = check_samples(x, y, where=f"{where} (x/y)" if has_official else where, num_classes=num_classes,
                            drop_bad=drop_bad)
    dropped += [d] if d else []
    if has_official:
        x_test, y_test, d = check_samples(x_test, y_test, where=f"{where} (x_test/y_test)", num_classes=num_classes,
                                          drop_bad=drop_bad)
        dropped += [d] if d else []
    if num_classes is None:
        num_classes = int(max(y.max(), y_test.max() if has_official else 0)) + 1
        check_class_ids([y] + ([y_test] if has_official else []), num_classes, where)
    x, y = torch.from_numpy(to_nchw(np.asarray(x), layout)), torch.as_tensor(np.asarray(y)).long()
    if holdout is None:
        holdout = "official" if has_official and test_fraction is None else "balanced"
    if holdout == "official":
        if not has_official:
            raise ValueError(f"{name} has no official test split; use holdout='balanced' or 'last'")
        x_te, y_te = torch.from_numpy(to_nchw(np.asarray(x_test), layout)), torch.as_tensor(np.asarray(y_test)).long()
        split = f"official test split ({len(y_te)} samples)"
    else:
        frac = default_fraction if test_fraction is None else float(test_fraction)
        tr, te = balanced_holdout(y, frac, seed) if holdout == "balanced" else last_holdout(len(y), frac)
        x_te, y_te, x, y = x[te], y[te], x[tr], y[tr]
        split = (f"seeded class-balanced hold-out: {frac:g} of each class, seed {seed} ({len(y_te)} samples)"
                 if holdout == "balanced" else f"last {len(y_te)} samples ({frac:g}) held out")
        if has_official:
            split += "; the official test split is not used"
        for part, n in (("held-out", len(y_te)), ("train", len(y))):
            if n == 0:
                raise DataError(f"{where}: the {part} split is empty ({len(y_te) + len(y)} samples, holdout={holdout}, "
                                f"test_fraction={frac:g} rounds to {len(y_te)} held out); use more data or a "
                                "test_fraction that leaves samples on both sides")
    if resize:
        x, x_te = resize_images(x, resize), resize_images(x_te, resize)
    if scale is None:
        scale = 1.0 / 255 if x.dtype == torch.uint8 else 1.0
    norm = normalization or Normalization.fit(x, scale)
    desc = f"{name}{source}: {len(y)} train / {len(y_te)} test; test = {split}"
    if resize:
        desc += f"; resized to {int(resize)}x{int(resize)} (bilinear)"
    extra = dict(meta or {})
    if dropped:
        desc += "; " + dropped_text(dropped)
        extra["dropped"] = dropped
    return DatasetSplits(ArrayDataset(x, y, norm), ArrayDataset(x_te, y_te, norm), num_classes, tuple(x.shape[1:]),
                         norm, desc, meta={"holdout": holdout, **extra})


@register_dataset("digits", "digits", "embedded 8x8 handwritten digits (UCI, via scikit-learn), 1797 images")
def load_digits(arg, *, seed, test_fraction, holdout, resize, drop_bad=False):
    x, y = readers.read_digits()
    return image_splits("digits", x, y, seed=seed, test_fraction=test_fraction, holdout=holdout, resize=resize,
                        default_fraction=0.2, scale=1.0 / 16, num_classes=10, drop_bad=drop_bad,
                        source=" (embedded UCI optical digits, CC BY 4.0)")


@register_dataset("cifar10", "cifar10:PATH", "CIFAR-10: a .npz with x/y (HWC uint8) or the official python batches")
def load_cifar10(arg, *, seed, test_fraction, holdout, resize, drop_bad=False):
    if os.path.isdir(arg):
        x, y, x_test, y_test = readers.read_cifar10_batches(arg)
    else:
        d = readers.read_npz(arg, ("x", "y"))
        x, y, x_test, y_test = d["x"], d["y"], None, None
    return image_splits("cifar10", x, y, x_test=x_test, y_test=y_test, seed=seed, test_fraction=test_fraction,
                        holdout=holdout, resize=resize, default_fraction=0.1, normalization=CIFAR10_NORMALIZATION,
                        num_classes=10, layout="hwc", source=f" from {arg}", path=arg, drop_bad=drop_bad)


@register_dataset("mnist", "mnist:PATH", "MNIST: mnist.npz (x_train/y_train/x_test/y_test) or a directory of IDX files")
def load_mnist(arg, *, seed, test_fraction, holdout, resize, drop_bad=False):
    x, y, x_test, y_test = readers.read_mnist(arg)
    return image_splits("mnist", x, y, x_test=x_test, y_test=y_test, seed=seed, test_fraction=test_fraction,
                        holdout=holdout, resize=resize, default_fraction=1 / 6, normalization=MNIST_NORMALIZATION,
                        num_classes=10, source=f" from {arg}", path=arg, drop_bad=drop_bad)


@register_dataset("npz", "npz:PATH", "generic .npz: x/y (or x_train/y_train/x_test/y_test), HWC or CHW, uint8 or float")
def load_npz(arg, *, seed, test_fraction, holdout, resize, layout=None, num_classes=None, drop_bad=False):
    d = readers.read_npz(arg)
    if {"x_train", "y_train", "x_test", "y_test"} <= set(d):
        x, y, x_test, y_test = d["x_train"], d["y_train"], d["x_test"], d["y_test"]
    elif {"x", "y"} <= set(d):
        x, y, x_test, y_test = d["x"], d["y"], None, None
    else:
        raise DataError(f"{arg} needs arrays x and y (or x_train/y_train/x_test/y_test); it has {sorted(d)}")
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1):
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    return image_splits("npz", x, y, x_test=x_test, y_test=y_test, seed=seed, test_fraction=test_fraction,
                        holdout=holdout, resize=resize, default_fraction=0.2, layout=layout, source=f" from {arg}",
                        path=arg, num_classes=num_classes, drop_bad=drop_bad)


@register_dataset("folder", "folder:PATH", "ImageFolder tree PATH/<class>/*.png|jpg (or PATH/train, PATH/test)")
def load_folder(arg, *, seed, test_fraction, holdout, resize, drop_bad=False):
    train_dir, test_dir = os.path.join(arg, "train"), os.path.join(arg, "test")
    x_test = y_test = None
    skipped = []  # unreadable images left out under drop_bad
    if os.path.isdir(train_dir) and os.path.isdir(test_dir):
        x, y, classes = readers.read_image_folder(train_dir, drop_bad, skipped)
        x_test, y_test, test_classes = readers.read_image_folder(test_dir, drop_bad, skipped)
        if test_classes != classes:
            raise DataError(f"{test_dir} classes {test_classes} differ from {train_dir} classes {classes}")
    else:
        x, y, classes = readers.read_image_folder(arg, drop_bad, skipped)
    dropped = [{"count": len(skipped), "reasons": {"unreadable image": len(skipped)}, "first_index": skipped[0],
                "where": arg}] if skipped else []
    splits = image_splits("folder", x, y, x_test=x_test, y_test=y_test, seed=seed, test_fraction=test_fraction,
                          holdout=holdout, resize=resize, default_fraction=0.2, num_classes=len(classes),
                          layout="hwc", source=f" from {arg}", meta={"classes": classes}, path=arg,
                          drop_bad=drop_bad, dropped=dropped)
    return splits



def _seeds(seed):
    # Train and test streams never share a seed, for any user seed.
    return 2 * int(seed), 2 * int(seed) + 1


def _positive_int(text, what):
    try:
        value = int(text)
    except (TypeError, ValueError):
        value = 0
    if value < 1:
        raise ValueError(f"{what} must be a positive integer, got {text!r}")
    return value


def _no_image_options(name, test_fraction, holdout, resize):
    if test_fraction is not None or holdout is not None or resize is not None:
        raise ValueError(f"{name} generates its own test set: use train_size/test_size, not "
                         "test_fraction/holdout/resize")


@register_dataset("adding", "adding:T", "adding problem, sequence length T (regression, [T, 2] inputs)")
def load_adding(arg, *, seed, test_fraction, holdout, resize, train_size=10000, test_size=1000):
    _no_image_options("adding", test_fraction, holdout, resize)
    t = _positive_int(arg, "adding:T sequence length T")
    s_train, s_test = _seeds(seed)
    train, test = AddingProblem(t, train_size, s_train), AddingProblem(t, test_size, s_test)
    desc = (f"adding problem T={t}: {train_size} train (seed {s_train}) / {test_size} test (seed {s_test}) "
            "generated sequences; target = sum of the two marked values")
    return DatasetSplits(train, test, None, (t, 2), None, desc, meta={"task": "regression"})


@register_dataset("copying", "copying:T", "copying memory task, delay T (10 symbols to copy, per-step targets)")
def load_copying(arg, *, seed, test_fraction, holdout, resize, train_size=10000, test_size=1000, one_hot=True):
    _no_image_options("copying", test_fraction, holdout, resize)
    t = _positive_int(arg, "copying:T delay T")
    s_train, s_test = _seeds(seed)
    train = CopyingMemory(t, train_size, s_train, one_hot=one_hot)
    test = CopyingMemory(t, test_size, s_test, one_hot=one_hot)
    size = (train.seq_len, train.vocab_size) if one_hot else (train.seq_len,)
    desc = (f"copying memory T={t}: {train_size} train (seed {s_train}) / {test_size} test (seed {s_test}) "
            f"sequences of length {train.seq_len}; targets per step, classes 0=blank, 1..8=symbols")
    return DatasetSplits(train, test, train.num_symbols + 1, size, None, desc, meta={"task": "sequence"})


@register_dataset("pixel-mnist", "pixel-mnist:PATH", "pixel-by-pixel MNIST, 784 steps x 1 (permute=true: permuted)")
def load_pixel_mnist(arg, *, seed, test_fraction, holdout, resize, permute=False, drop_bad=False):
    base = load_mnist(arg, seed=seed, test_fraction=test_fraction, holdout=holdout, resize=resize, drop_bad=drop_bad)
    norm = Normalization((0.0,), (1.0,), 1.0 / 255 if base.train.x.dtype == torch.uint8 else 1.0)
    x_tr, x_te = base.train.x[:, 0], base.test.x[:, 0]
    train = pixel_sequences(x_tr, base.train.y, bool(permute), seed, norm)
    test = pixel_sequences(x_te, base.test.y, bool(permute), seed, norm)
    steps = x_tr.shape[1] * x_tr.shape[2]
    kind = f"permuted (torch.randperm, seed {seed})" if permute else "raster order"
    desc = f"pixel-by-pixel {base.description}; {steps} steps x 1, {kind}"
    return DatasetSplits(train, test, 10, (steps, 1), norm, desc, meta={**base.meta, "permute": bool(permute)})
