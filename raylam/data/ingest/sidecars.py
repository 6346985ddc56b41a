"""Action sidecars: one file of actions per episode of a video or frame folder (.npy, .parquet, .csv).

Where they are looked for: ``<actions_dir>/<episode>.<ext>`` when ``ingest.actions_dir`` is set,
else ``<video stem>.<ext>`` beside a video or ``actions.<ext>`` inside a frame folder.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from raylam.data.ingest.config import IngestConfig
from raylam.data.ingest.episodes import IngestError

SIDECAR_SUFFIXES = (".npy", ".parquet", ".csv")


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


def find_sidecar(cfg: IngestConfig, episode_id: str, candidates: list[Path]) -> str | None:
    if cfg.actions_dir is not None:
        candidates = [Path(cfg.actions_dir) / f"{episode_id}{suffix}" for suffix in SIDECAR_SUFFIXES]
    found = [str(p) for p in candidates if p.is_file()]
    if len(found) > 1:
        raise IngestError(f"episode {episode_id}: several action sidecars {found}; expected one")
    return found[0] if found else None
