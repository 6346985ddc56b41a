"""Ingest: does the training step ever wait for data? Measured on the real Ray Train path.

(a) LAOM+sup samples/s through ``raylam.train.train`` (TorchTrainer, ``get_dataset_shard``, the
    labeled set, clips decoded by Ray Data and windows cut on the device) with the dataset cached
    (decoded once) and streamed every epoch (``data.cache_bytes=0``), against the same model and
    loop (``raylam.train.loop.fit``) on a store already in memory: the ratios streamed/resident.
(b) CPU-milliseconds of data path per training sample, with no model: every Ray process's CPU
    time (decode tasks, object store, the consuming worker's window cutting) over one streamed
    epoch, divided by the windows it delivered; plus the decode alone per frame, fast path vs
    PyAV's rgb24 conversion.
(c) Mixing: distinct episodes per batch from the streaming pool, on a dataset of many episodes.
(d) Fixed cost of a stage: wall time of a 1-step ``train()`` run.

    python benchmarks/ingest.py --data data/reduced_distracting       # a collected dataset
    python benchmarks/ingest.py                                       # a synthetic one
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np
import torch

from raylam.config import from_dict, to_dict
from raylam.data.clips import CLIP_MEMBERS, clip_dataset, read_clips_local
from raylam.data.pipeline import DatasetInfo, WindowSpec, configure_data_context
from raylam.data.shards import decode_frames_mp4, iter_tar_samples
from raylam.data.synthetic import write_synthetic_dataset
from raylam.models import ModelConfig
from raylam.train.config import TrainConfig
from raylam.train.loop import fit, hash_seed, setup_model
from raylam.train.sampling import ClipStore, EpochSampler, LabeledSampler, StreamingPool


def small_model(size: int) -> dict:
    return to_dict(ModelConfig.small("laom_sup", image_size=size, latent_dim=64, hidden_dim=128, head_blocks=2,
                                     lr=3e-4, sup_coef=0.01))


def train_config(args, storage: str, **changes) -> TrainConfig:
    data = {"stage": "lam", "dataset": args.data, "storage_path": storage, "model": small_model(args.size),
            "steps": args.steps, "batch_size": args.batch_size, "labeled_batch_size": args.labeled_batch_size,
            "report_every": args.steps // 4, "checkpoint_every": args.steps, "cpus_per_worker": 1,
            "data": {"read_cpus": 1, "clips_per_task": 4}}
    data.update(changes)
    return from_dict(TrainConfig, data)


def decode_rgb24(data: bytes) -> np.ndarray:
    """The previous decode: PyAV's swscale conversion to packed rgb24 for every frame."""
    import io

    import av

    with av.open(io.BytesIO(data)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def cpu_seconds_of_ray() -> float:
    """User+system CPU seconds of the Ray processes this benchmark started (the driver's process tree:
    GCS, raylet, object store, decode workers), so other Ray sessions on the machine do not count."""
    import psutil

    total = 0.0
    for proc in psutil.Process().children(recursive=True):
        try:
            t = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


def measure_train_path(args, info, results) -> None:
    from raylam.train.trainer import train

    dims = {"action_dim": info.manifest["action_dim"], "state_dim": info.manifest["state_dim"]}
    with tempfile.TemporaryDirectory() as runs:
        rates = {}
        for mode, cache in (("cached", 8 << 30), ("streamed", 0)):
            start = time.perf_counter()
            result = train(train_config(args, runs, run_name=mode, data={"read_cpus": 1, "clips_per_task": 4,
                                                                        "cache_bytes": cache}))
            wall = time.perf_counter() - start
            rates[mode] = result.metrics["samples_per_s"]  # the last report window: warm
            results[f"{mode}_wait_fraction"] = result.metrics["data_wait_fraction"]
            results[f"{mode}_stage_wall_s"] = wall
        # (d) the fixed cost of a stage: a one-step run
        start = time.perf_counter()
        train(train_config(args, runs, run_name="one_step", steps=1, report_every=1, checkpoint_every=1))
        results["one_step_stage_wall_s"] = time.perf_counter() - start

    # resident: the same loop and model on a store already in memory (no Ray)
    cfg = train_config(args, "unused")
    spec = WindowSpec(num_labeled=cfg.num_labeled)
    store = ClipStore.from_batches(read_clips_local(info, spec))
    labeled = ClipStore.from_batches(read_clips_local(info, spec, labeled_only=True))

    class Data:
        current_epoch = 0
        train = iter(EpochSampler(store, cfg.batch_size, 3, cfg.model.max_offset, seed=(0, 0, 2)))
        lab = iter(LabeledSampler(labeled, cfg.labeled_batch_size, 3, cfg.model.max_offset, seed=(0, 0, 3)))

        def next(self):
            return next(self.train), next(self.lab)

    model, optimizer, scheduler = setup_model(cfg, dims, torch.device("cpu"))
    torch.manual_seed(hash_seed(0, 0, 1))
    reports = []
    fit(model, model, optimizer, scheduler, Data(), cfg, torch.device("cpu"), 1, 0,
        lambda values, step: reports.append(values["samples_per_s"]))
    rates["resident"] = reports[-1]
    results.update({f"{k}_samples_per_s": v for k, v in rates.items()})
    results["cached_over_resident"] = rates["cached"] / rates["resident"]
    results["streamed_over_resident"] = rates["streamed"] / rates["resident"]


def measure_data_cost(args, info, results) -> None:
    """(b): CPU time per delivered window of a streamed epoch consumed by a no-op loop."""
    import ray

    from raylam.data.clip_index import clip_index

    spec = WindowSpec()
    clip_index(info, "train")  # built once per process (a pipeline's stages share it): not an epoch's cost
    for order, per_task in [("shards", args.clips_per_task[0])] + [("clips", n) for n in args.clips_per_task]:
        ds = clip_dataset(info, spec, clips_per_task=per_task, num_cpus=1, order=order)
        before, wall = cpu_seconds_of_ray(), time.perf_counter()
        consumer_before = time.process_time()
        windows = 0
        pool = StreamingPool(ds.iter_batches(batch_size=4, batch_format="numpy"), args.pool_clips,
                             args.batch_size, 3, 10, seed=(0,))
        for batch in pool:
            windows += len(batch)
        consumer = time.process_time() - consumer_before
        ray_cpu = cpu_seconds_of_ray() - before
        key = f"{order}, {per_task} clips per task"
        results[f"{key}: stream_windows"] = windows
        results[f"{key}: data_cpu_ms_per_sample"] = 1e3 * (ray_cpu + consumer) / windows
        results[f"{key}: data_consumer_cpu_ms_per_sample"] = 1e3 * consumer / windows
        results[f"{key}: stream_wall_windows_per_s"] = windows / (time.perf_counter() - wall)
    del ray

    # decode alone, one shard, in this process
    name = info.shard_urls()[0].rsplit("/", 1)[-1]
    with info.location.open_read(name) as stream:
        videos = [s["frames.mp4"] for s in iter_tar_samples(stream, name) if "frames.mp4" in s]
    if videos:
        for label, decode in (("planes", decode_frames_mp4), ("rgb24", decode_rgb24)):
            start, frames = time.process_time(), 0
            for data in videos:
                frames += len(decode(data))
            results[f"decode_{label}_cpu_ms_per_frame"] = 1e3 * (time.process_time() - start) / frames
        assert all(np.array_equal(decode_frames_mp4(v), decode_rgb24(v)) for v in videos[:2])
    results["members_read"] = CLIP_MEMBERS


def measure_mixing(args, results) -> None:
    """(c): distinct episodes per batch of the streaming pool over many short episodes, with the
    stream reading shard after shard and visiting clips in a global random order (the default)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "many")
        write_synthetic_dataset(path, episodes=args.mixing_episodes, episode_length=args.mixing_episode_length,
                                image_size=16,
                                clip_length=32, overlap=12, num_labeled=2, episodes_per_shard=4)
        info = DatasetInfo(path)
        results["mixing"] = {"episodes": args.mixing_episodes, "episode_length": args.mixing_episode_length,
                             "batch": args.mixing_batch, "pool_clips": args.pool_clips}
        for order in ("shards", "clips"):
            ds = clip_dataset(info, WindowSpec(), clips_per_task=4, num_cpus=1, order=order)
            pool = StreamingPool(ds.iter_batches(batch_size=4, batch_format="numpy"), args.pool_clips,
                                 args.mixing_batch, 3, 10, seed=(0,))
            spans = []
            for _ in pool:
                spans.append(len(torch.unique(pool.last_episodes)))
            results["mixing"][f"{order}: median distinct episodes"] = float(np.median(spans))
            results["mixing"][f"{order}: min distinct episodes"] = int(np.min(spans))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="/tmp/raylam_ingest_data")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--labeled-batch-size", type=int, default=16)
    parser.add_argument("--pool-clips", type=int, default=512)
    parser.add_argument("--mixing-episodes", type=int, default=512)
    parser.add_argument("--mixing-batch", type=int, default=512)
    parser.add_argument("--mixing-episode-length", type=int, default=200,
                        help="steps per episode (clips of 32 frames overlapping by 12: 10 clips per 200 steps)")
    parser.add_argument("--skip", nargs="*", default=[], choices=("train", "cost", "mixing"))
    parser.add_argument("--clips-per-task", type=int, nargs="+", default=[4],
                        help="(b): clips decoded per Ray Data task, one clip-order epoch for each")
    parser.add_argument("--frames-format", default="mp4", choices=("mp4", "npy"),
                        help="frames of the synthetic dataset made when --data does not exist")
    args = parser.parse_args()

    import ray

    if not os.path.exists(os.path.join(args.data, "manifest.json")):
        write_synthetic_dataset(args.data, episodes=24, episode_length=200, image_size=args.size, clip_length=64,
                                overlap=12, num_labeled=4, episodes_per_shard=4, heldout_episodes=2,
                                frames_format=args.frames_format)
    info = DatasetInfo(args.data)
    ray.init(include_dashboard=False, log_to_driver=False)
    configure_data_context(False)
    torch.set_num_threads(max(1, (os.cpu_count() or 2) - 1))
    results = {"machine": f"{os.cpu_count()} CPUs, torch {torch.__version__}", "dataset": args.data,
               "batch": f"{args.batch_size}+{args.labeled_batch_size}"}
    if "train" not in args.skip:
        measure_train_path(args, info, results)
    if "cost" not in args.skip:
        measure_data_cost(args, info, results)
    if "mixing" not in args.skip:
        measure_mixing(args, results)
    ray.shutdown()
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
