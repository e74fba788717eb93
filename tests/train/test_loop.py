"""fit(): the three regimes against closed forms, and each step-level feature pinned."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from descent.optim import Sophia, gnb_loss, hutchinson, rgd_loss
from descent.train import TrainConfig, fit, load_checkpoint
from tests.train.problems import (
    assert_bitwise_equal,
    classification,
    least_squares,
    linear_model,
    mlp,
    parameters_of,
    weights,
)


def _relative_error(model: nn.Linear, solution: np.ndarray) -> float:
    return float(np.linalg.norm(parameters_of(model) - solution) / np.linalg.norm(solution))


def test_batch_gradient_descent_reaches_the_least_squares_solution_and_is_deterministic():
    x, y, solution = least_squares()
    runs = []
    for _ in range(2):
        model = linear_model()
        config = TrainConfig(optimizer="sgd", lr=0.3, steps=400, progress="none")
        history = fit(model, (x, y), F.mse_loss, config)
        assert _relative_error(model, solution) < 1e-6
        runs.append((weights(model), history.losses))
    assert_bitwise_equal(runs[0][0], runs[1][0])
    assert np.array_equal(runs[0][1], runs[1][1])


@pytest.mark.parametrize(
    ("batch_size", "lr", "epochs", "tolerance"),
    [
        (1, 0.05, 60, 5e-3),  # stochastic: noise decays with the cosine schedule
        (16, 0.2, 150, 5e-4),  # mini-batch
    ],
)
def test_stochastic_and_mini_batch_reach_the_solution_with_a_decaying_schedule(
    batch_size, lr, epochs, tolerance
):
    x, y, solution = least_squares()
    model = linear_model()
    config = TrainConfig(
        lr=lr, batch_size=batch_size, epochs=epochs, schedule="cosine", progress="none"
    )
    history = fit(model, (x, y), F.mse_loss, config)
    assert _relative_error(model, solution) < tolerance
    assert history.records[-1]["epoch"] == epochs
    assert history.gradient_evaluations == epochs * (64 // batch_size)


def test_numpy_arrays_train_like_tensors():
    x, y, _ = least_squares()
    results = []
    for data in ((x, y), (x.numpy(), y.numpy())):
        model = linear_model()
        fit(model, data, F.mse_loss, TrainConfig(lr=0.1, steps=20, batch_size=8, progress="none"))
        results.append(weights(model))
    assert_bitwise_equal(*results)


def test_a_dataset_gives_the_same_batches_as_tensors_and_a_dataloader_trains():
    x, y, solution = least_squares()
    config = TrainConfig(lr=0.1, epochs=3, batch_size=8, progress="none")
    by_tensors, by_dataset = linear_model(), linear_model()
    fit(by_tensors, (x, y), F.mse_loss, config)
    fit(by_dataset, _PairDataset(x, y), F.mse_loss, config)
    assert_bitwise_equal(weights(by_tensors), weights(by_dataset))

    loader = DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True)
    model = linear_model()
    loader_config = TrainConfig(lr=0.1, epochs=100, progress="none", log_every=8)
    history = fit(model, loader, F.mse_loss, loader_config)
    assert history.gradient_evaluations == 800
    assert _relative_error(model, solution) < 0.05


class _PairDataset(torch.utils.data.Dataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, index):
        return self.x[index], self.y[index]


def test_gradient_accumulation_equals_one_larger_batch():
    # The order of an epoch depends on (seed, epoch) only, so 4 micro-batches of 8 are the
    # examples of one batch of 32; mean of equal-size means = the mean.
    x, y, _ = least_squares()
    accumulated, large = linear_model(), linear_model()
    fit(
        accumulated,
        (x, y),
        F.mse_loss,
        TrainConfig(lr=0.1, steps=10, batch_size=8, accumulation_steps=4, progress="none"),
    )
    fit(large, (x, y), F.mse_loss, TrainConfig(lr=0.1, steps=10, batch_size=32, progress="none"))
    for a, b in zip(weights(accumulated), weights(large)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("clip", ["norm", "value"])
def test_one_clipped_step_matches_the_formula_and_logs_the_norm_before_clipping(clip):
    x, y, _ = least_squares()
    model = linear_model()
    start = weights(model)
    loss = F.mse_loss(model(x), y)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    norm = torch.cat([g.ravel() for g in grads]).norm()
    threshold = 0.01
    if clip == "norm":
        clipped = [g * (threshold / (norm + 1e-6)) for g in grads]
    else:
        clipped = [g.clamp(-threshold, threshold) for g in grads]
    config = TrainConfig(
        lr=0.5, steps=1, clip=clip, clip_threshold=threshold, log_every=1, progress="none"
    )
    history = fit(model, (x, y), F.mse_loss, config)
    for after, before, g in zip(weights(model), start, clipped):
        torch.testing.assert_close(after, before - 0.5 * g, rtol=0, atol=1e-15)
    assert history.records[0]["grad_norm"] == pytest.approx(norm.item(), rel=1e-12)


def test_weight_decay_skips_biases_and_norm_weights_unless_asked(tmp_path):
    x, y = classification()
    model = nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.Linear(8, 3))
    for decay_all, expected in ((False, [0.01, 0.0]), (True, [0.01])):
        run_dir = tmp_path / str(decay_all)
        config = TrainConfig(
            optimizer="adamw",
            steps=1,
            checkpoint_every=1,
            run_dir=str(run_dir),
            decay_biases_and_norms=decay_all,
            progress="none",
        )
        fit(model, (x, y), F.cross_entropy, config)
        groups = load_checkpoint(run_dir)["optimizer"]["param_groups"]
        assert [g["weight_decay"] for g in groups] == expected
        if not decay_all:
            # the two matrices decay; the two biases, the norm weight and norm bias do not
            assert [len(g["params"]) for g in groups] == [2, 4]


@pytest.mark.parametrize("scheme", ["xavier", "he"])
def test_initialisation_redraws_matrices_reproducibly_and_zeroes_biases(scheme):
    x, y = classification()
    finals = []
    for _ in range(2):
        model = nn.Linear(6, 400)
        config = TrainConfig(init=scheme, lr=0.0, steps=1, seed=3, progress="none")
        fit(model, (x, y), F.cross_entropy, config)
        assert torch.all(model.bias == 0)
        expected_std = (2 / (6 + 400)) ** 0.5 if scheme == "xavier" else (2 / 6) ** 0.5
        assert model.weight.std().item() == pytest.approx(expected_std, rel=0.05)
        finals.append(weights(model))
    assert_bitwise_equal(*finals)


def test_bfloat16_autocast_runs_the_forward_in_bfloat16():
    x, y = classification()
    model = mlp()
    seen = []
    model[0].register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    config = TrainConfig(optimizer="adam", lr=0.01, steps=30, autocast="bfloat16", progress="none")
    history = fit(model, (x, y), F.cross_entropy, config)
    assert seen and set(seen) == {torch.bfloat16}
    assert history.losses[-1] < history.losses[0]
    assert all(p.dtype == torch.float32 for p in model.parameters())


def _amp_problem(overflow: bool):
    """Classification (gradients fit float16 at the initial scale 2**16) or a regression on
    large targets (the scaled float16 gradient of the output overflows: steps are skipped
    while the scale comes down)."""
    x, y = classification()
    if not overflow:
        return x, y, mlp(), F.cross_entropy
    return x, (y.float() * 300).unsqueeze(1), mlp(classes=1), F.mse_loss


@pytest.mark.parametrize("overflow", [False, True], ids=["fits", "overflows"])
def test_float16_autocast_equals_torchs_amp_recipe(overflow):
    """fit(autocast="float16") is torch's recipe (autocast forward, GradScaler: scale, unscale,
    step or skip, update), bit for bit; overflowing steps are skipped, not rolled back."""
    x, y, model, loss_fn = _amp_problem(overflow)
    reference = copy.deepcopy(model)
    config = TrainConfig(
        optimizer="adam", lr=0.01, steps=25, autocast="float16", log_every=1, progress="none"
    )
    seen = []
    model[0].register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    history = fit(model, (x, y), loss_fn, config)
    assert set(seen) == {torch.float16}

    optimizer = torch.optim.Adam(reference.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cpu")
    scales = []
    for _ in range(25):
        with torch.autocast("cpu", dtype=torch.float16):
            loss = loss_fn(reference(x), y)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scales.append(scaler.get_scale())
        optimizer.zero_grad(set_to_none=True)
    assert_bitwise_equal(weights(model), weights(reference))
    assert [record["loss_scale"] for record in history.records] == scales
    assert not history.rollbacks
    assert (min(scales) < 2.0**16) is overflow  # the overflowing problem backed the scale off
    assert history.losses[-1] < history.losses[0]


def test_float16_resume_restores_the_loss_scale(tmp_path):
    """The scaler's state is in the checkpoint: a resumed float16 run equals the uninterrupted
    one (restarting at the initial scale would skip steps again)."""
    runs = []
    for name in ("whole", "interrupted"):
        x, y, model, loss_fn = _amp_problem(overflow=True)
        config = TrainConfig(
            optimizer="adam", lr=0.01, steps=20, autocast="float16", run_dir=str(tmp_path / name),
            checkpoint_every=5, progress="none",
        )  # fmt: skip

        def crash(info, interrupt=name == "interrupted"):
            if interrupt and info["step"] == 12:
                raise KeyError("stop")

        try:
            fit(model, (x, y), loss_fn, config, callbacks=[crash])
        except KeyError:
            model = _amp_problem(overflow=True)[2]
            fit(model, (x, y), loss_fn, config, resume=tmp_path / name)
        runs.append(weights(model))
    assert (
        load_checkpoint(tmp_path / "interrupted" / "checkpoints" / "step_000000010.pt")["scaler"][
            "scale"
        ]
        < 2.0**16
    )
    assert_bitwise_equal(*runs)


def test_float16_rollback_and_sophia_curvature():
    """A non-finite loss under float16 still rolls back (and the next step unscales again);
    Sophia's curvature refresh runs in full precision, so h stays finite."""
    x, y = classification()
    calls = []

    def flaky(outputs, targets):
        calls.append(1)
        loss = F.cross_entropy(outputs, targets)
        return loss * math.inf if len(calls) == 6 else loss

    config = TrainConfig(
        optimizer="sophia", lr=0.01, steps=30, autocast="float16", progress="none",
        hyperparameters={"k": 2}, curvature_estimator="gnb",
    )  # fmt: skip
    model = mlp()
    history = fit(model, (x, y), flaky, config)
    assert [record["reason"] for record in history.rollbacks] == ["non-finite loss (inf)"]
    assert history.losses[-1] < history.losses[0]
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_rgd_reweights_per_example_losses_like_rgd_loss():
    x, y = classification()
    model, reference = mlp(), mlp()
    per_example = nn.CrossEntropyLoss(reduction="none")
    fit(model, (x, y), per_example, TrainConfig(lr=0.1, steps=1, rgd_tau=1.0, progress="none"))
    rgd_loss(per_example(reference(x), y), tau=1.0).backward()
    torch.optim.SGD(reference.parameters(), lr=0.1).step()
    assert_bitwise_equal(weights(model), weights(reference))


