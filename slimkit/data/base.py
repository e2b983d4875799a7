"""The data set record every loader returns: :class:`DatasetSplits`, :class:`Normalization`, held-out splits."""
import math
from dataclasses import dataclass, field
from typing import Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset


@dataclass(frozen=True)
class Normalization:
    """``x_float = (x_raw * scale - mean[c]) / std[c]`` per channel ``c``; stored with results, applied explicitly."""

    mean: Tuple[float, ...] = (0.0,)
    std: Tuple[float, ...] = (1.0,)
    scale: float = 1.0

    def __post_init__(self):
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        if len(self.mean) != len(self.std):
            raise ValueError(f"Normalization needs one mean per std, got {len(self.mean)} means, {len(self.std)} stds")
        if not all(math.isfinite(v) for v in self.mean + self.std + (float(self.scale),)):
            raise ValueError(f"Normalization needs finite mean/std/scale, got mean {self.mean}, std {self.std}, "
                             f"scale {self.scale} (NaN/Inf in the data it was fitted on?)")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"Normalization std must be > 0 per channel, got {self.std}")

    def _view(self, values, x, channel_dim):
        shape = [1] * x.dim()
        shape[channel_dim] = -1
        return torch.tensor(values, dtype=torch.float32).view(shape)

    def apply(self, x: torch.Tensor, channel_dim: int = -3) -> torch.Tensor:
        """Raw samples (any dtype) -> normalised float32; channels at ``channel_dim`` ([N,]C,H,W by default)."""
        # One multiply and one add in place: x * (scale/std) + (-mean/std), the same map, fewer passes.
        gain = self._view([self.scale / s for s in self.std], x, channel_dim)
        bias = self._view([-m / s for m, s in zip(self.mean, self.std)], x, channel_dim)
        return x.to(torch.float32, copy=True).mul_(gain).add_(bias)

    def invert(self, x: torch.Tensor, channel_dim: int = -3) -> torch.Tensor:
        """Normalised float32 -> raw scale (float; round and cast yourself for uint8)."""
        return (x * self._view(self.std, x, channel_dim) + self._view(self.mean, x, channel_dim)) / self.scale

    def to_dict(self) -> dict:
        return {"mean": list(self.mean), "std": list(self.std), "scale": self.scale}

    @classmethod
    def from_dict(cls, d: dict) -> "Normalization":
        unknown = set(d) - {"mean", "std", "scale"}
        if unknown:
            raise ValueError(f"unknown Normalization fields {sorted(unknown)}; expected mean, std, scale")
        return cls(tuple(d["mean"]), tuple(d["std"]), float(d["scale"]))

    @classmethod
    def fit(cls, x_raw: torch.Tensor, scale: float, digits: int = 4) -> "Normalization":
        """Per-channel mean/std of ``x_raw * scale`` over [N, C, H, W], rounded so the record is readable."""
        x = x_raw.to(torch.float64) * scale
        mean = x.mean(dim=(0, 2, 3)).tolist()
        std = x.std(dim=(0, 2, 3)).clamp_min(1e-6).tolist()
        return cls(tuple(round(m, digits) for m in mean), tuple(round(s, digits) for s in std), scale)


class ArrayDataset(Dataset):
    """Raw samples kept compact (e.g. uint8 [N, C, H, W]); ``normalization`` is applied when a sample is read.

    ``x`` and ``y`` are public so callers can see exactly what is stored; :meth:`tensors` materialises
    the normalised inputs at once (the same values ``ds[i]`` returns).
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, normalization: Optional[Normalization] = None,
                 channel_dim: int = -3):
        if len(x) != len(y):
            raise ValueError(f"inputs and labels differ in length: {len(x)} vs {len(y)}")
        self.x, self.y, self.normalization, self.channel_dim = x, y, normalization, channel_dim

    def __len__(self):
        return len(self.y)

    def _norm(self, x):
        return self.normalization.apply(x, self.channel_dim) if self.normalization is not None else x

    def __getitem__(self, i):
        return self._norm(self.x[i]), self.y[i]

    def __getitems__(self, indices):
        # DataLoader fetches a whole batch through this: one vectorised normalisation instead of B small ones.
        idx = torch.as_tensor(indices, dtype=torch.long)
        xs = self._norm(self.x[idx])
        return list(zip(xs.unbind(0), self.y[idx].unbind(0)))

    def tensors(self):
        return self._norm(self.x), self.y


@dataclass
class DatasetSplits:
    """A train and a held-out split plus everything needed to reproduce and report them."""

    train: Dataset
    test: Dataset
    num_classes: Optional[int]  # None for regression targets (adding problem)
    input_size: tuple  # one sample's input shape: (C, H, W) for images, (T, F) for sequences
    normalization: Optional[Normalization]
    description: str
    spec: str = ""
    meta: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """What to store with results (no tensors)."""
        return {"spec": self.spec, "description": self.description, "num_classes": self.num_classes,
                "input_size": list(self.input_size), "train_size": len(self.train), "test_size": len(self.test),
                "normalization": self.normalization.to_dict() if self.normalization else None, "meta": dict(self.meta)}


def balanced_holdout(labels, test_fraction: float, seed: int):
    """Seeded, class-balanced split: floor(n_c * test_fraction + 0.5) of each class goes to test. Sorted indices."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    test = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        n_test = int(np.floor(len(members) * test_fraction + 0.5))
        test.append(rng.permutation(members)[:n_test])
    test = np.sort(np.concatenate(test))
    train = np.setdiff1d(np.arange(len(labels)), test)
    return torch.from_numpy(train), torch.from_numpy(test)


def last_holdout(n: int, test_fraction: float):
    """The last floor(n * test_fraction + 0.5) samples are the test split (the rest, in order, train)."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    n_test = int(np.floor(n * test_fraction + 0.5))
    return torch.arange(n - n_test), torch.arange(n - n_test, n)


def resize_images(x: torch.Tensor, size: int) -> torch.Tensor:
    """[N, C, H, W] -> float32 [N, C, size, size], bilinear (align_corners=False), in the raw value range."""
    if int(size) <= 0:
        raise ValueError(f"resize must be a positive int, got {size}")
    out = []
    for chunk in torch.split(x, 4096):  # bounded peak memory for 50k CIFAR images
        out.append(F.interpolate(chunk.to(torch.float32), size=(int(size), int(size)), mode="bilinear",
                                 align_corners=False))
    return torch.cat(out)


def to_nchw(x: np.ndarray, layout: Optional[str] = None) -> np.ndarray:
    """[N, H, W] / [N, H, W, C] / [N, C, H, W] -> [N, C, H, W]; ``layout`` ('hwc'/'chw') settles ambiguity."""
    if x.ndim == 3:
        return x[:, None]
    if x.ndim != 4:
        raise ValueError(f"expected images of shape [N, H, W], [N, H, W, C] or [N, C, H, W], got {tuple(x.shape)}")
    if layout is None:
        hwc, chw = x.shape[-1] in (1, 3, 4), x.shape[1] in (1, 3, 4)
        if hwc == chw:
            raise ValueError(f"cannot tell HWC from CHW for shape {tuple(x.shape)}; pass layout='hwc' or 'chw'")
        layout = "hwc" if hwc else "chw"
    if layout not in ("hwc", "chw"):
        raise ValueError(f"layout must be 'hwc' or 'chw', got {layout!r}")
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)) if layout == "hwc" else x
