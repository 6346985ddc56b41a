"""Windows cut on the training device from decoded clips, and the batch samplers (no Ray)."""

import numpy as np
import pytest
import torch

from raylam.data.clips import _pad
from raylam.data.windows import clip_windows, owned_ranges
from raylam.train.sampling import ClipStore, EpochSampler, LabeledSampler, StreamingPool, fixed_windows
from tests.test_windows import episode_clips


def clip_rows(episodes, length, clip_length, overlap, stack, k_max, labeled=(1,)):
    """The rows raylam.data.clips.DecodeClips produces, for fake episodes whose frame t holds t."""
    rows = []
    for episode in episodes:
        ranges = owned_ranges(length, clip_length, overlap, stack, k_max)
        for clip, (start, lo, hi) in zip(episode_clips(episode, length, clip_length, overlap), ranges, strict=True):
            pad = clip_length - len(clip)
            rows.append({
                "frames": _pad(clip.frames + np.uint8(episode * 0), pad), "actions": _pad(clip.actions, pad),
                "states": _pad(clip.states + 1000 * episode, pad), "episode": np.int64(episode),
                "start": np.int64(start), "episode_length": np.int64(length), "length": np.int64(len(clip)),
                "owned_lo": np.int64(lo), "owned_hi": np.int64(hi), "labeled": np.bool_(episode in labeled),
            })
    return rows


def as_batches(rows, per_batch=3):
    for i in range(0, len(rows), per_batch):
        chunk = rows[i:i + per_batch]
        yield {name: np.stack([r[name] for r in chunk]) for name in chunk[0]}


@pytest.mark.parametrize("length, clip_length, overlap, stack, k_max", [
    (50, 16, 12, 3, 10), (200, 64, 12, 3, 10), (12, 64, 12, 3, 10), (30, 8, 3, 2, 2),
])
def test_device_windows_equal_the_cpu_windows(length, clip_length, overlap, stack, k_max):
    """Same clip, same k: the gathered windows are today's clip_windows, frame for frame."""
    rows = clip_rows([0], length, clip_length, overlap, stack, k_max)
    store = ClipStore.from_batches(as_batches(rows))
    clips = episode_clips(0, length, clip_length, overlap)
    clip_idx, step = store.transitions()
    for c, clip in enumerate(clips):
        expected = clip_windows(clip, stack, k_max, np.random.default_rng(c), overlap, clip_length)
        mine = clip_idx == c
        np.testing.assert_array_equal(step[mine].numpy(), expected["step"])
        offset = torch.from_numpy(expected["offset"])
        got = store.windows(clip_idx[mine], step[mine], offset, stack)
        np.testing.assert_array_equal(got.obs.numpy(), expected["obs"])
        np.testing.assert_array_equal(got.next_obs[:, -1].numpy(), expected["next_frame"])
        np.testing.assert_array_equal(got.next_obs[:, :-1].numpy(), expected["obs"][:, 1:])
        np.testing.assert_array_equal(got.future_obs.numpy(), expected["future_obs"])
        np.testing.assert_array_equal(got.actions.numpy(), expected["actions"])
        np.testing.assert_array_equal(got.states.numpy(), expected["states"])


def test_offsets_stay_inside_the_episode_and_cover_the_range():
    rows = clip_rows([0, 1], 60, 16, 12, 3, 10)
    store = ClipStore.from_batches(as_batches(rows))
    clip, step = store.transitions()
    k = store.draw_offsets(clip, step, 10, torch.Generator().manual_seed(0))
    assert (k >= 1).all() and (k <= 10).all() and (step + k <= 59).all()
    assert set(k.tolist()) == set(range(1, 11))


