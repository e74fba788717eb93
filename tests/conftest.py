"""Shared fixtures: float64 problems that every optimizer test can drive."""

from __future__ import annotations

import pytest
import torch
from torch import nn

SHAPES = [(), (7,), (5, 3), (2, 3, 4, 2)]


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


def random_tensors(seed: int = 0, dtype: torch.dtype = torch.float64) -> list[torch.Tensor]:
    """One leaf tensor per shape in SHAPES (0-d, 1-d, 2-d, 4-d)."""
    generator = torch.Generator().manual_seed(seed)
    return [
        torch.randn(shape, generator=generator, dtype=dtype).requires_grad_(True)
        for shape in SHAPES
    ]


def gradient_stream(tensors: list[torch.Tensor], steps: int, seed: int = 1):
    """The same pseudo-random gradients for every optimizer fed from it."""
    generator = torch.Generator().manual_seed(seed)
    return [
        [torch.randn(t.shape, generator=generator, dtype=t.dtype) for t in tensors]
        for _ in range(steps)
    ]


def small_mlp(seed: int = 0, dtype: torch.dtype = torch.float64) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).to(dtype)


def mlp_batches(steps: int, seed: int = 2, dtype: torch.dtype = torch.float64):
    generator = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(16, 6, generator=generator, dtype=dtype),
            torch.randint(0, 3, (16,), generator=generator),
        )
        for _ in range(steps)
    ]


def two_groups(model: nn.Module, lr: float, weight_decay: float) -> list[dict]:
    """Weights in one group, biases in another with their own lr and no decay."""
    weights = [p for n, p in model.named_parameters() if n.endswith("weight")]
    biases = [p for n, p in model.named_parameters() if n.endswith("bias")]
    return [
        {"params": weights, "weight_decay": weight_decay},
        {"params": biases, "lr": lr * 3, "weight_decay": 0.0},
    ]


def assert_close_relative(actual: torch.Tensor, expected: torch.Tensor, rtol: float) -> None:
    scale = expected.abs().max().clamp(min=1e-300)
    error = (actual - expected).abs().max()
    assert error <= rtol * scale, f"relative error {float(error / scale):.3e} > {rtol}"
