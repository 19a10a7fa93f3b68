"""The training loop, readable top to bottom: setup → per epoch (train, evaluate, checkpoint, log) → test.

Everything it does is chosen by the recipe; it writes only inside its run folder.
"""

from __future__ import annotations

import csv
import io
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from maasctl.data import Dataset, build_dataset
from maasctl.errors import UsageError
from maasctl.fileio import atomic_write_json, atomic_write_text
from maasctl.metrics import classification_metrics
from maasctl.models import create_model
from maasctl.recipe import Recipe, dump_recipe, recipe_sha256
from maasctl.train.checkpoint import load_checkpoint, save_checkpoint
from maasctl.train.plots import plot_confusion, plot_curves

METRICS_COLUMNS = ["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_macro_f1", "lr", "seconds"]
EpochCallback = Callable[[dict[str, Any], int], None]


@dataclass
class TrainResult:
    run_dir: Path
    metrics: dict[str, Any]


def resolve_device(requested: str) -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise UsageError("device cuda was requested, but torch sees no CUDA device on this machine; use --device cpu or auto")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def build_model_from_meta(meta: dict[str, Any]) -> torch.nn.Module:
    """The architecture a checkpoint's weights belong to, from the metadata saved beside them."""
    return create_model(
        meta["model_name"],
        input_shape=tuple(meta["input_shape"]),
        num_classes=meta["num_classes"],
        input_kind=meta.get("input_kind", "image"),
        vocab_size=meta.get("vocab_size"),
        **meta["model_params"],
    )


class Trainer:
    """Setup (data, model, optimizer) happens in __init__, so a bad recipe fails before any file is written."""

    def __init__(self, recipe: Recipe) -> None:
        cfg = recipe.train
        self.recipe = recipe
        self.device = resolve_device(cfg.device)
        torch.manual_seed(cfg.seed)
        self.data = build_dataset(recipe.data, cfg.seed)
        self.meta = {
            "model_name": recipe.model.name,
            "model_params": recipe.model.params,
            "input_shape": list(self.data.input_shape),
            "input_kind": self.data.input_kind,
            "vocab_size": self.data.vocab_size,
            "num_classes": self.data.num_classes,
            "labels": self.data.labels,
            "preprocessing": self.data.preprocessing,
            "recipe_sha256": recipe_sha256(recipe),
        }
        self.model = build_model_from_meta(self.meta).to(self.device)
        self.optimizer = _make_optimizer(recipe, self.model)
        steps_per_epoch = math.ceil(len(self.data.train.y) / cfg.batch_size)
        self.scheduler = _make_scheduler(
            recipe, self.optimizer, total_steps=cfg.epochs * steps_per_epoch, warmup_steps=round(cfg.warmup_epochs * steps_per_epoch)
        )

    def fit(self, run_dir: Path, *, resume: bool = False, on_epoch: EpochCallback | None = None) -> TrainResult:
        recipe, cfg, data, device = self.recipe, self.recipe.train, self.data, self.device
        model, optimizer, scheduler, meta = self.model, self.optimizer, self.scheduler, self.meta
        shuffle = torch.Generator().manual_seed(cfg.seed)  # batch order; saved in checkpoints so resume repeats it

        history: list[dict[str, Any]] = []
        start_epoch, best, stale = 0, [-math.inf, -math.inf], 0
        if resume:
            ckpt = load_checkpoint(run_dir / "checkpoints" / "last.pt")
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            shuffle.set_state(ckpt["rng"]["shuffle"])
            torch.set_rng_state(ckpt["rng"]["torch"])
            start_epoch, best, history, stale = ckpt["epoch"], ckpt["best"], ckpt["history"], ckpt["stale_epochs"]
        else:
            atomic_write_text(run_dir / "recipe.yaml", dump_recipe(recipe))

        x_train, y_train = _to_device(data.train, device)
        for epoch in range(start_epoch, cfg.epochs):
            started = time.perf_counter()
            model.train()
            order = torch.randperm(len(y_train), generator=shuffle).to(device)
            loss_sum = correct = 0.0
            for i in range(0, len(order), cfg.batch_size):
                idx = order[i : i + cfg.batch_size]
                logits = model(augment_batch(x_train[idx], data.augment))
                loss = F.cross_entropy(logits, y_train[idx], label_smoothing=cfg.label_smoothing)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                optimizer.step()
                scheduler.step()
                loss_sum += loss.item() * len(idx)
                correct += (logits.argmax(1) == y_train[idx]).sum().item()
            val = evaluate(model, data, "validation", device)
            row = {
                "epoch": epoch + 1,
                "train_loss": loss_sum / len(order),
                "train_accuracy": correct / len(order),
                "val_loss": val["loss"],
                "val_accuracy": val["accuracy"],
                "val_macro_f1": val["macro_f1"],
                "lr": optimizer.param_groups[0]["lr"],
                "seconds": time.perf_counter() - started,
            }
            history.append(row)
            score = _score(row, cfg.best_metric)
            improved = score > best
            # Early stopping counts epochs without an improvement of at least min_delta in the chosen metric.
            stale = 0 if score[0] > best[0] + cfg.early_stopping.min_delta else stale + 1
            best = max(best, score)
            state = {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": {"shuffle": shuffle.get_state(), "torch": torch.get_rng_state()},
                "epoch": epoch + 1,
                "best": best,
                "stale_epochs": stale,
                "history": history,
                "meta": meta,
            }
            # best.pt first: if the process dies between the two writes, last.pt still points at an older epoch
            # and a resume redoes this one, so nothing is lost.
            if improved:
                save_checkpoint(run_dir / "checkpoints" / "best.pt", state)
            save_checkpoint(run_dir / "checkpoints" / "last.pt", state)
            _write_metrics_csv(run_dir / "metrics.csv", history)
            if on_epoch:
                on_epoch(row, cfg.epochs)
            if cfg.early_stopping.patience and stale >= cfg.early_stopping.patience:
                break

        best_state = load_checkpoint(run_dir / "checkpoints" / "best.pt")
        model.load_state_dict(best_state["model"])
        test = evaluate(model, data, "test", device)
        best_row = max(history, key=lambda r: _score(r, cfg.best_metric))
        metrics = {
            "best_epoch": best_row["epoch"],
            "val_loss": best_row["val_loss"],
            "val_accuracy": best_row["val_accuracy"],
            "val_macro_f1": best_row["val_macro_f1"],
            **{f"test_{k}": v for k, v in test.items() if k != "confusion_matrix"},
        }
        summary = {
            "run": run_dir.name,
            "recipe_sha256": meta["recipe_sha256"],
            "device": str(device),
            "epochs": len(history),
            "stopped_early": len(history) < cfg.epochs,
            "train_seconds": sum(r["seconds"] for r in history),
            "samples": {split: int(len(getattr(data, split).y)) for split in ("train", "validation", "test")},
            "metrics": metrics,
            "labels": data.labels,
            "test_confusion_matrix": test["confusion_matrix"],
        }
        atomic_write_json(run_dir / "summary.json", summary)
        plot_curves(history, run_dir / "curves.png")
        plot_confusion(test["confusion_matrix"], data.labels, run_dir / "confusion_matrix.png")
        return TrainResult(run_dir=run_dir, metrics=metrics)


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: Dataset, split: str, device: torch.device, batch_size: int = 512) -> dict[str, Any]:
    """Loss, accuracy, macro precision/recall/F1 and the confusion matrix on one split."""
    model.eval()
    x, y = _to_device(getattr(data, split), device)
    loss_sum, predictions = 0.0, []
    for i in range(0, len(y), batch_size):
        logits = model(x[i : i + batch_size])
        loss_sum += F.cross_entropy(logits, y[i : i + batch_size], reduction="sum").item()
        predictions.append(logits.argmax(1).cpu())
    y_pred = torch.cat(predictions).numpy()
    return {"loss": loss_sum / len(y), **classification_metrics(getattr(data, split).y, y_pred, data.num_classes)}


