"""Training on a simulated 3-node cluster whose only shared storage is S3.

Run by tests/test_object_storage.py in a subprocess (``python tests/multinode_s3.py OUT_DIR BUCKET``)
with the S3 server's ``AWS_*`` environment, so its cluster never meets the test session's local Ray.
Layout (``ray.cluster_utils.Cluster``): a head with no CPUs (as on a real cluster: it runs drivers,
not work) and two worker nodes of 2 CPUs with one ``slot`` each; a 2-worker stage asks for a slot
per worker, so its DDP ranks sit on different nodes.

1. ``raylam train`` with a local ``storage_path`` is refused before any work (several nodes).
2. The same command with data and runs on ``s3://``: a LAOM+sup stage loses a worker at step 3
   (test hook), restores from the step-2 checkpoint and finishes; then relabeling writes its
   Parquet from the worker nodes to S3.
Writes OUT_DIR/result.json and shuts its cluster down.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

if "RAY_TMPDIR" not in os.environ:  # a Cluster of its own, never found by another ray.init()
    os.environ["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="rs3", dir="/tmp")


def run_cli(argv: list[str]) -> tuple[int, str]:
    from raylam.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(argv)
    return code, err.getvalue()


def main(out: Path, bucket: str) -> int:
    import pyarrow.fs as pafs
    import ray
    import yaml
    from ray.cluster_utils import Cluster

    from raylam.config import to_dict
    from raylam.data.storage import resolve
    from raylam.data.synthetic import write_synthetic_dataset
    from raylam.models.config import ModelConfig
    from raylam.train.metrics import read_metrics

    out.mkdir(parents=True, exist_ok=True)
    dataset, runs = f"{bucket}/data", f"{bucket}/runs"
    write_synthetic_dataset(dataset, episodes=6, episode_length=40, image_size=32, clip_length=24, overlap=12,
                            num_labeled=2, heldout_episodes=1)
    config = out / "experiment.yaml"
    config.write_text(yaml.safe_dump({
        "name": "multinode",
        "train": {"dataset": dataset, "storage_path": runs,
                  "model": to_dict(ModelConfig.small("laom_sup", latent_dim=16)),
                  "steps": 6, "batch_size": 16, "labeled_batch_size": 8, "report_every": 1, "checkpoint_every": 2,
                  "keep_checkpoints": 10, "num_workers": 2, "cpus_per_worker": 0.5,
                  "resources_per_worker": {"slot": 1}, "max_failures": 1,
                  "data": {"clips_per_task": 2, "read_cpus": 0.5}},
        "stages": [
            {"run_name": "laom_sup", "stage": "lam", "model": {"method": "laom_sup"}, "fail_at_step": 3,
             "wandb": {"enabled": True, "mode": "offline", "project": "raylam-test"}},
            {"run_name": "labels", "stage": "relabel", "lam_run": "laom_sup", "batch_size": 32, "max_actors": 1},
        ],
    }))
    cluster = Cluster(initialize_head=True, connect=False,
                      head_node_args={"num_cpus": 0, "resources": {"head": 1}, "include_dashboard": False})
    for _ in range(2):
        cluster.add_node(num_cpus=2, resources={"slot": 1})
    cluster.wait_for_nodes()
    result: dict = {}
    start = time.time()
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        local = str(out / "local-runs")
        result["local_refused"] = run_cli(["train", "--config", str(config), f"train.storage_path={local}"])
        result["local_written"] = os.path.exists(local)
        result["train"] = run_cli(["train", "--config", str(config)])
        root = f"{runs}/multinode"
        lam = resolve(f"{root}/laom_sup").read_json("artifact.json")
        fs, path = pafs.FileSystem.from_uri(f"{root}/laom_sup/{lam['attempt']}")
        files = fs.get_file_info(pafs.FileSelector(path, recursive=True))
        checkpoints = [info.path for info in fs.get_file_info(pafs.FileSelector(path))
                       if info.base_name.startswith("checkpoint_") and info.type == pafs.FileType.Directory]
        result["logs"] = sorted({info.path[len(path) + 1:].split("/")[0] for info in files
                                 if info.path.endswith(".wandb") or "tfevents" in info.base_name})
        steps = []
        for checkpoint in sorted(checkpoints):
            with fs.open_input_stream(f"{checkpoint}/meta.json") as stream:
                steps.append(json.loads(stream.read())["step"])
        labels = resolve(f"{root}/labels").read_json("artifact.json")
        result.update(
            lam_step=lam["metrics"].get("step"), checkpoint_steps=steps, checkpoint=lam["checkpoint"],
            history_steps=[row["step"] for row in read_metrics(f"{root}/laom_sup")],
            labels=labels["labels"], num_labels=labels["num_labels"],
            nodes=sum(1 for node in ray.nodes() if node["Alive"]),
        )
    finally:
        result["wall_s"] = round(time.time() - start, 1)
        (out / "result.json").write_text(json.dumps(result, indent=2, default=str))
        ray.shutdown()
        cluster.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), sys.argv[2]))
