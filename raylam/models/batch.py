"""The typed batch every model's ``loss`` takes, and the uint8 -> float image conversion.

Layout: observations are uint8 ``[B, stack, H, W, C]`` -- exactly what stacking ``stack``
consecutive HWC frames gives, so the data pipeline never transposes or casts pixels. The model
turns them into float ``[B, stack*C, H, W]`` in [-1, 1] on the device (:func:`to_float_image`);
channel ``i*C + c`` is channel ``c`` of frame ``i`` (oldest first), as in the paper's code.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

_FIELDS = ("obs", "next_obs", "future_obs", "offset", "actions", "states", "labeled", "latents")


@dataclass
class Batch:
    """One training batch; tensors already on the model's device.

    obs         uint8   [B, stack, H, W, C]  o_t (with its ``stack - 1`` previous frames)
    next_obs    uint8   [B, stack, H, W, C]  o_{t+1}
    future_obs  uint8   [B, stack, H, W, C]  o_{t+k}, k = ``offset`` in 1..K
    offset      int64   [B]                  k
    actions     float32 [B, A]               a_t (present for every row; the truth for probes)
    states      float32 [B, S]               proprioceptive state at t (for probes)
    labeled     bool    [B]                  whether a_t may be used as a training label
    latents     float32 [B, D]               precomputed LAM latents z_t (latent BC, decoder)

    Only ``obs`` is required; each method reads the fields it needs and says which is missing.
    """

    obs: Tensor
    next_obs: Tensor | None = None
    future_obs: Tensor | None = None
    offset: Tensor | None = None
    actions: Tensor | None = None
    states: Tensor | None = None
    labeled: Tensor | None = None
    latents: Tensor | None = None

    def __len__(self) -> int:
        return int(self.obs.shape[0])

    def to(self, device: torch.device | str, non_blocking: bool = True) -> Batch:
        """A copy with every tensor on ``device`` (pinned host memory makes this asynchronous)."""
        moved = {
            f: (v.to(device, non_blocking=non_blocking) if isinstance(v, Tensor) else v)
            for f, v in self.as_dict().items()
        }
        return Batch(**moved)

    def as_dict(self) -> dict[str, Tensor | None]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def require(self, name: str, method: str) -> Tensor:
        """The field ``name``, or a clear error saying ``method`` needs it."""
        value = getattr(self, name)
        if value is None:
            raise ValueError(f"{method}: the batch has no {name!r}, which this method needs")
        return value

    def label_mask(self) -> Tensor:
        """Float weights [B]: 1 for rows whose action may be used as a label (all if no mask)."""
        if self.labeled is None:
            return torch.ones(len(self), device=self.obs.device)
        return self.labeled.to(torch.float32)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], device: torch.device | str | None = None) -> Batch:
        """Build from a mapping of arrays or tensors (e.g. a Ray Data numpy batch); extra keys are ignored."""
        if "obs" not in data:
            raise ValueError(f"batch mapping has no 'obs'; keys: {sorted(data)}")
        fields: dict[str, Tensor] = {}
        for name in _FIELDS:
            value = data.get(name)
            if value is None:
                continue
            tensor = torch.from_numpy(np.ascontiguousarray(value)) if isinstance(value, np.ndarray) else value
            fields[name] = tensor.to(device) if device is not None else tensor
        return cls(**fields)

    def validate(self, frame_stack: int, image_size: int, frame_channels: int = 3) -> None:
        """Check dtypes and shapes once (outside the hot loop) with messages naming the field."""
        expected = (frame_stack, image_size, image_size, frame_channels)
        n = len(self)
        for name in ("obs", "next_obs", "future_obs"):
            value = getattr(self, name)
            if value is None:
                continue
            if value.dtype != torch.uint8 or tuple(value.shape) != (n, *expected):
                raise ValueError(
                    f"batch.{name}: got {value.dtype} {tuple(value.shape)}, expected torch.uint8 "
                    f"[B, stack, H, W, C] = {(n, *expected)}"
                )
        for name, dtype, ndim in (
            ("offset", torch.int64, 1), ("actions", torch.float32, 2), ("states", torch.float32, 2),
            ("labeled", torch.bool, 1), ("latents", torch.float32, 2),
        ):
            value = getattr(self, name)
            if value is None:
                continue
            if value.dtype != dtype or value.ndim != ndim or value.shape[0] != n:
                raise ValueError(
                    f"batch.{name}: got {value.dtype} {tuple(value.shape)}, expected {dtype} with "
                    f"{ndim} dims and {n} rows"
                )


def to_float_image(obs: Tensor) -> Tensor:
    """uint8 [B, stack, H, W, C] -> float32 [B, stack*C, H, W] in [-1, 1], channels_last in memory.

    Stacking frames into channels is a copy of uint8 bytes into [B, H, W, stack*C]; viewing that
    as NCHW gives channels_last strides for free, which is what fast convolutions want.
    """
    if obs.ndim != 5:
        raise ValueError(f"expected uint8 observations [B, stack, H, W, C], got shape {tuple(obs.shape)}")
    b, s, h, w, c = obs.shape
    x = obs.permute(0, 2, 3, 1, 4).reshape(b, h, w, s * c).permute(0, 3, 1, 2)
    return x.float().mul(2.0 / 255.0).sub(1.0)


def to_uint8_frames(x: Tensor, frame_stack: int) -> Tensor:
    """Inverse of :func:`to_float_image` (for viewing reconstructions): [B, stack*C, H, W] -> uint8 layout."""
    b, sc, h, w = x.shape
    frames = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return frames.permute(0, 2, 3, 1).reshape(b, h, w, frame_stack, sc // frame_stack).permute(0, 3, 1, 2, 4)


def rows_to_batch(rows: dict[str, torch.Tensor], device: torch.device, latents: torch.Tensor | None = None) -> Batch:
    """Window rows (as iter_torch_batches yields them) -> a model Batch on ``device``.

    The next observation's stack is built here from the current stack and the next frame, so the
    pipeline ships 7 frames per window instead of 9.
    """
    obs = rows["obs"].to(device, non_blocking=True)
    next_obs = torch.cat([obs[:, 1:], rows["next_frame"].to(device, non_blocking=True)[:, None]], dim=1)
    return Batch(
        obs=obs,
        next_obs=next_obs,
        future_obs=rows["future_obs"].to(device, non_blocking=True),
        offset=rows["offset"].to(device, non_blocking=True),
        actions=rows["actions"].to(device, non_blocking=True),
        states=rows["states"].to(device, non_blocking=True),
        labeled=rows["labeled"].to(device, non_blocking=True),
        latents=None if "latents" not in rows else rows["latents"].to(device, non_blocking=True),
    )
