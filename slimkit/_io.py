"""Output files that are never torn and folders that are never clobbered by accident.

- :func:`atomic_write` / :func:`atomic_path`: write to a temp file in the same folder, fsync it, then
  ``os.replace`` it onto the target and fsync the folder. A crash or Ctrl-C at any point leaves the old
  file or the new one, never a mix, and no temp file.
- :func:`check_out_dir` / :func:`check_out_file`: validate an output path before any work starts
  (a file where a folder is needed or the reverse, not writable, a folder that already holds results).
- :func:`staged_outputs`: a command's files are written into a hidden staging folder and moved into
  place together at the end, so an interrupted run leaves the previous results as they were.
"""
import contextlib
import os
import shutil
import tempfile

from slimkit.errors import OutputError

TMP_PREFIX = ".slimkit-tmp-"  # leftovers of a SIGKILLed write; ignored when deciding if a folder is empty


def fsync_dir(directory):
    """Make a rename in ``directory`` durable (POSIX; a no-op where folders cannot be opened)."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path):
    with open(path, "rb") as f:
        os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temp path next to ``path`` (same file name, in a hidden temp folder); on success it is
    fsynced and renamed onto ``path``.

    For writers that take a path (``torch.export.save`` names the archive after the file, ``savefig``).
    On any exception, KeyboardInterrupt included, the temp file is removed and ``path`` is untouched.
    """
    path = os.path.abspath(os.fspath(path))
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    tmp_dir = tempfile.mkdtemp(prefix=TMP_PREFIX, dir=directory)
    tmp = os.path.join(tmp_dir, os.path.basename(path))
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    fsync_dir(directory)


@contextlib.contextmanager
def atomic_write(path, mode="w", **open_kwargs):
    """``with atomic_write(path) as f: f.write(...)``: the file appears complete or not at all."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write writes whole files: mode 'w' or 'wb', got {mode!r}")
    with atomic_path(path) as tmp:
        with open(tmp, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())


def write_text(path, text):
    with atomic_write(path, "w") as f:
        f.write(text)


def _entries(directory):
    return [e for e in os.listdir(directory) if not e.startswith(TMP_PREFIX)]


def _probe_writable(directory, flag):
    """Create the folder and a temp file in it: the only check that holds for root and odd mounts too."""
    try:
        os.makedirs(directory, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=TMP_PREFIX + "probe-", dir=directory)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise OutputError(f"{flag} {directory!r} is not writable: {err.strerror or err}") from None


def check_out_dir(path, *, flag="--out", overwrite=False, existing_ok=False) -> str:
    """Validate an output folder before any work: returns its absolute path, creating it if needed.

    It must not be a file, must be writable, and must be empty unless ``overwrite`` (replace earlier
    results) or ``existing_ok`` (e.g. ``--resume`` continues the run in it) is set.
    """
    if path is None or str(path) == "":
        raise OutputError(f"{flag} needs a folder path")
    path = os.path.abspath(os.fspath(path))
    if os.path.exists(path) and not os.path.isdir(path):
        raise OutputError(f"{flag} {path!r} is an existing file, not a folder; choose a folder path")
    if os.path.isdir(path) and not (overwrite or existing_ok):
        found = _entries(path)
        if found:
            shown = ", ".join(sorted(found)[:5]) + (" ..." if len(found) > 5 else "")
            raise OutputError(f"{flag} {path!r} already holds results ({shown}); pass --overwrite to replace "
                              "them or choose an empty folder")
    _probe_writable(path, flag)
    return path


def check_out_file(path, *, flag="--json") -> str:
    """Validate an output file path before any work: not a folder, its folder writable (created if needed)."""
    if path is None or str(path) == "":
        raise OutputError(f"{flag} needs a file path")
    path = os.path.abspath(os.fspath(path))
    if os.path.isdir(path):
        raise OutputError(f"{flag} {path!r} is a folder; give a file path such as {os.path.join(path, 'out.json')!r}")
    parent = os.path.dirname(path)
    if os.path.exists(parent) and not os.path.isdir(parent):
        raise OutputError(f"{flag} {path!r}: {parent!r} is a file, not a folder")
    _probe_writable(parent, flag)
    return path


def remove_outputs(directory, names):
    """Delete the named files of an earlier run in ``directory`` (used with ``--overwrite``)."""
    for name in names:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(directory, name))


class _Stage:
    def __init__(self, root):
        self.root = root

    def path(self, name):
        """Where to write output ``name`` (a plain file name) during the run."""
        if os.path.basename(name) != name or name in ("", ".", ".."):
            raise ValueError(f"staged output names are plain file names, got {name!r}")
        return os.path.join(self.root, name)


@contextlib.contextmanager
def staged_outputs(out_dir, stale=()):
    """Write a command's outputs into a staging folder inside ``out_dir``; move them in at the end.

    On success every staged file is fsynced and renamed into ``out_dir`` (each rename is atomic), then the
    files named in ``stale`` that this run did not write are removed, so no output of an earlier run sits
    beside the new ones. On any exception (Ctrl-C included) ``out_dir`` is left exactly as it was.
    """
    os.makedirs(out_dir, exist_ok=True)
    root = tempfile.mkdtemp(prefix=TMP_PREFIX + "stage-", dir=out_dir)
    try:
        yield _Stage(root)
        names = sorted(os.listdir(root))
        for name in names:
            _fsync_file(os.path.join(root, name))
        for name in names:
            os.replace(os.path.join(root, name), os.path.join(out_dir, name))
        remove_outputs(out_dir, [n for n in stale if n not in names])
        fsync_dir(out_dir)
    finally:
        shutil.rmtree(root, ignore_errors=True)
