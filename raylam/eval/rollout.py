"""Online evaluation: agents act in the distracting environment, episodes spread over Ray actors.

Episode i of every setting uses the seed ``episode_seed(cfg.seed, i)`` (physics and distractors),
whatever the agent, so methods are compared on the same episodes, and a rerun gives the same
returns bit for bit. Two placements (``RolloutConfig.placement``):

- ``actor``: every episode is a Ray task (retried up to ``max_retries`` times if its process or
  node dies) that loads the agent (cached per worker process) and runs the episode whole.
  Scales with CPUs; an autoscaling cluster grows to the queued tasks.
- ``batched``: environment actors only step; one policy actor (on a GPU with ``use_gpu``) acts
  each step on every observation that is ready, in one ``act_batch`` call. One model, large
  batches; the driver only routes observations and actions.

Each finished episode is recorded at once (:class:`EpisodeLog`, on any storage), so an interrupted
evaluation resumes without redoing finished episodes; seeds are deterministic, so a retried or
resumed episode is the same episode.

Both placements run the same per-episode bookkeeping (:class:`Episode`), so for agents that act
row by row (expert, random) they give identical returns.
"""

from __future__ import annotations

import io
import time
import warnings
from collections import deque
from collections.abc import Sequence

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


# --- one episode, wherever it runs ---------------------------------------------------------------
# Fault injection for tests: ``RAYLAM_INJECT_ROLLOUT_FAULT=<episode index>:<marker file>`` makes the
# worker that starts that episode while the marker does not exist create the marker and die (a real
# process death, which Ray retries). The driver forwards the variable to its rollout workers.
FAULT_VARIABLE = "RAYLAM_INJECT_ROLLOUT_FAULT"


def _maybe_inject_fault(index: int) -> None:
    import os

    value = os.environ.get(FAULT_VARIABLE)
    if not value:
        return
    target, marker = value.split(":", 1)
    if int(target) == index and not os.path.exists(marker):
        with open(marker, "w") as f:
            f.write(f"episode {index} failed once in process {os.getpid()}\n")
        os._exit(1)


_AGENTS: dict[str, Agent] = {}  # per worker process: a task reusing a process reuses its loaded agent


def _cached_agent(spec: dict, task: str, action_dim: int, device: str = "cpu") -> Agent:
    import json

    key = json.dumps([spec, task, action_dim, device], sort_keys=True)
    if key not in _AGENTS:
        _AGENTS.clear()  # one agent per process at a time
        _AGENTS[key] = make_agent(spec, task, action_dim, device)
    return _AGENTS[key]


def play_episode(spec: dict, task: str, render_backend: str, env: EnvConfig, index: int, seed: int,
                 strip: Sequence[int]) -> dict:
    """Placement ``actor``: one whole episode in this process (a Ray task, retried if it dies)."""
    from raylam.envs import make_env
    from raylam.envs.render import configure_rendering

    _maybe_inject_fault(index)
    configure_rendering(render_backend)  # before dm-control is imported by the first env
    if spec["kind"] == "policy":  # one episode per CPU: torch threads would contend
        import torch

        torch.set_num_threads(1)
    with make_env(env, seed) as e:
        agent = _cached_agent(spec, task, e.action_dim)
        check_image_size(agent, env)
        ep = Episode(index, seed, agent.frame_stack, strip)
        ts = e.reset()
        while True:
            ep.observe(ts.frame, ts.state)
            obs = ep.obs()
            action = agent.act_batch(None if obs is None else obs[None], ts.state[None], [ep.rng])[0]
            ts = e.step(action)
            ep.reward(ts.reward)
            if ts.last:
                break
    return ep.result()


class EnvironmentLost(RuntimeError):
    """The environment actor was restarted (its process or node died): the episode starts over."""


class EnvWorker:
    """Placement ``batched``: holds one environment at a time and steps it on request."""

    def __init__(self, render_backend: str):
        from raylam.envs.render import configure_rendering

        configure_rendering(render_backend)
        self.env = None
        self.index: int | None = None

    def ready(self) -> None:
        """Answers once the actor runs (on an autoscaling cluster: once its node is up)."""

    def reset(self, env: EnvConfig, index: int, seed: int, send_frame: bool) -> dict:
        from raylam.envs import make_env

        self.close()
        self.env, self.index = make_env(env, seed), index
        ts = self.env.reset()
        return {"frame": ts.frame if send_frame else None, "state": ts.state, "reward": None, "last": False,
                "action_dim": self.env.action_dim}

    def step(self, action: np.ndarray, send_frame: bool) -> dict:
        if self.env is None:  # a step retried by Ray on the restarted actor
            raise EnvironmentLost("the environment actor restarted mid-episode")
        _maybe_inject_fault(self.index)
        ts = self.env.step(action)
        if ts.last:
            self.close()
        return {"frame": ts.frame if send_frame and not ts.last else None, "state": ts.state,
                "reward": ts.reward, "last": ts.last}

    def close(self) -> None:
        if self.env is not None:
            self.env.close()
            self.env = None


