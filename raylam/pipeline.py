"""``raylam pipeline``: collect -> every training stage -> evaluate -> report, in one command.

With several training seeds (``seeds``) the chain runs once per seed, each seed in its own run
root, and the evaluation merges the seeds into one report (mean ± std over seeds). With
``label_budgets`` the stages that read labels (and those reading them) run once per budget, the
label-free ones once for all budgets; each budget is evaluated into ``<output>/labels<n>`` and
the report merges the budgets (the label-budget figure).
Each step is the same function its own command runs. A rerun picks up where the last one stopped:
collection skips finished shards, a stage whose ``artifact.json`` records its identity (config and
inputs) is not trained again, an interrupted one resumes, and a stage whose config or upstream
changed trains afresh (``force`` retrains everything from scratch).
"""

from __future__ import annotations

import time
import uuid

from raylam.cluster import cluster_resources, require_cluster_paths
from raylam.config import ConfigError, UserError, to_dict
from raylam.experiment import ExperimentConfig, budget_dir
from raylam.train.config import UPSTREAM_FIELDS, StageConfig

EVAL_CACHE = "cache"  # in a sweep's evaluation folder: probes and reference episodes every budget shares


def stage_is_done(cfg) -> bool:
    """True when the stage's run directory holds an artifact of exactly this stage: the same
    identity (config and inputs, :mod:`raylam.train.identity`). A changed config, dataset or
    upstream run makes it stale. Artifacts from before identities compare their config only."""
    from raylam.data.storage import resolve
    from raylam.train.artifacts import ARTIFACT
    from raylam.train.identity import stage_identity
    from raylam.train.trainer import run_name

    run_dir = resolve(f"{cfg.storage_path.rstrip('/')}/{run_name(cfg)}")
    if not run_dir.exists(ARTIFACT):
        return False
    try:
        artifact = run_dir.read_json(ARTIFACT)
    except ValueError:  # a damaged artifact: train again
        return False
    if "identity" in artifact:
        try:
            return artifact["identity"] == stage_identity(cfg)
        except FileNotFoundError:  # an input is gone: the stage cannot be what it was
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


def stage_inputs(exp: ExperimentConfig, index: int) -> list[int]:
    """Indices of the earlier stages stage ``index`` reads (its LAM, labels, policy)."""
    names = [s["run_name"] for s in exp.stages]
    return [names.index(name) for name in exp.upstream(index).values()]


def stage_jobs(exp: ExperimentConfig, stages: list[int]) -> list[tuple[int, int | None, int]]:
    """``(seed, budget, stage index)`` of every training job, in dependency order: a stage that
    depends on the label budget once per budget of ``label_budgets``, any other once (budget None)."""
    dependent = exp.label_dependent()
    return [(seed, budget, i) for seed in exp.seed_list() for i in stages
            for budget in (exp.label_budgets if exp.stages[i]["run_name"] in dependent else [None])]


def job_inputs(exp: ExperimentConfig, job: tuple[int, int | None, int]) -> list[tuple[int, int | None, int]]:
    """The jobs whose runs ``job`` reads: the same budget's label-dependent runs, the shared others."""
    seed, budget, i = job
    dependent = exp.label_dependent()
    return [(seed, budget if exp.stages[j]["run_name"] in dependent else None, j) for j in stage_inputs(exp, i)]


