"""Every data source on tiny files made here: splits, preprocessing fitted on training data only, clear errors."""

from __future__ import annotations

import csv
import json
import struct

import numpy as np
import pytest
from helpers import run_cli

from maasctl.data import build_dataset
from maasctl.errors import UsageError
from maasctl.preprocess import UNK, TextEncoder
from maasctl.recipe import load_recipe


def data_of(*overrides: str, seed: int = 0):
    return build_dataset(load_recipe(None, list(overrides)).data, seed)


# --- CSV ---------------------------------------------------------------------------------------------------------


@pytest.fixture
def iris_like(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "flowers.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["petal", "sepal", "colour_code", "species"])
        for i in range(90):
            cls = ["setosa", "versicolor", "virginica"][i % 3]
            w.writerow([rng.normal(i % 3, 0.2), rng.normal(10 + 5 * (i % 3), 1), 7, cls])
    return path


def test_csv_standardizes_with_training_statistics_only(iris_like):
    d = data_of("data.source=csv", f"data.path={iris_like}", "data.label_column=species")
    assert d.labels == ["setosa", "versicolor", "virginica"] and d.input_kind == "features"
    assert d.preprocessing["columns"] == ["petal", "sepal"]  # colour_code is 7 in every row: dropped
    assert any("colour_code: constant ('7' in every row)" in note for note in d.notes)
    np.testing.assert_allclose(d.train.x.mean(0), 0, atol=1e-6)  # fitted on train...
    assert abs(d.test.x[:, 1].mean()) > 1e-6  # ...so the test split is not exactly centred
    kept = data_of(
        "data.source=csv", f"data.path={iris_like}", "data.label_column=species", "data.keep_columns=[colour_code]"
    )
    assert kept.preprocessing["columns"] == ["petal", "sepal", "colour_code"]
    assert (kept.train.x[:, 2] == 0).all()  # a kept constant column passes through as 0, not NaN


def test_csv_wrong_label_column_suggests(iris_like):
    with pytest.raises(UsageError, match=r"data.label_column: 'specie' is not a column .* did you mean 'species'"):
        data_of("data.source=csv", f"data.path={iris_like}", "data.label_column=specie")


def test_csv_text_column_is_categorical(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("a,b,label\n" + "1,x,0\n2,3,1\n3,x,0\n4,y,1\n" * 5)
    d = data_of(
        "data.source=csv",
        f"data.path={path}",
        "data.split.train=0.6",
        "data.split.validation=0.2",
        "data.split.test=0.2",
    )
    assert [f["type"] for f in d.preprocessing["features"]] == ["numeric", "categorical"]
    assert d.preprocessing["features"][1]["levels"] == ["<unk>", "<missing>", "x", "3", "y"]  # most frequent first


def test_missing_file_is_named(tmp_path):
    with pytest.raises(UsageError, match="data.path: no such file"):
        data_of("data.source=csv", f"data.path={tmp_path / 'nope.csv'}")


def test_csv_trains_from_the_cli(iris_like, tmp_path):
    out = run_cli(
        "train",
        "--set",
        "data.source=csv",
        "--set",
        f"data.path={iris_like}",
        "--set",
        "data.label_column=species",
        "--set",
        "model.name=mlp",
        "--set",
        "train.epochs=15",
        "--set",
        "train.batch_size=16",
        "--json",
        cwd=tmp_path,
    )
    assert json.loads(out.stdout)["metrics"]["test_accuracy"] > 0.9  # well-separated classes


def test_cnn_on_tabular_data_names_the_fitting_models(iris_like, tmp_path):
    proc = run_cli(
        "train",
        "--set",
        "data.source=csv",
        "--set",
        f"data.path={iris_like}",
        "--set",
        "data.label_column=species",
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode == 2 and "cnn_small takes image inputs" in proc.stderr and "mlp" in proc.stderr
    assert not (tmp_path / "artifacts" / "runs").exists()


# --- npz ---------------------------------------------------------------------------------------------------------


def test_npz_kinds_and_given_test_split(tmp_path):
    rng = np.random.default_rng(0)
    images = tmp_path / "img.npz"
    np.savez(
        images,
        x=rng.random((60, 3, 6, 6)),
        y=np.arange(60) % 3,
        x_test=rng.random((9, 3, 6, 6)),
        y_test=np.arange(9) % 3,
        labels=np.array(["a", "b", "c"]),
    )
    d = data_of("data.source=npz", f"data.path={images}")
    assert d.input_kind == "image" and d.input_shape == (3, 6, 6) and len(d.test.y) == 9 and d.labels == ["a", "b", "c"]
    assert len(d.train.y) + len(d.validation.y) == 60

    seqs = tmp_path / "seq.npz"
    np.savez(seqs, x=rng.random((30, 12)), y=np.arange(30) % 2)
    d = data_of("data.source=npz", f"data.path={seqs}", "data.kind=sequence")
    assert d.input_kind == "sequence" and d.input_shape == (12, 1)

    tokens = tmp_path / "tok.npz"
    ids = rng.integers(0, 40, (30, 12))
    np.savez(tokens, x=ids, y=np.arange(30) % 2)
    d = data_of("data.source=npz", f"data.path={tokens}", "data.kind=tokens")
    assert d.input_kind == "tokens" and d.train.x.dtype == np.int64
    assert d.vocab_size == ids.max() + 1  # embedding rows for every id that occurs

    flat = tmp_path / "flat.npz"
    np.savez(flat, x=rng.random((30, 5)), y=np.arange(30) % 2)
    assert data_of("data.source=npz", f"data.path={flat}").input_kind == "features"


def test_npz_missing_arrays_and_pickles_are_refused(tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, inputs=np.zeros((3, 2)))
    with pytest.raises(UsageError, match=r"lacks array\(s\) x, y"):
        data_of("data.source=npz", f"data.path={path}")
    pickled = tmp_path / "obj.npz"
    np.savez(pickled, x=np.array([{"a": 1}] * 30, dtype=object), y=np.arange(30) % 2)
    with pytest.raises(UsageError, match="not a readable .npz|Object arrays cannot be loaded"):
        data_of("data.source=npz", f"data.path={pickled}")


# image folders and CSV indexes of images: tests/data/test_images.py


# --- text --------------------------------------------------------------------------------------------------------


def test_text_vocabulary_comes_from_training_split_only(tmp_path):
    path = tmp_path / "reviews.jsonl"
    rows = [
        {"text": f"Great film number {i}!" if i % 2 else f"awful movie {i}", "label": "pos" if i % 2 else "neg"}
        for i in range(40)
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    d = data_of("data.source=text", f"data.path={path}", "data.max_len=6")
    assert d.input_kind == "tokens" and d.input_shape == (6,) and d.labels == ["neg", "pos"]
    vocab = d.preprocessing["vocab"]
    assert "great" in vocab and "Great" not in vocab  # lowercased
    encode = TextEncoder(d.preprocessing)
    ids = encode(["great film zzzunseen"])[0]
    assert ids[2] == UNK and ids[3:].tolist() == [0, 0, 0]
    # The training tensors are exactly what the serving-side encoder makes from the raw texts.
    served = encode([r["text"] for r in rows])
    for x in np.concatenate([d.train.x, d.validation.x, d.test.x]):
        assert (served == x).all(axis=1).any()
    assert d.vocab_size == len(vocab) + 2


def test_text_csv_and_missing_column(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("body,label\n" + "".join(f"hello world {i},{i % 2}\n" for i in range(20)))
    with pytest.raises(UsageError, match=r"data.text_column: 'text' is not a column .*body"):
        data_of("data.source=text", f"data.path={path}")
    d = data_of("data.source=text", f"data.path={path}", "data.text_column=body")
    assert d.labels == ["0", "1"]


# --- torchvision ---------------------------------------------------------------------------------------------------


def _write_idx(root, prefix, images, labels):
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    n, h, w = images.shape
    (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 0x803, n, h, w) + images.tobytes())
    (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 0x801, n) + labels.astype(np.uint8).tobytes())


def test_torchvision_mnist_from_local_files(tmp_path):
    rng = np.random.default_rng(0)
    _write_idx(tmp_path, "train", rng.integers(0, 255, (100, 28, 28), dtype=np.uint8), np.arange(100) % 10)
    _write_idx(tmp_path, "t10k", rng.integers(0, 255, (20, 28, 28), dtype=np.uint8), np.arange(20) % 10)
    d = data_of("data.source=torchvision", "data.name=MNIST", f"data.root={tmp_path}")
    assert d.input_shape == (1, 28, 28) and len(d.test.y) == 20 and len(d.train.y) + len(d.validation.y) == 100
    assert d.labels[3] == "three"


def test_torchvision_missing_files_say_what_to_fetch_where(tmp_path):
    with pytest.raises(
        UsageError, match=r"MNIST is not under .* data.download=true .*/MNIST/raw/train-images-idx3-ubyte"
    ):
        data_of("data.source=torchvision", "data.name=MNIST", f"data.root={tmp_path}")
