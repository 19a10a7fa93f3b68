"""Multi-process training: `maasctl train --nproc 2` (and plain torchrun) on CPU with gloo, run for real.

Two processes are not expected to reproduce a one-process run number for number, even though together they see the
same global batches: each rank normalises BatchNorm over its half of a batch (no SyncBatchNorm), the averaged
gradients are summed in another order, and each rank draws its own dropout. So the test asks for the same range of
test accuracy (both > 0.8 after 3 epochs on digits), not equality.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import torch
from helpers import run_cli

from maasctl.train.distributed import DistEnv, per_rank_batch, shard

CPU2 = ["--nproc", "2", "--device", "cpu"]


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _only_run(tmp_path):
    runs = sorted(p.name for p in (tmp_path / "artifacts" / "runs").iterdir())
    assert len(runs) == 1, f"one run folder expected, got {runs}"
    return tmp_path / "artifacts" / "runs" / runs[0]


def test_nproc_2_trains_one_run_and_resumes_under_plain_torchrun(tmp_path, workspace):
    first = run_cli("train", *CPU2, "--set", "train.epochs=3", "--name", "d", "--json", cwd=tmp_path)
    out = json.loads(first.stdout)  # exactly one JSON object: only rank 0 prints
    run_dir = _only_run(tmp_path)
    assert run_dir.name == "d" and out["run_dir"].endswith("runs/d")
    assert first.stderr.count("run folder:") == 1 and first.stderr.count("test accuracy") == 1
    rows = _rows(run_dir / "metrics.csv")
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["batch_size_per_process"] == 32  # train.batch_size 64 is global
    assert summary["device"] == "cpu" and summary["amp"] == "off"

    single = json.loads((workspace / "train.json").read_text())["metrics"]["test_accuracy"]
    assert out["metrics"]["test_accuracy"] > 0.8 and single > 0.8
    assert abs(out["metrics"]["test_accuracy"] - single) < 0.1

    # Checkpoints hold the plain module's weights (no DDP "module." prefix): they load into a fresh model, as export does.
    from maasctl.models import build_model_from_meta

    ckpt = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    build_model_from_meta(ckpt["meta"]).load_state_dict(ckpt["model"])
    assert len(ckpt["rng"]["per_rank"]) == 2

    # Resume under a user's own torchrun, without --nproc: RANK/WORLD_SIZE/LOCAL_RANK come from the environment
    # (--nproc only starts this same command line).
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "maasctl",
        "train",
        "--resume",
        "d",
        "--set",
        "train.epochs=4",
        "--device",
        "cpu",
        "--json",
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    again = json.loads(proc.stdout)
    resumed = _rows(run_dir / "metrics.csv")
    assert [r["epoch"] for r in resumed] == ["1", "2", "3", "4"]
    assert resumed[:3] == rows  # finished epochs kept, not redone
    assert float(resumed[3]["train_loss"]) < float(rows[0]["train_loss"])  # went on from the weights
    assert again["metrics"]["test_accuracy"] > 0.8
    assert _only_run(tmp_path) == run_dir
    assert json.loads((run_dir / "summary.json").read_text())["epochs"] == 4


def test_nproc_refuses_a_bad_recipe_before_starting_processes(tmp_path):
    proc = run_cli("train", "--nproc", "2", "--set", "train.epocs=3", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "did you mean 'epochs'" in proc.stderr
    assert "starting: torchrun" not in proc.stderr and not (tmp_path / "artifacts").exists()


def test_shards_cover_the_epoch_and_form_the_single_process_batches():
    order = torch.randperm(1258, generator=torch.Generator().manual_seed(0))
    for world in (2, 3, 4):
        shards = [shard(order, DistEnv(rank=r, world_size=world)) for r in range(world)]
        assert len({len(s) for s in shards}) == 1  # equal step counts on every rank
        covered = torch.cat(shards)
        assert set(covered.tolist()) == set(order.tolist()) and len(covered) - len(order) < world
    # With a global batch of 64 on 2 ranks, step k of the two ranks together is exactly step k of one process.
    b = per_rank_batch(64, DistEnv(world_size=2))
    halves = [shard(order, DistEnv(rank=r, world_size=2)) for r in range(2)]
    for k in range(3):
        together = torch.cat([h[k * b : (k + 1) * b] for h in halves])
        assert sorted(together.tolist()) == sorted(order[k * 64 : (k + 1) * 64].tolist())
    assert torch.equal(shard(order, DistEnv()), order)
