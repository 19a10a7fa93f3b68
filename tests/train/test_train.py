"""Training runs: folders never reused, checkpoints loadable safely, interrupted runs resume, bad input fails early."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from helpers import TINY, run_cli


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_run_names_increment_never_overwrite(tmp_path):
    for _ in range(2):
        run_cli("train", "--set", "train.epochs=1", "--name", "same", cwd=tmp_path)
    runs = sorted(p.name for p in (tmp_path / "artifacts" / "runs").iterdir())
    assert runs == ["same", "same-2"]


def test_checkpoints_load_with_weights_only(workspace):
    ckpt = torch.load(workspace / "artifacts/runs/digits/checkpoints/last.pt", weights_only=True)
    assert ckpt["epoch"] == 3 and len(ckpt["history"]) == 3
    assert ckpt["meta"]["input_shape"] == [1, 8, 8] and ckpt["meta"]["num_classes"] == 10


def test_resume_continues_from_last_checkpoint_and_extends(tmp_path):
    run_cli("train", "--set", "train.epochs=2", "--name", "r", cwd=tmp_path)
    run_dir = tmp_path / "artifacts" / "runs" / "r"
    first = _rows(run_dir / "metrics.csv")
    out = json.loads(run_cli("train", "--resume", "r", "--set", "train.epochs=4", "--json", cwd=tmp_path).stdout)
    rows = _rows(run_dir / "metrics.csv")
    assert [r["epoch"] for r in rows] == ["1", "2", "3", "4"]
    assert rows[:2] == first  # the finished epochs were kept, not redone
    assert float(rows[2]["train_loss"]) < float(
        rows[0]["train_loss"]
    )  # training went on from the weights, not from scratch
    assert out["run_dir"].endswith("runs/r")
    assert "epochs: 4" in (run_dir / "recipe.yaml").read_text()


def test_resume_refuses_an_incompatible_recipe_change(tmp_path):
    run_cli("train", "--set", "train.epochs=1", "--name", "r", cwd=tmp_path)
    proc = run_cli("train", "--resume", "r", "--set", "model.params.width=8", cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert "model.params.width" in proc.stderr and "only train.epochs may change" in proc.stderr


def test_unknown_model_suggests_and_writes_nothing(tmp_path):
    proc = run_cli("train", "--set", "model.name=cnn_smal", cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert "did you mean 'cnn_small'" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "artifacts" / "runs").exists() or not any((tmp_path / "artifacts" / "runs").iterdir())


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU box a CUDA request is valid")
def test_cuda_request_without_cuda_is_a_clear_error(tmp_path):
    proc = run_cli("train", *TINY, "--device", "cuda", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "no CUDA device" in proc.stderr


def test_mlp_recipe_trains(tmp_path):
    out = json.loads(
        run_cli("train", "--set", "model.name=mlp", "--set", "train.epochs=3", "--json", cwd=tmp_path).stdout
    )
    assert out["metrics"]["test_accuracy"] > 0.8


def test_resume_after_sigkill_mid_run(tmp_path):
    """Kill -9 a run after its second checkpoint; --resume finishes it with every epoch accounted for."""
    import signal
    import subprocess
    import sys
    import time

    run_dir = tmp_path / "artifacts" / "runs" / "k"
    proc = subprocess.Popen(
        [sys.executable, "-m", "maasctl", "train", "--set", "train.epochs=200", "--name", "k"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(_rows_or_empty(run_dir / "metrics.csv")) < 2:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    done = len(_rows_or_empty(run_dir / "metrics.csv"))
    assert 2 <= done < 200, "the kill should land mid-run"
    ckpt = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)  # intact despite the kill
    assert ckpt["epoch"] >= done - 1

    out = json.loads(
        run_cli("train", "--resume", "k", "--set", f"train.epochs={ckpt['epoch'] + 2}", "--json", cwd=tmp_path).stdout
    )
    rows = _rows(run_dir / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == list(range(1, ckpt["epoch"] + 3))
    assert out["metrics"]["test_accuracy"] > 0.8


def _rows_or_empty(path):
    try:
        return _rows(path)
    except FileNotFoundError:
        return []


def test_same_seed_same_metrics_on_cpu(tmp_path):
    """Reproducibility: two CPU runs with one seed give identical per-epoch metrics (timings aside)."""
    for name in ("a", "b"):
        run_cli("train", "--set", "train.epochs=2", "--device", "cpu", "--name", name, cwd=tmp_path)
    a, b = (_rows(tmp_path / "artifacts" / "runs" / n / "metrics.csv") for n in ("a", "b"))
    for row in a + b:
        for timing in ("seconds", "data_wait_seconds", "compute_seconds"):
            row.pop(timing)
    assert a == b
    c_dir = tmp_path / "c"
    c_dir.mkdir()
    run_cli("train", "--set", "train.epochs=2", "--set", "train.seed=1", "--device", "cpu", "--name", "c", cwd=c_dir)
    c = _rows(c_dir / "artifacts" / "runs" / "c" / "metrics.csv")
    assert [r["train_loss"] for r in c] != [r["train_loss"] for r in a]


def test_early_stopping_pictures_and_summary(tmp_path):
    out = json.loads(
        run_cli(
            "train",
            "--set",
            "train.epochs=60",
            "--set",
            "train.early_stopping.patience=2",
            "--set",
            "train.early_stopping.min_delta=0.5",
            "--set",
            "train.label_smoothing=0.1",
            "--set",
            "train.grad_clip=1.0",
            "--set",
            "train.warmup_epochs=0.5",
            "--json",
            cwd=tmp_path,
        ).stdout
    )
    run_dir = tmp_path / out["run_dir"]
    summary = json.loads((run_dir / "summary.json").read_text())
    # No accuracy gain can exceed 0.5 after the first epoch, so patience 2 stops it at epoch 3.
    assert summary["stopped_early"] and summary["epochs"] == 3
    assert len(_rows(run_dir / "metrics.csv")) == 3
    cm = summary["test_confusion_matrix"]
    assert len(cm) == 10 and sum(map(sum, cm)) == summary["samples"]["test"]
    assert 0 < out["metrics"]["test_macro_f1"] <= 1
    from PIL import Image

    for picture in ("curves.png", "confusion_matrix.png"):
        with Image.open(run_dir / picture) as img:
            assert img.format == "PNG" and img.width > 300


def test_speed_settings_resolve_to_what_the_device_supports(workspace):
    """auto means: bf16/fp16 autocast and channels_last on CUDA, plain fp32 on CPU; summary.json says what was used."""
    summary = json.loads((workspace / "artifacts/runs/digits/summary.json").read_text())
    assert summary["world_size"] == 1 and summary["compile"] is False
    if summary["device"] == "cpu":
        assert summary["amp"] == "off" and summary["channels_last"] is False
    else:
        assert summary["amp"] in ("bf16", "fp16") and summary["channels_last"] is True


def test_fp16_on_cpu_is_refused_not_ignored():
    from maasctl.errors import UsageError
    from maasctl.recipe import load_recipe
    from maasctl.train.trainer import Trainer

    # Trainer() runs before the CLI makes a run folder, so nothing is written (see test_unknown_model_...).
    with pytest.raises(
        UsageError, match=r"train.amp: fp16 needs CUDA .* use train.amp=auto \(off on CPU\), bf16, or off"
    ):
        Trainer(load_recipe(None, ["train.amp=fp16", "train.device=cpu"]))


def test_bf16_and_channels_last_run_on_cpu_when_asked(tmp_path):
    """Explicit settings are honoured on CPU too (`on` written bare in YAML); the weights export like any others."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text("train:\n  epochs: 1\n  device: cpu\n  amp: bf16\n  channels_last: on\n")
    out = json.loads(run_cli("train", str(recipe), "--json", cwd=tmp_path).stdout)
    run_dir = tmp_path / out["run_dir"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["amp"], summary["channels_last"]) == ("bf16", True)
    assert out["metrics"]["test_accuracy"] > 0.5  # one epoch in bf16 learns (chance is 0.1)
    from maasctl.models import build_model_from_meta

    ckpt = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)
    model = build_model_from_meta(ckpt["meta"]).eval()
    model.load_state_dict(ckpt["model"])  # a plain (NCHW, fp32) model takes the channels_last weights
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_channels_last_on_is_refused_for_inputs_that_are_not_images(tmp_path):
    import numpy as np

    from maasctl.errors import UsageError
    from maasctl.recipe import load_recipe
    from maasctl.train.trainer import Trainer

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "f.npz", x=rng.normal(size=(60, 4)).astype(np.float32), y=np.arange(60) % 3)
    base = [f"data={{source: npz, path: {tmp_path / 'f.npz'}}}", "model.name=mlp", "train.device=cpu"]
    with pytest.raises(UsageError, match="channels_last: on needs image inputs"):
        Trainer(load_recipe(None, [*base, "train.channels_last=on"]))
    assert Trainer(load_recipe(None, [*base, "train.channels_last=auto"])).accel.channels_last is False


