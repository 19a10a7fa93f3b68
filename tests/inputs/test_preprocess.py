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


# --- tabular rows ----------------------------------------------------------------------------------------------


def test_tabular_rows_encode_to_these_numbers():
    """The encoding written out: one-hot over [<unk>, <missing>, seen values]; numeric blanks take the training
    median and set the missing indicator; (x - mean) / std with the training mean and std of non-blank values."""
    from maasctl.preprocess import column_types, encode_rows, fit_tabular

    train = [
        {"island": "Biscoe", "mass": "4000"},
        {"island": "Dream", "mass": ""},
        {"island": "Biscoe", "mass": "3000"},
        {"island": "NA", "mass": "5000"},
    ]
    types = column_types(train, ["island", "mass"])
    assert types == {"island": "categorical", "mass": "numeric"}
    spec = fit_tabular(train, types)
    assert spec["inputs"] == [
        "island=<unk>",
        "island=<missing>",
        "island=Biscoe",
        "island=Dream",
        "mass",
        "mass:missing",
    ]
    rows = [
        {"island": "Dream", "mass": "3000"},
        {"island": "Torgersen", "mass": "null"},  # unseen category, blank number
        {"island": " ", "mass": "NaN", "extra": "ignored"},
        {"island": "Biscoe", "mass": "heavy"},  # text in a numeric column: a problem for this row only
    ]
    x, problems = encode_rows(rows, spec)
    std = np.sqrt(2e6 / 3)  # of 4000, 3000, 5000 around their mean 4000: 816.4966
    np.testing.assert_allclose(
        x[:3],
        [
            [0, 0, 0, 1, -1000 / std, 0],
            [1, 0, 0, 0, 0, 1],
            [0, 1, 0, 0, 0, 1],
        ],
        rtol=1e-6,
    )
    np.testing.assert_allclose(x[0, 4], -1.2247449, rtol=1e-6)
    assert problems == {3: "column mass: 'heavy' is not a number"} and x.dtype == np.float32


def test_tabular_min_count_and_cap_send_rare_values_to_unk():
    from maasctl.preprocess import encode_rows, fit_tabular

    train = [{"c": v} for v in "aaaabbbcd"]
    spec = fit_tabular(train, {"c": "categorical"}, min_count=2, max_levels=1)
    assert spec["features"][0]["levels"] == ["<unk>", "<missing>", "a"]  # b: over the cap; c, d: too rare
    x, _ = encode_rows([{"c": "b"}, {"c": "a"}, {}], spec)
    assert x.tolist() == [[1, 0, 0], [0, 0, 1], [0, 1, 0]]  # a column absent from a row is blank


def test_useless_columns_are_named_with_why():
    from maasctl.preprocess import column_types, useless_columns

    rows = [{"id": str(i + 10), "name": f"n{i}", "k": "7", "blank": "", "x": str(i % 3)} for i in range(25)]
    found = useless_columns(rows, column_types(rows, list(rows[0])))
    assert set(found) == {"id", "name", "k", "blank"}
    assert "identifier" in found["id"] and "identifier" in found["name"] and "constant" in found["k"]
