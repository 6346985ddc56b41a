"""Online evaluation: agents act in the distracting environment, episodes spread over Ray actors.

Episode i of every setting uses the seed ``episode_seed(cfg.seed, i)`` (physics and distractors),
whatever the agent, so methods are compared on the same episodes, and a rerun gives the same
returns bit for bit. Two placements (``RolloutConfig.placement``):

- ``actor``: every actor rebuilds the agent from its dict and runs whole episodes (an
  :class:`ray.util.ActorPool` hands them out). Scales with CPUs; each actor holds a model copy.
- ``batched``: actors hold environments only; the driver holds one agent and, each step, gathers
  one observation from every live actor, acts on all of them in one ``act_batch`` call (on a GPU
  with ``use_gpu``) and sends the actions back. One model, large batches; the driver's round trip
  is paid every step.

Both placements run the same per-episode bookkeeping (:class:`Episode`), so for agents that act
row by row (expert, random) they give identical returns.
"""

from __future__ import annotations

import time
import warnings
from collections import deque
from collections.abc import Sequence
from typing import Any

import numpy as np

from raylam.config import from_dict, to_dict
from raylam.envs.config import EnvConfig
from raylam.envs.expert import EXPERT_RETURNS
from raylam.eval.agents import Agent, check_spec, make_agent
from raylam.eval.config import SPLIT_LABELS, RolloutConfig, rollout_key

# The distractor overrides of EnvConfig; cleared so that a setting means exactly its preset.
_DISTRACTOR_OVERRIDES = ("camera_scale", "color_scale", "num_videos")


# --- pure helpers ------------------------------------------------------------------------------
def episode_seed(root_seed: int, index: int) -> int:
    """The seed of episode ``index``: independent streams per (root, index), the same rule as
    :func:`raylam.data.collect.episode_seed` (not imported: it would pull torch into env-only actors)."""
    return int(np.random.SeedSequence([root_seed, index]).generate_state(1)[0])


def expert_return(task: str, episode_length: int) -> float:
    """The expert's return scaled to ``episode_length`` steps.

    ``EXPERT_RETURNS`` are returns of 1000-step episodes (the dm-control default); for shorter
    episodes the denominator is scaled linearly, ``EXPERT_RETURNS[task] * episode_length / 1000``.
    Early steps earn less than the average step (the body starts at rest), so short episodes
    give normalized returns below 1 even for the expert.
    """
    if task not in EXPERT_RETURNS:
        raise ValueError(f"no expert return for task {task!r}; known tasks: {sorted(EXPERT_RETURNS)}")
    return EXPERT_RETURNS[task] * episode_length / 1000.0


def strip_indices(episode_length: int, count: int) -> list[int]:
    """At most ``count`` step indices evenly spaced over ``0 .. episode_length - 1``."""
    if count <= 0:
        return []
    return sorted({int(i) for i in np.linspace(0, episode_length - 1, min(count, episode_length)).round()})


def setting_env(env: EnvConfig, setting: str, split: str, episode_length: int) -> EnvConfig:
    """``env`` with the preset ``setting`` (its own distractor overrides cleared), split and length."""
    data = {**to_dict(env), "preset": setting, "split": split, "episode_length": episode_length}
    data.update(dict.fromkeys(_DISTRACTOR_OVERRIDES))
    return from_dict(EnvConfig, data)


class FrameStack:
    """The last ``size`` frames, oldest first; at the episode start frame 0 fills every slot
    (the padding of :mod:`raylam.data.windows`, so the policy sees what it was trained on)."""

    def __init__(self, size: int):
        self.frames: deque[np.ndarray] = deque(maxlen=size)

    def push(self, frame: np.ndarray) -> None:
        if not self.frames:
            self.frames.extend([frame] * self.frames.maxlen)
        else:
            self.frames.append(frame)

    def obs(self) -> np.ndarray:
        """uint8 [size, H, W, C]."""
        return np.stack(self.frames)