def test_resume_may_change_how_a_run_runs_but_not_what_it_trains():
    from maasctl.errors import UsageError
    from maasctl.recipe import load_recipe
    from maasctl.train.rundir import check_resumable

    saved = load_recipe(None, [])
    check_resumable(
        saved,
        load_recipe(
            None,
            [
                "train.amp=bf16",
                "train.channels_last=off",
                "train.compile=true",
                "train.epochs=40",
                "train.data_placement=host",
                "train.data_workers=2",
            ],
        ),
    )
    with pytest.raises(UsageError, match="train.optimizer.lr"):
        check_resumable(saved, load_recipe(None, ["train.optimizer.lr=0.1"]))


@pytest.mark.parametrize(
    "schedule, expect",
    [
        # 10 steps an epoch (1258 training digits, batch 128), 3 epochs, peak lr 0.01
        (
            "step",
            lambda lrs: (
                lrs[0] == lrs[9] == pytest.approx(0.01)
                and lrs[10] == pytest.approx(0.005)
                and lrs[20] == pytest.approx(0.0025)
            ),
        ),
        (
            "onecycle",
            lambda lrs: (
                lrs[0] < 0.002 and max(lrs) == pytest.approx(0.01) and 7 <= lrs.index(max(lrs)) <= 9 and lrs[-1] < 0.001
            ),
        ),
        (
            "cosine",
            lambda lrs: (
                lrs[0] == pytest.approx(0.01, rel=0.01) and lrs[-1] < 0.0001 and lrs == sorted(lrs, reverse=True)
            ),
        ),
    ],
)
def test_learning_rate_schedules(schedule, expect):
    from maasctl.recipe import load_recipe
    from maasctl.train.trainer import Trainer

    recipe = load_recipe(
        None,
        [
            f"train.schedule={schedule}",
            "train.step_epochs=1",
            "train.step_gamma=0.5",
            "train.epochs=3",
            "train.batch_size=128",
            "train.optimizer.name=sgd",
            "train.optimizer.nesterov=true",
            "train.optimizer.lr=0.01",
        ],
    )
    trainer = Trainer(recipe)
    assert trainer.optimizer.param_groups[0]["nesterov"] is True
    lrs = []
    for _ in range(30):
        lrs.append(trainer.optimizer.param_groups[0]["lr"])
        trainer.optimizer.step()
        trainer.scheduler.step()
    assert expect(lrs), lrs


