"""Clip-level random order for streams: the clip index, ranged reads, and what the stream yields."""

from __future__ import annotations

import json

import numpy as np
import pytest

from raylam.data.clip_index import FetchClips, index_shard
from raylam.data.clips import CLIP_MEMBERS, clip_dataset
from raylam.data.pipeline import DatasetInfo, WindowSpec
from raylam.data.shards import clip_starts, iter_tar_samples
from raylam.data.synthetic import write_synthetic_dataset


@pytest.fixture(scope="module")
def many_episodes(tmp_path_factory):
    """16 training episodes, 4 per shard, 7 clips each (mp4 frames, as collection writes them)."""
    out = tmp_path_factory.mktemp("order") / "data"
    manifest = write_synthetic_dataset(str(out), episodes=16, episode_length=40, image_size=16, clip_length=16,
                                       overlap=12, num_labeled=3, episodes_per_shard=4, frames_format="mp4")
    return DatasetInfo(str(out)), manifest


def test_ranged_reads_give_the_bytes_of_the_tar(many_episodes):
    info, _ = many_episodes
    url = info.shard_urls("train")[0]
    rows = index_shard(url)
    with info.location.open_read(url.rsplit("/", 1)[1]) as stream:
        samples = list(iter_tar_samples(stream, url))
    assert [r["key"] for r in rows] == [s["__key__"] for s in samples]
    assert [r["meta"]["start"] for r in rows] == [json.loads(s["meta.json"])["start"] for s in samples]
    captured = {}

    def keep(raw):
        captured.update(raw)
        return raw

    batch = {"url": np.array([r["url"] for r in rows]), "key": np.array([r["key"] for r in rows]),
             "offset": np.array([r["offset"] for r in rows]), "length": np.array([r["length"] for r in rows]),
             "members": np.array([json.dumps(r["members"]) for r in rows])}
    FetchClips(keep, CLIP_MEMBERS)(batch)
    for member in ("frames.mp4", "actions.npy", "states.npy", "meta.json"):
        assert [bytes(b) for b in captured[member]] == [s[member] for s in samples], member
    assert "physics.npy" not in captured  # members nobody reads are never sliced out


@pytest.fixture
def preserved_order():
    """Blocks in the order the plan made them: Ray Data otherwise hands out whichever read task
    finishes first (which, under load, reorders two shards' clips). The test checks the plan."""
    from ray.data import DataContext

    options = DataContext.get_current().execution_options
    saved, options.preserve_order = options.preserve_order, True
    yield
    options.preserve_order = saved


@pytest.mark.slow
def test_clip_order_visits_every_clip_once_mixed_across_episodes(ray_local, many_episodes, preserved_order):
    info, manifest = many_episodes
    spec = WindowSpec(frame_stack=3, max_offset=4)
    by_shard = clip_dataset(info, spec, clips_per_task=2, shuffle_seed=None).take_all()
    mixed = clip_dataset(info, spec, clips_per_task=2, shuffle_seed=7, order="clips").take_all()
    key = lambda r: (int(r["episode"]), int(r["start"]))  # noqa: E731
    per_episode = len(clip_starts(40, 16, 12))
    assert sorted(map(key, mixed)) == sorted(map(key, by_shard)) and len(set(map(key, mixed))) == 16 * per_episode
    frames = {key(r): r["frames"] for r in by_shard}
    assert all(np.array_equal(r["frames"], frames[key(r)]) for r in mixed)  # the same decoded clips
    # the first 14 clips: 2 episodes in shard order (an episode's clips arrive together), many in clip order
    assert len({int(r["episode"]) for r in by_shard[:2 * per_episode]}) == 2
    assert len({int(r["episode"]) for r in mixed[:2 * per_episode]}) >= 8
    again = clip_dataset(info, spec, clips_per_task=2, shuffle_seed=7, order="clips").take_all()
    assert list(map(key, again)) == list(map(key, mixed))  # seeded
    labeled = clip_dataset(info, WindowSpec(frame_stack=3, max_offset=4, num_labeled=2), labeled_only=True,
                           shuffle_seed=1, order="clips").take_all()
    budget = {int(e[2:]) for e in manifest["labeled_episodes"][:2]}
    assert {int(r["episode"]) for r in labeled} == budget and len(labeled) == 2 * per_episode
