"""A Tune sweep on a simulated 3-node Ray cluster that loses a worker node mid-trial.

Run by tests/test_multinode.py in a subprocess (``python tests/multinode_sweep.py OUT_DIR``) so its
cluster never meets the test session's local Ray. Layout (``ray.cluster_utils.Cluster``):

- head: 0 CPUs and a custom resource ``head``: the trial drivers ask for ``head: 0.01``, as Ray's
  docs advise for drivers (keep them off nodes that may be preempted);
- w1..w3: 2 CPUs each, one ``slot`` and a custom resource naming the node. The trial has 2 Train
  workers of 0.5 CPU + 1 slot (TrainConfig.resources_per_worker), so its workers must sit on
  different nodes (DDP across nodes); the rest of each node's CPUs is left to Ray Data. (One
  trial keeps the test short on a 2-core CI machine; test_tune runs several side by side.)

The trial's workers stop after reporting step 4 and its checkpoint (TrainConfig.wait_at_step, a test
hook) until the chaos thread has removed one of their nodes (its Train worker dies with it) and a
replacement w5 has joined: the loss lands mid-run by construction, not by timing. Ray Train then
restarts the worker group on the surviving node + w5 from the step-4 checkpoint
(TrainConfig.max_failures); the resumed run does not wait again. A Train callback records the nodes
of every worker group start.
Writes OUT_DIR/result.json and shuts its cluster down.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# A Cluster's head writes its address to <ray temp dir>/ray_current_cluster, where every plain
# ray.init() on this machine would then find it and connect: keep this cluster in a temp dir of its own.
if "RAY_TMPDIR" not in os.environ:
    import tempfile

    os.environ["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="rmn", dir="/tmp")  # short: socket paths

from ray.train.v2._internal.execution.callback import WorkerGroupCallback  # noqa: E402


class NodeRecorder(WorkerGroupCallback):
    """Runs in the Train controller: appends the node ids of each started worker group to a file."""

    def __init__(self, path: str):
        self.path = path

    def after_worker_group_start(self, worker_group) -> None:
        import ray

        record = {"time": time.time(), "controller_node": ray.get_runtime_context().get_node_id(),
                  "worker_nodes": [w.metadata.node_id for w in worker_group.get_workers()]}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


class RecorderFactory:
    """Called inside each trial (see run_tune's train_callbacks): one record file per trial."""

    def __init__(self, directory: str):
        self.directory = directory

    def __call__(self):
        import ray.tune

        trial_id = ray.tune.get_context().get_trial_id()
        return NodeRecorder(os.path.join(self.directory, f"groups-{trial_id}.jsonl"))


def node_names() -> dict[str, str]:
    import ray

    names = {}
    for node in ray.nodes():
        custom = [k for k in node["Resources"] if k in ("head", "w1", "w2", "w3", "w4", "w5")]
        names[node["NodeID"]] = custom[0] if custom else "?"
    return names


def checkpoint_steps(run_dir: Path) -> list[int]:
    steps = []
    for meta in sorted(run_dir.glob("train-*/checkpoint_*/meta.json")):
        try:
            steps.append(json.loads(meta.read_text())["step"])
        except (OSError, ValueError, KeyError):
            pass
    return steps


WAIT_STEP = 4


def chaos(cluster, workers: list, out: Path, runs: Path, log: dict, names: dict, go: Path) -> None:
    """When both workers of a trial wait after step WAIT_STEP and Tune has that report, remove the node
    of its second worker and add a replacement; Train restarts the group from the step-4 checkpoint."""
    deadline = time.time() + 900
    by_id = {node.node_id: node for node in workers}
    while time.time() < deadline:
        for groups in sorted(out.glob("groups-*.jsonl")):
            trial = groups.stem[len("groups-"):]
            lines = groups.read_text().splitlines()
            waiting = sorted(go.parent.glob(f"{go.name}.waiting-*"))
            reported = runs.parent / f"trial-{trial}" / "result.json"  # Tune has the step's report
            tune_steps = [json.loads(line).get("step") for line in reported.read_text().splitlines()
                          if line.strip()] if reported.exists() else []
            if lines and len(waiting) == 2 and WAIT_STEP in tune_steps:
                victim = by_id[json.loads(lines[0])["worker_nodes"][1]]
                log.update(trial=trial, steps_before=checkpoint_steps(runs / f"trial-{trial}"), time=time.time(),
                           victim=names[victim.node_id])
                cluster.remove_node(victim, allow_graceful=False)
                replacement = cluster.add_node(num_cpus=2, resources={"w5": 1, "slot": 1})
                names[replacement.node_id] = "w5"
                log["replacement"] = replacement.node_id
                # no `go`: the survivor keeps waiting until Train replaces the group, whose resumed run
                # does not wait
                return
        time.sleep(0.2)
    log["error"] = f"no trial waited at step {WAIT_STEP} within 300 s"
    go.write_text("go")  # let the run end either way


def main(out: Path) -> int:
    import ray
    from ray.cluster_utils import Cluster

    from raylam.config import from_dict, to_dict
    from raylam.data.synthetic import write_synthetic_dataset
    from raylam.experiment import ExperimentConfig
    from raylam.models.config import ModelConfig
    from raylam.tune import TuneConfig, run_tune

    out.mkdir(parents=True, exist_ok=True)
    dataset = str(out / "data")
    write_synthetic_dataset(dataset, episodes=6, episode_length=40, image_size=32, clip_length=24, overlap=12,
                            num_labeled=2, heldout_episodes=1)
    start = time.time()
    cluster = Cluster(initialize_head=True, connect=False,
                      head_node_args={"num_cpus": 0, "resources": {"head": 1}, "include_dashboard": False})
    workers = [cluster.add_node(num_cpus=2, resources={name: 1, "slot": 1}) for name in ("w1", "w2", "w3")]
    cluster.wait_for_nodes()
    result: dict = {"cluster_start_s": round(time.time() - start, 1)}
    go = out / "go"
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        names = node_names()
        exp = from_dict(ExperimentConfig, {
            "name": "multinode",
            "train": {"dataset": dataset, "storage_path": str(out / "runs"),
                      "model": to_dict(ModelConfig.small("laom_sup", latent_dim=16)),
                      "steps": 10, "batch_size": 16, "labeled_batch_size": 8, "report_every": 2,
                      "checkpoint_every": 2, "eval_every": 2, "eval_windows": 32, "keep_checkpoints": 100,
                      "num_workers": 2, "cpus_per_worker": 0.5, "resources_per_worker": {"slot": 1},
                      "max_failures": 3, "data": {"clips_per_task": 2, "read_cpus": 0.5},
                      # the workers wait after step 4 until the chaos thread has removed a node
                      "wait_at_step": WAIT_STEP, "wait_for_file": str(go)},
            "stages": [{"run_name": "laom_sup", "stage": "lam", "model": {"method": "laom_sup"}}],
        })
        cfg = from_dict(TuneConfig, {
            "space": {"model.sup_coef": {"grid": [0.1]}}, "num_samples": 1,
            "scheduler": {"enabled": False}, "max_failures": 1,
            "resources": {"driver_cpus": 0, "driver_resources": {"head": 0.01}},
        })
        runs = out / "runs" / "multinode" / "tune-laom_sup" / "runs"
        chaos_log: dict = {}
        thread = threading.Thread(target=chaos, args=(cluster, workers, out, runs, chaos_log, names, go),
                                  daemon=True)
        thread.start()
        summary = run_tune(exp, cfg, train_callbacks=(RecorderFactory(str(out)),))
        thread.join(timeout=5)
        trials = {}
        for row in summary.table.to_dict("records"):
            trial = row["trial_id"]
            groups = [json.loads(line) for line in (out / f"groups-{trial}.jsonl").read_text().splitlines()]
            trials[trial] = {
                "status": row["status"], "step": row["step"],
                "checkpoint_steps": checkpoint_steps(runs / f"trial-{trial}"),
                "groups": [{"controller": names.get(g["controller_node"], "?"),
                            "workers": [names.get(n, "?") for n in g["worker_nodes"]]} for g in groups],
            }
        result.update(summary=summary.to_dict(), trials=trials,
                      chaos={**chaos_log, "replacement": names.get(chaos_log.get("replacement", ""), None)})
    finally:
        result["wall_s"] = round(time.time() - start, 1)
        (out / "result.json").write_text(json.dumps(result, indent=2, default=str))
        ray.shutdown()
        cluster.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
