"""Choosing the torch device a job runs on."""

from __future__ import annotations

import torch

from wsolkit.errors import InputError


def resolve_device(name: str | torch.device | None = None, option: str = "device") -> torch.device:
    """The device ``name`` stands for, checked to exist on this machine.

    Args:
        name: ``None`` or ``"auto"`` (CUDA when available, else the CPU), ``"cpu"``,
            ``"cuda"``, ``"cuda:N"`` or ``"mps"``.
        option: how error messages name the argument (``--device`` on the command line).

    Raises:
        InputError: one line naming ``option`` when the name is not a device or the device is
            not available here.
    """
    if name is None or str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise InputError(f"{option}={name!r}: not a device (use auto, cpu, cuda, cuda:N or "
                         "mps)") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise InputError(f"{option}={name!r}: CUDA is not available on this machine")
        if device.index is not None and device.index >= count:
            raise InputError(f"{option}={name!r}: this machine has {count} CUDA device(s)")
    elif device.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise InputError(f"{option}={name!r}: MPS is not available on this machine")
    elif device.type != "cpu":
        raise InputError(f"{option}={name!r}: unsupported device type (use auto, cpu, cuda, "
                         "cuda:N or mps)")
    return device
