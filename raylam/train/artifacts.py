"""Reading what a finished stage left behind: ``artifact.json`` and the checkpoint it names."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from raylam.config import ConfigError
from raylam.data.storage import resolve

ARTIFACT = "artifact.json"


@dataclass(frozen=True)
class StageResult:
    """What every finished stage returns, trained or relabeled: where it lives, its
    ``artifact.json`` (what the next stage reads) and its last reported metrics."""

    run_dir: str
    artifact: dict

    @property
    def metrics(self) -> dict:
        """The last report's numbers (a relabel stage: how many transitions it labeled)."""
        if self.artifact.get("stage") == "relabel":
            return {"num_labels": self.artifact["num_labels"], "latent_dim": self.artifact["latent_dim"]}
        return dict(self.artifact.get("metrics") or {})

    def __getitem__(self, key: str):
        return self.artifact[key]


def read_artifact(run_dir: str, expect_stages: tuple[str, ...] | None = None) -> dict:
    """The artifact of the run at ``run_dir``; a clear error when it is missing or of the wrong stage."""
    location = resolve(run_dir)
    if not location.exists(ARTIFACT):
        raise FileNotFoundError(
            f"{location.url(ARTIFACT)} does not exist: {run_dir} is not a finished raylam run "
            "(train that stage first, or check the path)"
        )
    artifact = location.read_json(ARTIFACT)
    for key in ("stage", "config"):
        if key not in artifact:
            raise ValueError(f"{location.url(ARTIFACT)}: malformed artifact, no {key!r} field")
    if expect_stages is not None and artifact["stage"] not in expect_stages:
        raise ConfigError(
            f"{run_dir} holds a {artifact['stage']!r} run, expected one of {list(expect_stages)}"
        )
    return artifact


def load_run(run_dir: str, device: str | torch.device = "cpu", expect_stages: tuple[str, ...] | None = None):
    """(model in eval mode, checkpoint meta, artifact) of a finished training run."""
    import ray.train

    from raylam.train.checkpoint import load_model_from_directory

    artifact = read_artifact(run_dir, expect_stages)
    if "checkpoint" not in artifact:
        raise ValueError(f"{run_dir}: artifact names no checkpoint (stage {artifact['stage']})")
    location = resolve(run_dir)
    checkpoint = ray.train.Checkpoint(path=artifact["checkpoint"], filesystem=location.fs)
    with checkpoint.as_directory() as directory:
        model, meta = load_model_from_directory(directory, device)
    return model, meta, artifact
