"""The paper's image augmentations, batched: one random homography and one grid_sample per batch.

The LAOM code picks, for every image, one of eight recipes -- nothing, shift, rotate,
perspective, shift-rotate, rotate-shift, rotate-perspective, perspective-rotate -- and runs each
recipe on its sub-batch with torchvision (a Python loop, edge padding, then a centre crop).
Every one of those operations is a projective map of the image plane, so here each image gets the
product of its recipe's matrices and the whole batch is warped by a single ``grid_sample`` with
border (edge) padding: same distribution of views, no loop over images or recipes, and it runs
inside ``torch.compile``. It works in float32 with autocast off (bf16 grids blur the warp).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

# The eight recipes as (first op, second op); 0 = identity, 1 = shift, 2 = rotate, 3 = perspective.
_FIRST = (0, 1, 2, 3, 1, 2, 2, 3)
_SECOND = (0, 0, 0, 0, 2, 1, 3, 2)
# torchvision's perspective works on the frame padded by 30 px of 64 before the centre crop.
_PERSPECTIVE_PAD = 30 / 64


def _shift(n: int, max_shift: float, size: int, device: torch.device) -> Tensor:
    """Whole-pixel translations in [-max_shift, max_shift] of the side, as [n, 3, 3]."""
    pad = round(max_shift * size)
    pixels = torch.randint(-pad, pad + 1, (n, 2), device=device).float()
    m = torch.eye(3, device=device).repeat(n, 1, 1)
    m[:, :2, 2] = pixels * (2.0 / size)  # normalised coordinates span 2 over `size` pixels
    return m


def _rotate(n: int, max_degrees: float, device: torch.device) -> Tensor:
    """Rotations about the centre by an angle in [-max_degrees, max_degrees], as [n, 3, 3]."""
    angle = (torch.rand(n, device=device) * 2 - 1) * math.radians(max_degrees)
    cos, sin = angle.cos(), angle.sin()
    m = torch.eye(3, device=device).repeat(n, 1, 1)
    m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1] = cos, -sin, sin, cos
    return m


def _perspective(n: int, distortion: float, device: torch.device) -> Tensor:
    """torchvision's RandomPerspective on the padded frame: each corner moves inward by up to
    ``distortion`` x half the padded side; returns the map from output to input coordinates."""
    half = 1.0 + 2 * _PERSPECTIVE_PAD  # padded half-side in normalised units of the frame
    i = torch.arange(4, device=device)  # corners (-1,-1), (1,-1), (1,1), (-1,1), made on the device
    corners = torch.stack([((i == 1) | (i == 2)).float() * 2 - 1, (i >= 2).float() * 2 - 1], -1) * half
    inward = -corners.sign() * torch.rand(n, 4, 2, device=device) * distortion * half
    moved = corners + inward
    return homography(moved, corners.expand(n, 4, 2))


def homography(src: Tensor, dst: Tensor) -> Tensor:
    """The [n, 3, 3] projective maps sending the 4 points ``src[i]`` to ``dst[i]`` ([n, 4, 2])."""
    n = src.shape[0]
    x, y = src[..., 0], src[..., 1]
    u, v = dst[..., 0], dst[..., 1]
    zeros, ones = torch.zeros_like(x), torch.ones_like(x)
    rows_u = torch.stack([x, y, ones, zeros, zeros, zeros, -u * x, -u * y], dim=-1)
    rows_v = torch.stack([zeros, zeros, zeros, x, y, ones, -v * x, -v * y], dim=-1)
    a = torch.cat([rows_u, rows_v], dim=1)  # [n, 8, 8]
    b = torch.cat([u, v], dim=1).unsqueeze(-1)  # [n, 8, 1]
    h = torch.linalg.solve_ex(a, b)[0].squeeze(-1)  # _ex: no error check, so no device sync
    return torch.cat([h, torch.ones(n, 1, device=src.device)], dim=1).view(n, 3, 3)


def random_warps(n: int, size: int, shift: float, rotate: float, perspective: float,
                 device: torch.device) -> Tensor:
    """One recipe per image, composed into [n, 3, 3] maps from output to input coordinates."""
    eye = torch.eye(3, device=device).expand(n, 3, 3)
    ops = torch.stack(
        [eye, _shift(n, shift, size, device), _rotate(n, rotate, device), _perspective(n, perspective, device)],
        dim=1,
    )  # [n, 4, 3, 3]
    recipe = torch.randint(0, len(_FIRST), (n,), device=device)
    # Look the recipe's ops up with comparisons rather than a table tensor: no host-to-device copy.
    first_op = sum(op * (recipe == r) for r, op in enumerate(_FIRST))
    second_op = sum(op * (recipe == r) for r, op in enumerate(_SECOND))
    rows = torch.arange(n, device=device)
    first, second = ops[rows, first_op], ops[rows, second_op]
    # Applying `first` then `second` samples the input at first(second(p)) for output pixel p.
    return first @ second


def warp(x: Tensor, maps: Tensor) -> Tensor:
    """Warp images [n, C, H, W] by output->input maps [n, 3, 3] (normalised coordinates)."""
    n, _, h, w = x.shape
    ys = (torch.arange(h, device=x.device, dtype=torch.float32) * 2 + 1) / h - 1  # pixel centres
    xs = (torch.arange(w, device=x.device, dtype=torch.float32) * 2 + 1) / w - 1
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    base = torch.stack([gx, gy, torch.ones_like(gx)], dim=-1).view(1, h * w, 3)
    points = base @ maps.transpose(1, 2)  # [n, h*w, 3]
    grid = points[..., :2] / points[..., 2:].clamp_min(1e-6)
    return F.grid_sample(x, grid.view(n, h, w, 2), mode="bilinear", padding_mode="border", align_corners=False)


def augment(x: Tensor, shift: float = 14 / 64, rotate: float = 90.0, perspective: float = 0.5) -> Tensor:
    """Augment a batch of float images [n, C, H, W]; every image draws its own recipe and parameters."""
    with torch.autocast(device_type=x.device.type, enabled=False):
        maps = random_warps(x.shape[0], x.shape[-1], shift, rotate, perspective, x.device)
        return warp(x.float(), maps)
