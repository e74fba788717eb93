"""fit(): one training loop for batch, stochastic and mini-batch gradient descent.

Every step runs in one fixed order, nanoGPT's:

    set lr -> evaluate / checkpoint -> forward/backward (accumulated) -> clip -> guard
    -> step -> curvature refresh -> zero_grad -> schedule -> log

An optimizer that needs curvature says so (``curvature_due``); one that scales its step by the
number of predictions takes ``bs``. The loop reads both from the optimizer, never its name.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import inspect
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from descent.devices import resolve_device
from descent.optim import OPTIMIZERS, create_optimizer, gnb_loss, hutchinson, rgd_loss
from descent.train.checkpoint import (
    CheckpointError,
    check_matches,
    checkpoint_dir,
    list_checkpoints,
    load_checkpoint,
    rng_states,
    set_rng_states,
    write_checkpoint,
)
from descent.train.config import TrainConfig
from descent.train.data import LoaderBatches, to_batches
from descent.train.guard import DivergenceGuard
from descent.train.logging import History, RunLogger
from descent.train.schedules import build_scheduler
from descent.train.selection import EarlyStopping, initialise, reinitialise

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Metric = Callable[[torch.Tensor, torch.Tensor], Any]


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped training; a checkpoint was written (see the message)."""


def fit(
    model: nn.Module,
    train_data: Any,
    loss_fn: LossFn,
    config: TrainConfig,
    val_data: Any = None,
    metrics: Mapping[str, Metric] | None = None,
    *,
    resume: str | Path | None = None,
    callbacks: Sequence[Callable[[dict[str, Any]], None]] = (),
) -> History:
    """Train ``model`` on ``train_data`` by gradient descent as ``config`` says; return the History.

    Args:
        model: an ``nn.Module``; it is trained in place (and left with the best weights when
            early stopping or restarts select them).
        train_data: ``(X, y)`` tensors or numpy arrays (batched by indexing, the fast path),
            a map-style ``Dataset`` of ``(x, y)`` items, or a ``DataLoader`` (its own batches;
            then ``config.batch_size`` must be None).
        loss_fn: ``loss_fn(model(x), y)`` -> a scalar; per-example losses (shape ``(batch,)``)
            when ``config.rgd_tau`` is set. ``nn.CrossEntropyLoss`` / ``F.cross_entropy``
            select the GNB curvature estimator for Sophia.
        config: a :class:`TrainConfig`.
        val_data: optional, same forms as ``train_data``; evaluated every ``eval_every``
            steps and at the end (``val_loss`` and each metric).
        metrics: name -> ``fn(outputs, targets)`` -> number, computed over the whole
            validation set at once.
        resume: a checkpoint file, or a run directory (its newest checkpoint): continue that
            run exactly where it stopped. With ``restarts > 1``, the run directory (holding
            ``restart_0``, ``restart_1``, ...): finished starts are read back, the interrupted
            one continues, the rest run.
        callbacks: called after every step with ``{"step", "epoch", "loss", "lr"}``; an
            exception from one stops training (checkpoints written so far remain).

    Raises:
        ValueError / TypeError: bad data, model or arguments, before any training.
        CheckpointError: ``resume`` is corrupt, truncated or for another model or optimizer.
        DivergenceError: the divergence guard ran out of rollbacks.
        TrainingInterrupted: SIGINT or SIGTERM; a checkpoint was written when ``run_dir`` is set.
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError(
            "the model has no trainable parameters (none has requires_grad=True): nothing to fit"
        )
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
    metrics = dict(metrics or {})
    for name, metric in metrics.items():
        if not callable(metric):
            raise TypeError(f"metric {name!r} must be callable, got {type(metric).__name__}")
    if config.restarts > 1:
        return _fit_restarts(
            model, train_data, loss_fn, config, val_data, metrics, callbacks, resume
        )
    if config.early_stopping_patience is not None and val_data is None:
        raise ValueError("early_stopping_patience needs val_data to monitor")
    return _Run(model, train_data, loss_fn, config, val_data, metrics, callbacks).train(resume)


class _Run:
    """One training run: the objects fit() builds once, and the loop over them."""

    def __init__(
        self,
        model: nn.Module,
        train_data: Any,
        loss_fn: LossFn,
        config: TrainConfig,
        val_data: Any,
        metrics: dict[str, Metric],
        callbacks: Sequence[Callable[[dict[str, Any]], None]],
    ) -> None:
        self.config = c = config
        self.device = resolve_device(c.device)
        self.model = model.to(self.device)
        self.loss_fn, self.metrics, self.callbacks = loss_fn, metrics, list(callbacks)
        dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
        common = dict(seed=c.seed, dtype=dtype, device=self.device)
        self.batches = to_batches(
            train_data,
            batch_size=c.batch_size,
            allow_integer_inputs=c.allow_integer_inputs,
            **common,
        )
        self.val = None
        if val_data is not None:
            self.val = to_batches(
                val_data,
                batch_size=None if c.batch_size is None else max(c.batch_size, 1024),
                allow_integer_inputs=c.allow_integer_inputs,
                name="val_data",
                shuffle=False,
                clamp_batch_size=True,
                **common,
            )
        if c.steps is not None:
            self.total_steps = c.steps
        else:
            self.total_steps = c.epochs * self.batches.batches_per_epoch // c.accumulation_steps
            if self.total_steps == 0:
                raise ValueError(
                    f"epochs={c.epochs} with accumulation_steps={c.accumulation_steps} makes no "
                    f"full step ({self.batches.batches_per_epoch} batches per epoch)"
                )
        self.trainable = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = create_optimizer(
            c.optimizer, _param_groups(model, c), lr=c.lr, **c.hyperparameters
        )
        self.scheduler = build_scheduler(self.optimizer, c, self.total_steps)
        self.schedule_moves = c.schedule != "constant"
        self.step_takes_bs = "bs" in inspect.signature(self.optimizer.step).parameters
        # Read once: an optimizer without the attribute never needs curvature.
        self.asks_for_curvature = hasattr(self.optimizer, "curvature_due")
        self.autocast = (
            contextlib.nullcontext
            if c.autocast is None
            else functools.partial(torch.autocast, self.device.type, dtype=_PRECISIONS[c.autocast])
        )
        # float16's narrow range needs loss scaling (bfloat16 has float32's range): the loss is
        # scaled before backward, the gradients unscaled before clipping, and a step whose
        # gradients overflowed is skipped while the scale comes down.
        self.scaler = torch.amp.GradScaler(self.device.type) if c.autocast == "float16" else None
        self.gnb = c.curvature_estimator == "gnb" or (
            c.curvature_estimator == "auto" and _is_cross_entropy(loss_fn)
        )
        self.curvature_rng = torch.Generator(device=self.device).manual_seed(c.seed)
        self.guard = DivergenceGuard(
            c.guard_loss_factor, c.guard_lr_cut, c.guard_max_rollbacks, c.guard_snapshot_every
        )
        self.stopper = EarlyStopping(c.monitor, c.monitor_mode, c.early_stopping_patience)
        self.history = History()
        self.step, self.position = 0, 0
        self.resume_from = c.run_dir  # what an interruption's message tells the user to resume

    # -- the loop ----------------------------------------------------------------------------

    def train(self, resume: str | Path | None) -> History:
        c, model, optimizer = self.config, self.model, self.optimizer
        if resume is not None:
            self._restore(resume)
        else:
            torch.manual_seed(c.seed)
            initialise(model, c.init, c.seed)
        history = self.history
        resumed_at = self.step if resume is not None else None
        stop = history.stop_reason == "early_stopping"  # a resumed run that had stopped
        logger = RunLogger(c.run_dir, self.total_steps, c.progress, c.tensorboard, history)
        session_start = time.perf_counter() - history.seconds
        last_log = (time.perf_counter(), self.position)
        model.train()
        with logger, _interrupt_signals() as interrupted:
            while True:
                step = self.step
                # set lr (the schedule's, times the guard's cut after rollbacks)
                lr = _apply_lr(optimizer, self.scheduler, self.guard.lr_scale)

                # evaluate / checkpoint (the resumed step already did both before it was saved)
                if step != resumed_at:
                    due = c.eval_every is not None and step % c.eval_every == 0
                    if self.val is not None and (due or step == self.total_steps):
                        record = self._evaluate(step)
                        history.evaluations.append(record)
                        logger.evaluation(record)
                        stop = self.stopper.update(record, model)
                    due = c.checkpoint_every is not None and step % c.checkpoint_every == 0
                    finishing = stop or step == self.total_steps
                    if c.run_dir is not None and (interrupted.is_set() or finishing or due):
                        history.seconds = time.perf_counter() - session_start
                        history.stop_reason = "early_stopping" if stop else "completed"
                        if interrupted.is_set():
                            history.stop_reason = "interrupted"
                        path = self._checkpoint()
                    if interrupted.is_set():
                        hint = "no checkpoint was written (set run_dir to get one)"
                        if c.run_dir is not None:
                            hint = f"checkpoint written to {path}; resume with fit(..., resume="
                            hint += (
                                f"{str(path)!r}) or resume={c.run_dir!r}"
                                if self.resume_from == c.run_dir
                                else f"{self.resume_from!r}) (the run of every restart)"
                            )
                        message = f"training interrupted at step {step}/{self.total_steps}: {hint}"
                        logger.message(message, force=True)
                        raise TrainingInterrupted(message)
                if stop or step == self.total_steps:
                    break

                # forward / backward, accumulated over micro-batches
                loss, predictions, examples = self._forward_backward()
                loss_value = loss.item() if (c.guard or self.callbacks) else math.nan
                log_now = (step + 1) % c.log_every == 0 or step + 1 == self.total_steps

                # clip (the norm is measured before clipping, on unscaled gradients)
                if self.scaler is not None:
                    self.scaler.unscale_(optimizer)
                grad_norm = self._clip(measure=log_now)

                # guard, then step and curvature refresh (with loss scaling, overflowing
                # gradients are the scaler's to skip, not a divergence)
                checked = grad_norm if self.scaler is None else None
                reason = self.guard.check(loss_value, checked) if c.guard else None
                if reason is None and c.guard:
                    reason = self.guard.accept(step, loss_value, model, optimizer)
                win_rate = None
                if reason is not None:
                    restored = self.guard.rollback(model, optimizer, reason)
                    record = {
                        "step": step + 1,
                        "reason": reason,
                        "restored_step": restored,
                        "lr_scale": self.guard.lr_scale,
                    }
                    history.rollbacks.append(record)
                    logger.rollback(record)
                    if self.scaler is not None:
                        self.scaler.update()  # this step's unscale_ is done with
                else:
                    arguments = {"bs": predictions} if self.step_takes_bs else {}
                    if self.scaler is None:
                        optimizer.step(**arguments)
                    else:
                        self.scaler.step(optimizer, **arguments)
                        self.scaler.update()
                    if log_now and hasattr(optimizer, "win_rate"):
                        win_rate = optimizer.win_rate()  # before the refresh changes h
                    if self.asks_for_curvature and optimizer.curvature_due:
                        self._refresh_curvature()
                optimizer.zero_grad(set_to_none=True)
                if self.guard.lr_scale != 1.0 or reason is not None:
                    _restore_lr(optimizer, self.scheduler)
                if self.schedule_moves:  # stepping a constant schedule costs ~1% of a small step
                    self.scheduler.step()
                self.step = step = step + 1
                history.seconds = time.perf_counter() - session_start

                # log
                if log_now:
                    now = time.perf_counter()
                    seen = (self.position - last_log[1]) * (examples / c.accumulation_steps)
                    record = {
                        "step": step,
                        "epoch": self.position / self.batches.batches_per_epoch,
                        "loss": loss.item(),
                        "lr": lr,
                        "grad_norm": grad_norm,
                        "seconds": history.seconds,
                        "examples_per_second": seen / max(now - last_log[0], 1e-12),
                    }
                    if win_rate is not None:
                        record["win_rate"] = win_rate
                    if self.scaler is not None:
                        record["loss_scale"] = self.scaler.get_scale()
                    last_log = (now, self.position)
                    history.records.append(record)
                    logger.step(record)
                for callback in self.callbacks:
                    callback(
                        {
                            "step": step,
                            "epoch": self.position / self.batches.batches_per_epoch,
                            "loss": loss_value,
                            "lr": lr,
                        }
                    )
            logger.flush()
        history.stop_reason = "early_stopping" if stop else "completed"
        if stop:
            self.stopper.restore_best(model)
        history.best = self.stopper.best_record
        return history

    # -- the parts of a step -----------------------------------------------------------------

    def _forward_backward(self) -> tuple[torch.Tensor, int, int]:
        """Accumulate gradients over the step's micro-batches: (loss, predictions, examples)."""
        accumulation = self.config.accumulation_steps
        total = None
        predictions = examples = 0
        for _ in range(accumulation):
            x, y = self.batches.get(self.position)
            self.position += 1
            with self.autocast():
                loss = self._loss(self.model(x), y)
            mean = loss / accumulation if accumulation > 1 else loss
            (mean if self.scaler is None else self.scaler.scale(mean)).backward()
            detached = loss.detach()
            total = detached if total is None else total + detached
            predictions += _predictions(y)
            examples += y.shape[0]
        self.history.gradient_evaluations += accumulation
        return (total / accumulation if accumulation > 1 else total), predictions, examples

    def _loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        losses = self.loss_fn(outputs, targets)
        if not isinstance(losses, torch.Tensor):
            raise TypeError(f"loss_fn must return a tensor, got {type(losses).__name__}")
        if self.config.rgd_tau is not None:
            return rgd_loss(losses, self.config.rgd_tau)
        if losses.dim() != 0:
            raise ValueError(
                f"loss_fn returned shape {tuple(losses.shape)}: it must return a scalar "
                "(per-example losses only with rgd_tau set)"
            )
        return losses

    def _clip(self, measure: bool) -> float | None:
        """Clip as configured; return the norm before clipping when measured, else None."""
        c = self.config
        if not measure and c.clip_threshold is None:
            return None
        if not measure and c.clip == "value":
            torch.nn.utils.clip_grad_value_(self.trainable, c.clip_threshold)
            return None
        grads = [p.grad for p in self.trainable if p.grad is not None]
        norm = _total_norm(grads)
        if c.clip_threshold is not None:
            if c.clip == "norm":
                torch.nn.utils.clip_grads_with_norm_(self.trainable, c.clip_threshold, norm)
            else:
                torch.nn.utils.clip_grad_value_(self.trainable, c.clip_threshold)
        return norm.item()

    def _refresh_curvature(self) -> None:
        """Fold a curvature estimate into the optimizer, on the batch the next step will use."""
        optimizer = self.optimizer
        x, y = self.batches.get(self.position)
        optimizer.zero_grad(set_to_none=True)
        # Under float16 the refresh runs in full precision: its backward is not loss-scaled.
        precision = self.autocast if self.scaler is None else contextlib.nullcontext
        with precision():
            outputs = self.model(x)
        if self.gnb:
            gnb_loss(outputs, generator=self.curvature_rng).backward()
            if self.config.curvature_clip is not None:
                torch.nn.utils.clip_grad_norm_(self.trainable, self.config.curvature_clip)
            optimizer.update_hessian()
        else:
            with precision():
                losses = self.loss_fn(outputs, y)
            # per-example losses (RGD): the curvature of their plain mean, not the re-weighting
            loss = losses.mean() if losses.dim() else losses
            optimizer.update_hessian(hutchinson(loss, self.trainable, generator=self.curvature_rng))
        optimizer.zero_grad(set_to_none=True)
        self.history.gradient_evaluations += 1

    @torch.no_grad()
    def _evaluate(self, step: int) -> dict[str, Any]:
        self.model.eval()
        outputs, targets = [], []
        loss_sum, count = 0.0, 0
        for x, y in _one_pass(self.val):
            with self.autocast():
                out = self.model(x)
                losses = self.loss_fn(out, y)
            loss_sum += float(losses.sum() if losses.dim() else losses * len(y))
            count += len(y)
            if self.metrics:
                outputs.append(out.float() if out.dtype in _PRECISIONS.values() else out)
                targets.append(y)
        self.model.train()
        record = {
            "step": step,
            "epoch": self.position / self.batches.batches_per_epoch,
            "val_loss": loss_sum / count,
        }
        if self.metrics:
            all_outputs, all_targets = torch.cat(outputs), torch.cat(targets)
            for name, metric in self.metrics.items():
                value = metric(all_outputs, all_targets)
                record[name] = float(value.item() if isinstance(value, torch.Tensor) else value)
        return record

    # -- checkpoints -------------------------------------------------------------------------

    def _checkpoint(self) -> Path:
        c = self.config
        payload = {
            "step": self.step,
            "position": self.position,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "optimizer_name": c.optimizer,
            "scheduler": self.scheduler.state_dict(),
            "rng": rng_states(),
            "curvature_rng": self.curvature_rng.get_state(),
            "data": self.batches.state_dict(),
            "guard": self.guard.state_dict(),
            "early_stopping": self.stopper.state_dict(),
            "scaler": None if self.scaler is None else self.scaler.state_dict(),
            "config": c.to_dict(),
            "history": self.history.to_dict(),
        }
        return write_checkpoint(c.run_dir, self.step, payload, c.keep_checkpoints)

    def _restore(self, resume: str | Path) -> None:
        checkpoint = load_checkpoint(resume)
        check_matches(checkpoint, self.model, self.config.optimizer, self.config.batch_size)
        self.model.load_state_dict(checkpoint["model"])
        try:
            self.optimizer.load_state_dict(checkpoint["optimizer"])
        except ValueError as error:
            raise CheckpointError(
                f"checkpoint {checkpoint['path']} has another optimizer layout ({error}); "
                "was decay_biases_and_norms or the set of trainable parameters changed?"
            ) from None
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        self.guard.load_state_dict(checkpoint["guard"])
        self.stopper.load_state_dict(checkpoint["early_stopping"])
        if self.scaler is not None and checkpoint.get("scaler"):
            self.scaler.load_state_dict(checkpoint["scaler"])
        self.history = History.from_dict(checkpoint["history"])
        self.step, self.position = checkpoint["step"], checkpoint["position"]
        if self.step > self.total_steps:
            raise ValueError(
                f"checkpoint {checkpoint['path']} is at step {self.step}, past this run's "
                f"{self.total_steps} steps"
            )
        self.batches.load_state_dict(checkpoint["data"], self.position)
        self.curvature_rng.set_state(checkpoint["curvature_rng"])
        set_rng_states(checkpoint["rng"])


