"""Tables with categories and blanks, and regression, through the whole chain with the real CLI: train, export
(parity on the values), evaluate (onnxruntime, the PyTorch test metrics), predict (values, gates) and serve
(/predict with CSV and JSON rows, Open Inference Protocol infer), on the example tables and on images."""

from __future__ import annotations

import csv
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from helpers import ROOT, infer, run_cli, start_server, stop_server


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    ws = tmp_path_factory.mktemp("tables")
    run_cli("examples", cwd=ws)
    rng = np.random.default_rng(0)
    brightness = rng.uniform(0.1, 1.0, 240)
    x = (rng.random((240, 1, 8, 8)) * brightness[:, None, None, None]).astype(np.float32)
    np.savez(ws / "bright.npz", x=x, y=brightness * 100)  # images, and a number per image to predict

    def train_and_export(*args: str) -> tuple[dict, dict]:
        run = json.loads(run_cli("train", *args, "--json", cwd=ws).stdout)
        return run, json.loads(run_cli("export", run["run_dir"], "--exporter", "torchscript", "--json", cwd=ws).stdout)

    recipes = ROOT / "recipes"
    jobs = {
        "deliveries": (str(recipes / "deliveries_mlp.yaml"), "--set", "train.epochs=15"),
        "penguins": (str(recipes / "penguins_mlp.yaml"), "--set", "train.epochs=15"),
        "bright": ("--set", "name=bright", "--set", "data.source=npz", "--set", "data.path=bright.npz")
        + ("--set", "model.name=cnn_small", "--set", "train.epochs=6", "--set", "train.batch_size=16"),
    }
    with ThreadPoolExecutor(2) as pool:
        done = {name: pool.submit(train_and_export, *args) for name, args in jobs.items()}
        results = {name: f.result() for name, f in done.items()}
    srv = start_server(ws / "artifacts" / "models")
    yield ws, results, srv
    stop_server(srv)


def predict(ws: Path, *args: str) -> tuple[int, dict, str]:
    proc = run_cli("predict", *args, "--repo", str(ws / "artifacts" / "models"), "--json", cwd=ws, check=False)
    return proc.returncode, json.loads(proc.stdout), proc.stderr


@pytest.mark.parametrize("name", ["deliveries", "bright"])
def test_evaluate_gives_the_pytorch_test_metrics(chain, name):
    ws, results, _ = chain
    run, exported = results[name]
    manifest = json.loads((Path(ws) / exported["path"] / "model.json").read_text())
    assert manifest["task"] == "regression" and manifest["outputs"][0]["name"] == "value"
    summary = json.loads((Path(ws) / run["run_dir"] / "summary.json").read_text())
    assert summary["task"] == "regression" and "test_confusion_matrix" not in summary
    assert {"curves.png", "predicted_vs_actual.png", "residuals.png"} <= {
        p.name for p in (ws / run["run_dir"]).iterdir()
    }
    evaluated = json.loads(run_cli("evaluate", exported["name"], "--json", cwd=ws).stdout)
    for key in ("mae", "rmse", "r2"):
        assert evaluated["metrics"][key] == pytest.approx(run["metrics"][f"test_{key}"], rel=1e-5, abs=1e-6)
    assert run["metrics"]["test_r2"] > 0.5  # it learned something: the figures are in the README


def test_regression_values_in_minutes_and_gates(chain):
    ws, _, _ = chain
    code, doc, err = predict(
        ws, "deliveries-mlp", "data/examples/deliveries.csv", "--labels-from-column", "--max-mae", "6"
    )
    assert code == 0, err
    with open(ws / "data/examples/deliveries.csv", newline="") as f:
        minutes = [r["minutes"] for r in csv.DictReader(f)]
    assert len(doc["predictions"]) == 1000 and all(5 < p["value"] < 200 for p in doc["predictions"])  # minutes
    labelled = [p for p in doc["predictions"] if "expected" in p]
    assert len(labelled) == sum(1 for m in minutes if m) == 990  # blank durations are not gated
    mae = np.mean([abs(p["value"] - float(p["expected"])) for p in labelled])
    assert doc["summary"]["mae"] == pytest.approx(mae) and doc["summary"]["gate"] == "passed"
    assert "MAE" in err and "gate passed" in err
    # a tolerance nobody meets fails the gate (exit 1); no tolerance, or an accuracy, is a usage error (exit 2)
    code, doc, err = predict(
        ws, "deliveries-mlp", "data/examples/deliveries.csv", "--labels-from-column", "--max-abs-error", "0.01"
    )
    assert code == 1 and doc["summary"]["mismatches"] > 900 and "mismatch: data/examples/deliveries.csv[0]" in err
    code, doc, err = predict(ws, "deliveries-mlp", "data/examples/deliveries.csv", "--labels-from-column")
    assert code == 2 and "--max-abs-error" in err
    code, doc, err = predict(
        ws, "deliveries-mlp", "data/examples/deliveries.csv", "--expect", "30", "--min-accuracy", "90%"
    )
    assert code == 2 and "--min-accuracy is for classifiers" in err
    code, doc, err = predict(ws, "deliveries-mlp", "data/examples/deliveries.csv", "--expect", "soon", "--max-mae", "5")
    assert code == 2 and "expected value 'soon' is not a number" in err


