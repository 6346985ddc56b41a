"""Distracting dm-control environments: real MuJoCo physics, real OSMesa rendering, short episodes."""

from __future__ import annotations

import json
import os

os.environ.setdefault("MUJOCO_GL", "osmesa")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from raylam.config import ConfigError, from_dict  # noqa: E402
from raylam.envs import EnvConfig, list_clips, make_env  # noqa: E402
from raylam.envs.backgrounds import BUILTIN_SOURCES, _builtin_dir, assign_splits, scan_user_folder  # noqa: E402
from raylam.envs.dmc import DistractingEnv  # noqa: E402

ACTIONS = np.random.default_rng(0).uniform(-1, 1, size=(6, 6)).astype(np.float32)


def cfg(**overrides) -> EnvConfig:
    return from_dict(EnvConfig, {"task": "cheetah-run", "image_size": 64, **overrides})


@pytest.fixture
def envs():
    """Collects environments made by a test and closes them all, even when the test fails."""
    made = []

    def make(config: EnvConfig, seed: int, **kwargs):
        env = DistractingEnv(config, seed, **kwargs) if kwargs else make_env(config, seed)
        made.append(env)
        return env

    try:
        yield make
    finally:
        for env in made:
            env.close()


def rollout(env, actions=ACTIONS):
    """Frames, states, rewards and physics states of reset + one step per action."""
    ts = env.reset()
    out = [(ts.frame, ts.state, ts.reward, env.physics_state())]
    for a in actions:
        ts = env.step(a)
        out.append((ts.frame, ts.state, ts.reward, env.physics_state()))
    return out


# --- configuration ------------------------------------------------------------------------------
@pytest.mark.parametrize(("key", "value"), [("preset", "extreme"), ("image_size", 0), ("task", "ant-run"),
                                            ("split", "test"), ("camera_scale", 1.5), ("camera_id", 2)])
def test_bad_config_raises_config_error_naming_the_key(key, value):
    with pytest.raises(ConfigError, match=key):
        from_dict(EnvConfig, {key: value})


def test_make_env_revalidates_configs_built_in_python():
    with pytest.raises(ConfigError, match="preset"):
        make_env(EnvConfig(preset="nope"), seed=0)
    with pytest.raises(ConfigError, match="image_size"):
        make_env(EnvConfig(image_size=0), seed=0)


def test_presets_follow_dcs_scales():
    assert cfg(preset="vanilla").resolved()["background"] is False
    easy, hard = cfg(preset="easy").resolved(), cfg(preset="hard").resolved()
    mix = cfg(preset="scale_easy_video_hard").resolved()
    assert (easy["camera_scale"], easy["color_scale"], easy["num_videos"]) == (0.1, 0.1, 4)
    assert (hard["camera_scale"], hard["color_scale"], hard["num_videos"]) == (0.3, 0.3, None)
    assert (mix["camera_scale"], mix["color_scale"], mix["num_videos"]) == (0.1, 0.1, None)
    only_camera = cfg(preset="vanilla", camera_scale=0.2).resolved()
    assert only_camera["camera_scale"] == 0.2 and not only_camera["background"] and only_camera["color_scale"] == 0


def test_floor_opacity_follows_the_released_dcs():
    """LAOM's src/dcs/suite_utils.py: ground_plane_alpha 1.0 for walker, cheetah and hopper, 0.3 otherwise."""
    from raylam.envs.config import DEFAULT_GROUND_ALPHA

    assert DEFAULT_GROUND_ALPHA == {"cheetah": 1.0, "walker": 1.0, "hopper": 1.0, "humanoid": 0.3}
    assert cfg(task="hopper-hop", preset="scale_easy_video_hard").resolved()["ground_alpha"] == 1.0
    assert cfg(task="humanoid-walk", preset="easy").resolved()["ground_alpha"] == 0.3
    assert cfg(task="hopper-hop", preset="easy", ground_alpha=0.5).resolved()["ground_alpha"] == 0.5
    assert cfg(task="hopper-hop", preset="vanilla").resolved()["ground_alpha"] is None  # no background, no change


