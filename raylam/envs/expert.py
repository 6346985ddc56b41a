"""The state-based expert policies that collect the datasets (weights released with LAOM).

The weight files live in this package, in ``raylam/envs/experts/`` (see the README there):
PPO checkpoints for cheetah-run, walker-run and hopper-hop and a stable-baselines3 SAC zip for
humanoid-walk. They are read with ``torch.load(weights_only=True)`` (tensors only, no pickled
code) and turned into numpy arrays.

Acting runs a numpy forward pass, not a torch module: one step is a few small matrix products
(at most 512x512) on CPU, where numpy's float32 matmul costs microseconds and there is no torch
dispatch, thread pool or autograd overhead in the collection loop; it also keeps torch's
thread settings out of the rollout workers. Batched input ``[B, S]`` works the same way.
"""

from __future__ import annotations

import functools
import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from raylam.envs.config import TASKS

EXPERT_DIR = Path(__file__).resolve().parent / "experts"

# CleanRL's PPO clamps the normalised observation to [-10, 10] (the released agent does too).
OBS_CLIP = 10.0

# Returns of the released experts: the denominators of the normalized return.
EXPERT_RETURNS = {"cheetah-run": 837.7, "walker-run": 739.8, "hopper-hop": 306.6, "humanoid-walk": 617.2}

EXPERT_FILES = {
    "cheetah-run": ("ppo", "ppo-cheetah-run/checkpoint.pt"),
    "walker-run": ("ppo", "ppo-walker-run/checkpoint.pt"),
    "hopper-hop": ("ppo", "ppo-hopper-hop/checkpoint.pt"),
    "humanoid-walk": ("sac", "sac-humanoid-walk.zip"),
}


@dataclass(frozen=True)
class _Layer:
    weight: np.ndarray  # [in, out] (transposed from torch's [out, in])
    bias: np.ndarray  # [out]


class Expert:
    """A deterministic expert policy: ``act(state) -> action``.

    PPO: ``a = MLP_tanh(clip((s - mean) / sqrt(var + 1e-8), -10, 10))`` (greedy: the Gaussian's
    mean; the observation clamp is CleanRL's, as in the released agent). SAC: ``a = tanh(mu(MLP_relu(s)))``
    (greedy: the squashed Gaussian's mode).

    The PPO mean is unbounded: on the released experts most entries of it lie outside [-1, 1] (up
    to ~30), i.e. the experts act bang-bang and the environment clips. ``clip=True`` (the default)
    returns ``clip(a, -1, 1)``, the action the environment executes; ``clip=False`` returns what the
    expert produced, which is what LAOM's released collection stores (``collect_data.py`` records
    the raw action and steps a ``gym.wrappers.ClipAction`` environment).

    ``noise_std > 0`` adds Gaussian noise: with ``clip=True`` to the clipped greedy action (then
    clipped again), so it perturbs what the environment executes; with ``clip=False`` to the raw
    action (for PPO, sampling its Gaussian with that std, the release's ``greedy_actions=False``).
    """

    def __init__(self, task: str, algorithm: str, layers: list[_Layer], activation: str,
                 obs_mean: np.ndarray | None = None, obs_var: np.ndarray | None = None, squash: bool = False):
        self.task = task
        self.algorithm = algorithm
        self._layers = layers
        self._activation = {"tanh": np.tanh, "relu": lambda x: np.maximum(x, 0.0)}[activation]
        self._mean = obs_mean
        self._scale = None if obs_var is None else (1.0 / np.sqrt(obs_var + 1e-8)).astype(np.float32)
        self._squash = squash
        self.state_dim = int(layers[0].weight.shape[0])
        self.action_dim = int(layers[-1].weight.shape[1])

    def act(self, state, noise_std: float = 0.0, rng: np.random.Generator | None = None,
            clip: bool = True) -> np.ndarray:
        x = np.asarray(state, dtype=np.float32)
        if x.shape[-1] != self.state_dim or x.ndim not in (1, 2):
            raise ValueError(f"{self.task} expert: expected state [{self.state_dim}] or [B, {self.state_dim}], "
                             f"got shape {x.shape}")
        if self._mean is not None:
            x = np.clip((x - self._mean) * self._scale, -OBS_CLIP, OBS_CLIP)
        for layer in self._layers[:-1]:
            x = self._activation(x @ layer.weight + layer.bias)
        last = self._layers[-1]
        a = x @ last.weight + last.bias
        if self._squash:
            a = np.tanh(a)
        if clip:
            a = np.clip(a, -1.0, 1.0)
        if noise_std > 0:
            rng = rng if rng is not None else np.random.default_rng()
            a = a + rng.normal(0.0, noise_std, size=a.shape).astype(np.float32)
            if clip:
                a = np.clip(a, -1.0, 1.0)
        return a.astype(np.float32)

    __call__ = act

    def __repr__(self) -> str:
        return f"Expert({self.task!r}, {self.algorithm}, state_dim={self.state_dim}, action_dim={self.action_dim})"


def _np(t) -> np.ndarray:
    return t.detach().cpu().numpy().astype(np.float32)


def _linear(sd: dict, prefix: str) -> _Layer:
    return _Layer(weight=np.ascontiguousarray(_np(sd[f"{prefix}.weight"]).T), bias=_np(sd[f"{prefix}.bias"]))


@functools.cache
def load_expert(task: str) -> Expert:
    """The released expert of ``task``, from this package's own files (no network)."""
    import torch

    if task not in EXPERT_FILES:
        raise ValueError(f"no expert for task {task!r}; known tasks: {', '.join(TASKS)}")
    algorithm, rel = EXPERT_FILES[task]
    path = EXPERT_DIR / rel
    if not path.is_file():
        raise FileNotFoundError(f"expert weights {path} are missing (they ship inside the raylam package)")
    if algorithm == "ppo":
        sd = torch.load(path, map_location="cpu", weights_only=True)
        layers = [_linear(sd, f"actor_mean.{i}") for i in (0, 2, 4)]
        return Expert(task, "ppo", layers, "tanh", obs_mean=_np(sd["obs_rms.mean"]),
                      obs_var=_np(sd["obs_rms.var"]))
    with zipfile.ZipFile(path) as archive:
        sd = torch.load(io.BytesIO(archive.read("policy.pth")), map_location="cpu", weights_only=True)
    layers = [_linear(sd, "actor.latent_pi.0"), _linear(sd, "actor.latent_pi.2"), _linear(sd, "actor.mu")]
    return Expert(task, "sac", layers, "relu", squash=True)
