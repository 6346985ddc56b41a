"""Online evaluation on a local Ray: real MuJoCo episodes, real checkpoints, both placements."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from raylam.config import from_dict, to_dict
from raylam.envs import EnvConfig
from raylam.eval.agents import make_agent
from raylam.eval.config import RolloutConfig
from raylam.eval.rollout import (
    FAULT_VARIABLE,
    check_image_size,
    episode_seed,
    evaluate_online,
    expert_return,
    play_episode,
    setting_env,
    strip_indices,
)
from raylam.models import ModelConfig, build_model
from raylam.train.checkpoint import save_checkpoint

TASK, ACTION_DIM, STATE_DIM = "cheetah-run", 6, 17
LENGTH = 60
ENV = EnvConfig(task=TASK, image_size=32, episode_length=LENGTH)
DISTRACTING = "scale_easy_video_hard"


def rollout_config(**changes) -> RolloutConfig:
    data = {"episodes": 2, "settings": [DISTRACTING], "background_splits": ["eval"], "strip_frames": 4,
            "num_actors": 2, **changes}
    return from_dict(RolloutConfig, data)


def save_run(root: Path, cfg: ModelConfig) -> str:
    """A finished run as the trainer leaves it: checkpoint_x/ (model + meta.json) and artifact.json."""
    model = build_model(cfg, ACTION_DIM, STATE_DIM)
    checkpoint = root / "checkpoint_x"
    checkpoint.mkdir(parents=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    meta = {"stage": cfg.method, "model": to_dict(cfg), "dataset": None, "num_labeled": 0,
            "action_dim": ACTION_DIM, "state_dim": STATE_DIM}
    save_checkpoint(str(checkpoint), model, optimizer, scheduler, 0, meta)
    artifact = {"stage": cfg.method, "method": cfg.method, "checkpoint": str(checkpoint), "config": {}}
    (root / "artifact.json").write_text(json.dumps(artifact))
    return str(root)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("runs")
    torch.manual_seed(0)
    return {
        "bc": save_run(root / "bc", ModelConfig.small("bc")),
        "latent_bc": save_run(root / "latent_bc", ModelConfig.small("latent_bc")),
        "decoder": save_run(root / "decoder", ModelConfig.small("action_decoder")),
    }


@pytest.fixture(scope="module")
def expert_actor(ray_local) -> list[dict]:
    # 6 episodes on 2 actors: vanilla once, the distracting setting with the train (paper protocol)
    # and the eval (held-out) backgrounds; later conditions reuse the actors (and their loaded agent)
    return evaluate_online({"kind": "expert"}, ENV, rollout_config(settings=["vanilla", DISTRACTING],
                                                                   background_splits=["train", "eval"]))


@pytest.fixture(scope="module")
def random_actor(ray_local) -> list[dict]:
    return evaluate_online({"kind": "random"}, ENV, rollout_config())


def test_report_layout(expert_actor):
    assert [r["setting"] for r in expert_actor] == ["vanilla", DISTRACTING, DISTRACTING]
    assert [r["key"] for r in expert_actor] == ["vanilla", f"{DISTRACTING}/train", f"{DISTRACTING}/eval"]
    assert [r["background_split"] for r in expert_actor] == [None, "train", "eval"]
    assert [r["protocol"] for r in expert_actor][1:] == ["paper protocol: train backgrounds", "held-out backgrounds"]
    for report in expert_actor:
        assert report["episodes"] == 2 and report["episode_length"] == LENGTH
        assert len(report["returns"]) == len(report["seeds"]) == 2 and len(set(report["seeds"])) == 2
        assert report["frames"].shape == (4, 32, 32, 3) and report["frames"].dtype == np.uint8
        assert report["wall_s"] > 0
        assert report["normalized_mean"] == pytest.approx(report["return_mean"] / expert_return(TASK, LENGTH))
    # the same episodes in every condition; the state-based expert does not see the distractors
    vanilla, train, held_out = expert_actor
    assert vanilla["seeds"] == train["seeds"] == held_out["seeds"]
    assert vanilla["returns"] == train["returns"] == held_out["returns"]
    assert not np.array_equal(vanilla["frames"], train["frames"])  # but they are there
    assert not np.array_equal(train["frames"], held_out["frames"])  # and come from other videos


def test_evaluator_is_honest(expert_actor, random_actor):
    # measured at 60 steps (the cheetah starts at rest): expert 0.23-0.24 of the scaled expert return
    # on these seeds, random 0.00-0.01
    expert = expert_actor[2]
    assert min(expert["returns"]) / expert_return(TASK, LENGTH) > 0.15
    assert random_actor[0]["normalized_mean"] < 0.05
    assert expert["normalized_mean"] - random_actor[0]["normalized_mean"] > 0.15


def test_same_seeds_twice_are_bit_identical_in_either_placement(expert_actor, random_actor, ray_local):
    # the same episodes again, on other actors and with the policy in the driver (2 episodes on
    # 1 actor: the second starts when the first ends): identical returns and frames
    expert = evaluate_online({"kind": "expert"}, ENV, rollout_config(placement="batched", num_actors=1))
    assert expert[0]["returns"] == expert_actor[2]["returns"]
    assert expert[0]["seeds"] == expert_actor[2]["seeds"]
    np.testing.assert_array_equal(expert[0]["frames"], expert_actor[2]["frames"])
    random = evaluate_online({"kind": "random"}, ENV, rollout_config(placement="batched"))
    assert random[0]["returns"] == random_actor[0]["returns"]


@pytest.mark.slow
def test_a_rollout_task_that_dies_once_is_retried_with_the_same_result(expert_actor, ray_local, tmp_path,
                                                                       monkeypatch):
    # episode 1's worker process exits the first time it starts it (a real process death, which
    # Ray retries); the retried episode is the same episode: the same returns and frames
    marker = tmp_path / "failed-once"
    monkeypatch.setenv(FAULT_VARIABLE, f"1:{marker}")
    retried = evaluate_online({"kind": "expert"}, ENV, rollout_config(max_retries=1))
    assert marker.exists()  # the fault did fire
    assert retried[0]["returns"] == expert_actor[2]["returns"]
    np.testing.assert_array_equal(retried[0]["frames"], expert_actor[2]["frames"])
    # the same in the batched placement: the env actor dies in reset, Ray restarts it, the episode starts over
    marker_batched = tmp_path / "failed-once-batched"
    monkeypatch.setenv(FAULT_VARIABLE, f"0:{marker_batched}")
    batched = evaluate_online({"kind": "expert"}, ENV, rollout_config(max_retries=1, placement="batched"))
    assert marker_batched.exists()
    assert batched[0]["returns"] == expert_actor[2]["returns"]


@pytest.mark.slow
def test_an_interrupted_evaluation_resumes_without_redoing_episodes(expert_actor, ray_local, tmp_path,
                                                                   monkeypatch):
    # 3 episodes one at a time, no retries: episode 2's worker dies, the evaluation stops after 0 and 1
    progress = tmp_path / "episodes"
    cfg = rollout_config(episodes=3, num_actors=1, max_retries=0)
    monkeypatch.setenv(FAULT_VARIABLE, f"2:{tmp_path / 'failed'}")
    with pytest.raises(Exception, match="(?i)worker|died|crash|exit"):
        evaluate_online({"kind": "expert"}, ENV, cfg, progress=str(progress))
    log_file = progress / f"{DISTRACTING}-eval.json"
    first = json.loads(log_file.read_text())
    assert [e["index"] for e in first["episodes"]] == [0, 1]
    monkeypatch.delenv(FAULT_VARIABLE)
    resumed = evaluate_online({"kind": "expert"}, ENV, cfg, progress=str(progress))
    assert resumed[0]["resumed"] == 2 and resumed[0]["episodes"] == 3
    second = json.loads(log_file.read_text())
    assert second["episodes"][:2] == first["episodes"]  # episodes 0 and 1 were not run again
    assert second["episodes"][2]["run"] != first["episodes"][0]["run"]
    # and the numbers are those of an uninterrupted evaluation (episodes 0, 1 as in the 2-episode fixture)
    assert resumed[0]["returns"][:2] == expert_actor[2]["returns"]
    np.testing.assert_array_equal(resumed[0]["frames"], expert_actor[2]["frames"])
    # a third run has nothing left to do; another agent in the same folder starts afresh
    again = evaluate_online({"kind": "expert"}, ENV, cfg, progress=str(progress))
    assert again[0]["resumed"] == 3 and again[0]["returns"] == resumed[0]["returns"]
    other = evaluate_online({"kind": "random"}, ENV, rollout_config(episodes=1), progress=str(progress))
    assert other[0]["resumed"] == 0


def test_policy_checkpoints_act(runs, ray_local):
    """The decoded policy (latent BC + decoder checkpoints), acting for the batched driver, plays the very
    episodes that the same checkpoints play when loaded and stepped in this process, without Ray."""
    spec = {"kind": "policy", "policy": runs["latent_bc"], "decoder": runs["decoder"]}
    cfg = rollout_config(placement="batched")
    (report,) = evaluate_online(spec, ENV, cfg)
    assert report["frames"].shape == (4, 32, 32, 3)
    env = setting_env(ENV, DISTRACTING, "eval", LENGTH)
    episodes = [play_episode(spec, TASK, "osmesa", env, i, episode_seed(cfg.seed, i), strip_indices(LENGTH, 4))
                for i in range(cfg.episodes)]  # in this process, no Ray
    np.testing.assert_allclose(report["returns"], [e["return"] for e in episodes], rtol=1e-4)
    np.testing.assert_array_equal(report["frames"], episodes[0]["frames"])
    # and it is not the random policy on those episodes
    random = evaluate_online({"kind": "random"}, ENV, cfg)[0]
    assert report["returns"] != random["returns"]


def test_policy_agent_checks_dimensions(runs):
    agent = make_agent({"kind": "policy", "policy": runs["bc"], "decoder": None}, TASK, ACTION_DIM)
    assert agent.frame_stack == 3
    obs = np.zeros((5, 3, 32, 32, 3), dtype=np.uint8)
    actions = agent.act_batch(obs, np.zeros((5, STATE_DIM)), [])
    assert actions.shape == (5, ACTION_DIM) and actions.dtype == np.float32
    assert np.all(np.abs(actions) <= 1.0)
    with pytest.raises(ValueError, match="needs a decoder"):
        make_agent({"kind": "policy", "policy": runs["latent_bc"]}, TASK, ACTION_DIM)
    with pytest.raises(ValueError, match="expected one of"):  # a decoder is no policy
        make_agent({"kind": "policy", "policy": runs["decoder"]}, TASK, ACTION_DIM)
    with pytest.raises(ValueError, match="env.image_size to 32"):
        check_image_size(agent, EnvConfig(task=TASK, image_size=64))


@pytest.mark.parametrize("spec, match", [
    ({"kind": "oracle"}, "'kind': got 'oracle'"),
    ({"kind": "expert", "policy": "x"}, "unknown key 'policy'"),
    ({"kind": "policy"}, "'policy': got None"),
    ({"kind": "policy", "policy": "run", "decoder": 3}, "'decoder': got 3"),
    ("expert", "expected a dict"),
])
def test_bad_agent_spec(spec, match):
    with pytest.raises(ValueError, match=match):
        make_agent(spec, TASK, ACTION_DIM)
    with pytest.raises(ValueError, match=match):  # rejected before any actor starts
        evaluate_online(spec, ENV, rollout_config())


def test_bad_rollout_settings():
    with pytest.raises(ValueError, match="at least 2 steps"):
        evaluate_online({"kind": "expert"}, EnvConfig(task=TASK, episode_length=1), rollout_config())
    with pytest.raises(ValueError, match="no expert return"):
        expert_return("pong-run", 100)
    with pytest.raises(FileNotFoundError, match="not a finished raylam run"):
        make_agent({"kind": "policy", "policy": "/nonexistent/run"}, TASK, ACTION_DIM)
    assert evaluate_online({"kind": "expert"}, ENV, rollout_config(episodes=0)) == []


def test_background_dir_of_the_rollouts_overrides_the_datasets(tmp_path):
    from raylam.eval.rollout import _check

    _, env, _, _ = _check({"kind": "expert"}, ENV, rollout_config())
    assert env.background_dir is None  # the dataset's own (built-in here)
    _, env, _, _ = _check({"kind": "expert"}, ENV, rollout_config(background_dir=str(tmp_path)))
    assert env.background_dir == str(tmp_path) and env.task == TASK


def test_strip_indices():
    assert strip_indices(LENGTH, 4) == [0, 20, 39, 59]
    assert strip_indices(3, 8) == [0, 1, 2]
    assert strip_indices(80, 0) == []
