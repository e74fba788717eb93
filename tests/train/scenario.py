"""One small training run per optimizer, importable by tests and runnable as a subprocess.

``python -m tests.train.scenario OPTIMIZER RUN_DIR [--slow]`` trains the scenario, printing
``step N`` after every step; tests interrupt it (SIGINT, SIGTERM, SIGKILL) and resume in-process.
``python -m tests.train.scenario --checkpoint-storm RUN_DIR`` writes large checkpoints at every
step until killed.
"""

from __future__ import annotations

import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

from descent.train import TrainConfig, fit

OPTIMIZER_SETTINGS = {
    "sgd": {"lr": 0.05, "hyperparameters": {}},
    "adamw": {"lr": 3e-3, "hyperparameters": {"weight_decay": 0.05}},
    "lion": {"lr": 1e-3, "hyperparameters": {"weight_decay": 0.1}},
    "sophia": {"lr": 3e-3, "hyperparameters": {"k": 3, "rho": 0.05}},
}
STEPS = 24
BATCHES_PER_EPOCH = 6  # 96 examples / 16: checkpoints every 5 steps fall mid-epoch


def data() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(96, 6, generator=generator)
    y = (x @ torch.randn(6, 3, generator=generator)).argmax(dim=1)
    return x, y


def model() -> nn.Module:
    # Dropout draws from torch's global RNG: an exact resume must restore it.
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 3))


def config(optimizer: str, run_dir: str | None, **overrides) -> TrainConfig:
    settings = OPTIMIZER_SETTINGS[optimizer]
    values = dict(
        optimizer=optimizer,
        lr=settings["lr"],
        hyperparameters=settings["hyperparameters"],
        batch_size=16,
        steps=STEPS,
        schedule="warmup_cosine",
        warmup_steps=4,
        clip_threshold=1.0,
        run_dir=run_dir,
        checkpoint_every=5 if run_dir is not None else None,
        keep_checkpoints=2,
        log_every=4,
        seed=7,
        progress="none",
    )
    values.update(overrides)
    return TrainConfig(**values)


def train(optimizer: str, run_dir: str | None, resume=None, callbacks=(), **overrides):
    network = model()
    history = fit(
        network,
        data(),
        nn.CrossEntropyLoss(),
        config(optimizer, run_dir, **overrides),
        resume=resume,
        callbacks=callbacks,
    )
    return network, history


def _checkpoint_storm(run_dir: str) -> None:
    torch.manual_seed(0)
    network = nn.Linear(1000, 1000)
    x = torch.randn(32, 1000)
    storm = TrainConfig(
        optimizer="adamw",
        steps=100_000,
        batch_size=32,
        run_dir=run_dir,
        checkpoint_every=1,
        keep_checkpoints=3,
        guard=False,
        progress="none",
    )
    fit(network, (x, x), F.mse_loss, storm)


def main(argv: list[str]) -> None:
    torch.set_num_threads(1)
    if argv[0] == "--checkpoint-storm":
        _checkpoint_storm(argv[1])
        return
    optimizer, run_dir = argv[0], argv[1]
    slow = "--slow" in argv

    def report(info):
        print(f"step {info['step']}", flush=True)
        if slow:
            time.sleep(0.05)

    train(optimizer, run_dir, callbacks=[report])


if __name__ == "__main__":
    main(sys.argv[1:])
