"""The one ``train_loop_per_worker`` every training stage uses.

The loop knows nothing about methods: it builds the model the config names, pulls batches of
windows from its dataset shard(s), calls ``model(batch, labeled_batch)``, steps the optimizer and
reports. Restore after a failure is Ray Train's: ``get_checkpoint()`` returns the last reported
checkpoint and the step counter continues from it (the data epoch restarts: Ray Data has no
mid-epoch position).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Iterator

import torch

from raylam.config import from_dict, to_dict
from raylam.models import Batch, build_model, evaluate
from raylam.models.config import ModelConfig

CHECKPOINT_FILE = "model.pt"
CHECKPOINT_META = "meta.json"


def rows_to_batch(rows: dict[str, torch.Tensor], device: torch.device, latents: torch.Tensor | None = None) -> Batch:
    """Window rows (as iter_torch_batches yields them) -> a model Batch on ``device``.

    The next observation's stack is built here from the current stack and the next frame, so the
    pipeline ships 7 frames per window instead of 9.
    """
    obs = rows["obs"].to(device, non_blocking=True)
    next_obs = torch.cat([obs[:, 1:], rows["next_frame"].to(device, non_blocking=True)[:, None]], dim=1)
    return Batch(
        obs=obs,
        next_obs=next_obs,
        future_obs=rows["future_obs"].to(device, non_blocking=True),
        offset=rows["offset"].to(device, non_blocking=True),
        actions=rows["actions"].to(device, non_blocking=True),
        states=rows["states"].to(device, non_blocking=True),
        labeled=rows["labeled"].to(device, non_blocking=True),
        latents=None if "latents" not in rows else rows["latents"].to(device, non_blocking=True),
    )


def warmup_linear(step: int, total: int, warmup_fraction: float) -> float:
    """Learning-rate factor: linear warm-up over the first fraction of steps, then linear decay to 0."""
    warmup = max(1, int(total * warmup_fraction))
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


def save_checkpoint(directory: str, model: torch.nn.Module, optimizer, scheduler, step: int, meta: dict) -> None:
    torch.save(
        {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
         "scheduler": scheduler.state_dict(), "step": step},
        os.path.join(directory, CHECKPOINT_FILE),
    )
    with open(os.path.join(directory, CHECKPOINT_META), "w") as f:
        json.dump({**meta, "step": step}, f, indent=2)


def load_model_from_directory(directory: str, device: str | torch.device = "cpu"):
    """(model in eval mode, meta) from a checkpoint directory written by this loop."""
    meta_path = os.path.join(directory, CHECKPOINT_META)
    if not os.path.exists(meta_path):
        raise FileNotFoundError(f"{directory}: no {CHECKPOINT_META}; not a raylam checkpoint")
    with open(meta_path) as f:
        meta = json.load(f)
    cfg = from_dict(ModelConfig, meta["model"])
    model = build_model(cfg, meta["action_dim"], meta["state_dim"])
    state = torch.load(os.path.join(directory, CHECKPOINT_FILE), map_location=device, weights_only=True)
    model.load_state_dict(state["model"])
    return model.to(device).eval(), meta


def _cycle(dataset, **kwargs) -> Iterator[dict]:
    """Endless batches from a (small) labeled stream; a new pass starts when one ends."""
    while True:
        empty = True
        for rows in dataset.iter_torch_batches(**kwargs):
            empty = False
            yield rows
        if empty:
            raise ValueError("the labeled stream holds no windows: check num_labeled and the dataset's labels")


def train_loop_per_worker(config: dict) -> None:
    import ray.train
    import ray.train.torch

    from raylam.train.config import TrainConfig

    cfg: TrainConfig = from_dict(TrainConfig, config["train"])
    dims = config["dims"]
    torch.manual_seed(config.get("seed", 0) + ray.train.get_context().get_world_rank())
    device = ray.train.torch.get_device()
    rank = ray.train.get_context().get_world_rank()
    world = ray.train.get_context().get_world_size()

    model = build_model(cfg.model, dims["action_dim"], dims["state_dim"]).to(device)
    optimizer = torch.optim.Adam(model.trainable_parameters(), lr=cfg.model.lr,
                                 fused=device.type == "cuda")
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_linear(s, cfg.steps, cfg.model.warmup_fraction))
    step, resumed = 0, False
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            state = torch.load(os.path.join(directory, CHECKPOINT_FILE), map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, resumed = int(state["step"]), True

    unwrapped = model
    model = ray.train.torch.prepare_model(model, move_to_device=False,
                                          parallel_strategy_kwargs={"find_unused_parameters": True})
    forward = torch.compile(model) if cfg.compile else model
    meta = {"stage": cfg.stage, "model": to_dict(cfg.model), "dataset": cfg.dataset,
            "num_labeled": cfg.num_labeled, **dims}

    loader = dict(batch_size=cfg.batch_size, prefetch_batches=cfg.data.prefetch_batches, drop_last=True,
                  local_shuffle_buffer_size=cfg.data.local_shuffle_buffer or None)
    train_shard = ray.train.get_dataset_shard("train")
    labeled_shard = ray.train.get_dataset_shard("labeled") if "labeled" in config["datasets"] else None
    labeled_iter = None if labeled_shard is None else _cycle(
        labeled_shard, batch_size=cfg.labeled_batch_size, drop_last=False,
        local_shuffle_buffer_size=cfg.data.local_shuffle_buffer or None)
    heldout_shard = ray.train.get_dataset_shard("heldout") if "heldout" in config["datasets"] else None
    writer = _tensorboard(config.get("tensorboard_dir")) if rank == 0 else None
    wandb_run = _wandb(cfg, config) if rank == 0 else None
    autocast = dict(device_type=device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16")

    epoch, window_start, window_samples = 0, time.perf_counter(), 0
    model.train()
    while step < cfg.steps:
        for rows in train_shard.iter_torch_batches(**loader):
            batch = rows_to_batch(rows, device)
            labeled = None if labeled_iter is None else rows_to_batch(next(labeled_iter), device)
            if cfg.fail_at_step is not None and step + 1 == cfg.fail_at_step and not resumed:
                raise RuntimeError(f"test hook: injected failure at step {step + 1} (fail_at_step)")
            with torch.autocast(**autocast):
                loss, metrics = forward(batch, labeled)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.model.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(unwrapped.trainable_parameters(), cfg.model.grad_clip)
            optimizer.step()
            scheduler.step()
            unwrapped.after_step()
            step += 1
            window_samples += len(batch)
            if step % cfg.report_every == 0 or step == cfg.steps:
                elapsed = time.perf_counter() - window_start
                values = {k: float(v) for k, v in metrics.items()}
                values.update(loss=float(loss.detach()), step=step, epoch=epoch, lr=scheduler.get_last_lr()[0],
                              samples_per_s=window_samples * world / elapsed)
                if heldout_shard is not None and (step % cfg.eval_every == 0 or step == cfg.steps):
                    values.update(_heldout_metrics(unwrapped, heldout_shard, cfg.batch_size, device))
                _report(cfg, values, step, unwrapped, optimizer, scheduler, meta, rank, writer, wandb_run)
                window_start, window_samples = time.perf_counter(), 0
            if step >= cfg.steps:
                break
        epoch += 1
    if writer is not None:
        writer.close()
    if wandb_run is not None:
        wandb_run.finish()


def _heldout_metrics(model, shard, batch_size: int, device) -> dict[str, float]:
    """Probe and head MSE/R^2 on held-out windows (every worker sees the whole, small, split)."""
    batches = (rows_to_batch(rows, device) for rows in shard.iter_torch_batches(batch_size=batch_size))
    return {f"heldout/{name}": value for name, value in evaluate(model, batches).items()}


def _report(cfg, values, step, model, optimizer, scheduler, meta, rank, writer, wandb_run) -> None:
    import ray.train

    if writer is not None:
        for k, v in values.items():
            writer.add_scalar(k, v, step)
        writer.flush()
    if wandb_run is not None:
        wandb_run.log(values, step=step)
    if step % cfg.checkpoint_every == 0 or step == cfg.steps:
        with tempfile.TemporaryDirectory() as directory:
            checkpoint = None
            if rank == 0:
                save_checkpoint(directory, model, optimizer, scheduler, step, meta)
                checkpoint = ray.train.Checkpoint.from_directory(directory)
            ray.train.report(values, checkpoint=checkpoint)
    else:
        ray.train.report(values)


def _tensorboard(directory: str | None):
    if not directory:
        return None
    from tensorboardX import SummaryWriter

    return SummaryWriter(directory)


def _wandb(cfg, config: dict):
    if not cfg.wandb.enabled:
        return None
    import wandb

    return wandb.init(project=cfg.wandb.project, entity=cfg.wandb.entity, mode=cfg.wandb.mode,
                      name=config.get("run_name"), config=config["train"], dir=config.get("wandb_dir"),
                      reinit=True)
