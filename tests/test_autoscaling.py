"""raylam on Ray's autoscaling simulator (the fake multi-node provider behind
``ray.cluster_utils.AutoscalingCluster``) with storage on a real S3 server: a cluster that starts
with its head alone, as ``ray up`` and KubeRay clusters whose worker types scale from 0 do.
The cluster runs in a subprocess with its own port and temp dir (tests/autoscaling_s3.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import run_cluster_script

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def test_autoscaled_cluster_that_starts_empty(s3_server, tmp_path):
    bucket = s3_server()
    result = run_cluster_script(ROOT / "tests" / "autoscaling_s3.py", [bucket], tmp_path / "autoscaling",
                                timeout=1800)
    assert result["nodes_at_start"] == 1, result  # the head alone: nothing says workers will come
    local = result["local"]
    assert local["code"] == 2, local
    assert "train.storage_path" in local["err"] and "shared_filesystem=true" in local["err"], local
    assert "Traceback" not in local["err"], local
    assert not result["local_written"] and result["nodes_after_refusal"] == 1  # refused before any work
    first = result["first"]
    assert first["code"] == 0, first
    assert "3 stages, up to 2 at once as retried Ray tasks" in first["out"], first
    # the drivers ran as Ray tasks on the head; the autoscaler added worker nodes for their work...
    assert result["stage_tasks"] == ["FINISHED"] * 3, result
    assert result["stage_task_nodes"] == [result["head_node"]], result
    assert result["nodes_registered"] > 1, result
    # ...and removed them when idle, losing nothing: every artifact is on S3
    assert result["nodes_after_idle"] == 1, result
    assert result["done_after_scale_down"] == {"lam": True, "labels": True, "bc": True}, result
    second = result["second"]
    assert second["code"] == 0, second
    assert second["out"].count("already done with this config, skipped") == 3, second
    assert result["artifacts_unchanged"] and result["nodes_started_by_second"] == 0, result
    assert result["processes_left"] == 0, result
