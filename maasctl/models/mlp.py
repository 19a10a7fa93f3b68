"""Multi-layer perceptrons over flattened inputs."""

from __future__ import annotations

import math

from torch import nn

from maasctl.models.registry import register_model


@register_model(inputs=("features", "image", "sequence"))
def mlp(
    input_shape: tuple[int, ...], num_classes: int, hidden: int = 128, depth: int = 2, dropout: float = 0.1
) -> nn.Module:
    """MLP over the flattened input: `depth` hidden layers of `hidden` units; depth 0 is logistic regression."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(input_shape)
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout)]
        width = hidden
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)
