"""maasctl/drift.py on its own: reference statistics for each input kind, the PSI's behaviour with and without
drift, and the rolling window. Through a real server: tests/serve/test_drift.py."""

from __future__ import annotations

import json

import numpy as np
import pytest

from maasctl import drift
from maasctl.drift import DriftMonitor, psi, reference_statistics
from maasctl.preprocess import TextEncoder, tabular_spec, text_spec

rng = np.random.default_rng(0)


def monitor(kind, reference, preprocessing=None, classes=3, predicted=None):
    predicted = rng.integers(0, classes, 600) if predicted is None else predicted
    stats = reference_statistics(kind, reference, preprocessing or {}, predicted, classes, reference_split="train")
    json.dumps(stats)  # it goes into the manifest
    return DriftMonitor("m", 1, stats)


def observe(mon: DriftMonitor, x: np.ndarray, classes: np.ndarray | None = None, num_classes: int = 3) -> dict:
    classes = rng.integers(0, num_classes, len(x)) if classes is None else classes
    mon.observe({"input": x}, {"logits": np.eye(num_classes, dtype=np.float32)[classes]})
    return mon.report()


def test_psi_without_drift_averages_bins_minus_one_over_n():
    """The figure the alert threshold rests on: E[PSI] ~ (bins - 1) / n, far below 0.2 at 500 samples."""
    reference = np.bincount(rng.integers(0, 10, 100_000), minlength=10)
    n = drift.MIN_SAMPLES
    values = [psi(reference, np.bincount(rng.integers(0, 10, n), minlength=10)) for _ in range(400)]
    assert np.mean(values) == pytest.approx((10 - 1) / n, rel=0.25)
    assert max(values) < drift.PSI_THRESHOLD / 3
    # A real shift: a tenth of the mass moved from one bin to another.
    shifted = np.full(10, n / 10)
    shifted[0], shifted[1] = n / 20, n * 3 / 20
    assert psi(reference, shifted) > 0.05


def test_tabular_a_scaled_feature_drifts_the_others_do_not():
    columns = ["age", "income", "height"]
    reference = rng.normal(size=(5000, 3)).astype(np.float32)
    mon = monitor("features", reference, tabular_spec(columns, np.zeros(3), np.ones(3)))
    assert mon.names == columns
    report = observe(mon, rng.normal(size=(600, 3)).astype(np.float32))
    assert report["samples"] == 600
    assert all(v["psi"] < drift.PSI_THRESHOLD and abs(v["mean_shift"]) < 0.2 for v in report["values"]), report

    mon = monitor("features", reference, tabular_spec(columns, np.zeros(3), np.ones(3)))
    live = rng.normal(size=(600, 3)).astype(np.float32)
    live[:, 1] = live[:, 1] * 3 + 1  # income in another unit, and higher
    by_name = {v["name"]: v for v in observe(mon, live)["values"]}
    assert by_name["income"]["psi"] > drift.PSI_THRESHOLD
    assert by_name["income"]["mean_shift"] == pytest.approx(1.0, abs=0.3)
    assert by_name["age"]["psi"] < drift.PSI_THRESHOLD and by_name["height"]["psi"] < drift.PSI_THRESHOLD


def test_images_per_channel_statistics_and_a_brighter_channel():
    reference = rng.normal(size=(2000, 3, 4, 4)).astype(np.float32)
    mon = monitor("image", reference)
    assert mon.names == ["channel 0", "channel 1", "channel 2"]
    assert mon.stats["channel_std"] == pytest.approx([1, 1, 1], abs=0.05)
    live = rng.normal(size=(600, 3, 4, 4)).astype(np.float32)
    live[:, 2] += 0.5  # the blue channel brighter by half a pixel standard deviation
    report = observe(mon, live)
    psis = [v["psi"] for v in report["values"]]
    assert psis[0] < drift.PSI_THRESHOLD and psis[1] < drift.PSI_THRESHOLD and psis[2] > drift.PSI_THRESHOLD


ENGLISH = [
    "the",
    "film",
    "was",
    "good",
    "bad",
    "great",
    "boring",
    "acting",
    "story",
    "not",
    "very",
    "a",
    "movie",
    "plot",
    "i",
    "liked",
    "it",
    "and",
    "but",
    "so",
    "long",
]
FRENCH = [
    "le",
    "film",
    "était",
    "bon",
    "mauvais",
    "très",
    "une",
    "histoire",
    "je",
    "ai",
    "aimé",
    "et",
    "mais",
    "si",
    "long",
    "trop",
]


