"""Micro-benchmark: samples/s of one LAOM+supervision training step, batches already on the device.

This is the "model step alone" figure of BENCHMARKS.md (the paper's code: 5,608 unlabeled
samples/s on one H100 at the paper configuration). One step = forward of every view, backward,
Adam, EMA update; samples/s counts the unlabeled batch, as the reference does.

    python benchmarks/models.py --config small                       # CPU, seconds
    python benchmarks/models.py --config paper --batch 16 --labeled-batch 4 --steps 3   # CPU, reduced
    python benchmarks/models.py --config paper --device cuda --bf16 --compile          # the real figure
"""

from __future__ import annotations

import argparse
import time

import torch

from raylam.models import Batch, ModelConfig, build_model

ACTION_DIM, STATE_DIM = 6, 17  # cheetah-run / walker-run sized


def synthetic_batch(cfg: ModelConfig, n: int, device: torch.device) -> Batch:
    shape = (n, cfg.frame_stack, cfg.image_size, cfg.image_size, cfg.frame_channels)

    def frames() -> torch.Tensor:
        return torch.randint(0, 256, shape, dtype=torch.uint8, device=device)

    return Batch(
        obs=frames(), next_obs=frames(), future_obs=frames(),
        offset=torch.randint(1, cfg.max_offset + 1, (n,), device=device),
        actions=torch.randn(n, ACTION_DIM, device=device), states=torch.randn(n, STATE_DIM, device=device),
        labeled=torch.zeros(n, dtype=torch.bool, device=device),
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", choices=("small", "paper"), default="small")
    p.add_argument("--method", default="laom_sup")
    p.add_argument("--batch", type=int, default=None, help="unlabeled batch (default: 64 small, 512 paper)")
    p.add_argument("--labeled-batch", type=int, default=None, help="labeled batch (default: batch / 4)")
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (compilation, allocator)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (be a good neighbour)")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast, as the paper trains")
    p.add_argument("--compile", action="store_true", help="torch.compile the loss")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cfg = ModelConfig.small(args.method) if args.config == "small" else ModelConfig.paper(args.method)
    batch_size = args.batch or (64 if args.config == "small" else 512)
    labeled_size = args.labeled_batch if args.labeled_batch is not None else batch_size // 4
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    model = build_model(cfg, ACTION_DIM, STATE_DIM).to(device)
    params = model.trainable_parameters()
    opt = torch.optim.Adam(params, lr=cfg.lr, fused=device.type == "cuda")
    loss_fn = torch.compile(model) if args.compile else model
    batch = synthetic_batch(cfg, batch_size, device)
    labeled = synthetic_batch(cfg, labeled_size, device) if labeled_size else None

    def step() -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
            loss, _ = loss_fn(batch, labeled)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        model.after_step()
        return loss

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    t0 = time.perf_counter()
    for _ in range(args.warmup):
        step()
    sync()
    warm_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    sync()
    elapsed = time.perf_counter() - t0

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {args.threads} threads"
    print(f"method {cfg.method}, config {args.config} (encoder scale {cfg.encoder_scale}, latent {cfg.latent_dim}, "
          f"{cfg.image_size}x{cfg.image_size}x{cfg.in_channels}), {sum(q.numel() for q in params) / 1e6:.1f} M params")
    print(f"device {name}; bf16 {args.bf16}; compile {args.compile}; batch {batch_size} + {labeled_size} labeled")
    print(f"warm-up {args.warmup} steps: {warm_s:.1f} s; timed {args.steps} steps: {elapsed / args.steps * 1000:.1f} ms/step")
    print(f"{batch_size * args.steps / elapsed:,.1f} samples/s (unlabeled), "
          f"{(batch_size + labeled_size) * args.steps / elapsed:,.1f} samples/s (all); final loss {loss.item():.4f}")


if __name__ == "__main__":
    main()
