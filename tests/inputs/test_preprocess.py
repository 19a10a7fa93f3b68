"""The preprocessing contract: an image file read at serving time gives the tensor training used."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from maasctl.data import build_dataset, stratified_split
from maasctl.errors import UsageError
from maasctl.preprocess import load_image, normalize_images
from maasctl.recipe import load_recipe


def test_png_file_gives_the_training_tensor(tmp_path):
    data = build_dataset(load_recipe().data, seed=0)
    for i in range(5):
        path = tmp_path / f"{i}.png"
        Image.fromarray(data.test.raw[i]).save(path)
        served = normalize_images(load_image(path, data.preprocessing)[None], data.preprocessing)[0]
        np.testing.assert_allclose(served, data.test.x[i], atol=1e-6)


def test_rgb_and_larger_images_are_converted_to_the_model_input(tmp_path):
    spec = build_dataset(load_recipe().data, seed=0).preprocessing
    path = tmp_path / "big.jpg"
    Image.new("RGB", (64, 48), (200, 10, 10)).save(path)
    assert load_image(path, spec).shape == (8, 8)


def test_unreadable_image_names_the_file(tmp_path):
    spec = build_dataset(load_recipe().data, seed=0).preprocessing
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    with pytest.raises(UsageError, match="notes.png: not a readable image"):
        load_image(bad, spec)


def test_split_is_stratified_disjoint_and_seeded():
    labels = np.repeat(np.arange(10), 50)
    parts = stratified_split(labels, (0.6, 0.2, 0.2), seed=3)
    assert sorted(np.concatenate(parts).tolist()) == list(range(500))
    for part, frac in zip(parts, (0.6, 0.2, 0.2)):
        assert (np.bincount(labels[part], minlength=10) == int(50 * frac)).all()
    again = stratified_split(labels, (0.6, 0.2, 0.2), seed=3)
    assert all((a == b).all() for a, b in zip(parts, again))
    other = stratified_split(labels, (0.6, 0.2, 0.2), seed=4)
    assert not (parts[0] == other[0]).all()
