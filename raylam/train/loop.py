"""The one ``train_loop_per_worker`` every training stage uses.

The loop knows nothing about methods: it builds the model the config names, pulls batches of
windows from its dataset shard(s), calls ``model(batch, labeled_batch)``, steps the optimizer and
reports. Restore after a failure is Ray Train's: ``get_checkpoint()`` returns the last reported
checkpoint and the step counter continues from it (the data epoch restarts: Ray Data has no
mid-epoch position).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import torch

from raylam.config import from_dict, to_dict
from raylam.models import build_model, evaluate
from raylam.train.checkpoint import CHECKPOINT_FILE, save_checkpoint
from raylam.train.metrics import MetricsLog
from raylam.train.progress import Progress


def warmup_linear(step: int, total: int, warmup_fraction: float) -> float:
    """Learning-rate factor: linear warm-up over the first fraction of steps, then linear decay to 0."""
    warmup = max(1, int(total * warmup_fraction))
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


def train_loop_per_worker(config: dict) -> None:
    """Ray Train's entry point: set up model, optimizer and data on this worker, then :func:`fit`.

    Ray's touch points are all here: the worker context, ``prepare_model`` (DDP), the dataset
    shards, ``get_checkpoint`` (restore) and, in :class:`Reporter`, ``report`` with checkpoints.
    """
    import ray.train
    import ray.train.torch

    from raylam.train.config import TrainConfig

    entered = time.time()  # wall clock, comparable with the driver's: where a stage's fixed cost goes
    cfg: TrainConfig = from_dict(TrainConfig, config["train"])
    _quiet_report_log(cfg.log_level)
    dims = config["dims"]
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    if cfg.threads_per_worker:
        torch.set_num_threads(cfg.threads_per_worker)

    policy = None
    if config.get("policy_run"):  # the decoder learns on what the frozen policy outputs when acting
        from raylam.train.artifacts import load_run

        policy, _, _ = load_run(config["policy_run"], device, expect_stages=("latent_bc",))
    model, optimizer, scheduler = setup_model(cfg, dims, device, policy)
    step, data_state, resumed = 0, None, False
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            state = torch.load(os.path.join(directory, CHECKPOINT_FILE), map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, data_state, resumed = int(state["step"]), state.get("data"), True
    # augmentation and any other global-RNG draw: its own stream per seed and rank
    torch.manual_seed(hash_seed(cfg.seed, rank, 1))

    data = WorkerData(cfg, config, rank, world, device, data_state)
    timing = {"timing/loop_start_unix": entered, "timing/setup_s": time.time() - entered}
    unwrapped = model
    model = ray.train.torch.prepare_model(model, move_to_device=False)
    meta = {"stage": cfg.stage, "model": to_dict(cfg.model), "dataset": cfg.dataset,
            "num_labeled": cfg.num_labeled, "seed": cfg.seed, **dims}
    history = MetricsLog(config["attempt_dir"]) if rank == 0 and config.get("attempt_dir") else None
    wandb_dir = history.wandb_dir() if history is not None and cfg.wandb.enabled else None
    reporter = Reporter(cfg, unwrapped, optimizer, scheduler, meta, rank, history=history,
                        wandb_run=_wandb(cfg, config, wandb_dir) if rank == 0 else None,
                        progress=Progress(config.get("label") or config.get("run_name") or cfg.stage, cfg.steps, step))

    def report(values: dict, step: int) -> None:
        values.update(timing)
        if data.heldout is not None and (step % cfg.eval_every == 0 or step == cfg.steps):
            values.update(_heldout_metrics(unwrapped, data, cfg))
        checkpointing = step % cfg.checkpoint_every == 0 or step == cfg.steps
        reporter(values, step, gather_data_state(data, world) if checkpointing else None)
        if step == cfg.wait_at_step and not resumed:
            _wait_for_file(cfg.wait_for_file, rank)

    step = fit(model, unwrapped, optimizer, scheduler, data, cfg, device, world, step, report,
               fail_at_step=None if resumed else cfg.fail_at_step,
               before_failure=lambda: _wait_for_registered_checkpoint(cfg, config.get("attempt_dir")))
    reporter.close(step)


def setup_model(cfg, dims: dict, device, policy=None):
    """(model, optimizer, scheduler) for a stage, the model's initial weights fixed by ``cfg.seed``
    (the same on every rank). ``policy``: the frozen latent-BC policy an action decoder reads."""
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, dims["action_dim"], dims["state_dim"]).to(device)
    if policy is not None:
        policy.eval().requires_grad_(False)
        model.set_source(policy.act)
    optimizer, scheduler = make_optimizer(model, cfg, device)
    return model, optimizer, scheduler


def hash_seed(*parts: int) -> int:
    import numpy as np

    return int(np.random.SeedSequence(list(parts)).generate_state(1, np.uint64)[0] >> 1)


def make_optimizer(model, cfg, device):
    """AdamW over the model's parameter groups: the model's learning rate warms up and decays and its
    matrices take ``model.weight_decay`` (biases and norms none); probes (the paper's diagnostic, their
    own optimiser in the released code) keep a constant rate, no decay and no gradient clipping.
    With weight_decay 0 this is exactly Adam."""
    groups = model.param_groups() if hasattr(model, "param_groups") else [{"params": model.trainable_parameters()}]
    decay = cfg.model.weight_decay
    param_groups, schedule = [], []
    for group in groups:
        constant = bool(group.get("constant_lr"))
        params = group["params"]
        parts = [(params, 0.0)] if constant or not decay else [
            ([p for p in params if p.ndim >= 2], decay), ([p for p in params if p.ndim < 2], 0.0)]
        for part, weight_decay in parts:
            if not part:
                continue
            param_groups.append({"params": part, "weight_decay": weight_decay, "clip": not constant})
            schedule.append((lambda s: 1.0) if constant else
                            (lambda s: warmup_linear(s, cfg.steps, cfg.model.warmup_fraction)))
    optimizer = torch.optim.AdamW(param_groups, lr=cfg.model.lr, fused=device.type == "cuda")
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


class WorkerData:
    """This worker's batches: windows cut on the device from decoded clips (raylam.train.sampling).

    ``train``: cached (decoded once, then i.i.d. epochs over every transition, resumable mid-epoch)
    when the trainer decided it fits ``data.cache_bytes``, else streamed through a pool of clips
    every epoch. ``labeled`` (laom_sup): the labeled clips, decoded once and sampled i.i.d.
    ``heldout``: decoded once, the same windows at every evaluation. Batch sizes are the job's,
    divided by the number of workers.
    """

    def __init__(self, cfg, config: dict, rank: int, world: int, device, state: dict | None):
        import ray.train

        from raylam.train.sampling import ClipStore, EpochSampler, LabeledSampler

        self.cfg, self.device, self.rank = cfg, device, rank
        self.batch_size = cfg.batch_size // world
        self.pin = device.type == "cuda"
        m = cfg.model
        self.common = dict(frame_stack=m.frame_stack, max_offset=m.max_offset)
        self.stream = config.get("stream")  # streamed in clip order: this worker's own, resumable stream
        self.shard = None if self.stream else ray.train.get_dataset_shard("train")
        self.cached = config.get("data_mode", "cache") == "cache"
        self.epoch, self.sampler, self.labeled = 0, None, None
        self.world, self.entered, self.epoch_clips = world, 0, {}
        if self.stream:
            self._resume_stream(state)
        elif self.cached:
            store = ClipStore.from_batches(self._clips(self.shard), device, self.pin)
            self.sampler = EpochSampler(store, self.batch_size, seed=(cfg.seed, rank, 2),
                                        labeled_only=config.get("labeled_only", False), **self.common)
            if state:
                self.sampler.restore(state)
        elif state and not self.stream:
            self.epoch = int(state.get("epoch", 0))  # a shard-order stream restarts its pass
        if "labeled" in config["datasets"]:
            store = ClipStore.from_batches(self._clips(ray.train.get_dataset_shard("labeled")), device, self.pin)
            self.labeled = iter(LabeledSampler(store, cfg.labeled_batch_size // world, seed=(cfg.seed, rank, 3),
                                               **self.common))
        self.heldout = None
        if "heldout" in config["datasets"]:
            self.heldout = ClipStore.from_batches(self._clips(ray.train.get_dataset_shard("heldout")), device,
                                                  self.pin)
        self._train = iter(self._batches())

    def _clips(self, shard):
        return shard.iter_batches(batch_size=self.cfg.data.clips_per_task, batch_format="numpy",
                                  prefetch_batches=self.cfg.data.prefetch_batches)

    def _resume_stream(self, state: dict | None) -> None:
        """Where this worker's clip stream stands after a restore: the epoch and the number of its
        clips the pool had taken (they are skipped; the clips then in the pool are not trained again
        this epoch either), as every rank recorded it in the checkpoint."""
        ranks = (state or {}).get("ranks") or []
        if len(ranks) == self.world:
            mine = ranks[self.rank]
            self.epoch, self.entered = int(mine["epoch"]), int(mine["entered"])
            self.epoch_clips = {int(k): int(v) for k, v in mine.get("epoch_clips", {}).items()}
        elif state:
            self.epoch = int(state.get("epoch", 0))  # another worker count: the epoch's pass restarts

    def _stream_epoch(self):
        """This worker's clips of the current epoch, from where it stands: a seeded permutation of the
        clip index per epoch, every world-th clip from this rank's, fetched and decoded by Ray Data."""
        import numpy as np
        import ray

        from raylam.data.clip_index import clip_stream_dataset
        from raylam.data.clips import DecodeClips
        from raylam.data.pipeline import WindowSpec

        cfg, stream = self.cfg, self.stream
        rows = ray.get(stream["rows"])
        order = np.random.default_rng([cfg.seed, 5, self.epoch]).permutation(len(rows))
        mine = [rows[i] for i in order[self.rank::self.world]][self.entered:]
        if not mine:
            return
        spec = WindowSpec(frame_stack=cfg.model.frame_stack, max_offset=cfg.model.max_offset,
                          num_labeled=cfg.num_labeled)
        decode = DecodeClips(spec, stream["manifest"], stream["labeled_episodes"], stream["labeled_only"],
                             stream["labels"])
        ds = clip_stream_dataset(mine, decode, cfg.data.clips_per_task, cfg.data.read_cpus)
        if cfg.data.max_cpus is not None:  # the same cap Train's DataConfig puts on its datasets
            limits = ds.context.execution_options.resource_limits
            ds.context.execution_options.resource_limits = limits.copy(cpu=cfg.data.max_cpus)
        for batch in self._clips(ds):
            self.entered += len(batch.get("episode", ()))
            yield batch

    def _batches(self):
        from raylam.train.sampling import StreamingPool

        if self.cached:
            yield from self.sampler
        while True:
            resumed_at = self.entered
            source = self._stream_epoch() if self.stream else self._clips(self.shard)
            pool = StreamingPool(source, self.cfg.data.pool_clips, self.batch_size,
                                 seed=(self.cfg.seed, self.rank, 4, self.epoch, self.entered), device=self.device,
                                 pin_memory=self.pin, **self.common)
            empty = True
            for batch in pool:
                empty = False
                yield batch
            if empty and not resumed_at:  # a whole epoch that gives no batch: the data are too small
                raise ValueError("the training stream gave no batch: fewer transitions than one batch per worker")
            if self.stream:
                self.epoch_clips[self.epoch] = self.entered
            self.epoch, self.entered = self.epoch + 1, 0

    def next(self):
        """(batch, labeled batch or None)."""
        batch = next(self._train)
        return batch, (None if self.labeled is None else next(self.labeled))

    def state(self) -> dict:
        """This worker's data position (see :func:`gather_data_state` for what a checkpoint keeps)."""
        if self.cached:
            return self.sampler.state()
        if self.stream:
            return {"epoch": self.epoch, "entered": self.entered,
                    "epoch_clips": {str(k): v for k, v in self.epoch_clips.items()}}
        return {"epoch": self.epoch}

    @property
    def current_epoch(self) -> int:
        return self.sampler.epoch if self.cached else self.epoch


