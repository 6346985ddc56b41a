"""A stage driver lost with its process is retried by Ray and resumes its Train run. On a Ray with
its dashboard, as on any cluster ``ray job submit`` reaches: Ray Train frees a dead driver's worker
placement group through the dashboard's State API, and without it that group would hold its CPUs
for the rest of the session."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import psutil
import pytest
from conftest import init_local_ray

from raylam.config import from_dict, to_dict
from raylam.data.synthetic import write_synthetic_dataset
from raylam.experiment import ExperimentConfig
from raylam.models.config import ModelConfig
from raylam.pipeline import run_stages
from raylam.train.loop import wait_for_registered_checkpoint


@pytest.fixture(scope="module")
def ray_with_dashboard(ray_local):
    """The session's local Ray restarted with its dashboard; the usual one comes back afterwards."""
    ray_local.shutdown()
    init_local_ray(dashboard=True)
    yield ray_local
    ray_local.shutdown()
    init_local_ray()


def test_a_stage_driver_that_dies_is_retried_and_resumes(ray_with_dashboard, tmp_path):
    """With stages run as Ray tasks, the process of a stage's driver is killed after its step-2
    checkpoint is registered: Ray retries the task (``stage_retries``) and the new driver resumes the
    Train run from that checkpoint instead of training from scratch (a fresh start would pass the
    ``wait_at_step`` hook again and leave a new waiting file). Under ``--force`` too: the retry resumes
    the fresh attempt its first try started, and makes no other. Afterwards every CPU is free again."""
    ray = ray_with_dashboard
    data, runs, go = tmp_path / "data", tmp_path / "runs", tmp_path / "go"
    write_synthetic_dataset(str(data), episodes=3, episode_length=24, image_size=32, clip_length=16, overlap=6,
                            num_labeled=1)
    exp = from_dict(ExperimentConfig, {
        "name": "retry", "concurrent_stages": 2, "stage_retries": 1,
        "train": {"dataset": str(data), "storage_path": str(runs), "stage": "bc",
                  "model": to_dict(ModelConfig.small("bc")), "steps": 4, "batch_size": 8, "report_every": 1,
                  "checkpoint_every": 2, "keep_checkpoints": 10, "cpus_per_worker": 0.5,
                  "data": {"read_cpus": 0.5}, "wait_at_step": 2, "wait_for_file": str(go),
                  # no worker restarts: a controller whose driver died keeps running for the seconds
                  # Ray gives it to exit, and may restart its lost worker group in them, reserving a
                  # placement group that nobody frees (a Ray Train race, 1 run in ~8 here)
                  "max_failures": 0},
        "stages": [{"run_name": "bc", "stage": "bc", "model": {"method": "bc"}}],
    })
    killed: list[int] = []

    def kill_driver_once_checkpointed():
        waiting = Path(f"{go}.waiting-0")
        deadline = time.monotonic() + 900  # generous: CI runs 3x slower at times
        while not waiting.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        (attempt,) = (runs / "retry" / "bc").glob("train-*")
        wait_for_registered_checkpoint(str(attempt), 2, timeout_s=max(1.0, deadline - time.monotonic()))
        # this Ray's stage driver: a worker of its raylet (another Ray on the machine may run stages too)
        raylet = ray._private.worker._global_node.all_processes["raylet"][0].process.pid
        (driver,) = [p for p in psutil.process_iter(["cmdline", "ppid"])
                     if (p.info["cmdline"] or [""])[0] == "ray::_train_stage" and p.info["ppid"] == raylet]
        os.kill(driver.pid, signal.SIGKILL)
        killed.append(driver.pid)
        # its Train worker goes with it (Ray kills what a dead process owned); until it has, it could
        # still go on and write a checkpoint of its own, so the gate opens only once it is gone
        worker = int(waiting.read_text())
        while psutil.pid_exists(worker) and time.monotonic() < deadline:
            time.sleep(0.1)
        waiting.unlink()
        go.touch()

    killer = threading.Thread(target=kill_driver_once_checkpointed, daemon=True)
    killer.start()
    run_stages(exp, [0], force=True, timings={})
    killer.join(timeout=120)
    assert killed, "the driver was never killed"
    assert not Path(f"{go}.waiting-0").exists(), "the retried driver trained from scratch"
    artifact = json.loads((runs / "retry" / "bc" / "artifact.json").read_text())
    steps = sorted(json.loads(p.read_text())["step"]
                   for p in Path(artifact["checkpoint"]).parent.glob("checkpoint_*/meta.json"))
    assert steps == [2, 4] and artifact["metrics"]["step"] == 4
    assert len(list((runs / "retry" / "bc").glob("train-*"))) == 1
    deadline = time.monotonic() + 180  # the dead driver's worker group is released, not held for the session
    while ray.available_resources().get("CPU", 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert ray.available_resources().get("CPU", 0) == 2, ray.available_resources()


def test_worker_groups_left_without_actors_are_released(ray_with_dashboard):
    """After the stages, a placement group of this job that nothing is scheduled in (a dead stage
    driver's Train worker group) is removed and its CPUs come back; a group in use is kept, and so is
    one that existed before the stages (``keep``)."""
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from raylam.pipeline import release_orphaned_worker_groups

    ray = ray_with_dashboard
    orphan, in_use, older = (placement_group([{"CPU": 0.5}]), placement_group([{"CPU": 0.5}]),
                             placement_group([{"CPU": 0.25}]))
    ray.get([orphan.ready(), in_use.ready(), older.ready()], timeout=300)
    keep = {older.id.hex()}

    @ray.remote(num_cpus=0.5)
    class Holder:
        def ping(self):
            return True

    holder = Holder.options(scheduling_strategy=PlacementGroupSchedulingStrategy(in_use)).remote()
    assert ray.get(holder.ping.remote(), timeout=300)
    deadline = time.monotonic() + 300  # the raylet reports the groups' resources to the GCS a moment later
    while release_orphaned_worker_groups(keep) == 0 and time.monotonic() < deadline:
        time.sleep(1)
    assert release_orphaned_worker_groups(keep) == 0  # the group in use is never taken
    tables = ray.util.placement_group_table()
    assert tables[orphan.id.hex()]["state"] == "REMOVED"
    assert tables[in_use.id.hex()]["state"] == "CREATED" and tables[older.id.hex()]["state"] == "CREATED"
    ray.kill(holder)
    remove_placement_group(in_use)
    remove_placement_group(older)
