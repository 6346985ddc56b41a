"""The root config of an experiment file: one section per command, plus a chain of stages.

A file in ``configs/`` holds the sections its commands need: ``collect`` for ``raylam collect``;
``train`` (settings every stage shares) and ``stages`` (each a name and its differences from
``train``) for ``raylam train``. Stages name earlier stages by ``run_name``
(``lam_run: laom_sup``), and every run lives in ``<storage_path>/<experiment name>/<run_name>``.
``seeds: [0, 1, 2]`` runs the whole chain once per training seed (``TrainConfig.seed``), each
seed in its own run root ``<storage_path>/<experiment name>/seed<k>/<run_name>``; an experiment
with one seed keeps the layout without ``seed<k>``.
Command-line overrides use the full dotted path (``collect.episodes=4``, ``train.steps=50``);
``train.*`` overrides also win over what a stage says, and ``stages.<run_name>.*`` changes one
stage (``stages.laom_sup.model.sup_coef=0.01``), winning over both.

A file may hold only its differences from another: ``base: laom_sup.yaml`` (relative to the
file's folder) loads that file first and merges this one into it: mappings merge key by key,
lists and values replace, ``section: null`` puts a whole section back to its defaults, and
``stages`` given as a mapping ``{run_name: changes}`` edits the base's stages instead of
replacing the list.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raylam.config import ConfigError, apply_overrides, deep_merge, from_dict, load_yaml, spec, to_dict
from raylam.data.config import CollectConfig
from raylam.data.ingest.config import IngestConfig
from raylam.eval.config import EvalConfig
from raylam.train.config import UPSTREAM_FIELDS, StageConfig, TrainConfig, inherited, stage_config
from raylam.tune.config import TuneConfig


@dataclass
class ExperimentConfig:
    name: str = spec("quickstart", help="experiment name: runs go to <storage_path>/<name>/<run_name>")
    collect: CollectConfig = spec(CollectConfig(), help="expert data collection")
    ingest: IngestConfig = spec(IngestConfig(), help="raylam ingest: your own videos, frames, LeRobot or HDF5 data "
                                                     "(raylam.data.ingest.config)")
    train: TrainConfig = spec(TrainConfig(), help="settings shared by every training stage")
    stages: list[dict[str, Any]] = spec([], help="the chain: each entry overrides `train` for one stage")
    evaluate: EvalConfig = spec(EvalConfig(), help="probes and rollouts of the chain's runs, and the report")
    tune: TuneConfig = spec(TuneConfig(), help="raylam tune: an ASHA sweep over one stage (raylam.tune.config)")
    shared_filesystem: bool = spec(
        False, help="local paths (data, runs, reports, backgrounds) are on a filesystem every node mounts at the "
                    "same place (NFS, EFS); without it a multi-node cluster needs s3:// or gs:// URIs")
    concurrent_stages: int | None = spec(
        None, ge=1, help="raylam pipeline/train: stages trained at once (independent chains and seeds side by "
                         "side); null: as many as the GPUs present at the start hold (1 without GPUs). On an "
                         "autoscaled cluster set it from its node types: GPUs its worker types reach / GPUs per stage")
    stage_retries: int = spec(
        2, ge=0, help="raylam pipeline/train: times a stage's driver task is restarted when its process or node dies "
                      "(its Train run resumes from the last checkpoint); an error raised by the stage is never retried")
    seeds: list[int] | None = spec(
        None, ge=0, help="training seeds: the chain runs once per seed, in <storage_path>/<name>/seed<k>/<run_name>, "
                         "and the evaluation reports mean ± std over them; null: [train.seed] (0 unless set), "
                         "one seed in <storage_path>/<name>/<run_name>")

    def validate(self) -> None:
        names = [stage.get("run_name") for stage in self.stages]
        for i, name in enumerate(names):
            if not isinstance(name, str) or not name or "/" in name:
                raise ConfigError(f"stages[{i}].run_name: got {name!r}, expected a name without '/'")
        duplicates = {n for n in names if names.count(n) > 1}
        if duplicates:
            raise ConfigError(f"stages: run_name {sorted(duplicates)[0]!r} is used twice")
        if self.seeds is not None:
            if not self.seeds:
                raise ConfigError("seeds: got [], expected at least one training seed (or null: [train.seed])")
            if len(set(self.seeds)) != len(self.seeds):
                raise ConfigError(f"seeds: got {self.seeds}, expected each seed once")
        for i, entry in enumerate(self.stages):
            if "seed" in entry and entry["seed"] != self.train.seed:
                raise ConfigError(f"stages[{i}].seed: got {entry['seed']!r}; the training seed is set for the whole "
                                  "experiment (`seeds`, or train.seed), not per stage")
        for i in range(len(self.stages)):
            self.stage(i)  # every stage builds and validates now, before any work starts
        self._check_method_runs()

    def _check_method_runs(self) -> None:
        """A bare run name in ``evaluate.methods`` must be a stage of this chain that trains the right
        thing, so a typo fails now rather than after the whole pipeline has trained."""
        if not self.stages:
            return  # an evaluation of runs made elsewhere: `raylam evaluate` checks they exist
        kinds = {entry["run_name"]: self.stage(i).stage for i, entry in enumerate(self.stages)}
        wanted = {"lam": ("lam", "idm"), "policy": ("latent_bc", "bc"), "decoder": ("action_decoder",)}
        for i, method in enumerate(self.evaluate.methods):
            for role, stages in wanted.items():
                name = getattr(method, role)
                if name is None or "/" in name:
                    continue
                where = f"evaluate.methods[{i}] ({method.name}).{role}"
                if name not in kinds:
                    raise ConfigError(f"{where}: {name!r} is not a stage of this experiment; "
                                      f"stages: {', '.join(kinds)}")
                if kinds[name] not in stages:
                    raise ConfigError(f"{where}: stage {name!r} is a {kinds[name]} stage, expected one of "
                                      f"{list(stages)}")

    def seed_list(self) -> list[int]:
        """The training seeds the chain runs with (``seeds``, else ``[train.seed]``)."""
        return list(self.seeds) if self.seeds is not None else [self.train.seed]

    def seed_root(self, seed: int | None = None) -> str:
        """Where the runs of training seed ``seed`` (default: the first) live: ``<run root>/seed<k>``
        whenever the experiment names its ``seeds`` (so ``--seeds 0`` finds seed 0 of a 3-seed run), the
        run root itself when it has only ``train.seed``."""
        seeds = self.seed_list()
        seed = seeds[0] if seed is None else seed
        if seed not in seeds:
            raise ConfigError(f"seed {seed} is not one of this experiment's seeds {seeds}")
        return self.run_root() if self.seeds is None else f"{self.run_root()}/seed{seed}"

    def seed_roots(self) -> dict[int, str]:
        """``{training seed: its run root}`` for every seed, in order."""
        return {seed: self.seed_root(seed) for seed in self.seed_list()}

    def stage(self, index: int, seed: int | None = None) -> StageConfig:
        """The full config of stage ``index`` for training seed ``seed`` (default: the first
        of ``seeds``): ``train`` with the stage's changes on top, in that seed's run root."""
        entry = copy.deepcopy(self.stages[index])
        seed = self.seed_list()[0] if seed is None else seed
        entry["seed"] = seed
        prefix = self.seed_root(seed)
        shared = to_dict(self.train)
        taken = inherited(shared, entry)
        for key in UPSTREAM_FIELDS:  # a bare name refers to a stage of this experiment
            value = entry.get(key, taken.get(key))
            if isinstance(value, str) and "/" not in value:
                if value not in [s["run_name"] for s in self.stages[:index]]:
                    raise ConfigError(f"stages[{index}].{key}: {value!r} is not an earlier stage of this experiment")
                entry[key] = f"{prefix}/{value}"
        entry["storage_path"] = prefix
        try:
            return stage_config(shared, entry)
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


def train_overrides(overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """The ``train.*`` command-line overrides as a nested mapping (they apply to every stage)."""
    picked = [o[len("train."):] for o in overrides if o.startswith("train.")]
    return apply_overrides({}, picked)


def edit_stages(stages: Any, edits: Any, where: str) -> list[dict[str, Any]]:
    """``stages`` (a list of entries) with ``edits`` (``{run_name: changes}``) merged into the named ones."""
    if not isinstance(edits, dict):
        raise ConfigError(f"{where}: got {edits!r}, expected a mapping of run_name -> changes")
    stages = copy.deepcopy(stages or [])
    names = [entry.get("run_name") if isinstance(entry, dict) else None for entry in stages]
    for name, changes in edits.items():
        if name not in names:
            raise ConfigError(f"{where}.{name}: no stage {name!r}; stages: {', '.join(map(str, names)) or 'none'}")
        if not isinstance(changes, dict):
            raise ConfigError(f"{where}.{name}: got {changes!r}, expected a mapping of stage settings")
        if "run_name" in changes and changes["run_name"] != name:
            raise ConfigError(f"{where}.{name}.run_name: a stage is renamed by listing the stages, not by an edit")
        i = names.index(name)
        stages[i] = deep_merge(stages[i], changes)
    return stages


def merge_file(base: dict[str, Any], changes: dict[str, Any], where: str) -> dict[str, Any]:
    """A derived file's ``changes`` on top of its ``base`` (see the module docstring for the rules)."""
    out = copy.deepcopy(base)
    for key, value in changes.items():
        if key == "stages" and isinstance(value, dict):
            out["stages"] = edit_stages(out.get("stages"), value, f"{where}: stages")
        elif value is None and isinstance(out.get(key), dict):
            out.pop(key)  # a whole section back to its defaults
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_experiment_file(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The mapping of an experiment file, with its ``base`` file (and that one's) merged in."""
    path = Path(path)
    data = load_yaml(path)
    base = data.pop("base", None)
    if base is None:
        if isinstance(data.get("stages"), dict):
            raise ConfigError(f"{path}: stages: a mapping edits the stages of a base file, and this file names no "
                              "`base`; list the stages instead")
        return data
    if not isinstance(base, str) or not base:
        raise ConfigError(f"{path}: base: got {base!r}, expected the path of another experiment file")
    base_path = (path.parent / base).resolve()
    if base_path in _chain or base_path == path.resolve():
        raise ConfigError(f"{path}: base: {base} leads back to itself")
    if not base_path.is_file():
        raise ConfigError(f"{path}: base: {base_path} does not exist (a base is relative to {path.parent})")
    return merge_file(read_experiment_file(base_path, (*_chain, path.resolve())), data, str(path))


def load_experiment(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    data = read_experiment_file(path) if path is not None else {}
    per_stage = [o[len("stages."):] for o in overrides if o.startswith("stages.")]
    overrides = [o for o in overrides if not o.startswith("stages.")]
    data = apply_overrides(data, overrides)
    extra = train_overrides(overrides)
    if extra and data.get("stages"):  # command-line train.* beats what a stage says (what the stage takes of it)
        data["stages"] = [deep_merge(stage, inherited(extra, stage)) if isinstance(stage, dict) else stage
                          for stage in data["stages"]]
    if per_stage:  # stages.<run_name>.key=value beats both
        data["stages"] = edit_stages(data.get("stages"), apply_overrides({}, per_stage), "override stages")
    try:
        return from_dict(ExperimentConfig, data)
    except ConfigError as err:
        raise ConfigError(blame(err, path, [*overrides, *(f"stages.{o}" for o in per_stage)]), err.key) from None


def blame(err: ConfigError, path: str | Path | None, overrides: list[str]) -> str:
    """``err`` prefixed with where the bad value came from: the command-line override that set the
    key (or the section holding it), else the file."""
    if err.key:
        for item in overrides:
            key = item.split("=", 1)[0].strip()
            if err.key == key or err.key.startswith(f"{key}.") or err.key.startswith(f"{key}["):
                return f"override {item}: {err}"
        inside = [item for item in overrides if item.startswith(f"{err.key}.")]
        if inside:  # a check of a whole section that an override changed
            where = f"{path}: " if path is not None else ""
            return f"{where}{err} (with override{'s' if len(inside) > 1 else ''} {', '.join(inside)})"
    return f"{path}: {err}" if path is not None else str(err)
