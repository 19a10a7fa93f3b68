"""What a run shows while and after it trains: the progress bar within an epoch on a terminal, TensorBoard event files
in the run folder, MLflow tracking when asked for."""

from __future__ import annotations

import io

import pytest
from helpers import run_cli
from rich.console import Console

from maasctl.train.progress import DataClock, epoch_reporter


def test_progress_moves_within_the_epoch_on_a_terminal():
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=160)
    with epoch_reporter(console, epochs=2) as report:
        clock = DataClock(steps=3, on_step=report.step)
        for _ in clock.wrap(range(3)):
            clock.step_done(64, 0.5)  # the last step always reports
    text = out.getvalue()
    assert "3/3" in text and "samples/s" in text and "loss 0.5000" in text


def test_plain_output_stays_one_line_per_epoch():
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=200)
    row = {"epoch": 1, "train_loss": 0.5, "train_accuracy": 0.9, "val_loss": 0.4, "val_accuracy": 0.91, "lr": 1e-3}
    with epoch_reporter(console, epochs=2) as report:
        assert report.step is None  # no per-step output in logs
        report({**row, "seconds": 2.0, "data_wait_seconds": 0.25}, 2)
    assert out.getvalue().count("\n") == 1 and "data wait 0.25s" in out.getvalue()


def test_tensorboard_events_and_mlflow_tracking(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    mlflow = pytest.importorskip("mlflow")
    env = {
        "MAASCTL_MLFLOW": "1",
        "MLFLOW_TRACKING_URI": f"file://{tmp_path / 'mlruns'}",
        "MLFLOW_ALLOW_FILE_STORE": "true",
    }
    run_cli("train", "--set", "train.epochs=2", "--name", "t", "--json", cwd=tmp_path, env=env)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "artifacts" / "runs" / "t" / "tensorboard"), size_guidance={"images": 1})
    events.Reload()
    tags = events.Tags()
    assert [e.step for e in events.Scalars("epoch/val_accuracy")] == [1, 2]
    assert len(events.Scalars("step/train_loss")) >= 2 and "epoch/data_wait_seconds" in tags["scalars"]
    assert "test/confusion_matrix" in tags["images"]

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = mlflow.tracking.MlflowClient(tracking_uri=f"file://{tmp_path / 'mlruns'}")
    (run,) = client.search_runs([client.get_experiment_by_name("digits-cnn").experiment_id])
    assert run.data.params["model.name"] == "cnn_small" and {"test_accuracy", "best_val_accuracy"} <= set(
        run.data.metrics
    )
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")] == [1, 2]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"summary.json", "metrics.csv", "checkpoints"} <= artifacts


def test_mlflow_without_the_package_or_a_server_is_a_clear_error(tmp_path, monkeypatch):
    import importlib.util

    from maasctl.errors import UsageError
    from maasctl.recipe import load_recipe
    from maasctl.train.tracking import mlflow_wanted

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(UsageError, match="pip install mlflow"):
        mlflow_wanted(load_recipe(None, ["train.mlflow=true"]))
    pytest.importorskip("mlflow")
    no_server = {
        "MLFLOW_TRACKING_URI": "http://127.0.0.1:9",
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
    }
    proc = run_cli(
        "train", "--set", "train.mlflow=true", "--set", "train.epochs=1", cwd=tmp_path, check=False, env=no_server
    )
    assert proc.returncode == 2 and "MLflow could not start a run at http://127.0.0.1:9" in proc.stderr
    assert "Traceback" not in proc.stderr and "epoch 1/1" not in proc.stderr  # stopped before training
