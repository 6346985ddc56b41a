"""Configuration of a Tune sweep over one training stage (``raylam tune``).

A sweep takes one stage of an experiment (``base_stage``, a ``run_name`` of its ``stages``) as the
base of every trial and changes the dotted TrainConfig keys named in ``space``:

    tune:
      base_stage: laom_sup
      space:
        model.sup_coef: {loguniform: [1.0e-4, 1.0]}
        model.latent_dim: {choice: [64, 256, 1024, 8192]}
        num_labeled: {grid: [2, 8, 32, 128]}
      num_samples: 4          # x the grid's size
      metric: heldout/probe/action/mse
      mode: min
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from raylam.config import ConfigError, spec

# One of these per searched key: {kind: values}.
DISTRIBUTIONS = ("loguniform", "uniform", "choice", "grid")

DEFAULT_SPACE: dict[str, dict[str, list]] = {
    "model.sup_coef": {"loguniform": [1e-4, 1.0]},
    "model.latent_dim": {"choice": [64, 256, 1024, 4096, 8192]},
    "num_labeled": {"choice": [2, 4, 8, 16, 32, 64, 128]},
}


@dataclass
class AshaConfig:
    """Asynchronous successive halving on the reported ``step`` (the training step counter)."""

    enabled: bool = spec(True, help="stop weak trials early; false: every trial runs to its end")
    max_t: int | None = spec(None, ge=1, help="steps after which every trial stops; null: the base stage's steps")
    grace_period: int | None = spec(None, ge=1, help="steps before a trial can be stopped; null: the first "
                                                    "evaluation (eval_every, or report_every)")
    reduction_factor: float = spec(3.0, gt=1.0, help="keep the best 1/reduction_factor at each rung")


@dataclass
class TrialResources:
    """What one trial's Train run asks for; null keeps the base stage's value."""

    num_workers: int | None = spec(None, ge=1, help="Ray Train workers per trial")
    use_gpu: bool | None = spec(None, help="GPU workers")
    gpus_per_worker: float = spec(1.0, gt=0.0, help="GPUs per worker; a fraction packs several single-worker "
                                                   "trials on one GPU (needs num_workers 1: NCCL refuses "
                                                   "several DDP ranks on one GPU, ray issue 48012)")
    cpus_per_worker: float | None = spec(None, gt=0.0, help="CPUs per Train worker")
    read_cpus: float | None = spec(None, gt=0.0, help="CPUs per Ray Data decode task (data.read_cpus)")
    data_cpus: float | None = spec(None, gt=0.0, help="CPUs per trial for its Ray Data tasks: enforced as the "
                                                    "run's Ray Data resource limit (data.max_cpus) and counted "
                                                    "when max_concurrent_trials is derived; null: read_cpus")
    driver_cpus: float = spec(0.01, ge=0.0, help="CPUs of the trial's driver (it only launches and watches "
                                                "the Train run; Tune refuses a driver asking for nothing)")
    driver_resources: dict[str, float] = spec({}, help="custom resources for the driver (beside pin_drivers)")
    pin_drivers: str | None = spec("head", help="custom resource of the node that runs every trial's driver and "
                                                "its Train controller (cluster/ declares head: 1000 on the head "
                                                "node, never a spot node); ignored when the cluster has no such "
                                                "resource (local Ray); null: drivers go anywhere")


@dataclass
class TuneWandbConfig:
    enabled: bool = spec(False, help="WandbLoggerCallback on the Tuner: one wandb run per trial")
    project: str = spec("raylam-tune")
    group: str | None = spec(None, help="wandb group; null: the sweep name")
    mode: str = spec("offline", choices=("online", "offline"), help="offline needs no network")
    entity: str | None = spec(None)


@dataclass
class TuneConfig:
    """A sweep: base stage, search space, objective, scheduler, resources, where results go."""

    base_stage: str | None = spec(None, help="run_name of the stage every trial starts from; null: the "
                                            "experiment's first lam stage")
    name: str | None = spec(None, help="sweep directory name; null: tune-<base_stage>")
    storage_path: str | None = spec(None, help="where the sweep directory lives; null: <train.storage_path>/"
                                              "<experiment name>")
    space: dict[str, dict[str, list]] = spec(DEFAULT_SPACE, help="dotted TrainConfig key -> {loguniform: "
                                                                "[lo, hi]} | {uniform: [lo, hi]} | "
                                                                "{choice: [...]} | {grid: [...]}")
    fixed: dict[str, Any] = spec({}, help="dotted TrainConfig changes for every trial that best.yaml does not "
                                         "keep (e.g. shorter steps for the sweep)")
    num_samples: int = spec(16, ge=1, help="trials (times the number of grid points)")
    metric: str = spec("heldout/probe/action/mse", help="objective: a reported metric")
    mode: str = spec("min", choices=("min", "max"))
    scheduler: AshaConfig = spec(AshaConfig())
    max_concurrent_trials: int | None = spec(None, ge=1, help="null: every trial of the sweep, at most as many "
                                                             "as cluster_cpus/cluster_gpus fit")
    cluster_cpus: float | None = spec(None, gt=0.0, help="CPUs of the cluster at its largest (the autoscaler's "
                                                         "max_workers); null: the CPUs present at the start, right "
                                                         "for a fixed cluster or a local Ray")
    cluster_gpus: float | None = spec(None, ge=0.0, help="GPUs of the cluster at its largest; null: those present "
                                                         "at the start")
    max_failures: int = spec(1, ge=0, help="times a trial's driver is restarted (its Train run resumes)")
    resources: TrialResources = spec(TrialResources())
    wandb: TuneWandbConfig = spec(TuneWandbConfig())
    seed: int | None = spec(0, help="seed of the search-space sampler; null: random")

    def validate(self) -> None:
        if not self.space:
            raise ConfigError("space: expected at least one searched key")
        for key, dist in self.space.items():
            check_distribution(key, dist)
        overlap = sorted(set(self.space) & set(self.fixed))
        if overlap:
            raise ConfigError(f"fixed.{overlap[0]}: also searched in space")
        r = self.resources
        if r.gpus_per_worker < 1 and (r.num_workers or 1) > 1:
            raise ConfigError(
                f"resources.gpus_per_worker: got {r.gpus_per_worker} with num_workers {r.num_workers}; "
                "fractional GPUs only with num_workers 1 (several DDP ranks on one GPU fail in NCCL)")
        if r.gpus_per_worker > 1 and r.gpus_per_worker != int(r.gpus_per_worker):
            raise ConfigError(f"resources.gpus_per_worker: got {r.gpus_per_worker}, expected a fraction <= 1 "
                              "or a whole number")
        if not r.driver_cpus and not any(r.driver_resources.values()):
            raise ConfigError("resources.driver_cpus: got 0 and no driver_resources; Tune needs the driver to "
                              "ask for something (e.g. 0.01 CPU)")
        s = self.scheduler
        if s.max_t is not None and s.grace_period is not None and s.grace_period > s.max_t:
            raise ConfigError(f"scheduler.grace_period: got {s.grace_period}, expected <= max_t ({s.max_t})")


def check_distribution(key: str, dist: Any) -> None:
    where = f"space.{key}"
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"{where}: empty part in the dotted key")
    if not isinstance(dist, dict) or len(dist) != 1 or next(iter(dist)) not in DISTRIBUTIONS:
        raise ConfigError(f"{where}: got {dist!r}, expected one of "
                          + ", ".join(f"{{{d}: [...]}}" for d in DISTRIBUTIONS))
    kind, values = next(iter(dist.items()))
    if not isinstance(values, list) or not values:
        raise ConfigError(f"{where}.{kind}: got {values!r}, expected a non-empty list")
    if kind in ("loguniform", "uniform"):
        ok = len(values) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        if not ok or not values[0] < values[1] or not all(math.isfinite(v) for v in values):
            raise ConfigError(f"{where}.{kind}: got {values!r}, expected [lo, hi] with lo < hi")
        if kind == "loguniform" and values[0] <= 0:
            raise ConfigError(f"{where}.loguniform: got {values!r}, expected 0 < lo < hi")


def dotted_fields(cls: type) -> set[str]:
    """Every dotted key a dataclass config accepts (``model.sup_coef``, ``num_labeled``, ...)."""
    import typing

    out: set[str] = set()
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        out.add(field.name)
        tp = hints[field.name]
        if dataclasses.is_dataclass(tp):
            out |= {f"{field.name}.{sub}" for sub in dotted_fields(tp)}
    return out
