"""IDM baseline: (o_t, o_t+1) -> true action, trained on labeled transitions only.

It is the paper's strong baseline without distractors: train it on the labeled subset, use
``latent_action`` (which here returns predicted *true* actions) to relabel every transition, then
behaviour-clone the relabeled data (``Policy.set_labeler(idm.latent_action)`` does it on the fly).
Architecture as the paper's: a shared encoder on both frames and the IDM MLP head.
"""

from __future__ import annotations

import torch
from torch import Tensor

from raylam.models.base import PairEncoder, masked_mse
from raylam.models.batch import Batch, to_float_image
from raylam.models.config import ModelConfig
from raylam.models.encoder import make_encoder
from raylam.models.heads import IDMHead
from raylam.models.probes import Probes


class IDM(PairEncoder):
    def __init__(self, config: ModelConfig, action_dim: int, state_dim: int):
        super().__init__(config, action_dim, state_dim)
        c = config
        self.encoder = make_encoder(c)
        self.head = IDMHead(self.encoder.feature_dim, c.hidden_dim, action_dim, c.head_blocks)
        self.probes = Probes(0, self.encoder.feature_dim, action_dim, state_dim) if c.probes else None

    def forward(self, batch: Batch, labeled_batch: Batch | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """Masked MSE on the labeled rows of ``batch`` plus every row of ``labeled_batch``."""
        m, n = self.config.method, len(batch)
        rows = [batch] if labeled_batch is None else [batch, labeled_batch]
        starts = [b.obs for b in rows]
        ends = [b.require("next_obs", m) for b in rows]
        h_t, h_next = self.encoder.features(self.augment(to_float_image(torch.cat(starts + ends)))).chunk(2)
        pred = self.head(h_t, h_next)
        target = torch.cat([b.require("actions", m) for b in rows])
        weight = batch.label_mask()
        if labeled_batch is not None:
            weight = torch.cat([weight, torch.ones(len(labeled_batch), device=weight.device)])
        loss = masked_mse(pred, target, weight)
        metrics = {"idm/action_mse": loss.detach()}
        loss = self.with_probes(loss, metrics, batch, features=h_t[:n])
        return loss, metrics

    def pair_head(self, h_t: Tensor, h_next: Tensor) -> Tensor:
        return self.head(h_t, h_next)  # the predicted true action a_t: the IDM's relabeling

    def predictions(self, batch: Batch) -> dict[str, tuple[Tensor, Tensor]]:
        pred, h_t = self._infer(batch.obs, batch.require("next_obs", self.config.method))
        out = self.probes.predictions(batch, features=h_t) if self.probes is not None else {}
        if batch.actions is not None:
            out["idm/action"] = (pred, batch.actions)
        return out