def _fit(run_dir, overrides, resume=False):
    """Train in this process (no CLI start-up); the per-epoch rows without timings, and summary.json."""
    from maasctl.recipe import load_recipe
    from maasctl.train.trainer import Trainer

    trainer = Trainer(load_recipe(None, ["train.device=cpu", "train.batch_size=100", *overrides]))
    try:
        trainer.fit(run_dir, resume=resume)
    finally:
        trainer.close()
    timings = ("seconds", "data_wait_seconds", "compute_seconds")
    rows = [{k: v for k, v in r.items() if k not in timings} for r in _rows(run_dir / "metrics.csv")]
    return rows, json.loads((run_dir / "summary.json").read_text())


def test_host_placement_gives_the_same_metrics_as_device_placement(tmp_path):
    """The same seed gives the same batches, augmentation and metrics whether a split sits on the device or in host
    memory behind a DataLoader (here with a worker process, channels_last and augmentation, batches not dividing
    the split evenly); summary.json says where each split was."""
    from maasctl.train.rundir import create_run_dir

    common = [
        "train.epochs=2",
        "train.channels_last=on",
        "data.augment.horizontal_flip=true",
        "data.augment.random_crop_padding=1",
    ]
    device_rows, device_summary = _fit(create_run_dir(tmp_path, "device"), common)
    host_rows, host_summary = _fit(
        create_run_dir(tmp_path, "host"), [*common, "train.data_placement=host", "train.data_workers=1"]
    )
    assert device_rows == host_rows and len(host_rows) == 2
    assert device_summary["metrics"] == host_summary["metrics"]
    # auto on CPU: the data is in the device's memory already
    assert device_summary["data_placement"] == {"train": "device", "validation": "device", "test": "device"}
    assert "the device is the CPU" in device_summary["data_placement_note"]
    assert host_summary["data_placement"] == {"train": "host", "validation": "host", "test": "host"}


