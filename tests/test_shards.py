"""The shard format on its own: exact round trips, atomic writes, clear errors on bad input."""

import io

import numpy as np
import pytest
import webdataset as wds

from raylam.data.shards import (
    Clip,
    ShardError,
    clip_starts,
    decode_frames_mp4,
    decode_sample,
    encode_clip,
    encode_frames_mp4,
    iter_tar_samples,
    write_tar,
)
from raylam.data.storage import resolve


def make_clip(key="ep000000/0000", n=8, seed=0):
    rng = np.random.default_rng(seed)
    return Clip(
        key=key,
        frames=rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8),
        actions=rng.uniform(-1, 1, (n, 6)).astype(np.float32),
        states=rng.normal(size=(n, 17)).astype(np.float32),
        rewards=rng.uniform(size=n).astype(np.float32),
        physics=rng.normal(size=(n, 18)),
        meta={"episode_id": key.split("/")[0], "labeled": True},
    )


def test_mp4_crf0_is_lossless():
    frames = make_clip(n=12).frames
    np.testing.assert_array_equal(decode_frames_mp4(encode_frames_mp4(frames, crf=0)), frames)


@pytest.mark.parametrize("fmt", ["mp4", "npy"])
def test_clip_round_trip_through_tar(fmt, tmp_path):
    clips = [make_clip(f"ep00000{i}/0000", seed=i) for i in range(3)]
    loc = resolve(str(tmp_path))
    stats = loc.write_atomic("s.tar", lambda s: write_tar(s, [encode_clip(c, fmt) for c in clips]))
    assert stats["samples"] == 3 and stats["bytes"] == (tmp_path / "s.tar").stat().st_size
    with loc.open_read("s.tar") as stream:
        back = [decode_sample(s) for s in iter_tar_samples(stream, "s.tar")]
    via_wds = [decode_sample(s) for s in wds.WebDataset(str(tmp_path / "s.tar"), shardshuffle=False)]
    for original, a, b in zip(clips, back, via_wds, strict=True):
        for got in (a, b):
            assert got.key == original.key and got.meta == original.meta
            for name in ("frames", "actions", "states", "rewards", "physics"):
                np.testing.assert_array_equal(getattr(got, name), getattr(original, name))


def test_failed_write_leaves_nothing(tmp_path):
    loc = resolve(str(tmp_path))

    def explode(stream):
        stream.write(b"half a shard")
        raise RuntimeError("worker died")

    with pytest.raises(RuntimeError):
        loc.write_atomic("s.tar", explode)
    assert list(tmp_path.iterdir()) == []


def test_bad_samples_are_named():
    good = encode_clip(make_clip())
    missing = {k: v for k, v in good.items() if k != "actions.npy"}
    with pytest.raises(ShardError, match="ep000000/0000: member actions.npy is missing"):
        decode_sample(missing, "x.tar")
    wrong_dtype = dict(good, **{"rewards.npy": encode_clip(make_clip())["physics.npy"]})
    with pytest.raises(ShardError, match="rewards.npy has dtype float64, expected float32"):
        decode_sample(wrong_dtype)
    with pytest.raises(ShardError, match="frames.mp4: cannot decode"):
        decode_sample(dict(good, **{"frames.mp4": b"not a video"}))
    short = make_clip()
    short.actions = short.actions[:3]
    with pytest.raises(ShardError, match="actions has 3 rows, frames have 8"):
        encode_clip(short)


def test_truncated_tar_is_reported(tmp_path):
    buf = io.BytesIO()
    write_tar(buf, [encode_clip(make_clip(f"ep00000{i}/0000", seed=i)) for i in range(2)])
    with pytest.raises(ShardError, match="cut.tar"):
        list(iter_tar_samples(io.BytesIO(buf.getvalue()[: len(buf.getvalue()) // 2]), "cut.tar"))


@pytest.mark.parametrize("length, clip, overlap", [(24, 10, 4), (10, 10, 4), (7, 10, 4), (1000, 128, 12), (100, 30, 0)])
def test_clip_starts_cover_episode_with_overlap(length, clip, overlap):
    starts = clip_starts(length, clip, overlap)
    assert starts[0] == 0 and min(length, starts[-1] + clip) == length
    for a, b in zip(starts, starts[1:], strict=False):
        assert a + clip - b >= overlap  # consecutive clips share at least `overlap` frames
