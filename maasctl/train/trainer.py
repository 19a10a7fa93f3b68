"""The training loop, readable top to bottom: setup → per epoch (train, evaluate, checkpoint, log) → test.

Everything it does is chosen by the recipe; it writes only inside its run folder. The same code runs as one
process or as N under torchrun (DistributedDataParallel): each rank trains on its shard of every epoch, rank 0
alone evaluates and writes (see maasctl/train/distributed.py). Each data split is kept on the device, or in host
memory when it would not fit there, and fed the same batches either way (see maasctl/train/placement.py).
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from maasctl.data import Dataset, build_dataset
from maasctl.errors import UsageError
from maasctl.fileio import atomic_write_json, atomic_write_text
from maasctl.models import build_model_from_meta
from maasctl.recipe import Recipe, dump_recipe, recipe_sha256
from maasctl.train import distributed as ddp
from maasctl.train.accel import Accel, resolve_accel
from maasctl.train.checkpoint import BackgroundWriter, load_checkpoint, save_checkpoint, snapshot
from maasctl.train.distill import DistillObjective, load_teacher
from maasctl.train.finetune import Finetune, optimizer_groups, with_model_defaults
from maasctl.train.objective import Objective
from maasctl.train.placement import SPLITS, Placement, SplitFeed, choose_placement, describe
from maasctl.train.plots import plot_confusion, plot_curves, plot_regression
from maasctl.train.progress import DataClock
from maasctl.train.streaming import StreamFeed, auto_workers, is_streamed, mix_batch, train_transform
from maasctl.train.tracking import Tracker, mlflow_wanted

METRICS_COLUMNS = [
    "epoch",
    "train_loss",
    "train_accuracy",
    "val_loss",
    "val_accuracy",
    "val_macro_f1",
    "lr",
    "seconds",
    "data_wait_seconds",
    "compute_seconds",
]
EpochCallback = Callable[[dict[str, Any], int], None]
StepCallback = Callable[[int, int, int, float], None]  # (step, steps in the epoch, samples so far, loss)
DATA_WAIT_HINT = 1 / 3  # above this share of the epoch spent waiting for batches, the log suggests more workers


@dataclass
class _Progress:
    """Where a run stands after its last finished epoch; saved in every checkpoint, restored on resume."""

    epoch: int = 0
    best: list[float] = field(default_factory=lambda: [-math.inf, -math.inf])  # Objective.score of the best epoch
    stale: int = 0  # epochs since the chosen metric last improved by min_delta (early stopping)
    history: list[dict[str, Any]] = field(default_factory=list)

    def record(self, row: dict[str, Any], score: list[float], min_delta: float) -> bool:
        """Add an epoch's row and its score (larger is better); True when it is the best so far."""
        self.history.append(row)
        self.epoch = row["epoch"]
        improved = score > self.best
        # Early stopping counts epochs without an improvement of at least min_delta in the chosen metric.
        self.stale = 0 if score[0] > self.best[0] + min_delta else self.stale + 1
        self.best = max(self.best, score)
        return improved


@dataclass
class TrainResult:
    run_dir: Path
    metrics: dict[str, Any]


def resolve_device(requested: str) -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise UsageError(
            "device cuda was requested, but torch sees no CUDA device on this machine; use --device cpu or auto"
        )
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


