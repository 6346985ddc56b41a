"""``run_tune``: a Ray Tune sweep whose trials are Ray Train runs of one experiment stage.

Each trial is a small *driver* function (no CPU of its own by default) that maps its sampled
values onto the base stage's TrainConfig and calls :func:`raylam.train.trainer.train` with a
:class:`TuneReportCallback`, so the TorchTrainer's reports reach Tune and ASHA can stop weak trials
on the ``step`` counter. The Train run of a trial lives in ``<sweep>/runs/trial-<trial id>``: a
restarted trial (driver failure, or ``resume``) re-runs ``train`` with the same name and storage
and Ray Train resumes it from its last checkpoint.

Outputs in the sweep directory, beside Tune's own files: ``results.csv``, ``results.parquet``,
``results.png`` and ``best.yaml`` (the experiment with the base stage set to the best trial's
values, ready for ``raylam train --config``), plus ``summary.json``.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import yaml

from raylam.cluster import cluster_resources
from raylam.config import ConfigError, from_dict, to_dict
from raylam.train.config import TrainConfig
from raylam.tune.config import TuneConfig, dotted_fields

RUNS_DIR = "runs"
FILES = {"csv": "results.csv", "parquet": "results.parquet", "plot": "results.png", "best": "best.yaml",
         "summary": "summary.json"}


# --------------------------------------------------------------------------- helpers
def plain(value: Any) -> Any:
    """numpy scalars (Tune's choice samples them) -> Python values the config loader accepts."""
    if hasattr(value, "item") and not isinstance(value, (list, dict, str)):
        try:
            return value.item()
        except (TypeError, ValueError):
            return value
    return value


def set_dotted(data: dict, key: str, value: Any) -> None:
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[parts[-1]] = value


def trial_dirname(trial) -> str:
    """Short trial directories (Tune's default puts every sampled value in the name)."""
    return f"trial-{trial.trial_id}"


# --------------------------------------------------------------------------- the plan
@dataclass
class SweepPlan:
    """A TuneConfig resolved against an experiment: everything checked before Ray starts."""

    experiment: str
    base_stage: str
    base_index: int
    base: dict[str, Any]  # the TrainConfig dict every trial starts from (base stage + fixed + resources)
    name: str
    storage_path: str  # local absolute path or URI of the sweep's parent
    sweep_dir: str
    max_t: int
    grace_period: int
    cpu_per_trial: float
    gpu_per_trial: float

    @property
    def steps(self) -> int:
        return int(self.base["steps"])


def plan_sweep(experiment, cfg: TuneConfig) -> SweepPlan:
    """Check ``cfg`` against ``experiment`` and resolve every default (raises ConfigError)."""
    from raylam.data.storage import resolve

    names = [s["run_name"] for s in experiment.stages]
    if cfg.base_stage is None:
        lams = [s["run_name"] for i, s in enumerate(experiment.stages) if experiment.stage(i).stage == "lam"]
        if not lams:
            raise ConfigError(f"tune.base_stage: null, and the experiment has no lam stage among {names}")
        base_stage = lams[0]
    elif cfg.base_stage not in names:
        raise ConfigError(f"tune.base_stage: got {cfg.base_stage!r}, expected one of {names}")
    else:
        base_stage = cfg.base_stage
    index = names.index(base_stage)
    stage = experiment.stage(index)
    if not stage.kind.trains:
        raise ConfigError(f"tune.base_stage: {base_stage!r} is a relabel stage; it trains nothing to tune")

    known = dotted_fields(TrainConfig)
    for where, keys in (("space", cfg.space), ("fixed", cfg.fixed)):
        for key in keys:
            if key not in known:
                raise ConfigError(f"tune.{where}.{key}: not a TrainConfig key (e.g. model.sup_coef, num_labeled)")
    for key in ("run_name", "storage_path"):
        if key in cfg.space or key in cfg.fixed:
            raise ConfigError(f"tune: {key} is set per trial by the sweep; do not search or fix it")

    base = to_dict(stage)
    for key, value in cfg.fixed.items():
        set_dotted(base, key, value)
    r = cfg.resources
    for key, value in (("num_workers", r.num_workers), ("use_gpu", r.use_gpu),
                       ("cpus_per_worker", r.cpus_per_worker), ("data.read_cpus", r.read_cpus)):
        if value is not None:
            set_dotted(base, key, value)
    # the CPUs counted for a trial's Ray Data work are the most it may take (enforced by Ray Data)
    set_dotted(base, "data.max_cpus", r.data_cpus if r.data_cpus is not None else base["data"]["read_cpus"])
    if r.gpus_per_worker != 1.0:
        set_dotted(base, "gpus_per_worker", r.gpus_per_worker)
    if r.gpus_per_worker < 1 and base["num_workers"] > 1:
        raise ConfigError(f"tune.resources.gpus_per_worker: {r.gpus_per_worker} with {base['num_workers']} "
                          "workers per trial; fractional GPUs only with num_workers 1 (NCCL, ray issue 48012)")
    try:
        base_cfg = from_dict(TrainConfig, base)
    except ConfigError as err:
        raise ConfigError(f"tune (base stage {base_stage} with tune.fixed/resources): {err}") from None
    base = to_dict(base_cfg)
    for key in ("dataset", "lam_run", "labels"):  # Tune runs trials in their own working directories
        if isinstance(base.get(key), str) and "://" not in base[key]:
            base[key] = os.path.abspath(base[key])

    # every searched edge value must make a valid TrainConfig (catches latent_dim: 0, ...)
    for key, dist in cfg.space.items():
        kind, values = next(iter(dist.items()))
        for value in values:
            trial = copy.deepcopy(base)
            set_dotted(trial, key, value)
            try:
                from_dict(TrainConfig, trial)
            except ConfigError as err:
                raise ConfigError(f"tune.space.{key}.{kind}: value {value!r}: {err}") from None

    if cfg.metric.startswith("heldout/"):
        if not base["eval_every"]:
            raise ConfigError(f"tune.metric: {cfg.metric} is reported only when the stage evaluates; set "
                              f"eval_every (e.g. tune.fixed: {{eval_every: {base['report_every']}}})")
        if cfg.metric.startswith("heldout/sup/") and base["model"]["method"] != "laom_sup":
            raise ConfigError(f"tune.metric: {cfg.metric} needs model.method laom_sup (its action head)")
    from raylam.train.metric_names import reported_metrics

    reported = reported_metrics(from_dict(TrainConfig, base))
    if cfg.metric not in reported:
        shown = sorted(m for m in reported if not m.startswith("timing/"))
        raise ConfigError(f"tune.metric: got {cfg.metric!r}, which stage {base_stage} never reports; it reports "
                          f"{', '.join(shown)}")
    _check_dataset(base, cfg)

    every = base["eval_every"] if cfg.metric.startswith("heldout/") else base["report_every"]
    s = cfg.scheduler
    max_t = s.max_t if s.max_t is not None else base["steps"]
    if max_t > base["steps"]:
        raise ConfigError(f"tune.scheduler.max_t: got {max_t}, expected <= the trials' steps ({base['steps']})")
    grace = s.grace_period if s.grace_period is not None else min(every, max_t)
    if grace > max_t:
        raise ConfigError(f"tune.scheduler.grace_period: got {grace}, expected <= max_t ({max_t})")

    storage_path = cfg.storage_path or experiment.run_root()
    name = cfg.name or f"tune-{base_stage}"
    if "/" in name or not name:
        raise ConfigError(f"tune.name: got {name!r}, expected a directory name without '/'")
    location = resolve(storage_path)
    storage_path = location.root if "://" not in storage_path else storage_path.rstrip("/")
    data_cpus = r.data_cpus if r.data_cpus is not None else base["data"]["read_cpus"]
    cpu = base["num_workers"] * base["cpus_per_worker"] + data_cpus + r.driver_cpus
    gpu = base["num_workers"] * base.get("gpus_per_worker", 1.0) if base["use_gpu"] else 0.0
    return SweepPlan(experiment=experiment.name, base_stage=base_stage, base_index=index, base=base, name=name,
                     storage_path=storage_path, sweep_dir=f"{storage_path}/{name}", max_t=max_t,
                     grace_period=grace, cpu_per_trial=cpu, gpu_per_trial=gpu)


def budget_note(experiment, cfg: TuneConfig, plan: SweepPlan) -> str | None:
    """The line that says which label budget the trials train at, when the experiment file is a
    label-budget sweep: Tune trains one stage, so it takes the first budget unless num_labeled is searched."""
    budgets = getattr(experiment, "label_budgets", None)
    if not budgets or "num_labeled" in cfg.space or "num_labeled" in cfg.fixed:
        return None
    return (f"label_budgets {budgets} are swept by `raylam pipeline`, not by Tune: these trials train at "
            f"num_labeled {plan.base.get('num_labeled')} (search num_labeled in tune.space to vary it)")


def _check_dataset(base: dict, cfg: TuneConfig) -> None:
    """Label budgets the dataset cannot give fail now, not in trial 7 of 16."""
    from raylam.data.pipeline import DatasetInfo

    try:
        info = DatasetInfo(base["dataset"])
    except FileNotFoundError:
        return  # the dataset may appear later (collected on the cluster); train() checks it per trial
    budgets = [base.get("num_labeled")]
    dist = cfg.space.get("num_labeled")
    if dist is not None:
        kind, values = next(iter(dist.items()))
        budgets = values if kind in ("choice", "grid") else [int(v) for v in values]
    for n in budgets:
        try:
            info.labeled_episodes(n)
        except ValueError as err:
            raise ConfigError(f"tune.space.num_labeled: {err}") from None


def trial_count(cfg: TuneConfig) -> int:
    """Trials of the sweep: num_samples times the number of grid points."""
    grid = 1
    for dist in cfg.space.values():
        kind, values = next(iter(dist.items()))
        if kind == "grid":
            grid *= len(values)
    return cfg.num_samples * grid


def max_concurrent(plan: SweepPlan, cfg: TuneConfig) -> int:
    """Trials run at once: ``max_concurrent_trials`` when set; else every trial of the sweep, at most
    as many as the cluster holds at its largest (``cluster_cpus``/``cluster_gpus``; unset: what it
    has now, the maximum of a fixed cluster). Never the GPUs of an autoscaling cluster before it
    scales up, which would be one trial at a time."""
    if cfg.max_concurrent_trials is not None:
        return cfg.max_concurrent_trials
    cpus, gpus = cfg.cluster_cpus, cfg.cluster_gpus
    if cpus is None or (gpus is None and plan.gpu_per_trial):
        present = cluster_resources()
        cpus = present.get("CPU", 0.0) if cpus is None else cpus
        gpus = present.get("GPU", 0.0) if gpus is None else gpus
    fits = [math.floor(cpus / plan.cpu_per_trial + 1e-9)] if plan.cpu_per_trial else []
    if plan.gpu_per_trial:
        fits.append(math.floor((gpus or 0.0) / plan.gpu_per_trial + 1e-9))
    n = min([trial_count(cfg), *fits])
    if n < 1:
        print(f"warning: one trial needs {plan.cpu_per_trial:g} CPU / {plan.gpu_per_trial:g} GPU, the cluster has "
              f"{cpus:g} / {gpus or 0:g}; running one trial at a time. On an autoscaling cluster set "
              "tune.cluster_cpus / tune.cluster_gpus to its largest size", flush=True)
    return max(1, n)


def driver_resources(cfg: TuneConfig, present: dict[str, float]) -> dict[str, float]:
    """What a trial's driver asks for: its CPUs, its custom resources and, when the cluster declares
    the ``pin_drivers`` resource (the head node), a sliver of it, so drivers and their Train
    controllers (which Train V2 places on the driver's node) never run on a spot node."""
    out = {"CPU": cfg.resources.driver_cpus, **cfg.resources.driver_resources}
    pin = cfg.resources.pin_drivers
    if pin and pin not in out:
        if present.get(pin):
            # the head advertises no CPUs (it runs no work): a pinned driver asks for none
            out.update({"CPU": 0.0, pin: 0.001})
        else:
            print(f"note: the cluster declares no {pin!r} resource; trial drivers are not pinned "
                  f"(declare it on the head node, see cluster/)", flush=True)
    return out


# --------------------------------------------------------------------------- the trial
def _objective_callback(metric: str):
    """A TuneReportCallback that forwards only reports carrying the objective.

    Tune rejects results without its metric, and the held-out objective comes only every
    ``eval_every`` steps; the other reports stay in the Train run's own logs."""
    from ray.tune.integration.ray_train import TuneReportCallback

    class ObjectiveReportCallback(TuneReportCallback):
        def after_report(self, run_context, metrics, checkpoint):
            if metrics and metric in metrics[0]:
                super().after_report(run_context, metrics, checkpoint)

    return ObjectiveReportCallback()


def trial_train_config(base: dict, config: dict, sweep_dir: str, trial_id: str,
                       max_t: int | None = None) -> TrainConfig:
    """A trial's stage: the base with the trial's values, in the sweep's runs directory. Its own step
    budget ends at ASHA's ``max_t``, so a stop decision that arrives late cannot let it run past it."""
    data = copy.deepcopy(base)
    for key, value in config.items():
        set_dotted(data, key, plain(value))
    if max_t is not None:
        data["steps"] = min(int(data["steps"]), max_t)
    data["run_name"] = f"trial-{trial_id}"
    data["storage_path"] = f"{sweep_dir}/{RUNS_DIR}"
    return from_dict(TrainConfig, data)


def _trial(config: dict, plan: dict | None = None, metric: str = "",
           callbacks: tuple[Callable[[], Any], ...] = ()) -> None:
    """The Tune trial: a Ray Train driver for one point of the search space."""
    import ray.tune

    from raylam.train.trainer import train

    trial_id = ray.tune.get_context().get_trial_id()
    cfg = trial_train_config(plan["base"], config, plan["sweep_dir"], trial_id, plan["max_t"])
    train(cfg, plan["experiment"], callbacks=[_objective_callback(metric), *(make() for make in callbacks)])


def _domain(dist: dict):
    from ray import tune

    kind, values = next(iter(dist.items()))
    if kind == "loguniform":
        return tune.loguniform(*values)
    if kind == "uniform":
        return tune.uniform(*values)
    if kind == "choice":
        return tune.choice(values)
    return tune.grid_search(values)


# --------------------------------------------------------------------------- the sweep
@dataclass
class TuneSummary:
    sweep_dir: str
    metric: str
    mode: str
    num_trials: int
    completed: int
    stopped_early: int
    errored: int
    best_trial: str | None
    best_value: float | None
    best_config: dict[str, Any]
    files: dict[str, str]
    wall_s: float
    resumed: bool
    table: Any = field(default=None, repr=False)  # pandas DataFrame: one row per trial

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "table"}


