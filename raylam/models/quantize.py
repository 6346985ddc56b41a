"""Quantizers for LAPO's latent action: vector quantization (as the LAPO paper), FSQ, or none.

All take z [B, D] and return (z_q [B, D], auxiliary loss, metrics). They run in float32 with
autocast off: nearest-code distances and rounding are not safe in bf16.

``VectorQuantizer`` follows LAPO's ``VQEmbeddingEMA`` (schmidtdominik/LAPO, lapo/models.py): z is
split into ``groups`` discrete latents of D/groups dims, each snapped to the nearest of ``codes``
vectors of its codebook. Groups *share* codebooks: LAPO has 2 codebooks of 64 codes x 16 dims, each
used by 4 latents (la_dim = 2 x 4 x 16 = 128); here group g uses codebook g // (groups / codebooks).
Gradients pass straight through to z, the only loss is the commitment ``beta |z - sg(e)|^2``
(LAPO: 0.05), and the codebook is *not* trained by gradient: it is a buffer set to an EMA of the
vectors assigned to each code (decay 0.999, Laplace-smoothed counts, no bias correction, no
dead-code restarts -- all as LAPO). Under ``torch.distributed`` the per-step code counts and sums
are all-reduced first, so every worker applies the same update (the EMA of the global batch).

``ema_decay=None`` instead makes the codebook an ordinary parameter learned by the VQ-VAE
codebook loss |sg(z) - e|^2 (raylam's earlier form; no buffers change in ``forward``).

``FSQ`` (finite scalar quantization, Mentzer et al. 2023) bounds every dimension with tanh and
rounds it to one of L levels: no codebook, no auxiliary loss, nothing to collapse.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
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
    def __init__(self, dim: int, groups: int = 8, codes: int = 64, beta: float = 0.05,
                 codebooks: int | None = 2, ema_decay: float | None = 0.999, eps: float = 1e-5):
        super().__init__()
        codebooks = codebooks or groups
        if dim % groups:
            raise ValueError(f"latent dim {dim} is not a multiple of {groups} groups")
        if groups % codebooks:
            raise ValueError(f"{groups} groups cannot share {codebooks} codebooks evenly")
        d = dim // groups
        self.groups, self.codes, self.codebooks, self.beta = groups, codes, codebooks, beta
        self.ema_decay, self.eps = ema_decay, eps
        # which codebook each group reads: groups [0, G/K) -> book 0, [G/K, 2G/K) -> book 1, ...
        self.register_buffer("book_of", torch.arange(groups) // (groups // codebooks), persistent=False)
        if ema_decay is None:
            self.codebook = nn.Parameter(torch.randn(codebooks, codes, d) / d**0.5)
        else:  # LAPO's initialisation: U(-5/M, 5/M), zero counts, running sums start at the codes
            init = torch.empty(codebooks, codes, d).uniform_(-5 / codes, 5 / codes)
            self.register_buffer("codebook", init)
            self.register_buffer("ema_count", torch.zeros(codebooks, codes))
            self.register_buffer("ema_weight", init.clone())

    def codes_of(self, z: Tensor) -> Tensor:
        """Index of the nearest code per group: [B, D] -> int64 [B, G]."""
        x = z.detach().float().view(z.shape[0], self.groups, -1)
        e = self.codebook.detach().float()[self.book_of]  # [G, M, d]
        # |x - e|^2 = |x|^2 - 2 x.e + |e|^2; |x|^2 does not change the argmin.
        dist_ = e.pow(2).sum(-1).unsqueeze(0) - 2 * torch.einsum("bgd,gmd->bgm", x, e)
        return dist_.argmin(-1)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        with torch.autocast(device_type=z.device.type, enabled=False):
            x = z.float().view(z.shape[0], self.groups, -1)
            idx = self.codes_of(z)
            q = self.codebook.float()[self.book_of, idx]  # [B, G, d], read before any EMA update
            commit_loss = F.mse_loss(x, q.detach())
            metrics = {"vq/commit_loss": commit_loss.detach(), "vq/perplexity": perplexity(idx, self.codes)}
            if self.ema_decay is None:
                codebook_loss = F.mse_loss(q, x.detach())
                loss = codebook_loss + self.beta * commit_loss
                metrics["vq/codebook_loss"] = codebook_loss.detach()
            else:
                loss = self.beta * commit_loss
                # only training steps move the codebook (LAPO: ``if self.training``); no_grad calls
                # such as relabeling a dataset with a model left in train mode leave it alone
                if self.training and torch.is_grad_enabled():
                    self._ema_update(x.detach(), idx)
            z_q = q.detach() + (x - x.detach())  # straight-through: value exactly q, gradient to x
        return z_q.view_as(z), loss, metrics

    @torch.no_grad()
    def _ema_update(self, x: Tensor, idx: Tensor) -> None:
        """LAPO's update: EMA of code counts (Laplace-smoothed) and of the sums of assigned vectors;
        each code becomes sum / count. Groups sharing a codebook pool their assignments."""
        k, m, d = self.codebook.shape
        slot = (self.book_of * m + idx).flatten()  # [B*G] index into the K*M codes
        counts = torch.zeros(k * m, device=x.device).index_add_(0, slot, torch.ones_like(slot, dtype=x.dtype))
        sums = torch.zeros(k * m, d, device=x.device).index_add_(0, slot, x.reshape(-1, d))
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(counts)
            dist.all_reduce(sums)
        decay = self.ema_decay
        count = self.ema_count.mul_(decay).add_(counts.view(k, m), alpha=1 - decay)
        n = count.sum(-1, keepdim=True)
        count.copy_((count + self.eps) / (n + m * self.eps) * n)
        self.ema_weight.mul_(decay).add_(sums.view(k, m, d), alpha=1 - decay)
        self.codebook.copy_(self.ema_weight / count.unsqueeze(-1))


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
                    levels: Sequence[int], codebooks: int | None = None,
                    ema_decay: float | None = None) -> nn.Module:
    if kind == "vq":
        return VectorQuantizer(dim, groups, codes, beta, codebooks, ema_decay)
    if kind == "fsq":
        return FSQ(dim, levels)
    if kind == "none":
        return NoQuantizer()
    raise ValueError(f"unknown quantizer {kind!r}; expected vq, fsq or none")
