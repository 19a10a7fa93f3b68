"""data.cache (ram, disk): the images after the deterministic resize, shared by the training process and its
DataLoader workers. The cached batches equal the decoded ones, each file is decoded once over several epochs, a
cached run trains exactly as an uncached one, the disk cache serves a second run, and a cache that would not fit is
refused before anything is written."""

from __future__ import annotations

import json
import os
from collections import namedtuple

import pytest
import torch
from helpers import colour_images
from PIL import Image

from maasctl.data import build_dataset
from maasctl.data import images as image_data
from maasctl.errors import UsageError
from maasctl.recipe import load_recipe
from maasctl.train.streaming import StreamFeed, train_transform


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """3 colour classes of mixed sizes, with an EXIF-rotated JPEG and a greyscale PNG among them."""
    root = tmp_path_factory.mktemp("imgs")
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed turned a quarter: width and height swap
    for folder_, i, image in colour_images(root, 8, lambda i: (15 + 3 * i, 30 - i), noise=25):
        if i == 0:
            image.save(folder_ / "turned.jpg", exif=exif.tobytes())
        elif i == 1:
            image.convert("L").save(folder_ / "grey.png")
        else:
            image.save(folder_ / f"{i}.{'png' if i % 2 else 'jpg'}")
    return root


def _recipe(folder, *extra):
    return load_recipe(
        None,
        [
            "data.source=image_folder",
            f"data.root={folder}",
            "data.image_size=[12,12]",
            "data.crop_fraction=0.8",
            "train.device=cpu",
            "train.batch_size=8",
            *extra,
        ],
    )


def _batches(feed, order=None):
    return [x for x, _ in feed.batches(8, order)]


@pytest.mark.parametrize("kind", ["ram", "disk"])
def test_cached_batches_equal_decoded_ones_and_each_file_is_decoded_once(folder, tmp_path, kind):
    cpu = torch.device("cpu")
    plain = build_dataset(_recipe(folder).data, 0)
    cached = build_dataset(_recipe(folder, f"data.cache={kind}", f"data.cache_dir={tmp_path}").data, 0)
    # evaluation: the tensors serving builds from the files, whether from the cache (filled, then read) or not
    expected = _batches(StreamFeed(plain.validation, cpu, workers=2, persistent=False))
    feed = StreamFeed(cached.validation, cpu, workers=2, persistent=False)
    for _ in range(2):
        got = _batches(feed)
        assert len(got) == len(expected) and all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))
    assert feed.cache.decodes.tolist() == [1] * len(cached.validation.y)
    # training with random-resized-crop from the cached image: two epochs, each file decoded in the first only
    aug = _recipe(folder, "data.augment.random_resized_crop=[0.5,1.0]", "data.augment.horizontal_flip=true")
    transform = train_transform(aug.data.augment, cached.preprocessing)
    train = StreamFeed(cached.train, cpu, workers=2, transform=transform)
    for _ in range(2):
        shapes = {tuple(x.shape[1:]) for x in _batches(train, torch.randperm(len(cached.train.y)))}
        assert shapes == {(3, 12, 12)}
    assert train.cache.decodes.tolist() == [1] * len(cached.train.y)
    if kind == "disk":  # a second run with the same files and resize: read from disk, nothing decoded
        again = build_dataset(_recipe(folder, "data.cache=disk", f"data.cache_dir={tmp_path}").data, 0)
        feed = StreamFeed(again.validation, cpu, workers=1, persistent=False)
        assert all(torch.equal(a, b) for a, b in zip(_batches(feed), expected, strict=True))
        assert feed.cache.decodes.sum().item() == 0
        made = sorted(os.path.basename(s.x.cache.path) for s in (again.train, again.validation))
        assert sorted(p.name for p in tmp_path.iterdir()) == made  # one folder per split read, nothing left aside


def _fit(folder, run_dir, *extra):
    from maasctl.train.trainer import Trainer

    trainer = Trainer(_recipe(folder, "train.epochs=2", "train.data_workers=1", "train.tensorboard=false", *extra))
    try:
        trainer.fit(run_dir)
    finally:
        trainer.close()
    with open(run_dir / "metrics.csv") as f:
        header, *rows = [line.strip().split(",") for line in f]
    timings = {"seconds", "data_wait_seconds", "compute_seconds"}
    kept = [i for i, name in enumerate(header) if name not in timings]
    return [[r[i] for i in kept] for r in rows], json.loads((run_dir / "summary.json").read_text())["metrics"]


def test_a_cached_run_trains_exactly_like_an_uncached_one(folder, tmp_path):
    from maasctl.train.rundir import create_run_dir

    flip = "data.augment.horizontal_flip=true"  # per-image randomness in the workers, the same seeds either way
    rows, metrics = _fit(folder, create_run_dir(tmp_path, "plain"), flip)
    cached_rows, cached_metrics = _fit(folder, create_run_dir(tmp_path, "cached"), flip, "data.cache=ram")
    assert cached_rows == rows and len(rows) == 2
    assert cached_metrics == metrics


def test_a_cache_that_would_not_fit_is_refused(folder, tmp_path, monkeypatch):
    monkeypatch.setattr(image_data, "_available_memory", lambda: 10_000)
    with pytest.raises(UsageError, match=r"data.cache ram: the resized images need .* GiB .*data.cache: disk"):
        build_dataset(_recipe(folder, "data.cache=ram").data, 0)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(image_data.shutil, "disk_usage", lambda _path: usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(UsageError, match=r"data.cache disk: .* in .*cache.* free\. Point data.cache_dir"):
        build_dataset(_recipe(folder, "data.cache=disk", f"data.cache_dir={tmp_path / 'cache'}").data, 0)
    assert not (tmp_path / "cache").exists()


def test_the_disk_cache_key_follows_the_files_and_the_keys_are_checked(folder, tmp_path):
    def paths():
        data = build_dataset(_recipe(folder, "data.cache=disk", f"data.cache_dir={tmp_path}").data, 0)
        return [s.x.cache.path for s in (data.train, data.validation, data.test)]

    before = paths()
    some = next((folder / "red").iterdir())
    stat = some.stat()
    os.utime(some, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # the file changed: its split's key changes
    after = paths()
    assert len(set(before) & set(after)) == 2
    with pytest.raises(UsageError, match="data.cache"):
        _recipe(folder, "data.cache=gpu")
    with pytest.raises(UsageError, match="data.cache"):
        load_recipe(None, ["data.cache=ram"])  # the digits source decodes nothing: no such key
