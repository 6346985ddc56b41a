"""``raylam evaluate``: probes of every LAM and rollouts of every policy of an experiment.

Each method of ``evaluate.methods`` names its runs (a LAM or IDM for probes; a policy, and the
action decoder that turns its latent into actions, for rollouts). The evaluation writes
``results.json`` -- one row per method x task x label budget x seed -- and a report beside it.
"""

from __future__ import annotations

import datetime as dt
import time

import numpy as np

from raylam.config import from_dict, to_dict
from raylam.data.pipeline import DatasetInfo
from raylam.data.storage import resolve
from raylam.envs.config import EnvConfig
from raylam.eval.config import EvalConfig, MethodRuns
from raylam.train.artifacts import read_artifact

RESULTS = "results.json"
RESULTS_FORMAT = "raylam-results/1"
REFERENCES = ("expert", "random")  # agents that bracket the scale: normalized return ~1 and ~0


def run_path(name: str | None, run_root: str) -> str | None:
    """A bare run name is a run of this experiment; anything with a '/' is a path or URI."""
    if name is None:
        return None
    return name if "/" in name else f"{run_root.rstrip('/')}/{name}"


def env_of_dataset(info: DatasetInfo) -> EnvConfig:
    """The environment the dataset was collected in (task, image size, camera, episode length)."""
    env = info.manifest.get("config", {}).get("env")
    if env is None:
        raise ValueError(f"dataset {info.uri}: its manifest records no env config; collect it with raylam collect")
    return from_dict(EnvConfig, env)


def _row(method: str, runs: dict, artifact: dict | None, info: DatasetInfo, seed: int) -> dict:
    labeled = artifact.get("num_labeled") if artifact else None
    if labeled is None:  # null budget: every labeled episode of the dataset
        labeled = len(info.manifest["labeled_episodes"])
    return {
        "method": method, "task": info.manifest["task"], "num_labeled": int(labeled), "seed": seed,
        "dataset": info.uri, "runs": runs, "probe": None, "rollouts": {},
    }


def evaluate_methods(cfg: EvalConfig, run_root: str, output: str, dataset: str | None = None,
                     probes: bool = True, rollouts: bool = True, experiment: str = "raylam") -> dict:
    """Evaluate ``cfg.methods`` (run names relative to ``run_root``); write results + report to ``output``."""
    import ray

    from raylam.eval.report import write_report

    if not ray.is_initialized():
        ray.init()
    start = time.perf_counter()
    rows, strips = [], {}
    for m in cfg.methods:
        runs = {k: run_path(getattr(m, k), run_root) for k in ("lam", "policy", "decoder")}
        artifact = _method_artifact(m, runs)
        info = DatasetInfo(dataset or artifact["dataset"])
        row = _row(m.name, {k: v for k, v in runs.items() if v}, artifact, info, cfg.seed)
        if probes and cfg.probe.enabled and runs["lam"]:
            from raylam.eval.probes import probe_run

            print(f"== probe {m.name}: {runs['lam']}", flush=True)
            row["probe"] = probe_run(runs["lam"], cfg.probe, dataset=info.uri)
            print(f"   action probe MSE {row['probe']['action']['mse']:.4f} R2 {row['probe']['action']['r2']:.3f}; "
                  f"state probe R2 {row['probe']['state']['r2']:.3f}", flush=True)
        if rollouts and cfg.rollout.episodes and runs["policy"]:
            agent = {"kind": "policy", "policy": runs["policy"], "decoder": runs["decoder"]}
            row["rollouts"], strips[m.name] = _act(m.name, agent, info, cfg)
        rows.append(row)
    if rollouts and cfg.rollout.episodes and cfg.rollout.references and rows:
        info = DatasetInfo(dataset or rows[0]["dataset"])
        for kind in REFERENCES:
            row = _row(kind, {}, None, info, cfg.seed)
            row["rollouts"], strips[kind] = _act(kind, {"kind": kind}, info, cfg)
            rows.append(row)
    results = {
        "format": RESULTS_FORMAT,
        "experiment": experiment,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "wall_s": time.perf_counter() - start,
        "config": to_dict(cfg),
        "rows": rows,
    }
    out = resolve(output)
    out.makedirs()
    out.write_json(RESULTS, results)
    write_report(results, output, strips)
    return results


def _method_artifact(m: MethodRuns, runs: dict) -> dict:
    """The artifact that defines the method's dataset and label budget (policy first, else LAM)."""
    for key in ("policy", "lam"):
        if runs[key]:
            return read_artifact(runs[key])
    raise ValueError(f"evaluate.methods: {m.name!r} names neither a lam nor a policy run")


def _act(name: str, agent: dict, info: DatasetInfo, cfg: EvalConfig) -> tuple[dict, dict]:
    """Rollouts of one agent in every setting: ({setting: summary}, {setting: frames})."""
    from raylam.eval.rollout import evaluate_online

    env = env_of_dataset(info)
    print(f"== rollouts {name}: {cfg.rollout.episodes} episodes x {cfg.rollout.settings}", flush=True)
    summaries, frames = {}, {}
    for result in evaluate_online(agent, env, cfg.rollout):
        setting = result["setting"]
        frames[setting] = np.asarray(result.pop("frames"))
        summaries[setting] = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in result.items()}
        print(f"   {setting}: return {result['return_mean']:.1f} ± {result['return_std']:.1f}, "
              f"normalized {result['normalized_mean']:.3f}", flush=True)
    return summaries, frames
