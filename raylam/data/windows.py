"""Training windows cut from clips: pure numpy, no Ray, so every rule here is unit-testable.

A window for transition t of an episode holds
- ``obs``: the frame stack ending at t, frames t-S+1 .. t (S = frame_stack); at the start of an
  episode, missing frames repeat frame 0 (the same padding a stacked environment applies at reset);
- ``next_frame``: frame t+1 (the next stack is ``obs[1:] + next_frame``, built on the device);
- ``future_obs``: the frame stack ending at t+k, with k drawn uniformly in 1..min(K, L-1-t), so the
  future view never crosses the end of the episode;
- ``offset`` k, ``actions``/``states``/``rewards`` at t, ``labeled``, and the episode/step indices.

Clips overlap, so a transition can appear in two clips. It *belongs* to the first clip that
holds its whole window (history and K frames ahead, or up to the episode end); every transition
t in 0..L-2 belongs to exactly one clip when ``overlap >= S-1+K``. One pass over all clips is
then exactly one pass over all transitions.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from raylam.data.shards import Clip, clip_starts


def required_overlap(frame_stack: int, max_offset: int) -> int:
    return frame_stack - 1 + max_offset


@lru_cache(maxsize=1024)
def owned_ranges(episode_length: int, clip_length: int, overlap: int, frame_stack: int,
                 max_offset: int) -> tuple[tuple[int, int, int], ...]:
    """(start, lo, hi) per clip: the clip starting at ``start`` owns transitions lo <= t < hi."""
    last = episode_length - 2  # the last transition with a next frame
    result, covered = [], 0
    for start in clip_starts(episode_length, clip_length, overlap):
        end = min(start + clip_length, episode_length) - 1  # last frame in the clip
        lo = 0 if start == 0 else start + frame_stack - 1
        # the whole future window fits, or the clip reaches the episode's end
        hi = last if end == episode_length - 1 else end - max_offset
        if lo > covered:
            break  # transitions covered..lo-1 have no clip holding their whole window
        lo = covered
        if hi >= lo:
            result.append((start, lo, hi + 1))
            covered = hi + 1
        else:
            result.append((start, 0, 0))
    if covered <= last or len(result) < len(clip_starts(episode_length, clip_length, overlap)):
        raise ValueError(
            f"clips (length {clip_length}, overlap {overlap}) leave transitions {covered}..{last} of a "
            f"{episode_length}-step episode without a full window; the dataset needs overlap >= "
            f"{required_overlap(frame_stack, max_offset)} for frame_stack {frame_stack} and max_offset {max_offset}"
        )
    return tuple(result)


def clip_windows(clip: Clip, frame_stack: int, max_offset: int, rng: np.random.Generator,
                 overlap: int, clip_length: int) -> dict[str, np.ndarray]:
    """All windows owned by ``clip``, as a dict of arrays with a leading window axis (may be 0 long)."""
    meta = clip.meta
    start, length = int(meta["start"]), int(meta["episode_length"])
    ranges = {s: (lo, hi) for s, lo, hi in owned_ranges(length, clip_length, overlap, frame_stack, max_offset)}
    if start not in ranges:
        raise ValueError(f"clip {clip.key}: start {start} is not a clip start for this dataset's layout")
    lo, hi = ranges[start]
    t = np.arange(lo, hi)  # episode steps
    n = len(t)
    local = t - start  # indices into the clip
    stack = np.arange(-frame_stack + 1, 1)
    # history indices, clamped at the episode start (repeat frame 0); never before the clip start
    hist = np.maximum(t[:, None] + stack[None, :], 0) - start
    max_k = np.minimum(max_offset, length - 1 - t)
    k = rng.integers(1, max_k + 1) if n else np.zeros(0, dtype=np.int64)
    fut = np.maximum(t[:, None] + k[:, None] + stack[None, :], 0) - start
    if n and (hist.min() < 0 or fut.max() >= len(clip)):
        raise ValueError(f"clip {clip.key}: window outside the clip (internal layout error)")
    return {
        "obs": clip.frames[hist],
        "next_frame": clip.frames[local + 1],
        "future_obs": clip.frames[fut],
        "offset": k.astype(np.int64),
        "actions": clip.actions[local],
        "states": clip.states[local],
        "rewards": clip.rewards[local],
        "labeled": np.full(n, bool(meta["labeled"])),
        "episode": np.full(n, int(meta["episode_index"]), dtype=np.int64),
        "step": t.astype(np.int64),
    }