# --- vanilla = plain dm-control ------------------------------------------------------------------
def test_vanilla_frames_equal_plain_dm_control(envs):
    from dm_control import suite

    env = envs(cfg(preset="vanilla"), seed=3)
    plain = suite.load("cheetah", "run", task_kwargs={"random": 3})
    try:
        ts, pts = env.reset(), plain.reset()
        assert np.array_equal(ts.frame, plain.physics.render(64, 64, camera_id=0))
        for a in ACTIONS[:4]:
            ts, pts = env.step(a), plain.step(a)
            assert np.array_equal(env.physics_state(), plain.physics.get_state())
            assert np.array_equal(ts.frame, plain.physics.render(64, 64, camera_id=0))
            assert ts.reward == pytest.approx(pts.reward)
        assert ts.frame.dtype == np.uint8 and ts.frame.shape == (64, 64, 3)
        assert ts.state.dtype == np.float32 and ts.state.shape == (env.state_dim,) == (17,)
        assert env.action_dim == 6
    finally:
        plain.physics.free()


# --- each distractor alone ---------------------------------------------------------------------
@pytest.mark.parametrize("overrides", [{"camera_scale": 0.2}, {"color_scale": 0.3}, {"num_videos": 2}],
                         ids=["camera", "colour", "background"])
def test_each_distractor_changes_pixels_but_not_physics(envs, overrides):
    vanilla = rollout(envs(cfg(preset="vanilla"), seed=1))
    env = envs(cfg(preset="vanilla", **overrides), seed=1)
    distracted = rollout(env)
    for (f0, s0, r0, p0), (f1, s1, r1, p1) in zip(vanilla, distracted, strict=True):
        assert np.array_equal(p0, p1) and np.array_equal(s0, s1) and r0 == r1
        assert np.abs(f0.astype(int) - f1.astype(int)).mean() > 1.0
    # Distractors off = exactly plain rendering of the same state; then back on for the next step.
    assert np.array_equal(env.render_clean(), vanilla[-1][0])
    assert np.array_equal(env.render(), distracted[-1][0])
    info = json.loads(json.dumps(env.distractor_info()))
    kind = {"camera_scale": "camera", "color_scale": "color", "num_videos": "background"}[next(iter(overrides))]
    assert info[kind] is not None
    assert all(info[k] is None for k in ("camera", "color", "background") if k != kind)


def test_background_fallback_upload_path_matches_clean_rendering(envs):
    """The DCS-style path (texture in the model + mjr_uploadTexture), used when PyOpenGL fails."""
    clean = envs(cfg(preset="vanilla"), seed=2).reset().frame
    env = envs(cfg(preset="vanilla", num_videos=2), seed=2, upload_mode="mjr")
    ts = env.reset()
    assert env.background.uploader.mode == "mjr"
    assert np.abs(ts.frame.astype(int) - clean.astype(int)).mean() > 1.0
    assert np.array_equal(env.render_clean(), clean)
    assert np.array_equal(env.render(), ts.frame)


# --- reproducibility ---------------------------------------------------------------------------
def test_same_seed_same_frames_different_seed_different_frames(envs):
    config = cfg(preset="scale_easy_video_hard")
    a, b, c = (rollout(envs(config, seed=s), ACTIONS[:3]) for s in (5, 5, 6))
    for (fa, *_), (fb, *_) in zip(a, b, strict=True):
        assert np.array_equal(fa, fb)
    assert all(not np.array_equal(fa, fc) for (fa, *_), (fc, *_) in zip(a, c, strict=True))


