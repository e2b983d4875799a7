"""Errors slimkit raises for bad input; the CLI prints them as one line instead of a traceback."""


class SlimkitError(Exception):
    """Base class for slimkit's user-facing errors."""


class CheckpointError(SlimkitError):
    """A checkpoint or saved model is missing, corrupt, unsafe to read or does not fit the model/run."""


class ShapeError(SlimkitError, ValueError):
    """An input does not have the shape a model expects."""


class CompressionCheckError(SlimkitError):
    """A compression pass produced a model that failed its forward or output check."""


class DataError(SlimkitError, ValueError):
    """A data set file is unreadable, unsafe, or holds bad samples (non-finite values, labels out of range,
    x/y length mismatch, empty split, wrong dtype). The message names the file and the first bad index."""


class OutputError(SlimkitError):
    """An output path cannot be used: it is a file where a folder is needed (or the reverse), it is not
    writable, or it already holds results and ``--overwrite`` was not given."""


class TrainingError(SlimkitError):
    """Training cannot go on, e.g. the loss or the gradients became NaN/Inf."""
