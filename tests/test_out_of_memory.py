"""A node too small for what runs on it. Ray 2.60 retries a task its memory monitor kills without
end, so a pipeline on an over-full node restarts its stages for ever and says nothing of its own.
raylam caps those retries (``oom_retries``) and then stops with one line naming memory.

The node is made "over-full" for real: each command runs in its own process with its own local Ray
whose memory monitor threshold (``RAY_memory_usage_threshold``, read by Ray at start) lies below
what the machine already uses, so Ray's monitor kills every task and actor of the job as it starts. The same holds on a cluster
raylam joins (``tests/oom_joined.py``, a ``ray.cluster_utils.Cluster`` started without the cap).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml
from conftest import run_cluster_script

from raylam.config import to_dict
from raylam.data.synthetic import write_synthetic_dataset
from raylam.models.config import ModelConfig

ROOT = Path(__file__).resolve().parents[1]


def run_on_full_node(args: list[str], timeout: float = 900) -> subprocess.CompletedProcess:
    """``raylam <args>`` in a process of its own that starts its own local Ray (never the session's)
    with a memory threshold the machine is already over."""
    ray_tmp = tempfile.mkdtemp(prefix="oom", dir="/tmp")  # short: Ray's socket paths
    env = {**{k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_task_oom_retries")},
           "RAY_TMPDIR": ray_tmp, "RAY_memory_usage_threshold": "0.01", "RAY_memory_monitor_refresh_ms": "100"}
    try:
        return subprocess.run([sys.executable, "-m", "raylam.cli", *args], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=timeout)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def experiment(tmp_path_factory) -> Path:
    """A one-stage experiment (BC on a tiny synthetic dataset) whose stage runs as a Ray task."""
    root = tmp_path_factory.mktemp("oom")
    write_synthetic_dataset(str(root / "data"), episodes=2, episode_length=24, image_size=32, clip_length=16,
                            overlap=6, num_labeled=1)
    config = {
        "name": "oom", "concurrent_stages": 2, "oom_retries": 1,
        "train": {"dataset": str(root / "data"), "storage_path": str(root / "runs"), "stage": "bc",
                  "model": to_dict(ModelConfig.small("bc")), "steps": 4, "batch_size": 4, "cpus_per_worker": 0.5,
                  "data": {"read_cpus": 0.5}},
        "stages": [{"run_name": "bc", "stage": "bc", "model": {"method": "bc"}}],
    }
    path = root / "oom.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.slow
def test_a_stage_killed_for_memory_stops_the_job_with_one_line(experiment):
    """The stage's driver is killed on its first try and its one retry; then the command fails:
    exit 1 (the input was fine), one line on stderr naming the stage, the kills and the node's memory,
    no traceback, and no artifact for a stage that never finished."""
    proc = run_on_full_node(["train", "--config", str(experiment)])
    assert proc.returncode == 1, proc.stderr[-4000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("raylam train:")]
    assert len(lines) == 1, proc.stderr[-4000:]
    assert "stage bc was killed by Ray's memory monitor 2 times (node memory " in lines[0]
    assert "GB used of " in lines[0] and "concurrent_stages" in lines[0]
    assert "Traceback" not in proc.stderr
    assert not (experiment.parent / "runs" / "oom" / "bc" / "artifact.json").exists()


@pytest.mark.slow
def test_a_driver_joining_a_cluster_caps_the_retries_of_its_tasks(tmp_path):
    """On a cluster raylam joins (started by its operator, without the cap), the cap set in raylam's
    process still applies to the stage tasks it submits: the task fails for memory after its one
    retry instead of being killed and restarted until the 10-min deadline."""
    result = run_cluster_script(ROOT / "tests" / "oom_joined.py", [], tmp_path, timeout=900)
    assert result["outcome"] == "OutOfMemoryError", result