class PolicyWorker:
    """Placement ``batched``: the one agent, in its own actor (on a GPU with ``use_gpu``), acting on
    every live environment's observation in one call. The random streams travel with the calls, so
    a retried call acts exactly as the first."""

    def __init__(self, spec: dict, task: str, use_gpu: bool):
        self.spec, self.task = spec, task
        self.device = "cuda" if use_gpu else "cpu"
        self.agent: Agent | None = None

    def ready(self) -> None:
        """Answers once the actor runs."""

    def load(self, action_dim: int, env: EnvConfig) -> dict:
        if self.device == "cuda":
            from raylam.cluster import cuda_device

            cuda_device("rollout policy actor")
        if self.agent is None:
            self.agent = make_agent(self.spec, self.task, action_dim, self.device)
        check_image_size(self.agent, env)
        return {"frame_stack": self.agent.frame_stack}

    def act(self, obs: np.ndarray | None, states: np.ndarray, rngs: list) -> tuple[np.ndarray, list]:
        return self.agent.act_batch(obs, states, rngs), rngs


def check_image_size(agent: Agent, env: EnvConfig) -> None:
    if agent.image_size is not None and agent.image_size != env.image_size:
        raise ValueError(f"the policy was trained on {agent.image_size}x{agent.image_size} frames but the env "
                         f"renders {env.image_size}x{env.image_size}: set env.image_size to {agent.image_size}")


# --- finished episodes, kept as they finish -----------------------------------------------------
class EpisodeLog:
    """The finished episodes of one agent in one condition, on any storage (local or URI).

    Rewritten whole through a temporary name after every episode (object stores cannot append), so
    an interrupted evaluation resumes with the episodes it had finished. ``identity`` is what makes
    an episode (agent, env, seeds, strip); a log made with another identity is started afresh.
    """

    FORMAT = "raylam-episodes/1"

    def __init__(self, location, name: str, identity: dict):
        import json

        self.location, self.name = location, name
        self.identity = json.loads(json.dumps(identity, sort_keys=True))
        self.episodes: dict[int, dict] = {}
        self.frames: np.ndarray | None = None
        if location is None or not location.exists(f"{name}.json"):
            return
        doc = location.read_json(f"{name}.json")
        if doc.get("format") != self.FORMAT or doc.get("identity") != self.identity:
            print(f"   {location.url(name + '.json')} was made by another agent or setting: starting afresh",
                  flush=True)
            return
        self.episodes = {int(e["index"]): e for e in doc["episodes"]}
        if doc.get("frames"):
            with location.open_read(doc["frames"]) as stream:
                self.frames = np.load(io.BytesIO(stream.read()))

    def done(self, index: int) -> bool:
        return index in self.episodes

    def add(self, result: dict, run: str) -> None:
        frames = result.pop("frames", None)
        if frames is not None:
            self.frames = frames
        self.episodes[int(result["index"])] = {**result, "run": run}
        if self.location is None:
            return
        if len(self.episodes) == 1:
            self.location.makedirs()
        frames_name = None
        if self.frames is not None:
            frames_name = f"{self.name}.frames.npy"
            if frames is not None:  # written before the log that names it
                buffer = io.BytesIO()
                np.save(buffer, self.frames)
                self.location.write_atomic(frames_name, lambda stream: stream.write(buffer.getvalue()))
        self.location.write_json(f"{self.name}.json", {
            "format": self.FORMAT, "identity": self.identity, "frames": frames_name,
            "episodes": [self.episodes[i] for i in sorted(self.episodes)]})

    def results(self, count: int) -> list[dict]:
        """Episodes 0 .. count-1 in order, the strip frames on the first."""
        out = [dict(self.episodes[i], frames=None) for i in range(count)]
        if out:
            out[0]["frames"] = self.frames
        return out


# --- the two placements ------------------------------------------------------------------------
def _worker_env() -> dict:
    """Runtime env of the rollout workers: the fault-injection variable when the driver has it."""
    import os

    value = os.environ.get(FAULT_VARIABLE)
    return {"env_vars": {FAULT_VARIABLE: value}} if value else {}


