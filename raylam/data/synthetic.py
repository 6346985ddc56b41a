"""Synthetic datasets in the real shard format, for tests and ingest benchmarks without rendering.

Each episode moves a bright square over a noisy, drifting background (a distractor the agent does
not cause); the square's velocity is a fixed linear function of the hidden action, so a latent
action model can recover the action from consecutive frames. Shards, manifest and checksums are
written by the same code as ``raylam collect``.
"""

from __future__ import annotations

from functools import partial

import numpy as np

from raylam.config import from_dict
from raylam.data.collect import build_manifest, label_order, plan_shards, write_shard
from raylam.data.config import CollectConfig
from raylam.data.manifest import MANIFEST
from raylam.data.shards import Clip
from raylam.data.storage import resolve


def synthetic_episode(index: int, length: int, size: int, action_dim: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([seed, index])
    mixing = np.random.default_rng(seed).normal(size=(action_dim, 2)) / np.sqrt(action_dim)
    actions = np.clip(rng.normal(scale=0.7, size=(length, action_dim)), -1, 1).astype(np.float32)
    pos = np.zeros((length, 2))
    pos[0] = rng.uniform(0.25, 0.75, 2) * size
    for t in range(1, length):
        pos[t] = np.clip(pos[t - 1] + 3.0 * actions[t - 1] @ mixing, 2, size - 6)
    background = rng.integers(0, 90, (size * 2, size * 2, 3), dtype=np.uint8)
    frames = np.empty((length, size, size, 3), dtype=np.uint8)
    for t in range(length):
        off = (t * 2) % size  # the background drifts on its own
        frames[t] = background[off:off + size, off:off + size]
        y, x = pos[t].astype(int)
        frames[t, y:y + 4, x:x + 4] = (250, 220, 40)
    states = np.concatenate([pos / size, np.diff(pos, axis=0, prepend=pos[:1]) / size], 1).astype(np.float32)
    return {"frames": frames, "actions": actions, "states": states,
            "rewards": np.linalg.norm(actions, axis=1).astype(np.float32),
            "physics": np.concatenate([pos, np.zeros((length, 1))], 1)}


def _synthetic_rollout(cfg: CollectConfig, index: int, size: int, action_dim: int, seed: int):
    """The ``rollout`` that :func:`raylam.data.collect.write_shard` calls, for synthetic episodes."""
    return synthetic_episode(index, cfg.env.episode_length, size, action_dim, seed), {"task": "synthetic", "seed": seed}


def write_synthetic_dataset(output: str, episodes: int = 8, episode_length: int = 64, image_size: int = 32,
                            action_dim: int = 4, num_labeled: int = 2, clip_length: int = 32, overlap: int = 12,
                            episodes_per_shard: int = 1, heldout_episodes: int = 0, seed: int = 0,
                            frames_format: str = "npy") -> dict:
    """Write a synthetic dataset and return its manifest."""
    cfg = from_dict(CollectConfig, {
        "output": output, "episodes": episodes, "heldout_episodes": heldout_episodes,
        "episodes_per_shard": episodes_per_shard, "clip_length": clip_length, "overlap": overlap,
        "num_labeled": num_labeled, "seed": seed, "frames_format": frames_format, "progress": False,
        "env": {"image_size": image_size, "episode_length": episode_length, "preset": "vanilla"},
    })
    location = resolve(output)
    location.makedirs()
    labeled = frozenset(label_order(cfg))
    rollout = partial(_synthetic_rollout, size=image_size, action_dim=action_dim, seed=seed)
    infos = [write_shard(cfg, plan, labeled, rollout) for plan in plan_shards(cfg)]
    first = synthetic_episode(0, 2, image_size, action_dim, seed)
    sample = Clip(key="x", **first)
    manifest = build_manifest(cfg, infos, sample)
    manifest["task"] = "synthetic"
    location.write_json(MANIFEST, manifest)
    return manifest
