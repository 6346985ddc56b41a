"""Expert data collection: Ray tasks roll out episodes in the distracting env and write shards.

The plan (which episodes go to which shard, which are labeled, every seed) is a pure function of
the config, so a rerun computes the same plan, skips shards that are already whole, and writes
only the missing ones. One shard = one Ray task; Ray retries a task whose worker or node dies.
"""

from __future__ import annotations

import datetime as dt
import functools
import time

import numpy as np

from raylam import __version__
from raylam.config import to_dict
from raylam.data.config import CollectConfig
from raylam.data.manifest import FORMAT, MANIFEST, PLAN
from raylam.data.plan import ShardPlan, finished_shards
from raylam.data.shards import Clip, clip_key, clip_starts, encode_clip, write_tar
from raylam.data.storage import Location, resolve


def episode_id(index: int) -> str:
    return f"ep{index:06d}"


def episode_seed(root_seed: int, index: int) -> int:
    """Independent, reproducible seed per episode (no overlap between neighbouring root seeds)."""
    return int(np.random.SeedSequence([root_seed, index]).generate_state(1)[0])


def label_order(cfg: CollectConfig) -> list[int]:
    """Training episodes that keep labels, in a seeded order; a budget n takes the first n.

    Budgets are nested (the 4 labeled episodes include the 2), so label-budget sweeps compare
    like with like.
    """
    rng = np.random.default_rng([cfg.seed, 0x1abe1])
    return [int(i) for i in rng.permutation(cfg.episodes)[: cfg.num_labeled]]


def plan_shards(cfg: CollectConfig) -> list[ShardPlan]:
    """Training episodes first, then held-out ones; a shard never mixes the two splits."""
    plans: list[ShardPlan] = []
    for split, first, count in (("train", 0, cfg.episodes), ("heldout", cfg.episodes, cfg.heldout_episodes)):
        for start in range(first, first + count, cfg.episodes_per_shard):
            stop = min(start + cfg.episodes_per_shard, first + count)
            plans.append(ShardPlan(index=len(plans), split=split, episodes=tuple(range(start, stop))))
    return plans


@functools.lru_cache(maxsize=4)
def _expert(task: str):
    from raylam.envs import load_expert

    return load_expert(task)


def rollout_episode(cfg: CollectConfig, index: int) -> tuple[dict[str, np.ndarray], dict]:
    """Run one expert episode; returns per-step arrays and the episode's distractor settings."""
    from raylam.envs.render import configure_rendering

    configure_rendering(cfg.render_backend)
    from raylam.envs import make_env

    seed = episode_seed(cfg.seed, index)
    rng = np.random.default_rng(seed)
    expert = _expert(cfg.env.task)
    frames, actions, states, rewards, physics = [], [], [], [], []
    with make_env(cfg.env, seed=seed) as env:
        step = env.reset()
        info = env.distractor_info()
        for _ in range(cfg.env.episode_length):
            # stored as produced (unless clip_actions); the env clips it to the action bounds
            action = expert.act(step.state, noise_std=cfg.action_noise, rng=rng, clip=cfg.clip_actions)
            frames.append(step.frame)
            states.append(step.state)
            physics.append(env.physics_state())
            actions.append(action)
            step = env.step(action)
            rewards.append(step.reward)
            if step.last:
                break
    arrays = {
        "frames": np.stack(frames).astype(np.uint8),
        "actions": np.stack(actions).astype(np.float32),
        "states": np.stack(states).astype(np.float32),
        "rewards": np.asarray(rewards, dtype=np.float32),
        "physics": np.stack(physics).astype(np.float64),
    }
    return arrays, {"seed": seed, "distractors": info}


def episode_clips(cfg: CollectConfig, index: int, split: str, labeled: bool,
                  rollout=rollout_episode) -> tuple[list[Clip], float]:
    """Roll out episode ``index`` and cut it into overlapping clips; returns clips and return.

    ``rollout(cfg, index) -> (arrays, extra_meta)``; extra meta may override ``task``.
    """
    arrays, extra = rollout(cfg, index)
    length = len(arrays["frames"])
    clips = []
    for clip_index, start in enumerate(clip_starts(length, cfg.clip_length, cfg.overlap)):
        window = slice(start, start + cfg.clip_length)
        meta = {
            "task": cfg.env.task,
            "episode_id": episode_id(index),
            "episode_index": index,
            "clip_index": clip_index,
            "start": start,
            "episode_length": length,
            "labeled": labeled,
            "split": split,
            **extra,
        }
        clips.append(Clip(key=clip_key(episode_id(index), clip_index),
                          **{k: v[window] for k, v in arrays.items()}, meta=meta))
    return clips, float(arrays["rewards"].sum())


def write_shard(cfg: CollectConfig, plan: ShardPlan, labeled: frozenset[int], rollout=rollout_episode) -> dict:
    """Roll out a shard's episodes and write it under a temporary name, then rename.

    The info file is written before the tar's rename: a tar under its final name always has its
    info beside it, so "tar exists" means "shard is whole".
    """
    location = resolve(cfg.output)
    started = time.perf_counter()
    returns, samples, frames = {}, [], 0
    for index in plan.episodes:
        clips, episode_return = episode_clips(cfg, index, plan.split, index in labeled, rollout)
        returns[episode_id(index)] = episode_return
        frames += clips[-1].meta["episode_length"]
        samples.extend(encode_clip(clip, cfg.frames_format, cfg.crf) for clip in clips)
    tmp, stats = location.write_temporary(plan.name, lambda stream: write_tar(stream, samples))
    info = {
        "name": plan.name,
        "index": plan.index,
        "split": plan.split,
        "episodes": [episode_id(i) for i in plan.episodes],
        "labeled_episodes": [episode_id(i) for i in plan.episodes if i in labeled],
        "returns": returns,
        "frames": frames,
        "seconds": time.perf_counter() - started,
        **stats,
    }
    location.write_json(plan.info_name, info)
    location.rename(tmp, plan.name)
    return info


