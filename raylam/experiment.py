"""The root config of an experiment file: one section per command, plus a chain of stages.

A file in ``configs/`` holds the sections its commands need: ``collect`` for ``raylam collect``;
``train`` (settings every stage shares) and ``stages`` (each a name and its differences from
``train``) for ``raylam train``. Stages name earlier stages by ``run_name``
(``lam_run: laom_sup``), and every run lives in ``<storage_path>/<experiment name>/<run_name>``.
Command-line overrides use the full dotted path (``collect.episodes=4``, ``train.steps=50``);
``train.*`` overrides also win over what a stage sets.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raylam.config import ConfigError, apply_overrides, from_dict, load_yaml, spec, to_dict
from raylam.data.config import CollectConfig
from raylam.eval.config import EvalConfig
from raylam.train.config import TrainConfig
from raylam.tune.config import TuneConfig


@dataclass
class ExperimentConfig:
    name: str = spec("quickstart", help="experiment name: runs go to <storage_path>/<name>/<run_name>")
    collect: CollectConfig = spec(CollectConfig(), help="expert data collection")
    train: TrainConfig = spec(TrainConfig(), help="settings shared by every training stage")
    stages: list[dict[str, Any]] = spec([], help="the chain: each entry overrides `train` for one stage")
    evaluate: EvalConfig = spec(EvalConfig(), help="probes and rollouts of the chain's runs, and the report")
    tune: TuneConfig = spec(TuneConfig(), help="raylam tune: an ASHA sweep over one stage (raylam.tune.config)")

    def validate(self) -> None:
        names = [stage.get("run_name") for stage in self.stages]
        for i, name in enumerate(names):
            if not isinstance(name, str) or not name or "/" in name:
                raise ConfigError(f"stages[{i}].run_name: got {name!r}, expected a name without '/'")
        duplicates = {n for n in names if names.count(n) > 1}
        if duplicates:
            raise ConfigError(f"stages: run_name {sorted(duplicates)[0]!r} is used twice")
        for i in range(len(self.stages)):
            self.stage(i)  # every stage builds and validates now, before any work starts

    def stage(self, index: int) -> TrainConfig:
        """The full TrainConfig of stage ``index``: ``train`` with the stage's changes on top."""
        entry = self.stages[index]
        merged = deep_merge(to_dict(self.train), entry)
        prefix = self.run_root()
        for key in ("lam_run", "labels"):  # a bare name refers to a stage of this experiment
            value = merged.get(key)
            if isinstance(value, str) and "/" not in value:
                if value not in [s["run_name"] for s in self.stages[:index]]:
                    raise ConfigError(f"stages[{index}].{key}: {value!r} is not an earlier stage of this experiment")
                merged[key] = f"{prefix}/{value}"
        merged["storage_path"] = prefix
        try:
            return from_dict(TrainConfig, merged)
        except ConfigError as err:
            raise ConfigError(f"stages[{index}] ({entry.get('run_name')}): {err}") from None

    def run_root(self) -> str:
        return f"{self.train.storage_path.rstrip('/')}/{self.name}"

    def eval_output(self) -> str:
        return self.evaluate.output or f"{self.run_root()}/eval"

    def stage_index(self, run_name: str) -> int:
        names = [s["run_name"] for s in self.stages]
        if run_name not in names:
            raise ConfigError(f"--stage: got {run_name!r}, expected one of {names}")
        return names.index(run_name)


def deep_merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``changes`` applied; nested mappings merge, everything else is replaced."""
    out = copy.deepcopy(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def train_overrides(overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """The ``train.*`` command-line overrides as a nested mapping (they apply to every stage)."""
    picked = [o[len("train."):] for o in overrides if o.startswith("train.")]
    return apply_overrides({}, picked)


def load_experiment(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    data = load_yaml(path) if path is not None else {}
    data = apply_overrides(data, overrides)
    extra = train_overrides(overrides)
    if extra and data.get("stages"):  # command-line train.* beats what a stage says
        data["stages"] = [deep_merge(stage, extra) for stage in data["stages"]]
    try:
        return from_dict(ExperimentConfig, data)
    except ConfigError as err:
        where = f"{path}: " if path is not None else ""
        raise ConfigError(f"{where}{err}") from None