class Episode:
    """The agent-side record of one episode: frame stack, random stream, return, strip frames."""

    def __init__(self, index: int, seed: int, frame_stack: int | None, strip: Sequence[int] = ()):
        self.index, self.seed = index, seed
        self.rng = np.random.default_rng(seed)
        self.stack = FrameStack(frame_stack) if frame_stack else None
        self.strip = frozenset(strip)
        self.steps, self.ret = 0, 0.0
        self.frames: list[np.ndarray] = []
        self.state: np.ndarray | None = None

    def wants_frame(self, step: int) -> bool:
        """Whether the frame at ``step`` is needed (by the frame stack or the strip)."""
        return self.stack is not None or step in self.strip

    def observe(self, frame: np.ndarray | None, state: np.ndarray) -> None:
        """The observation the agent acts on at the current step."""
        if self.steps in self.strip:
            self.frames.append(frame)
        if self.stack is not None:
            self.stack.push(frame)
        self.state = state

    def obs(self) -> np.ndarray | None:
        return None if self.stack is None else self.stack.obs()

    def reward(self, r: float) -> None:
        self.ret += float(r)
        self.steps += 1

    def result(self) -> dict:
        frames = np.stack(self.frames) if self.frames else None
        return {"index": self.index, "seed": self.seed, "return": self.ret, "steps": self.steps, "frames": frames}


# --- the actor ---------------------------------------------------------------------------------
class RolloutWorker:
    """Holds one environment at a time; with an agent spec, also the agent (placement ``actor``)."""

    def __init__(self, task: str, render_backend: str, spec: dict | None = None):
        from raylam.envs.render import configure_rendering

        configure_rendering(render_backend)  # before dm-control is imported by the first env
        if spec is not None and spec["kind"] == "policy":  # one env per CPU: torch threads would contend
            import torch

            torch.set_num_threads(1)
        self.task, self.spec = task, spec
        self.agent: Agent | None = None
        self.env = None

    def _make_env(self, env: EnvConfig, seed: int):
        from raylam.envs import make_env

        self.close()
        self.env = make_env(env, seed)
        return self.env

    # placement "actor": whole episodes
    def run_episode(self, env: EnvConfig, index: int, seed: int, strip: Sequence[int]) -> dict:
        e = self._make_env(env, seed)
        if self.agent is None:
            self.agent = make_agent(self.spec, self.task, e.action_dim)
        check_image_size(self.agent, env)
        ep = Episode(index, seed, self.agent.frame_stack, strip)
        ts = e.reset()
        while True:
            ep.observe(ts.frame, ts.state)
            obs = ep.obs()
            action = self.agent.act_batch(None if obs is None else obs[None], ts.state[None], [ep.rng])[0]
            ts = e.step(action)
            ep.reward(ts.reward)
            if ts.last:
                break
        self.close()
        return ep.result()

    # placement "batched": the driver acts
    def reset(self, env: EnvConfig, seed: int, send_frame: bool) -> dict:
        e = self._make_env(env, seed)
        ts = e.reset()
        return {"frame": ts.frame if send_frame else None, "state": ts.state, "reward": None, "last": False,
                "action_dim": e.action_dim}

    def step(self, action: np.ndarray, send_frame: bool) -> dict:
        ts = self.env.step(action)
        if ts.last:
            self.close()
        return {"frame": ts.frame if send_frame and not ts.last else None, "state": ts.state,
                "reward": ts.reward, "last": ts.last}

    def close(self) -> None:
        if self.env is not None:
            self.env.close()
            self.env = None


def check_image_size(agent: Agent, env: EnvConfig) -> None:
    if agent.image_size is not None and agent.image_size != env.image_size:
        raise ValueError(f"the policy was trained on {agent.image_size}x{agent.image_size} frames but the env "
                         f"renders {env.image_size}x{env.image_size}: set env.image_size to {agent.image_size}")


# --- the two placements ------------------------------------------------------------------------
def _run_actor(pool_actors: list, env: EnvConfig, seeds: list[int], strip: list[int], bar) -> list[dict]:
    from ray.util import ActorPool

    pool = ActorPool(pool_actors)
    jobs = [(i, s, strip if i == 0 else []) for i, s in enumerate(seeds)]
    results = []
    for result in pool.map_unordered(lambda a, job: a.run_episode.remote(env, *job), jobs):
        results.append(result)
        bar.update(1)
    return sorted(results, key=lambda r: r["index"])


