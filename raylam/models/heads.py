"""MLP heads: the IDM head (h_t, h_t+k) -> z and the FDM head (h_t, z) -> h_t+1 of LAOM.

Both are the LAOM code's residual MLPs that re-read a *context* vector at every layer:
``x_i = block_i(W_i [x_{i-1}, ctx])``. Here ``W_i [x, ctx]`` is written as ``A_i x + C_i ctx``
and the ``C_i ctx`` of all layers is one matmul up front: the same function and parameter count,
but no concatenation of the (up to 25k-wide) context at every layer and one large GEMM instead
of three.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from raylam.models.encoder import init_weights


class MLPBlock(nn.Module):
    """Post-norm residual MLP block: LayerNorm(x + W2 relu6(W1 x))."""

    def __init__(self, dim: int, expand: int = 4):
        super().__init__()
        self.fc1 = nn.Linear(dim, expand * dim)
        self.fc2 = nn.Linear(expand * dim, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x + self.fc2(F.relu6(self.fc1(x))))


class ContextMLP(nn.Module):
    """out = W_end x_n,  x_i = block_i(A_i x_{i-1} + C_i ctx),  x_0 = ``inp`` (or nothing).

    IDM head: ctx = [h_t, h_t+k], no ``inp``.  FDM head: ctx = z, ``inp`` = h_t.
    """

    def __init__(self, ctx_dim: int, inp_dim: int, hidden: int, out_dim: int, blocks: int = 3):
        super().__init__()
        self.blocks_n = blocks
        self.ctx = nn.Linear(ctx_dim, blocks * hidden)
        first = [nn.Linear(inp_dim, hidden, bias=False)] if inp_dim else []
        self.inp = nn.ModuleList(first + [nn.Linear(hidden, hidden, bias=False) for _ in range(blocks - 1)])
        self.blocks = nn.ModuleList([MLPBlock(hidden) for _ in range(blocks)])
        self.out = nn.Linear(hidden, out_dim)
        init_weights(self)

    def forward(self, ctx: Tensor, inp: Tensor | None = None) -> Tensor:
        parts = self.ctx(ctx).chunk(self.blocks_n, dim=-1)
        layers = iter(self.inp)
        x = parts[0] if inp is None else parts[0] + next(layers)(inp)
        x = self.blocks[0](x)
        for part, block in zip(parts[1:], self.blocks[1:], strict=True):
            x = block(next(layers)(x) + part)
        return self.out(x)


class IDMHead(nn.Module):
    """(h_t, h_t+k) -> out_dim: a latent action (LAOM) or the true action (IDM baseline)."""

    def __init__(self, feature_dim: int, hidden: int, out_dim: int, blocks: int = 3):
        super().__init__()
        self.mlp = ContextMLP(2 * feature_dim, 0, hidden, out_dim, blocks)

    def forward(self, h_t: Tensor, h_next: Tensor) -> Tensor:
        return self.mlp(torch.cat([h_t, h_next], dim=-1))


class FDMHead(nn.Module):
    """(h_t, z) -> predicted embedding of o_t+1."""

    def __init__(self, feature_dim: int, latent_dim: int, hidden: int, blocks: int = 3):
        super().__init__()
        self.mlp = ContextMLP(latent_dim, feature_dim, hidden, feature_dim, blocks)

    def forward(self, h_t: Tensor, z: Tensor) -> Tensor:
        return self.mlp(z, h_t)


def mlp(in_dim: int, hidden: int, out_dim: int, layers: int = 2) -> nn.Sequential:
    """Plain ReLU MLP with ``layers`` hidden layers (the action decoder)."""
    mods: list[nn.Module] = []
    d = in_dim
    for _ in range(layers):
        mods += [nn.Linear(d, hidden), nn.ReLU()]
        d = hidden
    mods.append(nn.Linear(d, out_dim))
    net = nn.Sequential(*mods)
    init_weights(net)
    return net
