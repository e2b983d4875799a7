"""Errors slimkit raises for bad input; the CLI prints them as one line instead of a traceback."""


class SlimkitError(Exception):
    """Base class for slimkit's user-facing errors."""


class CheckpointError(SlimkitError):
    """A checkpoint is missing, corrupt or does not fit the model."""


class ShapeError(SlimkitError, ValueError):
    """An input does not have the shape a model expects."""


class CompressionCheckError(SlimkitError):
    """A compression pass produced a model that failed its forward or output check."""
