"""Online-evaluation throughput: env steps/s and episodes/s, placement actor vs batched.

For each agent (the state expert as the env-bound reference, a small bc policy, optionally the
paper-size bc policy with untrained weights) and each number of actors, runs ``evaluate_online``
with two conditions (the setting with training and with held-out background videos): the first
warms the actors up (process start, imports, checkpoint load), the second is timed.

    python benchmarks/rollout.py                           # the figures quoted in the report
    python benchmarks/rollout.py --actors 1 2 4 8 --steps 500 --episodes 8
    python benchmarks/rollout.py --paper                   # + ModelConfig.paper("bc") (slow on CPU)
    python benchmarks/rollout.py --paper --use-gpu         # batched placement acts on cuda
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "osmesa")

import torch  # noqa: E402

from raylam.config import from_dict, to_dict  # noqa: E402
from raylam.envs import EnvConfig, load_expert  # noqa: E402
from raylam.eval.config import RolloutConfig  # noqa: E402
from raylam.eval.rollout import evaluate_online  # noqa: E402
from raylam.models import ModelConfig, build_model  # noqa: E402
from raylam.train.checkpoint import save_checkpoint  # noqa: E402

SETTING = "scale_easy_video_hard"


def save_untrained(root: Path, cfg: ModelConfig, action_dim: int, state_dim: int) -> str:
    """A run directory (checkpoint + artifact.json) holding freshly initialised weights."""
    model = build_model(cfg, action_dim, state_dim)
    checkpoint = root / "checkpoint_000000"
    checkpoint.mkdir(parents=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    meta = {"stage": cfg.method, "model": to_dict(cfg), "dataset": None, "num_labeled": 0,
            "action_dim": action_dim, "state_dim": state_dim}
    save_checkpoint(str(checkpoint), model, optimizer, scheduler, 0, meta)
    artifact = {"stage": cfg.method, "method": cfg.method, "checkpoint": str(checkpoint), "config": {}}
    (root / "artifact.json").write_text(json.dumps(artifact))
    return str(root)


def measure(agent: dict, env: EnvConfig, placement: str, actors: int, episodes: int, use_gpu: bool) -> dict:
    cfg = from_dict(RolloutConfig, {
        "episodes": episodes, "settings": [SETTING], "background_splits": ["train", "eval"], "num_actors": actors, "placement": placement,
        "use_gpu": use_gpu, "strip_frames": 0,
    })
    started = time.perf_counter()
    warm, timed = evaluate_online(agent, env, cfg)
    total = time.perf_counter() - started
    steps = episodes * env.episode_length
    assert len(timed["returns"]) == len(warm["returns"])  # the same episodes, other background videos
    return {"steps_per_s": steps / timed["wall_s"], "episodes_per_s": episodes / timed["wall_s"],
            "wall_s": timed["wall_s"], "first_pass_s": warm["wall_s"], "total_s": total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="cheetah-run")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=200, help="steps per episode")
    parser.add_argument("--episodes", type=int, default=4, help="episodes per timed run")
    parser.add_argument("--actors", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--placements", nargs="+", default=["actor", "batched"], choices=["actor", "batched"])
    parser.add_argument("--paper", action="store_true", help="also the paper-size bc policy (encoder scale 32)")
    parser.add_argument("--no-expert", action="store_true", help="skip the env-bound expert reference")
    parser.add_argument("--use-gpu", action="store_true", help="batched placement: act on cuda")
    args = parser.parse_args()

    import ray

    ray.init(num_cpus=max(max(args.actors), os.cpu_count() or 1), include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"MUJOCO_GL": os.environ["MUJOCO_GL"]}})
    expert = load_expert(args.task)
    env = from_dict(EnvConfig, {"task": args.task, "image_size": args.size, "episode_length": args.steps})
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        agents = {} if args.no_expert else {"expert": {"kind": "expert"}}
        small = ModelConfig.small("bc", image_size=args.size)
        agents["bc small"] = {"kind": "policy", "policy": save_untrained(
            Path(tmp) / "small", small, expert.action_dim, expert.state_dim)}
        if args.paper:
            paper = ModelConfig.paper("bc", image_size=args.size)
            agents["bc paper"] = {"kind": "policy", "policy": save_untrained(
                Path(tmp) / "paper", paper, expert.action_dim, expert.state_dim)}
        print(f"{args.task} {args.size}x{args.size} {SETTING}, {args.episodes} episodes x {args.steps} steps, "
              f"{os.cpu_count()} CPUs; warm actors (second pass)")
        print(f"{'agent':<10} {'placement':<9} {'actors':>6} {'steps/s':>9} {'episodes/s':>11} {'wall s':>8} {'1st pass s':>10}")
        for name, agent in agents.items():
            for placement in args.placements:
                for actors in args.actors:
                    r = measure(agent, env, placement, actors, args.episodes, args.use_gpu)
                    results.append({"agent": name, "placement": placement, "actors": actors, **r})
                    print(f"{name:<10} {placement:<9} {actors:>6} {r['steps_per_s']:>9.1f} "
                          f"{r['episodes_per_s']:>11.3f} {r['wall_s']:>8.1f} {r['first_pass_s']:>10.1f}", flush=True)
    ray.shutdown()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
