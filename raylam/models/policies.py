"""Policies on o_t and the action decoder on z.

``Policy`` is the paper's actor: IMPALA encoder (scale 32 in the paper), spatial mean, ReLU6,
linear. ``method: bc`` regresses the true action on labeled rows (the paper's "BC" line);
``method: latent_bc`` regresses the LAM's latent action z for every row. Either takes its targets
from a *labeler* instead when one is set: ``policy.set_labeler(lam.latent_action)`` labels each
batch on the fly with a frozen LAM (latent BC, as the paper) or ``idm.latent_action`` (the IDM
baseline's BC on relabeled data); otherwise latent BC reads precomputed ``batch.latents``.

``ActionDecoder`` maps z (or a latent policy's output) to the true action with an MLP, trained on
labeled rows. With ``set_source(policy.act)`` it reads z from a frozen policy, and its ``act(obs)``
is then the decoded policy that acts in the environment.

Labelers and sources are plain callables, not submodules: they stay frozen, out of the
optimizer and out of this model's checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from raylam.models.base import Method, masked_mse
from raylam.models.batch import Batch, to_float_image
from raylam.models.config import ModelConfig
from raylam.models.encoder import init_weights, make_encoder
from raylam.models.heads import mlp
from raylam.models.probes import Probes

Labeler = Callable[[Tensor, Tensor], Tensor]  # (obs, next_obs) uint8 -> targets [B, D]


class Policy(Method):
    def __init__(self, config: ModelConfig, action_dim: int, state_dim: int):
        super().__init__(config, action_dim, state_dim)
        c = config
        self.latent = c.method == "latent_bc"
        self.out_dim = c.latent_dim if self.latent else action_dim
        self.encoder = make_encoder(c)
        self.head = nn.Linear(self.encoder.out_shape[0], self.out_dim)
        init_weights(self.head)
        # latent BC: a linear probe from the predicted z to the true action (the paper's debug decoder)
        self.probes = Probes(c.latent_dim, 0, action_dim, 0) if (self.latent and c.probes) else None
        self.labeler: Labeler | None = None

    def set_labeler(self, labeler: Labeler | None) -> None:
        """Take targets from ``labeler(obs, next_obs)`` (e.g. ``lam.latent_action``) for every row."""
        self.labeler = labeler

    def _predict(self, x: Tensor) -> Tensor:
        pooled = self.encoder(x).mean(dim=(2, 3))
        return self.head(F.relu6(pooled))

    @torch.no_grad()
    def act(self, obs: Tensor) -> Tensor:
        """uint8 [B, stack, H, W, C] -> action [B, A] (bc) or latent action [B, latent_dim] (latent_bc)."""
        return self._predict(to_float_image(obs))

    def _targets(self, batch: Batch) -> tuple[Tensor, Tensor]:
        m = self.config.method
        if self.labeler is not None:
            with torch.no_grad():
                target = self.labeler(batch.obs, batch.require("next_obs", m))
            return target.float(), torch.ones(len(batch), device=target.device)
        if self.latent:
            target = batch.require("latents", m)
            return target, torch.ones(len(batch), device=target.device)
        return batch.require("actions", m), batch.label_mask()

    def forward(self, batch: Batch, labeled_batch: Batch | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """Masked MSE to the targets; ``labeled_batch`` (bc without labeler only) adds its rows."""
        rows = [batch]
        if labeled_batch is not None and not self.latent and self.labeler is None:
            rows.append(labeled_batch)
        targets, weights = zip(*[self._targets(b) for b in rows], strict=True)
        if len(rows) > 1:
            weights = (weights[0], torch.ones_like(weights[1]))  # every row of a labeled batch counts
        obs = torch.cat([b.obs for b in rows])
        pred = self._predict(self.augment(to_float_image(obs)))
        loss = masked_mse(pred, torch.cat(targets), torch.cat(weights))
        name = "latent_bc/latent_mse" if self.latent else "bc/action_mse"
        metrics = {name: loss.detach()}
        loss = self.with_probes(loss, metrics, batch, latent=pred[: len(batch)])
        return loss, metrics

    def predictions(self, batch: Batch) -> dict[str, tuple[Tensor, Tensor]]:
        pred = self._predict(to_float_image(batch.obs))
        out = self.probes.predictions(batch, latent=pred) if self.probes is not None else {}
        if not self.latent and batch.actions is not None:
            out["bc/action"] = (pred, batch.actions)
        if self.latent and (self.labeler is not None or batch.latents is not None):
            out["latent_bc/latent"] = (pred, self._targets(batch)[0])
        return out


class ActionDecoder(Method):
    def __init__(self, config: ModelConfig, action_dim: int, state_dim: int):
        super().__init__(config, action_dim, state_dim)
        self.net = mlp(config.latent_dim, config.decoder_hidden, action_dim)
        self.source: Callable[[Tensor], Tensor] | None = None

    def set_source(self, source: Callable[[Tensor], Tensor] | None) -> None:
        """Read z as ``source(obs)`` (e.g. a frozen latent policy's ``act``) instead of ``batch.latents``."""
        self.source = source

    def decode(self, z: Tensor) -> Tensor:
        """[B, latent_dim] -> true action [B, A]."""
        return self.net(z)

    def _latents(self, batch: Batch) -> Tensor:
        if self.source is not None:
            with torch.no_grad():
                return self.source(batch.obs).float()
        return batch.require("latents", self.config.method)

    @torch.no_grad()
    def act(self, obs: Tensor) -> Tensor:
        """The decoded policy: uint8 observations -> actions (needs ``set_source``)."""
        if self.source is None:
            raise RuntimeError("action_decoder.act needs set_source(policy.act) first")
        return self.decode(self.source(obs).float())

    def forward(self, batch: Batch, labeled_batch: Batch | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """Masked MSE to the true action on the labeled rows (and every row of ``labeled_batch``)."""
        m = self.config.method
        z, target, weight = self._latents(batch), batch.require("actions", m), batch.label_mask()
        if labeled_batch is not None:
            z = torch.cat([z, self._latents(labeled_batch)])
            target = torch.cat([target, labeled_batch.require("actions", m)])
            weight = torch.cat([weight, torch.ones(len(labeled_batch), device=weight.device)])
        loss = masked_mse(self.decode(z), target, weight)
        return loss, {"decoder/action_mse": loss.detach(), "loss": loss.detach()}

    def predictions(self, batch: Batch) -> dict[str, tuple[Tensor, Tensor]]:
        if batch.actions is None:
            return {}
        return {"decoder/action": (self.decode(self._latents(batch)), batch.actions)}
