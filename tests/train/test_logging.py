"""Run logs: JSONL equal to the History (also after a resume), TensorBoard, progress, plots."""

from __future__ import annotations

import json
import sys

import pytest
import torch.nn.functional as F

from descent.train import TrainConfig, fit, plot_run, read_metrics
from tests.train.problems import classification, least_squares, linear_model, mlp


def _lines(run_dir, kind):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [
        {k: v for k, v in row.items() if k not in ("kind", "time")}
        for row in rows
        if row["kind"] == kind
    ]


def _accuracy(outputs, targets):
    return (outputs.argmax(1) == targets).float().mean()


def test_the_jsonl_file_holds_the_history(tmp_path):
    x, y = classification()
    config = TrainConfig(
        lr=0.1, steps=20, log_every=5, eval_every=10, run_dir=str(tmp_path), progress="none"
    )
    history = fit(mlp(), (x, y), F.cross_entropy, config, (x, y), {"accuracy": _accuracy})
    assert _lines(tmp_path, "step") == history.records
    assert _lines(tmp_path, "eval") == history.evaluations
    assert [e["step"] for e in history.evaluations] == [0, 10, 20]
    assert set(history.evaluations[0]) == {"step", "epoch", "val_loss", "accuracy"}


def test_a_resumed_run_rewrites_the_jsonl_without_duplicates(tmp_path):
    x, y, _ = least_squares()
    config = TrainConfig(
        lr=0.1,
        steps=20,
        batch_size=16,
        log_every=1,
        checkpoint_every=5,
        run_dir=str(tmp_path),
        progress="none",
    )

    def crash(info):
        if info["step"] == 13:
            raise RuntimeError("crash")

    with pytest.raises(RuntimeError):
        fit(linear_model(), (x, y), F.mse_loss, config, callbacks=[crash])
    assert [r["step"] for r in _lines(tmp_path, "step")] == list(range(1, 14))
    history = fit(linear_model(), (x, y), F.mse_loss, config, resume=tmp_path)
    assert [r["step"] for r in _lines(tmp_path, "step")] == list(range(1, 21))
    assert _lines(tmp_path, "step") == history.records


def test_tensorboard_scalars_are_written_when_asked(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    x, y = classification()
    config = TrainConfig(
        lr=0.1,
        steps=12,
        log_every=4,
        eval_every=6,
        run_dir=str(tmp_path),
        tensorboard=True,
        progress="none",
    )
    history = fit(mlp(), (x, y), F.cross_entropy, config, (x, y))
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    losses = events.Scalars("train/loss")
    assert [e.step for e in losses] == [4, 8, 12]
    assert [e.value for e in losses] == pytest.approx(history.losses.tolist(), rel=1e-6)
    assert [e.step for e in events.Scalars("eval/val_loss")] == [0, 6, 12]


def test_tensorboard_without_the_extra_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    x, y, _ = least_squares()
    config = TrainConfig(steps=1, run_dir=str(tmp_path), tensorboard=True, progress="none")
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'descent\[tensorboard\]'"):
        fit(linear_model(), (x, y), F.mse_loss, config)


def test_plain_lines_off_a_terminal_and_silence_when_asked(capsys):
    x, y, _ = least_squares()
    fit(linear_model(), (x, y), F.mse_loss, TrainConfig(steps=10, log_every=5, progress="auto"))
    lines = capsys.readouterr().err.splitlines()
    assert [line.split()[1] for line in lines] == ["5/10", "10/10"]
    assert "loss" in lines[0] and "lr 0.01" in lines[0] and "ex/s" in lines[0]
    fit(linear_model(), (x, y), F.mse_loss, TrainConfig(steps=10, progress="none"))
    assert capsys.readouterr().err == ""


def test_the_progress_bar_runs_to_completion(capsys):
    x, y, _ = least_squares()
    history = fit(linear_model(), (x, y), F.mse_loss, TrainConfig(steps=10, progress="bar"))
    assert history.records[-1]["step"] == 10
    assert "10/10" in capsys.readouterr().err


def test_plot_run_draws_a_png_with_a_panel_per_metric(tmp_path):
    x, y = classification()
    config = TrainConfig(
        lr=0.1, steps=10, log_every=2, eval_every=5, run_dir=str(tmp_path), progress="none"
    )
    fit(mlp(), (x, y), F.cross_entropy, config, (x, y), {"accuracy": _accuracy})
    out = plot_run(tmp_path)
    assert out == tmp_path / "curves.png"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    grouped = read_metrics(tmp_path)
    assert len(grouped["step"]) == 5 and len(grouped["eval"]) == 3


def test_plot_of_a_folder_without_metrics_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"no metrics.jsonl in .*: is it a run directory"):
        plot_run(tmp_path)
