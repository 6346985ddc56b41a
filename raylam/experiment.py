"""The root config of an experiment file: one section per command, plus a chain of stages.

A file in ``configs/`` holds the sections its commands need: ``collect`` for ``raylam collect``;
``train`` (settings every stage shares) and ``stages`` (each a name and its differences from
``train``) for ``raylam train``. Stages name earlier stages by ``run_name``
(``lam_run: laom_sup``), and every run lives in ``<storage_path>/<experiment name>/<run_name>``.
``seeds: [0, 1, 2]`` runs the whole chain once per training seed (``TrainConfig.seed``), each
seed in its own run root ``<storage_path>/<experiment name>/seed<k>/<run_name>``; an experiment
with one seed keeps the layout without ``seed<k>``.
``label_budgets: [1, 4, null]`` sweeps the label budget: the stages that train on action labels,
and every stage reading one of them, run once per budget in ``<name>/labels<n>/[seed<k>/]<run_name>``
(``labelsall`` for null) with ``num_labeled`` set to the budget; label-free stages run once, with no
budget, and every budget reads them (nested budgets: ``num_labeled`` takes the first n of the
dataset's label order).
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
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raylam.config import ConfigError, apply_overrides, deep_merge, from_dict, load_yaml, spec, to_dict
from raylam.data.config import CollectConfig
from raylam.data.ingest.config import IngestConfig
from raylam.eval.config import EvalConfig
from raylam.train.config import UPSTREAM_FIELDS, StageConfig, TrainConfig, inherited, is_relabel, stage_config
from raylam.tune.config import TuneConfig

_FIRST: Any = object()  # ExperimentConfig.stage's default budget: the first of label_budgets
_UNSET: Any = object()  # no budget given: a run's own num_labeled, in the seed's run root


def budget_dir(budget: int | None) -> str:
    """The folder of one label budget's runs and evaluation: ``labels<n>``, ``labelsall`` for null."""
    return f"labels{'all' if budget is None else budget}"


