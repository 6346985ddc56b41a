"""The bundled expert policies: they load, act in range, and the cheetah expert earns expert reward.

Physics only (dm-control without rendering), so these run in a few seconds.
"""

from __future__ import annotations

import numpy as np
import pytest

from raylam.envs import EXPERT_RETURNS, TASKS, flatten_observation, load_expert


def _suite_env(task: str, seed: int):
    from dm_control import suite

    domain, name = task.split("-")
    return suite.load(domain, name, task_kwargs={"random": seed})


@pytest.mark.parametrize("task", TASKS)
def test_every_expert_loads_and_acts_in_range(task):
    env = _suite_env(task, seed=0)
    expert = load_expert(task)
    state = flatten_observation(env.reset().observation)
    assert expert.state_dim == state.shape[0]
    assert expert.action_dim == env.action_spec().shape[0]
    action = expert.act(state)
    assert action.dtype == np.float32 and action.shape == (expert.action_dim,)
    assert np.all(np.abs(action) <= 1.0)
    batch = np.stack([state, state * 0.5, np.zeros_like(state)])
    actions = expert.act(batch)
    assert actions.shape == (3, expert.action_dim) and np.all(np.abs(actions) <= 1.0)
    assert np.allclose(actions[0], action, atol=1e-6)
    huge = expert.act(np.full_like(state, 1e3))  # far outside the training data: still clipped
    assert np.all(np.abs(huge) <= 1.0)
    with pytest.raises(ValueError, match="state"):
        expert.act(np.zeros(state.shape[0] + 1, np.float32))


def test_noise_is_seeded_and_clipped():
    expert = load_expert("walker-run")
    state = flatten_observation(_suite_env("walker-run", seed=1).reset().observation)
    greedy = expert.act(state)
    a = expert.act(state, noise_std=0.5, rng=np.random.default_rng(7))
    b = expert.act(state, noise_std=0.5, rng=np.random.default_rng(7))
    assert np.array_equal(a, b) and not np.array_equal(a, greedy)
    assert np.all(np.abs(expert.act(state, noise_std=5.0, rng=np.random.default_rng(0))) <= 1.0)


def test_unknown_task_is_refused():
    with pytest.raises(ValueError, match="no expert"):
        load_expert("ant-run")


def _mean_rewards(task: str, policy, steps: int, seed: int) -> np.ndarray:
    env = _suite_env(task, seed)
    ts = env.reset()
    rewards = []
    for _ in range(steps):
        ts = env.step(policy(flatten_observation(ts.observation)))
        rewards.append(ts.reward)
    return np.asarray(rewards)


def test_cheetah_expert_runs_at_expert_level_and_random_does_not():
    """Measured over 300 steps, seeds 0-5: mean reward 0.59-0.62 per step including the run-up,
    0.73-0.78 once running (steps 100-300; a full 1000-step episode returns ~845-860 of 1000).
    A uniform random policy earns 0.003-0.005 per step."""
    expert = load_expert("cheetah-run")
    rewards = _mean_rewards("cheetah-run", expert.act, 300, seed=0)
    assert rewards.mean() > 0.5
    assert rewards[100:].mean() > 0.65
    rng = np.random.default_rng(0)
    random = _mean_rewards("cheetah-run", lambda s: rng.uniform(-1, 1, 6), 300, seed=0)
    assert random.mean() < 0.05
    assert rewards[100:].mean() > 10 * random.mean()
    # the normalisation denominator (the release's 1000-step return) matches this expert once running:
    # a 1000-step episode at its running reward would score 0.85-1.0 of it
    assert 0.85 < rewards[100:].mean() * 1000 / EXPERT_RETURNS["cheetah-run"] < 1.0
