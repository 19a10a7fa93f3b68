"""Sequence classifiers: LSTM, GRU and a Transformer encoder, over float sequences (T,F) or token ids (T,).

Token id 0 is padding wherever it appears: each row's other tokens are moved to the front, in order, and the
steps after them are masked out of every direction, attention and pooling, so adding or removing padding never
changes a prediction. No packed sequences and no fused kernels: every model exports to ONNX with dynamic batch
and sequence axes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from maasctl.errors import UsageError
from maasctl.models.registry import register_model

PAD_ID = 0
POOLS = ("mean", "last")


# --- blocks ------------------------------------------------------------------------------------------------


def compact_tokens(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids with each row's non-padding tokens moved to the front in order, padding after; the valid-step mask)."""
    keep = ids != PAD_ID
    k = keep.long()
    count = k.sum(1, keepdim=True)
    # Where each step goes: the n-th kept token to n, the padding after all kept tokens (a permutation per row).
    dest = torch.where(keep, k.cumsum(1) - 1, count + (1 - k).cumsum(1) - 1)
    packed = torch.zeros_like(ids).scatter(1, dest, ids)
    steps = torch.arange(ids.shape[1], device=ids.device).unsqueeze(0)
    return packed, steps < count


def masked_mean(h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over time of (B,T,D) on the valid steps; a row with none gives zeros."""
    if mask is None:
        return h.mean(1)
    m = mask.unsqueeze(-1).to(h.dtype)
    return (h * m).sum(1) / m.sum(1).clamp(min=1.0)


def reverse_steps(h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Each row's valid steps in reverse order, the padding after them left in place (its own inverse)."""
    if mask is None:
        return h.flip(1)
    n = mask.long().sum(1, keepdim=True)
    t = torch.arange(h.shape[1], device=h.device).unsqueeze(0)
    idx = torch.where(t < n, n - 1 - t, t)
    # expand(-1, -1, D), not expand_as(h): the dynamo exporter gives an RNN output's length a constant, not the input's.
    return h.gather(1, idx.unsqueeze(-1).expand(-1, -1, h.shape[-1]))


class SequenceInput(nn.Module):
    """Token ids → (embeddings of the compacted ids, valid-step mask); a float sequence → (itself or a projection, None)."""

    def __init__(
        self, input_shape: tuple[int, ...], vocab_size: int | None, dim: int, project: bool, name: str
    ) -> None:
        super().__init__()
        self.tokens = len(input_shape) == 1
        if self.tokens:
            if not vocab_size or vocab_size < 2:
                raise UsageError(
                    f"model.name: {name} on tokens needs the data's vocab_size (at least 2), got {vocab_size}"
                )
            self.embed: nn.Module = nn.Embedding(vocab_size, dim, padding_idx=PAD_ID)
            self.dim = dim
        elif len(input_shape) == 2:
            self.embed = nn.Linear(input_shape[1], dim) if project else nn.Identity()
            self.dim = dim if project else input_shape[1]
        else:
            raise UsageError(
                f"model.name: {name} takes sequences (T,F) or token ids (T,), but this data has samples of shape {list(input_shape)}"
            )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not self.tokens:
            return self.embed(x), None
        ids, mask = compact_tokens(x)
        return self.embed(ids), mask


class EncoderBlock(nn.Module):
    """Pre-norm Transformer encoder layer: masked self-attention, then a GELU feed-forward, each residual.

    Written out with scaled_dot_product_attention rather than nn.TransformerEncoderLayer: the TorchScript exporter
    freezes that layer's attention reshapes to the example's batch and length, and in eval mode it switches to a
    fused fast path (nested tensors) that is not the code that was trained. This block is the same code in
    training, eval and both exporters.
    """

    def __init__(self, d_model: int, heads: int, ff_dim: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.norm1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.ff = nn.Sequential(nn.Linear(d_model, ff_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(ff_dim, d_model))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0
        )
        x = x + self.drop(self.proj(a.transpose(1, 2).reshape(b, t, d)))
        return x + self.drop(self.ff(self.norm2(x)))


# --- models --------------------------------------------------------------------------------------------------


class RNNClassifier(nn.Module):
    """Stacked LSTM/GRU; a backward direction runs a forward RNN over each row's valid steps reversed.

    nn.LSTM(bidirectional=True) would run its backward pass from the padding, and pack_padded_sequence does not
    export; one single-layer, single-direction RNN per layer and direction exports with either exporter.
    """

    def __init__(
        self,
        cell: type[nn.RNNBase],
        inputs: SequenceInput,
        num_classes: int,
        hidden: int,
        layers: int,
        bidirectional: bool,
        dropout: float,
        pool: str,
    ) -> None:
        super().__init__()
        self.inputs = inputs
        self.hidden = hidden
        self.pool = pool
        width = inputs.dim
        self.layers = nn.ModuleList()
        for _ in range(layers):
            self.layers.append(
                nn.ModuleList(cell(width, hidden, batch_first=True) for _ in range(2 if bidirectional else 1))
            )
            width = hidden * len(self.layers[-1])
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, mask = self.inputs(x)
        for directions in self.layers:
            h = self.drop(h)
            out = [directions[0](h)[0]]
            if len(directions) == 2:
                out.append(reverse_steps(directions[1](reverse_steps(h, mask))[0], mask))
            h = torch.cat(out, -1)
        return self.head(self.drop(self._pool(h, mask)))

    def _pool(self, h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if self.pool == "mean":
            return masked_mean(h, mask)
        # "last": the forward state after the last valid step; the backward state after the first step.
        if mask is None:
            last = h[:, -1]
        else:
            n = mask.long().sum(1)
            idx = (n - 1).clamp(min=0).view(-1, 1, 1).expand(-1, 1, h.shape[-1])
            last = h.gather(1, idx).squeeze(1) * (n > 0).unsqueeze(1).to(h.dtype)
        return torch.cat([last[:, : self.hidden], h[:, 0, self.hidden :]], -1)


class TransformerClassifier(nn.Module):
    """Embedding + learned positions, pre-norm encoder blocks with a padding mask, masked mean-pool, linear head."""

    def __init__(
        self,
        inputs: SequenceInput,
        num_classes: int,
        d_model: int,
        heads: int,
        layers: int,
        ff_dim: int,
        dropout: float,
        max_len: int,
    ) -> None:
        super().__init__()
        self.inputs = inputs
        self.pos = nn.Parameter(torch.zeros(max_len, d_model))
        nn.init.normal_(self.pos, std=0.02)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(EncoderBlock(d_model, heads, ff_dim, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, mask = self.inputs(x)
        h = self.drop(h + self.pos[: h.shape[1]])
        attn_mask = None
        if mask is not None:
            # Keys a query may attend to, (B,1,1,T); a row of padding only attends to all of it (no NaN from softmax).
            attn_mask = (mask | ~mask.any(1, keepdim=True))[:, None, None, :]
        for block in self.blocks:
            h = block(h, attn_mask)
        return self.head(masked_mean(self.norm(h), mask))


def _rnn(
    cell: type[nn.RNNBase],
    name: str,
    input_shape: tuple[int, ...],
    num_classes: int,
    vocab_size: int | None,
    hidden: int,
    layers: int,
    bidirectional: bool,
    dropout: float,
    embed_dim: int,
    pool: str,
) -> nn.Module:
    if pool not in POOLS:
        raise UsageError(f"model.params.pool: {name} takes one of {', '.join(POOLS)}, not {pool!r}")
    if hidden < 1 or layers < 1:
        raise UsageError(
            f"model.params: {name} needs hidden >= 1 and layers >= 1, got hidden={hidden}, layers={layers}"
        )
    inputs = SequenceInput(input_shape, vocab_size, embed_dim, project=False, name=name)
    return RNNClassifier(cell, inputs, num_classes, hidden, layers, bidirectional, dropout, pool)


# --- registered variants -------------------------------------------------------------------------------------


@register_model(inputs=("sequence", "tokens"))
def lstm(
    input_shape: tuple[int, ...],
    num_classes: int,
    vocab_size: int | None = None,
    hidden: int = 64,
    layers: int = 1,
    bidirectional: bool = False,
    dropout: float = 0.1,
    embed_dim: int = 64,
    pool: str = "mean",
) -> nn.Module:
    """LSTM over sequences or token ids (0 = padding); pool mean: masked mean over time, last: final states."""
    return _rnn(
        nn.LSTM, "lstm", input_shape, num_classes, vocab_size, hidden, layers, bidirectional, dropout, embed_dim, pool
    )


@register_model(inputs=("sequence", "tokens"))
def gru(
    input_shape: tuple[int, ...],
    num_classes: int,
    vocab_size: int | None = None,
    hidden: int = 64,
    layers: int = 1,
    bidirectional: bool = False,
    dropout: float = 0.1,
    embed_dim: int = 64,
    pool: str = "mean",
) -> nn.Module:
    """GRU over sequences or token ids (0 = padding); pool mean: masked mean over time, last: final states."""
    return _rnn(
        nn.GRU, "gru", input_shape, num_classes, vocab_size, hidden, layers, bidirectional, dropout, embed_dim, pool
    )


@register_model(inputs=("sequence", "tokens"))
def transformer(
    input_shape: tuple[int, ...],
    num_classes: int,
    vocab_size: int | None = None,
    d_model: int = 64,
    heads: int = 4,
    layers: int = 2,
    ff_dim: int = 128,
    dropout: float = 0.1,
    max_len: int = 512,
) -> nn.Module:
    """Transformer encoder over sequences or token ids (0 = padding): learned positions, masked mean-pool."""
    if heads < 1 or d_model % heads:
        raise UsageError(f"model.params.heads: {heads} heads must divide d_model {d_model}")
    if input_shape and input_shape[0] > max_len:
        raise UsageError(
            f"model.params.max_len: the data's sequences have {input_shape[0]} steps, more than max_len {max_len}; raise max_len"
        )
    inputs = SequenceInput(input_shape, vocab_size, d_model, project=True, name="transformer")
    return TransformerClassifier(inputs, num_classes, d_model, heads, layers, ff_dim, dropout, max_len)
