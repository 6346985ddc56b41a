"""Training windows: every transition once, future frames k ahead inside one episode, padded history."""

import numpy as np
import pytest

from raylam.data.shards import Clip, clip_starts
from raylam.data.windows import clip_windows, owned_ranges


def episode_clips(episode_index, length, clip_length, overlap):
    """Clips of a fake episode whose frame t is filled with the value t (states hold t too)."""
    steps = np.arange(length)
    frames = np.broadcast_to(steps[:, None, None, None], (length, 4, 4, 3)).astype(np.uint8)
    clips = []
    for i, start in enumerate(clip_starts(length, clip_length, overlap)):
        window = slice(start, start + clip_length)
        clips.append(Clip(
            key=f"ep{episode_index:06d}/{i:04d}", frames=frames[window],
            actions=np.stack([steps, -steps], 1)[window].astype(np.float32),
            states=steps[window, None].astype(np.float32), rewards=np.zeros(length, np.float32)[window],
            physics=np.zeros((length, 1))[window],
            meta={"start": start, "episode_length": length, "labeled": episode_index == 1,
                  "episode_index": episode_index},
        ))
    return clips


@pytest.mark.parametrize("length, clip_length, overlap, stack, k_max", [
    (50, 16, 12, 3, 10), (50, 16, 14, 3, 10), (200, 64, 12, 3, 10), (12, 64, 12, 3, 10), (30, 8, 3, 2, 2),
])
def test_each_transition_once_with_correct_frames(length, clip_length, overlap, stack, k_max):
    rng = np.random.default_rng(0)
    seen = []
    for episode in (0, 1):
        for clip in episode_clips(episode, length, clip_length, overlap):
            w = clip_windows(clip, stack, k_max, rng, overlap=overlap, clip_length=clip_length)
            if not w:
                continue
            t, k = w["step"], w["offset"]
            seen += [(episode, int(s)) for s in t]
            # history: frames t-stack+1..t, repeating frame 0 before the episode start
            expected_hist = np.maximum(t[:, None] + np.arange(-stack + 1, 1), 0)
            np.testing.assert_array_equal(w["obs"][:, :, 0, 0, 0], expected_hist)
            np.testing.assert_array_equal(w["next_frame"][:, 0, 0, 0], t + 1)
            # future stack ends exactly k steps ahead, k in 1..K, never past the episode's last frame
            np.testing.assert_array_equal(w["future_obs"][:, -1, 0, 0, 0], t + k)
            assert (k >= 1).all() and (k <= k_max).all() and (t + k <= length - 1).all()
            np.testing.assert_array_equal(w["actions"][:, 0], t)
            np.testing.assert_array_equal(w["states"][:, 0], t)
            assert (w["labeled"] == (episode == 1)).all() and (w["episode"] == episode).all()
    expected = [(e, s) for e in (0, 1) for s in range(length - 1)]
    assert sorted(seen) == expected  # every transition with a next frame, exactly once


def test_offsets_cover_the_range():
    rng = np.random.default_rng(1)
    ks = np.concatenate([clip_windows(c, 3, 10, rng, overlap=12, clip_length=64)["offset"]
                         for c in episode_clips(0, 500, 64, 12)])
    assert set(np.unique(ks)) == set(range(1, 11))


def test_too_little_overlap_is_a_clear_error():
    with pytest.raises(ValueError, match="needs overlap >= 12 for frame_stack 3 and max_offset 10"):
        owned_ranges(100, 16, 4, 3, 10)
