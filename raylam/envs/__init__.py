"""Distracting DeepMind Control pixel environments and the expert policies that act in them.

::

    from raylam.envs import EnvConfig, make_env, load_expert

    expert = load_expert("cheetah-run")
    with make_env(EnvConfig(task="cheetah-run", preset="scale_easy_video_hard"), seed=0) as env:
        ts = env.reset()
        while not ts.last:
            ts = env.step(expert.act(ts.state))

Set ``MUJOCO_GL`` (or call :func:`raylam.envs.render.configure_rendering`) before the first environment is made.
"""

from raylam.envs.backgrounds import ClipSpec, list_clips
from raylam.envs.config import PRESET_SETTINGS, PRESETS, TASKS, EnvConfig
from raylam.envs.dmc import DistractingEnv, TimeStep, flatten_observation, make_env
from raylam.envs.expert import EXPERT_RETURNS, Expert, load_expert

__all__ = [
    "EXPERT_RETURNS", "PRESETS", "PRESET_SETTINGS", "TASKS", "ClipSpec", "DistractingEnv", "EnvConfig",
    "Expert", "TimeStep", "flatten_observation", "list_clips", "load_expert",
    "make_env",
]