def gather_data_state(data: WorkerData, world: int) -> dict:
    """The data position a checkpoint records: the cached sampler's (the same on every rank), or,
    for a clip-order stream, every rank's own (gathered to rank 0, which writes the checkpoint)."""
    state = data.state()
    if not data.stream:
        return state
    ranks = [state]
    if world > 1:
        import torch.distributed as dist

        ranks = [None] * world
        dist.all_gather_object(ranks, state)
    return {**state, "ranks": ranks}


def fit(model, unwrapped, optimizer, scheduler, data, cfg, device, world: int, step: int, report,
        fail_at_step: int | None = None, before_failure=None) -> int:
    """The plain PyTorch loop: batch -> loss -> step, ``report(values, step)`` every ``report_every``."""
    autocast = dict(device_type=device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16")
    window_start, window_samples, waited = time.perf_counter(), 0, 0.0
    model.train()
    while step < cfg.steps:
        t = time.perf_counter()
        batch, labeled = data.next()
        waited += time.perf_counter() - t
        if fail_at_step is not None and step + 1 == fail_at_step:
            if before_failure is not None:
                before_failure()
            raise RuntimeError(f"test hook: injected failure at step {step + 1} (fail_at_step)")
        with torch.autocast(**autocast):
            loss, metrics = model(batch, labeled)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.model.grad_clip is not None:  # the model's parameters, not the probes' (as released)
            clipped = [p for g in optimizer.param_groups if g.get("clip", True) for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(clipped, cfg.model.grad_clip)
        optimizer.step()
        scheduler.step()
        unwrapped.after_step()
        step += 1
        if cfg.step_delay_s:
            time.sleep(cfg.step_delay_s)
        window_samples += len(batch)
        if step % cfg.report_every == 0 or step == cfg.steps:
            elapsed = time.perf_counter() - window_start
            # ``loss``: the model's own objective (metrics["loss"]), not the probes-included total
            # that was minimised; the probes report their own keys (``probe/*``)
            values = {k: float(v) for k, v in metrics.items()}
            values.setdefault("loss", float(loss.detach()))
            values.update(step=step, epoch=data.current_epoch,
                          lr=scheduler.get_last_lr()[0], samples_per_s=window_samples * world / elapsed,
                          data_wait_fraction=waited / elapsed)
            report(values, step)
            window_start, window_samples, waited = time.perf_counter(), 0, 0.0
    return step


def _heldout_metrics(model, data, cfg) -> dict[str, float]:
    """Probe and head MSE/R^2 on held-out windows (every worker holds the whole, small, split)."""
    from raylam.train.sampling import fixed_windows

    batches = fixed_windows(data.heldout, cfg.model.frame_stack, cfg.model.max_offset, cfg.eval_windows,
                            data.batch_size)
    return {f"heldout/{name}": value for name, value in evaluate(model, batches).items()}


@dataclass
class Reporter:
    """Where this worker's reports go: rank 0's progress line, its per-step history beside the run
    (metrics table + TensorBoard, :mod:`raylam.train.metrics`) and wandb, and ``ray.train.report``
    (every worker, as often: it is a barrier), with rank 0's checkpoint every ``checkpoint_every``
    steps and at the end."""

    cfg: Any
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    meta: dict
    rank: int
    history: MetricsLog | None = None
    wandb_run: Any = None
    progress: Progress | None = None

    def __call__(self, values: dict, step: int, data_state: dict | None) -> None:
        import ray.train
        from ray.train import CheckpointUploadMode

        if self.rank == 0 and self.cfg.progress and self.progress is not None:
            # straight to stdout: Ray Train's patched print() would log it and echo it, showing it twice
            sys.stdout.write(self.progress.line(values, step) + "\n")
            sys.stdout.flush()
        if self.history is not None:
            self.history.log(values, step)
        if self.wandb_run is not None:
            self.wandb_run.log(values, step=step)
        if step % self.cfg.checkpoint_every and step != self.cfg.steps:
            ray.train.report(values)
            return
        if self.history is not None:  # the history up to the checkpoint, persisted with it
            self.history.flush(step)
        checkpoint, directory, mode = None, None, _upload_mode(self.cfg, self.history)
        if self.rank == 0:
            directory = tempfile.mkdtemp(prefix="raylam-checkpoint-")  # ASYNC: Ray removes it once uploaded
            save_checkpoint(directory, self.model, self.optimizer, self.scheduler, step, self.meta, data_state)
            checkpoint = ray.train.Checkpoint.from_directory(directory)
        ray.train.report(values, checkpoint=checkpoint, checkpoint_upload_mode=mode)
        if directory is not None and mode == CheckpointUploadMode.SYNC:
            shutil.rmtree(directory, ignore_errors=True)

    def close(self, step: int) -> None:
        if self.history is not None:
            self.history.close(step)
        if self.wandb_run is not None:
            self.wandb_run.finish()


def _quiet_report_log(level: str) -> None:
    """Ray Train 2.60 logs ``Reporting training result N: TrainingReport(...)`` for every report of
    every worker through a logger named by its file path, outside ``ray.train``, so RunConfig's
    LoggingConfig does not reach it: give that logger the stage's ``log_level`` here."""
    import logging

    from raylam.console import quiet_ray

    quiet_ray()  # and Ray Data's known noise in this worker ("Progress bars disabled": off on purpose)
    try:
        from ray.train.v2._internal.execution import context
    except ImportError:  # another Ray layout: nothing to quiet
        return
    logging.getLogger(context.__file__).setLevel(level)


def _wait_for_registered_checkpoint(cfg, attempt_dir: str | None) -> None:
    """Test hook (``fail_at_step``): the injected failure waits until Ray Train has registered the
    last checkpoint before it, so the restore it tests starts from that checkpoint whatever the
    timing of the controller's polls."""
    last = (cfg.fail_at_step - 1) // cfg.checkpoint_every * cfg.checkpoint_every
    if last > 0 and attempt_dir:
        wait_for_registered_checkpoint(attempt_dir, last)


def wait_for_registered_checkpoint(attempt_dir: str, step: int, timeout_s: float = 300) -> None:
    """Block until the Train run in ``attempt_dir`` has registered a checkpoint of ``step`` or later
    (its checkpoint-manager snapshot on storage says so); gives up after ``timeout_s``. For tests
    that break a run and count what it restores."""
    from raylam.data.storage import resolve

    location, deadline = resolve(attempt_dir), time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            snapshot = location.read_json("checkpoint_manager_snapshot.json")
        except (OSError, ValueError):  # not written yet, or being replaced
            snapshot = {}
        if ((snapshot.get("latest_checkpoint_result") or {}).get("metrics") or {}).get("step", 0) >= step:
            return
        time.sleep(0.1)


def _wait_for_file(path: str, rank: int) -> None:
    """Test hook (``wait_at_step``): say this worker is waiting, then block until ``path`` exists."""
    with open(f"{path}.waiting-{rank}", "w") as f:
        f.write(str(os.getpid()))
    while not os.path.exists(path):
        time.sleep(0.05)


def _upload_mode(cfg, history):
    """Checkpoints to object storage upload in the background while training goes on (Ray waits for
    every upload before the run ends); a local copy is quick, so it is made in place. The failure
    test hook (``fail_at_step``) keeps uploads synchronous, so its failure lands after the last
    checkpoint is committed, as the tests that count restores assume."""
    from ray.train import CheckpointUploadMode

    remote = history is not None and history.remote
    if remote and cfg.fail_at_step is None:
        return CheckpointUploadMode.ASYNC
    return CheckpointUploadMode.SYNC


def _wandb(cfg, config: dict, directory: str | None):
    if not cfg.wandb.enabled:
        return None
    import wandb

    return wandb.init(project=cfg.wandb.project, entity=cfg.wandb.entity, mode=cfg.wandb.mode,
                      name=config.get("run_name"), config=config["train"], dir=directory,
                      reinit=True)
