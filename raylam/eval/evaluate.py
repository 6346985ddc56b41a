"""``raylam evaluate``: probes of every LAM and rollouts of every policy of an experiment.

Each method of ``evaluate.methods`` names its runs (a LAM or IDM for probes; a policy, and the
action decoder that turns its latent into actions, for rollouts). The evaluation writes
``results.json`` -- one row per method x task x label budget x training seed, the seed read from
the runs' artifacts -- and a report beside it. With several training seeds (one run root per
seed), every seed's runs are evaluated on the same episodes, each seed's rows also go to
``<output>/seed<k>/results.json``, the expert and random references are rolled out once, and the
report shows mean ± std over the seeds.
"""

from __future__ import annotations

import copy
import datetime as dt
import time
from collections.abc import Mapping

import numpy as np

from raylam.config import from_dict, to_dict
from raylam.data.pipeline import DatasetInfo
from raylam.data.storage import resolve
from raylam.envs.config import EnvConfig
from raylam.eval.config import EvalConfig, MethodRuns, rollout_key
from raylam.train.artifacts import read_artifact

RESULTS = "results.json"
EPISODES = "episodes"  # <output>/episodes/[seed<k>/]<method>/<condition>.json: finished rollout episodes
RESULTS_FORMAT = "raylam-results/1"
REFERENCES = ("expert", "random")  # agents that bracket the scale: normalized return ~1 and ~0


def run_path(name: str | None, run_root: str | Mapping[str, str]) -> str | None:
    """A bare run name is a run of this experiment: in ``run_root``, or where the mapping ``{run_name:
    run directory}`` puts it (a label-budget sweep's runs live in several folders); anything with a
    '/' is a path or URI."""
    if name is None:
        return None
    if "/" in name:
        return name
    if isinstance(run_root, Mapping):
        if name not in run_root:
            raise ValueError(f"evaluate: {name!r} is not a run of this experiment (runs: {', '.join(run_root)})")
        return run_root[name]
    return f"{run_root.rstrip('/')}/{name}"


def _where(run_root: str | Mapping[str, str]) -> str:
    """The folder(s) of a run root, for messages."""
    if isinstance(run_root, str):
        return run_root
    return ", ".join(sorted({path.rsplit("/", 1)[0] for path in run_root.values()}))


def env_of_dataset(info: DatasetInfo) -> EnvConfig:
    """The environment the dataset was collected in (task, image size, camera, episode length)."""
    env = info.manifest.get("config", {}).get("env")
    if env is None:
        raise ValueError(f"dataset {info.uri}: its manifest records no env config; collect it with raylam collect")
    return from_dict(EnvConfig, env)


def training_seed(artifact: dict | None, fallback: int | None = None) -> int | None:
    """The training seed a run's artifact records (its config's ``seed``); ``fallback`` for runs
    made before TrainConfig had one."""
    if not artifact:
        return fallback
    seed = (artifact.get("config") or {}).get("seed")
    return fallback if seed is None else int(seed)


def _data_preset(info: DatasetInfo) -> str | None:
    """The distractor preset the dataset was collected with (``vanilla`` for the control data)."""
    return ((info.manifest.get("config") or {}).get("env") or {}).get("preset")


def _row(method: str, runs: dict, artifact: dict | None, info: DatasetInfo, seed: int | None,
         num_labeled: int | None = None) -> dict:
    labeled = num_labeled if num_labeled is not None else artifact.get("num_labeled") if artifact else None
    if labeled is None:  # null budget: every labeled episode of the dataset
        labeled = len(info.manifest["labeled_episodes"])
    return {
        "method": method, "task": info.manifest["task"], "num_labeled": int(labeled), "seed": seed,
        "data": _data_preset(info), "dataset": info.uri, "runs": runs, "probe": None, "rollouts": {},
    }


