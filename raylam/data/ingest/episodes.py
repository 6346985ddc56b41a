"""What every source produces: episode references (discovered on the driver), streamed episodes,
the error that names bad input, and helpers shared by the sources."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from raylam.config import UserError


class IngestError(UserError, ValueError):
    """Bad input: the message names the file (or key) and what was expected; the CLI prints it as one
    line and exits 2 (a ValueError too, for callers that caught it as one)."""


@dataclass(frozen=True)
class EpisodeRef:
    """One episode of a source, as discovered on the driver (no frame decoded yet)."""

    episode_id: str
    path: str  # the video, the frame folder, the HDF5 file or the LeRobot root
    item: str = ""  # HDF5 group name; LeRobot episode index
    sidecar: str | None = None  # action sidecar file
    length: int | None = None  # frames, when known without decoding
    frame_hw: tuple[int, int] | None = None  # source frame size
    has_actions: bool = False
    extra: dict = field(default_factory=dict, compare=False, hash=False)


@dataclass
class EpisodeData:
    """A streamed episode: ``frames`` yields resized uint8 [H, W, 3]; ``actions``/``states`` are whole."""

    frames: Iterator[np.ndarray]
    actions: np.ndarray | None  # float32 [L, A]
    states: np.ndarray | None  # float32 [L, S]
    meta: dict
    max_frames: int | None = None  # stop after this many frames (a sidecar one row short drops the last frame)


def natural_key(text: str):
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def safe_id(text: str) -> str:
    """An episode id usable in a WebDataset key (no '/' or '.')."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", text).strip("_") or "episode"


def resize(frame: np.ndarray, size: int) -> np.ndarray:
    """uint8 [H, W, 3] -> [size, size, 3] (bilinear; the aspect ratio is not kept)."""
    if frame.shape[0] == size and frame.shape[1] == size:
        return np.ascontiguousarray(frame)
    from PIL import Image

    return np.asarray(Image.fromarray(frame).resize((size, size), Image.BILINEAR))


def check_action_rows(ref: EpisodeRef, rows: int, frames: int) -> None:
    if rows not in (frames, frames - 1):
        what = ref.sidecar or f"{ref.path}[{ref.item}]"
        raise IngestError(f"{what}: {rows} action rows for {frames} frames of episode {ref.episode_id} "
                          f"({ref.path}); expected {frames} (or {frames - 1})")


def existing_dir(path: str, what: str) -> Path:
    root = Path(path).expanduser()
    if not root.is_dir():
        raise IngestError(f"paths: {path} is not a folder (expected {what})")
    return root