def test_resume_with_host_placement_continues_like_device_placement(tmp_path):
    """data_placement may change on --resume; the resumed epochs match whichever placement runs them."""
    import shutil

    from maasctl.train.rundir import create_run_dir

    first, _ = _fit(create_run_dir(tmp_path, "a"), ["train.epochs=1"])
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    on_device, _ = _fit(tmp_path / "a", ["train.epochs=2"], resume=True)
    on_host, summary = _fit(tmp_path / "b", ["train.epochs=2", "train.data_placement=host"], resume=True)
    assert on_host == on_device and on_host[:1] == first and len(on_host) == 2
    assert summary["data_placement"]["train"] == "host"


def test_placement_decision_from_free_gpu_memory():
    """auto on CUDA keeps on the GPU the splits that fit together in half of its free memory; the rest stay in host memory."""
    from maasctl.errors import UsageError
    from maasctl.train.placement import choose_placement

    mib = 2**20
    sizes = {"train": 600 * mib, "validation": 100 * mib, "test": 100 * mib}

    def where(requested, device_type, free):
        return {s: p.where for s, p in choose_placement(requested, device_type, sizes, free).items()}

    assert where("auto", "cuda", 4096 * mib) == {"train": "device", "validation": "device", "test": "device"}
    assert where("auto", "cuda", 1500 * mib) == {"train": "device", "validation": "device", "test": "host"}  # 800 > 750
    assert where("auto", "cuda", 1024 * mib) == {"train": "host", "validation": "device", "test": "device"}
    assert where("auto", "cpu", None) == {"train": "device", "validation": "device", "test": "device"}
    assert (
        where("host", "cuda", 4096 * mib)
        == where("host", "cpu", None)
        == {"train": "host", "validation": "host", "test": "host"}
    )
    assert where("device", "cuda", 900 * mib) == {"train": "device", "validation": "device", "test": "device"}
    why = choose_placement("auto", "cuda", sizes, 1024 * mib)["train"].why
    assert why == "600.0 MiB > 512.0 MiB, half of the free GPU memory"
    assert (
        choose_placement("auto", "cuda", sizes, 1500 * mib)["test"].why
        == "100.0 MiB with 700.0 MiB already on the GPU > 750.0 MiB, half of the free GPU memory"
    )
    # Asking for device placement when the splits cannot fit fails before training, not with an OOM mid-epoch.
    with pytest.raises(
        UsageError,
        match=r"data_placement: device needs 800.0 MiB .* GPU has 700.0 MiB free; use train.data_placement=auto",
    ):
        choose_placement("device", "cuda", sizes, 700 * mib)


def test_data_placement_values_are_checked_by_the_schema():
    from maasctl.recipe import RecipeError, load_recipe

    assert load_recipe(None, []).train.data_placement == "auto"
    with pytest.raises(
        RecipeError, match=r"train.data_placement \(from --set\): Input should be 'auto', 'device' or 'host'"
    ):
        load_recipe(None, ["train.data_placement=gpu"])
    with pytest.raises(
        RecipeError, match=r"train.data_workers \(from --set\): Input should be greater than or equal to 0"
    ):
        load_recipe(None, ["train.data_workers=-1"])