class Trainer:
    """Setup (data, model, optimizer) happens in __init__, so a bad recipe fails before any file is written.

    `model` is the plain module (checkpoints, evaluation, export); `train_model` is what the training step calls:
    the same module, wrapped in DistributedDataParallel under torchrun and compiled with train.compile.
    """

    def __init__(self, recipe: Recipe, *, data: Dataset | None = None) -> None:
        """`data`: the recipe's dataset when the caller has already built it (`maasctl prune` prunes on it first)."""
        recipe = with_model_defaults(recipe)  # data keys left null take the pretrained model's values (timm)
        cfg = recipe.train
        self.recipe = recipe
        self.dist = ddp.env_from_torchrun()
        self.device = ddp.rank_device(self.dist, resolve_device(cfg.device))
        torch.manual_seed(cfg.seed)
        self.data = data if data is not None else build_dataset(recipe.data, cfg.seed, recipe.task)
        self.objective = _objective(recipe, self.data, self.device)  # loss, metrics, best metric; a teacher's term
        self.meta = _model_meta(recipe, self.data)
        self.accel: Accel = resolve_accel(cfg, self.device, input_ndim=1 + len(self.data.input_shape))
        self.model = build_model_from_meta(self.meta).to(self.device)
        self.meta.update(getattr(self.model, "meta_extra", {}))  # e.g. a pretrained encoder's config, for export
        if self.accel.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.batch_size = ddp.per_rank_batch(cfg.batch_size, self.dist)  # train.batch_size is the global batch
        samples_per_rank = math.ceil(len(self.data.train.y) / self.dist.world_size)
        batches_per_epoch = min(math.ceil(samples_per_rank / self.batch_size), cfg.max_batches_per_epoch or math.inf)
        steps_per_epoch = math.ceil(batches_per_epoch / cfg.grad_accumulation)
        # Parameter groups (head, backbone, layer-wise decay) and backbone freezing: train.finetune
        self.finetune = Finetune(recipe, self.model, steps_per_epoch)
        self.optimizer = _make_optimizer(recipe, _parameter_groups(recipe, self.model, self.finetune))
        self.scheduler = _make_scheduler(
            recipe,
            self.optimizer,
            total_steps=cfg.epochs * steps_per_epoch,
            warmup_steps=round(cfg.warmup_epochs * steps_per_epoch),
            steps_per_epoch=steps_per_epoch,
            gates=self.finetune.gates(),
        )
        self.scaler = self.accel.grad_scaler()
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # shapes repeat every step: let cuDNN time its algorithms once
        self.streamed = is_streamed(self.data.train)
        self.workers = _resolve_workers(cfg.data_workers, self.streamed, self.dist)
        self.placement: dict[str, Placement] = self._place_splits()
        self.mix = mix_batch(self.data.augment, self.data.num_classes)  # batch-level MixUp/CutMix, or None
        self.use_mlflow = mlflow_wanted(recipe)  # asked for but not installed: refused before any file is written
        self._feeds: dict[str, SplitFeed] = {}
        self.log: Callable[[str], None] = _log_stderr  # rank 0's one-line notes (the data placement)

        # The process group last: a bad recipe above fails on every rank alike, leaving no rank waiting for another.
        ddp.init_process_group(self.dist, self.device)
        self.train_model: torch.nn.Module = self.model
        if self.dist.enabled:
            # DDP broadcasts rank 0's weights now and averages gradients in backward. Each rank then draws its own
            # dropout and augmentation randomness.
            torch.manual_seed(cfg.seed + self.dist.rank)
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=device_ids)
        if self.accel.compile:
            # After the DDP wrapper, so that dynamo splits graphs at DDP's gradient buckets (DDPOptimizer).
            self.train_model = torch.compile(self.train_model)

    def _place_splits(self) -> dict[str, Placement]:
        """Where each split lives (train.data_placement): on the device, or in host memory when it would not fit;
        image files are streamed from disk by DataLoader workers whatever the placement."""
        if self.streamed:
            why = f"decoded by {self.workers} DataLoader worker(s) per process"
            return {s: Placement("stream", why) for s in SPLITS}
        free = torch.cuda.mem_get_info(self.device)[0] if self.device.type == "cuda" else None
        split_bytes = {s: getattr(self.data, s).x.nbytes + getattr(self.data, s).y.nbytes for s in SPLITS}
        return choose_placement(self.recipe.train.data_placement, self.device.type, split_bytes, free)

    @property
    def is_main(self) -> bool:
        return self.dist.is_main

    def on_main(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` on rank 0 only (e.g. create the run folder) and hand its result to every rank."""
        return ddp.on_main(fn)

    def _feed(self, split: str) -> SplitFeed | StreamFeed:
        """A split's batches on the device; a device-placed split is copied there once per run (not once per epoch)."""
        if split not in self._feeds:
            if self.streamed:
                self._feeds[split] = self._stream_feed(split)
            else:
                self._feeds[split] = SplitFeed(
                    getattr(self.data, split),
                    self.device,
                    self.placement[split].where,
                    workers=self.workers,
                    prepare=self.accel.input,
                )
        return self._feeds[split]

    def _stream_feed(self, split: str) -> StreamFeed:
        """Image files decoded by workers: the training split's persist across epochs and augment; evaluation's
        start per pass (they run for seconds an epoch) and decode exactly as serving does."""
        training = split == "train"
        data = self.data
        return StreamFeed(
            getattr(data, split),
            self.device,
            workers=self.workers,
            transform=train_transform(data.augment, data.preprocessing) if training else None,
            persistent=training,
            seed=self.recipe.train.seed + 1000 * self.dist.rank,
            max_batch=self.batch_size,
            prepare=self.accel.input,
        )

    def data_note(self) -> str:
        """Where the data lives, for the log and summary.json."""
        if not self.streamed:
            return describe(self.placement, self.device)
        extra = self.data.extra
        return (
            f"data: streamed from image files, {self.placement['train'].why}; "
            f"{len(extra.get('skipped', []))} unreadable file(s) skipped, {extra.get('ignored_files', 0)} non-image "
            "file(s) ignored"
        )

    def close(self) -> None:
        ddp.destroy_process_group()

    def score(self, split: str) -> dict[str, Any]:
        """The model as it stands on one split (loss and the task's metrics), e.g. before training starts."""
        return evaluate(
            self.model,
            self.data,
            split,
            self.device,
            accel=self.accel,
            feed=self._feed(split),
            objective=self.objective,
        )

    def fit(
        self,
        run_dir: Path,
        *,
        resume: bool = False,
        on_epoch: EpochCallback | None = None,
        on_step: StepCallback | None = None,
    ) -> TrainResult:
        """restore → per epoch: train, validate, checkpoint → test the best checkpoint."""
        cfg = self.recipe.train
        # Batch order; identical on every rank (each then takes its shard), saved in checkpoints so resume repeats it.
        shuffle = torch.Generator().manual_seed(cfg.seed)
        progress = self._restore(run_dir, shuffle) if resume else _Progress()
        tracker = self._start(run_dir, resume)
        writer = BackgroundWriter()
        for epoch in range(progress.epoch, cfg.epochs):
            started = time.perf_counter()
            clock, train_loss, train_figure = self._train_epoch(
                epoch, shuffle, self._step_callback(epoch, on_step, tracker)
            )
            row = self._validate(epoch, train_loss, train_figure, started, clock)
            if tracker is not None:
                tracker.epoch(row)
            improved = progress.record(row, self.objective.score(row), cfg.early_stopping.min_delta)
            self._checkpoint(run_dir, progress, shuffle, improved, writer)
            if on_epoch and self.is_main:
                on_epoch(row, cfg.epochs)
            if cfg.early_stopping.patience and progress.stale >= cfg.early_stopping.patience:
                break
        metrics = ddp.on_main(lambda: self._test_and_report(run_dir, progress.history, writer, tracker))
        return TrainResult(run_dir=run_dir, metrics=metrics)

    def _step_callback(self, epoch: int, on_step: StepCallback | None, tracker: Tracker | None) -> StepCallback | None:
        """What runs every half second within an epoch: the progress bar, the per-step tracking scalars."""
        if on_step is None and tracker is None:
            return None

        def step(done: int, steps: int, samples: int, loss: float) -> None:
            if on_step is not None:
                on_step(done, steps, samples, loss)
            if tracker is not None:
                tracker.step(epoch * steps + done, loss, self.optimizer.param_groups[-1]["lr"])

        return step

    def _start(self, run_dir: Path, resume: bool) -> Tracker | None:
        """Rank 0's notes and files before the first epoch; its tracker (TensorBoard, MLflow)."""
        if not self.is_main:
            return None
        atomic_write_text(run_dir / "recipe.yaml", dump_recipe(self.recipe))  # on resume: the new epochs/device
        for note in self.data.notes:  # the task inferred, rows and columns dropped
            self.log(note)
        self.log(self.data_note())  # where the data lives, and why (train.data_placement)
        if isinstance(self.objective, DistillObjective):
            t, d = self.objective.teacher, self.recipe.distill
            self.log(
                f"distilling from {t.kind} {t.spec} (sha256 {t.sha256[:12]}…), T={d.temperature:g}, alpha={d.alpha:g}"
            )
        _write_skipped(run_dir, self.data.extra.get("skipped") or [])
        cfg = self.recipe.train
        return Tracker(run_dir, self.recipe, tensorboard=cfg.tensorboard, mlflow=self.use_mlflow, resume=resume)

    def _restore(self, run_dir: Path, shuffle: torch.Generator) -> _Progress:
        """Continue from last.pt. Every rank reads the same file: weights, optimizer and schedule agree with no
        broadcast."""
        ckpt = load_checkpoint(run_dir / "checkpoints" / "last.pt")
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.scaler.is_enabled() and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        shuffle.set_state(ckpt["rng"]["shuffle"])
        _restore_rng(ckpt["rng"], self.dist, self.device, self.recipe.train.seed)
        return _Progress(ckpt["epoch"], ckpt["best"], ckpt["stale_epochs"], ckpt["history"])

    def _train_epoch(
        self, epoch: int, shuffle: torch.Generator, on_step: StepCallback | None
    ) -> tuple[DataClock, float, float]:
        """One pass over this rank's shard of the training split: how long it waited for data against how long it
        computed, and over all ranks the mean loss and the mean of the task's per-sample figure (right answers, or
        absolute errors for regression)."""
        cfg, device, accel = self.recipe.train, self.device, self.accel
        train = self._feed("train")
        self.train_model.train()
        self.finetune.epoch_start(epoch)  # frozen layers keep their BatchNorm statistics
        order = ddp.shard(torch.randperm(train.n, generator=shuffle), self.dist)
        if cfg.max_batches_per_epoch:
            order = order[: cfg.max_batches_per_epoch * self.batch_size]
        # Sums stay on the device: no host sync per step (the GPU runs ahead of Python); read once per epoch.
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        correct = torch.zeros((), dtype=torch.float64, device=device)  # right answers, or |errors| (regression)
        batches = math.ceil(len(order) / self.batch_size)
        in_memory_augment = None if self.streamed else self.data.augment  # streamed images are augmented by workers
        clock = DataClock(batches, on_step)
        for i, (x, y) in enumerate(clock.wrap(train.batches(self.batch_size, order))):  # the wait for each batch
            x = accel.input(augment_batch(x, in_memory_augment))
            target = y
            if self.mix is not None:
                x, target = self.mix(x, y)  # soft targets: cross_entropy takes class probabilities too
            with accel.autocast():
                logits = self.train_model(x)
                loss = self.objective.train_loss(logits, target, x)
            # train.grad_accumulation: step after every k micro-batches, and after the epoch's last
            self._step(loss, step=(i + 1) % cfg.grad_accumulation == 0 or i + 1 == batches)
            loss_sum.add_(loss.detach(), alpha=len(y))
            correct.add_(self.objective.batch_sum(logits, y))
            clock.step_done(len(y), loss.detach())
        # Epoch totals over all ranks (padding repeats at most world_size-1 samples, as DistributedSampler does).
        seen = torch.tensor(len(order), dtype=torch.float64, device=device)
        train_loss, train_correct, total = ddp.all_sum(torch.stack([loss_sum, correct, seen])).tolist()
        return clock, train_loss / total, train_correct / total

    def _step(self, loss: torch.Tensor, step: bool = True) -> None:
        cfg, optimizer, scaler = self.recipe.train, self.optimizer, self.scaler
        # under DDP, gradients are averaged across ranks during backward; micro-batches add theirs up
        scaler.scale(loss / cfg.grad_accumulation).backward()
        if not step:
            return
        if cfg.grad_clip:
            scaler.unscale_(optimizer)  # clip the true gradients, not the fp16-scaled ones
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        scaler.step(optimizer)  # skipped when fp16 gradients overflowed
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()

    def _validate(
        self, epoch: int, train_loss: float, train_figure: float, started: float, clock: DataClock
    ) -> dict[str, Any]:
        """The epoch's metrics row (the task's columns: accuracy and F1, or MAE, RMSE and R²; the time the steps
        waited for data and computed). One evaluation, on rank 0's weights, shared so every rank takes the same
        decisions (best checkpoint, early stopping)."""
        row = None
        if self.is_main:
            feed, objective = self._feed("validation"), self.objective
            val = evaluate(
                self.model, self.data, "validation", self.device, accel=self.accel, feed=feed, objective=objective
            )
            row = {
                "epoch": epoch + 1,
                "train_loss": train_loss,
                objective.train_column: train_figure,
                **{f"val_{k}": val[k] for k in objective.val_columns},
                "lr": self.optimizer.param_groups[0]["lr"],
                "seconds": time.perf_counter() - started,
                "data_wait_seconds": clock.wait,
                "compute_seconds": clock.compute,
            }
            if clock.wait > DATA_WAIT_HINT * clock.total:
                self.log(
                    f"epoch {epoch + 1}: training waited for data {clock.wait:.1f}s of {clock.total:.1f}s; "
                    f"more DataLoader workers may help (train.data_workers, now {self.workers})"
                )
        return ddp.broadcast(row)

    def _checkpoint(
        self, run_dir: Path, progress: _Progress, shuffle: torch.Generator, improved: bool, writer: BackgroundWriter
    ) -> None:
        """last.pt (and best.pt when the epoch improved) and metrics.csv, written by rank 0 while the next epoch
        trains. Every rank's random state goes in, so a resume draws what an uninterrupted run would have."""
        rng = _rng_state(self.device)
        per_rank = ddp.all_gather(rng) if self.dist.enabled else None  # a collective: every rank takes part
        if not self.is_main:
            return
        state = {
            "model": self.model.state_dict(),  # the plain module's: export and resume need no DDP or compile
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "rng": {"shuffle": shuffle.get_state(), **rng, **({"per_rank": per_rank} if per_rank else {})},
            "epoch": progress.epoch,
            "best": progress.best,
            "stale_epochs": progress.stale,
            "history": progress.history,
            "meta": self.meta,
        }
        # From a copy. best.pt first, metrics.csv last: if the process dies in between, last.pt still points at an
        # older epoch and a resume redoes this one; metrics.csv never runs ahead of last.pt.
        names = (["best.pt"] if improved else []) + ["last.pt"]
        paths = [run_dir / "checkpoints" / n for n in names]
        writer.submit(_checkpoint_job(paths, snapshot(state), run_dir / "metrics.csv"))

    def _test_and_report(
        self, run_dir: Path, history: list[dict[str, Any]], writer: BackgroundWriter, tracker: Tracker
    ) -> dict[str, Any]:
        """Test the best checkpoint; write summary.json and the pictures. Rank 0 only."""
        cfg, data, device = self.recipe.train, self.data, self.device
        writer.wait()  # the last checkpoint is on disk
        best_state = load_checkpoint(run_dir / "checkpoints" / "best.pt")
        self.model.load_state_dict(best_state["model"])
        test = evaluate(
            self.model, data, "test", device, accel=self.accel, feed=self._feed("test"), objective=self.objective
        )
        best_row = max(history, key=self.objective.score)
        pictures = {k: test.pop(k) for k in ("confusion_matrix", "actual", "predicted") if k in test}
        metrics = {
            "best_epoch": best_row["epoch"],
            **{k: best_row[k] for k in best_row if k.startswith("val_")},
            **{f"test_{k}": v for k, v in test.items()},
        }
        summary = {
            "run": run_dir.name,
            "recipe_sha256": self.meta["recipe_sha256"],
            "device": str(device),
            # what this (last) session actually used, after resolving auto settings
            **self.accel.describe(),
            "data_placement": {split: p.where for split, p in self.placement.items()},
            "data_placement_note": self.data_note(),
            "data_workers": self.workers,
            "data_wait_seconds": sum(r.get("data_wait_seconds", 0.0) for r in history),
            "compute_seconds": sum(r.get("compute_seconds", 0.0) for r in history),
            "skipped_files": len(data.extra.get("skipped") or []),
            "ignored_files": data.extra.get("ignored_files", 0),
            "world_size": self.dist.world_size,
            "batch_size_per_process": self.batch_size,
            "epochs": len(history),
            "stopped_early": len(history) < cfg.epochs,
            "train_seconds": sum(r["seconds"] for r in history),
            "samples": {split: len(getattr(data, split).y) for split in ("train", "validation", "test")},
            "task": data.task,
            "best_metric": self.objective.best_metric,
            "metrics": metrics,
            "labels": data.labels,
        }
        if data.task == "regression":
            summary["target"] = data.target
        if isinstance(self.objective, DistillObjective):  # the teacher, and how it scores on this run's test split
            summary["teacher"] = self.objective.teacher_summary(self._feed("test"), data.test.y)
        if data.task != "regression":
            summary["test_confusion_matrix"] = pictures["confusion_matrix"]
        atomic_write_json(run_dir / "summary.json", summary)
        plot_curves(history, run_dir / "curves.png")
        if data.task == "regression":
            plot_regression(pictures["actual"], pictures["predicted"], run_dir, data.target["column"])
            tracker.finish(metrics, run_dir / "predicted_vs_actual.png")
        else:
            plot_confusion(pictures["confusion_matrix"], data.labels, run_dir / "confusion_matrix.png")
            tracker.finish(metrics, run_dir / "confusion_matrix.png")
        return metrics


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    data: Dataset,
    split: str,
    device: torch.device,
    batch_size: int = 512,
    accel: Accel | None = None,
    feed: SplitFeed | None = None,
    objective: Objective | None = None,
) -> dict[str, Any]:
    """The loss and the task's metrics on one split (`objective.scores`: accuracy, macro precision/recall/F1, the
    confusion matrix, ROC AUC for two classes; or MAE, RMSE, R² and the values behind them). `feed`: the split's
    batches, wherever it lives; by default the split is copied to the device."""
    model.eval()
    objective = objective or Objective(Recipe().train, data, device)
    feed = feed if feed is not None else SplitFeed(getattr(data, split), device, "device")
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    outputs = []
    for x, y in feed.batches(batch_size):
        xb = accel.input(x) if accel else x
        with accel.autocast() if accel else contextlib.nullcontext():
            out = model(xb).float()
        loss_sum += objective.loss(out, y, reduction="sum")
        outputs.append(out)
    return {
        "loss": loss_sum.item() / feed.n,
        **objective.scores(getattr(data, split).y, torch.cat(outputs).cpu().numpy()),
    }


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


def _rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _restore_rng(saved: dict[str, Any], env: ddp.DistEnv, device: torch.device, seed: int) -> None:
    """Each rank continues its own random stream (dropout, augmentation) when the checkpoint has one per rank."""
    per_rank = saved.get("per_rank") or []
    mine = per_rank[env.rank] if len(per_rank) == env.world_size else saved
    torch.set_rng_state(mine["torch"])
    if device.type == "cuda" and "cuda" in mine:
        torch.cuda.set_rng_state(mine["cuda"], device)
    if mine is saved and env.rank:  # resumed with another process count: give the new ranks streams of their own
        torch.manual_seed(seed + env.rank)


def _objective(recipe: Recipe, data: Dataset, device: torch.device) -> Objective:
    """The task's objective; with distill.teacher, the teacher's term added to the training loss (the teacher is
    loaded and checked against the data here, before anything is written; again on --resume)."""
    if recipe.distill.teacher is None:
        return Objective(recipe.train, data, device)
    return DistillObjective(recipe.train, data, device, load_teacher(recipe.distill, data, device), recipe.distill)


def _model_meta(recipe: Recipe, data: Dataset) -> dict[str, Any]:
    """What a checkpoint carries beside its weights: enough to rebuild the model and its data contract."""
    return {
        "model_name": recipe.model.name,
        "model_params": recipe.model.params,
        "input_shape": list(data.input_shape),
        "input_kind": data.input_kind,
        "vocab_size": data.vocab_size,
        "num_classes": data.num_outputs,  # the head's width: 1 for regression
        "task": data.task,
        "target": data.target,
        "labels": data.labels,
        "preprocessing": data.preprocessing,
        "recipe_sha256": recipe_sha256(recipe),
    }


def _resolve_workers(requested: int | str, streamed: bool, env: ddp.DistEnv) -> int:
    """train.data_workers: auto = the cores shared among this node's processes (≤ 8) for streamed images, 0 for
    in-memory splits (slicing a tensor is faster in the training process than sending it from a worker)."""
    if requested != "auto":
        return int(requested)
    local = int(os.environ.get("LOCAL_WORLD_SIZE", env.world_size))
    return auto_workers(local) if streamed else 0


def _write_skipped(run_dir: Path, skipped: list[tuple[str, str]]) -> None:
    """skipped.csv: each unreadable image file left out of the run, and why."""
    if not skipped:
        return
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["file", "reason"])
    writer.writerows(skipped)
    atomic_write_text(run_dir / "skipped.csv", buf.getvalue())


def _log_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _make_optimizer(recipe: Recipe, params: Any) -> torch.optim.Optimizer:
    """`params`: the model's parameters, or groups with their own lr / weight_decay (train.finetune)."""
    o = recipe.train.optimizer
    if o.name == "sgd":
        return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay, nesterov=o.nesterov)
    cls = torch.optim.Adam if o.name == "adam" else torch.optim.AdamW
    return cls(params, lr=o.lr, weight_decay=o.weight_decay)


def _parameter_groups(recipe: Recipe, model: torch.nn.Module, finetune: Finetune) -> Any:
    """What the optimizer trains: a pretrained text encoder's own groups (no decay on biases and norms, layer-wise
    lr decay), else train.finetune's (head, backbone, layer-wise decay) or simply every parameter."""
    o = recipe.train.optimizer
    if hasattr(model, "param_groups"):
        return model.param_groups(o.lr, o.weight_decay, o.layer_decay)
    return optimizer_groups(finetune.groups)


def _make_scheduler(
    recipe: Recipe,
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    warmup_steps: int,
    steps_per_epoch: int,
    gates: list[Callable[[int], float]] | None = None,
):
    """Per-step learning-rate factor: linear warm-up, then the recipe's schedule (see TrainConfig.schedule); times
    each parameter group's gate (0 while a frozen backbone waits) when `gates` are given."""
    cfg = recipe.train
    step_size = max(1, round(cfg.step_epochs * steps_per_epoch))

    def cosine(progress: float) -> float:
        return 0.5 * (1 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))

    def factor(step: int) -> float:
        if cfg.schedule == "onecycle":  # its own warm-up: up over 30% of the steps, then cosine down
            peak = max(1, round(0.3 * total_steps))
            return (step + 1) / peak if step < peak else cosine((step - peak) / max(1, total_steps - peak))
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if cfg.schedule == "constant":
            return 1.0
        if cfg.schedule == "step":
            return cfg.step_gamma ** ((step - warmup_steps) // step_size)
        if cfg.schedule == "linear":
            return max(0.0, 1 - (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return cosine((step - warmup_steps) / max(1, total_steps - warmup_steps))

    if gates:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, [lambda s, g=g: factor(s) * g(s) for g in gates])
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _checkpoint_job(paths: list[Path], state: dict[str, Any], metrics_csv: Path) -> Callable[[], None]:
    def job() -> None:
        save_checkpoint(paths, state)
        _write_metrics_csv(metrics_csv, state["history"])

    return job


def _write_metrics_csv(path: Path, history: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    # The columns of the task: METRICS_COLUMNS for classes (+ val_roc_auc for two), MAE/RMSE/R² for regression
    writer = csv.DictWriter(buf, fieldnames=list(history[0]) if history else METRICS_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write_text(path, buf.getvalue())
