"""Linear probes (the paper's diagnostic) and the held-out evaluation of any model's predictions.

Probes are trained inside ``loss`` on *detached* inputs, so they read the representation without
shaping it: ``action`` maps the latent action z to the true action, ``state`` maps the encoder's
features of o_t to the proprioceptive state. Their losses are added to the total (their own
parameters learn; no gradient reaches the LAM), and ``Method.param_groups`` puts their parameters in
a group of their own so the trainer keeps its lr constant, as the paper's separate probe Adam.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn as nn
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
            mse = _finite_rows_mse(probe(x.detach()).float(), y.float())
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


def _finite_rows_mse(pred: Tensor, target: Tensor) -> Tensor:
    """MSE over the rows whose target is finite: imported episodes without actions store NaN there
    (absent, not zero), so the probe learns from the episodes that have them. No host sync."""
    finite = torch.isfinite(target).all(-1, keepdim=True)
    err = torch.where(finite, pred - torch.nan_to_num(target), 0.0).pow(2)
    return err.sum() / (finite.sum() * target.shape[-1]).clamp_min(1)


def finite_rows(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """The rows whose target is finite (evaluation: episodes without actions do not score)."""
    keep = torch.isfinite(target.flatten(1)).all(1)
    return (pred, target) if bool(keep.all()) else (pred[keep], target[keep])


class Moments:
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

    def per_dim(self) -> tuple[list[float], list[float]]:
        """(MSE per output dimension, R^2 per dimension; NaN where the target is constant)."""
        if self.sse is None or self.sum is None or self.sumsq is None:
            raise ValueError("no rows were added: nothing to score")
        sst = self.sumsq - self.sum.pow(2) / self.n
        varying = sst > 1e-12 * self.n
        r2 = torch.where(varying, 1 - self.sse / sst.clamp_min(1e-300), torch.full_like(sst, float("nan")))
        return (self.sse / self.n).tolist(), r2.tolist()

    def pooled_r2(self) -> float:
        """1 - sum(SSE) / sum(SST) over every output dimension (sklearn's variance_weighted): a dim that
        barely varies in the scored windows (a saturated action) cannot swing it, as it can the mean."""
        if self.sse is None or self.sum is None or self.sumsq is None:
            raise ValueError("no rows were added: nothing to score")
        sst = float((self.sumsq - self.sum.pow(2) / self.n).sum())
        return 1 - float(self.sse.sum()) / sst if sst > 1e-12 * self.n else float("nan")

    def result(self) -> tuple[float, float]:
        """(MSE over all entries, R^2 averaged over output dims that vary, as sklearn's default)."""
        mse, r2 = self.per_dim()
        varying = [r for r in r2 if r == r]
        return sum(mse) / len(mse), (sum(varying) / len(varying) if varying else float("nan"))


class RidgeFit:
    """Ridge regression x -> y from streamed batches: only x'x and x'y are kept (float64), so a
    probe can be fitted on any number of windows in one pass, then solved in closed form."""

    def __init__(self) -> None:
        self.n = 0
        self.xtx: Tensor | None = None
        self.xty: Tensor | None = None

    @staticmethod
    def design(x: Tensor) -> Tensor:
        x = x.double().flatten(1)
        return torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype, device=x.device)], 1)

    def add(self, x: Tensor, y: Tensor) -> None:
        a, b = self.design(x), y.double().flatten(1)
        xtx, xty = a.T @ a, a.T @ b
        self.xtx = xtx if self.xtx is None else self.xtx + xtx
        self.xty = xty if self.xty is None else self.xty + xty
        self.n += a.shape[0]

    def solve(self, ridge: float = 1e-3) -> Tensor:
        """Weights [in + 1, out] (last row: bias).

        The penalty on input j is ``ridge * n * var(x_j)``: ridge on standardised inputs, so the
        shrinkage does not depend on the inputs' units; the bias is not penalised.
        """
        if self.xtx is None or self.xty is None:
            raise ValueError("no rows were added: nothing to fit")
        sums = self.xtx[-1, :-1]  # the bias column holds the sums of x
        var = (self.xtx.diagonal()[:-1] - sums.pow(2) / self.n) / self.n
        penalty = torch.cat([var.clamp_min(1e-12), var.new_zeros(1)])
        return torch.linalg.solve(self.xtx + ridge * self.n * torch.diag(penalty), self.xty)

    @classmethod
    def predict(cls, x: Tensor, weights: Tensor) -> Tensor:
        return cls.design(x) @ weights


@torch.no_grad()
def fit_linear_probe(x_train: Tensor, y_train: Tensor, x_test: Tensor, y_test: Tensor,
                     ridge: float = 1e-3) -> dict[str, float]:
    """Closed-form ridge regression x -> y on frozen inputs; held-out ``{"mse", "r2"}``.

    The converged version of the in-training probe: it measures what is linearly decodable from x
    without depending on how far a probe trained beside a moving representation has caught up.
    """
    fit = RidgeFit()
    fit.add(x_train, y_train)
    m = Moments()
    m.add(RidgeFit.predict(x_test, fit.solve(ridge)), y_test)
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
    moments: dict[str, Moments] = {}
    try:
        for batch in batches:
            for name, (pred, target) in model.predictions(batch).items():
                pred, target = finite_rows(pred, target)
                if len(target):
                    moments.setdefault(name, Moments()).add(pred, target)
    finally:
        model.train(was_training)
    out: dict[str, float] = {}
    for name, m in moments.items():
        out[f"{name}/mse"], out[f"{name}/r2"] = m.result()
    return out
