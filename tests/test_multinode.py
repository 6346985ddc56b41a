"""Multi-node, simulated: a sweep on a 3-node ``ray.cluster_utils.Cluster`` (in a subprocess, so the
session's local Ray is untouched) loses a worker node mid-trial and still finishes every trial."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent / "multinode_sweep.py"
ROOT = SCRIPT.parents[1]


@pytest.mark.slow
def test_sweep_spreads_over_nodes_and_survives_losing_one(tmp_path):
    out = tmp_path / "multinode"
    # its own Ray temp dir: the Cluster's address file must not lead other ray.init() calls to it
    ray_tmp = tempfile.mkdtemp(prefix="rmn", dir="/tmp")
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "RAY_TMPDIR": ray_tmp}
    try:
        proc = subprocess.run([sys.executable, str(SCRIPT), str(out)], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=420)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    result_file = out / "result.json"
    assert result_file.exists(), proc.stderr[-4000:]
    result = json.loads(result_file.read_text())
    assert proc.returncode == 0 and "summary" in result, (proc.stderr[-4000:], result)

    summary, trials, chaos = result["summary"], result["trials"], result["chaos"]
    assert "error" not in chaos, chaos
    assert summary["num_trials"] == 1 and summary["completed"] == 1 and summary["errored"] == 0, summary
    for trial, info in trials.items():
        assert info["status"] == "completed" and info["step"] == 10, (trial, info)
        # the drivers (and the Train controllers they start) stay on the head node
        assert all(g["controller"] == "head" for g in info["groups"]), info
        # each worker group spans two nodes: a node has one `slot` and every worker needs one
        assert all(len(set(g["workers"])) == 2 and "head" not in g["workers"] for g in info["groups"]), info
        # the step counter never goes back: checkpoints 2, 4, ..., 10 once each
        assert info["checkpoint_steps"] == [2, 4, 6, 8, 10], (trial, info["checkpoint_steps"])

    hit = trials[chaos["trial"]]
    first, *restarts = hit["groups"]
    assert chaos["victim"] in first["workers"] and restarts, hit["groups"]
    # after losing a node the worker group came back on live nodes (the survivor and w3 or the
    # replacement w5), from the last checkpoint (asserted above)
    assert chaos["victim"] not in restarts[-1]["workers"], hit["groups"]
    assert chaos["steps_before"] == [2, 4], chaos  # the node went while the workers waited after step 4
    # the worker group never used the head node, and its restart used a node it did not have before
    assert set(restarts[-1]["workers"]) - set(first["workers"]), hit["groups"]
