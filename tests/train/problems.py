"""Small problems with known answers, shared by the training-loop tests."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def least_squares(n: int = 64, d: int = 4, noise: float = 0.1, seed: int = 0):
    """float64 (X, y) and the closed-form solution [w; b] of min ||X w + b - y||^2 (lstsq)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=generator, dtype=torch.float64)
    w = torch.randn(d, 1, generator=generator, dtype=torch.float64)
    y = x @ w + 0.5 + noise * torch.randn(n, 1, generator=generator, dtype=torch.float64)
    design = np.hstack([x.numpy(), np.ones((n, 1))])
    solution = np.linalg.lstsq(design, y.numpy(), rcond=None)[0].ravel()
    return x, y, solution


def linear_model(d: int = 4, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(d, 1).double()


def parameters_of(model: nn.Linear) -> np.ndarray:
    return np.concatenate([model.weight.detach().numpy().ravel(), model.bias.detach().numpy()])


def classification(n: int = 96, d: int = 6, classes: int = 3, seed: int = 0):
    """float32 features and integer labels from a random linear teacher."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=generator)
    teacher = torch.randn(d, classes, generator=generator)
    y = (x @ teacher).argmax(dim=1)
    return x, y


def mlp(d: int = 6, classes: int = 3, hidden: int = 16, dropout: float = 0.0, seed: int = 0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(d, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, classes)
    )


def weights(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def assert_bitwise_equal(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    assert len(a) == len(b)
    for left, right in zip(a, b):
        assert torch.equal(left, right), (left - right).abs().max()
