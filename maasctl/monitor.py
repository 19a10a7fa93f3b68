"""`maasctl monitor MODEL --url URL`: the drift report of a served model, read from the server's /metrics (the
gauges Prometheus scrapes, so the command and the alerts see the same numbers). No torch."""

from __future__ import annotations

import urllib.error
import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from maasctl import drift
from maasctl.errors import Unavailable, UsageError

GAUGES = (
    "maasctl_drift_window_samples",
    "maasctl_drift_psi",
    "maasctl_drift_mean_shift",
    "maasctl_drift_prediction_psi",
)


def fetch_metrics(url: str, token: str | None = None, timeout: float = 10) -> str:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(url.rstrip("/") + "/metrics", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            return reply.read().decode("utf-8")
    except urllib.error.HTTPError as exc:
        hint = ": give the server's token with --token or MAASCTL_TOKEN" if exc.code == 401 else ""
        raise Unavailable(f"{url}/metrics answered {exc.code}{hint}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise Unavailable(f"cannot reach {url}: {reason}") from None


def drift_reports(metrics_text: str) -> list[dict[str, Any]]:
    """The drift gauges in a /metrics text, one report per model version (drift.DriftMonitor.report's shape)."""
    reports: dict[tuple[str, str], dict[str, Any]] = {}
    for family in text_string_to_metric_families(metrics_text):
        if family.name not in GAUGES:
            continue
        for sample in family.samples:
            key = (sample.labels["model"], sample.labels["version"])
            report = reports.setdefault(
                key, {"model": key[0], "version": int(key[1]), "samples": 0, "values": {}, "prediction_psi": None}
            )
            if family.name == "maasctl_drift_window_samples":
                report["samples"] = int(sample.value)
            elif family.name == "maasctl_drift_prediction_psi":
                report["prediction_psi"] = sample.value
            else:
                field = "psi" if family.name == "maasctl_drift_psi" else "mean_shift"
                name = sample.labels["feature"]
                report["values"].setdefault(name, {"name": name})[field] = sample.value
    out = []
    for report in reports.values():
        report["values"] = list(report["values"].values())
        out.append(_judged(report))
    return sorted(out, key=lambda r: (r["model"], r["version"]))


def _judged(report: dict[str, Any]) -> dict[str, Any]:
    """Add `drifting` per value and for the report, by the thresholds the alert rules use."""
    enough = report["samples"] >= drift.MIN_SAMPLES
    for value in report["values"]:
        value["drifting"] = enough and (
            value.get("psi", 0) > drift.PSI_THRESHOLD or abs(value.get("mean_shift", 0)) > drift.SHIFT_THRESHOLD
        )
    predictions = report["prediction_psi"]
    report["predictions_drifting"] = enough and predictions is not None and predictions > drift.PSI_THRESHOLD
    report["enough_samples"] = enough
    report["drifting"] = report["predictions_drifting"] or any(v["drifting"] for v in report["values"])
    return report


def model_reports(url: str, model: str, version: int | None, token: str | None) -> list[dict[str, Any]]:
    reports = [r for r in drift_reports(fetch_metrics(url, token)) if r["model"] == model]
    if version is not None:
        reports = [r for r in reports if r["version"] == version]
    if not reports:
        which = f"{model!r}" + (f" version {version}" if version is not None else "")
        raise UsageError(
            f"{url} reports no drift for model {which}: it is not served there, or its manifest has no training "
            "statistics (export it again with this maasctl)"
        )
    return reports
