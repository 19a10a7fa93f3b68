"""Tables as users have them: text categories, blank cells, useless columns, blank labels, numeric targets; and
the training side's tensors equal to what predict makes from the same raw rows."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from maasctl.data import build_dataset
from maasctl.data.datasets import infer_task
from maasctl.errors import UsageError
from maasctl.recipe import load_recipe

COLUMNS = ["id", "island", "sex", "bill_length_mm", "body_mass_g", "species"]


def write_penguins(path, n=90, seed=0):
    """A penguins-like table: species from island, sex and two measurements; blanks as '', 'NA' and 'NaN'."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        species = ["Adelie", "Gentoo", "Chinstrap"][i % 3]
        island = {"Adelie": ["Torgersen", "Biscoe", "Dream"][i % 2], "Gentoo": "Biscoe", "Chinstrap": "Dream"}[species]
        if i == 7:
            island = "Anvers"  # seen once: below data.min_category_count=2, so <unk> everywhere
        bill = {"Adelie": 39, "Gentoo": 47, "Chinstrap": 49}[species] + rng.normal(0, 1.5)
        mass = {"Adelie": 3700, "Gentoo": 5000, "Chinstrap": 3700}[species] + rng.normal(0, 200)
        rows.append(
            [
                i + 1,
                island,
                ["male", "female", ""][i % 5 % 3],
                "NA" if i % 11 == 0 else f"{bill:.1f}",
                ["", "NaN"][i % 2] if i % 13 == 0 else f"{mass:.0f}",
                species,
            ]
        )
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        w.writerows(rows)
    return path


def table(path, *overrides, task="auto", label="species"):
    recipe = load_recipe(None, ["data.source=csv", f"data.path={path}", f"data.label_column={label}", *overrides])
    return build_dataset(recipe.data, 0, task)


@pytest.fixture
def penguins(tmp_path):
    return write_penguins(tmp_path / "penguins.csv")


def test_categories_blanks_and_dropped_columns(penguins):
    d = table(penguins, "data.min_category_count=2")
    spec = d.preprocessing
    assert d.task == "classification" and d.labels == ["Adelie", "Chinstrap", "Gentoo"]
    assert spec["columns"] == ["island", "sex", "bill_length_mm", "body_mass_g"]  # id dropped
    assert any("dropped columns that cannot help: id: an identifier" in n for n in d.notes)
    island, sex, bill, mass = spec["features"]
    assert island["levels"][:2] == ["<unk>", "<missing>"] and "Anvers" not in island["levels"]
    assert set(island["levels"][2:]) == {"Biscoe", "Dream", "Torgersen"}
    assert sex["levels"] == ["<unk>", "<missing>", "female", "male"]
    assert bill["missing_indicator"] and mass["missing_indicator"]
    assert d.train.x.shape[1] == len(spec["inputs"]) == 5 + 4 + 2 + 2


def test_training_tensors_equal_what_predict_makes_from_the_raw_rows(penguins, tmp_path):
    """The serving side (predict's CSV reader, numpy only) encodes the raw file's rows, blanks and the rare
    island included, into exactly the rows the training splits hold."""
    from maasctl.inputs.decode import load_source
    from maasctl.inputs.types import ModelInput, Source

    d = table(penguins, "data.min_category_count=2")
    manifest = {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, d.train.x.shape[1]]}],
        "preprocessing": d.preprocessing,
    }
    samples = load_source(Source(str(penguins), "csv"), ModelInput.from_manifest(manifest))
    served = np.stack([s.tensor for s in samples])
    trained = np.concatenate([d.train.x, d.validation.x, d.test.x])
    assert served.shape == trained.shape == (90, 13)
    np.testing.assert_array_equal(np.unique(served, axis=0), np.unique(trained, axis=0))
    rare = served[7]  # island Anvers -> <unk>
    assert rare[0] == 1 and rare[1:5].sum() == 0
    blank_bill = served[0]  # row 0: bill 'NA', mass '' -> the medians, both indicators set
    assert blank_bill[10] == 1 and blank_bill[12] == 1


def test_keep_drop_and_declared_categorical(penguins):
    d = table(penguins, "data.drop_columns=[sex]", "data.keep_columns=[id]", "data.categorical_columns=[id]")
    assert d.preprocessing["columns"] == ["id", "island", "bill_length_mm", "body_mass_g"]
    assert d.preprocessing["features"][0]["type"] == "categorical"


@pytest.mark.parametrize("key", ["categorical_columns", "drop_columns", "keep_columns", "feature_columns"])
def test_declared_column_that_does_not_exist(penguins, key):
    with pytest.raises(UsageError, match=rf"data.{key}: 'islnd' is not a column of .*did you mean 'island'"):
        table(penguins, f"data.{key}=[islnd]")


