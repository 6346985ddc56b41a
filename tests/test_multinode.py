"""Multi-node, simulated: a sweep on a 3-node ``ray.cluster_utils.Cluster`` (in a subprocess, so the
session's local Ray is untouched) loses a worker node mid-trial and still finishes every trial."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import run_cluster_script

SCRIPT = Path(__file__).resolve().parent / "multinode_sweep.py"


@pytest.mark.slow
def test_sweep_spreads_over_nodes_and_survives_losing_one(tmp_path):
    result = run_cluster_script(SCRIPT, [], tmp_path / "multinode", timeout=1200)  # generous: CI runs 3x slower at times
    assert "summary" in result, result

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
