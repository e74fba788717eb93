"""Checkpoints: exact resume after an exception, SIGINT or SIGTERM; atomic writes under
SIGKILL; errors that say what is wrong with a checkpoint."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from descent.train import CheckpointError, TrainConfig, TrainingInterrupted, fit, load_checkpoint
from descent.train.checkpoint import list_checkpoints, save_atomic
from tests.train import scenario
from tests.train.problems import assert_bitwise_equal, classification, mlp, weights

ROOT = Path(__file__).resolve().parents[2]
OPTIMIZERS = list(scenario.OPTIMIZER_SETTINGS)


@pytest.fixture(autouse=True)
def _one_thread():
    # The subprocesses run on one thread; so does the reference, for identical kernels.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def uninterrupted():
    """The final weights and History of each optimizer's uninterrupted run."""
    runs = {}
    for optimizer in OPTIMIZERS:
        network, history = scenario.train(optimizer, None)
        runs[optimizer] = (weights(network), history)
    return runs


class _Stop(Exception):
    pass


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_resume_after_an_exception_equals_the_uninterrupted_run(optimizer, uninterrupted, tmp_path):
    stop_at = int(np.random.default_rng(OPTIMIZERS.index(optimizer)).integers(6, scenario.STEPS))

    def crash(info):
        if info["step"] == stop_at:
            raise _Stop

    with pytest.raises(_Stop):
        scenario.train(optimizer, str(tmp_path), callbacks=[crash])
    # checkpoints are written at the top of a step: the last one is before the crash's step
    saved_step = load_checkpoint(tmp_path)["step"]
    assert saved_step == (stop_at - 1) - (stop_at - 1) % 5
    assert saved_step % scenario.BATCHES_PER_EPOCH != 0  # mid-epoch

    network, history = scenario.train(optimizer, str(tmp_path), resume=tmp_path)
    reference_weights, reference_history = uninterrupted[optimizer]
    assert_bitwise_equal(weights(network), reference_weights)
    assert history.losses.tolist() == reference_history.losses.tolist()
    assert history.gradient_evaluations == reference_history.gradient_evaluations


