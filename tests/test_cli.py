"""The command line, as a user runs it."""

from __future__ import annotations

import re

from typer.testing import CliRunner

from descent.cli import app, parse_value

runner = CliRunner()


def test_minimize_prints_start_end_distance_and_loss_and_saves_a_plot(tmp_path):
    png = tmp_path / "plots" / "rosenbrock.png"
    result = runner.invoke(
        app,
        ["minimize", "rosenbrock", "--optimizer", "adam", "--lr", "0.01", "--steps", "2000",
         "--plot", str(png)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "adam on rosenbrock, 2000 steps" in result.output
    assert re.search(r"start\s+│\s+-1.5\s+│\s+2\s+│\s+12.5", result.output)
    distance = float(re.search(r"distance to nearest minimum: (\S+)", result.output).group(1))
    loss = float(re.search(r"loss: (\S+)", result.output).group(1))
    assert 0 < distance < 0.5 and 0 < loss < 0.05
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_minimize_takes_other_hyperparameters_and_a_start():
    result = runner.invoke(
        app,
        ["minimize", "ill_conditioned", "-o", "momentum", "--lr", "0.005", "-n", "2000",
         "--start", "1,1", "-p", "momentum=0.8", "-p", "nesterov=true"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert float(re.search(r"distance to nearest minimum: (\S+)", result.output).group(1)) < 1e-9


def test_minimize_reports_divergence():
    result = runner.invoke(app, ["minimize", "rosenbrock", "-o", "sgd", "--lr", "1", "-n", "50"])
    assert result.exit_code == 0
    assert "diverged at step" in result.output


def test_bad_input_gets_one_clear_line_and_exit_code_2():
    cases = [
        (["minimize", "sphere"], "Unknown landscape 'sphere'"),
        (["minimize", "beale", "-o", "adamax"], "Unknown optimizer 'adamax'"),
        (["minimize", "beale", "--lr", "-1"], "Invalid lr: -1.0"),
        (["minimize", "beale", "-p", "betas"], "--param takes NAME=VALUE"),
        (["minimize", "beale", "-p", "gamma=2"], "Unknown hyperparameter(s) gamma"),
        (["minimize", "beale", "--start", "1,2,3"], "--start needs two numbers"),
    ]
    for arguments, message in cases:
        result = runner.invoke(app, arguments)
        assert result.exit_code == 2, (arguments, result.output)
        assert message in result.output.replace("\n", " "), result.output
        assert "Traceback" not in result.output


def test_optimizers_lists_the_registry():
    result = runner.invoke(app, ["optimizers"])
    assert result.exit_code == 0
    for name in ("sgd", "nesterov", "adamw", "lion", "sophia"):
        assert name in result.output


def test_parse_value_reads_numbers_booleans_and_tuples():
    assert parse_value("0.9,0.99") == (0.9, 0.99)
    assert parse_value("true") is True and parse_value("3") == 3 and parse_value("1e-3") == 1e-3


def test_lr_find_suggests_an_lr_below_the_edge_and_saves_the_curve(tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    features = rng.normal(size=(400, 4))
    targets = features @ np.array([1.0, -2.0, 0.5, 3.0]) + 0.1 * rng.normal(size=400)
    np.savez(tmp_path / "data.npz", X=features, y=targets)
    png = tmp_path / "lr.png"
    result = runner.invoke(app, ["lr-find", str(tmp_path / "data.npz"), "--out", str(png)])
    assert result.exit_code == 0, result.output
    suggested = float(re.search(r"suggested lr: (\S+)", result.output).group(1))
    # For least squares on standardised features, plain SGD diverges past lr = 2 / lambda_max
    # (about 1 here); the suggestion must be a useful lr below that edge.
    assert 1e-2 < suggested < 1.0
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_plot_of_a_missing_run_is_one_clear_line(tmp_path):
    result = runner.invoke(app, ["plot", str(tmp_path / "nothing")])
    assert result.exit_code == 2
    assert "Traceback" not in result.output and "error:" in result.output


def write_classification_csv(path, rows=300, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    features = rng.normal(size=(rows, 3)) * [1.0, 50.0, 0.01] + [0.0, 100.0, 5.0]
    labels = (features[:, 0] + (features[:, 1] - 100.0) / 50.0 > 0).astype(int)
    lines = ["x1,x2,x3,label"] + [
        ",".join(f"{v:.6f}" for v in row) + f",{label}" for row, label in zip(features, labels)
    ]
    path.write_text("\n".join(lines) + "\n")


def test_train_on_a_users_csv_reaches_high_validation_accuracy(tmp_path):
    write_classification_csv(tmp_path / "data.csv")
    config = tmp_path / "train.toml"
    config.write_text('optimizer = "adamw"\nlr = 0.05\nbatch_size = 32\nepochs = 10\n')
    result = runner.invoke(
        app, ["train", str(tmp_path / "data.csv"), "--config", str(config),
              "--task", "classification", "--target", "label"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    accuracy = float(re.search(r"validation accuracy\s+│\s+(\S+)", result.output).group(1))
    assert accuracy >= 0.9


def test_train_resumes_a_run_directory(tmp_path):
    write_classification_csv(tmp_path / "data.csv")
    run = tmp_path / "run"
    common = ["train", str(tmp_path / "data.csv"), "--task", "classification",
              "-s", f"run_dir={run}", "-s", "checkpoint_every=5", "-s", "batch_size=30",
              "-s", "progress=none"]  # fmt: skip
    first = runner.invoke(app, [*common, "-s", "epochs=1"])
    assert first.exit_code == 0, first.output
    assert re.search(r"steps\s+│\s+8\b", first.output)
    second = runner.invoke(app, [*common, "-s", "epochs=2", "--resume"])
    assert second.exit_code == 0, second.output
    assert re.search(r"steps\s+│\s+16\b", second.output)
    assert (run / "metrics.jsonl").exists()


def test_train_refuses_bad_settings_in_one_line(tmp_path):
    write_classification_csv(tmp_path / "data.csv")
    for arguments, message in [
        (["-s", "lr=-1"], "Invalid lr: -1"),
        (["-s", "colour=red"], "Unknown TrainConfig field(s): colour"),
        (["--task", "ranking"], "Invalid task: 'ranking'"),
        (["--resume"], "resume needs run_dir"),
    ]:
        result = runner.invoke(app, ["train", str(tmp_path / "data.csv"), *arguments])
        assert result.exit_code == 2, (arguments, result.output)
        assert message in result.output.replace("\n", " ")


def test_minimize_compares_several_optimizers_in_one_table_and_plot(tmp_path):
    png = tmp_path / "compare.png"
    result = runner.invoke(
        app,
        ["minimize", "ill_conditioned", "-o", "momentum", "-o", "lion", "-o", "sgd",
         "--lr", "0.005", "--lr", "0.001", "--lr", "0.05", "-n", "300", "--plot", str(png)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    cells = [
        [cell.strip() for cell in line.split("│")[1:-1]]
        for line in result.output.splitlines()
        if line.startswith("│")
    ]
    rows = {row[0]: row[1:] for row in cells if row[0]}
    assert set(rows) == {"momentum", "lion", "sgd"}
    assert float(rows["momentum"][-1]) < 1e-6  # distance to the minimum
    assert float(rows["lion"][-1]) > 0.5  # 300 sign steps of 0.001 cover at most 0.42
    # lr 0.05 is past 2 / lambda_max = 0.02: sgd diverges, flagged under its step count
    assert rows["sgd"][-1] == "-" and ["", "(diverged)", "", "", "", ""] in cells
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_minimize_pairs_learning_rates_with_optimizers_or_says_how():
    result = runner.invoke(
        app,
        ["minimize", "beale", "-o", "adam", "-o", "lion", "--lr", "1", "--lr", "2", "--lr", "3"],
    )
    assert result.exit_code == 2
    assert "one --lr for all optimizers or one per --optimizer (2), got 3" in result.output
