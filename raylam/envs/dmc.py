"""A DeepMind Control task rendered to pixels, with Distracting Control Suite distractors.

::

    with make_env(EnvConfig(task="walker-run", preset="scale_easy_video_hard"), seed=3) as env:
        ts = env.reset()                  # TimeStep(frame uint8 [H,W,3], state float32 [S], reward, last)
        while not ts.last:
            ts = env.step(expert.act(ts.state))

The physics is ``dm_control.suite.load(domain, task, task_kwargs={"random": seed})``, so the same
seed gives the same simulation as plain dm-control, with or without distractors. ``state`` is
the observation dict with its keys sorted, each value flattened to float32 and concatenated:
what the expert policies were trained on.
"""

from __future__ import annotations

import threading
from typing import NamedTuple

import numpy as np

from raylam.config import ConfigError, from_dict, to_dict
from raylam.envs.backgrounds import list_clips
from raylam.envs.config import EnvConfig, split_task
from raylam.envs.distractors import CameraShake, ColorShift, VideoBackground

# Separate random streams per distractor, derived from the env seed (the physics uses the seed
# itself, as dm-control's ``task_kwargs={"random": seed}``).
_STREAM_BACKGROUND, _STREAM_CAMERA, _STREAM_COLOR = 1, 2, 3


class TimeStep(NamedTuple):
    frame: np.ndarray  # uint8 [H, W, 3]
    state: np.ndarray  # float32 [S]
    reward: float  # 0.0 on reset
    last: bool


def flatten_observation(observation) -> np.ndarray:
    """Sorted keys, each value flattened to float32, concatenated (the experts' input)."""
    return np.concatenate(
        [np.asarray(observation[k], dtype=np.float32).reshape(-1) for k in sorted(observation)]
    )


def check_config(cfg: EnvConfig) -> EnvConfig:
    """Re-validate a config built in Python (ranges, choices, cross-field checks)."""
    if not isinstance(cfg, EnvConfig):
        raise ConfigError(f"env: expected an EnvConfig, got {type(cfg).__name__}")
    return from_dict(EnvConfig, to_dict(cfg))