def _start(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    return subprocess.Popen(
        [sys.executable, "-m", "tests.train.scenario", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _interrupt_after(process: subprocess.Popen, step: int, signum: int) -> tuple[int, str]:
    for line in process.stdout:
        if line.strip() == f"step {step}":
            process.send_signal(signum)
            break
    _, stderr = process.communicate(timeout=120)
    return process.returncode, stderr


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_sigint_writes_a_checkpoint_and_resume_equals_the_uninterrupted_run(
    optimizer, uninterrupted, tmp_path
):
    stop_at = int(np.random.default_rng(10 + OPTIMIZERS.index(optimizer)).integers(2, 20))
    process = _start([optimizer, str(tmp_path), "--slow"])
    returncode, stderr = _interrupt_after(process, stop_at, signal.SIGINT)
    assert returncode != 0
    assert "training interrupted at step" in stderr and "resume with fit(" in stderr
    checkpoint = load_checkpoint(tmp_path)
    # the signal lands during a step's sleep; the checkpoint is the next step boundary
    assert stop_at <= checkpoint["step"] <= stop_at + 1
    assert checkpoint["history"]["stop_reason"] == "interrupted"

    network, history = scenario.train(optimizer, str(tmp_path), resume=tmp_path)
    assert_bitwise_equal(weights(network), uninterrupted[optimizer][0])
    assert history.stop_reason == "completed"


def test_sigterm_also_writes_a_checkpoint(uninterrupted, tmp_path):
    process = _start(["adamw", str(tmp_path), "--slow"])
    returncode, stderr = _interrupt_after(process, 9, signal.SIGTERM)
    assert returncode != 0 and "resume with fit(" in stderr
    network, _ = scenario.train("adamw", str(tmp_path), resume=tmp_path)
    assert_bitwise_equal(weights(network), uninterrupted["adamw"][0])


def test_sigkill_while_writing_checkpoints_leaves_the_latest_readable(tmp_path):
    # 12 MB checkpoints at every step: most kills land mid-write (a temporary file is left).
    # Rounds go on until one did, so the test sees that case at least once.
    rng = np.random.default_rng(0)
    killed_mid_write = False
    for round_ in range(10):
        run_dir = tmp_path / f"round_{round_}"
        process = _start(["--checkpoint-storm", str(run_dir)])
        deadline = time.monotonic() + 60
        while len(list_checkpoints(run_dir / "checkpoints")) < 2:
            assert process.poll() is None, process.stderr.read()
            assert time.monotonic() < deadline
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.3))
        process.kill()
        process.communicate(timeout=60)
        assert process.returncode == -signal.SIGKILL
        killed_mid_write |= any((run_dir / "checkpoints").glob(".step_*.tmp-*"))
        found = list_checkpoints(run_dir / "checkpoints")
        latest = load_checkpoint(run_dir)
        assert latest["path"] == str(found[-1])
        for path in found:
            assert load_checkpoint(path)["model"]["weight"].shape == (1000, 1000)
        if killed_mid_write:
            break
    assert killed_mid_write


def test_a_failed_write_keeps_the_previous_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "step_000000001.pt"
    save_atomic({"value": torch.ones(3)}, path)

    def broken_save(obj, file):
        file.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_atomic({"value": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert torch.equal(torch.load(path, weights_only=True)["value"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_only_the_last_n_checkpoints_are_kept(tmp_path):
    scenario.train("sgd", str(tmp_path), checkpoint_every=2, keep_checkpoints=3)
    names = [p.name for p in list_checkpoints(tmp_path / "checkpoints")]
    assert names == ["step_000000020.pt", "step_000000022.pt", "step_000000024.pt"]


def test_resume_from_a_finished_run_returns_at_once(uninterrupted, tmp_path):
    scenario.train("lion", str(tmp_path))
    network, history = scenario.train("lion", str(tmp_path), resume=tmp_path)
    assert_bitwise_equal(weights(network), uninterrupted["lion"][0])
    assert history.losses.tolist() == uninterrupted["lion"][1].losses.tolist()


def _restarts(run_dir: Path, **options):
    x, y = classification()
    model = mlp()
    config = TrainConfig(
        lr=0.05, steps=12, batch_size=16, restarts=3, run_dir=str(run_dir), checkpoint_every=4,
        eval_every=4, progress="none",
    )  # fmt: skip
    history = fit(model, (x, y), F.cross_entropy, config, val_data=(x, y), **options)
    return model, history


def test_restarts_resume_after_an_interruption_equals_the_uninterrupted_run(tmp_path):
    """Interrupted in the second of three starts: resuming the run directory reads the first
    back, continues the second from its checkpoint and runs the third; the kept start, its
    weights and every start's summary equal the uninterrupted run's."""
    reference_model, reference = _restarts(tmp_path / "reference")
    calls = []

    def crash(info):
        calls.append(info["step"])
        if len(calls) == 12 + 7:  # step 7 of the second start
            raise _Stop

    with pytest.raises(_Stop):
        _restarts(tmp_path / "run", callbacks=[crash])
    assert load_checkpoint(tmp_path / "run" / "restart_1")["step"] == 4
    assert not (tmp_path / "run" / "restart_2").exists()

    resumed = []
    model, history = _restarts(
        tmp_path / "run", resume=tmp_path / "run", callbacks=[lambda info: resumed.append(1)]
    )
    assert len(resumed) == (12 - 4) + 12  # nothing of the first start, the second from step 4
    assert history.restarts == reference.restarts
    assert len({summary["val_loss"] for summary in history.restarts}) == 3
    assert history.losses.tolist() == reference.losses.tolist()
    assert_bitwise_equal(weights(model), weights(reference_model))
    with pytest.raises(ValueError, match="has no restart_0"):
        _restarts(tmp_path / "run", resume=tmp_path / "run" / "restart_1")


def test_an_interrupted_restart_points_at_the_whole_run(tmp_path):
    calls = []

    def interrupt(info):
        calls.append(info["step"])
        if len(calls) == 12 + 5:  # SIGINT in the second start
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(TrainingInterrupted) as raised:
        _restarts(tmp_path, callbacks=[interrupt])
    assert str(raised.value).endswith(f"resume={str(tmp_path)!r}) (the run of every restart)")
    assert "restart_1" in str(raised.value)  # where the checkpoint went
    _, history = _restarts(tmp_path, resume=tmp_path)  # the hint's target resumes
    assert [summary["seed"] for summary in history.restarts] == [0, 1, 2]
    assert history.stop_reason == "completed"


def test_resume_mid_epoch_from_a_shuffling_dataloader_is_exact(tmp_path):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(40, 3, generator=generator)
    y = x.sum(dim=1, keepdim=True)

    def run(run_dir, resume=None, callbacks=()):
        torch.manual_seed(0)
        network = nn.Linear(3, 1)
        loader = DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True)
        config = TrainConfig(
            lr=0.05,
            steps=17,
            run_dir=run_dir,
            checkpoint_every=4 if run_dir else None,
            progress="none",
            seed=1,
        )
        fit(network, loader, F.mse_loss, config, resume=resume, callbacks=callbacks)
        return weights(network)

    reference = run(None)

    def crash(info):
        if info["step"] == 11:
            raise _Stop

    with pytest.raises(_Stop):
        run(str(tmp_path), callbacks=[crash])
    assert load_checkpoint(tmp_path)["position"] == 8  # mid-epoch: 5 batches per epoch
    assert_bitwise_equal(run(str(tmp_path), resume=tmp_path), reference)


# -- what is wrong with a checkpoint, said plainly -----------------------------------------


@pytest.fixture
def finished_run(tmp_path):
    scenario.train("adamw", str(tmp_path))
    return tmp_path, list_checkpoints(tmp_path / "checkpoints")[-1]


def test_a_corrupt_checkpoint_is_named_corrupt(finished_run):
    run_dir, path = finished_run
    path.write_bytes(b"these bytes are no checkpoint" * 10)
    with pytest.raises(CheckpointError, match=r"checkpoint .*step_000000024\.pt is corrupt"):
        scenario.train("adamw", str(run_dir), resume=run_dir)


def test_a_truncated_checkpoint_is_named_truncated(finished_run):
    run_dir, path = finished_run
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 2])
    with pytest.raises(CheckpointError, match=r"is truncated .*use an earlier checkpoint"):
        scenario.train("adamw", str(run_dir), resume=path)


def test_a_checkpoint_of_another_model_is_refused(finished_run):
    run_dir, _ = finished_run
    x, y = scenario.data()
    other = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 3))
    with pytest.raises(
        CheckpointError,
        match=r"another model \(missing: 2\.bias.*shape mismatch: 0\.bias \(16,\) vs \(32,\)",
    ):
        fit(other, (x, y), nn.CrossEntropyLoss(), scenario.config("adamw", None), resume=run_dir)


