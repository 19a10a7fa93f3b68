"""What `maasctl predict` prints: a table for people, JSON or CSV for scripts."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from maasctl.inputs.outputs import Prediction
from maasctl.inputs.types import Problem


def render_json(predictions: list[Prediction], problems: list[Problem], summary: dict[str, Any]) -> str:
    doc = {
        "predictions": [p.to_json() for p in predictions],
        "errors": [p.to_json() for p in problems],
        "summary": summary,
    }
    return json.dumps(doc) + "\n"


def render_csv(predictions: list[Prediction], top_k: int, gated: bool) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    if any(p.value is not None for p in predictions):  # regression: values
        writer.writerow(["input", "value"] + (["expected", "error", "correct"] if gated else []))
        for p in predictions:
            row: list[Any] = [p.input, p.value]
            if gated:
                row += ["" if p.expected is None else p.expected, "" if p.error is None else p.error]
                row.append("" if p.correct is None else str(p.correct).lower())
            writer.writerow(row)
        return buf.getvalue()
    header = ["input", "label", "probability", "index"]
    for k in range(2, top_k + 1):
        header += [f"label_{k}", f"probability_{k}"]
    writer.writerow(header + (["expected", "correct"] if gated else []))
    for p in predictions:
        row: list[Any] = [p.input, p.label, p.probability, p.index]
        for k in range(1, top_k):
            row += list(p.top_k[k]) if k < len(p.top_k) else ["", ""]
        if gated:
            row += ["" if p.expected is None else p.expected, "" if p.correct is None else str(p.correct).lower()]
        writer.writerow(row)
    return buf.getvalue()


def print_table(console: Any, predictions: list[Prediction], top_k: int, gated: bool) -> None:
    from rich.table import Table
    from rich.text import Text

    table = Table()
    table.add_column("input", overflow="fold")
    if any(p.value is not None for p in predictions):  # regression: values
        _value_rows(table, predictions, gated)
        console.print(table)
        return
    table.add_column("label")
    table.add_column("probability", justify="right")
    if top_k > 1:
        table.add_column(f"next {top_k - 1}")
    if gated:
        table.add_column("expected")
        table.add_column("ok")
    for p in predictions:
        row: list[Any] = [Text(p.input), Text(p.label), f"{p.probability:.4f}"]  # Text: names are not markup
        if top_k > 1:
            row.append(Text("  ".join(f"{label} {prob:.3f}" for label, prob in p.top_k[1:])))
        if gated:
            row += [Text(p.expected or "-"), {True: "yes", False: "NO", None: "-"}[p.correct]]
        table.add_row(*row, style="red" if p.correct is False else None)
    console.print(table)


def _value_rows(table: Any, predictions: list[Prediction], gated: bool) -> None:
    from rich.text import Text

    table.add_column("value", justify="right")
    if gated:
        table.add_column("expected", justify="right")
        table.add_column("error", justify="right")
        table.add_column("ok")
    for p in predictions:
        row: list[Any] = [Text(p.input), f"{p.value:.6g}"]
        if gated:
            error = "-" if p.error is None else f"{p.error:+.4g}"
            row += [Text(p.expected or "-"), error, {True: "yes", False: "NO", None: "-"}[p.correct]]
        table.add_row(*row, style="red" if p.correct is False else None)
