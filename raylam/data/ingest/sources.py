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

from raylam.data.ingest import folders, hdf5, lerobot
from raylam.data.ingest.config import IngestConfig
from raylam.data.ingest.episodes import EpisodeData, EpisodeRef, IngestError, check_action_rows, natural_key
from raylam.data.ingest.sidecars import load_sidecar, sidecar_rows


def scan(cfg: IngestConfig) -> list[EpisodeRef]:
    """Every episode of the source, sorted by id, checked before any frame is decoded."""
    refs = {"video_folder": folders.scan_video_folder, "frame_folders": folders.scan_frame_folders,
            "lerobot": lerobot.scan_lerobot, "hdf5": hdf5.scan_hdf5}[cfg.source](cfg)
    if not refs:
        raise IngestError(f"paths {cfg.paths}: no episodes found for source {cfg.source!r}")
    seen: dict[str, EpisodeRef] = {}
    for ref in refs:
        if ref.episode_id in seen:
            raise IngestError(f"episode id {ref.episode_id!r} of {ref.path} is also that of {seen[ref.episode_id].path}; "
                              "expected unique episode names")
        seen[ref.episode_id] = ref
    refs = sorted(refs, key=lambda r: natural_key(r.episode_id))
    if cfg.max_episodes is not None:
        refs = refs[:cfg.max_episodes]
    if cfg.source == "video_folder":
        refs = [folders.probe_video(ref) for ref in refs]
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
        frames = folders.read_video(cfg, ref)
    elif cfg.source == "frame_folders":
        frames = folders.read_frames(cfg, ref)
    elif cfg.source == "hdf5":
        frames = hdf5.read_hdf5(cfg, ref)
        actions, states = hdf5.hdf5_arrays(cfg, ref)
    else:
        frames = lerobot.read_lerobot_video(cfg, ref)
        actions, states = lerobot.lerobot_arrays(cfg, ref)
    if ref.sidecar is not None:
        actions = load_sidecar(ref.sidecar, cfg.action_columns)
    meta = {"source": cfg.source, "source_path": ref.path, **({"source_item": ref.item} if ref.item else {})}
    if actions is not None and ref.length is not None:
        check_action_rows(ref, len(actions), ref.length)
    return EpisodeData(frames=frames, actions=actions, states=states, meta=meta,
                       max_frames=None if actions is None else len(actions))


def source_dims(cfg: IngestConfig, refs: list[EpisodeRef]) -> dict[str, int]:
    """Action and state widths of the dataset (0: the source has none), read from one episode; every
    other episode is checked against them as it is written."""
    if cfg.source == "hdf5":
        return hdf5.hdf5_dims(cfg, refs[0])
    if cfg.source == "lerobot":
        return lerobot.lerobot_dims(cfg, refs[0])
    with_actions = [r for r in refs if r.sidecar is not None]
    width = load_sidecar(with_actions[0].sidecar, cfg.action_columns).shape[1] if with_actions else 0
    return {"action_dim": width, "state_dim": 0}