def augment_batch(x: torch.Tensor, cfg: Any) -> torch.Tensor:
    """Random crop (zero padding, i.e. the mean pixel after normalisation) and horizontal flip, per sample."""
    if cfg is None or x.dim() != 4:
        return x
    n, c, h, w = x.shape
    if cfg.horizontal_flip:
        flip = (torch.rand(n) < 0.5).to(x.device)
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
    p = cfg.random_crop_padding
    if p:
        padded = F.pad(x, (p, p, p, p))
        top = torch.randint(0, 2 * p + 1, (n,)).to(x.device)
        left = torch.randint(0, 2 * p + 1, (n,)).to(x.device)
        rows = (top[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
        cols = (left[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
        batch = torch.arange(n, device=x.device)[:, None, None, None]
        chans = torch.arange(c, device=x.device)[None, :, None, None]
        x = padded[batch, chans, rows, cols]
    return x


def _score(row: dict[str, Any], metric: str) -> list[float]:
    """Larger is better; accuracy and F1 ties go to the lower validation loss."""
    if metric == "val_loss":
        return [-row["val_loss"], 0.0]
    return [row[metric], -row["val_loss"]]


def check_resumable(saved: Recipe, requested: Recipe) -> None:
    """A resumed run may train for more epochs, on another device; anything else changes what the checkpoint means."""
    a = saved.model_dump(mode="json")
    b = requested.model_dump(mode="json")
    for free in ("epochs", "device"):
        a["train"].pop(free), b["train"].pop(free)
    changed = sorted(_diff_keys(a, b))
    if changed:
        raise UsageError(
            f"cannot resume: the recipe changed in {', '.join(changed)}; only train.epochs may change on --resume. "
            "Start a new run instead."
        )


def _diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for k in a.keys() | b.keys():
            out += _diff_keys(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


def _to_device(split: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(split.x).to(device), torch.from_numpy(split.y).to(device)


def _make_optimizer(recipe: Recipe, model: torch.nn.Module) -> torch.optim.Optimizer:
    o = recipe.train.optimizer
    if o.name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    cls = torch.optim.Adam if o.name == "adam" else torch.optim.AdamW
    return cls(model.parameters(), lr=o.lr, weight_decay=o.weight_decay)


def _make_scheduler(recipe: Recipe, optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int):
    """Per-step learning-rate factor: linear warm-up, then constant or cosine decay to 0 at the last step."""
    cosine = recipe.train.schedule == "cosine"

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if not cosine:
            return 1.0
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _write_metrics_csv(path: Path, history: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=METRICS_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write_text(path, buf.getvalue())


