"""TrainConfig: every knob of :func:`descent.train.fit`, one per line, validated."""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

from descent.devices import parse_device
from descent.optim import OPTIMIZERS

SCHEDULES = ("constant", "step", "cosine", "warmup_cosine", "cyclical", "one_cycle")
CYCLICAL_MODES = ("triangular", "triangular2", "exp_range")
CLIP_MODES = ("norm", "value")
AUTOCAST_DTYPES = ("bfloat16", "float16")
INITIALISATIONS = ("default", "xavier", "he")
CURVATURE_ESTIMATORS = ("auto", "gnb", "hutchinson")
PROGRESS_MODES = ("auto", "bar", "lines", "none")
MONITOR_MODES = ("min", "max")


@dataclass
class TrainConfig:
    """Everything :func:`~descent.train.fit` needs besides the model, the data and the loss.

    Build it in code (``TrainConfig(optimizer="adamw", lr=3e-4, steps=1000)``) or from a TOML
    file whose top-level keys are these field names (:meth:`from_toml`). Every field is
    checked when the config is made; a bad value raises ``ValueError`` or ``TypeError``
    naming the field and what is allowed.
    """

    # -- optimizer ---------------------------------------------------------------------------
    optimizer: str = "sgd"  # a name from descent.optim.OPTIMIZERS
    lr: float = 0.01  # base (peak) learning rate; schedules multiply it
    hyperparameters: dict[str, Any] = field(default_factory=dict)  # the optimizer's other ones
    decay_biases_and_norms: bool = False  # False: weight_decay only on tensors with dim >= 2

    # -- how much data per step, and for how long -------------------------------------------
    batch_size: int | None = None  # None: batch GD over all data; 1: stochastic; k: mini-batch
    accumulation_steps: int = 1  # micro-batches of batch_size summed into one optimizer step
    epochs: int | None = None  # passes over the data (set epochs or steps, not both)
    steps: int | None = None  # optimizer steps (set epochs or steps, not both)

    # -- learning-rate schedule --------------------------------------------------------------
    schedule: str = "constant"  # one of SCHEDULES
    warmup_steps: int = 0  # warmup_cosine: linear warmup from lr/(warmup_steps+1) to lr
    min_lr: float = 0.0  # cosine, warmup_cosine: the lr at the last step
    decay_every: int = 1000  # step: multiply the lr by decay_factor every decay_every steps
    decay_factor: float = 0.1  # step: the factor
    max_lr: float | None = None  # cyclical: the top of the cycle (lr is the bottom)
    cycle_steps: int = 2000  # cyclical: steps from the bottom to the top (half a cycle)
    cyclical_mode: str = "triangular"  # cyclical: triangular, triangular2 or exp_range
    cycle_gamma: float = 1.0  # cyclical exp_range: amplitude multiplier per step
    one_cycle_warmup_fraction: float = 0.3  # one_cycle: fraction of steps rising to lr

    # -- gradient handling -------------------------------------------------------------------
    clip: str = "norm"  # clip by global "norm" or element-wise "value"
    clip_threshold: float | None = None  # None: no clipping
    autocast: str | None = None  # None (full precision), "bfloat16", or "float16" (with
    #                               loss scaling by torch.amp.GradScaler)
    rgd_tau: float | None = None  # RGD re-weighting with this tau; loss_fn must return
    #                                per-example losses (reduction="none")
    curvature_estimator: str = "auto"  # auto: GNB for cross-entropy over logits, else Hutchinson
    curvature_clip: float | None = 1.0  # clip the GNB gradient to this norm (official script)

    # -- model -------------------------------------------------------------------------------
    init: str = "default"  # default (keep the model's), xavier or he, on tensors with dim >= 2
    allow_integer_inputs: bool = False  # True for token ids or user/item indices as X

    # -- selection ---------------------------------------------------------------------------
    restarts: int = 1  # independent starts (seed, seed+1, ...); the best by monitor is kept
    early_stopping_patience: int | None = None  # evaluations without improvement before stop
    monitor: str = "val_loss"  # the evaluation value to select and stop on
    monitor_mode: str = "min"  # min or max

    # -- divergence guard --------------------------------------------------------------------
    guard: bool = True  # roll back on a non-finite loss or gradient norm
    guard_loss_factor: float | None = None  # also roll back when loss > factor * running min
    guard_lr_cut: float = 0.5  # multiply the lr by this at each rollback
    guard_max_rollbacks: int = 5  # consecutive rollbacks before stopping with an error
    guard_snapshot_every: int = 100  # steps between in-memory snapshots of the last good state

    # -- bookkeeping -------------------------------------------------------------------------
    seed: int = 0  # seeds the data order, the model's randomness and curvature probes
    eval_every: int | None = None  # steps between evaluations (None: only at the end)
    log_every: int = 10  # steps between History records and log lines
    checkpoint_every: int | None = None  # steps between checkpoints (needs run_dir)
    keep_checkpoints: int = 3  # how many of the latest checkpoints to keep
    run_dir: str | None = None  # where metrics.jsonl, checkpoints and TensorBoard logs go
    tensorboard: bool = False  # also write TensorBoard scalars (the tensorboard extra)
    progress: str = "auto"  # auto (bar on a terminal, lines otherwise), bar, lines or none
    device: str = "cpu"  # where the model and the data live

    def __post_init__(self) -> None:
        _validate(self)

    @classmethod
    def from_toml(cls, path: str | Path) -> TrainConfig:
        """Read a config from a TOML file whose top-level keys are field names."""
        path = Path(path)
        try:
            with path.open("rb") as file:
                values = tomllib.load(file)
        except FileNotFoundError:
            raise ValueError(f"config file not found: {path}") from None
        except tomllib.TOMLDecodeError as error:
            raise ValueError(f"config file {path} is not valid TOML: {error}") from None
        return cls.from_dict(values)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build a config from a mapping of field names; an unknown key is an error."""
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise ValueError(
                f"Unknown TrainConfig field(s): {', '.join(unknown)}; allowed: {', '.join(names)}"
            )
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (TOML- and JSON-friendly)."""
        return dataclasses.asdict(self)