def run_tune(experiment, cfg: TuneConfig | None = None, resume: bool = False,
             train_callbacks: tuple[Callable[[], Any], ...] = ()) -> TuneSummary:
    """Run (or, with ``resume``, continue) the sweep ``cfg`` over a stage of ``experiment``.

    ``cfg`` defaults to ``experiment.tune`` (or TuneConfig()). ``train_callbacks`` are factories
    called inside each trial; what they return joins the Train run's RunConfig callbacks."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from raylam.data.storage import resolve

    if cfg is None:
        cfg = getattr(experiment, "tune", None) or TuneConfig()
    plan = plan_sweep(experiment, cfg)
    start = time.perf_counter()
    trainable = tune.with_parameters(_trial, plan=dataclasses.asdict(plan), metric=cfg.metric,
                                     callbacks=tuple(train_callbacks))
    trainable = tune.with_resources(trainable, driver_resources(cfg, cluster_resources()))

    restorable = tune.Tuner.can_restore(plan.sweep_dir)
    if restorable and resume:
        print(f"resuming sweep {plan.sweep_dir}", flush=True)
        tuner = tune.Tuner.restore(plan.sweep_dir, trainable=trainable, resume_unfinished=True,
                                   resume_errored=True)
    else:
        if restorable:
            raise ConfigError(f"tune.name: sweep {plan.sweep_dir} exists; pass --resume to continue it, or "
                              "choose another tune.name")
        if resume:
            print(f"no sweep at {plan.sweep_dir} to resume; starting it", flush=True)
        concurrent = max_concurrent(plan, cfg)
        scheduler = None
        if cfg.scheduler.enabled:
            scheduler = ASHAScheduler(time_attr="step", max_t=plan.max_t, grace_period=plan.grace_period,
                                      reduction_factor=cfg.scheduler.reduction_factor)
        callbacks = []
        if cfg.wandb.enabled:
            from ray.air.integrations.wandb import WandbLoggerCallback

            callbacks.append(WandbLoggerCallback(project=cfg.wandb.project, group=cfg.wandb.group or plan.name,
                                                 entity=cfg.wandb.entity, mode=cfg.wandb.mode))
        print(f"sweep {plan.sweep_dir}: base stage {plan.base_stage}, {cfg.num_samples} samples of "
              f"{sorted(cfg.space)}, {concurrent} trial(s) at a time "
              f"({plan.cpu_per_trial:g} CPU / {plan.gpu_per_trial:g} GPU each)", flush=True)
        note = budget_note(experiment, cfg, plan)
        if note:
            print(note, flush=True)
        tuner = tune.Tuner(
            trainable,
            param_space={key: _domain(dist) for key, dist in cfg.space.items()},
            tune_config=tune.TuneConfig(
                metric=cfg.metric, mode=cfg.mode, num_samples=cfg.num_samples, scheduler=scheduler,
                # the generator holds the concurrency limit (Tune ignores max_concurrent_trials beside it)
                search_alg=BasicVariantGenerator(random_state=cfg.seed, max_concurrent=concurrent),
                trial_dirname_creator=trial_dirname,
            ),
            run_config=tune.RunConfig(name=plan.name, storage_path=plan.storage_path, callbacks=callbacks,
                                      failure_config=tune.FailureConfig(max_failures=cfg.max_failures)),
        )
    grid = tuner.fit()
    summary = export(grid, experiment, cfg, plan, resolve(plan.sweep_dir))
    summary.wall_s = round(time.perf_counter() - start, 1)
    summary.resumed = bool(restorable and resume)
    resolve(plan.sweep_dir).write_json(FILES["summary"], summary.to_dict())
    return summary


# --------------------------------------------------------------------------- exports
def results_table(grid, cfg: TuneConfig, plan: SweepPlan):
    """One row per trial: id, status, searched values, objective, step, held-out metrics."""
    import pandas as pd

    frame = grid.get_dataframe()
    rows = []
    for result in grid:
        metrics = result.metrics or {}
        config = result.config or {}
        trial_id = metrics.get("trial_id") or result.path.rstrip("/").rsplit("trial-", 1)[-1]
        steps = int(plain(config.get("steps", plan.steps)))  # `steps` may be searched
        step = metrics.get("step")
        if result.error is not None:
            status = "error"
        elif step is None:
            status = "no_result"  # never reported (e.g. the sweep was interrupted first)
        elif step < min(steps, plan.max_t):
            status = "stopped"  # early, by ASHA
        else:
            status = "completed"
        row = {"trial_id": trial_id, "status": status}
        row.update({key: plain(config.get(key)) for key in cfg.space})
        row[cfg.metric] = metrics.get(cfg.metric)
        row["step"] = step
        row.update({k: v for k, v in sorted(metrics.items()) if k.startswith("heldout/") and k != cfg.metric})
        row["loss"] = metrics.get("loss")
        rows.append(row)
    table = pd.DataFrame(rows)
    if not table.empty:
        table = table.sort_values(cfg.metric, ascending=cfg.mode == "min", na_position="last")
    # Tune's own per-trial frame (last result of every trial: all metrics and config/* columns)
    if frame is not None and not frame.empty and "trial_id" in frame:
        extra = [c for c in frame.columns if c not in table.columns and c != "trial_id"]
        table = table.merge(frame[["trial_id", *extra]], on="trial_id", how="left")
    return table.reset_index(drop=True)


def export(grid, experiment, cfg: TuneConfig, plan: SweepPlan, location) -> TuneSummary:
    table = results_table(grid, cfg, plan)
    files = {}
    location.makedirs()
    location.write_atomic(FILES["csv"], lambda s: s.write(table.to_csv(index=False).encode()))
    files["csv"] = location.path(FILES["csv"])
    parquet = io.BytesIO()
    _parquet_safe(table).to_parquet(parquet, index=False)
    location.write_atomic(FILES["parquet"], lambda s: s.write(parquet.getvalue()))
    files["parquet"] = location.path(FILES["parquet"])
    png = plot(table, cfg)
    if png is not None:
        location.write_atomic(FILES["plot"], lambda s: s.write(png))
        files["plot"] = location.path(FILES["plot"])

    ok = table[table["status"] != "error"] if not table.empty else table
    ok = ok[ok[cfg.metric].notna()] if not ok.empty else ok
    best_trial, best_value, best_config = None, None, {}
    if not ok.empty:
        best = ok.iloc[0]  # the table is sorted by the objective
        best_trial, best_value = str(best["trial_id"]), float(best[cfg.metric])
        best_config = {key: plain(best[key]) for key in cfg.space}
        text = best_yaml(experiment, plan, best_config, cfg.metric, best_value, best_trial)
        location.write_atomic(FILES["best"], lambda s: s.write(text.encode()))
        files["best"] = location.path(FILES["best"])
    else:
        print(f"warning: no trial reported {cfg.metric}; no best.yaml", flush=True)
    counts = table["status"].value_counts().to_dict() if not table.empty else {}
    return TuneSummary(
        sweep_dir=plan.sweep_dir, metric=cfg.metric, mode=cfg.mode, num_trials=len(table),
        completed=int(counts.get("completed", 0)), stopped_early=int(counts.get("stopped", 0)),
        errored=int(counts.get("error", 0)), best_trial=best_trial, best_value=best_value,
        best_config=best_config, files=files, wall_s=0.0, resumed=False, table=table)


def _parquet_safe(table):
    out = table.copy()
    for column in out.columns:
        if out[column].dtype == object:
            values = out[column].dropna()
            if not all(isinstance(v, str) for v in values) and not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                out[column] = out[column].map(lambda v: None if v is None else json.dumps(v, default=str))
    return out


def best_yaml(experiment, plan: SweepPlan, best: dict[str, Any], metric: str, value: float, trial: str) -> str:
    """The experiment as YAML with the base stage's values replaced by the best trial's."""
    data = to_dict(experiment)
    stage = data["stages"][plan.base_index]
    for key, v in best.items():
        set_dotted(stage, key, plain(v))
    header = (f"# Written by `raylam tune`: the best trial ({trial}, {metric} = {value:.6g}) of the sweep\n"
              f"# {plan.sweep_dir}; stage {plan.base_stage} now sets "
              + ", ".join(f"{k}={plain(v)!r}" for k, v in best.items())
              + ".\n# Run it: raylam train --config best.yaml\n")
    return header + yaml.safe_dump(data, sort_keys=False)


def plot(table, cfg: TuneConfig) -> bytes | None:
    """Objective against each searched number, coloured by latent_dim when it is searched."""
    if table.empty or table[cfg.metric].notna().sum() == 0:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colour = "model.latent_dim" if "model.latent_dim" in cfg.space else None
    xs = [k for k in cfg.space if k != colour and _numeric(table[k])] or ([colour] if colour else [])
    if not xs:
        return None
    data = table[(table["status"] != "error") & table[cfg.metric].notna()]
    fig, axes = plt.subplots(1, len(xs), figsize=(5 * len(xs), 4), squeeze=False)
    groups = sorted(data[colour].dropna().unique()) if colour else [None]
    cmap = plt.get_cmap("viridis", max(2, len(groups)))
    for ax, x in zip(axes[0], xs, strict=True):
        for i, group in enumerate(groups):
            part = data if group is None else data[data[colour] == group]
            done = part[part["status"] == "completed"]
            stopped = part[part["status"] == "stopped"]
            label = None if group is None else f"latent_dim={group}"
            ax.scatter(done[x], done[cfg.metric], color=cmap(i), label=label)
            ax.scatter(stopped[x], stopped[cfg.metric], facecolors="none", edgecolors=cmap(i))
        values = data[x].dropna()
        if len(values) and (values > 0).all() and values.max() / values.min() > 20:
            ax.set_xscale("log")
        ax.set_xlabel(x)
        ax.set_ylabel(cfg.metric)
        ax.grid(alpha=0.3)
    if colour and len(groups):  # no finished trial yet: nothing to name
        axes[0][0].legend(fontsize=8, title="hollow: stopped by ASHA", title_fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def _numeric(column) -> bool:
    values = column.dropna()
    return len(values) > 0 and all(isinstance(plain(v), (int, float)) and not isinstance(v, bool) for v in values)