def concurrent_stages(exp: ExperimentConfig) -> int:
    """How many stages train at once: ``concurrent_stages``, else as many as the GPUs present now hold
    at one stage's GPUs (1 without GPUs, where a stage already uses the machine's CPUs).

    The GPUs present are right for a fixed cluster only: an autoscaled one starts with its head
    alone, and Ray 2.60 tells a driver nothing about its node types (``get_cluster_config()`` and
    ``get_max_resources_from_cluster_config()`` read a key that neither the cluster launcher nor
    KubeRay writes), so there ``concurrent_stages`` is the user's: the GPUs its worker types reach
    (max_workers x GPUs per node) divided by one stage's (num_workers x gpus_per_worker)."""
    if exp.concurrent_stages is not None:
        return exp.concurrent_stages
    gpus = cluster_resources().get("GPU", 0)
    per_stage = exp.train.num_workers * exp.train.gpus_per_worker if exp.train.use_gpu else 0
    return max(1, int(gpus // per_stage)) if per_stage else 1


def run_stages(exp: ExperimentConfig, stages: list[int], force: bool, timings: dict) -> None:
    """Train ``stages`` for every seed (and label budget, for the stages it changes) in dependency
    order, skipping those already done (a rerun of the same job trains nothing). On a Ray this process started, with room for one stage, one at a
    time in this process; otherwise (any cluster raylam joined, or room for several) each as a Ray
    task retried ``stage_retries`` times if its process or node dies, pinned to the head when the
    cluster declares a ``head`` resource, started as soon as the stages it reads are done: the method
    chains and seeds are independent."""
    import ray

    from raylam.cluster import memory_kill, out_of_memory, started_here
    from raylam.train.trainer import train

    seeds, dependent = exp.seed_list(), exp.label_dependent()
    jobs = stage_jobs(exp, stages)
    total, limit = len(jobs), concurrent_stages(exp)
    done: set[tuple] = set()
    running: dict = {}  # object ref -> (job, start time)

    def label(seed: int, budget: int | None, i: int) -> str:
        name = exp.stages[i]["run_name"]
        parts = [budget_dir(budget)] if name in dependent else []
        return "/".join([*parts, *([f"seed{seed}"] if len(seeds) > 1 else []), name])

    def config(job) -> StageConfig:
        seed, budget, i = job
        return exp.stage(i, seed, budget)

    def start(job, k: int, stage: StageConfig):
        """``stage`` (the job's config), or None when it is already done (said so)."""
        seed = job[0]
        if not force and stage_is_done(stage):
            print(f"== stage {k}/{total} {label(*job)}: already done with this config, skipped", flush=True)
            return None
        what = f"labels from {stage.lam_run}" if not stage.kind.trains else stage.model.method
        print(f"== stage {k}/{total} {label(*job)}: {stage.stage} ({what}, seed {seed}) -> "
              f"{stage.storage_path}/{stage.run_name}", flush=True)
        return stage

    if limit == 1 and started_here():
        for k, job in enumerate(jobs, 1):
            stage = start(job, k, config(job))
            if stage is not None:
                t = time.perf_counter()
                try:
                    train(stage, exp.name, fresh=force, label=f"[{k}/{total}] {label(*job)}")
                except Exception as err:  # a Ray Data task or Train worker killed past exp.oom_retries
                    memory = memory_kill(err)
                    if memory is None:
                        raise
                    raise out_of_memory(f"stage {label(*job)}", memory) from None
                timings[label(*job)] = time.perf_counter() - t
                print(f"== stage {label(*job)} done ({timings[label(*job)]:.0f} s)", flush=True)
        return
    head = {"head": 0.001} if cluster_resources().get("head") else {}
    groups_before = set(ray.util.placement_group_table())  # the cleanup afterwards leaves these alone
    # a driver lost with its process or node is retried (Ray's max_retries counts system failures only)
    # and resumes its Train run; under --force every retry resumes the one fresh attempt it started
    remote_train = ray.remote(_train_stage).options(num_cpus=0, max_retries=exp.stage_retries, resources=head)
    pending, started = list(jobs), 0
    hint = "" if exp.concurrent_stages is not None else \
        " (concurrent_stages=N: how many an autoscaled cluster's GPU node types hold)"
    print(f"== {total} stages, up to {limit} at once as retried Ray tasks{hint}", flush=True)
    relabel_cpus: dict = {}  # object ref of a running relabel -> the CPUs it holds at least
    while pending or running:
        for job in list(pending):
            if len(running) >= limit:
                break
            if all(needed in done for needed in job_inputs(exp, job) if needed in jobs):
                stage = config(job)  # built once: the relabel check and start() read the same config
                need = relabel_need(stage)
                if need and relabel_cpus and sum(relabel_cpus.values()) + need > cluster_resources().get("CPU", 0):
                    continue  # waits for the running relabel (see relabel_need)
                pending.remove(job)
                started += 1
                stage = start(job, started, stage)
                if stage is None:
                    done.add(job)
                    continue
                tag = uuid.uuid4().hex[:6] if force else None
                ref = remote_train.remote(stage, exp.name, tag, f"[{started}/{total}] {label(*job)}")
                running[ref] = (job, time.perf_counter())
                if need:
                    relabel_cpus[ref] = need
        if not running:
            continue
        ready, _ = ray.wait(list(running), num_returns=1)
        job, t = running.pop(ready[0])
        relabel_cpus.pop(ready[0], None)
        try:
            ray.get(ready[0])  # a failed stage stops the pipeline here, with its error
        except ray.exceptions.RayTaskError as err:
            if isinstance(err.cause, UserError):  # bad input found in the stage's task: its one line
                raise err.cause from None
            raise
        except ray.exceptions.OutOfMemoryError as err:  # killed by Ray's memory monitor past exp.oom_retries
            raise out_of_memory(f"stage {label(*job)}", memory_kill(err) or "above Ray's threshold") from None
        done.add(job)
        timings[label(*job)] = time.perf_counter() - t
        print(f"== stage {label(*job)} done ({timings[label(*job)]:.0f} s)", flush=True)
    release_orphaned_worker_groups(keep=groups_before)


def relabel_need(stage) -> float:
    """The CPUs a relabel stage holds for its whole run (0 for any other stage): its labeling
    actor's, plus one read/write task's beside it. Two relabels whose needs exceed the cluster's CPUs
    do not run at once: each actor would hold a CPU the other's writes wait for (a deadlock, measured
    with two relabels on 2 CPUs); a relabel beside a training stage only waits for it."""
    if stage.stage != "relabel":
        return 0.0
    return (0.0 if stage.use_gpu else stage.cpus_per_actor) + stage.data.read_cpus


def release_orphaned_worker_groups(keep: set[str] | frozenset[str] = frozenset()) -> int:
    """Remove this job's placement groups that nothing is scheduled in, once every stage has finished
    (but those in ``keep``: the groups that existed before the stages started).

    A stage driver that dies (and is retried) takes its Train controller with it; Ray Train's
    PlacementGroupCleaner should then free the controller's worker group, but it races the
    controller's own shutdown (the cleaner is stopped "without cleaning" when the controller aborts)
    and needs the dashboard's State API, so the group's CPUs/GPUs can stay reserved until the job
    ends. With no stage running, a group of this job with no task or actor in it is such a leftover.
    Read from the GCS (no dashboard needed): a group's ID ends with its job's ID, and every task or
    actor placed in a group holds a share of its ``bundle_group_<id>`` resource, so a group whose
    share is all available holds nothing. Returns the number removed."""
    import ray
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    job = ray.get_runtime_context().get_job_id()
    groups = [pg for pg, info in ray.util.placement_group_table().items()
              if info["state"] == "CREATED" and pg.endswith(job) and pg not in keep]
    total, available = ray.cluster_resources(), ray.available_resources()
    share = {pg: f"bundle_group_{pg}" for pg in groups}  # the resource every task or actor in the group holds some of
    orphans = [pg for pg, key in share.items() if key in total and available.get(key, 0.0) >= total[key]]
    for group in orphans:
        remove_placement_group(PlacementGroup(ray.PlacementGroupID(bytes.fromhex(group))))
    if orphans:
        print(f"== released {len(orphans)} worker group(s) left by stage drivers that died", flush=True)
    return len(orphans)


def _train_stage(stage, experiment: str, fresh_tag: str | None, label: str) -> None:
    from raylam.train.trainer import train

    train(stage, experiment, fresh=fresh_tag is not None, fresh_tag=fresh_tag, label=label)


def run_pipeline(exp: ExperimentConfig, force: bool = False, methods: list[str] | None = None) -> dict:
    """Run the experiment (or the stages ``methods`` need) on the current or a new local Ray cluster;
    returns timings and paths."""

    from raylam.data.collect import collect
    from raylam.eval.evaluate import evaluate_methods

    if not exp.stages:
        raise ConfigError(f"pipeline: experiment {exp.name!r} defines no `stages` to train")
    if not exp.evaluate.methods:
        raise ConfigError(f"pipeline: experiment {exp.name!r} has no `evaluate.methods`; nothing would be evaluated")
    stages = select_methods(exp, methods)
    require_cluster_paths(exp)  # connects to Ray; local paths on a multi-node cluster stop here
    timings: dict[str, float] = {}
    start = time.perf_counter()
    print(f"== collect -> {exp.collect.output}", flush=True)
    manifest = collect(exp.collect)
    timings["collect"] = time.perf_counter() - start
    print(f"== collect done: {manifest['num_episodes']} episodes, {manifest['num_transitions']} frames "
          f"({timings['collect']:.0f} s)", flush=True)
    run_stages(exp, stages, force, timings)
    t = time.perf_counter()
    output = exp.eval_output()
    if exp.label_budgets is None:
        results = evaluate_methods(exp.evaluate, exp.seed_roots(), output, experiment=exp.name)
    else:
        results = evaluate_budgets(exp, output)
    timings["evaluate"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - start
    return {"output": output, "report": f"{output}/report.md", "timings": timings, "results": results}


def evaluate_budgets(exp: ExperimentConfig, output: str, **kwargs) -> dict:
    """A label-budget sweep's evaluation: one evaluation per cell (:func:`budget_cells`), each
    into its own folder (its runs, and the shared label-free ones; every method row records the
    budget), then one report in ``output`` over every cell there, this invocation's and earlier
    ones' (other seeds and budgets run one cell per invocation), merged as ``raylam report``
    merges. ``output`` gets no results.json of its own, so ``raylam report <output>`` finds the
    cells' files. ``kwargs`` go to :func:`~raylam.eval.evaluate.evaluate_methods`. Returns the
    merged results."""
    from raylam.eval.evaluate import evaluate_methods
    from raylam.eval.report import merge_results, results_below, write_report

    # runs every budget shares are probed, and references rolled out, once: in this invocation (memo)
    # and in later ones that evaluate other budgets into the same output (the cache folder)
    memo, cache = {}, f"{output.rstrip('/')}/{EVAL_CACHE}"
    for budget, seed, run_dirs, out in budget_cells(exp, output):
        cell = f"label budget {'all' if budget is None else budget}" + ("" if seed is None else f", seed {seed}")
        print(f"== evaluate {cell} -> {out}", flush=True)
        evaluate_methods(exp.evaluate, run_dirs, out, experiment=exp.name, num_labeled=budget, memo=memo,
                         cache=cache, **kwargs)
    cells = results_below(output, folder="labels")  # this invocation's cells and earlier ones'
    merged = merge_results(cells)
    merged["experiment"] = exp.name
    write_report(merged, output)
    print(f"== report over {len(cells)} evaluation(s) in {output} -> {output}/report.md", flush=True)
    return merged


def budget_cells(exp: ExperimentConfig, output: str) -> list[tuple[int | None, int | None, dict, str]]:
    """``(budget, seed, run_dirs, folder)`` of every evaluation a sweep writes. An experiment that
    names its ``seeds`` gets one folder per (budget, seed), ``<output>/labels<n>/seed<k>``, as its
    runs have one run root per seed: a later invocation with another seed at the same budget adds a
    cell beside the first instead of replacing it. With only ``train.seed``, the budget's folder."""
    cells = []
    for budget in exp.label_budgets:
        folder = f"{output.rstrip('/')}/{budget_dir(budget)}"
        dirs = exp.run_dirs(budget)
        if exp.seeds is None:
            cells.append((budget, None, dirs, folder))
        else:
            cells += [(budget, seed, {seed: runs}, f"{folder}/seed{seed}") for seed, runs in dirs.items()]
    return cells