def test_epoch_sampler_draws_every_transition_once_per_epoch_and_resumes_mid_epoch():
    rows = clip_rows([0, 1, 2], 50, 16, 12, 3, 10)
    store = ClipStore.from_batches(as_batches(rows[::-1]))  # arrival order does not matter
    sampler = EpochSampler(store, 7, frame_stack=3, max_offset=10, seed=(0,))
    n = sampler.batches_per_epoch
    assert n == (3 * 49) // 7
    batches = iter(sampler)
    first = [next(batches) for _ in range(n)]
    seen = sorted((int(s // 1000), int(s % 1000)) for b in first for s in b.states[:, 0])
    assert len(seen) == len(set(seen)) == n * 7  # no transition twice in an epoch
    second = [next(batches) for _ in range(n)]
    assert not torch.equal(first[0].states, second[0].states)  # a new permutation every epoch
    # restore at epoch 1, batch 3: the same batches (frames, offsets) as the uninterrupted run
    resumed = EpochSampler(store, 7, frame_stack=3, max_offset=10, seed=(0,))
    resumed.restore({"epoch": 1, "position": 3})
    again = iter(resumed)
    for expected in second[3:6]:
        got = next(again)
        assert torch.equal(got.future_obs, expected.future_obs) and torch.equal(got.states, expected.states)


def test_same_seed_same_batches_other_seed_other_batches():
    rows = clip_rows([0, 1], 50, 16, 12, 3, 10)
    store = ClipStore.from_batches(as_batches(rows))
    a, b, c = (next(iter(EpochSampler(store, 16, 3, 10, seed=(s,)))) for s in (0, 0, 1))
    assert torch.equal(a.obs, b.obs) and torch.equal(a.offset, b.offset)
    assert not torch.equal(a.states, c.states)


def test_labeled_sampler_only_yields_labeled_episodes_of_the_budget():
    rows = clip_rows([0, 1, 2, 3], 40, 16, 12, 3, 10, labeled=(1, 3))
    store = ClipStore.from_batches(as_batches(rows))
    sampler = iter(LabeledSampler(store, 32, frame_stack=3, max_offset=10, seed=(0,)))
    episodes = set()
    for _ in range(20):
        batch = next(sampler)
        assert batch.labeled.all()
        episodes |= set((batch.states[:, 0] // 1000).long().tolist())
    assert episodes == {1, 3}


def test_fixed_windows_repeat_exactly():
    rows = clip_rows([0, 1], 50, 16, 12, 3, 10)
    store = ClipStore.from_batches(as_batches(rows))
    one = list(fixed_windows(store, 3, 10, limit=40, batch_size=16))
    two = list(fixed_windows(store, 3, 10, limit=40, batch_size=16))
    assert sum(len(b) for b in one) == 40
    for x, y in zip(one, two, strict=True):
        assert torch.equal(x.future_obs, y.future_obs) and torch.equal(x.states, y.states)


def test_streaming_pool_covers_every_transition_and_mixes_episodes():
    """Many short episodes (one clip each) arriving one after another: a batch spans many of them."""
    episodes = list(range(256))
    rows = clip_rows(episodes, 14, 16, 12, 3, 10)
    pool = StreamingPool(as_batches(rows, per_batch=4), pool_clips=64, batch_size=32, frame_stack=3,
                         max_offset=10, seed=(0,))
    seen, spans = [], []
    for batch in pool:
        ids = (batch.states[:, 0] // 1000).long()
        seen += list(zip(ids.tolist(), (batch.states[:, 0] % 1000).long().tolist(), strict=True))
        spans.append(len(set(ids.tolist())))
        t = (batch.states[:, 0] % 1000).long()
        assert torch.equal(batch.obs[:, -1, 0, 0, 0].long(), t)  # windows are cut from the right clip
    assert len(seen) == len(set(seen))  # nothing twice in one pass
    assert len(seen) >= 256 * 13 - 31  # everything but the last partial batch
    # the pool holds 64 clips of 64 episodes; a batch takes one transition from each of 32 distinct
    # clips, so it spans 32 episodes while the pool holds that many (a sequential stream: 3)
    assert np.median(spans) == 32 and min(spans[:-8]) == 32