def _run_tasks(spec: dict, task: str, env: EnvConfig, todo: list[tuple[int, int]], strip: list[int],
               cfg: RolloutConfig, finished) -> None:
    """Placement ``actor``: every episode a Ray task, at most ``num_actors`` at once (all by default)."""
    import ray

    remote = ray.remote(play_episode).options(num_cpus=cfg.cpus_per_actor, max_retries=cfg.max_retries,
                                              runtime_env=_worker_env())
    limit = cfg.num_actors or len(todo)
    running: list = []
    queue = deque(todo)
    while queue or running:
        while queue and len(running) < limit:
            i, seed = queue.popleft()
            running.append(remote.remote(spec, task, cfg.render_backend, env, i, seed, strip if i == 0 else []))
        done, running = ray.wait(running, num_returns=1)
        finished(ray.get(done[0]))


def _run_batched(spec: dict, task: str, env: EnvConfig, todo: list[tuple[int, int]], strip: list[int],
                 cfg: RolloutConfig, finished) -> None:
    """Placement ``batched``: environment actors step, one policy actor acts on every observation
    that is ready. An environment actor that dies is restarted by Ray and its episode starts over
    (same seed: the same episode); actors that have not started yet (nodes still scaling up) take
    episodes once they run. Failures beyond ``max_retries`` raise."""
    import ray

    policy_options = {"num_gpus": 1, "num_cpus": 1} if cfg.use_gpu else {"num_cpus": cfg.cpus_per_actor}
    policy = ray.remote(PolicyWorker).options(max_restarts=cfg.max_retries, max_task_retries=cfg.max_retries,
                                              **policy_options).remote(spec, task, cfg.use_gpu)
    ray.get(policy.ready.remote())  # placed before the env actors, which may take every CPU left
    # a call in flight when an actor dies is retried on the restarted actor: a reset simply runs
    # again, a step finds no environment (EnvironmentLost) and its episode starts over
    options = {"num_cpus": cfg.cpus_per_actor, "max_restarts": cfg.max_retries,
               "max_task_retries": cfg.max_retries, "runtime_env": _worker_env()}
    actors = [ray.remote(EnvWorker).options(**options).remote(cfg.render_backend)
              for _ in range(min(len(todo), cfg.num_actors or len(todo)))]
    queue = deque(todo)
    frame_stack: list = []  # [the agent's frame stack] once the policy actor has loaded it
    episodes: dict[int, Episode] = {}  # actor slot -> its episode
    failures: dict[int, int] = {}  # episode index -> times its actor died under it
    pending: dict = {actor.ready.remote(): k for k, actor in enumerate(actors)}

    def release(k: int) -> None:
        """No episode left for actor ``k``: end it, so its CPUs go to an actor Ray is restarting
        (or its node to the autoscaler)."""
        ray.kill(actors[k])

    def start(k: int) -> None:
        i, seed = queue.popleft()
        stack = frame_stack[0] if frame_stack else None
        episodes[k] = Episode(i, seed, stack, strip if i == 0 else [])
        send = not frame_stack or episodes[k].wants_frame(0)  # before the agent is known: send the frame
        pending[actors[k].reset.remote(env, i, seed, send)] = k

    try:
        while queue or episodes:
            refs = list(pending)
            ready, rest = ray.wait(refs, num_returns=1)
            if rest:  # and whatever else is ready now: one policy call for all of them
                ready += ray.wait(rest, num_returns=len(rest), timeout=0)[0]
            acting = []
            for ref in ready:
                k = pending.pop(ref)
                try:
                    reply = ray.get(ref)
                except EnvironmentLost:
                    ep = episodes.pop(k)
                    failures[ep.index] = failures.get(ep.index, 0) + 1
                    if failures[ep.index] > cfg.max_retries:
                        raise
                    queue.appendleft((ep.index, ep.seed))
                    start(k)  # the same seed on the restarted actor: the same episode
                    continue
                if reply is None:  # the actor is up
                    if queue:
                        start(k)
                    else:
                        release(k)
                    continue
                ep = episodes[k]
                if not frame_stack:  # the first reply: load the agent where it acts
                    frame_stack.append(ray.get(policy.load.remote(reply["action_dim"], env))["frame_stack"])
                if ep.steps == 0 and reply["reward"] is None and ep.stack is None and frame_stack[0]:
                    ep = episodes[k] = Episode(ep.index, ep.seed, frame_stack[0], ep.strip)
                if reply["reward"] is not None:
                    ep.reward(reply["reward"])
                if reply["last"]:
                    finished(ep.result())
                    del episodes[k]
                    if queue:
                        start(k)
                    else:
                        release(k)
                    continue
                ep.observe(reply["frame"], reply["state"])
                acting.append(k)
            if not acting:
                continue
            eps = [episodes[k] for k in acting]
            obs = np.stack([ep.obs() for ep in eps]) if frame_stack[0] else None
            actions, rngs = ray.get(policy.act.remote(obs, np.stack([ep.state for ep in eps]),
                                                      [ep.rng for ep in eps]))
            for k, ep, action, rng in zip(acting, eps, actions, rngs, strict=True):
                ep.rng = rng
                pending[actors[k].step.remote(action, ep.wants_frame(ep.steps + 1))] = k
    finally:
        for actor in [*actors, policy]:
            ray.kill(actor)  # one that never started (no room on a fixed cluster) is cancelled


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


