"""Knowledge distillation (the recipe's `distill` section): a student learns from a teacher's softened outputs.

The teacher is a maasctl run (its best checkpoint, rebuilt in PyTorch on the training device) or a model in the
repository (its ONNX file, sha256-checked as serving checks it, run by onnxruntime on each batch as numpy), so any
filed model can teach. Both are checked against the student's data before anything is written: same task, labels
in the same order, same input kind and shape, same preprocessing. Each training batch, augmented and mixed as the
student sees it, goes through the teacher as it is.

Loss (Hinton et al. 2015): (1 - alpha) x the run's loss on the labels + alpha x T² x KL(softmax(t/T) || softmax(s/T));
regression: (1 - alpha) x the run's loss on the labels + alpha x MSE to the teacher's values (standardised as the
student's targets are).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from maasctl.data import Dataset
from maasctl.errors import MaasctlError, UsageError
from maasctl.fileio import sha256_file
from maasctl.train.objective import Objective

WHERE = "distill.teacher"


@dataclass
class Teacher:
    spec: str
    kind: str  # run | onnx
    sha256: str  # of the checkpoint (run) or of the ONNX file (repository)
    contract: dict[str, Any]  # task, labels, input kind and shape, preprocessing, target: what it was trained on
    forward: Callable[[torch.Tensor], torch.Tensor]  # a batch -> outputs in the student's units, on its device

    def describe(self) -> dict[str, Any]:
        return {"spec": self.spec, "kind": self.kind, "sha256": self.sha256}


def load_teacher(cfg: Any, data: Dataset, device: torch.device) -> Teacher:
    """The recipe's teacher, checked against the student's data; a missing, tampered or mismatched teacher is a
    UsageError (exit 2) naming what differs."""
    spec = cfg.teacher
    run_dir = Path(spec).expanduser()
    if (run_dir / "checkpoints" / "best.pt").is_file():
        teacher = _run_teacher(spec, run_dir, device)
    elif (run_dir / "recipe.yaml").is_file():
        raise UsageError(f"{WHERE}: the run {run_dir} has no checkpoints/best.pt yet (it has not finished an epoch)")
    elif ("/" in spec or "\\" in spec) and not run_dir.exists():
        raise UsageError(f"{WHERE}: there is no run folder or model folder at {run_dir}")
    else:
        teacher = _onnx_teacher(spec, Path(cfg.repository), device)
    check_agrees(teacher, data)
    teacher.forward = in_student_units(teacher, data)
    return teacher


def _run_teacher(spec: str, run_dir: Path, device: torch.device) -> Teacher:
    from maasctl.train.checkpoint import load_best_model

    try:
        model, meta = load_best_model(run_dir)  # torch.load(weights_only=True)
    except UsageError as exc:
        raise UsageError(f"{WHERE}: {exc}") from None
    best = run_dir / "checkpoints" / "best.pt"
    model = model.to(device).eval().requires_grad_(False)

    @torch.no_grad()
    def forward(x: torch.Tensor) -> torch.Tensor:
        return model(x).float()

    contract = {k: meta.get(k) for k in ("task", "labels", "input_kind", "preprocessing", "target")}
    contract["input_shape"] = list(meta["input_shape"])
    return Teacher(spec, "run", sha256_file(best), _plain(contract), forward)


def _onnx_teacher(spec: str, repo: Path, device: torch.device) -> Teacher:
    from maasctl.inputs.outputs import scores_output
    from maasctl.repository import ModelRepository, resolve_model
    from maasctl.runtime import load_model

    try:
        version = resolve_model(spec, ModelRepository(repo))
        # verifies the sha256; beside CUDA training, onnxruntime's CUDA provider when it has one
        model = load_model(version, device="auto" if device.type == "cuda" else "cpu")
    except MaasctlError as exc:
        raise UsageError(
            f"{WHERE} {spec!r}: {exc} (the teacher is a run folder with checkpoints/best.pt, or a model name[:version] "
            f"in the repository {repo})"
        ) from None
    manifest, output = model.manifest, scores_output(model.manifest)
    if len(model.inputs) != 1:
        names = ", ".join(t.name for t in model.inputs)
        raise UsageError(f"{WHERE} {spec!r}: the model takes {len(model.inputs)} inputs ({names}); a teacher takes one")
    name = model.inputs[0].name

    def forward(x: torch.Tensor) -> torch.Tensor:
        array = x.detach().cpu().numpy()
        array = array.astype(np.int64 if manifest.get("input_kind") == "tokens" else np.float32, copy=False)
        (out,) = model.session.run([output], {name: np.ascontiguousarray(array)})
        return torch.from_numpy(out).to(x.device).float()

    contract = {k: manifest.get(k) for k in ("task", "labels", "input_kind", "preprocessing", "target")}
    contract["task"] = contract["task"] or "classification"
    contract["input_shape"] = list(manifest["inputs"][0]["shape"][1:])
    return Teacher(spec, "onnx", manifest["onnx"]["sha256"], _plain(contract), forward)


def check_agrees(teacher: Teacher, data: Dataset) -> None:
    """The teacher must answer the student's question on the student's inputs."""
    mine = _plain(
        {
            "task": data.task,
            "labels": data.labels,
            "input_kind": data.input_kind,
            "input_shape": list(data.input_shape),
            "preprocessing": data.preprocessing,
        }
    )
    theirs = teacher.contract
    problems = []
    for key in ("task", "input_kind"):
        if theirs[key] != mine[key]:
            problems.append(f"{key}: the teacher's is {theirs[key]}, this run's is {mine[key]}")
    if data.task == "classification" and theirs["labels"] != mine["labels"]:
        problems.append(f"labels: the teacher's are {_short(theirs['labels'])}, this run's {_short(mine['labels'])}")
    shape_a, shape_b = theirs["input_shape"], mine["input_shape"]
    # -1: an ONNX model's dynamic axis (a sequence length) takes any size
    if len(shape_a) != len(shape_b) or any(a not in (b, -1) for a, b in zip(shape_a, shape_b)):
        problems.append(f"input shape: the teacher takes {shape_a}, this run feeds {shape_b}")
    pre_a, pre_b = theirs["preprocessing"] or {}, mine["preprocessing"] or {}
    differing = sorted(k for k in pre_a.keys() | pre_b.keys() if pre_a.get(k) != pre_b.get(k))
    if differing:
        shown = "; ".join(f"{k}: teacher {pre_a.get(k)!r}, this run {pre_b.get(k)!r}" for k in differing[:4])
        problems.append(f"preprocessing differs in {', '.join(differing)} ({shown})")
    if problems:
        raise UsageError(
            f"{WHERE} {teacher.spec!r} was trained on other data than this run: " + "; ".join(problems) + ". "
            "A teacher must take the same inputs and answer with the same labels; nothing was written."
        )


def in_student_units(teacher: Teacher, data: Dataset) -> Callable[[torch.Tensor], torch.Tensor]:
    """Regression: the teacher's values, standardised with the student's target statistics (a run's head answers in
    its own standard units, an ONNX model in the target's units)."""
    if data.task != "regression":
        return teacher.forward
    forward, mine, theirs = teacher.forward, data.target, teacher.contract.get("target") or {}
    scale, shift = (theirs["std"], theirs["mean"]) if teacher.kind == "run" else (1.0, 0.0)

    def standardised(x: torch.Tensor) -> torch.Tensor:
        return ((forward(x)[:, 0] * scale + shift) - mine["mean"]) / mine["std"]

    return standardised


def _plain(obj: Any) -> Any:
    """JSON's view of a value (tuples as lists), so that a checkpoint's metadata and a manifest compare alike."""
    return json.loads(json.dumps(obj))


def _short(labels: list[str]) -> str:
    return "[" + ", ".join(map(str, labels[:6])) + (", ..." if len(labels) > 6 else "") + f"] ({len(labels)})"


class DistillObjective(Objective):
    """The run's objective with the teacher's term added to the training loss; validation and test loss, metrics and
    the best checkpoint stay those of the labels alone, so runs with and without a teacher compare."""

    def __init__(self, cfg: Any, data: Dataset, device: torch.device, teacher: Teacher, distill: Any) -> None:
        super().__init__(cfg, data, device)
        self.teacher, self.temperature, self.alpha = teacher, distill.temperature, distill.alpha

    def train_loss(self, out: torch.Tensor, target: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        hard = self.loss(out, target)
        soft_target = self.teacher.forward(x)  # the batch as the student saw it: augmented, mixed
        if self.task == "regression":
            soft = F.mse_loss(out.float()[:, 0], soft_target)
        else:
            t = self.temperature
            student = F.log_softmax(out.float() / t, dim=1)
            teacher = F.log_softmax(soft_target / t, dim=1)
            soft = F.kl_div(student, teacher, log_target=True, reduction="batchmean") * t * t
        return (1 - self.alpha) * hard + self.alpha * soft

    def teacher_summary(self, feed: Any, y: np.ndarray) -> dict[str, Any]:
        """summary.json's `teacher`: which, how it taught, and its metrics on this run's test split."""
        return {
            **self.teacher.describe(),
            "temperature": self.temperature,
            "alpha": self.alpha,
            "metrics": self.teacher_scores(feed, y),
        }

    @torch.no_grad()
    def teacher_scores(self, feed: Any, y: np.ndarray, batch_size: int = 512) -> dict[str, float]:
        """The teacher's test metrics on this run's split (accuracy, or MAE/RMSE/R²)."""
        outputs = [self.teacher.forward(x) for x, _ in feed.batches(batch_size)]
        out = torch.cat(outputs).cpu().numpy()
        scores = self.scores(y, out[:, None] if out.ndim == 1 else out)
        keep = ("mae", "rmse", "r2") if self.task == "regression" else ("accuracy", "macro_f1")
        return {f"test_{k}": float(scores[k]) for k in keep if k in scores}
