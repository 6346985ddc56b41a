"""``raylam pipeline``: collect -> every training stage -> evaluate -> report, in one command.

With several training seeds (``seeds``) the chain runs once per seed, each seed in its own run
root, and the evaluation merges the seeds into one report (mean ± std over seeds).
Each step is the same function its own command runs. A rerun picks up where the last one stopped:
collection skips finished shards, and a stage whose ``artifact.json`` records the very config it
would run with is not trained again (``force`` retrains everything).
"""

from __future__ import annotations

import time

from raylam.config import ConfigError, to_dict
from raylam.experiment import ExperimentConfig
from raylam.train.config import UPSTREAM_FIELDS


def stage_is_done(cfg) -> bool:
    """True when the stage's run directory holds an artifact made with exactly this config."""
    from raylam.data.storage import resolve
    from raylam.train.artifacts import ARTIFACT
    from raylam.train.trainer import run_name

    run_dir = resolve(f"{cfg.storage_path.rstrip('/')}/{run_name(cfg)}")
    if not run_dir.exists(ARTIFACT):
        return False
    try:
        artifact = run_dir.read_json(ARTIFACT)
    except ValueError:  # a damaged artifact: train again
        return False
    return with_defaults(artifact.get("requested_config") or {}, to_dict(type(cfg)())) == to_dict(cfg)


def with_defaults(recorded: dict, defaults: dict) -> dict:
    """``recorded`` with the keys it lacks taken from ``defaults`` (nested): a config field added to
    raylam after a run, at its default, does not make that run stale."""
    out = dict(recorded)
    for key, value in defaults.items():
        if key not in out:
            out[key] = value
        elif isinstance(value, dict) and isinstance(out[key], dict):
            out[key] = with_defaults(out[key], value)
    return out


def select_methods(exp: ExperimentConfig, methods: list[str] | None) -> list[int]:
    """Keep only the evaluated ``methods`` (all when None); returns the indices of the stages they need.

    A method needs the runs it names (lam, policy, decoder) and, transitively, the stages those
    read (``lam_run``, ``labels``).
    """
    if methods is None:
        return list(range(len(exp.stages)))
    known = [m.name for m in exp.evaluate.methods]
    unknown = [m for m in methods if m not in known]
    if unknown:
        raise ConfigError(f"--methods: {unknown} not in evaluate.methods of {exp.name!r} (has {known})")
    exp.evaluate.methods = [m for m in exp.evaluate.methods if m.name in methods]
    names = [s["run_name"] for s in exp.stages]
    wanted = {run for m in exp.evaluate.methods for run in (m.lam, m.policy, m.decoder) if run in names}
    for entry in reversed(exp.stages):  # stages only read earlier ones, so one backward pass closes the set
        if entry["run_name"] in wanted:
            wanted |= {entry.get(key) for key in UPSTREAM_FIELDS} & set(names)
    return [i for i, name in enumerate(names) if name in wanted]


def run_pipeline(exp: ExperimentConfig, force: bool = False, methods: list[str] | None = None) -> dict:
    """Run the experiment (or the stages ``methods`` need) on the current or a new local Ray cluster;
    returns timings and paths."""
    import ray

    from raylam.data.collect import collect
    from raylam.eval.evaluate import evaluate_methods
    from raylam.train.trainer import train

    if not exp.stages:
        raise ConfigError(f"pipeline: experiment {exp.name!r} defines no `stages` to train")
    if not exp.evaluate.methods:
        raise ConfigError(f"pipeline: experiment {exp.name!r} has no `evaluate.methods`; nothing would be evaluated")
    stages = select_methods(exp, methods)
    if not ray.is_initialized():
        ray.init()
    timings: dict[str, float] = {}
    start = time.perf_counter()
    print(f"== collect -> {exp.collect.output}", flush=True)
    manifest = collect(exp.collect)
    timings["collect"] = time.perf_counter() - start
    print(f"== collect done: {manifest['num_episodes']} episodes, {manifest['num_transitions']} frames "
          f"({timings['collect']:.0f} s)", flush=True)
    seeds = exp.seed_list()
    plan = [(seed, i) for seed in seeds for i in stages]
    for k, (seed, i) in enumerate(plan, 1):
        stage = exp.stage(i, seed)
        label = stage.run_name if len(seeds) == 1 else f"seed{seed}/{stage.run_name}"
        counter = f"{k}/{len(plan)}"
        if not force and stage_is_done(stage):
            print(f"== stage {counter} {label}: already done with this config, skipped", flush=True)
            continue
        t = time.perf_counter()
        what = f"labels from {stage.lam_run}" if stage.stage == "relabel" else stage.model.method
        print(f"== stage {counter} {label}: {stage.stage} ({what}, seed {seed})", flush=True)
        train(stage, exp.name, label=f"[{counter}] {label}")
        timings[label] = time.perf_counter() - t
        print(f"== stage {counter} {label} done ({timings[label]:.0f} s)", flush=True)
    t = time.perf_counter()
    output = exp.eval_output()
    results = evaluate_methods(exp.evaluate, exp.seed_roots(), output, experiment=exp.name)
    timings["evaluate"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - start
    return {"output": output, "report": f"{output}/report.md", "timings": timings, "results": results}
