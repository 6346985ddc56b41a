"""``raylam ingest``: users' own video, frame folders, LeRobot v3 datasets and the LAOM paper's HDF5
files become the sharded WebDataset layout + manifest that ``raylam collect`` writes and training reads.

``config`` holds :class:`IngestConfig`; ``sources`` discovers and streams the episodes of a source
(``folders``: videos and frame folders, ``sidecars``: their action files, ``hdf5``: the paper's
files, ``lerobot``: LeRobot v3), all as the ``episodes`` types; ``writer`` plans the shards and
writes them as Ray tasks (resumable like collection).
"""

from raylam.data.ingest.config import IngestConfig

__all__ = ["IngestConfig", "IngestError", "ingest"]


def __getattr__(name: str):
    """``ingest`` and ``IngestError`` on first use: the writer imports Ray, which `raylam --help` and
    config loading (``IngestConfig``) do not need."""
    if name == "ingest":
        from raylam.data.ingest.writer import ingest

        return ingest
    if name == "IngestError":
        from raylam.data.ingest.episodes import IngestError

        return IngestError
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
