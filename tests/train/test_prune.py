"""`maasctl prune RUN`: whole channels removed, fine-tuned into a new run that export takes as any other; the pruned
architecture rebuilt from plain data (model.params.pruned), never from pickle."""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import onnx
import pytest
import torch
import yaml
from helpers import run_cli

from maasctl.errors import UsageError
from maasctl.models import build_model_from_meta, create_model
from maasctl.models import pruned as shapes
from maasctl.recipe import load_recipe
from maasctl.train.prune import Target, check_prunable, check_target, count, prune_model, prune_run
from maasctl.train.rundir import find_run_dir
from maasctl.train.trainer import Trainer

slow = pytest.mark.skipif(
    os.environ.get("MAASCTL_SLOW_TESTS") != "1", reason="slow on CPU; MAASCTL_SLOW_TESTS=1 runs it"
)


@pytest.fixture(scope="module")
def ws(workspace, tmp_path_factory) -> Path:
    """A private copy of the session's trained digits run (cnn_small), pruned to half its channels for 1 epoch."""
    root = tmp_path_factory.mktemp("prune")
    shutil.copytree(workspace / "artifacts" / "runs", root / "artifacts" / "runs")
    proc = run_cli("prune", "digits", "--ratio", "0.5", "--epochs", "1", "--name", "half", "--json", cwd=root)
    (root / "prune.json").write_text(proc.stdout)
    return root


def test_pruned_run_is_smaller_and_exports_with_parity(ws, workspace):
    out = json.loads((ws / "prune.json").read_text())
    run = ws / "artifacts" / "runs" / "half"
    assert (ws / out["run_dir"]).resolve() == run.resolve()
    summary = json.loads((run / "summary.json").read_text())
    p = summary["pruning"]
    assert p["parent_run"] == str((ws / "artifacts" / "runs" / "digits").resolve())
    assert (p["target"], p["importance"]) == ({"ratio": 0.5}, "l1")
    # half the channels of every layer: about a quarter of the weights and of the multiply-accumulates
    assert p["params_after"] < 0.35 * p["params_before"] and p["macs_after"] < 0.35 * p["macs_before"]
    assert p["parent_metrics"]["test_accuracy"] > 0.9
    assert p["metrics_after"]["test_accuracy"] == summary["metrics"]["test_accuracy"] > 0.8  # one epoch recovers most
    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    assert recipe["train"]["epochs"] == 1 and recipe["model"]["params"]["pruned"]["features.0.0"]["out_channels"] == 16

    exported = run_cli("export", "half", "--json", cwd=ws)
    assert "parity on" in exported.stderr and "top-1 agreement 100.00%" in exported.stderr
    model_dir = ws / json.loads(exported.stdout)["path"]
    parent_onnx = workspace / "artifacts" / "models" / "digits" / "1" / "model.onnx"
    assert (model_dir / "model.onnx").stat().st_size < 0.4 * parent_onnx.stat().st_size
    graph = onnx.load(str(model_dir / "model.onnx")).graph
    assert sum(onnx.numpy_helper.to_array(t).size for t in graph.initializer) < 0.35 * p["params_before"]
    scored = json.loads(run_cli("evaluate", str(model_dir), "--json", cwd=ws).stdout)
    assert scored["metrics"]["accuracy"] == pytest.approx(summary["metrics"]["test_accuracy"], abs=0.01)


def test_pruned_run_resumes(ws):
    """The resumed run rebuilds the pruned shapes from its recipe and continues from last.pt (in this process: the
    command's own path, `maasctl train --resume`, is load_recipe + Trainer.fit(resume=True))."""
    run = ws / "artifacts" / "runs" / "half"
    trainer = Trainer(load_recipe(run / "recipe.yaml", ["train.epochs=2"]))
    assert trainer.model.features[0][0].out_channels == 16  # the pruned width, from the recipe
    result = trainer.fit(run, resume=True)
    assert result.metrics["best_epoch"] in (1, 2) and result.metrics["test_accuracy"] > 0.8
    rows = (run / "metrics.csv").read_text().splitlines()
    assert len(rows) == 3  # header, the pruning's epoch, the resumed one


