"""The fixed cost of a training stage: where the wall time of a 1-step ``train()`` run goes.

Each run reports, from its artifact's ``timings``: Ray Train's start (controller and worker group,
until the training loop runs), the worker's setup (model, decoding and caching its data), and the
rest (one step, the final checkpoint, teardown). Tiny synthetic data, so the steps cost nothing.

    python benchmarks/stage_overhead.py
"""

from __future__ import annotations

import json
import os
import tempfile
import time

from raylam.config import from_dict, to_dict
from raylam.data.synthetic import write_synthetic_dataset
from raylam.models import ModelConfig
from raylam.train.config import TrainConfig
from raylam.train.trainer import train

os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")  # as `raylam` sets it


def main() -> None:
    import ray

    ray.init(include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "data")
        write_synthetic_dataset(data, episodes=4, episode_length=40, image_size=32, clip_length=24, overlap=12,
                                num_labeled=2, heldout_episodes=1)
        rows = []
        for name, method, extra in (("laom_sup + labeled + heldout", "laom_sup", {"eval_every": 1}),
                                    ("laom (train data only)", "laom", {}),
                                    ("laom again (warm processes)", "laom", {})):
            cfg = from_dict(TrainConfig, {
                "stage": "lam", "dataset": data, "storage_path": os.path.join(tmp, "runs"),
                "run_name": f"run{len(rows)}", "model": to_dict(ModelConfig.small(method)), "steps": 1,
                "batch_size": 8, "labeled_batch_size": 4, "report_every": 1, "checkpoint_every": 1,
                "data": {"read_cpus": 0.5}, **extra})
            start = time.perf_counter()
            train(cfg)
            wall = time.perf_counter() - start
            artifact = json.load(open(os.path.join(tmp, "runs", cfg.run_name, "artifact.json")))
            rows.append({"run": name, "wall_s": round(wall, 1), **artifact["timings"]})
            print(json.dumps(rows[-1]), flush=True)
    ray.shutdown()


if __name__ == "__main__":
    main()
