"""TorchTrainer assembly: one function runs any training stage on the current Ray cluster.

Each stage reads its inputs by path (a dataset, a LAM run, a relabel table) and leaves a run
directory with Ray Train's checkpoints plus ``artifact.json`` naming the final checkpoint, so the
next stage loads it without retraining anything.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from dataclasses import replace

from raylam.cluster import cluster_resources
from raylam.config import ConfigError, to_dict
from raylam.data.clips import clip_dataset, decoded_bytes
from raylam.data.pipeline import DatasetInfo, WindowSpec, configure_data_context
from raylam.data.storage import resolve
from raylam.train.artifacts import ARTIFACT, StageResult, read_artifact
from raylam.train.config import StageConfig, TrainConfig
from raylam.train.identity import stage_identity
from raylam.train.loop import train_loop_per_worker


def run_name(cfg: StageConfig, experiment: str = "raylam") -> str:
    if cfg.run_name:
        return cfg.run_name
    if not cfg.kind.trains:
        return f"{experiment}-{cfg.stage}"
    return f"{experiment}-{cfg.stage}-{cfg.model.method}"


def stage_datasets(cfg: TrainConfig, info: DatasetInfo, labels: str | None = None) -> dict:
    """The Ray Datasets of decoded clips a stage reads: 'train' (split across workers), 'labeled'
    (laom_sup: every worker holds it whole) and 'heldout' (evaluation)."""
    spec = WindowSpec(frame_stack=cfg.model.frame_stack, max_offset=cfg.model.max_offset,
                      num_labeled=cfg.num_labeled)
    common = dict(clips_per_task=cfg.data.clips_per_task, num_cpus=cfg.data.read_cpus, labels=labels)
    labeled_only = cfg.kind.labeled_only
    streamed = data_mode(cfg, info) == "stream"

    def clips(split: str, only_labeled: bool, shuffled: bool):
        if streamed or decoded_bytes(info, split, only_labeled, cfg.num_labeled) > cfg.data.share_bytes:
            return clip_dataset(info, spec, split, only_labeled, **common,
                                shuffle_seed=_shuffle_seed(cfg) if shuffled else None,
                                order=cfg.data.stream_order if streamed and shuffled else "shards")
        return shared_clips(info, spec, split, only_labeled, common)

    datasets = {} if clip_stream(cfg, info) else {"train": clips("train", labeled_only, True)}
    if cfg.reads_labeled_stream:
        datasets["labeled"] = clips("train", True, False)
    if cfg.eval_every:
        if not info.manifest["splits"].get("heldout"):
            from raylam.checks import heldout_hint

            raise ConfigError(f"eval_every is {cfg.eval_every}, but dataset {cfg.dataset} has no heldout split "
                              f"({heldout_hint(info.manifest)}, or set eval_every: 0)")
        datasets["heldout"] = clips("heldout", False, False)
    return datasets


_SHARED: dict[tuple, object] = {}


def shared_clips(info: DatasetInfo, spec: WindowSpec, split: str, labeled_only: bool, common: dict):
    """Decoded clips materialized once in the object store and reused by every later stage of this
    driver that reads the same clips (a pipeline's 16 stages read three or four distinct sets), so a
    stage skips decoding; the cached path's samplers shuffle, so the order here does not matter."""
    import ray

    key = (ray.get_runtime_context().get_job_id(), info.uri, split, labeled_only, spec.num_labeled,
           spec.frame_stack, spec.max_offset, common["labels"])
    if key not in _SHARED:
        _SHARED[key] = clip_dataset(info, spec, split, labeled_only, **common, shuffle_seed=None).materialize()
    return _SHARED[key]


def _shuffle_seed(cfg: TrainConfig) -> int | None:
    """Shard order: the data seed, varied with the training seed so seeds differ in order too."""
    if cfg.data.shuffle_seed is None:
        return None
    return cfg.data.shuffle_seed + 1000 * cfg.seed


def clip_stream(cfg: TrainConfig, info: DatasetInfo) -> bool:
    """Streamed in clip order: each worker builds its own stream of its share of the clips (a
    seeded order per epoch), which it can resume mid-epoch after a failure, so Train splits nothing."""
    return data_mode(cfg, info) == "stream" and cfg.data.stream_order == "clips"


def stream_rows(cfg: TrainConfig, info: DatasetInfo, labels: str | None) -> dict:
    """What a worker needs to build its clip stream: the clip index (in the object store), and how
    to decode (label budget, labeled-only, relabeled latents)."""
    import ray

    from raylam.data.clip_index import clip_index, fetch_rows, random_clip_order

    labeled_only = cfg.kind.labeled_only
    labeled = set(info.labeled_episodes(cfg.num_labeled)) if labeled_only else None
    rows = fetch_rows(random_clip_order(clip_index(info, "train", cfg.data.read_cpus), labeled, None))
    # the manifest travels with the rows: a worker runs in a directory of its own, where the
    # dataset's path (relative, as users write it) means nothing
    return {"rows": ray.put(rows), "num_rows": len(rows), "labels": labels, "labeled_only": labeled_only,
            "manifest": info.manifest, "labeled_episodes": info.labeled_episodes(cfg.num_labeled)}


def data_mode(cfg: TrainConfig, info: DatasetInfo) -> str:
    """'cache' when one worker's share of the training clips, decoded, fits data.cache_bytes."""
    share = decoded_bytes(info, "train", cfg.kind.labeled_only, cfg.num_labeled) / cfg.num_workers
    return "cache" if share <= cfg.data.cache_bytes else "stream"


def check_dataset(cfg: TrainConfig, info: DatasetInfo) -> dict:
    """Fail before any worker starts when the dataset and the model disagree."""
    info.check_model(cfg.model)
    info.labeled_episodes(cfg.num_labeled)  # raises if the budget exceeds the dataset's labels
    if cfg.kind.labeled_only or cfg.reads_labeled_stream:
        if not info.labeled_episodes(cfg.num_labeled):
            raise ConfigError(f"stage {cfg.stage} ({cfg.model.method}) needs labeled episodes; num_labeled is 0")
    return {"action_dim": info.manifest["action_dim"], "state_dim": info.manifest["state_dim"]}


def _warn_if_no_cpu_for_data(cfg: TrainConfig) -> None:
    """Train workers holding every CPU starve Ray Data's decode tasks and the run stalls: say so, on a
    Ray raylam started itself (a cluster it joined may be autoscaled, and have no CPUs until it adds nodes)."""
    from raylam.cluster import started_here

    if not started_here():
        return
    cpus = cluster_resources().get("CPU", 0)
    left = cpus - cfg.num_workers * cfg.cpus_per_worker
    if left < cfg.data.read_cpus:
        print(
            f"warning: {cfg.num_workers} workers x {cfg.cpus_per_worker} CPU leave {left:g} of {cpus:g} CPUs for "
            f"Ray Data decode tasks that need {cfg.data.read_cpus:g}; unless the autoscaler adds nodes the run "
            "will stall. Lower cpus_per_worker or data.read_cpus, or add CPUs.",
            flush=True,
        )


def _timings(metrics: dict, fit_start: float, fit_s: float) -> dict:
    """Where the stage's wall time went: Ray Train's start (controller, worker group, until the loop
    runs), the worker's setup (model, data decode/caching), and the rest (steps, evaluation, teardown)."""
    out = {"fit_s": round(fit_s, 2)}
    if "timing/loop_start_unix" in metrics:
        out["start_s"] = round(metrics["timing/loop_start_unix"] - fit_start, 2)
        out["setup_s"] = round(metrics["timing/setup_s"], 2)
        out["loop_and_teardown_s"] = round(fit_s - out["start_s"] - out["setup_s"], 2)
    return out


def data_config(cfg: TrainConfig, split: bool = True):
    """Train's DataConfig: the training split divided among the workers (row ranges when it is
    already materialized); with ``data.max_cpus``, Ray Data may hold at most that many CPUs for this
    run (a Tune trial's data_cpus, enforced)."""
    from raylam.train.data_config import ClipsDataConfig

    options = None
    if cfg.data.max_cpus is not None:
        options = ClipsDataConfig.default_ingest_options()
        options.resource_limits = options.resource_limits.copy(cpu=cfg.data.max_cpus)
    return ClipsDataConfig(datasets_to_split=["train"] if split else [], execution_options=options)


def gpu_checked_loop(config: dict) -> None:
    """The training loop on a worker that holds a GPU: refuses to run when torch sees no CUDA there
    (Ray Train's ``get_device`` would quietly fall back to the CPU)."""
    from raylam.cluster import cuda_device

    cuda_device(f"Ray Train worker of {config['run_name']}")
    train_loop_per_worker(config)


def train(cfg: StageConfig, experiment: str = "raylam", callbacks: list | None = None, fresh: bool = False,
          label: str | None = None, fresh_tag: str | None = None):
    """Run one stage on the current Ray cluster (a TorchTrainer run, or for ``relabel`` batch
    inference); returns its :class:`StageResult` (the artifact the next stage reads, the metrics).

    The Ray Train run lives in ``<run dir>/train-<identity>``: a rerun of the same stage (same
    config, same inputs) resumes from its last checkpoint, a changed one starts fresh, and
    ``fresh=True`` (``--force``) never restores an earlier run: it starts the attempt ``fresh_tag``
    (random by default; a retried driver passes its first tag again and resumes that attempt).
    ``callbacks`` go to the run's RunConfig (Tune passes its report callback here); ``label`` starts
    each progress line (default: the run name)."""
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    if not cfg.kind.trains:
        from raylam.train.relabel import relabel

        return relabel(cfg, experiment)
    requested = to_dict(cfg)  # before the labels adjust it: what a rerun of this stage would ask for
    info = DatasetInfo(cfg.dataset)
    identity = stage_identity(cfg)
    labels = None
    if cfg.stage == "action_decoder" and cfg.policy_run:
        policy = read_artifact(cfg.policy_run, expect_stages=("latent_bc",))
        latent_dim = int(policy["config"]["model"]["latent_dim"])  # the policy's output size decides
        if latent_dim != cfg.model.latent_dim:
            print(f"note: {cfg.stage} {run_name(cfg, experiment)}: model.latent_dim {cfg.model.latent_dim} -> "
                  f"{latent_dim}, the output size of the policy {cfg.policy_run}", flush=True)
        cfg = replace(cfg, model=replace(cfg.model, latent_dim=latent_dim))
    elif cfg.kind.reads_labels:
        relabeled = read_artifact(cfg.labels, expect_stages=("relabel",))
        labels = relabeled["labels"]
        if relabeled["latent_dim"] != cfg.model.latent_dim:  # the labels decide the latent size
            print(f"note: {cfg.stage} {run_name(cfg, experiment)}: model.latent_dim {cfg.model.latent_dim} -> "
                  f"{relabeled['latent_dim']}, the size of the latents in {cfg.labels}", flush=True)
            cfg = replace(cfg, model=replace(cfg.model, latent_dim=relabeled["latent_dim"]))
    dims = check_dataset(cfg, info)
    _warn_if_no_cpu_for_data(cfg)
    name = run_name(cfg, experiment)
    run_dir = resolve(f"{cfg.storage_path.rstrip('/')}/{name}")
    run_dir.makedirs()
    attempt = f"train-{identity[:12]}" + (f"-{fresh_tag or uuid.uuid4().hex[:6]}" if fresh else "")
    local = "://" not in cfg.storage_path
    configure_data_context(cfg.data.progress_bars)
    datasets = stage_datasets(cfg, info, labels)
    loop_config = {
        "train": to_dict(cfg), "dims": dims, "datasets": sorted(datasets), "run_name": name, "label": label or name,
        "data_mode": data_mode(cfg, info), "labeled_only": cfg.kind.labeled_only,
        # absolute: Ray Train runs the loop in a directory of its own, where a relative path means nothing
        "policy_run": resolve(cfg.policy_run).url("").rstrip("/") if cfg.stage == "action_decoder" and cfg.policy_run
        else None,
        "attempt_dir": f"{run_dir.url('').rstrip('/')}/{attempt}",  # metrics and TensorBoard, beside the run
        "stream": stream_rows(cfg, info, labels) if clip_stream(cfg, info) else None,
    }
    trainer = TorchTrainer(
        gpu_checked_loop if cfg.use_gpu else train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                     resources_per_worker={"CPU": cfg.cpus_per_worker,
                                                           **({"GPU": cfg.gpus_per_worker} if cfg.use_gpu else {}),
                                                           **cfg.resources_per_worker}),
        datasets=datasets,
        dataset_config=data_config(cfg, split="train" in datasets),
        run_config=RunConfig(
            name=attempt,
            storage_path=run_dir.root if local else run_dir.uri.rstrip("/"),
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            logging_config=LoggingConfig(log_level=cfg.log_level),
            callbacks=callbacks,
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints, checkpoint_score_attribute="step",
                                               checkpoint_score_order="max"),
        ),
    )
    fit_start = time.time()
    result = trainer.fit()
    fit_s = time.time() - fit_start
    if result.checkpoint is None:
        raise RuntimeError(f"run {name} finished without a checkpoint")
    artifact = {
        "stage": cfg.stage,
        "identity": identity,
        "attempt": attempt,
        "method": cfg.model.method,
        "checkpoint": result.checkpoint.path,
        "dataset": cfg.dataset,
        "num_labeled": cfg.num_labeled,
        "metrics": {k: v for k, v in (result.metrics or {}).items() if isinstance(v, (int, float))},
        "timings": _timings(result.metrics or {}, fit_start, fit_s),
        "config": to_dict(cfg),
        "requested_config": requested,
        "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    run_dir.write_json(ARTIFACT, artifact)
    return StageResult(run_dir.uri, artifact)
