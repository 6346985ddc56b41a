"""Linear probes of a finished LAM (or IDM) run, streamed from the dataset's shards.

The paper's diagnostic of latent-action quality: how much of the true action is *linearly*
decodable from z, and of the proprioceptive state from the encoder's features. The probes are
ridge regressions fitted in closed form on frozen model outputs. Windows stream from the shards
through Ray Data; the fit keeps only x'x and x'y, the score only per-dimension sums, so the
dataset is never held in memory. Fitted on ``fit_split`` (the LAM's training episodes), scored on
``test_split`` (held-out episodes the LAM never saw).

:func:`probe_run` runs as Ray work on the cluster: a pool of Ray Data actors (a GPU each when the
cluster has GPUs) loads the LAM once, computes the probe inputs and reduces every
``stats_windows`` windows to sufficient statistics (x'x, x'y and counts for the fit; per-dimension
error sums for the score); the driver only adds them up and solves the ridge system, and never
loads the model. :func:`stream_probes` is the same computation in one process, for any inputs.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import numpy as np
import torch

from raylam.cluster import cluster_resources
from raylam.data.pipeline import (
    DatasetInfo,
    WindowSpec,
    configure_data_context,
    map_with_actor_pool,
    window_dataset,
)
from raylam.eval.config import ProbeConfig
from raylam.models import Batch, Moments, RidgeFit
from raylam.models.batch import rows_to_batch
from raylam.models.probes import finite_rows
from raylam.train.artifacts import load_run
from raylam.train.relabel import writable


def _windows(info: DatasetInfo, frame_stack: int, split: str, limit: int | None, cfg: ProbeConfig, device):
    spec = WindowSpec(frame_stack=frame_stack, max_offset=1, seed=0)
    ds = window_dataset(info, spec, split=split, shuffle_seed=0, num_cpus=1.0)
    if limit is not None:
        ds = ds.limit(limit)
    for rows in ds.iter_torch_batches(batch_size=cfg.batch_size):
        yield rows_to_batch(rows, device)


def _features(maps: torch.Tensor, how: str) -> torch.Tensor:
    return maps.mean(dim=(2, 3)) if how == "pooled" else maps.permute(0, 2, 3, 1).flatten(1)


def _score(moments: Moments) -> dict:
    mse_dims, r2_dims = moments.per_dim()
    mse, r2 = moments.result()
    return {"mse": mse, "r2": r2, "r2_pooled": moments.pooled_r2(), "mse_per_dim": mse_dims, "r2_per_dim": r2_dims}


def _check_splits(info: DatasetInfo, cfg: ProbeConfig) -> None:
    for split in (cfg.fit_split, cfg.test_split):
        if not info.manifest["splits"].get(split):
            have = sorted(k for k, v in info.manifest["splits"].items() if v)
            raise ValueError(f"probe: dataset {info.uri} has no {split!r} split (has {have}); set evaluate.probe.*_split")


ProbeInputs = Callable[[Batch], tuple[torch.Tensor, torch.Tensor]]  # batch -> (probe input for a, for s)


@torch.no_grad()
def stream_probes(info: DatasetInfo, frame_stack: int, cfg: ProbeConfig, inputs: ProbeInputs,
                  device: str | torch.device = "cpu") -> dict:
    """Fit ridge probes x_a -> action and x_s -> state on ``cfg.fit_split``, score them on ``cfg.test_split``.

    ``inputs(batch)`` gives (x_a, x_s) for a batch of windows; the two passes stream through Ray Data.
    """
    _check_splits(info, cfg)
    configure_data_context(False)
    skipped = probes_skipped(info)
    for name, reason in skipped.items():
        print(f"   {name} probe skipped: {reason}", flush=True)
    kinds = [k for k in ("action", "state") if k not in skipped]
    fits = {name: RidgeFit() for name in kinds}
    for batch in _windows(info, frame_stack, cfg.fit_split, cfg.max_fit_windows, cfg, device):
        x = dict(zip(("action", "state"), inputs(batch), strict=True))
        for name in kinds:  # rows of episodes without actions (NaN) are left out
            x_kept, y_kept = finite_rows(x[name], batch.actions if name == "action" else batch.states)
            if len(y_kept):
                fits[name].add(x_kept, y_kept)
    weights = {name: fit.solve(cfg.ridge) for name, fit in fits.items()}
    scores = {name: Moments() for name in kinds}
    for batch in _windows(info, frame_stack, cfg.test_split, None, cfg, device):
        x = dict(zip(("action", "state"), inputs(batch), strict=True))
        for name in kinds:
            pred, y = finite_rows(RidgeFit.predict(x[name], weights[name]),
                                  batch.actions if name == "action" else batch.states)
            if len(y):
                scores[name].add(pred, y)
    out = {name: _score(scores[name]) for name in kinds}
    out.update({name: {"skipped": reason} for name, reason in skipped.items()})
    return {**out, "fit_windows": fits[kinds[0]].n if kinds else 0,
            "test_windows": scores[kinds[0]].n if kinds else 0}


def probes_skipped(info: DatasetInfo) -> dict[str, str]:
    """Probes this dataset cannot score, with the reason (imported data may lack actions or states)."""
    out = {}
    if not info.manifest.get("action_dim"):
        out["action"] = "the dataset has no actions"
    if not info.manifest.get("state_dim"):
        out["state"] = "the dataset has no states (state_dim 0)"
    return out


_FIT_KEYS, _SCORE_KEYS = ("xtx", "xty"), ("sse", "sum", "sumsq")
_WINDOW_KEYS = ("obs", "next_frame", "future_obs", "offset", "actions", "states", "labeled")


class ProbeStatistics:
    """Ray Data actor: the LAM's probe inputs for windows, reduced to sufficient statistics.

    Without ``weights`` it sums x'x and x'y of the ridge fits; with them (the solved probes) it sums
    the squared errors and the target moments of the score. One output row per input batch.
    """

    def __init__(self, run_dir: str, state_features: str, batch_size: int, use_gpu: bool,
                 weights: dict[str, np.ndarray] | None = None):
        from raylam.cluster import cuda_device

        self.device = cuda_device("probe actor") if use_gpu else torch.device("cpu")
        self.model, _, _ = load_run(run_dir, self.device, expect_stages=("lam", "idm"))
        self.state_features, self.batch_size = state_features, batch_size
        self.weights = None if weights is None else {k: torch.from_numpy(writable(v)).to(self.device)
                                                     for k, v in weights.items()}

    @torch.no_grad()
    def __call__(self, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(rows["actions"])
        has_states = "states" in rows and rows["states"].ndim == 2 and rows["states"].shape[1] > 0
        sums: dict[str, RidgeFit | Moments] = {}
        for begin in range(0, n, self.batch_size):
            chunk = {k: torch.from_numpy(writable(rows[k][begin:begin + self.batch_size]))
                     for k in _WINDOW_KEYS if k in rows}
            if not has_states:  # a dataset without proprioceptive states: the action probe only
                chunk["states"] = torch.zeros(len(chunk["actions"]), 0)
            batch = rows_to_batch(chunk, self.device)
            z, maps = self.model.probe_inputs(batch.obs, batch.next_obs)
            pairs = {}
            if batch.actions.shape[-1] > 0:
                pairs["action"] = (z, batch.actions)
            if has_states:
                pairs["state"] = (_features(maps, self.state_features), batch.states)
            for name, (x, y) in pairs.items():
                x, y = finite_rows(x, y)  # rows of episodes without actions (NaN) are left out
                if not len(y):
                    continue
                if self.weights is None:
                    sums.setdefault(name, RidgeFit()).add(x, y)
                else:
                    sums.setdefault(name, Moments()).add(RidgeFit.predict(x, self.weights[name]), y)
        out = {"n": np.array([n], dtype=np.int64)}
        for name, total in sums.items():
            keys = _FIT_KEYS if self.weights is None else _SCORE_KEYS
            out[f"{name}/n"] = np.array([total.n], dtype=np.int64)
            for key in keys:
                out[f"{name}/{key}"] = getattr(total, key).cpu().numpy()[None]
        return out


def _run_meta(run_dir: str) -> tuple[dict, dict]:
    """(checkpoint meta, artifact) of a LAM run, read from storage without loading the model."""
    from raylam.data.storage import resolve
    from raylam.train.artifacts import read_artifact
    from raylam.train.checkpoint import CHECKPOINT_META

    artifact = read_artifact(run_dir, expect_stages=("lam", "idm"))
    if "checkpoint" not in artifact:
        raise ValueError(f"{run_dir}: artifact names no checkpoint (stage {artifact['stage']})")
    fs = resolve(run_dir).fs
    with fs.open_input_stream(f"{artifact['checkpoint'].rstrip('/')}/{CHECKPOINT_META}") as stream:
        return json.loads(stream.read()), artifact


def _summed(ds) -> dict[str, torch.Tensor]:
    """Column sums of the statistics rows the actors produced (float64 / int64)."""
    totals: dict[str, np.ndarray] = {}
    for rows in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for key, value in rows.items():
            part = np.asarray(value).sum(axis=0)
            totals[key] = part if key not in totals else totals[key] + part
    if not totals:
        raise ValueError("probe: no windows reached the probe actors")
    return {k: torch.from_numpy(writable(np.asarray(v))) for k, v in totals.items()}


def probe_run(run_dir: str, cfg: ProbeConfig, dataset: str | None = None) -> dict:
    """Fit and score the action probe (z -> a) and the state probe (features -> s) of one LAM run,
    as Ray work (see the module docstring).

    Returns ``{"action": {mse, r2, mse_per_dim, r2_per_dim}, "state": {...}, "fit_windows",
    "test_windows", "latent_dim", "wall_s"}``, a probe the dataset cannot score as ``{"skipped":
    reason}`` (imported data without states or actions; rows without actions are left out); R^2 is 1 - SSE/SST
    per dimension (0 = predicting the held-out mean), overall MSE and R^2 are means over dimensions.
    """
    import ray

    start = time.perf_counter()
    meta, artifact = _run_meta(run_dir)
    info = DatasetInfo(dataset or artifact["dataset"])
    _check_splits(info, cfg)
    configure_data_context(False)
    use_gpu = cfg.use_gpu if cfg.use_gpu is not None else cluster_resources().get("GPU", 0) > 0
    frame_stack = meta["model"]["frame_stack"]
    spec = WindowSpec(frame_stack=frame_stack, max_offset=1, seed=0)

    def statistics(split: str, limit: int | None, weights: dict | None) -> dict[str, torch.Tensor]:
        ds = window_dataset(info, spec, split=split, shuffle_seed=0, num_cpus=1.0)
        if limit is not None:
            ds = ds.limit(limit)
        ds = map_with_actor_pool(ds, ProbeStatistics, batch_size=cfg.stats_windows, batch_format="numpy",
                                 fn_constructor_kwargs={"run_dir": run_dir, "state_features": cfg.state_features,
                                                        "batch_size": cfg.batch_size, "use_gpu": use_gpu,
                                                        "weights": weights},
                                 # a pool that grows to num_actors as resources allow: a fixed pool
                                 # holding every CPU would leave none for the tasks that read the shards
                                 compute=ray.data.ActorPoolStrategy(min_size=1, max_size=cfg.num_actors),
                                 num_gpus=1 if use_gpu else 0, num_cpus=0 if use_gpu else 1)
        return _summed(ds)

    skipped = probes_skipped(info)
    for name, reason in skipped.items():
        print(f"   {name} probe skipped: {reason}", flush=True)
    fit = statistics(cfg.fit_split, cfg.max_fit_windows, None)
    names = [name for name in ("action", "state") if f"{name}/xtx" in fit and name not in skipped]
    weights = {}
    for name in names:
        ridge = RidgeFit()
        ridge.n, ridge.xtx, ridge.xty = int(fit[f"{name}/n"]), fit[f"{name}/xtx"], fit[f"{name}/xty"]
        weights[name] = ridge.solve(cfg.ridge).numpy()
    score = statistics(cfg.test_split, None, weights)
    out: dict = {"fit_windows": int(fit["n"]), "test_windows": int(score["n"])}
    out.update({name: {"skipped": reason} for name, reason in skipped.items()})
    for name in names:
        moments = Moments()
        moments.n = int(score[f"{name}/n"])
        moments.sse, moments.sum, moments.sumsq = (score[f"{name}/{k}"] for k in _SCORE_KEYS)
        out[name] = _score(moments)
    out["latent_dim"] = int(meta["model"]["latent_dim"]) if meta["model"]["method"] != "idm" else meta["action_dim"]
    out["wall_s"] = time.perf_counter() - start
    return out
