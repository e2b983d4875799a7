"""File-format readers: each returns plain numpy arrays; :mod:`slimkit.data._registry` turns them into splits."""
import glob
import gzip
import os
import pickle
from importlib import resources

import numpy as np

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
MNIST_IMAGES_MAGIC, MNIST_LABELS_MAGIC = 2051, 2049  # 0x00000803 and 0x00000801
_IMAGE_EXTS = (".png", ".jpg", ".jpeg")


def read_digits():
    """The embedded 8x8 digits set: x uint8 [1797, 8, 8] in 0..16, y uint8 [1797]."""
    with resources.files("slimkit.data").joinpath("assets/digits.npz").open("rb") as f:
        d = np.load(f)
        return d["x"], d["y"]


def read_npz(path, keys=None):
    """Arrays of an .npz as a dict; ``keys`` (e.g. ('x', 'y')) must all be present."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no .npz file at {path!r}")
    with np.load(path, allow_pickle=False) as d:
        missing = [k for k in (keys or ()) if k not in d.files]
        if missing:
            raise ValueError(f"{path} lacks arrays {missing}; it has {d.files}")
        return {k: d[k] for k in d.files}


def read_mnist_idx(path):
    """One IDX file (gzip or not) as a numpy array; the header's magic number gives dtype and rank."""
    opener = gzip.open if _is_gzip(path) else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (magic {data[:4].hex()}; expected 00 00 <type> <ndim>)")
    ndim = data[3]
    dims = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(data) - offset != expected:
        raise ValueError(f"{path}: header says {dims} ({expected} bytes) but {len(data) - offset} bytes follow")
    return np.frombuffer(data, dtype=dtype, offset=offset).reshape(dims).astype(dtype.newbyteorder("="))


def read_mnist(path):
    """MNIST from ``mnist.npz`` (x_train/y_train/x_test/y_test) or a directory of the four official IDX files.

    Returns ``(x_train, y_train, x_test, y_test)`` uint8, images [N, 28, 28].
    """
    if os.path.isdir(path):
        return tuple(read_mnist_idx(_find_idx(path, stem)) for stem in
                     ("train-images", "train-labels", "t10k-images", "t10k-labels"))
    d = read_npz(path, ("x_train", "y_train", "x_test", "y_test"))
    return d["x_train"], d["y_train"], d["x_test"], d["y_test"]


def read_cifar10_batches(directory):
    """Official CIFAR-10 python batches -> ``(x_train, y_train, x_test, y_test)``, x uint8 [N, 32, 32, 3] HWC.

    Reads data_batch_1..5 and test_batch (also inside a ``cifar-10-batches-py`` subdirectory). These are
    pickles: only read files you trust.
    """
    if os.path.isdir(os.path.join(directory, "cifar-10-batches-py")):
        directory = os.path.join(directory, "cifar-10-batches-py")
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    missing = [n for n in names if not os.path.isfile(os.path.join(directory, n))]
    if missing:
        raise FileNotFoundError(f"{directory} lacks CIFAR-10 batches {missing} (expected data_batch_1..5, test_batch)")
    batches = [_read_cifar_batch(os.path.join(directory, n)) for n in names]
    x_train = np.concatenate([b[0] for b in batches[:5]])
    y_train = np.concatenate([b[1] for b in batches[:5]])
    return x_train, y_train, batches[5][0], batches[5][1]


def read_image_folder(root):
    """ImageFolder tree ``root/<class>/<image>.png|jpg`` -> ``(x uint8 [N, H, W, C], y int64 [N], classes)``.

    Classes are the sorted subdirectory names. All images must share one size; grey images stay 1-channel
    unless the tree mixes grey and colour (then all become RGB).
    """
    if not os.path.isdir(root):
        raise FileNotFoundError(f"no image folder at {root!r}")
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    if not classes:
        raise ValueError(f"{root} has no class subdirectories (expected root/<class>/<image>.png)")
    images, labels = [], []
    for label, name in enumerate(classes):
        files = sorted(f for f in os.listdir(os.path.join(root, name)) if f.lower().endswith(_IMAGE_EXTS))
        for f in files:
            images.append(_read_image(os.path.join(root, name, f)))
            labels.append(label)
    if not images:
        raise ValueError(f"{root} has no {'/'.join(_IMAGE_EXTS)} images in its class subdirectories")
    channels = max(im.shape[2] for im in images)
    images = [np.repeat(im, 3, axis=2) if im.shape[2] < channels else im for im in images]
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        raise ValueError(f"images in {root} differ in size: {sorted(shapes)}; resize them to one size first")
    return np.stack(images), np.asarray(labels, dtype=np.int64), classes


def _read_image(path):
    """uint8 [H, W, C] with C 1 (grey) or 3 (RGB); alpha dropped."""
    try:
        from PIL import Image
    except ImportError:
        Image = None
    if Image is not None:
        with Image.open(path) as im:
            im = im.convert("L") if im.mode in ("1", "L", "LA", "I", "I;16") else im.convert("RGB")
            arr = np.asarray(im)
    else:
        import matplotlib.image as mpimg

        arr = mpimg.imread(path)
        if arr.dtype != np.uint8:  # matplotlib reads PNG as float in [0, 1]
            arr = np.round(arr * 255).astype(np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.shape[2] == 4:
        arr = arr[:, :, :3]
    if arr.shape[2] == 2:  # grey + alpha
        arr = arr[:, :, :1]
    return arr


def _read_cifar_batch(path):
    with open(path, "rb") as f:
        d = pickle.load(f, encoding="bytes")
    data, labels = d.get(b"data", d.get("data")), d.get(b"labels", d.get("labels"))
    if data is None or labels is None:
        raise ValueError(f"{path} is not a CIFAR-10 batch (no 'data'/'labels' entries)")
    x = np.asarray(data, dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # rows are CHW
    return np.ascontiguousarray(x), np.asarray(labels, dtype=np.uint8)


def _find_idx(directory, stem):
    # Official names are e.g. train-images-idx3-ubyte(.gz); some mirrors use train-images.idx3-ubyte.
    hits = sorted(glob.glob(os.path.join(directory, f"{stem}[-.]idx*")))
    if not hits:
        raise FileNotFoundError(f"{directory} has no {stem}-idx?-ubyte[.gz] file (official MNIST IDX names)")
    return hits[0]


def _is_gzip(path):
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"
