"""raylam on Ray's own autoscaling simulator: a cluster that starts with its head alone.

Run by tests/test_autoscaling.py in a subprocess (``python tests/autoscaling_s3.py OUT_DIR BUCKET``,
with the S3 server's ``AWS_*`` environment and a ``RAY_TMPDIR`` of its own). The cluster is the one
``ray.cluster_utils.AutoscalingCluster`` makes (the fake multi-node provider, ``RAY_FAKE_CLUSTER=1``),
started the way it starts it, ``ray start --head --autoscaling-config=...``, but on its own port
and temp dir and stopped by ending only the processes of that temp dir: ``AutoscalingCluster``'s
own start and shutdown run ``ray stop --force``, which would end every Ray on the machine.

Layout: a head with no CPUs and the ``head`` resource (as cluster/aws.yaml); one worker type
``cpu`` (2 CPUs and one ``slot``) at ``min_workers: 0``, ``max_workers: 2``, removed after 6 s idle.
A training stage's one worker asks for a slot, so the node types hold 2 stages at once
(``concurrent_stages=2``, the README's rule: slots the worker types reach / slots per stage).

1. With one live node, ``raylam train`` with a local ``storage_path`` is refused before any work.
2. ``raylam train`` of a LAM, its relabeling and a BC stage on S3: the stage drivers run as
   retried Ray tasks on the head, the autoscaler adds worker nodes for them and removes them
   when idle, and every artifact is still on S3 afterwards.
3. The same command again trains and relabels nothing, and starts no node.
Writes OUT_DIR/result.json.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cluster_config(gcs_address: str) -> dict:
    """The config AutoscalingCluster generates (Ray's fake_multi_node/example.yaml with our node types)."""
    empty = ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
             "head_start_ray_commands", "worker_start_ray_commands", "cluster_synced_files", "rsync_exclude",
             "rsync_filter")
    return {
        "cluster_name": "raylam-autoscaling-test", "max_workers": 2,
        "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                     "disable_launch_config_check": True, "gcs_address": gcs_address},
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 0, "head": 1000}, "node_config": {}, "max_workers": 0},
            "cpu": {"resources": {"CPU": 2, "slot": 1, "object_store_memory": 200 * 2**20}, "node_config": {},
                    "min_workers": 0, "max_workers": 2},
        },
        "head_node_type": "ray.head.default", "auth": {}, "upscaling_speed": 1.0, "idle_timeout_minutes": 0.1,
        "docker": {}, "file_mounts": {}, "file_mounts_sync_continuously": False, **{key: [] for key in empty},
    }


def start_head(temp_dir: str, out: Path) -> tuple[str, dict]:
    """``ray start --head`` with the autoscaling config, as AutoscalingCluster.start() does minus its
    ``ray stop --force``; returns the GCS address and the environment its drivers use."""
    import ray._private.services as services

    port = free_port()
    address = f"{services.get_node_ip_address()}:{port}"
    config = out / "autoscaling.json"
    config.write_text(json.dumps(cluster_config(address)))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update({"RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1", "RAY_TMPDIR": temp_dir,
                "RAY_USAGE_STATS_ENABLED": "0"})
    # `ray start` turns token authentication on when ~/.ray/auth_token exists (another Ray on the
    # machine may have made one); this private cluster and its drivers go without
    env["RAY_AUTH_MODE"] = os.environ["RAY_AUTH_MODE"] = "disabled"
    ray_cli = str(Path(sys.executable).parent / "ray")
    for _attempt in (1, 2):  # a loaded machine may miss a start deadline (or a free port got taken): once more
        proc = subprocess.run([ray_cli, "start", "--head", f"--port={port}", f"--autoscaling-config={config}",
                               "--num-cpus=0", '--resources={"head": 1000}', f"--temp-dir={temp_dir}/ray",
                               "--object-store-memory=100000000", "--include-dashboard=true",
                               f"--dashboard-port={free_port()}", "--disable-usage-stats"],
                              env=env, capture_output=True, text=True, timeout=300)
        if proc.returncode == 0:
            return address, {**env, "RAY_ADDRESS": address}
        stop_cluster(temp_dir)  # what the failed start left running
    raise RuntimeError(f"ray start failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")


def cluster_pids(temp_dir: str) -> set[int]:
    """The processes of this cluster: those whose command line names its temp dir (GCS, raylets,
    monitor, dashboard, of the head and of every node the fake provider started) and their
    descendants (the worker processes of those raylets)."""
    parents: dict[int, int] = {}
    roots = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().decode(errors="replace")
            with open(f"/proc/{entry}/stat") as f:
                parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if temp_dir in cmdline:
            roots.add(int(entry))
    pids, grew = set(roots), True
    while grew:
        grew = False
        for pid, parent in parents.items():
            if parent in pids and pid not in pids:
                pids.add(pid)
                grew = True
    return pids - {os.getpid()}


