"""The root config of an experiment file: one section per stage.

A file in ``configs/`` holds the sections its commands need; ``raylam collect`` reads
``collect``, later stages read theirs. Command-line overrides use the full dotted path
(``collect.episodes=4``), so one file can drive the whole chain.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from raylam.config import load_config, spec
from raylam.data.config import CollectConfig


@dataclass
class ExperimentConfig:
    name: str = spec("quickstart", help="experiment name (used for run directories)")
    collect: CollectConfig = spec(CollectConfig(), help="expert data collection")


def load_experiment(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    return load_config(ExperimentConfig, path, overrides)
