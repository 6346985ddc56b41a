"""Folders of videos (decoded with PyAV) and folders of frames (jpg/png), one episode per video or folder."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from raylam.data.ingest.config import IngestConfig
from raylam.data.ingest.episodes import EpisodeRef, IngestError, existing_dir, natural_key, safe_id
from raylam.data.ingest.sidecars import SIDECAR_SUFFIXES, find_sidecar

VIDEO_SUFFIXES = (".mp4", ".webm", ".mkv", ".mov", ".avi", ".m4v")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def _video_info(path: str) -> tuple[int | None, tuple[int, int]]:
    import av

    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise IngestError(f"{path}: holds no video stream; expected a video file")
            stream = container.streams.video[0]
            return (int(stream.frames) or None), (int(stream.codec_context.height), int(stream.codec_context.width))
    except (av.error.FFmpegError, OSError) as err:
        raise IngestError(f"{path}: unreadable video ({err}); expected a video file PyAV can decode") from None


def scan_video_folder(cfg: IngestConfig) -> list[EpisodeRef]:
    refs = []
    for path in cfg.paths:
        root = existing_dir(path, f"a folder of videos {'|'.join(VIDEO_SUFFIXES)}")
        for video in sorted(root.rglob("*"), key=lambda p: natural_key(str(p))):
            if video.suffix.lower() not in VIDEO_SUFFIXES or not video.is_file():
                continue
            episode_id = safe_id(str(video.relative_to(root).with_suffix("")))
            sidecar = find_sidecar(cfg, episode_id, [video.with_suffix(s) for s in SIDECAR_SUFFIXES])
            refs.append(EpisodeRef(episode_id, str(video), sidecar=sidecar, has_actions=sidecar is not None))
    return refs


def probe_video(ref: EpisodeRef) -> EpisodeRef:
    length, hw = _video_info(ref.path)
    return EpisodeRef(ref.episode_id, ref.path, ref.item, ref.sidecar, length, hw, ref.has_actions)


def read_video(cfg: IngestConfig, ref: EpisodeRef) -> Iterator[np.ndarray]:
    import av

    size, first = cfg.image_size, ref.frame_hw
    try:
        with av.open(ref.path) as container:
            for frame in container.decode(video=0):
                if first is not None and (frame.height, frame.width) != tuple(first):
                    raise IngestError(f"{ref.path}: frame size changes to {frame.height}x{frame.width} inside the "
                                      f"video; expected {first[0]}x{first[1]} throughout")
                yield frame.reformat(width=size, height=size, format="rgb24").to_ndarray()
    except av.error.FFmpegError as err:
        raise IngestError(f"{ref.path}: unreadable video ({err}); expected a video file PyAV can decode") from None


def _image_files(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()),
                  key=lambda p: natural_key(p.name))


def scan_frame_folders(cfg: IngestConfig) -> list[EpisodeRef]:
    from PIL import Image

    refs = []
    for path in cfg.paths:
        root = existing_dir(path, "<path>/<episode>/<frame>.jpg|png")
        for folder in sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: natural_key(p.name)):
            images = _image_files(folder)
            if not images:
                continue
            try:
                with Image.open(images[0]) as image:
                    hw = (image.height, image.width)
            except OSError as err:
                raise IngestError(f"{images[0]}: unreadable image ({err}); expected a jpg or png") from None
            episode_id = safe_id(folder.name)
            sidecar = find_sidecar(cfg, episode_id, [folder / f"actions{s}" for s in SIDECAR_SUFFIXES])
            refs.append(EpisodeRef(episode_id, str(folder), sidecar=sidecar, length=len(images), frame_hw=hw,
                                   has_actions=sidecar is not None))
    return refs


def read_frames(cfg: IngestConfig, ref: EpisodeRef) -> Iterator[np.ndarray]:
    from PIL import Image

    for path in _image_files(Path(ref.path)):
        try:
            with Image.open(path) as image:
                if (image.height, image.width) != tuple(ref.frame_hw):
                    raise IngestError(f"{path}: {image.height}x{image.width} frame; expected "
                                      f"{ref.frame_hw[0]}x{ref.frame_hw[1]} as the episode's first frame")
                frame = np.asarray(image.convert("RGB").resize((cfg.image_size, cfg.image_size), Image.BILINEAR))
        except OSError as err:
            raise IngestError(f"{path}: unreadable image ({err}); expected a jpg or png") from None
        yield frame
