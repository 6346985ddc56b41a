"""LAPO: a latent IDM trained through a pixel-space forward model.

    z   = Q(W gelu(enc_idm([o_t, o_t+k])))    IDM on the two observations stacked in channels
    o^  = dec([enc_fdm(o_t), reshape(P z)])   FDM with its own encoder, mirrored decoder, tanh
    loss = MSE(o^, o_t+1) + quantizer loss    reported as ``loss``: lapo/recon_loss + lapo/quantizer_loss
         + probe losses                       minimised in the same step, reported apart (probe/*)

Two variants, picked by ``quantizer``:

- ``none`` with ``max_offset: 10``, latent 8192 (``ModelConfig.paper("lapo")``): the LAPO baseline
  as the LAOM paper ran it (dunnolab/laom ``train_lapo.py``): continuous z of (o_t, o_t+k) with
  k ~ U{1..K} per sample, trained to reconstruct o_t+1 (all stacked frames, pixel MSE). Relabeling
  (``latent_action``) reads (o_t, o_t+1), as its ``lam.label(obs, next_obs)``.
- ``vq`` with ``max_offset: 1``, latent 128 (``paper("lapo", quantizer="vq")``): the LAPO paper's
  quantised single-step latent, EMA codebooks shared by groups (see ``quantize.py``).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from raylam.models.base import Method
from raylam.models.batch import Batch, to_float_image
from raylam.models.config import ModelConfig
from raylam.models.encoder import ImpalaDecoder, init_weights, make_encoder
from raylam.models.probes import Probes
from raylam.models.quantize import build_quantizer


class LAPO(Method):
    def __init__(self, config: ModelConfig, action_dim: int, state_dim: int):
        super().__init__(config, action_dim, state_dim)
        c = config
        self.idm_encoder = make_encoder(c, in_channels=2 * c.in_channels)
        self.idm_out = nn.Linear(self.idm_encoder.feature_dim, c.latent_dim)
        self.quantizer = build_quantizer(c.quantizer, c.latent_dim, c.vq_groups, c.vq_codes, c.vq_beta,
                                         c.fsq_levels, c.vq_codebooks, c.vq_ema_decay)
        self.fdm_encoder = make_encoder(c)
        self.map_shape = self.fdm_encoder.out_shape  # (C, h, w)
        self.action_proj = nn.Linear(c.latent_dim, self.fdm_encoder.feature_dim)
        self.decoder = ImpalaDecoder(2 * self.map_shape[0], c.in_channels, c.encoder_channels,
                                     c.encoder_scale, c.encoder_blocks)
        self.probes = Probes(c.latent_dim, self.fdm_encoder.feature_dim, action_dim, state_dim) if c.probes else None
        init_weights(self.idm_out)
        init_weights(self.action_proj)

    def infer(self, obs: Tensor, end: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """Float observations -> (quantized z, quantizer loss, quantizer metrics)."""
        z = self.idm_out(F.gelu(self.idm_encoder.features(torch.cat([obs, end], dim=1))))
        return self.quantizer(z)

    def predict_next(self, obs: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
        """(predicted o_t+1 as float [B, stack*C, H, W] in [-1, 1], flattened FDM features of o_t)."""
        c, h, w = self.map_shape
        h_map = self.fdm_encoder(obs)
        z_map = self.action_proj(z).view(-1, h, w, c).permute(0, 3, 1, 2)  # channels_last-shaped
        pred = self.decoder(torch.cat([h_map, z_map.to(h_map.dtype)], dim=1))
        return pred, self.fdm_encoder.flatten(h_map)

    def forward(self, batch: Batch, labeled_batch: Batch | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        m = self.config.method
        obs = to_float_image(batch.obs)
        z, q_loss, metrics = self.infer(obs, to_float_image(batch.require("future_obs", m)))
        pred, features = self.predict_next(obs, z)
        recon = F.mse_loss(pred.float(), to_float_image(batch.require("next_obs", m)))
        loss = recon + q_loss
        metrics = {**metrics, "lapo/recon_loss": recon.detach()}
        if self.config.quantizer != "none":  # the quantizer's term of the objective, beside the pixel term
            metrics["lapo/quantizer_loss"] = q_loss.detach()
        loss = self.with_probes(loss, metrics, batch, latent=z, features=features)
        return loss, metrics

    @torch.no_grad()
    def latent_action(self, obs: Tensor, next_obs: Tensor) -> Tensor:
        """z (quantized unless ``quantizer: none``) for (o_t, o_t+1): uint8 observations -> [B, latent_dim]."""
        return self.infer(to_float_image(obs), to_float_image(next_obs))[0]

    @torch.no_grad()
    def probe_inputs(self, obs: Tensor, next_obs: Tensor) -> tuple[Tensor, Tensor]:
        x = to_float_image(obs)
        return self.infer(x, to_float_image(next_obs))[0], self.fdm_encoder(x)

    def predictions(self, batch: Batch) -> dict[str, tuple[Tensor, Tensor]]:
        """Probe predictions on (o_t, o_t+k) -- the views they trained on -- or (o_t, o_t+1)."""
        obs = to_float_image(batch.obs)
        end = batch.future_obs if batch.future_obs is not None else batch.require("next_obs", self.config.method)
        z = self.infer(obs, to_float_image(end))[0]
        features = self.fdm_encoder.features(obs)
        return self.probes.predictions(batch, latent=z, features=features) if self.probes is not None else {}
