"""``raylam ingest``: users' own video, frame folders, LeRobot v3 datasets and the LAOM paper's HDF5
files become the sharded WebDataset layout + manifest that ``raylam collect`` writes and training reads.

``config`` holds :class:`IngestConfig`; ``sources`` discovers and streams the episodes of a source
(``folders``: videos and frame folders, ``sidecars``: their action files, ``hdf5``: the paper's
files, ``lerobot``: LeRobot v3), all as the ``episodes`` types; ``writer`` plans the shards and
writes them as Ray tasks (resumable like collection).
"""

from raylam.data.ingest.config import IngestConfig
from raylam.data.ingest.episodes import IngestError
from raylam.data.ingest.writer import ingest

__all__ = ["IngestConfig", "IngestError", "ingest"]
