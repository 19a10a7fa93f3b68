"""Distillation (the recipe's `distill` section): a student learns from a maasctl run (PyTorch) or a filed ONNX model
(onnxruntime); the teacher's term really drives the loss; a missing, tampered or mismatched teacher is refused with
exit 2 before anything is written; resume reloads the teacher; summary.json records it and its test accuracy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import file_onnx_model, run_cli

from maasctl.data import Dataset, Split, build_dataset
from maasctl.errors import UsageError
from maasctl.fileio import sha256_file
from maasctl.recipe import Recipe, load_recipe
from maasctl.train.distill import DistillObjective, Teacher, check_agrees, in_student_units

STUDENT = ["--set", "model.name=mlp", "--set", "train.epochs=1", "--set", "train.tensorboard=false"]


def digits_contract() -> dict:
    data = build_dataset(Recipe().data, 0, "auto")
    return {"labels": data.labels, "preprocessing": data.preprocessing, "input_kind": data.input_kind}


def file_constant_teacher(repo: Path, name: str, favourite: int = 0, shape=(1, 8, 8), **manifest) -> Path:
    """An ONNX model not trained by maasctl that answers `favourite` for every 8x8 digit, filed with a manifest."""
    from onnx import TensorProto, helper, numpy_helper

    n_in = int(np.prod(shape))
    bias = np.zeros(10, dtype=np.float32)
    bias[favourite] = 8.0
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["input"], ["flat"]),
            helper.make_node("MatMul", ["flat", "w"], ["zeros"]),
            helper.make_node("Add", ["zeros", "b"], ["logits"]),
        ],
        "constant",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", *shape])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        initializer=[
            numpy_helper.from_array(np.zeros((n_in, 10), dtype=np.float32), "w"),
            numpy_helper.from_array(bias, "b"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)
    doc = {
        "task": "classification",
        **digits_contract(),
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, *shape]}],
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}],
        **manifest,
    }
    return file_onnx_model(repo, name, model, **doc)


def summary(folder: Path, run: str) -> dict:
    return json.loads((folder / "artifacts" / "runs" / run / "summary.json").read_text())


def test_the_teacher_drives_the_loss_and_resume_reloads_it(workspace, tmp_path):
    """A maasctl run teaching at alpha=0 leaves the labels alone to teach: the student learns the digits, and the run
    (rebuilt in PyTorch) scores on this test split what it reported itself. An ONNX model that says 0 for every digit,
    at alpha=1: the same student learns to say 0. Interrupted after one epoch and resumed, that teacher is back."""
    run = workspace / "artifacts" / "runs" / "digits"
    labels = run_cli("train", *STUDENT, "--set", f"distill.teacher={run}", "--set", "distill.alpha=0", cwd=tmp_path)
    assert "distilling from run" in labels.stderr
    repo = tmp_path / "repo"
    filed = file_constant_teacher(repo, "zero")
    teach = ["--set", "distill.teacher=zero", "--set", f"distill.repository={repo}", "--set", "distill.alpha=1"]
    run_cli("train", *STUDENT, *teach, "--name", "z", cwd=tmp_path)
    resumed = run_cli("train", "--resume", "z", "--set", "train.epochs=2", cwd=tmp_path)
    assert "distilling from onnx zero" in resumed.stderr

    alone = summary(tmp_path, "digits-cnn")
    assert alone["teacher"]["kind"] == "run" and alone["teacher"]["spec"] == str(run)
    assert alone["teacher"]["sha256"] == sha256_file(run / "checkpoints" / "best.pt")
    assert (alone["teacher"]["temperature"], alone["teacher"]["alpha"]) == (4.0, 0.0)
    teacher_run = json.loads((workspace / "train.json").read_text())["metrics"]  # the same split, the same weights
    assert alone["teacher"]["metrics"]["test_accuracy"] == pytest.approx(teacher_run["test_accuracy"])

    taught = summary(tmp_path, "z")
    assert taught["epochs"] == 2
    confusion = np.array(taught["test_confusion_matrix"])  # rows: true class, columns: predicted
    assert confusion[:, 0].sum() > 0.9 * confusion.sum()  # nearly every test digit is called 0
    assert alone["metrics"]["test_accuracy"] > 0.6 and taught["metrics"]["test_accuracy"] < 0.2
    assert taught["teacher"]["kind"] == "onnx" and taught["teacher"]["sha256"] == sha256_file(filed / "model.onnx")
    share_of_zeros = confusion[0].sum() / confusion.sum()
    assert taught["teacher"]["metrics"]["test_accuracy"] == pytest.approx(share_of_zeros)


@pytest.mark.parametrize("case", ["missing", "tampered", "other data"])
def test_a_bad_teacher_is_refused_before_anything_is_written(tmp_path, case):
    repo = tmp_path / "repo"
    filed = file_constant_teacher(repo, "zero")
    teacher, expected = "zero", []
    if case == "missing":
        teacher, expected = "nothere", ["no model 'nothere'", "models there: zero"]
    elif case == "tampered":
        with (filed / "model.onnx").open("ab") as f:
            f.write(b"\0")
        expected = ["sha256", "does not match"]
    else:  # labels in another order, 16x16 inputs with other statistics
        pre = {**digits_contract()["preprocessing"], "height": 16, "width": 16, "mean": [0.5]}
        labels = [str(d) for d in reversed(range(10))]
        file_constant_teacher(repo, "other", shape=(1, 16, 16), labels=labels, preprocessing=pre)
        teacher = "other"
        expected = [
            "trained on other data",
            "labels: the teacher's are [9, 8",
            "input shape: the teacher takes [1, 16, 16]",
        ]
        expected += ["preprocessing differs in height, mean, width"]
    args = ("train", *STUDENT, "--set", f"distill.teacher={teacher}", "--set", f"distill.repository={repo}")
    proc = run_cli(*args, cwd=tmp_path, check=False)
    assert proc.returncode == 2, proc.stderr
    for text in expected:
        assert text in proc.stderr
    assert "distill.teacher" in proc.stderr
    assert not (tmp_path / "artifacts").exists()  # no run folder


def test_the_loss_is_the_mix_of_label_and_softened_teacher_terms():
    """(1 - alpha) CE + alpha T² KL(softmax(t/T) || softmax(s/T)); regression: the two MSEs."""
    data = build_dataset(Recipe().data, 0, "auto")
    teacher_logits = torch.tensor([[2.0, 0.0, -1.0] + [0.0] * 7])
    teacher = Teacher("t", "run", "", {}, lambda x: teacher_logits)
    recipe = load_recipe(None, ["distill.temperature=2", "distill.alpha=0.25"])
    objective = DistillObjective(recipe.train, data, torch.device("cpu"), teacher, recipe.distill)
    student, y = torch.tensor([[0.5, 1.0, 0.0] + [0.0] * 7]), torch.tensor([1])
    p, q = torch.softmax(teacher_logits / 2, 1), torch.softmax(student / 2, 1)
    kl = (p * (p.log() - q.log())).sum()
    ce = torch.nn.functional.cross_entropy(student, y)
    loss = objective.train_loss(student, y, torch.zeros(1, 1, 8, 8))
    assert loss.item() == pytest.approx((0.75 * ce + 0.25 * 4 * kl).item(), rel=1e-5)
    # mixup's soft targets go to the label term as they are; the teacher still sees the (mixed) batch
    soft = torch.full((1, 10), 0.1)
    mixed = objective.train_loss(student, soft, torch.zeros(1, 1, 8, 8))
    assert mixed.item() == pytest.approx((0.75 * objective.loss(student, soft) + 0.25 * 4 * kl).item(), rel=1e-5)


def test_each_difference_is_named():
    data = build_dataset(Recipe().data, 0, "auto")
    good = {"task": "classification", **digits_contract(), "input_shape": [1, 8, 8]}
    check_agrees(Teacher("t", "onnx", "", good, lambda x: x), data)  # the same data: accepted
    changes = {
        "task": ("regression", "task: the teacher's is regression"),
        "input_kind": ("features", "input_kind: the teacher's is features"),
        "labels": ([*good["labels"][:9], "nine"], "labels: the teacher's are"),
        "input_shape": ([64], "input shape: the teacher takes [64]"),
        "preprocessing": ({**good["preprocessing"], "std": [1.0]}, "preprocessing differs in std"),
    }
    for key, (value, message) in changes.items():
        with pytest.raises(UsageError, match=message.replace("[", r"\[")):
            check_agrees(Teacher("t", "onnx", "", {**good, key: value}, lambda x: x), data)


@pytest.mark.parametrize("kind", ["run", "onnx"])
def test_regression_mixes_the_two_mses_in_the_students_standard_units(kind):
    """A run's head answers in its own standard units, an ONNX model in the target's: both become the student's."""
    x = np.zeros((4, 2), dtype=np.float32)
    split = Split(x, np.zeros(4, dtype=np.float32))
    data = Dataset(
        split, split, split, labels=[], preprocessing={}, input_kind="features", task="regression",
        target={"column": "t", "mean": 10.0, "std": 2.0},
    )  # fmt: skip
    answer = torch.tensor([[1.0]]) if kind == "run" else torch.tensor([[12.0]])  # both: 12, i.e. z = 1 for the student
    teacher = Teacher("t", kind, "", {"target": {"mean": 8.0, "std": 4.0}}, lambda x: answer)
    teacher.forward = in_student_units(teacher, data)
    recipe = load_recipe(None, ["distill.alpha=0.25"])
    objective = DistillObjective(recipe.train, data, torch.device("cpu"), teacher, recipe.distill)
    loss = objective.train_loss(torch.tensor([[0.0]]), torch.tensor([0.5]), torch.zeros(1, 2))
    assert loss.item() == pytest.approx(0.75 * 0.25 + 0.25 * 1.0)
