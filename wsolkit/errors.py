"""Typed exceptions raised for bad user input.

Every message is one line and names the offending item (file, argument, layer), so a
command-line run can print it as is.
"""


class WSOLError(Exception):
    """Base class of every error wsolkit raises on purpose."""


class ImageError(WSOLError):
    """An image file is missing, unreadable, truncated or of an unsupported size."""


class LayerError(WSOLError):
    """A layer name does not exist in the model or cannot be used by the method."""


class TargetError(WSOLError):
    """A target class or target specification is invalid."""


class InputError(WSOLError):
    """An argument (tensor shape, option value, path) is invalid."""


class ModelError(WSOLError):
    """A model cannot be loaded or lacks what a method needs (e.g. a CAM head)."""


class DependencyError(WSOLError):
    """An optional package needed by the requested feature is not installed."""
