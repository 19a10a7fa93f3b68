"""Training on streamed image files: each process reads its shard of each epoch (DistributedSampler semantics, a new
permutation per epoch), under 2 real gloo processes too; data-wait time recorded per epoch."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from helpers import colour_images, run_cli

from maasctl.data import build_dataset
from maasctl.recipe import load_recipe
from maasctl.train.distributed import DistEnv, shard
from maasctl.train.streaming import StreamFeed


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("imgs")
    for folder_, i, image in colour_images(root, 12, lambda i: (18 + i, 22), noise=20):
        image.save(folder_ / f"{i}.png")
    return root


def test_each_rank_reads_its_shard_and_epochs_reshuffle(folder):
    data = build_dataset(
        load_recipe(None, ["data.source=image_folder", f"data.root={folder}", "data.image_size=[8,8]"]).data, 0
    )
    train = data.train
    feed = StreamFeed(train, torch.device("cpu"), workers=2, persistent=True)
    shuffle = torch.Generator().manual_seed(0)
    epochs = []
    for _ in range(2):
        order = torch.randperm(len(train.y), generator=shuffle)  # the trainer's per-epoch permutation
        read = []
        for rank in range(2):
            mine = shard(order, DistEnv(rank=rank, world_size=2))
            labels = torch.cat([y for _, y in feed.batches(4, mine)]).numpy()
            assert labels.tolist() == train.y[mine.numpy()].tolist()  # exactly this rank's samples, in its order
            read.append(set(mine.tolist()))
        assert read[0] | read[1] == set(range(len(train.y)))  # together: every sample
        assert len(read[0] & read[1]) <= 1  # apart: disjoint but for the padding DistributedSampler adds
        epochs.append(order.tolist())
    assert epochs[0] != epochs[1]  # a new permutation each epoch (set_epoch)


def test_two_gloo_processes_train_on_streamed_images(folder, tmp_path):
    out = run_cli(
        "train",
        "--nproc",
        "2",
        "--device",
        "cpu",
        "--set",
        "data.source=image_folder",
        "--set",
        f"data.root={folder}",
        "--set",
        "data.image_size=[12,12]",
        "--set",
        "data.augment.horizontal_flip=true",
        "--set",
        "train.epochs=6",
        "--set",
        "train.batch_size=16",
        "--set",
        "train.data_workers=1",
        "--name",
        "streamed",
        "--json",
        cwd=tmp_path,
    )
    assert json.loads(out.stdout)["metrics"]["test_accuracy"] >= 0.8
    run = tmp_path / "artifacts" / "runs" / "streamed"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["data_placement"]["train"] == "stream"
    assert summary["data_workers"] == 1 and summary["data_wait_seconds"] >= 0
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6
    for r in rows:
        wait, compute = float(r["data_wait_seconds"]), float(r["compute_seconds"])
        assert wait >= 0 and compute > 0 and wait + compute <= float(r["seconds"]) + 1e-3