def test_a_non_scalar_loss_without_rgd_is_refused():
    x, y = classification()
    with pytest.raises(ValueError, match=r"loss_fn returned shape \(96,\).*rgd_tau"):
        fit(
            mlp(),
            (x, y),
            nn.CrossEntropyLoss(reduction="none"),
            TrainConfig(steps=1, progress="none"),
        )


def _hand_written_sophia(model, x, y, loss_fn, steps, estimator, seed=0, k=2):
    """The loop a user writes by hand: step(bs=...), then the two curvature lines."""
    optimizer = Sophia(model.parameters(), lr=0.01, k=k, rho=0.05)
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    params = list(model.parameters())
    for _ in range(steps):
        loss_fn(model(x), y).backward()
        optimizer.step(bs=len(y))
        if optimizer.curvature_due:
            optimizer.zero_grad(set_to_none=True)
            if estimator == "gnb":
                gnb_loss(model(x), generator=generator).backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.update_hessian()
            else:
                curvature_loss = loss_fn(model(x), y)
                optimizer.update_hessian(hutchinson(curvature_loss, params, generator=generator))
        optimizer.zero_grad(set_to_none=True)
    return optimizer


@pytest.mark.parametrize(
    ("estimator", "loss_fn"),
    [("gnb", nn.CrossEntropyLoss()), ("hutchinson", None)],
)
def test_sophia_in_the_loop_equals_the_hand_written_loop(estimator, loss_fn):
    if estimator == "gnb":
        x, y = classification()
        make = mlp
    else:
        x, y, _ = least_squares()
        x, y = x.float(), y.float()
        loss_fn = F.mse_loss

        def make():
            torch.manual_seed(0)
            return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))

    steps = 9
    by_hand = make()
    optimizer = _hand_written_sophia(by_hand, x, y, loss_fn, steps, estimator)
    in_loop = make()
    config = TrainConfig(
        optimizer="sophia",
        lr=0.01,
        hyperparameters={"k": 2, "rho": 0.05},
        decay_biases_and_norms=True,  # the hand-written loop decays every tensor
        steps=steps,
        log_every=1,
        progress="none",
    )
    history = fit(in_loop, (x, y), loss_fn, config)
    assert_bitwise_equal(weights(in_loop), weights(by_hand))
    assert optimizer.steps_taken == steps
    # every curvature pass counts as a gradient evaluation
    assert history.gradient_evaluations == steps + steps // 2
    assert all(0.0 <= r["win_rate"] <= 1.0 for r in history.records)
    assert any(r["win_rate"] > 0 for r in history.records)


