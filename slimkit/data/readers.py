"""File-format readers: each returns plain numpy arrays; :mod:`slimkit.data._registry` turns them into splits.

Nothing here runs code from a file: ``.npz`` files are read with ``allow_pickle=False`` and the CIFAR-10
python batches (pickles) through :class:`_RestrictedUnpickler`, which builds only numpy arrays, lists,
dicts, strings and numbers. An unreadable or unsafe file raises :class:`slimkit.errors.DataError` naming it.
"""
import glob
import gzip
import io
import os
import pickle
import zipfile
import zlib
from importlib import resources

import numpy as np

from slimkit.errors import DataError

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
    try:
        with np.load(path, allow_pickle=False) as d:
            files = d.files
            missing = [k for k in (keys or ()) if k not in files]
            if missing:
                raise DataError(f"{path} lacks arrays {missing}; it has {files}")
            return {k: d[k] for k in files}
    except DataError:
        raise
    except ValueError as err:
        if "allow_pickle" in str(err):  # object arrays are pickles: never unpickled
            raise DataError(f"{path} holds pickled object arrays; slimkit reads only plain numeric arrays "
                            "(save x/y as numbers, e.g. np.savez(path, x=x.astype(np.uint8), y=y.astype(np.int64)))"
                            ) from None
        raise DataError(f"{path} is not a readable .npz file: {err}") from None
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        raise DataError(f"{path} is not a readable .npz file ({type(err).__name__}: {err})") from None


