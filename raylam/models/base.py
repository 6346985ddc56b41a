"""What every method shares: the trainer-facing interface and a few loss helpers.

The trainer sees only this interface, so it needs no per-method branches::

    optimizer = torch.optim.Adam(model.param_groups(), lr=lr)  # probes: keep their lr constant
    loss, metrics = model.loss(batch, labeled_batch)   # == model(batch, labeled_batch)
    loss.backward(); optimizer.step(); model.after_step()

``loss`` (what is minimised) includes the linear probes' losses, so one backward pass trains them;
``metrics["loss"]`` is the model's own objective without them (see :meth:`Method.with_probes`).

``loss`` is ``forward``, so a DDP-wrapped model is called as ``ddp(batch, labeled_batch)`` and
gradients are synchronised as usual; ``after_step`` is then called on ``ddp.module``.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

from raylam.models.augment import augment
from raylam.models.batch import Batch, to_float_image
from raylam.models.config import ModelConfig
from raylam.models.probes import Probes


class Method(nn.Module):
    def __init__(self, config: ModelConfig, action_dim: int, state_dim: int):
        super().__init__()
        self.config, self.action_dim, self.state_dim = config, action_dim, state_dim

    def loss(self, batch: Batch, labeled_batch: Batch | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """(scalar loss to minimise, metrics: name -> detached 0-dim tensor)."""
        return self(batch, labeled_batch)

    def after_step(self) -> None:
        """Called after every optimizer step (EMA targets); a no-op unless a method needs it."""

    def probe_inputs(self, obs: Tensor, next_obs: Tensor) -> tuple[Tensor, Tensor]:
        """(latent action z of (o_t, o_t+1) [B, D], encoder feature map of o_t [B, C, h, w]): what the
        linear probes of a finished run read (z -> true action, features -> state). LAMs only."""
        raise NotImplementedError(f"{self.config.method} has no latent action to probe")

    def predictions(self, batch: Batch) -> dict[str, tuple[Tensor, Tensor]]:
        """{name: (prediction, target)} for held-out evaluation (see :func:`probes.evaluate`)."""
        return {}

    def with_probes(self, loss: Tensor, metrics: dict[str, Tensor], batch: Batch, latent: Tensor | None = None,
                    features: Tensor | None = None) -> Tensor:
        """What to minimise: the model's objective ``loss`` plus its linear probes' loss on detached
        inputs. The reported ``metrics["loss"]`` is the objective alone, so a curve of ``loss`` shows
        the model learning, not the state probe (whose MSE would dominate the sum); the probes
        report their own keys (``probe/action_mse``, ``probe/state_mse`` and their sum ``probe/loss``).
        """
        metrics["loss"] = loss.detach()
        probes = getattr(self, "probes", None)
        if probes is None:
            return loss
        probe_loss, probe_metrics = probes(batch, latent=latent, features=features)
        if not probe_metrics:  # nothing to probe (no actions, no states: video without labels)
            return loss
        metrics.update(probe_metrics)
        metrics["probe/loss"] = probe_loss.detach()
        return loss + probe_loss

    def augment(self, x: Tensor) -> Tensor:
        """The paper's augmentations on float images, in training mode when ``augment`` is on."""
        c = self.config
        if c.augment and self.training:
            return augment(x, c.aug_shift, c.aug_rotate, c.aug_perspective)
        return x

    def trainable_parameters(self) -> list[nn.Parameter]:
        """What the optimizer should update (EMA targets and frozen parts excluded)."""
        return [p for p in self.parameters() if p.requires_grad]

    def param_groups(self) -> list[dict]:
        """Optimizer groups: ``model``, then ``probes`` (only if the model has any) marked ``constant_lr``.

        The paper trains its linear probes with their own Adam at a constant learning rate beside the
        LAM; here they share one Adam but sit in their own group, so the trainer can keep that group's
        lr constant (and leave it out of gradient clipping) while the model's is scheduled. Adam's
        update is per parameter, so this is the same as a second optimizer.
        """
        probe_ids = {id(p) for m in self.modules() if isinstance(m, Probes) for p in m.parameters()}
        trainable = self.trainable_parameters()
        groups: list[dict] = [{"params": [p for p in trainable if id(p) not in probe_ids], "name": "model"}]
        probes = [p for p in trainable if id(p) in probe_ids]
        if probes:
            groups.append({"params": probes, "name": "probes", "constant_lr": True})
        return groups


def masked_mse(pred: Tensor, target: Tensor, weight: Tensor) -> Tensor:
    """Mean over rows with weight 1 of the per-row MSE; 0 when no row counts (no branching).

    Rows of weight 0 may hold NaN targets (imported episodes without actions): they never count."""
    per_row = (pred.float() - target.float()).pow(2).mean(-1)
    return torch.where(weight > 0, per_row * weight, 0.0).sum() / weight.sum().clamp_min(1.0)


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, tau: float) -> None:
    """target <- target + tau (online - target), for parameters and float buffers, in place."""
    t_params = list(target.parameters())
    o_params = list(online.parameters())
    torch._foreach_lerp_(t_params, o_params, tau)
    for tb, ob in zip(target.buffers(), online.buffers(), strict=True):
        if tb.is_floating_point():
            tb.lerp_(ob, tau)
        else:
            tb.copy_(ob)


class PairEncoder(Method):
    """A method that reads (o_t, o_t+1) through one shared ``encoder`` and a ``pair_head`` on the two
    flattened feature vectors: LAOM's IDM (-> z) and the IDM baseline (-> the true action)."""

    encoder: nn.Module

    def pair_head(self, h_t: Tensor, h_next: Tensor) -> Tensor:
        raise NotImplementedError

    def _infer_maps(self, obs: Tensor, next_obs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(head output, flattened features of o_t, feature maps of o_t) for uint8 observations."""
        maps = self.encoder(to_float_image(torch.cat([obs, next_obs])))
        h_t, h_next = self.encoder.flatten(maps).chunk(2)
        return self.pair_head(h_t, h_next), h_t, maps[: len(obs)]

    def _infer(self, obs: Tensor, next_obs: Tensor) -> tuple[Tensor, Tensor]:
        out, h_t, _ = self._infer_maps(obs, next_obs)
        return out, h_t

    @torch.no_grad()
    def probe_inputs(self, obs: Tensor, next_obs: Tensor) -> tuple[Tensor, Tensor]:
        out, _, maps = self._infer_maps(obs, next_obs)
        return out, maps

    @torch.no_grad()
    def latent_action(self, obs: Tensor, next_obs: Tensor) -> Tensor:
        """The head's output for (o_t, o_t+1), no augmentation: uint8 observations -> [B, D] (LAOM: z;
        the IDM: the predicted true action, its relabeling)."""
        return self._infer(obs, next_obs)[0]