class _Driver:
    """Placement ``batched``: one agent on the driver, built when the first reply tells action_dim."""

    def __init__(self, spec: dict, task: str, device: str):
        self.spec, self.task, self.device = spec, task, device
        self.agent: Agent | None = None

    def run(self, actors: list, env: EnvConfig, seeds: list[int], strip: list[int], bar) -> list[dict]:
        import ray

        queue = deque(enumerate(seeds))
        episodes: dict[int, Episode] = {}  # actor slot -> its episode
        refs: dict[int, Any] = {}
        results = []

        def start(k: int) -> None:
            i, seed = queue.popleft()
            stack = None if self.agent is None else self.agent.frame_stack
            episodes[k] = Episode(i, seed, stack, strip if i == 0 else [])
            # the agent may not exist yet: then the first frame is sent in case it needs frames
            refs[k] = actors[k].reset.remote(env, seed, self.agent is None or episodes[k].wants_frame(0))

        for k in range(min(len(actors), len(queue))):
            start(k)
        while refs:
            slots = list(refs)
            replies = ray.get([refs.pop(k) for k in slots])
            if self.agent is None:
                self.agent = make_agent(self.spec, self.task, replies[0]["action_dim"], self.device)
                check_image_size(self.agent, env)
                for k in slots:  # episodes started before the agent existed: now they know its stack
                    ep = episodes[k]
                    episodes[k] = Episode(ep.index, ep.seed, self.agent.frame_stack, ep.strip)
            acting = []
            for k, reply in zip(slots, replies, strict=True):
                ep = episodes[k]
                if reply["reward"] is not None:
                    ep.reward(reply["reward"])
                if reply["last"]:
                    results.append(ep.result())
                    bar.update(1)
                    del episodes[k]
                    if queue:
                        start(k)  # its reset runs while the others step; its reply comes next round
                    continue
                ep.observe(reply["frame"], reply["state"])
                acting.append(k)
            if not acting:
                continue
            eps = [episodes[k] for k in acting]
            obs = np.stack([ep.obs() for ep in eps]) if self.agent.frame_stack else None
            actions = self.agent.act_batch(obs, np.stack([ep.state for ep in eps]), [ep.rng for ep in eps])
            for k, ep, action in zip(acting, eps, actions, strict=True):
                refs[k] = actors[k].step.remote(action, ep.wants_frame(ep.steps + 1))
        return sorted(results, key=lambda r: r["index"])


# --- entry point -------------------------------------------------------------------------------
def _check(agent: dict, env: EnvConfig, cfg: RolloutConfig) -> tuple[dict, EnvConfig, RolloutConfig, int]:
    from raylam.envs.dmc import check_config

    if not isinstance(cfg, RolloutConfig):
        raise ValueError(f"cfg: expected a RolloutConfig, got {type(cfg).__name__}")
    cfg = from_dict(RolloutConfig, to_dict(cfg))  # re-validate a config built in Python
    env = check_config(env)
    if cfg.background_dir is not None:  # the videos as seen from where the actors run
        env = from_dict(EnvConfig, {**to_dict(env), "background_dir": cfg.background_dir})
    spec = check_spec(agent)
    length = cfg.episode_length or env.episode_length
    if length < 2:
        raise ValueError(f"episode_length: got {length}, expected at least 2 steps")
    expert_return(env.task, length)  # unknown task -> clear error before any actor starts
    return spec, env, cfg, length


