"""Probe cost: the in-driver probe (the model in the driver process) vs probes as Ray work (a pool
of Ray Data actors that load the LAM and return x'x, x'y; the driver only sums and solves).

On a CPU machine the two do the same arithmetic, so the figure to read is the fixed cost of the
actor pool and how it changes with ``--actors``; on a GPU cluster the actors run where the GPUs
are and the driver stays on the CPU-only head. Prints wall seconds and windows/s of each, and
the largest difference between their held-out MSEs.

    python benchmarks/probes.py                              # small LAOM, synthetic data
    python benchmarks/probes.py --episodes 16 --actors 1 2
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from raylam.config import to_dict
from raylam.data.pipeline import DatasetInfo
from raylam.data.synthetic import write_synthetic_dataset
from raylam.eval.config import ProbeConfig
from raylam.eval.probes import _features, probe_run, stream_probes
from raylam.models import ModelConfig, build_model
from raylam.train.artifacts import load_run
from raylam.train.checkpoint import save_checkpoint


def untrained_lam(root: Path, data: str, manifest: dict) -> tuple[str, ModelConfig]:
    """A LAM run directory (checkpoint + artifact.json) holding freshly initialised weights."""
    cfg = ModelConfig.small("laom", max_offset=2)
    model = build_model(cfg, manifest["action_dim"], manifest["state_dim"])
    checkpoint = root / "checkpoint_000000"
    checkpoint.mkdir(parents=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    meta = {"stage": "lam", "model": to_dict(cfg), "dataset": data, "num_labeled": 1,
            "action_dim": manifest["action_dim"], "state_dim": manifest["state_dim"]}
    save_checkpoint(str(checkpoint), model, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0),
                    0, meta)
    (root / "artifact.json").write_text(json.dumps({"stage": "lam", "method": "laom", "config": {},
                                                    "checkpoint": str(checkpoint), "dataset": data}))
    return str(root), cfg


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=8, help="training episodes (2 more are held out)")
    parser.add_argument("--length", type=int, default=100, help="steps per episode")
    parser.add_argument("--actors", type=int, nargs="+", default=[1])
    args = parser.parse_args()

    import ray

    ray.init(include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory() as tmp:
        data = f"{tmp}/data"
        manifest = write_synthetic_dataset(data, episodes=args.episodes + 2, episode_length=args.length,
                                           image_size=32, clip_length=40, overlap=12, num_labeled=1,
                                           heldout_episodes=2)
        run, model_cfg = untrained_lam(Path(tmp) / "laom", data, manifest)
        cfg = ProbeConfig(batch_size=64, max_fit_windows=None, use_gpu=False)

        started = time.perf_counter()
        model, _, _ = load_run(run)
        reference = stream_probes(DatasetInfo(data), model_cfg.frame_stack, cfg,
                                  lambda b: (lambda z, maps: (z, _features(maps, cfg.state_features)))(
                                      *model.probe_inputs(b.obs, b.next_obs)))
        driver_s = time.perf_counter() - started
        windows = reference["fit_windows"] + reference["test_windows"]
        print(f"in-driver probe: {driver_s:.1f} s, {windows / driver_s:.0f} windows/s ({windows} windows)")
        for actors in args.actors:
            cfg.num_actors = actors
            started = time.perf_counter()
            out = probe_run(run, cfg)
            wall = time.perf_counter() - started
            diff = max(abs(out[k]["mse"] - reference[k]["mse"]) for k in ("action", "state"))
            print(f"probe actors x{actors}: {wall:.1f} s, {windows / wall:.0f} windows/s, "
                  f"|MSE difference| <= {diff:.2e}")
    ray.shutdown()


if __name__ == "__main__":
    main()