def sentences(words: list[str], count: int) -> list[str]:
    return [" ".join(rng.choice(words, rng.integers(4, 12))) for _ in range(count)]


def test_text_another_language_raises_the_unknown_token_rate():
    spec = text_spec(ENGLISH[:-3], max_len=16, lowercase=True)  # three rare words left out of the vocabulary
    encode = TextEncoder(spec)
    mon = monitor("tokens", encode(sentences(ENGLISH, 2000)), spec)
    assert mon.names == ["length", "unknown_rate"]
    english = {v["name"]: v for v in observe(mon, encode(sentences(ENGLISH, 600)))["values"]}
    assert english["unknown_rate"]["psi"] < drift.PSI_THRESHOLD and english["length"]["psi"] < drift.PSI_THRESHOLD

    mon = monitor("tokens", encode(sentences(ENGLISH, 2000)), spec)
    french = {v["name"]: v for v in observe(mon, encode(sentences(FRENCH, 600)))["values"]}
    assert french["unknown_rate"]["psi"] > drift.PSI_THRESHOLD
    assert french["unknown_rate"]["mean_shift"] > drift.SHIFT_THRESHOLD


def test_predicted_classes_drift_when_one_class_takes_over():
    mon = monitor("features", rng.normal(size=(1000, 2)).astype(np.float32), predicted=rng.integers(0, 3, 900))
    report = observe(mon, rng.normal(size=(600, 2)).astype(np.float32))
    assert report["prediction_psi"] < drift.PSI_THRESHOLD
    report = observe(mon, rng.normal(size=(1000, 2)).astype(np.float32), classes=np.zeros(1000, dtype=int))
    assert report["prediction_psi"] > drift.PSI_THRESHOLD


def test_the_window_keeps_the_latest_samples_only():
    mon = monitor("features", rng.normal(size=(1000, 1)).astype(np.float32))
    observe(mon, rng.normal(size=(700, 1)).astype(np.float32) + 5)  # drifted, then pushed out of the window
    for _ in range(4):
        report = observe(mon, rng.normal(size=(250, 1)).astype(np.float32))
    assert report["samples"] == drift.WINDOW
    assert report["values"][0]["psi"] < drift.PSI_THRESHOLD


def test_batches_held_and_summarised_together_report_as_one_batch_would():
    x = rng.normal(size=(900, 2)).astype(np.float32)
    classes = rng.integers(0, 3, 900)
    logits = np.eye(3, dtype=np.float32)[classes]
    at_once = monitor("features", rng.normal(size=(1000, 2)).astype(np.float32))
    in_batches = DriftMonitor("m", 1, at_once.stats)
    at_once.observe({"input": x}, {"logits": logits})
    for start in range(0, 900, 7):  # batches of 7 rows: held, summarised every FOLD_ROWS rows and at the report
        in_batches.observe({"input": x[start : start + 7].copy()}, {"logits": logits[start : start + 7].copy()})
    assert in_batches.report() == at_once.report()
    assert in_batches.report()["samples"] == 900


def test_a_batch_that_views_a_request_body_is_summarised_at_once():
    mon = monitor("features", rng.normal(size=(1000, 2)).astype(np.float32))
    body = b"header" + np.ones((4, 2), np.float32).tobytes()
    x = np.frombuffer(body, dtype=np.float32, offset=6).reshape(4, 2)  # as a binary tensor is decoded, in place
    mon.observe({"input": x}, {"logits": np.eye(3, dtype=np.float32)[[0, 1, 2, 0]]})
    assert not mon._held  # nothing keeps the body alive after its request
    assert mon.report()["samples"] == 4


def test_an_unreadable_batch_stops_monitoring_and_never_raises(caplog):
    mon = monitor("features", rng.normal(size=(1000, 2)).astype(np.float32))
    mon.observe({"other": np.zeros((1, 2), np.float32)}, {})  # no input named `input`
    observe(mon, rng.normal(size=(10, 2)).astype(np.float32))
    assert mon.report()["samples"] == 0
    assert "drift monitoring stopped" in caplog.text


def test_export_records_the_statistics_in_the_manifest(model_repo):
    stats = json.loads((model_repo / "digits" / "1" / "model.json").read_text())["drift"]
    assert stats["input_kind"] == "image" and stats["reference_split"] == "train"
    (channel,) = stats["values"]
    assert sum(channel["counts"]) == stats["samples"] and len(channel["counts"]) == drift.BINS
    assert len(stats["predictions"]["counts"]) == 10  # the digit classes, as the model predicts the validation split
    assert stats["channel_mean"] == [pytest.approx(0, abs=0.1)]  # standardized with training statistics