def read_mnist_idx(path):
    """One IDX file (gzip or not) as a numpy array; the header's magic number gives dtype and rank."""
    opener = gzip.open if _is_gzip(path) else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (EOFError, zlib.error, gzip.BadGzipFile) as err:
        raise DataError(f"{path} is a corrupt gzip file ({type(err).__name__}: {err})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DataError(f"{path} is not an IDX file (magic {data[:4].hex()}; expected 00 00 <type> <ndim>)")
    ndim = data[3]
    dims = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(data) - offset != expected:
        raise DataError(f"{path}: header says {dims} ({expected} bytes) but {len(data) - offset} bytes follow")
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

    Reads data_batch_1..5 and test_batch (also inside a ``cifar-10-batches-py`` subdirectory). The batches
    are pickles; they are read with a restricted unpickler that builds only numpy arrays, lists, dicts,
    strings and numbers, so a planted payload raises DataError instead of running.
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


def read_image_folder(root, skip_unreadable=False, skipped=None):
    """ImageFolder tree ``root/<class>/<image>.png|jpg`` -> ``(x uint8 [N, H, W, C], y int64 [N], classes)``.

    Classes are the sorted subdirectory names. All images must share one size; grey images stay 1-channel
    unless the tree mixes grey and colour (then all become RGB). An unreadable image raises DataError
    naming it, or with ``skip_unreadable`` is left out and its path appended to the list ``skipped``.
    """
    if not os.path.isdir(root):
        raise FileNotFoundError(f"no image folder at {root!r}")
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    if not classes:
        raise DataError(f"{root} has no class subdirectories (expected root/<class>/<image>.png)")
    images, labels = [], []
    for label, name in enumerate(classes):
        files = sorted(f for f in os.listdir(os.path.join(root, name)) if f.lower().endswith(_IMAGE_EXTS))
        for f in files:
            path = os.path.join(root, name, f)
            try:
                images.append(_read_image(path))
            except DataError:
                if not skip_unreadable:
                    raise
                if skipped is not None:
                    skipped.append(path)
                continue
            labels.append(label)
    if not images:
        raise DataError(f"{root} has no {'/'.join(_IMAGE_EXTS)} images in its class subdirectories")
    channels = max(im.shape[2] for im in images)
    images = [np.repeat(im, 3, axis=2) if im.shape[2] < channels else im for im in images]
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        raise DataError(f"images in {root} differ in size: {sorted(shapes)}; resize them to one size first")
    return np.stack(images), np.asarray(labels, dtype=np.int64), classes


def _read_image(path):
    """uint8 [H, W, C] with C 1 (grey) or 3 (RGB); alpha dropped."""
    try:
        from PIL import Image
        _BombError = Image.DecompressionBombError
    except ImportError:
        Image, _BombError = None, OSError
    try:
        if Image is not None:
            with Image.open(path) as im:
                im = im.convert("L") if im.mode in ("1", "L", "LA", "I", "I;16") else im.convert("RGB")
                arr = np.asarray(im)
        else:
            import matplotlib.image as mpimg

            arr = mpimg.imread(path)
    except (OSError, ValueError, SyntaxError, _BombError) as err:  # PIL raises these for garbled/huge files
        raise DataError(f"cannot read image {path}: {err} (pass ?drop_bad=true to skip unreadable images)") from None
        if arr.dtype != np.uint8:  # matplotlib reads PNG as float in [0, 1]
            arr = np.round(arr * 255).astype(np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.shape[2] == 4:
        arr = arr[:, :, :3]
    if arr.shape[2] == 2:  # grey + alpha
        arr = arr[:, :, :1]
    return arr


def _numpy_global(*paths):
    """The first importable ``module:attr`` (numpy 2 moved ``numpy.core`` to ``numpy._core``)."""
    import importlib

    for path in paths:
        module, _, attr = path.partition(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError):
            continue
    raise ImportError(f"none of {paths} exists in this numpy")


def _latin1_encode(text, encoding="utf-8"):
    # Python 3 pickles of bytes call _codecs.encode(str, 'latin1'); allow that and nothing else.
    if encoding not in ("latin1", "latin-1", "utf-8", "utf8"):
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r} is not allowed")
    return str(text).encode(encoding)


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays, dtypes, lists, dicts, strings, bytes and numbers; any other global refuses.

    The callables it hands out only build arrays (``_reconstruct`` with ``ndarray`` as the only subtype,
    ``_frombuffer``, ``scalar``) so no pickled ``__reduce__`` can reach a function that runs code.
    """

    def find_class(self, module, name):
        allowed = _ALLOWED_GLOBALS.get(f"{module}:{name}")
        if allowed is None:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a data file")
        return allowed()


_ALLOWED_GLOBALS = {
    "numpy:ndarray": lambda: np.ndarray,
    "numpy:dtype": lambda: np.dtype,
    "_codecs:encode": lambda: _latin1_encode,
    **{f"{m}:_reconstruct": (lambda: _numpy_global("numpy._core.multiarray:_reconstruct",
                                                   "numpy.core.multiarray:_reconstruct"))
       for m in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{f"{m}:scalar": (lambda: _numpy_global("numpy._core.multiarray:scalar", "numpy.core.multiarray:scalar"))
       for m in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{f"{m}:_frombuffer": (lambda: _numpy_global("numpy._core.numeric:_frombuffer", "numpy.core.numeric:_frombuffer"))
       for m in ("numpy.core.numeric", "numpy._core.numeric")},
}


def safe_unpickle(data: bytes, path):
    """``pickle.loads`` restricted to plain data (see :class:`_RestrictedUnpickler`); DataError otherwise."""
    try:
        return _RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError, TypeError, ValueError,
            KeyError, MemoryError) as err:
        raise DataError(f"{path} is not a plain-data pickle; refused to read it ({type(err).__name__}: {err})"
                        ) from None


def _read_cifar_batch(path):
    with open(path, "rb") as f:
        d = safe_unpickle(f.read(), path)
    if not isinstance(d, dict):
        raise DataError(f"{path} is not a CIFAR-10 batch (a pickled dict with 'data' and 'labels')")
    data, labels = d.get(b"data", d.get("data")), d.get(b"labels", d.get("labels"))
    if data is None or labels is None:
        raise DataError(f"{path} is not a CIFAR-10 batch (no 'data'/'labels' entries)")
    try:
        x = np.asarray(data, dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # rows are CHW
        y = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError) as err:
        raise DataError(f"{path}: 'data' must be uint8 rows of 3072 values and 'labels' integers ({err})") from None
    return np.ascontiguousarray(x), y


def _find_idx(directory, stem):
    # Official names are e.g. train-images-idx3-ubyte(.gz); some mirrors use train-images.idx3-ubyte.
    hits = sorted(glob.glob(os.path.join(directory, f"{stem}[-.]idx*")))
    if not hits:
        raise FileNotFoundError(f"{directory} has no {stem}-idx?-ubyte[.gz] file (official MNIST IDX names)")
    return hits[0]


def _is_gzip(path):
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"
