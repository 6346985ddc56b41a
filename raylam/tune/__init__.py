"""``raylam tune``: Ray Tune sweeps (ASHA) over one training stage of an experiment.

``run_tune(experiment, TuneConfig(...))`` runs the sweep; ``cmd_tune`` is the command line's
``raylam tune --config configs/tune_quickstart.yaml [KEY=VALUE ...] [--resume]`` (its parser is in
:mod:`raylam.cli`).
"""

from __future__ import annotations

import json
from pathlib import Path

from raylam.config import to_dict
from raylam.tune.config import AshaConfig, TrialResources, TuneConfig, TuneWandbConfig
from raylam.tune.sweep import TuneSummary, plan_sweep, run_tune

__all__ = ["AshaConfig", "TrialResources", "TuneConfig", "TuneSummary", "TuneWandbConfig", "cmd_tune", "load_sweep", "run_tune"]


def load_sweep(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()):
    """(ExperimentConfig, TuneConfig) from an experiment YAML with a ``tune`` section plus overrides."""
    from raylam.experiment import load_experiment

    experiment = load_experiment(path, overrides)
    return experiment, experiment.tune


def cmd_tune(args) -> int:
    experiment, cfg = load_sweep(args.config, args.overrides)
    if args.print_config:
        print(json.dumps({**to_dict(experiment), "tune": to_dict(cfg)}, indent=2))
        return 0
    from raylam.checks import check_experiment
    from raylam.cluster import check_paths, limit_oom_retries, require_cluster_paths
    from raylam.console import start_ray

    check_experiment(experiment, "tune")
    limit_oom_retries(experiment.oom_retries)
    plan_sweep(experiment, cfg)  # a sweep that cannot run fails here, before Ray starts
    start_ray()  # announced and timed, as every command that starts Ray
    require_cluster_paths(experiment, collect=False, evaluate=False)
    check_paths({"tune.storage_path": cfg.storage_path} if cfg.storage_path else {}, experiment.shared_filesystem)
    summary = run_tune(experiment, cfg, resume=args.resume)
    table = summary.table
    if table is not None and not table.empty:
        shown = ["trial_id", "status", *cfg.space, cfg.metric, "step"]
        with _pandas_wide():
            print(table[[c for c in shown if c in table.columns]].to_string(index=False))
    print(f"{summary.num_trials} trials: {summary.completed} completed, {summary.stopped_early} stopped by ASHA, "
          f"{summary.errored} errored; {summary.wall_s:.0f} s", flush=True)
    if summary.best_trial is not None:
        print(f"best: trial {summary.best_trial}, {summary.metric} = {summary.best_value:.6g}, "
              f"{summary.best_config}")
    for kind, path in summary.files.items():
        print(f"  {kind}: {path}")
    return 0 if summary.best_trial is not None else 1


class _pandas_wide:
    def __enter__(self):
        import pandas as pd

        self._ctx = pd.option_context("display.width", 200, "display.max_columns", 20)
        return self._ctx.__enter__()

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)
