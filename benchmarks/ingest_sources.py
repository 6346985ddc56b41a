"""Ingest throughput of users' data: frames/s per core for mp4 folders and the paper's HDF5, and
how `raylam ingest` scales from 1 to 2 Ray workers.

Makes its own sources in a temporary folder (moving textures, so the codecs have real work):
  mp4:  --episodes videos of --length frames at --source-size (H.264 yuv420p, as a camera gives),
        resized to 64x64 on ingest
  hdf5: the LAOM paper's layout, --episodes trajectories of --length 64x64 frames + actions + states
Prints, per source:
  (1) one process, no Ray: frames per CPU-second of decode + resize alone, and of the whole
      per-episode work (decode, resize, clip cutting, lossless mp4 encode of the clips): the per-core figure;
  (2) `raylam ingest` end to end (scan, Ray tasks, tar write, manifest) with 1 and 2 workers.

    python benchmarks/ingest_sources.py                       # the figures quoted in README.md
    python benchmarks/ingest_sources.py --episodes 16 --length 500 --workers 1 2 4
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

import numpy as np

from raylam.config import from_dict
from raylam.data.ingest import IngestConfig, ingest
from raylam.data.ingest.sources import read_episode, scan, source_dims
from raylam.data.ingest.writer import episode_samples


def moving_frames(episode: int, length: int, size: int) -> np.ndarray:
    """A drifting colour texture with a moving square: smooth motion, like a camera's view."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    frames = np.empty((length, size, size, 3), np.uint8)
    for t in range(length):
        phase = 0.05 * t + episode
        frames[t, ..., 0] = 127 + 120 * np.sin(6 * x + phase)
        frames[t, ..., 1] = 127 + 120 * np.sin(5 * y - phase)
        frames[t, ..., 2] = 127 + 120 * np.sin(4 * (x + y) + 0.5 * phase)
        c = int((t * 3 + episode * 17) % (size - size // 4))
        frames[t, c:c + size // 4, c:c + size // 4] = 255
    return frames


def make_videos(root: str, episodes: int, length: int, size: int) -> None:
    import av

    os.makedirs(root, exist_ok=True)
    for e in range(episodes):
        with av.open(os.path.join(root, f"cam{e:03d}.mp4"), "w") as container:
            stream = container.add_stream("libx264", rate=30, options={"crf": "23"})
            stream.width, stream.height, stream.pix_fmt = size, size, "yuv420p"
            for frame in moving_frames(e, length, size):
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)


def make_hdf5(path: str, episodes: int, length: int) -> None:
    import h5py

    rng = np.random.default_rng(0)
    with h5py.File(path, "w", track_order=True) as f:
        f.attrs.update({"domain_name": "cheetah", "task_name": "run", "img_hw": 64})
        for e in range(episodes):
            g = f.create_group(str(e))
            g.create_dataset("obs", data=moving_frames(e, length, 64), dtype=np.uint8)
            g.create_dataset("states", data=rng.normal(size=(length, 17)).astype(np.float32))
            g.create_dataset("actions", data=rng.normal(size=(length, 6)).astype(np.float32))
            g.attrs["traj_return"] = 0.0


def config(source: str, path: str, output: str, workers: int | None = None) -> IngestConfig:
    return from_dict(IngestConfig, {"source": source, "paths": [path], "output": output, "image_size": 64,
                                    "clip_length": 64, "overlap": 12, "episodes_per_shard": 1,
                                    "heldout_fraction": 0.0, "num_workers": workers, "progress": False})


def one_process(cfg: IngestConfig) -> tuple[float, float]:
    """(decode+resize, whole per-episode work) in frames per CPU-second of this process: a per-core
    figure that other jobs on the machine disturb far less than a wall-clock rate."""
    refs = scan(cfg)
    dims = source_dims(cfg, refs)
    started, frames = time.process_time(), 0
    for ref in refs:
        frames += sum(1 for _ in read_episode(cfg, ref).frames)
    decode = frames / (time.process_time() - started)
    started = time.process_time()
    for i, ref in enumerate(refs):
        episode_samples(cfg, ref, i, "train", False, dims)
    return decode, frames / (time.process_time() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=8)
    parser.add_argument("--length", type=int, default=250)
    parser.add_argument("--source-size", type=int, default=128, help="mp4 frame size before the resize to 64")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3, help="runs per figure; the median is printed")
    args = parser.parse_args()

    import ray

    work = tempfile.mkdtemp(prefix="raylam-ingest-bench-")
    try:
        make_videos(os.path.join(work, "videos"), args.episodes, args.length, args.source_size)
        make_hdf5(os.path.join(work, "paper.hdf5"), args.episodes, args.length)
        sources = {"mp4": ("video_folder", os.path.join(work, "videos")),
                   "hdf5": ("hdf5", os.path.join(work, "paper.hdf5"))}
        print(f"{args.episodes} episodes x {args.length} frames; mp4 {args.source_size}x{args.source_size} "
              "H.264 -> 64x64; hdf5 64x64; clips of 64, lossless mp4 in the shards; "
              f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
        print(f"\n(1) one process, no Ray; frames per CPU-second, median of {args.repeats}")
        print("| source | decode + resize | whole ingest work (per core) |")
        print("|---|---|---|")
        for name, (source, path) in sources.items():
            runs = [one_process(config(source, path, os.path.join(work, "unused"))) for _ in range(args.repeats)]
            print(f"| {name} | {np.median([r[0] for r in runs]):.0f} | {np.median([r[1] for r in runs]):.0f} |")

        ray.init(num_cpus=max(args.workers), include_dashboard=False, log_to_driver=False)
        print(f"\n(2) raylam ingest end to end (Ray tasks, one shard per episode); wall-clock, median of {args.repeats}")
        print("| source | workers | frames/s | speed-up |")
        print("|---|---|---|---|")
        for name, (source, path) in sources.items():
            base = None
            for workers in args.workers:
                rates = []
                for repeat in range(args.repeats):
                    output = os.path.join(work, f"out-{name}-{workers}-{repeat}")
                    started = time.perf_counter()
                    manifest = ingest(config(source, path, output, workers))
                    rates.append(manifest["num_transitions"] / (time.perf_counter() - started))
                    shutil.rmtree(output)
                rate = float(np.median(rates))
                base = base or rate
                print(f"| {name} | {workers} | {rate:.0f} | {rate / base:.2f}x |")
        print(f"\nload average after: {os.getloadavg()[0]:.1f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
