"""Where tensors live: one check that names the problem instead of a deep CUDA assertion."""

from __future__ import annotations

import torch


def parse_device(name: str | torch.device) -> torch.device:
    """``name`` as a ``torch.device``; ValueError for a string torch does not read as one."""
    if isinstance(name, torch.device):
        return name
    if not isinstance(name, str):
        raise TypeError(f"Invalid device: {name!r} (expected a string such as 'cpu' or 'cuda:0')")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ValueError(
            f"Invalid device: {name!r} (expected 'cpu', 'cuda', 'cuda:N', 'mps', ...)"
        ) from None


def resolve_device(name: str | torch.device) -> torch.device:
    """Like :func:`parse_device`, and the device must exist on this machine."""
    device = parse_device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            built = torch.version.cuda or "no CUDA"
            raise ValueError(
                f"device {name!r} is not available: torch {torch.__version__} ({built}) sees "
                "no CUDA GPU here; use device='cpu'"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {name!r} is not available: only {torch.cuda.device_count()} CUDA "
                "device(s) here"
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {name!r} is not available on this machine; use device='cpu'")
    return device