def test_ctrl_c_exits_130_and_resume_continues_from_the_last_epoch(tmp_path):
    """SIGINT (what Ctrl-C sends) mid-run: exit 130 with the resume command, the checkpoint under way completes,
    and --resume carries on from the last finished epoch with the earlier rows kept."""
    import signal
    import subprocess
    import sys
    import time

    run_dir = tmp_path / "artifacts" / "runs" / "c"
    log = tmp_path / "train.log"
    with open(log, "w") as stderr:
        proc = subprocess.Popen(
            # the MLP: epochs of a fraction of a second, so the test is quick and the interrupt still lands mid-run
            [
                sys.executable,
                "-m",
                "maasctl",
                "train",
                "--set",
                "model.name=mlp",
                "--set",
                "train.epochs=200",
                "--name",
                "c",
            ],
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            # A suite started in the background (`pytest &`) has SIGINT ignored, which children inherit, and Python
            # then installs no KeyboardInterrupt handler: give the child the default, as a terminal would.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and len(_rows_or_empty(run_dir / "metrics.csv")) < 2:
                time.sleep(0.05)
            proc.send_signal(signal.SIGINT)
            code = proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    err = log.read_text()
    assert code == 130, err
    assert "interrupted; continue with: maasctl train --resume artifacts/runs/c\n" in err
    assert "Traceback" not in err
    before = _rows(run_dir / "metrics.csv")
    assert 2 <= len(before) < 200, "the interrupt should land mid-run"
    ckpt = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["epoch"] == len(before)  # nothing lost: the last epoch's checkpoint was finished before exiting

    out = json.loads(
        run_cli(  # the command it printed
            "train", "--resume", "artifacts/runs/c", "--set", f"train.epochs={len(before) + 2}", "--json", cwd=tmp_path
        ).stdout
    )
    rows = _rows(run_dir / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == list(range(1, len(before) + 3))
    assert rows[: len(before)] == before
    assert out["metrics"]["test_accuracy"] > 0.8


def test_best_metric_picks_the_checkpoint(tmp_path):
    """`train.best_metric` decides which epoch best.pt (and so the summary, the test figures and export) holds. With
    this seed and a constant, high learning rate the validation loss is lowest at epoch 2 while the accuracy peaks
    at epoch 4, so the two choices pick different epochs of the same trajectory."""
    from concurrent.futures import ThreadPoolExecutor

    common = ["--set", "model.name=mlp", "--set", "train.epochs=4", "--set", "train.schedule=constant"]
    common += ["--set", "train.optimizer.lr=0.02", "--set", "train.device=cpu", "--json"]

    def train(metric: str) -> dict:  # the two runs side by side: most of each is start-up
        return json.loads(
            run_cli("train", *common, "--set", f"train.best_metric={metric}", "--name", metric, cwd=tmp_path).stdout
        )

    with ThreadPoolExecutor(2) as pool:
        outs = dict(zip(("val_loss", "val_accuracy"), pool.map(train, ("val_loss", "val_accuracy"))))
    by = {}
    for metric, out in outs.items():
        run_dir = tmp_path / "artifacts" / "runs" / metric
        timings = ("seconds", "data_wait_seconds", "compute_seconds")
        rows = [{k: v for k, v in r.items() if k not in timings} for r in _rows(run_dir / "metrics.csv")]
        best_pt = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)
        summary = json.loads((run_dir / "summary.json").read_text())
        by[metric] = rows, out["metrics"]["best_epoch"], best_pt["epoch"], summary
    (loss_rows, loss_epoch, loss_pt, loss_summary), (acc_rows, acc_epoch, acc_pt, _) = (
        by["val_loss"],
        by["val_accuracy"],
    )
    assert loss_rows == acc_rows  # the same seed on CPU: the same epochs; only the choice differs
    val_loss = [float(r["val_loss"]) for r in loss_rows]
    val_acc = [(float(r["val_accuracy"]), -float(r["val_loss"])) for r in loss_rows]
    assert loss_epoch == loss_pt == 1 + val_loss.index(min(val_loss))
    assert acc_epoch == acc_pt == 1 + val_acc.index(max(val_acc))
    assert loss_epoch != acc_epoch, f"this trajectory should separate the two metrics: {loss_rows}"
    assert loss_summary["metrics"]["val_loss"] == pytest.approx(min(val_loss), rel=1e-5)

    proc = run_cli("train", "--set", "train.best_metric=accuracy", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "train.best_metric" in proc.stderr and "val_accuracy" in proc.stderr


def test_max_batches_per_epoch_bounds_each_epoch_and_the_schedule(tmp_path):
    """train.max_batches_per_epoch: each epoch trains on that many batches of its shuffled order, and the learning-rate
    schedule spans those steps (cosine reaches 0 at the last)."""
    from maasctl.recipe import load_recipe
    from maasctl.train.rundir import create_run_dir
    from maasctl.train.trainer import Trainer

    trainer = Trainer(
        load_recipe(
            None, ["train.device=cpu", "train.batch_size=100", "train.epochs=2", "train.max_batches_per_epoch=3"]
        )
    )
    calls = []  # (step, steps in the epoch, samples so far); the last step of each epoch is always reported
    trainer.fit(create_run_dir(tmp_path, "r"), on_step=lambda done, steps, n, _loss: calls.append((done, steps, n)))
    trainer.close()
    assert {steps for _, steps, _ in calls} == {3}
    assert [c for c in calls if c[0] == 3] == [(3, 3, 300), (3, 3, 300)]
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-9)
