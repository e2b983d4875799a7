"""Long-range sequence tasks: adding problem, copying memory, pixel-by-pixel (permuted) MNIST, noise-padded MNIST.

All are batch-first: one sample's input is [T, features]. Each data set is generated once, at
construction, from its own ``torch.Generator`` seeded with ``seed``, so equal seeds give equal data.
"""
import torch
from torch.utils.data import Dataset

from slimkit.data.base import ArrayDataset, Normalization


class AddingProblem(Dataset):
    """Adding problem (Hochreiter & Schmidhuber 1997; the form of Le et al. 2015 / Arjovsky et al. 2016).

    Input [T, 2]: channel 0 holds values drawn from U(0, 1); channel 1 is a marker with exactly two 1s, the
    first at a uniform position in the first half ``[0, T//2)``, the second in the second half ``[T//2, T)``.
    Target: float32 [1], the sum of the two marked values. Predicting 1.0 always gives MSE ~0.167 (the baseline).
    """

    def __init__(self, seq_len: int, num_samples: int, seed: int = 0):
        if int(seq_len) < 2 or int(num_samples) < 1:
            raise ValueError(f"adding problem needs seq_len >= 2 and num_samples >= 1, got {seq_len}, {num_samples}")
        self.seq_len, self.seed = int(seq_len), int(seed)
        g = torch.Generator().manual_seed(self.seed)
        n, t, half = int(num_samples), self.seq_len, self.seq_len // 2
        values = torch.rand(n, t, generator=g)
        first = torch.randint(0, half, (n,), generator=g)
        second = torch.randint(half, t, (n,), generator=g)
        markers = torch.zeros(n, t)
        rows = torch.arange(n)
        markers[rows, first] = 1.0
        markers[rows, second] = 1.0
        self.x = torch.stack([values, markers], dim=2)
        self.y = (values[rows, first] + values[rows, second]).unsqueeze(1)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


class CopyingMemory(Dataset):
    """Copying memory task (Arjovsky, Shah & Bengio 2016).

    Symbol ids: 0 = blank, 1..``num_symbols`` = alphabet (8 by default), ``num_symbols + 1`` = delimiter.
    Input (length T + 2 * copy_length): ``copy_length`` random symbols, T - 1 blanks, the delimiter, then
    ``copy_length`` blanks. Target (same length, int64 per step): T + copy_length blanks, then the symbols.
    Inputs are one-hot float32 [L, num_symbols + 2] (``one_hot=False``: int64 ids [L]).
    The memoryless baseline's cross-entropy is copy_length * ln(num_symbols) / L.
    """

    def __init__(self, delay: int, num_samples: int, seed: int = 0, num_symbols: int = 8, copy_length: int = 10,
                 one_hot: bool = True):
        if int(delay) < 1 or int(num_samples) < 1 or int(num_symbols) < 1 or int(copy_length) < 1:
            raise ValueError("copying task needs delay, num_samples, num_symbols and copy_length >= 1, got "
                             f"{delay}, {num_samples}, {num_symbols}, {copy_length}")
        self.delay, self.copy_length, self.seed = int(delay), int(copy_length), int(seed)
        self.num_symbols = int(num_symbols)
        self.delimiter = self.num_symbols + 1
        self.vocab_size = self.num_symbols + 2
        self.one_hot = bool(one_hot)
        g = torch.Generator().manual_seed(self.seed)
        n, k, t = int(num_samples), self.copy_length, self.delay
        symbols = torch.randint(1, self.num_symbols + 1, (n, k), generator=g)
        length = t + 2 * k
        ids = torch.zeros(n, length, dtype=torch.long)
        ids[:, :k] = symbols
        ids[:, k + t - 1] = self.delimiter
        target = torch.zeros(n, length, dtype=torch.long)
        target[:, t + k:] = symbols
        self.ids, self.y = ids, target

    @property
    def seq_len(self):
        return self.ids.shape[1]

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        x = self.ids[i]
        if self.one_hot:
            x = torch.nn.functional.one_hot(x, self.vocab_size).to(torch.float32)
        return x, self.y[i]


def pixel_sequences(images, labels, permute: bool = False, seed: int = 0, normalization=None,
                    pixels_per_step: int = 1) -> ArrayDataset:
    """Pixel-by-pixel MNIST: uint8 images [N, H, W] -> samples [H*W / k, k] in raster order (Le et al. 2015),
    ``k = pixels_per_step`` consecutive raster pixels per step (k = 1: the 784-step task; k = 4: 196 steps that
    still see every pixel).

    ``permute=True`` applies one fixed pixel permutation drawn from ``torch.Generator().manual_seed(seed)``
    (permuted MNIST); use the same seed for train and test. ``normalization`` defaults to scale 1/255.
    """
    images = torch.as_tensor(images)
    if images.dim() != 3:
        raise ValueError(f"pixel sequences need images [N, H, W], got shape {tuple(images.shape)}")
    seq = images.reshape(len(images), -1)
    k = int(pixels_per_step)
    if k < 1 or seq.shape[1] % k:
        raise ValueError(f"pixels_per_step must divide the {seq.shape[1]} pixels, got {pixels_per_step}")
    if permute:
        perm = torch.randperm(seq.shape[1], generator=torch.Generator().manual_seed(int(seed)))
        seq = seq[:, perm]
    norm = normalization or Normalization((0.0,), (1.0,), 1.0 / 255)
    return ArrayDataset(seq.reshape(len(seq), -1, k).contiguous(), torch.as_tensor(labels).long(), norm,
                        channel_dim=-1)


class NoisePaddedRows(Dataset):
    """Noise-padded MNIST (the authors' "noisy MNIST", after AntisymmetricRNN): an image is read row by row
    (H steps of W pixels, standardised to zero mean and unit variance over the set), then the sequence is padded
    to ``length`` steps with N(0, 1) noise; the label must be remembered through ``length - H`` noise steps.
    The noise of sample i is fixed (drawn from a generator seeded with ``seed`` and i), so equal seeds give
    equal data; it is drawn when a sample is read, so the padded set never sits in memory.
    """

    def __init__(self, images, labels, length: int, seed: int = 0, mean: float = None, std: float = None):
        images = torch.as_tensor(images)
        if images.dim() != 3 or int(length) < images.shape[1]:
            raise ValueError(f"noise padding needs images [N, H, W] and length >= H, got {tuple(images.shape)}, "
                             f"{length}")
        x = images.to(torch.float32) / 255
        self.mean = float(x.mean()) if mean is None else float(mean)  # pass the training set's for a test set
        self.std = float(x.std()) if std is None else float(std)
        self.x, self.y = (x - self.mean) / self.std, torch.as_tensor(labels).long()
        self.length, self.seed = int(length), int(seed)

    @property
    def seq_len(self):
        return self.length

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        i = int(i)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        rows = self.x[i]
        noise = torch.randn(self.length - rows.shape[0], rows.shape[1], generator=g)
        return torch.cat([rows, noise]), self.y[i]
