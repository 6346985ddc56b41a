"""What a stage *is*: its resolved config plus the identities of everything it reads.

Two runs with the same identity train the same model, so a finished one is reused and an
interrupted one resumes; a changed config, a re-collected dataset or a retrained upstream stage
gives a new identity, hence a fresh Ray Train run directory (Train restores whatever checkpoint
its run directory holds, and must never hand a changed stage the old model).

Left out of the identity: where things live (storage, run names, input paths: inputs count by
their own identity, so moving data to object storage retrains nothing), how the work is placed
(workers' CPUs, GPUs, threads, decode CPUs), and bookkeeping (report/checkpoint cadence, retries,
logging, test hooks). A field at its default is left out too, so a field added to raylam later
does not make finished runs stale.
"""

from __future__ import annotations

import hashlib
import json

from raylam.config import to_dict
from raylam.data.manifest import MANIFEST
from raylam.data.storage import resolve
from raylam.train.artifacts import read_artifact

# dotted TrainConfig fields that do not change what a stage learns
PLACEMENT_FIELDS = (
    "storage_path", "run_name", "lam_run", "labels", "policy_run", "dataset",
    "use_gpu", "gpus_per_worker", "cpus_per_worker", "threads_per_worker", "resources_per_worker",
    "report_every", "checkpoint_every", "keep_checkpoints", "max_failures", "wandb", "fail_at_step",
    "step_delay_s", "wait_at_step", "wait_for_file", "log_level", "progress",
    "data.read_cpus", "data.max_cpus", "data.prefetch_batches", "data.progress_bars",
    "max_actors", "cpus_per_actor",  # a relabel stage's placement
)
INPUTS = ("lam_run", "labels", "policy_run")


def stage_identity(cfg) -> str:
    """A hex digest naming what ``cfg`` would train from its current inputs (they must exist)."""
    config = _without(to_dict(cfg), PLACEMENT_FIELDS)
    defaults = _without(to_dict(type(cfg)()), PLACEMENT_FIELDS)
    inputs = {"dataset": dataset_identity(cfg.dataset)}
    for key in INPUTS:
        path = getattr(cfg, key, None)
        if path:
            inputs[key] = run_identity(path)
    return digest({"config": _changes(config, defaults), "inputs": inputs})


def dataset_identity(uri: str) -> str:
    """The digest of what the dataset holds: its manifest's shards (with their sha256), splits and
    labels; not when or with which settings it was written (a rerun of collection that finds every
    shard done rewrites the manifest with a new date, and the data are the same)."""
    location = resolve(uri)
    if not location.exists(MANIFEST):
        raise FileNotFoundError(f"{location.url(MANIFEST)} does not exist: {uri} is not a raylam dataset "
                                "(run `raylam collect` or `raylam ingest` first)")
    manifest = location.read_json(MANIFEST)
    return digest({key: value for key, value in manifest.items() if key not in VOLATILE_MANIFEST_KEYS})


VOLATILE_MANIFEST_KEYS = ("created", "raylam_version", "config")


def run_identity(run_dir: str) -> str:
    """The identity a finished run recorded; runs from before identities by their artifact's
    checkpoint and finish time (they change whenever the run is retrained)."""
    artifact = read_artifact(run_dir)
    if "identity" in artifact:
        return artifact["identity"]
    return digest({key: artifact.get(key) for key in ("checkpoint", "labels", "finished")})


def digest(obj) -> str:
    """A hex digest of a JSON-able value (key order ignored): what names a stage, a dataset, a probe."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _without(config: dict, dotted: tuple[str, ...]) -> dict:
    out = json.loads(json.dumps(config))
    for name in dotted:
        *parents, last = name.split(".")
        node = out
        for part in parents:
            node = node.get(part, {})
        node.pop(last, None)
    return out


def _changes(config: dict, defaults: dict) -> dict:
    """The entries of ``config`` that differ from ``defaults`` (nested)."""
    out = {}
    for key, value in config.items():
        default = defaults.get(key, _MISSING)
        if isinstance(value, dict) and isinstance(default, dict):
            nested = _changes(value, default)
            if nested:
                out[key] = nested
        elif value != default:
            out[key] = value
    return out


_MISSING = object()
