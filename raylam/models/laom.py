"""LAOM (latent action learning with latent temporal consistency), with optional supervision.

Per step, on a batch of (o_t, o_t+k, o_t+1) with k in 1..K:

    h_t, h_t+k = enc(aug(o_t)), enc(aug(o_t+k))      one shared encoder, one pass over all views
    z          = IDM(h_t, h_t+k)                      continuous latent action (up to 8192 dims)
    loss       = MSE(FDM(sg(h_t), z), sg(enc_ema(aug(o_t+1))))      latent, not pixel, prediction
               + sup_coef * MSE(W z_l, a_l)           laom_sup only, on the labeled rows/batch
               + probe losses                         detached inputs; never reach the LAM

The reported ``loss`` is the objective without the probes (terms: ``laom/latent_loss`` and the
unweighted ``laom/sup_loss``); the probes report ``probe/*`` (see ``Method.with_probes``).

``enc_ema`` is an EMA copy of the encoder (``after_step``). The FDM sees h_t detached, as in the
released code: the encoder is shaped only through z, so it cannot make the prediction easy by
itself. ``method: laom_sup`` switches the supervised head on; everything else is identical.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from raylam.models.base import PairEncoder, ema_update, masked_mse
from raylam.models.batch import Batch, to_float_image
from raylam.models.config import ModelConfig
from raylam.models.encoder import make_encoder
from raylam.models.heads import FDMHead, IDMHead
from raylam.models.probes import Probes


class LAOM(PairEncoder):
    def __init__(self, config: ModelConfig, action_dim: int, state_dim: int):
        super().__init__(config, action_dim, state_dim)
        c = config
        self.supervised = c.method == "laom_sup"
        self.encoder = make_encoder(c)
        f = self.encoder.feature_dim
        self.idm = IDMHead(f, c.hidden_dim, c.latent_dim, c.head_blocks)
        self.fdm = FDMHead(f, c.latent_dim, c.hidden_dim, c.head_blocks)
        self.action_head = nn.Linear(c.latent_dim, action_dim) if self.supervised else None
        self.probes = Probes(c.latent_dim, f, action_dim, state_dim) if c.probes else None
        self.target_encoder = copy.deepcopy(self.encoder).requires_grad_(False)
        self.steps = 0  # optimizer steps seen by after_step (for ema_every)

    def forward(self, batch: Batch, labeled_batch: Batch | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        c, n = self.config, len(batch)
        use_labeled = self.supervised and labeled_batch is not None
        starts, ends = [batch.obs], [batch.require("future_obs", c.method)]
        if use_labeled:
            starts.append(labeled_batch.obs)
            ends.append(labeled_batch.require("future_obs", c.method))
        # One encoder pass over every view: [o_t (unlabeled, labeled), o_t+k (unlabeled, labeled)].
        x = self.augment(to_float_image(torch.cat(starts + ends)))
        h_t, h_k = self.encoder.features(x).chunk(2)
        z = self.idm(h_t, h_k)

        pred = self.fdm(h_t[:n].detach(), z[:n])
        with torch.no_grad():
            target = self.target_encoder.features(self.augment(to_float_image(batch.require("next_obs", c.method))))
        if c.cosine_loss:
            latent_loss = 1 - F.cosine_similarity(pred.float(), target.float(), dim=-1).mean()
        else:
            latent_loss = F.mse_loss(pred.float(), target.float())
        loss = latent_loss
        metrics = {"laom/latent_loss": latent_loss.detach(),
                   "laom/latent_norm": z[:n].detach().float().norm(dim=-1).mean()}

        if self.supervised:
            if use_labeled:
                sup = F.mse_loss(self.action_head(z[n:]).float(), labeled_batch.require("actions", c.method).float())
            else:  # no separate labeled batch: supervise the labeled rows of this one
                sup = masked_mse(self.action_head(z), batch.require("actions", c.method), batch.label_mask())
            loss = loss + c.sup_coef * sup
            metrics["laom/sup_loss"] = sup.detach()

        loss = self.with_probes(loss, metrics, batch, latent=z[:n], features=h_t[:n])
        return loss, metrics

    def after_step(self) -> None:
        if self.steps % self.config.ema_every == 0:
            ema_update(self.target_encoder, self.encoder, self.config.ema_tau)
        self.steps += 1

    def pair_head(self, h_t: Tensor, h_next: Tensor) -> Tensor:
        return self.idm(h_t, h_next)  # z

    def predictions(self, batch: Batch) -> dict[str, tuple[Tensor, Tensor]]:
        """Probe/head predictions on (o_t, o_t+k) -- the views they trained on -- or (o_t, o_t+1)."""
        end = batch.future_obs if batch.future_obs is not None else batch.require("next_obs", self.config.method)
        z, h_t = self._infer(batch.obs, end)
        out = self.probes.predictions(batch, latent=z, features=h_t) if self.probes is not None else {}
        if self.supervised and batch.actions is not None:
            out["sup/action"] = (self.action_head(z), batch.actions)
        return out
