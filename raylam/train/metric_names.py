"""The names of the metrics a training stage reports, known before the stage runs.

A sweep's objective (``tune.metric``) must be one of them, or every trial runs to its end and
the sweep finds nothing. The names come from the model itself: a shrunken copy of the stage's
model takes one step on two fake windows, so the list cannot drift from what training reports.
"""

from __future__ import annotations

import torch

from raylam.models import Batch, build_model
from raylam.train.config import TrainConfig

# What the loop (``fit`` and its Ray adapter) adds to every report, whatever the model. ``loss`` is
# the model's own objective (probes excluded, see ``Method.with_probes``); the loop fills it in only
# for a model that does not report one.
LOOP_METRICS = ("loss", "step", "epoch", "lr", "samples_per_s", "data_wait_fraction",
                "timing/loop_start_unix", "timing/setup_s")


def _fake_batch(model_cfg, n: int, action_dim: int, state_dim: int) -> Batch:
    shape = (n, model_cfg.frame_stack, model_cfg.image_size, model_cfg.image_size, model_cfg.frame_channels)

    def frames() -> torch.Tensor:
        return torch.randint(0, 256, shape, dtype=torch.uint8)

    return Batch(obs=frames(), next_obs=frames(), future_obs=frames(), offset=torch.ones(n, dtype=torch.long),
                 actions=torch.randn(n, action_dim), states=torch.randn(n, state_dim) if state_dim else None,
                 labeled=torch.ones(n, dtype=torch.bool), latents=torch.randn(n, model_cfg.latent_dim))


def reported_metrics(cfg: TrainConfig, action_dim: int = 1, state_dim: int = 1) -> set[str]:
    """Every metric name a stage with ``cfg`` reports (held-out ones only when ``eval_every``)."""
    stages = len(cfg.model.encoder_channels)
    small = cfg.model.replace(encoder_scale=1, hidden_dim=8, head_blocks=1, decoder_hidden=8,
                              image_size=2 ** stages * 2, encoder_blocks=min(cfg.model.encoder_blocks, 1))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_model(small, action_dim, state_dim)
        batch = _fake_batch(small, 2, action_dim, state_dim)
        labeled = batch if cfg.model.method == "laom_sup" else None
        model.train()
        _, metrics = model(batch, labeled)
        names = set(metrics) | set(LOOP_METRICS)
        if cfg.eval_every:
            from raylam.models import evaluate

            names |= {f"heldout/{name}" for name in evaluate(model, [batch])}
    return names
