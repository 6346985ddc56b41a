"""IMPALA-style ResNet encoder (and the mirrored decoder LAPO needs to reconstruct pixels).

Each stage: a 3x3 conv that halves the frame (stride 2, as the released LAOM code does, or conv +
3x3/2 max-pool as the original IMPALA), then ``blocks`` residual blocks (ReLU6, conv, ReLU6, conv).
Channels are ``base_channels x scale``; the paper's LAOM uses (16, 32, 32) x 6 on 9x64x64 inputs,
which leaves a 192x8x8 map = 12288 features.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


def init_weights(module: nn.Module) -> None:
    """Orthogonal weights, zero biases for every conv and linear layer (as the LAOM code)."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.orthogonal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.relu6(self.conv1(F.relu6(x))))


class EncoderStage(nn.Module):
    """conv that halves H and W, then residual blocks."""

    def __init__(self, in_channels: int, out_channels: int, blocks: int, downsample: str = "stride"):
        super().__init__()
        stride = 2 if downsample == "stride" else 1
        self.conv = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1) if downsample == "maxpool" else nn.Identity()
        self.blocks = nn.Sequential(*[ResidualBlock(out_channels) for _ in range(blocks)])

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(self.pool(self.conv(x)))


class ImpalaEncoder(nn.Module):
    """float [B, C, H, W] -> feature map [B, C', H/2^n, W/2^n] (``features`` flattens it).

    ``out_shape`` is (C', h, w) and ``feature_dim`` = C'*h*w, the flattened feature size.
    """

    def __init__(
        self,
        in_channels: int,
        image_size: int,
        channels: Sequence[int] = (16, 32, 32),
        scale: int = 1,
        blocks: int = 2,
        downsample: str = "stride",
        norm_out: bool = False,
    ):
        super().__init__()
        stages, c, size = [], in_channels, image_size
        for base in channels:
            stages.append(EncoderStage(c, base * scale, blocks, downsample))
            c, size = base * scale, (size + 1) // 2
        self.stages = nn.Sequential(*stages)
        self.out_shape = (c, size, size)
        self.feature_dim = math.prod(self.out_shape)
        self.norm = nn.LayerNorm(self.feature_dim, elementwise_affine=False) if norm_out else nn.Identity()
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.stages(x)

    def features(self, x: Tensor) -> Tensor:
        """Flattened features [B, feature_dim] in (h, w, c) order: a free view of a channels_last map."""
        return self.flatten(self.stages(x))

    def flatten(self, maps: Tensor) -> Tensor:
        """Feature maps [B, C', h, w] -> the flattened (and optionally normalised) features."""
        return self.norm(maps.permute(0, 2, 3, 1).flatten(1))


class DecoderStage(nn.Module):
    """2x2 transposed conv that doubles H and W, then residual blocks."""

    def __init__(self, in_channels: int, out_channels: int, blocks: int):
        super().__init__()
        self.conv = nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2)
        self.blocks = nn.Sequential(*[ResidualBlock(out_channels) for _ in range(blocks)])

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(self.conv(x))


class ImpalaDecoder(nn.Module):
    """Feature map [B, C_in, h, w] -> image [B, out_channels, h*2^n, w*2^n] in [-1, 1] (tanh)."""

    def __init__(self, in_channels: int, out_channels: int, channels: Sequence[int] = (16, 32, 32),
                 scale: int = 1, blocks: int = 2):
        super().__init__()
        stages, c = [], in_channels
        for base in reversed(channels):
            stages.append(DecoderStage(c, base * scale, blocks))
            c = base * scale
        self.stages = nn.Sequential(*stages)
        self.out = nn.Conv2d(c, out_channels, 1)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(F.gelu(self.stages(x))).tanh()


def make_encoder(c, in_channels: int | None = None, scale: int | None = None) -> ImpalaEncoder:
    """The IMPALA encoder a ModelConfig ``c`` describes (``in_channels``/``scale``: other than its own)."""
    return ImpalaEncoder(
        in_channels or c.in_channels, c.image_size, c.encoder_channels, scale or c.encoder_scale,
        c.encoder_blocks, c.encoder_downsample, c.encoder_norm_out,
    )
