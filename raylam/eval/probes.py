"""Linear probes of a finished LAM (or IDM) run, streamed from the dataset's shards.

The paper's diagnostic of latent-action quality: how much of the true action is *linearly*
decodable from z, and of the proprioceptive state from the encoder's features. The probes are
ridge regressions fitted in closed form on frozen model outputs. Windows stream from the shards
through Ray Data; the fit keeps only x'x and x'y, the score only per-dimension sums, so the
dataset is never held in memory. Fitted on ``fit_split`` (the LAM's training episodes), scored on
``test_split`` (held-out episodes the LAM never saw).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from raylam.data.pipeline import DatasetInfo, WindowSpec, configure_data_context, window_dataset
from raylam.eval.config import ProbeConfig
from raylam.models import Batch, Moments, RidgeFit
from raylam.models.batch import rows_to_batch
from raylam.train.artifacts import load_run


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
    return {"mse": mse, "r2": r2, "mse_per_dim": mse_dims, "r2_per_dim": r2_dims}


ProbeInputs = Callable[[Batch], tuple[torch.Tensor, torch.Tensor]]  # batch -> (probe input for a, for s)


@torch.no_grad()
def stream_probes(info: DatasetInfo, frame_stack: int, cfg: ProbeConfig, inputs: ProbeInputs,
                  device: str | torch.device = "cpu") -> dict:
    """Fit ridge probes x_a -> action and x_s -> state on ``cfg.fit_split``, score them on ``cfg.test_split``.

    ``inputs(batch)`` gives (x_a, x_s) for a batch of windows; the two passes stream through Ray Data.
    """
    for split in (cfg.fit_split, cfg.test_split):
        if not info.manifest["splits"].get(split):
            have = sorted(k for k, v in info.manifest["splits"].items() if v)
            raise ValueError(f"probe: dataset {info.uri} has no {split!r} split (has {have}); set evaluate.probe.*_split")
    configure_data_context(False)
    fits = {"action": RidgeFit(), "state": RidgeFit()}
    for batch in _windows(info, frame_stack, cfg.fit_split, cfg.max_fit_windows, cfg, device):
        x_action, x_state = inputs(batch)
        fits["action"].add(x_action, batch.actions)
        fits["state"].add(x_state, batch.states)
    weights = {name: fit.solve(cfg.ridge) for name, fit in fits.items()}
    scores = {"action": Moments(), "state": Moments()}
    for batch in _windows(info, frame_stack, cfg.test_split, None, cfg, device):
        x_action, x_state = inputs(batch)
        scores["action"].add(RidgeFit.predict(x_action, weights["action"]), batch.actions)
        scores["state"].add(RidgeFit.predict(x_state, weights["state"]), batch.states)
    return {"action": _score(scores["action"]), "state": _score(scores["state"]),
            "fit_windows": fits["action"].n, "test_windows": scores["action"].n}


def probe_run(run_dir: str, cfg: ProbeConfig, dataset: str | None = None, device: str | None = None) -> dict:
    """Fit and score the action probe (z -> a) and the state probe (features -> s) of one LAM run.

    Returns ``{"action": {mse, r2, mse_per_dim, r2_per_dim}, "state": {...}, "fit_windows",
    "test_windows", "latent_dim", "wall_s"}``; R^2 is 1 - SSE/SST per dimension (0 = predicting the
    held-out mean), overall MSE and R^2 are means over dimensions.
    """
    import ray

    start = time.perf_counter()
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, meta, artifact = load_run(run_dir, device, expect_stages=("lam", "idm"))
    info = DatasetInfo(dataset or artifact["dataset"])
    if not ray.is_initialized():
        ray.init()

    def inputs(batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        z, maps = model.probe_inputs(batch.obs, batch.next_obs)
        return z, _features(maps, cfg.state_features)

    out = stream_probes(info, meta["model"]["frame_stack"], cfg, inputs, device)
    out["latent_dim"] = int(meta["model"]["latent_dim"]) if meta["model"]["method"] != "idm" else meta["action_dim"]
    out["wall_s"] = time.perf_counter() - start
    return out
