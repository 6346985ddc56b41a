"""Linear probes (the paper's diagnostic) and the held-out evaluation of any model's predictions.

Probes are trained inside ``loss`` on *detached* inputs, so they read the representation without
shaping it: ``action`` maps the latent action z to the true action, ``state`` maps the encoder's
features of o_t to the proprioceptive state. Their losses are added to the total (their own
parameters learn; no gradient reaches the LAM).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from raylam.models.batch import Batch


class Probes(nn.Module):
    def __init__(self, latent_dim: int, feature_dim: int, action_dim: int, state_dim: int):
        super().__init__()
        self.action = nn.Linear(latent_dim, action_dim) if latent_dim and action_dim else None
        self.state = nn.Linear(feature_dim, state_dim) if feature_dim and state_dim else None

    def forward(self, batch: Batch, latent: Tensor | None = None,
                features: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """Probe loss on this batch (0 where the input or the target is missing) and its metrics."""
        loss = torch.zeros((), device=batch.obs.device)
        metrics: dict[str, Tensor] = {}
        for name, probe, x, y in (("action", self.action, latent, batch.actions),
                                  ("state", self.state, features, batch.states)):
            if probe is None or x is None or y is None:
                continue
            mse = F.mse_loss(probe(x.detach()).float(), y.float())
            loss = loss + mse
            metrics[f"probe/{name}_mse"] = mse.detach()
        return loss, metrics

    def predictions(self, batch: Batch, latent: Tensor | None = None,
                    features: Tensor | None = None) -> dict[str, tuple[Tensor, Tensor]]:
        out = {}
        if self.action is not None and latent is not None and batch.actions is not None:
            out["probe/action"] = (self.action(latent), batch.actions)
        if self.state is not None and features is not None and batch.states is not None:
            out["probe/state"] = (self.state(features), batch.states)
        return out


class _Moments:
    """Streaming sums for MSE and R^2 over batches (float64, per output dimension)."""

    def __init__(self) -> None:
        self.n = 0
        self.sse: Tensor | None = None
        self.sum: Tensor | None = None
        self.sumsq: Tensor | None = None

    def add(self, pred: Tensor, target: Tensor) -> None:
        pred, target = pred.double().flatten(1), target.double().flatten(1)
        sse, s, ss = (pred - target).pow(2).sum(0), target.sum(0), target.pow(2).sum(0)
        if self.sse is None:
            self.sse, self.sum, self.sumsq = sse, s, ss
        else:
            self.sse, self.sum, self.sumsq = self.sse + sse, self.sum + s, self.sumsq + ss
        self.n += target.shape[0]

    def result(self) -> tuple[float, float]:
        """(MSE over all entries, R^2 averaged over output dims that vary, as sklearn's default)."""
        assert self.sse is not None and self.sum is not None and self.sumsq is not None
        mse = float(self.sse.sum() / (self.n * self.sse.numel()))
        sst = self.sumsq - self.sum.pow(2) / self.n
        varying = sst > 1e-12 * self.n
        r2 = float((1 - self.sse[varying] / sst[varying]).mean()) if varying.any() else float("nan")
        return mse, r2


@torch.no_grad()
def fit_linear_probe(x_train: Tensor, y_train: Tensor, x_test: Tensor, y_test: Tensor,
                     ridge: float = 1e-3) -> dict[str, float]:
    """Closed-form ridge regression x -> y on frozen inputs; held-out ``{"mse", "r2"}``.

    The converged version of the in-training probe: it measures what is linearly decodable from x
    without depending on how far a probe trained beside a moving representation has caught up.
    """
    def design(x: Tensor) -> Tensor:
        x = x.double().flatten(1)
        return torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype, device=x.device)], 1)

    a, b = design(x_train), y_train.double()
    eye = torch.eye(a.shape[1], dtype=a.dtype, device=a.device)
    eye[-1, -1] = 0  # no penalty on the bias
    w = torch.linalg.solve(a.T @ a + ridge * a.shape[0] * eye, a.T @ b)
    m = _Moments()
    m.add(design(x_test) @ w, y_test)
    mse, r2 = m.result()
    return {"mse": mse, "r2": r2}


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[Batch]) -> dict[str, float]:
    """Held-out MSE and R^2 of every prediction the model reports (its probes, its action heads).

    Calls ``model.predictions(batch)`` -> {name: (prediction, target)} on each batch, in eval mode
    and without augmentation, and returns ``{name/mse, name/r2}``. R^2 = 1 - SSE/SST per output
    dimension, averaged: 0 is what predicting the held-out mean scores, 1 is perfect.
    """
    was_training = model.training
    model.eval()
    moments: dict[str, _Moments] = {}
    try:
        for batch in batches:
            for name, (pred, target) in model.predictions(batch).items():
                moments.setdefault(name, _Moments()).add(pred, target)
    finally:
        model.train(was_training)
    out: dict[str, float] = {}
    for name, m in moments.items():
        out[f"{name}/mse"], out[f"{name}/r2"] = m.result()
    return out