def _device_check(cfg: RolloutConfig) -> None:
    if cfg.use_gpu and cfg.placement != "batched":
        warnings.warn("rollout.use_gpu only applies to placement 'batched'; episodes act on CPU", stacklevel=3)


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


def evaluate_online(agent: dict, env: EnvConfig, cfg: RolloutConfig, progress: str | None = None) -> list[dict]:
    """Roll out ``agent`` (a spec, see :mod:`raylam.eval.agents`) for ``cfg.episodes`` episodes in
    every setting of ``cfg.settings``, once per background split of ``cfg.background_splits`` for a
    setting with background videos (``RolloutConfig.runs``); one result dict per (setting, split),
    see :func:`summarize` (``key`` names it: ``vanilla``, ``scale_easy_video_hard/train`` ...).
    Every condition uses the same episode seeds.

    ``progress``: a directory or URI where each finished episode is recorded as it finishes
    (:class:`EpisodeLog`); a rerun skips the episodes recorded there. Episodes are Ray work on the
    current cluster (a local one is started if none), retried ``cfg.max_retries`` times.
    """
    import uuid

    from tqdm.auto import tqdm

    from raylam.data.storage import resolve

    spec, env, cfg, length = _check(agent, env, cfg)
    if cfg.episodes == 0 or not cfg.settings:
        return []
    _device_check(cfg)
    location = None
    if progress is not None:
        location = resolve(progress)
        location.makedirs()
    run = uuid.uuid4().hex[:12]  # which evaluation recorded an episode
    seeds = [episode_seed(cfg.seed, i) for i in range(cfg.episodes)]
    strip = strip_indices(length, cfg.strip_frames)
    name = spec["kind"] if spec["kind"] != "policy" else spec["policy"].rstrip("/").rsplit("/", 1)[-1]
    conditions = cfg.runs()
    bar = tqdm(total=cfg.episodes * len(conditions), unit="ep", delay=2.0,
               desc=f"rollout {name} {env.task} ({cfg.placement})")
    run_placement = _run_batched if cfg.placement == "batched" else _run_tasks
    reports = []
    try:
        for setting, split in conditions:
            # a setting without backgrounds ignores the split; env.split keeps the config complete
            setting_cfg = setting_env(env, setting, split or env.split, length)
            identity = {"agent": spec, "checkpoints": _checkpoints(spec), "env": to_dict(setting_cfg),
                        "seed": cfg.seed, "strip": strip}
            log = EpisodeLog(location, rollout_key(setting, split).replace("/", "-"), identity)
            todo = [(i, s) for i, s in enumerate(seeds) if not log.done(i)]
            bar.update(cfg.episodes - len(todo))
            started = time.perf_counter()

            def finished(result: dict, log=log) -> None:
                log.add(result, run)
                bar.update(1)

            if todo:
                run_placement(spec, env.task, setting_cfg, todo, strip, cfg, finished)
            reports.append(summarize(setting, setting_cfg, log.results(cfg.episodes),
                                     time.perf_counter() - started, split))
            reports[-1]["resumed"] = cfg.episodes - len(todo)
            bar.set_postfix({reports[-1]["key"]: f"{reports[-1]['normalized_mean']:.2f}"})
    finally:
        bar.close()
    return reports


def _checkpoints(spec: dict) -> list[str]:
    """The checkpoints a policy agent acts with (a retrained run in the same directory is another agent)."""
    if spec["kind"] != "policy":
        return []
    from raylam.train.artifacts import read_artifact

    return [read_artifact(run).get("checkpoint", "") for run in (spec["policy"], spec["decoder"]) if run]
