"""Quantizers for LAPO's latent action: vector quantization (the default, as LAPO) and FSQ.

Both take z [B, D] and return (z_q [B, D], auxiliary loss, metrics). They run in float32 with
autocast off: nearest-code distances and rounding are not safe in bf16.

``VectorQuantizer`` splits z into ``groups`` chunks, each snapped to the nearest of ``codes``
vectors of its own codebook (LAPO: 8 chunks of 16 dims, 64 codes); gradients pass straight
through; the codebook learns from the codebook loss |sg(z) - e|^2 and the encoder is held near its
codes by beta |z - sg(e)|^2. LAPO itself moves the codebook by an EMA of the assigned vectors
instead of a loss; the loss form keeps the codebook an ordinary parameter, so a DDP all-reduce keeps
it identical on every worker and ``forward`` mutates no buffers (clean under ``torch.compile``).

``FSQ`` (finite scalar quantization, Mentzer et al. 2023) bounds every dimension with tanh and
rounds it to one of L levels: no codebook, no auxiliary loss, nothing to collapse.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


def perplexity(codes: Tensor, num_codes: int) -> Tensor:
    """exp(entropy) of the code histogram, averaged over groups: codes [B, G] -> scalar.

    1 means every row uses the same code (collapse); ``num_codes`` means uniform use.
    """
    b, g = codes.shape
    counts = torch.zeros(g, num_codes, device=codes.device).scatter_add_(
        1, codes.t(), torch.ones(g, b, device=codes.device)
    )
    p = counts / b
    entropy = -(p * torch.log(p.clamp_min(1e-10))).sum(-1)
    return entropy.exp().mean()


class VectorQuantizer(nn.Module):
    def __init__(self, dim: int, groups: int = 8, codes: int = 64, beta: float = 0.25):
        super().__init__()
        if dim % groups:
            raise ValueError(f"latent dim {dim} is not a multiple of {groups} groups")
        self.groups, self.codes, self.beta = groups, codes, beta
        self.codebook = nn.Parameter(torch.randn(groups, codes, dim // groups) / (dim // groups) ** 0.5)

    def codes_of(self, z: Tensor) -> Tensor:
        """Index of the nearest code per group: [B, D] -> int64 [B, G]."""
        x = z.float().view(z.shape[0], self.groups, -1)
        e = self.codebook.float()
        # |x - e|^2 = |x|^2 - 2 x.e + |e|^2; |x|^2 does not change the argmin.
        dist = e.pow(2).sum(-1).unsqueeze(0) - 2 * torch.einsum("bgd,gmd->bgm", x, e)
        return dist.argmin(-1)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        with torch.autocast(device_type=z.device.type, enabled=False):
            x = z.float().view(z.shape[0], self.groups, -1)
            idx = self.codes_of(z)
            q = self.codebook.float()[torch.arange(self.groups, device=z.device), idx]  # [B, G, d]
            codebook_loss = F.mse_loss(q, x.detach())
            commit_loss = F.mse_loss(x, q.detach())
            z_q = x + (q - x).detach()  # straight-through: forward q, gradient to x
        metrics = {
            "vq/codebook_loss": codebook_loss.detach(),
            "vq/commit_loss": commit_loss.detach(),
            "vq/perplexity": perplexity(idx, self.codes).detach(),
        }
        return z_q.view_as(z), codebook_loss + self.beta * commit_loss, metrics


class FSQ(nn.Module):
    def __init__(self, dim: int, levels: Sequence[int] = (8, 5, 5, 5)):
        super().__init__()
        if dim % len(levels):
            raise ValueError(f"latent dim {dim} is not a multiple of {len(levels)} levels")
        self.group = len(levels)
        self.num_codes = 1
        for lv in levels:
            self.num_codes *= lv
        per_dim = torch.tensor([levels[i % len(levels)] for i in range(dim)], dtype=torch.float32)
        self.register_buffer("levels", per_dim, persistent=False)
        radix = torch.cumprod(torch.tensor([1, *levels[:-1]]), 0)
        self.register_buffer("radix", radix, persistent=False)

    def _bounded(self, z: Tensor) -> Tensor:
        """Squash each dim into (-(L-1)/2, (L-1)/2), shifted so even L get symmetric levels."""
        half = (self.levels - 1) / 2
        offset = torch.where(self.levels % 2 == 0, 0.5, 0.0)
        shift = torch.atanh(offset / half)
        return torch.tanh(z + shift) * half - offset

    def codes_of(self, z: Tensor) -> Tensor:
        """One code per group of ``len(levels)`` dims: [B, D] -> int64 [B, D/len(levels)]."""
        digits = (self._bounded(z.float()).round() + (self.levels // 2)).long()
        return (digits.view(z.shape[0], -1, self.group) * self.radix).sum(-1)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        with torch.autocast(device_type=z.device.type, enabled=False):
            b = self._bounded(z.float())
            q = b + (b.round() - b).detach()  # round with a straight-through gradient
            z_q = q / (self.levels // 2)  # back to roughly [-1, 1]
        metrics = {"fsq/perplexity": perplexity(self.codes_of(z), self.num_codes).detach()}
        return z_q, torch.zeros((), device=z.device), metrics


class NoQuantizer(nn.Module):
    """Continuous z (the LAOM repo's LAPO baseline)."""

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        return z, torch.zeros((), device=z.device), {}


def build_quantizer(kind: str, dim: int, groups: int, codes: int, beta: float,
                    levels: Sequence[int]) -> nn.Module:
    if kind == "vq":
        return VectorQuantizer(dim, groups, codes, beta)
    if kind == "fsq":
        return FSQ(dim, levels)
    if kind == "none":
        return NoQuantizer()
    raise ValueError(f"unknown quantizer {kind!r}; expected vq, fsq or none")