def stop_cluster(temp_dir: str) -> int:
    """End this cluster's processes (never another Ray's): SIGTERM, then SIGKILL what is left."""
    pids = cluster_pids(temp_dir)
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        for pid in cluster_pids(temp_dir) | (pids if sig == signal.SIGTERM else set()):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while cluster_pids(temp_dir) and time.monotonic() < deadline:
            time.sleep(0.5)
    return len(pids)


def raylam(argv: list[str], env: dict, timeout: float = 900) -> dict:
    proc = subprocess.run([sys.executable, "-m", "raylam.cli", *argv], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)
    return {"code": proc.returncode, "out": proc.stdout[-6000:], "err": proc.stderr[-6000:]}


def alive(ray) -> int:
    return sum(1 for node in ray.nodes() if node["Alive"])


def main(out: Path, bucket: str) -> int:
    import yaml

    from raylam.config import to_dict
    from raylam.data.synthetic import write_synthetic_dataset
    from raylam.models.config import ModelConfig

    out.mkdir(parents=True, exist_ok=True)
    temp_dir = os.environ.get("RAY_TMPDIR") or tempfile.mkdtemp(prefix="ras", dir="/tmp")
    dataset, runs = f"{bucket}/data", f"{bucket}/runs"
    write_synthetic_dataset(dataset, episodes=4, episode_length=40, image_size=32, clip_length=24, overlap=12,
                            num_labeled=2, heldout_episodes=1)
    config = out / "experiment.yaml"
    config.write_text(yaml.safe_dump({
        "name": "autoscaled", "concurrent_stages": 2, "stage_retries": 1,
        "train": {"dataset": dataset, "storage_path": runs,
                  "model": to_dict(ModelConfig.small("laom", latent_dim=8)),
                  "steps": 2, "batch_size": 8, "labeled_batch_size": 4, "report_every": 1, "checkpoint_every": 2,
                  "num_workers": 1, "cpus_per_worker": 0.5, "resources_per_worker": {"slot": 1},
                  "data": {"clips_per_task": 2, "read_cpus": 0.5}},
        "stages": [
            {"run_name": "lam", "stage": "lam", "model": {"method": "laom"}},
            {"run_name": "labels", "stage": "relabel", "lam_run": "lam", "batch_size": 32, "max_actors": 1},
            {"run_name": "bc", "stage": "bc", "model": {"method": "bc", "augment": False}},
        ],
    }))
    result: dict = {}
    start = time.time()
    import ray

    try:
        address, env = start_head(temp_dir, out)
        ray.init(address=address, log_to_driver=False)
        result["nodes_at_start"] = alive(ray)
        local = str(out / "local-runs")
        result["local"] = raylam(["train", "--config", str(config), f"train.storage_path={local}"], env)
        result["local_written"] = os.path.exists(local)
        result["nodes_after_refusal"] = len(ray.nodes())
        result["first"] = raylam(["train", "--config", str(config)], env)
        result["nodes_registered"] = len(ray.nodes())
        if result["first"]["code"] != 0:
            return 1
        from ray.util.state import list_tasks

        tasks = list_tasks(filters=[("func_or_class_name", "=", "_train_stage")], detail=True, limit=100,
                           raise_on_missing_output=False)
        result["stage_tasks"] = sorted(task.state for task in tasks)
        result["stage_task_nodes"] = sorted({task.node_id for task in tasks if task.node_id})
        result["head_node"] = ray.get_runtime_context().get_node_id()
        deadline = time.monotonic() + 600  # the idle worker nodes go (6 s idle, under load much later)
        while alive(ray) > 1 and time.monotonic() < deadline:
            time.sleep(2)
        result["nodes_after_idle"] = alive(ray)
        from raylam.experiment import load_experiment
        from raylam.pipeline import stage_is_done

        exp = load_experiment(config)
        result["done_after_scale_down"] = {exp.stages[i]["run_name"]: stage_is_done(exp.stage(i))
                                           for i in range(len(exp.stages))}
        from raylam.data.storage import resolve

        before = {name: resolve(f"{runs}/autoscaled/{name}").read_json("artifact.json")["finished"]
                  for name in ("lam", "labels", "bc")}
        registered = len(ray.nodes())
        result["second"] = raylam(["train", "--config", str(config)], env)
        result["nodes_started_by_second"] = len(ray.nodes()) - registered
        after = {name: resolve(f"{runs}/autoscaled/{name}").read_json("artifact.json")["finished"]
                 for name in before}
        result["artifacts_unchanged"] = before == after
    finally:
        result["wall_s"] = round(time.time() - start, 1)
        ray.shutdown()
        result["processes_stopped"] = stop_cluster(temp_dir)
        result["processes_left"] = len(cluster_pids(temp_dir))
        (out / "result.json").write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), sys.argv[2]))