class DistractingEnv:
    """One dm-control task with its distractors; see :func:`make_env`."""

    def __init__(self, cfg: EnvConfig, seed: int, *, upload_mode: str = "auto"):
        from dm_control import suite  # imported here: MUJOCO_GL must be chosen before this import
        from dm_control.mujoco.engine import Camera

        self.config = check_config(cfg)
        if not 0 <= int(seed) < 2**32:  # dm-control seeds a np.random.RandomState with it
            raise ValueError(f"seed: got {seed}, expected an integer in [0, 2**32)")
        self.seed = int(seed)
        self.settings = s = self.config.resolved()
        clips = None
        if s["background"]:  # list (and check) the background videos before building anything
            clips = list_clips(self.config.split, self.config.background_dir)
            clips = clips[: s["num_videos"]] if s["num_videos"] is not None else clips
        domain, task = split_task(self.config.task)
        self._env = suite.load(domain, task, task_kwargs={"random": self.seed, "time_limit": float("inf")})
        self.physics = self._env.physics
        self._camera_cls = Camera
        self._camera = None
        self._closed = False
        self._lock = threading.RLock()
        self._t = 0
        self._needs_reset = True
        self._episode = -1

        size = self.config.image_size
        vis = self.physics.model.vis.global_
        if size > vis.offwidth or size > vis.offheight:  # before the GL context exists
            vis.offwidth = max(vis.offwidth, size)
            vis.offheight = max(vis.offheight, size)

        spec = self._env.action_spec()
        self.action_dim = int(np.prod(spec.shape))
        self.action_low = np.broadcast_to(spec.minimum, spec.shape).astype(np.float32)
        self.action_high = np.broadcast_to(spec.maximum, spec.shape).astype(np.float32)
        self.state_dim = int(sum(int(np.prod(v.shape)) for v in self._env.observation_spec().values()))

        streams = {k: np.random.default_rng([self.seed, k])
                   for k in (_STREAM_BACKGROUND, _STREAM_CAMERA, _STREAM_COLOR)}
        self.camera = (CameraShake(self.physics, self.config.camera_id, s["camera_scale"], s["dynamic"],
                                   streams[_STREAM_CAMERA]) if s["camera_scale"] > 0 else None)
        self.color = (ColorShift(self.physics, s["color_scale"], s["dynamic"], streams[_STREAM_COLOR])
                      if s["color_scale"] > 0 else None)
        self.background = None
        if clips is not None:
            self.background = VideoBackground(self.physics, clips, self.config.texture_size, s["ground_alpha"],
                                              s["dynamic"], streams[_STREAM_BACKGROUND], upload_mode=upload_mode)

    # --- episode ------------------------------------------------------------------------------
    def reset(self) -> TimeStep:
        """Start a new episode: new initial physics state and new distractor draws."""
        self._check_open()
        ts = self._env.reset()
        self._t = 0
        self._episode += 1
        self._needs_reset = False
        for d in (self.background, self.camera, self.color):
            if d is not None:
                d.reset()
        return TimeStep(self._render(), flatten_observation(ts.observation), 0.0, False)

    def step(self, action) -> TimeStep:
        """Apply ``action`` (float [A]) for one control step; ``last`` ends the episode.

        The action is clipped to the action spec's bounds ([-1, 1] in every task here) before it
        reaches the physics, as ``gym.wrappers.ClipAction`` does in LAOM's released collection:
        an expert's raw action may lie outside them (see :class:`raylam.envs.expert.Expert`).
        """
        self._check_open()
        if self._needs_reset:
            raise RuntimeError("the episode is over (or was never started): call reset() first")
        action = np.asarray(action, dtype=np.float64).reshape(-1)
        if action.shape != (self.action_dim,):
            raise ValueError(f"action: expected shape ({self.action_dim},), got {np.shape(action)}")
        ts = self._env.step(np.clip(action, self.action_low, self.action_high))
        self._t += 1
        for d in (self.background, self.camera, self.color):
            if d is not None:
                d.step()
        last = bool(ts.last()) or self._t >= self.config.episode_length
        self._needs_reset = last
        reward = 0.0 if ts.reward is None else float(ts.reward)
        return TimeStep(self._render(), flatten_observation(ts.observation), reward, last)

    # --- rendering ----------------------------------------------------------------------------
    def _get_camera(self):
        if self._camera is None:
            size = self.config.image_size
            self._camera = self._camera_cls(self.physics, height=size, width=size,
                                            camera_id=self.config.camera_id)
        return self._camera

    def _render(self) -> np.ndarray:
        with self._lock:
            camera = self._get_camera()
            if self.background is not None:
                self.background.apply()
            if self.color is not None:
                self.color.apply()
            if self.camera is None:
                return camera.render().copy()
            data, cid = self.physics.data, self.config.camera_id
            pos, mat = np.array(data.cam_xpos[cid]), np.array(data.cam_xmat[cid])
            new_pos, new_mat = self.camera.pose()
            data.cam_xpos[cid], data.cam_xmat[cid] = new_pos, new_mat
            try:
                return camera.render().copy()
            finally:
                data.cam_xpos[cid], data.cam_xmat[cid] = pos, mat

    def render(self) -> np.ndarray:
        """The current frame, with distractors (the same as the last TimeStep's frame)."""
        self._check_started()
        return self._render()

    def render_clean(self) -> np.ndarray:
        """The current physics state seen with every distractor off (plain dm-control)."""
        self._check_started()
        with self._lock:
            camera = self._get_camera()
            if self.background is not None:
                self.background.restore()
            if self.color is not None:
                self.color.restore()
            return camera.render().copy()
        # the distractors are re-applied by the next _render()

    # --- introspection ------------------------------------------------------------------------
    def distractor_info(self) -> dict:
        """JSON-serialisable description of this episode's distractors."""
        self._check_started()
        s = self.settings
        return {
            "task": self.config.task,
            "preset": self.config.preset,
            "split": self.config.split,
            "seed": self.seed,
            "episode": self._episode,
            "image_size": self.config.image_size,
            "camera_id": self.config.camera_id,
            "dynamic": s["dynamic"],
            "background_source": self.config.background_dir or "builtin",
            "camera": None if self.camera is None else self.camera.info(),
            "color": None if self.color is None else self.color.info(),
            "background": None if self.background is None else self.background.info(),
        }

    def physics_state(self) -> np.ndarray:
        """Full MuJoCo state (time, qpos, qvel, act, ...), a copy."""
        self._check_open()
        return np.array(self.physics.get_state(), copy=True)

    @property
    def steps(self) -> int:
        """Steps taken in the current episode."""
        return self._t

    # --- lifetime -----------------------------------------------------------------------------
    def close(self) -> None:
        """Free the render context and the simulation; safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        with self._lock:
            if self._camera is not None:
                self._camera._scene.free()  # noqa: SLF001 - dm-control's Physics.render does the same
                self._camera = None
            self.physics.free()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the environment is closed")

    def _check_started(self) -> None:
        self._check_open()
        if self._episode < 0:
            raise RuntimeError("call reset() first")

    def __enter__(self) -> DistractingEnv:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"DistractingEnv(task={self.config.task!r}, preset={self.config.preset!r}, "
                f"split={self.config.split!r}, seed={self.seed})")


def make_env(cfg: EnvConfig, seed: int) -> DistractingEnv:
    """Build the distracting environment for ``cfg``; ``seed`` fixes physics and distractors."""
    return DistractingEnv(cfg, seed)
