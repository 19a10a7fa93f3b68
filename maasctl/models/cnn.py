"""Small convolutional networks for small images (digits, MNIST-sized)."""

from __future__ import annotations

from torch import nn

from maasctl.models.registry import register_model


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class SmallCNN(nn.Module):
    """conv-conv-pool, conv-pool, global average pool, linear head."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 32, dropout: float = 0.1) -> None:
        super().__init__()
        self.features = nn.Sequential(
            _conv_block(in_channels, width),
            _conv_block(width, width),
            nn.MaxPool2d(2),
            _conv_block(width, 2 * width),
            nn.MaxPool2d(2),
            _conv_block(2 * width, 4 * width),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(4 * width, num_classes))

    def forward(self, x):
        return self.head(self.features(x))


@register_model(inputs=("image",))
def cnn_small(input_shape: tuple[int, ...], num_classes: int, width: int = 32, dropout: float = 0.1) -> nn.Module:
    """Small CNN for (C,H,W) images of 8 pixels or more per side."""
    return SmallCNN(input_shape[0], num_classes, width=width, dropout=dropout)
