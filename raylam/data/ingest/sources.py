"""Where users' episodes come from: discovery (cheap, on the driver) and streaming reads (in Ray tasks).

``scan(cfg)`` lists every episode of a source as an :class:`EpisodeRef` and checks what can be
checked without decoding: files readable, frame size equal across episodes, action rows matching
the frame count where the count is known, LeRobot feature keys and HDF5 dataset keys present.
``read_episode(cfg, ref)`` streams one episode: resized uint8 frames one at a time, plus its
actions and states (small arrays, read whole). Every error is an :class:`IngestError` whose one
line names the file and what was expected.

Sources:
- ``video_folder``: ``<path>/**/<name>.<ext>`` for the extensions in VIDEO_SUFFIXES (PyAV decode).
- ``frame_folders``: ``<path>/<episode>/<frame>.jpg|png``, frames in name order (natural sort).
- ``lerobot``: a LeRobot v3 dataset read from its on-disk layout (meta/info.json, meta/episodes,
  data/chunk-*/file-*.parquet, videos/<key>/chunk-*/file-*.mp4) with pyarrow + PyAV.
- ``hdf5``: the LAOM paper's files: one group per trajectory holding ``obs`` uint8 [T,H,W,3],
  ``actions`` float [T,A], ``states`` float [T,S]; read in slices with h5py, never whole.

Action sidecars (video and frame folders): ``<actions_dir>/<episode>.npy|.parquet|.csv``, else
``<video stem>.npy|.parquet|.csv`` beside a video, or ``actions.npy|.parquet|.csv`` inside a frame
folder. An episode with a sidecar has true actions; rows must equal its frames (action t taken
after frame t), or be one fewer (the frame after the last action is then dropped, as collection does).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from raylam.data.ingest.config import IngestConfig

VIDEO_SUFFIXES = (".mp4", ".webm", ".mkv", ".mov", ".avi", ".m4v")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
SIDECAR_SUFFIXES = (".npy", ".parquet", ".csv")


class IngestError(ValueError):
    """Bad input: the message names the file (or key) and what was expected."""


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


# ---------------------------------------------------------------- helpers


def _natural_key(text: str):
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


def load_sidecar(path: str, columns: list[str] | None = None) -> np.ndarray:
    """An action sidecar as float32 [rows, A] (.npy [rows] or [rows, A]; parquet/CSV: numeric or list columns)."""
    suffix = Path(path).suffix.lower()
    try:
        if suffix == ".npy":
            array = np.load(path, allow_pickle=False)
        else:
            if suffix == ".parquet":
                import pyarrow.parquet as pq

                table = pq.read_table(path, columns=columns)
            else:
                import pyarrow.csv as pacsv

                table = pacsv.read_csv(path)
                if columns:
                    table = table.select(columns)
            parts = []
            for name in table.column_names:
                column = table.column(name).combine_chunks()
                values = column.to_numpy(zero_copy_only=False)
                parts.append(np.stack(values) if values.dtype == object else values[:, None])
            array = np.concatenate(parts, axis=1) if parts else np.zeros((0, 0))
    except (OSError, ValueError, KeyError) as err:
        raise IngestError(f"{path}: cannot read actions ({type(err).__name__}: {err})") from None
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.number):
        raise IngestError(f"{path}: expected numeric actions [rows, A], got {array.dtype} {list(array.shape)}")
    return array.astype(np.float32)


def sidecar_rows(path: str) -> int:
    """Rows of a sidecar without reading its values where the format allows."""
    suffix = Path(path).suffix.lower()
    try:
        if suffix == ".npy":
            return int(np.load(path, mmap_mode="r", allow_pickle=False).shape[0])
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            return int(pq.ParquetFile(path).metadata.num_rows)
    except (OSError, ValueError) as err:
        raise IngestError(f"{path}: cannot read actions ({type(err).__name__}: {err})") from None
    return len(load_sidecar(path))


def check_action_rows(ref: EpisodeRef, rows: int, frames: int) -> None:
    if rows not in (frames, frames - 1):
        what = ref.sidecar or f"{ref.path}[{ref.item}]"
        raise IngestError(f"{what}: {rows} action rows for {frames} frames of episode {ref.episode_id} "
                          f"({ref.path}); expected {frames} (or {frames - 1})")


def _find_sidecar(cfg: IngestConfig, episode_id: str, candidates: list[Path]) -> str | None:
    if cfg.actions_dir is not None:
        candidates = [Path(cfg.actions_dir) / f"{episode_id}{suffix}" for suffix in SIDECAR_SUFFIXES]
    found = [str(p) for p in candidates if p.is_file()]
    if len(found) > 1:
        raise IngestError(f"episode {episode_id}: several action sidecars {found}; expected one")
    return found[0] if found else None


def _existing_dir(path: str, what: str) -> Path:
    root = Path(path).expanduser()
    if not root.is_dir():
        raise IngestError(f"paths: {path} is not a folder (expected {what})")
    return root


# ---------------------------------------------------------------- video folders


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
        root = _existing_dir(path, f"a folder of videos {'|'.join(VIDEO_SUFFIXES)}")
        for video in sorted(root.rglob("*"), key=lambda p: _natural_key(str(p))):
            if video.suffix.lower() not in VIDEO_SUFFIXES or not video.is_file():
                continue
            episode_id = safe_id(str(video.relative_to(root).with_suffix("")))
            sidecar = _find_sidecar(cfg, episode_id, [video.with_suffix(s) for s in SIDECAR_SUFFIXES])
            refs.append(EpisodeRef(episode_id, str(video), sidecar=sidecar, has_actions=sidecar is not None))
    return refs


def _probe_video(ref: EpisodeRef) -> EpisodeRef:
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


# ---------------------------------------------------------------- frame folders


def _image_files(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()),
                  key=lambda p: _natural_key(p.name))


def scan_frame_folders(cfg: IngestConfig) -> list[EpisodeRef]:
    from PIL import Image

    refs = []
    for path in cfg.paths:
        root = _existing_dir(path, "<path>/<episode>/<frame>.jpg|png")
        for folder in sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: _natural_key(p.name)):
            images = _image_files(folder)
            if not images:
                continue
            try:
                with Image.open(images[0]) as image:
                    hw = (image.height, image.width)
            except OSError as err:
                raise IngestError(f"{images[0]}: unreadable image ({err}); expected a jpg or png") from None
            episode_id = safe_id(folder.name)
            sidecar = _find_sidecar(cfg, episode_id, [folder / f"actions{s}" for s in SIDECAR_SUFFIXES])
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


# ---------------------------------------------------------------- the paper's HDF5


def _h5_groups(handle) -> list[str]:
    return sorted(handle.keys(), key=_natural_key)


def scan_hdf5(cfg: IngestConfig) -> list[EpisodeRef]:
    import h5py

    keys = cfg.hdf5
    refs = []
    for path in cfg.paths:
        if not Path(path).is_file():
            raise IngestError(f"paths: {path} is not a file (expected an HDF5 file in the LAOM paper's layout)")
        try:
            handle = h5py.File(path, "r")
        except OSError as err:
            raise IngestError(f"{path}: not a readable HDF5 file ({err})") from None
        with handle:
            stem = safe_id(Path(path).stem)
            for group in _h5_groups(handle):
                node = handle[group]
                where = f"{path}:/{group}"
                if not isinstance(node, h5py.Group):
                    raise IngestError(f"{where}: expected a trajectory group holding {keys.obs_key!r}")
                for name, key in (("obs_key", keys.obs_key), ("action_key", keys.action_key),
                                  ("state_key", keys.state_key)):
                    if key is not None and key not in node:
                        raise IngestError(f"{where}: no dataset {key!r} (has {sorted(node.keys())}); expected "
                                          f"hdf5.{name} to name one")
                obs = node[keys.obs_key]
                if obs.ndim != 4 or obs.shape[-1] != 3 or obs.dtype != np.uint8:
                    raise IngestError(f"{where}/{keys.obs_key}: {obs.dtype} {list(obs.shape)}; expected uint8 [T, H, W, 3]")
                length = int(obs.shape[0])
                ref = EpisodeRef(f"{stem}_{safe_id(group)}", path, item=group, length=length,
                                 frame_hw=(int(obs.shape[1]), int(obs.shape[2])), has_actions=keys.action_key is not None,
                                 extra={"traj_return": float(node.attrs["traj_return"])} if "traj_return" in node.attrs else {})
                for key in (keys.action_key, keys.state_key):
                    if key is not None and node[key].shape[0] != length:
                        raise IngestError(f"{where}/{key}: {node[key].shape[0]} rows for {length} frames; expected {length}")
                refs.append(ref)
    return refs


def read_hdf5(cfg: IngestConfig, ref: EpisodeRef, chunk: int = 256) -> Iterator[np.ndarray]:
    import h5py

    with h5py.File(ref.path, "r") as handle:
        obs = handle[ref.item][cfg.hdf5.obs_key]
        for lo in range(0, obs.shape[0], chunk):
            for frame in obs[lo:lo + chunk]:  # one slice in memory at a time
                yield resize(frame, cfg.image_size)


def _hdf5_arrays(cfg: IngestConfig, ref: EpisodeRef) -> tuple[np.ndarray | None, np.ndarray | None]:
    import h5py

    with h5py.File(ref.path, "r") as handle:
        node = handle[ref.item]
        out = []
        for key in (cfg.hdf5.action_key, cfg.hdf5.state_key):
            out.append(None if key is None else np.asarray(node[key][:], np.float32).reshape(ref.length, -1))
    return out[0], out[1]


# ---------------------------------------------------------------- LeRobot v3


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
        root = _existing_dir(path, "a LeRobot v3 dataset root")
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


def _lerobot_arrays(cfg: IngestConfig, ref: EpisodeRef) -> tuple[np.ndarray | None, np.ndarray | None]:
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


# ---------------------------------------------------------------- dispatch


def scan(cfg: IngestConfig) -> list[EpisodeRef]:
    """Every episode of the source, sorted by id, checked before any frame is decoded."""
    refs = {"video_folder": scan_video_folder, "frame_folders": scan_frame_folders,
            "lerobot": scan_lerobot, "hdf5": scan_hdf5}[cfg.source](cfg)
    if not refs:
        raise IngestError(f"paths {cfg.paths}: no episodes found for source {cfg.source!r}")
    seen: dict[str, EpisodeRef] = {}
    for ref in refs:
        if ref.episode_id in seen:
            raise IngestError(f"episode id {ref.episode_id!r} of {ref.path} is also that of {seen[ref.episode_id].path}; "
                              "expected unique episode names")
        seen[ref.episode_id] = ref
    refs = sorted(refs, key=lambda r: _natural_key(r.episode_id))
    if cfg.max_episodes is not None:
        refs = refs[:cfg.max_episodes]
    if cfg.source == "video_folder":
        refs = [_probe_video(ref) for ref in refs]
    first = refs[0]
    for ref in refs:
        if tuple(ref.frame_hw) != tuple(first.frame_hw):
            raise IngestError(f"{ref.path}: frames are {ref.frame_hw[0]}x{ref.frame_hw[1]}; expected "
                              f"{first.frame_hw[0]}x{first.frame_hw[1]} as in {first.path} (every episode one size)")
        if ref.length is not None and ref.length < cfg.min_length:
            raise IngestError(f"{ref.path}: {ref.length} frames; expected at least min_length {cfg.min_length}")
        if ref.sidecar is not None and ref.length is not None:
            check_action_rows(ref, sidecar_rows(ref.sidecar), ref.length)
    return refs


def read_episode(cfg: IngestConfig, ref: EpisodeRef) -> EpisodeData:
    """Stream one episode (in the Ray task that writes its shard)."""
    actions = states = None
    if cfg.source == "video_folder":
        frames = read_video(cfg, ref)
    elif cfg.source == "frame_folders":
        frames = read_frames(cfg, ref)
    elif cfg.source == "hdf5":
        frames = read_hdf5(cfg, ref)
        actions, states = _hdf5_arrays(cfg, ref)
    else:
        frames = read_lerobot_video(cfg, ref)
        actions, states = _lerobot_arrays(cfg, ref)
    if ref.sidecar is not None:
        actions = load_sidecar(ref.sidecar, cfg.action_columns)
    meta = {"source": cfg.source, "source_path": ref.path, **({"source_item": ref.item} if ref.item else {})}
    if actions is not None and ref.length is not None:
        check_action_rows(ref, len(actions), ref.length)
    return EpisodeData(frames=frames, actions=actions, states=states, meta=meta,
                       max_frames=None if actions is None else len(actions))
