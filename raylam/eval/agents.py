"""Agents that act in the environment during online evaluation, built from plain dicts.

An agent is described by a small dict so that a Ray actor can rebuild it where it runs (no torch
module is pickled across processes)::

    {"kind": "expert"}                                     # the task's state-based expert (upper line)
    {"kind": "random"}                                     # uniform actions in [-1, 1] (lower line)
    {"kind": "policy", "policy": RUN_DIR, "decoder": None} # bc, or latent_bc whose "latent" is the action
    {"kind": "policy", "policy": RUN_DIR, "decoder": RUN_DIR}  # latent policy + action decoder

Every agent answers ``act_batch(obs, states, rngs)`` for a batch of environments. Expert and random
agents act row by row, so an episode's actions do not depend on which other episodes share the
batch: the "actor" and "batched" placements of :mod:`raylam.eval.rollout` give the same returns.
"""

from __future__ import annotations

from typing import Any

import numpy as np

KINDS = ("expert", "random", "policy")
_KEYS = {"expert": {"kind"}, "random": {"kind"}, "policy": {"kind", "policy", "decoder"}}


class Agent:
    """The interface: ``frame_stack`` frames per observation (None: acts on states only)."""

    frame_stack: int | None = None
    image_size: int | None = None  # frame side the agent was trained on (None: any)
    action_dim: int

    def act_batch(self, obs: np.ndarray | None, states: np.ndarray,
                  rngs: list[np.random.Generator]) -> np.ndarray:
        """obs uint8 [B, stack, H, W, C] (None when frame_stack is None), states [B, S] -> float32 [B, A]."""
        raise NotImplementedError


class ExpertAgent(Agent):
    """The released state-based expert of the task, greedy."""

    def __init__(self, task: str, action_dim: int):
        from raylam.envs import load_expert

        self.expert = load_expert(task)
        if self.expert.action_dim != action_dim:
            raise ValueError(f"the {task} expert acts in {self.expert.action_dim} dims, the env in {action_dim}")
        self.action_dim = action_dim

    def act_batch(self, obs, states, rngs) -> np.ndarray:
        # one row at a time: a batched matmul may round differently from a single row
        return np.stack([self.expert.act(s) for s in np.asarray(states, dtype=np.float32)]).astype(np.float32)


class RandomAgent(Agent):
    """Uniform actions; each episode draws from its own generator (seeded by the episode seed)."""

    def __init__(self, action_dim: int):
        self.action_dim = action_dim

    def act_batch(self, obs, states, rngs) -> np.ndarray:
        if len(rngs) != len(states):
            raise ValueError(f"random agent: {len(states)} states but {len(rngs)} generators")
        return np.stack([rng.uniform(-1.0, 1.0, self.action_dim) for rng in rngs]).astype(np.float32)


class PolicyAgent(Agent):
    """A trained pixel policy (bc / latent_bc), optionally followed by an action decoder."""

    def __init__(self, policy_dir: str, decoder_dir: str | None, action_dim: int, device: str = "cpu"):
        import torch

        from raylam.train.artifacts import load_run

        self.device = torch.device(device)
        self.action_dim = action_dim
        policy, meta, _ = load_run(policy_dir, self.device, expect_stages=("bc", "latent_bc"))
        self.frame_stack = int(meta["model"]["frame_stack"])
        self.image_size = int(meta["model"]["image_size"])
        out_dim = int(policy.out_dim)
        if decoder_dir is None:
            if out_dim != action_dim:
                raise ValueError(
                    f"policy {policy_dir} outputs {out_dim} dims but the env's action has {action_dim}: "
                    "a latent policy needs a decoder (agent spec key 'decoder')"
                )
            self._act = policy.act
        else:
            decoder, dmeta, _ = load_run(decoder_dir, self.device, expect_stages=("action_decoder",))
            latent_dim, decoded = int(dmeta["model"]["latent_dim"]), int(dmeta["action_dim"])
            if latent_dim != out_dim:
                raise ValueError(f"decoder {decoder_dir} reads {latent_dim}-dim latents but policy "
                                 f"{policy_dir} outputs {out_dim} dims")
            if decoded != action_dim:
                raise ValueError(f"decoder {decoder_dir} outputs {decoded} dims, the env's action has {action_dim}")
            decoder.set_source(policy.act)
            self._act = decoder.act
        self.models = [policy] if decoder_dir is None else [policy, decoder]

    def act_batch(self, obs, states, rngs) -> np.ndarray:
        import torch

        if obs is None or obs.ndim != 5 or obs.shape[1] != self.frame_stack:
            shape = None if obs is None else obs.shape
            raise ValueError(f"policy agent: expected uint8 obs [B, {self.frame_stack}, H, W, C], got {shape}")
        with torch.inference_mode():
            action = self._act(torch.from_numpy(np.ascontiguousarray(obs)).to(self.device))
        return np.clip(action.float().cpu().numpy(), -1.0, 1.0).astype(np.float32)


def check_spec(spec: Any) -> dict:
    """A validated copy of an agent spec; ValueError naming the bad key or value."""
    if not isinstance(spec, dict):
        raise ValueError(f"agent spec: expected a dict with a 'kind' key, got {type(spec).__name__}")
    kind = spec.get("kind")
    if kind not in KINDS:
        raise ValueError(f"agent spec 'kind': got {kind!r}, expected one of {list(KINDS)}")
    unknown = sorted(set(spec) - _KEYS[kind])
    if unknown:
        raise ValueError(f"agent spec: unknown key {unknown[0]!r} for kind {kind!r}; "
                         f"expected keys {sorted(_KEYS[kind])}")
    if kind != "policy":
        return {"kind": kind}
    policy, decoder = spec.get("policy"), spec.get("decoder")
    if not isinstance(policy, str) or not policy:
        raise ValueError(f"agent spec 'policy': got {policy!r}, expected the run directory of a bc/latent_bc run")
    if decoder is not None and (not isinstance(decoder, str) or not decoder):
        raise ValueError(f"agent spec 'decoder': got {decoder!r}, expected an action_decoder run directory or None")
    return {"kind": "policy", "policy": policy, "decoder": decoder}


def make_agent(spec: dict, task: str, action_dim: int, device: str = "cpu") -> Agent:
    """Build the agent ``spec`` describes, for ``task`` whose actions have ``action_dim`` dims."""
    spec = check_spec(spec)
    if spec["kind"] == "expert":
        return ExpertAgent(task, action_dim)
    if spec["kind"] == "random":
        return RandomAgent(action_dim)
    return PolicyAgent(spec["policy"], spec["decoder"], action_dim, device)