# -- helpers ---------------------------------------------------------------------------------

_PRECISIONS = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def _apply_lr(
    optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler, scale: float
) -> float:
    """Set each group's lr to the schedule's times ``scale``; return the first group's."""
    lrs = scheduler.get_last_lr()
    if scale != 1.0:
        for group, lr in zip(optimizer.param_groups, lrs):
            group["lr"] = lr * scale
    return lrs[0] * scale


def _restore_lr(
    optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler
) -> None:
    # Chainable schedulers (StepLR, CosineAnnealingLR) compute from the group's current lr, so
    # they must see their own value, not the guard's cut one. A rollback also restores a stale
    # lr from the snapshot; this puts the schedule's back.
    for group, lr in zip(optimizer.param_groups, scheduler.get_last_lr()):
        group["lr"] = lr


def _total_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    """The global 2-norm of ``grads`` (what clip_grad_norm_ measures)."""
    if not grads:
        return torch.zeros(())
    first = grads[0]
    if all(g.device == first.device and g.dtype == first.dtype for g in grads):
        # One fused kernel for the per-tensor norms: get_total_norm's grouping costs more
        # than the arithmetic on small models.
        return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    return torch.nn.utils.get_total_norm(grads)


def _param_groups(model: nn.Module, config: TrainConfig) -> list:
    """Trainable parameters; with weight decay, biases and norm weights (dim < 2) get none."""
    params = [p for p in model.parameters() if p.requires_grad]
    weight_decay = config.hyperparameters.get(
        "weight_decay", OPTIMIZERS[config.optimizer].hyperparameters.get("weight_decay", 0.0)
    )
    if config.decay_biases_and_norms or not weight_decay:
        return params
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay}] if decay else []
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def _is_cross_entropy(loss_fn: Any) -> bool:
    return isinstance(loss_fn, nn.CrossEntropyLoss) or loss_fn is F.cross_entropy


