"""Ingest: is the training step ever waiting for data?

(P1) LAOM+sup optimizer steps/s when batches come from the streaming Ray Data pipeline (shards ->
     decode -> windows -> iter_torch_batches, the iterator Ray Train hands its workers) versus the
     same number of steps on batches already held in device memory; their ratio (goal >= 0.95).
(P2) rows/s of the pipeline alone (no model) with Ray Data limited to 1, 2, 4, 8 CPUs.

The data are a synthetic dataset in the real shard format (no rendering needed), written once
to --data. Run on a GPU node with --device cuda --model paper for the paper configuration.

    python benchmarks/ingest.py                                   # CPU, small model
    python benchmarks/ingest.py --device cuda --model paper --batch-size 512 --labeled-batch-size 128
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from raylam.data.pipeline import DatasetInfo, WindowSpec, window_dataset
from raylam.data.synthetic import write_synthetic_dataset
from raylam.models import ModelConfig, build_model
from raylam.train.loop import rows_to_batch


def make_dataset(path: str, episodes: int, length: int, size: int) -> DatasetInfo:
    if not os.path.exists(os.path.join(path, "manifest.json")):
        write_synthetic_dataset(path, episodes=episodes, episode_length=length, image_size=size, clip_length=64,
                                overlap=12, num_labeled=max(2, episodes // 8), episodes_per_shard=1,
                                frames_format="mp4")
    return DatasetInfo(path)


def train_steps(model, optimizer, batches, labeled, steps, precision):
    """Run ``steps`` optimizer steps; returns seconds (device synchronised)."""
    device = next(model.parameters()).device
    autocast = dict(device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    start = None
    for i in range(steps + 3):
        if i == 3:  # the first steps warm up kernels and the pipeline
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        batch = next(batches)
        with torch.autocast(**autocast):
            loss, _ = model(batch, next(labeled))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        model.after_step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def cycle_stream(ds, batch_size, device, prefetch):
    while True:
        for rows in ds.iter_torch_batches(batch_size=batch_size, prefetch_batches=prefetch, drop_last=True):
            yield rows_to_batch(rows, device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="/tmp/raylam_ingest_data")
    parser.add_argument("--episodes", type=int, default=16)
    parser.add_argument("--episode-length", type=int, default=250)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model", choices=("small", "paper"), default="small")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--labeled-batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--prefetch", type=int, default=4)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--cpus", type=int, nargs="+", default=[1, 2, 4, 8])
    args = parser.parse_args()

    import ray

    ray.init(include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    info = make_dataset(args.data, args.episodes, args.episode_length, args.size)
    spec = WindowSpec(frame_stack=3, max_offset=10, num_labeled=None)
    device = torch.device(args.device)
    results = {"device": str(device), "cpus": os.cpu_count(), "model": args.model, "batch_size": args.batch_size}
    if device.type == "cuda":
        results["gpu"] = torch.cuda.get_device_name()

    # (P1) streaming vs device-resident batches, same model, same step count
    preset = ModelConfig.paper if args.model == "paper" else ModelConfig.small
    cfg = preset("laom_sup", image_size=args.size)
    model = build_model(cfg, info.manifest["action_dim"], info.manifest["state_dim"]).to(device)
    optimizer = torch.optim.Adam(model.trainable_parameters(), lr=1e-4, fused=device.type == "cuda")
    train_ds = window_dataset(info, spec)
    labeled_ds = window_dataset(info, spec, labeled_only=True).materialize()
    labeled_stream = cycle_stream(labeled_ds, args.labeled_batch_size, device, 1)
    streamed = train_steps(model, optimizer, cycle_stream(train_ds, args.batch_size, device, args.prefetch),
                           labeled_stream, args.steps, args.precision)
    held_batches = [b for _, b in zip(range(8), cycle_stream(train_ds, args.batch_size, device, args.prefetch),
                                      strict=False)]
    held_labeled = [next(labeled_stream) for _ in range(8)]

    def cycle(items):
        while True:
            yield from items

    resident = train_steps(model, optimizer, cycle(held_batches), cycle(held_labeled), args.steps, args.precision)
    p1 = {"streamed_samples_per_s": args.steps * args.batch_size / streamed,
          "resident_samples_per_s": args.steps * args.batch_size / resident}
    p1["ratio"] = p1["streamed_samples_per_s"] / p1["resident_samples_per_s"]
    results["p1"] = p1
    print(f"(P1) {args.model} LAOM+sup on {device}, batch {args.batch_size}+{args.labeled_batch_size}, {args.steps} steps")
    print(f"     streamed {p1['streamed_samples_per_s']:9.1f} samples/s   resident {p1['resident_samples_per_s']:9.1f}"
          f" samples/s   ratio {p1['ratio']:.3f}")

    # (P2) the pipeline alone under a CPU budget
    results["p2"] = {}
    print("(P2) pipeline alone (decode + windows + batches), rows/s by Ray Data CPU limit")
    context = ray.data.DataContext.get_current()
    for cpus in args.cpus:
        context.execution_options.resource_limits = context.execution_options.resource_limits.copy(cpu=cpus)
        ds = window_dataset(info, spec)
        start, rows = time.perf_counter(), 0
        for batch in ds.iter_batches(batch_size=args.batch_size, prefetch_batches=args.prefetch):
            rows += len(batch["offset"])
        rate = rows / (time.perf_counter() - start)
        results["p2"][cpus] = rate
        print(f"     {cpus} CPU(s) {rate:9.1f} rows/s ({rows} rows)")
    ray.shutdown()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