def test_episodes_redraw_distractors_and_end_at_episode_length(envs):
    env = envs(cfg(preset="hard", episode_length=3), seed=0)
    infos = []
    for _ in range(3):
        ts = env.reset()
        infos.append(env.distractor_info())
        steps = 0
        while not ts.last:
            ts = env.step(ACTIONS[steps])
            steps += 1
        assert steps == 3 and env.steps == 3
        with pytest.raises(RuntimeError, match="reset"):
            env.step(ACTIONS[0])
    assert [i["episode"] for i in infos] == [0, 1, 2]
    assert infos[0]["camera"] != infos[1]["camera"] and infos[0]["color"] != infos[1]["color"]


def test_actions_are_clipped_to_the_bounds_when_stepping(envs):
    """An expert's raw action may lie outside [-1, 1] (the stored label); the env executes its clip."""
    big = ACTIONS[:3] * 25.0
    env = envs(cfg(preset="vanilla", image_size=16), seed=4)
    raw = rollout(env, big)
    # the controls the physics saw (and a reward reading physics.control() would see) are the clipped ones
    np.testing.assert_array_equal(env.physics.data.ctrl, np.clip(big[-1], -1.0, 1.0))
    clipped = rollout(envs(cfg(preset="vanilla", image_size=16), seed=4), np.clip(big, -1.0, 1.0))
    for (f0, s0, r0, p0), (f1, s1, r1, p1) in zip(raw, clipped, strict=True):
        assert np.array_equal(p0, p1) and np.array_equal(s0, s1) and r0 == r1 and np.array_equal(f0, f1)


def test_lifecycle_and_bad_actions(envs):
    env = envs(cfg(preset="vanilla"), seed=0)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(ACTIONS[0])
    env.reset()
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros(3))
    with pytest.raises(ValueError, match="seed"):
        make_env(cfg(preset="vanilla"), seed=-1)
    with make_env(cfg(preset="vanilla", image_size=32), seed=0) as other:
        assert other.reset().frame.shape == (32, 32, 3)
    other.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        other.reset()


# --- background sources and splits --------------------------------------------------------------
def test_builtin_train_and_eval_use_disjoint_source_files():
    train, evaluation = list_clips("train"), list_clips("eval")
    assert len(train) == 60 and len(evaluation) == 30
    train_sources, eval_sources = {c.source for c in train}, {c.source for c in evaluation}
    assert not train_sources & eval_sources
    assert len(train_sources) >= 8 and len(eval_sources) >= 6
    assert sum(c.kind == "video" for c in train) == 30  # half of each list is real video
    # the first clips of a list (what easy/medium use) mix several sources
    assert len({c.source for c in train[:4]}) >= 3
    for split in ("train", "eval"):
        for kind in ("video", "image"):
            for name in BUILTIN_SOURCES[split][kind]:
                assert (_builtin_dir(kind) / name).is_file(), name


def test_builtin_video_frame_counts_match_the_files():
    import av

    from raylam.envs.backgrounds import _BUILTIN_VIDEO_FRAMES

    for name, frames in _BUILTIN_VIDEO_FRAMES.items():
        with av.open(str(_builtin_dir("video") / name)) as container:
            assert container.streams.video[0].frames == frames


def test_env_backgrounds_come_from_its_split(envs):
    train_sources = {c.source for c in list_clips("train")}
    eval_sources = {c.source for c in list_clips("eval")}
    for split, sources in (("train", train_sources), ("eval", eval_sources)):
        env = envs(cfg(preset="scale_easy_video_hard", split=split), seed=4)
        env.reset()
        assert env.distractor_info()["background"]["video"]["source"] in sources


def _write_jpgs(folder, colour, n=3):
    from PIL import Image

    folder.mkdir()
    for i in range(n):
        img = np.zeros((24, 32, 3), np.uint8) + (np.array(colour) * (1 - 0.1 * i)).astype(np.uint8)
        Image.fromarray(img).save(folder / f"{i:05d}.jpg", quality=95)


def _write_mp4(path, colour, n=6):
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for i in range(n):
            img = np.zeros((32, 32, 3), np.uint8) + (np.array(colour) * (1 - 0.1 * i)).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _sky_colour(frame):
    """Mean colour of the top rows of a cheetah frame (the sky, above the agent)."""
    return frame[:6].reshape(-1, 3).mean(axis=0)


