"""Collection end to end on a local Ray: real MuJoCo rollouts, real tar shards, read back three ways."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from raylam.config import from_dict, to_dict
from raylam.data.collect import MANIFEST, collect, label_order, plan_shards
from raylam.data.config import CollectConfig
from raylam.data.inspect import inspect_dataset
from raylam.data.shards import clip_starts, decode_sample

TINY = {
    "env": {"task": "cheetah-run", "preset": "scale_easy_video_hard", "image_size": 32, "episode_length": 24},
    "episodes": 2,
    "episodes_per_shard": 1,
    "clip_length": 10,
    "overlap": 4,
    "num_labeled": 1,
    "num_workers": 2,
    "progress": False,
}


def tiny_config(output: Path, **changes) -> CollectConfig:
    data = {**TINY, "output": str(output), **changes}
    return from_dict(CollectConfig, data)


@pytest.fixture(scope="module")
def tiny_dataset(ray_local, tmp_path_factory):
    cfg = tiny_config(tmp_path_factory.mktemp("tiny") / "data")
    manifest = collect(cfg)
    return cfg, manifest


def test_manifest_counts_and_labels(tiny_dataset):
    cfg, manifest = tiny_dataset
    starts = clip_starts(24, 10, 4)
    assert manifest["num_episodes"] == 2
    assert manifest["num_transitions"] == 48
    assert manifest["num_samples"] == 2 * len(starts)
    assert manifest["frame_shape"] == [32, 32, 3]
    assert manifest["action_dim"] == 6  # cheetah
    assert manifest["num_labeled"] == 1 and manifest["labeled_episodes"] == [f"ep{label_order(cfg)[0]:06d}"]
    assert len(manifest["shards"]) == 2
    assert manifest["config"] == to_dict(cfg)
    files = os.listdir(cfg.output)
    assert not [f for f in files if ".tmp-" in f], files


def test_read_back_with_webdataset(tiny_dataset):
    cfg, manifest = tiny_dataset
    urls = [str(Path(cfg.output) / s["name"]) for s in manifest["shards"]]
    clips = [decode_sample(sample) for sample in wds.WebDataset(urls, shardshuffle=False)]
    assert len(clips) == manifest["num_samples"]
    labeled = set(manifest["labeled_episodes"])
    by_episode: dict[str, list] = {}
    for clip in clips:
        assert clip.frames.dtype == np.uint8 and clip.frames.shape[1:] == (32, 32, 3)
        assert clip.actions.dtype == np.float32 and clip.actions.shape == (len(clip), 6)
        assert clip.states.dtype == np.float32 and clip.states.shape == (len(clip), manifest["state_dim"])
        assert clip.rewards.dtype == np.float32 and clip.rewards.shape == (len(clip),)
        assert clip.meta["labeled"] == (clip.meta["episode_id"] in labeled)
        by_episode.setdefault(clip.meta["episode_id"], []).append(clip)
    for episode_clips in by_episode.values():
        # overlapping clips agree on the frames they share: they are cut from one rollout
        first, second = sorted(episode_clips, key=lambda c: c.meta["start"])[:2]
        shared = first.meta["start"] + len(first) - second.meta["start"]
        assert shared == 4
        np.testing.assert_array_equal(first.frames[-shared:], second.frames[:shared])
        np.testing.assert_array_equal(first.states[-shared:], second.states[:shared])
    # expert acting: the two episodes differ (seeded per episode) and earn reward
    a, b = (by_episode[k][0] for k in sorted(by_episode))
    assert not np.array_equal(a.frames, b.frames)
    for episode_clips in by_episode.values():  # each step once, though clips overlap
        rewards = {c.meta["start"] + t: r for c in episode_clips for t, r in enumerate(c.rewards)}
        # the cheetah expert from rest earns 1.6-1.8 in its first 23 steps (seeds 0-5), a uniform
        # random policy 0.01-0.29
        assert sum(rewards.values()) > 1.0, sorted(rewards.items())
    # actions are stored as the expert produced them (LAOM's released data): the PPO expert's raw
    # mean, mostly outside [-1, 1]; the env clipped them when stepping
    from raylam.envs import load_expert

    expert = load_expert("cheetah-run")
    for clip in clips:
        np.testing.assert_allclose(clip.actions, expert.act(clip.states, clip=False), rtol=1e-5, atol=1e-5)
    assert max(np.abs(clip.actions).max() for clip in clips) > 1.0


def test_read_back_with_ray_data(tiny_dataset):
    import ray

    cfg, manifest = tiny_dataset
    ds = ray.data.read_webdataset([str(Path(cfg.output) / s["name"]) for s in manifest["shards"]])
    rows = ds.take_all()
    assert len(rows) == manifest["num_samples"]
    clip = decode_sample(rows[0])
    assert clip.frames.shape == (10, 32, 32, 3) and clip.frames.dtype == np.uint8
    assert clip.meta["task"] == "cheetah-run"
    keys = sorted(r["__key__"] for r in rows)
    assert len(set(keys)) == len(keys)


def test_same_config_same_bytes_and_rerun_skips(tiny_dataset, tmp_path):
    cfg, manifest = tiny_dataset
    again = collect(tiny_config(tmp_path / "again"))
    assert [s["sha256"] for s in again["shards"]] == [s["sha256"] for s in manifest["shards"]]
    before = {s["name"]: os.stat(Path(cfg.output) / s["name"]).st_mtime_ns for s in manifest["shards"]}
    rerun = collect(cfg)  # everything is there: nothing is rewritten
    after = {s["name"]: os.stat(Path(cfg.output) / s["name"]).st_mtime_ns for s in rerun["shards"]}
    assert before == after


def test_output_with_other_config_is_refused(tiny_dataset):
    cfg, _ = tiny_dataset
    with pytest.raises(ValueError, match="different config.*seed"):
        collect(tiny_config(Path(cfg.output), seed=7))


def test_heldout_shards_are_separate(ray_local, tmp_path):
    cfg = tiny_config(tmp_path / "held", episodes=2, heldout_episodes=1, env={**TINY["env"], "episode_length": 10})
    assert [p.split for p in plan_shards(cfg)] == ["train", "train", "heldout"]
    manifest = collect(cfg)
    assert manifest["splits"] == {"train": ["shard-000000.tar", "shard-000001.tar"], "heldout": ["shard-000002.tar"]}
    assert "ep000002" not in manifest["labeled_episodes"]


@pytest.mark.slow
def test_killed_collection_resumes_without_duplicates(ray_local, tmp_path):
    """SIGKILL the `raylam collect` driver once a shard is whole, then rerun: the driver lost on a
    cluster (a node gone, `ray job stop`). Both runs join the session's Ray rather than start their
    own: a second local Ray started beside the suite's on a busy 2-core CI machine missed Ray's fixed
    30 s raylet registration three times in a row, which tested the machine, not the resume."""
    out = tmp_path / "killed"
    overrides = [f"collect.output={out}", "collect.episodes=4", "collect.episodes_per_shard=1",
                 "collect.num_workers=1", "collect.num_labeled=2", "collect.progress=false",
                 "collect.env.image_size=32", "collect.env.episode_length=40", "collect.clip_length=16",
                 "shared_filesystem=true"]  # a cluster raylam did not start: local paths must be said shared
    config = tmp_path / "collect.yaml"
    config.write_text("collect: {}  # the defaults, changed by the overrides below\n")
    cmd = [sys.executable, "-m", "raylam.cli", "collect", "--config", str(config), *overrides]
    env = {**os.environ, "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address}
    log = tmp_path / "first_run.log"
    with open(log, "w") as sink:
        proc = subprocess.Popen(cmd, start_new_session=True, env=env, stdout=sink, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 600  # a loaded CI machine renders and schedules slowly
        while time.time() < deadline and not list(out.glob("shard-*.tar")):
            assert proc.poll() is None, f"collection ended before it could be killed:\n{log.read_text()[-3000:]}"
            time.sleep(0.2)
        survivors = sorted(p.name for p in out.glob("shard-*.tar"))
        assert survivors, "no shard appeared in time"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (out / MANIFEST).exists()
    checksum_before = {name: (out / name).read_bytes() for name in survivors}

    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((out / MANIFEST).read_text())
    episodes = [e for s in manifest["shards"] for e in s["episodes"]]
    assert sorted(episodes) == [f"ep{i:06d}" for i in range(4)]
    for name, data in checksum_before.items():  # finished shards were kept, not redone
        assert (out / name).read_bytes() == data
    assert not [p for p in out.iterdir() if ".tmp-" in p.name]
    report = inspect_dataset(str(out))
    assert report.ok, report.problems
    assert report.checked_samples == manifest["num_samples"]


def test_raw_and_clipped_actions_give_the_same_episode(tmp_path):
    """clip_actions only changes the stored labels: the env executes the clipped action either way."""
    from raylam.data.collect import rollout_episode

    env = {**TINY["env"], "episode_length": 8, "image_size": 16}
    raw, _ = rollout_episode(tiny_config(tmp_path / "raw", env=env), 1)
    clipped, _ = rollout_episode(tiny_config(tmp_path / "clipped", env=env, clip_actions=True), 1)
    for key in ("frames", "states", "rewards", "physics"):
        np.testing.assert_array_equal(raw[key], clipped[key], err_msg=key)
    np.testing.assert_array_equal(clipped["actions"], np.clip(raw["actions"], -1.0, 1.0))
    assert np.abs(raw["actions"]).max() > 1.0 >= np.abs(clipped["actions"]).max()


def test_collections_from_before_raw_actions_are_not_mixed(tmp_path):
    """An output written before clip_actions existed holds clipped actions: a raw collection is refused."""
    from raylam.data.collect import PLAN, _check_same_plan, _plan_fields
    from raylam.data.storage import resolve

    location = resolve(str(tmp_path / "old"))
    location.makedirs()
    old = _plan_fields(tiny_config(tmp_path / "old", clip_actions=True))
    del old["clip_actions"]
    location.write_json(PLAN, old)
    _check_same_plan(location, tiny_config(tmp_path / "old", clip_actions=True))  # resumes as before
    with pytest.raises(ValueError, match="clip_actions: True there, False now"):
        _check_same_plan(location, tiny_config(tmp_path / "old"))