def test_sophia_gets_bs_as_the_number_of_tokens_for_sequence_outputs(tmp_path):
    class Tokens(nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = nn.Embedding(5, 5)

        def forward(self, tokens):
            return self.embedding(tokens)  # (batch, time, classes)

    def sequence_loss(logits, targets):
        return F.cross_entropy(logits.reshape(-1, 5), targets.reshape(-1))

    tokens = torch.randint(0, 5, (12, 7))
    config = TrainConfig(
        optimizer="sophia",
        steps=2,
        batch_size=4,
        allow_integer_inputs=True,
        run_dir=str(tmp_path),
        checkpoint_every=1,
        progress="none",
    )
    fit(Tokens(), (tokens, tokens.roll(1, dims=1)), sequence_loss, config)
    assert load_checkpoint(tmp_path)["optimizer"]["param_groups"][0]["bs"] == 4 * 7


def test_early_stopping_stops_on_patience_and_keeps_the_best_weights():
    x, y = classification()
    scores = iter([1.0, 2.0, 3.0, 2.5, 2.9, 0.0, 0.0])
    snapshots = []
    model = mlp()

    def score(outputs, targets):
        snapshots.append(weights(model))
        return next(scores)

    config = TrainConfig(
        lr=0.05,
        steps=100,
        eval_every=5,
        early_stopping_patience=2,
        monitor="score",
        monitor_mode="max",
        progress="none",
    )
    history = fit(model, (x, y), F.cross_entropy, config, val_data=(x, y), metrics={"score": score})
    assert history.stop_reason == "early_stopping"
    assert [e["step"] for e in history.evaluations] == [0, 5, 10, 15, 20]
    assert history.best["score"] == 3.0 and history.best["step"] == 10
    assert_bitwise_equal(weights(model), snapshots[2])


def test_metrics_are_computed_over_the_whole_validation_set():
    x, y = classification()
    model = mlp()

    def accuracy(outputs, targets):
        return (outputs.argmax(1) == targets).float().mean()

    config = TrainConfig(lr=0.1, steps=5, batch_size=8, progress="none")
    history = fit(
        model, (x, y), F.cross_entropy, config, val_data=(x, y), metrics={"accuracy": accuracy}
    )
    with torch.no_grad():
        outputs = model(x)
    final = history.evaluations[-1]
    assert final["step"] == 5
    assert final["accuracy"] == pytest.approx(accuracy(outputs, y).item(), abs=0)
    assert final["val_loss"] == pytest.approx(F.cross_entropy(outputs, y).item(), rel=1e-6)


def test_restarts_keep_the_start_with_the_best_validation_loss(tmp_path):
    x, y = classification()
    model = mlp()
    config = TrainConfig(lr=0.05, steps=10, restarts=3, run_dir=str(tmp_path), progress="none")
    history = fit(model, (x, y), F.cross_entropy, config, val_data=(x, y))
    losses = [summary["val_loss"] for summary in history.restarts]
    assert [summary["seed"] for summary in history.restarts] == [0, 1, 2]
    assert len(set(losses)) == 3
    assert history.best["val_loss"] == min(losses)
    with torch.no_grad():
        assert F.cross_entropy(model(x), y).item() == pytest.approx(min(losses), rel=1e-6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["restart_0", "restart_1", "restart_2"]
    assert all((tmp_path / f"restart_{i}" / "metrics.jsonl").is_file() for i in range(3))


def test_history_records_every_log_interval_with_timing():
    x, y, _ = least_squares()
    history = fit(
        linear_model(),
        (x, y),
        F.mse_loss,
        TrainConfig(lr=0.1, steps=25, batch_size=16, log_every=10, progress="none"),
    )
    assert [r["step"] for r in history.records] == [10, 20, 25]
    assert [r["epoch"] for r in history.records] == [2.5, 5.0, 6.25]
    seconds = [r["seconds"] for r in history.records]
    assert seconds == sorted(seconds) and history.seconds >= seconds[-1]
    assert all(r["examples_per_second"] > 0 for r in history.records)
    assert history.stop_reason == "completed"


def test_callbacks_see_every_step():
    x, y, _ = least_squares()
    seen = []
    fit(
        linear_model(),
        (x, y),
        F.mse_loss,
        TrainConfig(lr=0.1, steps=6, progress="none"),
        callbacks=[lambda info: seen.append((info["step"], info["lr"]))],
    )
    assert seen == [(s, 0.1) for s in range(1, 7)]


def test_validation_data_may_be_a_dataloader_or_a_dataset():
    x, y = classification()
    losses = []
    for val_data in ((x, y), DataLoader(TensorDataset(x, y), batch_size=10), _PairDataset(x, y)):
        config = TrainConfig(steps=3, batch_size=16, progress="none")
        history = fit(mlp(), (x, y), F.cross_entropy, config, val_data)
        losses.append(history.evaluations[-1]["val_loss"])
    assert losses[1] == pytest.approx(losses[0], rel=1e-6)
    assert losses[2] == pytest.approx(losses[0], rel=1e-6)