@pytest.mark.parametrize(
    ("name", "shape"),
    [
        ("cnn_small", (1, 8, 8)),
        ("mlp", (12,)),
        ("timm/test_resnet", (3, 16, 16)),
        pytest.param("resnet18", (3, 16, 16), marks=slow),  # 10 s on two cores; benchmarks/pruning.py prunes it too
    ],
)
def test_pruned_shapes_round_trip_without_pickle(name, shape, tmp_path):
    torch.manual_seed(0)
    model = create_model(name, input_shape=shape, num_classes=3).eval()
    meta = {"model_name": name, "model_params": {}, "input_shape": list(shape), "num_classes": 3}
    head = check_prunable(model, meta, Path("run"))
    x, y = torch.randn(8, *shape), torch.randint(0, 3, (8,))
    before = count(model, x)
    prune_model(model, head, (x, y), _CrossEntropy(), Target(ratio=0.5), "l2")
    assert count(model, x)[1] < 0.5 * before[1]
    factory = create_model(name, input_shape=shape, num_classes=3)
    meta["model_params"] = {"pruned": shapes.record(factory, model)}
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "meta": meta}, buf)  # as a checkpoint holds them
    ckpt = torch.load(io.BytesIO(buf.getvalue()), weights_only=True)  # no pickled code: plain data only
    rebuilt = build_model_from_meta(ckpt["meta"], weights_follow=True).eval()
    rebuilt.load_state_dict(ckpt["model"])  # strict: every shape agrees
    assert torch.equal(rebuilt(x), model(x))
    assert rebuilt(x).shape == (8, 3)  # the classifier kept its outputs
    if name.startswith("timm/"):  # model.params {pruned, pretrained: a pruned run's checkpoint}: another recipe's start
        (tmp_path / "best.pt").write_bytes(buf.getvalue())
        params = {"pruned": meta["model_params"]["pruned"], "pretrained": str(tmp_path / "best.pt")}
        started = create_model(name, input_shape=shape, num_classes=3, **params).eval()
        assert torch.equal(started(x), model(x))
        with pytest.raises(UsageError, match="comes from a pruned run: give its layer shapes beside pretrained"):
            create_model(name, input_shape=shape, num_classes=3, pretrained=params["pretrained"])


def test_macs_target_and_taylor_importance():
    torch.manual_seed(0)
    x, y = torch.randn(8, 12), torch.randint(0, 3, (8,))
    model = create_model("mlp", input_shape=(12,), num_classes=3, hidden=32)
    head = check_prunable(model, {"model_name": "mlp", "input_kind": "features"}, Path("run"))
    assert head == "7"  # the last Linear of Flatten, (Linear, ReLU, Dropout) × 2, Linear
    base = count(model, x)[0]
    prune_model(model, head, (x, y), _CrossEntropy(), Target(macs=0.5), "taylor")
    assert 0.3 * base < count(model, x)[0] <= 0.5 * base  # reached, in small steps rather than far past it
    with pytest.raises(UsageError, match="--macs 0.99: pruning 95% of the channels does not remove that much"):
        prune_model(model, head, (x, y), _CrossEntropy(), Target(macs=0.99), "l1")


def test_recorded_shapes_are_checked():
    model = create_model("cnn_small", input_shape=(1, 8, 8), num_classes=3, width=8)
    with pytest.raises(UsageError, match=r"'features\.9' is not a layer of this model"):
        shapes.apply(model, {"features.9": {"out_channels": 4}})
    with pytest.raises(
        UsageError, match=r"features\.0\.0\.weight has shape \[8, 1, 3, 3\] before pruning; \[16, 1, 3, 3\]"
    ):
        shapes.apply(model, {"features.0.0": {"weight": [16, 1, 3, 3]}})


def test_bad_input_exits_2_and_writes_nothing(ws, tmp_path):
    runs = ws / "artifacts" / "runs"
    before = sorted(p.name for p in runs.iterdir())
    # a run with no checkpoint, and a recurrent model the pruner does not cover
    empty, gru = tmp_path / "empty", tmp_path / "gru"
    for folder in (empty, gru):
        (folder / "checkpoints").mkdir(parents=True)
        shutil.copy(runs / "digits" / "recipe.yaml", folder / "recipe.yaml")
    meta = {"model_name": "gru", "model_params": {}, "input_shape": [8, 8], "input_kind": "sequence", "num_classes": 10}
    torch.save({"model": build_model_from_meta(meta).state_dict(), "meta": meta}, gru / "checkpoints" / "best.pt")

    proc = run_cli("prune", str(gru), cwd=ws, check=False)
    assert proc.returncode == 2 and "gru has layers pruning does not cover (GRU)" in " ".join(proc.stderr.split())
    # the rest in this process: each is a UsageError, which the CLI answers with exit 2 as above
    for ratio, macs, message in [
        (0.0, None, "--ratio 0.0: give the share to remove, above 0 and below 1"),
        (1.0, None, "--ratio 1.0: give the share to remove, above 0 and below 1"),
        (-0.5, None, "--ratio -0.5"),
        (None, 1.5, "--macs 1.5"),
        (0.5, 0.5, "--ratio and --macs: give one target"),
    ]:
        with pytest.raises(UsageError, match=message):
            check_target(ratio, macs)
    target = check_target(None, None)
    assert target.ratio == 0.5  # the default: half the channels
    for parent, options, message in [
        (empty, {}, "no checkpoint at"),
        (runs / "digits", {"importance": "size"}, "--importance 'size': use one of l1, l2, taylor, random"),
        (runs / "digits", {"epochs": 0}, "--epochs 0: fine-tune for 1 epoch or more"),
        (runs / "digits", {"lr": 0.0}, "--lr 0.0: give a learning rate above 0"),
        (runs / "digits", {"device": "tpu"}, "--device 'tpu': use auto, cpu or cuda"),
    ]:
        with pytest.raises(UsageError, match=message):
            prune_run(parent, runs, target=target, **options)
    assert sorted(p.name for p in runs.iterdir()) == before
    with pytest.raises(UsageError, match="no run 'nope'"):
        find_run_dir("nope", runs)  # what the command resolves RUN with


class _CrossEntropy:
    """The part of the trainer's Objective that Taylor importance uses."""

    def loss(self, out, y):
        return torch.nn.functional.cross_entropy(out, y)
