"""Experiment tracking, rank 0 only: TensorBoard event files in the run folder (train.tensorboard, on by default) and
MLflow (train.mlflow or MAASCTL_MLFLOW=1; needs the mlflow package): scalars per step and per epoch, the test
confusion matrix, and for MLflow the recipe's parameters and the run folder as artifacts."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from maasctl.errors import UsageError

TENSORBOARD_DIR = "tensorboard"


def mlflow_wanted(recipe: Any) -> bool:
    """train.mlflow or MAASCTL_MLFLOW=1; refused up front (before any file is written) when mlflow is missing."""
    wanted = recipe.train.mlflow or os.environ.get("MAASCTL_MLFLOW", "") in ("1", "true", "yes")
    if wanted and importlib.util.find_spec("mlflow") is None:
        raise UsageError(
            "train.mlflow: MLflow tracking was asked for (train.mlflow or MAASCTL_MLFLOW), but the mlflow package is "
            "not installed: pip install mlflow (or mlflow-skinny), or leave train.mlflow false"
        )
    return wanted


class Tracker:
    def __init__(self, run_dir: Path, recipe: Any, *, tensorboard: bool, mlflow: bool, resume: bool) -> None:
        self.run_dir, self.tb, self.mlflow = run_dir, None, None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(log_dir=str(run_dir / TENSORBOARD_DIR))
        if mlflow:
            import mlflow as mlf

            try:
                mlf.set_experiment(recipe.name)
                mlf.start_run(run_name=run_dir.name)
            except Exception as exc:  # no server, a store MLflow refuses: say where, before the first epoch
                self.close()
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
                raise UsageError(
                    f"train.mlflow: MLflow could not start a run at {mlf.get_tracking_uri()} ({first}); set "
                    "MLFLOW_TRACKING_URI to a reachable server or store, or turn train.mlflow off"
                ) from None
            self.mlflow = mlf
            if not resume:
                mlf.log_params(_flatten(recipe.model_dump(mode="json")))

    def step(self, global_step: int, loss: float, lr: float) -> None:
        if self.tb is not None:
            self.tb.add_scalar("step/train_loss", loss, global_step)
            self.tb.add_scalar("step/lr", lr, global_step)
        if self.mlflow is not None:
            self.mlflow.log_metrics({"step_train_loss": loss, "step_lr": lr}, step=global_step)

    def epoch(self, row: dict[str, Any]) -> None:
        scalars = {k: float(v) for k, v in row.items() if k != "epoch" and isinstance(v, (int, float))}
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(f"epoch/{k}", v, row["epoch"])
            self.tb.flush()
        if self.mlflow is not None:
            self.mlflow.log_metrics(scalars, step=row["epoch"])

    def finish(self, metrics: dict[str, Any], confusion_png: Path) -> None:
        if self.tb is not None:
            if confusion_png.is_file():
                import numpy as np
                from PIL import Image

                with Image.open(confusion_png) as img:
                    self.tb.add_image("test/confusion_matrix", np.asarray(img.convert("RGB")), dataformats="HWC")
            for k, v in metrics.items():
                if isinstance(v, (int, float)):
                    self.tb.add_scalar(f"test/{k}", v, 0)
        if self.mlflow is not None:
            # the best epoch's validation figures under best_*, apart from the per-epoch series
            self.mlflow.log_metrics(
                {
                    (k if k.startswith(("test_", "best_")) else f"best_{k}"): float(v)
                    for k, v in metrics.items()
                    if isinstance(v, (int, float))
                }
            )
        self.close()
        if self.mlflow is not None:
            self.mlflow.log_artifacts(str(self.run_dir))
            self.mlflow.end_run()
            self.mlflow = None

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
