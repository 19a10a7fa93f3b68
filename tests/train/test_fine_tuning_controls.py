"""train.grad_accumulation (any model), the linear schedule, and the AdamW groups of pretrained encoders."""

from __future__ import annotations

import itertools
import json

import pytest
from helpers import make_tiny_bert


def _trainer(*overrides: str):
    from maasctl.recipe import load_recipe
    from maasctl.train.trainer import Trainer

    return Trainer(load_recipe(None, ["train.device=cpu", "model.name=mlp", *overrides]))


def test_grad_accumulation_steps_once_per_k_batches_like_the_larger_batch(tmp_path):
    """Batches of 50 accumulated in pairs take the optimizer steps of batches of 100, and land on nearly the same
    model (only the epoch's last, partial pair is weighted differently)."""
    results = {}
    for name, overrides in {
        "b100": ["train.batch_size=100"],
        "b50x2": ["train.batch_size=50", "train.grad_accumulation=2"],
    }.items():
        trainer = _trainer("train.epochs=2", "train.optimizer.name=sgd", "train.optimizer.lr=0.05", *overrides)
        try:
            trainer.fit(tmp_path / name)
        finally:
            trainer.close()
        summary = json.loads((tmp_path / name / "summary.json").read_text())
        results[name] = (trainer.scheduler.last_epoch, summary["metrics"]["val_loss"])
    steps_100, loss_100 = results["b100"]
    steps_50, loss_50 = results["b50x2"]
    assert steps_50 == steps_100  # one optimizer step per 100 samples either way
    assert loss_50 == pytest.approx(loss_100, rel=0.03)


def test_linear_schedule_warms_up_then_falls_to_zero():
    trainer = _trainer("train.schedule=linear", "train.warmup_epochs=1", "train.epochs=3", "train.batch_size=128")
    lrs = []
    for _ in range(30):
        lrs.append(trainer.optimizer.param_groups[0]["lr"])
        trainer.optimizer.step()
        trainer.scheduler.step()
    peak = lrs.index(max(lrs))
    assert 8 <= peak <= 10 and lrs[:peak] == sorted(lrs[:peak]) and lrs[peak:] == sorted(lrs[peak:], reverse=True)
    falling = lrs[peak + 1 :]  # the warm-up's last step and the decay's first are both the peak
    steps = [a - b for a, b in itertools.pairwise(falling)]
    assert max(steps) == pytest.approx(min(steps), rel=1e-6)  # linear
    assert lrs[-1] < 0.1 * max(lrs)


def test_encoder_param_groups_decay_by_layer_and_spare_biases_and_norms(tmp_path):
    from maasctl.models import create_model

    folder = make_tiny_bert(tmp_path / "bert", ["refund my invoice", "book a flight"] * 5)
    model = create_model(
        "hf_encoder", input_shape=(3, 16), num_classes=3, input_kind="subword", pretrained=str(folder), freeze_layers=1
    )
    groups = model.param_groups(1.0, 0.01, 0.5)
    by_lr = {g["lr"] for g in groups}
    # head and pooler at lr; layer 2 (index 1) at half; layer 1 frozen; embeddings at 0.5 ** 3
    assert by_lr == {1.0, 0.5, 0.125}
    names = {id(p): n for n, p in model.named_parameters()}
    for g in groups:
        for p in g["params"]:
            spared = p.ndim < 2
            assert (g["weight_decay"] == 0.0) == spared, names[id(p)]
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen and all(".layer.0." in n for n in frozen)