def test_blank_labels_are_dropped_counted_and_logged(penguins, tmp_path):
    text = penguins.read_text().splitlines()
    text[3] = text[3].rsplit(",", 1)[0] + ","  # row 3's species blank
    text[5] = text[5].rsplit(",", 1)[0] + ",NA"
    path = tmp_path / "blanks.csv"
    path.write_text("\n".join(text) + "\n")
    d = table(path)
    assert sum(len(s.y) for s in (d.train, d.validation, d.test)) == 88
    assert any("2 of 90 rows have a blank label (row 4, row 6); they were dropped" in n for n in d.notes)


def test_regression_target_that_is_not_a_number(penguins):
    with pytest.raises(UsageError, match=r"task is regression.* row 2 holds 'Adelie'"):
        table(penguins, task="regression")


def test_one_class_label(tmp_path):
    path = tmp_path / "one.csv"
    path.write_text("a,b,label\n" + "".join(f"{i},{i % 3},yes\n" for i in range(30)))
    with pytest.raises(UsageError, match=r"every label is 'yes': a classifier needs at least two classes"):
        table(path, label="label")


def test_numeric_target_is_regression_standardised_with_training_statistics(penguins):
    d = table(penguins, "data.drop_columns=[species]", label="body_mass_g")
    assert d.task == "regression" and d.labels == [] and d.num_outputs == 1
    assert any("task: regression, inferred" in n for n in d.notes)
    assert any("rows have a blank label" in n for n in d.notes)  # blank masses
    assert abs(float(d.train.y.mean())) < 1e-5 and abs(float(d.train.y.std()) - 1) < 1e-5
    assert 3700 < d.target["mean"] < 4500 and d.target["column"] == "body_mass_g"
    # the splits were stratified by decile: each spans the range
    for split in (d.validation, d.test):
        assert split.y.min() < -0.8 and split.y.max() > 0.8


def test_task_rule():
    assert infer_task(["a", "b"])[0] == "classification"
    assert infer_task([str(i % 10) for i in range(100)])[0] == "classification"  # 10 whole numbers: classes
    assert infer_task([str(i) for i in range(30)])[0] == "regression"  # more than 20 distinct whole numbers
    assert infer_task(["0.5", "1", "1"])[0] == "regression"  # not all whole


def test_regression_refused_for_class_folders():
    with pytest.raises(UsageError, match="task: regression needs numeric labels, but data.source digits"):
        build_dataset(load_recipe().data, 0, "regression")


def test_image_regression_from_npz(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.random((60, 1, 8, 8), dtype=np.float32)
    y = x.mean(axis=(1, 2, 3)) * 100  # brightness, a number per image
    np.savez(tmp_path / "bright.npz", x=x, y=y)
    d = build_dataset(load_recipe(None, ["data.source=npz", f"data.path={tmp_path / 'bright.npz'}"]).data, 0)
    assert d.task == "regression" and d.input_kind == "image" and d.train.y.dtype == np.float32


def test_parquet_reads_like_csv(penguins, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    pa = pytest.importorskip("pyarrow")
    with open(penguins, newline="") as f:
        rows = list(csv.DictReader(f))
    columns = {c: [r[c] or None for r in rows] for c in COLUMNS}  # Parquet holds nulls, not ''
    pq.write_table(pa.table(columns), tmp_path / "penguins.parquet")
    from_parquet = table(tmp_path / "penguins.parquet")
    from_csv = table(penguins)
    np.testing.assert_array_equal(from_parquet.train.x, from_csv.train.x)
    assert from_parquet.preprocessing == from_csv.preprocessing


def test_bad_table_is_one_paragraph_exit_2_and_no_run_folder(tmp_path):
    from helpers import run_cli

    path = tmp_path / "one.csv"
    path.write_text("a,b,label\n" + "".join(f"{i},{i % 3},yes\n" for i in range(30)))
    proc = run_cli("train", "--set", "data.source=csv", "--set", f"data.path={path}", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "'label' in" in proc.stderr and "every label is 'yes'" in proc.stderr
    assert not (tmp_path / "artifacts").exists()


def test_recipe_show_states_the_task_and_why(penguins):
    from helpers import run_cli

    shown = run_cli(
        "recipe",
        "show",
        "--set",
        "data.source=csv",
        "--set",
        f"data.path={penguins}",
        "--set",
        "data.label_column=body_mass_g",
    )
    assert shown.stdout.splitlines()[0].startswith("# task: regression, inferred because the labels are")
    shown = run_cli("recipe", "show", "--set", "task=classification")
    assert shown.stdout.splitlines()[0] == "# task: classification (set in the recipe)"
