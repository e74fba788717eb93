"""A device that is misspelt or absent gets one clear ValueError, not a CUDA assertion."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from descent import TrainConfig, fit, minimize
from descent.cli import app
from descent.devices import parse_device, resolve_device

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")


def test_a_misspelt_device_is_refused_when_the_config_is_made():
    with pytest.raises(ValueError, match=r"Invalid device: 'gpu' \(expected 'cpu', 'cuda'"):
        TrainConfig(device="gpu", steps=1)
    with pytest.raises(TypeError, match="Invalid device: 0"):
        TrainConfig(device=0, steps=1)
    assert parse_device("cuda:1") == torch.device("cuda", 1)  # valid anywhere; used elsewhere


@no_cuda
def test_an_absent_gpu_is_named_by_fit_and_minimize():
    config = TrainConfig(device="cuda", steps=2)
    data = (torch.randn(8, 2), torch.randn(8, 1))
    with pytest.raises(ValueError, match="device 'cuda' is not available"):
        fit(torch.nn.Linear(2, 1), data, torch.nn.MSELoss(), config)
    with pytest.raises(ValueError, match="sees no CUDA GPU here; use device='cpu'"):
        minimize(lambda x: (x**2).sum(), [1.0, 2.0], device="cuda:0")
    result = CliRunner().invoke(app, ["minimize", "rosenbrock", "-p", "device=cuda"])
    assert result.exit_code == 2 and "is not available" in result.output


def test_cpu_always_resolves():
    assert resolve_device("cpu") == torch.device("cpu")
