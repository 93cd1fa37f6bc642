"""The ``device`` setting: where a node's (or a whole simulation's) training and aggregation run.

``auto`` picks CUDA when torch sees a GPU, else Apple's MPS, else the CPU; ``cpu``, ``cuda``, ``cuda:N`` and
``mps`` name one. A device this machine lacks is a :class:`DeviceError` (a ``ValueError``: the CLI prints one
line and exits with status 2), raised before anything loads. :func:`parse_device` checks the spelling only
(no torch import, so configs validate quickly); :func:`resolve_device` asks torch.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

_SPEC = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


class DeviceError(ValueError):
    """A device setting that is misspelt or names a device this machine does not have."""


def parse_device(spec: str) -> str:
    """``spec`` normalised (lower case, stripped); :class:`DeviceError` unless it is a device spelling."""
    text = str(spec).strip().lower()
    if not _SPEC.match(text):
        raise DeviceError(f"unknown device {spec!r}; choose one of: auto, cpu, cuda, cuda:N, mps")
    return text


def resolve_device(spec: str) -> torch.device:
    """The torch device ``spec`` names on this machine; :class:`DeviceError` (one line) when it is absent."""
    import torch

    text = parse_device(spec)
    cuda = torch.cuda.is_available()
    mps = bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()
    if text == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "mps":
        if not mps:
            raise DeviceError(
                "device mps requested, but this machine has no MPS device (use --device auto or cpu)"
            )
        return torch.device("mps")
    if not cuda:
        raise DeviceError(
            f"device {text} requested, but torch sees no CUDA device here (torch {torch.__version__}, "
            f"CUDA build: {torch.version.cuda or 'none'}); use --device auto or cpu"
        )
    index = int(text.partition(":")[2] or 0)
    count = torch.cuda.device_count()
    if index >= count:
        raise DeviceError(
            f"device {text} requested, but this machine has {count} CUDA device(s) (0..{count - 1})"
        )
    return torch.device("cuda", index)