def evaluate_methods(cfg: EvalConfig, run_root: str | Mapping[int, str | Mapping[str, str]], output: str,
                     dataset: str | None = None, probes: bool = True, rollouts: bool = True,
                     experiment: str = "raylam", num_labeled: int | None = None,
                     memo: dict | None = None, cache: str | None = None) -> dict:
    """Evaluate ``cfg.methods``; write results + report to ``output``.

    ``run_root``: where the methods' bare run names live -- one directory, or ``{training seed:
    directory or {run_name: run directory}}`` for several seeds (each seed's rows also go to
    ``<output>/seed<k>/results.json``). Every row's ``seed`` is the training seed its run's artifact
    records; its ``num_labeled`` the label budget the artifact records, or ``num_labeled`` when
    given: one budget of a sweep, whose label-free runs every budget shares. ``memo``: a dict kept
    across the budgets of one sweep, so that a run shared by every budget is probed, and the
    reference policies are rolled out, once. ``cache``: a folder that keeps both across evaluations
    (a sweep evaluated one budget per invocation): each LAM's probes under ``probes/``, named by the
    run's identity, the probe settings and the dataset's identity; the references' episodes under
    ``episodes/``, which the rollouts resume from (their log checks agent, env and seeds).
    """
    from raylam.eval.report import write_report

    memo = {} if memo is None else memo
    start = time.perf_counter()
    roots = {None: run_root} if isinstance(run_root, str) else dict(run_root)
    if not roots:
        raise ValueError("evaluate: no run root to evaluate")
    rows, strips = [], {}
    for seed, root in roots.items():
        if len(roots) > 1:
            print(f"== training seed {seed}: {_where(root)}", flush=True)
        # one root: the row's seed is whatever its runs were trained with; several: each root must hold its seed
        episodes = f"{output.rstrip('/')}/{EPISODES}" + (f"/seed{seed}" if len(roots) > 1 else "")
        seed_rows, seed_strips = _evaluate_root(cfg, root, cfg.seed if seed is None else seed, len(roots) > 1,
                                                dataset, probes, rollouts, episodes, num_labeled, memo, cache)
        if len(roots) > 1:
            seed_out = resolve(f"{output.rstrip('/')}/seed{seed}")
            seed_out.makedirs()
            seed_out.write_json(RESULTS, _document(cfg, experiment, seed_rows, time.perf_counter() - start))
        rows += seed_rows
        for method, frames in seed_strips.items():  # the report's strips: the first seed's
            strips.setdefault(method, frames)
    info = DatasetInfo(dataset or rows[0]["dataset"]) if rows else None
    if rollouts and cfg.rollout.episodes and cfg.rollout.references and rows and rollout_env(info, cfg) is not None:
        for kind in REFERENCES:  # the same episodes for every seed (and budget): rolled out once
            row = _row(kind, {}, None, info, None)
            where = (cache or output).rstrip("/")
            row["rollouts"], strips[kind] = _once(memo, ("reference", kind), _act, kind, {"kind": kind}, info, cfg,
                                                  f"{where}/{EPISODES}/{kind}")
            rows.append(row)
    results = _document(cfg, experiment, rows, time.perf_counter() - start)
    results["evaluations"] = evaluations_run(cfg, info, probes, rollouts)
    for line in results["evaluations"]:
        print(f"   evaluation: {line}", flush=True)
    out = resolve(output)
    out.makedirs()
    out.write_json(RESULTS, results)
    write_report(results, output, strips)
    return results


def _document(cfg: EvalConfig, experiment: str, rows: list[dict], wall_s: float) -> dict:
    seeds = sorted({r["seed"] for r in rows if r["seed"] is not None})
    return {
        "format": RESULTS_FORMAT,
        "experiment": experiment,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "wall_s": wall_s,
        "seeds": seeds,
        # the label budgets of the methods' rows (each row records its own num_labeled and seed), so
        # a file among many that `raylam report` merges says at a glance which cell it holds
        "num_labeled": sorted({r["num_labeled"] for r in rows if r["method"] not in REFERENCES}),
        "config": to_dict(cfg),
        "rows": rows,
    }


def _evaluate_root(cfg: EvalConfig, run_root: str | Mapping[str, str], seed: int, strict: bool,
                   dataset: str | None, probes: bool, rollouts: bool, episodes: str,
                   num_labeled: int | None, memo: dict, cache: str | None = None) -> tuple[list[dict], dict]:
    """Probes and rollouts of every method whose runs live in ``run_root``: (rows, strips).

    A row's seed is the one its runs' artifact records (``seed`` for runs that record none);
    ``strict``: it must be ``seed``. Finished rollout episodes are recorded under ``episodes``."""
    rows, strips = [], {}
    for m in cfg.methods:
        runs = {k: run_path(getattr(m, k), run_root) for k in ("lam", "policy", "decoder")}
        artifact = _method_artifact(m, runs)
        info = DatasetInfo(dataset or artifact["dataset"])
        trained = training_seed(artifact, seed)
        if strict and trained != seed:
            raise ValueError(f"evaluate: {m.name}'s run {runs['policy'] or runs['lam']} was trained with seed "
                             f"{trained}, but it lives in the run root of seed {seed} ({_where(run_root)})")
        row = _row(m.name, {k: v for k, v in runs.items() if v}, artifact, info, trained, num_labeled)
        if runs["lam"]:  # the paper's diagnostic: the probes trained beside the LAM (own optimizer, constant lr)
            metrics = read_artifact(runs["lam"]).get("metrics", {})
            row["training_probe"] = {k: v for k, v in metrics.items() if "probe" in k or k.startswith("heldout/")}
        if probes and cfg.probe.enabled and runs["lam"]:
            from raylam.eval.probes import probe_run

            key = ("probe", runs["lam"], info.uri)
            stored = _probe_store(cache, runs["lam"], cfg, info) if cache else None
            earlier = " (probed for an earlier budget)" if key in memo else \
                " (probed by an earlier evaluation)" if stored and stored[0].exists(stored[1]) else ""
            print(f"== probe {m.name}: {runs['lam']}{earlier}", flush=True)  # a run budgets share is probed once
            row["probe"] = _once(memo, key, probe_run, runs["lam"], cfg.probe, dataset=info.uri, stored=stored)
            print("   " + "; ".join(f"{k} probe MSE {v['mse']:.4f} R2 {v['r2']:.3f}" for k, v in row["probe"].items()
                                   if isinstance(v, dict) and "mse" in v), flush=True)
        if rollouts and cfg.rollout.episodes and runs["policy"] and rollout_env(info, cfg) is not None:
            agent = {"kind": "policy", "policy": runs["policy"], "decoder": runs["decoder"]}
            row["rollouts"], strips[m.name] = _once(memo, ("rollouts", runs["policy"], runs["decoder"]),
                                                    _act, m.name, agent, info, cfg, f"{episodes}/{m.name}")
        rows.append(row)
    return rows, strips