def _validate(config: TrainConfig) -> None:
    c = config
    if not isinstance(c.optimizer, str) or c.optimizer.lower() not in OPTIMIZERS:
        raise ValueError(f"Invalid optimizer: {c.optimizer!r} (allowed: {', '.join(OPTIMIZERS)})")
    c.optimizer = c.optimizer.lower()
    _non_negative("lr", c.lr)
    if not isinstance(c.hyperparameters, dict):
        raise TypeError(f"Invalid hyperparameters: {c.hyperparameters!r} (expected a dict)")
    if "lr" in c.hyperparameters:
        raise ValueError("Put the learning rate in TrainConfig.lr, not in hyperparameters")
    allowed = OPTIMIZERS[c.optimizer].hyperparameters
    unknown = sorted(set(c.hyperparameters) - set(allowed))
    if unknown:
        raise ValueError(
            f"Unknown hyperparameter(s) {', '.join(unknown)} for optimizer {c.optimizer!r}; "
            f"allowed: {', '.join(k for k in allowed if k != 'lr')}"
        )
    _bool("decay_biases_and_norms", c.decay_biases_and_norms)

    if c.batch_size is not None:
        _positive_int("batch_size", c.batch_size)
    _positive_int("accumulation_steps", c.accumulation_steps)
    if c.accumulation_steps > 1 and c.batch_size is None:
        raise ValueError(
            "accumulation_steps > 1 needs a batch_size: batch gradient descent (batch_size=None) "
            "already uses all the data in one step"
        )
    if (c.epochs is None) == (c.steps is None):
        raise ValueError(
            f"Set exactly one of epochs or steps (got epochs={c.epochs}, steps={c.steps})"
        )
    if c.epochs is not None:
        _positive_int("epochs", c.epochs)
    if c.steps is not None:
        _positive_int("steps", c.steps)

    _choice("schedule", c.schedule, SCHEDULES)
    _non_negative_int("warmup_steps", c.warmup_steps)
    _non_negative("min_lr", c.min_lr)
    if c.schedule in ("cosine", "warmup_cosine") and c.min_lr > c.lr:
        raise ValueError(f"Invalid min_lr: {c.min_lr} (allowed: min_lr <= lr = {c.lr})")
    _positive_int("decay_every", c.decay_every)
    _positive("decay_factor", c.decay_factor)
    _positive_int("cycle_steps", c.cycle_steps)
    _choice("cyclical_mode", c.cyclical_mode, CYCLICAL_MODES)
    _positive("cycle_gamma", c.cycle_gamma)
    if c.schedule == "cyclical":
        if c.max_lr is None:
            raise ValueError("schedule 'cyclical' needs max_lr, the top of the cycle")
        _positive("max_lr", c.max_lr)
        if c.max_lr < c.lr:
            raise ValueError(f"Invalid max_lr: {c.max_lr} (allowed: max_lr >= lr = {c.lr})")
    elif c.max_lr is not None:
        _positive("max_lr", c.max_lr)
    fraction = _number("one_cycle_warmup_fraction", c.one_cycle_warmup_fraction)
    if not 0.0 < fraction < 1.0:
        raise ValueError(
            f"Invalid one_cycle_warmup_fraction: {fraction} (allowed: 0 < fraction < 1)"
        )

    _choice("clip", c.clip, CLIP_MODES)
    if c.clip_threshold is not None:
        _positive("clip_threshold", c.clip_threshold)
    if c.autocast is not None:
        _choice("autocast", c.autocast, AUTOCAST_DTYPES)
    if c.rgd_tau is not None:
        _positive("rgd_tau", c.rgd_tau)
    _choice("curvature_estimator", c.curvature_estimator, CURVATURE_ESTIMATORS)
    if c.curvature_clip is not None:
        _positive("curvature_clip", c.curvature_clip)

    _choice("init", c.init, INITIALISATIONS)
    _bool("allow_integer_inputs", c.allow_integer_inputs)

    _positive_int("restarts", c.restarts)
    if c.early_stopping_patience is not None:
        _positive_int("early_stopping_patience", c.early_stopping_patience)
    if not isinstance(c.monitor, str) or not c.monitor:
        raise TypeError(f"Invalid monitor: {c.monitor!r} (expected a metric name)")
    _choice("monitor_mode", c.monitor_mode, MONITOR_MODES)

    _bool("guard", c.guard)
    if c.guard_loss_factor is not None:
        _positive("guard_loss_factor", c.guard_loss_factor)
        if c.guard_loss_factor <= 1.0:
            raise ValueError(
                f"Invalid guard_loss_factor: {c.guard_loss_factor} (allowed: > 1, or None)"
            )
    cut = _number("guard_lr_cut", c.guard_lr_cut)
    if not 0.0 < cut < 1.0:
        raise ValueError(f"Invalid guard_lr_cut: {cut} (allowed: 0 < guard_lr_cut < 1)")
    _positive_int("guard_max_rollbacks", c.guard_max_rollbacks)
    _positive_int("guard_snapshot_every", c.guard_snapshot_every)

    if isinstance(c.seed, bool) or not isinstance(c.seed, int) or c.seed < 0:
        raise ValueError(f"Invalid seed: {c.seed!r} (expected an integer >= 0)")
    if c.eval_every is not None:
        _positive_int("eval_every", c.eval_every)
    _positive_int("log_every", c.log_every)
    if c.checkpoint_every is not None:
        _positive_int("checkpoint_every", c.checkpoint_every)
        if c.run_dir is None:
            raise ValueError("checkpoint_every needs run_dir, the folder to write checkpoints to")
    _positive_int("keep_checkpoints", c.keep_checkpoints)
    if c.run_dir is not None and not isinstance(c.run_dir, (str, Path)):
        raise TypeError(f"Invalid run_dir: {c.run_dir!r} (expected a path)")
    if c.run_dir is not None:
        c.run_dir = str(c.run_dir)
    _bool("tensorboard", c.tensorboard)
    if c.tensorboard and c.run_dir is None:
        raise ValueError("tensorboard=True needs run_dir, the folder to write events to")
    _choice("progress", c.progress, PROGRESS_MODES)
    parse_device(c.device)  # availability is checked by fit, on the machine that trains


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"Invalid {name}: {value!r} (expected a real number)")
    if not math.isfinite(value):
        raise ValueError(f"Invalid {name}: {value} (expected a finite number)")
    return float(value)


def _non_negative(name: str, value: Any) -> None:
    if _number(name, value) < 0:
        raise ValueError(f"Invalid {name}: {value} (allowed: {name} >= 0)")


def _positive(name: str, value: Any) -> None:
    if _number(name, value) <= 0:
        raise ValueError(f"Invalid {name}: {value} (allowed: {name} > 0)")


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"Invalid {name}: {value!r} (expected an integer >= 1)")
    if value < 1:
        raise ValueError(f"Invalid {name}: {value} (allowed: {name} >= 1)")


def _non_negative_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"Invalid {name}: {value!r} (expected an integer >= 0)")
    if value < 0:
        raise ValueError(f"Invalid {name}: {value} (allowed: {name} >= 0)")


def _bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"Invalid {name}: {value!r} (expected True or False)")


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"Invalid {name}: {value!r} (allowed: {', '.join(allowed)})")
