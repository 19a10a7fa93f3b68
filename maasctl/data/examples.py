"""`maasctl examples`: write the example datasets the recipes in recipes/ train on, offline.

- digits_png/<label>/<n>.png — the embedded digits as an image folder (source: image_folder)
- digits_rows.npz — each digit as a sequence of its 8 pixel rows, (N, 8, 8) floats (source: npz, kind sequence)
- iris.csv — Fisher's iris measurements (source: csv)
- reviews.jsonl — short product reviews generated from templates, with negations, so word order matters
  (source: text). Generated here, not collected: a small, honest stand-in for a real text corpus.
- penguins.csv — 344 generated penguins shaped like the Palmer penguins table (species from island, sex and four
  measurements), with text categories, blank cells written '' and 'NA', a row-id column and a constant column
  (source: csv, classification).
- deliveries.csv — 1,000 generated deliveries: minutes taken from distance, items, hour, weather and vehicle,
  with blanks, and a few rows whose duration is blank (source: csv, regression).
Generated tables are simulations with the shape of real ones, not measurements.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from importlib import resources
from pathlib import Path

import numpy as np

from maasctl.fileio import atomic_write_text

GOOD = ["great", "excellent", "reliable", "sturdy", "comfortable", "fast", "beautiful", "useful", "quiet", "solid"]
BAD = ["terrible", "flimsy", "slow", "noisy", "useless", "broken", "ugly", "awkward", "cheap", "faulty"]
THINGS = ["kettle", "lamp", "chair", "phone", "jacket", "blender", "keyboard", "backpack", "speaker", "drill"]
OPENERS = ["the {t} is", "this {t} feels", "my new {t} is", "honestly the {t} was", "overall this {t} is"]
CLOSERS = ["", " arrived on time", " bought it last month", " as described", " used it daily"]


def write_examples(dest: Path, seed: int = 0) -> dict[str, Path]:
    dest.mkdir(parents=True, exist_ok=True)
    with resources.files("maasctl.data").joinpath("digits.npz").open("rb") as f, np.load(f) as npz:
        images, labels = npz["images"], npz["labels"]
    written = {"digits_png": _digits_folder(dest / "digits_png", images, labels)}

    rows = dest / "digits_rows.npz"
    np.savez_compressed(
        rows,
        x=(images / 255).astype(np.float32),
        y=labels.astype(np.int64),
        labels=np.array([str(d) for d in range(10)]),
    )
    written["digits_rows.npz"] = rows

    iris = dest / "iris.csv"
    with resources.files("maasctl.data").joinpath("iris.csv").open("rb") as f:
        iris.write_bytes(f.read())
    written["iris.csv"] = iris

    reviews = dest / "reviews.jsonl"
    atomic_write_text(reviews, "".join(json.dumps(r) + "\n" for r in generate_reviews(800, seed)))
    written["reviews.jsonl"] = reviews
    for name, rows in (
        ("penguins.csv", generate_penguins(344, seed)),
        ("deliveries.csv", generate_deliveries(1000, seed)),
    ):
        atomic_write_text(dest / name, _csv_text(rows))
        written[name] = dest / name
    return written


def _csv_text(rows: list[dict[str, object]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


# species -> (islands, bill length, bill depth, flipper length, body mass): means, roughly those of the real birds
PENGUINS = {
    "Adelie": (("Biscoe", "Dream", "Torgersen"), 38.8, 18.3, 190.0, 3700.0),
    "Chinstrap": (("Dream",), 48.8, 18.4, 196.0, 3730.0),
    "Gentoo": (("Biscoe",), 47.5, 15.0, 217.0, 5080.0),
}


def generate_penguins(n: int, seed: int) -> list[dict[str, object]]:
    """Penguins with blanks ('' or 'NA', about 3% of measurements, 5% of sexes), a row id and a constant column."""
    rng = np.random.default_rng(seed + 1)
    species = rng.choice(list(PENGUINS), size=n, p=[0.44, 0.20, 0.36])
    rows = []
    for i, sp in enumerate(species):
        islands, bill, depth, flipper, mass = PENGUINS[sp]
        male = bool(rng.integers(2))
        size = 1.04 if male else 0.96  # males are larger: sex carries information
        values = {
            "bill_length_mm": round(float(rng.normal(bill * size, 2.5)), 1),
            "bill_depth_mm": round(float(rng.normal(depth * size, 0.9)), 1),
            "flipper_length_mm": int(rng.normal(flipper * size, 6)),
            "body_mass_g": int(rng.normal(mass * size, 350) // 25 * 25),
        }
        for k in values:
            if rng.random() < 0.03:
                values[k] = str(rng.choice(["", "NA"]))  # type: ignore[assignment]
        sex = "" if rng.random() < 0.05 else ("male" if male else "female")
        rows.append(
            {
                "sample_id": i + 1,
                "study": "PAL0708",
                "island": str(rng.choice(islands)),
                "sex": sex,
                **values,
                "species": sp,
            }
        )
    return rows


def generate_deliveries(n: int, seed: int) -> list[dict[str, object]]:
    """Delivery minutes: distance over a vehicle's speed, slowed by weather and rush hours, plus items and noise."""
    rng = np.random.default_rng(seed + 2)
    speed = {"bike": 14.0, "car": 24.0, "van": 20.0}  # km/h in town
    slow = {"clear": 1.0, "rain": 1.25, "snow": 1.7}
    rows = []
    for _ in range(n):
        distance = float(rng.gamma(2.0, 2.5))
        items = int(rng.integers(1, 12))
        hour = int(rng.integers(8, 22))
        weather = str(rng.choice(list(slow), p=[0.6, 0.3, 0.1]))
        vehicle = str(rng.choice(list(speed), p=[0.3, 0.5, 0.2]))
        rush = 1.35 if hour in (8, 9, 17, 18) else 1.0
        minutes = 6 + 60 * distance / speed[vehicle] * slow[weather] * rush + 0.8 * items + rng.normal(0, 2.5)
        row: dict[str, object] = {
            "distance_km": round(distance, 2),
            "items": items,
            "hour": hour,
            "weather": weather if rng.random() > 0.04 else "",
            "vehicle": vehicle,
            "minutes": round(float(minutes), 1),
        }
        if rng.random() < 0.03:
            row["distance_km"] = "NA"
        if rng.random() < 0.01:
            row["minutes"] = ""  # an unlabelled delivery: dropped, counted and logged at training time
        rows.append(row)
    return rows


def _digits_folder(root: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    from PIL import Image

    staging = root.with_name(root.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    for i, (img, label) in enumerate(zip(images, labels)):
        folder = staging / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / f"{i:04d}.png")
    shutil.rmtree(root, ignore_errors=True)
    staging.rename(root)  # the folder appears complete or not at all
    return root


def generate_reviews(n: int, seed: int) -> list[dict[str, str]]:
    """Reviews whose label depends on word order: 'not reliable' is negative, 'not flimsy' positive."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        positive = bool(rng.integers(2))
        negate = rng.random() < 0.35
        # A negated word flips the meaning, so a negated positive review uses a bad word.
        words = BAD if positive == negate else GOOD
        adjectives = " and ".join(rng.choice(words, size=int(rng.integers(1, 3)), replace=False))
        opener = str(rng.choice(OPENERS)).format(t=rng.choice(THINGS))
        text = f"{opener} {'not ' if negate else ''}{adjectives}.{rng.choice(CLOSERS)}"
        out.append({"text": text.capitalize(), "label": "positive" if positive else "negative"})
    return out