def _once(memo: dict, key: tuple, compute, *args, stored: tuple | None = None, **kwargs):
    """``compute(*args, **kwargs)``, called the first time ``key`` is asked for in ``memo`` (one
    evaluation of a sweep's budgets); each caller gets its own copy, so rows never share mutable parts.
    ``stored``: (location, file name) of a JSON value kept across evaluations: read when there,
    written once computed."""
    if key not in memo:
        if stored is not None and stored[0].exists(stored[1]):
            memo[key] = stored[0].read_json(stored[1])
        else:
            memo[key] = compute(*args, **kwargs)
            if stored is not None:
                stored[0].makedirs()
                stored[0].write_json(stored[1], memo[key])
    return copy.deepcopy(memo[key])


def _probe_store(cache: str, lam_run: str, cfg: EvalConfig, info: DatasetInfo) -> tuple:
    """Where ``cache`` keeps a LAM's probes: named by what they measure (the run's identity, the
    probe settings, the dataset's identity), so a retrained run or another dataset is probed anew."""
    from raylam.train.identity import dataset_identity, digest, run_identity

    what = {"run": run_identity(lam_run), "probe": to_dict(cfg.probe), "dataset": dataset_identity(info.uri)}
    return resolve(f"{cache.rstrip('/')}/probes"), f"probe-{digest(what)[:20]}.json"


def rollout_env(info: DatasetInfo, cfg: EvalConfig) -> EnvConfig | None:
    """The environment rollouts act in: the dataset's; for imported data (no environment) the
    ``evaluate.rollout.task`` the user names, else None (rollouts are skipped)."""
    if not info.manifest.get("imported"):
        return env_of_dataset(info)
    if cfg.rollout.task is None:
        return None
    h, w, _ = info.manifest["frame_shape"]
    return from_dict(EnvConfig, {"task": cfg.rollout.task, "image_size": h,
                                 "episode_length": cfg.rollout.episode_length or 1000})


def evaluations_run(cfg: EvalConfig, info: DatasetInfo | None, probes: bool, rollouts: bool) -> list[str]:
    """One line per evaluation: ran, or skipped and why (for the report)."""
    if info is None:
        return ["nothing evaluated: no method rows"]
    from raylam.eval.probes import probes_skipped

    lines = []
    if probes and cfg.probe.enabled:
        skipped = probes_skipped(info)
        lines += [f"{k} probe: {'skipped, ' + skipped[k] if k in skipped else 'ran'}" for k in ("action", "state")]
    else:
        lines.append("probes: not asked for")
    if not (rollouts and cfg.rollout.episodes):
        lines.append("rollouts: not asked for")
    elif info.manifest.get("imported") and cfg.rollout.task is None:
        lines.append(f"rollouts: skipped, the dataset was imported ({info.manifest.get('source')}) and records no "
                     "environment; name one with evaluate.rollout.task")
    else:
        lines.append(f"rollouts: ran in {rollout_env(info, cfg).task}")
    return lines


def _method_artifact(m: MethodRuns, runs: dict) -> dict:
    """The artifact that defines the method's dataset and label budget (policy first, else LAM)."""
    for key in ("policy", "lam"):
        if runs[key]:
            return read_artifact(runs[key])
    raise ValueError(f"evaluate.methods: {m.name!r} names neither a lam nor a policy run")


def _act(name: str, agent: dict, info: DatasetInfo, cfg: EvalConfig, progress: str) -> tuple[dict, dict]:
    """Rollouts of one agent in every setting: ({setting: summary}, {setting: frames}); each
    finished episode is recorded under ``progress`` at once, and a rerun resumes from there."""
    from raylam.eval.rollout import evaluate_online

    env = rollout_env(info, cfg)
    conditions = [rollout_key(*c) for c in cfg.rollout.runs()]
    print(f"== rollouts {name}: {cfg.rollout.episodes} episodes x {conditions}", flush=True)
    summaries, frames = {}, {}
    for result in evaluate_online(agent, env, cfg.rollout, progress=progress):
        key = result["key"]
        frames[key] = np.asarray(result.pop("frames"))
        summaries[key] = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in result.items()}
        print(f"   {key} ({result['protocol']}): return {result['return_mean']:.1f} ± {result['return_std']:.1f}, "
              f"normalized {result['normalized_mean']:.3f}", flush=True)
    return summaries, frames
