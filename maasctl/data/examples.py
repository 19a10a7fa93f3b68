"""`maasctl examples`: write the example datasets the recipes in recipes/ train on, offline.

- digits_png/<label>/<n>.png — the embedded digits as an image folder (source: image_folder)
- digits_rows.npz — each digit as a sequence of its 8 pixel rows, (N, 8, 8) floats (source: npz, kind sequence)
- iris.csv — Fisher's iris measurements (source: csv)
- reviews.jsonl — short product reviews generated from templates, with negations, so word order matters
  (source: text). Generated here, not collected: a small, honest stand-in for a real text corpus.
"""

from __future__ import annotations

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
    return written


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