def test_a_checkpoint_of_another_optimizer_is_refused(finished_run):
    run_dir, _ = finished_run
    with pytest.raises(CheckpointError, match=r"optimizer 'adamw'; this run uses 'lion'"):
        scenario.train("lion", None, resume=run_dir)


def test_a_checkpoint_with_another_batch_size_is_refused(finished_run):
    run_dir, _ = finished_run
    with pytest.raises(CheckpointError, match=r"batch_size=16; this run uses batch_size=8"):
        scenario.train("adamw", None, resume=run_dir, batch_size=8)


def test_a_checkpoint_with_other_parameter_groups_is_refused(finished_run):
    run_dir, _ = finished_run  # AdamW with weight decay: matrices and vectors in two groups
    with pytest.raises(CheckpointError, match=r"another optimizer layout .*decay_biases_and_norms"):
        scenario.train("adamw", None, resume=run_dir, decay_biases_and_norms=True)


def test_a_file_that_is_not_a_descent_checkpoint_is_refused(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"weight": torch.ones(2)}, path)
    with pytest.raises(CheckpointError, match="is not a descent checkpoint"):
        load_checkpoint(path)


def test_a_missing_checkpoint_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "nothing-here")
    with pytest.raises(CheckpointError, match=r"no checkpoint \(step_\*\.pt\)"):
        load_checkpoint(tmp_path)
