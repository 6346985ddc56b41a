"""The LAOM paper's HDF5 files: one group per trajectory holding ``obs`` uint8 [T, H, W, 3], ``actions``
float [T, A] and ``states`` float [T, S] (its ``collect_data.py``), read in slices with h5py, never whole."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from raylam.data.ingest.config import IngestConfig
from raylam.data.ingest.episodes import EpisodeRef, IngestError, natural_key, resize, safe_id


def _h5_groups(handle) -> list[str]:
    return sorted(handle.keys(), key=natural_key)


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


def hdf5_arrays(cfg: IngestConfig, ref: EpisodeRef) -> tuple[np.ndarray | None, np.ndarray | None]:
    import h5py

    with h5py.File(ref.path, "r") as handle:
        node = handle[ref.item]
        out = []
        for key in (cfg.hdf5.action_key, cfg.hdf5.state_key):
            out.append(None if key is None else np.asarray(node[key][:], np.float32).reshape(ref.length, -1))
    return out[0], out[1]


def hdf5_dims(cfg: IngestConfig, ref: EpisodeRef) -> dict[str, int]:
    import h5py

    with h5py.File(ref.path, "r") as handle:
        node = handle[ref.item]
        return {name: int(np.prod(node[key].shape[1:])) if key is not None else 0
                for name, key in (("action_dim", cfg.hdf5.action_key), ("state_dim", cfg.hdf5.state_key))}