def test_regression_table_and_csv_output(chain):
    ws, _, _ = chain
    (ws / "two.csv").write_text("vehicle,weather,hour,items,distance_km\ncar,clear,12,2,3.0\nbike,,8,1,NA\n")
    table = run_cli("predict", "deliveries-mlp", "two.csv", cwd=ws, env={"COLUMNS": "120"})
    assert "value" in table.stdout and "two.csv[1]" in table.stdout
    out = run_cli(
        "predict", "deliveries-mlp", "two.csv", "--expect", "20", "--max-abs-error", "100", "--format", "csv", cwd=ws
    )
    rows = list(csv.DictReader(out.stdout.splitlines()))
    assert list(rows[0]) == ["input", "value", "expected", "error", "correct"] and rows[1]["correct"] == "true"
    assert float(rows[0]["error"]) == pytest.approx(float(rows[0]["value"]) - 20)


def test_served_values_equal_local_ones(chain):
    """/predict with JSON rows (an unseen weather, a blank, a null, a number sent as a number), predict --url,
    and a raw OIP infer request all answer the same minutes as the local prediction."""
    ws, _, srv = chain
    rows = [
        {"distance_km": 3.0, "items": 2, "hour": "12", "weather": "hail", "vehicle": "car"},
        {"distance_km": "", "items": 1, "hour": 8, "weather": None, "vehicle": "bike"},
    ]
    header = list(rows[0])
    (ws / "rows.csv").write_text(
        ",".join(header)
        + "\n"
        + "".join(",".join("" if r[c] is None else str(r[c]) for c in header) + "\n" for r in rows)
    )
    _, local, _ = predict(ws, "deliveries-mlp", "rows.csv")
    values = [p["value"] for p in local["predictions"]]
    status, doc = srv.post(
        "/v2/models/deliveries-mlp/predict", json.dumps({"rows": rows}).encode(), {"Content-Type": "application/json"}
    )
    assert status == 200, doc
    assert [p["value"] for p in doc["predictions"]] == pytest.approx(values, rel=1e-6)
    code, remote, err = predict(ws, "deliveries-mlp", "rows.csv", "--url", srv.url)
    assert code == 0, err
    assert [p["value"] for p in remote["predictions"]] == pytest.approx(values, rel=1e-6)
    # Open Inference Protocol: the tensor the manifest's spec makes from the rows, values back in minutes
    from maasctl.preprocess import encode_rows

    _, manifest = srv.get("/v2/models/deliveries-mlp/manifest")
    x, problems = encode_rows(
        [{k: ("" if v is None else str(v)) for k, v in r.items()} for r in rows], manifest["preprocessing"]
    )
    status, _, reply = infer(srv.url, "deliveries-mlp", {"input": x})
    assert status == 200 and not problems
    assert reply["arrays"]["value"][:, 0].tolist() == pytest.approx(values, rel=1e-6)
    # a missing column is a 400 naming it, and the server goes on serving
    status, doc = srv.post(
        "/v2/models/deliveries-mlp/predict",
        json.dumps({"rows": [{"distance_km": 1, "items": 1}]}).encode(),
        {"Content-Type": "application/json"},
    )
    assert status == 400 and "no column hour, weather, vehicle" in doc["error"]
    assert (
        srv.post(
            "/v2/models/deliveries-mlp/predict",
            json.dumps({"rows": rows}).encode(),
            {"Content-Type": "application/json"},
        )[0]
        == 200
    )


def test_categories_and_blanks_classified_locally_and_served(chain):
    ws, results, srv = chain
    run, _ = results["penguins"]
    assert run["metrics"]["test_accuracy"] > 0.6
    code, doc, err = predict(
        ws, "penguins-mlp", "data/examples/penguins.csv", "--labels-from-column", "--min-accuracy", "60%"
    )
    assert code == 0, err
    assert doc["summary"]["predicted"] == 344
    csv_body = b"island,sex,bill_length_mm,bill_depth_mm,flipper_length_mm,body_mass_g\nAtlantis,,NA,15.0,220,5100\n"
    status, served = srv.post("/v2/models/penguins-mlp/predict", csv_body, {"Content-Type": "text/csv"})
    assert status == 200 and served["predictions"][0]["label"] in ("Adelie", "Chinstrap", "Gentoo")
    (ws / "atlantis.csv").write_bytes(csv_body)
    _, local, _ = predict(ws, "penguins-mlp", "atlantis.csv")
    assert local["predictions"][0]["label"] == served["predictions"][0]["label"]
    (ws / "short.csv").write_text("island,sex\nDream,male\n")
    code, doc, err = predict(ws, "penguins-mlp", "short.csv")
    assert code == 2 and "short.csv: no column bill_length_mm" in err and not doc["predictions"]
