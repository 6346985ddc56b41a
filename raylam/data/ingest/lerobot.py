"""LeRobot v3 datasets read from their on-disk layout with pyarrow + PyAV: ``meta/info.json`` (features,
path templates, fps), ``meta/episodes/*/*.parquet`` (each episode's length, data file, and video file
with the episode's ``from_timestamp`` in it), ``data/chunk-*/file-*.parquet`` (actions, states) and
``videos/<camera>/chunk-*/file-*.mp4`` (several episodes per file)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from raylam.data.ingest.config import IngestConfig
from raylam.data.ingest.episodes import EpisodeRef, IngestError, existing_dir, safe_id


def _lerobot_info(root: Path) -> dict:
    path = root / "meta" / "info.json"
    if not path.is_file():
        raise IngestError(f"{path}: missing; expected a LeRobot v3 dataset root")
    info = json.loads(path.read_text())
    version = str(info.get("codebase_version", ""))
    if not version.startswith("v3"):
        raise IngestError(f"{path}: codebase_version {version!r}; expected a LeRobot v3 dataset (v3.x)")
    return info


def _lerobot_episodes(root: Path):
    import pyarrow.parquet as pq

    files = sorted((root / "meta" / "episodes").rglob("*.parquet"))
    if not files:
        raise IngestError(f"{root / 'meta' / 'episodes'}: no parquet files; expected LeRobot v3 episode metadata")
    import pyarrow as pa

    return pa.concat_tables([pq.read_table(f) for f in files]).to_pylist()


def scan_lerobot(cfg: IngestConfig) -> list[EpisodeRef]:
    keys = cfg.lerobot
    refs = []
    for path in cfg.paths:
        root = existing_dir(path, "a LeRobot v3 dataset root")
        info = _lerobot_info(root)
        features = info.get("features", {})
        where = root / "meta" / "info.json"
        for name, key, kind in (("camera_key", keys.camera_key, "video"), ("action_key", keys.action_key, None),
                                ("state_key", keys.state_key, None)):
            if key is None:
                continue
            if key not in features:
                raise IngestError(f"{where}: lerobot.{name} {key!r} is not a feature; expected one of {sorted(features)}")
            if kind == "video" and features[key].get("dtype") != "video":
                raise IngestError(f"{where}: lerobot.camera_key {key!r} has dtype {features[key].get('dtype')!r}; "
                                  "expected a 'video' feature")
        shape = features[keys.camera_key].get("shape", [0, 0, 3])
        names = features[keys.camera_key].get("names") or ["height", "width", "channels"]
        hw = (int(shape[names.index("height")]), int(shape[names.index("width")])) if "height" in names else tuple(shape[:2])
        stem = safe_id(root.name)
        for episode in _lerobot_episodes(root):
            index = int(episode["episode_index"])
            video = info["video_path"].format(video_key=keys.camera_key,
                                              chunk_index=episode[f"videos/{keys.camera_key}/chunk_index"],
                                              file_index=episode[f"videos/{keys.camera_key}/file_index"])
            data = info["data_path"].format(chunk_index=episode["data/chunk_index"],
                                            file_index=episode["data/file_index"])
            prefix = f"{stem}_" if len(cfg.paths) > 1 else ""
            refs.append(EpisodeRef(f"{prefix}ep{index:06d}", str(root), item=str(index), length=int(episode["length"]),
                                   frame_hw=hw, has_actions=True,
                                   extra={"video": str(root / video), "data": str(root / data), "fps": float(info["fps"]),
                                          "from_timestamp": float(episode[f"videos/{keys.camera_key}/from_timestamp"])}))
    return refs


def read_lerobot_video(cfg: IngestConfig, ref: EpisodeRef) -> Iterator[np.ndarray]:
    """The episode's frames: those of the camera's mp4 from ``from_timestamp`` on, ``length`` of them."""
    import av

    start, fps, size = ref.extra["from_timestamp"], ref.extra["fps"], cfg.image_size
    path, count = ref.extra["video"], 0
    try:
        with av.open(path) as container:
            stream = container.streams.video[0]
            if start > 0:
                container.seek(int(start / stream.time_base), stream=stream, backward=True)
            for frame in container.decode(stream):
                if frame.time is not None and frame.time < start - 0.5 / fps:
                    continue
                if count == ref.length:
                    return
                count += 1
                yield frame.reformat(width=size, height=size, format="rgb24").to_ndarray()
    except (av.error.FFmpegError, OSError) as err:
        raise IngestError(f"{path}: unreadable video ({err}); expected the LeRobot camera's mp4") from None
    if count < ref.length:
        raise IngestError(f"{path}: {count} frames from {start:.3f} s for episode {ref.item}; expected {ref.length}")


def lerobot_arrays(cfg: IngestConfig, ref: EpisodeRef) -> tuple[np.ndarray | None, np.ndarray | None]:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    keys = cfg.lerobot
    columns = ["episode_index", "frame_index", keys.action_key] + ([keys.state_key] if keys.state_key else [])
    try:
        table = pq.read_table(ref.extra["data"], columns=columns,
                              filters=[("episode_index", "=", int(ref.item))])
    except (OSError, ValueError, KeyError) as err:
        raise IngestError(f"{ref.extra['data']}: cannot read columns {columns} ({err})") from None
    table = table.sort_by("frame_index")
    if table.num_rows != ref.length:
        raise IngestError(f"{ref.extra['data']}: {table.num_rows} rows for episode {ref.item}; "
                          f"expected its length {ref.length} (meta/episodes)")
    out = []
    for key in (keys.action_key, keys.state_key):
        if key is None:
            out.append(None)
            continue
        values = table.column(key).combine_chunks()
        flat = pc.list_flatten(values) if hasattr(values.type, "value_type") else values
        out.append(np.asarray(flat.to_numpy(zero_copy_only=False), np.float32).reshape(ref.length, -1))
    return out[0], out[1]


def lerobot_dims(cfg: IngestConfig, ref: EpisodeRef) -> dict[str, int]:
    features = json.loads((Path(ref.path) / "meta" / "info.json").read_text())["features"]
    keys = cfg.lerobot
    return {"action_dim": int(np.prod(features[keys.action_key]["shape"])),
            "state_dim": int(np.prod(features[keys.state_key]["shape"])) if keys.state_key else 0}
