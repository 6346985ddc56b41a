"""Collection throughput: what distractors cost per worker, and how Ray tasks scale.

Prints, for one task at 64x64:
  (1) frames/s of one process doing expert act + env step + render, vanilla vs each distracting
      preset, and the ratio distracting/vanilla (goal >= 0.9);
  (2) end-to-end frames/s of `raylam collect` (rollout, mp4 encode, shard write) with 1 and 2
      Ray workers, and the speed-up.

    python benchmarks/collect.py                     # the figures quoted in README.md
    python benchmarks/collect.py --steps 500 --workers 1 2 4 8
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

os.environ.setdefault("MUJOCO_GL", "osmesa")

import numpy as np  # noqa: E402

from raylam.config import from_dict  # noqa: E402
from raylam.data.config import CollectConfig  # noqa: E402
from raylam.envs import EnvConfig, load_expert, make_env  # noqa: E402


def env_frames_per_s(task: str, preset: str, steps: int, size: int, seed: int = 0) -> float:
    """Steady-state frames/s of act + step + render in this process (env creation excluded)."""
    expert = load_expert(task)
    cfg = from_dict(EnvConfig, {"task": task, "preset": preset, "image_size": size, "episode_length": steps + 20})
    with make_env(cfg, seed=seed) as env:
        step = env.reset()
        for _ in range(20):  # warm-up: first renders build GL state and texture caches
            step = env.step(expert.act(step.state))
        started = time.perf_counter()
        for _ in range(steps):
            step = env.step(expert.act(step.state))
            _ = step.frame
        return steps / (time.perf_counter() - started)


def collect_frames_per_s(task: str, workers: int, episodes: int, steps: int, size: int) -> float:
    import ray

    from raylam.data.collect import collect

    with tempfile.TemporaryDirectory() as tmp:
        cfg = from_dict(CollectConfig, {
            "output": f"{tmp}/data", "episodes": episodes, "episodes_per_shard": 1, "num_labeled": 1,
            "num_workers": workers, "progress": False,
            "env": {"task": task, "preset": "scale_easy_video_hard", "image_size": size, "episode_length": steps},
        })
        started = time.perf_counter()
        manifest = collect(cfg)
        elapsed = time.perf_counter() - started
    assert ray.is_initialized()
    return manifest["num_transitions"] / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="cheetah-run")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=300, help="steps per measurement / per episode")
    parser.add_argument("--presets", nargs="+", default=["easy", "medium", "hard", "scale_easy_video_hard"])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--episodes", type=int, default=4, help="episodes per collection run")
    args = parser.parse_args()

    results: dict = {"task": args.task, "size": args.size, "cpus": os.cpu_count()}
    for preset in ["vanilla", *args.presets]:  # untimed: fill this process's background-video caches
        for seed in range(3):
            env_frames_per_s(args.task, preset, 5, args.size, seed)
    vanilla = float(np.median([env_frames_per_s(args.task, "vanilla", args.steps, args.size, s) for s in range(3)]))
    results["per_worker"] = {"vanilla": vanilla}
    print(f"(1) one process, {args.task} {args.size}x{args.size}, act+step+render, median of 3 x {args.steps} steps")
    print(f"    {'vanilla':<24} {vanilla:8.1f} frames/s")
    for preset in args.presets:
        fps = float(np.median([env_frames_per_s(args.task, preset, args.steps, args.size, s) for s in range(3)]))
        results["per_worker"][preset] = fps
        print(f"    {preset:<24} {fps:8.1f} frames/s   ratio to vanilla {fps / vanilla:5.2f}")

    import ray

    ray.init(num_cpus=max(args.workers), include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"MUJOCO_GL": os.environ["MUJOCO_GL"]}})
    collect_frames_per_s(args.task, 1, 1, 20, args.size)  # warm the worker pool
    print(f"(2) raylam collect, {args.episodes} episodes x {args.steps} steps, scale_easy_video_hard, mp4 shards")
    results["collect"] = {}
    base = None
    for workers in args.workers:
        fps = collect_frames_per_s(args.task, workers, args.episodes, args.steps, args.size)
        base = base or fps
        results["collect"][workers] = fps
        print(f"    {workers} worker(s) {fps:8.1f} frames/s   speed-up {fps / base:4.2f}x")
    ray.shutdown()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
