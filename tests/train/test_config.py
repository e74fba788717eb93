"""TrainConfig: a TOML round trip, and one message per bad field."""

from __future__ import annotations

import pytest

from descent.train import TrainConfig


def test_a_toml_file_gives_the_same_config_as_code(tmp_path):
    path = tmp_path / "train.toml"
    path.write_text(
        """
optimizer = "AdamW"
lr = 3e-4
batch_size = 32
steps = 1000
schedule = "warmup_cosine"
warmup_steps = 100
min_lr = 3e-5
clip_threshold = 1.0
run_dir = "runs/demo"
checkpoint_every = 200

[hyperparameters]
weight_decay = 0.1
betas = [0.9, 0.95]
""",
        encoding="utf-8",
    )
    expected = TrainConfig(
        optimizer="adamw",
        lr=3e-4,
        hyperparameters={"weight_decay": 0.1, "betas": [0.9, 0.95]},
        batch_size=32,
        steps=1000,
        schedule="warmup_cosine",
        warmup_steps=100,
        min_lr=3e-5,
        clip_threshold=1.0,
        run_dir="runs/demo",
        checkpoint_every=200,
    )
    assert TrainConfig.from_toml(path) == expected
    assert TrainConfig.from_dict(expected.to_dict()) == expected


def test_every_field_is_documented_by_a_comment():
    import inspect

    from descent.train import config as module

    source = inspect.getsource(module.TrainConfig)
    for field in TrainConfig.__dataclass_fields__:
        line = next(line for line in source.splitlines() if line.strip().startswith(f"{field}:"))
        assert "#" in line, f"{field} has no comment"


def test_an_unknown_toml_key_is_refused(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("steps = 10\nlearning_rate = 0.1\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"Unknown TrainConfig field\(s\): learning_rate"):
        TrainConfig.from_toml(path)


def test_invalid_toml_is_refused_with_the_path(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("steps = = 10\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"broken.toml is not valid TOML"):
        TrainConfig.from_toml(path)


def test_a_missing_toml_file_is_refused(tmp_path):
    with pytest.raises(ValueError, match="config file not found"):
        TrainConfig.from_toml(tmp_path / "nope.toml")


@pytest.mark.parametrize(
    ("fields", "error", "message"),
    [
        ({"optimizer": "adamax"}, ValueError, r"Invalid optimizer: 'adamax' \(allowed: sgd"),
        ({"lr": -0.1}, ValueError, r"Invalid lr: -0.1 \(allowed: lr >= 0\)"),
        ({"lr": float("nan")}, ValueError, r"Invalid lr: nan \(expected a finite number\)"),
        ({"lr": "0.1"}, TypeError, r"Invalid lr: '0.1' \(expected a real number\)"),
        ({"hyperparameters": {"lr": 0.1}}, ValueError, r"learning rate in TrainConfig.lr"),
        (
            {"hyperparameters": {"momentum": 0.9}, "optimizer": "adam"},
            ValueError,
            r"Unknown hyperparameter\(s\) momentum for optimizer 'adam'",
        ),
        ({"batch_size": 0}, ValueError, r"Invalid batch_size: 0 \(allowed: batch_size >= 1\)"),
        ({"batch_size": 2.5}, TypeError, r"Invalid batch_size: 2.5 \(expected an integer"),
        ({"accumulation_steps": 2}, ValueError, r"accumulation_steps > 1 needs a batch_size"),
        ({"epochs": 2}, ValueError, r"Set exactly one of epochs or steps"),
        ({"steps": None}, ValueError, r"Set exactly one of epochs or steps"),
        ({"schedule": "linear"}, ValueError, r"Invalid schedule: 'linear' \(allowed: constant"),
        ({"schedule": "cyclical"}, ValueError, r"'cyclical' needs max_lr"),
        ({"schedule": "cyclical", "max_lr": 0.001}, ValueError, r"max_lr >= lr"),
        ({"cyclical_mode": "sine"}, ValueError, r"Invalid cyclical_mode: 'sine'"),
        ({"schedule": "cosine", "min_lr": 1.0}, ValueError, r"Invalid min_lr: 1.0"),
        ({"one_cycle_warmup_fraction": 1.0}, ValueError, r"one_cycle_warmup_fraction"),
        ({"clip": "global"}, ValueError, r"Invalid clip: 'global' \(allowed: norm, value\)"),
        ({"clip_threshold": 0}, ValueError, r"Invalid clip_threshold: 0"),
        ({"autocast": "float8"}, ValueError, r"Invalid autocast: .float8. \(allowed: bfloat16"),
        ({"rgd_tau": -1.0}, ValueError, r"Invalid rgd_tau"),
        ({"curvature_estimator": "exact"}, ValueError, r"Invalid curvature_estimator"),
        ({"init": "orthogonal"}, ValueError, r"Invalid init: 'orthogonal'"),
        ({"restarts": 0}, ValueError, r"Invalid restarts: 0"),
        ({"early_stopping_patience": 0}, ValueError, r"Invalid early_stopping_patience"),
        ({"monitor_mode": "up"}, ValueError, r"Invalid monitor_mode: 'up'"),
        ({"guard_loss_factor": 1.0}, ValueError, r"guard_loss_factor: 1.0 \(allowed: > 1"),
        ({"guard_lr_cut": 1.5}, ValueError, r"Invalid guard_lr_cut: 1.5"),
        ({"guard": 1}, TypeError, r"Invalid guard: 1 \(expected True or False\)"),
        ({"seed": -1}, ValueError, r"Invalid seed: -1"),
        ({"checkpoint_every": 10}, ValueError, r"checkpoint_every needs run_dir"),
        ({"tensorboard": True}, ValueError, r"tensorboard=True needs run_dir"),
        ({"progress": "fancy"}, ValueError, r"Invalid progress: 'fancy'"),
        ({"log_every": 0}, ValueError, r"Invalid log_every: 0"),
    ],
)
def test_each_bad_field_is_named(fields, error, message):
    values = {"steps": 10, **fields}
    with pytest.raises(error, match=message):
        TrainConfig(**values)
