"""Streamed image sources (image_folder, image_csv) on real files made here: listing, splits, bad files, and the
tensor training evaluates on against the one serving builds (Pillow + numpy) from the same file."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from helpers import colour_images, run_cli
from PIL import Image

from maasctl.data import build_dataset
from maasctl.data.images import StreamedImages
from maasctl.errors import UsageError
from maasctl.preprocess import load_image, normalize_images, open_image
from maasctl.recipe import load_recipe


def data_of(*overrides: str, seed: int = 0):
    return build_dataset(load_recipe(None, list(overrides)).data, seed)


def _colour_folder(root, per_class=8, sizes=((20, 24), (40, 30), (17, 50))):
    for folder_, i, image in colour_images(root, per_class, lambda i: sizes[i % len(sizes)], noise=20):
        image.save(folder_ / f"{i}.{'png' if i % 2 else 'jpg'}")
    return root


def _mixed_modes(folder):
    """One file per mode a user's folder holds, of mixed sizes; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (30, 45, 3), dtype=np.uint8)
    files = {}
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    Image.fromarray(rgb).save(files.setdefault("exif", folder / "rotated.jpg"), exif=exif.tobytes())
    Image.fromarray(rgb[..., 0]).save(files.setdefault("grey", folder / "grey.png"))
    rgba = np.dstack([rgb, rng.integers(0, 256, (30, 45), dtype=np.uint8)])
    Image.fromarray(rgba).save(files.setdefault("rgba", folder / "alpha.png"))
    Image.fromarray(rgb).quantize(16).save(files.setdefault("palette", folder / "palette.gif"))
    Image.fromarray(rgb).convert("CMYK").save(files.setdefault("cmyk", folder / "cmyk.jpg"))
    wide = (np.linspace(0, 65535, 64 * 20).reshape(20, 64)).astype(np.uint16)
    Image.fromarray(wide).save(files.setdefault("16bit", folder / "wide.png"))
    Image.fromarray(rgb[:7, : 90 // 2]).save(files.setdefault("tiny", folder / "tiny.bmp"))
    return files


def test_image_folder_streams_splits_and_ignores_other_files(tmp_path):
    root = _colour_folder(tmp_path / "imgs")
    (root / "red" / "README.txt").write_text("not an image")
    (root / "blue" / "labels.json").write_text("{}")
    d = data_of("data.source=image_folder", f"data.root={root}", "data.image_size=[16,16]")
    assert d.labels == ["blue", "green", "red"] and d.input_shape == (3, 16, 16)
    assert isinstance(d.train.x, StreamedImages)  # paths, not decoded pixels
    assert d.extra["ignored_files"] == 2 and d.extra["skipped"] == []
    counts = [len(s.y) for s in (d.train, d.validation, d.test)]
    assert sum(counts) == 24 and all(np.bincount(d.test.y, minlength=3) >= 1)  # stratified
    again = data_of("data.source=image_folder", f"data.root={root}", "data.image_size=[16,16]")
    assert list(again.test.x.files) == list(d.test.x.files)  # seeded
    # Slicing decodes with the serving preprocessing, and records the evaluation transform in the spec.
    spec = d.preprocessing
    assert spec["resize"] == "shorter_side_center_crop" and spec["crop_fraction"] == 1.0
    f = d.test.x.files[0]
    np.testing.assert_array_equal(d.test.x[:1][0], normalize_images(load_image(f, spec)[None], spec)[0])


def test_open_image_handles_the_modes_users_have(tmp_path):
    files = _mixed_modes(tmp_path / "m")
    rgb_spec = {"mode": "RGB"}
    assert open_image(files["exif"], rgb_spec).size == (30, 45)  # upright: the stored 45x30 turned by EXIF
    wide = np.asarray(open_image(files["16bit"], {"mode": "L"}))
    assert wide.min() == 0 and wide.max() == 255 and len(np.unique(wide)) > 50  # scaled to 8 bits, not clipped
    for name in ("grey", "rgba", "palette", "cmyk", "tiny"):
        assert open_image(files[name], rgb_spec).mode == "RGB"


@pytest.mark.parametrize("crop_fraction", [1.0, 0.875])
def test_served_tensor_equals_the_one_training_evaluates(tmp_path, crop_fraction):
    """Exact equality (tolerance 0): both sides decode with preprocess.load_image, and training normalises on the
    device with the same float32 operations in the same order as preprocess.normalize_images."""
    import torch

    from maasctl.train.streaming import StreamFeed

    for cls in ("a", "b"):
        _mixed_modes(tmp_path / "data" / cls)
    d = data_of(
        "data.source=image_folder",
        f"data.root={tmp_path / 'data'}",
        "data.image_size=[24,20]",
        f"data.crop_fraction={crop_fraction}",
        "data.interpolation=bicubic",
        "data.split={train: 0.4, validation: 0.3, test: 0.3}",
    )
    spec = json.loads(json.dumps(d.preprocessing))  # as the manifest stores it
    for split in (d.train, d.validation, d.test):
        feed = StreamFeed(split, torch.device("cpu"), workers=1, persistent=False)
        trained = torch.cat([x for x, _ in feed.batches(4)]).numpy()
        served = normalize_images(np.stack([load_image(f, spec) for f in split.x.files]), spec)
        assert trained.shape == (len(split.y), 3, 24, 20)
        np.testing.assert_array_equal(trained, served)


def test_bad_folders_are_clear_errors(tmp_path):
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    with pytest.raises(UsageError, match="no images found under"):
        data_of("data.source=image_folder", f"data.root={tmp_path / 'empty'}")
    root = _colour_folder(tmp_path / "imgs", per_class=3)
    (root / "grey").mkdir()
    with pytest.raises(UsageError, match="class folders with no images under .*: grey"):
        data_of("data.source=image_folder", f"data.root={root}")
    one = _colour_folder(tmp_path / "one", per_class=3)
    for name in ("green", "blue"):
        for f in (one / name).iterdir():
            f.unlink()
        (one / name).rmdir()
    with pytest.raises(UsageError, match="only one class \\('red'\\)"):
        data_of("data.source=image_folder", f"data.root={one}")


def test_unreadable_files_are_skipped_below_the_threshold_and_refused_above(tmp_path):
    root = _colour_folder(tmp_path / "imgs", per_class=10)
    (root / "red" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    common = [
        "--set",
        "data.source=image_folder",
        "--set",
        f"data.root={root}",
        "--set",
        "data.image_size=[12,12]",
        "--set",
        "train.epochs=1",
        "--set",
        "train.data_workers=1",
    ]
    refused = run_cli("train", *common, "--name", "refused", cwd=tmp_path, check=False)
    assert refused.returncode == 2, refused.stderr
    assert "1 of 31 image files (3.2%) cannot be read" in refused.stderr and "broken.jpg" in refused.stderr
    assert "Traceback" not in refused.stderr and not (tmp_path / "artifacts").exists()  # nothing written

    ok = run_cli("train", *common, "--set", "data.max_unreadable=0.05", "--name", "ok", cwd=tmp_path)
    run = tmp_path / "artifacts" / "runs" / "ok"
    with open(run / "skipped.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["file"] for r in rows] == [str(root / "red" / "broken.jpg")] and rows[0]["reason"]
    summary = json.loads((run / "summary.json").read_text())
    assert (
        summary["skipped_files"] == 1
        and summary["samples"]["train"] + summary["samples"]["validation"] + summary["samples"]["test"] == 30
    )
    assert "1 unreadable file(s) skipped" in ok.stderr


def _csv_index(tmp_path):
    root = _colour_folder(tmp_path / "pics", per_class=8)
    index = tmp_path / "labels.csv"
    with open(index, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "split_hint", "species"])
        for p in sorted(root.rglob("*.*")):
            w.writerow([p.relative_to(tmp_path).as_posix(), "x", p.parent.name])
    return index


def test_csv_index_trains_and_its_errors_are_clear(tmp_path):
    index = _csv_index(tmp_path)
    keys = [f"data.path={index}", "data.source=image_csv", "data.image_size=[12,12]"]
    with pytest.raises(
        UsageError, match="'path' is not a column of .*labels.csv \\(its header: image, split_hint, species\\)"
    ):
        data_of(*keys, "data.label_column=species")
    with pytest.raises(UsageError, match="'label' is not a column"):
        data_of(*keys, "data.path_column=image")
    d = data_of(*keys, "data.path_column=image", "data.label_column=species")
    assert d.labels == ["blue", "green", "red"] and sum(len(s.y) for s in (d.train, d.validation, d.test)) == 24

    with open(index, "a", newline="") as f:
        csv.writer(f).writerow(["pics/red/gone.png", "x", "red"])
    with pytest.raises(
        UsageError, match="1 row\\(s\\) of .* name files that do not exist .*line 26: 'pics/red/gone.png'"
    ):
        data_of(*keys, "data.path_column=image", "data.label_column=species")

    lines = index.read_text().splitlines()[:-1]
    index.write_text("\n".join(lines) + "\n")
    out = run_cli(
        "train",
        *[a for k in keys for a in ("--set", k)],
        "--set",
        "data.path_column=image",
        "--set",
        "data.label_column=species",
        "--set",
        "data.augment={horizontal_flip: true, random_resized_crop: [0.6, 1.0], color_jitter: 0.1}",
        "--set",
        "data.split={train: 0.5, validation: 0.25, test: 0.25}",
        "--set",
        "train.epochs=8",
        "--set",
        "train.data_workers=1",
        "--json",
        cwd=tmp_path,
    )
    assert json.loads(out.stdout)["metrics"]["test_accuracy"] >= 0.8  # colours are easy


def test_per_image_augmentation_is_refused_for_in_memory_images():
    with pytest.raises(UsageError, match="color_jitter augment decoded images one by one"):
        data_of("data.augment.color_jitter=0.2")
