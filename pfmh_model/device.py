"""Where a site trains: ``"auto" | "cpu" | "cuda" | "cuda:N"`` to a ``torch.device``, checked.

Models, data, optimisers, DP-SGD and evaluation run on the device; codes and prototype
statistics leave it as numpy (``SiteTrainer.encode``), so nothing outside training changes.
Initial weights are always drawn on the CPU from the seed and then moved, so sites on
different devices still start from one common initialisation. Batch order and dropout masks
come from a generator on the device: a CUDA run is reproducible on its own but draws other
masks than a CPU run with the same seed.
"""
from __future__ import annotations

import re

import torch

from pfmh_model.errors import OptionError

__all__ = ["DEVICE_PATTERN", "check_device_spec", "resolve_device"]

DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")


def check_device_spec(spec: object) -> str:
    """The spec itself if it is well-formed (whether the device exists is checked by ``resolve_device``).

    Raises:
        OptionError: not one of auto, cpu, cuda, cuda:N.
    """
    if not isinstance(spec, str) or not DEVICE_PATTERN.fullmatch(spec):
        raise OptionError(f"device={spec!r} is invalid: use 'auto', 'cpu', 'cuda' or 'cuda:N'")
    return spec


def resolve_device(spec: str | torch.device) -> torch.device:
    """The torch device for ``spec``; ``auto`` is the first CUDA device when there is one, else the CPU.

    Raises:
        OptionError: malformed, or CUDA asked for where torch sees none (or not that many).
    """
    if isinstance(spec, torch.device):
        return spec
    check_device_spec(spec)
    if spec == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = 0 if device.index is None else device.index
        if index >= count:
            raise OptionError(f"device={spec!r} is not available: torch sees {count} CUDA device(s) "
                              f"(build {torch.__version__}); use 'cpu' or 'auto'")
        device = torch.device("cuda", index)
    return device