def reads_labels(stage: StageConfig) -> bool:
    """Whether the stage itself trains on action labels, so a label budget changes what it learns:
    its training stream is the labeled episodes (idm, bc, action_decoder), or it reads them as a
    second stream (a LAM with the labeled head, laom_sup). The same test as the trainer's."""
    return stage.kind.labeled_only or bool(getattr(stage, "reads_labeled_stream", False))


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
    oom_retries: int = spec(
        3, ge=-1, help="times a task of this job that Ray's memory monitor kills is retried (a stage driver resumes its "
                       "Train run); past that the command stops with one line naming memory. -1: Ray 2.60's default, "
                       "without end, which on a node that stays over its memory threshold restarts stages for ever")
    seeds: list[int] | None = spec(
        None, ge=0, help="training seeds: the chain runs once per seed, in <storage_path>/<name>/seed<k>/<run_name>, "
                         "and the evaluation reports mean ± std over them; null: [train.seed] (0 unless set), "
                         "one seed in <storage_path>/<name>/<run_name>")
    label_budgets: list[int | None] | None = spec(
        None, ge=1, help="raylam pipeline/train/evaluate: a label-budget sweep. Stages that train on action labels "
                         "(idm, bc, action_decoder, laom_sup LAMs) and the stages reading them run once per budget "
                         "in <storage_path>/<name>/labels<n>/[seed<k>/]<run_name> (null in the list: every label, "
                         "labelsall), replacing any num_labeled; label-free stages run once, shared. One "
                         "evaluation per budget in <eval output>/labels<n>, one merged report; null: no sweep")

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
        self._check_budget_list()
        for i in range(len(self.stages)):
            self.stage(i)  # every stage builds and validates now, before any work starts
        self._check_budget_data()
        self._check_method_runs()

    def _check_budget_list(self) -> None:
        """A sweep's budgets: each once, and no run named like a budget's folder."""
        budgets = self.label_budgets
        if budgets is None:
            return
        if not budgets:
            raise ConfigError("label_budgets: got [], expected at least one budget (or null: no sweep)", "label_budgets")
        if len(set(budgets)) != len(budgets):
            raise ConfigError(f"label_budgets: got {budgets}, expected each budget once", "label_budgets")
        for i, entry in enumerate(self.stages):
            if re.fullmatch(r"labels(\d+|all)", entry["run_name"]):
                raise ConfigError(f"stages[{i}].run_name: {entry['run_name']!r} is the name of a label budget's "
                                  "folder in a sweep; rename the stage")

    def _check_budget_data(self) -> None:
        """Something to sweep, and no budget above the labels of the data the label-reading stages use
        (known from ``collect.num_labeled`` or an existing local manifest)."""
        budgets = self.label_budgets
        if budgets is None or not self.stages:
            return
        reading = [i for i in range(len(self.stages)) if reads_labels(self.stage(i))]
        if not reading:
            raise ConfigError(f"label_budgets: got {budgets}, but no stage of this experiment trains on action labels "
                              "(idm, bc, action_decoder or a laom_sup LAM): every budget would train the same runs",
                              "label_budgets")
        for i in reading:
            dataset = self.stage(i).dataset
            known = self._labels_of(dataset)
            if known is None:
                continue
            have, source = known
            for budget in budgets:
                if budget is not None and budget > have:
                    raise ConfigError(f"label_budgets: got {budget}, but dataset {dataset} has {have} labeled "
                                      f"episodes ({source})", "label_budgets")

    def _labels_of(self, dataset: str) -> tuple[int, str] | None:
        """(labeled episodes, where that is known from) of ``dataset``: ``collect.num_labeled`` when the
        experiment collects it, else its manifest when it is a local dataset; None when unknown."""
        output = self.collect.output
        if "://" in dataset or "://" in output:
            same = dataset.rstrip("/") == output.rstrip("/")
        else:
            same = os.path.normpath(dataset) == os.path.normpath(output)
        if same:
            return self.collect.num_labeled, "collect.num_labeled"
        if "://" in dataset:
            return None  # not read at load time: the stage checks it when it starts
        from raylam.data.manifest import MANIFEST

        path = Path(dataset) / MANIFEST
        try:
            labeled = json.loads(path.read_text())["labeled_episodes"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return len(labeled), str(path)

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
        run root itself when it has only ``train.seed``. A sweep's label-free runs live here too."""
        seeds = self.seed_list()
        seed = seeds[0] if seed is None else seed
        if seed not in seeds:
            raise ConfigError(f"seed {seed} is not one of this experiment's seeds {seeds}")
        return self.run_root() if self.seeds is None else f"{self.run_root()}/seed{seed}"

    def seed_roots(self) -> dict[int, str]:
        """``{training seed: its run root}`` for every seed, in order."""
        return {seed: self.seed_root(seed) for seed in self.seed_list()}

    def budget_root(self, budget: int | None, seed: int | None = None) -> str:
        """Where the label-dependent runs of label budget ``budget`` and training seed ``seed`` live:
        ``<run root>/labels<n>``, then ``seed<k>`` as in :meth:`seed_root`."""
        if budget not in (self.label_budgets or []):
            raise ConfigError(f"label budget {budget} is not one of this experiment's label_budgets {self.label_budgets}")
        seed_part = self.seed_root(seed)[len(self.run_root()):]
        return f"{self.run_root()}/{budget_dir(budget)}{seed_part}"

    def label_dependent(self) -> set[str]:
        """Run names of the stages a label budget changes: those that train on action labels
        (:func:`reads_labels`) and every stage that reads one of them; empty without ``label_budgets``."""
        if self.label_budgets is None:
            return set()
        key = json.dumps([self.stages, to_dict(self.train)], sort_keys=True, default=str)
        cached = self.__dict__.get("_dependent")
        if cached is not None and cached[0] == key:  # every stage() asks: build the chain once per change
            return set(cached[1])
        seed = self.seed_list()[0]
        out: set[str] = set()
        for i, entry in enumerate(self.stages):
            if set(self.upstream(i).values()) & out or reads_labels(self._build(i, seed, self._roots(seed))):
                out.add(entry["run_name"])
        self.__dict__["_dependent"] = (key, frozenset(out))
        return out

    def stage(self, index: int, seed: int | None = None, budget: int | None = _FIRST) -> StageConfig:
        """The full config of stage ``index`` for training seed ``seed`` (default: the first
        of ``seeds``) and label budget ``budget`` of ``label_budgets`` (default: the first; ignored
        by a label-free stage, whose ``num_labeled`` a sweep clears, and without a sweep): ``train``
        with the stage's changes on top, in its run root, reading its upstream runs where they live
        (the budget's or the shared ones)."""
        seed = self.seed_list()[0] if seed is None else seed
        if self.label_budgets is None:
            return self._build(index, seed, self._roots(seed))
        dependent = self.label_dependent()
        if self.stages[index]["run_name"] not in dependent:  # reads no labels, nor do its upstream runs
            return self._build(index, seed, self._roots(seed), None)
        budget = self.label_budgets[0] if budget is _FIRST else budget
        return self._build(index, seed, self._roots(seed, budget, dependent), budget)

    def run_dirs(self, budget: int | None = _FIRST) -> dict[int, dict[str, str]]:
        """``{training seed: {run_name: run directory}}`` of every stage at label budget ``budget``
        (default: the first; without a sweep, the seed's run root): where an evaluation finds the
        runs its methods name."""
        dependent = self.label_dependent()
        if dependent and budget is _FIRST:
            budget = self.label_budgets[0]
        out = {}
        for seed in self.seed_list():
            root = self._roots(seed, budget, dependent)
            out[seed] = {entry["run_name"]: f"{root(entry['run_name'])}/{entry['run_name']}" for entry in self.stages}
        return out

    def _roots(self, seed: int, budget: int | None = _UNSET, dependent: set[str] = frozenset()) -> Callable[[str], str]:
        """run_name -> the folder it lives in: the budget's root for the ``dependent`` runs, the seed's
        root for the others."""
        shared = self.seed_root(seed)
        if budget is _UNSET or not dependent:
            return lambda name: shared
        at_budget = self.budget_root(budget, seed)
        return lambda name: at_budget if name in dependent else shared

    def _build(self, index: int, seed: int, root: Callable[[str], str], num_labeled: int | None = _UNSET) -> StageConfig:
        """Stage ``index`` with each run it names (itself, its upstream) in ``root(run_name)``, and
        ``num_labeled`` set when given (a relabel stage has none: its LAM's identity carries it)."""
        entry = copy.deepcopy(self.stages[index])
        entry["seed"] = seed
        shared = to_dict(self.train)
        for key, value in self.upstream(index).items():
            entry[key] = f"{root(value)}/{value}"
        entry["storage_path"] = root(entry["run_name"])
        if num_labeled is not _UNSET and not is_relabel(entry, shared):
            entry["num_labeled"] = num_labeled
        try:
            return stage_config(shared, entry)
        except ConfigError as err:
            raise ConfigError(f"stages[{index}] ({entry.get('run_name')}): {err}") from None

    def upstream(self, index: int) -> dict[str, str]:
        """``{field: run_name}`` of the earlier stages stage ``index`` reads by a bare name (its own
        ``lam_run``/``labels``/``policy_run``, or one it takes from ``train``)."""
        entry = self.stages[index]
        taken = inherited(to_dict(self.train), entry)
        out = {}
        for key in UPSTREAM_FIELDS:  # a bare name refers to a stage of this experiment
            value = entry.get(key, taken.get(key))
            if isinstance(value, str) and "/" not in value:
                if value not in [s["run_name"] for s in self.stages[:index]]:
                    raise ConfigError(f"stages[{index}].{key}: {value!r} is not an earlier stage of this experiment")
                out[key] = value
        return out

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
