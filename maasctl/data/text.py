"""Subword text data: a pretrained model's own tokenizer.json, or a WordPiece/BPE tokenizer trained on the training
split (`data.tokenizer`). numpy and `tokenizers` only (no torch): the checks here run before any model is built.

A pretrained model is a local folder as `save_pretrained` writes it (config.json, model.safetensors,
tokenizer.json), or a Hugging Face hub id found in the local cache (never downloaded: HF_HUB_OFFLINE or not).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from maasctl.data.datasets import Dataset, Split, encode_labels
from maasctl.errors import UsageError
from maasctl.preprocess import SubwordEncoder, subword_spec

TRAINED = ("wordpiece", "bpe")
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # [PAD] first: id 0 is padding for the sequence models
HUB_FILES = "config.json model.safetensors tokenizer.json"


def resolve_pretrained(spec: str, key: str = "model.params.pretrained") -> Path:
    """A local model folder, or a hub id's snapshot in the local Hugging Face cache; never the network."""
    if not spec:
        raise UsageError(f"{key}: name a model folder (save_pretrained's layout) or a hub id in the local cache")
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    if path.exists() or spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise UsageError(f"{key}: {spec} is not a folder (expected one holding {HUB_FILES})")
    from huggingface_hub import constants, snapshot_download

    try:
        return Path(snapshot_download(spec, local_files_only=True))
    except Exception:  # LocalEntryNotFoundError, an invalid id...: not here either way
        raise UsageError(
            f"{key}: {spec!r} is neither a folder nor in the local Hugging Face cache ({constants.HF_HUB_CACHE}); "
            f"maasctl never downloads. On a machine with internet run `hf download {spec} {HUB_FILES}` "
            f"(into that cache; copy it here, or set HF_HOME), or save_pretrained the model to a folder and name the folder"
        ) from None


def read_model_config(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"model.params.pretrained: {folder} has no config.json (expected {HUB_FILES})") from None
    except (OSError, ValueError) as exc:
        raise UsageError(f"model.params.pretrained: {folder / 'config.json'} is unreadable ({exc})") from None


def pretrained_tokenizer(folder: Path) -> str:
    path = folder / "tokenizer.json"
    if not path.is_file():
        slow = [
            n for n in ("vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model") if (folder / n).is_file()
        ]
        hint = (
            f" (it has {', '.join(slow)}, a slow tokenizer's files: load it with transformers' AutoTokenizer and "
            f"save_pretrained it once to write tokenizer.json)"
            if slow
            else ""
        )
        raise UsageError(f"data.tokenizer: {folder} has no tokenizer.json{hint}")
    text = path.read_text(encoding="utf-8")
    from tokenizers import Tokenizer

    try:
        Tokenizer.from_str(text)
    except Exception as exc:
        raise UsageError(f"data.tokenizer: {path} is not a tokenizers file ({exc})") from None
    return text


def model_inputs(config: dict[str, Any]) -> list[str]:
    """BERT-like models (type_vocab_size >= 2) take token type ids; DistilBERT and RoBERTa do not."""
    types = config.get("type_vocab_size", 0) >= 2
    return ["input_ids", "attention_mask", *(["token_type_ids"] if types else [])]


def train_tokenizer(kind: str, texts: list[str], vocab_size: int, lowercase: bool) -> str:
    """A WordPiece or BPE tokenizer trained on `texts` (the training split), as tokenizer.json text."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    if kind == "wordpiece":
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        trainer: Any = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=SPECIALS)
        tok.decoder = decoders.WordPiece()
    else:
        tok = Tokenizer(models.BPE(unk_token="[UNK]"))
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS)
    steps = [normalizers.NFKC()] + ([normalizers.Lowercase()] if lowercase else [])
    tok.normalizer = normalizers.Sequence(steps)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(texts, trainer=trainer)
    return tok.to_str()


# long: reads, checks and encodes in one pass so every refusal (blank, non-UTF-8, missing column) comes before training
def load_subword_text(cfg: Any, seed: int, records: list[dict[str, Any]], path: Path, split: Any) -> Dataset:
    """`records` read from `path`; `split(labels)` gives the three index arrays (the word path's split rule)."""
    pair_col = cfg.text_pair_column
    for col in [cfg.text_column] + ([pair_col] if pair_col else []):
        if col not in records[0]:
            raise UsageError(f"data: {col!r} is not a column of {path} (columns: {', '.join(records[0])})")
    keep, blank = [], 0
    for r in records:
        text = r.get(cfg.text_column)
        if not isinstance(text, str) or not text.strip():
            blank += 1
        else:
            keep.append(r)
    if blank:
        print(f"data: dropped {blank} record(s) of {path} with a blank {cfg.text_column!r}", file=sys.stderr)
    if not keep:
        raise UsageError(f"data.text_column: every {cfg.text_column!r} in {path} is blank")
    texts = [r[cfg.text_column] for r in keep]
    pairs = [str(r.get(pair_col) or "") for r in keep] if pair_col else None
    y, labels = encode_labels([r.get(cfg.label_column) for r in keep])
    parts = split(y)
    given = getattr(cfg, "_subword_spec", None)
    if given is not None:  # the model's own (export, evaluate): what it was trained with
        spec = given
        kind = "tokens" if spec["inputs"] == ["input"] else "subword"
    elif cfg.tokenizer in TRAINED:
        tokenizer_json = train_tokenizer(cfg.tokenizer, [texts[i] for i in parts[0]], cfg.vocab_size, cfg.lowercase)
        spec = subword_spec(tokenizer_json, cfg.max_len, ["input"], pair=bool(pairs), pad_to_max=True)
        kind = "tokens"
    else:
        folder = resolve_pretrained(cfg.tokenizer, "data.tokenizer (for hf_encoder: model.params.pretrained)")
        config = read_model_config(folder)
        spec = subword_spec(pretrained_tokenizer(folder), cfg.max_len, model_inputs(config), pair=bool(pairs))
        kind = "subword"
    encoder = SubwordEncoder(spec)
    rows = encoder.encode(texts, pairs)

    def make(idx: np.ndarray) -> Split:
        batch = encoder.pad([rows[i] for i in idx], cfg.max_len)
        if kind == "tokens":
            return Split(batch["input"], y[idx])
        # packed (N, 3, max_len): ids, type ids, mask; the model trims each batch to its longest text
        types = batch.get("token_type_ids", np.zeros_like(batch["input_ids"]))
        return Split(np.stack([batch["input_ids"], types, batch["attention_mask"]], axis=1), y[idx])

    extra = {"dropped_blank": blank}
    return Dataset(*(make(idx) for idx in parts), labels=labels, preprocessing=spec, input_kind=kind, extra=extra)
