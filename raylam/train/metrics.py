"""Per-step training metrics kept beside the run, on whatever storage the run lives on.

Ray Train V2 keeps only the latest reported metrics, and a GPU node's disk vanishes with the node,
so rank 0 writes its own history: ``<attempt>/metrics/part-<step>.jsonl`` (the rows reported since
the previous checkpoint, written when the checkpoint is) and TensorBoard event files under
``<attempt>/tensorboard`` (written locally and uploaded at each checkpoint when the run is on
object storage). After a failure the run restarts from its last checkpoint and re-reports the steps
after it; :func:`read_metrics` keeps the last row per step, so the history reads as one run.
"""

from __future__ import annotations

import json
import os
import tempfile

import pyarrow.fs as pafs

from raylam.data.storage import resolve

METRICS_DIR = "metrics"
TENSORBOARD_DIR = "tensorboard"


class MetricsLog:
    """Rank 0's report history: ``log`` every report, ``flush`` at every checkpoint and at the end."""

    def __init__(self, attempt_dir: str, tensorboard: bool = True):
        self.rows: list[dict] = []
        self.location = resolve(f"{attempt_dir.rstrip('/')}/{METRICS_DIR}")
        self.tensorboard_dest = resolve(f"{attempt_dir.rstrip('/')}/{TENSORBOARD_DIR}")
        self.remote = not isinstance(self.location.fs, pafs.LocalFileSystem)
        self.writer = None
        self.attempt_dir = attempt_dir.rstrip("/")
        self.synced: dict[str, str] = {}  # local folder -> its name beside the run (remote runs)
        if tensorboard:
            from tensorboardX import SummaryWriter

            self.local_events = tempfile.mkdtemp(prefix="raylam-tb-") if self.remote else self.tensorboard_dest.root
            self.writer = SummaryWriter(self.local_events)

    def wandb_dir(self) -> str:
        """Where wandb puts its ``wandb/`` folder (offline runs): the run's attempt directory when
        the run is local, else a local folder whose ``wandb/`` is uploaded there at every flush."""
        if not self.remote:
            return self.attempt_dir
        folder = tempfile.mkdtemp(prefix="raylam-wandb-")
        self.synced[f"{folder}/wandb"] = "wandb"
        return folder

    def log(self, values: dict, step: int) -> None:
        self.rows.append({**values, "step": step})
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(key, value, step)

    def flush(self, step: int) -> None:
        """Persist the rows since the last flush, and the event files, beside the run."""
        if self.rows:
            self.location.makedirs()
            text = "".join(json.dumps(row, sort_keys=True) + "\n" for row in self.rows).encode()
            self.location.write_atomic(f"part-{step:09d}.jsonl", lambda stream: stream.write(text))
            self.rows = []
        if self.writer is not None:
            self.writer.flush()
            if self.remote:
                self.tensorboard_dest.makedirs()
                pafs.copy_files(self.local_events, self.tensorboard_dest.root,
                                destination_filesystem=self.tensorboard_dest.fs)
        for folder, name in self.synced.items():
            if not os.path.isdir(folder):
                continue
            dest = resolve(f"{self.attempt_dir}/{name}")
            dest.makedirs()
            pafs.copy_files(folder, dest.root, destination_filesystem=dest.fs)

    def close(self, step: int) -> None:
        self.flush(step)
        if self.writer is not None:
            self.writer.close()


def read_metrics(run_dir: str) -> list[dict]:
    """The per-step history of the run at ``run_dir`` (a finished run: the attempt its artifact
    names; an unfinished one: its newest attempt), one row per reported step, in step order."""
    from raylam.train.artifacts import ARTIFACT

    run = resolve(run_dir)
    attempt = None
    if run.exists(ARTIFACT):
        artifact = run.read_json(ARTIFACT)
        attempt = artifact.get("attempt")
    if attempt is None:
        selector = pafs.FileSelector(run.root, allow_not_found=True)
        attempts = [info for info in run.fs.get_file_info(selector)
                    if info.type == pafs.FileType.Directory and info.base_name.startswith("train-")]
        if not attempts:
            raise FileNotFoundError(f"{run_dir}: no training attempt (train-*) with metrics")
        attempt = max(attempts, key=lambda info: info.mtime_ns or 0).base_name
    parts = resolve(f"{run.root if not _is_uri(run_dir) else run_dir.rstrip('/')}/{attempt}/{METRICS_DIR}")
    by_step: dict[int, dict] = {}
    for name in parts.list():
        if not name.endswith(".jsonl"):
            continue
        with parts.open_read(name) as stream:
            for line in stream.read().decode().splitlines():
                if line.strip():
                    row = json.loads(line)
                    by_step[int(row["step"])] = row
    return [by_step[step] for step in sorted(by_step)]


def _is_uri(path: str) -> bool:
    return "://" in path and not path.startswith("file://")
