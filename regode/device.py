"""The compute device of a run: ``auto`` takes a CUDA GPU when torch sees one, else the CPU."""

from __future__ import annotations

import torch

from .config import DEVICES
from .errors import RegodeError


def resolve_device(name: str) -> torch.device:
    """``auto``, ``cpu`` or ``cuda`` as a torch device (``cuda`` without a GPU is an error)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RegodeError("--device cuda was asked for, but torch sees no CUDA device")
    if name not in DEVICES:
        raise RegodeError(f"unknown --device {name!r}: use {', '.join(DEVICES)}")
    return torch.device(name)
