"""Pretrained Hugging Face encoders (BERT, DistilBERT, MiniLM, RoBERTa...) with a classification head sized from
the data: `model.name: hf_encoder`, `model.params.pretrained`: a local folder or a hub id in the local cache.

Inputs are "subword" batches packed (N, 3, L): token ids, token type ids, attention mask (maasctl/data/text.py).
Each training batch is cut to its longest text (dynamic padding); the exported graph takes input_ids,
attention_mask (and token_type_ids where the model has them) with dynamic batch and sequence axes.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from maasctl.errors import UsageError
from maasctl.models.registry import register_model

_LAYER = re.compile(r"\.(?:layer|layers)\.(\d+)\.")


class HFEncoder(nn.Module):
    def __init__(self, model: nn.Module, uses_types: bool) -> None:
        super().__init__()
        self.model = model
        self.uses_types = uses_types

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if input_ids.dim() == 3:  # a packed batch from training: cut the padding every text in it has
            length = max(1, int(input_ids[:, 2].sum(1).max()))
            packed = input_ids[:, :, :length]
            input_ids, token_type_ids, attention_mask = packed[:, 0], packed[:, 1], packed[:, 2]
        extra = {"token_type_ids": token_type_ids} if self.uses_types and token_type_ids is not None else {}
        return self.model(input_ids=input_ids, attention_mask=attention_mask, **extra).logits

    @property
    def input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", *(["token_type_ids"] if self.uses_types else [])]

    @property
    def meta_extra(self) -> dict[str, Any]:
        """What export needs to rebuild the architecture without the pretrained folder (saved with checkpoints)."""
        return {"hf_config": self.model.config.to_dict()}

    def param_groups(self, lr: float, weight_decay: float, layer_decay: float) -> list[dict[str, Any]]:
        """AdamW groups: no weight decay on biases and norms; layer-wise lr decay (the head gets `lr`, each layer
        below it `layer_decay` times the one above, the embeddings the least). Frozen parameters are left out."""
        depth_max = _num_layers(self.model.config) + 1
        groups: dict[tuple[int, bool], list[nn.Parameter]] = {}
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            match = _LAYER.search(name)
            depth = 0 if "embeddings" in name else int(match.group(1)) + 1 if match else depth_max
            no_decay = p.ndim < 2 or "norm" in name.lower()
            groups.setdefault((depth, no_decay), []).append(p)
        return [
            {"params": ps, "lr": lr * layer_decay ** (depth_max - d), "weight_decay": 0.0 if nd else weight_decay}
            for (d, nd), ps in sorted(groups.items())
        ]


def _num_layers(config: Any) -> int:
    for key in ("num_hidden_layers", "n_layers", "num_layers"):
        if isinstance(getattr(config, key, None), int):
            return getattr(config, key)
    return 0


def _position_limit(config: dict[str, Any]) -> int | None:
    limit = config.get("max_position_embeddings")
    if limit is None:
        return None
    # RoBERTa-style models number positions from pad_token_id + 1
    return (
        limit - config.get("pad_token_id", 0) - 1 if config.get("model_type") in ("roberta", "xlm-roberta") else limit
    )


def _check_fit(folder: Path, config: dict[str, Any], max_len: int, vocab_size: int | None) -> None:
    """The data's tokenizer and max_len against the model: refused before any weight is read."""
    limit = _position_limit(config)
    if limit is not None and max_len > limit:
        raise UsageError(
            f"data.max_len {max_len}: {folder.name} has position embeddings for {limit} tokens; set data.max_len <= {limit}"
        )
    if vocab_size is not None and vocab_size > config.get("vocab_size", vocab_size):
        raise UsageError(
            f"data.tokenizer: the tokenizer has {vocab_size} tokens but {folder.name}'s embeddings hold "
            f"{config['vocab_size']} (config.json vocab_size); the tokenizer.json belongs to another model"
        )
    if not (folder / "model.safetensors").is_file():
        have = ", ".join(sorted(p.name for p in folder.iterdir())) or "nothing"
        raise UsageError(
            f"model.params.pretrained: {folder} has no model.safetensors (it has: {have}); maasctl reads weights "
            f"from safetensors only (never pickles): save_pretrained writes it"
        )


def _freeze(model: nn.Module, embeddings: bool, layers: int) -> None:
    for name, p in model.named_parameters():
        match = _LAYER.search(name)
        if (embeddings and "embeddings" in name) or (match and int(match.group(1)) < layers):
            p.requires_grad_(False)


@register_model(inputs=("subword",))
def hf_encoder(
    input_shape: tuple[int, ...],
    num_classes: int,
    vocab_size: int | None = None,
    config: dict[str, Any] | None = None,
    pretrained: str | None = "",
    freeze_embeddings: bool = False,
    freeze_layers: int = 0,
) -> nn.Module:
    """A pretrained Hugging Face encoder + classification head (pretrained: local folder or cached hub id)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    from maasctl.data.text import read_model_config, resolve_pretrained

    hf_logging.set_verbosity_error()  # "some weights newly initialized": the head, by design
    hf_logging.disable_progress_bar()  # stderr is for maasctl's epoch lines
    if config is not None:  # rebuilt from a checkpoint's metadata: weights follow
        cfg = AutoConfig.for_model(**config)
        cfg.num_labels = num_classes
        model = AutoModelForSequenceClassification.from_config(cfg)
    else:
        folder = resolve_pretrained(pretrained or "")
        raw = read_model_config(folder)
        _check_fit(folder, raw, input_shape[-1], vocab_size)
        model = AutoModelForSequenceClassification.from_pretrained(
            folder, num_labels=num_classes, ignore_mismatched_sizes=True, local_files_only=True, use_safetensors=True
        )
    _freeze(model, freeze_embeddings, freeze_layers)
    return HFEncoder(model, uses_types=model.config.to_dict().get("type_vocab_size", 0) >= 2)
