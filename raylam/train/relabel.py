"""Relabeling: a trained LAM (or IDM) labels every transition with Ray Data batch inference.

Windows stream from the shards into an autoscaling pool of actors, each holding the model once
(on a GPU when the cluster has them); the labels land as Parquet partitioned by episode,
``<run>/labels/episode=<i>/*.parquet`` with columns ``step``, ``latent`` (the LAM's z, or the
IDM's predicted action) and ``action`` (the true one, for probes). A later stage joins them to
its windows one episode at a time, so nothing ever holds the whole table.
"""

from __future__ import annotations

import datetime as dt
import sys

import numpy as np
import pyarrow as pa

from raylam.cluster import cuda_device
from raylam.config import to_dict
from raylam.data.pipeline import (
    DatasetInfo,
    WindowSpec,
    configure_data_context,
    map_with_actor_pool,
    window_dataset,
)
from raylam.data.storage import resolve
from raylam.models.batch import rows_to_batch
from raylam.train.artifacts import ARTIFACT, StageResult, load_run
from raylam.train.config import RelabelConfig

LABELS = "labels"


def _fixed_list(array: np.ndarray) -> pa.FixedSizeListArray:
    array = np.ascontiguousarray(array, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(array.reshape(-1)), array.shape[1])


def writable(array: np.ndarray) -> np.ndarray:
    """``array`` as torch may wrap it: Ray Data hands batches out read-only (Arrow memory), and a
    tensor over read-only memory warns; a batch is small next to the model's work on it."""
    array = np.ascontiguousarray(array)
    return array if array.flags.writeable else array.copy()


class Labeler:
    """Ray Data actor: loads the model once, then labels batches of windows."""

    def __init__(self, lam_run: str, use_gpu: bool):
        import torch

        self.torch = torch
        self.device = cuda_device("relabel actor") if use_gpu else torch.device("cpu")
        self.model, _, _ = load_run(lam_run, self.device, expect_stages=("lam", "idm"))

    def __call__(self, rows: dict[str, np.ndarray]) -> pa.Table:
        torch = self.torch
        batch = rows_to_batch({k: torch.from_numpy(writable(v)) for k, v in rows.items()}, self.device)
        # fp32 whatever the training precision: the labels are regression targets (the released
        # code labels outside autocast too)
        with torch.inference_mode():
            z = self.model.latent_action(batch.obs, batch.next_obs).float().cpu().numpy()
        return pa.table({
            "episode": pa.array(rows["episode"], pa.int64()),
            "step": pa.array(rows["step"], pa.int64()),
            "latent": _fixed_list(z),
            "action": _fixed_list(rows["actions"]),
        })


def relabel(cfg: RelabelConfig, experiment: str = "raylam") -> StageResult:
    """Label every transition of the dataset (train and held-out splits); returns the artifact."""
    import ray

    from raylam.train.identity import stage_identity
    from raylam.train.trainer import run_name

    info = DatasetInfo(cfg.dataset)
    identity = stage_identity(cfg)
    _, meta, lam_artifact = load_run(cfg.lam_run, "cpu", expect_stages=("lam", "idm"))
    spec = WindowSpec(frame_stack=meta["model"]["frame_stack"], max_offset=1, seed=0)
    run_dir = resolve(f"{cfg.storage_path.rstrip('/')}/{run_name(cfg, experiment)}")
    run_dir.makedirs()
    out = run_dir.url(LABELS)
    run_dir.fs.delete_dir_contents(run_dir.path(LABELS), missing_dir_ok=True)  # a rerun replaces, never appends
    gpus = 1 if cfg.use_gpu else 0
    # Ray Data's progress bars where a terminal redraws them in place; a stage run as a Ray task
    # (concurrent_stages > 1, a cluster) has its bars forwarded line by line, hundreds of them
    configure_data_context(sys.stderr.isatty())
    splits = [s for s in ("train", "heldout") if info.manifest["splits"].get(s)]
    for split in splits:
        ds = window_dataset(info, spec, split=split, clips_per_task=cfg.data.clips_per_task, shuffle_seed=None,
                            num_cpus=cfg.data.read_cpus)
        labels = map_with_actor_pool(
            ds, Labeler,
            fn_constructor_kwargs={"lam_run": cfg.lam_run, "use_gpu": cfg.use_gpu},
            batch_size=cfg.batch_size, batch_format="numpy", num_gpus=gpus,
            num_cpus=0 if gpus else cfg.cpus_per_actor,
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=cfg.max_actors),
        )
        # the writes are light: they take a decode task's CPU share, not Ray Data's default whole CPU,
        # so that on a small node reads, the labeling actor and the writes fit at once
        labels.write_parquet(out, partition_cols=["episode"], ray_remote_args={"num_cpus": cfg.data.read_cpus})
    written = ray.data.read_parquet(out).count()
    expected = info.manifest["num_transitions"] - info.manifest["num_episodes"]
    if written != expected:
        raise RuntimeError(f"relabel wrote {written} labels to {out}, expected one per transition ({expected})")
    artifact = {
        "stage": "relabel",
        "identity": identity,
        "method": lam_artifact["method"],
        "lam_run": cfg.lam_run,
        "labels": out,
        "latent_dim": int(meta["model"]["latent_dim"]) if lam_artifact["method"] != "idm" else meta["action_dim"],
        "num_labels": written,
        "dataset": cfg.dataset,
        "config": to_dict(cfg),
        "requested_config": to_dict(cfg),
        "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    run_dir.write_json(ARTIFACT, artifact)
    return StageResult(run_dir.uri, artifact)
