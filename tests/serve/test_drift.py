"""Drift monitoring through a real `maasctl serve`: requests drawn from the test split keep every drift gauge under
the alert thresholds; brightened images push them over; `maasctl monitor` reports both; a manifest from before
drift monitoring serves as before, without drift gauges, saying so once."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from helpers import infer, metric, run_cli, scrape, start_server, stop_server

from maasctl import drift
from maasctl.data import build_dataset
from maasctl.preprocess import normalize_images
from maasctl.recipe import load_recipe

LABELS = {"model": "digits", "version": "1"}


@pytest.fixture(scope="module")
def test_split(workspace):
    recipe = load_recipe(workspace / "artifacts" / "runs" / "digits" / "recipe.yaml")
    data = build_dataset(recipe.data, recipe.train.seed)
    return data.test, data.preprocessing


def send(url: str, x: np.ndarray, rows: int = 16) -> None:
    for start in range(0, len(x), rows):
        status, _, reply = infer(url, "digits", {"input": x[start : start + rows]})
        assert status == 200, reply


def gauges(url: str) -> dict[str, float]:
    samples = scrape(url)
    return {
        "samples": metric(samples, "maasctl_drift_window_samples", **LABELS),
        "psi": metric(samples, "maasctl_drift_psi", **LABELS, feature="channel 0"),
        "shift": metric(samples, "maasctl_drift_mean_shift", **LABELS, feature="channel 0"),
        "prediction_psi": metric(samples, "maasctl_drift_prediction_psi", **LABELS),
    }


def monitor(url: str) -> tuple[int, dict]:
    done = run_cli("monitor", "digits", "--url", url, "--json", check=False)
    assert done.returncode in (0, 1), done.stderr
    return done.returncode, json.loads(done.stdout)


def test_test_split_stays_quiet_and_brightened_images_drift(model_repo, test_split):
    split, preprocessing = test_split
    server = start_server(model_repo, "--max-batch-size", "32")
    try:
        assert gauges(server.url)["samples"] == 0
        in_distribution = np.concatenate([split.x, split.x])  # 538 samples: past drift.MIN_SAMPLES
        send(server.url, in_distribution)
        quiet = gauges(server.url)
        assert quiet["samples"] == len(in_distribution) >= drift.MIN_SAMPLES
        assert quiet["psi"] < drift.PSI_THRESHOLD, quiet
        assert abs(quiet["shift"]) < drift.SHIFT_THRESHOLD, quiet
        assert quiet["prediction_psi"] < drift.PSI_THRESHOLD, quiet
        code, report = monitor(server.url)
        assert code == 0 and not report["reports"][0]["drifting"], report

        # The same digits, 40/255 brighter (before normalisation, as a camera's exposure would change them).
        brighter = normalize_images(np.clip(split.raw.astype(np.int16) + 40, 0, 255).astype(np.uint8), preprocessing)
        send(server.url, np.concatenate([brighter] * 4))  # fills the 1,000-sample window
        shifted = gauges(server.url)
        assert shifted["samples"] == drift.WINDOW
        assert shifted["psi"] > drift.PSI_THRESHOLD, shifted
        assert shifted["shift"] > drift.SHIFT_THRESHOLD, shifted
        code, report = monitor(server.url)
        assert code == 1 and report["reports"][0]["values"][0]["drifting"], report
        table = run_cli("monitor", "digits:1", "--url", server.url, check=False)
        assert table.returncode == 1 and "channel 0" in table.stdout and "DRIFT" in table.stdout
    finally:
        stop_server(server)


def test_a_manifest_without_statistics_serves_without_drift_gauges(model_repo, tmp_path, test_split):
    old = tmp_path / "repo" / "digits"
    shutil.copytree(model_repo / "digits", old)
    manifest = json.loads((old / "1" / "model.json").read_text())
    del manifest["drift"]  # as export wrote it before drift monitoring
    (old / "1" / "model.json").write_text(json.dumps(manifest))
    server = start_server(tmp_path / "repo")
    try:
        send(server.url, test_split[0].x[:32])
        assert not any(name.startswith("maasctl_drift") for name, _ in scrape(server.url))
        done = run_cli("monitor", "digits", "--url", server.url, check=False)
        assert done.returncode == 2 and "no training statistics" in done.stderr
    finally:
        _, log = stop_server(server)
    assert log.count("no training statistics") == 1, log


def test_monitor_without_a_server_exits_3():
    done = run_cli("monitor", "digits", "--url", "http://127.0.0.1:9", check=False)
    assert done.returncode == 3 and "cannot reach" in done.stderr


def test_monitor_sends_the_token(model_repo):
    server = start_server(model_repo, "--token", "s3cret")
    try:
        refused = run_cli("monitor", "digits", "--url", server.url, check=False)
        assert refused.returncode == 3 and "401" in refused.stderr and "--token" in refused.stderr
        allowed = run_cli("monitor", "digits", "--url", server.url, "--json", env={"MAASCTL_TOKEN": "s3cret"})
        assert json.loads(allowed.stdout)["reports"][0]["samples"] == 0
    finally:
        stop_server(server)