def test_user_davis_folder_is_split_by_name_and_shown(tmp_path, envs):
    root = tmp_path / "davis"
    root.mkdir()
    _write_jpgs(root / "bear", (200, 20, 20))  # DAVIS-2017 train
    _write_jpgs(root / "blackswan", (20, 20, 200))  # DAVIS-2017 val
    _write_jpgs(root / "my-own-clip", (20, 200, 20))
    (root / "notes.txt").write_text("not a video")
    assert set(scan_user_folder(str(root))) == {"bear", "blackswan", "my-own-clip"}
    train = {c.name for c in list_clips("train", str(root))}
    evaluation = {c.name for c in list_clips("eval", str(root))}
    assert "bear" in train and "blackswan" in evaluation  # DAVIS-2017's own split
    assert not train & evaluation and train | evaluation == {"bear", "blackswan", "my-own-clip"}
    env = envs(cfg(preset="vanilla", num_videos=8, split="eval", background_dir=str(root)), seed=0)
    frame = env.reset().frame
    name = env.distractor_info()["background"]["video"]["name"]
    assert name in evaluation
    channel = {"bear": 0, "my-own-clip": 1, "blackswan": 2}[name]
    sky = _sky_colour(frame)
    assert sky[channel] > np.delete(sky, channel).max() + 60  # the user's video is the sky


def test_user_mp4_folder_loads_and_splits_disjointly(tmp_path, envs):
    root = tmp_path / "videos"
    root.mkdir()
    colours = {"a.mp4": (220, 30, 30), "b.mp4": (30, 220, 30), "c.mp4": (30, 30, 220)}
    for name, colour in colours.items():
        _write_mp4(root / name, colour)
    splits = assign_splits(sorted(colours))
    assert set(splits.values()) == {"train", "eval"}
    assert splits == assign_splits(sorted(colours)[::-1])  # deterministic, order-free
    train = {c.name for c in list_clips("train", str(root))}
    evaluation = {c.name for c in list_clips("eval", str(root))}
    assert not train & evaluation and train | evaluation == set(colours)
    env = envs(cfg(preset="vanilla", num_videos=4, split="eval", background_dir=str(root)), seed=0)
    frames = [env.reset().frame] + [env.step(a).frame for a in ACTIONS[:2]]
    eval_name = env.distractor_info()["background"]["video"]["name"]
    assert eval_name in evaluation
    channel = int(np.argmax(colours[eval_name]))
    sky = _sky_colour(frames[0])
    assert sky[channel] > np.delete(sky, channel).max() + 50
    assert env.distractor_info()["background"]["frames"] == 6


def test_bad_background_dir_fails_clearly(tmp_path):
    with pytest.raises(ConfigError, match="background_dir"):
        list_clips("train", str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no background videos"):
        list_clips("train", str(tmp_path / "empty"))
    one = tmp_path / "one"
    one.mkdir()
    _write_jpgs(one / "only-video", (1, 2, 3))
    assert len(list_clips("train", str(one))) == 1
    with pytest.raises(ConfigError, match="eval"):
        list_clips("eval", str(one))


def test_user_split_rule_is_stable_and_never_leaves_a_split_empty():
    names = [f"clip-{i:03d}.mp4" for i in range(60)]
    big = assign_splits(names)
    assert 10 < sum(v == "eval" for v in big.values()) < 30
    grown = assign_splits(names + ["another.mp4", "one-more"])
    assert all(grown[n] == big[n] for n in names)  # adding videos moves none
    for n in range(2, 8):
        assert set(assign_splits(names[:n]).values()) == {"train", "eval"}
    assert set(assign_splits(["bear", "x.mp4"]).values()) == {"train", "eval"}
    assert set(assign_splits(["blackswan", "x.mp4"]).values()) == {"train", "eval"}