def _num_actors(cfg: RolloutConfig) -> int:
    import ray

    if cfg.num_actors is not None:
        return min(cfg.num_actors, cfg.episodes)
    cpus = ray.cluster_resources().get("CPU", 1)
    return max(1, min(int(cpus // cfg.cpus_per_actor), cfg.episodes))


def _device(cfg: RolloutConfig) -> str:
    if not cfg.use_gpu:
        return "cpu"
    if cfg.placement != "batched":
        warnings.warn("rollout.use_gpu only applies to placement 'batched'; actors act on CPU", stacklevel=3)
        return "cpu"
    import torch

    if not torch.cuda.is_available():
        warnings.warn("rollout.use_gpu: no CUDA device visible to the driver; acting on CPU", stacklevel=3)
        return "cpu"
    return "cuda"


def summarize(setting: str, env: EnvConfig, results: list[dict], wall_s: float,
              split: str | None = None) -> dict:
    """One condition's report entry (a setting, with one background split when it shows
    backgrounds): returns, their mean/std, normalized by the expert, the strip."""
    returns = [float(r["return"]) for r in results]
    norm = np.asarray(returns) / expert_return(env.task, env.episode_length)
    frames = results[0]["frames"] if results else None
    if frames is None:
        frames = np.zeros((0, env.image_size, env.image_size, 3), dtype=np.uint8)
    return {
        "key": rollout_key(setting, split),
        "setting": setting,
        "background_split": split,
        "protocol": SPLIT_LABELS.get(split, "no background videos"),
        "episodes": len(results),
        "episode_length": env.episode_length,
        "seeds": [int(r["seed"]) for r in results],
        "returns": returns,
        "return_mean": float(np.mean(returns)),
        "return_std": float(np.std(returns)),
        "normalized_mean": float(norm.mean()),
        "normalized_std": float(norm.std()),
        "frames": frames,
        "wall_s": wall_s,
    }


def evaluate_online(agent: dict, env: EnvConfig, cfg: RolloutConfig) -> list[dict]:
    """Roll out ``agent`` (a spec, see :mod:`raylam.eval.agents`) for ``cfg.episodes`` episodes in
    every setting of ``cfg.settings``, once per background split of ``cfg.background_splits`` for a
    setting with background videos (``RolloutConfig.runs``); one result dict per (setting, split),
    see :func:`summarize` (``key`` names it: ``vanilla``, ``scale_easy_video_hard/train`` ...).
    Every condition uses the same episode seeds.

    Runs on the current Ray cluster (a local one is started if none); actors are killed at the end.
    """
    import ray
    from tqdm.auto import tqdm

    spec, env, cfg, length = _check(agent, env, cfg)
    if cfg.episodes == 0 or not cfg.settings:
        return []
    device = _device(cfg)
    if not ray.is_initialized():
        ray.init()
    seeds = [episode_seed(cfg.seed, i) for i in range(cfg.episodes)]
    strip = strip_indices(length, cfg.strip_frames)
    worker = ray.remote(RolloutWorker).options(num_cpus=cfg.cpus_per_actor)
    actor_spec = spec if cfg.placement == "actor" else None
    actors = [worker.remote(env.task, cfg.render_backend, actor_spec) for _ in range(_num_actors(cfg))]
    driver = _Driver(spec, env.task, device) if cfg.placement == "batched" else None
    name = spec["kind"] if spec["kind"] != "policy" else spec["policy"].rstrip("/").rsplit("/", 1)[-1]
    conditions = cfg.runs()
    bar = tqdm(total=cfg.episodes * len(conditions), unit="ep", delay=2.0,
               desc=f"rollout {name} {env.task} ({cfg.placement}, {len(actors)} actors)")
    reports = []
    try:
        for setting, split in conditions:
            # a setting without backgrounds ignores the split; env.split keeps the config complete
            setting_cfg = setting_env(env, setting, split or env.split, length)
            started = time.perf_counter()
            if driver is None:
                results = _run_actor(actors, setting_cfg, seeds, strip, bar)
            else:
                results = driver.run(actors, setting_cfg, seeds, strip, bar)
            reports.append(summarize(setting, setting_cfg, results, time.perf_counter() - started, split))
            bar.set_postfix({reports[-1]["key"]: f"{reports[-1]['normalized_mean']:.2f}"})
    finally:
        bar.close()
        for actor in actors:
            ray.kill(actor)
    return reports