def _check_same_plan(location: Location, cfg: CollectConfig) -> None:
    """Refuse to mix two different collections in one output directory."""
    wanted = _plan_fields(cfg)
    if location.exists(PLAN):
        existing = location.read_json(PLAN)
        existing.setdefault("clip_actions", True)  # collections made before the option stored clipped actions
        for key in sorted(set(wanted) | set(existing)):
            if existing.get(key) != wanted.get(key):
                raise ValueError(
                    f"{location.uri} already holds a collection made with a different config "
                    f"({key}: {existing.get(key)!r} there, {wanted.get(key)!r} now); "
                    "choose another output or delete that directory"
                )
    else:
        location.write_json(PLAN, wanted)


def _plan_fields(cfg: CollectConfig) -> dict:
    """The config fields that decide what the shards contain (not how fast they are made)."""
    data = to_dict(cfg)
    for key in ("num_workers", "max_retries", "progress", "output", "render_backend"):
        data.pop(key)
    return data


def build_manifest(cfg: CollectConfig, infos: list[dict], sample_clip: Clip) -> dict:
    returns = [r for info in infos for r in info["returns"].values()]
    order = [episode_id(i) for i in label_order(cfg)]
    return {
        "format": FORMAT,
        "raylam_version": __version__,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "task": cfg.env.task,
        "frame_shape": list(sample_clip.frames.shape[1:]),
        "action_dim": int(sample_clip.actions.shape[1]),
        "state_dim": int(sample_clip.states.shape[1]),
        "physics_dim": int(sample_clip.physics.shape[1]),
        "frames_format": cfg.frames_format,
        "clip_length": cfg.clip_length,
        "overlap": cfg.overlap,
        "episode_length": cfg.env.episode_length,
        "num_episodes": sum(len(info["episodes"]) for info in infos),
        "num_transitions": sum(info["frames"] for info in infos),
        "num_samples": sum(info["samples"] for info in infos),
        "num_labeled": len(order),
        "labeled_episodes": order,
        "splits": {
            split: [info["name"] for info in infos if info["split"] == split] for split in ("train", "heldout")
        },
        "episode_return": {"mean": float(np.mean(returns)), "std": float(np.std(returns)),
                           "min": float(np.min(returns)), "max": float(np.max(returns))},
        "shards": [{k: info[k] for k in ("name", "split", "episodes", "labeled_episodes", "samples",
                                         "frames", "bytes", "sha256")} for info in infos],
        "config": to_dict(cfg),
    }


def _first_clip(location: Location, name: str) -> Clip:
    from raylam.data.shards import decode_sample, iter_tar_samples

    with location.open_read(name) as stream:
        return decode_sample(next(iter(iter_tar_samples(stream, location.url(name)))), location.url(name))


def collect(cfg: CollectConfig) -> dict:
    """Run the collection on the current Ray cluster (starting a local one if none); returns the manifest."""
    import ray
    from tqdm.auto import tqdm

    location = resolve(cfg.output)
    location.makedirs()
    _check_same_plan(location, cfg)
    stale = location.remove_stale_temporaries()
    plans = plan_shards(cfg)
    done = finished_shards(location, plans)
    todo = [plan for plan in plans if plan.index not in done]
    labeled = frozenset(label_order(cfg))

    # null: every shard is submitted at once; Ray runs as many as there are CPUs and the pending
    # rest is the demand an autoscaling cluster scales up for (a cluster may start with no workers)
    workers = cfg.num_workers or max(1, len(todo))
    task = ray.remote(num_cpus=1, max_retries=cfg.max_retries)(write_shard)

    total_episodes = sum(len(p.episodes) for p in plans)
    bar = tqdm(total=total_episodes, unit="ep", desc=f"collect {cfg.env.task}", disable=not cfg.progress)
    bar.update(sum(len(info["episodes"]) for info in done.values()))
    if stale:
        bar.write(f"removed {len(stale)} temporary file(s) left by an interrupted run")
    if done:
        bar.write(f"{len(done)} of {len(plans)} shards already written; collecting the other {len(todo)}")
    started, frames = time.perf_counter(), 0
    queue, running = list(todo), {}
    while queue or running:
        while queue and len(running) < workers:
            plan = queue.pop(0)
            running[task.remote(cfg, plan, labeled)] = plan
        ready, _ = ray.wait(list(running), num_returns=1)
        plan = running.pop(ready[0])
        info = ray.get(ready[0])
        done[plan.index] = info
        frames += info["frames"]
        bar.update(len(info["episodes"]))
        bar.set_postfix(frames_per_s=f"{frames / (time.perf_counter() - started):.0f}", shards=len(done))
    bar.close()

    infos = [done[plan.index] for plan in plans]
    manifest = build_manifest(cfg, infos, _first_clip(location, infos[0]["name"]))
    location.write_json(MANIFEST, manifest)
    return manifest