def _predictions(targets: torch.Tensor) -> int:
    # Class indices or tokens: one prediction each. Real-valued targets: one per example.
    if targets.is_floating_point():
        return targets.shape[0]
    return targets.numel()


def _one_pass(batches: Any) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    if isinstance(batches, LoaderBatches):
        for x, y in batches.loader:
            yield x.to(batches.device), y.to(batches.device)
    else:
        for index in range(batches.batches_per_epoch):
            yield batches.get(index)


@contextlib.contextmanager
def _interrupt_signals() -> Iterator[threading.Event]:
    """Turn the first SIGINT / SIGTERM into a flag the loop checks; a second SIGINT is immediate."""
    flag = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum: int, frame: Any) -> None:
        if flag.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        flag.set()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


def _fit_restarts(
    model: nn.Module,
    train_data: Any,
    loss_fn: LossFn,
    config: TrainConfig,
    val_data: Any,
    metrics: dict[str, Metric],
    callbacks: Sequence[Callable[[dict[str, Any]], None]],
    resume: str | Path | None,
) -> History:
    """Train from ``restarts`` starts (seeds seed, seed+1, ...); keep the best by the monitor.

    Each start runs in ``run_dir/restart_<i>``. Resuming (``resume`` = that ``run_dir``) reads
    back each start that has a checkpoint (a finished one returns at once, the interrupted one
    continues exactly) and runs the others, so the kept start is the uninterrupted run's.
    """
    if val_data is None:
        raise ValueError("restarts > 1 keeps the best start by a validation metric: pass val_data")
    if resume is not None and not (Path(resume) / "restart_0").is_dir():
        raise ValueError(
            f"with restarts > 1, resume takes the run directory holding restart_0, restart_1, "
            f"...: {str(resume)!r} has no restart_0"
        )
    best_history, best_state, summaries = None, None, []
    for index in range(config.restarts):
        seed = config.seed + index
        run_dir = None if config.run_dir is None else str(Path(config.run_dir) / f"restart_{index}")
        one = dataclasses.replace(config, restarts=1, seed=seed, run_dir=run_dir)
        start = None
        if resume is not None:
            folder = Path(resume) / f"restart_{index}"
            start = folder if list_checkpoints(checkpoint_dir(folder)) else None
        if index > 0 and start is None:
            reinitialise(model, config.init, seed)
        run = _Run(model, train_data, loss_fn, one, val_data, metrics, callbacks)
        run.resume_from = config.run_dir
        history = run.train(start)
        value = None if history.best is None else history.best[config.monitor]
        summaries.append({"seed": seed, config.monitor: value})
        if value is None:
            continue
        best = None if best_history is None else best_history.best[config.monitor]
        if best is None or (value < best if config.monitor_mode == "min" else value > best):
            best_history, best_state = history, copy.deepcopy(model.state_dict())
    if best_history is None:
        raise ValueError(f"no start produced a finite {config.monitor!r}")
    model.load_state_dict(best_state)
    best_history.restarts = summaries
    return best_history
